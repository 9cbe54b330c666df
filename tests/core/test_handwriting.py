"""emnist_utils.core.handwriting: EMNIST's conversion of a picture of one character, proven on EMNIST's own test
images handed back as a person would (enlarged, dark on white, off-centre): they must come back as the loader's
upright images, not transposed, whatever the polarity, position or scale; and every kind of picture that is not one
readable character must fail with a clear ImageError."""

from __future__ import annotations

import gzip
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from try_it_support import mean_abs_diff, rendered

from emnist_utils.core import handwriting as hw
from emnist_utils.try_it import render_like_a_person

# A half-pixel shift of an EMNIST image alone changes it by about 10 grey levels on average (of 255): the
# conversion finds the character's box in the enlarged picture, so it can land up to half a pixel away from
# where EMNIST's own conversion put it. A transposed image differs by about 50.
ROUND_TRIP_TOLERANCE = 12.0


def _grey(picture: Image.Image) -> np.ndarray:
    return np.asarray(picture, dtype=np.float32) / 255.0


@pytest.fixture(scope="module")
def test_images(standin_data):
    """60 test images of the stand-in, spread over the classes (fixed seed)."""
    rng = np.random.default_rng(0)
    idx = rng.choice(len(standin_data.test_labels), 60, replace=False)
    return standin_data.test_images[idx].numpy()


def test_only_enlarged_images_come_back_as_the_loaders_upright_images(test_images):
    """Orientation: pictures that were only enlarged (6 times, light ink on black as stored) convert back to the
    loader's images; their transposes, what a conversion that forgot EMNIST's transposed storage would match, are
    far away."""
    same, flipped = [], []
    for image in test_images[:10]:
        back = hw.prepare(_grey(Image.fromarray(image).resize((168, 168), Image.Resampling.BICUBIC))).image
        assert back.shape == (28, 28) and back.dtype == np.uint8
        same.append(mean_abs_diff(back, image))
        flipped.append(mean_abs_diff(back, image.T))
    assert np.median(same) < ROUND_TRIP_TOLERANCE, same
    assert all(s < f for s, f in zip(same, flipped)), (same, flipped)
    assert np.median(flipped) > 3 * np.median(same)


def test_rendered_test_images_come_back_upright(test_images):
    """60 test images enlarged 5-10 times, dark ink on white, padded at random (off-centre): on average within
    ROUND_TRIP_TOLERANCE of the loader's images, each one nearer to it than to its transpose."""
    rng = np.random.default_rng(1)
    same, flipped = [], []
    for image in test_images:
        back = hw.prepare(_grey(rendered(image, rng))).image
        same.append(mean_abs_diff(back, image))
        flipped.append(mean_abs_diff(back, image.T))
    assert np.mean(same) < ROUND_TRIP_TOLERANCE, f"mean difference {np.mean(same):.1f}"
    assert np.mean(flipped) > 3 * np.mean(same)
    assert np.mean(np.array(same) < np.array(flipped)) >= 0.95


def test_polarity_position_and_scale_do_not_change_the_result(test_images):
    """Light ink on dark gives what dark ink on light gives; so do another position, page size and scale."""
    image = test_images[1]
    dark = hw.prepare(_grey(render_like_a_person(image, 6, offset=(10, 50))))
    light = hw.prepare(_grey(render_like_a_person(image, 6, dark_ink=False, offset=(10, 50))))
    moved = hw.prepare(_grey(render_like_a_person(image, 6, offset=(70, 40), size=(400, 300))))
    larger = hw.prepare(_grey(render_like_a_person(image, 10, offset=(5, 5))))
    assert dark.inverted and not light.inverted
    assert mean_abs_diff(dark.image, light.image) < 2
    assert mean_abs_diff(dark.image, moved.image) < 2
    assert mean_abs_diff(dark.image, larger.image) < 6


def test_character_is_centred_with_emnist_margin():
    """A solid rectangle (taller than wide) ends up 24 pixels tall, centred, 2 pixels from top and bottom."""
    page = np.ones((300, 200), dtype=np.float32)
    page[40:220, 120:170] = 0.0  # dark ink, off-centre
    result = hw.prepare(page)
    rows = np.flatnonzero(result.image.max(1) > 128)
    cols = np.flatnonzero(result.image.max(0) > 128)
    assert np.abs(np.subtract(result.box, (40, 120, 220, 170))).max() <= 1  # the sigma-1 blur widens it by <= 1
    assert 2 <= rows[0] <= 3 and 24 <= rows[-1] <= 25
    assert abs((cols[0] + cols[-1]) / 2 - 13.5) <= 0.5
    assert result.image.max() == 255


def test_specks_far_smaller_than_the_character_are_ignored(test_images):
    image = test_images[2]
    clean = _grey(render_like_a_person(image, 6, offset=(30, 30)))
    dusty = clean.copy()
    dusty[3:5, 3:5] = 0.0  # a speck of dust in a corner, far outside the character
    dusty[-6:-4, -9:-7] = 0.0
    assert hw.prepare(dusty).box == hw.prepare(clean).box
    assert mean_abs_diff(hw.prepare(dusty).image, hw.prepare(clean).image) < 1


def test_uneven_photo_with_noise_and_jpeg(tmp_path, test_images):
    """A photo: paper lit unevenly (a grey gradient), sensor noise, JPEG compression: converts nearly as the
    clean picture does."""
    image = test_images[3]
    picture = _grey(render_like_a_person(image, 8, offset=(20, 60)))
    clean = hw.prepare(picture).image
    rng = np.random.default_rng(0)
    gradient = np.linspace(0.75, 0.95, picture.shape[1])[None, :]
    photo = np.clip(picture * gradient + rng.normal(0, 0.02, picture.shape), 0, 1)
    path = tmp_path / "photo.jpg"
    Image.fromarray(np.round(photo * 255).astype(np.uint8)).save(path, quality=75)
    result = hw.prepare_file(path)
    assert result.inverted
    assert mean_abs_diff(result.image, clean) < 6


@pytest.mark.parametrize("fmt", ["png", "jpeg", "rgba", "transparent", "grey16", "palette", "exif_rotated"])
def test_picture_formats(tmp_path, test_images, fmt):
    """PNG and JPEG, colour, a drawing with a transparent background, 16-bit grey, a palette, and a phone photo
    stored on its side with an EXIF rotation: all read upright, as the picture itself converts."""
    picture = render_like_a_person(test_images[4], 6, offset=(12, 30))
    expected = hw.prepare(_grey(picture)).image
    path = tmp_path / f"picture.{'jpg' if fmt in ('jpeg', 'exif_rotated') else 'png'}"
    if fmt == "png":
        picture.save(path)
    elif fmt == "jpeg":
        picture.convert("RGB").save(path, quality=85)
    elif fmt == "rgba":
        Image.merge("RGBA", [picture] * 3 + [Image.new("L", picture.size, 255)]).save(path)
    elif fmt == "transparent":  # black strokes, everything else transparent
        alpha = Image.fromarray(255 - np.asarray(picture))
        Image.merge("RGBA", [Image.new("L", picture.size, 0)] * 3 + [alpha]).save(path)
    elif fmt == "grey16":
        Image.fromarray(np.asarray(picture).astype(np.uint16) * 257).save(path)
    elif fmt == "palette":
        picture.convert("P").save(path)
    elif fmt == "exif_rotated":  # pixels stored rotated; orientation 8 tells the viewer to rotate them back
        exif = Image.Exif()
        exif[0x0112] = 8
        picture.rotate(-90, expand=True).save(path, exif=exif, quality=90)
    assert mean_abs_diff(hw.prepare_file(path).image, expected) < (4 if fmt in ("jpeg", "exif_rotated") else 1)


@pytest.mark.parametrize("level", [0.0, 0.5, 1.0])
def test_blank_pictures_fail(level):
    with pytest.raises(hw.ImageError, match="no character found"):
        hw.prepare(np.full((120, 90), level, dtype=np.float32), "blank.png")


def test_faint_noise_alone_is_blank():
    rng = np.random.default_rng(0)
    noise = np.clip(0.9 + rng.normal(0, 0.01, (200, 200)), 0, 1).astype(np.float32)
    with pytest.raises(hw.ImageError, match="noise.png: no character found"):
        hw.prepare(noise, "noise.png")


def test_bad_shapes_fail():
    with pytest.raises(hw.ImageError, match="too small"):
        hw.prepare(np.zeros((5, 40), dtype=np.float32))
    with pytest.raises(hw.ImageError, match="shape"):
        hw.prepare(np.zeros((40, 40, 3), dtype=np.float32))
    with pytest.raises(hw.ImageError, match="NaN"):
        hw.prepare(np.full((40, 40), np.nan, dtype=np.float32))


def _multi_frame(path, fmt):
    frames = [Image.new("L", (40, 40), 255), Image.new("L", (40, 40), 0)]
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:])


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "no such file"),
        ("folder", "is a folder"),
        ("empty", "not an image"),
        ("garbage", "not an image"),
        ("gzip", "not an image"),
        ("truncated_png", "damaged or truncated"),
        ("truncated_jpeg", "damaged or truncated"),
        ("gif_frames", "2 pages or frames"),
        ("tiff_pages", "2 pages or frames"),
    ],
)
def test_unreadable_files_fail_clearly(tmp_path, kind, message):
    path = tmp_path / f"{kind}.png"
    good = render_like_a_person(np.eye(28, dtype=np.uint8) * 255, 5)
    if kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    elif kind == "gzip":
        path.write_bytes(gzip.compress(b"not a picture" * 50))
    elif kind == "truncated_png":
        good.save(path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "truncated_jpeg":
        path = tmp_path / "truncated.jpg"
        good.save(path, quality=90)
        path.write_bytes(path.read_bytes()[:500])
    elif kind == "gif_frames":
        path = tmp_path / "frames.gif"
        _multi_frame(path, "GIF")
    elif kind == "tiff_pages":
        path = tmp_path / "pages.tiff"
        _multi_frame(path, "TIFF")
    with pytest.raises(hw.ImageError, match=message) as info:
        hw.prepare_file(path)
    assert str(path) in str(info.value)


def _read_within(path: Path, seconds: float = 20.0):
    """hw.read_image(path) in a thread, so that a call blocked opening a named pipe fails the test instead of hanging
    it: after `seconds` the pipe is opened for writing and closed (which lets the blocked reader go on)."""
    outcome = {}

    def target():
        try:
            outcome["value"] = hw.read_image(path)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(seconds)
        pytest.fail(f"read_image({path}) waited {seconds:.0f} s on a named pipe instead of refusing it")
    return outcome


@pytest.mark.parametrize(
    ("kind", "what"),
    [("named-pipe", "a named pipe"), ("socket", "a socket"), ("device", "a character device")],
)
def test_not_a_regular_file_is_refused_before_opening(tmp_path, kind, what):
    """A named pipe would block the reader until something writes to it (predict hung), /dev/zero never ends; both
    are refused by their kind before anything opens them, as a folder is."""
    listener = None
    if kind == "named-pipe":
        path = tmp_path / "pipe.png"
        os.mkfifo(path)
    elif kind == "socket":
        path = tmp_path / "sock.png"
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(path))
    else:
        path = Path("/dev/zero")
    try:
        outcome = _read_within(path)
    finally:
        if listener is not None:
            listener.close()
    assert isinstance(outcome.get("error"), hw.ImageError), outcome
    assert str(outcome["error"]) == f"{path}: not a regular file ({what}); give a picture file (PNG or JPEG)"


def test_too_many_pixels_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    Image.new("L", (300, 300), 255).save(path)
    monkeypatch.setattr(hw, "MAX_PIXELS", 50_000)
    with pytest.raises(hw.ImageError, match="too large"):
        hw.prepare_file(path)


def test_large_photo_is_reduced_first(test_images):
    """A 3000-pixel photo is reduced to WORK_SIZE before converting, and converts as a small picture does."""
    image = test_images[5]
    picture = np.asarray(render_like_a_person(image, 60, offset=(900, 600), size=(3000, 2400)), dtype=np.float32)
    result = hw.prepare(picture / 255.0)
    assert max(result.shape) == hw.WORK_SIZE
    assert mean_abs_diff(result.image, hw.prepare(_grey(render_like_a_person(image, 6))).image) < 6


def test_character_reaching_into_the_border_converts_as_when_centred(test_images):
    """A character close to the page's edge (inside the band whose median is taken for the background)."""
    image = test_images[6]
    centred = hw.prepare(_grey(render_like_a_person(image, 6))).image
    edge = hw.prepare(_grey(render_like_a_person(image, 6, offset=(40, 2), size=(260, 172)))).image
    assert mean_abs_diff(edge, centred) < 3
