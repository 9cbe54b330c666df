"""Notebook 09's protocol (emnist_utils.experiments.final): a refit takes every prediction-time setting from its
train-only twin, the model refit is the search's winner only where it beat notebook 05's choice on validation,
distillation settings are chosen on validation, and every row is scored on the test split with its spread."""

from __future__ import annotations

import math
import statistics

import pandas as pd
import pytest
import torch
from helpers import fake_result, small_profile, tiny_spec

from emnist_utils.core.evaluation import TTA_SHIFTS, accuracy, balanced_accuracy
from emnist_utils.core.splits import class_counts
from emnist_utils.experiments import beyond, final, search_study
from emnist_utils.experiments.beyond import with_chosen_prediction
from emnist_utils.experiments.profiles import PROFILES
from emnist_utils.experiments.store import Store


def run(store, spec, splits):
    return store.run(spec.bind(splits, small_profile()), splits, device="cpu", progress=False)


@pytest.fixture(scope="module")
def protocol(small_splits, tmp_path_factory):
    """Two seeds of a tiny model, train-only and refit, in one store."""
    store = Store(tmp_path_factory.mktemp("final") / "cache")
    base = tiny_spec(epochs=2)
    twins = [run(store, base.with_(seed=s), small_splits) for s in (0, 1)]
    refits = [run(store, final.refit(base.with_(seed=s)), small_splits) for s in (0, 1)]
    return store, base, twins, refits


def test_a_refit_takes_its_prediction_settings_from_its_train_only_twin(protocol, small_splits):
    _, _, twins, refits = protocol
    model, choice = final.refit_prediction(refits[0], twins[0], small_splits)
    _, twin_choice = with_chosen_prediction(twins[0], small_splits)
    assert (
        choice["adjustment_strength"] == twins[0].metrics["adjustment_strength"] == twin_choice["adjustment_strength"]
    )
    assert model.tta_shifts == (TTA_SHIFTS if twin_choice["tta"] else ((0, 0),))
    seen = small_splits.with_validation_trained()
    assert model.adjustment.class_counts == tuple(class_counts(seen.train_labels, seen.num_classes).tolist())
    assert refits[0].key in model.run["key"] and model.run["train_on"] == "train+val"
    assert twins[0].key in choice["chosen_by"]


def test_refit_prediction_refuses_what_is_not_a_refit_and_its_twin(protocol, small_splits):
    _, _, twins, refits = protocol
    with pytest.raises(ValueError, match="must be a refit"):
        final.refit_prediction(twins[0], twins[1], small_splits)
    with pytest.raises(ValueError, match="must be a refit"):
        final.refit_prediction(refits[0], refits[1], small_splits)


def test_students_train_on_the_images_their_teachers_trained_on(protocol):
    _, _, twins, refits = protocol
    student = final.distilled(final.STUDENT, twins, 4.0, 0.5)
    assert student.train_on == "train" and student.teacher == tuple(t.key for t in twins)
    assert (student.recipe.distill_temperature, student.recipe.distill_weight) == (4.0, 0.5)
    assert final.distilled(final.STUDENT, refits, 4.0, 0.5).train_on == "train+val"
    with pytest.raises(ValueError, match="different images"):
        final.distilled(final.STUDENT, [twins[0], refits[1]], 4.0, 0.5)


@pytest.mark.parametrize(
    "winner_score, parameters, expected",
    [(61.0, 1000, "winner"), (60.0, 1000, "05"), (59.0, 1000, "05"), (None, 1000, "05"), (61.0, 1_000_001, "05")],
)
def test_the_winner_is_refit_only_where_it_beat_notebook_05_on_validation(winner_score, parameters, expected):
    chosen05, winner = tiny_spec().with_(name="nb05"), tiny_spec(arch="lean").with_(name="winner")

    def delivered(score, spec):  # what the trained-model file delivers: the adjusted validation score
        result = fake_result(50.0, 50.0, spec=spec, parameters=parameters)
        result.metrics.update(val_balanced_acc_adjusted=score, val_acc_adjusted=0.0)
        return result

    runs05 = [delivered(60.0, chosen05) for _ in range(3)]
    winner_runs = [] if winner_score is None else [delivered(winner_score, winner) for _ in range(3)]
    spec, runs, why = final.base_choice(chosen05, runs05, winner if winner_runs else None, winner_runs)
    assert spec.name == ("winner" if expected == "winner" else "nb05")
    assert runs == (winner_runs if expected == "winner" else runs05)
    assert spec.name in why
    assert ("over the budget" in why) == (parameters > final.MAX_PARAMETERS)


@pytest.mark.parametrize("winner_val, expected", [(88.56, "05"), (90.5, "error")])
def test_without_the_study_notebook_08s_committed_verdict_decides(winner_val, expected):
    chosen05 = tiny_spec().with_(name="nb05")
    runs05 = [fake_result(50.0, 50.0, spec=chosen05) for _ in range(3)]
    verdict = search_study.CommittedVerdict("search-winner-trial25", winner_val, "notebook 05's choice (nb05)", 89.98)
    if expected == "error":
        with pytest.raises(RuntimeError, match="run notebook 08 first"):
            final.base_choice(chosen05, runs05, None, [], verdict=verdict)
        return
    spec, runs, why = final.base_choice(chosen05, runs05, None, [], verdict=verdict)
    assert spec is chosen05 and runs == runs05
    assert "committed table" in why and "88.56% against 89.98%" in why
    assert "no finished search" in final.base_choice(chosen05, runs05, None, [])[2]


def test_notebook_05s_choice_comes_from_the_cache_else_its_committed_tables_else_training():
    trained = []

    def train(candidates):
        trained.append(len(candidates))
        return candidates[0]

    committed = search_study.Committed05("lean-48", 632831, 89.98, 3, 89.95, 0.16)
    cached_choice = beyond.CANDIDATES[2]
    assert final.notebook_05_choice(lambda c: cached_choice, train, committed) == (
        cached_choice,
        "its candidates in this cache",
    )
    spec, where = final.notebook_05_choice(lambda c: None, train, committed)
    assert spec.name == "lean-48" and spec in beyond.CANDIDATES and "committed tables" in where
    assert trained == []  # neither trained anything
    spec, where = final.notebook_05_choice(lambda c: None, train, None)
    assert spec is beyond.CANDIDATES[0] and where == "its candidates, trained here"
    assert trained == [len(beyond.CANDIDATES)]


def test_the_distillation_setting_is_chosen_on_validation_ties_to_the_earlier():
    table = pd.DataFrame(
        {
            "temperature": [2.0, 4.0, 2.0, 4.0],
            "teacher_share": [0.5, 0.5, 0.9, 0.9],
            "val_balanced_delivered_%": [1, 3, 3, 2],
        }
    )
    assert final.choose_setting(table) == (4.0, 0.5)
    assert len(final.grid(PROFILES["full"])) == len(final.DISTILLATION_GRID) > len(final.grid(PROFILES["smoke"])) >= 2


def test_rows_are_scored_once_on_the_test_split_with_their_spread(protocol, small_splits):
    _, _, twins, refits = protocol
    models = [with_chosen_prediction(r, small_splits)[0] for r in twins]
    table = final.evaluate_rows(
        [final.Row("train-only", models, twins, "training part", teacher_seconds=120.0)],
        small_splits.test_images,
        small_splits.test_labels,
    )
    row = table.iloc[0]
    balanced = [balanced_accuracy(m.predict(small_splits.test_images), small_splits.test_labels, 47) for m in models]
    assert row["test_balanced_mean_%"] == round(statistics.fmean(balanced), 2)
    assert row["test_balanced_std"] == round(statistics.stdev(balanced), 2)
    assert row["test_balanced_per_seed_%"] == " / ".join(f"{b:.2f}" for b in balanced)
    ensemble = torch.stack([m.probabilities(small_splits.test_images) for m in models]).mean(0).argmax(1)
    assert row["ensemble_test_balanced_%"] == round(balanced_accuracy(ensemble, small_splits.test_labels, 47), 2)
    assert row["teacher_train_minutes"] == 2.0 and row["seeds"] == 2


def test_notebook_05_and_notebook_09_score_the_same_models_alike(protocol, small_splits):
    """Both notebooks' test tables come from one scoring helper: the same models give the same numbers in each, and
    a single seed's spread is unknown (NaN), not zero."""
    _, _, twins, _ = protocol
    models = [with_chosen_prediction(r, small_splits)[0] for r in twins]
    images, labels = small_splits.test_images, small_splits.test_labels
    nb05, probabilities = beyond.seeds_on_test("train-only", models, twins, images, labels)
    nb09 = final.evaluate_rows([final.Row("train-only", models, twins, "training part")], images, labels).iloc[0]
    plain = [accuracy(m.predict(images), labels) for m in models]
    assert nb05["test_acc_mean_%"] == nb09["test_acc_mean_%"] == round(statistics.fmean(plain), 2)
    assert nb05["test_balanced_acc_mean_%"] == nb09["test_balanced_mean_%"]
    assert nb05["test_acc_std"] == round(statistics.stdev(plain), 2)
    assert all(torch.equal(p, m.probabilities(images)) for p, m in zip(probabilities, models))
    single = final.evaluate_rows([final.Row("one", models[:1], twins[:1], "training part")], images, labels).iloc[0]
    assert math.isnan(single["test_balanced_std"])
    assert single["ensemble_test_balanced_%"] == single["test_balanced_mean_%"]


def test_the_plan_counts_every_run_the_notebook_trains(small_splits):
    images: list[int] = []

    def estimate(spec, n):
        images.append(n)
        return float(n)

    n_train, n_all = len(small_splits.train_labels), len(small_splits.train_labels) + len(small_splits.val_labels)
    for name in ("full", "smoke"):
        profile = PROFILES[name]
        seeds, grid = len(profile.seeds((0, 1, 2))), len(final.grid(profile))
        parts = final.estimated_seconds(profile, tiny_spec(), small_splits, estimate)
        assert parts["refits"] == seeds * n_all
        assert parts["distillation settings"] == grid * n_train
        assert parts["students"] == max(0, seeds * (2 * n_train + n_all) - 2 * n_train)
