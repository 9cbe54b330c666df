"""Search spaces, compute accounting and the tables of notebook 08 (emnist_utils.experiments.search and
search_study), on hand-made numbers: what the notebook's comparisons at equal compute rest on."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from emnist_utils.core.reporting import write_table
from emnist_utils.experiments import search, search_study
from emnist_utils.experiments.beyond import CANDIDATES
from emnist_utils.experiments.profiles import PROFILES
from emnist_utils.experiments.store import RunResult
from emnist_utils.experiments.trials import TABLE_1_2


def test_hand_trials_are_points_of_the_report_space_and_the_same_runs_as_table_1_2():
    params = search.hand_params(search.REPORT_SPACE)
    assert len(params) == 7
    for p, trial in zip(params, TABLE_1_2):
        spec = search.REPORT_SPACE.spec(p, 20)
        assert spec.model == trial.spec.model and spec.recipe == trial.spec.recipe


@pytest.mark.parametrize(
    "params, problem",
    [
        ({"model.c1": 7}, "outside search space"),  # off the step grid
        ({"recipe.lr": 0.5}, "outside search space"),
        ({"model.depth": 3}, "has no parameter"),
    ],
)
def test_values_outside_the_space_are_refused_naming_them(params, problem):
    with pytest.raises(search.SearchError, match=problem) as info:
        search.REPORT_SPACE.spec(params, 1)
    assert next(iter(params)) in str(info.value)


def test_assignments_are_parsed_with_each_distributions_type():
    parsed = search.parse_assignments("recipe.lr=0.001, model.c1=16,recipe.sampling=sqrt", search.BEYOND_SPACE)
    assert parsed == {"recipe.lr": 0.001, "model.c1": 16, "recipe.sampling": "sqrt"}
    for bad in ("recipe.lr=abc", "recipe.sampling=often", "model.c1", "model.c1=17"):
        with pytest.raises(search.SearchError):
            search.parse_assignments(bad, search.BEYOND_SPACE)


def test_curve_is_the_best_so_far_against_cumulative_compute():
    c = search.curve("tpe", 0, [(2.0, 40.0), (1.0, None), (3.0, 38.0), (4.0, 45.0)])
    assert c.compute == [2.0, 3.0, 6.0, 10.0] and c.best == [40.0, 40.0, 40.0, 45.0]
    assert math.isnan(c.best_at(1.9)) and c.best_at(6.0) == 40.0 and c.best_at(100) == 45.0
    assert c.first_reaching(42.0) == 10.0 and c.first_reaching(46.0) == math.inf


def test_arm_table_compares_at_the_hand_trials_compute():
    hand = search.curve("hand", 0, [(5.0, 41.0), (5.0, 43.0)])
    arms = [
        search.curve("random", 0, [(4.0, 42.0), (4.0, 44.0), (4.0, 46.0)]),  # 44 at 10 s, matched 43 at 8 s
        search.curve("random", 1, [(6.0, 40.0), (6.0, 41.0)]),  # 40 at 10 s, never matched
    ]
    table = search_study.arm_table(arms, hand, 10.0).set_index("arm")
    assert table.loc["hand (Table 1.2)", "best_val_at_budget"] == 43.0
    assert table.loc["random", "best_val_at_budget"] == 42.0  # mean of 44 and 40
    assert table.loc["random", "spread"] == pytest.approx(2.83, abs=0.01)
    assert table.loc["random", "compute_to_match_hand_s"] == 8.0 and table.loc["random", "matched_in_seeds"] == "1/2"


def test_smallest_within_the_margin_of_the_best():
    table = pd.DataFrame(
        {
            "trial": [0, 1, 2, 3],
            "val_balanced_acc": [89.0, 89.75, 90.0, 88.0],
            "cpu_train_s": [100.0, 200.0, 400.0, 10.0],
        }
    )
    assert search_study.smallest_near_best(table)["trial"] == 1  # 89.75 is within 0.3 of 90.0; 89.0 is not
    assert search_study.smallest_near_best(table, within=1.0)["trial"] == 0


def test_redacted_urls_hide_the_password():
    assert search.redact("postgresql://me:secret@127.0.0.1:5432/db") == "postgresql://me:***@127.0.0.1:5432/db"
    assert search.redact("sqlite:///x.db") == "sqlite:///x.db"


def test_trial_compute_counts_the_epochs_trained(small_splits):
    spec = search.REPORT_SPACE.spec({}, 4)
    one = search.trial_compute(spec, 1, 1000.0, small_splits)
    assert search.trial_compute(spec, 3, 1000.0, small_splits) == pytest.approx(3 * one)
    assert one == pytest.approx(len(small_splits.train_labels) / 1000 + len(small_splits.val_labels) / 3000)


def _runs(scores, name="run", parameters=1000):
    """Runs that carry only what the winner's comparison reads: the delivered validation score, name, size."""
    out = []
    for score in scores:
        run = RunResult.__new__(RunResult)
        run.metrics = {"selection_metric": "balanced", "val_balanced_acc_adjusted": score, "val_acc_adjusted": 0.0}
        run.spec = SimpleNamespace(name=name)
        run.parameters = parameters
        out.append(run)
    return out


@pytest.mark.parametrize(
    "winner, chosen05, committed_val, replaces",
    [
        ([90.0, 90.2, 90.4], [89.9, 90.1, 90.3], None, True),  # higher mean
        ([90.0, 90.2, 90.4], [90.0, 90.2, 90.4], None, False),  # a tie keeps notebook 05's choice
        ([91.0, 89.0, 89.0], [89.8, 89.8, 89.8], None, False),  # one lucky seed does not make a higher mean
        ([90.0], [], None, False),  # notebook 05's choice neither in this cache nor in its committed table
        ([90.0, 90.2], [], 90.0, True),  # only the committed seed-0 score: compared with it
        ([88.5, 88.6], [], 89.98, False),
        ([90.0, 90.2], [90.3], 80.0, False),  # runs in this cache outrank the committed number
    ],
)
def test_winner_replaces_notebook_05_only_on_a_higher_validation_mean(winner, chosen05, committed_val, replaces):
    assert search_study.replaces_notebook_05(_runs(winner), _runs(chosen05), committed_val) is replaces


SHA = "ab" * 32


def _write_committed_tables(folder, sha=SHA, profile="full", chosen="lean-48", test_acc=89.95, balanced=89.95):
    common = {"dataset": "emnist-standin", "data_sha256": sha, "profile": profile}
    pd.DataFrame(
        [
            {"label": "lean-24", "parameters": 160919, "val_balanced_acc_adjusted_%": 89.29, **common},
            {"label": "lean-48", "parameters": 632831, "val_balanced_acc_adjusted_%": 89.98, **common},
        ]
    ).to_csv(folder / "beyond_candidates.csv", index=False)
    pd.DataFrame(
        [
            {"model": "report model, report recipe", "seeds": 3, "parameters_per_model": 976239,
             "test_acc_mean_%": 85.8, "test_acc_std": 0.23, "test_balanced_acc_mean_%": 85.8, **common},
            {"model": chosen, "seeds": 3, "parameters_per_model": 632831, "test_acc_mean_%": test_acc,
             "test_acc_std": 0.16, "test_balanced_acc_mean_%": balanced, **common},
        ]
    ).to_csv(folder / "beyond_test.csv", index=False)  # fmt: skip


def test_committed_choice_of_notebook_05_is_read_only_for_the_same_data_and_profile(tmp_path):
    _write_committed_tables(tmp_path)
    got = search_study.committed_choice_05(tmp_path, {"checksum": SHA}, "full")
    assert got == search_study.Committed05("lean-48", 632831, 89.98, 3, 89.95, 0.16)
    assert search_study.committed_choice_05(tmp_path, {"checksum": "cd" * 32}, "full") is None  # other data
    assert search_study.committed_choice_05(tmp_path, {"checksum": SHA}, "quick") is None  # other profile
    assert search_study.committed_choice_05(tmp_path / "absent", {"checksum": SHA}, "full") is None


def test_committed_test_spread_is_dropped_when_it_is_not_the_balanced_accuracys(tmp_path):
    _write_committed_tables(tmp_path, test_acc=88.0, balanced=87.5)  # an imbalanced test split
    assert search_study.committed_choice_05(tmp_path, {"checksum": SHA}, "full").test_spread is None
    _write_committed_tables(tmp_path, chosen="not-a-candidate")
    assert search_study.committed_choice_05(tmp_path, {"checksum": SHA}, "full") is None


def test_committed_tables_in_the_repository_name_a_candidate(tmp_path):
    """The reader follows the format notebook 05 writes: the repository's own tables (whatever data they name)."""
    results = Path(__file__).resolve().parents[2] / "results"
    if not (results / "beyond_test.csv").exists():
        pytest.skip("no committed results/beyond_test.csv in this checkout")
    stamp = pd.read_csv(results / "beyond_test.csv").iloc[0]
    got = search_study.committed_choice_05(results, {"checksum": stamp["data_sha256"]}, stamp["profile"])
    assert got is not None and got.name in {c.name for c in CANDIDATES}
    assert 0 < got.val_seed0 <= 100 and 0 < got.test_mean <= 100 and got.test_seeds >= 1


def test_winner_table_puts_the_committed_choice_beside_the_winner():
    committed = search_study.Committed05("lean-48", 632831, 89.98, 3, 89.95, 0.16)
    table = search_study.winner_table(_runs([88.5, 88.6, 88.7], "winner", 652679), [89.0, 89.2, 89.4], [], committed)
    winner, chosen = table.to_dict("records")
    assert winner["val_seeds"] == 3 and winner["val_balanced_mean"] == 88.6 and winner["val_spread"] == 0.1
    assert winner["test_balanced_mean"] == 89.2 and winner["test_spread"] == 0.2
    assert chosen["model"] == "notebook 05's choice (lean-48)" and chosen["val_seeds"] == 1
    assert chosen["val_balanced_mean"] == 89.98 and chosen["test_balanced_mean"] == 89.95
    assert chosen["numbers_from"] == "results/beyond_candidates.csv, beyond_test.csv"
    # its runs in this cache give the validation; the committed table still gives its test numbers
    cached = search_study.winner_table(_runs([88.5], "winner"), [89.0], _runs([90.0, 90.2], "lean-48"), committed)
    assert cached.loc[1, "val_balanced_mean"] == 90.1 and cached.loc[1, "test_balanced_mean"] == 89.95
    assert cached.loc[1, "numbers_from"] == "this cache + results/beyond_test.csv"
    assert len(search_study.winner_table(_runs([88.5], "winner"), [89.0], [])) == 1  # nothing to compare with


@pytest.mark.parametrize("winner_scores, replaces", [([88.5, 88.6, 88.7], False), ([90.0, 90.1, 90.2], True)])
def test_committed_verdict_is_the_winner_tables_comparison_on_the_same_data_and_profile(
    tmp_path, winner_scores, replaces
):
    committed = search_study.Committed05("lean-48", 632831, 89.98, 3, 89.95, 0.16)
    table = search_study.winner_table(_runs(winner_scores, "winner", 652679), [89.0, 89.2, 89.4], [], committed)
    provenance = {"dataset": "emnist-standin", "checksum": SHA}
    write_table(table, "search_winner", tmp_path, provenance=provenance, profile="full")
    got = search_study.committed_verdict(tmp_path, provenance, "full")
    mean = round(sum(winner_scores) / 3, 2)
    assert got == search_study.CommittedVerdict("winner", mean, "notebook 05's choice (lean-48)", 89.98)
    assert got.replaces_notebook_05 is replaces
    assert search_study.committed_verdict(tmp_path, {"checksum": "cd" * 32}, "full") is None  # other data
    assert search_study.committed_verdict(tmp_path, provenance, "smoke") is None  # other profile
    alone = search_study.winner_table(_runs(winner_scores, "winner"), [89.0], [])  # nothing it was compared with
    write_table(alone, "search_winner", tmp_path, provenance=provenance, profile="full")
    assert search_study.committed_verdict(tmp_path, provenance, "full") is None


def test_committed_verdict_reads_the_repositorys_own_winner_table():
    """The reader follows the format notebook 08 writes: the repository's own table (whatever data it names)."""
    results = Path(__file__).resolve().parents[2] / "results"
    if not (results / "search_winner.csv").exists():
        pytest.skip("no committed results/search_winner.csv in this checkout")
    stamp = pd.read_csv(results / "search_winner.csv").iloc[0]
    got = search_study.committed_verdict(results, {"checksum": stamp["data_sha256"]}, stamp["profile"])
    assert got is not None and got.winner.startswith("search-winner-trial")
    assert got.chosen05.startswith("notebook 05's choice") and 0 < got.chosen05_val <= 100


@pytest.mark.parametrize("name", sorted(search.FIDELITY))
def test_each_profiles_fidelity_is_what_its_trials_train(name):
    """A trial is bound to its profile, which may cut epochs again: each fidelity's epochs must survive that, so that
    the notebook's description of the fidelity is what its trials really trained."""
    profile = PROFILES[name]
    for space, epochs in search.FIDELITY[name].epochs.items():
        assert profile.epochs(epochs) == epochs, (name, space)
