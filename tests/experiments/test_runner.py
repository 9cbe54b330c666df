"""The runner (emnist_utils.experiments.runner): runs in worker processes give exactly the results of running them
one by one, cached runs are not trained again, `--jobs` parsing, and the progress display's estimates."""

from __future__ import annotations

import io

import pytest
import torch
from helpers import fake_result, record_calls, same_weights, small_profile, tiny_spec

from emnist_utils.core.registry import ConfigError
from emnist_utils.experiments import runner as runner_module
from emnist_utils.experiments import store as store_module
from emnist_utils.experiments.runner import Progress, Runner, auto_jobs, format_duration, parse_jobs, splits_for
from emnist_utils.experiments.store import Store

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def bound(splits, seed=0, **kwargs):
    return tiny_spec(seed=seed, **kwargs).bind(splits, small_profile())


# ----------------------------------------------------------------------------- running


def test_splits_for_rebuilds_the_bound_splits(standin_data, small_splits):
    rebuilt = splits_for(standin_data, bound(small_splits))
    assert torch.equal(rebuilt.train_images, small_splits.train_images)
    assert torch.equal(rebuilt.train_labels, small_splits.train_labels)
    assert torch.equal(rebuilt.val_images, small_splits.val_images)
    assert (rebuilt.mean, rebuilt.std) == (small_splits.mean, small_splits.std)


def test_worker_processes_give_the_results_of_one_by_one(standin_data, small_splits, tmp_path, monkeypatch):
    """Two runs, once in this process and once in two worker processes (one thread each, as here)."""
    monkeypatch.setattr(runner_module, "threads_per_job", lambda jobs: 1)
    specs = [bound(small_splits, seed=0), bound(small_splits, seed=1)]
    one = Runner(Store(tmp_path / "one"), standin_data, device="cpu", jobs=1, progress=False).run_many(specs)

    displays = []

    class RecordingProgress(Progress):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, stream=io.StringIO(), **kwargs)
            self.epochs_seen = []
            displays.append(self)

        def epoch(self, key, label, epoch, epochs):
            self.epochs_seen.append((key, epoch, epochs))
            super().epoch(key, label, epoch, epochs)

    monkeypatch.setattr(runner_module, "Progress", RecordingProgress)
    parallel_store = Store(tmp_path / "two")
    two = Runner(parallel_store, standin_data, device="cpu", jobs=2, progress=True).run_many(specs)

    assert parallel_store.trained_here == 0  # trained in the workers, not here
    assert [r.key for r in one] == [r.key for r in two] == [s.key() for s in specs]
    for a, b in zip(one, two):
        assert a.history.metrics() == b.history.metrics()
        assert a.metrics == b.metrics
        assert same_weights(a.trained_model.model, b.trained_model.model)
        assert b.environment["threads"] == 1 and b.device == "cpu (1 threads)"
    assert one[0].history.metrics() != one[1].history.metrics()  # the two seeds really differ

    (display,) = displays
    assert display.done == 2 and display.jobs == 2
    assert sorted(display.epochs_seen) == sorted((s.key(), e, 2) for s in specs for e in (1, 2))
    assert display.stream.getvalue().count("  trained tiny-arch2: validation") == 2


def test_cached_runs_are_not_trained_again(standin_data, small_splits, tmp_path, monkeypatch):
    store = Store(tmp_path / "cache")
    first = Runner(store, standin_data, device="cpu", progress=False).run_many([bound(small_splits, epochs=1)])
    calls = record_calls(monkeypatch, store_module, "train_run", record=lambda args: args[0])
    specs = [bound(small_splits, epochs=1), bound(small_splits, seed=2, epochs=1)]
    results = Runner(store, standin_data, device="cpu", progress=False).run_many(specs)
    assert calls == [specs[1]]  # only the new one
    assert results[0].metrics == first[0].metrics and results[1].spec == specs[1]

    def no_training(*args, **kwargs):
        raise AssertionError("trained a cached run")

    monkeypatch.setattr(store_module, "train_run", no_training)
    for jobs in (1, 2):  # with everything cached no worker is started either
        again = Runner(store, standin_data, device="cpu", jobs=jobs, progress=False).run_many(specs)
        assert [r.metrics for r in again] == [r.metrics for r in results]


def test_repeated_runs_are_trained_once(standin_data, small_splits, tmp_path, monkeypatch):
    calls = record_calls(monkeypatch, store_module, "train_run", record=lambda args: args[0])
    a = bound(small_splits, epochs=1)
    results = Runner(Store(tmp_path), standin_data, device="cpu", progress=False).run_many(
        [a, a.with_(name="the same run")]
    )
    assert len(calls) == 1 and len(results) == 2
    assert results[0].key == results[1].key and results[0].metrics == results[1].metrics


def test_retrain_trains_cached_runs_again(standin_data, small_splits, tmp_path, monkeypatch):
    store = Store(tmp_path)
    spec = bound(small_splits, epochs=1)
    first = Runner(store, standin_data, device="cpu", progress=False).run_many([spec])
    calls = record_calls(monkeypatch, store_module, "train_run")
    again = Runner(store, standin_data, device="cpu", retrain=True, progress=False).run_many([spec])
    assert len(calls) == 1 and again[0].history.metrics() == first[0].history.metrics()


# ----------------------------------------------------------------------------- jobs


@pytest.mark.parametrize("value, expected", [(1, 1), (3, 3), ("2", 2), ("16", 16)])
def test_parse_jobs_accepts_positive_numbers(value, expected):
    assert parse_jobs(value, CPU) == expected


def test_parse_jobs_auto(monkeypatch):
    monkeypatch.setattr(runner_module.os, "cpu_count", lambda: 2)
    assert parse_jobs("auto", CPU) == 2 and parse_jobs(None, CPU) == 2
    monkeypatch.setattr(runner_module.os, "cpu_count", lambda: 16)
    assert parse_jobs("auto", CPU) == 8  # at most 8 on a CPU
    assert parse_jobs("auto", CUDA) == 4  # four runs share one GPU


@pytest.mark.parametrize("value", [0, "0", -1, "x", "", "1.5", "two"])
def test_parse_jobs_rejects_the_rest(value):
    with pytest.raises(ConfigError, match="--jobs must be a positive number or 'auto'"):
        parse_jobs(value, CPU)


@pytest.mark.parametrize("cores, cpu, gpu", [(1, 1, 1), (2, 2, 2), (6, 6, 4), (64, 8, 4)])
def test_auto_jobs(monkeypatch, cores, cpu, gpu):
    monkeypatch.setattr(runner_module.os, "cpu_count", lambda: cores)
    assert auto_jobs(CPU) == cpu and auto_jobs(CUDA) == gpu


@pytest.mark.parametrize("cores, jobs, threads", [(2, 1, 2), (2, 2, 1), (8, 3, 2), (4, 8, 1)])
def test_threads_per_job(monkeypatch, cores, jobs, threads):
    monkeypatch.setattr(runner_module.os, "cpu_count", lambda: cores)
    assert runner_module.threads_per_job(jobs) == threads


# ----------------------------------------------------------------------------- progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(runner_module, "time", clock)
    return clock


def _result(label):
    return fake_result(40.0, 30.0, spec=tiny_spec().with_(name=label), train_seconds=12.0)


def test_remaining_time_decreases_as_work_finishes(clock):
    stream = io.StringIO()
    progress = Progress(2, {"a": 10.0, "b": 30.0}, jobs=2, stream=stream, started=0.0)
    # nothing done yet: the estimates (40 s of work) shared by two jobs
    assert progress.remaining() == pytest.approx(20.0)
    clock.now = 10.0
    progress.epoch("b", "run b", 1, 2)  # half of b (15 s of estimate) took 10 s: pace 2/3
    assert progress.remaining() == pytest.approx(25.0 * 10.0 / 15.0)
    clock.now = 20.0
    progress.finished("b", _result("run b"))  # 30 of 40 estimated seconds done in 20 s
    assert progress.remaining() == pytest.approx(10.0 * 20.0 / 30.0)
    clock.now = 25.0
    progress.finished("a", _result("run a"))
    assert progress.remaining() == pytest.approx(0.0)
    assert progress.done == 2 and not progress.current


def test_remaining_is_unknown_without_estimates(clock):
    progress = Progress(3, stream=io.StringIO(), started=0.0)
    assert progress.remaining() is None
    assert "left" not in progress.line()


def test_progress_line(clock):
    progress = Progress(2, {"a": 60.0, "b": 60.0}, jobs=1, stream=io.StringIO(), started=0.0)
    clock.now = 30.0
    progress.epoch("a", "run a", 1, 4)  # 15 of 120 estimated seconds in 30 s: 210 s left
    assert progress.line() == "runs 0/2 done | run a epoch 1/4 | 30 s elapsed, about 3 min 30 s left"


def test_finished_runs_are_printed_without_a_terminal(clock):
    stream = io.StringIO()
    progress = Progress(1, {}, stream=stream, started=0.0)
    progress.epoch("a", "run a", 1, 1)  # no terminal: nothing printed per epoch
    assert stream.getvalue() == ""
    progress.finished("a", _result("run a"))
    lines = stream.getvalue().splitlines()
    assert lines[0] == "  trained run a: validation 40.00% (balanced 30.00%), 12 s on cpu (1 threads)"
    assert lines[1].startswith("runs 1/1 done")


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0, "0 s"),
        (59.4, "59 s"),
        (60, "1 min 00 s"),
        (61, "1 min 01 s"),
        (3599, "59 min 59 s"),
        (3600, "1 h 00 min"),
        (3661, "1 h 01 min"),
        (-5, "0 s"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_progress_with_a_terminal_rewrites_one_line(clock):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    progress = Progress(1, {"a": 10.0}, stream=stream, started=0.0)
    clock.now = 1.0
    progress.epoch("a", "run a", 1, 2)
    assert stream.getvalue().startswith("\r") and "run a epoch 1/2" in stream.getvalue()
    assert "\n" not in stream.getvalue()
    progress.close()
    assert stream.getvalue().endswith("\n")
