"""emnist_utils.core.augment: batch augmentations (random affine, random erasing), their lookup by name, and
whole-pixel shifts for test-time augmentation."""

from __future__ import annotations

import pytest
import torch

from emnist_utils.core.augment import AUGMENTATIONS, get_augmentation, random_affine, random_erasing, shift_images


def _batch(n=16):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 28, 28, generator=g) * 3 - 0.5


def _square(n=4, background=-0.5, value=2.0):
    x = torch.full((n, 1, 28, 28), background)
    x[:, :, 10:18, 10:18] = value
    return x


def test_affine_with_zero_strength_is_the_identity():
    x = _batch()
    y = random_affine(x, max_degrees=0, max_shift=0, scale=(1.0, 1.0), max_shear=0)
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


def test_affine_is_seeded_by_the_global_generator_and_changes_images():
    x = _square()
    torch.manual_seed(1)
    a = random_affine(x)
    torch.manual_seed(1)
    b = random_affine(x)
    torch.manual_seed(2)
    c = random_affine(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert not torch.allclose(a, x)
    # every image gets its own transformation
    assert not torch.allclose(a[0], a[1])


def test_affine_fills_with_the_background_value_not_zero():
    x = _square(background=-0.5)
    torch.manual_seed(1)
    a = random_affine(x, max_degrees=0, max_shift=0.2, scale=(1.0, 1.0), max_shear=0)
    assert a.min() >= -0.5 - 1e-5
    # the corners are background in the input and stay so (nothing moves in from outside as zeros)
    torch.testing.assert_close(a[:, :, 0, 0], torch.full((4, 1), -0.5), atol=1e-5, rtol=0)
    # a pure shift keeps the amount of foreground ink (up to interpolation at the edges)
    ink_before, ink_after = (x + 0.5).sum((1, 2, 3)), (a + 0.5).sum((1, 2, 3))
    torch.testing.assert_close(ink_after, ink_before, rtol=0.02, atol=0)


def test_affine_shift_moves_the_centre_of_mass():
    x = _square(n=32)
    torch.manual_seed(0)
    a = random_affine(x, max_degrees=0, max_shift=0.1, scale=(1.0, 1.0), max_shear=0)
    cols = torch.arange(28.0)
    weight = (a + 0.5).squeeze(1)
    centre_x = (weight.sum(1) * cols).sum(1) / weight.sum((1, 2))
    moved = (centre_x - 13.5).abs()
    assert moved.max() > 0.5  # something moved ...
    assert moved.max() <= 0.1 * 28 + 0.5  # ... by at most max_shift of the image size


def test_erasing_blanks_rectangles_only_in_chosen_images():
    x = torch.ones(64, 1, 28, 28)
    x[:, :, 0, 0] = -1.0  # the batch minimum: the background value
    torch.manual_seed(0)
    y = random_erasing(x, p=0.5, max_size=6)
    changed = (y != x).flatten(1).any(1)
    assert 10 < int(changed.sum()) < 54
    assert int((y != x).flatten(1).sum(1).max()) <= 36
    assert torch.all(y[y != x] == -1.0)
    # what changed is one rectangle per image
    for img in range(64):
        rows, cols = torch.nonzero((y[img, 0] != x[img, 0]), as_tuple=True)
        if len(rows):
            height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
            # (the background pixel at (0, 0) may sit inside the box unchanged)
            assert len(rows) >= height * width - 1 and height <= 6 and width <= 6


def test_erasing_with_probability_zero_or_one():
    x = _batch()
    torch.manual_seed(0)
    assert torch.equal(random_erasing(x, p=0.0), x)
    torch.manual_seed(0)
    erased = random_erasing(x, p=1.0, max_size=4)
    assert bool((erased != x).flatten(1).any(1).all())


def test_named_augmentations():
    assert get_augmentation("none") is None
    assert get_augmentation("affine") is random_affine
    assert set(AUGMENTATIONS) == {"none", "affine", "affine+erasing"}
    both = get_augmentation("affine+erasing")
    x = _square(n=8)
    torch.manual_seed(3)
    y = both(x)
    torch.manual_seed(3)
    assert torch.equal(y, random_erasing(random_affine(x)))
    with pytest.raises(ValueError, match="unknown augmentation"):
        get_augmentation("mixup-please")


def _shifted_by_hand(x, dx, dy):
    """x moved dx pixels right and dy down: out[r, c] = x[r - dy, c - dx], background where that is outside."""
    n, ch, h, w = x.shape
    out = torch.full_like(x, float(x.min()))
    for r in range(h):
        for c in range(w):
            if 0 <= r - dy < h and 0 <= c - dx < w:
                out[:, :, r, c] = x[:, :, r - dy, c - dx]
    return out


@pytest.mark.parametrize("dx,dy", [(1, 0), (-1, 0), (0, 1), (0, -1), (2, -3), (-4, 5), (27, 0), (0, -28)])
def test_shift_images_moves_content_by_whole_pixels(dx, dy):
    x = _batch(3)
    y = shift_images(x, dx, dy)
    assert y.shape == x.shape
    assert torch.equal(y, _shifted_by_hand(x, dx, dy))


def test_shift_images_single_pixel_and_background():
    x = torch.full((1, 1, 28, 28), -0.4)
    x[0, 0, 5, 7] = 3.0
    y = shift_images(x, 2, -1)  # two right, one up
    assert torch.nonzero(y[0, 0] == 3.0).tolist() == [[4, 9]]
    assert bool((y[y != 3.0] == -0.4).all())
    assert shift_images(x, 0, 0) is x


def test_shift_images_keeps_the_memory_layout():
    x = torch.rand(4, 3, 28, 28)  # three channels, so that the two layouts differ in memory
    cl = x.contiguous(memory_format=torch.channels_last)
    assert not cl.is_contiguous()
    shifted = shift_images(cl, 1, 1)
    assert shifted.is_contiguous(memory_format=torch.channels_last) and not shifted.is_contiguous()
    assert shift_images(x, 1, 1).is_contiguous()
    assert torch.equal(shifted, shift_images(x, 1, 1))
