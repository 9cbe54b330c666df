"""Studies as data: what varies, on which recipe, with which seeds; and the tables of mean and spread they give.

Notebook 06 (and notebook 05's ladder, in `beyond`) and `python -m emnist_utils studies` all read these, so a
study trained in the background or on a GPU machine fills the very cache entries the notebooks then load.
Every comparison is made on validation; test accuracy is computed only for final candidates, once.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pandas as pd

from ..core.registry import build_model, count_parameters
from .profiles import Profile
from .spec import RunSpec
from .store import RunResult
from .trials import REPORT_FINAL

SEEDS = (0, 1, 2)

RunMany = Callable[[Sequence[RunSpec]], list[RunResult]]


@dataclass(frozen=True)
class Variant:
    """One row of a study: a run, trained once per seed."""

    label: str
    spec: RunSpec  # its seed is replaced by each of `seeds`
    seeds: tuple[int, ...] = SEEDS
    changes: str = ""  # what differs from the row above or the baseline, for the table

    def specs(self, profile: Profile) -> list[RunSpec]:
        return [
            self.spec.with_(seed=s, name=f"{self.spec.name or self.label} seed {s}") for s in profile.seeds(self.seeds)
        ]


@dataclass(frozen=True)
class Study:
    name: str  # results/<name>.csv
    title: str
    variants: tuple[Variant, ...] = field(default_factory=tuple)
    baseline: int = 0  # the row gains and the noise screen are measured against

    def specs(self, profile: Profile) -> list[RunSpec]:
        return [s for v in self.variants for s in v.specs(profile)]


# ----------------------------------------------------------------------------- notebook 06: the report's promises

# One budget for every comparison: the report's final model shape and recipe, 10 epochs instead of 20 so that
# three seeds of every variant fit in a normal run.
COMPARISON_BASE = REPORT_FINAL.with_(recipe=REPORT_FINAL.recipe.with_(epochs=10), name="arch2-10ep")


def _on_arch(arch: str, label: str, **kwargs) -> Variant:
    return Variant(
        label, COMPARISON_BASE.with_(model=COMPARISON_BASE.model.with_(arch=arch), name=f"{arch}-10ep"), **kwargs
    )


BASELINE_VARIANT = Variant("Architecture 2 (2 conv blocks, ReLU, BatchNorm, Adam, standardised)", COMPARISON_BASE)

DEPTH_STUDY = Study(
    "depth_study",
    "CNN depth: 1 to 4 conv blocks, same budget",
    (
        _on_arch("arch2-depth1", "1 conv block"),
        Variant("2 conv blocks (Architecture 2)", COMPARISON_BASE),
        _on_arch("arch2-depth3", "3 conv blocks"),
        _on_arch("arch2-depth4", "4 conv blocks"),
    ),
    baseline=1,
)

ACTIVATION_STUDY = Study(
    "activation_study",
    "Activation function in Architecture 2, same budget",
    (
        Variant("ReLU (report)", COMPARISON_BASE),
        _on_arch("arch2-leakyrelu", "LeakyReLU(0.1)"),
        _on_arch("arch2-gelu", "GELU"),
        _on_arch("arch2-silu", "SiLU"),
    ),
)

OPTIMIZER_STUDY = Study(
    "optimizer_study",
    "Optimiser for Architecture 2, same budget, each at its usual lr",
    (
        Variant("Adam, lr 1e-3 (report)", COMPARISON_BASE),
        Variant(
            "AdamW, lr 1e-3, weight decay 0.05",
            COMPARISON_BASE.with_(
                recipe=COMPARISON_BASE.recipe.with_(optimizer="adamw", weight_decay=0.05), name="arch2-10ep-adamw"
            ),
        ),
        Variant(
            "SGD + Nesterov momentum 0.9, lr 0.05",
            COMPARISON_BASE.with_(recipe=COMPARISON_BASE.recipe.with_(optimizer="sgd", lr=0.05), name="arch2-10ep-sgd"),
        ),
    ),
)

NORMALISATION_STUDY = Study(
    "normalisation_study",
    "Input standardisation and BatchNorm on and off",
    (
        Variant("standardised input, BatchNorm (report)", COMPARISON_BASE),
        Variant(
            "pixels / 255 only, BatchNorm",
            COMPARISON_BASE.with_(recipe=COMPARISON_BASE.recipe.with_(input_norm="unit"), name="arch2-10ep-unit"),
        ),
        _on_arch("arch2-nobn", "standardised input, no BatchNorm"),
        Variant(
            "pixels / 255 only, no BatchNorm",
            COMPARISON_BASE.with_(
                model=COMPARISON_BASE.model.with_(arch="arch2-nobn"),
                recipe=COMPARISON_BASE.recipe.with_(input_norm="unit"),
                name="arch2-nobn-10ep-unit",
            ),
        ),
    ),
)

DROPOUTS = (0.0, 0.1, 0.3, 0.5)


def dropout_study(name: str, title: str, base: RunSpec) -> Study:
    """Dropout alone, every other setting as `base` (in the report's tables it only ever changed with the widths);
    the baseline row is `base`'s own dropout (added to DROPOUTS when it is not one of them)."""
    values = sorted({*DROPOUTS, base.model.dropout})
    variants = tuple(
        Variant(
            f"dropout {p:g}" + (" (as defined)" if p == base.model.dropout else ""),
            base.with_(model=base.model.with_(dropout=p), name=f"{base.name}-dropout{p:g}"),
        )
        for p in values
    )
    return Study(name, title, variants, baseline=values.index(base.model.dropout))


ARCH2_DROPOUT_STUDY = dropout_study(
    "dropout_study_arch2", "Dropout before the last layer of Architecture 2, same budget", COMPARISON_BASE
)

COMPARISON_STUDIES = (DEPTH_STUDY, ACTIVATION_STUDY, OPTIMIZER_STUDY, NORMALISATION_STUDY, ARCH2_DROPOUT_STUDY)


# ----------------------------------------------------------------------------- running and tabulating


def unique_specs(specs: Sequence[RunSpec]) -> list[RunSpec]:
    """`specs` without repeats (a baseline shared by several studies is trained once); names are ignored."""
    seen, out = set(), []
    for spec in specs:
        ident = spec.with_(name="")  # every other field: runs on other data, splits or limits are other runs
        if ident not in seen:
            seen.add(ident)
            out.append(spec)
    return out


def run_study(study: Study, profile: Profile, run_many: RunMany) -> tuple[pd.DataFrame, dict[str, list[RunResult]]]:
    """Train (or load) every variant for each of its seeds (as many as the profile allows); return a table of
    mean and spread, with gains and a noise screen against the study's baseline row, and the results by label."""
    per_variant = [v.specs(profile) for v in study.variants]
    flat = run_many([s for specs in per_variant for s in specs])
    results, rows, start = {}, [], 0
    for variant, specs in zip(study.variants, per_variant):
        runs = flat[start : start + len(specs)]
        start += len(specs)
        results[variant.label] = runs
        rows.append(summary_row(variant.label, runs, changes=variant.changes))
    table = pd.DataFrame(rows)
    base = study.baseline
    table["gain_vs_baseline"] = (table["val_acc_mean_%"] - table["val_acc_mean_%"].iloc[base]).round(2)
    table["within_noise_of_baseline"] = within_noise(table, base)
    return table, results


def summary_row(label: str, runs: Sequence[RunResult], changes: str = "") -> dict:
    """Mean, sample standard deviation, min and max over seeds of the validation accuracy (plain and balanced)."""
    accs = [r.val_acc for r in runs]
    row = {"variant": label}
    if changes:
        row["change"] = changes
    row.update(
        {
            "seeds": len(runs),
            "val_acc_mean_%": round(statistics.fmean(accs), 2),
            "val_acc_std": round(statistics.stdev(accs), 2) if len(accs) > 1 else float("nan"),
            "val_acc_min_%": round(min(accs), 2),
            "val_acc_max_%": round(max(accs), 2),
            "val_balanced_acc_mean_%": round(statistics.fmean(r.val_balanced_acc for r in runs), 2),
            "parameters": runs[0].parameters,
            "epochs": runs[0].history.epochs,
            "train_seconds_mean": round(statistics.fmean(r.train_seconds for r in runs), 1),
            "trained_on": ", ".join(sorted({r.device for r in runs})),
        }
    )
    return row


def within_noise(table: pd.DataFrame, baseline_row: int = 0) -> pd.Series:
    """ "yes" where a variant's mean differs from the baseline's by less than two standard errors of the
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


def describe_study(study: Study, num_classes: int) -> pd.DataFrame:
    """What each variant trains (architecture, size, hyperparameters, recipe changes from the report's, seeds):
    a checked notebook output, independent of any training and of the profile."""
    report = REPORT_FINAL.recipe
    rows = []
    for v in study.variants:
        m, r = v.spec.model, v.spec.recipe
        changes = {
            k: val
            for k, val in r.as_dict().items()
            if k not in ("lr", "batch_size", "epochs") and val != getattr(report, k)
        }
        rows.append(
            {
                "variant": v.label,
                "arch": m.arch,
                "c1/c2/hidden": f"{m.c1}/{m.c2}/{m.hidden}",
                "dropout": m.dropout,
                "lr": r.lr,
                "batch": r.batch_size,
                "epochs": r.epochs,
                "recipe changes": ", ".join(f"{k}={val}" for k, val in changes.items()) or "-",
                "parameters": count_parameters(build_model(m, num_classes)),
                "seeds (full profile)": len(v.seeds),
            }
        )
    return pd.DataFrame(rows)
