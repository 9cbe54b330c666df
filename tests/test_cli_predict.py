"""`python -m emnist_utils predict`, through cli.main: EMNIST test images handed in as a person would (enlarged 5-10
times, dark ink on white or light on black, off-centre, PNG and JPEG) are read at close to the model's own accuracy
on the very same images; the text and JSON outputs; blank, damaged and multi-page pictures fail one by one with a
clear message while the others are still predicted; the model file and the options are checked; CPU by default."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import PROJECT_ROOT
from PIL import Image
from try_it_support import rendered, session_model

from emnist_utils import cli

# How far predict's accuracy on the rendered pictures may fall below (or rise above) the model's accuracy on the
# original 28x28 images, in percentage points, over the 470 images of `small_splits` (10 per class).
ACCURACY_TOLERANCE = 5.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory, standin_data):
    return session_model(tmp_path_factory, standin_data)


def _predict(capsys, *argv) -> tuple[int, str, str]:
    rc = cli.main(["predict", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def _picture(tmp_path, image, name="seven.png", **kwargs):
    path = tmp_path / name
    rendered(image, np.random.default_rng(0), **kwargs).save(path)
    return path


def test_rendered_test_images_are_read_at_the_models_own_accuracy(tmp_path, capsys, trained, small_splits):
    """470 test images (10 per class) saved as pictures: every third light on black, the rest dark on white;
    alternately PNG and JPEG. Predict's top-1 accuracy must be within ACCURACY_TOLERANCE points of the model's
    accuracy on the same images as the loader gives them."""
    images, labels = small_splits.test_images, small_splits.test_labels
    rng = np.random.default_rng(7)
    paths = []
    for i, image in enumerate(images.numpy()):
        picture = rendered(image, rng, dark_ink=i % 3 != 0)
        path = tmp_path / f"{i:03d}.{'png' if i % 2 else 'jpg'}"
        picture.save(path, **({} if i % 2 else {"quality": 90}))
        paths.append(path)
    rc, out, err = _predict(capsys, *paths, "--weights", trained.path, "--json", "--top", "3")
    assert rc == 0, err
    entries = json.loads(out)
    assert [e["image"] for e in entries] == [str(p) for p in paths]
    read = [e["top"][0][0] for e in entries]
    truth = [small_splits.classes[int(k)] for k in labels]
    via_predict = 100 * np.mean([r == t for r, t in zip(read, truth)])
    own = 100 * float((trained.model.predict(images, device="cpu") == labels).float().mean())
    print(
        f"{trained.source}: accuracy on the 28x28 test images {own:.1f}%, through predict on the same images "
        f"rendered as pictures {via_predict:.1f}% ({len(paths)} images)"
    )
    assert own > 100 / 47 * 5, f"the model is no better than guessing ({own:.1f}%), so this test would prove nothing"
    assert abs(via_predict - own) <= ACCURACY_TOLERANCE, (own, via_predict)


def test_text_output_lists_top_classes_per_picture(tmp_path, capsys, trained, standin_data):
    paths = [_picture(tmp_path, standin_data.test_images[i].numpy(), f"p{i}.png") for i in range(2)]
    rc, out, err = _predict(capsys, *paths, "--weights", trained.path, "--top", "3")
    assert rc == 0 and err == ""
    lines = out.strip().splitlines()
    assert len(lines) == 2
    for path, line in zip(paths, lines):
        name, rest = line.split(": ", 1)
        assert name == str(path)
        entries = [e.rsplit(" ", 1) for e in rest.split(" | ")]
        assert len(entries) == 3 and all(c in trained.model.classes for c, _ in entries)
        probs = [float(p.rstrip("%")) for _, p in entries]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 100.05


def test_json_probabilities_are_the_models(tmp_path, capsys, trained, standin_data):
    """The JSON carries the model's own probabilities for the converted image (with what its file applies)."""
    from emnist_utils.core.handwriting import prepare_file

    path = _picture(tmp_path, standin_data.test_images[3].numpy())
    rc, out, _ = _predict(capsys, path, "--weights", trained.path, "--json", "--top", "47")
    assert rc == 0
    (entry,) = json.loads(out)
    top = entry["top"]
    assert len(top) == len(trained.model.classes) and abs(sum(p for _, p in top) - 1) < 1e-4
    expected = trained.model.probabilities(torch.from_numpy(prepare_file(path).image)[None])[0]
    for char, p in top:
        assert p == pytest.approx(float(expected[trained.model.classes.index(char)]), abs=1e-5)


def test_bad_pictures_fail_one_by_one(tmp_path, capsys, trained, standin_data):
    """A good picture among a blank, a damaged, a multi-page and a missing one: the good one is predicted, each
    bad one gets its own error line (no traceback), and the exit code is 1."""
    good = _picture(tmp_path, standin_data.test_images[0].numpy(), "good.png")
    blank = tmp_path / "blank.png"
    Image.new("L", (200, 200), 255).save(blank)
    damaged = tmp_path / "damaged.jpg"
    damaged.write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole JPEG")
    pages = tmp_path / "pages.tiff"
    Image.new("L", (60, 60), 0).save(pages, save_all=True, append_images=[Image.new("L", (60, 60), 255)])
    missing = tmp_path / "missing.png"
    rc, out, err = _predict(capsys, blank, good, damaged, pages, missing, "--weights", trained.path, "--json")
    assert rc == 1
    entries = {e["image"]: e for e in json.loads(out)}
    assert len(entries[str(good)]["top"]) == 5 and "error" not in entries[str(good)]
    for bad, words in ((blank, "no character found"), (damaged, "damaged or truncated"), (pages, "2 pages"),
                       (missing, "no such file")):  # fmt: skip
        assert words in entries[str(bad)]["error"] and entries[str(bad)]["top"] == []
        assert f"error: {bad}: {words}" in err or (f"error: {bad}:" in err and words in err)
    assert "Traceback" not in err
    assert "4 of 5 picture(s) could not be read" in err


def test_named_pipe_is_refused_not_waited_on(tmp_path, trained, standin_data):
    """`python -m emnist_utils predict` given a named pipe used to wait forever for a writer; now the pipe fails on
    its own with one line and the other picture is still predicted. Run in a process of its own, with a timeout,
    so that a regression fails instead of hanging the tests."""
    good = _picture(tmp_path, standin_data.test_images[0].numpy(), "good.png")
    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)
    command = [sys.executable, "-m", "emnist_utils", "predict", str(pipe), str(good), "--weights", str(trained.path)]
    try:
        done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("predict waited on the named pipe for 120 s instead of refusing it")
    assert done.returncode == 1
    assert done.stderr == (
        f"error: {pipe}: not a regular file (a named pipe); give a picture file (PNG or JPEG)\n"
        "1 of 2 picture(s) could not be read\n"
    )
    assert done.stdout.startswith(f"{good}: ") and done.stdout.count("\n") == 1


def test_light_ink_on_dark_reads_like_dark_on_light(tmp_path, capsys, trained, standin_data):
    image = standin_data.test_images[5].numpy()
    dark = _picture(tmp_path, image, "dark.png")
    light = _picture(tmp_path, image, "light.png", dark_ink=False)
    rc, out, _ = _predict(capsys, dark, light, "--weights", trained.path, "--json")
    assert rc == 0
    first, second = json.loads(out)
    assert first["top"][0][0] == second["top"][0][0]
    assert first["top"][0][1] == pytest.approx(second["top"][0][1], abs=0.02)


def test_missing_or_unusable_model_file_is_one_line(tmp_path, capsys, standin_data):
    picture = _picture(tmp_path, standin_data.test_images[0].numpy())
    rc, out, err = _predict(capsys, picture, "--weights", tmp_path / "none.pt")
    assert rc == 2 and out == ""
    assert err.startswith("error: no trained-model file at") and "notebook 05" in err and err.count("\n") == 1
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a model")
    rc, _, err = _predict(capsys, picture, "--weights", broken)
    assert rc == 2 and err.startswith("error: ") and "Traceback" not in err


def test_top_must_be_positive(tmp_path, capsys, trained):
    rc, _, err = _predict(capsys, tmp_path / "x.png", "--weights", trained.path, "--top", "0")
    assert rc == 2 and "--top must be at least 1" in err


def test_runs_on_the_cpu_unless_told(tmp_path, capsys, monkeypatch, trained, standin_data):
    """Even where a GPU is present: one picture needs none. --device (or EMNIST_DEVICE) is respected."""
    picture = _picture(tmp_path, standin_data.test_images[0].numpy())
    seen = []
    original = cli.recognise_files
    monkeypatch.setattr(cli, "recognise_files", lambda *a: seen.append(a[3]) or original(*a))
    assert _predict(capsys, picture, "--weights", trained.path)[0] == 0
    monkeypatch.setenv("EMNIST_DEVICE", "cpu")
    assert _predict(capsys, picture, "--weights", trained.path, "--device", "cpu")[0] == 0
    assert [torch.device(d).type for d in seen] == ["cpu", "cpu"]
    if not torch.cuda.is_available():
        rc, _, err = _predict(capsys, picture, "--weights", trained.path, "--device", "cuda")
        assert rc == 2 and "no CUDA GPU" in err


def test_help_describes_every_option(capsys):
    with pytest.raises(SystemExit):
        cli.main(["predict", "--help"])
    text = capsys.readouterr().out
    for option in ("--weights", "--top", "--json", "--device", "IMAGE"):
        assert option in text
