"""Classic scikit-learn baselines on the same train / validation / test split as the CNNs.

Each baseline is an sklearn `Pipeline` over the flattened pixels (float32, scaled to [0, 1]) with a bounded
fit: iterations are capped, and the estimators that scale badly with the number of examples are trained on
a seeded random subset of the training images (`Baseline.train_subset`; None = all of them). The subset
sizes and caps were chosen so that each fit on the full stand-in profile (61,528 training images) stays
under about 5 minutes on the project's 2-core CPU machine. Measured there (sklearn 1.9.1; fit seconds,
validation / test accuracy %; some runs shared the CPU with another process, so times are upper bounds):

    logistic regression            all    40 s   69.6 / 62.4  (100 lbfgs iterations, the cap; 180 s contended)
    PCA(50) + k-NN                 all     1 s   80.6 / 74.1  (prediction 8 s)
    PCA(50) + RBF SVM           40,000    52 s   84.4 / 79.8  (prediction 64 s; on 20,000: 13 s, 82.2 / 77.4)
    histogram gradient boosting 30,000    53 s   74.6 / 64.2  (89 rounds; on all: 173-326 s, 67.1 / 58.2)
    random forest                  all   100 s   81.4 / 73.0  (176 s contended)
    MLP (1 hidden layer)           all   167 s   81.1 / 77.0  (early stopping after 21 of at most 30 epochs)

Results are cached like the CNN runs (`store.Store`): one JSON entry per key under `<cache>/baselines/`,
carrying the sha256 of its payload, written atomically; a corrupt entry is recomputed with a warning. The key
covers the baseline name, every parameter of its pipeline, the data checksum, the split sizes and seed, the
subset size, the seed, the fingerprint of this module's code and
the scikit-learn version.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import sklearn
from sklearn.decomposition import PCA
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from ..core.evaluation import balanced_accuracy
from ..core.fingerprint import code_fingerprint, combine
from ..core.paths import cache_dir
from ..core.splits import Splits
from .profiles import Profile
from .store import read_entry, write_entry


@dataclass(frozen=True)
class Baseline:
    """A named sklearn pipeline factory plus the number of training images it is fitted on."""

    name: str
    make: Callable[[int], Pipeline]  # seed -> an unfitted pipeline
    train_subset: int | None = None  # None: all training images; else a seeded random subset of this size
    note: str = ""
    cost_exponent: float = 1.0  # fit time grows about as (training images) ** this (for the main job's plan)

    def __call__(self, seed: int = 0) -> Pipeline:
        return self.make(seed)


def _logistic(seed: int) -> Pipeline:
    return Pipeline(
        [("scale", StandardScaler()), ("clf", LogisticRegression(solver="lbfgs", max_iter=100, random_state=seed))]
    )


def _knn(seed: int) -> Pipeline:
    return Pipeline(
        [
            ("pca", PCA(50, random_state=seed)),
            ("clf", KNeighborsClassifier(n_neighbors=5, weights="distance", n_jobs=-1)),
        ]
    )


def _svm(seed: int) -> Pipeline:
    return Pipeline(
        [("pca", PCA(50, random_state=seed)), ("clf", SVC(kernel="rbf", C=10.0, gamma="scale", random_state=seed))]
    )


def _boosting(seed: int) -> Pipeline:
    return Pipeline(
        [
            ("pca", PCA(50, random_state=seed)),
            (
                "clf",
                HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, early_stopping=True, random_state=seed),
            ),
        ]
    )


def _forest(seed: int) -> Pipeline:
    return Pipeline([("clf", RandomForestClassifier(n_estimators=200, n_jobs=-1, random_state=seed))])


def _mlp(seed: int) -> Pipeline:
    return Pipeline(
        [
            ("scale", StandardScaler()),
            (
                "clf",
                MLPClassifier(
                    hidden_layer_sizes=(256,), solver="adam", early_stopping=True, max_iter=30, random_state=seed
                ),
            ),
        ]
    )


BASELINES: OrderedDict[str, Baseline] = OrderedDict(
    (b.name, b)
    for b in [
        Baseline(
            "logistic regression",
            _logistic,
            train_subset=None,
            note="linear; StandardScaler + lbfgs, at most 100 iterations "
            "(the EMNIST paper's linear classifier: 50.93% on balanced)",
        ),
        Baseline(
            "PCA(50) + k-NN", _knn, train_subset=None, note="k = 5, distance-weighted, on 50 principal components"
        ),
        Baseline(
            "PCA(50) + RBF SVM",
            _svm,
            train_subset=40_000,
            cost_exponent=2.0,
            note="SVC (C = 10) on 50 principal components; SVC is quadratic in the examples, hence the subset",
        ),
        Baseline(
            "histogram gradient boosting",
            _boosting,
            train_subset=30_000,
            note="on 50 principal components; at most 100 rounds of 47 trees, early stopping on 10% of the "
            "training part; a subset because each round costs ~5 s on 2 cores (~10 s when contended)",
        ),
        Baseline("random forest", _forest, train_subset=None, note="200 trees on the raw pixels"),
        Baseline(
            "MLP (1 hidden layer)",
            _mlp,
            train_subset=None,
            note="256 ReLU units, adam, at most 30 epochs, early stopping on 10% of the training part",
        ),
    ]
)


def get_baseline(name: str) -> Baseline:
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose one of: {', '.join(repr(n) for n in BASELINES)}")
    return BASELINES[name]


# ----------------------------------------------------------------------------- inputs and keys


def features(images) -> np.ndarray:
    """(N, 28, 28) uint8 images (tensor or array) as (N, 784) float32 in [0, 1]."""
    array = images.numpy() if hasattr(images, "numpy") else np.asarray(images)
    return array.reshape(len(array), -1).astype(np.float32) / np.float32(255.0)


def subset_size(baseline: Baseline, profile: Profile) -> int | None:
    """How many training images a baseline is fitted on under a profile (None = all)."""
    caps = [c for c in (baseline.train_subset, profile.baseline_train_limit) if c is not None]
    return min(caps) if caps else None


def estimate_seconds(name: str, splits: Splits, profile: Profile, sample: int = 2_000) -> float:
    """Rough fit-and-score time of a baseline here: measured on `sample` training images, scaled by its cost
    exponent to the images it will use, plus scoring time scaled to the validation and test parts."""
    baseline = get_baseline(name)
    n = min(len(splits.train_labels), subset_size(baseline, profile) or len(splits.train_labels))
    sample = min(sample, n)
    x, y = features(splits.train_images[:sample]), splits.train_labels[:sample].numpy()
    pipeline = baseline(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        started = time.perf_counter()
        pipeline.fit(x, y)
        fit = time.perf_counter() - started
    started = time.perf_counter()
    pipeline.predict(x[:500])
    score = (time.perf_counter() - started) / 500 * (len(splits.val_labels) + len(splits.test_labels))
    return fit * (n / sample) ** baseline.cost_exponent + score * (n / sample if baseline.cost_exponent > 1 else 1)


def train_subset_indices(n_train: int, subset: int | None, seed: int) -> np.ndarray | None:
    """Sorted indices of a seeded random subset of `subset` training images; None means all of them."""
    if subset is None or subset >= n_train:
        return None
    return np.sort(np.random.default_rng(seed).choice(n_train, size=subset, replace=False))


def describe_pipeline(pipeline: Pipeline) -> list:
    """Every step's class and parameters, as stable text (no memory addresses, no abbreviated reprs)."""
    return [
        [
            step,
            f"{type(est).__module__}.{type(est).__qualname__}",
            {k: repr(v) for k, v in sorted(est.get_params(deep=False).items())},
        ]
        for step, est in pipeline.steps
    ]


def baseline_key(name: str, pipeline: Pipeline, splits: Splits, seed: int, train_images_used: int) -> str:
    identity = {
        "baseline": name,
        "pipeline": describe_pipeline(pipeline),
        "data": splits.provenance["checksum"],
        "sizes": splits.sizes(),
        "split_seed": splits.seed,
        "train_images_used": train_images_used,
        "seed": seed,
        "sklearn": sklearn.__version__,
        "code": combine(code_fingerprint([("emnist_utils.experiments.baselines", "run_baseline")])),
    }
    return "baseline-" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


# ----------------------------------------------------------------------------- running


def _iterations(pipeline: Pipeline) -> int | None:
    """How many iterations / epochs / boosting rounds the final estimator ran (None where it has no such count),
    to show whether its cap was reached."""
    n_iter = getattr(pipeline.steps[-1][1], "n_iter_", None)
    return None if n_iter is None else int(np.max(n_iter))


def _scores(pipeline: Pipeline, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Accuracy and balanced accuracy (%) of a fitted pipeline."""
    if not len(y):
        return float("nan"), float("nan")
    predicted = pipeline.predict(x)
    return float(100.0 * np.mean(predicted == y)), balanced_accuracy(predicted, y)


@dataclass
class BaselineFit:
    """One fit of a baseline as it will be run: the pipeline, the training subset, the cache key and entry."""

    baseline: Baseline
    pipeline: Pipeline
    subset: np.ndarray | None  # indices into the training part; None = all of it
    used: int
    key: str
    entry: Path


def plan_fit(name: str, splits: Splits, profile: Profile, seed: int = 0, root: Path | None = None) -> BaselineFit:
    baseline = get_baseline(name)
    pipeline = baseline(seed)
    n_train = len(splits.train_labels)
    subset = train_subset_indices(n_train, subset_size(baseline, profile), seed)
    used = n_train if subset is None else len(subset)
    key = baseline_key(name, pipeline, splits, seed, used)
    return BaselineFit(baseline, pipeline, subset, used, key, (root or cache_dir()) / "baselines" / f"{key}.json")


def baseline_cached(name: str, splits: Splits, profile: Profile, root: Path | None = None, seed: int = 0) -> bool:
    """Whether an identical fit of baseline `name` is in the cache (without fitting anything)."""
    fit = plan_fit(name, splits, profile, seed, root)
    return read_entry(fit.entry, fit.key) is not None


def run_baseline(
    name: str, splits: Splits, profile: Profile, *, seed: int = 0, retrain: bool = False, root: Path | None = None
) -> dict:
    """Fit baseline `name` on (a seeded subset of) the training images, score it on validation and test,
    or return the cached result of an identical earlier run. Accuracies are in percent.

    Iteration caps are deliberate (bounded fit time), so sklearn's ConvergenceWarning is silenced."""
    fit = plan_fit(name, splits, profile, seed, root)
    baseline, pipeline, subset, used, key, entry_path = (
        fit.baseline,
        fit.pipeline,
        fit.subset,
        fit.used,
        fit.key,
        fit.entry,
    )
    payload = None if retrain else read_entry(entry_path, key)
    if payload is not None:
        return payload

    x_train, y_train = features(splits.train_images), splits.train_labels.numpy()
    if subset is not None:
        x_train, y_train = x_train[subset], y_train[subset]
    x_val, y_val = features(splits.val_images), splits.val_labels.numpy()
    x_test, y_test = features(splits.test_images), splits.test_labels.numpy()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        pipeline.fit(x_train, y_train)
        fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    (val_acc, val_balanced), (test_acc, _) = _scores(pipeline, x_val, y_val), _scores(pipeline, x_test, y_test)
    predict_seconds = time.perf_counter() - start

    payload = {
        "name": name,
        "train_images_used": used,
        "train_subset": baseline.train_subset,
        "fit_seconds": fit_seconds,
        "predict_seconds": predict_seconds,
        "val_acc": val_acc,
        "val_balanced_acc": val_balanced,
        "test_acc": test_acc,
        "iterations": _iterations(pipeline),
        "sizes": splits.sizes(),
        "split_seed": splits.seed,
        "seed": seed,
        "sklearn_version": sklearn.__version__,
        "cpu_count": os.cpu_count(),
        "provenance": dict(splits.provenance),
        "key": key,
    }
    write_entry(entry_path, payload)
    return payload


def run_baselines(
    splits: Splits,
    profile: Profile,
    names: Iterable[str] | None = None,
    *,
    seed: int = 0,
    retrain: bool = False,
    root: Path | None = None,
) -> list[dict]:
    """`run_baseline` for each of `names` (default: all of `BASELINES`, in order)."""
    return [run_baseline(n, splits, profile, seed=seed, retrain=retrain, root=root) for n in (names or list(BASELINES))]


def baseline_table(results: Iterable[dict]) -> pd.DataFrame:
    """One row per baseline result: training images used, fit / predict seconds, validation and test
    accuracy (%), rounded for a report."""
    rows = [
        {
            "baseline": r["name"],
            "train_images_used": r["train_images_used"],
            "fit_seconds": round(r["fit_seconds"], 1),
            "predict_seconds": round(r["predict_seconds"], 1),
            "val_acc_%": round(r["val_acc"], 2),
            "test_acc_%": round(r["test_acc"], 2),
        }
        for r in results
    ]
    return pd.DataFrame(
        rows, columns=["baseline", "train_images_used", "fit_seconds", "predict_seconds", "val_acc_%", "test_acc_%"]
    )
