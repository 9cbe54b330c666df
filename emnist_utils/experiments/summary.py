"""Every model of the project as one table of points (notebook 06's summary figure): the report's trial tables,
the comparison studies and notebook 05's models, read from the store wherever they have been trained on this
data and profile; nothing is trained here."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import pandas as pd

from . import beyond
from .profiles import Profile
from .spec import RunSpec
from .store import RunResult
from .studies import COMPARISON_STUDIES
from .trials import TABLE_1_1, TABLE_1_2

Lookup = Callable[[RunSpec], RunResult | None]

STUDY_GROUPS = {
    "depth_study": "CNN depth (10 epochs)",
    "activation_study": "activations (10 epochs)",
    "optimizer_study": "optimisers (10 epochs)",
    "normalisation_study": "normalisation (10 epochs)",
    "dropout_study_arch2": "dropout (10 epochs)",
}


def _point(group: str, label: str, runs: list[RunResult]) -> dict:
    return {
        "group": group,
        "label": label,
        "parameters": runs[0].parameters,
        "seeds": len(runs),
        "val_acc": round(statistics.fmean(r.val_acc for r in runs), 2),
        "val_balanced_acc": round(statistics.fmean(r.val_balanced_acc for r in runs), 2),
    }


def summary_points(lookup: Lookup, profile: Profile) -> pd.DataFrame:
    """One row per model (mean over the seeds that are cached): group, label, parameters, validation accuracy."""
    rows = []
    for group, table in (
        ("Architecture 1 trials (report Table 1.1)", TABLE_1_1),
        ("Architecture 2 trials (report Table 1.2)", TABLE_1_2),
    ):
        for trial in table:
            run = lookup(trial.spec)
            if run is not None:
                rows.append(_point(group, f"trial {trial.number}", [run]))
    for study in COMPARISON_STUDIES:
        for variant in study.variants:
            runs = [r for r in map(lookup, variant.specs(profile)) if r is not None]
            if runs:
                rows.append(_point(STUDY_GROUPS[study.name], variant.label, runs))
    for spec in beyond.CANDIDATES:
        runs = [r for r in map(lookup, [spec.with_(seed=s) for s in profile.seeds(beyond.SEEDS)]) if r is not None]
        if runs:
            rows.append(_point("beyond the report (notebook 05)", spec.name, runs))
    columns = ["group", "label", "parameters", "seeds", "val_acc", "val_balanced_acc"]
    return pd.DataFrame(rows, columns=columns).drop_duplicates(subset=["group", "label"])
