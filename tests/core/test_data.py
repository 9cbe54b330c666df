"""emnist_utils.core.data: IDX parsing, orientation, layouts, the six splits, split detection, every refusal and the
download of one split from a locally served archive."""

from __future__ import annotations

import builtins
import contextlib
import gzip
import hashlib
import http.server
import io
import os
import socket
import string
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    BALANCED_CLASSES,
    RAW_DIR,
    STANDIN_DIR,
    build_dataset,
    idx_images_bytes,
    idx_labels_bytes,
    permissions,
    raised_bound_by_permissions,
    run_python_bound_by_permissions,
    shared_tmp_dir,
    write_sha256sums,
)

from emnist_utils.core import data as D
from emnist_utils.core.data import DataError, load_emnist
from emnist_utils.core.paths import PROJECT_ROOT, resolve

DIGITS = list(string.digits)
BYCLASS_CLASSES = list(string.digits + string.ascii_uppercase + string.ascii_lowercase)
LETTERS_CLASSES = [f"{u}/{lo}" for u, lo in zip(string.ascii_uppercase, string.ascii_lowercase)]
# split: (class names, first label in the files, mapping columns); the class counts are EMNIST's published ones
SPLIT_FORMATS = {
    "balanced": (BALANCED_CLASSES, 0, 2),
    "bymerge": (BALANCED_CLASSES, 0, 2),
    "byclass": (BYCLASS_CLASSES, 0, 2),
    "letters": (LETTERS_CLASSES, 1, 3),
    "digits": (DIGITS, 0, 2),
    "mnist": (DIGITS, 0, 2),
}
EXPECTED_NUM_CLASSES = {"balanced": 47, "bymerge": 47, "byclass": 62, "letters": 26, "digits": 10, "mnist": 10}


@pytest.fixture
def no_download(monkeypatch):
    """Replace download_split by a stub that records its calls and fails the test if it is ever reached."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append((args, kwargs))
        raise AssertionError(f"download_split must not be called here (called with {args}, {kwargs})")

    monkeypatch.setattr(D, "download_split", refuse)
    return calls


def accept_small(monkeypatch, split: str, n_train: int, n_test: int) -> None:
    """Let small synthetic files carry an official split's name: their counts become the 'official' ones and the
    official sha256 table for that split is emptied (the files are vouched for by SHA256SUMS instead)."""
    monkeypatch.setitem(D.OFFICIAL_COUNTS, split, {"train": n_train, "test": n_test})
    monkeypatch.setitem(D.OFFICIAL_SHA256, split, {})


def official_format_dataset(root: Path, split: str, per_class_train: int = 2, per_class_test: int = 1, **kw):
    """Small files in `split`'s official format (its classes, first label, mapping columns), every class present."""
    classes, first_label, columns = SPLIT_FORMATS[split]
    k = len(classes)
    return build_dataset(
        root,
        split,
        n_train=per_class_train * k,
        n_test=per_class_test * k,
        classes=classes,
        first_label=first_label,
        mapping_columns=columns,
        balanced_labels=True,
        **kw,
    )


# ----------------------------------------------------------------------------- parsing and layout


@pytest.mark.parametrize("gz", [True, False])
def test_synthetic_split_loads_and_matches_written_data(tmp_path, gz):
    ds = build_dataset(tmp_path, "synth", n_train=30, n_test=7, gz=gz)
    data = load_emnist(tmp_path, "synth", download=False)
    assert data.split == "synth" and data.num_classes == 47 and data.classes == BALANCED_CLASSES
    assert data.train_images.dtype == torch.uint8 and tuple(data.train_images.shape) == (30, 28, 28)
    assert tuple(data.test_images.shape) == (7, 28, 28)
    assert data.train_labels.dtype == torch.int64
    np.testing.assert_array_equal(data.train_labels.numpy(), ds.labels["train"])
    np.testing.assert_array_equal(data.test_labels.numpy(), ds.labels["test"])
    # EMNIST stores every image transposed; load_emnist returns them upright
    np.testing.assert_array_equal(data.train_images.numpy(), ds.stored["train"].transpose(0, 2, 1))
    np.testing.assert_array_equal(data.test_images.numpy(), ds.stored["test"].transpose(0, 2, 1))
    assert data.verified_by == "SHA256SUMS"
    assert set(data.files) == {"train_images", "train_labels", "test_images", "test_labels", "mapping"}
    # the checksum covers the decompressed data: gz and plain copies of the same data agree
    other = build_dataset(tmp_path / "other", "synth", n_train=30, n_test=7, gz=not gz)
    assert load_emnist(other.root, "synth", download=False).checksum == data.checksum
    assert data.provenance() == {"dataset": "emnist-synth", "split": "synth", "checksum": data.checksum}
    different = build_dataset(tmp_path / "different", "synth", n_train=30, n_test=7, gz=gz, seed=1)
    assert load_emnist(different.root, "synth", download=False).checksum != data.checksum


def test_orientation_stored_transposed_comes_out_upright(tmp_path):
    stored = np.zeros((1, 28, 28), dtype=np.uint8)
    stored[0, 2, 20] = 255  # stored row 2, column 20
    test = np.zeros((1, 28, 28), dtype=np.uint8)
    build_dataset(tmp_path, "synth", images={"train": stored, "test": test})
    loaded = load_emnist(tmp_path, "synth", download=False).train_images
    assert loaded[0][20, 2] == 255
    assert loaded[0][2, 20] == 0
    assert int(loaded.sum()) == 255


def test_parse_idx_direct():
    imgs = np.arange(2 * 28 * 28, dtype=np.uint64).reshape(2, 28, 28).astype(np.uint8)
    out = D.parse_idx(idx_images_bytes(imgs), D.IMAGES_MAGIC)
    np.testing.assert_array_equal(out, imgs)
    labels = np.array([3, 1, 4], dtype=np.uint8)
    np.testing.assert_array_equal(D.parse_idx(idx_labels_bytes(labels), D.LABELS_MAGIC), labels)
    with pytest.raises(DataError, match="too short"):
        D.parse_idx(b"\x00\x00", D.LABELS_MAGIC)
    with pytest.raises(DataError, match="magic"):
        D.parse_idx(idx_labels_bytes(labels), D.IMAGES_MAGIC)
    with pytest.raises(DataError, match="header promises"):
        D.parse_idx(idx_labels_bytes(labels, count=4), D.LABELS_MAGIC)
    with pytest.raises(DataError, match="header promises"):
        D.parse_idx(idx_labels_bytes(labels) + b"\x00", D.LABELS_MAGIC)
    with pytest.raises(DataError, match="header cut short"):
        D.parse_idx(idx_images_bytes(imgs)[:10], D.IMAGES_MAGIC)


def test_images_that_are_not_28x28_are_refused(tmp_path):
    small = {"train": np.zeros((3, 20, 20), dtype=np.uint8), "test": np.zeros((2, 20, 20), dtype=np.uint8)}
    ds = build_dataset(tmp_path, "synth", images=small)
    with pytest.raises(DataError, match="28x28") as info:
        load_emnist(tmp_path, "synth", download=False)
    assert ds.files["train_images"].name in str(info.value)


def test_torchvision_layout_uncompressed(tmp_path):
    ds = build_dataset(tmp_path, "synth", gz=False, layout="torchvision")
    assert ds.directory == tmp_path / "EMNIST" / "raw"
    assert not list(tmp_path.glob("emnist-*"))
    data = load_emnist(tmp_path, "synth", download=False)
    assert all(p.parent == ds.directory for p in data.files.values())
    assert all(p.suffix != ".gz" for k, p in data.files.items() if k != "mapping")
    np.testing.assert_array_equal(data.train_labels.numpy(), ds.labels["train"])


def test_mapping_file_crlf_and_fallbacks(tmp_path, monkeypatch):
    ds = build_dataset(tmp_path / "a", "synth", num_classes=10)
    assert b"\r\n" in ds.files["mapping"].read_bytes()
    assert D.read_mapping(ds.files["mapping"]) == (DIGITS, 0)
    assert load_emnist(ds.root, "synth", download=False).classes == DIGITS
    # no mapping file: a known split falls back to its built-in class list ...
    digits = build_dataset(tmp_path / "b", "digits", n_train=20, n_test=10, num_classes=10, mapping=False)
    accept_small(monkeypatch, "digits", 20, 10)
    assert load_emnist(digits.root, "digits", download=False).classes == DIGITS
    # ... an unknown split cannot name its classes
    build_dataset(tmp_path / "c", "synth", mapping=False)
    with pytest.raises(DataError, match="mapping"):
        load_emnist(tmp_path / "c", "synth", download=False)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("0 48\r\nnot a line\r\n", r"emnist-x-mapping.txt:2"),
        ("0 48\r\n1 49 50 51\r\n", r"emnist-x-mapping.txt:2"),
        ("0 48\r\n2 50\r\n", "consecutive"),
        ("2 48\r\n3 49\r\n", "consecutive"),
        ("0 48\r\n0 49\r\n", "consecutive"),
    ],
)
def test_bad_mapping_lines_raise_data_error(tmp_path, text, match):
    bad = tmp_path / "emnist-x-mapping.txt"
    bad.write_text(text)
    with pytest.raises(DataError, match=match):
        D.read_mapping(bad)


@pytest.mark.parametrize("text", ["", "\r\n\r\n  \n"])
def test_empty_mapping_file_raises_data_error(tmp_path, text):
    empty = tmp_path / "emnist-x-mapping.txt"
    empty.write_text(text)
    with pytest.raises(DataError, match="empty") as info:
        D.read_mapping(empty)
    assert str(empty) in str(info.value)


# ----------------------------------------------------------------------------- the six official splits


@pytest.mark.parametrize("mapping", [True, False], ids=["mapping", "builtin"])
@pytest.mark.parametrize("split", list(SPLIT_FORMATS))
def test_each_official_split_loads_with_its_classes(tmp_path, monkeypatch, no_download, split, mapping):
    classes, first_label, _ = SPLIT_FORMATS[split]
    k = EXPECTED_NUM_CLASSES[split]
    ds = official_format_dataset(tmp_path, split, mapping=mapping)
    accept_small(monkeypatch, split, 2 * k, k)
    data = load_emnist(tmp_path, split)
    assert data.split == split and data.num_classes == k and data.classes == classes
    np.testing.assert_array_equal(data.train_labels.numpy(), ds.labels["train"].astype(np.int64) - first_label)
    np.testing.assert_array_equal(data.test_labels.numpy(), ds.labels["test"].astype(np.int64) - first_label)
    assert int(data.train_labels.min()) == 0 and int(data.train_labels.max()) == k - 1
    assert data.verified_by == "SHA256SUMS"
    assert no_download == []


def test_letters_labels_1_to_26_become_classes_0_to_25(tmp_path, monkeypatch):
    ds = official_format_dataset(tmp_path, "letters")
    # the files really hold 1..26 and the mapping has three columns ("label upper lower"), as EMNIST letters does
    assert ds.labels["train"].min() == 1 and ds.labels["train"].max() == 26
    lines = ds.files["mapping"].read_text().splitlines()
    assert lines[0].split() == ["1", "65", "97"] and lines[-1].split() == ["26", "90", "122"]
    classes, first = D.read_mapping(ds.files["mapping"])
    assert first == 1 and len(classes) == 26 and classes[0] == "A/a" and classes[-1] == "Z/z"
    accept_small(monkeypatch, "letters", 52, 26)
    data = load_emnist(tmp_path, "letters", download=False)
    assert data.num_classes == 26
    assert sorted(set(data.train_labels.tolist())) == list(range(26))
    # the first example was written with label 1 (class 0 = "A/a")
    assert int(ds.labels["train"][0]) == 1 and int(data.train_labels[0]) == 0


def test_letters_label_0_is_out_of_range(tmp_path, monkeypatch):
    ds = official_format_dataset(tmp_path, "letters")
    labels = ds.labels["train"].copy()
    labels[3] = 0  # letters labels start at 1
    ds.files["train_labels"].write_bytes(gzip.compress(idx_labels_bytes(labels), mtime=0))
    write_sha256sums(tmp_path)
    accept_small(monkeypatch, "letters", 52, 26)
    with pytest.raises(DataError, match="do not fit the 26 classes") as info:
        load_emnist(tmp_path, "letters", download=False)
    assert ds.files["train_labels"].name in str(info.value)


@pytest.mark.parametrize("mapping", [True, False], ids=["47-line-mapping", "builtin"])
@pytest.mark.parametrize("split", ["bymerge", "balanced"])
def test_62_class_files_under_a_47_class_name_are_refused(tmp_path, monkeypatch, split, mapping):
    # byclass data (labels 0-61) carrying another split's name and (optionally) its 47-line mapping
    ds = build_dataset(tmp_path, split, n_train=124, n_test=62, classes=BYCLASS_CLASSES, balanced_labels=True)
    assert ds.labels["train"].max() == 61
    if mapping:
        ds.files["mapping"].write_bytes("".join(f"{i} {ord(c)}\r\n" for i, c in enumerate(BALANCED_CLASSES)).encode())
    else:
        ds.files["mapping"].unlink()
    write_sha256sums(tmp_path)
    accept_small(monkeypatch, split, 124, 62)
    with pytest.raises(DataError, match="labels 0-61 do not fit the 47 classes") as info:
        load_emnist(tmp_path, split, download=False)
    assert ds.files["train_labels"].name in str(info.value)


# ----------------------------------------------------------------------------- where the data is, which split


def test_data_location_that_is_a_file(tmp_path, monkeypatch, no_download):
    a_file = tmp_path / "emnist-balanced-train-images-idx3-ubyte.gz"
    a_file.write_bytes(b"not a folder")
    for call in (lambda: load_emnist(a_file, "balanced"), lambda: load_emnist(a_file), lambda: D.data_location(a_file)):
        with pytest.raises(DataError, match="is a file, not a folder") as info:
            call()
        assert str(a_file) in str(info.value) and "does not exist" not in str(info.value)
    monkeypatch.setenv("EMNIST_DATA", str(a_file))
    with pytest.raises(DataError, match="is a file, not a folder") as info:
        load_emnist()
    assert str(a_file) in str(info.value) and "does not exist" not in str(info.value)
    assert no_download == []


@pytest.mark.parametrize("split", ["", "   "])
def test_empty_split_name_is_refused_without_download(tmp_path, monkeypatch, no_download, split):
    build_dataset(tmp_path, "digits", num_classes=10)
    monkeypatch.setenv("EMNIST_SPLIT", "digits")  # an explicit empty name is not replaced by the environment
    with pytest.raises(DataError, match="split name is empty") as info:
        load_emnist(tmp_path, split)
    assert "splits present in" in str(info.value) and "digits" in str(info.value)
    with pytest.raises(DataError, match="split name is empty"):
        D.data_location(tmp_path / "empty-folder", split)
    assert no_download == []


def test_folder_with_one_split_loads_it_without_a_split_name(tmp_path, monkeypatch, no_download):
    ds = build_dataset(tmp_path / "flat", "standin", n_train=20, n_test=8)
    data = load_emnist(ds.root)
    assert data.split == "standin" and data.classes == BALANCED_CLASSES
    np.testing.assert_array_equal(data.train_labels.numpy(), ds.labels["train"])
    monkeypatch.setenv("EMNIST_DATA", str(ds.root))
    assert load_emnist().split == "standin"
    # an official split, in torchvision's layout, is found the same way and not downloaded again
    tv = build_dataset(tmp_path / "tv", "digits", n_train=20, n_test=10, num_classes=10, layout="torchvision")
    accept_small(monkeypatch, "digits", 20, 10)
    assert D.data_location(tv.root) == (tv.root.resolve(), "digits")
    assert load_emnist(tv.root).split == "digits"
    assert no_download == []


def test_real_standin_folder_is_detected_as_standin():
    if not STANDIN_DIR.is_dir():
        pytest.skip("stand-in data not present")
    assert D.data_location(STANDIN_DIR) == (STANDIN_DIR, "standin")


def test_folder_with_several_splits_needs_a_choice(tmp_path, monkeypatch, no_download):
    build_dataset(tmp_path, "digits", n_train=20, n_test=10, num_classes=10)
    official_format_dataset(tmp_path, "letters")
    with pytest.raises(DataError, match="several EMNIST splits") as info:
        load_emnist(tmp_path)
    msg = str(info.value)
    assert "digits, letters" in msg and str(tmp_path) in msg and "EMNIST_SPLIT" in msg
    assert no_download == []
    # either one can be chosen, by argument or by EMNIST_SPLIT
    accept_small(monkeypatch, "digits", 20, 10)
    accept_small(monkeypatch, "letters", 52, 26)
    assert load_emnist(tmp_path, "digits").num_classes == 10
    monkeypatch.setenv("EMNIST_SPLIT", "letters")
    assert load_emnist(tmp_path).num_classes == 26


def test_empty_or_missing_folder_defaults_to_balanced(tmp_path):
    assert D.data_location(tmp_path) == (tmp_path.resolve(), "balanced")
    assert D.data_location(tmp_path / "not-yet") == ((tmp_path / "not-yet").resolve(), "balanced")


# ----------------------------------------------------------------------------- refusals


def test_missing_data_folder(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=r"does not exist") as info:
        load_emnist(missing, "synth", download=False)
    assert str(missing) in str(info.value)
    # balanced without download: same refusal, no network
    with pytest.raises(DataError, match=r"does not exist"):
        load_emnist(missing, "balanced", download=False)


def test_wrong_split_name_mentions_splits_present(tmp_path):
    build_dataset(tmp_path, "digits", num_classes=10)
    with pytest.raises(DataError) as info:
        load_emnist(tmp_path, "letters", download=False)
    msg = str(info.value)
    assert "emnist-letters-train-images-idx3-ubyte" in msg
    assert "splits present there: digits" in msg


def test_wrong_split_name_torchvision_layout(tmp_path):
    build_dataset(tmp_path, "bymerge", layout="torchvision", gz=False)
    with pytest.raises(DataError, match="splits present there: bymerge"):
        load_emnist(tmp_path, "synth", download=False)


def test_unofficial_missing_split_says_it_cannot_be_downloaded(tmp_path, no_download):
    build_dataset(tmp_path, "digits", num_classes=10)
    with pytest.raises(DataError, match="'standin' is not an official EMNIST split"):
        load_emnist(tmp_path, "standin")
    assert no_download == []


def test_invalid_split_name(tmp_path):
    with pytest.raises(DataError, match="not valid"):
        load_emnist(tmp_path, "../etc", download=False)


def _make_unreadable(monkeypatch, path: Path) -> None:
    """Opening `path` (by any of builtins.open, io.open, gzip.open, Path.read_bytes) raises EACCES, as for a file
    this user may not read; every other file opens as usual."""
    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr(io, "open", guarded)


@pytest.mark.parametrize("verified", [True, False], ids=["sha256sums", "unverified"])
@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("key", ["train_images", "test_labels", "mapping"])
def test_unreadable_file_is_a_data_error_naming_it(tmp_path, monkeypatch, key, gz, verified):
    ds = build_dataset(tmp_path, "synth", gz=gz, sums=verified)
    path = ds.files[key]
    _make_unreadable(monkeypatch, path)
    with pytest.raises(DataError, match="cannot be read") as info:
        load_emnist(tmp_path, "synth", download=False, allow_unverified=not verified)
    assert str(path) in str(info.value) and "Permission denied" in str(info.value)
    assert isinstance(info.value.__cause__, PermissionError)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_for_real(tmp_path):
    ds = build_dataset(tmp_path, "synth")
    path = ds.files["test_images"]
    os.chmod(path, 0)
    try:
        with pytest.raises(DataError, match="cannot be read") as info:
            load_emnist(tmp_path, "synth", download=False)
    finally:
        os.chmod(path, 0o644)
    assert str(path) in str(info.value) and "Permission denied" in str(info.value)


def _cannot_list(folder: Path) -> str:
    return (
        f"{folder}: permission denied: this user cannot list the folder or open what it holds. Check its "
        f"permissions (ls -ld {folder}): this user needs read and search (r-x) permission on it."
    )


def _load_statement(root: Path, split: str | None) -> str:
    """Loading `root` with `split`, where None means no split named anywhere: EMNIST_SPLIT (set on CI) is hidden, so
    the split is looked for in the folder as a user who names none would have it."""
    return (
        "import os, unittest.mock\n"
        "from emnist_utils.core.data import load_emnist\n"
        "with unittest.mock.patch.dict(os.environ):\n"
        "    os.environ.pop('EMNIST_SPLIT', None)\n"
        f"    load_emnist({str(root)!r}, {split!r}, download=False)\n"
    )


# case: (the folder made unlistable, relative to the data folder, its mode); "." is the data folder itself
DENIED_FOLDERS = {
    "data-folder-000": (".", 0o000),
    "data-folder-444": (".", 0o444),  # may be listed, but not searched: nothing in it can be opened
    "EMNIST-000": ("EMNIST", 0o000),
    "EMNIST-raw-000": ("EMNIST/raw", 0o000),
    "EMNIST-raw-333": ("EMNIST/raw", 0o333),  # may be searched, but not listed
}


@pytest.fixture(scope="module")
def denied_outcomes():
    """Every DENIED_FOLDERS case (each in a data folder of its own) and a data folder inside a folder that cannot be
    searched, all at once, and what loading each raised, with the split named and without: {case: (folder denied,
    [raised, ...])}. Root ignores permissions, so as root this runs as an unprivileged user (in one process, see
    helpers.raised_bound_by_permissions)."""
    with shared_tmp_dir() as base, contextlib.ExitStack() as denied:
        roots, folders = {}, {}
        for case, (relative, _) in DENIED_FOLDERS.items():
            roots[case] = base / case / "data"
            build_dataset(roots[case], "synth", layout="flat" if relative == "." else "torchvision")
            folders[case] = roots[case] / relative
        roots["above"] = base / "above" / "data"
        build_dataset(roots["above"], "synth")
        folders["above"] = base / "above"
        for case, folder in folders.items():
            denied.enter_context(permissions(folder, DENIED_FOLDERS.get(case, (".", 0o000))[1]))
        statements = [_load_statement(roots[case], split) for case in folders for split in ("synth", None)]
        raised = raised_bound_by_permissions(*statements)
    return {case: (roots[case], folders[case], raised[2 * i : 2 * i + 2]) for i, case in enumerate(folders)}


@pytest.mark.parametrize("case", list(DENIED_FOLDERS))
def test_folder_that_cannot_be_listed_is_one_data_error_naming_it(denied_outcomes, case):
    """chmod 000 (or no read, or no search permission) on the data folder or a folder of the torchvision layout,
    with the split named and without: one DataError naming that folder and how to check it, not a PermissionError
    traceback."""
    _, folder, raised = denied_outcomes[case]
    assert raised == [("DataError", _cannot_list(folder))] * 2


def test_data_folder_inside_a_folder_that_cannot_be_searched(denied_outcomes):
    root, _, raised = denied_outcomes["above"]
    assert (
        raised
        == [
            (
                "DataError",
                f"{root}: permission denied: this user cannot reach the data folder (a folder above it cannot be "
                f"searched). Check the permissions along the way (namei -l {root}).",
            )
        ]
        * 2
    )


def test_cli_data_on_a_folder_that_cannot_be_listed_prints_one_line():
    with shared_tmp_dir() as base:
        root = base / "data"
        build_dataset(root, "synth")
        with permissions(root, 0o000):
            done = run_python_bound_by_permissions(
                ["-m", "emnist_utils", "data", "--data", str(root), "--split", "synth"]
            )
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"error: {_cannot_list(root)}\n")


def _not_a_file(path: Path, kind: str = "a folder") -> str:
    return (
        f"{path}: is {kind}, not a file. Remove or rename it and put the EMNIST file of that name there (or point "
        "--data / EMNIST_DATA at the folder that holds the files)."
    )


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
@pytest.mark.parametrize("key", ["train_images", "train_labels", "test_images", "test_labels", "mapping"])
def test_expected_file_that_is_a_folder_is_refused_naming_it(tmp_path, monkeypatch, no_download, key, layout, gz):
    """A folder under an expected name (here in place of the file) is refused, not passed over: before, the mapping
    fell back to the built-in classes without a word and a missing IDX file started a download."""
    ds = official_format_dataset(tmp_path, "balanced", layout=layout, gz=gz)
    accept_small(monkeypatch, "balanced", 94, 47)
    path = ds.files[key]
    path.unlink()
    path.mkdir()
    with pytest.raises(DataError) as info:
        load_emnist(tmp_path, "balanced")
    assert str(info.value) == _not_a_file(path)
    assert no_download == []


@pytest.mark.parametrize("kind", ["named-pipe", "dangling-link", "folder-in-another-layout", "folder-beside-gz"])
def test_other_things_under_an_expected_name_are_refused_naming_them(tmp_path, no_download, kind):
    ds = build_dataset(tmp_path, "synth")  # flat, gzipped, with a mapping
    if kind == "named-pipe":
        path = ds.files["train_labels"]
        path.unlink()
        os.mkfifo(path)
        expected = _not_a_file(path, "a named pipe")
    elif kind == "dangling-link":
        path, target = ds.files["mapping"], tmp_path / "gone.txt"
        path.unlink()
        path.symlink_to(target)
        expected = f"{path}: is a symbolic link to {target}, which does not exist. Fix or remove the link."
    elif kind == "folder-in-another-layout":
        path = tmp_path / "EMNIST" / "raw" / ds.files["test_images"].name
        path.mkdir(parents=True)
        expected = _not_a_file(path)
    else:  # the plain name of a file present as .gz
        path = tmp_path / ds.files["test_labels"].name.removesuffix(".gz")
        path.mkdir()
        expected = _not_a_file(path)
    with pytest.raises(DataError) as info:
        load_emnist(tmp_path, "synth", download=False)
    assert str(info.value) == expected


def _cut_mapping(ds, keep: int | None = None, extra: str = "") -> Path:
    """The mapping file cut to its first `keep` lines (all when None), `extra` appended; SHA256SUMS renewed."""
    path = ds.files["mapping"]
    lines = path.read_bytes().decode().splitlines(keepends=True)
    path.write_bytes(("".join(lines[:keep]) + extra).encode())
    write_sha256sums(ds.directory)
    return path


@pytest.mark.parametrize("change", ["last-line-lost", "line-added"])
@pytest.mark.parametrize("split", list(SPLIT_FORMATS))
def test_mapping_with_the_wrong_class_count_for_a_known_split_is_named(
    tmp_path, monkeypatch, no_download, split, change
):
    ds = official_format_dataset(tmp_path, split)
    k = EXPECTED_NUM_CLASSES[split]
    accept_small(monkeypatch, split, 2 * k, k)
    first = SPLIT_FORMATS[split][1]
    mapping = _cut_mapping(ds, -1) if change == "last-line-lost" else _cut_mapping(ds, extra=f"{k + first} 33\r\n")
    count, fault = (
        (k - 1, "is incomplete (a line lost?)") if change == "last-line-lost" else (k + 1, "has lines too many")
    )
    with pytest.raises(DataError) as info:
        load_emnist(tmp_path, split)
    assert str(info.value) == (
        f"{mapping}: names {count} classes, but EMNIST split '{split}' has {k}. The mapping file {fault} or belongs "
        f"to another split; copy emnist-{split}-mapping.txt again from the same download as the other files, or "
        f"delete it to use the built-in names of '{split}'."
    )


def test_mapping_missing_its_last_line_is_named_as_the_culprit(tmp_path):
    """A split whose class count is not known (synth): labels 0-46 with a 46-line mapping. The mapping is what was
    cut short, so it is named first (before: only the labels file was named, as if the labels were wrong)."""
    ds = build_dataset(tmp_path, "synth", n_train=94, n_test=47, balanced_labels=True)
    mapping = _cut_mapping(ds, -1)
    with pytest.raises(DataError) as info:
        load_emnist(tmp_path, "synth", download=False)
    assert str(info.value) == (
        f"{mapping} names only 46 classes (labels 0-45) while {ds.files['train_labels']} holds labels up to 46, "
        "so the mapping is incomplete (or the files belong to different splits). Copy emnist-synth-mapping.txt "
        "again from the same download as the labels."
    )


@pytest.mark.parametrize("corrupt", ["truncate_gzip", "garbage_gzip", "not_gzip"])
def test_damaged_gzip(tmp_path, corrupt):
    ds = build_dataset(tmp_path, "synth", corrupt=corrupt)
    with pytest.raises(DataError, match="truncated or corrupted gzip") as info:
        load_emnist(tmp_path, "synth", download=False)
    assert ds.files["train_images"].name in str(info.value)


@pytest.mark.parametrize("gz", [True, False])
def test_images_and_labels_swapped_wrong_magic(tmp_path, gz):
    ds = build_dataset(tmp_path, "synth", gz=gz, corrupt="swap")
    with pytest.raises(DataError, match=r"magic number 2049, expected 2051") as info:
        load_emnist(tmp_path, "synth", download=False)
    assert ds.files["train_images"].name in str(info.value)


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_idx_payload(tmp_path, gz):
    ds = build_dataset(tmp_path, "synth", gz=gz, corrupt="truncate_payload", corrupt_part="test")
    with pytest.raises(DataError, match="header promises") as info:
        load_emnist(tmp_path, "synth", download=False)
    assert ds.files["test_images"].name in str(info.value)


def test_image_label_count_mismatch(tmp_path):
    ds = build_dataset(tmp_path, "synth", n_train=20, corrupt="count_mismatch")
    with pytest.raises(DataError, match="holds 20 images but .* holds 19 labels") as info:
        load_emnist(tmp_path, "synth", download=False)
    assert ds.files["train_labels"].name in str(info.value)


def test_empty_split_part_is_refused(tmp_path):
    ds = build_dataset(tmp_path, "synth", n_train=10, n_test=0)
    with pytest.raises(DataError, match="holds no examples") as info:
        load_emnist(tmp_path, "synth", download=False)
    assert ds.files["test_labels"].name in str(info.value)


def test_labels_out_of_range(tmp_path):
    ds = build_dataset(tmp_path, "synth", corrupt="label_out_of_range", corrupt_part="test")
    assert ds.labels["test"].max() == 47
    # the class count of 'synth' is unknown, so the mapping file may be the one at fault: both files are named
    with pytest.raises(DataError, match="names only 47 classes .* holds labels up to 47") as info:
        load_emnist(tmp_path, "synth", download=False)
    assert ds.files["test_labels"].name in str(info.value) and ds.files["mapping"].name in str(info.value)


def test_labels_out_of_range_for_a_smaller_mapping(tmp_path):
    # 47-class labels read with a 10-class mapping: the typical "wrong mapping / wrong split" mistake
    ds = build_dataset(tmp_path, "synth", n_train=200)
    ds.files["mapping"].write_bytes("".join(f"{i} {48 + i}\r\n" for i in range(10)).encode())
    write_sha256sums(tmp_path)
    with pytest.raises(DataError, match=r"mapping.txt names only 10 classes \(labels 0-9\)"):
        load_emnist(tmp_path, "synth", download=False)


def test_checksum_mismatch(tmp_path):
    ds = build_dataset(tmp_path, "synth", corrupt="checksum")
    with pytest.raises(DataError, match="does not match") as info:
        load_emnist(tmp_path, "synth", download=False)
    assert ds.files["train_images"].name in str(info.value)
    assert "SHA256SUMS" in str(info.value)


def test_unverified_files_refused_unless_allowed(tmp_path, monkeypatch):
    ds = build_dataset(tmp_path, "synth", sums=False)
    with pytest.raises(DataError, match="cannot verify") as info:
        load_emnist(tmp_path, "synth", download=False)
    assert ds.files["train_images"].name in str(info.value)
    data = load_emnist(tmp_path, "synth", download=False, allow_unverified=True)
    assert "UNVERIFIED" in data.verified_by
    np.testing.assert_array_equal(data.train_labels.numpy(), ds.labels["train"])
    monkeypatch.setenv("EMNIST_ALLOW_UNVERIFIED", "1")
    assert "UNVERIFIED" in load_emnist(tmp_path, "synth", download=False).verified_by
    monkeypatch.setenv("EMNIST_ALLOW_UNVERIFIED", "0")
    with pytest.raises(DataError, match="cannot verify"):
        load_emnist(tmp_path, "synth", download=False)


def test_partial_sha256sums_refused(tmp_path):
    # a SHA256SUMS that does not list every file does not vouch for the missing one
    build_dataset(tmp_path, "synth")
    sums = tmp_path / "SHA256SUMS"
    sums.write_text("".join(line + "\n" for line in sums.read_text().splitlines() if "test-labels" not in line))
    with pytest.raises(DataError, match="cannot verify .*emnist-synth-test-labels"):
        load_emnist(tmp_path, "synth", download=False)


def test_fake_balanced_files_fail_official_sha256(tmp_path):
    # Even with a SHA256SUMS that vouches for them, files named emnist-balanced-* must match the official hashes.
    build_dataset(tmp_path, "balanced")
    assert (tmp_path / "SHA256SUMS").is_file()
    with pytest.raises(DataError, match="official sha256") as info:
        load_emnist(tmp_path, "balanced", download=False)
    assert "emnist-balanced-" in str(info.value)
    plain = build_dataset(tmp_path / "plain", "balanced", gz=False)
    with pytest.raises(DataError, match="official sha256"):
        load_emnist(plain.root, "balanced", download=False)


def test_official_count_check(tmp_path, monkeypatch):
    build_dataset(tmp_path, "synth", n_train=30, n_test=7)
    monkeypatch.setitem(D.OFFICIAL_COUNTS, "synth", {"train": 30, "test": 8})
    with pytest.raises(DataError, match="7 examples, official synth test has 8"):
        load_emnist(tmp_path, "synth", download=False)
    # EMNIST's published sizes
    assert D.OFFICIAL_COUNTS["balanced"] == {"train": 112_800, "test": 18_800}
    assert D.OFFICIAL_COUNTS["letters"] == {"train": 124_800, "test": 20_800}
    assert D.OFFICIAL_COUNTS["byclass"] == {"train": 697_932, "test": 116_323}


def _official(*names: str) -> dict[str, Path]:
    files = {name: RAW_DIR / name for name in names}
    if not all(p.is_file() for p in files.values()):
        pytest.skip(f"official files not present in {RAW_DIR}")
    return files


def test_official_balanced_labels_verify_and_have_official_counts():
    files = _official(
        "emnist-balanced-train-labels-idx1-ubyte.gz",
        "emnist-balanced-test-labels-idx1-ubyte.gz",
        "emnist-balanced-mapping.txt",
    )
    paths = list(files.values())
    verified = D.verify_files({"train_labels": paths[0], "test_labels": paths[1], "mapping": paths[2]}, "balanced")
    assert verified == "official EMNIST sha256"
    for path, n in ((paths[0], 112_800), (paths[1], 18_800)):
        labels = D.read_labels(path)
        assert len(labels) == n
        # balanced: every class equally often
        counts = np.bincount(labels, minlength=47)
        assert len(counts) == 47 and counts.min() == counts.max() == n // 47
    assert D.read_mapping(paths[2]) == (BALANCED_CLASSES, 0)
    assert D.BUILTIN_CLASSES["balanced"] == BALANCED_CLASSES


def test_official_bymerge_test_files_verify(tmp_path):
    files = _official(
        "bymerge-test/emnist-bymerge-test-images-idx3-ubyte.gz", "bymerge-test/emnist-bymerge-test-labels-idx1-ubyte.gz"
    )
    images, labels = files.values()
    assert D.verify_files({"test_images": images, "test_labels": labels}, "bymerge") == "official EMNIST sha256"
    assert len(D.read_labels(labels)) == 116_323
    # a copy with one byte changed is caught by the official hash, even though SHA256SUMS vouches for it
    copy = tmp_path / labels.name
    raw = bytearray(labels.read_bytes())
    raw[-1] ^= 0xFF
    copy.write_bytes(bytes(raw))
    write_sha256sums(tmp_path, [copy.name])
    with pytest.raises(DataError, match="official sha256") as info:
        D.verify_files({"test_labels": copy}, "bymerge")
    assert str(copy) in str(info.value)


# ----------------------------------------------------------------------------- download


def _archive(tmp_path: Path, splits=("balanced", "letters")) -> tuple[bytes, dict[str, dict[str, bytes]]]:
    """A small gzip.zip look-alike with loadable members for `splits`, plus members that no split wants."""
    members: dict[str, dict[str, bytes]] = {}
    for split in splits:
        ds = official_format_dataset(tmp_path / "archive-src" / split, split, per_class_train=1, sums=False)
        members[split] = {p.name: p.read_bytes() for p in ds.files.values()}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("gzip/", b"")
        for split_members in members.values():
            for name, data in split_members.items():
                zf.writestr(f"gzip/{name}", data)
        zf.writestr("gzip/emnist-digits-train-images-idx3-ubyte.gz", b"digits, not wanted")
        zf.writestr("gzip/README", b"not wanted either")
    return buf.getvalue(), members


@pytest.fixture
def http_server(monkeypatch):
    """Serve bytes at http://127.0.0.1:<port>/gzip.zip; never leaves this machine."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    content = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            content["requests"] = content.get("requests", 0) + 1
            if self.path != "/gzip.zip" or "body" not in content:
                self.send_error(404)
                return
            body = content["body"]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            # "cut" simulates a connection dropped mid-transfer: fewer bytes than promised
            self.wfile.write(body[: content["cut"]] if "cut" in content else body)
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def serve(body: bytes) -> str:
        content["body"] = body
        return f"http://127.0.0.1:{server.server_address[1]}/gzip.zip"

    serve.content = content
    yield serve
    server.shutdown()
    server.server_close()
    thread.join(5)


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sums(root: Path) -> dict[str, str]:
    lines = (root / "SHA256SUMS").read_text().splitlines()
    return {name: digest for digest, name in (line.split() for line in lines)}


@pytest.mark.parametrize("split", ["balanced", "letters"])
def test_download_extracts_only_the_requested_split(tmp_path, monkeypatch, http_server, split):
    body, members = _archive(tmp_path)
    url = http_server(body)
    root = tmp_path / "data"
    extracted = D.download_split(root, split, url=url, md5=hashlib.md5(body).hexdigest(), progress=False)
    assert http_server.content["requests"] == 1
    wanted = members[split]
    assert len(wanted) == 5 and sorted(p.name for p in extracted) == sorted(wanted)
    # the archive is kept for another split; nothing of the other splits, no .part, no temporary file
    assert sorted(p.name for p in root.iterdir()) == sorted([*wanted, "gzip.zip", "SHA256SUMS"])
    for name, data in wanted.items():
        assert (root / name).read_bytes() == data
    # SHA256SUMS vouches for exactly what was extracted, so the split then verifies and loads
    assert _sums(root) == {name: hashlib.sha256(data).hexdigest() for name, data in wanted.items()}
    k = EXPECTED_NUM_CLASSES[split]
    accept_small(monkeypatch, split, k, k)
    data = load_emnist(root, split, download=False)
    assert data.verified_by == "SHA256SUMS" and data.num_classes == k
    assert sorted(set(data.train_labels.tolist())) == list(range(k))


def test_download_of_a_second_split_reuses_the_archive_and_updates_sha256sums(tmp_path, monkeypatch, http_server):
    body, members = _archive(tmp_path)
    url, md5 = http_server(body), hashlib.md5(body).hexdigest()
    root = tmp_path / "data"
    root.mkdir()
    (root / "SHA256SUMS").write_text(f"{'ab' * 32}  my-own-file.txt\n")
    accept_small(monkeypatch, "balanced", 47, 47)
    accept_small(monkeypatch, "letters", 26, 26)
    # load_emnist downloads a missing official split by itself
    assert load_emnist(root, "letters", url=url, md5=md5).num_classes == 26
    D.download_split(root, "balanced", url=url, md5=md5, progress=False)
    assert http_server.content["requests"] == 1
    expected = {name: hashlib.sha256(data).hexdigest() for split in members for name, data in members[split].items()}
    assert _sums(root) == {**expected, "my-own-file.txt": "ab" * 32}
    assert load_emnist(root, "balanced", download=False).num_classes == 47
    assert load_emnist(root, "letters", download=False).verified_by == "SHA256SUMS"


@pytest.mark.parametrize("split", ["standin", "synth", "", "../balanced"])
def test_non_official_split_cannot_be_downloaded(tmp_path, split):
    root = tmp_path / "data"
    url = f"http://127.0.0.1:{_closed_port()}/gzip.zip"
    with pytest.raises(DataError, match="not an official EMNIST split") as info:
        D.download_split(root, split, url=url, progress=False)
    assert "balanced, byclass, bymerge, letters, digits, mnist" in str(info.value)
    assert not root.exists()


def test_download_wrong_md5_deletes_archive(tmp_path, http_server):
    body, _ = _archive(tmp_path, ("balanced",))
    url = http_server(body)
    root = tmp_path / "data"
    with pytest.raises(DataError, match="md5") as info:
        D.download_split(root, "balanced", url=url, md5="0" * 32, progress=False)
    assert "deleted" in str(info.value) and str(root / "gzip.zip") in str(info.value)
    assert list(root.iterdir()) == []


def test_download_unreachable_url_fails_fast_and_says_where_to_put_files(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/gzip.zip"
    root = tmp_path / "data"
    started = time.perf_counter()
    with pytest.raises(DataError) as info:
        D.download_split(root, "letters", url=url, timeout=5, progress=False)
    assert time.perf_counter() - started < 10
    msg = str(info.value)
    assert url in msg and str(root) in msg and "gzip.zip" in msg and "EMNIST_DATA" in msg
    assert list(root.iterdir()) == []  # no half-written .part left behind
    # load_emnist on an empty folder tries the download for an official split and reports the same way
    with pytest.raises(DataError, match="could not download"):
        load_emnist(root, "balanced", url=url)
    assert list(root.iterdir()) == []


def test_download_cut_short_is_refused_and_removed(tmp_path, http_server):
    body, _ = _archive(tmp_path, ("balanced",))
    url = http_server(body)
    http_server.content["cut"] = len(body) // 2
    root = tmp_path / "data"
    with pytest.raises(DataError):
        D.download_split(root, "balanced", url=url, md5=hashlib.md5(body).hexdigest(), progress=False)
    assert list(root.iterdir()) == []  # neither gzip.zip nor gzip.zip.part is left to be trusted later


def test_download_404_is_a_data_error(tmp_path, http_server):
    url = http_server(b"x").replace("gzip.zip", "missing.zip")
    with pytest.raises(DataError, match="could not download") as info:
        D.download_split(tmp_path, "digits", url=url, progress=False)
    assert "404" in str(info.value)
    assert http_server.content["requests"] == 1
    assert list(tmp_path.iterdir()) == []


def test_download_uses_archive_already_present(tmp_path):
    body, members = _archive(tmp_path / "src", ("letters",))
    root = tmp_path / "data"
    root.mkdir()
    (root / "gzip.zip").write_bytes(body)
    url = f"http://127.0.0.1:{_closed_port()}/gzip.zip"  # would fail if it were used
    D.download_split(root, "letters", url=url, md5=hashlib.md5(body).hexdigest(), progress=False)
    assert sorted(p.name for p in root.iterdir()) == sorted([*members["letters"], "gzip.zip", "SHA256SUMS"])


def test_archive_without_the_split_is_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("gzip/emnist-digits-train-images-idx3-ubyte.gz", b"x")
    body = buf.getvalue()
    (tmp_path / "gzip.zip").write_bytes(body)
    with pytest.raises(DataError, match="no emnist-letters-"):
        D.download_split(
            tmp_path, "letters", url="http://127.0.0.1:9/none", md5=hashlib.md5(body).hexdigest(), progress=False
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gzip.zip"]


def test_archive_that_is_not_a_zip_is_refused(tmp_path):
    body = b"this is no zip archive" * 10
    (tmp_path / "gzip.zip").write_bytes(body)
    with pytest.raises(DataError, match="not a readable zip archive"):
        D.download_split(
            tmp_path, "balanced", url="http://127.0.0.1:9/none", md5=hashlib.md5(body).hexdigest(), progress=False
        )


# ----------------------------------------------------------------------------- the stand-in split


def test_standin_loads_verified(standin_data):
    data = standin_data
    assert data.split == "standin"
    # sizes from /work/shared/emnist/README.md
    assert len(data.train_labels) == 69404 and len(data.test_labels) == 9400
    assert tuple(data.train_images.shape) == (69404, 28, 28)
    assert data.num_classes == 47 and data.classes[10] == "A" and data.classes == BALANCED_CLASSES
    assert data.verified_by == "SHA256SUMS"
    assert int(data.train_labels.min()) == 0 and int(data.train_labels.max()) == 46
    assert torch.bincount(data.test_labels, minlength=47).tolist() == [200] * 47
    assert len(data.checksum) == 64


def test_standin_relative_path_resolves_from_project_root(tmp_path, monkeypatch):
    if not STANDIN_DIR.is_dir():
        pytest.skip("stand-in data not present")
    monkeypatch.chdir(tmp_path)  # so the path does not exist relative to the working directory
    assert PROJECT_ROOT == Path(D.__file__).resolve().parents[2]
    assert resolve("../shared/emnist/standin") == STANDIN_DIR
    monkeypatch.setenv("EMNIST_DATA", "../shared/emnist/standin")
    monkeypatch.setenv("EMNIST_SPLIT", "standin")
    assert D.data_location() == (STANDIN_DIR, "standin")
