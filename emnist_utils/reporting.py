"""Tables and JSON files for a report, each stamped with the data and profile its numbers came from."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from .paths import atomic_path, results_dir


def trial_table(results: Sequence) -> pd.DataFrame:
    """One row per trial: hyperparameters, our validation accuracy beside the report's, size and time."""
    rows = []
    for i, r in enumerate(results, start=1):
        c = r.config
        rows.append({"trial": i, "lr": c.lr, "batch": c.batch_size, "epochs": r.history.epochs, "c1": c.c1,
                     "c2": c.c2, "hidden": c.hidden, "dropout": c.dropout, "parameters": r.parameters,
                     "val_acc_%": round(r.val_acc, 2), "best_epoch_val_acc_%": round(max(r.history.val_acc), 2),
                     "report_val_acc_%": c.report_val_acc, "train_seconds": round(r.train_seconds, 1),
                     "trained_on": r.device or "?"})
    return pd.DataFrame(rows)


def markdown_table(df: pd.DataFrame) -> str:
    """A pipe table that keeps integers as integers (pandas' to_markdown turns mixed rows into floats)."""
    from tabulate import tabulate

    return tabulate(df.to_dict("records"), headers="keys", tablefmt="pipe", disable_numparse=True)


def _stamp(provenance: dict, profile: str) -> str:
    return f"data: {provenance['dataset']} (sha256 {provenance['checksum'][:12]}), profile: {profile}"


def write_table(df: pd.DataFrame, name: str, *, provenance: dict, profile: str, caption: str = "") -> dict[str, Path]:
    """Write results/<name>.csv (with dataset/checksum/profile columns), .md and .tex (caption names the data)."""
    directory = results_dir(profile)
    directory.mkdir(parents=True, exist_ok=True)
    stamped = df.assign(dataset=provenance["dataset"], data_sha256=provenance["checksum"], profile=profile)
    paths = {"csv": directory / f"{name}.csv", "md": directory / f"{name}.md", "tex": directory / f"{name}.tex"}
    stamped.to_csv(paths["csv"], index=False)
    note = _stamp(provenance, profile)
    paths["md"].write_text((f"{caption}\n\n" if caption else "") + markdown_table(df) + f"\n\n_{note}_\n")
    paths["tex"].write_text(df.to_latex(index=False, float_format="%.4g", caption=f"{caption} ({note})".strip(),
                                        label=f"tab:{name}"))
    return paths


def read_table(name: str, profile: str) -> pd.DataFrame | None:
    path = results_dir(profile) / f"{name}.csv"
    return pd.read_csv(path) if path.is_file() else None


def write_json(obj: dict, name: str, *, provenance: dict, profile: str) -> Path:
    path = results_dir(profile) / f"{name}.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({**obj, "provenance": provenance, "profile": profile}, indent=2))
    return path
