"""A picture of one handwritten character (photo, scan, drawing) to the 28x28 image EMNIST would hold for it.

The model has only ever seen characters made by EMNIST's own conversion of NIST's scans (Cohen et al. 2017,
"EMNIST: an extension of MNIST to handwritten letters", section II-A): white ink on black, blurred slightly
(Gaussian, sigma 1 at NIST's 128x128 resolution), cropped to the character's bounding box, centred in a square
frame that keeps the aspect ratio with a 2-pixel margin, resized to 28x28 with anti-aliasing, intensities
stretched to 0-255. A picture given any other way (dark ink on white paper, a small character in a big photo,
another stroke width or position) is read far worse, so every picture goes through the same steps here, and
comes out upright, as the loader returns EMNIST's (transposed) images.

What is added for pictures that are not clean scans: the ink polarity is detected from the border (the background
touches it); the paper's brightness is subtracted (a smooth surface fitted to the border, for unevenly lit photos);
specks much smaller than the character are ignored when the character's box is found; EXIF rotation of phone
photos is applied; very large photos are reduced first.
Anything that is not one readable image with one visible character raises `ImageError`, naming the file and why.

Used by `python -m emnist_utils predict` (through core/recognition.py) and notebook 07.
"""

from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

SIZE = 28  # EMNIST's images are 28x28
MARGIN = 2  # pixels of empty border around the character's box in the 28x28 image (EMNIST's 2-pixel padding)
# EMNIST blurs NIST's 128x128 scans with sigma 1. Here it is sigma 1 in the picture's own pixels: on EMNIST's test
# images handed in enlarged 5-10 times, also blurring in proportion to the picture's size made `predict` read them
# 0.5-1 point less accurately (the anti-aliased resize already smooths a large picture).
BLUR_SIGMA = 1.0
WORK_SIZE = 1024  # longer side larger than this is reduced first: the character ends up 24 pixels tall anyway
MAX_PIXELS = 80_000_000  # refuse bigger pictures (also below Pillow's decompression-bomb warning)
MIN_SIDE = 8  # pixels; anything smaller cannot hold a readable character
MIN_CONTRAST = 0.12  # ink must differ from the background by this share of the full range, else "blank"
BOX_THRESHOLD = 0.08  # ink level (share of the character's peak) that counts as part of the character's box
MIN_PART = 0.05  # ink blobs smaller than this share of the largest are specks, not parts of the character


class ImageError(ValueError):
    """A picture that cannot be read as one handwritten character; the message names the file and says why."""


@dataclass(frozen=True)
class Prepared:
    """What the model receives for one picture, and what was done to get it."""

    image: np.ndarray  # (28, 28) uint8, upright, white ink on black, like the loader's EMNIST images
    inverted: bool  # the picture had dark ink on a light background
    box: tuple[int, int, int, int]  # the character in the (possibly reduced) picture: top, left, bottom, right
    shape: tuple[int, int]  # (height, width) of the picture as analysed (after EXIF rotation and reduction)
    contrast: float  # ink against background, 0-1


# ----------------------------------------------------------------------------- reading


_NOT_REGULAR = (
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _check_regular_file(path: Path, name: str) -> None:
    """Refuse, before anything opens it, a path that is not a regular file: opening a named pipe waits for a writer
    and a device such as /dev/zero never ends, so either would hang the caller instead of failing."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise _cannot_open(name, exc) from exc
    if stat.S_ISDIR(mode):
        raise ImageError(f"{name}: is a folder, not an image file")
    if not stat.S_ISREG(mode):
        kind = next((k for test, k in _NOT_REGULAR if test(mode)), "something other than a file")
        raise ImageError(f"{name}: not a regular file ({kind}); give a picture file (PNG or JPEG)")


def _cannot_open(name: str, exc: OSError) -> ImageError:
    """One line for a picture the operating system will not hand over, saying what the user can check."""
    if isinstance(exc, FileNotFoundError):
        return ImageError(f"{name}: no such file")
    if isinstance(exc, PermissionError):
        return ImageError(f"{name}: cannot be read (permission denied); check its permissions (ls -l {name})")
    return ImageError(f"{name}: cannot be read ({exc.strerror or exc})")


def read_image(source: str | os.PathLike | BinaryIO, name: str | None = None) -> np.ndarray:
    """A picture (a file path, or an open binary file such as an upload) as grey levels (H, W) float32 in 0-1
    (1 = white), upright as a person sees it. `name` is what error messages call it (default: the path). A path
    must be a regular file (see `_check_regular_file`)."""
    if isinstance(source, (str, os.PathLike)):
        name = name or str(Path(source))
        _check_regular_file(Path(source), name)
    name = name or "the picture"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                frames = getattr(image, "n_frames", 1)
                if frames > 1:
                    raise ImageError(
                        f"{name}: holds {frames} pages or frames; give one picture of one character "
                        "per file (save the page you mean as PNG or JPEG)"
                    )
                if image.width * image.height > MAX_PIXELS:
                    raise ImageError(
                        f"{name}: {image.width}x{image.height} pixels is too large (at most "
                        f"{MAX_PIXELS // 1_000_000} megapixels); crop it to the character"
                    )
                image.load()
                return to_gray(image)
    except ImageError:
        raise
    except (FileNotFoundError, PermissionError) as exc:
        raise _cannot_open(name, exc) from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not an image this program can read (PNG or JPEG expected)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name}: too large to be a picture of one character ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: damaged or truncated image file ({exc})") from exc


def to_gray(image: Image.Image) -> np.ndarray:
    """Grey levels in 0-1 of any Pillow image, after its EXIF rotation. Transparent parts become the background:
    white behind dark ink, black behind light ink (a drawing saved with a transparent background)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return np.clip(np.asarray(image, dtype=np.float32) / 65535.0, 0.0, 1.0)
    if image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float32))
        return np.clip(values / 255.0 if values.max() > 1.0 else values, 0.0, 1.0)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if not has_alpha:
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    grey_alpha = np.asarray(image.convert("RGBA").convert("LA"), dtype=np.float32) / 255.0
    grey, alpha = grey_alpha[..., 0], grey_alpha[..., 1]
    opaque = alpha.sum()
    if opaque == 0:
        return np.ones_like(grey)  # fully transparent: blank
    behind = 1.0 if (grey * alpha).sum() / opaque < 0.5 else 0.0
    return grey * alpha + behind * (1.0 - alpha)


# ----------------------------------------------------------------------------- converting


def _reduce(grey: np.ndarray) -> np.ndarray:
    """A large photo shrunk (area average) so that its longer side is WORK_SIZE; small pictures as they are."""
    longer = max(grey.shape)
    if longer <= WORK_SIZE:
        return grey
    scale = WORK_SIZE / longer
    size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
    return np.asarray(Image.fromarray(grey).resize(size, Image.Resampling.BOX), dtype=np.float32)


def _border_mask(shape: tuple[int, int]) -> np.ndarray:
    """The picture's outer frame (a twentieth of the shorter side, at least one pixel), where the background is."""
    width = max(1, min(shape) // 20)
    mask = np.ones(shape, dtype=bool)
    mask[width:-width, width:-width] = False
    return mask


def _spread(values: np.ndarray) -> float:
    """A standard deviation that a minority of outliers (ink in the border) does not move: 1.4826 x the MAD."""
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def background_surface(smooth: np.ndarray) -> np.ndarray:
    """The paper's brightness under the whole picture, fitted to the border as a quadratic surface (even, or lit
    from one side, or darker towards the corners, as photos are), ignoring border pixels far off the fit (ink)."""
    height, width = smooth.shape
    mask = _border_mask(smooth.shape)
    rows, cols = np.nonzero(mask)

    def basis(r: np.ndarray, c: np.ndarray) -> np.ndarray:
        y, x = r / height - 0.5, c / width - 0.5
        return np.stack([np.ones_like(x), x, y, x * x, y * y, x * y], axis=-1)

    design, values = basis(rows.astype(np.float32), cols.astype(np.float32)), smooth[mask]
    keep = np.ones(len(values), dtype=bool)
    for _ in range(3):  # refit without what lies far off the surface (a character reaching into the border)
        coef = np.linalg.lstsq(design[keep], values[keep], rcond=None)[0]
        residual = values - design @ coef
        keep = np.abs(residual - np.median(residual)) <= max(3 * _spread(residual), 0.02)
    grid_r, grid_c = np.meshgrid(np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32), indexing="ij")
    return (basis(grid_r, grid_c) @ coef).astype(np.float32)


def ink_map(grey: np.ndarray) -> tuple[np.ndarray, bool, float]:
    """Ink in 0-1 (1 = the character's strokes, 0 = background), whether the picture was inverted (dark ink on
    light), and the contrast of ink against background. The background is what touches the border (see
    `background_surface`); the ink is whatever lies furthest from it, on the darker or the lighter side."""
    smooth = ndimage.gaussian_filter(grey, BLUR_SIGMA)  # EMNIST's sigma-1 blur, which also quietens noise
    residual = smooth - background_surface(smooth)
    inverted = -float(residual.min()) > float(residual.max())
    ink = -residual if inverted else residual
    contrast = float(ink.max())
    if contrast < MIN_CONTRAST:
        return np.zeros_like(ink), inverted, max(contrast, 0.0)
    noise = 4 * _spread(ink[_border_mask(ink.shape)])  # what the background itself varies by
    floor = min(noise, contrast / 2)
    return np.clip((ink - floor) / (contrast - floor), 0.0, 1.0), inverted, contrast


def character_box(ink: np.ndarray) -> tuple[int, int, int, int] | None:
    """The bounding box (top, left, bottom, right; bottom and right exclusive) of the character's ink: every
    blob above BOX_THRESHOLD except specks (smaller than MIN_PART of the largest). None when there is no ink."""
    labels, count = ndimage.label(ink > BOX_THRESHOLD, structure=np.ones((3, 3)))
    if count == 0:
        return None
    areas = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(areas >= MIN_PART * areas.max()) + 1
    rows, cols = np.nonzero(np.isin(labels, keep))
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


def _frame(ink: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The square window centred on the box with the margin EMNIST leaves, cut from the ink (zeros outside)."""
    top, left, bottom, right = box
    side = max(bottom - top, right - left) * SIZE / (SIZE - 2 * MARGIN)
    centre_y, centre_x = (top + bottom) / 2, (left + right) / 2
    n = max(1, int(np.ceil(side)))
    y0, x0 = int(round(centre_y - n / 2)), int(round(centre_x - n / 2))
    window = np.zeros((n, n), dtype=np.float32)
    sy0, sx0 = max(0, y0), max(0, x0)
    sy1, sx1 = min(ink.shape[0], y0 + n), min(ink.shape[1], x0 + n)
    window[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = ink[sy0:sy1, sx0:sx1]
    return window


def prepare(grey: np.ndarray, name: str = "the picture") -> Prepared:
    """EMNIST's conversion of one character (see the module docstring) from grey levels (H, W) in 0-1.
    `name` is what error messages call the picture."""
    grey = np.asarray(grey, dtype=np.float32)
    if grey.ndim != 2:
        raise ImageError(f"{name}: expected grey levels of shape (height, width), got shape {grey.shape}")
    if min(grey.shape) < MIN_SIDE:
        raise ImageError(
            f"{name}: {grey.shape[1]}x{grey.shape[0]} pixels is too small to hold a character "
            f"(at least {MIN_SIDE}x{MIN_SIDE})"
        )
    if not np.isfinite(grey).all():
        raise ImageError(f"{name}: holds NaN or infinite grey levels")
    grey = _reduce(np.clip(grey, 0.0, 1.0))
    ink, inverted, contrast = ink_map(grey)
    box = character_box(ink) if contrast >= MIN_CONTRAST else None
    if box is None:
        raise ImageError(
            f"{name}: no character found: the picture is blank or nearly uniform (ink differs from "
            f"the background by {contrast:.0%} of the range, at least {MIN_CONTRAST:.0%} needed)"
        )
    window = _frame(ink, box)
    small = np.asarray(Image.fromarray(window).resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    small = np.clip(small, 0.0, None)
    peak = float(small.max())
    if peak <= 0:
        raise ImageError(f"{name}: no character found after resizing (the ink is too faint or too thin)")
    image = np.round(small / peak * 255.0).astype(np.uint8)
    return Prepared(image=image, inverted=inverted, box=box, shape=tuple(grey.shape), contrast=contrast)


def prepare_file(path: str | os.PathLike) -> Prepared:
    """`prepare` of a picture file; every problem is an ImageError naming the file."""
    return prepare(read_image(path), str(path))


def prepare_image(image: Image.Image, name: str = "the picture") -> Prepared:
    """`prepare` of a Pillow image (an upload, a drawing)."""
    return prepare(to_gray(image), name)
