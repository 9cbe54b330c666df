"""Helpers for the emnist-cnn notebooks: data, models, training, evaluation, plots and result files."""
from .data import EMNIST, Batches, DataError, Splits, load_emnist, make_splits, train_val_split
from .experiments import TrialResult, WeightsError, load_weights, run_trial, save_weights
from .models import (FINAL_CONFIG, REPORT_FINAL_PARAMETERS, REPORT_FINAL_TEST_ACC, TABLE_1_1, TABLE_1_2,
                     Architecture1, Architecture2, ConfigError, TrialConfig, build_model, count_parameters)
from .profiles import PROFILES, Profile, get_profile
from .training import REPORT_RECIPE, History, Recipe, fit, pick_device, seed_everything

__version__ = "0.1.0"
