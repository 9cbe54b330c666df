"""Where things live. Everything resolves against the project root, so notebooks (run from
`notebooks/`), the CLI and the tests agree whatever the working directory is."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def resolve(path: str | os.PathLike) -> Path:
    """An absolute path: relative paths are taken from the working directory if they exist there,
    else from the project root (so `EMNIST_DATA=../shared/emnist/standin` works from anywhere)."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p.resolve()
    return (PROJECT_ROOT / p).resolve()


def output_root(profile_name: str) -> Path:
    """The full profile writes the committed `figures/` and `results/`; any other profile (smoke, tests)
    writes under `outputs/<profile>/` so that a CI or test run never overwrites the committed artefacts."""
    override = os.environ.get("EMNIST_OUTPUT")
    if override:
        return resolve(override)
    return PROJECT_ROOT if profile_name == "full" else PROJECT_ROOT / "outputs" / profile_name


def figures_dir(profile_name: str) -> Path:
    return output_root(profile_name) / "figures"


def results_dir(profile_name: str) -> Path:
    return output_root(profile_name) / "results"


def cache_dir() -> Path:
    """Trial results and checkpoints; never committed (see .gitignore)."""
    return resolve(os.environ.get("EMNIST_CACHE", PROJECT_ROOT / ".cache"))


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary sibling of `path` to write to; it replaces `path` only if the block succeeds, so
    readers never see a half-written checkpoint, cache entry, weights file or notebook."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
