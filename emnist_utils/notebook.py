"""What every notebook does first and the studies they share, defined once (d2l-style helpers).

Notebooks call `start(...)` from their parameters cell, then the study helpers below; each helper is
the same code path for the smoke and full profiles.
"""
from __future__ import annotations

import contextlib
import io
import platform
from dataclasses import dataclass
from typing import Sequence

import torch

from .data import EMNIST, Splits, load_emnist, make_splits
from .experiments import TrialResult, run_trial
from .models import FINAL_CONFIG, TrialConfig, build_model
from .profiles import Profile, get_profile
from .reporting import read_table, trial_table, write_table
from .training import REPORT_RECIPE, Recipe, pick_device


@dataclass
class Context:
    """The state a notebook works with: its profile, seed, device, verified data and splits."""

    profile: Profile
    seed: int
    device: torch.device
    data: EMNIST
    splits: Splits
    retrain: bool = False

    def run(self, cfg: TrialConfig, *, recipe: Recipe = REPORT_RECIPE, keep_model: bool = True,
            seed: int | None = None) -> TrialResult:
        """Train `cfg` under this notebook's profile, or reuse the cached result of the identical run."""
        return run_trial(cfg, self.splits, self.profile, seed=self.seed if seed is None else seed, recipe=recipe,
                         retrain=self.retrain, keep_model=keep_model, device=self.device)

    def run_all(self, configs: Sequence[TrialConfig], **kwargs) -> list[TrialResult]:
        return [self.run(cfg, **kwargs) for cfg in configs]

    @property
    def provenance(self) -> dict:
        return self.splits.provenance


def versions() -> str:
    import numpy
    import sklearn

    return (f"python {platform.python_version()}, torch {torch.__version__}, numpy {numpy.__version__}, "
            f"scikit-learn {sklearn.__version__}, threads {torch.get_num_threads()}")


def start(profile: str | None = None, seed: int = 0, data_dir: str | None = None, split: str | None = None,
          device: str | None = None, retrain: bool = False) -> Context:
    """Resolve the parameters (arguments, else EMNIST_* variables), load and verify the data, make the splits."""
    prof = get_profile(profile)
    dev = pick_device(device)
    data = load_emnist(data_dir, split)
    splits = make_splits(data, seed, **prof.limits())
    print(f"profile: {prof.name} | seed: {seed} | device: {dev.type}")
    print(versions())
    print(f"data: emnist-{data.split} from {data.root}")
    return Context(profile=prof, seed=seed, device=dev, data=data, splits=splits, retrain=retrain)


def data_facts(ctx: Context) -> str:
    """Profile-independent facts about the loaded data (a checked notebook output: it must match in CI)."""
    d = ctx.data
    return (f"dataset: emnist-{d.split}\n"
            f"train images: {tuple(d.train_images.shape)} {d.train_images.dtype}, "
            f"test images: {tuple(d.test_images.shape)} {d.test_images.dtype}\n"
            f"classes: {d.num_classes}: {''.join(d.classes)}\n"
            f"sha256 of the decompressed data: {d.checksum}\n"
            f"verified by: {d.verified_by}")


def model_summary(cfg: TrialConfig) -> str:
    """torchsummary's table for a *fresh* model on the CPU: summarising never touches a trained model's
    BatchNorm statistics or the training RNG (torchsummary runs a forward pass in train mode)."""
    from torchsummary import summary

    rng = torch.get_rng_state()
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        summary(build_model(cfg), (1, 28, 28), device="cpu")
    torch.set_rng_state(rng)
    return buffer.getvalue().rstrip()


def trial_study(ctx: Context, configs: Sequence[TrialConfig], name: str, caption: str):
    """Run (or load) every trial of a table and write its table to results/<name>.{csv,md,tex}."""
    results = ctx.run_all(configs)
    table = trial_table(results)
    write_table(table, name, provenance=ctx.provenance, profile=ctx.profile.name, caption=caption)
    return results, table


def choose_final_config(ctx: Context, table_name: str = "arch2_trials",
                        candidates: Sequence[TrialConfig] | None = None) -> tuple[TrialConfig, str]:
    """The Architecture 2 trial with the best validation accuracy on *this* data and profile (never test).

    Falls back to the report's choice (trial 1) when notebook 03 has not written its table yet.
    """
    from .models import TABLE_1_2

    candidates = list(candidates or TABLE_1_2)
    table = read_table(table_name, ctx.profile.name)
    if table is None or table["data_sha256"].iloc[0] != ctx.provenance["checksum"]:
        return FINAL_CONFIG, "no Architecture 2 trial table for this data yet: using the report's choice (trial 1)"
    best = table.loc[table["val_acc_%"].idxmax()]
    cfg = candidates[int(best["trial"]) - 1].with_(name="final")
    return cfg, (f"Architecture 2 trial {int(best['trial'])} has the best validation accuracy "
                 f"({best['val_acc_%']:.2f}%) in results/{table_name}.csv")


def evaluate_on_test(ctx: Context, model: torch.nn.Module) -> dict:
    """Everything the final notebooks report about a model on the test split, computed once."""
    from .evaluation import (accuracy, confusion_matrix, merged_accuracy, most_confused_pairs,
                             per_class_accuracy, predict)

    s = ctx.splits
    predictions = predict(model, s.test_images, s.mean, s.std, device=ctx.device)
    return {"predictions": predictions,
            "accuracy": accuracy(predictions, s.test_labels),
            "merged_accuracy": merged_accuracy(predictions, s.test_labels, s.classes),
            "confusion": confusion_matrix(predictions, s.test_labels, len(s.classes)),
            "per_class": per_class_accuracy(predictions, s.test_labels, s.classes),
            "most_confused": most_confused_pairs(predictions, s.test_labels, s.classes)}


def save_model_and_metrics(ctx: Context, result: TrialResult, evaluation: dict, name: str) -> dict:
    """results/<name>.pt (state dict + config + data checksum + normalisation) and results/<name>_metrics.json."""
    from .experiments import save_weights
    from .paths import results_dir
    from .reporting import write_json

    weights = results_dir(ctx.profile.name) / f"{name}.pt"
    save_weights(result.model, result.config, weights, provenance=ctx.provenance, mean=ctx.splits.mean,
                 std=ctx.splits.std)
    metrics = {"config": result.to_json()["config"], "recipe": result.recipe, "seed": result.seed,
               "parameters": result.parameters, "train_seconds": round(result.train_seconds, 1),
               "final_val_acc": result.val_acc, "test_acc": evaluation["accuracy"],
               "test_acc_confusable_merged": evaluation["merged_accuracy"], "sizes": ctx.splits.sizes(),
               "history": result.history.to_dict()}
    path = write_json(metrics, f"{name}_metrics", provenance=ctx.provenance, profile=ctx.profile.name)
    return {"weights": weights, "metrics": path}
