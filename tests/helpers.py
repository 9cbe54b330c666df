"""Helpers shared by the tests (defined once): small EMNIST-format datasets on disk, optionally damaged; tiny run
specs; weight comparisons; an interrupting callback; folders that cannot be written."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The offline stand-in split shipped beside the project (read-only).
STANDIN_DIR = (PROJECT_ROOT.parent / "shared" / "emnist" / "standin").resolve()
RAW_DIR = (PROJECT_ROOT.parent / "shared" / "emnist" / "raw").resolve()

BALANCED_CLASSES = list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghnqrt")

CORRUPTIONS = (
    "truncate_gzip",
    "garbage_gzip",
    "not_gzip",
    "swap",
    "truncate_payload",
    "count_mismatch",
    "label_out_of_range",
    "checksum",
)


# ----------------------------------------------------------------------------- EMNIST-format files


def idx_images_bytes(images: np.ndarray, count: int | None = None) -> bytes:
    """IDX3 bytes for (N, 28, 28) uint8 images, stored exactly as given; `count` overrides the header's N."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    n, rows, cols = images.shape
    return struct.pack(">IIII", 2051, n if count is None else count, rows, cols) + images.tobytes()


def idx_labels_bytes(labels: np.ndarray, count: int | None = None) -> bytes:
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    return struct.pack(">II", 2049, len(labels) if count is None else count) + labels.tobytes()


def idx_name(split: str, part: str, kind: str, gz: bool = True) -> str:
    base = f"emnist-{split}-{part}-{'images-idx3' if kind == 'images' else 'labels-idx1'}-ubyte"
    return base + (".gz" if gz else "")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_sha256sums(directory: Path, names: list[str] | None = None) -> Path:
    """A `sha256sum`-style SHA256SUMS for the given files (default: every emnist-* file in `directory`)."""
    names = names if names is not None else sorted(p.name for p in directory.glob("emnist-*"))
    lines = [f"{sha256_bytes((directory / n).read_bytes())}  {n}" for n in names]
    path = directory / "SHA256SUMS"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class SynthDataset:
    root: Path  # what to pass to load_emnist
    directory: Path  # where the files are (root, or root/EMNIST/raw)
    split: str
    classes: list[str]
    files: dict[str, Path] = field(default_factory=dict)
    stored: dict[str, np.ndarray] = field(default_factory=dict)  # images as written (transposed, like EMNIST)
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # labels as written (from first_label)


def build_dataset(
    root: Path,
    split: str = "synth",
    n_train: int = 40,
    n_test: int = 12,
    *,
    gz: bool = True,
    layout: str = "flat",
    num_classes: int = 47,
    classes: list[str] | None = None,
    first_label: int = 0,
    mapping_columns: int = 2,
    seed: int = 0,
    mapping: bool = True,
    sums: bool = True,
    images: dict[str, np.ndarray] | None = None,
    corrupt: str | None = None,
    corrupt_part: str = "train",
    balanced_labels: bool = False,
) -> SynthDataset:
    """Write a small EMNIST-format split under `root`.

    layout: "flat" (files in root) or "torchvision" (files in root/EMNIST/raw).
    classes: class names (default: the first `num_classes` balanced classes); first_label 1 and
    mapping_columns 3 write an EMNIST-letters-style mapping ("label upper lower").
    images: optional {part: (N, 28, 28) array} written as the *stored* (transposed) images.
    balanced_labels: every class equally often (N must be a multiple of the class count).
    corrupt: one of CORRUPTIONS, applied to `corrupt_part`'s files. SHA256SUMS (when `sums`) is written after
    the damage, so the loader's later checks are reached, except for "checksum", which changes a file after
    SHA256SUMS was written.
    """
    if corrupt is not None and corrupt not in CORRUPTIONS:
        raise ValueError(corrupt)
    rng = np.random.default_rng(seed)
    directory = root / "EMNIST" / "raw" if layout == "torchvision" else root
    directory.mkdir(parents=True, exist_ok=True)
    classes = list(classes) if classes is not None else BALANCED_CLASSES[:num_classes]
    num_classes = len(classes)
    ds = SynthDataset(root=root, directory=directory, split=split, classes=classes)

    for part, n in (("train", n_train), ("test", n_test)):
        stored = images[part] if images and part in images else rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        if balanced_labels:
            labels = np.arange(len(stored)) % num_classes
        else:
            labels = rng.integers(0, num_classes, len(stored))
        labels = (labels + first_label).astype(np.uint8)
        damaged = corrupt if part == corrupt_part else None
        if damaged == "label_out_of_range":
            labels[len(labels) // 2] = num_classes + first_label
        ds.stored[part], ds.labels[part] = stored, labels

        image_bytes, label_bytes = idx_images_bytes(stored), idx_labels_bytes(labels)
        if damaged == "swap":
            image_bytes, label_bytes = label_bytes, image_bytes
        elif damaged == "truncate_payload":
            image_bytes = image_bytes[:-100]
        elif damaged == "count_mismatch":
            label_bytes = idx_labels_bytes(labels[:-1])

        for kind, data in (("images", image_bytes), ("labels", label_bytes)):
            path = directory / idx_name(split, part, kind, gz)
            if gz:
                data = gzip.compress(data, mtime=0)
                if kind == "images":
                    if damaged == "truncate_gzip":
                        data = data[: len(data) // 2]
                    elif damaged == "garbage_gzip":
                        middle = len(data) // 2
                        data = data[:middle] + bytes(rng.integers(0, 256, 64, dtype=np.uint8)) + data[middle + 64 :]
                    elif damaged == "not_gzip":
                        data = b"this is not a gzip file at all " * 8
            path.write_bytes(data)
            ds.files[f"{part}_{kind}"] = path

    if mapping:
        path = directory / f"emnist-{split}-mapping.txt"
        if mapping_columns == 3:
            lines = [f"{i + first_label} {ord(c[0])} {ord(c[-1])}\r\n" for i, c in enumerate(classes)]
        else:
            lines = [f"{i + first_label} {ord(c)}\r\n" for i, c in enumerate(classes)]
        path.write_bytes("".join(lines).encode())
        ds.files["mapping"] = path
    if sums:
        write_sha256sums(directory)
    if corrupt == "checksum":
        path = ds.files[f"{corrupt_part}_images"]
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    return ds


# ----------------------------------------------------------------------------- runs and weights


def tiny_spec(arch: str = "arch2", epochs: int = 2, seed: int = 0, **recipe):
    """A run small enough to train in a second or two on ~1,000 images (not bound to data yet)."""
    from emnist_utils.core.registry import ModelSpec
    from emnist_utils.core.training import Recipe
    from emnist_utils.experiments.spec import RunSpec

    shape = {
        "arch1": (4, 8, 32, 0.3),
        "arch2": (4, 8, 32, 0.5),
        "compact": (4, 8, 16, 0.3),
        "lean": (4, 8, 16, 0.2),
    }.get(arch, (4, 8, 32, 0.5))
    recipe = {"lr": 1e-3, "batch_size": 100, "epochs": epochs, **recipe}
    return RunSpec(ModelSpec(arch, *shape), Recipe(**recipe), seed=seed, name=f"tiny-{arch}")


def same_weights(a, b) -> bool:
    """Every tensor of two models' (or state dicts') states is identical."""
    sa = a.state_dict() if hasattr(a, "state_dict") else a
    sb = b.state_dict() if hasattr(b, "state_dict") else b
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


class Interrupt(Exception):
    """Raised by `interrupt_at` to simulate a run stopped after some epoch."""


def interrupt_at(epoch: int):
    """An epoch callback that stops training right after `epoch` (its checkpoint is already written)."""

    def callback(done, history):
        if done == epoch:
            raise Interrupt(done)

    return callback


def record_calls(monkeypatch, owner, name: str, record=lambda args: args) -> list:
    """Replace owner.name by a wrapper that appends record(args) to the returned list, then calls through."""
    calls, original = [], getattr(owner, name)

    def wrapper(*args, **kwargs):
        calls.append(record(args))
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


# ----------------------------------------------------------------------------- unwritable folders


@contextlib.contextmanager
def read_only_dir(path: Path):
    """Make `path` (a folder) unwritable for this process, really: chmod for ordinary users, the immutable
    attribute for root (who ignores permissions). Skips the test where neither is possible."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        os.chmod(path, 0o555)
        try:
            yield path
        finally:
            os.chmod(path, 0o755)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("cannot make a folder read-only for root here (no chattr +i)")
    try:
        yield path
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


# ----------------------------------------------------------------------------- profiles and stand-in results


def small_profile():
    """The profile `small_splits` corresponds to (1,500 / 500 / 470 images, every epoch), so that runs bound with
    it record those limits and a runner rebuilds exactly `small_splits`' training and validation parts."""
    from emnist_utils.experiments.profiles import Profile

    return Profile("test", "the tests' small splits", train_limit=1500, val_limit=500, test_limit=470)


def fake_result(
    val_acc: float = 50.0,
    val_balanced_acc: float | None = None,
    *,
    spec=None,
    selection_metric: str = "balanced",
    parameters: int = 1000,
    train_seconds: float = 1.0,
    device: str = "cpu (1 threads)",
    epochs: int = 1,
):
    """A RunResult with the given numbers and no trained model behind it (for tables, choices and progress)."""
    from emnist_utils.core.training import History
    from emnist_utils.experiments.store import RunResult

    balanced = val_acc if val_balanced_acc is None else val_balanced_acc
    history = History(
        train_loss=[1.0] * epochs,
        train_acc=[val_acc] * epochs,
        val_loss=[1.0] * epochs,
        val_acc=[val_acc] * epochs,
        val_balanced_acc=[balanced] * epochs,
        seconds=[train_seconds / epochs] * epochs,
    )
    metrics = {"val_acc": val_acc, "val_balanced_acc": balanced, "selection_metric": selection_metric}
    return RunResult(
        spec=spec if spec is not None else tiny_spec(),
        key="fake",
        history=history,
        metrics=metrics,
        parameters=parameters,
        train_seconds=train_seconds,
        device=device,
        provenance={},
        model_path=Path("/nonexistent/fake.pt"),
    )


# ----------------------------------------------------------------------------- folders this user may not list


UNPRIVILEGED_ID = 65534  # "nobody": a user whom file permissions bind, for tests that run as root
_UNPRIVILEGED_PYTHON: list[tuple[str, str]] = []  # (interpreter that user can run the package with, or "": why not)


def _demote() -> None:  # in the child, between fork and exec
    os.setgroups([])
    os.setgid(UNPRIVILEGED_ID)
    os.setuid(UNPRIVILEGED_ID)


def _bound_env() -> dict[str, str]:
    """This environment, with the project and this interpreter's site-packages importable by path (another
    interpreter of the same version may have to stand in for this one, see `_unprivileged_python`)."""
    import site

    paths = [str(PROJECT_ROOT), *site.getsitepackages()]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/tmp"}


def _unprivileged_python() -> str:
    """An interpreter with which uid 65534 can import emnist_utils: this one, else the system's interpreter of the
    same version (a virtual environment's interpreter may lie in a folder only root may enter, such as /root).
    Skips the test where there is none (the project or its packages are not readable by that user)."""
    import sys

    if not _UNPRIVILEGED_PYTHON:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        candidates = [sys.executable, os.path.realpath(sys.executable), f"/usr/bin/python{version}"]
        why = []
        for python in dict.fromkeys(candidates):
            try:
                probe = subprocess.run(
                    [python, "-c", "import emnist_utils.core.data"], cwd=PROJECT_ROOT, env=_bound_env(),
                    preexec_fn=_demote, capture_output=True, text=True, timeout=120,
                )  # fmt: skip
            except OSError as exc:
                why.append(f"{python}: {exc.strerror or exc}")
                continue
            if probe.returncode == 0:
                _UNPRIVILEGED_PYTHON.append((python, ""))
                break
            why.append(f"{python}: {(probe.stderr.strip().splitlines() or ['exit ' + str(probe.returncode)])[-1]}")
        else:
            _UNPRIVILEGED_PYTHON.append(("", "; ".join(why)))
    python, why_not = _UNPRIVILEGED_PYTHON[0]
    if not python:
        pytest.skip(f"running as root, and user {UNPRIVILEGED_ID} cannot import emnist_utils here ({why_not})")
    return python


def run_python_bound_by_permissions(args: list[str], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run `python ARGS` (from the project root, text output captured) as a user whom file permissions bind: this
    user with this interpreter, or, when this is root (root ignores permissions), uid/gid 65534 with an interpreter
    that user can run the package with. Skips the test where there is none."""
    import sys

    if os.geteuid() != 0:
        return subprocess.run(
            [sys.executable, *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout, **kwargs
        )
    return subprocess.run(
        [_unprivileged_python(), *args], cwd=PROJECT_ROOT, env=_bound_env(), preexec_fn=_demote,
        capture_output=True, text=True, timeout=timeout, **kwargs,
    )  # fmt: skip


def raised_bound_by_permissions(*statements: str) -> list[tuple[str, str]]:
    """Execute each Python statement as a user whom file permissions bind (in this process unless this is root;
    see `run_python_bound_by_permissions`; one process for all) and return what each raised, as (exception class
    name, message), or ("", "") when nothing."""
    import json

    if os.geteuid() != 0:
        raised = []
        for statement in statements:
            try:
                exec(statement, {})
            except Exception as exc:  # noqa: BLE001 - the caller asserts exactly what was raised
                raised.append((type(exc).__name__, str(exc)))
            else:
                raised.append(("", ""))
        return raised
    code = (
        "import json\n"
        f"for statement in {list(statements)!r}:\n"
        "    try:\n        exec(statement, {})\n"
        "    except Exception as exc:\n        print(json.dumps([type(exc).__name__, str(exc)]))\n"
        "    else:\n        print(json.dumps(['', '']))\n"
    )
    done = run_python_bound_by_permissions(["-c", code])
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and len(lines) == len(statements), done.stderr
    return [tuple(json.loads(line)) for line in lines]


@contextlib.contextmanager
def shared_tmp_dir():
    """A fresh folder under /tmp that every user can reach (mode 0755; pytest's tmp_path is root's alone when
    running as root), removed afterwards."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="emnist-perm-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        for folder, dirs, _ in os.walk(path):
            for d in dirs:
                os.chmod(Path(folder) / d, 0o755)
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def permissions(path: Path, mode: int = 0):
    """`path` with permission bits `mode` (0: nobody but root may list or enter it), restored afterwards."""
    old = path.stat().st_mode & 0o7777
    os.chmod(path, mode)
    try:
        yield path
    finally:
        os.chmod(path, old)
