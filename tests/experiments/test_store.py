"""The results store (emnist_utils.experiments.store): cached runs are reused, damaged entries recomputed,
interrupted runs resumed bit for bit, concurrent processes train a run once, and unwritable or full caches fail
before any training with errors that name the path and the cause."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import (
    PROJECT_ROOT,
    Interrupt,
    fake_result,
    interrupt_at,
    read_only_dir,
    record_calls,
    same_weights,
    small_profile,
    tiny_spec,
)

from emnist_utils.core import paths as paths_module
from emnist_utils.core.evaluation import accuracy
from emnist_utils.core.paths import OutputError
from emnist_utils.core.splits import Splits
from emnist_utils.core.trained_model import TrainedModel
from emnist_utils.experiments import store as store_module
from emnist_utils.experiments.store import RunResult, Store, read_entry, validation_metrics, write_entry

TESTS_DIR = Path(__file__).resolve().parents[1]


def bind(splits, **kwargs):
    return tiny_spec(**kwargs).bind(splits, small_profile())


def run(store: Store, spec, splits, **kwargs) -> RunResult:
    return store.run(spec, splits, device="cpu", progress=False, **kwargs)


def forbid_training(monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("train_run was called")

    monkeypatch.setattr(store_module, "train_run", no_training)


@pytest.fixture
def train_calls(monkeypatch):
    """The specs of every train_run call (which still trains)."""
    return record_calls(monkeypatch, store_module, "train_run", record=lambda args: args[0])


@pytest.fixture(scope="module")
def trained(small_splits, tmp_path_factory):
    """One finished one-epoch run in a store of its own: (store root, spec, result). Tests copy the folder."""
    root = tmp_path_factory.mktemp("template") / "cache"
    spec = bind(small_splits, epochs=1)
    result = run(Store(root), spec, small_splits)
    return root, spec, result


def copy_of(trained, tmp_path) -> Store:
    root = tmp_path / "cache"
    shutil.copytree(trained[0], root)
    return Store(root)


def files_under(root: Path, pattern: str = "*") -> list[Path]:
    return sorted(p for p in root.rglob(pattern) if p.is_file())


# ----------------------------------------------------------------------------- reuse


def test_default_store_is_the_tests_own_cache_not_the_repository():
    root = Store().root
    assert root == Path(os.environ["EMNIST_CACHE"]).resolve()
    assert PROJECT_ROOT not in root.parents and root != PROJECT_ROOT / ".cache"


def test_first_run_writes_entry_and_model_and_no_checkpoint(trained):
    root, spec, result = trained
    store = Store(root)
    paths = store.paths(spec.key())
    assert result.key == spec.key() and result.spec == spec
    assert paths["entry"].is_file() and paths["model"].is_file()
    assert not paths["checkpoint"].exists()
    assert not files_under(root / "checkpoints") and not files_under(root, "*.tmp")
    assert result.history.epochs == 1 and result.parameters > 0
    assert result.device == "cpu (1 threads)"
    assert result.provenance["checksum"] == spec.data
    assert {"torch", "python", "threads", "finished_utc"} <= set(result.environment)
    entry = read_entry(paths["entry"], spec.key())
    assert entry.pop("model_sha256") == hashlib.sha256(paths["model"].read_bytes()).hexdigest()
    assert entry == json.loads(json.dumps(result.to_json()))


def test_second_run_is_loaded_without_training(trained, small_splits, tmp_path, monkeypatch):
    store = copy_of(trained, tmp_path)
    _, spec, first = trained
    forbid_training(monkeypatch)
    second = run(store, spec, small_splits)
    assert store.trained_here == 0
    assert second.key == first.key
    assert second.history.metrics() == first.history.metrics()
    assert second.metrics == first.metrics
    assert (second.parameters, second.train_seconds, second.device) == (
        first.parameters,
        first.train_seconds,
        first.device,
    )
    assert second.environment == first.environment  # recorded when it was trained, not now
    # a renamed run is the same run
    assert run(store, spec.with_(name="renamed"), small_splits).metrics == first.metrics


def test_cached_model_is_the_trained_model(trained, small_splits, tmp_path, monkeypatch):
    store = copy_of(trained, tmp_path)
    _, spec, first = trained
    forbid_training(monkeypatch)
    cached = store.cached(spec)
    assert cached is not None and cached._model is None
    model = cached.trained_model
    assert isinstance(model, TrainedModel)
    assert same_weights(model.model, first.trained_model.model)
    assert model.run["key"] == spec.key() and model.classes == small_splits.classes
    assert (model.mean, model.std) == (small_splits.mean, small_splits.std)
    # it reproduces the validation accuracy stored with the run
    predictions = model.predict(small_splits.val_images)
    assert accuracy(predictions, small_splits.val_labels) == pytest.approx(first.val_acc, abs=1e-9)


def test_retrain_trains_again(trained, small_splits, tmp_path, train_calls):
    store = copy_of(trained, tmp_path)
    _, spec, first = trained
    again = run(store, spec, small_splits, retrain=True)
    assert len(train_calls) == 1 and store.trained_here == 1
    assert again.history.metrics() == first.history.metrics()  # CPU runs repeat bit for bit
    assert same_weights(again.trained_model.model, first.trained_model.model)


def test_changed_spec_trains_again(trained, small_splits, tmp_path, train_calls):
    store = copy_of(trained, tmp_path)
    _, spec, first = trained
    other = run(store, spec.with_(seed=1), small_splits)
    assert len(train_calls) == 1 and other.key != first.key
    assert other.history.metrics() != first.history.metrics()


def test_run_refuses_a_spec_bound_to_other_data(small_splits, tmp_path, monkeypatch):
    forbid_training(monkeypatch)
    with pytest.raises(ValueError, match="bound to data"):
        run(Store(tmp_path), bind(small_splits).with_(data="0" * 64), small_splits)
    with pytest.raises(ValueError, match=r"\(none\)"):
        run(Store(tmp_path), tiny_spec(), small_splits)


# ----------------------------------------------------------------------------- damaged entries


def _garbage(path):
    path.write_text("{not json at all")


def _empty(path):
    path.write_text("")


def _truncated(path):
    text = path.read_text()
    path.write_text(text[: len(text) // 2])


def _edited_payload(path):
    entry = json.loads(path.read_text())
    entry["payload"]["metrics"]["val_acc"] = 99.9  # the stored sha256 is left as it was
    path.write_text(json.dumps(entry))


def _wrong_sha(path):
    entry = json.loads(path.read_text())
    entry["sha256"] = "0" * 64
    path.write_text(json.dumps(entry))


def _foreign_key(path):
    # a self-consistent entry (valid sha256) of another run
    entry = json.loads(path.read_text())
    entry["payload"]["key"] = "someone-else"
    entry["payload"]["metrics"]["val_acc"] = 99.9
    entry["sha256"] = hashlib.sha256(json.dumps(entry["payload"], sort_keys=True).encode()).hexdigest()
    path.write_text(json.dumps(entry))


@pytest.mark.parametrize(
    "damage",
    [_garbage, _empty, _truncated, _edited_payload, _wrong_sha, _foreign_key],
    ids=lambda f: f.__name__.strip("_"),
)
def test_damaged_entry_is_detected_and_retrained(trained, small_splits, tmp_path, train_calls, damage):
    store = copy_of(trained, tmp_path)
    _, spec, first = trained
    entry = store.paths(spec.key())["entry"]
    damage(entry)
    with pytest.warns(UserWarning, match="corrupt"):
        assert store.cached(spec) is None
    with pytest.warns(UserWarning, match="corrupt"):
        again = run(store, spec, small_splits)
    assert len(train_calls) == 1  # recomputed, not trusted
    assert again.val_acc == first.val_acc != 99.9
    stored = json.loads(entry.read_text())  # and the entry is whole again
    assert stored["payload"]["key"] == spec.key()
    assert stored["sha256"] == hashlib.sha256(json.dumps(stored["payload"], sort_keys=True).encode()).hexdigest()
    assert store.cached(spec) is not None


def test_missing_model_file_retrains(trained, small_splits, tmp_path, train_calls):
    store = copy_of(trained, tmp_path)
    _, spec, first = trained
    model_path = store.paths(spec.key())["model"]
    model_path.unlink()
    with pytest.warns(UserWarning, match="missing"):
        again = run(store, spec, small_splits)
    assert len(train_calls) == 1 and model_path.is_file() and store.trained_here == 1
    assert again.metrics == first.metrics
    assert same_weights(TrainedModel.load(model_path).model, first.trained_model.model)


def test_write_and_read_entry(tmp_path):
    path = tmp_path / "runs" / "k.json"
    write_entry(path, {"key": "k", "value": [1, 2.5, "x"]})
    assert read_entry(path, "k") == {"key": "k", "value": [1, 2.5, "x"]}
    assert read_entry(tmp_path / "runs" / "absent.json", "k") is None
    with pytest.warns(UserWarning, match="corrupt"):
        assert read_entry(path, "other") is None
    assert not files_under(tmp_path, "*.tmp")


# ----------------------------------------------------------------------------- interrupted runs


def test_interrupted_run_resumes_and_ends_bit_identical(small_splits, tmp_path):
    spec = bind(small_splits, epochs=2)
    store = Store(tmp_path / "interrupted")
    with pytest.raises(Interrupt):
        run(store, spec, small_splits, callbacks=[interrupt_at(1)])
    paths = store.paths(spec.key())
    assert paths["checkpoint"].is_file()
    assert not paths["entry"].exists() and not paths["model"].exists()  # nothing cached for an unfinished run
    assert store.cached(spec) is None

    epochs = []
    resumed = run(store, spec, small_splits, callbacks=[lambda e, h: epochs.append(e)])
    assert epochs == [2]  # only the missing epoch was trained
    assert not files_under(store.root / "checkpoints")

    fresh = run(Store(tmp_path / "uninterrupted"), spec, small_splits)
    assert resumed.history.metrics() == fresh.history.metrics()
    assert resumed.metrics == fresh.metrics
    assert same_weights(resumed.trained_model.model, fresh.trained_model.model)
    assert same_weights(TrainedModel.load(resumed.model_path).model, TrainedModel.load(fresh.model_path).model)


# ----------------------------------------------------------------------------- unwritable and full caches


@pytest.mark.parametrize("sub", ["", "runs", "models", "checkpoints", "locks"])
def test_read_only_cache_fails_before_training(small_splits, tmp_path, monkeypatch, sub):
    forbid_training(monkeypatch)
    root = tmp_path / "cache"
    for other in ("runs", "models", "checkpoints", "locks"):
        if sub and other != sub:
            (root / other).mkdir(parents=True)
    folder = root / sub if sub else root
    with read_only_dir(folder):
        with pytest.raises(OutputError) as info:
            run(Store(root), bind(small_splits), small_splits)
    message = str(info.value)
    assert str(folder / "runs" if not sub else folder) in message
    assert "permission denied" in message and "EMNIST_CACHE" in message
    assert not files_under(root, "*.json") and not files_under(root, "*.pt")


def test_too_little_free_space_fails_before_training(small_splits, tmp_path, monkeypatch):
    forbid_training(monkeypatch)
    monkeypatch.setattr(
        paths_module.shutil, "disk_usage", lambda path: SimpleNamespace(total=2**30, used=2**30 - 2**20, free=2**20)
    )
    root = tmp_path / "cache"
    with pytest.raises(OutputError, match="not enough free space") as info:
        run(Store(root), bind(small_splits), small_splits)
    assert str(root) in str(info.value) and "1 MiB free" in str(info.value)


# ----------------------------------------------------------------------------- other processes

_PRELUDE = f"""
import json, sys, time
from pathlib import Path
sys.path[:0] = [{str(PROJECT_ROOT)!r}, {str(TESTS_DIR)!r}]
import torch
torch.set_num_threads(1)
from helpers import STANDIN_DIR, small_profile, tiny_spec
from emnist_utils.core.data import load_emnist
from emnist_utils.core.splits import make_splits
from emnist_utils.experiments import store as store_module
data = load_emnist(STANDIN_DIR, "standin", download=False)
splits = make_splits(data, 0, train_limit=1500, val_limit=500, test_limit=470)
spec = tiny_spec(epochs=1).bind(splits, small_profile())
root = Path(sys.argv[1])
"""

_TWIN = (
    _PRELUDE
    + """
tag, shared = sys.argv[2], Path(sys.argv[3])
real = store_module.train_run
def counted(*args, **kwargs):
    with open(shared / "trainings.txt", "a") as f:
        f.write(tag + "\\n")
    time.sleep(1.5)  # hold the run's lock long enough for the other process to arrive
    return real(*args, **kwargs)
store_module.train_run = counted
(shared / f"ready-{tag}").write_text("")
while not (shared / "go").exists():
    time.sleep(0.01)
store = store_module.Store(root)
result = store.run(spec, splits, device="cpu", progress=False)
print(json.dumps({"trained_here": store.trained_here, "key": result.key, "metrics": result.metrics,
                  "finished": result.environment["finished_utc"]}))
"""
)


def _python(script: str, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=PROJECT_ROOT,
        env=dict(os.environ),
        **kwargs,
    )


def test_two_processes_train_one_run_once(small_splits, tmp_path, monkeypatch, capsys):
    """This process and a second one ask for the same run at the same moment: one trains it, the other waits
    on the run's lock and then returns the stored result."""
    root, shared = tmp_path / "cache", tmp_path / "shared"
    shared.mkdir()
    spec = tiny_spec(epochs=1).bind(small_splits, small_profile())
    real = store_module.train_run

    def counted(*args, **kwargs):
        with open(shared / "trainings.txt", "a") as f:
            f.write("parent\n")
        time.sleep(1.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(store_module, "train_run", counted)
    child = _python(_TWIN, root, "child", shared)
    try:
        deadline = time.monotonic() + 120
        while not (shared / "ready-child").exists():
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the other process did not start"
            time.sleep(0.02)
        (shared / "go").write_text("")
        store = Store(root)
        mine = run(store, spec, small_splits)
        out, err = child.communicate(timeout=180)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err
    theirs = json.loads(out.strip().splitlines()[-1])
    assert sorted((shared / "trainings.txt").read_text().split()) in (["child"], ["parent"])  # trained once
    assert sorted([store.trained_here, theirs["trained_here"]]) == [0, 1]
    assert theirs["key"] == mine.key
    assert theirs["metrics"] == mine.metrics
    assert theirs["finished"] == mine.environment["finished_utc"]  # the waiter returned the very same entry
    waiter_err = err if theirs["trained_here"] == 0 else capsys.readouterr().err
    assert "waiting: another process is training" in waiter_err  # it really waited on the lock
    assert Store(root).cached(spec) is not None
    assert not files_under(root / "checkpoints") and not files_under(root, "*.tmp")


_FULL_DISK = (
    _PRELUDE
    + """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write then fails with EFBIG instead of killing us
store = store_module.Store(root)
calls = []
real = store_module.train_run
store_module.train_run = lambda *a, **k: calls.append(1) or real(*a, **k)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    store.run(spec, splits, device="cpu", progress=False)
except BaseException as exc:
    print(json.dumps({"type": type(exc).__name__, "message": str(exc), "trained": len(calls)}))
    sys.exit(3)
print(json.dumps({"type": None}))
"""
)


def test_write_failure_during_training_names_the_file_and_leaves_no_entry(small_splits, tmp_path):
    root = tmp_path / "cache"
    process = _python(_FULL_DISK, root)
    out, err = process.communicate(timeout=180)
    assert process.returncode == 3, (out, err)
    report = json.loads(out.strip().splitlines()[-1])
    spec = tiny_spec(epochs=1).bind(small_splits, small_profile())
    checkpoint = Store(root).paths(spec.key())["checkpoint"]
    assert report["trained"] == 1  # the failure came during training (its first checkpoint)
    assert report["type"] == "OutputError"
    assert str(checkpoint) in report["message"]
    assert "file too large" in report["message"]
    # nothing half-written is left to be mistaken for a result
    assert not files_under(root / "runs") and not files_under(root / "models")
    assert not files_under(root / "checkpoints") and not files_under(root, "*.tmp")
    assert Store(root).cached(spec) is None
    # and the same store trains the run normally once writing works again
    assert run(Store(root), spec, small_splits).history.epochs == 1


# ----------------------------------------------------------------------------- validation metrics and results


def _splits(train_labels, val_labels, classes=("a", "b", "c"), test_balanced=True) -> Splits:
    train_labels, val_labels = torch.tensor(train_labels), torch.tensor(val_labels)
    blank = torch.zeros(len(train_labels), 28, 28, dtype=torch.uint8)
    return Splits(
        blank,
        train_labels,
        blank[: len(val_labels)],
        val_labels,
        blank[:1],
        torch.tensor([0]),
        0.5,
        0.25,
        list(classes),
        {"dataset": "x", "split": "x", "checksum": "x"},
        test_balanced=test_balanced,
    )


def test_validation_metrics_by_hand():
    # training prior (0.8, 0.1, 0.1); the second example (class b) is lost to the frequent class a until a
    # quarter of the log prior is taken off
    splits = _splits([0] * 8 + [1, 2], [0, 1])
    logits = torch.tensor([[3.0, 0.0, 0.0], [1.0, 0.5, 0.0]])
    m = validation_metrics(logits, splits)
    assert m["val_acc"] == pytest.approx(50.0) and m["val_balanced_acc"] == pytest.approx(50.0)
    assert m["adjustment_strength"] == 0.25  # the weakest adjustment that reaches the best score
    assert m["val_acc_adjusted"] == pytest.approx(100.0) and m["val_balanced_acc_adjusted"] == pytest.approx(100.0)
    expected_loss = (-torch.log_softmax(logits, 1)[[0, 1], [0, 1]]).mean()
    assert m["val_loss"] == pytest.approx(float(expected_loss))
    assert m["selection_metric"] == "balanced"
    assert validation_metrics(logits, _splits([0] * 8 + [1, 2], [0, 1], test_balanced=False))["selection_metric"] == (
        "plain"
    )


def test_validation_metrics_balanced_differs_from_plain():
    splits = _splits([0, 1, 2], [0, 0, 0, 1])
    logits = torch.tensor([[1.0, 0.0, 0.0]] * 4)  # always class a: 3 of 4 right, half the classes present
    m = validation_metrics(logits, splits)
    assert m["val_acc"] == pytest.approx(75.0) and m["val_balanced_acc"] == pytest.approx(50.0)
    assert m["adjustment_strength"] == 0.0  # a uniform prior: no adjustment


def test_selection_score_follows_the_selection_metric():
    assert fake_result(80.0, 70.0, selection_metric="balanced").selection_score() == 70.0
    assert fake_result(80.0, 70.0, selection_metric="plain").selection_score() == 80.0


def test_a_model_file_replaced_after_training_is_not_served(small_splits):
    """The entry records the model file's sha256: a damaged or swapped file makes the run train again."""
    store = Store()
    spec = bind(small_splits, epochs=1)
    first = run(store, spec, small_splits)
    other = run(store, bind(small_splits, epochs=1, seed=5), small_splits)
    first.model_path.write_bytes(other.model_path.read_bytes())
    with pytest.warns(UserWarning, match="not the one its entry recorded"):
        assert store.cached(spec) is None


# ----------------------------------------------------------------------------- writers killed mid-write (issue 20)

_KILLED_WHILE_WRITING = (
    _PRELUDE
    + """
import os, signal
die_at = int(sys.argv[2])
spec = tiny_spec(epochs=2).bind(splits, small_profile())
real_fsync, calls = os.fsync, []
def fsync(fd):  # every file of the store is flushed before it replaces the old one: die there, as kill -9 would
    calls.append(fd)
    if len(calls) == die_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_fsync(fd)
os.fsync = fsync
store_module.Store(root).run(spec, splits, device="cpu", progress=False)
"""
)


@pytest.mark.parametrize("die_at, what", [(2, "checkpoint"), (3, "model file")])
def test_temporary_files_of_a_killed_writer_are_swept_and_the_run_resumes(small_splits, tmp_path, die_at, what):
    """kill -9 while the second epoch's checkpoint (or the trained-model file) is being written left `.tmp` files in
    the cache for ever. The store removes them when it opens, and the resumed run ends as an uninterrupted one."""
    root = tmp_path / "cache"
    child = _python(_KILLED_WHILE_WRITING, root, die_at)
    _, err = child.communicate(timeout=300)
    assert child.returncode == -9, err
    left = files_under(root, "*.tmp")
    assert len(left) == 1 and left[0].parent.name == ("checkpoints" if what == "checkpoint" else "models")
    assert left[0].stat().st_size > 0  # it was being written

    store = Store(root)
    assert store.swept == left and not files_under(root, "*.tmp")
    spec = tiny_spec(epochs=2).bind(small_splits, small_profile())
    epochs = []
    resumed = run(store, spec, small_splits, callbacks=[lambda e, h: epochs.append(e)])
    assert epochs == ([2] if what == "checkpoint" else [])  # resumed from epoch 1's (or 2's) checkpoint
    fresh = run(Store(tmp_path / "uninterrupted"), spec, small_splits)
    assert resumed.history.metrics() == fresh.history.metrics()
    assert same_weights(resumed.trained_model.model, fresh.trained_model.model)
    assert not files_under(root, "*.tmp") and not files_under(root / "checkpoints")


_HOLDS_THE_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


def test_temporary_files_of_a_running_writer_are_kept(tmp_path):
    """A `.tmp` file whose run is being written by a live process (which holds the run's lock) is not touched;
    one of a run nobody holds is removed, under its lock."""
    store = Store(tmp_path / "cache")
    busy, idle = "a" * 24, "b" * 24
    for key in (busy, idle):
        for path in store.paths(key).values():
            path.parent.mkdir(parents=True, exist_ok=True)
        store.paths(key)["lock"].touch()
        (store.root / "models" / f".{key}.pt.x1y2z3.tmp").write_bytes(b"partial")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDS_THE_LOCK, str(store.paths(busy)["lock"])], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        reopened = Store(store.root)
        assert [p.name for p in reopened.swept] == [f".{idle}.pt.x1y2z3.tmp"]
        assert [p.name for p in files_under(store.root, "*.tmp")] == [f".{busy}.pt.x1y2z3.tmp"]
    finally:
        holder.kill()
        holder.wait()
    assert [p.name for p in Store(store.root).swept] == [f".{busy}.pt.x1y2z3.tmp"]  # its writer is gone now


def test_sweeping_a_read_only_cache_changes_nothing_and_does_not_fail(tmp_path):
    root = tmp_path / "cache"
    stale = root / "runs" / ".cafe.json.abc.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_text("{")
    with read_only_dir(root / "runs"):
        assert Store(root).swept == []
    assert stale.exists()
    assert Store(root).swept == [stale] and not stale.exists()
