"""The report's trial tables (Tables 1.1 and 1.2) and final model as run specs, and the choice among them.

Notebooks 02-04 and `python -m emnist_utils trials` read these, so a table trained from the command line
fills the very cache entries the notebooks load.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from ..core.registry import ModelSpec, build_model, count_parameters
from ..core.training import Recipe
from .spec import RunSpec
from .store import RunResult


@dataclass(frozen=True)
class Trial:
    """One row of a report table: the run it describes and the validation accuracy the report published."""

    table: str
    number: int
    spec: RunSpec
    report_val_acc: float


def _table(table: str, arch: str, epochs: int, rows) -> tuple[Trial, ...]:
    return tuple(
        Trial(
            table,
            i,
            RunSpec(
                ModelSpec(arch, c1, c2, hidden, dropout),
                Recipe(lr=lr, batch_size=batch, epochs=epochs),
                name=f"{arch}-trial{i}",
            ),
            acc,
        )
        for i, (lr, batch, c1, c2, hidden, dropout, acc) in enumerate(rows, start=1)
    )


# Report Table 1.1: Architecture 1, 5 epochs, Adam. Columns: lr, batch, c1, c2, hidden, dropout, val acc %.
TABLE_1_1 = _table(
    "1.1",
    "arch1",
    5,
    [
        (1e-3, 10, 32, 64, 128, 0.3, 53),
        (1e-3, 30, 40, 80, 192, 0.5, 66),
        (1e-3, 100, 48, 88, 256, 0.4, 71),
        (1e-2, 256, 56, 96, 320, 0.2, 62),
        (1e-4, 190, 64, 104, 384, 0.1, 42),
        (1e-3, 100, 72, 112, 448, 0.5, 74),
        (1e-3, 230, 80, 120, 512, 0.5, 78),
    ],
)

# Report Table 1.2: Architecture 2, 20 epochs, Adam.
TABLE_1_2 = _table(
    "1.2",
    "arch2",
    20,
    [
        (1e-3, 290, 8, 32, 600, 0.5, 88.7),
        (1e-3, 300, 16, 40, 500, 0.5, 86),
        (1e-3, 100, 24, 48, 256, 0.4, 84),
        (1e-2, 256, 32, 56, 320, 0.2, 87),
        (1e-3, 190, 40, 64, 384, 0.1, 78),
        (1e-3, 100, 48, 72, 448, 0.5, 82),
        (1e-3, 230, 56, 80, 512, 0.5, 78),
    ],
)

TABLES = {"1.1": TABLE_1_1, "1.2": TABLE_1_2}

# The report's final model: Architecture 2 trial 1, batch 290, 20 epochs (its Table 1.3 swaps batch and
# epochs by mistake), test accuracy 88.43% on EMNIST balanced.
REPORT_FINAL = TABLE_1_2[0].spec.with_(name="report-final")
REPORT_FINAL_TEST_ACC = 88.43
REPORT_FINAL_PARAMETERS = 976_239


def choose_best(trials: Sequence[Trial], results: Sequence[RunResult]) -> tuple[Trial, RunResult, str]:
    """The trial with the best validation score (balanced accuracy when the test split is balanced), never the
    test split; ties go to the earlier trial. Returns it, its result and a sentence saying why."""
    scores = [r.selection_score() for r in results]
    best = max(range(len(results)), key=lambda i: (scores[i], -i))
    metric = (
        "balanced validation accuracy"
        if results[best].metrics.get("selection_metric") == "balanced"
        else "validation accuracy"
    )
    return (
        trials[best],
        results[best],
        (f"Table {trials[best].table} trial {trials[best].number} has the best {metric}: {scores[best]:.2f}%"),
    )


def trial_table(trials: Sequence[Trial], results: Sequence[RunResult]) -> pd.DataFrame:
    """One row per trial: hyperparameters, our validation accuracy beside the report's, size, time, machine."""
    rows = []
    for trial, r in zip(trials, results):
        m, rec = r.spec.model, r.spec.recipe
        rows.append(
            {
                "trial": trial.number,
                "lr": rec.lr,
                "batch": rec.batch_size,
                "epochs": r.history.epochs,
                "c1": m.c1,
                "c2": m.c2,
                "hidden": m.hidden,
                "dropout": m.dropout,
                "parameters": r.parameters,
                "val_acc_%": round(r.val_acc, 2),
                "val_balanced_acc_%": round(r.val_balanced_acc, 2),
                "best_epoch_val_acc_%": round(max(r.history.val_acc), 2),
                "report_val_acc_%": trial.report_val_acc,
                "train_seconds": round(r.train_seconds, 1),
                "trained_on": r.device,
            }
        )
    return pd.DataFrame(rows)


def describe(trials: Sequence[Trial], num_classes: int) -> pd.DataFrame:
    """The trials' settings and the report's validation accuracy, before any training (a checked notebook
    output: the same under every profile)."""
    return pd.DataFrame(
        [
            {
                "trial": t.number,
                "lr": t.spec.recipe.lr,
                "batch": t.spec.recipe.batch_size,
                "epochs": t.spec.recipe.epochs,
                "c1": t.spec.model.c1,
                "c2": t.spec.model.c2,
                "hidden": t.spec.model.hidden,
                "dropout": t.spec.model.dropout,
                "parameters": count_parameters(build_model(t.spec.model, num_classes)),
                "report val acc %": t.report_val_acc,
            }
            for t in trials
        ]
    )


def summary(trials: Sequence[Trial], results: Sequence[RunResult], stamp: str) -> str:
    """A few lines on a table's run: the best trial, the spread, where ours and the report's disagree."""
    best, best_run, reason = choose_best(trials, results)
    accs = [r.val_acc for r in results]
    worst = min(range(len(results)), key=lambda i: accs[i])
    report_best = max(trials, key=lambda t: t.report_val_acc)
    return "\n".join(
        [
            f"{stamp}",
            f"{reason} (plain {best_run.val_acc:.2f}%; the report's best was trial {report_best.number}, "
            f"{report_best.report_val_acc}% on EMNIST balanced)",
            f"validation accuracy of the seven trials: {min(accs):.2f}% to {max(accs):.2f}% "
            f"(the report: {min(t.report_val_acc for t in trials)}% to {max(t.report_val_acc for t in trials)}%)",
            f"lowest: trial {trials[worst].number} (lr {trials[worst].spec.recipe.lr}, batch "
            f"{trials[worst].spec.recipe.batch_size}): {accs[worst]:.2f}%",
            f"training time: {sum(r.train_seconds for r in results) / 60:.1f} min in all, on "
            f"{', '.join(sorted({r.device for r in results}))}",
        ]
    )
