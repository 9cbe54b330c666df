"""emnist_utils.core.reporting: tables (csv, markdown, LaTeX) and JSON stamped with the data and the profile
their numbers came from."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from emnist_utils.core.reporting import read_stamped_table, read_table, stamp, write_json, write_table

PROVENANCE = {"dataset": "emnist-standin", "split": "standin", "checksum": "0123456789abcdef" * 4}


def _table():
    return pd.DataFrame({"trial": [1, 2], "model": ["arch2", "lean"], "val_acc": [88.7, 90.25]})


def test_stamp_names_the_data_its_checksum_and_the_profile():
    assert stamp(PROVENANCE, "quick") == "data: emnist-standin (sha256 0123456789ab), profile: quick"


def test_write_table_writes_csv_md_and_tex(tmp_path):
    directory = tmp_path / "results" / "nested"  # created as needed
    paths = write_table(
        _table(), "trials", directory, provenance=PROVENANCE, profile="smoke", caption="Table 1.2 re-run"
    )
    assert paths == {ext: directory / f"trials.{ext}" for ext in ("csv", "md", "tex")}
    assert sorted(p.name for p in directory.iterdir()) == ["trials.csv", "trials.md", "trials.tex"]

    csv = pd.read_csv(paths["csv"])
    assert list(csv.columns) == ["trial", "model", "val_acc", "dataset", "data_sha256", "profile"]
    assert set(csv["dataset"]) == {"emnist-standin"} and set(csv["profile"]) == {"smoke"}
    assert set(csv["data_sha256"]) == {PROVENANCE["checksum"]}
    assert list(csv["val_acc"]) == [88.7, 90.25]

    md = paths["md"].read_text()
    assert md.startswith("Table 1.2 re-run\n\n")
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in md.splitlines() if line.startswith("|")]
    assert rows[0] == ["trial", "model", "val_acc"] and len(rows) == 4  # header, rule, two rows
    assert rows[2:] == [["1", "arch2", "88.7"], ["2", "lean", "90.25"]]  # integers stay integers
    assert md.rstrip().endswith("_data: emnist-standin (sha256 0123456789ab), profile: smoke_")

    tex = paths["tex"].read_text()
    assert "\\caption{Table 1.2 re-run (data: emnist-standin (sha256 0123456789ab), profile: smoke)}" in tex
    assert "\\label{tab:trials}" in tex and "arch2" in tex and "lean" in tex
    assert "dataset" not in tex  # the stamp is in the caption, not in extra columns


def test_write_table_without_caption(tmp_path):
    paths = write_table(_table(), "bare", tmp_path, provenance=PROVENANCE, profile="full")
    md = paths["md"].read_text()
    assert md.startswith("|") and "profile: full" in md
    assert "profile: full" in paths["tex"].read_text()


def test_read_table(tmp_path):
    assert read_table("absent", tmp_path) is None
    assert read_table("absent", tmp_path / "no-such-folder") is None
    write_table(_table(), "trials", tmp_path, provenance=PROVENANCE, profile="smoke")
    back = read_table("trials", tmp_path)
    pd.testing.assert_frame_equal(back[["trial", "model", "val_acc"]], _table())
    assert list(back["profile"]) == ["smoke", "smoke"]


def test_read_stamped_table_only_for_the_same_data_and_profile(tmp_path):
    write_table(_table(), "trials", tmp_path, provenance=PROVENANCE, profile="full")
    back = read_stamped_table("trials", tmp_path, provenance=PROVENANCE, profile="full")
    pd.testing.assert_frame_equal(back[["trial", "model", "val_acc"]], _table())
    other_data = {**PROVENANCE, "checksum": "f" * 64}
    assert read_stamped_table("trials", tmp_path, provenance=other_data, profile="full") is None
    assert read_stamped_table("trials", tmp_path, provenance=PROVENANCE, profile="quick") is None
    assert read_stamped_table("absent", tmp_path, provenance=PROVENANCE, profile="full") is None
    (tmp_path / "empty.csv").write_text("")
    assert read_stamped_table("empty", tmp_path, provenance=PROVENANCE, profile="full") is None
    _table().to_csv(tmp_path / "unstamped.csv", index=False)  # not written by write_table
    assert read_stamped_table("unstamped", tmp_path, provenance=PROVENANCE, profile="full") is None


def test_write_json_includes_provenance_and_profile(tmp_path):
    path = write_json(
        {"accuracy": 88.1, "where": Path("/x/y"), "nested": {"a": [1, 2]}},
        "final",
        tmp_path,
        provenance=PROVENANCE,
        profile="quick",
    )
    assert path == tmp_path / "final.json"
    data = json.loads(path.read_text())
    assert data == {
        "accuracy": 88.1,
        "where": "/x/y",
        "nested": {"a": [1, 2]},
        "provenance": PROVENANCE,
        "profile": "quick",
    }
    assert path.read_text().endswith("\n")
