"""emnist_utils.core.models: the report's two architectures (output widths, layer names, parameter counts by
hand-written formulas, the report's 976,239-parameter final model)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from emnist_utils.core.models import IMAGE_SIZE, Architecture1, Architecture2
from emnist_utils.core.registry import count_parameters

CLASS_COUNTS = (10, 26, 47, 62)  # digits, letters, balanced/bymerge, byclass


def arch1_parameters(c1, c2, hidden, classes):
    """Architecture 1 counted layer by layer: conv3x3(1->c1), conv3x3(c1->c2), FC(c2*7*7 -> hidden), FC(-> classes)."""
    conv1 = 1 * c1 * 3 * 3 + c1
    conv2 = c1 * c2 * 3 * 3 + c2
    fc1 = c2 * 7 * 7 * hidden + hidden
    fc2 = hidden * classes + classes
    return conv1 + conv2 + fc1 + fc2


def arch2_parameters(c1, c2, hidden, classes):
    """Architecture 2: conv3x3 + BN(c1), conv5x5 + BN(c2), FC(c2*7*7 -> hidden), FC(-> classes)."""
    conv1 = 1 * c1 * 3 * 3 + c1
    bn1 = 2 * c1  # weight and bias; running statistics are buffers, not parameters
    conv2 = c1 * c2 * 5 * 5 + c2
    bn2 = 2 * c2
    fc1 = c2 * 7 * 7 * hidden + hidden
    fc2 = hidden * classes + classes
    return conv1 + bn1 + conv2 + bn2 + fc1 + fc2


@pytest.mark.parametrize("num_classes", CLASS_COUNTS)
@pytest.mark.parametrize("cls", [Architecture1, Architecture2])
@pytest.mark.parametrize("shape", [(1, 1, 1, 0.0), (4, 8, 16, 0.3), (3, 5, 7, 0.9)])
def test_output_width_is_the_number_of_classes(cls, num_classes, shape):
    torch.manual_seed(0)
    model = cls(num_classes, *shape)
    for n in (1, 5):
        x = torch.randn(n, 1, IMAGE_SIZE, IMAGE_SIZE)
        assert model.train()(x).shape == (n, num_classes)
        assert model.eval()(x).shape == (n, num_classes)


def test_num_classes_is_the_first_argument_and_the_shape_defaults_are_the_reports():
    a1, a2 = Architecture1(10), Architecture2(62)
    assert a1.fc2.out_features == 10 and a2.fc2.out_features == 62
    # Architecture 1 defaults: c1=16, c2=32, hidden=32, dropout 0.5; Architecture 2: the final model's shape
    assert (a1.conv1.out_channels, a1.conv2.out_channels, a1.fc1.out_features, a1.dropout.p) == (16, 32, 32, 0.5)
    assert (a2.conv1.out_channels, a2.conv2.out_channels, a2.fc1.out_features, a2.dropout.p) == (8, 32, 600, 0.5)


def test_the_reports_final_model_has_976239_parameters():
    model = Architecture2(47, c1=8, c2=32, hidden=600, dropout=0.5)
    assert count_parameters(model) == 976_239  # the number printed in the report
    assert count_parameters(model) == arch2_parameters(8, 32, 600, 47)
    assert count_parameters(Architecture2(47)) == 976_239


@pytest.mark.parametrize("num_classes", CLASS_COUNTS)
@pytest.mark.parametrize("c1,c2,hidden", [(16, 32, 32), (80, 120, 512), (3, 5, 7), (8, 32, 600)])
def test_parameter_counts_by_formula(c1, c2, hidden, num_classes):
    assert count_parameters(Architecture1(num_classes, c1, c2, hidden)) == arch1_parameters(c1, c2, hidden, num_classes)
    assert count_parameters(Architecture2(num_classes, c1, c2, hidden)) == arch2_parameters(c1, c2, hidden, num_classes)


def test_layer_names_follow_the_reports_printed_models():
    """Trained-model files and the torchsummary tables rely on these names."""
    assert list(Architecture1(47, 4, 8, 16).state_dict()) == [
        "conv1.weight",
        "conv1.bias",
        "conv2.weight",
        "conv2.bias",
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
    ]
    names = list(Architecture2(47, 4, 8, 16).state_dict())
    for layer in ("conv1", "batchnorm1", "conv2", "batchnorm2", "fc1", "fc2"):
        assert f"{layer}.weight" in names, layer
    assert "batchnorm1.running_mean" in names and "batchnorm2.running_var" in names


def test_architecture1_has_no_batchnorm_and_architecture2_has_two():
    def norms(model):
        return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]

    assert norms(Architecture1(47)) == []
    assert [m.num_features for m in norms(Architecture2(47, 6, 10, 16))] == [6, 10]
    assert Architecture2(47, 6, 10, 16).conv2.kernel_size == (5, 5)
    assert Architecture1(47, 6, 10, 16).conv2.kernel_size == (3, 3)


def test_dropout_is_active_in_training_and_off_in_eval():
    torch.manual_seed(0)
    model = Architecture2(47, 4, 8, 64, dropout=0.5)
    x = torch.randn(8, 1, 28, 28)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    first = model(x)
    torch.manual_seed(2)
    assert not torch.equal(first, model(x))
