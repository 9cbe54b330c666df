"""Many runs on one machine: in this process, or N at a time in worker processes, with one progress display.

Independent runs go to `jobs` worker processes (each with its share of the CPU threads; on a GPU they share
the device). Workers train through the same store and its per-run locks, so the results are exactly those of
running the runs one by one with the same thread count (tested), and two runners never train one run twice.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.data import load_emnist
from ..core.registry import ConfigError
from ..core.splits import Splits, make_splits
from ..core.training import History
from .spec import RunSpec
from .store import RunResult, Store


def auto_jobs(device: torch.device) -> int:
    """How many runs at once suit this machine: one per core on a CPU (these small models use a second thread
    of the same run poorly: two single-thread runs train up to 1.9x the images of one two-thread run on the
    project's 2-core machine), four sharing one GPU."""
    cores = os.cpu_count() or 1
    if device.type == "cpu":
        return max(1, min(cores, 8))
    return max(1, min(4, cores))


def threads_per_job(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def parse_jobs(value: str | int | None, device: torch.device) -> int:
    """`--jobs`: a positive number or `auto`."""
    if value in (None, "auto"):
        return auto_jobs(device)
    try:
        jobs = int(value)
    except (TypeError, ValueError):
        jobs = 0
    if jobs < 1:
        raise ConfigError(f"--jobs must be a positive number or 'auto', got {value!r}")
    return jobs


def splits_for(data, spec: RunSpec) -> Splits:
    """The splits a bound run was defined on, rebuilt from its own fields."""
    return make_splits(data, spec.split_seed, train_limit=spec.limits.train, val_limit=spec.limits.validation)


# ----------------------------------------------------------------------------- progress


@dataclass
class Progress:
    """One line in the terminal for a whole batch of runs: done of total, the runs in flight and their epochs,
    elapsed and estimated remaining time. Without a terminal it prints a line per finished run instead."""

    total: int
    estimates: dict[str, float] = field(default_factory=dict)  # run key -> estimated seconds
    jobs: int = 1
    stream: object = field(default_factory=lambda: sys.stderr)
    done: int = 0
    started: float = field(default_factory=time.perf_counter)
    current: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # key -> (label, epoch, epochs)
    finished_estimate: float = 0.0
    _last: float = 0.0

    @property
    def interactive(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def remaining(self) -> float | None:
        """Seconds of wall time left: the estimated work left, at the pace the finished work really went
        (before there is such a pace: the estimates, shared by the jobs)."""
        if not self.estimates:
            return None
        total = sum(self.estimates.values())
        in_flight = sum(
            self.estimates.get(key, 0.0) * epoch / max(epochs, 1) for key, (_, epoch, epochs) in self.current.items()
        )
        left = max(total - self.finished_estimate - in_flight, 0.0)
        done = total - left
        pace = (time.perf_counter() - self.started) / done if done > 0.05 * total else 1.0 / self.jobs
        return left * pace

    def line(self) -> str:
        elapsed = time.perf_counter() - self.started
        running = "; ".join(f"{label} epoch {epoch}/{epochs}" for label, epoch, epochs in self.current.values())
        remaining = self.remaining()
        tail = f", about {format_duration(remaining)} left" if remaining is not None else ""
        return (
            f"runs {self.done}/{self.total} done"
            + (f" | {running}" if running else "")
            + f" | {format_duration(elapsed)} elapsed{tail}"
        )

    def show(self, force: bool = False) -> None:
        now = time.perf_counter()
        if self.interactive:
            if force or now - self._last > 0.5:
                text = self.line()
                width = 160
                print("\r" + text[:width].ljust(width), end="", file=self.stream, flush=True)
                self._last = now
        elif force:
            print(self.line(), file=self.stream, flush=True)

    def epoch(self, key: str, label: str, epoch: int, epochs: int) -> None:
        self.current[key] = (label, epoch, epochs)
        self.show()

    def finished(self, key: str, result: RunResult) -> None:
        self.current.pop(key, None)
        self.done += 1
        self.finished_estimate += self.estimates.get(key, 0.0)
        if self.interactive:
            print("\r" + " " * 160 + "\r", end="", file=self.stream)
        print(
            f"  trained {result.spec.label}: validation {result.val_acc:.2f}% (balanced "
            f"{result.val_balanced_acc:.2f}%), {format_duration(result.train_seconds)} on {result.device}",
            file=self.stream,
            flush=True,
        )
        self.show(force=True)

    def close(self) -> None:
        if self.interactive:
            print(file=self.stream, flush=True)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


# ----------------------------------------------------------------------------- workers

_WORKER: dict = {}


def _exit_quietly(signum, frame):
    sys.exit(0)


def _init_worker(data_root: str, split: str, threads: int, store_root: str, messages) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the workers ...
    signal.signal(signal.SIGTERM, _exit_quietly)  # ... with SIGTERM, after which a worker exits cleanly
    torch.set_num_threads(threads)
    _WORKER.update(
        data=load_emnist(data_root, split, download=False), store=Store(Path(store_root)), messages=messages, splits={}
    )


def _train_in_worker(spec_dict: dict, device: str | None, retrain: bool) -> str:
    spec = RunSpec.from_dict(spec_dict)
    data, store = _WORKER["data"], _WORKER["store"]
    ident = (spec.split_seed, spec.limits)
    if ident not in _WORKER["splits"]:
        _WORKER["splits"][ident] = splits_for(data, spec)
    key = spec.key()

    def report(epoch: int, history: History) -> None:
        _WORKER["messages"].put((key, spec.label, epoch, spec.recipe.epochs))

    store.run(spec, _WORKER["splits"][ident], device=device, retrain=retrain, progress=False, callbacks=[report])
    return key


class Runner:
    """Runs specs through a store, `jobs` at a time."""

    def __init__(
        self,
        store: Store,
        data,
        *,
        device: torch.device | str | None = None,
        jobs: int = 1,
        retrain: bool = False,
        progress: bool = True,
    ):
        self.store, self.data = store, data
        self.device = torch.device(device) if device is not None else None
        self.jobs, self.retrain, self.progress = jobs, retrain, progress
        self._splits: dict = {}

    def run_many(self, specs: Sequence[RunSpec], estimates: dict[str, float] | None = None) -> list[RunResult]:
        """The results of `specs`, in order: cached ones loaded, the others trained."""
        results: dict[str, RunResult] = {}
        todo = []
        for spec in specs:
            cached = None if self.retrain else self.store.cached(spec)
            if cached is not None:
                results[spec.key()] = cached
            elif spec.key() not in {s.key() for s in todo}:
                todo.append(spec)
        if todo:
            display = Progress(len(todo), estimates or {}, jobs=min(self.jobs, len(todo))) if self.progress else None
            if self.jobs <= 1 or len(todo) == 1:
                self._sequential(todo, display, results)
            else:
                self._parallel(todo, display, results)
            if display is not None:
                display.close()
        return [results[s.key()] for s in specs]

    def splits(self, spec: RunSpec) -> Splits:
        """The splits of a bound run (built once per split seed and limits)."""
        ident = (spec.split_seed, spec.limits)
        if ident not in self._splits:
            self._splits[ident] = splits_for(self.data, spec)
        return self._splits[ident]

    def _sequential(self, todo, display, results) -> None:
        for spec in todo:
            use = self.splits(spec)
            key = spec.key()
            callbacks = [lambda e, h, k=key, s=spec: display.epoch(k, s.label, e, s.recipe.epochs)] if display else []
            result = self.store.run(
                spec, use, device=self.device, retrain=self.retrain, progress=display is None, callbacks=callbacks
            )
            results[key] = result
            if display is not None:
                display.finished(key, result)

    def _parallel(self, todo, display, results) -> None:
        context = multiprocessing.get_context("spawn")
        manager = context.Manager()
        messages = manager.Queue()
        device = str(self.device) if self.device is not None else None
        pool = ProcessPoolExecutor(
            self.jobs,
            mp_context=context,
            initializer=_init_worker,
            initargs=(str(self.data.root), self.data.split, threads_per_job(self.jobs), str(self.store.root), messages),
        )
        try:
            pending = {pool.submit(_train_in_worker, s.as_dict(), device, self.retrain): s for s in todo}
            while pending:
                finished, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                self._drain(messages, display)
                for future in finished:
                    spec = pending.pop(future)
                    future.result()  # a worker's exception is raised here
                    result = self.store.cached(spec)
                    if result is None:
                        raise RuntimeError(
                            f"a worker trained {spec.label}, but under another key: the package's "
                            "code changed while the runs were training. Run the command again."
                        )
                    results[spec.key()] = result
                    if display is not None:
                        display.finished(spec.key(), result)
        except BaseException:
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        else:
            pool.shutdown()
        finally:
            manager.shutdown()

    @staticmethod
    def _drain(messages, display) -> None:
        while True:
            try:
                key, label, epoch, epochs = messages.get_nowait()
            except (queue.Empty, EOFError, OSError):
                return
            if display is not None:
                display.epoch(key, label, epoch, epochs)
