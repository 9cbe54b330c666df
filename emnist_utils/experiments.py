"""Run a trial once, remember its result: a cache keyed by everything that changes the outcome.

Key = config + recipe + data checksum + model source hash + training version + profile + seed. A changed
hyperparameter, different data or an edited model never reuses a stale result. Each entry stores the
sha256 of its own payload, so a corrupt or half-written entry is detected and recomputed, never trusted.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .data import Splits
from .models import TrialConfig, build_model, count_parameters, model_code_version
from .paths import atomic_path, cache_dir
from .profiles import Profile
from .training import REPORT_RECIPE, TRAINING_VERSION, History, Recipe, fit, pick_device, seed_everything


def run_key(cfg: TrialConfig, recipe: Recipe, splits: Splits, profile: Profile, seed: int) -> str:
    identity = {
        "config": cfg.training_dict(),
        # Only fields that differ from the defaults: adding a new recipe option keeps old keys valid.
        "recipe": {k: v for k, v in recipe.as_dict().items() if v != getattr(REPORT_RECIPE, k)},
        "data": splits.provenance["checksum"],
        "sizes": splits.sizes(),
        "model_code": model_code_version(cfg.arch),
        "training_version": TRAINING_VERSION,
        "profile": profile.as_dict(),
        "seed": seed,
    }
    if splits.seed != seed:  # several training seeds on one split: the split's seed is part of the identity
        identity["split_seed"] = splits.seed
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


@dataclass
class TrialResult:
    config: TrialConfig
    history: History
    parameters: int
    train_seconds: float
    seed: int
    profile: str
    provenance: dict
    key: str
    recipe: dict = field(default_factory=dict)
    model: nn.Module | None = None
    device: str = ""  # what trained it, e.g. "cpu" or "cuda (NVIDIA H200)"

    @property
    def val_acc(self) -> float:
        """Validation accuracy after the last epoch (what the report's tables give)."""
        return self.history.val_acc[-1]

    def to_json(self) -> dict:
        return {"config": {**self.config.training_dict(), "name": self.config.name,
                           "report_val_acc": self.config.report_val_acc},
                "history": self.history.to_dict(), "parameters": self.parameters,
                "train_seconds": self.train_seconds, "seed": self.seed, "profile": self.profile,
                "provenance": self.provenance, "key": self.key, "recipe": self.recipe, "device": self.device}


def read_entry(path: Path, key: str) -> dict | None:
    """A cache entry's payload if it is complete and self-consistent; None (with a warning) otherwise."""
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text())
        payload = entry["payload"]
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        if entry["sha256"] != digest or payload["key"] != key:
            raise ValueError("checksum or key mismatch")
        return payload
    except Exception as exc:
        warnings.warn(f"cache entry {path} is corrupt ({exc}); recomputing it")
        return None


def write_entry(path: Path, payload: dict) -> None:
    """Store a cache entry: `payload` with its own sha256, written atomically (what `read_entry` checks)."""
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({"sha256": digest, "payload": payload}, indent=1))


def run_trial(cfg: TrialConfig, splits: Splits, profile: Profile, *, seed: int = 0, recipe: Recipe = REPORT_RECIPE,
              retrain: bool = False, keep_model: bool = False, require_model: bool | None = None, device=None,
              progress: bool = True, callbacks=()) -> TrialResult:
    """Train `cfg` (as `profile` runs it) or return the cached result of an identical earlier run.

    With `keep_model`, the trained weights are cached too and returned on `result.model` (on CPU). A cached
    result whose weights are missing is retrained, unless `require_model=False` (a table that needs only the
    metrics: it then gets `result.model = None`).
    Interrupted runs resume from their last epoch checkpoint; finished runs delete their checkpoint.
    """
    cfg = profile.apply(cfg)
    key = run_key(cfg, recipe, splits, profile, seed)
    root = cache_dir()
    entry_path, weights_path = root / "results" / f"{key}.json", root / "weights" / f"{key}.pt"
    checkpoint = root / "checkpoints" / f"{key}.pt"

    payload = None if retrain else read_entry(entry_path, key)
    model = None
    if require_model is None:
        require_model = keep_model
    if payload is not None and keep_model:
        model = _load_cached_weights(weights_path, cfg, key)
        if model is None and require_model:
            payload = None
    if payload is not None:
        return TrialResult(config=cfg, history=History.from_dict(payload["history"]),
                           parameters=payload["parameters"], train_seconds=payload["train_seconds"],
                           seed=seed, profile=profile.name, provenance=payload["provenance"], key=key,
                           recipe=payload["recipe"], model=model,
                           # entries from before devices were recorded all came from CPU runs
                           device=payload.get("device", "cpu"))

    if retrain:
        checkpoint.unlink(missing_ok=True)
    seed_everything(seed)
    model = build_model(cfg)
    device = torch.device(device) if device is not None else pick_device()
    history = fit(model, splits, cfg, seed=seed, recipe=recipe, device=device,
                  checkpoint=checkpoint, run_key=key, progress=progress, callbacks=callbacks)
    result = TrialResult(config=cfg, history=history, parameters=count_parameters(model),
                         train_seconds=sum(history.seconds),
                         seed=seed, profile=profile.name, provenance=dict(splits.provenance), key=key,
                         recipe=recipe.as_dict(), model=model.cpu() if keep_model else None,
                         device=device_name(device))
    if keep_model:
        save_weights(model, cfg, weights_path, provenance=splits.provenance, extra={"key": key})
    write_entry(entry_path, result.to_json())
    checkpoint.unlink(missing_ok=True)  # the run is finished: its checkpoint is no longer needed
    return result


def device_name(device: torch.device) -> str:
    """A device as results record it: the type, plus the accelerator's model name where there is one."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def _load_cached_weights(path: Path, cfg: TrialConfig, key: str) -> nn.Module | None:
    try:
        model, meta = load_weights(path)
        if meta.get("key") != key:
            raise ValueError("weights belong to a different run")
        return model
    except Exception as exc:
        if path.exists():
            warnings.warn(f"cached weights {path} unusable ({exc}); retraining")
        return None


# ----------------------------------------------------------------------------- weights files


class WeightsError(RuntimeError):
    """A weights file that cannot be loaded as asked; the message says why."""


def save_weights(model: nn.Module, cfg: TrialConfig, path: Path, *, provenance: dict, mean: float | None = None,
                 std: float | None = None, extra: dict | None = None) -> None:
    """State dict plus everything needed to rebuild and use it: config, data checksum, normalisation."""
    payload = {"format": "emnist-cnn-weights/1", "config": {**cfg.training_dict(), "name": cfg.name},
               "model_code": model_code_version(cfg.arch), "provenance": dict(provenance),
               "mean": mean, "std": std, "state_dict": {k: v.detach().cpu().contiguous()
                                                        for k, v in model.state_dict().items()},
               **(extra or {})}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_weights(path: str | Path, expected_arch: str | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the model a weights file describes. Fails clearly on a foreign file or another architecture."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"no weights file at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise WeightsError(f"{path}: not a readable weights file ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != "emnist-cnn-weights/1":
        raise WeightsError(f"{path}: not an emnist-cnn weights file (save it with emnist_utils.save_weights)")
    try:
        cfg = TrialConfig(**dict(payload["config"]))
        state_dict = payload["state_dict"]
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"{path}: the config stored with the weights is missing or invalid ({exc})") from exc
    if expected_arch is not None and cfg.arch != expected_arch:
        raise WeightsError(f"{path}: holds weights of architecture {cfg.arch!r}, not {expected_arch!r}")
    model = build_model(cfg)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise WeightsError(f"{path}: weights do not fit architecture {cfg.arch!r} with "
                           f"{cfg.model_kwargs()} (was the model code changed?): {str(exc).splitlines()[0]}") from exc
    model.eval()
    return model, payload
