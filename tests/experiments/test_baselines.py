"""The scikit-learn baselines (emnist_utils.experiments.baselines): they learn, their results are cached under a
complete key, corrupt entries are recomputed, the training subset is capped as declared and by the profile, and
unknown names fail clearly. Runs on the small stand-in splits."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from helpers import record_calls
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from emnist_utils.core.paths import cache_dir
from emnist_utils.experiments import baselines
from emnist_utils.experiments.baselines import (
    BASELINES,
    Baseline,
    baseline_key,
    baseline_table,
    features,
    run_baseline,
    train_subset_indices,
)
from emnist_utils.experiments.profiles import PROFILES, Profile

SMOKE, FULL = PROFILES["smoke"], PROFILES["full"]
FAST = "PCA(50) + k-NN"  # the quickest to fit: used where only the caching matters
N_TRAIN = 1500  # small_splits

# Accuracy floors (%) on 1,500 training images, 47 classes (chance: 2.1%), well below what each reaches there.
FLOORS = {
    "logistic regression": 30,
    "PCA(50) + k-NN": 35,
    "PCA(50) + RBF SVM": 40,
    "histogram gradient boosting": 25,
    "random forest": 35,
    "MLP (1 hidden layer)": 30,
}
# Lower caps for the three slowest fits, so that the file stays quick on 2 cores; the pipelines are otherwise
# exactly the ones BASELINES builds.
TEST_CAPS = {
    "logistic regression": {"clf__max_iter": 50},
    "histogram gradient boosting": {"clf__max_iter": 20},
    "random forest": {"clf__n_estimators": 60},
}


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    """One BLAS / OpenMP thread, like the one torch thread the tests use: on a small shared machine two
    contending threads make these fits many times slower."""
    with threadpool_limits(1):
        yield


@pytest.fixture
def fit_counter(monkeypatch):
    """Every Pipeline.fit call's pipeline (and it still fits)."""
    return record_calls(monkeypatch, Pipeline, "fit", record=lambda args: args[0])


def entry_path(key):
    return cache_dir() / "baselines" / f"{key}.json"


def test_every_baseline_has_a_floor():
    assert list(FLOORS) == list(BASELINES)


@pytest.mark.parametrize("name", list(BASELINES))
def test_each_baseline_beats_chance(name, small_splits, monkeypatch):
    if name in TEST_CAPS:
        full = BASELINES[name]
        capped = dataclasses.replace(full, make=lambda seed: full.make(seed).set_params(**TEST_CAPS[name]))
        monkeypatch.setitem(BASELINES, name, capped)
    result = run_baseline(name, small_splits, SMOKE)
    assert result["name"] == name
    assert result["val_acc"] > FLOORS[name], result
    assert result["test_acc"] > FLOORS[name], result
    assert 0 < result["val_balanced_acc"] <= 100
    subset = BASELINES[name].train_subset
    assert result["train_images_used"] == (N_TRAIN if subset is None else min(subset, N_TRAIN))
    assert result["fit_seconds"] > 0 and result["predict_seconds"] > 0
    assert "iterations" in result
    assert result["provenance"]["checksum"] == small_splits.provenance["checksum"]
    assert result["sizes"] == {"train": 1500, "validation": 500, "test": 470}
    assert result["seed"] == 0 and result["split_seed"] == 0
    assert entry_path(result["key"]).is_file()


def test_second_call_returns_cached_result_without_refitting(small_splits, monkeypatch):
    first = run_baseline(FAST, small_splits, SMOKE)

    def no_fit(self, *args, **kwargs):
        raise AssertionError("refitted although the result is cached")

    monkeypatch.setattr(Pipeline, "fit", no_fit)
    assert run_baseline(FAST, small_splits, SMOKE) == first
    with pytest.raises(AssertionError, match="refitted"):
        run_baseline(FAST, small_splits, SMOKE, retrain=True)


def test_root_argument_chooses_the_cache(small_splits, tmp_path, fit_counter):
    result = run_baseline(FAST, small_splits, SMOKE, root=tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / "baselines" / f"{result['key']}.json").is_file()
    assert not entry_path(result["key"]).exists()
    run_baseline(FAST, small_splits, SMOKE, root=tmp_path / "elsewhere")
    assert len(fit_counter) == 1


def test_other_seed_is_a_separate_entry(small_splits, fit_counter):
    a = run_baseline(FAST, small_splits, SMOKE, seed=0)
    b = run_baseline(FAST, small_splits, SMOKE, seed=1)
    assert a["key"] != b["key"] and len(fit_counter) == 2


@pytest.mark.parametrize("damage", ["edit", "wrong sha", "truncate", "garbage"])
def test_corrupt_entry_is_recomputed(small_splits, fit_counter, damage):
    first = run_baseline(FAST, small_splits, SMOKE)
    path = entry_path(first["key"])
    text = path.read_text()
    if damage == "edit":  # a plausible but tampered number: the checksum no longer matches
        entry = json.loads(text)
        entry["payload"]["val_acc"] = 99.9
        path.write_text(json.dumps(entry))
    elif damage == "wrong sha":
        entry = json.loads(text)
        entry["sha256"] = "f" * 64
        path.write_text(json.dumps(entry))
    elif damage == "truncate":
        path.write_text(text[: len(text) // 2])
    else:
        path.write_bytes(b"\x00\xff not json")
    with pytest.warns(UserWarning, match="corrupt"):
        again = run_baseline(FAST, small_splits, SMOKE)
    assert len(fit_counter) == 2
    assert again["val_acc"] == pytest.approx(first["val_acc"]) != 99.9
    assert json.loads(path.read_text())["payload"]["val_acc"] == pytest.approx(first["val_acc"])


def test_unknown_name_lists_the_valid_ones(small_splits):
    with pytest.raises(ValueError, match="unknown baseline 'svm'") as info:
        run_baseline("svm", small_splits, SMOKE)
    for name in BASELINES:
        assert repr(name) in str(info.value)


def test_key_covers_data_split_seed_and_parameters(small_splits):
    pipeline = BASELINES[FAST](0)
    key = baseline_key(FAST, pipeline, small_splits, 0, N_TRAIN)
    assert key == baseline_key(FAST, BASELINES[FAST](0), small_splits, 0, N_TRAIN)  # stable
    other_data = dataclasses.replace(small_splits, provenance={**small_splits.provenance, "checksum": "0" * 64})
    other_split = dataclasses.replace(small_splits, seed=1)
    fewer_val = dataclasses.replace(small_splits, val_labels=small_splits.val_labels[:400])
    fewer_test = dataclasses.replace(small_splits, test_labels=small_splits.test_labels[:400])
    variants = [
        baseline_key(FAST, pipeline, other_data, 0, N_TRAIN),
        baseline_key(FAST, pipeline, other_split, 0, N_TRAIN),
        baseline_key(FAST, pipeline, fewer_val, 0, N_TRAIN),
        baseline_key(FAST, pipeline, fewer_test, 0, N_TRAIN),
        baseline_key(FAST, pipeline, small_splits, 1, N_TRAIN),
        baseline_key(FAST, pipeline, small_splits, 0, 1000),
        baseline_key(FAST, BASELINES[FAST](0).set_params(clf__n_neighbors=3), small_splits, 0, N_TRAIN),
        baseline_key(FAST, BASELINES[FAST](0).set_params(pca__n_components=40), small_splits, 0, N_TRAIN),
        baseline_key("random forest", pipeline, small_splits, 0, N_TRAIN),
    ]
    assert len({key, *variants}) == len(variants) + 1
    assert key.startswith("baseline-")


def test_key_is_the_same_under_every_profile(small_splits, fit_counter):
    """The profile only matters through what it changes (the splits, the subset): the same fit is shared."""
    a = run_baseline(FAST, small_splits, SMOKE)
    b = run_baseline(FAST, small_splits, FULL)  # 1,500 images < the smoke cap of 2,000: the same fit
    assert a["key"] == b["key"] and len(fit_counter) == 1


def test_changed_checksum_is_not_served_from_cache(small_splits, fit_counter):
    run_baseline(FAST, small_splits, SMOKE)
    other = dataclasses.replace(small_splits, provenance={**small_splits.provenance, "checksum": "0" * 64})
    result = run_baseline(FAST, other, SMOKE)
    assert len(fit_counter) == 2 and result["provenance"]["checksum"] == "0" * 64


def test_declared_subset_is_seeded_and_recorded(small_splits, monkeypatch, fit_counter):
    monkeypatch.setitem(BASELINES, "tiny", Baseline("tiny", BASELINES[FAST].make, train_subset=300))
    result = run_baseline("tiny", small_splits, SMOKE)
    assert result["train_images_used"] == 300 and result["train_subset"] == 300
    assert len(fit_counter[0].steps[-1][1]._fit_X) == 300


def test_profile_caps_the_training_subset(small_splits, monkeypatch, fit_counter):
    capped = Profile("capped", "", baseline_train_limit=400)
    result = run_baseline(FAST, small_splits, capped)
    assert result["train_images_used"] == 400 and len(fit_counter[-1].steps[-1][1]._fit_X) == 400
    # the smaller of the baseline's own subset and the profile's cap
    monkeypatch.setitem(BASELINES, "tiny", Baseline("tiny", BASELINES[FAST].make, train_subset=300))
    assert run_baseline("tiny", small_splits, capped)["train_images_used"] == 300
    assert run_baseline("tiny", small_splits, Profile("c", "", baseline_train_limit=200))["train_images_used"] == 200
    # a cap above the training part uses all of it
    assert run_baseline(FAST, small_splits, Profile("c", "", baseline_train_limit=5000))["train_images_used"] == 1500


def test_train_subset_indices():
    a, b = train_subset_indices(2000, 300, 0), train_subset_indices(2000, 300, 1)
    assert np.array_equal(a, train_subset_indices(2000, 300, 0)) and not np.array_equal(a, b)
    assert len(np.unique(a)) == 300 and a.max() < 2000 and np.all(np.diff(a) > 0)
    assert train_subset_indices(2000, None, 0) is None and train_subset_indices(2000, 5000, 0) is None
    assert train_subset_indices(2000, 2000, 0) is None


def test_features_are_flat_float32_in_unit_range():
    images = torch.tensor([[[0, 255], [128, 1]]], dtype=torch.uint8)
    x = features(images)
    assert x.dtype == np.float32 and x.shape == (1, 4)
    assert x.min() == 0.0 and x.max() == 1.0 and x[0, 2] == pytest.approx(128 / 255)
    assert np.array_equal(features(images.numpy()), x)


def test_table_has_one_row_per_baseline(small_splits):
    results = baselines.run_baselines(small_splits, SMOKE, [FAST, "PCA(50) + RBF SVM"])
    table = baseline_table(results)
    assert list(table["baseline"]) == [FAST, "PCA(50) + RBF SVM"]
    assert list(table.columns) == [
        "baseline",
        "train_images_used",
        "fit_seconds",
        "predict_seconds",
        "val_acc_%",
        "test_acc_%",
    ]
    assert table.loc[0, "val_acc_%"] == round(results[0]["val_acc"], 2)
    assert list(baseline_table([]).columns) == list(table.columns)
