"""A run is one object: model, recipe, seeds, data limits and the data's checksum, with a key over all of it.

The key covers every field by value and a fingerprint of all code that can change the result: the
architecture's class and what it uses, the training loop, batching and normalisation, augmentation, the split
rule, the evaluation stored with the run, and the code that turns the trained network into the run's
trained-model file (what is stored, and how). Renaming a run, or editing a comment or docstring, keeps the key;
any other change makes a new one, so a stale cached result is never served.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

from ..core.fingerprint import code_fingerprint, combine
from ..core.registry import ConfigError, ModelSpec, architecture_fingerprint
from ..core.splits import Splits
from ..core.training import Recipe
from .profiles import Profile

# Where training starts: every definition these reach is part of each run's key. The registry's table of all
# architectures is left out; each run adds the fingerprint of its own architecture instead.
TRAINING_ROOTS = [("emnist_utils.experiments.store", "train_run"), ("emnist_utils.core.splits", "make_splits")]
# What turns a trained network into the run's trained-model file (normalisation, classes, what is stored and how):
# an edit there changes what a cached run delivers, so it is part of the key too.
DELIVERY_ROOTS = [("emnist_utils.experiments.store", "Store"), ("emnist_utils.core.trained_model", "TrainedModel")]
TRAIN_ON = ("train", "train+val")
TRAINING_STOP = frozenset(
    {
        "emnist_utils.core.registry.ARCHITECTURES",  # each run adds its own architecture's
        "emnist_utils.core.registry.architecture_fingerprint",  # the fingerprinting itself
        "emnist_utils.core.fingerprint.code_fingerprint",
        "emnist_utils.core.fingerprint.combine",
    }
)


def training_fingerprint() -> dict[str, str]:
    """{definition: hash} of the code every run shares (training loop, batching, split rule, ...)."""
    return code_fingerprint(TRAINING_ROOTS, TRAINING_STOP)


def delivery_fingerprint() -> dict[str, str]:
    """{definition: hash} of the code that makes and writes a run's trained-model file."""
    return code_fingerprint(DELIVERY_ROOTS, TRAINING_STOP)


@dataclass(frozen=True)
class Limits:
    """How much of the training and validation parts a run uses (None = all); the test part never changes
    what a run trains to, so it is not here."""

    train: int | None = None
    validation: int | None = None


@dataclass(frozen=True)
class RunSpec:
    model: ModelSpec
    recipe: Recipe
    seed: int = 0  # weight initialisation, shuffling, dropout and augmentation
    name: str = ""  # a label for tables and progress; not part of the key
    split_seed: int = 0  # the train/validation split
    limits: Limits = field(default_factory=Limits)
    data: str = ""  # sha256 of the data it trains on; "" until bound to data
    train_on: str = "train"  # which labelled images it trains on: the training part, or "train+val" (a refit)
    teacher: tuple[str, ...] = ()  # keys of the runs whose averaged probabilities it is distilled from

    def __post_init__(self):
        for name in ("seed", "split_seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        if self.train_on not in TRAIN_ON:
            raise ConfigError(f"train_on must be one of {', '.join(TRAIN_ON)}; got {self.train_on!r}")
        object.__setattr__(self, "teacher", tuple(self.teacher))
        if any(not isinstance(k, str) or not k for k in self.teacher):
            raise ConfigError(f"teacher must be the keys of trained runs, got {self.teacher!r}")
        if bool(self.teacher) != (self.recipe.distill_weight > 0):
            raise ConfigError(
                "a distilled run needs both a teacher and a recipe with distill_weight > 0 "
                f"(got {len(self.teacher)} teacher run(s) and distill_weight={self.recipe.distill_weight})"
            )

    def with_(self, **changes) -> RunSpec:
        return replace(self, **changes)

    def bind(self, splits: Splits, profile: Profile) -> RunSpec:
        """This run as `profile` runs it on `splits`: the profile's epochs; the splits' seed, limits and data."""
        return replace(
            self,
            recipe=self.recipe.with_(epochs=profile.epochs(self.recipe.epochs)),
            split_seed=splits.seed,
            data=splits.provenance["checksum"],
            limits=Limits(train=splits.train_limit, validation=splits.val_limit),
        )

    def identity(self) -> dict:
        """Everything the key covers."""
        if not self.data:
            raise ConfigError(f"run {self.name or self.model.arch!r} is not bound to data yet (RunSpec.bind)")
        settings = self.as_dict()
        del settings["name"]  # a label: renaming a run keeps its key
        return {
            **settings,
            "code": {
                "training": combine(training_fingerprint()),
                "delivery": combine(delivery_fingerprint()),
                "architecture": combine(architecture_fingerprint(self.model.arch)),
            },
        }

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:24]

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "model": self.model.as_dict(),
            "recipe": self.recipe.as_dict(),
            "seed": self.seed,
            "split_seed": self.split_seed,
            "limits": asdict(self.limits),
            "data": self.data,
            "train_on": self.train_on,
            "teacher": list(self.teacher),
        }

    @classmethod
    def from_dict(cls, d: dict) -> RunSpec:
        try:
            return cls(
                model=ModelSpec(**d["model"]),
                recipe=Recipe.from_dict(d["recipe"]),
                seed=d["seed"],
                name=d.get("name", ""),
                split_seed=d.get("split_seed", 0),
                limits=Limits(**d.get("limits", {})),
                data=d.get("data", ""),
                train_on=d.get("train_on", "train"),
                teacher=tuple(d.get("teacher", ())),
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"not a valid run spec ({exc})") from exc

    @property
    def label(self) -> str:
        return self.name or f"{self.model.arch} seed {self.seed}"

    @property
    def refit(self) -> bool:
        """Whether it trains on the validation images too (so nothing may be chosen on them)."""
        return self.train_on == "train+val"

    def training_splits(self, splits: Splits) -> Splits:
        """The splits this run trains on: `splits`, or with the validation images in the training part."""
        return splits.with_validation_trained() if self.refit else splits
