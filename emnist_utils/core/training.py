"""One training loop for every model: `train_one_epoch`, and `fit`, the resume-and-checkpoint shell around it.

A `Recipe` holds every training setting (learning rate, batch, epochs, optimiser, schedule, augmentation,
label smoothing, class-aware sampling, loss weighting, weight averaging). `fit` checkpoints after every epoch
(atomically, plain tensors only) and resumes from the last complete epoch, ending with exactly the weights and
history an uninterrupted run with the same seed would have produced.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .augment import AUGMENTATIONS, get_augmentation
from .evaluation import evaluate_split
from .paths import atomic_path
from .registry import ConfigError
from .splits import SAMPLINGS, Batches, Splits, class_counts, is_balanced, sampling_weights

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "onecycle")
PRECISIONS = ("fp32", "bf16")
INPUT_NORMS = ("standardise", "unit")
LOSS_WEIGHTINGS = ("none", "sqrt", "balanced")
MAX_DISTILL_TEMPERATURE = 20.0
BN_RECOMPUTE_IMAGES = 8192  # training images used to recompute BatchNorm statistics of averaged weights


def pick_device(prefer: str | None = None) -> torch.device:
    """CUDA, then Apple MPS, then CPU; `prefer` (or EMNIST_DEVICE) overrides."""
    prefer = prefer or os.environ.get("EMNIST_DEVICE")
    if prefer:
        try:
            return torch.device(prefer)
        except RuntimeError as exc:
            raise ConfigError(f"unknown device {prefer!r}; use cpu, cuda, cuda:N or mps") from exc
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def require_available(device: torch.device) -> torch.device:
    """`device` if this machine has it. An accelerator asked for by name on a machine without it is refused here,
    with the fix, rather than failing at the first tensor moved to it."""
    mps = getattr(torch.backends, "mps", None)
    missing = (device.type == "cuda" and not torch.cuda.is_available()) or (
        device.type == "mps" and not (mps is not None and mps.is_available())
    )
    if missing:
        kind = "CUDA GPU" if device.type == "cuda" else "Apple MPS device"
        raise ConfigError(f"device {device} was asked for, but this machine has no {kind}; use --device cpu")
    return device


def available_device(prefer: str | None = None) -> torch.device:
    """The device a command, notebook or benchmark runs on: `pick_device`'s choice, refused with one line (and
    the fix) when it names an accelerator this machine lacks."""
    return require_available(pick_device(prefer))


def seed_everything(seed: int) -> None:
    """Seed every generator a run touches; CPU runs are then bit-for-bit repeatable."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


@dataclass(frozen=True)
class Recipe:
    """How to train: every setting that changes the trained weights. The defaults are the report's: Adam,
    constant learning rate, plain cross-entropy, fp32, no augmentation, plain shuffling."""

    lr: float
    batch_size: int
    epochs: int
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | onecycle (to lr, then annealed)
    label_smoothing: float = 0.0
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    channels_last: bool = True  # memory layout on the CPU (faster there; the arithmetic may differ in the last bits)
    augment: str = "none"  # a batch augmentation of emnist_utils.core.augment
    input_norm: str = "standardise"  # standardise (training mean/std, the report's Normalize) | unit (pixels / 255)
    sampling: str = "none"  # class-aware sampling: none | sqrt | balanced
    loss_weighting: str = "none"  # cross-entropy class weights: none | sqrt | balanced (inverse frequency)
    ema_decay: float = 0.0  # exponential moving average of the weights per step; 0 = off
    distill_weight: float = 0.0  # share of the loss from a teacher's softened probabilities; 0 = no teacher
    distill_temperature: float = 1.0  # softens teacher and student alike (Hinton et al. 2015)

    def __post_init__(self):
        for name in ("batch_size", "epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("lr", "weight_decay", "label_smoothing", "ema_decay", "distill_weight", "distill_temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
        if self.lr <= 0:
            raise ConfigError(f"lr (learning rate) must be positive, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be at least 0, got {self.weight_decay!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1) (0 = off), got {self.ema_decay!r}")
        if not 0 <= self.distill_weight <= 1:
            raise ConfigError(f"distill_weight must be in [0, 1] (0 = no teacher), got {self.distill_weight!r}")
        if not 0 < self.distill_temperature <= MAX_DISTILL_TEMPERATURE:
            raise ConfigError(
                f"distill_temperature must be in (0, {MAX_DISTILL_TEMPERATURE}], got {self.distill_temperature!r}"
            )
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("input_norm", self.input_norm, INPUT_NORMS)
        _check_choice("sampling", self.sampling, SAMPLINGS)
        _check_choice("loss_weighting", self.loss_weighting, LOSS_WEIGHTINGS)
        _check_choice("augment", self.augment, sorted(AUGMENTATIONS))
        if not isinstance(self.channels_last, bool):
            raise ConfigError(f"channels_last must be True or False, got {self.channels_last!r}")

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown recipe settings: {', '.join(unknown)}")
        try:
            return cls(**d)
        except TypeError as exc:
            raise ConfigError(f"incomplete recipe ({exc})") from exc

    def with_(self, **changes) -> Recipe:
        return replace(self, **changes)


def input_normalisation(recipe: Recipe, splits: Splits) -> tuple[float, float]:
    """(mean, std) applied to pixels in [0, 1]: the training split's, or (0, 1) for plain scaling."""
    return (splits.mean, splits.std) if recipe.input_norm == "standardise" else (0.0, 1.0)


@dataclass
class History:
    """Per-epoch metrics of the model being trained. Accuracies are percentages (balanced = mean per-class
    recall); `seconds` is wall time and never compared."""

    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    val_balanced_acc: list[float] = field(default_factory=list)
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
    def from_dict(cls, d: dict) -> History:
        return cls(**{k: [float(x) for x in v] for k, v in d.items()})


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    params = model.parameters()
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay, foreach=True)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay, foreach=True)
    return torch.optim.SGD(
        params, lr=recipe.lr, momentum=0.9, nesterov=True, weight_decay=recipe.weight_decay, foreach=True
    )


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int):
    if recipe.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=recipe.lr, epochs=recipe.epochs, steps_per_epoch=steps_per_epoch
        )
    return None


def make_loss(recipe: Recipe, labels: torch.Tensor, num_classes: int, device: torch.device) -> nn.Module:
    """Cross-entropy, with class weights (mean 1 over the training examples) when the recipe asks for them and
    the training split is imbalanced; on a balanced split the weights would all be 1, so none are used."""
    weight = None
    if recipe.loss_weighting != "none" and not is_balanced(labels, num_classes):
        counts = class_counts(labels, num_classes).to(torch.float64).clamp(min=1)
        per_class = counts.rsqrt() if recipe.loss_weighting == "sqrt" else counts.reciprocal()
        per_class = per_class * counts.sum() / (per_class * counts).sum()
        weight = per_class.to(torch.float32).to(device)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=recipe.label_smoothing)


class DistillationLoss(nn.Module):
    """Knowledge distillation: `weight` of the loss is the KL divergence from the teacher's probabilities at
    temperature T to the student's (times T^2, so that its gradients keep their size as T changes), the rest the
    recipe's own loss on the true labels."""

    def __init__(self, hard: nn.Module, weight: float, temperature: float):
        super().__init__()
        self.hard, self.weight, self.temperature = hard, weight, temperature

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        student = nn.functional.log_softmax(logits.float() / t, dim=1)
        kd = nn.functional.kl_div(student, soft, reduction="batchmean") * (t * t)
        return (1.0 - self.weight) * self.hard(logits, labels) + self.weight * kd


def autocast_context(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def distillation_targets(recipe: Recipe, splits: Splits, probabilities: torch.Tensor | None) -> torch.Tensor | None:
    """The teacher's probabilities a distilling recipe trains on, checked against the training part; None when
    the recipe does not distil (and then none may be given)."""
    if recipe.distill_weight <= 0:
        if probabilities is not None:
            raise ConfigError("teacher probabilities were given to a recipe that does not distil (distill_weight 0)")
        return None
    expected = (len(splits.train_labels), splits.num_classes)
    if probabilities is None or tuple(probabilities.shape) != expected:
        found = None if probabilities is None else tuple(probabilities.shape)
        raise ConfigError(f"a distilling recipe needs teacher probabilities of shape {expected}, got {found}")
    return probabilities.to(torch.float32)


def make_ema(model: nn.Module, recipe: Recipe) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of the weights, updated after every step. Its decay warms up as
    (1 + t) / (10 + t) to the recipe's, so that short runs (and the first steps of long ones) average recent
    weights instead of staying near the random initialisation."""
    if recipe.ema_decay <= 0:
        return None
    target = recipe.ema_decay

    @torch.no_grad()
    def average(averaged: list[torch.Tensor], current: list[torch.Tensor], steps: torch.Tensor) -> None:
        decay = min(target, (1.0 + float(steps)) / (10.0 + float(steps)))
        for a, c in zip(averaged, current):
            a.lerp_(c, 1.0 - decay)

    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=average)


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches) -> None:
    """Replace BatchNorm running statistics by their exact average over `batches`: averaged weights need
    statistics of their own, not an average of the statistics of the models they came from."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = {}
    for m in norms:
        m.reset_running_stats()
        momenta[m] = m.momentum
        m.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    for x, _ in batches:
        model(x)
    for m in norms:
        m.momentum = momenta[m]
    model.train(was_training)


def train_one_epoch(
    model: nn.Module,
    batches: Batches,
    epoch: int,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    *,
    scheduler=None,
    augment=None,
    precision: str = "fp32",
    ema=None,
    progress: bool = False,
) -> tuple[float, float]:
    """One pass over the training batches; returns the mean loss and the accuracy (%) on them."""
    model.train()
    device = batches.device
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    for x, y, *soft in tqdm(batches.epoch(epoch), total=len(batches), leave=False, unit="batch", disable=not progress):
        if augment is not None:
            x = augment(x)
        with autocast_context(device, precision):
            logits = model(x)
            loss = loss_fn(logits, y, *soft)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        total_loss += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    return float(total_loss) / seen, 100.0 * float(correct) / seen


# ----------------------------------------------------------------------------- checkpoints


def previous_checkpoint(path: Path) -> Path:
    """Where the checkpoint before the last one is kept: the one resumed from when the last is damaged."""
    return path.with_name(path.stem + ".previous" + path.suffix)


def checkpoint_files(path: Path) -> list[Path]:
    """Every file a run's checkpointing may leave: the last checkpoint, the one before, and a set-aside one."""
    return [path, previous_checkpoint(path), set_aside_path(path)]


def set_aside_path(path: Path) -> Path:
    return path.with_name(path.name + ".damaged")


def state_checksum(state) -> str:
    """sha256 over every tensor (dtype, shape and bytes) and every other value of a checkpoint, in a fixed order:
    a bit flipped anywhere in the weights, or an epoch that no longer matches them, changes it. (The zip format
    `torch.save` writes checks no checksum of its own when read.)"""
    digest = hashlib.sha256()

    def walk(value, where: str) -> None:
        if isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{where}:tensor:{value.dtype}:{tuple(value.shape)}:".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            digest.update(f"{where}:dict:{len(value)}:".encode())
            for k in sorted(value, key=repr):
                walk(value[k], f"{where}.{k!r}")
        elif isinstance(value, (list, tuple)):
            digest.update(f"{where}:{type(value).__name__}:{len(value)}:".encode())
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]")
        else:
            digest.update(f"{where}:{type(value).__name__}:{value!r}:".encode())

    walk(state, "")
    return digest.hexdigest()


def _tensors(value, where: str = ""):
    """(name, tensor) of every tensor in a nested state."""
    if isinstance(value, torch.Tensor):
        yield where, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _tensors(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _tensors(v, f"{where}[{i}]")


def save_checkpoint(path: Path, state: dict) -> None:
    """Write a checkpoint atomically, with the checksum of its contents, keeping the previous one beside it (what a
    resume falls back to when the last is damaged). It holds tensors, numbers, strings, lists and dicts only, so
    it loads with `torch.load(weights_only=True)`, which never executes code from the file."""
    buffer = io.BytesIO()
    torch.save({**state, "checksum": state_checksum(state)} if isinstance(state, dict) else state, buffer)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(buffer.getvalue())
            f.flush()
            os.fsync(f.fileno())
        if path.is_file():
            os.replace(path, previous_checkpoint(path))


def _set_aside(path: Path, why: str) -> None:
    """Move a damaged checkpoint out of the way (kept for inspection, never resumed from) with one warning."""
    target = set_aside_path(path)
    try:
        os.replace(path, target)
        where = f"moved to {target.name}"
    except OSError as exc:
        where = f"could not be moved aside ({exc.strerror or exc}); ignored"
    warnings.warn(f"checkpoint {path} set aside: {why}; {where}")


def load_checkpoint(path: Path, key: str) -> dict | None:
    """The checkpoint at `path` if it is intact and belongs to this run (same key), else None. A checkpoint that
    cannot be read, fails its checksum, or holds NaN or infinite values is set aside with one warning."""
    if not path.exists():
        return None
    if not path.is_file():
        warnings.warn(f"ignoring checkpoint {path}: not a regular file")
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # empty, torn, foreign or code-carrying file: never trusted
        text = str(exc).strip()
        reason = text.splitlines()[0][:200] if text else type(exc).__name__
        _set_aside(path, f"unreadable checkpoint ({reason})")
        return None
    if not isinstance(state, dict) or state.get("key") != key:
        warnings.warn(f"ignoring checkpoint {path}: it belongs to a different run")
        return None
    recorded = state.pop("checksum", None)
    if recorded != state_checksum(state):
        _set_aside(path, "its contents fail their checksum (damaged, or edited after it was written)")
        return None
    for name, tensor in _tensors(state):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            _set_aside(path, f"tensor {name} holds NaN or infinite values")
            return None
    try:
        epochs = History.from_dict(state["history"]).epochs
        consistent = isinstance(state["epoch"], int) and state["epoch"] == epochs > 0
    except (KeyError, TypeError, ValueError, AttributeError):
        consistent = False
    if not consistent:
        _set_aside(path, f"its epoch ({state.get('epoch')!r}) does not match its history")
        return None
    return state


def resume_state(path: Path, key: str) -> dict | None:
    """The last good checkpoint of the run: the last one, else the one before it (the last one being damaged or
    missing), else None (train from the start). Either way the run ends with the weights of an uninterrupted one."""
    for candidate in (path, previous_checkpoint(path)):
        state = load_checkpoint(candidate, key)
        if state is not None:
            return state
    return None


EpochCallback = Callable[[int, History], None]


@dataclass
class Fitted:
    """What `fit` returns: the history of the trained model and the model to use (the weight average when the
    recipe keeps one, with its own BatchNorm statistics; else the trained model itself)."""

    history: History
    model: nn.Module


def fit(
    model: nn.Module,
    splits: Splits,
    recipe: Recipe,
    *,
    seed: int = 0,
    device: torch.device | str | None = None,
    checkpoint: Path | None = None,
    run_key: str = "",
    callbacks: Sequence[EpochCallback] = (),
    progress: bool = True,
    desc: str | None = None,
    teacher_probabilities: torch.Tensor | None = None,
) -> Fitted:
    """Train `model` in place as `recipe` says; with `checkpoint`, save state after every epoch and resume
    from it when called again with the same `run_key`. Callbacks run after the checkpoint is written, so an
    exception there loses nothing. A recipe that distils needs `teacher_probabilities`: one row per training
    image, at the recipe's temperature."""
    device = torch.device(device) if device is not None else pick_device()
    seed_everything(seed)
    channels_last = recipe.channels_last and device.type == "cpu"
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    mean, std = input_normalisation(recipe, splits)
    weights = sampling_weights(splits.train_labels, splits.num_classes, recipe.sampling)
    train = Batches(
        splits.train_images,
        splits.train_labels,
        recipe.batch_size,
        mean,
        std,
        shuffle=True,
        seed=seed,
        device=device,
        channels_last=channels_last,
        weights=weights,
        soft=distillation_targets(recipe, splits, teacher_probabilities),
    )
    optimizer = make_optimizer(model, recipe)
    scheduler = make_scheduler(optimizer, recipe, len(train))
    loss_fn = make_loss(recipe, splits.train_labels, splits.num_classes, device)
    if recipe.distill_weight > 0:
        loss_fn = DistillationLoss(loss_fn, recipe.distill_weight, recipe.distill_temperature)
    augment = get_augmentation(recipe.augment)
    ema = make_ema(model, recipe)
    history, start_epoch = History(), 0

    state = resume_state(checkpoint, run_key) if checkpoint is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        history, start_epoch = History.from_dict(state["history"]), state["epoch"]

    bar = tqdm(
        range(start_epoch, recipe.epochs),
        initial=start_epoch,
        total=recipe.epochs,
        desc=desc,
        unit="epoch",
        disable=not progress,
    )
    for epoch in bar:
        started = time.perf_counter()
        train_loss, train_acc = train_one_epoch(
            model,
            train,
            epoch,
            optimizer,
            loss_fn,
            scheduler=scheduler,
            augment=augment,
            precision=recipe.precision,
            ema=ema,
            progress=progress,
        )
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                f"{desc or 'training'}: the training loss became {train_loss} in epoch "
                f"{epoch + 1}; lower the learning rate (lr={recipe.lr})."
            )
        val = evaluate_split(
            model, splits.val_images, splits.val_labels, mean, std, device=device, channels_last=channels_last
        )
        history.append(
            train_loss=train_loss,
            train_acc=train_acc,
            val_loss=val["loss"],
            val_acc=val["accuracy"],
            val_balanced_acc=val["balanced_accuracy"],
            seconds=time.perf_counter() - started,
        )
        bar.set_postfix(val_acc=f"{val['accuracy']:.2f}")
        if checkpoint is not None:
            save_checkpoint(
                checkpoint,
                {
                    "key": run_key,
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "ema": ema.state_dict() if ema is not None else None,
                    "rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    "history": history.to_dict(),
                },
            )
        for callback in callbacks:
            callback(epoch + 1, history)
    bar.close()
    final = model
    if ema is not None:
        final = ema.module
        subset = Batches(
            splits.train_images[:BN_RECOMPUTE_IMAGES],
            splits.train_labels[:BN_RECOMPUTE_IMAGES],
            512,
            mean,
            std,
            device=device,
            channels_last=channels_last,
        )
        recompute_batchnorm(final, subset)
    for m in {id(model): model, id(final): final}.values():
        m.to(memory_format=torch.contiguous_format)
    final.eval()
    return Fitted(history, final)
