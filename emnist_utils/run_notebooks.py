"""Execute the numbered notebooks in place (the main job), recording each one's wall time.

    python -m emnist_utils.run_notebooks [--profile full] [notebooks/01_data_exploration.ipynb ...]

Parameters reach the notebooks through EMNIST_PROFILE / EMNIST_DATA / EMNIST_SPLIT. A notebook that
fails is not written over its committed version; its partial outputs go to outputs/failed/.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from .paths import PROJECT_ROOT, atomic_path, output_root, results_dir
from .profiles import get_profile


def execute(path: Path, timeout: int | None = None) -> float:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    started = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError:
        failed = output_root("failed") / path.name
        failed.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, failed)
        print(f"{path.name} FAILED; partial outputs in {failed}", file=sys.stderr)
        raise
    seconds = time.perf_counter() - started
    with atomic_path(path) as tmp:
        nbformat.write(notebook, tmp)
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--profile", default=None)
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    os.environ["EMNIST_PROFILE"] = profile.name
    paths = args.notebooks or sorted((PROJECT_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    log = results_dir(profile.name) / "notebook_runtimes.csv"
    log.parent.mkdir(parents=True, exist_ok=True)
    new = not log.exists()
    total = 0.0
    for path in paths:
        print(f"executing {path.name} ({profile.name} profile) ...", flush=True)
        seconds = execute(path.resolve())
        total += seconds
        print(f"  {path.name}: {seconds / 60:.1f} min", flush=True)
        with open(log, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["finished_utc", "notebook", "profile", "data", "split", "seconds", "machine"])
                new = False
            writer.writerow([datetime.now(timezone.utc).isoformat(timespec="seconds"), path.name, profile.name,
                             os.environ.get("EMNIST_DATA", "data"), os.environ.get("EMNIST_SPLIT", "balanced"),
                             round(seconds, 1), f"{platform.machine()} {os.cpu_count()} cpus"])
    print(f"all notebooks: {total / 60:.1f} min (times appended to {log})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
