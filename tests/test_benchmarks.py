"""The benchmarks cannot rot: each script runs with --quick (tiny data, numbers meaningless) as a subprocess from the
project root, exactly as benchmarks/README.md runs it, and must exit 0, print its result table and write its files.

Results go to a temporary folder, never to benchmarks/results. The four scripts start together (one torch thread
each), so the module takes about as long as the slowest of them rather than the sum.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import PROJECT_ROOT, STANDIN_DIR

# script: (lines its output must contain, files it must write)
EXPECTED = {
    "benchmark_throughput": (
        [
            "report (torchvision + DataLoader)",
            "project (fit)",
            "Ratios (project / report)",
            "training (whole epochs)",
            "evaluation",
        ],
        [".txt", ".json"],
    ),
    "benchmark_levers": (
        ["fp32 contiguous", "fp32 channels_last", "bf16 autocast, channels_last", "vs fp32 contiguous"],
        [".txt", ".json"],
    ),
    "benchmark_time_to_accuracy": (["report pipeline, report recipe (REPORT_FINAL)", "Target A = "], [".txt", ".json"]),
    "benchmark_models": (
        [
            "report-final",
            "lean-final",
            "lean-cpu",
            "report-model-lean-recipe",
            "vs report model",
            "implied training time",
        ],
        [".txt", ".json", ".csv"],
    ),
}
TIMEOUT_S = 600


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """Run every benchmark with --quick at once; {script: (exit code, stdout + stderr, output folder)}."""
    if not STANDIN_DIR.is_dir():
        pytest.skip(f"stand-in data not found at {STANDIN_DIR}")
    env = {**os.environ, "EMNIST_DATA": str(STANDIN_DIR), "EMNIST_SPLIT": "standin"}
    running = {}
    for script in EXPECTED:
        out = tmp_path_factory.mktemp(script)
        log = open(out / "log.txt", "w+")
        command = [sys.executable, f"benchmarks/{script}.py", "--quick", "--threads", "1", "--out", str(out)]
        running[script] = (
            subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT),
            log,
            out,
        )
    results = {}
    for script, (process, log, out) in running.items():
        try:
            process.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.seek(0)
        results[script] = (process.returncode, log.read(), out)
        log.close()
    return results


@pytest.mark.parametrize("script", list(EXPECTED))
def test_quick_run(quick_runs, script):
    returncode, output, out = quick_runs[script]
    assert returncode == 0, f"{script} --quick failed:\n{output[-4000:]}"
    lines, suffixes = EXPECTED[script]
    for line in lines:
        assert line in output, f"{script}: {line!r} not in its output:\n{output[-4000:]}"
    written = sorted(out.glob(f"{script}_*_quick.json"))  # <script>_<device type>_quick
    assert len(written) == 1, f"{script} wrote {[p.name for p in out.iterdir()]}"
    stem = written[0].stem
    for suffix in suffixes:
        path = out / f"{stem}{suffix}"
        assert path.is_file() and path.stat().st_size > 0, f"{script} did not write {path.name}"
        assert f"wrote {path}" in output
    payload = json.loads((out / f"{stem}.json").read_text())
    assert payload["settings"]["quick"] is True and payload["machine"]["torch"]
