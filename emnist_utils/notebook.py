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
            require_model: bool | None = None, seed: int | None = None) -> TrialResult:
        """Train `cfg` under this notebook's profile, or reuse the cached result of the identical run."""
        return run_trial(cfg, self.splits, self.profile, seed=self.seed if seed is None else seed, recipe=recipe,
                         retrain=self.retrain, keep_model=keep_model, require_model=require_model,
                         device=self.device)

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
    results = ctx.run_all(configs, require_model=False)  # the tables need metrics; weights are kept when trained
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


def input_normalisation(ctx: Context, result: TrialResult) -> tuple[float, float]:
    """The (mean, std) a trained model expects: the one its recipe trained it with, never assumed."""
    return Recipe(**result.recipe).normalisation(ctx.splits)


def evaluate_on_test(ctx: Context, result: TrialResult) -> dict:
    """Everything the final notebooks report about a trained model on the test split, computed once."""
    return evaluate_predictions(ctx, test_probabilities(ctx, result).argmax(1))


def save_model_and_metrics(ctx: Context, result: TrialResult, evaluation: dict, name: str) -> dict:
    """results/<name>.pt (state dict + config + data checksum + normalisation) and results/<name>_metrics.json."""
    from .experiments import save_weights
    from .paths import results_dir
    from .reporting import write_json

    weights = results_dir(ctx.profile.name) / f"{name}.pt"
    mean, std = input_normalisation(ctx, result)
    save_weights(result.model, result.config, weights, provenance=ctx.provenance, mean=mean, std=std)
    metrics = {"config": result.to_json()["config"], "recipe": result.recipe, "seed": result.seed,
               "parameters": result.parameters, "train_seconds": round(result.train_seconds, 1),
               "final_val_acc": result.val_acc, "test_acc": evaluation["accuracy"],
               "test_acc_confusable_merged": evaluation["merged_accuracy"], "sizes": ctx.splits.sizes(),
               "history": result.history.to_dict()}
    path = write_json(metrics, f"{name}_metrics", provenance=ctx.provenance, profile=ctx.profile.name)
    return {"weights": weights, "metrics": path}


# ----------------------------------------------------------------------------- studies (notebooks 05 and 06)


def run_study(ctx: Context, study, *, seeds: Sequence[int] | None = None, baseline: str | None = None):
    """Run (or load) a study of `emnist_utils.studies` and write results/<study.name>.{csv,md,tex}.

    Gains and the noise screen are relative to the variant labelled `baseline` (default: the first row).
    The smoke profile trains one seed per variant (the same code path, a fraction of the time)."""
    from .studies import run_study as _run, within_noise

    if seeds is None and ctx.profile.name == "smoke":
        seeds = (ctx.seed,)
    table, results = _run(ctx, study, seeds=seeds)
    base = table.index[table["variant"] == baseline][0] if baseline else 0
    table["gain_vs_baseline"] = (table["val_acc_mean_%"] - table["val_acc_mean_%"].iloc[base]).round(2)
    table["within_noise_of_baseline"] = within_noise(table, base)
    write_table(table, study.name, provenance=ctx.provenance, profile=ctx.profile.name,
                caption=f"{study.title}: validation accuracy (mean over seeds)")
    return table, results


def evaluate_predictions(ctx: Context, predictions: torch.Tensor) -> dict:
    """The test-split numbers a report gives for one set of predictions."""
    from .evaluation import accuracy, confusion_matrix, merged_accuracy, most_confused_pairs, per_class_accuracy

    s = ctx.splits
    return {"predictions": predictions,
            "accuracy": accuracy(predictions, s.test_labels),
            "merged_accuracy": merged_accuracy(predictions, s.test_labels, s.classes),
            "confusion": confusion_matrix(predictions, s.test_labels, len(s.classes)),
            "per_class": per_class_accuracy(predictions, s.test_labels, s.classes),
            "most_confused": most_confused_pairs(predictions, s.test_labels, s.classes)}


def test_probabilities(ctx: Context, result: TrialResult) -> torch.Tensor:
    """Class probabilities of a trained model for every test image, with the input normalisation it was
    trained with."""
    from .evaluation import predict_logits

    mean, std = input_normalisation(ctx, result)
    return predict_logits(result.model, ctx.splits.test_images, mean, std, device=ctx.device).softmax(1)


def seeds_on_test(ctx: Context, label: str, runs: Sequence[TrialResult]) -> tuple[dict, list[torch.Tensor]]:
    """Test accuracy of each seed's model and of their ensemble (mean of softmax outputs), computed once.

    Returns one summary row and each seed's test probabilities (reuse them instead of predicting again)."""
    import statistics

    from .evaluation import accuracy, merged_accuracy

    s = ctx.splits
    probabilities = [test_probabilities(ctx, r) for r in runs]
    tests = [accuracy(p.argmax(1), s.test_labels) for p in probabilities]
    ensemble = torch.stack(probabilities).mean(0)
    spread = round(statistics.stdev(tests), 2) if len(tests) > 1 else float("nan")
    return ({"model": label, "seeds": len(runs), "parameters_per_model": runs[0].parameters,
             "val_acc_mean_%": round(statistics.fmean(r.val_acc for r in runs), 2),
             "test_acc_mean_%": round(statistics.fmean(tests), 2), "test_acc_std": spread,
             "test_acc_min_%": round(min(tests), 2), "test_acc_max_%": round(max(tests), 2),
             "test_acc_per_seed_%": " / ".join(f"{t:.2f}" for t in tests),
             "ensemble_test_acc_%": round(accuracy(ensemble.argmax(1), s.test_labels), 2),
             "merged_confusable_test_acc_%": round(statistics.fmean(
                 merged_accuracy(p.argmax(1), s.test_labels, s.classes) for p in probabilities), 2),
             "train_seconds_per_model": round(statistics.fmean(r.train_seconds for r in runs), 1),
             "trained_on": ", ".join(sorted({r.device for r in runs}))}, probabilities)


def summary_points(ctx: Context, study_tables: dict) -> "pd.DataFrame":
    """Every CNN of the project as (group, label, parameters, validation accuracy) for one summary figure:
    the report's trial tables (notebooks 02 and 03, when they ran on this data) plus the given study tables."""
    import pandas as pd

    rows = []
    for name, group in (("arch1_trials", "Architecture 1 trials (report Table 1.1)"),
                        ("arch2_trials", "Architecture 2 trials (report Table 1.2)")):
        table = read_table(name, ctx.profile.name)
        if table is None or table["data_sha256"].iloc[0] != ctx.provenance["checksum"]:
            continue
        rows += [{"group": group, "label": f"trial {r['trial']}", "parameters": r["parameters"],
                  "val_acc": r["val_acc_%"]} for _, r in table.iterrows()]
    for group, table in study_tables.items():
        rows += [{"group": group, "label": r["variant"], "parameters": r["parameters"],
                  "val_acc": r["val_acc_mean_%"]} for _, r in table.iterrows()]
    return pd.DataFrame(rows)
