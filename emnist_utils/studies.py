"""The studies beyond the report's tables, defined once as data: what varies, on which recipe, which seeds.

Notebooks 05 and 06 and `python -m emnist_utils.run_studies` all read these lists, so a study trained in
the background (or on a GPU machine) fills the very cache entries the notebooks then load.

Every comparison is made on validation accuracy; test accuracy is computed only for the final candidates
(notebook 05), once.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Sequence

import pandas as pd

from .models import FINAL_CONFIG, TrialConfig
from .training import REPORT_RECIPE, Recipe

SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class Variant:
    """One row of a study: a config and recipe, trained once per seed."""

    label: str
    config: TrialConfig
    recipe: Recipe = REPORT_RECIPE
    seeds: tuple[int, ...] = SEEDS
    keep_model: bool = False  # cache the weights too (needed for test evaluation and ensembles)
    changes: str = ""  # what differs from the row above / the baseline, for the table


@dataclass(frozen=True)
class Study:
    name: str  # results/<name>.csv
    title: str
    variants: tuple[Variant, ...] = field(default_factory=tuple)


# ----------------------------------------------------------------------------- notebook 06: the report's promises

# Same budget for every comparison: the report's final model shape and recipe, 10 epochs instead of 20 so that
# three seeds of every variant fit in a normal run.
COMPARISON_BASE = FINAL_CONFIG.with_(name="arch2-10ep", epochs=10)


def _on_arch(arch: str, label: str, **kwargs) -> Variant:
    return Variant(label, COMPARISON_BASE.with_(arch=arch, name=f"{arch}-10ep"), **kwargs)


BASELINE_VARIANT = _on_arch("arch2", "Architecture 2 (2 conv blocks, ReLU, BatchNorm, Adam, standardised)")

DEPTH_STUDY = Study("depth_study", "CNN depth: 1 to 4 conv blocks, same budget", (
    _on_arch("arch2-depth1", "1 conv block"),
    Variant("2 conv blocks (Architecture 2)", BASELINE_VARIANT.config),
    _on_arch("arch2-depth3", "3 conv blocks"),
    _on_arch("arch2-depth4", "4 conv blocks"),
))

ACTIVATION_STUDY = Study("activation_study", "Activation function in Architecture 2, same budget", (
    Variant("ReLU (report)", BASELINE_VARIANT.config),
    _on_arch("arch2-leakyrelu", "LeakyReLU(0.1)"),
    _on_arch("arch2-gelu", "GELU"),
    _on_arch("arch2-silu", "SiLU"),
))

OPTIMIZER_STUDY = Study("optimizer_study", "Optimiser for Architecture 2, same budget, each at its usual lr", (
    Variant("Adam, lr 1e-3 (report)", BASELINE_VARIANT.config),
    Variant("AdamW, lr 1e-3, weight decay 0.05", BASELINE_VARIANT.config,
            Recipe(optimizer="adamw", weight_decay=0.05)),
    Variant("SGD + Nesterov momentum 0.9, lr 0.05", BASELINE_VARIANT.config.with_(lr=0.05), Recipe(optimizer="sgd")),
))

NORMALISATION_STUDY = Study("normalisation_study", "Input standardisation and BatchNorm on and off", (
    Variant("standardised input, BatchNorm (report)", BASELINE_VARIANT.config),
    Variant("pixels / 255 only, BatchNorm", BASELINE_VARIANT.config, Recipe(input_norm="unit")),
    _on_arch("arch2-nobn", "standardised input, no BatchNorm"),
    _on_arch("arch2-nobn", "pixels / 255 only, no BatchNorm", recipe=Recipe(input_norm="unit")),
))

COMPARISON_STUDIES = (DEPTH_STUDY, ACTIVATION_STUDY, OPTIMIZER_STUDY, NORMALISATION_STUDY)

# ----------------------------------------------------------------------------- notebook 05: beyond the report

# OneCycle + label smoothing: the `fast` recipe's schedule, which beat the report's constant lr in notebook 04.
MODERN_RECIPE = Recipe(schedule="onecycle", label_smoothing=0.1)
COMPACT_CONFIG = TrialConfig(arch="compact", lr=3e-3, batch_size=256, epochs=30, c1=48, c2=96, hidden=192,
                             dropout=0.3, name="compact")
COMPACT_SMALL_CONFIG = COMPACT_CONFIG.with_(c1=32, c2=64, hidden=128, name="compact-small")

BEYOND_STUDY = Study("beyond_ablation", "From the report's model to a compact CNN with augmentation", (
    Variant("report model, report recipe (20 epochs)", FINAL_CONFIG, keep_model=True, changes="baseline"),
    Variant("report model, OneCycle lr 3e-3 + label smoothing 0.1, batch 256", FINAL_CONFIG.with_(
        lr=3e-3, batch_size=256, name="final-modern"), MODERN_RECIPE, seeds=(0,), changes="schedule and loss"),
    Variant("compact CNN, same modern recipe, 30 epochs", COMPACT_CONFIG, MODERN_RECIPE, seeds=(0,),
            keep_model=True, changes="architecture: 6 convs + global pooling"),
    Variant("compact CNN + random affine", COMPACT_CONFIG, Recipe(schedule="onecycle", label_smoothing=0.1,
                                                                   augment="affine"),
            keep_model=True, changes="batch augmentation: rotation, scale, shear, shift"),
    Variant("compact CNN + random affine + erasing", COMPACT_CONFIG, Recipe(
        schedule="onecycle", label_smoothing=0.1, augment="affine+erasing"), keep_model=True,
        changes="plus random erasing"),
    Variant("smaller compact CNN (32-64-128) + affine + erasing", COMPACT_SMALL_CONFIG, Recipe(
        schedule="onecycle", label_smoothing=0.1, augment="affine+erasing"), seeds=(0,), keep_model=True,
        changes="less than half the parameters, about a third of the compute"),
))

STUDIES = {s.name: s for s in (*COMPARISON_STUDIES, BEYOND_STUDY)}


# ----------------------------------------------------------------------------- running and tabulating


def jobs(studies: Sequence[Study]) -> list[tuple[Variant, int]]:
    """Every (variant, seed) of the studies, without repeats (a shared baseline is trained once)."""
    seen, out = set(), []
    for study in studies:
        for v in study.variants:
            for seed in v.seeds:
                ident = (repr(v.config.training_dict()), repr(v.recipe), seed)
                if ident not in seen:
                    seen.add(ident)
                    out.append((v, seed))
    return out


def run_study(ctx, study: Study, *, seeds: Sequence[int] | None = None) -> tuple[pd.DataFrame, dict]:
    """Train (or load) every variant for each of its seeds; return a table of mean and spread and the results.

    `seeds` overrides the variants' own (the smoke profile uses one seed). Results are keyed by label.
    """
    results, rows = {}, []
    for v in study.variants:
        runs = [ctx.run(v.config, recipe=v.recipe, seed=s, keep_model=v.keep_model) for s in (seeds or v.seeds)]
        results[v.label] = runs
        rows.append(summary_row(v.label, runs, changes=v.changes))
    return pd.DataFrame(rows), results


def summary_row(label: str, runs: Sequence, changes: str = "") -> dict:
    """Mean, sample standard deviation, min and max of the final validation accuracy over seeds."""
    accs = [r.val_acc for r in runs]
    row = {"variant": label}
    if changes:
        row["change"] = changes
    row.update({"seeds": len(runs), "val_acc_mean_%": round(statistics.fmean(accs), 2),
                "val_acc_std": round(statistics.stdev(accs), 2) if len(accs) > 1 else float("nan"),
                "val_acc_min_%": round(min(accs), 2), "val_acc_max_%": round(max(accs), 2),
                "parameters": runs[0].parameters, "epochs": runs[0].history.epochs,
                "train_seconds_mean": round(statistics.fmean(r.train_seconds for r in runs), 1),
                "trained_on": ", ".join(sorted({r.device or "?" for r in runs}))})
    return row


def within_noise(table: pd.DataFrame, baseline_row: int = 0) -> pd.Series:
    """"yes" where a variant's mean differs from the baseline's by less than two standard errors of the
    difference (a rough screen over seeds, said as such in the notebooks), "no" where it differs by more, and
    "one seed" where either side has a single seed and no spread to judge by."""
    base = table.iloc[baseline_row]
    out = []
    for _, row in table.iterrows():
        if row["seeds"] < 2 or base["seeds"] < 2:
            out.append("one seed")
            continue
        se = ((row["val_acc_std"] ** 2) / row["seeds"] + (base["val_acc_std"] ** 2) / base["seeds"]) ** 0.5
        out.append("yes" if abs(row["val_acc_mean_%"] - base["val_acc_mean_%"]) < 2 * se else "no")
    return pd.Series(out, index=table.index, name="within_noise")


def describe_study(study: Study) -> pd.DataFrame:
    """What each variant trains (architecture, size, hyperparameters, recipe changes, seeds): a checked
    notebook output, independent of any training."""
    from .models import build_model, count_parameters

    rows = []
    for v in study.variants:
        c = v.config
        recipe = {k: val for k, val in v.recipe.as_dict().items() if val != getattr(REPORT_RECIPE, k)}
        rows.append({"variant": v.label, "arch": c.arch, "c1/c2/hidden": f"{c.c1}/{c.c2}/{c.hidden}",
                     "dropout": c.dropout, "lr": c.lr, "batch": c.batch_size, "epochs": c.epochs,
                     "recipe changes": ", ".join(f"{k}={val}" for k, val in recipe.items()) or "-",
                     "parameters": count_parameters(build_model(c)), "seeds (full profile)": len(v.seeds)})
    return pd.DataFrame(rows)
