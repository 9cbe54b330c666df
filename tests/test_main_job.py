"""The main job (emnist_utils.main_job): parameters injected papermill-style, other profiles execute copies of the
notebooks (never the committed ones) and full executes in place, re-running on a filled cache trains nothing and
records no run times, and an interruption (Ctrl-C, SIGTERM) while training or while executing a notebook ends in
one line saying how to resume, exit code 130, no traceback and no process left behind."""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil
import pytest
import torch
from helpers import BALANCED_CLASSES, PROJECT_ROOT, STANDIN_DIR, build_dataset

from emnist_utils import main_job
from emnist_utils.core import paths as paths_module
from emnist_utils.experiments.profiles import PROFILES

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
NOTEBOOK_01 = NOTEBOOK_DIR / "01_data_exploration.ipynb"
NOTEBOOK_02 = NOTEBOOK_DIR / "02_architecture1_trials.ipynb"
CPU = torch.device("cpu")
TABLE_1_1_RUNS = 7  # notebook 02 trains the seven trials of the report's Table 1.1


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A small 47-class split (every class equally often) with its SHA256SUMS: notebook 02 trains on it in
    seconds."""
    root = tmp_path_factory.mktemp("job-data")
    return build_dataset(root, "synth47", 470, 94, classes=BALANCED_CLASSES, balanced_labels=True)


def needs_standin():
    if not STANDIN_DIR.is_dir():
        pytest.skip(f"stand-in data not found at {STANDIN_DIR}")


# ----------------------------------------------------------------------------- inject_parameters


def _parameters_index(notebook) -> int:
    found = [i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(found) == 1
    return found[0]


def test_inject_parameters_adds_a_tagged_cell_right_after_the_parameters_cell():
    original = nbformat.read(NOTEBOOK_01, as_version=4)
    notebook = nbformat.read(NOTEBOOK_01, as_version=4)
    index = _parameters_index(original)
    main_job.inject_parameters(notebook, {"PROFILE": "smoke", "SEED": 3, "DATA_DIR": "/some where/it's"})

    assert len(notebook.cells) == len(original.cells) + 1
    injected = notebook.cells[index + 1]
    assert injected.cell_type == "code" and injected.metadata["tags"] == ["injected-parameters"]
    assert notebook.cells[: index + 1] == original.cells[: index + 1]
    assert notebook.cells[index + 2 :] == original.cells[index + 1 :]
    namespace: dict = {}
    exec(original.cells[index].source, namespace)
    exec(injected.source, namespace)
    assert (namespace["PROFILE"], namespace["SEED"], namespace["DATA_DIR"]) == ("smoke", 3, "/some where/it's")
    assert namespace["SPLIT"] is None  # not injected: the parameters cell's default


def test_inject_parameters_refuses_a_notebook_without_a_parameters_cell():
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("PROFILE = None")])
    with pytest.raises(ValueError, match="no cell tagged 'parameters'"):
        main_job.inject_parameters(notebook, {"PROFILE": "smoke"})
    assert len(notebook.cells) == 1


def test_inject_nothing_leaves_the_notebook_as_it_is():
    notebook = nbformat.read(NOTEBOOK_01, as_version=4)
    before = nbformat.writes(notebook)
    main_job.inject_parameters(notebook, {})
    assert nbformat.writes(notebook) == before


# ----------------------------------------------------------------------------- where executed notebooks go


def test_full_profile_with_emnist_output_executes_copies_there(tmp_path, monkeypatch):
    """EMNIST_OUTPUT redirects everything a run writes, the executed notebooks included, even for full."""
    monkeypatch.setenv("EMNIST_OUTPUT", str(tmp_path / "elsewhere"))
    assert main_job.notebook_target(PROFILES["full"]) == (tmp_path / "elsewhere" / "notebooks").resolve()
    monkeypatch.delenv("EMNIST_OUTPUT")
    assert main_job.notebook_target(PROFILES["full"]) == NOTEBOOK_DIR
    assert main_job.notebook_target(PROFILES["smoke"]) == PROJECT_ROOT / "outputs" / "smoke" / "notebooks"


@pytest.mark.parametrize(
    "profile, expected",
    [("full", "notebooks"), ("smoke", "outputs/smoke/notebooks"), ("quick", "outputs/quick/notebooks")],
)
def test_full_executes_in_place_and_other_profiles_copies(tmp_path, monkeypatch, synth, profile, expected):
    """Where run_main_job sends each executed notebook, with EMNIST_OUTPUT unset (the project root of the
    outputs is a temporary folder; execution itself is recorded, not done)."""
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.setattr(paths_module, "PROJECT_ROOT", root)
    monkeypatch.delenv("EMNIST_OUTPUT")
    executed = []

    def record(source, target, parameters=None, timeout=None):
        executed.append((Path(source), Path(target), os.environ.get("EMNIST_PROFILE")))
        return 0.5

    monkeypatch.setattr(main_job, "execute_notebook", record)
    notebook_bytes = NOTEBOOK_01.read_bytes()
    rc = main_job.run_main_job(PROFILES[profile], str(synth.root), "synth47", CPU, 1, notebooks=["01"])
    assert rc == 0
    target_dir = NOTEBOOK_DIR if profile == "full" else root / expected
    assert executed == [(NOTEBOOK_01, target_dir / NOTEBOOK_01.name, profile)]
    assert NOTEBOOK_01.read_bytes() == notebook_bytes
    assert not list(root.rglob("*.csv"))  # nothing trained: no run times recorded


def test_smoke_main_job_executes_a_copy_and_leaves_the_committed_notebook(capsys, isolated_env):
    """Notebook 01 really executed by the main job (smoke profile, stand-in data): the executed copy goes to
    $EMNIST_OUTPUT/notebooks/ and the committed notebook keeps its bytes."""
    needs_standin()
    output = (isolated_env / "output").resolve()
    notebook_bytes = NOTEBOOK_01.read_bytes()
    rc = main_job.run_main_job(PROFILES["smoke"], str(STANDIN_DIR), "standin", CPU, 1, notebooks=["01"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert NOTEBOOK_01.read_bytes() == notebook_bytes
    copy = output / "notebooks" / NOTEBOOK_01.name
    assert f"executing {NOTEBOOK_01.name} (1/1, smoke profile) -> {copy}" in out
    assert "main job (smoke profile): " in out and "(everything was cached)" in out
    executed = nbformat.read(copy, as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "profile: smoke | seed: 0" in printed and "dataset: emnist-standin" in printed
    assert len(list((output / "figures").glob("data_*.png"))) == 4
    assert not (output / "results" / "main_job_runtimes.csv").exists()  # nothing was trained


# ----------------------------------------------------------------------------- the main job as a process


def job_env(cache: Path, output: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMNIST_")}
    env.update(EMNIST_CACHE=str(cache), EMNIST_OUTPUT=str(output), PYTHONUNBUFFERED="1")
    return env


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Python installs its Ctrl-C handler only where it is not ignored


class Job:
    """`python -m emnist_utils notebooks ...` in a session of its own (as a terminal's foreground job)."""

    def __init__(self, folder: Path, *args: str):
        folder.mkdir(parents=True, exist_ok=True)
        self.cache, self.output = folder / "cache", folder / "output"
        self.stdout_path, self.stderr_path = folder / "stdout", folder / "stderr"
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "emnist_utils", "notebooks", *args],
                cwd=PROJECT_ROOT,
                env=job_env(self.cache, self.output),
                stdout=out,
                stderr=err,
                start_new_session=True,
                preexec_fn=_default_sigint,
            )

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_for(self, condition, what: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                pytest.fail(
                    f"the job ended (exit {self.process.returncode}) before {what}:\n{self.stdout}{self.stderr}"
                )
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"timed out waiting for {what}:\n{self.stdout}{self.stderr}")
            time.sleep(0.2)

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def finish(self, timeout: float = 120) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the job did not end within {timeout} s:\n{self.stdout}{self.stderr}")

    def kill(self) -> None:
        for p in self.descendants():
            p.kill()
        self.process.kill()
        self.process.wait()


def still_running(processes: list[psutil.Process], grace: float = 20) -> list[str]:
    """The processes (of those given) that have not ended within `grace` seconds (zombies have ended)."""
    deadline = time.monotonic() + grace
    while True:
        alive = []
        for p in processes:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{p.pid} {' '.join(p.cmdline())[:150]}")
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.5)


def check_one_interruption_line(job: Job, rc: int, stage: str) -> None:
    stderr = job.stderr
    assert rc == 130, job.stdout + stderr
    assert "Traceback" not in stderr and "Traceback" not in job.stdout, stderr
    last = [line for line in stderr.splitlines() if line.strip()][-1]
    assert last.startswith(f"interrupted while {stage}"), stderr
    assert "finished runs and epoch checkpoints are kept" in last
    assert "Resume with: python -m emnist_utils notebooks " in last and " --profile smoke" in last, last


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, synth):
    """`notebooks 02` in the smoke profile on the synthetic split, twice on the same cache and output folder."""
    folder = tmp_path_factory.mktemp("two-runs")
    args = ["02", "--profile", "smoke", "--data", str(synth.root), "--split", "synth47", "--jobs", "2"]
    runs = []
    for i in (1, 2):
        job = Job(folder, *args)
        rc = job.finish(timeout=600)
        runtimes = job.output / "results" / "main_job_runtimes.csv"
        runs.append(
            {"rc": rc, "stdout": job.stdout, "stderr": job.stderr, "runtimes": runtimes.read_text() if i == 1 else ""}
        )
        (folder / "stdout").rename(folder / f"stdout{i}")
        (folder / "stderr").rename(folder / f"stderr{i}")
    return {"folder": folder, "runs": runs, "runtimes": runtimes, "cache": job.cache}


def test_rerun_on_a_filled_cache_trains_nothing_and_records_no_runtimes(two_runs):
    first, second = two_runs["runs"]
    assert first["rc"] == 0, first["stdout"] + first["stderr"]
    assert second["rc"] == 0, second["stdout"] + second["stderr"]

    assert first["stderr"].count("  trained arch1-trial") == TABLE_1_1_RUNS
    assert f"runs to train: {TABLE_1_1_RUNS} " in first["stdout"]
    assert "main job (smoke profile): " in first["stdout"] and "(everything was cached)" not in first["stdout"]

    assert "trained " not in second["stderr"] and "calibrating" not in second["stderr"]
    assert f"  {NOTEBOOK_02.name}     {TABLE_1_1_RUNS}       {TABLE_1_1_RUNS}    0" in second["stdout"]
    assert "runs to train: 0 " in second["stdout"]
    last = [line for line in second["stdout"].splitlines() if line.strip()][-1]
    assert last.startswith("main job (smoke profile): ") and last.endswith(" (everything was cached)")

    rows = list(csv.DictReader(io.StringIO(first["runtimes"])))
    assert [r["step"] for r in rows] == [NOTEBOOK_02.name, "whole job"]
    assert {r["trained_runs"] for r in rows} == {str(TABLE_1_1_RUNS)}
    assert {r["profile"] for r in rows} == {"smoke"} and {r["data"] for r in rows} == {"emnist-synth47"}
    assert two_runs["runtimes"].read_text() == first["runtimes"]  # the second run added nothing
    assert (two_runs["folder"] / "output" / "notebooks" / NOTEBOOK_02.name).is_file()


@pytest.fixture
def calibrated(two_runs, tmp_path):
    """A fresh job folder whose cache holds only the machine measurements of notebook 02's models (taken by
    `two_runs` for two jobs), so that a job reaches its training in seconds."""
    folder = tmp_path / "job"
    (folder / "cache").mkdir(parents=True)
    shutil.copy(two_runs["cache"] / "calibration.json", folder / "cache" / "calibration.json")
    return folder


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupted_while_training(calibrated, how):
    """Ctrl-C (SIGINT to the job's whole process group, as a terminal sends it) or SIGTERM (to the job only, as
    `timeout` sends it) once both worker processes are training notebook 02's runs on the stand-in."""
    needs_standin()
    job = Job(calibrated, "02", "--profile", "smoke", "--data", str(STANDIN_DIR), "--split", "standin", "--jobs", "2")
    locks = job.cache / "locks"
    job.wait_for(lambda: len(list(locks.glob("*.lock"))) >= 2, "two runs started training")
    time.sleep(1)
    processes = job.descendants()
    assert len(processes) >= 2, "no worker processes found: this test would prove nothing"
    if how == "ctrl-c":
        os.killpg(job.process.pid, signal.SIGINT)
    else:
        job.process.send_signal(signal.SIGTERM)
    rc = job.finish()

    check_one_interruption_line(job, rc, f"training {TABLE_1_1_RUNS} runs")
    assert "Resume with: python -m emnist_utils notebooks 02 " in job.stderr
    assert not still_running(processes)
    assert not (job.output / "notebooks" / NOTEBOOK_02.name).exists()
    assert not (job.output / "results" / "main_job_runtimes.csv").exists()


def test_interrupted_while_executing_a_notebook(tmp_path):
    """Ctrl-C while notebook 01 (no training) is executing: the kernel is stopped, no executed copy is written."""
    needs_standin()
    job = Job(tmp_path / "job", "01", "--profile", "smoke", "--data", str(STANDIN_DIR), "--split", "standin")

    def kernel_started() -> bool:
        if f"executing {NOTEBOOK_01.name}" not in job.stdout:
            return False
        for p in job.descendants():
            try:
                if "ipykernel" in " ".join(p.cmdline()):
                    return True
            except psutil.Error:
                pass
        return False

    job.wait_for(kernel_started, "the notebook's kernel started")
    time.sleep(3)
    processes = job.descendants()
    os.killpg(job.process.pid, signal.SIGINT)
    rc = job.finish()

    check_one_interruption_line(job, rc, f"executing {NOTEBOOK_01.name} (1 of 1)")
    assert not still_running(processes)
    assert not (job.output / "notebooks" / NOTEBOOK_01.name).exists()
    # what it had run is kept beside the outputs (never over the committed notebook), and the line says where
    partial = job.output / NOTEBOOK_01.name
    assert "the cells run so far are in" in job.stderr and partial.name in job.stderr
    kept = nbformat.read(partial, as_version=4)
    sources = [c.source for c in nbformat.read(NOTEBOOK_01, as_version=4).cells]
    assert [c.source for c in kept.cells if c.source in sources] == sources  # every cell, plus the injected one
    assert "main job (smoke profile)" not in job.stdout
