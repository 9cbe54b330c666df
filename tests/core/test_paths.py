"""emnist_utils.core.paths: atomic writes (also by many concurrent writers), the errors of unwritable folders, full
disks and file-size limits, and how paths are resolved and shown."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time
from collections import namedtuple
from pathlib import Path

import pytest
from helpers import PROJECT_ROOT, read_only_dir

from emnist_utils.core import paths as P
from emnist_utils.core.paths import OutputError, atomic_path, ensure_writable, require_free_space, write_bytes_atomic

PATHS_SOURCE = PROJECT_ROOT / "emnist_utils" / "core" / "paths.py"
# Loads paths.py alone (it needs only the standard library), so a child process starts in milliseconds instead of
# importing torch through the package.
CHILD_PRELUDE = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("emnist_paths", {str(PATHS_SOURCE)!r})
paths = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paths)
"""


def _payload(i: int, size: int = 256 * 1024) -> bytes:
    """Writer i's content: a header naming it, then `size` bytes that differ from every other writer's."""
    return f"writer {i:03d}\n".encode() + bytes([i % 251]) * size


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# ----------------------------------------------------------------------------- atomic writes


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "sub" / "result.json"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target and tmp.is_file()
        tmp.write_text("first")
        assert not target.exists()  # readers never see a half-written file
    assert target.read_text() == "first"
    with pytest.raises(ValueError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise ValueError("boom")
    assert target.read_text() == "first"
    assert _leftovers(target.parent, {"result.json"}) == []


def test_two_writers_of_one_file_get_different_temporary_files(tmp_path):
    target = tmp_path / "model.pt"
    with atomic_path(target) as a:
        with atomic_path(target) as b:
            assert a != b
            a.write_bytes(b"from a")
            b.write_bytes(b"from b")
        assert target.read_bytes() == b"from b"
    assert target.read_bytes() == b"from a"  # the last complete writer wins
    assert _leftovers(tmp_path, {"model.pt"}) == []


@pytest.mark.parametrize("how", ["write_bytes_atomic", "atomic_path"])
def test_forty_concurrent_thread_writers(tmp_path, how):
    target = tmp_path / "results.json"
    start = threading.Barrier(40)
    errors = []

    def writer(i: int) -> None:
        try:
            start.wait(10)
            if how == "write_bytes_atomic":
                write_bytes_atomic(target, _payload(i))
            else:
                with atomic_path(target) as tmp, open(tmp, "wb") as f:
                    for chunk in range(0, len(_payload(i)), 4096):  # slow enough for writers to overlap
                        f.write(_payload(i)[chunk : chunk + 4096])
        except BaseException as exc:  # every failure is reported below
            errors.append((i, repr(exc)))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    content = target.read_bytes()
    assert content in {_payload(i) for i in range(40)}  # exactly one writer's complete content
    assert _leftovers(tmp_path, {"results.json"}) == []


def test_forty_concurrent_process_writers(tmp_path):
    target, go = tmp_path / "out" / "weights.bin", tmp_path / "go"
    child = (
        CHILD_PRELUDE
        + f"""
import time
from pathlib import Path
i = int(sys.argv[1])
go = Path({str(go)!r})
deadline = time.monotonic() + 30
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.002)
for _ in range(3):
    paths.write_bytes_atomic(Path({str(target)!r}), f"writer {{i:03d}}\\n".encode() + bytes([i % 251]) * 262144)
"""
    )
    procs = [subprocess.Popen([sys.executable, "-c", child, str(i)], stderr=subprocess.PIPE) for i in range(40)]
    time.sleep(0.2)
    go.touch()
    failures = []
    for i, proc in enumerate(procs):
        _, err = proc.communicate(timeout=60)
        if proc.returncode != 0:
            failures.append((i, proc.returncode, err.decode()[-500:]))
    assert failures == []
    assert target.read_bytes() in {_payload(i) for i in range(40)}
    assert _leftovers(target.parent, {"weights.bin"}) == []


# ----------------------------------------------------------------------------- unwritable folders


def _permission_words(message: str) -> bool:
    return "permission denied" in message or "read-only" in message


def test_write_into_read_only_folder_names_the_path_and_the_cause(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "table.csv").write_text("old")
    target = folder / "table.csv"
    with read_only_dir(folder):
        for path in (target, folder / "new.bin", folder / "sub" / "deeper.bin"):
            with pytest.raises(OutputError) as info:
                write_bytes_atomic(path, b"new")
            msg = str(info.value)
            assert str(path) in msg and _permission_words(msg), msg
            assert info.value.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
            assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == info.value.errno
    assert target.read_text() == "old"
    assert _leftovers(folder, {"table.csv"}) == []


def test_failed_replace_is_reported_even_when_cleanup_fails_too(tmp_path):
    # The folder becomes read-only after the temporary file was written: the final rename fails, and so does the
    # removal of the temporary file; the error raised is the rename's, naming the target.
    folder = tmp_path / "models"
    folder.mkdir()
    target = folder / "best.pt"
    target.write_bytes(b"old model")
    guard = read_only_dir(folder)
    with pytest.raises(OutputError) as info:
        try:
            with atomic_path(target) as tmp:
                tmp.write_bytes(b"new model")
                guard.__enter__()
        finally:
            guard.__exit__(None, None, None)
    msg = str(info.value)
    assert str(target) in msg and _permission_words(msg), msg
    assert info.value.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
    assert target.read_bytes() == b"old model"


def test_cleanup_failure_never_replaces_the_error(tmp_path, monkeypatch):
    target = tmp_path / "figure.png"

    def cannot_unlink(self, missing_ok=False):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    with pytest.raises(OutputError) as info:
        with atomic_path(target) as tmp:
            monkeypatch.setattr(Path, "unlink", cannot_unlink)
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    monkeypatch.undo()
    assert str(target) in str(info.value) and "no space left" in str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert not target.exists()


def test_ensure_writable(tmp_path):
    nested = tmp_path / "a" / "b"
    assert ensure_writable(nested, "results folder") == nested
    assert nested.is_dir() and list(nested.iterdir()) == []  # the probe file is gone
    locked = tmp_path / "locked"
    with read_only_dir(locked):
        for folder in (locked, locked / "inside"):
            with pytest.raises(OutputError) as info:
                ensure_writable(folder, "results cache", "Set EMNIST_CACHE to a writable folder")
            msg = str(info.value)
            assert f"cannot write the results cache at {folder}" in msg and _permission_words(msg), msg
            assert msg.endswith("Set EMNIST_CACHE to a writable folder")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(OutputError, match="a part of the path is a file, not a folder") as info:
        ensure_writable(a_file / "sub", "figures folder")
    assert str(a_file / "sub") in str(info.value)


def test_require_free_space(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    asked = []

    def disk_usage(path):
        asked.append(Path(path))
        return usage(2**40, 2**40 - 10 * 2**20, 10 * 2**20)

    monkeypatch.setattr(P.shutil, "disk_usage", disk_usage)
    with pytest.raises(OutputError) as info:
        require_free_space(tmp_path, 100 * 2**20, "results cache")
    msg = str(info.value)
    assert "not enough free space for the results cache" in msg and str(tmp_path) in msg
    assert "10 MiB free" in msg and "100 MiB needed" in msg
    assert info.value.errno == errno.ENOSPC and asked == [tmp_path]
    assert require_free_space(tmp_path, 10 * 2**20, "results cache") is None  # just enough
    assert require_free_space(tmp_path, 2**20, "results cache") is None


def test_write_beyond_file_size_limit_names_path_and_cause(tmp_path):
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"previous checkpoint")
    child = (
        CHILD_PRELUDE
        + f"""
import resource, signal
from pathlib import Path
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    paths.write_bytes_atomic(Path({str(target)!r}), bytes(4 << 20))
except paths.OutputError as exc:
    print(f"errno={{exc.errno}}")
    print(exc)
    sys.exit(3)
print("written")
"""
    )
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    lines = proc.stdout.splitlines()
    assert lines[0] == f"errno={errno.EFBIG}"
    assert str(target) in lines[1] and "file too large" in lines[1]
    assert target.read_bytes() == b"previous checkpoint"
    assert _leftovers(tmp_path, {"checkpoint.pt"}) == []


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, "no space left on the device"),
        (errno.EDQUOT, "no space left on the device"),
        (errno.EFBIG, "file too large"),
        (errno.EACCES, "permission denied"),
        (errno.EPERM, "permission denied"),
        (errno.EROFS, "read-only file system"),
        (errno.ENOTDIR, "a part of the path is a file, not a folder"),
    ],
)
def test_describe_os_error(code, words):
    assert words in P.describe_os_error(OSError(code, os.strerror(code)))


# ----------------------------------------------------------------------------- resolving and showing paths


def test_shown_is_project_relative_inside_and_beside_the_project(tmp_path):
    root = P.PROJECT_ROOT
    assert root == PROJECT_ROOT
    assert P.shown(root / "results" / "table.csv") == "results/table.csv"
    assert P.shown(root) == "."
    assert P.shown(root.parent / "shared" / "emnist" / "standin") == "../shared/emnist/standin"
    assert P.shown(root.parent) == ".."
    assert P.shown(tmp_path / "x.png") == str(tmp_path.resolve() / "x.png")
    assert P.shown("/") == "/"


def test_resolve_prefers_the_working_directory_then_the_project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert P.resolve("figures") == P.PROJECT_ROOT / "figures"  # no ./figures here
    (tmp_path / "figures").mkdir()
    assert P.resolve("figures") == tmp_path.resolve() / "figures"
    assert P.resolve(tmp_path / "elsewhere") == tmp_path.resolve() / "elsewhere"


def test_output_root_and_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EMNIST_OUTPUT", str(tmp_path / "out"))
    monkeypatch.setenv("EMNIST_CACHE", str(tmp_path / "cache"))
    assert P.output_root("full") == P.output_root("smoke") == tmp_path.resolve() / "out"
    assert P.cache_dir() == tmp_path.resolve() / "cache"
    monkeypatch.delenv("EMNIST_OUTPUT")
    monkeypatch.delenv("EMNIST_CACHE")
    assert P.output_root("full") == P.PROJECT_ROOT  # the committed figures/ and results/
    assert P.output_root("quick") == P.PROJECT_ROOT / "outputs" / "quick"
    assert P.cache_dir() == P.PROJECT_ROOT / ".cache"
