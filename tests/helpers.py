"""Builders for small synthetic EMNIST-format datasets (IDX files, mapping, SHA256SUMS), optionally damaged."""
from __future__ import annotations

import gzip
import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The offline stand-in split shipped beside the project (read-only).
STANDIN_DIR = (PROJECT_ROOT.parent / "shared" / "emnist" / "standin").resolve()
RAW_DIR = (PROJECT_ROOT.parent / "shared" / "emnist" / "raw").resolve()

BALANCED_CLASSES = list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghnqrt")

CORRUPTIONS = ("truncate_gzip", "garbage_gzip", "not_gzip", "swap", "truncate_payload", "count_mismatch",
               "label_out_of_range", "checksum")


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
    labels: dict[str, np.ndarray] = field(default_factory=dict)


def build_dataset(root: Path, split: str = "synth", n_train: int = 40, n_test: int = 12, *, gz: bool = True,
                  layout: str = "flat", num_classes: int = 47, seed: int = 0, mapping: bool = True,
                  sums: bool = True, images: dict[str, np.ndarray] | None = None, corrupt: str | None = None,
                  corrupt_part: str = "train") -> SynthDataset:
    """Write a small EMNIST-format split under `root`.

    layout: "flat" (files in root) or "torchvision" (files in root/EMNIST/raw).
    images: optional {part: (N, 28, 28) array} written as the *stored* (transposed) images.
    corrupt: one of CORRUPTIONS, applied to `corrupt_part`'s files. SHA256SUMS (when `sums`) is written
    after the damage, so the loader's later checks are reached, except for "checksum", which changes a
    file after SHA256SUMS was written.
    """
    if corrupt is not None and corrupt not in CORRUPTIONS:
        raise ValueError(corrupt)
    rng = np.random.default_rng(seed)
    directory = root / "EMNIST" / "raw" if layout == "torchvision" else root
    directory.mkdir(parents=True, exist_ok=True)
    classes = BALANCED_CLASSES[:num_classes]
    ds = SynthDataset(root=root, directory=directory, split=split, classes=classes)

    for part, n in (("train", n_train), ("test", n_test)):
        stored = images[part] if images and part in images else rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, num_classes, len(stored)).astype(np.uint8)
        damaged = corrupt if part == corrupt_part else None
        if damaged == "label_out_of_range":
            labels[len(labels) // 2] = num_classes
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
                        data = data[:middle] + bytes(rng.integers(0, 256, 64, dtype=np.uint8)) + data[middle + 64:]
                    elif damaged == "not_gzip":
                        data = b"this is not a gzip file at all " * 8
            path.write_bytes(data)
            ds.files[f"{part}_{kind}"] = path

    if mapping:
        path = directory / f"emnist-{split}-mapping.txt"
        path.write_bytes("".join(f"{i} {ord(c)}\r\n" for i, c in enumerate(classes)).encode())
        ds.files["mapping"] = path
    if sums:
        write_sha256sums(directory)
    if corrupt == "checksum":
        path = ds.files[f"{corrupt_part}_images"]
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    return ds


def record_calls(monkeypatch, owner, name: str, record=lambda args: args) -> list:
    """Replace owner.name by a wrapper that appends record(args) to the returned list, then calls through."""
    calls, original = [], getattr(owner, name)

    def wrapper(*args, **kwargs):
        calls.append(record(args))
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls
