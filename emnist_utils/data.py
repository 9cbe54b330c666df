"""EMNIST loading that refuses to train on anything it has not checked.

A split is read from the official IDX files (gzipped or not, flat or in torchvision's
`EMNIST/raw/` layout), verified (sha256 against the official hashes or a `SHA256SUMS` file,
IDX magic numbers, shapes, counts, label range), turned upright, and kept in memory as one
uint8 tensor. Training batches are sliced from it and normalised per batch, so the training loop
does no per-sample Python work.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import socket
import struct
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .paths import atomic_path, resolve

DEFAULT_DATA_DIR = "data"
DEFAULT_SPLIT = "balanced"

# The archive torchvision downloads (all EMNIST splits, ~536 MiB).
EMNIST_URL = "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip"
EMNIST_MD5 = "58c8d27c78d21e728a6bc7b3cc06412e"

IMAGES_MAGIC = 2051  # IDX: unsigned byte, 3 dimensions
LABELS_MAGIC = 2049  # IDX: unsigned byte, 1 dimension

# Official sha256 of the balanced files, both as distributed (.gz) and decompressed. The decompressed
# images' hashes are not published; for those, the decompressed labels are checked byte for byte and the
# images structurally (count, shape), and the loader says so.
OFFICIAL_SHA256 = {
    "balanced": {
        "emnist-balanced-train-images-idx3-ubyte.gz": "74295e75e4e9fa2c102147460ee7eb763653d5132d883a84fb88932bfb8d2db4",
        "emnist-balanced-test-images-idx3-ubyte.gz": "117fc12b015e37ea98bfb2cbba3f77c3782c056cdbd219b87abfc8661d7135db",
        "emnist-balanced-train-labels-idx1-ubyte.gz": "b46d41e5156a0a8aaaa4d18979fdd1588850fa8571018acffd5d93b325a7d6ed",
        "emnist-balanced-test-labels-idx1-ubyte.gz": "a67cac948379b67270b9a4d0a01c8ec661598accf2f2b1964340b7c83cb175cd",
        "emnist-balanced-train-labels-idx1-ubyte": "a9c2984bf327d013e469d8b66e4bf6e4e98aaeebddc35d1c869b2cd3d1806e12",
        "emnist-balanced-test-labels-idx1-ubyte": "91807a38b4dab13f65fed7d9cac9fa6e7d27fc8c24f52327b8e6435ebfe18e90",
        "emnist-balanced-mapping.txt": "956dc507bf69e9f31f4e3e876d22ec66124aa229b5d0bd65ab8956a8044d3ede",
    }
}
OFFICIAL_COUNTS = {"balanced": {"train": 112_800, "test": 18_800}}

_DIGITS = "0123456789"
_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LOWER = "abcdefghijklmnopqrstuvwxyz"
_MERGED = _DIGITS + _UPPER + "abdefghnqrt"
# Used when a split's mapping file is absent (torchvision deletes it after extraction).
BUILTIN_CLASSES = {
    "balanced": list(_MERGED),
    "bymerge": list(_MERGED),
    "standin": list(_MERGED),
    "byclass": list(_DIGITS + _UPPER + _LOWER),
    "digits": list(_DIGITS),
    "mnist": list(_DIGITS),
    "letters": ["N/A"] + list(_LOWER),
}

# The report's split: 12,800 of the 112,800 balanced training images are held out for validation.
VALIDATION_FRACTION = 12_800 / 112_800


class DataError(RuntimeError):
    """The data on disk cannot be used as it is; the message names the file, the problem and the fix."""


# ----------------------------------------------------------------------------- reading IDX files


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path}: truncated or corrupted gzip file ({exc}). "
                        "Delete it and download it again.") from exc


def parse_idx(raw: bytes, expected_magic: int, path: Path | str = "<bytes>") -> np.ndarray:
    """Decode an IDX (unsigned byte) file, checking the magic number and that the size matches the header."""
    if len(raw) < 8:
        raise DataError(f"{path}: only {len(raw)} bytes, too short to be an IDX file. Download it again.")
    (magic,) = struct.unpack(">I", raw[:4])
    if magic != expected_magic:
        kind = "images (idx3)" if expected_magic == IMAGES_MAGIC else "labels (idx1)"
        raise DataError(f"{path}: IDX magic number {magic}, expected {expected_magic} for an EMNIST {kind} "
                        "file. Is this the right file (images and labels swapped, or not an IDX file)?")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: IDX header cut short. The file is truncated; download it again.")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise DataError(f"{path}: header promises {dims} = {expected} bytes but the file holds {len(raw)}. "
                        "The file is truncated or damaged; download it again.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_images(path: Path) -> np.ndarray:
    """Images as (N, 28, 28) uint8, upright. EMNIST stores every image transposed."""
    images = parse_idx(_read_bytes(path), IMAGES_MAGIC, path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{path}: images have shape {images.shape[1:]}, EMNIST images are 28x28.")
    return np.ascontiguousarray(images.transpose(0, 2, 1))


def read_labels(path: Path) -> np.ndarray:
    return parse_idx(_read_bytes(path), LABELS_MAGIC, path)


def read_mapping(path: Path) -> list[str]:
    """The `label ascii_code` mapping file (CRLF in the official files) as a list: index -> character."""
    rows = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            label, code = (int(v) for v in line.split())
        except ValueError as exc:
            raise DataError(f"{path}:{line_no}: expected 'label ascii_code', got {line!r}") from exc
        rows.append((label, chr(code)))
    labels = [label for label, _ in rows]
    if not labels:
        raise DataError(f"{path}: the mapping file is empty. Copy emnist-<split>-mapping.txt again.")
    if sorted(labels) != list(range(min(labels), min(labels) + len(labels))):
        raise DataError(f"{path}: labels are not consecutive ({labels[:5]}...).")
    classes = ["N/A"] * min(labels) + [c for _, c in sorted(rows)]
    return classes


# ----------------------------------------------------------------------------- finding and verifying


def _file_name(split: str, part: str, kind: str) -> str:
    return f"emnist-{split}-{part}-{'images-idx3' if kind == 'images' else 'labels-idx1'}-ubyte"


def _search_dirs(root: Path) -> list[Path]:
    return [root, root / "EMNIST" / "raw", root / "raw", root / "gzip"]


def find_split_files(root: Path, split: str) -> dict[str, Path | None]:
    """Locate train/test images/labels and the mapping, accepting .gz or plain files, flat or torchvision layout."""
    found: dict[str, Path | None] = {}
    for part in ("train", "test"):
        for kind in ("images", "labels"):
            name = _file_name(split, part, kind)
            candidates = [d / (name + ext) for d in _search_dirs(root) for ext in (".gz", "")]
            found[f"{part}_{kind}"] = next((p for p in candidates if p.is_file()), None)
    mapping = [d / f"emnist-{split}-mapping.txt" for d in _search_dirs(root)]
    found["mapping"] = next((p for p in mapping if p.is_file()), None)
    return found


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_sha256sums(directory: Path) -> dict[str, str]:
    sums_file = directory / "SHA256SUMS"
    if not sums_file.is_file():
        return {}
    sums = {}
    for line in sums_file.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def verify_files(files: dict[str, Path], split: str, allow_unverified: bool = False) -> str:
    """Check every file's sha256 against the official table or a SHA256SUMS file beside it.

    Returns a one-line description of how the data was verified. Raises DataError on any mismatch, and on
    files that nothing vouches for unless `allow_unverified`.
    """
    official = OFFICIAL_SHA256.get(split, {})
    unverified, how = [], set()
    for key, path in files.items():
        known = official.get(path.name) or _read_sha256sums(path.parent).get(path.name)
        source = "official sha256" if path.name in official else f"{path.parent / 'SHA256SUMS'}"
        if known is None:
            unverified.append(path)
            continue
        actual = sha256_file(path)
        if actual != known:
            raise DataError(f"{path}: sha256 {actual[:16]}... does not match {source} ({known[:16]}...). "
                            "The file is corrupted or not the expected one; delete it and download it again.")
        how.add("official EMNIST sha256" if path.name in official else "SHA256SUMS")
    # Decompressed official balanced images have no published hash: their labels are checked byte for byte
    # above and the images structurally (count and shape) when read.
    structural = [p for p in unverified if split in OFFICIAL_SHA256 and "images" in p.name and p.suffix != ".gz"]
    unverified = [p for p in unverified if p not in structural]
    if unverified and not allow_unverified:
        names = ", ".join(str(p) for p in unverified)
        raise DataError(f"cannot verify {names}: not an official EMNIST file and no SHA256SUMS entry beside it. "
                        "Add a SHA256SUMS file (sha256sum emnist-* > SHA256SUMS) if you trust these files, or "
                        "pass allow_unverified=True / set EMNIST_ALLOW_UNVERIFIED=1.")
    parts = sorted(how)
    if structural:
        parts.append("decompressed images checked by count and shape (no official hash published)")
    if unverified:
        parts.append("UNVERIFIED files allowed by the caller")
    return "; ".join(parts)


# ----------------------------------------------------------------------------- download


def download_balanced(root: Path, url: str = EMNIST_URL, md5: str = EMNIST_MD5, timeout: float = 30.0,
                      progress: bool = True) -> list[Path]:
    """Fetch the official EMNIST archive (md5-checked) and extract only the balanced files into `root`.

    An archive already at `root/gzip.zip` is used instead of downloading. The archive is deleted after
    extraction; a half-finished download is never mistaken for a complete one (it is written to `.part`).
    """
    from tqdm.auto import tqdm

    root.mkdir(parents=True, exist_ok=True)
    archive = root / "gzip.zip"
    if not archive.is_file():
        partial = root / "gzip.zip.part"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc="EMNIST gzip.zip", disable=not progress) as bar:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        out.write(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as exc:
            partial.unlink(missing_ok=True)
            raise DataError(
                f"could not download EMNIST from {url} ({exc}). If this machine is offline, get gzip.zip "
                f"elsewhere and put it, or the emnist-balanced-* files from its gzip/ folder, into {root} "
                "(or point EMNIST_DATA at the folder that holds them).") from exc
        os.replace(partial, archive)
    digest = hashlib.md5()
    with open(archive, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != md5:
        archive.unlink()
        raise DataError(f"{archive}: md5 {digest.hexdigest()} does not match the official {md5}; the download "
                        "was damaged and has been deleted. Run again to download it anew.")
    extracted = []
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            name = Path(member).name
            if name.startswith("emnist-balanced-"):
                target = root / name
                with atomic_path(target) as tmp, zf.open(member) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                extracted.append(target)
    if not extracted:
        raise DataError(f"{archive}: holds no emnist-balanced-* files; is it the EMNIST gzip.zip?")
    archive.unlink()
    return extracted


# ----------------------------------------------------------------------------- the dataset


@dataclass
class EMNIST:
    """One EMNIST split held in memory: upright uint8 images, int64 labels, class characters, provenance."""

    split: str
    root: Path
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    checksum: str  # sha256 over the decompressed image and label bytes: same data, same checksum
    verified_by: str
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def short_checksum(self) -> str:
        return self.checksum[:12]

    def provenance(self) -> dict:
        """What every stored number carries, so results from different data are never mixed up."""
        return {"dataset": f"emnist-{self.split}", "split": self.split, "checksum": self.checksum}

    def describe(self) -> str:
        return (f"EMNIST split '{self.split}' from {self.root}\n"
                f"  train: {tuple(self.train_images.shape)} images, test: {tuple(self.test_images.shape)} images, "
                f"{self.num_classes} classes\n"
                f"  sha256 (decompressed data): {self.checksum}\n"
                f"  verified by: {self.verified_by}")


def data_location(root: str | os.PathLike | None = None, split: str | None = None) -> tuple[Path, str]:
    """Data folder and split name from the arguments, else EMNIST_DATA / EMNIST_SPLIT, else data/ and balanced."""
    root = resolve(root or os.environ.get("EMNIST_DATA") or DEFAULT_DATA_DIR)
    split = split or os.environ.get("EMNIST_SPLIT") or DEFAULT_SPLIT
    return root, split


def add_data_arguments(parser) -> None:
    """--data and --split for every command-line entry point, with the same defaults as `data_location`."""
    parser.add_argument("--data", default=None, help="data folder (default EMNIST_DATA, else data/)")
    parser.add_argument("--split", default=None, help="EMNIST split name (default EMNIST_SPLIT, else balanced)")


def load_emnist(root: str | os.PathLike | None = None, split: str | None = None, *, download: bool = True,
                allow_unverified: bool | None = None, url: str = EMNIST_URL, md5: str = EMNIST_MD5) -> EMNIST:
    """Load and verify one EMNIST split. See the module docstring for what is checked."""
    root, split = data_location(root, split)
    if allow_unverified is None:
        allow_unverified = os.environ.get("EMNIST_ALLOW_UNVERIFIED", "") not in ("", "0")
    if not split or not split.replace("_", "").replace("-", "").isalnum():
        raise DataError(f"split name {split!r} is not valid; use e.g. 'balanced' or 'standin'.")
    found = find_split_files(root, split)
    missing = [k for k, v in found.items() if v is None and k != "mapping"]
    if missing and split == "balanced" and download:
        download_balanced(root, url=url, md5=md5)
        found = find_split_files(root, split)
        missing = [k for k, v in found.items() if v is None and k != "mapping"]
    if missing:
        if not root.is_dir():
            problem = f"data folder {root} does not exist"
        else:
            others = sorted({p.name.split("-")[1] for p in root.rglob("emnist-*-ubyte*") if p.name.count("-") > 2})
            problem = (f"no {', '.join(_file_name(split, *m.split('_')) for m in missing)} (.gz or plain) in {root}"
                       + (f"; splits present there: {', '.join(others)}" if others else ""))
        raise DataError(f"EMNIST split '{split}': {problem}. Put the emnist-{split}-* files there, point "
                        "EMNIST_DATA at their folder, or set EMNIST_SPLIT to a split that is present "
                        "(balanced is downloaded automatically when online).")
    files = {k: v for k, v in found.items() if v is not None}
    verified_by = verify_files(files, split, allow_unverified)

    if found["mapping"] is not None:
        classes = read_mapping(found["mapping"])
    elif split in BUILTIN_CLASSES:
        classes = BUILTIN_CLASSES[split]
    else:
        raise DataError(f"no emnist-{split}-mapping.txt in {root}; it is needed to name the classes.")

    arrays, checksum = {}, hashlib.sha256()
    for part in ("train", "test"):
        images = read_images(files[f"{part}_images"])
        labels = read_labels(files[f"{part}_labels"])
        if len(images) != len(labels):
            raise DataError(f"{files[f'{part}_images']} holds {len(images)} images but "
                            f"{files[f'{part}_labels']} holds {len(labels)} labels; the pair does not belong "
                            "together. Download both files again.")
        if len(labels) == 0:
            raise DataError(f"{files[f'{part}_labels']}: holds no examples.")
        if labels.max() >= len(classes):
            raise DataError(f"{files[f'{part}_labels']}: label {int(labels.max())} is out of range for the "
                            f"{len(classes)} classes of split '{split}'. Wrong split name or wrong files?")
        expected = OFFICIAL_COUNTS.get(split, {}).get(part)
        if expected is not None and len(labels) != expected:
            raise DataError(f"{files[f'{part}_labels']}: {len(labels)} examples, official {split} {part} has "
                            f"{expected}. The data is partial; download it again.")
        checksum.update(images.tobytes())
        checksum.update(labels.tobytes())
        arrays[part] = (torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))
    return EMNIST(split=split, root=root, train_images=arrays["train"][0], train_labels=arrays["train"][1],
                  test_images=arrays["test"][0], test_labels=arrays["test"][1], classes=classes,
                  checksum=checksum.hexdigest(), verified_by=verified_by, files=files)


# ----------------------------------------------------------------------------- splits and batches


def train_val_split(n: int, seed: int = 0, val_fraction: float = VALIDATION_FRACTION) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random split keeping the report's proportion (exactly 100,000 / 12,800 on balanced)."""
    n_val = round(n * val_fraction)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:], perm[:n_val]


def normalisation_constants(images: torch.Tensor) -> tuple[float, float]:
    """Mean and std of the pixel values (scaled to [0, 1]) of the given (training) images."""
    x = images.to(torch.float64) / 255.0
    return float(x.mean()), float(x.std())


@dataclass
class Splits:
    """Train / validation / test tensors as the models see them, plus the normalisation they share."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    mean: float
    std: float
    classes: list[str]
    provenance: dict
    seed: int = 0  # the seed of the train/validation split

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train_labels), "validation": len(self.val_labels), "test": len(self.test_labels)}


def make_splits(data: EMNIST, seed: int = 0, train_limit: int | None = None, val_limit: int | None = None,
                test_limit: int | None = None) -> Splits:
    """The report's train/validation split of `data`'s training images, optionally cut to the first
    `*_limit` examples (the smoke profile) after the seeded shuffle, so subsets stay class-mixed."""
    train_idx, val_idx = train_val_split(len(data.train_labels), seed)
    train_idx, val_idx = train_idx[:train_limit], val_idx[:val_limit]
    test_idx = torch.arange(len(data.test_labels))[:test_limit]
    train_images = data.train_images[train_idx]
    mean, std = normalisation_constants(train_images)
    return Splits(train_images=train_images, train_labels=data.train_labels[train_idx],
                  val_images=data.train_images[val_idx], val_labels=data.train_labels[val_idx],
                  test_images=data.test_images[test_idx], test_labels=data.test_labels[test_idx],
                  mean=mean, std=std, classes=data.classes, provenance=data.provenance(), seed=seed)


class Batches:
    """Mini-batches sliced from in-memory uint8 tensors, normalised per batch on the target device.

    Shuffling uses a permutation seeded by (seed, epoch), so epoch k's order is the same whether or not
    the run was interrupted before it.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, mean: float, std: float,
                 *, shuffle: bool = False, seed: int = 0, device: torch.device | str = "cpu",
                 channels_last: bool = False):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.scale, self.shift = 1.0 / (255.0 * std), -mean / std
        self.channels_last = channels_last

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        x = images.unsqueeze(1).to(torch.float32).mul_(self.scale).add_(self.shift)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(n, generator=gen).to(self.device)
        for start in range(0, n, self.batch_size):
            if self.shuffle:
                idx = order[start:start + self.batch_size]
                yield self.normalise(self.images[idx]), self.labels[idx]
            else:
                yield (self.normalise(self.images[start:start + self.batch_size]),
                       self.labels[start:start + self.batch_size])

    __iter__ = epoch
