"""The results store: each run is trained once, by one process, and its result and model kept under its key.

`Store.run(spec, splits)` returns the cached result of an identical earlier run, or takes the run's lock,
trains it (resuming from its last epoch checkpoint), writes its trained-model file and result entry, and
releases the lock; a second process asking for the same run meanwhile waits, then reuses the result. Entries
carry a sha256 of their own payload, so a corrupt or partial entry is recomputed, never trusted. Everything is
checked writable, with enough free space, before training starts.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from ..core.data import sha256_file
from ..core.evaluation import accuracy, balanced_accuracy, choose_adjustment, logit_adjustment, predict_logits
from ..core.paths import cache_dir, ensure_writable, require_free_space, write_bytes_atomic, write_text_atomic
from ..core.registry import ConfigError, build_model, count_parameters
from ..core.splits import Splits
from ..core.trained_model import TrainedModel
from ..core.training import (
    History,
    checkpoint_files,
    fit,
    input_normalisation,
    pick_device,
    seed_everything,
    state_checksum,
)
from .spec import RunSpec

EpochCallback = Callable[[int, History], None]


# ----------------------------------------------------------------------------- training one run


@dataclass
class Trained:
    """A freshly trained run: the model to keep, its history and its validation metrics."""

    model: nn.Module
    history: History
    metrics: dict


def validation_metrics(logits: torch.Tensor, splits: Splits) -> dict:
    """Validation loss, accuracy and balanced accuracy of the delivered model, plus the logit adjustment chosen
    on validation (its strength and the scores it gives): the same numbers for every run, so any two runs
    compare on them. For a refit the validation images were trained on (`validation_trained`): its numbers are
    recorded, never chosen on."""
    labels = splits.val_labels.cpu()
    predictions = logits.argmax(1)
    strength, _ = choose_adjustment(logits, labels, splits.train_prior(), balanced=splits.test_is_balanced)
    adjusted = (logits + logit_adjustment(splits.train_prior(), strength)).argmax(1)
    return {
        "val_loss": float(nn.functional.cross_entropy(logits, labels)),
        "val_acc": accuracy(predictions, labels),
        "val_balanced_acc": balanced_accuracy(predictions, labels, splits.num_classes),
        "adjustment_strength": strength,
        "val_acc_adjusted": accuracy(adjusted, labels),
        "val_balanced_acc_adjusted": balanced_accuracy(adjusted, labels, splits.num_classes),
        "selection_metric": "balanced" if splits.test_is_balanced else "plain",
        "validation_trained": splits.validation_trained,
    }


def ensemble_probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """A teacher ensemble's probabilities at temperature T: the mean of its members' softened probabilities
    (`logits`: members x images x classes)."""
    return (logits.to(torch.float32) / temperature).softmax(-1).mean(0)


def train_run(
    spec: RunSpec,
    splits: Splits,
    *,
    device: torch.device | str | None = None,
    checkpoint: Path | None = None,
    progress: bool = True,
    callbacks: Sequence[EpochCallback] = (),
    teacher_logits: torch.Tensor | None = None,
) -> Trained:
    """Train one run from scratch (or from its checkpoint) on the images its spec names (a refit adds the
    validation images) and measure the delivered model on validation. A distilled run needs its teacher's
    logits on those training images (members x images x classes)."""
    device = torch.device(device) if device is not None else pick_device()
    splits = spec.training_splits(splits)
    probabilities = (
        ensemble_probabilities(teacher_logits, spec.recipe.distill_temperature) if teacher_logits is not None else None
    )
    seed_everything(spec.seed)
    model = build_model(spec.model, splits.num_classes)
    fitted = fit(
        model,
        splits,
        spec.recipe,
        seed=spec.seed,
        device=device,
        checkpoint=checkpoint,
        run_key=spec.key(),
        callbacks=callbacks,
        progress=progress,
        desc=spec.label,
        teacher_probabilities=probabilities,
    )
    mean, std = input_normalisation(spec.recipe, splits)
    logits = predict_logits(fitted.model, splits.val_images, mean, std, device=device)
    return Trained(fitted.model.cpu(), fitted.history, validation_metrics(logits, splits))


# ----------------------------------------------------------------------------- results


@dataclass
class RunResult:
    spec: RunSpec
    key: str
    history: History
    metrics: dict  # of the delivered model on validation (see validation_metrics)
    parameters: int
    train_seconds: float
    device: str  # what trained it, e.g. "cpu (2 threads)" or "cuda (NVIDIA H200)"
    provenance: dict
    model_path: Path
    environment: dict = field(default_factory=dict)
    _model: TrainedModel | None = None

    @property
    def val_acc(self) -> float:
        return self.metrics["val_acc"]

    @property
    def val_balanced_acc(self) -> float:
        return self.metrics["val_balanced_acc"]

    def selection_score(self) -> float:
        """What choices are made on: balanced validation accuracy when the test split is balanced."""
        return self.val_balanced_acc if self.metrics.get("selection_metric") == "balanced" else self.val_acc

    @property
    def trained_model(self) -> TrainedModel:
        """The trained model (read from the store on first use)."""
        if self._model is None:
            self._model = TrainedModel.load(self.model_path)
        return self._model

    def to_json(self) -> dict:
        return {
            "spec": self.spec.as_dict(),
            "key": self.key,
            "history": self.history.to_dict(),
            "metrics": self.metrics,
            "parameters": self.parameters,
            "train_seconds": self.train_seconds,
            "device": self.device,
            "provenance": self.provenance,
            "environment": self.environment,
        }


def device_name(device: torch.device) -> str:
    """A device as results record it: the accelerator's model, or the CPU with its thread count."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


def _digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def read_entry(path: Path, key: str) -> dict | None:
    """A cache entry's payload if it is complete and self-consistent; None (with a warning) otherwise."""
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text())
        payload = entry["payload"]
        if entry["sha256"] != _digest(payload) or payload["key"] != key:
            raise ValueError("checksum or key mismatch")
        return payload
    except Exception as exc:
        warnings.warn(f"cache entry {path} is corrupt ({exc}); recomputing it")
        return None


def write_entry(path: Path, payload: dict) -> None:
    """Store a cache entry: `payload` with its own sha256, written atomically (what `read_entry` checks)."""
    write_text_atomic(path, json.dumps({"sha256": _digest(payload), "payload": payload}, indent=1))


@contextmanager
def unless_locked(lock_path: Path):
    """Hold `lock_path`'s exclusive lock if nobody holds it (yields True), else yield False at once. A lock file that
    does not exist is nobody's (yields True without creating it)."""
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except FileNotFoundError:
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def exclusive(lock_path: Path, waiting_message: str = ""):
    """Hold an exclusive lock on `lock_path` (POSIX advisory lock, released when the process dies)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting_message:
                print(waiting_message, file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class Store:
    """Run results, trained models, checkpoints and locks under one folder (default `.cache/`)."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else cache_dir()
        self.trained_here = 0  # runs this object trained (the tests and the main job check it)
        self.swept = self.sweep_temporaries()

    def sweep_temporaries(self) -> list[Path]:
        """Remove the temporary files (`.<name>.<random>.tmp`) that writers killed mid-write left behind. Every file
        of a run is written while its lock is held, so a temporary file whose run lock nobody holds has no running
        writer: it is removed under that lock. A run being trained keeps its files. Returns what was removed."""
        removed = []
        for sub in ("runs", "models", "checkpoints"):
            try:
                stale = sorted(p for p in (self.root / sub).iterdir() if p.name.startswith(".") and p.suffix == ".tmp")
            except OSError:  # no such folder yet, or not readable: nothing to sweep here
                continue
            for tmp in stale:
                key = tmp.name[1:].split(".", 1)[0]
                with unless_locked(self.paths(key)["lock"]) as nobody_writing:
                    if not nobody_writing:
                        continue
                    try:
                        tmp.unlink()
                        removed.append(tmp)
                    except FileNotFoundError:
                        pass
                    except OSError:
                        continue  # a read-only cache: left as it is, and nothing is written there either
        return removed

    def paths(self, key: str) -> dict[str, Path]:
        return {
            "entry": self.root / "runs" / f"{key}.json",
            "model": self.root / "models" / f"{key}.pt",
            "checkpoint": self.root / "checkpoints" / f"{key}.pt",
            "lock": self.root / "locks" / f"{key}.lock",
        }

    def cached(self, spec: RunSpec) -> RunResult | None:
        """The stored result of `spec`, if there is a complete one (entry and trained-model file)."""
        key = spec.key()
        paths = self.paths(key)
        payload = read_entry(paths["entry"], key)
        if payload is None:
            return None
        if not paths["model"].is_file():
            warnings.warn(f"the trained model of cached run {spec.label} ({paths['model']}) is missing; retraining")
            return None
        if payload.get("model_sha256") and sha256_file(paths["model"]) != payload["model_sha256"]:
            warnings.warn(
                f"the trained model of cached run {spec.label} ({paths['model']}) is not the one its entry "
                "recorded (damaged or replaced); retraining"
            )
            return None
        return RunResult(
            spec=spec,
            key=key,
            history=History.from_dict(payload["history"]),
            metrics=payload["metrics"],
            parameters=payload["parameters"],
            train_seconds=payload["train_seconds"],
            device=payload["device"],
            provenance=payload["provenance"],
            model_path=paths["model"],
            environment=payload.get("environment", {}),
        )

    def by_key(self, key: str) -> RunResult | None:
        """The stored run with this key, if it is complete and its key still holds under today's code."""
        payload = read_entry(self.paths(key)["entry"], key)
        if payload is None:
            return None
        try:
            spec = RunSpec.from_dict(payload["spec"])
        except Exception:  # an entry of another version of the project
            return None
        return self.cached(spec) if spec.key() == key else None

    def teachers(self, spec: RunSpec) -> list[RunResult]:
        """The trained teacher runs of a distilled run, checked to have seen exactly the images it trains on (a
        train-only student must not learn from a teacher that saw the validation images it is chosen on)."""
        found = []
        for key in spec.teacher:
            teacher = self.by_key(key)
            if teacher is None:
                raise ConfigError(
                    f"run {spec.label}: its teacher run {key} is not in the results store {self.root} (or was "
                    "trained by other code); train the teacher first"
                )
            t = teacher.spec
            if (t.data, t.split_seed, t.limits, t.train_on) != (spec.data, spec.split_seed, spec.limits, spec.train_on):
                raise ConfigError(
                    f"run {spec.label}: teacher {t.label} ({key}) trained on other images (data, split, limits or "
                    f"train_on {t.train_on!r} against {spec.train_on!r})"
                )
            found.append(teacher)
        return found

    def teacher_logits(
        self, spec: RunSpec, splits: Splits, *, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """The teachers' raw logits on the run's training images (members x images x classes), computed once and
        kept under the teachers' keys like a run (with a checksum; a damaged file is computed again)."""
        teachers = self.teachers(spec)
        ident = json.dumps({"teacher": list(spec.teacher), "train_on": spec.train_on}, sort_keys=True)
        path = self.root / "teachers" / f"{hashlib.sha256(ident.encode()).hexdigest()[:24]}.pt"
        images = spec.training_splits(splits).train_images
        stored = load_tensor_file(path, "logits")
        if stored is not None and tuple(stored.shape) == (len(teachers), len(images), splits.num_classes):
            return stored
        with torch.no_grad():
            logits = torch.stack([t.trained_model.logits(images, device=device, raw=True).cpu() for t in teachers])
        ensure_writable(path.parent, "results cache", "Set EMNIST_CACHE to a writable folder.")
        save_tensor_file(path, "logits", logits)
        return logits

    def check_writable(self, spec: RunSpec | None = None, parameters: int = 0) -> None:
        """Fail before any training if the store cannot take the run's files."""
        hint = "Set EMNIST_CACHE to a writable folder."
        for sub in ("runs", "models", "checkpoints", "locks"):
            ensure_writable(self.root / sub, "results cache", hint)
        # two checkpoints (weights, two optimiser moments, a weight average) + model file + margin
        require_free_space(self.root, 10 * 4 * parameters + 16 * 2**20, "results cache")

    def run(
        self,
        spec: RunSpec,
        splits: Splits,
        *,
        device: torch.device | str | None = None,
        retrain: bool = False,
        progress: bool = True,
        callbacks: Sequence[EpochCallback] = (),
    ) -> RunResult:
        """The result of `spec` on `splits`: cached, or trained now (see the module docstring)."""
        if spec.data != splits.provenance["checksum"]:
            raise ValueError(
                f"run {spec.label} is bound to data {spec.data[:12] or '(none)'}, not to the splits "
                f"given ({splits.provenance['checksum'][:12]})"
            )
        if not retrain:
            cached = self.cached(spec)
            if cached is not None:
                return cached
        key = spec.key()
        paths = self.paths(key)
        parameters = count_parameters(build_model(spec.model, splits.num_classes))
        self.check_writable(spec, parameters)
        with exclusive(paths["lock"], f"waiting: another process is training {spec.label} ({key})"):
            cached = None if retrain else self.cached(spec)  # it may have finished while we waited
            if cached is not None:
                return cached
            if retrain:
                for path in checkpoint_files(paths["checkpoint"]):
                    path.unlink(missing_ok=True)
            device = torch.device(device) if device is not None else pick_device()
            teacher = self.teacher_logits(spec, splits, device=device) if spec.teacher else None
            started = time.perf_counter()
            trained = train_run(
                spec,
                splits,
                device=device,
                checkpoint=paths["checkpoint"],
                progress=progress,
                callbacks=callbacks,
                teacher_logits=teacher,
            )
            mean, std = input_normalisation(spec.recipe, spec.training_splits(splits))
            model = TrainedModel(
                trained.model,
                spec.model,
                list(splits.classes),
                mean,
                std,
                dict(splits.provenance),
                run={**spec.as_dict(), "key": key},
                metrics={**trained.metrics, "parameters": parameters},
            )
            model.save(paths["model"])
            del teacher
            result = RunResult(
                spec=spec,
                key=key,
                history=trained.history,
                metrics=trained.metrics,
                parameters=parameters,
                train_seconds=sum(trained.history.seconds),
                device=device_name(device),
                provenance=dict(splits.provenance),
                model_path=paths["model"],
                environment=environment(started),
                _model=model,
            )
            write_entry(paths["entry"], {**result.to_json(), "model_sha256": sha256_file(paths["model"])})
            for path in checkpoint_files(paths["checkpoint"])[:2]:  # finished: no longer needed (a set-aside one stays)
                path.unlink(missing_ok=True)
            self.trained_here += 1
            return result


def save_tensor_file(path: Path, name: str, tensor: torch.Tensor) -> None:
    """One tensor with the checksum of its bytes, written atomically (read back by `load_tensor_file`)."""
    buffer = io.BytesIO()
    state = {name: tensor.contiguous()}
    torch.save({**state, "checksum": state_checksum(state)}, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def load_tensor_file(path: Path, name: str) -> torch.Tensor | None:
    """The tensor `save_tensor_file` wrote, or None (with a warning if the file is there but damaged)."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        recorded = state.pop("checksum")
        if recorded != state_checksum(state) or not isinstance(state.get(name), torch.Tensor):
            raise ValueError("checksum mismatch")
        return state[name]
    except Exception as exc:
        warnings.warn(f"cached file {path} is damaged ({str(exc)[:120] or type(exc).__name__}); computing it again")
        return None


def environment(started: float) -> dict:
    """Where and when a run was trained (recorded, never part of a key)."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
