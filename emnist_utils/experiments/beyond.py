"""Notebook 05 as data and steps: from the report's model to a lean CNN that a CPU can train, one change at a
time; candidates for accuracy per CPU-second; the choice on validation only; the test split once.

Every run here is a `RunSpec`, so `python -m emnist_utils studies --studies beyond` and the main job fill the
cache entries the notebook loads. The weight average (EMA), the logit adjustment and the test-time shifts do not
change how the raw model trains, so the rows for them read other numbers of the same run.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, Sequence

import pandas as pd
import torch

from ..core.evaluation import TTA_SHIFTS, accuracy, balanced_accuracy, logit_adjustment
from ..core.registry import ModelSpec
from ..core.trained_model import TrainedModel
from .profiles import Profile
from .spec import RunSpec
from .store import RunResult
from .studies import SEEDS
from .trials import REPORT_FINAL

# The recipe of the lean models: AdamW with a OneCycle schedule, label smoothing, batch augmentation,
# a weight average, and square-root class-aware sampling (the stand-in's training split is imbalanced while its
# test split is balanced; on a balanced training split the sampling changes nothing).
LEAN_RECIPE = REPORT_FINAL.recipe.with_(lr=3e-3, batch_size=256, epochs=30, optimizer="adamw", weight_decay=5e-4,
                                       schedule="onecycle", label_smoothing=0.1, augment="affine+erasing",
                                       ema_decay=0.999, sampling="sqrt")
MODERN_REPORT_RECIPE = LEAN_RECIPE.with_(epochs=20, augment="none", sampling="none")

LEAN = ModelSpec("lean", 32, 64, 128, 0.2)


def _run(name: str, model: ModelSpec, recipe) -> RunSpec:
    return RunSpec(model, recipe, name=name)


@dataclass(frozen=True)
class Step:
    """One row of the ladder: a run (trained once per seed) and which of its numbers the row shows."""

    label: str
    spec: RunSpec
    reads: str = "delivered"  # delivered | raw (last epoch, before the weight average) | adjusted | tta
    seeds: tuple[int, ...] = (0,)
    change: str = ""


FINAL_SPEC = _run("lean-final", LEAN, LEAN_RECIPE)

LADDER = (
    Step("report model, report recipe", REPORT_FINAL, "raw", SEEDS, "the report's Architecture 2 trial 1, 20 epochs"),
    Step("+ AdamW, OneCycle to 3e-3, label smoothing 0.1, batch 256", _run(
        "report-modern", REPORT_FINAL.model, MODERN_REPORT_RECIPE), "raw", (0,), "the training recipe"),
    Step("lean CNN (32-64-128), same recipe, 30 epochs", _run(
        "lean-plain", LEAN, LEAN_RECIPE.with_(augment="none", sampling="none")), "raw", (0,),
        "architecture: 5 convs + global average pooling"),
    Step("+ batch augmentation (affine + erasing)", _run(
        "lean-augment", LEAN, LEAN_RECIPE.with_(sampling="none")), "raw", (0,), "random affine and erasing"),
    Step("+ weight average (EMA, BatchNorm recomputed)", _run(
        "lean-augment", LEAN, LEAN_RECIPE.with_(sampling="none")), "delivered", (0,), "same run, averaged weights"),
    Step("+ square-root class-aware sampling", FINAL_SPEC, "delivered", SEEDS, "rare classes drawn more often"),
    Step("+ logit adjustment (strength chosen on validation)", FINAL_SPEC, "adjusted", SEEDS,
         "same runs, training prior partly removed at prediction"),
    Step("+ test-time shifts (1 pixel, 5 views)", FINAL_SPEC, "tta", SEEDS, "same runs, averaged over shifted copies"),
)

# Candidates for accuracy per CPU-second: the final recipe on other widths and architectures (one seed each).
CANDIDATES = (
    _run("report-model-lean-recipe", REPORT_FINAL.model, LEAN_RECIPE.with_(epochs=20)),
    _run("lean-24", LEAN.with_(c1=24, c2=48, hidden=96), LEAN_RECIPE),
    FINAL_SPEC,
    _run("lean-48", LEAN.with_(c1=48, c2=96, hidden=192), LEAN_RECIPE),
)


def ladder_specs(profile: Profile) -> list[RunSpec]:
    return [step.spec.with_(seed=s) for step in LADDER for s in profile.seeds(step.seeds)]


def candidate_specs(profile: Profile) -> list[RunSpec]:
    return list(CANDIDATES)


def specs(profile: Profile, chosen: Callable[[Sequence[RunSpec]], RunSpec | None] | None = None) -> list[RunSpec]:
    """Every run notebook 05 needs. The seeds of the chosen candidate are only known once the candidates are
    trained: `chosen` gives it (or None while unknown)."""
    out = ladder_specs(profile) + candidate_specs(profile)
    pick = chosen(candidate_specs(profile)) if chosen is not None else None
    if pick is not None:
        out += [pick.with_(seed=s) for s in profile.seeds(SEEDS)]
    return out


def choose(results: Sequence[RunResult]) -> RunResult:
    """The candidate with the best validation score after its logit adjustment (balanced accuracy when the test
    split is balanced); ties go to the cheaper, earlier candidate. Never looks at the test split."""
    def score(r: RunResult) -> float:
        balanced = r.metrics.get("selection_metric") == "balanced"
        return r.metrics["val_balanced_acc_adjusted" if balanced else "val_acc_adjusted"]
    best = max(range(len(results)), key=lambda i: (score(results[i]), -i))
    return results[best]


def step_scores(step: Step, run: RunResult, tta: Callable[[RunResult], dict] | None = None) -> dict:
    """The validation numbers a ladder row shows for one run."""
    if step.reads == "raw":
        return {"val_acc": run.history.val_acc[-1], "val_balanced_acc": run.history.val_balanced_acc[-1]}
    if step.reads == "adjusted":
        return {"val_acc": run.metrics["val_acc_adjusted"], "val_balanced_acc": run.metrics["val_balanced_acc_adjusted"]}
    if step.reads == "tta":
        return tta(run)
    return {"val_acc": run.metrics["val_acc"], "val_balanced_acc": run.metrics["val_balanced_acc"]}


def tta_scores(model: TrainedModel, run: RunResult, images: torch.Tensor, labels: torch.Tensor,
               prior: torch.Tensor) -> dict:
    """Validation accuracy of a run's model with its chosen adjustment and test-time shifts."""
    adjusted = model.with_prediction(adjustment=logit_adjustment(prior, run.metrics["adjustment_strength"]).tolist(),
                                     tta_shifts=TTA_SHIFTS)
    predictions = adjusted.predict(images)
    return {"val_acc": accuracy(predictions, labels),
            "val_balanced_acc": balanced_accuracy(predictions, labels, len(model.classes))}


def ladder_table(rows: Sequence[tuple[Step, list[dict], list[RunResult]]]) -> pd.DataFrame:
    """One row per step: mean (and spread) over its seeds of the numbers it reads."""
    out = []
    for step, scores, runs in rows:
        bal = [s["val_balanced_acc"] for s in scores]
        out.append({"step": step.label, "change": step.change, "seeds": len(scores),
                    "val_acc_mean_%": round(statistics.fmean(s["val_acc"] for s in scores), 2),
                    "val_balanced_acc_mean_%": round(statistics.fmean(bal), 2),
                    "val_balanced_acc_std": round(statistics.stdev(bal), 2) if len(bal) > 1 else float("nan"),
                    "parameters": runs[0].parameters, "epochs": runs[0].history.epochs,
                    "train_seconds_mean": round(statistics.fmean(r.train_seconds for r in runs), 1),
                    "trained_on": ", ".join(sorted({r.device for r in runs}))})
    table = pd.DataFrame(out)
    table["gain_vs_report_%"] = (table["val_balanced_acc_mean_%"] - table["val_balanced_acc_mean_%"].iloc[0]).round(2)
    return table
