"""The main job: plan every run the notebooks need, train them N at a time with one progress display, then
execute the notebooks, which find everything cached.

    python -m emnist_utils notebooks [--profile quick] [--jobs auto] [--plan] [NOTEBOOK ...]

The `full` profile executes the committed notebooks in place; every other profile executes copies under
`outputs/<profile>/notebooks/`, so a smoke or quick run never touches what is committed. Interrupting it (Ctrl-C,
a timeout's SIGTERM) prints one line saying what stopped and how to resume; finished runs and epoch
checkpoints are kept, and the cells a notebook had run are written to `outputs/interrupted/`.
"""

from __future__ import annotations

import csv
import logging
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import nbformat
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, DeadKernelError

from .core.data import EMNIST, load_emnist
from .core.paths import PROJECT_ROOT, cache_dir, ensure_writable, output_root, shown, write_text_atomic
from .core.splits import make_splits
from .experiments import beyond, final, search_study
from .experiments.baselines import baseline_cached, run_baselines
from .experiments.baselines import estimate_seconds as estimate_baseline
from .experiments.catalogue import notebook_baselines, notebook_runs
from .experiments.plan import Calibration, describe_estimate, estimate_seconds, machine_description, schedule_wall_time
from .experiments.profiles import Profile
from .experiments.runner import Runner, format_duration, threads_per_job
from .experiments.spec import RunSpec
from .experiments.store import Store

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"


class Interrupted(Exception):
    """The main job was stopped from outside (Ctrl-C, SIGTERM); `partial` is where the interrupted notebook's cells
    run so far were written, if one was executing."""

    def __init__(self, partial: Path | None = None):
        super().__init__()
        self.partial = partial


class NotebookError(RuntimeError):
    """A notebook failed; the message names it, the error and where its partial outputs are."""


def notebook_paths(selected: Sequence[str | Path] = ()) -> list[Path]:
    """The numbered notebooks, or the ones named (by path or by file name)."""
    every = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if not selected:
        return every
    out = []
    for item in selected:
        name = Path(item).name
        match = [p for p in every if p.name == name or p.stem == name or p.name.startswith(f"{name}_")]
        if not match:
            raise ValueError(
                f"no notebook {item!r} in {shown(NOTEBOOK_DIR)}; there are: " + ", ".join(p.name for p in every)
            )
        out += match
    return out


def notebook_target(profile: Profile) -> Path:
    """Where executed notebooks go: the committed ones in place only for the full profile writing the committed
    outputs; copies under <outputs>/notebooks/ otherwise (other profiles, or EMNIST_OUTPUT set)."""
    if profile.writes_committed and not os.environ.get("EMNIST_OUTPUT"):
        return NOTEBOOK_DIR
    return output_root(profile.name) / "notebooks"


def inject_parameters(notebook, parameters: dict) -> None:
    """Add a cell setting `parameters` right after the cell tagged `parameters`, as papermill does."""
    if not parameters:
        return
    index = next(
        (i for i, c in enumerate(notebook.cells) if "parameters" in c.get("metadata", {}).get("tags", [])), None
    )
    if index is None:
        raise ValueError("the notebook has no cell tagged 'parameters'")
    source = "# Injected parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in parameters.items())
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["injected-parameters"]
    cell["id"] = "injected-parameters"  # a fixed id keeps executed copies byte-stable
    notebook.cells.insert(index + 1, cell)


def _stable(notebook) -> None:
    """Drop what changes between identical runs (cell ids stay; timings and kernel start times go)."""
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
    notebook.metadata.pop("widgets", None)
    notebook.metadata.pop("papermill", None)


@contextmanager
def _quiet_kernel_logs():
    """nbclient and jupyter_client log through traitlets; keep their shutdown noise out of the terminal."""
    loggers = [logging.getLogger(n) for n in ("traitlets", "NotebookClient", "jupyter_client", "asyncio")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _stop_kernel(client: NotebookClient) -> None:
    """Shut the notebook's kernel down now (it runs in its own process group and would outlive us)."""
    try:
        if client.km is not None and client.km.has_kernel:
            client.km.shutdown_kernel(now=True)
    except Exception:  # already gone, or half started: nothing left to stop
        pass


def _write_notebook(notebook, path: Path) -> Path:
    """Write an executed notebook without what changes between identical runs, atomically."""
    _stable(notebook)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, nbformat.writes(notebook) + "\n")
    return path


def _keep_partial(notebook, why: str, name: str) -> Path:
    """Write a notebook that did not finish to outputs/<why>/, never over the committed one."""
    return _write_notebook(notebook, output_root(why) / name)


def execute_notebook(source: Path, target: Path, parameters: dict | None = None, timeout: int | None = None) -> float:
    """Execute `source` top to bottom (in the notebooks folder) and write it to `target` only if every cell
    ran; a failed notebook's partial outputs go to outputs/failed/, an interrupted one's to outputs/interrupted/
    (hours of a full run's outputs are not thrown away with the kernel). Returns the wall time."""
    notebook = nbformat.read(source, as_version=4)
    inject_parameters(notebook, parameters or {})
    # IPC sockets: local only, and the kernel does not warn about unencrypted TCP on every start
    sockets = cache_dir() / "kernels"
    sockets.mkdir(parents=True, exist_ok=True)
    kernel = KernelManager(kernel_name="python3", transport="ipc", ip=str(sockets / f"kernel-{os.getpid()}"))
    client = NotebookClient(
        notebook,
        km=kernel,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    # The client runs in a thread of its own: nbclient then leaves the signal handlers alone, so Ctrl-C and
    # SIGTERM reach this thread, which stops the kernel and reports the interruption in one line. The kernel's
    # own messages go to a log file instead of the terminal.
    outcome: dict = {}

    def work(log) -> None:
        try:
            with _quiet_kernel_logs():
                client.execute(stdout=log, stderr=log)
        except BaseException as exc:  # handed to the main thread
            outcome["error"] = exc

    started = time.perf_counter()
    with open(sockets / "kernels.log", "a") as log:
        thread = threading.Thread(target=work, args=(log,), daemon=True)
        thread.start()
        try:
            while thread.is_alive():
                thread.join(0.2)
        except BaseException:
            _stop_kernel(client)
            thread.join(10)
            raise Interrupted(_keep_partial(notebook, "interrupted", source.name)) from None
        finally:
            _stop_kernel(client)
    error = outcome.get("error")
    if isinstance(error, CellExecutionError):
        if getattr(error, "ename", "") == "KeyboardInterrupt":
            raise Interrupted(_keep_partial(notebook, "interrupted", source.name))
        failed = _keep_partial(notebook, "failed", source.name)
        raise NotebookError(
            f"{source.name} failed: {getattr(error, 'ename', 'error')}: "
            f"{str(getattr(error, 'evalue', error))[:300]} (partial outputs in {shown(failed)})"
        )
    if isinstance(error, DeadKernelError):
        raise NotebookError(
            f"{source.name}: the kernel died (out of memory?); its log: {shown(sockets / 'kernels.log')}"
        )
    if error is not None:
        raise error
    _write_notebook(notebook, target)
    return time.perf_counter() - started


# ----------------------------------------------------------------------------- the plan


@dataclass
class PlanRow:
    notebook: str
    runs: list[RunSpec]
    cached: int
    estimate: float  # seconds of training of its new runs (one process)
    baselines: list[str] = field(default_factory=list)
    new: int = 0  # runs to train that no earlier notebook of the plan trains
    search: dict[str, float] = field(default_factory=dict)  # notebook 08: its search's parts, seconds (one process)
    inside: dict[str, float] = field(default_factory=dict)  # notebook 09: runs it trains itself, seconds (one process)


@dataclass
class Plan:
    rows: list[PlanRow]
    todo: list[RunSpec]  # runs to train, each once
    estimates: dict[str, float]  # run key -> seconds
    jobs: int
    baselines_todo: dict[str, float]  # baseline name -> seconds (fitted one after the other)

    @property
    def search_estimate(self) -> float:
        """Notebook 08's search and notebook 09's runs are trained inside the notebook, one after another: their cost
        adds to the wall time."""
        return sum(sum(r.search.values()) + sum(r.inside.values()) for r in self.rows)

    @property
    def wall_estimate(self) -> float:
        return (
            schedule_wall_time(list(self.estimates.values()), self.jobs)
            + sum(self.baselines_todo.values())
            + self.search_estimate
        )

    def describe(self, profile: Profile, device: str) -> str:
        width = max(len(r.notebook) for r in self.rows) if self.rows else 10
        lines = [
            f"plan ({profile.name} profile, {device}, {self.jobs} job(s) at a time; "
            f"estimates measured on {machine_description()}):",
            f"  {'notebook':{width}s}  runs  cached  new  estimated training of the new runs (one job)",
        ]
        for r in self.rows:
            extra = f" + {len(r.baselines)} baselines" if r.baselines else ""
            if r.search:
                searching = {k: v for k, v in r.search.items() if k != search_study.WINNER}
                parts = ", ".join(f"{k} {describe_estimate(v)}" for k, v in searching.items())
                extra += (
                    f" + search {describe_estimate(sum(searching.values()))} ({parts})"
                    f" + {search_study.WINNER} {describe_estimate(r.search.get(search_study.WINNER, 0.0))},"
                    " at most, if nothing is cached"
                )
            if r.inside:
                parts = ", ".join(f"{k} {describe_estimate(v)}" for k, v in r.inside.items())
                extra += (
                    f" + trained in the notebook {describe_estimate(sum(r.inside.values()))} ({parts}),"
                    " at most, if nothing is cached"
                )
            lines.append(
                f"  {r.notebook:{width}s}  {len(r.runs):4d}  {r.cached:6d}  {r.new:3d}  "
                f"{describe_estimate(r.estimate)}{extra}"
            )
        total = sum(self.estimates.values()) + sum(self.baselines_todo.values())
        lines.append(
            f"  runs to train: {len(self.todo)} ({describe_estimate(total)} in one job); about "
            f"{describe_estimate(self.wall_estimate)} of wall time with {self.jobs} job(s)"
            + (f", {len(self.baselines_todo)} scikit-learn baselines included" if self.baselines_todo else "")
        )
        return "\n".join(lines)


def make_plan(
    notebooks: Sequence[Path], profile: Profile, data: EMNIST, store: Store, device, jobs: int, progress=None
) -> Plan:
    """Every run the given notebooks need (bound to the data and profile), which are cached, and the measured
    estimate of the rest. Runs that depend on other runs' results (notebook 05's seeds of the chosen candidate)
    appear once those results are cached."""
    splits = make_splits(data, 0, **profile.limits())
    wanted = notebook_runs(profile, beyond.chooser(lambda spec: store.cached(spec.bind(splits, profile))))
    rows, todo, seen = [], [], set()
    for path in notebooks:
        specs = [s.bind(splits, profile) for s in wanted.get(path.stem, [])]
        cached = [store.cached(s) is not None for s in specs]
        row = PlanRow(path.name, specs, sum(cached), 0.0, notebook_baselines(profile).get(path.stem, []))
        for spec, hit in zip(specs, cached):
            if not hit and spec.key() not in seen:
                seen.add(spec.key())
                todo.append(spec)
                row.new += 1
        rows.append(row)
    calibration = Calibration(store.root / "calibration.json", device, threads_per_job(jobs))
    throughput = calibration.throughputs(todo, data.num_classes, progress=progress)
    n_train, n_val = len(splits.train_labels), len(splits.val_labels)
    estimates = {s.key(): estimate_seconds(s, throughput[s.key()], n_train, n_val) for s in todo}
    counted: set[str] = set()
    for row in rows:
        new = [s.key() for s in row.runs if s.key() in estimates and s.key() not in counted]
        counted.update(new)
        row.estimate = sum(estimates[k] for k in new)
    baselines = {b: 0.0 for r in rows for b in r.baselines if not baseline_cached(b, splits, profile, store.root)}
    for name in baselines:
        baselines[name] = calibration.baseline(
            [name, profile.name, splits.sizes()], lambda n=name: estimate_baseline(n, splits, profile)
        )
    for row in rows:
        row.estimate += sum(baselines.get(b, 0.0) for b in row.baselines)
        if Path(row.notebook).stem == search_study.NOTEBOOK:
            row.search = search_study.estimated_seconds(
                profile, data, lambda s: calibration.throughputs([s], data.num_classes)[s.key()]
            )
        if Path(row.notebook).stem == final.NOTEBOOK:
            base = beyond.chooser(lambda s: store.cached(s.bind(splits, profile)))(beyond.CANDIDATES)

            def seconds(spec: RunSpec, images: int) -> float:
                rate = calibration.throughputs([spec], data.num_classes)[spec.key()]
                return estimate_seconds(spec, rate, images, n_val)

            # before notebook 05 has chosen, its costliest candidate: the plan gives an upper bound
            row.inside = final.estimated_seconds(profile, base or beyond.CANDIDATES[-1], splits, seconds)
    return Plan(rows, todo, estimates, jobs, baselines)


# ----------------------------------------------------------------------------- running it


@dataclass
class Stage:
    """What the job is doing now, for the one line printed when it is interrupted."""

    text: str = "starting"


def _raise_interrupted(signum, frame):
    raise Interrupted()


def run_main_job(
    profile: Profile,
    data_dir: str | None,
    split: str | None,
    device,
    jobs: int,
    *,
    notebooks: Sequence[str] = (),
    plan_only: bool = False,
    timeout: int | None = None,
    resume_command: str = "",
) -> int:
    """Plan, train and execute (see the module docstring). Returns the process exit code."""
    stage = Stage()
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        return _main_job(stage, profile, data_dir, split, device, jobs, notebooks, plan_only, timeout)
    except (Interrupted, KeyboardInterrupt) as stop:
        command = resume_command or "python -m emnist_utils " + shlex.join(sys.argv[1:])
        partial = getattr(stop, "partial", None)
        kept = f" (the cells run so far are in {shown(partial)})" if partial else ""
        print(
            f"\ninterrupted while {stage.text}{kept}; finished runs and epoch checkpoints are kept. "
            f"Resume with: {command}",
            file=sys.stderr,
            flush=True,
        )
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main_job(stage, profile, data_dir, split, device, jobs, notebooks, plan_only, timeout) -> int:
    stage.text = "loading the data"
    data = load_emnist(data_dir, split)
    print(data.describe(), flush=True)
    paths = notebook_paths(notebooks)
    store = Store()
    store.check_writable()
    target_dir = notebook_target(profile)
    ensure_writable(target_dir, "notebooks folder")
    stage.text = "measuring this machine for the plan"
    calibrating = lambda text: print(f"  {text}", file=sys.stderr, flush=True)  # noqa: E731
    plan = make_plan(paths, profile, data, store, device, jobs, progress=calibrating)
    print(plan.describe(profile, str(device)), flush=True)
    if plan_only:
        return 0
    started = time.perf_counter()
    trained_runs = 0
    while plan.todo:  # a second round trains what the first round's results decided (notebook 05's seeds)
        stage.text = f"training {len(plan.todo)} runs"
        Runner(store, data, device=device, jobs=jobs, progress=True).run_many(plan.todo, plan.estimates)
        trained_runs += len(plan.todo)
        plan = make_plan(paths, profile, data, store, device, jobs, progress=calibrating)
        if plan.todo:
            print(f"decided by the runs just trained: {len(plan.todo)} more run(s)", flush=True)
    if plan.baselines_todo:
        stage.text = "fitting the scikit-learn baselines"
        print(f"fitting {len(plan.baselines_todo)} scikit-learn baselines (cached once fitted) ...", flush=True)
        run_baselines(make_splits(data, 0, **profile.limits()), profile, list(plan.baselines_todo), root=store.root)
    trained = trained_runs > 0
    times = []
    env = {"EMNIST_PROFILE": profile.name, "EMNIST_DATA": str(data.root), "EMNIST_SPLIT": data.split}
    os.environ.update(env)
    for i, path in enumerate(paths, start=1):
        stage.text = f"executing {path.name} ({i} of {len(paths)})"
        print(
            f"executing {path.name} ({i}/{len(paths)}, {profile.name} profile) -> {shown(target_dir / path.name)}",
            flush=True,
        )
        seconds = execute_notebook(path, target_dir / path.name, timeout=timeout)
        times.append((path.name, seconds))
        print(f"  {path.name}: {format_duration(seconds)}", flush=True)
    total = time.perf_counter() - started
    print(
        f"main job ({profile.name} profile): {format_duration(total)} wall time"
        + ("" if trained else " (everything was cached)"),
        flush=True,
    )
    if trained:
        record_runtimes(profile, data, times, total, trained_runs)
    return 0


def record_runtimes(profile: Profile, data: EMNIST, times, total: float, trained_runs: int) -> Path:
    """Append the notebooks' and the whole job's wall times to results/main_job_runtimes.csv (only when the job
    trained something: re-running on a filled cache leaves the committed files as they are)."""
    path = output_root(profile.name) / "results" / "main_job_runtimes.csv"
    rows = [["finished_utc", "profile", "data", "checksum", "step", "seconds", "trained_runs", "machine"]]
    if path.is_file():
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for name, seconds in [*times, ("whole job", total)]:
        rows.append(
            [
                stamp,
                profile.name,
                f"emnist-{data.split}",
                data.short_checksum,
                name,
                f"{seconds:.1f}",
                str(trained_runs),
                machine_description(),
            ]
        )
    text = "".join(",".join(f'"{c}"' if "," in c else c for c in row) + "\n" for row in rows)
    write_text_atomic(path, text)
    return path
