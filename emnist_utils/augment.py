"""Batch-level augmentations: whole tensors at once, never per-sample Python work."""
from __future__ import annotations

from typing import Callable

import torch

Augmentation = Callable[[torch.Tensor], torch.Tensor]

AUGMENTATIONS: dict[str, Augmentation | None] = {"none": None}


def get_augmentation(name: str) -> Augmentation | None:
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; choose one of {sorted(AUGMENTATIONS)}")
    return AUGMENTATIONS[name]
