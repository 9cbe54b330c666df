"""The summary points (emnist_utils.experiments.summary): one row per model read from the store wherever it has
been trained, means over the cached seeds, nothing trained."""

from __future__ import annotations

import pytest
from helpers import fake_result

from emnist_utils.experiments import beyond
from emnist_utils.experiments import store as store_module
from emnist_utils.experiments.profiles import PROFILES
from emnist_utils.experiments.studies import DEPTH_STUDY, OPTIMIZER_STUDY
from emnist_utils.experiments.summary import STUDY_GROUPS, summary_points
from emnist_utils.experiments.trials import TABLE_1_1, TABLE_1_2

FULL, QUICK = PROFILES["full"], PROFILES["quick"]
COLUMNS = ["group", "label", "parameters", "seeds", "val_acc", "val_balanced_acc"]


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("summary_points trained a run")

    monkeypatch.setattr(store_module, "train_run", forbidden)


def lookup_of(results: dict):
    """A lookup that finds the given results (by spec, names ignored) and records what it was asked for."""
    asked = []

    def lookup(spec):
        asked.append(spec)
        return results.get(spec.with_(name=""))

    lookup.asked = asked
    return lookup


def test_nothing_cached_gives_an_empty_table_with_the_columns():
    lookup = lookup_of({})
    table = summary_points(lookup, FULL)
    assert table.empty and list(table.columns) == COLUMNS
    assert len(lookup.asked) > 0
    assert all(s.data == "" for s in lookup.asked)  # unbound specs: the caller binds them to its data


def test_trial_tables_give_one_point_per_cached_trial():
    results = {
        TABLE_1_2[0].spec.with_(name=""): fake_result(88.5, 88.0, parameters=976_239),
        TABLE_1_1[6].spec.with_(name=""): fake_result(78.0, 77.25, parameters=123),
    }
    table = summary_points(lookup_of(results), FULL)
    assert table.to_dict("records") == [
        {"group": "Architecture 1 trials (report Table 1.1)", "label": "trial 7", "parameters": 123, "seeds": 1,
         "val_acc": 78.0, "val_balanced_acc": 77.25},
        {"group": "Architecture 2 trials (report Table 1.2)", "label": "trial 1", "parameters": 976_239, "seeds": 1,
         "val_acc": 88.5, "val_balanced_acc": 88.0},
    ]  # fmt: skip


def test_study_points_average_the_cached_seeds():
    variant = DEPTH_STUDY.variants[2]
    results = {
        s.with_(name=""): fake_result(acc, acc - 2, parameters=42)
        for s, acc in zip(variant.specs(FULL), (80.0, 81.0, 82.5))
        if s.seed != 1  # seed 1 is not trained yet
    }
    table = summary_points(lookup_of(results), FULL)
    assert table.to_dict("records") == [
        {"group": STUDY_GROUPS["depth_study"], "label": variant.label, "parameters": 42, "seeds": 2,
         "val_acc": 81.25, "val_balanced_acc": 79.25},
    ]  # fmt: skip


def test_the_shared_baseline_appears_in_every_study_group_once():
    variant = OPTIMIZER_STUDY.variants[0]  # the comparison base, a row of every study
    results = {s.with_(name=""): fake_result(85.0, parameters=976_239) for s in variant.specs(QUICK)}
    table = summary_points(lookup_of(results), QUICK)
    assert sorted(table["group"]) == sorted(STUDY_GROUPS.values())
    assert set(table["seeds"]) == {1} and set(table["val_acc"]) == {85.0}
    assert not table.duplicated(subset=["group", "label"]).any()


def test_beyond_candidates_are_points():
    candidate = beyond.CANDIDATES[0]
    results = {candidate.with_(seed=0, name=""): fake_result(90.0, 89.0, parameters=50_000)}
    table = summary_points(lookup_of(results), FULL)
    assert table.to_dict("records") == [
        {"group": "beyond the report (notebook 05)", "label": candidate.name, "parameters": 50_000, "seeds": 1,
         "val_acc": 90.0, "val_balanced_acc": 89.0},
    ]  # fmt: skip


def test_only_the_profiles_seeds_are_looked_up():
    lookup = lookup_of({})
    summary_points(lookup, QUICK)
    assert {s.seed for s in lookup.asked} == {0}
    lookup = lookup_of({})
    summary_points(lookup, FULL)
    assert {s.seed for s in lookup.asked} == {0, 1, 2}
