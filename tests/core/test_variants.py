"""emnist_utils.core.variants: the ConvStack family (Architecture 2 with one thing changed), CompactNet and
LeanNet: shapes, parameter counts by hand-written formulas, and that each switch really changes the network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from emnist_utils.core import variants as V
from emnist_utils.core.models import Architecture2
from emnist_utils.core.registry import count_parameters

STACKS = (V.ConvStack, V.Depth1, V.Depth3, V.Depth4, V.LeakyReLUStack, V.GELUStack, V.SiLUStack, V.NoBatchNormStack)
ALL = STACKS + (V.CompactNet, V.LeanNet)


def fc_head(features, hidden, classes):
    return features * hidden + hidden + hidden * classes + classes


def conv(c_in, c_out, k, bias=True):
    return c_in * c_out * k * k + (c_out if bias else 0)


@pytest.mark.parametrize("num_classes", [10, 26, 47, 62])
@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_every_variant_classifies_into_the_number_of_classes(cls, num_classes):
    torch.manual_seed(0)
    model = cls(num_classes, 4, 8, 16, 0.3)
    x = torch.randn(3, 1, 28, 28)
    assert model.train()(x).shape == (3, num_classes)
    assert model.eval()(x).shape == (3, num_classes)


def test_conv_stack_with_the_defaults_is_architecture_2():
    stack, arch2 = V.ConvStack(47), Architecture2(47)
    assert count_parameters(stack) == count_parameters(arch2) == 976_239
    assert [tuple(p.shape) for p in stack.parameters()] == [tuple(p.shape) for p in arch2.parameters()]
    # same layers in the same order: with Architecture 2's weights it computes the same function
    torch.manual_seed(0)
    arch2 = Architecture2(47, 4, 8, 32).eval()
    stack = V.ConvStack(47, 4, 8, 32).eval()
    with torch.no_grad():
        for bn in (arch2.batchnorm1, arch2.batchnorm2):  # non-trivial running statistics
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    stack.load_state_dict(dict(zip(stack.state_dict(), arch2.state_dict().values())))
    x = torch.randn(6, 1, 28, 28)
    torch.testing.assert_close(stack(x), arch2(x))


@pytest.mark.parametrize("c1,c2,hidden,classes", [(8, 32, 600, 47), (4, 8, 16, 10), (3, 5, 7, 62)])
def test_stack_parameter_counts_by_formula(c1, c2, hidden, classes):
    block1 = conv(1, c1, 3) + 2 * c1  # conv3x3 and BatchNorm (weight, bias)
    block = conv(c1, c2, 5) + 2 * c2
    deeper = conv(c2, c2, 5) + 2 * c2
    expected = {
        V.Depth1: block1 + fc_head(c1 * 14 * 14, hidden, classes),
        V.ConvStack: block1 + block + fc_head(c2 * 7 * 7, hidden, classes),
        V.Depth3: block1 + block + deeper + fc_head(c2 * 3 * 3, hidden, classes),
        V.Depth4: block1 + block + 2 * deeper + fc_head(c2 * 1 * 1, hidden, classes),
        V.NoBatchNormStack: conv(1, c1, 3) + conv(c1, c2, 5) + fc_head(c2 * 7 * 7, hidden, classes),
    }
    for cls in (V.LeakyReLUStack, V.GELUStack, V.SiLUStack):  # an activation has no parameters
        expected[cls] = expected[V.ConvStack]
    for cls, count in expected.items():
        assert count_parameters(cls(classes, c1, c2, hidden)) == count, cls.__name__
    # no BatchNorm: Architecture 2 less its two BatchNorm layers' 2 x (c1 + c2) parameters
    assert expected[V.NoBatchNormStack] == count_parameters(Architecture2(classes, c1, c2, hidden)) - 2 * (c1 + c2)


@pytest.mark.parametrize("c1,c2,hidden,classes", [(48, 96, 192, 47), (4, 8, 16, 10)])
def test_compact_and_lean_parameter_counts_by_formula(c1, c2, hidden, classes):
    def cbr(c_in, c_out):  # conv3x3 without bias + BatchNorm
        return conv(c_in, c_out, 3, bias=False) + 2 * c_out

    head = hidden * classes + classes
    compact = cbr(1, c1) + cbr(c1, c1) + cbr(c1, c2) + cbr(c2, c2) + cbr(c2, hidden) + cbr(hidden, hidden) + head
    lean = cbr(1, c1) + cbr(c1, c2) + cbr(c2, c2) + cbr(c2, hidden) + cbr(hidden, hidden) + head
    assert count_parameters(V.CompactNet(classes, c1, c2, hidden)) == compact
    assert count_parameters(V.LeanNet(classes, c1, c2, hidden)) == lean


@pytest.mark.parametrize("num_classes", [47, 62])
def test_compact_and_lean_defaults_stay_under_one_million_parameters(num_classes):
    for cls in (V.CompactNet, V.LeanNet):
        assert count_parameters(cls(num_classes)) < 1_000_000, cls.__name__
    assert count_parameters(V.LeanNet(num_classes)) < count_parameters(V.CompactNet(num_classes))


def test_depth_changes_the_map_size_the_fc_layer_sees():
    for cls, size in ((V.Depth1, 14), (V.ConvStack, 7), (V.Depth3, 3), (V.Depth4, 1)):
        model = cls(47, 4, 8, 16)
        channels = 4 if cls is V.Depth1 else 8
        assert model.classifier[1].in_features == channels * size * size, cls.__name__
        assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == cls.blocks


@pytest.mark.parametrize(
    "cls,activation",
    [(V.ConvStack, nn.ReLU), (V.LeakyReLUStack, nn.LeakyReLU), (V.GELUStack, nn.GELU), (V.SiLUStack, nn.SiLU)],
)
def test_activation_switch_takes_effect(cls, activation):
    model = cls(47, 4, 8, 16)
    kinds = {type(m) for m in model.modules()} & {nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU}
    assert kinds == {activation}
    assert sum(isinstance(m, activation) for m in model.modules()) == 3  # two blocks and the hidden FC layer
    if cls is V.LeakyReLUStack:
        assert all(m.negative_slope == 0.1 for m in model.modules() if isinstance(m, nn.LeakyReLU))
    if cls is not V.ConvStack:  # with the same weights, another activation computes another function
        torch.manual_seed(0)
        base = V.ConvStack(47, 4, 8, 16).eval()
        model.load_state_dict(base.state_dict())
        x = torch.randn(4, 1, 28, 28)
        assert not torch.allclose(model.eval()(x), base(x))


def test_batchnorm_switch_takes_effect():
    assert not any(isinstance(m, nn.BatchNorm2d) for m in V.NoBatchNormStack(47, 4, 8, 16).modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in V.ConvStack(47, 4, 8, 16).modules()) == 2
    # without BatchNorm the output in train mode does not depend on the rest of the batch
    torch.manual_seed(0)
    x = torch.randn(4, 1, 28, 28)
    for cls, independent in ((V.NoBatchNormStack, True), (V.ConvStack, False)):
        model = cls(47, 4, 8, 16, dropout=0.0).train()
        assert torch.allclose(model(x)[:2], model(x[:2]), atol=1e-6) == independent, cls.__name__


def test_subclasses_change_only_their_one_property():
    for cls, changed in (
        (V.Depth1, {"blocks": 1}),
        (V.Depth3, {"blocks": 3}),
        (V.Depth4, {"blocks": 4}),
        (V.LeakyReLUStack, {"activation": "leakyrelu"}),
        (V.GELUStack, {"activation": "gelu"}),
        (V.SiLUStack, {"activation": "silu"}),
        (V.NoBatchNormStack, {"batchnorm": False}),
    ):
        expected = {"blocks": 2, "activation": "relu", "batchnorm": True, **changed}
        assert {k: getattr(cls, k) for k in expected} == expected, cls.__name__
    assert set(V.ACTIVATIONS) == {"relu", "leakyrelu", "gelu", "silu"}
