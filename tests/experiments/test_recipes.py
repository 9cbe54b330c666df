"""Named runs (emnist_utils.experiments.recipes): `report`, `fast`, `cpu` and `best` build valid runs with the
settings their documentation gives."""

from __future__ import annotations

import pytest

from emnist_utils.core.registry import ModelSpec, build_model, count_parameters
from emnist_utils.experiments.beyond import FINAL_SPEC
from emnist_utils.experiments.recipes import NAMED_RUNS
from emnist_utils.experiments.spec import RunSpec
from emnist_utils.experiments.trials import REPORT_FINAL

REPORT_MODEL = ModelSpec("arch2", 8, 32, 600, 0.5)
LEAN_MODEL = ModelSpec("lean", 32, 64, 128, 0.2)


def test_the_named_runs():
    assert list(NAMED_RUNS) == ["report", "fast", "cpu", "best"]
    assert len({s.name for s in NAMED_RUNS.values()}) == 4


@pytest.mark.parametrize("name", ["report", "fast", "cpu", "best"])
def test_each_named_run_is_a_valid_unbound_spec(name):
    spec = NAMED_RUNS[name]
    assert isinstance(spec, RunSpec) and spec.data == "" and spec.seed == 0
    assert RunSpec.from_dict(spec.as_dict()) == spec
    model = build_model(spec.model, 47)
    assert count_parameters(model) > 0


def test_report_is_the_reports_final_run():
    spec = NAMED_RUNS["report"]
    assert spec is REPORT_FINAL and spec.model == REPORT_MODEL
    r = spec.recipe
    assert (r.optimizer, r.lr, r.batch_size, r.epochs, r.schedule) == ("adam", 1e-3, 290, 20, "constant")
    assert count_parameters(build_model(spec.model, 47)) == 976_239


def test_fast_is_the_report_model_with_the_lean_recipe_shortened():
    spec = NAMED_RUNS["fast"]
    assert spec.model == REPORT_MODEL and spec.name == "report-fast"
    r = spec.recipe
    # a fifth of the report's epochs or fewer, no augmentation, a short weight average
    assert r.epochs * 5 <= REPORT_FINAL.recipe.epochs
    assert (r.augment, r.schedule, r.sampling) == ("none", "onecycle", "sqrt")
    assert 0.9 <= r.ema_decay < FINAL_SPEC.recipe.ema_decay
    # nothing else differs from the final recipe
    assert r.with_(epochs=FINAL_SPEC.recipe.epochs, augment="affine+erasing", ema_decay=0.999) == FINAL_SPEC.recipe


def test_best_is_notebook_05s_final_recipe():
    spec = NAMED_RUNS["best"]
    assert spec is FINAL_SPEC and spec.model == LEAN_MODEL
    r = spec.recipe
    assert (r.optimizer, r.lr, r.weight_decay, r.batch_size, r.epochs) == ("adamw", 3e-3, 5e-4, 256, 30)
    assert (r.schedule, r.label_smoothing, r.augment, r.ema_decay, r.sampling) == (
        "onecycle",
        0.1,
        "affine+erasing",
        0.999,
        "sqrt",
    )


def test_cpu_is_the_lean_recipe_for_fewer_epochs():
    spec = NAMED_RUNS["cpu"]
    assert spec.model == LEAN_MODEL and spec.name == "lean-cpu"
    assert spec.recipe.epochs == 15
    assert spec.recipe.with_(epochs=30) == NAMED_RUNS["best"].recipe
    assert count_parameters(build_model(spec.model, 47)) < count_parameters(build_model(REPORT_MODEL, 47)) / 2


def test_named_runs_are_different_runs():
    keys = {s.with_(data="ab" * 32).key() for s in NAMED_RUNS.values()}
    assert len(keys) == 4
