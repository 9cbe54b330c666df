"""emnist_utils.core.registry: the explicit table of architectures, ModelSpec validation, build_model, parameter
and multiply-add counts, output_classes and architecture fingerprints."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from torch import nn

from emnist_utils.core import registry as R
from emnist_utils.core import variants as V
from emnist_utils.core.models import Architecture1, Architecture2
from emnist_utils.core.registry import (
    ARCHITECTURES,
    ConfigError,
    ModelSpec,
    architecture_fingerprint,
    build_model,
    count_parameters,
    multiply_adds,
    output_classes,
)

EXPECTED = {
    "arch1": Architecture1,
    "arch2": Architecture2,
    "arch2-depth1": V.Depth1,
    "arch2-depth3": V.Depth3,
    "arch2-depth4": V.Depth4,
    "arch2-leakyrelu": V.LeakyReLUStack,
    "arch2-gelu": V.GELUStack,
    "arch2-silu": V.SiLUStack,
    "arch2-nobn": V.NoBatchNormStack,
    "compact": V.CompactNet,
    "lean": V.LeanNet,
}


def test_the_table_lists_every_architecture_explicitly():
    assert ARCHITECTURES == EXPECTED


def test_importing_the_variants_registers_nothing():
    """Nothing registers itself by being imported or defined: running the variants module again and defining new
    subclasses leaves the table exactly as written out."""
    saved = dict(vars(V))
    try:
        importlib.reload(V)  # executes the module's code again, as a first import would

        class Extra(V.ConvStack):
            blocks = 3

        class Other(nn.Module):
            pass

        assert ARCHITECTURES == EXPECTED
        assert V.GELUStack is not EXPECTED["arch2-gelu"]  # the module really ran again
    finally:
        vars(V).clear()
        vars(V).update(saved)
    assert V.GELUStack is EXPECTED["arch2-gelu"]


def test_valid_model_specs():
    spec = ModelSpec("arch2", 4, 8, 16, 0.5)
    assert spec.shape() == {"c1": 4, "c2": 8, "hidden": 16, "dropout": 0.5}
    assert spec.as_dict() == {"arch": "arch2", "c1": 4, "c2": 8, "hidden": 16, "dropout": 0.5}
    assert spec.with_(hidden=32) == ModelSpec("arch2", 4, 8, 32, 0.5)
    for arch in EXPECTED:
        ModelSpec(arch, 1, 1, 4096, 0.0)
    ModelSpec("arch1", 4, 8, 16, 0)  # an integer dropout of 0 is a probability too


@pytest.mark.parametrize(
    "field,value",
    [
        ("arch", "nope"),
        ("arch", "ARCH2"),
        ("c1", 0),
        ("c1", -1),
        ("c1", 2.5),
        ("c1", True),
        ("c1", "8"),
        ("c2", -3),
        ("c2", 4097),
        ("hidden", 10**6),
        ("hidden", None),
        ("dropout", -0.1),
        ("dropout", 1.0),
        ("dropout", 1.5),
        ("dropout", math.nan),
        ("dropout", math.inf),
        ("dropout", "0.5"),
        ("dropout", True),
    ],
)
def test_model_spec_rejects_bad_values(field, value):
    good = {"arch": "arch2", "c1": 4, "c2": 8, "hidden": 16, "dropout": 0.5}
    with pytest.raises(ConfigError, match="architecture" if field == "arch" else field):
        ModelSpec(**{**good, field: value})
    with pytest.raises(ConfigError):
        ModelSpec(**good).with_(**{field: value})


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("num_classes", [1, 0, -5, 2.0, True, "47", None])
def test_build_model_rejects_fewer_than_two_classes(num_classes):
    with pytest.raises(ConfigError, match="at least 2 classes"):
        build_model(ModelSpec("arch2", 4, 8, 16, 0.5), num_classes)


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_build_model_builds_the_listed_class_with_the_spec_shape(arch):
    model = build_model(ModelSpec(arch, 4, 8, 16, 0.25), 2)
    assert type(model) is EXPECTED[arch]
    assert output_classes(model) == 2
    assert model.eval()(torch.zeros(1, 1, 28, 28)).shape == (1, 2)
    dropouts = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    assert dropouts and all(p == 0.25 for p in dropouts)
    assert output_classes(build_model(ModelSpec(arch, 4, 8, 16, 0.25), 62)) == 62


def test_output_classes_is_the_width_of_the_last_linear_layer_whatever_its_name():
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 30), nn.ReLU(), nn.Linear(30, 13))
    assert output_classes(model) == 13


def test_count_parameters_counts_trainable_parameters_only():
    model = Architecture1(47, 4, 8, 16)
    total = (9 * 4 + 4) + (4 * 8 * 9 + 8) + (8 * 49 * 16 + 16) + (16 * 47 + 47)
    assert count_parameters(model) == total
    model.fc2.weight.requires_grad_(False)
    assert count_parameters(model) == total - 16 * 47
    assert count_parameters(nn.BatchNorm2d(5)) == 10  # running statistics are buffers


@pytest.mark.parametrize("c1,c2,hidden,classes", [(4, 8, 16, 10), (2, 3, 5, 47)])
def test_multiply_adds_of_architecture1_by_hand(c1, c2, hidden, classes):
    """One image: conv1 at 28x28 (3x3 over 1 channel), conv2 at 14x14 (3x3 over c1), then the two FC layers.
    Biases, ReLU and pooling are not multiply-adds."""
    hand = 28 * 28 * c1 * (3 * 3 * 1) + 14 * 14 * c2 * (3 * 3 * c1) + (c2 * 7 * 7) * hidden + hidden * classes
    assert multiply_adds(ModelSpec("arch1", c1, c2, hidden, 0.5), classes) == hand


def test_multiply_adds_of_architecture2_by_hand():
    c1, c2, hidden, classes = 4, 8, 16, 47  # conv2 is 5x5 here
    hand = 28 * 28 * c1 * 9 + 14 * 14 * c2 * (25 * c1) + c2 * 49 * hidden + hidden * classes
    assert multiply_adds(ModelSpec("arch2", c1, c2, hidden, 0.5), classes) == hand
    # LeanNet drops CompactNet's second full-resolution convolution: fewer multiply-adds
    assert multiply_adds(ModelSpec("lean", 32, 64, 128, 0.2), 47) < multiply_adds(
        ModelSpec("compact", 32, 64, 128, 0.2), 47
    )


def test_architecture_fingerprint_follows_bases_and_tables():
    gelu = architecture_fingerprint("arch2-gelu")
    assert {
        "emnist_utils.core.variants.GELUStack",
        "emnist_utils.core.variants.ConvStack",
        "emnist_utils.core.variants.ACTIVATIONS",
        "emnist_utils.core.models.IMAGE_SIZE",
    } <= set(gelu)
    assert "emnist_utils.core.variants.conv_bn_relu" in architecture_fingerprint("lean")
    assert set(architecture_fingerprint("arch2")) == {"emnist_utils.core.models.Architecture2"}
    assert architecture_fingerprint("arch2-gelu") == gelu  # stable
    # classes that differ in one attribute have different fingerprints; shared bases hash the same
    d3, d4 = architecture_fingerprint("arch2-depth3"), architecture_fingerprint("arch2-depth4")
    assert d3["emnist_utils.core.variants.ConvStack"] == d4["emnist_utils.core.variants.ConvStack"]
    assert d3["emnist_utils.core.variants.Depth3"] != d4["emnist_utils.core.variants.Depth4"]
    with pytest.raises(ConfigError, match="unknown architecture"):
        architecture_fingerprint("nope")


def test_the_registry_module_defines_no_registration_function():
    assert not any(name.startswith("register") for name in vars(R))
