"""Shared test setup: every test runs with its own EMNIST_CACHE / EMNIST_OUTPUT, so nothing is written into the
repository, and the stand-in data (if present) is loaded once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

TESTS_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = TESTS_DIR.parent
for p in (str(PROJECT_ROOT), str(TESTS_DIR)):
    if p not in sys.path:
        sys.path.insert(0, p)

from helpers import STANDIN_DIR  # noqa: E402

# The tests run next to other CPU work on small machines; one intra-op thread is several times faster there than
# two contending ones, and every bit-for-bit comparison below assumes the same thread count on both sides.
torch.set_num_threads(1)

_ENV_VARS = (
    "EMNIST_DATA",
    "EMNIST_SPLIT",
    "EMNIST_ALLOW_UNVERIFIED",
    "EMNIST_DEVICE",
    "EMNIST_PROFILE",
    "EMNIST_RESUME_COMMAND",
)


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path_factory):
    """A fresh cache and output folder per test; no EMNIST_* settings leak in from the shell."""
    env_root = tmp_path_factory.mktemp("emnist-env")
    monkeypatch.setenv("EMNIST_CACHE", str(env_root / "cache"))
    monkeypatch.setenv("EMNIST_OUTPUT", str(env_root / "output"))
    for name in _ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return env_root


@pytest.fixture(scope="session")
def standin_data():
    """The real stand-in split (EMNIST format), loaded and verified once; skipped where it is absent."""
    if not STANDIN_DIR.is_dir():
        pytest.skip(f"stand-in data not found at {STANDIN_DIR}")
    from emnist_utils.core.data import load_emnist

    return load_emnist(STANDIN_DIR, "standin", download=False, allow_unverified=False)


@pytest.fixture(scope="session")
def small_splits(standin_data):
    """1,500 / 500 / 470 images of the stand-in: enough for accuracies well above chance in seconds."""
    from emnist_utils.core.splits import make_splits

    return make_splits(standin_data, 0, train_limit=1500, val_limit=500, test_limit=470)
