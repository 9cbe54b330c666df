"""One training loop for every study: the report's recipe by default, faster or stronger recipes by option.

`fit` checkpoints after every epoch (atomically) and resumes from the last complete epoch, ending with
exactly the weights and history an uninterrupted run with the same seed would have produced on CPU.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .data import Batches, Splits
from .evaluation import evaluate_loss_accuracy
from .models import ConfigError, TrialConfig
from .paths import atomic_path

# Bump when a change to this module changes what a given config trains to: it invalidates cached results.
TRAINING_VERSION = 1


def pick_device(prefer: str | None = None) -> torch.device:
    """CUDA, then Apple MPS, then CPU; `prefer` (or EMNIST_DEVICE) overrides."""
    prefer = prefer or os.environ.get("EMNIST_DEVICE")
    if prefer:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed every generator a run touches; CPU runs are then bit-for-bit repeatable."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Recipe:
    """How to train, beyond the config's lr/batch/epochs. The default is the report's: Adam, constant lr,
    plain cross-entropy, fp32. `channels_last` only changes memory layout (about 10-20% faster on CPU)."""

    optimizer: str = "adam"  # adam | adamw | sgd
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | onecycle
    label_smoothing: float = 0.0
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    channels_last: bool = True
    augment: str = "none"  # name of a batch augmentation in emnist_utils.augment
    input_norm: str = "standardise"  # standardise (train mean/std, the report's Normalize) | unit (pixels / 255)

    def __post_init__(self):
        if self.optimizer not in ("adam", "adamw", "sgd"):
            raise ConfigError(f"optimizer must be adam, adamw or sgd, got {self.optimizer!r}")
        if self.schedule not in ("constant", "onecycle"):
            raise ConfigError(f"schedule must be constant or onecycle, got {self.schedule!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.input_norm not in ("standardise", "unit"):
            raise ConfigError(f"input_norm must be standardise or unit, got {self.input_norm!r}")
        from .augment import AUGMENTATIONS

        if self.augment not in AUGMENTATIONS:
            raise ConfigError(f"augment must be one of {sorted(AUGMENTATIONS)}, got {self.augment!r}")

    def normalisation(self, splits: Splits) -> tuple[float, float]:
        """(mean, std) applied to pixels in [0, 1]: the training split's, or (0, 1) for plain scaling."""
        return (splits.mean, splits.std) if self.input_norm == "standardise" else (0.0, 1.0)

    def as_dict(self) -> dict:
        return asdict(self)


REPORT_RECIPE = Recipe()


@dataclass
class History:
    """Per-epoch metrics. Accuracies are percentages; `seconds` is wall time and never compared."""

    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def append(self, **metrics: float) -> None:
        for name, value in metrics.items():
            getattr(self, name).append(float(value))

    @property
    def epochs(self) -> int:
        return len(self.val_acc)

    def metrics(self) -> dict[str, list[float]]:
        """Everything but timings: what must match between an interrupted and an uninterrupted run."""
        d = asdict(self)
        d.pop("seconds")
        return d

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(**{k: list(v) for k, v in d.items()})


def make_optimizer(model: nn.Module, cfg: TrialConfig, recipe: Recipe) -> torch.optim.Optimizer:
    params = model.parameters()
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=recipe.weight_decay, foreach=True)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=recipe.weight_decay, foreach=True)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=recipe.weight_decay,
                           foreach=True)


def make_scheduler(optimizer, cfg: TrialConfig, recipe: Recipe, steps_per_epoch: int):
    if recipe.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, epochs=cfg.epochs,
                                                   steps_per_epoch=steps_per_epoch)
    return None


def autocast_context(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _atomic_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _load_checkpoint(path: Path, key: str):
    """The checkpoint at `path` if it is intact and belongs to this run (same key), else None."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a torn or foreign file: start again rather than trust it
        warnings.warn(f"ignoring unreadable checkpoint {path} ({exc}); training from scratch")
        return None
    if not isinstance(state, dict) or state.get("key") != key:
        warnings.warn(f"ignoring checkpoint {path}: it belongs to a different run")
        return None
    return state


EpochCallback = Callable[[int, History], None]


def fit(model: nn.Module, splits: Splits, cfg: TrialConfig, *, seed: int = 0, recipe: Recipe = REPORT_RECIPE,
        device: torch.device | str | None = None, checkpoint: Path | None = None, run_key: str = "",
        callbacks: Sequence[EpochCallback] = (), progress: bool = True, desc: str | None = None) -> History:
    """Train `model` in place with Adam (or the recipe's optimiser) and cross-entropy; return its history.

    With `checkpoint`, state is saved after every epoch and a later call with the same `run_key` resumes
    from it. Callbacks run after the checkpoint is written, so an exception there loses nothing.
    """
    from tqdm.auto import tqdm

    from .augment import get_augmentation

    device = torch.device(device) if device is not None else pick_device()
    seed_everything(seed)
    model.to(device)
    channels_last = recipe.channels_last and device.type == "cpu"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    mean, std = recipe.normalisation(splits)
    train = Batches(splits.train_images, splits.train_labels, cfg.batch_size, mean, std,
                    shuffle=True, seed=seed, device=device, channels_last=channels_last)
    optimizer = make_optimizer(model, cfg, recipe)
    scheduler = make_scheduler(optimizer, cfg, recipe, len(train))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    augment = get_augmentation(recipe.augment)
    history, start_epoch = History(), 0

    state = _load_checkpoint(checkpoint, run_key) if checkpoint is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"])
        history = History.from_dict(state["history"])
        start_epoch = state["epoch"]

    bar = tqdm(range(start_epoch, cfg.epochs), initial=start_epoch, total=cfg.epochs,
               desc=desc or cfg.name or cfg.arch, unit="epoch", disable=not progress)
    for epoch in bar:
        started = time.perf_counter()
        model.train()
        total_loss = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        for x, y in tqdm(train.epoch(epoch), total=len(train), leave=False, unit="batch", disable=not progress):
            if augment is not None:
                x = augment(x)
            with autocast_context(device, recipe.precision):
                logits = model(x)
                loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total_loss += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
        n = len(splits.train_labels)
        train_loss = float(total_loss) / n
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"{cfg.name or cfg.arch}: training loss became {train_loss} in epoch "
                                     f"{epoch + 1}; lower the learning rate (lr={cfg.lr}).")
        val_loss, val_acc = evaluate_loss_accuracy(model, splits.val_images, splits.val_labels, mean, std,
                                                   device=device, channels_last=channels_last)
        history.append(train_loss=train_loss, train_acc=100.0 * float(correct) / n, val_loss=val_loss,
                       val_acc=val_acc, seconds=time.perf_counter() - started)
        bar.set_postfix(val_acc=f"{val_acc:.2f}")
        if checkpoint is not None:
            _atomic_save({"key": run_key, "epoch": epoch + 1, "model": model.state_dict(),
                          "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict() if scheduler is not None else None,
                          "rng": torch.get_rng_state(),
                          "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else None,
                          "history": history.to_dict()}, checkpoint)
        for callback in callbacks:
            callback(epoch + 1, history)
    bar.close()
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    return history


# Named recipes for the final model: (config, recipe). `report` is the report's final run; `fast` reaches the
# report recipe's accuracy in a fraction of its time (see benchmarks/ and the README for the measurements).
def _recipes() -> dict:
    from .models import FINAL_CONFIG

    return {
        "report": (FINAL_CONFIG, REPORT_RECIPE),
        "fast": (FINAL_CONFIG.with_(name="fast", lr=3e-3, batch_size=256, epochs=6),
                 Recipe(schedule="onecycle", label_smoothing=0.1)),
    }


RECIPES: dict[str, tuple[TrialConfig, Recipe]] = _recipes()
