"""The catalogue (emnist_utils.experiments.catalogue): for each notebook, the runs and baselines it needs, taken
from the same definitions the notebooks use, so that the main job can train them all beforehand."""

from __future__ import annotations

import pytest
from helpers import PROJECT_ROOT

from emnist_utils.core.registry import ARCHITECTURES
from emnist_utils.experiments import beyond
from emnist_utils.experiments.baselines import BASELINES
from emnist_utils.experiments.catalogue import notebook_baselines, notebook_runs
from emnist_utils.experiments.profiles import PROFILES
from emnist_utils.experiments.recipes import NAMED_RUNS
from emnist_utils.experiments.spec import RunSpec
from emnist_utils.experiments.studies import COMPARISON_STUDIES, SEEDS
from emnist_utils.experiments.trials import TABLE_1_1, TABLE_1_2

FULL, QUICK = PROFILES["full"], PROFILES["quick"]
NOTEBOOKS = PROJECT_ROOT / "notebooks"
DATA = "ab" * 32


def identity(spec: RunSpec):
    return spec.with_(name="")


@pytest.mark.parametrize("profile", ["full", "quick", "smoke"])
def test_every_listed_notebook_exists_and_every_spec_is_a_valid_unbound_run(profile):
    runs = notebook_runs(PROFILES[profile])
    assert set(runs) == {
        "02_architecture1_trials",
        "03_architecture2_trials",
        "04_final_model",
        "05_beyond_the_report",
        "06_baselines_and_depth",
    }
    for stem, specs in runs.items():
        assert (NOTEBOOKS / f"{stem}.ipynb").is_file(), stem
        assert specs, stem
        for spec in specs:
            assert isinstance(spec, RunSpec) and spec.model.arch in ARCHITECTURES
            assert spec.data == ""  # the notebooks and the main job bind them to their data and profile
            # a listed run is a real one: it binds, and its key can be taken
            assert len(spec.with_(data=DATA).key()) == 24
        keys = [s.with_(data=DATA).key() for s in specs]
        assert len(keys) == len(set(keys)), stem  # nothing listed twice


def test_trial_notebooks_list_the_report_tables():
    runs = notebook_runs(FULL)
    assert runs["02_architecture1_trials"] == [t.spec for t in TABLE_1_1]
    assert runs["03_architecture2_trials"] == [t.spec for t in TABLE_1_2]


def test_final_model_notebook_lists_the_table_and_the_named_runs():
    specs = notebook_runs(FULL)["04_final_model"]
    assert specs[:7] == [t.spec for t in TABLE_1_2]
    assert NAMED_RUNS["fast"] in specs and NAMED_RUNS["cpu"] in specs
    assert identity(NAMED_RUNS["report"]) in {identity(s) for s in specs}  # the report's run is trial 1


@pytest.mark.parametrize("profile", ["full", "quick"])
def test_studies_notebook_lists_every_study_run_once(profile):
    specs = notebook_runs(PROFILES[profile])["06_baselines_and_depth"]
    studies = (*COMPARISON_STUDIES, beyond.LEAN_DROPOUT_STUDY)
    wanted = {identity(s) for study in studies for s in study.specs(PROFILES[profile])}
    assert {identity(s) for s in specs} == wanted
    assert len(specs) == len(wanted)
    assert {s.seed for s in specs} == set(PROFILES[profile].seeds(SEEDS))


def test_beyond_notebook_lists_the_chosen_candidate_only_once_known():
    unknown = notebook_runs(FULL)["05_beyond_the_report"]
    also_unknown = notebook_runs(FULL, chosen=lambda candidates: None)["05_beyond_the_report"]
    assert unknown == also_unknown
    assert {identity(s) for s in beyond.CANDIDATES} <= {identity(s) for s in unknown}

    pick = beyond.CANDIDATES[1]
    known = notebook_runs(FULL, chosen=lambda candidates: candidates[1])["05_beyond_the_report"]
    added = {identity(s) for s in known} - {identity(s) for s in unknown}
    assert added == {identity(pick.with_(seed=s)) for s in SEEDS if s != pick.seed}
    quick = notebook_runs(QUICK, chosen=lambda candidates: candidates[1])["05_beyond_the_report"]
    assert {s.seed for s in quick} == {0}


def test_notebook_baselines():
    assert notebook_baselines(FULL) == {"06_baselines_and_depth": list(BASELINES)}
    assert (NOTEBOOKS / "06_baselines_and_depth.ipynb").is_file()
    assert all(name in BASELINES for names in notebook_baselines(QUICK).values() for name in names)
