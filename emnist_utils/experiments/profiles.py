"""How much work a run does: `smoke` (CI), `quick` (a laptop in half an hour) and `full` (the real study).

The same code runs under every profile; a profile only shrinks the data, the epochs and the number of seeds.
Only `full` writes the committed figures, tables and notebooks; the others write under `outputs/<profile>/`.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

from ..core.registry import ConfigError


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    train_limit: int | None = None  # training images (the first ones after the seeded split), None = all
    val_limit: int | None = None  # validation images, None = all
    test_limit: int | None = None  # test images (as many of each class as fit), None = all
    epoch_fraction: float = 1.0  # each run trains ceil(epochs x fraction) epochs ...
    max_epochs: int | None = None  # ... and at most this many
    max_seeds: int | None = None  # multi-seed studies train only their first seeds
    baseline_train_limit: int | None = None  # cap on the training images of the scikit-learn baselines

    def epochs(self, epochs: int) -> int:
        """How many epochs a run of `epochs` trains under this profile (at least one)."""
        scaled = max(1, math.ceil(epochs * self.epoch_fraction))
        return min(scaled, self.max_epochs) if self.max_epochs is not None else scaled

    def seeds(self, seeds: tuple[int, ...]) -> tuple[int, ...]:
        return seeds if self.max_seeds is None else seeds[: self.max_seeds]

    def limits(self) -> dict:
        """Keyword arguments for `make_splits`."""
        return {"train_limit": self.train_limit, "val_limit": self.val_limit, "test_limit": self.test_limit}

    @property
    def writes_committed(self) -> bool:
        return self.name == "full"

    def as_dict(self) -> dict:
        return asdict(self)


PROFILES = {
    "full": Profile("full", "everything as the study defines it: all data, every epoch, every seed"),
    "quick": Profile(
        "quick",
        "a laptop's half hour: 5,000 training images, a quarter of the epochs (at most 2), one seed",
        train_limit=5_000,
        val_limit=2_500,
        epoch_fraction=0.25,
        max_epochs=2,  # the lean recipe's 30 epochs would be 8: the half hour holds 2 (and notebook 08)
        max_seeds=1,
        baseline_train_limit=5_000,
    ),
    "smoke": Profile(
        "smoke",
        "CI: 3,000 training images, one epoch, one seed",
        train_limit=3_000,
        val_limit=1_000,
        test_limit=1_880,
        max_epochs=1,
        max_seeds=1,
        baseline_train_limit=2_000,
    ),
}


def get_profile(name: str | None = None) -> Profile:
    """The named profile, else EMNIST_PROFILE, else `full`."""
    name = name or os.environ.get("EMNIST_PROFILE") or "full"
    if name not in PROFILES:
        raise ConfigError(
            f"unknown profile {name!r}; choose one of {', '.join(PROFILES)} (--profile or EMNIST_PROFILE)"
        )
    return PROFILES[name]
