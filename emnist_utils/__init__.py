"""emnist-cnn: handwritten character recognition on EMNIST with PyTorch; the package the notebooks call.

Layout: `core` (data, splits, models and variants behind one registry, training, evaluation, trained-model
files, code fingerprints, plots, reporting), `experiments` (run specs and their store, trial tables, studies,
baselines, profiles, the runner and its plan), `notebook` (what the notebooks call), `main_job` (the main job)
and `cli` (the one command line, `python -m emnist_utils`).
"""

from .core.data import EMNIST, DataError, load_emnist
from .core.registry import ConfigError, ModelSpec, build_model, count_parameters
from .core.splits import Splits, make_splits
from .core.trained_model import ModelFileError, TrainedModel
from .core.training import Recipe, fit, pick_device
from .experiments.profiles import PROFILES, Profile, get_profile
from .experiments.spec import RunSpec
from .experiments.store import RunResult, Store

__version__ = "0.2.0"

__all__ = [
    "EMNIST",
    "DataError",
    "load_emnist",
    "ConfigError",
    "ModelSpec",
    "build_model",
    "count_parameters",
    "Splits",
    "make_splits",
    "ModelFileError",
    "TrainedModel",
    "Recipe",
    "fit",
    "pick_device",
    "PROFILES",
    "Profile",
    "get_profile",
    "RunSpec",
    "RunResult",
    "Store",
]
