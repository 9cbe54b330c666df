"""Tables and JSON for a report, each stamped with the data and the profile its numbers came from."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from .paths import write_text_atomic


def markdown_table(df: pd.DataFrame) -> str:
    """A pipe table that keeps integers as integers (pandas' to_markdown turns mixed rows into floats)."""
    return tabulate(df.to_dict("records"), headers="keys", tablefmt="pipe", disable_numparse=True)


def stamp(provenance: dict, profile: str) -> str:
    """The line every table and figure caption carries: which data, which checksum, which profile."""
    return f"data: {provenance['dataset']} (sha256 {provenance['checksum'][:12]}), profile: {profile}"


def write_table(
    df: pd.DataFrame, name: str, directory: Path, *, provenance: dict, profile: str, caption: str = ""
) -> dict[str, Path]:
    """Write <directory>/<name>.csv (with dataset, checksum and profile columns), .md and .tex (captions name
    the data)."""
    directory = Path(directory)
    stamped = df.assign(dataset=provenance["dataset"], data_sha256=provenance["checksum"], profile=profile)
    paths = {"csv": directory / f"{name}.csv", "md": directory / f"{name}.md", "tex": directory / f"{name}.tex"}
    note = stamp(provenance, profile)
    write_text_atomic(paths["csv"], stamped.to_csv(index=False))
    write_text_atomic(paths["md"], (f"{caption}\n\n" if caption else "") + markdown_table(df) + f"\n\n_{note}_\n")
    write_text_atomic(
        paths["tex"],
        df.to_latex(index=False, float_format="%.4g", caption=f"{caption} ({note})".strip(), label=f"tab:{name}"),
    )
    return paths


def read_table(name: str, directory: Path) -> pd.DataFrame | None:
    path = Path(directory) / f"{name}.csv"
    return pd.read_csv(path) if path.is_file() else None


def read_stamped_table(name: str, directory: Path, *, provenance: dict, profile: str) -> pd.DataFrame | None:
    """A table that write_table wrote on these data under this profile, else None (absent, empty, or stamped with
    other data or another profile): numbers from another run must not pass for this one's."""
    try:
        table = read_table(name, directory)
    except pd.errors.EmptyDataError:
        return None
    if table is None:
        return None
    same = {"data_sha256": provenance["checksum"], "profile": profile}
    if not all(c in table.columns and (table[c] == v).all() for c, v in same.items()):
        return None
    return table


def write_json(obj: dict, name: str, directory: Path, *, provenance: dict, profile: str) -> Path:
    path = Path(directory) / f"{name}.json"
    write_text_atomic(
        path, json.dumps({**obj, "provenance": provenance, "profile": profile}, indent=2, default=str) + "\n"
    )
    return path
