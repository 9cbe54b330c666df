"""Studies as data (emnist_utils.experiments.studies): the comparison studies, one spec per variant and seed,
duplicates trained once, and the tables of mean and spread with the noise screen, checked by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from helpers import fake_result, tiny_spec

from emnist_utils.core.registry import build_model, count_parameters
from emnist_utils.experiments.beyond import LEAN_DROPOUT_STUDY
from emnist_utils.experiments.profiles import PROFILES, Profile
from emnist_utils.experiments.studies import (
    ACTIVATION_STUDY,
    ARCH2_DROPOUT_STUDY,
    BASELINE_VARIANT,
    COMPARISON_BASE,
    COMPARISON_STUDIES,
    DEPTH_STUDY,
    NORMALISATION_STUDY,
    OPTIMIZER_STUDY,
    SEEDS,
    Study,
    Variant,
    describe_study,
    run_study,
    summary_row,
    unique_specs,
    within_noise,
)
from emnist_utils.experiments.trials import REPORT_FINAL

FULL, QUICK = PROFILES["full"], PROFILES["quick"]

# ----------------------------------------------------------------------------- the studies


def test_comparison_base_is_the_report_model_for_10_epochs():
    assert COMPARISON_BASE.model == REPORT_FINAL.model
    assert COMPARISON_BASE.recipe == REPORT_FINAL.recipe.with_(epochs=10)
    assert BASELINE_VARIANT.spec == COMPARISON_BASE and SEEDS == (0, 1, 2)


@pytest.mark.parametrize(
    "study, archs",
    [
        (DEPTH_STUDY, ["arch2-depth1", "arch2", "arch2-depth3", "arch2-depth4"]),
        (ACTIVATION_STUDY, ["arch2", "arch2-leakyrelu", "arch2-gelu", "arch2-silu"]),
        (OPTIMIZER_STUDY, ["arch2", "arch2", "arch2"]),
        (NORMALISATION_STUDY, ["arch2", "arch2", "arch2-nobn", "arch2-nobn"]),
    ],
    ids=lambda v: v.name if isinstance(v, Study) else "",
)
def test_each_study_varies_one_thing_on_the_same_budget(study, archs):
    assert [v.spec.model.arch for v in study.variants] == archs
    assert COMPARISON_BASE in [v.spec for v in study.variants]  # the report's model is one of the rows
    for v in study.variants:
        shape = (v.spec.model.c1, v.spec.model.c2, v.spec.model.hidden, v.spec.model.dropout)
        assert shape == (8, 32, 600, 0.5)
        assert v.spec.recipe.epochs == 10 and v.spec.recipe.batch_size == 290
        assert v.seeds == SEEDS


def test_optimizer_and_normalisation_settings():
    adamw, sgd = OPTIMIZER_STUDY.variants[1].spec.recipe, OPTIMIZER_STUDY.variants[2].spec.recipe
    assert (adamw.optimizer, adamw.lr, adamw.weight_decay) == ("adamw", 1e-3, 0.05)
    assert (sgd.optimizer, sgd.lr, sgd.weight_decay) == ("sgd", 0.05, 0.0)
    inputs = [v.spec.recipe.input_norm for v in NORMALISATION_STUDY.variants]
    assert inputs == ["standardise", "unit", "standardise", "unit"]


def test_variant_specs_per_seed():
    variant = Variant("v", tiny_spec().with_(name="tiny"), seeds=(0, 1, 2))
    specs = variant.specs(FULL)
    assert [s.seed for s in specs] == [0, 1, 2]
    assert [s.name for s in specs] == ["tiny seed 0", "tiny seed 1", "tiny seed 2"]
    assert all(s.with_(seed=0, name="") == tiny_spec().with_(name="") for s in specs)
    assert [s.seed for s in variant.specs(QUICK)] == [0]
    unnamed = Variant("label", tiny_spec().with_(name=""), seeds=(4,))
    assert unnamed.specs(FULL)[0].name == "label seed 4"


def test_study_specs_in_order():
    study = Study("s", "t", (Variant("a", tiny_spec(), seeds=(0, 1)), Variant("b", tiny_spec(arch="lean"))))
    assert [(s.model.arch, s.seed) for s in study.specs(FULL)] == [
        ("arch2", 0), ("arch2", 1), ("lean", 0), ("lean", 1), ("lean", 2)
    ]  # fmt: skip


# ----------------------------------------------------------------------------- unique specs


def test_unique_specs_drops_repeats_whatever_their_names():
    a, b = tiny_spec(seed=0), tiny_spec(seed=1)
    specs = [a, b, a.with_(name="renamed"), b.with_(name="x"), tiny_spec(arch="lean")]
    assert unique_specs(specs) == [a, b, tiny_spec(arch="lean")]


def test_unique_specs_keeps_runs_that_differ():
    base = tiny_spec().with_(data="ab" * 32)
    others = [
        base.with_(seed=1),
        base.with_(recipe=base.recipe.with_(lr=0.01)),
        base.with_(model=base.model.with_(hidden=33)),
        base.with_(split_seed=1),
        base.with_(data="cd" * 32),
        base.with_(limits=base.limits.__class__(train=100)),
    ]
    assert unique_specs([base, *others]) == [base, *others]
    assert len({s.key() for s in [base, *others]}) == 1 + len(others)  # all distinct runs


def test_comparison_studies_share_their_baseline():
    specs = [s for study in COMPARISON_STUDIES for s in study.specs(FULL)]
    unique = unique_specs(specs)
    baseline = [s for s in unique if s.with_(name="", seed=0) == COMPARISON_BASE.with_(name="")]
    assert sorted(s.seed for s in baseline) == [0, 1, 2]  # every study, one baseline run per seed
    variants = sum(len(study.variants) for study in COMPARISON_STUDIES)
    shared = len(COMPARISON_STUDIES) - 1  # rows that repeat the baseline of another study
    assert len(specs) == 3 * variants and len(unique) == 3 * (variants - shared)


@pytest.mark.parametrize("study", [ARCH2_DROPOUT_STUDY, LEAN_DROPOUT_STUDY])
def test_dropout_studies_change_dropout_alone(study):
    """Issue 21: dropout 0 / 0.1 / 0.3 / 0.5 (and the model's own, the baseline row), nothing else changing."""
    base = study.variants[study.baseline].spec
    assert {v.spec.model.dropout for v in study.variants} >= {0.0, 0.1, 0.3, 0.5}
    for v in study.variants:
        assert v.spec.recipe == base.recipe and v.spec.model.with_(dropout=base.model.dropout) == base.model
        assert len(v.seeds) == 3
    assert len({v.spec.model.dropout for v in study.variants}) == len(study.variants)


# ----------------------------------------------------------------------------- tables


def test_summary_row_by_hand():
    runs = [
        fake_result(88.0, 87.0, parameters=976_239, train_seconds=10.0, epochs=10),
        fake_result(88.2, 87.5, parameters=976_239, train_seconds=12.0, epochs=10, device="cuda (H200)"),
        fake_result(88.1, 87.0, parameters=976_239, train_seconds=11.0, epochs=10),
    ]
    row = summary_row("base", runs, changes="nothing")
    assert row == {
        "variant": "base",
        "change": "nothing",
        "seeds": 3,
        "val_acc_mean_%": 88.1,
        "val_acc_std": 0.1,  # sqrt((0.01 + 0.01 + 0) / 2)
        "val_acc_min_%": 88.0,
        "val_acc_max_%": 88.2,
        "val_balanced_acc_mean_%": 87.17,
        "parameters": 976_239,
        "epochs": 10,
        "train_seconds_mean": 11.0,
        "trained_on": "cpu (1 threads), cuda (H200)",
    }


def test_summary_row_of_one_seed_has_no_spread():
    row = summary_row("one", [fake_result(50.0)])
    assert math.isnan(row["val_acc_std"]) and row["seeds"] == 1 and "change" not in row


def test_within_noise_by_hand():
    rows = pd.DataFrame(
        [
            summary_row("base", [fake_result(a) for a in (88.0, 88.2, 88.1)]),
            summary_row("same", [fake_result(a) for a in (88.1, 88.0, 88.2)]),
            summary_row("better", [fake_result(a) for a in (89.0, 89.1, 88.9)]),
            summary_row("noisy", [fake_result(a) for a in (86.0, 90.0, 88.0)]),
        ]
    )
    # standard error of a difference of two 3-seed means with std 0.1: sqrt(2 x 0.01 / 3) = 0.082; 1.0 > 2 x 0.082
    # noisy: std 2, se = sqrt(4/3 + 0.01/3) = 1.16, difference 0.1
    assert list(within_noise(rows)) == ["yes", "yes", "no", "yes"]
    assert list(within_noise(rows, baseline_row=2)) == ["no", "no", "yes", "yes"]
    single = summary_row("one seed", [fake_result(50.0)])
    assert list(within_noise(pd.DataFrame([rows.iloc[0].to_dict(), single]))) == ["yes", "one seed"]
    assert list(within_noise(pd.DataFrame([single, rows.iloc[0].to_dict()]))) == ["one seed", "one seed"]


def test_within_noise_just_inside_and_outside_two_standard_errors():
    base = {"seeds": 4, "val_acc_std": 1.0, "val_acc_mean_%": 80.0}
    # se = sqrt(1/4 + 1/4) = 0.7071; two se = 1.4142
    table = pd.DataFrame([base, {**base, "val_acc_mean_%": 81.41}, {**base, "val_acc_mean_%": 81.42}])
    assert list(within_noise(table)) == ["yes", "yes", "no"]


class FakeRunMany:
    """Returns made-up results: each variant's accuracies by seed, and records what it was asked to run."""

    def __init__(self, accs: dict[str, dict[int, float]]):
        self.accs, self.calls = accs, []

    def __call__(self, specs):
        self.calls.append(list(specs))
        return [
            fake_result(self.accs[s.model.arch][s.seed], self.accs[s.model.arch][s.seed] - 1.0, spec=s, epochs=2)
            for s in specs
        ]


def test_run_study_by_hand():
    study = Study(
        "tiny_study",
        "tiny",
        (
            Variant("base", tiny_spec(), changes="the baseline"),
            Variant("lean", tiny_spec(arch="lean"), changes="another model"),
        ),
    )
    run_many = FakeRunMany({"arch2": {0: 88.0, 1: 88.2, 2: 88.1}, "lean": {0: 89.0, 1: 89.1, 2: 88.9}})
    table, results = run_study(study, FULL, run_many)
    assert len(run_many.calls) == 1  # one batch, so the runner can run them side by side
    assert [(s.model.arch, s.seed) for s in run_many.calls[0]] == [
        ("arch2", 0), ("arch2", 1), ("arch2", 2), ("lean", 0), ("lean", 1), ("lean", 2)
    ]  # fmt: skip
    assert list(table["variant"]) == ["base", "lean"] and list(table["change"]) == ["the baseline", "another model"]
    assert list(table["seeds"]) == [3, 3]
    assert list(table["val_acc_mean_%"]) == [88.1, 89.0]
    assert list(table["val_acc_std"]) == [0.1, 0.1]
    assert list(table["val_acc_min_%"]) == [88.0, 88.9] and list(table["val_acc_max_%"]) == [88.2, 89.1]
    assert list(table["val_balanced_acc_mean_%"]) == [87.1, 88.0]
    assert list(table["gain_vs_baseline"]) == [0.0, 0.9]
    assert list(table["within_noise_of_baseline"]) == ["yes", "no"]
    assert list(results) == ["base", "lean"]
    assert [r.spec.seed for r in results["lean"]] == [0, 1, 2]
    assert all(r.spec.model.arch == "lean" for r in results["lean"])


def test_run_study_under_a_one_seed_profile():
    study = Study("s", "t", (Variant("base", tiny_spec()), Variant("lean", tiny_spec(arch="lean"))))
    run_many = FakeRunMany({"arch2": {0: 70.0}, "lean": {0: 71.5}})
    table, results = run_study(study, QUICK, run_many)
    assert [s.seed for s in run_many.calls[0]] == [0, 0]
    assert list(table["seeds"]) == [1, 1] and table["val_acc_std"].isna().all()
    assert list(table["gain_vs_baseline"]) == [0.0, 1.5]
    assert list(table["within_noise_of_baseline"]) == ["one seed", "one seed"]
    assert [len(r) for r in results.values()] == [1, 1]


def test_run_study_with_different_seed_counts():
    study = Study("s", "t", (Variant("a", tiny_spec(), seeds=(0, 1)), Variant("b", tiny_spec(arch="lean"), seeds=(7,))))
    run_many = FakeRunMany({"arch2": {0: 60.0, 1: 62.0}, "lean": {7: 65.0}})
    table, results = run_study(study, Profile("t", ""), run_many)
    assert list(table["seeds"]) == [2, 1] and list(table["val_acc_mean_%"]) == [61.0, 65.0]
    assert [r.spec.seed for r in results["b"]] == [7]


# ----------------------------------------------------------------------------- describing


def test_describe_study_lists_what_each_variant_trains():
    table = describe_study(OPTIMIZER_STUDY, 47)
    assert list(table["variant"]) == [v.label for v in OPTIMIZER_STUDY.variants]
    assert list(table["recipe changes"]) == ["-", "optimizer=adamw, weight_decay=0.05", "optimizer=sgd"]
    assert list(table["lr"]) == [1e-3, 1e-3, 0.05]
    assert set(table["parameters"]) == {976_239} and set(table["seeds (full profile)"]) == {3}
    assert table.loc[0, "c1/c2/hidden"] == "8/32/600"


def test_describe_depth_study_parameters():
    table = describe_study(DEPTH_STUDY, 47)
    counts = list(table["parameters"])
    # one block: the FC layer sees 8 x 14 x 14 maps
    assert counts[0] == 8 * 9 + 8 + 2 * 8 + 8 * 14 * 14 * 600 + 600 + 600 * 47 + 47
    assert counts[1] == 976_239
    assert counts[1] > counts[0] > counts[2] > counts[3]  # the 14x14 maps make one block costlier than three
    assert counts == [count_parameters(build_model(v.spec.model, 47)) for v in DEPTH_STUDY.variants]


def test_describe_normalisation_study():
    table = describe_study(NORMALISATION_STUDY, 47)
    assert list(table["recipe changes"]) == ["-", "input_norm=unit", "-", "input_norm=unit"]
    assert table.loc[2, "parameters"] == 976_239 - 2 * (8 + 32)  # no BatchNorm: no scale and shift


def test_gains_and_noise_screen_are_against_the_study_baseline_row():
    study = Study("s", "t", (Variant("lean", tiny_spec(arch="lean")), Variant("base", tiny_spec())), baseline=1)
    run_many = FakeRunMany({"arch2": {0: 88.0, 1: 88.2, 2: 88.1}, "lean": {0: 86.0, 1: 86.2, 2: 86.1}})
    table, _ = run_study(study, FULL, run_many)
    assert list(table["gain_vs_baseline"]) == [-2.0, 0.0]
    assert list(table["within_noise_of_baseline"]) == ["no", "yes"]
