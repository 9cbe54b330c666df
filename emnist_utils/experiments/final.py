"""Notebook 09's protocol for the delivered models: every setting chosen on validation with train-only runs, then
a refit on every labelled image with exactly those settings; and the train-only ensemble distilled into the CPU
model, its temperature and mix chosen on validation, then refit the same way from the refit ensemble.

Nothing here reads the test split to choose: each row of the protocol is tested once, after every choice.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from ..core.evaluation import TTA_SHIFTS
from ..core.splits import Splits
from ..core.trained_model import TrainedModel
from .beyond import CANDIDATES, SeedScores, mean_and_spread, per_seed, prior_adjustment, with_chosen_prediction
from .profiles import Profile
from .recipes import NAMED_RUNS
from .search_study import Committed05, CommittedVerdict, replaces_notebook_05
from .spec import RunSpec
from .store import RunResult
from .studies import SEEDS

NOTEBOOK = "09_final_model"
STUDENT = NAMED_RUNS["cpu"]  # the CPU model: the lean CNN in 15 epochs (under 20 minutes on the 2-core CPU)
MAX_PARAMETERS = 1_000_000  # the delivered single model's budget (issue 22)
# (temperature, share of the loss from the teacher) tried on validation; Hinton et al.'s usual range
DISTILLATION_GRID = ((2.0, 0.5), (4.0, 0.5), (2.0, 0.9), (4.0, 0.9))


def grid(profile: Profile) -> tuple[tuple[float, float], ...]:
    """The distillation settings a profile tries: all under the full profile, two (still a choice) otherwise."""
    return DISTILLATION_GRID if profile.max_seeds is None else DISTILLATION_GRID[:2]


def notebook_05_choice(
    cached: Callable[[Sequence[RunSpec]], RunSpec | None],
    trained: Callable[[Sequence[RunSpec]], RunSpec],
    committed: Committed05 | None,
) -> tuple[RunSpec, str]:
    """Notebook 05's choice among its candidates (on validation) and where it was read: its candidates in this cache,
    else its committed tables when they were made on the same data under the same profile (its candidates take
    hours on a CPU, and only the choice is used here), else its candidates trained here. `cached` and `trained` are
    `beyond.chooser` over a cache lookup and over training."""
    spec = cached(CANDIDATES)
    if spec is not None:
        return spec, "its candidates in this cache"
    if committed is not None:
        return next(c for c in CANDIDATES if c.name == committed.name), "its committed tables (same data and profile)"
    return trained(CANDIDATES), "its candidates, trained here"


def base_choice(
    chosen05: RunSpec,
    runs05: Sequence[RunResult],
    winner: RunSpec | None,
    winner_runs: Sequence[RunResult],
    max_parameters: int = MAX_PARAMETERS,
    verdict: CommittedVerdict | None = None,
) -> tuple[RunSpec, list[RunResult], str]:
    """The model the protocol refits: the search's winner where it replaced notebook 05's choice (a higher
    validation mean) and is within the parameter budget, else notebook 05's choice. Without the search's study in
    this cache, notebook 08's committed `verdict` (same data and profile) decides: refitting a winner needs its
    study, so a verdict for the winner is an error that says so. Returns the (unbound) spec, its train-only seeds,
    and why."""
    if winner is not None and replaces_notebook_05(winner_runs, runs05):
        if winner_runs[0].parameters <= max_parameters:
            return (
                winner,
                list(winner_runs),
                f"the search's winner {winner.name}: a higher validation mean than notebook 05's",
            )
        reason = f"has {winner_runs[0].parameters:,} parameters, over the budget of {max_parameters:,}"
    elif winner is not None:
        reason = "did not beat it on validation"
    elif verdict is not None and verdict.replaces_notebook_05:
        raise RuntimeError(
            f"notebook 08's committed table says its winner {verdict.winner} beat notebook 05's choice on validation, "
            "but its study is not here: run notebook 08 first, or pass STORAGE where its study is"
        )
    elif verdict is not None:
        reason = (
            f"{verdict.winner} did not beat it on validation in notebook 08's committed table "
            f"({verdict.winner_val:.2f}% against {verdict.chosen05_val:.2f}%, same data and profile)"
        )
    else:
        reason = "is not there (no finished search here)"
    return chosen05, list(runs05), f"notebook 05's choice {chosen05.name}: the search's winner {reason}"


def refit(spec: RunSpec) -> RunSpec:
    """The same run on every labelled image (training and validation parts)."""
    return spec.with_(train_on="train+val", name=f"{spec.name}-refit")


def distilled(student: RunSpec, teachers: Sequence[RunResult], temperature: float, weight: float) -> RunSpec:
    """`student` (unbound) taught by `teachers` (trained runs) at this temperature and mix. The student trains on
    the images its teachers trained on: a refit student needs refit teachers."""
    train_on = {t.spec.train_on for t in teachers}
    if len(train_on) != 1:
        raise ValueError(f"teachers trained on different images: {sorted(train_on)}")
    (where,) = train_on
    return student.with_(
        name=f"{student.name}-distilled-T{temperature:g}-w{weight:g}" + ("-refit" if where == "train+val" else ""),
        train_on=where,
        teacher=tuple(t.key for t in teachers),
        recipe=student.recipe.with_(distill_temperature=temperature, distill_weight=weight),
    )


def refit_prediction(
    run: RunResult, twin: RunResult, splits: Splits, choice: dict | None = None
) -> tuple[TrainedModel, dict]:
    """A refit's model with what its train-only twin (same spec and seed, validation held out) chose on validation:
    the logit adjustment's strength (applied to the prior of the images the refit trained on) and whether test-time
    shifts help (`choice`: the twin's, from `with_chosen_prediction`, computed here when not given). Nothing is
    chosen on the refit itself: its validation images were trained on."""
    if not run.spec.refit or twin.spec.refit:
        raise ValueError(f"{run.spec.label} must be a refit and {twin.spec.label} its train-only twin")
    if choice is None:
        _, choice = with_chosen_prediction(twin, splits)
    adjustment = prior_adjustment(splits.with_validation_trained(), choice["adjustment_strength"])
    shifts = TTA_SHIFTS if choice["tta"] else ((0, 0),)
    model = run.trained_model.with_prediction(adjustment=adjustment, tta_shifts=shifts)
    return model, {**choice, "chosen_by": f"its train-only twin {twin.spec.label} ({twin.key})"}


def delivered_validation(run: RunResult, splits: Splits) -> float:
    """The validation score of a train-only run as it is delivered (adjustment, and shifts where they help)."""
    _, choice = with_chosen_prediction(run, splits)
    return choice["adjusted_tta"] if choice["tta"] else choice["adjusted"]


def distillation_table(
    results: Sequence[RunResult], settings: Sequence[tuple[float, float]], splits: Splits
) -> pd.DataFrame:
    """One row per distillation setting tried: its delivered validation score (train-only teacher and student)."""
    rows = []
    for r, (temperature, weight) in zip(results, settings):
        rows.append(
            {
                "temperature": temperature,
                "teacher_share": weight,
                "val_balanced_delivered_%": round(delivered_validation(r, splits), 2),
                "student_train_minutes": round(r.train_seconds / 60, 1),
                "trained_on": r.device,
            }
        )
    return pd.DataFrame(rows)


def choose_setting(table: pd.DataFrame) -> tuple[float, float]:
    """The distillation setting with the best validation score (ties: the earlier, i.e. milder, one)."""
    best = max(range(len(table)), key=lambda i: (table["val_balanced_delivered_%"].iloc[i], -i))
    return float(table["temperature"].iloc[best]), float(table["teacher_share"].iloc[best])


@dataclass
class Row:
    """One line of the protocol: models (with what they apply at prediction) and the runs behind them."""

    label: str
    models: list[TrainedModel]
    runs: list[RunResult]
    trained_on: str  # "training part" or "training + validation"
    teacher_seconds: float = 0.0  # what training the teacher cost (a distilled row), reported beside the student's


def evaluate_rows(rows: Sequence[Row], images: torch.Tensor, labels: torch.Tensor) -> pd.DataFrame:
    """Every row on the test split, once: each seed's balanced and plain accuracy, their mean and spread, the
    ensemble of the row's seeds, parameters and what training cost (the student's own, the teacher's beside it)."""
    out = []
    for row in rows:
        scores = SeedScores.of(row.models, images, labels)
        mean, spread = mean_and_spread(scores.balanced)
        out.append(
            {
                "model": row.label,
                "trained_on": row.trained_on,
                "seeds": len(row.models),
                "parameters": row.runs[0].parameters,
                "test_balanced_mean_%": mean,
                "test_balanced_std": spread,
                "test_balanced_per_seed_%": per_seed(scores.balanced),
                "test_acc_mean_%": mean_and_spread(scores.plain)[0],
                "ensemble_test_balanced_%": round(scores.ensemble_balanced, 2),
                "train_minutes_per_seed": round(statistics.fmean(r.train_seconds / 60 for r in row.runs), 1),
                "teacher_train_minutes": round(row.teacher_seconds / 60, 1),
                "trained_with": ", ".join(sorted({r.device for r in row.runs})),
            }
        )
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------- what it costs (the main job's plan)


def estimated_seconds(
    profile: Profile, base: RunSpec, splits: Splits, estimate: Callable[[RunSpec, int], float]
) -> dict[str, float]:
    """Seconds of one process's training that notebook 09 adds when nothing is cached: the refits of the base
    model, the distillation settings tried, and the students (no teacher, distilled, distilled refit) on each seed.
    `estimate(spec, training images)` gives one run's seconds at its measured throughput."""
    seeds = len(profile.seeds(SEEDS))
    n_train, n_all = len(splits.train_labels), len(splits.train_labels) + len(splits.val_labels)
    student = STUDENT.bind(splits, profile)
    per_student = estimate(student, n_train)
    return {
        "refits": seeds * estimate(base.bind(splits, profile), n_all),
        "distillation settings": len(grid(profile)) * per_student,
        # per seed: no teacher, distilled, distilled refit; the first distilled one is a grid point, and the first
        # student without a teacher is notebook 04's CPU model
        "students": max(0.0, seeds * (2 * per_student + estimate(student, n_all)) - 2 * per_student),
    }
