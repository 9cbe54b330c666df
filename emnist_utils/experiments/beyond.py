"""Notebook 05 as data and steps: from the report's model to a lean CNN that a CPU can train, one change at a
time; candidates for accuracy per CPU-second; the choice on validation only; the test split once.

Every run here is a `RunSpec`, so `python -m emnist_utils studies --studies beyond` and the main job fill the
cache entries the notebook loads. The weight average (EMA), the logit adjustment and the test-time shifts do not
change how the raw model trains, so the rows for them read other numbers of the same run.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from ..core.evaluation import TTA_SHIFTS, accuracy, balanced_accuracy
from ..core.registry import ModelSpec, build_model, count_parameters
from ..core.splits import class_counts
from ..core.trained_model import LogitAdjustment, TrainedModel
from .profiles import Profile
from .spec import RunSpec
from .store import RunResult
from .studies import SEEDS, dropout_study
from .trials import REPORT_FINAL

# The recipe of the lean models: AdamW with a OneCycle schedule, label smoothing, batch augmentation,
# a weight average, and square-root class-aware sampling (the stand-in's training split is imbalanced while its
# test split is balanced; on a balanced training split the sampling changes nothing).
LEAN_RECIPE = REPORT_FINAL.recipe.with_(
    lr=3e-3,
    batch_size=256,
    epochs=30,
    optimizer="adamw",
    weight_decay=5e-4,
    schedule="onecycle",
    label_smoothing=0.1,
    augment="affine+erasing",
    ema_decay=0.999,
    sampling="sqrt",
)
MODERN_REPORT_RECIPE = LEAN_RECIPE.with_(epochs=20, augment="none", sampling="none")

LEAN = ModelSpec("lean", 32, 64, 128, 0.2)
# The previous best model (two convolutions per stage, 653,663 parameters): the candidate a GPU trains easily.
COMPACT = ModelSpec("compact", 48, 96, 192, 0.3)


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

# Notebook 06's dropout study on the lean CNN, on the comparisons' budget (10 epochs, as the report's model there).
LEAN_DROPOUT_STUDY = dropout_study(
    "dropout_study_lean",
    "Dropout before the last layer of the lean CNN 32-64-128 (lean recipe, 10 epochs)",
    FINAL_SPEC.with_(recipe=LEAN_RECIPE.with_(epochs=10), name="lean-10ep"),
)

LADDER = (
    Step("report model, report recipe", REPORT_FINAL, "raw", SEEDS, "the report's Architecture 2 trial 1, 20 epochs"),
    Step(
        "+ AdamW, OneCycle to 3e-3, label smoothing 0.1, batch 256",
        _run("report-modern", REPORT_FINAL.model, MODERN_REPORT_RECIPE),
        "raw",
        (0,),
        "the training recipe",
    ),
    Step(
        "lean CNN (32-64-128), same recipe, 30 epochs",
        _run("lean-plain", LEAN, LEAN_RECIPE.with_(augment="none", sampling="none")),
        "raw",
        (0,),
        "architecture: 5 convs + global average pooling",
    ),
    Step(
        "+ batch augmentation (affine + erasing)",
        _run("lean-augment", LEAN, LEAN_RECIPE.with_(sampling="none")),
        "raw",
        (0,),
        "random affine and erasing",
    ),
    Step(
        "+ weight average (EMA, BatchNorm recomputed)",
        _run("lean-augment", LEAN, LEAN_RECIPE.with_(sampling="none")),
        "delivered",
        (0,),
        "same run, averaged weights",
    ),
    Step("+ square-root class-aware sampling", FINAL_SPEC, "delivered", SEEDS, "rare classes drawn more often"),
    Step(
        "+ logit adjustment (strength chosen on validation)",
        FINAL_SPEC,
        "adjusted",
        SEEDS,
        "same runs, training prior partly removed at prediction",
    ),
    Step("+ test-time shifts (1 pixel, 5 views)", FINAL_SPEC, "tta", SEEDS, "same runs, averaged over shifted copies"),
)

# Candidates for accuracy per CPU-second: the final recipe on other widths and architectures (one seed each),
# from the cheapest to the costliest on a CPU.
CANDIDATES = (
    _run("report-model-lean-recipe", REPORT_FINAL.model, LEAN_RECIPE.with_(epochs=20)),
    _run("lean-24", LEAN.with_(c1=24, c2=48, hidden=96), LEAN_RECIPE),
    FINAL_SPEC,
    _run("lean-48", LEAN.with_(c1=48, c2=96, hidden=192), LEAN_RECIPE),
    _run("compact-48", COMPACT, LEAN_RECIPE),
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
        out += seed_specs(pick, profile)
    return out


def seed_specs(candidate: RunSpec, profile: Profile) -> list[RunSpec]:
    """The chosen candidate (as defined in CANDIDATES, not bound to data) on each of the profile's seeds."""
    return [candidate.with_(seed=s) for s in profile.seeds(SEEDS)]


def choose(results: Sequence[RunResult]) -> int:
    """Index of the candidate with the best validation score after its logit adjustment (balanced accuracy when
    the test split is balanced); ties go to the earlier (cheaper) candidate. Never looks at the test split."""

    def score(r: RunResult) -> float:
        balanced = r.metrics.get("selection_metric") == "balanced"
        return r.metrics["val_balanced_acc_adjusted" if balanced else "val_acc_adjusted"]

    return max(range(len(results)), key=lambda i: (score(results[i]), -i))


def chooser(lookup: Callable[[RunSpec], RunResult | None]) -> Callable[[Sequence[RunSpec]], RunSpec | None]:
    """`choose` over cached results: the chosen candidate's spec, or None while any candidate is untrained."""

    def pick(candidates: Sequence[RunSpec]) -> RunSpec | None:
        results = [lookup(c) for c in candidates]
        if any(r is None for r in results):
            return None
        return candidates[choose(results)]

    return pick


def validation_scores(model: TrainedModel, splits) -> dict:
    """Plain and balanced validation accuracy of a model with what it applies at prediction time."""
    predictions = model.predict(splits.val_images)
    return {
        "val_acc": accuracy(predictions, splits.val_labels),
        "val_balanced_acc": balanced_accuracy(predictions, splits.val_labels, len(model.classes)),
    }


def step_scores(step: Step, run: RunResult, splits) -> dict:
    """The validation numbers a ladder row shows for one run."""
    if step.reads == "raw":
        return {"val_acc": run.history.val_acc[-1], "val_balanced_acc": run.history.val_balanced_acc[-1]}
    if step.reads == "adjusted":
        return {
            "val_acc": run.metrics["val_acc_adjusted"],
            "val_balanced_acc": run.metrics["val_balanced_acc_adjusted"],
        }
    if step.reads == "tta":
        return validation_scores(with_chosen_prediction(run, splits, tta=True)[0], splits)
    return {"val_acc": run.metrics["val_acc"], "val_balanced_acc": run.metrics["val_balanced_acc"]}


def describe_ladder(num_classes: int) -> pd.DataFrame:
    """What each ladder step trains or reads (a checked notebook output, the same under every profile)."""
    rows = []
    for step in LADDER:
        m, r = step.spec.model, step.spec.recipe
        rows.append(
            {
                "step": step.label,
                "run": step.spec.name,
                "reads": step.reads,
                "arch": m.arch,
                "widths": f"{m.c1}/{m.c2}/{m.hidden}",
                "epochs": r.epochs,
                "batch": r.batch_size,
                "lr": r.lr,
                "optimizer": r.optimizer,
                "augment": r.augment,
                "sampling": r.sampling,
                "ema": r.ema_decay,
                "parameters": count_parameters(build_model(m, num_classes)),
                "seeds (full)": len(step.seeds),
            }
        )
    return pd.DataFrame(rows)


def run_ladder(
    run_many: Callable[[Sequence[RunSpec]], list[RunResult]], splits, profile: Profile
) -> tuple[pd.DataFrame, dict[str, list[RunResult]]]:
    """Train (or load) every step's runs and tabulate the numbers each step reads."""
    per_step = [[step.spec.with_(seed=s) for s in profile.seeds(step.seeds)] for step in LADDER]
    flat = run_many([s for specs in per_step for s in specs])
    rows, results, start = [], {}, 0
    for step, specs in zip(LADDER, per_step):
        runs = flat[start : start + len(specs)]
        start += len(specs)
        results[step.label] = runs
        rows.append((step, [step_scores(step, r, splits) for r in runs], runs))
    return ladder_table(rows), results


def ladder_table(rows: Sequence[tuple[Step, list[dict], list[RunResult]]]) -> pd.DataFrame:
    """One row per step: mean (and spread) over its seeds of the numbers it reads."""
    out = []
    for step, scores, runs in rows:
        bal = [s["val_balanced_acc"] for s in scores]
        out.append(
            {
                "step": step.label,
                "change": step.change,
                "seeds": len(scores),
                "val_acc_mean_%": round(statistics.fmean(s["val_acc"] for s in scores), 2),
                "val_balanced_acc_mean_%": round(statistics.fmean(bal), 2),
                "val_balanced_acc_std": round(statistics.stdev(bal), 2) if len(bal) > 1 else float("nan"),
                "parameters": runs[0].parameters,
                "epochs": runs[0].history.epochs,
                "train_seconds_mean": round(statistics.fmean(r.train_seconds for r in runs), 1),
                "trained_on": ", ".join(sorted({r.device for r in runs})),
            }
        )
    table = pd.DataFrame(out)
    table["gain_vs_report_%"] = (table["val_balanced_acc_mean_%"] - table["val_balanced_acc_mean_%"].iloc[0]).round(2)
    return table


# ----------------------------------------------------------------------------- prediction settings and test


def prior_adjustment(splits, strength: float) -> LogitAdjustment:
    """The logit adjustment for the prior of the images a model trained on (`splits.train_labels`: the training
    part, or training + validation for a refit), so that a refit's adjustment follows its own training prior."""
    return LogitAdjustment(tuple(class_counts(splits.train_labels, splits.num_classes).tolist()), strength)


def with_chosen_prediction(run: RunResult, splits, tta: bool | None = None) -> tuple[TrainedModel, dict]:
    """A run's model with what it should apply at prediction time, chosen on validation: the logit adjustment
    whose strength the run's validation chose, and test-time shifts if they raise the validation score (or as
    `tta` says). Returns the model and the validation scores behind the choice."""
    model = run.trained_model
    adjustment = prior_adjustment(splits, run.metrics["adjustment_strength"])
    balanced = splits.test_is_balanced
    scores = {}
    for name, shifts in (("adjusted", ((0, 0),)), ("adjusted_tta", TTA_SHIFTS)):
        predictions = model.with_prediction(adjustment=adjustment, tta_shifts=shifts).predict(splits.val_images)
        scores[name] = (
            balanced_accuracy(predictions, splits.val_labels, len(model.classes))
            if balanced
            else accuracy(predictions, splits.val_labels)
        )
    use_tta = scores["adjusted_tta"] > scores["adjusted"] if tta is None else tta
    chosen = model.with_prediction(adjustment=adjustment, tta_shifts=TTA_SHIFTS if use_tta else ((0, 0),))
    return chosen, {**scores, "tta": use_tta, "adjustment_strength": run.metrics["adjustment_strength"]}


def candidate_table(
    results: Sequence[RunResult],
    throughput: Sequence[tuple[float, float]],
    multiply_adds: Sequence[int],
    train_images: int,
) -> pd.DataFrame:
    """One row per candidate: size, multiply-adds, measured CPU training throughput and the training time it
    implies for the run's epochs, validation scores, and what actually trained it (and how long it took)."""
    rows = []
    for r, (speed, spread), macs in zip(results, throughput, multiply_adds):
        rows.append(
            {
                "label": r.spec.name,
                "arch": r.spec.model.arch,
                "widths": f"{r.spec.model.c1}/{r.spec.model.c2}/{r.spec.model.hidden}",
                "parameters": r.parameters,
                "mult_adds_M": round(macs / 1e6, 1),
                "epochs": r.history.epochs,
                "cpu_img_per_s": round(speed),
                "cpu_img_per_s_std": round(spread),
                "cpu_minutes": round(r.history.epochs * train_images / speed / 60, 1),
                "val_acc_%": round(r.val_acc, 2),
                "val_balanced_acc_%": round(r.val_balanced_acc, 2),
                "val_balanced_acc_adjusted_%": round(r.metrics["val_balanced_acc_adjusted"], 2),
                "trained_on": r.device,
                "train_minutes_as_run": round(r.train_seconds / 60, 1),
                "as_run": f"{r.train_seconds / 60:.1f} min as run on {r.device}",
            }
        )
    return pd.DataFrame(rows)


def mean_and_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation, rounded to 0.01; the spread of a single value is NaN (unknown, not 0)."""
    spread = statistics.stdev(values) if len(values) > 1 else float("nan")
    return round(statistics.fmean(values), 2), round(spread, 2)


@dataclass(frozen=True)
class SeedScores:
    """Each seed's test probabilities and accuracies (plain and balanced), and those of their ensemble (the mean of
    the probabilities): computed once, so every table of a notebook reads the same test pass."""

    probabilities: list[torch.Tensor]
    plain: list[float]
    balanced: list[float]
    ensemble_plain: float
    ensemble_balanced: float

    @classmethod
    def of(cls, models: Sequence[TrainedModel], images: torch.Tensor, labels: torch.Tensor) -> SeedScores:
        probabilities = [m.probabilities(images) for m in models]
        num_classes = len(models[0].classes)
        ensemble = torch.stack(probabilities).mean(0).argmax(1)
        return cls(
            probabilities,
            [accuracy(p.argmax(1), labels) for p in probabilities],
            [balanced_accuracy(p.argmax(1), labels, num_classes) for p in probabilities],
            accuracy(ensemble, labels),
            balanced_accuracy(ensemble, labels, num_classes),
        )


def per_seed(values: Sequence[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def seeds_on_test(
    label: str, models: Sequence[TrainedModel], runs: Sequence[RunResult], images: torch.Tensor, labels: torch.Tensor
) -> tuple[dict, list[torch.Tensor]]:
    """Test accuracy of each seed's model (with what it applies at prediction) and of their ensemble (mean of
    the probabilities), computed once. Returns a summary row and each model's test probabilities."""
    scores = SeedScores.of(models, images, labels)
    mean, spread = mean_and_spread(scores.plain)
    return (
        {
            "model": label,
            "seeds": len(models),
            "parameters_per_model": runs[0].parameters,
            "test_acc_mean_%": mean,
            "test_acc_std": spread,
            "test_acc_per_seed_%": per_seed(scores.plain),
            "test_balanced_acc_mean_%": mean_and_spread(scores.balanced)[0],
            "ensemble_test_acc_%": round(scores.ensemble_plain, 2),
            "train_minutes_per_model": round(statistics.fmean(r.train_seconds for r in runs) / 60, 1),
            "trained_on": ", ".join(sorted({r.device for r in runs})),
        },
        scores.probabilities,
    )


def confused_pairs_change(before: dict, after: dict, top: int = 12) -> pd.DataFrame:
    """The most-confused test pairs before a change (reports from evaluation.report), with the share of the true
    class each takes before and after it."""
    index = {c: i for i, c in enumerate(after["classes"])}
    confusion = after["confusion"]
    rows = []
    for _, r in before["most_confused"].head(top).iterrows():
        t, p = index[r["true"]], index[r["predicted"]]
        rows.append(
            {
                "true": r["true"],
                "read_as": r["predicted"],
                "share_before_%": r["share_of_true_class_%"],
                "share_after_%": round(100.0 * confusion[t, p] / max(confusion[t].sum(), 1), 2),
            }
        )
    return pd.DataFrame(rows)


def summary(stamp: str, ladder: pd.DataFrame, candidates: pd.DataFrame, chosen: RunResult, test: pd.DataFrame) -> str:
    """A few lines on notebook 05's run."""
    first, last = ladder.iloc[0], ladder.iloc[-1]
    ours, ref = test.iloc[-1], test.iloc[0]
    return "\n".join(
        [
            stamp,
            f"ladder (balanced validation): {first['val_balanced_acc_mean_%']:.2f}% for the report's model -> "
            f"{last['val_balanced_acc_mean_%']:.2f}% for the last step ({last['gain_vs_report_%']:+.2f})",
            f"chosen on validation: {chosen.spec.name}, {chosen.parameters:,} parameters, about "
            f"{float(candidates.loc[candidates['label'] == chosen.spec.name, 'cpu_minutes'].iloc[0]):.0f} CPU minutes "
            "to train here",
            f"test, mean of {ours['seeds']} seeds: {ours['test_acc_mean_%']:.2f}% (std {ours['test_acc_std']}), "
            f"ensemble {ours['ensemble_test_acc_%']:.2f}%; the report's model on the same data: "
            f"{ref['test_acc_mean_%']:.2f}% ({ref['seeds']} seeds)",
        ]
    )
