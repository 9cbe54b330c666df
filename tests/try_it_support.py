"""What the tests of `predict`, the handwriting conversion, notebook 07's helpers and the browser test share: one
trained model per test session, and EMNIST test images rendered the way a person would hand them in.

The model is results/best_model.pt when it exists, loads and predicts the stand-in's classes; otherwise notebook
07's temporary model (emnist_utils.try_it.TEMPORARY_RUN, about a minute on a CPU), trained once per session into
a store of the session's own. The tests compare `predict` with the same model's accuracy on the same images, so a
weaker model proves the conversion just as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from emnist_utils.core.paths import PROJECT_ROOT
from emnist_utils.core.trained_model import ModelFileError

_CACHE: dict[str, SessionModel] = {}


@dataclass
class SessionModel:
    path: Path  # a trained-model file
    model: object  # the TrainedModel
    store: Path | None  # the store holding the temporary model (None when results/best_model.pt is used)
    source: str


def session_model(tmp_path_factory, data) -> SessionModel:
    """results/best_model.pt if usable, else the temporary model trained once for this session."""
    if "model" in _CACHE:
        return _CACHE["model"]
    from emnist_utils import try_it
    from emnist_utils.experiments.store import Store

    committed = PROJECT_ROOT / try_it.MODEL_FILE
    try:
        found = SessionModel(committed, try_it.load_model(committed, data.classes), None, "results/best_model.pt")
    except ModelFileError:
        store = tmp_path_factory.mktemp("try-it-store")
        model = try_it.temporary_model(data, Store(store))
        path = model.save(tmp_path_factory.mktemp("try-it-model") / "temporary_model.pt")
        found = SessionModel(path, model, store, "the temporary model")
    _CACHE["model"] = found
    return found


def rendered(image: np.ndarray, rng: np.random.Generator, *, dark_ink: bool = True) -> Image.Image:
    """One upright 28x28 EMNIST image as a person would hand it in: enlarged 5-10 times, on a page with random
    padding on every side (so off-centre), dark ink on white unless `dark_ink` is False."""
    from emnist_utils.try_it import render_like_a_person

    scale = int(rng.integers(5, 11))
    top, left = (int(v) for v in rng.integers(0, 12 * scale, 2))
    height = 28 * scale + top + int(rng.integers(0, 12 * scale))
    width = 28 * scale + left + int(rng.integers(0, 12 * scale))
    return render_like_a_person(image, scale, dark_ink=dark_ink, offset=(top, left), size=(height, width))


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean())
