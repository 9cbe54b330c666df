"""Run profiles: `full` does the real work; `smoke` runs the same code on a tiny subset for one epoch (CI)."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from .models import TrialConfig


@dataclass(frozen=True)
class Profile:
    name: str
    train_limit: int | None = None
    val_limit: int | None = None
    test_limit: int | None = None
    max_epochs: int | None = None

    def apply(self, cfg: TrialConfig) -> TrialConfig:
        """The config as this profile runs it (the smoke profile caps the epochs)."""
        if self.max_epochs is not None and cfg.epochs > self.max_epochs:
            return cfg.with_(epochs=self.max_epochs)
        return cfg

    def limits(self) -> dict:
        """Keyword arguments for `make_splits`."""
        return {"train_limit": self.train_limit, "val_limit": self.val_limit, "test_limit": self.test_limit}

    def as_dict(self) -> dict:
        return asdict(self)


PROFILES = {
    "full": Profile("full"),
    "smoke": Profile("smoke", train_limit=3000, val_limit=1000, test_limit=2000, max_epochs=1),
}


def get_profile(name: str | None = None) -> Profile:
    """The named profile, else EMNIST_PROFILE, else `full`."""
    name = name or os.environ.get("EMNIST_PROFILE") or "full"
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)} (EMNIST_PROFILE)")
    return PROFILES[name]
