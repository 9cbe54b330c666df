"""The plan (emnist_utils.experiments.plan): time estimates from measured throughput, the wall time of a
longest-first schedule, and the calibration that is measured once per machine, device and thread count."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import tiny_spec

from emnist_utils.experiments import plan
from emnist_utils.experiments.plan import Calibration, describe_estimate, estimate_seconds, schedule_wall_time

CPU = torch.device("cpu")
DATA = "ab" * 32


def spec(**kwargs):
    return tiny_spec(**kwargs).with_(data=DATA)


# ----------------------------------------------------------------------------- estimates


def test_estimate_seconds_by_hand():
    # 3 epochs of 1,000 training images at 100 images/s (10 s) plus 300 validation images at three times
    # that speed (1 s)
    assert estimate_seconds(spec(epochs=3), 100.0, 1000, 300) == pytest.approx(33.0)
    assert estimate_seconds(spec(epochs=1), 50.0, 500, 0) == pytest.approx(10.0)
    assert estimate_seconds(spec(epochs=10), 1000.0, 0, 6000) == pytest.approx(20.0)


def test_estimate_scales_with_epochs_and_inversely_with_throughput():
    base = estimate_seconds(spec(epochs=2), 200.0, 4000, 1000)
    assert estimate_seconds(spec(epochs=4), 200.0, 4000, 1000) == pytest.approx(2 * base)
    assert estimate_seconds(spec(epochs=2), 400.0, 4000, 1000) == pytest.approx(base / 2)


@pytest.mark.parametrize(
    "durations, jobs, wall",
    [
        ([5, 4, 3, 3], 2, 8),  # 5+3 | 4+3
        ([10, 1, 1, 1], 2, 10),  # the long run decides
        ([3, 3, 3], 1, 9),  # one worker: the sum
        ([2, 7, 4], 5, 7),  # more workers than runs: the longest
        ([6, 5, 4, 3, 2, 1], 3, 7),  # 6+1 | 5+2 | 4+3
        ([1, 2, 3, 4], 0, 10),  # no workers means one
        ([], 4, 0),
    ],
)
def test_schedule_wall_time_by_hand(durations, jobs, wall):
    assert schedule_wall_time(durations, jobs) == pytest.approx(wall)


def test_schedule_is_longest_first_not_in_order():
    # in the given order on 2 workers: 1 | 1, then 2 on either, then 6: 9; longest first: 6 | 1+1+2 = 6
    assert schedule_wall_time([1, 1, 2, 6], 2) == pytest.approx(6)


def test_describe_estimate():
    assert describe_estimate(90) == "1 min 30 s"
    assert describe_estimate(math.inf) == "?" and describe_estimate(math.nan) == "?"


# ----------------------------------------------------------------------------- calibration


@pytest.fixture
def measured(monkeypatch):
    """Replace the measurement by a fake that records (spec, threads in use) and returns 100 images/s per
    call so far."""
    calls = []

    def fake(spec, num_classes, device, steps=plan.CALIBRATION_STEPS):
        calls.append((spec, torch.get_num_threads()))
        return 100.0 * len(calls)

    monkeypatch.setattr(plan, "measure_throughput", fake)
    return calls


def test_calibration_measures_once_and_reuses_the_stored_value(tmp_path, measured):
    path = tmp_path / "calibration.json"
    a, b = spec(seed=0), spec(seed=1)  # same model and batch: one measurement for both
    first = Calibration(path, CPU, 1).throughputs([a, b], 47)
    assert len(measured) == 1
    assert first == {a.key(): 100.0, b.key(): 100.0}
    assert path.is_file()
    stored = json.loads(path.read_text())
    assert list(stored) == [plan.machine_description()]

    again = Calibration(path, CPU, 1).throughputs([b, a], 47)  # a new object: read from the file
    assert len(measured) == 1
    assert again == first


def test_calibration_keys_by_thread_count(tmp_path, measured):
    path = tmp_path / "calibration.json"
    one = Calibration(path, CPU, 1).throughputs([spec()], 47)
    two = Calibration(path, CPU, 2).throughputs([spec()], 47)
    assert [threads for _, threads in measured] == [1, 2]  # measured with the thread count the runs will use
    assert one != two
    assert torch.get_num_threads() == 1  # and the test process's own setting is restored
    assert Calibration(path, CPU, 2).throughputs([spec()], 47) == two and len(measured) == 2


def test_calibration_measures_each_cost_once(tmp_path, measured):
    path = tmp_path / "calibration.json"
    specs = [spec(), spec(batch_size=50), spec(arch="lean"), spec(augment="affine"), spec(epochs=7), spec(lr=0.01)]
    out = Calibration(path, CPU, 1).throughputs(specs, 47)
    # epochs and learning rate do not change the cost of a step; batch, model and augmentation do
    assert len(measured) == 4
    assert out[specs[0].key()] == out[specs[4].key()] == out[specs[5].key()]
    assert len({out[s.key()] for s in specs[:4]}) == 4


def test_calibration_reports_what_it_measures(tmp_path, measured):
    messages = []
    Calibration(tmp_path / "c.json", CPU, 1).throughputs([spec(), spec(seed=3)], 47, progress=messages.append)
    assert messages == ["calibrating arch2 4/8/32 batch 100"]


def test_unreadable_calibration_file_is_measured_again(tmp_path, measured):
    path = tmp_path / "calibration.json"
    path.write_text("{not json")
    assert Calibration(path, CPU, 1).throughputs([spec()], 47) == {spec().key(): 100.0}
    assert json.loads(path.read_text())  # and replaced by a valid one


def test_measure_throughput_on_a_tiny_model():
    rate = plan.measure_throughput(spec(batch_size=32), 47, CPU, steps=2)
    assert math.isfinite(rate) and rate > 0
