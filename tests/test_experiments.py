"""emnist_utils.experiments: the results cache, its keys, its self-checks, and weights files."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import record_calls
import torch

from emnist_utils import experiments as X
from emnist_utils.data import make_splits
from emnist_utils.evaluation import evaluate_loss_accuracy
from emnist_utils.experiments import WeightsError, load_weights, run_trial, save_weights
from emnist_utils.models import FINAL_CONFIG, Architecture1, TrialConfig, build_model
from emnist_utils.paths import cache_dir
from emnist_utils.profiles import PROFILES, Profile, get_profile
from emnist_utils.training import REPORT_RECIPE, Recipe

PROFILE = Profile("test", max_epochs=1)
# 5 epochs as configured; PROFILE runs 1.
CFG = FINAL_CONFIG.with_(c1=4, c2=8, hidden=32, batch_size=100, epochs=5, name="tiny")


@pytest.fixture(scope="module")
def splits(standin_data):
    return make_splits(standin_data, 0, train_limit=1000, val_limit=300, test_limit=300)


@pytest.fixture
def fit_calls(monkeypatch):
    """Count the trainings run_trial starts (each call's config)."""
    return record_calls(monkeypatch, X, "fit", record=lambda args: args[2])


def forbid_training(monkeypatch):
    def no_fit(*args, **kwargs):
        raise AssertionError("run_trial trained although an identical result is cached")

    monkeypatch.setattr(X, "fit", no_fit)


def trial(splits, cfg=CFG, profile=PROFILE, **kw):
    kw.setdefault("device", "cpu")
    return run_trial(cfg, splits, profile, progress=False, **kw)


def entry_path(key) -> Path:
    return cache_dir() / "results" / f"{key}.json"


def tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- the cache


def test_cache_is_isolated_from_the_repository():
    project_root = Path(X.__file__).resolve().parent.parent
    assert cache_dir() == Path(os.environ["EMNIST_CACHE"]).resolve()
    assert project_root not in cache_dir().parents


def test_run_trial_caches(splits, fit_calls, monkeypatch):
    first = trial(splits)
    assert len(fit_calls) == 1 and fit_calls[0].epochs == 1  # the profile caps the epochs
    assert first.config.epochs == 1 and first.history.epochs == 1 and first.profile == "test"
    assert first.model is None and first.parameters > 0
    assert first.provenance == splits.provenance
    assert first.key == X.run_key(PROFILE.apply(CFG), REPORT_RECIPE, splits, PROFILE, 0)
    assert entry_path(first.key).is_file()

    forbid_training(monkeypatch)
    second = trial(splits)
    assert second.key == first.key
    assert second.history.metrics() == first.history.metrics()
    assert second.val_acc == first.val_acc and second.parameters == first.parameters
    assert second.train_seconds == first.train_seconds  # the stored timing, not a new one


def test_retrain_ignores_the_cache(splits, fit_calls):
    first = trial(splits)
    again = trial(splits, retrain=True)
    assert len(fit_calls) == 2
    assert again.history.metrics() == first.history.metrics()  # CPU runs are repeatable


def test_run_key_changes_with_everything_that_changes_the_result(splits):
    cfg = PROFILE.apply(CFG)
    base = X.run_key(cfg, REPORT_RECIPE, splits, PROFILE, 0)
    assert base == X.run_key(cfg, REPORT_RECIPE, splits, PROFILE, 0)
    other_data = dataclasses.replace(splits, provenance={**splits.provenance, "checksum": "0" * 64})
    smaller = make_splits_like(splits, 999)
    variants = {
        "lr": X.run_key(cfg.with_(lr=2e-3), REPORT_RECIPE, splits, PROFILE, 0),
        "batch": X.run_key(cfg.with_(batch_size=99), REPORT_RECIPE, splits, PROFILE, 0),
        "seed": X.run_key(cfg, REPORT_RECIPE, splits, PROFILE, 1),
        "data": X.run_key(cfg, REPORT_RECIPE, other_data, PROFILE, 0),
        "sizes": X.run_key(cfg, REPORT_RECIPE, smaller, PROFILE, 0),
        "profile": X.run_key(cfg, REPORT_RECIPE, splits, Profile("test2", max_epochs=1), 0),
        "profile limits": X.run_key(cfg, REPORT_RECIPE, splits, Profile("test", max_epochs=2), 0),
        "recipe": X.run_key(cfg, Recipe(optimizer="sgd"), splits, PROFILE, 0),
        "arch": X.run_key(cfg.with_(arch="arch1"), REPORT_RECIPE, splits, PROFILE, 0),
    }
    assert base not in variants.values()
    assert len(set(variants.values())) == len(variants)
    # labels that do not change the weights do not change the key
    assert X.run_key(cfg.with_(name="renamed", report_val_acc=1.0), REPORT_RECIPE, splits, PROFILE, 0) == base
    assert X.run_key(cfg, Recipe(), splits, PROFILE, 0) == base


def make_splits_like(splits, n):
    """`splits` with one training example fewer (same data checksum, different sizes)."""
    return dataclasses.replace(splits, train_images=splits.train_images[:n], train_labels=splits.train_labels[:n])


def test_changed_hyperparameter_trains_again(splits, fit_calls):
    a = trial(splits)
    b = trial(splits, cfg=CFG.with_(lr=2e-3))
    c = trial(splits, seed=1)
    d = trial(splits, profile=Profile("test-other", max_epochs=1))
    assert len(fit_calls) == 4
    assert len({a.key, b.key, c.key, d.key}) == 4
    assert a.history.metrics() != b.history.metrics() and a.history.metrics() != c.history.metrics()


def _garbage(path):
    path.write_text("{not json")


def _truncated(path):
    text = path.read_text()
    path.write_text(text[: len(text) // 2])


def _edited_history(path):
    entry = json.loads(path.read_text())
    entry["payload"]["history"]["val_acc"] = [99.9]  # the stored sha256 is left as it was
    path.write_text(json.dumps(entry))


def _foreign_key(path):
    # a self-consistent entry (valid sha256) that belongs to another run
    entry = json.loads(path.read_text())
    entry["payload"]["key"] = "someone-else"
    entry["payload"]["history"]["val_acc"] = [99.9]
    entry["sha256"] = hashlib.sha256(json.dumps(entry["payload"], sort_keys=True).encode()).hexdigest()
    path.write_text(json.dumps(entry))


def _empty(path):
    path.write_text("")


@pytest.mark.parametrize("damage", [_garbage, _truncated, _edited_history, _foreign_key, _empty],
                         ids=lambda f: f.__name__.strip("_"))
def test_corrupt_cache_entry_is_recomputed(splits, fit_calls, damage):
    first = trial(splits)
    path = entry_path(first.key)
    damage(path)
    with pytest.warns(UserWarning, match="corrupt"):
        again = trial(splits)
    assert len(fit_calls) == 2  # recomputed, not trusted
    assert again.val_acc != 99.9
    assert again.history.metrics() == first.history.metrics()
    entry = json.loads(path.read_text())  # and the entry is whole again
    assert entry["payload"]["key"] == first.key
    assert entry["sha256"] == hashlib.sha256(json.dumps(entry["payload"], sort_keys=True).encode()).hexdigest()


def test_finished_run_leaves_no_checkpoint(splits):
    trial(splits)
    checkpoints = cache_dir() / "checkpoints"
    assert not checkpoints.exists() or not any(checkpoints.iterdir())
    assert not list(cache_dir().rglob("*.tmp"))


class Interrupt(Exception):
    pass


def test_interrupted_trial_resumes(splits, fit_calls, monkeypatch, tmp_path):
    profile = Profile("test-resume", max_epochs=2)

    def stop(epoch, history):
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        trial(splits, profile=profile, callbacks=[stop])
    checkpoints = list((cache_dir() / "checkpoints").iterdir())
    assert len(checkpoints) == 1
    assert not list(cache_dir().glob("results/*.json"))  # nothing cached for an unfinished run

    seen = []
    resumed = trial(splits, profile=profile, callbacks=[lambda e, h: seen.append(e)])
    assert seen == [2]  # only the missing epoch was trained
    assert not any((cache_dir() / "checkpoints").iterdir())

    monkeypatch.setenv("EMNIST_CACHE", str(tmp_path / "fresh-cache"))
    uninterrupted = trial(splits, profile=profile)
    assert uninterrupted.key == resumed.key
    assert uninterrupted.history.metrics() == resumed.history.metrics()


def test_keep_model_roundtrip_and_disk_use(splits, fit_calls, monkeypatch):
    # the report's final architecture, one epoch (PROFILE), weights kept
    first = trial(splits, cfg=FINAL_CONFIG, keep_model=True)
    assert first.model is not None and first.history.epochs == 1
    assert (cache_dir() / "weights" / f"{first.key}.pt").is_file()
    size = tree_size(cache_dir())
    assert size < 20 * 2**20, f"cache holds {size / 2**20:.1f} MiB after one short run"

    monkeypatch.setattr(X, "fit", lambda *a, **k: pytest.fail("trained although weights are cached"))
    second = trial(splits, cfg=FINAL_CONFIG, keep_model=True)
    assert second.model is not None and second.model is not first.model
    assert same_state(first.model, second.model)
    # and they are the trained weights: they reproduce the recorded validation accuracy
    _, acc = evaluate_loss_accuracy(second.model, splits.val_images, splits.val_labels, splits.mean, splits.std)
    assert acc == pytest.approx(first.val_acc, abs=1e-4)


def test_keep_model_retrains_when_weights_are_missing(splits, fit_calls):
    first = trial(splits, keep_model=True)
    (cache_dir() / "weights" / f"{first.key}.pt").unlink()
    second = trial(splits, keep_model=True)
    assert len(fit_calls) == 2 and second.model is not None
    assert same_state(first.model, second.model)


def test_keep_model_refuses_weights_of_another_run(splits, fit_calls):
    a = trial(splits, keep_model=True)
    b = trial(splits, cfg=CFG.with_(lr=2e-3), keep_model=True)
    weights = cache_dir() / "weights"
    (weights / f"{b.key}.pt").write_bytes((weights / f"{a.key}.pt").read_bytes())
    with pytest.warns(UserWarning, match="unusable"):
        again = trial(splits, cfg=CFG.with_(lr=2e-3), keep_model=True)
    assert len(fit_calls) == 3  # retrained rather than returning run a's weights
    assert same_state(again.model, b.model) and not same_state(again.model, a.model)


# ----------------------------------------------------------------------------- weights files

SMALL1 = TrialConfig(arch="arch1", lr=1e-3, batch_size=10, epochs=1, c1=4, c2=6, hidden=16, dropout=0.3, name="w")
PROVENANCE = {"dataset": "emnist-test", "split": "test", "checksum": "ab" * 32}


def saved_arch1(path) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(SMALL1)
    save_weights(model, SMALL1, path, provenance=PROVENANCE, mean=0.17, std=0.33, extra={"note": "x"})
    return model


def test_save_load_weights_roundtrip(tmp_path):
    path = tmp_path / "w" / "model.pt"
    model = saved_arch1(path)
    loaded, meta = load_weights(path)
    assert isinstance(loaded, Architecture1) and not loaded.training
    assert same_state(model, loaded)
    assert meta["config"]["c2"] == 6 and meta["config"]["name"] == "w"
    assert meta["provenance"] == PROVENANCE and meta["mean"] == 0.17 and meta["std"] == 0.33
    assert meta["note"] == "x"
    assert same_state(model, load_weights(path, expected_arch="arch1")[0])
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(model.eval()(x), loaded(x))
    assert not list(path.parent.glob("*.tmp"))


def test_load_weights_of_another_architecture(tmp_path):
    path = tmp_path / "model.pt"
    saved_arch1(path)
    with pytest.raises(WeightsError, match="'arch1', not 'arch2'"):
        load_weights(path, expected_arch="arch2")


def test_load_weights_that_do_not_fit(tmp_path):
    path = tmp_path / "model.pt"
    saved_arch1(path)
    payload = torch.load(path, weights_only=False)
    payload["config"]["c2"] = 9
    torch.save(payload, path)
    with pytest.raises(WeightsError, match=r"do not fit architecture 'arch1'.*'c2': 9") as info:
        load_weights(path)
    assert str(path) in str(info.value)


def test_load_weights_refuses_foreign_files(tmp_path):
    with pytest.raises(WeightsError, match="no weights file"):
        load_weights(tmp_path / "missing.pt")
    random_file = tmp_path / "random.pt"
    random_file.write_bytes(np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes())
    with pytest.raises(WeightsError, match="not a readable weights file"):
        load_weights(random_file)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": build_model(SMALL1).state_dict()}, other)
    with pytest.raises(WeightsError, match="not an emnist-cnn weights file"):
        load_weights(other)
    bare = tmp_path / "bare.pt"
    torch.save(build_model(SMALL1).state_dict(), bare)
    with pytest.raises(WeightsError):
        load_weights(bare)


def test_load_weights_with_invalid_config_raises_weights_error(tmp_path):
    path = tmp_path / "model.pt"
    saved_arch1(path)
    payload = torch.load(path, weights_only=False)
    payload["config"]["c2"] = -3
    torch.save(payload, path)
    with pytest.raises(WeightsError):
        load_weights(path)


# ----------------------------------------------------------------------------- profiles


def test_profiles(monkeypatch):
    assert get_profile("smoke") is PROFILES["smoke"] and get_profile() is PROFILES["full"]
    monkeypatch.setenv("EMNIST_PROFILE", "smoke")
    assert get_profile().name == "smoke"
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("nope")
    assert PROFILES["smoke"].apply(FINAL_CONFIG).epochs == 1
    assert PROFILES["full"].apply(FINAL_CONFIG) == FINAL_CONFIG
    assert PROFILES["smoke"].limits() == {"train_limit": 3000, "val_limit": 1000, "test_limit": 2000}
