"""Profiles (emnist_utils.experiments.profiles): what full, quick and smoke shrink (epochs, seeds, data) and how a
profile is chosen."""

from __future__ import annotations

import pytest

from emnist_utils.core.registry import ConfigError
from emnist_utils.experiments.profiles import PROFILES, Profile, get_profile

FULL, QUICK, SMOKE = PROFILES["full"], PROFILES["quick"], PROFILES["smoke"]


def test_the_three_profiles():
    assert list(PROFILES) == ["full", "quick", "smoke"]
    assert all(name == profile.name and profile.description for name, profile in PROFILES.items())


@pytest.mark.parametrize("epochs", [1, 5, 10, 20, 30])
def test_full_trains_every_epoch(epochs):
    assert FULL.epochs(epochs) == epochs


@pytest.mark.parametrize(
    "epochs, expected", [(1, 1), (3, 1), (4, 1), (5, 2), (6, 2), (10, 2), (12, 2), (20, 2), (30, 2)]
)
def test_quick_trains_a_quarter_of_the_epochs_rounded_up_at_most_two(epochs, expected):
    assert QUICK.epochs(epochs) == expected


@pytest.mark.parametrize("epochs", [1, 5, 20, 30])
def test_smoke_trains_one_epoch(epochs):
    assert SMOKE.epochs(epochs) == 1


def test_epoch_cap_and_floor():
    assert Profile("t", "", epoch_fraction=0.5, max_epochs=3).epochs(20) == 3
    assert Profile("t", "", epoch_fraction=0.5, max_epochs=3).epochs(4) == 2
    assert Profile("t", "", epoch_fraction=0.01).epochs(20) == 1  # always at least one epoch


def test_seeds():
    assert FULL.seeds((0, 1, 2)) == (0, 1, 2)
    assert QUICK.seeds((0, 1, 2)) == (0,) and SMOKE.seeds((5, 6)) == (5,)
    assert Profile("t", "", max_seeds=2).seeds((0, 1, 2)) == (0, 1)


def test_limits():
    assert FULL.limits() == {"train_limit": None, "val_limit": None, "test_limit": None}
    assert QUICK.limits() == {"train_limit": 5_000, "val_limit": 2_500, "test_limit": None}
    assert SMOKE.limits() == {"train_limit": 3_000, "val_limit": 1_000, "test_limit": 1_880}
    assert FULL.baseline_train_limit is None
    assert QUICK.baseline_train_limit == 5_000 and SMOKE.baseline_train_limit == 2_000


def test_only_full_writes_the_committed_outputs():
    assert FULL.writes_committed and not QUICK.writes_committed and not SMOKE.writes_committed


def test_get_profile(monkeypatch):
    assert get_profile() is FULL
    assert get_profile("smoke") is SMOKE
    monkeypatch.setenv("EMNIST_PROFILE", "quick")
    assert get_profile() is QUICK
    assert get_profile("full") is FULL  # an explicit name wins over the environment


def test_unknown_profile_names_the_choices(monkeypatch):
    with pytest.raises(ConfigError, match="unknown profile 'fast'.*full, quick, smoke"):
        get_profile("fast")
    monkeypatch.setenv("EMNIST_PROFILE", "nope")
    with pytest.raises(ConfigError, match="EMNIST_PROFILE"):
        get_profile()


def test_as_dict():
    d = SMOKE.as_dict()
    assert d["name"] == "smoke" and d["max_epochs"] == 1 and d["train_limit"] == 3_000
    assert Profile(**d) == SMOKE
