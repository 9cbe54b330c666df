"""The one table of architectures: a model spec (name + shape) to a built model, its size and its code.

Every architecture is listed here by name, explicitly; nothing registers itself by being imported. A model
spec carries no class count: that comes from the data a model is trained on.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .fingerprint import code_fingerprint
from .models import IMAGE_SIZE, Architecture1, Architecture2
from .variants import (
    CompactNet,
    Depth1,
    Depth3,
    Depth4,
    GELUStack,
    LeakyReLUStack,
    LeanNet,
    NoBatchNormStack,
    SiLUStack,
)

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "arch1": Architecture1,
    "arch2": Architecture2,
    "arch2-depth1": Depth1,
    "arch2-depth3": Depth3,
    "arch2-depth4": Depth4,
    "arch2-leakyrelu": LeakyReLUStack,
    "arch2-gelu": GELUStack,
    "arch2-silu": SiLUStack,
    "arch2-nobn": NoBatchNormStack,
    "compact": CompactNet,
    "lean": LeanNet,
}


class ConfigError(ValueError):
    """A setting that cannot describe a trainable model or run; the message says which and why."""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class ModelSpec:
    """An architecture and its shape: what `build_model` needs besides the number of classes."""

    arch: str
    c1: int
    c2: int
    hidden: int
    dropout: float

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ConfigError(f"unknown architecture {self.arch!r}; choose one of {sorted(ARCHITECTURES)}")
        for name in ("c1", "c2", "hidden"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
            if value > 4096:
                raise ConfigError(
                    f"{name}={value} channels/units is far beyond what a 28x28 image can use; use at most 4096"
                )
        if not _is_number(self.dropout) or not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be a probability in [0, 1), got {self.dropout!r}")

    def shape(self) -> dict:
        return {"c1": self.c1, "c2": self.c2, "hidden": self.hidden, "dropout": self.dropout}

    def as_dict(self) -> dict:
        return asdict(self)

    def with_(self, **changes) -> ModelSpec:
        return replace(self, **changes)


def build_model(spec: ModelSpec, num_classes: int) -> nn.Module:
    if not _is_int(num_classes) or num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes!r}")
    return ARCHITECTURES[spec.arch](num_classes, **spec.shape())


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def output_classes(model: nn.Module) -> int:
    """How many classes a model predicts, whatever its layer names: the width of its last linear layer."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features


def multiply_adds(spec: ModelSpec, num_classes: int) -> int:
    """Multiply-adds of one forward pass on one image (torch's FLOP counter, halved). A measure of work, not of
    time: on a CPU the time of different layer types per multiply-add differs several-fold."""
    model = build_model(spec, num_classes).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE))
    return counter.get_total_flops() // 2


def architecture_fingerprint(arch: str) -> dict[str, str]:
    """The code an architecture's weights depend on: its class, its bases in this package and every
    module-level name they use (e.g. `ACTIVATIONS`, `conv_bn_relu`)."""
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    cls = ARCHITECTURES[arch]
    return code_fingerprint([(cls.__module__, cls.__name__)])
