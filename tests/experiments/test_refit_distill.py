"""Refits and distillation through the store: which images a run trains on is part of its spec and key, a refit
trains on the validation images too (with their statistics), and a distilled run learns from its teachers'
cached probabilities, refusing teachers that saw other images."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from helpers import small_profile, tiny_spec

from emnist_utils.core.registry import ConfigError
from emnist_utils.core.splits import normalisation_constants
from emnist_utils.core.trained_model import TrainedModel
from emnist_utils.core.training import DistillationLoss, Recipe
from emnist_utils.experiments.spec import RunSpec
from emnist_utils.experiments.store import Store, ensemble_probabilities


def bind(splits, **kwargs):
    return tiny_spec(**kwargs).bind(splits, small_profile())


def run(store: Store, spec, splits):
    return store.run(spec, splits, device="cpu", progress=False)


def distilled(spec: RunSpec, teachers, weight: float = 0.5, temperature: float = 3.0) -> RunSpec:
    """`spec` distilled from `teachers` (trained results, or specs)."""
    return spec.with_(
        teacher=tuple(t.key if isinstance(t.key, str) else t.key() for t in teachers),
        recipe=spec.recipe.with_(distill_weight=weight, distill_temperature=temperature),
    )


# ----------------------------------------------------------------------------- the spec


def test_training_images_are_part_of_the_key_and_the_spec_round_trips(small_splits):
    spec = bind(small_splits, epochs=1)
    refit = spec.with_(train_on="train+val")
    assert refit.key() != spec.key()
    assert RunSpec.from_dict(refit.as_dict()) == refit
    assert RunSpec.from_dict(refit.as_dict()).key() == refit.key()
    student = distilled(spec, [spec.with_(seed=1)])
    assert RunSpec.from_dict(student.as_dict()) == student
    assert student.key() != student.with_(teacher=(spec.with_(seed=2).key(),)).key()


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"train_on": "everything"}, "train_on must be one of"),
        ({"teacher": ("abc",)}, "needs both a teacher and a recipe with distill_weight > 0"),
        ({"recipe": Recipe(lr=1e-3, batch_size=100, epochs=1, distill_weight=0.5)}, "needs both a teacher"),
        ({"teacher": ("",), "recipe": Recipe(lr=1e-3, batch_size=10, epochs=1, distill_weight=0.5)}, "keys of"),
    ],
)
def test_inconsistent_specs_are_refused(changes, fragment):
    with pytest.raises(ConfigError, match=fragment):
        tiny_spec().with_(**changes)


@pytest.mark.parametrize(
    "setting, value",
    [("distill_weight", -0.1), ("distill_weight", 1.5), ("distill_temperature", 0.0), ("distill_temperature", 1e3)],
)
def test_distillation_settings_out_of_range_are_refused(setting, value):
    with pytest.raises(ConfigError, match=setting):
        Recipe(lr=1e-3, batch_size=10, epochs=1, **{setting: value})


# ----------------------------------------------------------------------------- the loss


def test_distillation_loss_mixes_hard_and_soft_targets():
    torch.manual_seed(0)
    logits = torch.randn(8, 5)
    labels = torch.randint(0, 5, (8,))
    soft = torch.randn(8, 5).softmax(1)
    hard = torch.nn.CrossEntropyLoss()
    t = 2.0
    kl = (soft * (soft.log() - (logits / t).log_softmax(1))).sum(1).mean() * t * t
    assert torch.allclose(DistillationLoss(hard, 0.0, t)(logits, labels, soft), hard(logits, labels))
    assert torch.allclose(DistillationLoss(hard, 1.0, t)(logits, labels, soft), kl, atol=1e-6)
    mixed = DistillationLoss(hard, 0.3, t)(logits, labels, soft)
    assert torch.allclose(mixed, 0.7 * hard(logits, labels) + 0.3 * kl, atol=1e-6)
    # a student that already matches its teacher pays nothing for the soft part
    assert float(DistillationLoss(hard, 1.0, t)(soft.log() * t, labels, soft)) == pytest.approx(0.0, abs=1e-5)


def test_ensemble_probabilities_average_the_members_softened_distributions():
    logits = torch.tensor([[[4.0, 0.0]], [[0.0, 0.0]]])  # two members, one image, two classes
    p = ensemble_probabilities(logits, 2.0)
    first = torch.tensor([math.exp(2), 1.0]) / (math.exp(2) + 1)
    assert torch.allclose(p, ((first + torch.tensor([0.5, 0.5])) / 2).unsqueeze(0))
    assert torch.allclose(p.sum(1), torch.ones(1))


# ----------------------------------------------------------------------------- through the store


def test_a_refit_trains_on_the_validation_images_too(small_splits, tmp_path):
    store = Store(tmp_path / "cache")
    spec = bind(small_splits, epochs=1)
    refit = run(store, spec.with_(train_on="train+val"), small_splits)
    merged = small_splits.with_validation_trained()
    assert len(merged.train_labels) == len(small_splits.train_labels) + len(small_splits.val_labels)
    assert torch.equal(merged.train_images[len(small_splits.train_labels) :], small_splits.val_images)
    model = TrainedModel.load(refit.model_path)
    assert model.run["train_on"] == "train+val"
    assert (model.mean, model.std) == pytest.approx(normalisation_constants(merged.train_images))
    assert refit.metrics["validation_trained"] is True
    plain = run(store, spec, small_splits)
    assert plain.metrics["validation_trained"] is False
    assert not torch.equal(
        next(iter(model.model.state_dict().values())), next(iter(plain.trained_model.model.state_dict().values()))
    )


def test_a_distilled_run_learns_from_its_teachers_cached_probabilities(small_splits, tmp_path, monkeypatch):
    store = Store(tmp_path / "cache")
    teachers = [run(store, bind(small_splits, epochs=1, seed=s), small_splits) for s in (0, 1)]
    student_spec = distilled(bind(small_splits, epochs=1, seed=5), teachers)
    student = run(store, student_spec, small_splits)
    assert TrainedModel.load(student.model_path).run["teacher"] == [t.key for t in teachers]
    cached = list((store.root / "teachers").glob("*.pt"))
    assert len(cached) == 1
    # the cached logits are the teachers' raw logits on the training images
    logits = store.teacher_logits(student_spec, small_splits)
    expected = teachers[1].trained_model.logits(small_splits.train_images, raw=True)
    assert torch.allclose(logits[1], expected, atol=1e-5)
    # another temperature or weight is another run; without the teachers' soft targets the student differs
    hard_only = run(store, bind(small_splits, epochs=1, seed=5), small_splits)
    assert student.key != hard_only.key
    assert student.history.train_loss != hard_only.history.train_loss


def test_a_damaged_teacher_cache_is_computed_again(small_splits, tmp_path):
    store = Store(tmp_path / "cache")
    teacher = run(store, bind(small_splits, epochs=1), small_splits)
    spec = distilled(bind(small_splits, epochs=1, seed=3), [teacher])
    first = store.teacher_logits(spec, small_splits)
    (path,) = (store.root / "teachers").glob("*.pt")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = store.teacher_logits(spec, small_splits)
    assert torch.equal(first, again)
    assert any("damaged" in str(w.message) for w in caught)


def test_teachers_must_exist_and_have_seen_the_same_images(small_splits, tmp_path):
    store = Store(tmp_path / "cache")
    missing = distilled(bind(small_splits, epochs=1), [bind(small_splits, epochs=1, seed=9).with_(name="never")])
    with pytest.raises(ConfigError, match="not in the results store"):
        run(store, missing, small_splits)
    refit_teacher = run(store, bind(small_splits, epochs=1).with_(train_on="train+val"), small_splits)
    leaking = distilled(bind(small_splits, epochs=1, seed=4), [refit_teacher])
    with pytest.raises(ConfigError, match="trained on other images"):
        run(store, leaking, small_splits)
    assert store.trained_here == 1  # neither student trained
