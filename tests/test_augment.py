"""Batch augmentations: shapes, identity at zero strength, determinism under a seed, real change otherwise."""
from __future__ import annotations

import pytest
import torch

from emnist_utils.augment import get_augmentation, random_affine, random_erasing


def _batch(n=16):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 28, 28, generator=g) * 3 - 0.5


def test_affine_with_zero_strength_is_the_identity():
    x = _batch()
    y = random_affine(x, max_degrees=0, max_shift=0, scale=(1.0, 1.0), max_shear=0)
    assert torch.allclose(x, y, atol=1e-5)


def test_affine_shift_moves_content_and_is_seeded():
    x = torch.full((4, 1, 28, 28), -0.5)
    x[:, :, 10:18, 10:18] = 2.0
    torch.manual_seed(1)
    a = random_affine(x, max_degrees=0, max_shift=0.2, scale=(1.0, 1.0), max_shear=0)
    torch.manual_seed(1)
    b = random_affine(x, max_degrees=0, max_shift=0.2, scale=(1.0, 1.0), max_shear=0)
    assert torch.equal(a, b)
    assert a.shape == x.shape
    assert not torch.allclose(a, x)
    assert a.min() >= -0.5 - 1e-5  # the background stays the background value


def test_erasing_blanks_rectangles_only_in_chosen_images():
    x = torch.ones(64, 1, 28, 28)
    x[:, :, 0, 0] = -1.0  # background value
    torch.manual_seed(0)
    y = random_erasing(x, p=0.5, max_size=6)
    changed = (y != x).flatten(1).any(1)
    assert 10 < int(changed.sum()) < 54
    assert int((y != x).flatten(1).sum(1).max()) <= 36
    assert torch.all(y[y != x] == -1.0)


def test_unknown_augmentation_is_refused():
    assert get_augmentation("none") is None
    with pytest.raises(ValueError, match="unknown augmentation"):
        get_augmentation("mixup-please")
