"""A trained model as one object and one file: weights, how it was trained, and what it applies when it predicts.

The file holds the weights, the model spec and the run it came from, the input normalisation, the class names,
the training data's provenance, the fingerprint of the architecture's code, metrics, and whatever is applied at
prediction time (test-time shifts, a logit adjustment). It is written with `torch.save` over plain tensors and
one JSON string, and read with `torch.load(weights_only=True)`, which never executes code from the file.
Loading refuses non-finite tensors, architecture code that changed since the file was written (naming what
changed), and, when asked, classes that differ from the data's. Every command and notebook that predicts goes
through this object, so none recomputes the normalisation.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .evaluation import predict_logits
from .fingerprint import changed
from .paths import write_bytes_atomic
from .registry import ConfigError, ModelSpec, architecture_fingerprint, build_model, count_parameters

FORMAT = "emnist-cnn/trained-model/2"
_KEEP = object()
# Batch of prediction on a CPU: measured 1.3-1.6x faster than 2,048 for the lean CNNs and the report's model
# (2-core AMD EPYC, torch 2.14.1); predictions agree with any other batch size up to float rounding.
PREDICT_BATCH_SIZE = 256


class ModelFileError(RuntimeError):
    """A trained-model file that cannot be used as asked; the message says why and what to do."""


@dataclass
class TrainedModel:
    model: nn.Module
    spec: ModelSpec
    classes: list[str]
    mean: float
    std: float
    provenance: dict  # the training data: dataset, split, checksum
    run: dict = field(default_factory=dict)  # the run spec it came from (recipe, seed, limits, key, name)
    fingerprint: dict[str, str] = field(default_factory=dict)  # the architecture's code when it was trained
    metrics: dict = field(default_factory=dict)
    adjustment: list[float] | None = None  # added to the logits at prediction time (prior correction)
    tta_shifts: tuple[tuple[int, int], ...] = ((0, 0),)  # test-time shifts averaged at prediction time

    def __post_init__(self):
        self.tta_shifts = tuple(tuple(int(v) for v in s) for s in self.tta_shifts)
        if self.adjustment is not None and len(self.adjustment) != len(self.classes):
            raise ModelFileError(
                f"the logit adjustment has {len(self.adjustment)} entries for {len(self.classes)} classes"
            )
        if not self.fingerprint:
            self.fingerprint = architecture_fingerprint(self.spec.arch)

    @property
    def parameters(self) -> int:
        return count_parameters(self.model)

    def with_prediction(self, *, adjustment=_KEEP, tta_shifts=_KEEP) -> TrainedModel:
        """The same weights (shared, not copied) with other prediction-time settings: `adjustment` a list of
        per-class logit offsets or None for none, `tta_shifts` a list of (dx, dy) shifts; omitted ones stay."""
        if adjustment is _KEEP:
            adjustment = self.adjustment
        if tta_shifts is _KEEP:
            tta_shifts = self.tta_shifts
        return TrainedModel(
            self.model,
            self.spec,
            list(self.classes),
            self.mean,
            self.std,
            dict(self.provenance),
            dict(self.run),
            dict(self.fingerprint),
            dict(self.metrics),
            [float(v) for v in adjustment] if adjustment is not None else None,
            tuple(tta_shifts),
        )

    def logits(
        self, images: torch.Tensor, *, device: torch.device | str | None = None, raw: bool = False
    ) -> torch.Tensor:
        """Scores for uint8 images (N, 28, 28) as EMNIST stores them upright, with this model's normalisation,
        test-time shifts and adjustment (`raw=True`: neither shifts nor adjustment)."""
        if device is not None:
            self.model.to(device)
        out = predict_logits(
            self.model,
            images,
            self.mean,
            self.std,
            device=device,
            batch_size=PREDICT_BATCH_SIZE,
            shifts=((0, 0),) if raw else self.tta_shifts,
        )
        if self.adjustment is not None and not raw:
            out = out + torch.tensor(self.adjustment, dtype=out.dtype)
        return out

    def probabilities(self, images: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.logits(images, **kwargs).softmax(1)

    def predict(self, images: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.logits(images, **kwargs).argmax(1)

    def check_classes(self, classes: Sequence[str], where: str = "the data") -> None:
        """Refuse to score data whose classes differ from the ones this model was trained to tell apart."""
        if list(classes) != list(self.classes):
            raise ModelFileError(
                f"the model predicts {len(self.classes)} classes ({''.join(self.classes)[:60]}), {where} has "
                f"{len(classes)} ({''.join(classes)[:60]}); use data of the split the model was trained on "
                f"({self.provenance.get('dataset', '?')})."
            )

    # --------------------------------------------------------------------------- the file

    def metadata(self) -> dict:
        return {
            "format": FORMAT,
            "model": self.spec.as_dict(),
            "classes": list(self.classes),
            "normalisation": {"mean": self.mean, "std": self.std},
            "provenance": dict(self.provenance),
            "run": self.run,
            "fingerprint": self.fingerprint,
            "metrics": self.metrics,
            "prediction": {"adjustment": self.adjustment, "tta_shifts": [list(s) for s in self.tta_shifts]},
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.model.state_dict().items()}
        buffer = io.BytesIO()
        torch.save(
            {"format": FORMAT, "metadata": json.dumps(self.metadata(), sort_keys=True), "state_dict": state}, buffer
        )
        write_bytes_atomic(path, buffer.getvalue())
        return path

    @classmethod
    def load(cls, path: str | Path, *, allow_code_change: bool = False) -> TrainedModel:
        """Read a trained-model file safely; see the module docstring for what is refused."""
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"no trained-model file at {path}")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelFileError(
                f"{path}: not a trained-model file this project can read safely ({first[:200]}). "
                "Only files holding plain tensors are loaded; nothing in the file was run."
            ) from exc
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
            raise ModelFileError(
                f"{path}: not an emnist-cnn trained-model file of format {FORMAT} (found "
                f"{found!r}). Files of older versions must be trained again."
            )
        try:
            meta = json.loads(payload["metadata"])
            state = dict(payload["state_dict"])
            spec = ModelSpec(**meta["model"])
            classes = [str(c) for c in meta["classes"]]
            mean, std = float(meta["normalisation"]["mean"]), float(meta["normalisation"]["std"])
            prediction = meta.get("prediction") or {}
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise ModelFileError(
                f"{path}: the description stored with the weights is missing or invalid ({exc})"
            ) from exc
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise ModelFileError(f"{path}: invalid input normalisation (mean {mean}, std {std})")
        _check_tensors(path, state)
        adjustment = prediction.get("adjustment")
        if adjustment is not None and not all(isinstance(v, (int, float)) and math.isfinite(v) for v in adjustment):
            raise ModelFileError(f"{path}: the stored logit adjustment holds non-finite values")
        stored = dict(meta.get("fingerprint") or {})
        current = architecture_fingerprint(spec.arch)
        differences = changed(stored, current)
        if differences and not allow_code_change:
            raise ModelFileError(
                f"{path}: the code of architecture {spec.arch!r} changed since these weights were saved "
                f"({', '.join(differences)}), so they may no longer mean the same model. Retrain it, or load "
                "anyway with --allow-code-change (allow_code_change=True) if you know the change is harmless."
            )
        model = build_model(spec, len(classes))
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelFileError(
                f"{path}: the weights do not fit architecture {spec.arch!r} with {spec.shape()} "
                f"and {len(classes)} classes: {str(exc).splitlines()[0]}"
            ) from exc
        model.eval()
        try:
            return cls(
                model,
                spec,
                classes,
                mean,
                std,
                dict(meta.get("provenance") or {}),
                dict(meta.get("run") or {}),
                stored or current,
                dict(meta.get("metrics") or {}),
                adjustment,
                tuple(tuple(s) for s in prediction.get("tta_shifts") or ((0, 0),)),
            )
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: invalid prediction settings ({exc})") from exc


def _check_tensors(path: Path, state: dict) -> None:
    """Refuse weights that cannot give meaningful predictions: non-tensors, NaN or infinite values, negative
    BatchNorm variances."""
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ModelFileError(f"{path}: entry {name!r} of the weights is not a tensor")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise ModelFileError(
                f"{path}: tensor {name!r} holds {bad} NaN or infinite value(s); the weights are "
                "damaged (or training diverged). Retrain the model."
            )
        if name.endswith("running_var") and bool((value < 0).any()):
            raise ModelFileError(f"{path}: tensor {name!r} holds negative variances; the weights are damaged.")
