"""The report's trial tables (emnist_utils.experiments.trials): Tables 1.1 and 1.2 and the final model hold the
report's values, the best trial is chosen on the validation score, and the tables and summary built from results."""

from __future__ import annotations

import pytest
from helpers import fake_result

from emnist_utils.core.registry import ModelSpec, build_model, count_parameters
from emnist_utils.experiments.trials import (
    REPORT_FINAL,
    REPORT_FINAL_PARAMETERS,
    REPORT_FINAL_TEST_ACC,
    TABLE_1_1,
    TABLE_1_2,
    TABLES,
    choose_best,
    describe,
    summary,
    trial_table,
)

# The report's tables, copied by hand: lr, batch, c1, c2, hidden, dropout, validation accuracy %.
REPORT_1_1 = [
    (1e-3, 10, 32, 64, 128, 0.3, 53),
    (1e-3, 30, 40, 80, 192, 0.5, 66),
    (1e-3, 100, 48, 88, 256, 0.4, 71),
    (1e-2, 256, 56, 96, 320, 0.2, 62),
    (1e-4, 190, 64, 104, 384, 0.1, 42),
    (1e-3, 100, 72, 112, 448, 0.5, 74),
    (1e-3, 230, 80, 120, 512, 0.5, 78),
]
REPORT_1_2 = [
    (1e-3, 290, 8, 32, 600, 0.5, 88.7),
    (1e-3, 300, 16, 40, 500, 0.5, 86),
    (1e-3, 100, 24, 48, 256, 0.4, 84),
    (1e-2, 256, 32, 56, 320, 0.2, 87),
    (1e-3, 190, 40, 64, 384, 0.1, 78),
    (1e-3, 100, 48, 72, 448, 0.5, 82),
    (1e-3, 230, 56, 80, 512, 0.5, 78),
]


@pytest.mark.parametrize(
    "table, arch, epochs, rows", [(TABLE_1_1, "arch1", 5, REPORT_1_1), (TABLE_1_2, "arch2", 20, REPORT_1_2)]
)
def test_tables_hold_the_reports_values(table, arch, epochs, rows):
    assert len(table) == 7
    for number, (trial, (lr, batch, c1, c2, hidden, dropout, acc)) in enumerate(zip(table, rows), start=1):
        assert trial.number == number
        assert trial.spec.model == ModelSpec(arch, c1, c2, hidden, dropout)
        r = trial.spec.recipe
        assert (r.lr, r.batch_size, r.epochs) == (lr, batch, epochs)
        # the report trained with Adam, a constant learning rate, no augmentation, standardised input
        assert (r.optimizer, r.schedule, r.augment, r.input_norm, r.weight_decay, r.label_smoothing) == (
            "adam",
            "constant",
            "none",
            "standardise",
            0.0,
            0.0,
        )
        assert (r.sampling, r.loss_weighting, r.ema_decay, r.precision) == ("none", "none", 0.0, "fp32")
        assert trial.report_val_acc == acc
        assert trial.spec.seed == 0 and trial.spec.data == ""  # unbound: notebooks bind them to their data
        assert trial.spec.name == f"{arch}-trial{number}"


def test_table_1_2_trial_1():
    trial = TABLE_1_2[0]
    assert (trial.table, trial.number) == ("1.2", 1)
    assert trial.spec.recipe.lr == 1e-3 and trial.spec.recipe.batch_size == 290 and trial.spec.recipe.epochs == 20
    m = trial.spec.model
    assert (m.arch, m.c1, m.c2, m.hidden, m.dropout) == ("arch2", 8, 32, 600, 0.5)
    assert trial.report_val_acc == 88.7


def test_tables_index():
    assert TABLES == {"1.1": TABLE_1_1, "1.2": TABLE_1_2}
    assert {t.table for t in TABLE_1_1} == {"1.1"} and {t.table for t in TABLE_1_2} == {"1.2"}


def test_report_final_is_table_1_2_trial_1():
    assert REPORT_FINAL.name == "report-final"
    assert REPORT_FINAL.with_(name=TABLE_1_2[0].spec.name) == TABLE_1_2[0].spec
    assert REPORT_FINAL.recipe.batch_size == 290 and REPORT_FINAL.recipe.epochs == 20
    assert REPORT_FINAL_TEST_ACC == 88.43


def test_report_final_parameter_count():
    # conv1 3x3x1x8+8, BN 2x8, conv2 5x5x8x32+32, BN 2x32, fc1 (32x7x7)x600+600, fc2 600x47+47
    by_hand = 80 + 16 + 6432 + 64 + 941_400 + 28_247
    assert REPORT_FINAL_PARAMETERS == by_hand == 976_239
    assert count_parameters(build_model(REPORT_FINAL.model, 47)) == by_hand


# ----------------------------------------------------------------------------- choosing


def _results(accs, balanced, metric="balanced"):
    return [fake_result(a, b, selection_metric=metric) for a, b in zip(accs, balanced)]


def test_choose_best_uses_balanced_accuracy_when_the_metrics_say_so():
    trials = TABLE_1_2[:3]
    results = _results([80.0, 90.0, 85.0], [70.0, 60.0, 75.0], metric="balanced")
    trial, result, reason = choose_best(trials, results)
    assert trial is trials[2] and result is results[2]
    assert reason == "Table 1.2 trial 3 has the best balanced validation accuracy: 75.00%"


def test_choose_best_uses_plain_accuracy_otherwise():
    trials = TABLE_1_1[:3]
    results = _results([80.0, 90.0, 85.0], [70.0, 60.0, 75.0], metric="plain")
    trial, result, reason = choose_best(trials, results)
    assert trial is trials[1] and result is results[1]
    assert reason == "Table 1.1 trial 2 has the best validation accuracy: 90.00%"


def test_choose_best_ties_go_to_the_earlier_trial():
    trials = TABLE_1_2[:4]
    results = _results([50.0, 70.0, 70.0, 60.0], [50.0, 70.0, 70.0, 60.0])
    assert choose_best(trials, results)[0] is trials[1]
    results = _results([70.0] * 4, [70.0] * 4)
    assert choose_best(trials, results)[0] is trials[0]


# ----------------------------------------------------------------------------- tables


def test_trial_table_rows():
    trials = TABLE_1_2[:2]
    results = [
        fake_result(
            81.234, 80.0, spec=trials[0].spec, parameters=976_239, train_seconds=61.26, device="cpu (2 threads)"
        ),
        fake_result(70.0, 69.5, spec=trials[1].spec, parameters=12, train_seconds=5.0, device="cuda (H200)", epochs=3),
    ]
    table = trial_table(trials, results)
    assert list(table.columns) == [
        "trial", "lr", "batch", "epochs", "c1", "c2", "hidden", "dropout", "parameters", "val_acc_%",
        "val_balanced_acc_%", "best_epoch_val_acc_%", "report_val_acc_%", "train_seconds", "trained_on",
    ]  # fmt: skip
    first = table.iloc[0].to_dict()
    assert first["trial"] == 1 and first["lr"] == 1e-3 and first["batch"] == 290 and first["hidden"] == 600
    assert first["val_acc_%"] == 81.23 and first["val_balanced_acc_%"] == 80.0 and first["report_val_acc_%"] == 88.7
    assert first["train_seconds"] == 61.3 and first["trained_on"] == "cpu (2 threads)"
    assert first["parameters"] == 976_239 and first["epochs"] == 1
    assert table.iloc[1]["epochs"] == 3 and table.iloc[1]["c1"] == 16


def test_describe_lists_the_trials_before_training():
    table = describe(TABLE_1_2, 47)
    assert list(table["trial"]) == list(range(1, 8))
    assert list(table["report val acc %"]) == [row[-1] for row in REPORT_1_2]
    assert table.loc[0, "parameters"] == 976_239
    assert list(table["batch"]) == [row[1] for row in REPORT_1_2]
    assert set(table["epochs"]) == {20}


def test_summary_text():
    trials = TABLE_1_1
    accs = [50.0, 60.0, 70.0, 40.0, 35.5, 72.0, 71.0]
    results = [
        fake_result(a, a - 1, spec=t.spec, train_seconds=60.0, device="cpu (1 threads)") for a, t in zip(accs, trials)
    ]
    text = summary(trials, results, "data: x, profile: test")
    lines = text.splitlines()
    assert lines[0] == "data: x, profile: test"
    assert lines[1].startswith("Table 1.1 trial 6 has the best balanced validation accuracy: 71.00%")
    assert "the report's best was trial 7, 78% on EMNIST balanced" in lines[1]
    assert lines[2] == "validation accuracy of the seven trials: 35.50% to 72.00% (the report: 42% to 78%)"
    assert lines[3] == "lowest: trial 5 (lr 0.0001, batch 190): 35.50%"
    assert lines[4] == "training time: 7.0 min in all, on cpu (1 threads)"
