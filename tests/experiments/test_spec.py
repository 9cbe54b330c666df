"""Run specs (emnist_utils.experiments.spec): the key covers every field and the code, binding to data and a
profile, and the dictionary round trip."""

from __future__ import annotations

import dataclasses
import math
import shutil

import pytest
from helpers import small_profile, tiny_spec

from emnist_utils.core.fingerprint import Fingerprinter
from emnist_utils.core.registry import ConfigError, ModelSpec
from emnist_utils.core.splits import make_splits
from emnist_utils.core.training import Recipe
from emnist_utils.experiments import spec as spec_module
from emnist_utils.experiments.profiles import PROFILES
from emnist_utils.experiments.spec import DELIVERY_ROOTS, TRAINING_ROOTS, TRAINING_STOP, Limits, RunSpec

DATA = "ab" * 32

# A different valid value for every field; the assertions below check that these cover every field, so a new
# field cannot be added without deciding how it enters the key.
RECIPE_CHANGES = {
    "lr": 2e-3,
    "batch_size": 50,
    "epochs": 3,
    "optimizer": "sgd",
    "weight_decay": 0.01,
    "schedule": "onecycle",
    "label_smoothing": 0.1,
    "precision": "bf16",
    "channels_last": False,
    "augment": "affine",
    "input_norm": "unit",
    "sampling": "sqrt",
    "loss_weighting": "balanced",
    "ema_decay": 0.9,
    "distill_weight": 0.5,
    "distill_temperature": 4.0,
}
MODEL_CHANGES = {"arch": "arch1", "c1": 5, "c2": 9, "hidden": 33, "dropout": 0.25}
LIMITS_CHANGES = {"train": 1000, "validation": 100}
RUN_CHANGES = {
    "seed": 1,
    "split_seed": 1,
    "data": "cd" * 32,
    "train_on": "train+val",
    "teacher": ("ef" * 12,),
}  # model, recipe, limits: field by field below


def bound(**changes) -> RunSpec:
    """A bound run distilled from a (made-up) teacher, so that every distillation setting can change alone."""
    base = tiny_spec()
    changes.setdefault("recipe", base.recipe.with_(distill_weight=0.25, distill_temperature=2.0))
    return base.with_(data=DATA, teacher=("ab" * 12,), **changes)


def test_changes_cover_every_field():
    assert set(RECIPE_CHANGES) == {f.name for f in dataclasses.fields(Recipe)}
    assert set(MODEL_CHANGES) == {f.name for f in dataclasses.fields(ModelSpec)}
    assert set(LIMITS_CHANGES) == {f.name for f in dataclasses.fields(Limits)}
    assert set(RUN_CHANGES) | {"model", "recipe", "limits", "name"} == {f.name for f in dataclasses.fields(RunSpec)}


def test_equal_specs_have_equal_keys():
    assert bound().key() == bound().key()
    assert len(bound().key()) == 24


@pytest.mark.parametrize("field", list(RECIPE_CHANGES))
def test_key_changes_with_every_recipe_field(field):
    base = bound()
    value = RECIPE_CHANGES[field]
    assert getattr(base.recipe, field) != value
    changed = base.with_(recipe=base.recipe.with_(**{field: value}))
    assert changed.key() != base.key()


@pytest.mark.parametrize("field", list(MODEL_CHANGES))
def test_key_changes_with_every_model_field(field):
    base = bound()
    value = MODEL_CHANGES[field]
    assert getattr(base.model, field) != value
    assert base.with_(model=base.model.with_(**{field: value})).key() != base.key()


@pytest.mark.parametrize("field", list(LIMITS_CHANGES))
def test_key_changes_with_every_limit(field):
    base = bound()
    assert base.with_(limits=Limits(**{field: LIMITS_CHANGES[field]})).key() != base.key()


@pytest.mark.parametrize("field", list(RUN_CHANGES))
def test_key_changes_with_seed_split_seed_and_data(field):
    base = bound()
    assert base.with_(**{field: RUN_CHANGES[field]}).key() != base.key()


def test_all_changed_keys_differ_from_each_other():
    base = bound()
    keys = {base.key()}
    keys |= {base.with_(recipe=base.recipe.with_(**{k: v})).key() for k, v in RECIPE_CHANGES.items()}
    keys |= {base.with_(model=base.model.with_(**{k: v})).key() for k, v in MODEL_CHANGES.items()}
    keys |= {base.with_(limits=Limits(**{k: v})).key() for k, v in LIMITS_CHANGES.items()}
    keys |= {base.with_(**{k: v}).key() for k, v in RUN_CHANGES.items()}
    assert len(keys) == 1 + len(RECIPE_CHANGES) + len(MODEL_CHANGES) + len(LIMITS_CHANGES) + len(RUN_CHANGES)


def test_name_is_not_part_of_the_key():
    base = bound()
    assert base.with_(name="something else entirely").key() == base.key()
    assert base.with_(name="").key() == base.key()


def test_key_changes_with_the_training_code(monkeypatch):
    base = bound()
    before = base.key()
    original = spec_module.training_fingerprint()
    edited = {**original, "emnist_utils.core.training.fit": "0" * 16}
    monkeypatch.setattr(spec_module, "training_fingerprint", lambda: edited)
    assert base.key() != before
    monkeypatch.setattr(spec_module, "training_fingerprint", lambda: dict(original))
    assert base.key() == before


def test_key_changes_with_the_delivery_code(monkeypatch):
    base = bound()
    before = base.key()
    original = spec_module.delivery_fingerprint()
    edited = {**original, "emnist_utils.core.trained_model.TrainedModel": "0" * 16}
    monkeypatch.setattr(spec_module, "delivery_fingerprint", lambda: edited)
    assert base.key() != before
    monkeypatch.setattr(spec_module, "delivery_fingerprint", lambda: dict(original))
    assert base.key() == before


def test_key_changes_with_the_architecture_code(monkeypatch):
    base = bound()
    before = base.key()
    real = spec_module.architecture_fingerprint

    def edited(arch):
        return {**real(arch), "emnist_utils.core.models.Architecture2": "f" * 16}

    monkeypatch.setattr(spec_module, "architecture_fingerprint", edited)
    assert base.key() != before


def test_training_fingerprint_reaches_the_code_a_result_depends_on():
    names = set(spec_module.training_fingerprint())
    for expected in (
        "emnist_utils.experiments.store.train_run",
        "emnist_utils.experiments.store.validation_metrics",
        "emnist_utils.core.training.fit",
        "emnist_utils.core.training.train_one_epoch",
        "emnist_utils.core.training.make_optimizer",
        "emnist_utils.core.splits.make_splits",
        "emnist_utils.core.splits.Batches",
        "emnist_utils.core.splits.normalise",
        "emnist_utils.core.augment.random_affine",
        "emnist_utils.core.evaluation.predict_logits",
    ):
        assert expected in names, expected
    # each run adds its own architecture's code instead of the table of all of them
    assert "emnist_utils.core.registry.ARCHITECTURES" not in names


def _edited_copy(tmp_path, relative: str, old: str, new: str):
    """A copy of the package with one text replacement in one file, and a fingerprinter over it."""
    import emnist_utils

    package = tmp_path / "emnist_utils"
    shutil.copytree(emnist_utils.__path__[0], package, ignore=shutil.ignore_patterns("__pycache__"))
    path = package / relative
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))
    return Fingerprinter(package)


def test_edited_training_loop_changes_the_fingerprint_and_comments_do_not(tmp_path):
    current = Fingerprinter().fingerprint(TRAINING_ROOTS, TRAINING_STOP)
    edited = _edited_copy(tmp_path / "a", "core/training.py", "loss.backward()", "(loss * 2).backward()")
    changed = edited.fingerprint(TRAINING_ROOTS, TRAINING_STOP)
    assert [k for k in current if current[k] != changed[k]] == ["emnist_utils.core.training.train_one_epoch"]
    commented = _edited_copy(tmp_path / "b", "core/training.py", "loss.backward()", "loss.backward()  # note")
    assert commented.fingerprint(TRAINING_ROOTS, TRAINING_STOP) == current


def test_identity_of_an_unbound_spec_is_refused():
    with pytest.raises(ConfigError, match="not bound to data"):
        tiny_spec().identity()
    with pytest.raises(ConfigError, match="not bound"):
        tiny_spec().key()


@pytest.mark.parametrize("bad", [-1, 1.5, True, "0"])
def test_seeds_must_be_non_negative_integers(bad):
    with pytest.raises(ConfigError, match="seed"):
        tiny_spec().with_(seed=bad)
    with pytest.raises(ConfigError, match="split_seed"):
        tiny_spec().with_(split_seed=bad)


@pytest.mark.parametrize("profile, epochs", [("full", 20), ("quick", 2), ("smoke", 1)])
def test_bind_applies_the_profiles_epochs(small_splits, profile, epochs):
    spec = tiny_spec(epochs=20).bind(small_splits, PROFILES[profile])
    assert spec.recipe.epochs == epochs
    assert spec.data == small_splits.provenance["checksum"] and len(spec.data) == 64
    assert spec.split_seed == small_splits.seed
    # everything else is kept
    assert spec.model == tiny_spec().model and spec.name == tiny_spec().name
    assert spec.recipe.with_(epochs=20) == tiny_spec(epochs=20).recipe


@pytest.mark.parametrize("epochs", [1, 2, 3, 5, 7, 9, 20, 30])
def test_quick_profile_trains_a_quarter_of_the_epochs_rounded_up_at_most_two(small_splits, epochs):
    expected = {1: 1, 2: 1, 3: 1, 5: 2, 7: 2, 9: 2, 20: 2, 30: 2}[epochs]
    assert tiny_spec(epochs=epochs).bind(small_splits, PROFILES["quick"]).recipe.epochs == expected
    assert expected == min(2, math.ceil(epochs / 4))  # the rule as the profile's docs state it


def test_bind_records_the_limits_the_splits_were_made_with(standin_data, small_splits):
    """The limits come from the splits, whatever the profile, so a run on limited splits can never share a key
    with a run on all the data."""
    for profile in (PROFILES["full"], small_profile(), PROFILES["smoke"]):
        assert tiny_spec().bind(small_splits, profile).limits == Limits(1500, 500)
    whole = make_splits(standin_data, 0)
    assert tiny_spec().bind(whole, PROFILES["full"]).limits == Limits(None, None)
    assert tiny_spec().bind(whole, PROFILES["full"]).key() != tiny_spec().bind(small_splits, PROFILES["full"]).key()


def test_bind_records_the_split_seed(small_splits):
    other = dataclasses.replace(small_splits, seed=3)
    assert tiny_spec().bind(other, small_profile()).split_seed == 3
    assert tiny_spec().bind(other, small_profile()).key() != tiny_spec().bind(small_splits, small_profile()).key()


@pytest.mark.parametrize(
    "make",
    [
        lambda: tiny_spec(),
        lambda: bound(seed=4, split_seed=2, name="x"),
        lambda: bound(limits=Limits(100, None), recipe=Recipe(3e-3, 64, 9, ema_decay=0.5, distill_weight=0.1)),
    ],
    ids=["unbound", "bound", "limits"],
)
def test_as_dict_from_dict_round_trip(make):
    spec = make()
    again = RunSpec.from_dict(spec.as_dict())
    assert again == spec
    assert again.as_dict() == spec.as_dict()
    if spec.data:
        assert again.key() == spec.key()


def test_from_dict_refuses_invalid_dictionaries():
    with pytest.raises(ConfigError, match="not a valid run spec"):
        RunSpec.from_dict({"model": bound().model.as_dict()})
    d = bound().as_dict()
    d["recipe"]["momentum"] = 0.9
    with pytest.raises(ConfigError, match="momentum"):
        RunSpec.from_dict(d)
    d = bound().as_dict()
    d["model"]["arch"] = "arch9"
    with pytest.raises(ConfigError, match="arch9"):
        RunSpec.from_dict(d)


def test_label():
    assert tiny_spec().label == "tiny-arch2"
    assert tiny_spec().with_(name="", seed=2).label == "arch2 seed 2"


# Issue 20: an edit to the code that decides what a run saves in its trained-model file reused the old cached run.
# Each place that turns a trained network into the file, with an edit that changes what the file holds.
DELIVERY_EDITS = {
    "the run's classes and normalisation (Store.run)": (
        "experiments/store.py",
        "                list(splits.classes),\n",
        "                list(reversed(splits.classes)),\n",
        "emnist_utils.experiments.store.Store",
    ),
    "the metrics stored with the run (Store.run)": (
        "experiments/store.py",
        'metrics={**trained.metrics, "parameters": parameters},',
        'metrics={**trained.metrics, "parameters": parameters + 1},',
        "emnist_utils.experiments.store.Store",
    ),
    "the weights written (TrainedModel.save)": (
        "core/trained_model.py",
        "v.detach().cpu().contiguous().clone()",
        "v.detach().cpu().contiguous().clone().half()",
        "emnist_utils.core.trained_model.TrainedModel",
    ),
    "the description written (TrainedModel.metadata)": (
        "core/trained_model.py",
        '"normalisation": {"mean": self.mean, "std": self.std},',
        '"normalisation": {"mean": self.mean, "std": self.std * 2},',
        "emnist_utils.core.trained_model.TrainedModel",
    ),
    "the file format (FORMAT)": (
        "core/trained_model.py",
        'FORMAT = "emnist-cnn/trained-model/3"',
        'FORMAT = "emnist-cnn/trained-model/4"',
        "emnist_utils.core.trained_model.FORMAT",
    ),
    "the stored adjustment (LogitAdjustment)": (
        "core/trained_model.py",
        'return {"class_counts": list(self.class_counts), "strength": self.strength}',
        'return {"class_counts": list(self.class_counts), "strength": self.strength / 2}',
        "emnist_utils.core.trained_model.LogitAdjustment",
    ),
    "the normalisation a run's file records (input_normalisation)": (
        "core/training.py",
        'return (splits.mean, splits.std) if recipe.input_norm == "standardise" else (0.0, 1.0)',
        'return (splits.mean, splits.std) if recipe.input_norm == "standardise" else (0.5, 1.0)',
        "emnist_utils.core.training.input_normalisation",
    ),
}


@pytest.mark.parametrize("place", list(DELIVERY_EDITS))
def test_edited_delivery_code_changes_the_fingerprint(tmp_path, place):
    relative, old, new, definition = DELIVERY_EDITS[place]
    current = Fingerprinter().fingerprint(DELIVERY_ROOTS, TRAINING_STOP)
    changed = _edited_copy(tmp_path, relative, old, new).fingerprint(DELIVERY_ROOTS, TRAINING_STOP)
    assert definition in current
    assert [k for k in current if current[k] != changed[k]] == [definition]


def test_delivery_fingerprint_is_part_of_the_key():
    identity = bound().identity()
    assert set(identity["code"]) == {"training", "delivery", "architecture"}
