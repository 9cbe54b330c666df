"""What the notebooks call: one `Context` per notebook (profile, data, store, output folders) and its helpers.

A notebook's parameters cell hands its values to `start`; everything the notebook then writes goes where the
context's own profile says (committed `figures/` and `results/` for `full`, `outputs/<profile>/` otherwise),
however the profile was set. Each helper is one step a notebook reads as prose: run a table of trials, run a
study, evaluate a model on the test split once, save it.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy
import pandas as pd
import sklearn
import torch
from torchsummary import summary

from .core.data import EMNIST, load_emnist
from .core.evaluation import report
from .core.paths import ensure_writable, output_root, shown
from .core.plots import save_figure
from .core.registry import ConfigError, ModelSpec, build_model
from .core.reporting import stamp, write_json, write_table
from .core.splits import Splits, make_splits
from .core.trained_model import TrainedModel
from .core.training import available_device
from .experiments import beyond, search
from .experiments.plan import Calibration
from .experiments.profiles import Profile, get_profile
from .experiments.runner import Runner
from .experiments.search_study import SearchSetup
from .experiments.spec import RunSpec
from .experiments.store import RunResult, Store
from .experiments.studies import Study, run_study
from .experiments.trials import Trial, trial_table


@dataclass
class Context:
    """The state a notebook works with: its profile, seed, device, verified data and splits, where results are
    cached and where its figures and tables go."""

    profile: Profile
    seed: int
    device: torch.device
    data: EMNIST
    splits: Splits
    store: Store
    output: Path
    retrain: bool = False
    runner: Runner = field(init=False)

    def __post_init__(self):
        self.runner = Runner(self.store, self.data, device=self.device, retrain=self.retrain, progress=False)

    @property
    def figures_dir(self) -> Path:
        return self.output / "figures"

    @property
    def results_dir(self) -> Path:
        return self.output / "results"

    @property
    def provenance(self) -> dict:
        return self.splits.provenance

    @property
    def classes(self) -> list[str]:
        return self.splits.classes

    # --------------------------------------------------------------------------- runs

    def bind(self, spec: RunSpec) -> RunSpec:
        """A run as this notebook's profile runs it on its data. A run that is already bound (a result's `spec`)
        is refused: binding it again would shrink its epochs twice under a quick or smoke profile."""
        if spec.data:
            raise ConfigError(
                f"run {spec.label} is already bound to data: pass the run as defined (e.g. beyond.CANDIDATES[i]), "
                "not a result's spec"
            )
        return spec.bind(self.splits, self.profile)

    def cached(self, spec: RunSpec) -> RunResult | None:
        """The cached result of `spec` under this profile and data, or None (never trains)."""
        return self.store.cached(self.bind(spec))

    def run(self, spec: RunSpec) -> RunResult:
        """Train `spec` (as this profile runs it), or load the cached result of the identical run."""
        return self.run_many([spec])[0]

    def run_many(self, specs: Sequence[RunSpec]) -> list[RunResult]:
        return self.runner.run_many([self.bind(s) for s in specs])

    def run_trials(self, trials: Sequence[Trial], name: str, caption: str) -> tuple[list[RunResult], pd.DataFrame]:
        """Run (or load) every trial of a report table; write its table to results/<name>.{csv,md,tex}."""
        results = self.run_many([t.spec for t in trials])
        table = trial_table(trials, results)
        self.write_table(table, name, caption)
        return results, table

    def run_study(self, study: Study) -> tuple[pd.DataFrame, dict[str, list[RunResult]]]:
        """Run (or load) a study and write its table to results/<study.name>.{csv,md,tex}."""
        table, results = run_study(study, self.profile, self.run_many)
        self.write_table(table, study.name, f"{study.title}: validation accuracy (mean over seeds)")
        return table, results

    def cpu_throughput(self, specs: Sequence[RunSpec]) -> list[tuple[float, float]]:
        """Training images/s of each spec on this machine's CPU with all its cores, measured once in one
        interleaved run and kept in the store (so re-running shows the same numbers)."""
        calibration = Calibration(self.store.root / "calibration.json", torch.device("cpu"), os.cpu_count() or 1)
        return calibration.interleaved([self.bind(s) for s in specs], len(self.classes))

    def search_setup(self, storage: str | None = None) -> SearchSetup:
        """What notebook 08's search arms share: the search's splits (its training subset), this machine's measured
        CPU throughput per model and recipe (the compute a trial costs), and the study storage (the journal file
        under the cache, or an Optuna storage URL)."""
        splits = search.search_splits(self.data, self.profile)
        calibration = Calibration(self.store.root / "calibration.json", torch.device("cpu"), os.cpu_count() or 1)

        def throughput(spec: RunSpec) -> float:
            return calibration.throughputs([spec], len(self.classes))[spec.key()]

        return SearchSetup(
            self.store, splits, self.profile, throughput, search.open_storage(storage, root=self.store.root),
            device=str(self.device),
        )  # fmt: skip

    # --------------------------------------------------------------------------- outputs

    def write_table(self, df: pd.DataFrame, name: str, caption: str = "") -> dict[str, Path]:
        return write_table(
            df, name, self.results_dir, provenance=self.provenance, profile=self.profile.name, caption=caption
        )

    def write_json(self, obj: dict, name: str) -> Path:
        return write_json(obj, name, self.results_dir, provenance=self.provenance, profile=self.profile.name)

    def save_figure(self, fig: plt.Figure, name: str) -> Path:
        return save_figure(fig, name, self.figures_dir)

    def stamp(self) -> str:
        """ "data: emnist-standin (sha256 ...), profile: full": what every reported number names."""
        return stamp(self.provenance, self.profile.name)

    # --------------------------------------------------------------------------- test split, once

    def test_report(self, model: TrainedModel, *, raw: bool = False) -> dict:
        """Everything a report gives about a trained model on the test split (accuracy, balanced and merged
        accuracy, confusion, per-class accuracy, most-confused pairs), with what it applies at prediction time
        unless `raw`."""
        model.check_classes(self.classes, f"emnist-{self.data.split}")
        logits = model.logits(self.splits.test_images, device=self.device, raw=raw)
        return {"logits": logits, **report(logits.argmax(1), self.splits.test_labels, self.classes)}

    def save_model(
        self, model: TrainedModel, name: str, evaluation: dict | None = None, extra: dict | None = None
    ) -> dict[str, str]:
        """results/<name>.pt (the trained-model file, with its test metrics) and results/<name>_metrics.json."""
        test = {}
        if evaluation is not None:
            test = {
                "test_acc": evaluation["accuracy"],
                "test_balanced_acc": evaluation["balanced_accuracy"],
                "test_acc_confusable_merged": evaluation["merged_accuracy"],
                "test_sizes": self.splits.sizes(),
            }
        saved = model.with_prediction()
        saved.metrics = {**model.metrics, **test, **(extra or {}), "profile": self.profile.name}
        ensure_writable(self.results_dir, "results folder")
        weights = saved.save(self.results_dir / f"{name}.pt")
        metrics = self.write_json(
            {
                "model": saved.spec.as_dict(),
                "run": saved.run,
                "metrics": saved.metrics,
                "prediction": saved.metadata()["prediction"],
                "parameters": saved.parameters,
            },
            f"{name}_metrics",
        )
        return {"model": shown(weights), "metrics": shown(metrics)}


def versions() -> str:
    return (
        f"python {platform.python_version()}, torch {torch.__version__}, numpy {numpy.__version__}, "
        f"scikit-learn {sklearn.__version__}, threads {torch.get_num_threads()}"
    )


def start(
    profile: str | None = None,
    seed: int = 0,
    data_dir: str | None = None,
    split: str | None = None,
    device: str | None = None,
    retrain: bool = False,
) -> Context:
    """Resolve the parameters (arguments, else EMNIST_* variables), check that every output folder is writable,
    load and verify the data, make the splits."""
    prof = get_profile(profile)
    output = output_root(prof.name)
    store = Store()
    for folder, what in ((output / "figures", "figures folder"), (output / "results", "results folder")):
        ensure_writable(folder, what)
    store.check_writable()
    dev = available_device(device)
    data = load_emnist(data_dir, split)
    splits = make_splits(data, seed, **prof.limits())
    print(f"profile: {prof.name} | seed: {seed} | device: {dev.type} | outputs: {shown(output) or '.'}")
    if not prof.writes_committed:
        print(f"not the full study: {prof.description}; numbers here are not the study's")
    print(versions())
    print(f"data: emnist-{data.split} from {shown(data.root)}")
    return Context(
        profile=prof, seed=seed, device=dev, data=data, splits=splits, store=store, output=output, retrain=retrain
    )


def data_facts(ctx: Context) -> str:
    """Profile-independent facts about the loaded data (a checked notebook output: it must match in CI)."""
    d = ctx.data
    return (
        f"dataset: emnist-{d.split}\n"
        f"train images: {tuple(d.train_images.shape)} {d.train_images.dtype}, "
        f"test images: {tuple(d.test_images.shape)} {d.test_images.dtype}\n"
        f"classes: {d.num_classes}: {''.join(d.classes)}\n"
        f"sha256 of the decompressed data: {d.checksum}\n"
        f"verified by: {d.verified_by}"
    )


def model_summary(spec: ModelSpec | RunSpec, num_classes: int) -> str:
    """torchsummary's table for a *fresh* model on the CPU: summarising never touches a trained model's
    BatchNorm statistics or the training RNG (torchsummary runs a forward pass in train mode)."""
    model_spec = spec.model if isinstance(spec, RunSpec) else spec
    rng = torch.get_rng_state()
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        summary(build_model(model_spec, num_classes), (1, 28, 28), device="cpu")
    torch.set_rng_state(rng)
    return buffer.getvalue().rstrip()


# ----------------------------------------------------------------------------- closing summaries


def class_balance(data: EMNIST) -> str:
    """Images per class in each part of the data (a checked output: it depends on the data only)."""
    lines = []
    for part, labels in (("train", data.train_labels), ("test", data.test_labels)):
        counts = torch.bincount(labels, minlength=data.num_classes)
        low, high = int(counts.min()), int(counts.max())
        if low == high:
            lines.append(f"{part}: {low:,} images per class (balanced)")
        else:
            lines.append(
                f"{part}: {low:,} to {high:,} images per class (imbalanced, rarest "
                f"'{data.classes[int(counts.argmin())]}')"
            )
    return "\n".join(lines)


def data_summary(ctx: Context) -> str:
    s = ctx.splits
    return (
        f"{ctx.stamp()}\n{ctx.data.num_classes} classes; train / validation / test: "
        f"{s.sizes()['train']:,} / {s.sizes()['validation']:,} / {s.sizes()['test']:,} images\n"
        f"normalisation: mean {s.mean:.4f}, std {s.std:.4f}; test split balanced: {s.test_is_balanced}"
    )


def test_summary(ctx: Context, evaluation: dict, reference: float | None = None) -> str:
    """The test numbers of one model, with the data, checksum and profile they came from."""
    lines = [
        f"test split of emnist-{ctx.data.split}: {ctx.splits.sizes()['test']:,} images ({ctx.stamp()})",
        f"test accuracy: {evaluation['accuracy']:.2f}% (balanced: {evaluation['balanced_accuracy']:.2f}%)",
        f"with look-alike classes merged (0/O, 1/I/l, 2/Z, 5/S, 9/g/q, F/f, ...): {evaluation['merged_accuracy']:.2f}%",
    ]
    if reference is not None:
        lines.append(f"the report, on EMNIST balanced (different data): {reference}%")
    return "\n".join(lines)


def recipe_table(ctx: Context, runs: dict[str, RunResult]) -> pd.DataFrame:
    """Named runs side by side: size, epochs, training time and machine, validation and test accuracy: of the
    weights alone, and as `python -m emnist_utils train` saves them (with the logit adjustment and test-time
    shifts that validation chose), which is the number the README cites for a recipe."""
    rows = []
    for name, run in runs.items():
        test = ctx.test_report(run.trained_model)
        delivered, choice = beyond.with_chosen_prediction(run, ctx.splits)
        saved = ctx.test_report(delivered)
        rows.append(
            {
                "recipe": name,
                "arch": run.spec.model.arch,
                "parameters": run.parameters,
                "epochs": run.history.epochs,
                "train_seconds": round(run.train_seconds, 1),
                "trained_on": run.device,
                "val_acc_%": round(run.val_acc, 2),
                "val_balanced_acc_%": round(run.val_balanced_acc, 2),
                "test_acc_%": round(test["accuracy"], 2),
                "test_balanced_acc_%": round(test["balanced_accuracy"], 2),
                "applied_at_prediction": f"adjustment {choice['adjustment_strength']}"
                + (", shifts" if choice["tta"] else ""),
                "test_acc_as_saved_%": round(saved["accuracy"], 2),
            }
        )
    return pd.DataFrame(rows)


def final_summary(ctx: Context, chosen, final: RunResult, evaluation: dict, recipes: pd.DataFrame) -> str:
    lines = [
        ctx.stamp(),
        f"final model: Table 1.2 trial {chosen.number} ({final.parameters:,} parameters), chosen on validation "
        f"({final.val_balanced_acc:.2f}% balanced); test accuracy {evaluation['accuracy']:.2f}%, "
        f"{evaluation['merged_accuracy']:.2f}% with look-alikes merged",
    ]
    worst = evaluation["most_confused"].head(3)
    lines.append(
        "most confused: "
        + "; ".join(
            f"'{r['true']}' read as '{r['predicted']}' {r['share_of_true_class_%']:.0f}%" for _, r in worst.iterrows()
        )
    )
    for _, r in recipes.iterrows():
        lines.append(
            f"recipe {r['recipe']}: {r['epochs']} epochs, {r['train_seconds'] / 60:.1f} min on "
            f"{r['trained_on']}, test {r['test_acc_%']:.2f}% (weights alone), {r['test_acc_as_saved_%']:.2f}% as saved"
        )
    return "\n".join(lines)


def comparison_summary(ctx: Context, baselines: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> str:
    lines = [ctx.stamp()]
    best = baselines.loc[baselines["val_acc_%"].idxmax()]
    lines.append(
        f"best classic classifier: {best['baseline']}, validation {best['val_acc_%']:.2f}%, "
        f"test {best['test_acc_%']:.2f}%"
    )
    for name, table in tables.items():
        top = table.loc[table["val_acc_mean_%"].idxmax()]
        lines.append(
            f"{name}: best {top['variant']} ({top['val_acc_mean_%']:.2f}% over {top['seeds']} seed(s); "
            f"{top['gain_vs_baseline']:+.2f} vs the baseline row, within noise: "
            f"{top['within_noise_of_baseline']})"
        )
    return "\n".join(lines)
