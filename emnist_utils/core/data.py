"""EMNIST on disk to verified tensors in memory: find, verify, download and read any of the six splits.

A split is read from the official IDX files (gzipped or not, flat or in torchvision's `EMNIST/raw/` layout),
verified (sha256 against the official hashes or a `SHA256SUMS` file, IDX magic numbers, shapes, counts, label
range), turned upright and kept in memory as one uint8 tensor. Every problem with the files becomes one
`DataError` that names the file, the problem and the fix. Used by every notebook and command.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import os
import shutil
import stat
import struct
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .paths import OutputError, atomic_path, resolve, shown

DEFAULT_DATA_DIR = "data"
DEFAULT_SPLIT = "balanced"

# The archive torchvision downloads (all EMNIST splits, ~536 MiB).
EMNIST_URL = "https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip"
EMNIST_MD5 = "58c8d27c78d21e728a6bc7b3cc06412e"

IMAGES_MAGIC = 2051  # IDX: unsigned byte, 3 dimensions
LABELS_MAGIC = 2049  # IDX: unsigned byte, 1 dimension

OFFICIAL_SPLITS = ("balanced", "byclass", "bymerge", "letters", "digits", "mnist")

# Official sha256 of files as distributed (.gz) and, for labels, decompressed. The decompressed images' hashes
# are not published; for those the labels are checked byte for byte and the images structurally.
OFFICIAL_SHA256 = {
    "balanced": {
        "emnist-balanced-train-images-idx3-ubyte.gz": "74295e75e4e9fa2c102147460ee7eb763653d5132d883a84fb88932bfb8d2db4",  # noqa: E501
        "emnist-balanced-test-images-idx3-ubyte.gz": "117fc12b015e37ea98bfb2cbba3f77c3782c056cdbd219b87abfc8661d7135db",
        "emnist-balanced-train-labels-idx1-ubyte.gz": "b46d41e5156a0a8aaaa4d18979fdd1588850fa8571018acffd5d93b325a7d6ed",  # noqa: E501
        "emnist-balanced-test-labels-idx1-ubyte.gz": "a67cac948379b67270b9a4d0a01c8ec661598accf2f2b1964340b7c83cb175cd",
        "emnist-balanced-train-labels-idx1-ubyte": "a9c2984bf327d013e469d8b66e4bf6e4e98aaeebddc35d1c869b2cd3d1806e12",
        "emnist-balanced-test-labels-idx1-ubyte": "91807a38b4dab13f65fed7d9cac9fa6e7d27fc8c24f52327b8e6435ebfe18e90",
        "emnist-balanced-mapping.txt": "956dc507bf69e9f31f4e3e876d22ec66124aa229b5d0bd65ab8956a8044d3ede",
    },
    "bymerge": {
        "emnist-bymerge-test-images-idx3-ubyte.gz": "5e5815ec1b522089134435f7c55e75a00960b58414793593ffff23efc0821683",
        "emnist-bymerge-test-labels-idx1-ubyte.gz": "8bda1516255683ba9071e141947ca0c91a911176065cdd6259b0b4d8dc5b5f35",
    },
}
OFFICIAL_COUNTS = {
    "balanced": {"train": 112_800, "test": 18_800},
    "byclass": {"train": 697_932, "test": 116_323},
    "bymerge": {"train": 697_932, "test": 116_323},
    "letters": {"train": 124_800, "test": 20_800},
    "digits": {"train": 240_000, "test": 40_000},
    "mnist": {"train": 60_000, "test": 10_000},
}

_DIGITS = "0123456789"
_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LOWER = "abcdefghijklmnopqrstuvwxyz"
_MERGED = _DIGITS + _UPPER + "abdefghnqrt"
# Class names when a split's mapping file is absent (torchvision deletes it after extraction). EMNIST letters
# stores labels 1-26 (upper and lower case merged); they are read as classes 0-25.
BUILTIN_CLASSES = {
    "balanced": list(_MERGED),
    "bymerge": list(_MERGED),
    "standin": list(_MERGED),
    "byclass": list(_DIGITS + _UPPER + _LOWER),
    "digits": list(_DIGITS),
    "mnist": list(_DIGITS),
    "letters": [f"{u}/{lo}" for u, lo in zip(_UPPER, _LOWER)],
}
BUILTIN_FIRST_LABEL = {"letters": 1}


class DataError(RuntimeError):
    """The data on disk cannot be used as it is; the message names the file, the problem and the fix."""


# ----------------------------------------------------------------------------- reading IDX files


def read_file_bytes(path: Path) -> bytes:
    """A data file's bytes, decompressed when it ends in .gz; every failure is a DataError naming the file."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path}: truncated or corrupted gzip file ({exc}). Delete it and download it again.") from exc
    except OSError as exc:
        raise DataError(
            f"{path}: cannot be read ({exc.strerror or exc}). Check that the file is readable "
            f"by this user (ls -l {path})."
        ) from exc


def parse_idx(raw: bytes, expected_magic: int, path: Path | str = "<bytes>") -> np.ndarray:
    """Decode an IDX (unsigned byte) file, checking the magic number and that the size matches the header."""
    if len(raw) < 8:
        raise DataError(f"{path}: only {len(raw)} bytes, too short to be an IDX file. Download it again.")
    (magic,) = struct.unpack(">I", raw[:4])
    if magic != expected_magic:
        kind = "images (idx3)" if expected_magic == IMAGES_MAGIC else "labels (idx1)"
        raise DataError(
            f"{path}: IDX magic number {magic}, expected {expected_magic} for an EMNIST {kind} "
            "file. Is this the right file (images and labels swapped, or not an IDX file)?"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: IDX header cut short. The file is truncated; download it again.")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise DataError(
            f"{path}: header promises {dims} = {expected} bytes but the file holds {len(raw)}. "
            "The file is truncated or damaged; download it again."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_images(path: Path) -> np.ndarray:
    """Images as (N, 28, 28) uint8, upright. EMNIST stores every image transposed."""
    images = parse_idx(read_file_bytes(path), IMAGES_MAGIC, path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{path}: images have shape {images.shape[1:]}, EMNIST images are 28x28.")
    return np.ascontiguousarray(images.transpose(0, 2, 1))


def read_labels(path: Path) -> np.ndarray:
    return parse_idx(read_file_bytes(path), LABELS_MAGIC, path)


def read_mapping(path: Path) -> tuple[list[str], int]:
    """The mapping file as (class names, first label). Lines are `label ascii_code` (CRLF in the official
    files), or `label upper_code lower_code` for EMNIST letters, whose labels start at 1."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc}).") from exc
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            label, *codes = (int(v) for v in line.split())
            if not 1 <= len(codes) <= 2:
                raise ValueError
            name = "/".join(chr(c) for c in codes)
        except ValueError as exc:
            raise DataError(f"{path}:{line_no}: expected 'label ascii_code', got {line!r}") from exc
        rows.append((label, name))
    labels = [label for label, _ in rows]
    if not labels:
        raise DataError(f"{path}: the mapping file is empty. Copy emnist-<split>-mapping.txt again.")
    first = min(labels)
    if sorted(labels) != list(range(first, first + len(labels))) or first not in (0, 1):
        raise DataError(
            f"{path}: labels must be consecutive from 0 (or 1, as in EMNIST letters), got {sorted(labels)[:5]}..."
        )
    return [name for _, name in sorted(rows)], first


# ----------------------------------------------------------------------------- finding and verifying


def file_name(split: str, part: str, kind: str) -> str:
    """The official name of one of a split's four IDX files (without .gz)."""
    return f"emnist-{split}-{part}-{'images-idx3' if kind == 'images' else 'labels-idx1'}-ubyte"


def _search_dirs(root: Path) -> list[Path]:
    return [root, root / "EMNIST" / "raw", root / "raw", root / "gzip"]


def _denied(folder: Path) -> DataError:
    return DataError(
        f"{folder}: permission denied: this user cannot list the folder or open what it holds. Check its "
        f"permissions (ls -ld {folder}): this user needs read and search (r-x) permission on it."
    )


def _listing(folder: Path) -> set[str]:
    """The names in a folder; a folder this user may not list is a DataError naming it."""
    try:
        return set(os.listdir(folder))
    except PermissionError as exc:
        raise _denied(folder) from exc
    except OSError as exc:
        raise DataError(f"{folder}: the folder cannot be listed ({exc.strerror or exc}).") from exc


def _stat(path: Path) -> os.stat_result | None:
    """os.stat of `path` (following links); None when nothing is there. A folder on the way that this user may not
    search is a DataError naming that folder; a dangling link is a DataError naming the link."""
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):
        if path.is_symlink():
            raise DataError(
                f"{path}: is a symbolic link to {os.readlink(path)}, which does not exist. Fix or remove the link."
            ) from None
        return None
    except PermissionError as exc:
        raise _denied(path.parent) from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot be examined ({exc.strerror or exc}).") from exc


_NOT_A_FILE = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _is_data_file(path: Path) -> bool:
    """Whether a regular file (or a link to one) is at `path`: False when nothing is there; anything else there
    (a folder, a named pipe, a device) is a DataError naming it, rather than being passed over in silence."""
    st = _stat(path)
    if st is None:
        return False
    if stat.S_ISREG(st.st_mode):
        return True
    kind = next((k for test, k in _NOT_A_FILE if test(st.st_mode)), "something other than a regular file")
    raise DataError(
        f"{path}: is {kind}, not a file. Remove or rename it and put the EMNIST file of that name there "
        "(or point --data / EMNIST_DATA at the folder that holds the files)."
    )


def _search_listings(root: Path) -> dict[Path, set[str]]:
    """The names in each searched folder under `root` that exists (see `_search_dirs`), in search order. Every
    folder on the way must be listable: one that is not is a DataError naming it, not a silent miss."""
    listings: dict[Path, set[str]] = {}
    root_stat = _stat(root)
    if root_stat is None or not stat.S_ISDIR(root_stat.st_mode):
        return listings
    listed = {root: _listing(root)}
    for directory in _search_dirs(root):
        folder = root
        for part in directory.relative_to(root).parts:
            inner = folder / part
            if part not in listed[folder]:
                break
            inner_stat = _stat(inner)
            if inner_stat is None or not stat.S_ISDIR(inner_stat.st_mode):
                break
            if inner not in listed:
                listed[inner] = _listing(inner)
            folder = inner
        else:
            listings[directory] = listed[directory]
    return listings


def find_split_files(root: Path, split: str) -> dict[str, Path | None]:
    """Locate train/test images/labels and the mapping, accepting .gz or plain files, flat or torchvision layout.
    A folder on the way that cannot be listed, or an expected name that is not a regular file, is a DataError."""
    listings = _search_listings(root)

    def first(names: list[str]) -> Path | None:
        present = [d / n for d, listing in listings.items() for n in names if n in listing]
        regular = [p for p in present if _is_data_file(p)]  # every one is checked: a folder among them is refused
        return regular[0] if regular else None

    found: dict[str, Path | None] = {}
    for part in ("train", "test"):
        for kind in ("images", "labels"):
            name = file_name(split, part, kind)
            found[f"{part}_{kind}"] = first([name + ".gz", name])
    found["mapping"] = first([f"emnist-{split}-mapping.txt"])
    return found


def splits_present(root: Path) -> list[str]:
    """Names of the splits with at least one IDX file under `root` (in any accepted layout)."""
    names = set()
    for listing in _search_listings(root).values():
        for name in listing:
            parts = name.split("-")
            if fnmatch.fnmatchcase(name, "emnist-*-*-ubyte*") and len(parts) >= 5 and parts[2] in ("train", "test"):
                names.add(parts[1])
    return sorted(names)


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks; a file that cannot be read is a DataError naming it."""
    digest = hashlib.new(algorithm)
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc}).") from exc
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    return file_digest(path, "sha256")


def _read_sha256sums(directory: Path) -> dict[str, str]:
    sums_file = directory / "SHA256SUMS"
    if not sums_file.is_file():
        return {}
    sums = {}
    try:
        lines = sums_file.read_text().splitlines()
    except OSError as exc:
        raise DataError(f"{sums_file}: cannot be read ({exc.strerror or exc}).") from exc
    for line in lines:
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
    for path in files.values():
        known = official.get(path.name) or _read_sha256sums(path.parent).get(path.name)
        source = "official sha256" if path.name in official else f"{path.parent / 'SHA256SUMS'}"
        if known is None:
            unverified.append(path)
            continue
        actual = sha256_file(path)
        if actual != known:
            raise DataError(
                f"{path}: sha256 {actual[:16]}... does not match {source} ({known[:16]}...). "
                "The file is corrupted or not the expected one; delete it and download it again."
            )
        how.add("official EMNIST sha256" if path.name in official else "SHA256SUMS")
    # Decompressed official balanced images have no published hash: their labels are checked byte for byte
    # above and the images structurally (count and shape) when read.
    structural = [p for p in unverified if split == "balanced" and "images" in p.name and p.suffix != ".gz"]
    unverified = [p for p in unverified if p not in structural]
    if unverified and not allow_unverified:
        names = ", ".join(str(p) for p in unverified)
        raise DataError(
            f"cannot verify {names}: not an official EMNIST file and no SHA256SUMS entry beside it. "
            "Add a SHA256SUMS file (sha256sum emnist-* > SHA256SUMS) if you trust these files, or "
            "pass --allow-unverified / set EMNIST_ALLOW_UNVERIFIED=1."
        )
    parts = sorted(how)
    if structural:
        parts.append("decompressed images checked by count and shape (no official hash published)")
    if unverified:
        parts.append("UNVERIFIED files allowed by the caller")
    return "; ".join(parts)


# ----------------------------------------------------------------------------- download


def _download(url: str, target: Path, split: str, timeout: float, progress: bool) -> None:
    partial = target.with_name(target.name + ".part")
    try:
        out = open(partial, "wb")
    except OSError as exc:
        raise DataError(
            f"cannot write the download to {partial} ({exc.strerror or exc}); choose a writable data "
            "folder with --data / EMNIST_DATA."
        ) from exc
    try:
        with out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc="EMNIST gzip.zip", disable=not progress) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise DataError(
            f"could not download EMNIST from {url} ({exc}). If this machine is offline, get gzip.zip elsewhere "
            f"and put it, or the emnist-{split}-* files from its gzip/ folder, into {target.parent} (or point "
            "--data / EMNIST_DATA at the folder that holds them)."
        ) from exc
    os.replace(partial, target)


def download_split(
    root: Path,
    split: str = DEFAULT_SPLIT,
    url: str = EMNIST_URL,
    md5: str = EMNIST_MD5,
    timeout: float = 30.0,
    progress: bool = True,
) -> list[Path]:
    """Fetch the official EMNIST archive (md5-checked) and extract only `split`'s files into `root`.

    An archive already at `root/gzip.zip` is used instead of downloading; it is kept, so that another split
    can be extracted later without downloading again. A half-finished download is never mistaken for a
    complete one (it is written to `.part`). The extracted files are listed in `root/SHA256SUMS`, since the
    archive they came from was verified.
    """
    if split not in OFFICIAL_SPLITS:
        raise DataError(
            f"split '{split}' is not an official EMNIST split and cannot be downloaded; "
            f"official splits: {', '.join(OFFICIAL_SPLITS)}."
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the data folder {root} ({exc.strerror or exc}).") from exc
    archive = root / "gzip.zip"
    if not archive.is_file():
        _download(url, archive, split, timeout, progress)
    actual = file_digest(archive, "md5")
    if actual != md5:
        archive.unlink()
        raise DataError(
            f"{archive}: md5 {actual} does not match the official {md5}; the download "
            "was damaged and has been deleted. Run again to download it anew."
        )
    extracted = []
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                name = Path(member).name
                if name.startswith(f"emnist-{split}-"):
                    target = root / name
                    with atomic_path(target) as tmp, zf.open(member) as src, open(tmp, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    extracted.append(target)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{archive}: not a readable zip archive ({exc}); delete it and download again.") from exc
    except OutputError as exc:
        raise DataError(str(exc)) from exc
    if not extracted:
        raise DataError(f"{archive}: holds no emnist-{split}-* files; is it the EMNIST gzip.zip?")
    sums = _read_sha256sums(root)
    sums.update({p.name: sha256_file(p) for p in extracted})
    try:
        with atomic_path(root / "SHA256SUMS") as tmp:
            tmp.write_text("".join(f"{h}  {n}\n" for n, h in sorted(sums.items())))
    except OutputError as exc:
        raise DataError(str(exc)) from exc
    return extracted


# ----------------------------------------------------------------------------- the dataset


@dataclass
class EMNIST:
    """One EMNIST split held in memory: upright uint8 images, int64 labels from 0, class names, provenance."""

    split: str
    root: Path
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    checksum: str  # sha256 over the upright images and the labels as stored: same data, same checksum
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
        return (
            f"EMNIST split '{self.split}' from {shown(self.root)}\n"
            f"  train: {tuple(self.train_images.shape)} images, test: {tuple(self.test_images.shape)} images, "
            f"{self.num_classes} classes\n"
            f"  sha256 (decompressed data): {self.checksum}\n"
            f"  verified by: {self.verified_by}"
        )


def data_location(root: str | os.PathLike | None = None, split: str | None = None) -> tuple[Path, str]:
    """Data folder and split name: the arguments, else EMNIST_DATA / EMNIST_SPLIT, else data/ and the one split
    present there (balanced, downloaded, when the folder holds none). Fails clearly on a folder that is a file,
    an empty split name, or several splits and no choice."""
    root_given = root if root is not None else (os.environ.get("EMNIST_DATA") or DEFAULT_DATA_DIR)
    if str(root_given).strip() == "":
        raise DataError("the data folder is empty text; give a folder with --data or EMNIST_DATA.")
    path = resolve(root_given)
    try:
        not_a_folder = path.exists() and not path.is_dir()
    except PermissionError as exc:
        raise DataError(
            f"{path}: permission denied: this user cannot reach the data folder (a folder above it cannot be "
            f"searched). Check the permissions along the way (namei -l {path})."
        ) from exc
    if not_a_folder:
        raise DataError(
            f"the data location {path} is a file, not a folder. Point --data / EMNIST_DATA at the "
            f"folder that holds the emnist-<split>-* files (here: {path.parent}?)."
        )
    if split is not None and not split.strip():
        raise DataError(
            "the split name is empty. Give one with --split / EMNIST_SPLIT, e.g. 'balanced'; "
            f"splits present in {path}: {', '.join(splits_present(path)) or 'none'}."
        )
    split = split or os.environ.get("EMNIST_SPLIT") or None
    if split is None:
        present = splits_present(path) if path.is_dir() else []
        if len(present) > 1:
            raise DataError(
                f"{path} holds several EMNIST splits ({', '.join(present)}); choose one with "
                "--split NAME or EMNIST_SPLIT."
            )
        split = present[0] if present else DEFAULT_SPLIT
    if not split.replace("_", "").replace("-", "").isalnum():
        raise DataError(f"split name {split!r} is not valid; use e.g. 'balanced' or 'standin'.")
    return path, split


def _missing_message(root: Path, split: str, missing: list[str]) -> str:
    if not root.is_dir():
        problem = f"data folder {root} does not exist"
    else:
        others = [s for s in splits_present(root) if s != split]
        problem = f"no {', '.join(file_name(split, *m.split('_')) for m in missing)} (.gz or plain) in {root}" + (
            f"; splits present there: {', '.join(others)}" if others else ""
        )
    how = (
        f"{split} is downloaded automatically when this machine is online"
        if split in OFFICIAL_SPLITS
        else f"'{split}' is not an official EMNIST split, so it cannot be downloaded"
    )
    return (
        f"EMNIST split '{split}': {problem}. Put the emnist-{split}-* files there, point --data / "
        f"EMNIST_DATA at their folder, or choose a split that is present with --split / EMNIST_SPLIT "
        f"({how})."
    )


def load_emnist(
    root: str | os.PathLike | None = None,
    split: str | None = None,
    *,
    download: bool = True,
    allow_unverified: bool | None = None,
    url: str = EMNIST_URL,
    md5: str = EMNIST_MD5,
) -> EMNIST:
    """Load and verify one EMNIST split. See the module docstring for what is checked."""
    root, split = data_location(root, split)
    if allow_unverified is None:
        allow_unverified = os.environ.get("EMNIST_ALLOW_UNVERIFIED", "") not in ("", "0")
    found = find_split_files(root, split)
    missing = [k for k, v in found.items() if v is None and k != "mapping"]
    if missing and split in OFFICIAL_SPLITS and download:
        download_split(root, split, url=url, md5=md5)
        found = find_split_files(root, split)
        missing = [k for k, v in found.items() if v is None and k != "mapping"]
    if missing:
        raise DataError(_missing_message(root, split, missing))
    files = {k: v for k, v in found.items() if v is not None}
    verified_by = verify_files(files, split, allow_unverified)

    mapping = found["mapping"]
    if mapping is not None:
        classes, first_label = read_mapping(mapping)
        known = BUILTIN_CLASSES.get(split)
        if known is not None and len(classes) != len(known):
            fault = "is incomplete (a line lost?)" if len(classes) < len(known) else "has lines too many"
            raise DataError(
                f"{mapping}: names {len(classes)} classes, but EMNIST split '{split}' has {len(known)}. The mapping "
                f"file {fault} or belongs to another split; copy emnist-{split}-mapping.txt again from the same "
                f"download as the other files, or delete it to use the built-in names of '{split}'."
            )
    elif split in BUILTIN_CLASSES:
        classes, first_label = BUILTIN_CLASSES[split], BUILTIN_FIRST_LABEL.get(split, 0)
    else:
        raise DataError(f"no emnist-{split}-mapping.txt in {root}; it is needed to name the classes.")

    arrays, checksum = {}, hashlib.sha256()
    for part in ("train", "test"):
        images_path, labels_path = files[f"{part}_images"], files[f"{part}_labels"]
        images, labels = read_images(images_path), read_labels(labels_path)
        if len(images) != len(labels):
            raise DataError(
                f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} "
                "labels; the pair does not belong together. Download both files again."
            )
        if len(labels) == 0:
            raise DataError(f"{labels_path}: holds no examples.")
        low, high = int(labels.min()), int(labels.max())
        if (
            low >= first_label
            and high >= first_label + len(classes)
            and split not in BUILTIN_CLASSES
            and mapping is not None
        ):
            # The class count of this split is not known, so the mapping may be the file at fault (a lost line).
            raise DataError(
                f"{mapping} names only {len(classes)} classes (labels {first_label}-{first_label + len(classes) - 1}) "
                f"while {labels_path} holds labels up to {high}, so the mapping is incomplete (or the files belong "
                f"to different splits). Copy emnist-{split}-mapping.txt again from the same download as the labels."
            )
        if low < first_label or high >= first_label + len(classes):
            raise DataError(
                f"{labels_path}: labels {low}-{high} do not fit the {len(classes)} classes of split "
                f"'{split}' (labels {first_label}-{first_label + len(classes) - 1}). Wrong split name "
                "or wrong files?"
            )
        expected = OFFICIAL_COUNTS.get(split, {}).get(part)
        if expected is not None and len(labels) != expected:
            raise DataError(
                f"{labels_path}: {len(labels)} examples, official {split} {part} has {expected}. "
                "The data is partial; download it again."
            )
        checksum.update(images.tobytes())
        checksum.update(labels.tobytes())
        arrays[part] = (torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64) - first_label))
    return EMNIST(
        split=split,
        root=root,
        train_images=arrays["train"][0],
        train_labels=arrays["train"][1],
        test_images=arrays["test"][0],
        test_labels=arrays["test"][1],
        classes=list(classes),
        checksum=checksum.hexdigest(),
        verified_by=verified_by,
        files=files,
    )
