"""Where things live and how files get written: project-relative paths, atomic writes, writability checks.

Everything resolves against the project root, so notebooks (run from `notebooks/`), the command line and the
tests agree whatever the working directory is. Every file the project writes goes through `atomic_path`, so a
reader never sees half a file and two writers never share a temporary name.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class OutputError(OSError):
    """A folder or file the project must write cannot be written; the message names the path and the cause."""

    def __init__(self, message: str, errno_: int | None = None):
        super().__init__(message)
        self.errno = errno_


def resolve(path: str | os.PathLike) -> Path:
    """An absolute path: relative paths are taken from the working directory if they exist there,
    else from the project root (so `EMNIST_DATA=../shared/emnist/standin` works from anywhere)."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p.resolve()
    return (PROJECT_ROOT / p).resolve()


def shown(path: str | os.PathLike) -> str:
    """A path as messages and committed outputs show it: relative to the project when inside it or beside it
    (so that re-running from another checkout prints the same text), absolute otherwise."""
    p = Path(path).resolve()
    for base, prefix in ((PROJECT_ROOT, ""), (PROJECT_ROOT.parent, "../")):
        try:
            return prefix + str(p.relative_to(base)) if p != base else (prefix.rstrip("/") or ".")
        except ValueError:
            continue
    return str(p)


def output_root(profile_name: str) -> Path:
    """The full profile writes the committed `figures/` and `results/`; every other profile (smoke, quick,
    tests) writes under `outputs/<profile>/`, so that such a run never overwrites a committed artefact.
    EMNIST_OUTPUT overrides both (the tests use it)."""
    override = os.environ.get("EMNIST_OUTPUT")
    if override:
        return resolve(override)
    return PROJECT_ROOT if profile_name == "full" else PROJECT_ROOT / "outputs" / profile_name


def cache_dir() -> Path:
    """Cached run results, trained models, checkpoints and locks; never committed (see .gitignore)."""
    return resolve(os.environ.get("EMNIST_CACHE", PROJECT_ROOT / ".cache"))


def describe_os_error(exc: OSError) -> str:
    """The cause of an OS error in words a user can act on."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device"
    if exc.errno == errno.EFBIG:
        return "file too large for this file system or process limit"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.EROFS:
        return "read-only file system"
    if exc.errno == errno.ENOTDIR:
        return "a part of the path is a file, not a folder"
    return exc.strerror or type(exc).__name__


def ensure_writable(directory: Path, what: str, hint: str = "") -> Path:
    """Create `directory` if needed and prove it writable by writing (and removing) a probe file, before any
    work whose result would go there is started."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(
            f"cannot write the {what} at {directory}: {describe_os_error(exc)}" + (f". {hint}" if hint else ""),
            exc.errno,
        ) from exc
    return directory


def require_free_space(directory: Path, needed_bytes: int, what: str) -> None:
    """Fail before training when the disk cannot hold what the run will write (checkpoints, weights)."""
    free = shutil.disk_usage(directory).free
    if free < needed_bytes:
        raise OutputError(
            f"not enough free space for the {what} at {directory}: {free / 2**20:.0f} MiB free, "
            f"about {needed_bytes / 2**20:.0f} MiB needed",
            errno.ENOSPC,
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary sibling of `path` to write to; it replaces `path` only if the block succeeds.

    The temporary name is unique per writer, so concurrent writers of one file never collide (the last
    complete one wins). An OS error names the file and its cause; cleaning up never hides it.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        os.chmod(name, 0o666 & ~_umask())  # mkstemp makes files private; the result should be like any file
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {describe_os_error(exc)}", exc.errno) from exc
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"cannot write {path}: {describe_os_error(exc)}", exc.errno) from exc
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # never let cleanup replace the error that matters


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically, with OS errors (disk full, permission) naming the file."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())
