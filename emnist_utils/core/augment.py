"""Batch augmentations on whole tensors at once (random affine, random erasing), never per-sample Python work.

Each augmentation takes a normalised batch (N, 1, 28, 28) and returns one of the same shape. Random
numbers come from torch's global generator, which `fit` seeds and checkpoints, so augmented runs stay
deterministic and resumable.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

Augmentation = Callable[[torch.Tensor], torch.Tensor]


def random_affine(
    x: torch.Tensor,
    max_degrees: float = 10.0,
    max_shift: float = 0.1,
    scale: tuple = (0.9, 1.1),
    max_shear: float = 0.1,
) -> torch.Tensor:
    """Rotate, scale, shear and shift every image by its own random amount, in one grid_sample call.

    Shifts are a fraction of the image size. Pixels moved in from outside take the background value
    (the batch minimum), not zero, because the batch is already normalised.
    """
    n = x.shape[0]
    angle = (torch.rand(n) * 2 - 1) * math.radians(max_degrees)
    s = torch.empty(n).uniform_(*scale)
    shear = (torch.rand(n) * 2 - 1) * max_shear
    shift = (torch.rand(n, 2) * 2 - 1) * max_shift * 2  # affine_grid coordinates span [-1, 1]
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    theta = torch.stack(
        [torch.stack([cos, -sin + shear, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    ).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    background = x.amin()
    return F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + background


def random_erasing(x: torch.Tensor, p: float = 0.5, max_size: int = 10) -> torch.Tensor:
    """Blank one random rectangle (up to max_size x max_size) in a random subset of the images."""
    n, _, h, w = x.shape
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    size_h = torch.randint(2, max_size + 1, (n, 1, 1), device=x.device)
    size_w = torch.randint(2, max_size + 1, (n, 1, 1), device=x.device)
    top = (torch.rand(n, 1, 1, device=x.device) * (h - size_h + 1)).long()
    left = (torch.rand(n, 1, 1, device=x.device) * (w - size_w + 1)).long()
    box = (rows >= top) & (rows < top + size_h) & (cols >= left) & (cols < left + size_w)
    chosen = (torch.rand(n, 1, 1, device=x.device) < p) & box
    return torch.where(chosen.unsqueeze(1), x.amin(), x)


AUGMENTATIONS: dict[str, Augmentation | None] = {
    "none": None,
    "affine": random_affine,
    "affine+erasing": lambda x: random_erasing(random_affine(x)),
}


def get_augmentation(name: str) -> Augmentation | None:
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; choose one of {sorted(AUGMENTATIONS)}")
    return AUGMENTATIONS[name]


def shift_images(x: torch.Tensor, dx: int, dy: int, background: float | None = None) -> torch.Tensor:
    """Move a normalised batch (N, 1, H, W) by whole pixels (dx right, dy down), filling with `background` (the
    normalised value of a black pixel; default: the batch minimum). Used for test-time augmentation: small
    shifts only, never flips (b/d and p/q are mirror images)."""
    if dx == 0 and dy == 0:
        return x
    background = float(x.amin()) if background is None else background
    _, _, h, w = x.shape
    padded = F.pad(x, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)), value=background)
    top, left = max(-dy, 0), max(-dx, 0)
    out = padded[:, :, top : top + h, left : left + w]
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
