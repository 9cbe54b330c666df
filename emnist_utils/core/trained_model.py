"""A trained model as one object and one file: weights, how it was trained, and what it applies when it predicts.

The file holds the weights, the model spec and the run it came from, the input normalisation, the class names,
the training data's provenance, the fingerprint of the architecture's code, metrics, and whatever is applied at
prediction time (test-time shifts, a logit adjustment). It is written with `torch.save` over plain tensors and
one JSON string, and read with `torch.load(weights_only=True)`, which never executes code from the file.
Loading refuses what could not have come out of training: weights that are not floating point, non-finite tensors,
BatchNorm variances that are not positive, test-time shifts larger than training chooses, a logit adjustment that no
training prior and strength gives (the file stores the class counts and the strength, and the vector is derived),
architecture code that changed since the file was written (naming what changed), and, when asked, classes that
differ from the data's. Each refusal is one line naming the file and the field. Every command and notebook that
predicts goes through this object, so none recomputes the normalisation.
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

from .data import OFFICIAL_COUNTS
from .evaluation import ADJUSTMENT_STRENGTHS, TTA_SHIFTS, logit_adjustment, predict_logits
from .fingerprint import changed
from .paths import write_bytes_atomic
from .registry import ConfigError, ModelSpec, architecture_fingerprint, build_model, count_parameters
from .splits import prior_from_counts

FORMAT = "emnist-cnn/trained-model/3"
_KEEP = object()
# Batch of prediction on a CPU: measured 1.3-1.6x faster than 2,048 for the lean CNNs and the report's model
# (2-core AMD EPYC, torch 2.14.1); predictions agree with any other batch size up to float rounding.
PREDICT_BATCH_SIZE = 256
# What a file may ask for at prediction time: shifts no larger than training ever chooses, adjustment strengths in the
# range validation chooses from, class counts no larger than the largest EMNIST training split.
MAX_TTA_SHIFT = max(abs(v) for shift in TTA_SHIFTS for v in shift)
STRENGTH_RANGE = (min(ADJUSTMENT_STRENGTHS), max(ADJUSTMENT_STRENGTHS))
MAX_TRAINING_IMAGES = max(counts["train"] for counts in OFFICIAL_COUNTS.values())


class ModelFileError(RuntimeError):
    """A trained-model file that cannot be used as asked; the message says why and what to do."""


@dataclass(frozen=True)
class LogitAdjustment:
    """A prior correction as the file records it: the training split's class counts and the strength validation
    chose. The vector added to the logits is derived from them, never stored, so a file cannot carry an adjustment
    that no training prior and strength would give."""

    class_counts: tuple[int, ...]
    strength: float

    def __post_init__(self):
        counts = self.class_counts
        if not isinstance(counts, (list, tuple)) or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in counts
        ):
            raise ModelFileError("adjustment.class_counts must be positive whole numbers (training images per class)")
        if sum(counts) > MAX_TRAINING_IMAGES:
            raise ModelFileError(
                f"adjustment.class_counts add up to {sum(counts):,} training images, more than the largest EMNIST "
                f"training split ({MAX_TRAINING_IMAGES:,})"
            )
        strength = self.strength
        low, high = STRENGTH_RANGE
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not low <= strength <= high:
            raise ModelFileError(f"adjustment.strength must be a number in [{low:g}, {high:g}], got {strength!r}")
        object.__setattr__(self, "class_counts", tuple(counts))
        object.__setattr__(self, "strength", float(strength))

    def vector(self) -> torch.Tensor:
        return logit_adjustment(prior_from_counts(self.class_counts), self.strength)

    def as_dict(self) -> dict:
        return {"class_counts": list(self.class_counts), "strength": self.strength}

    @classmethod
    def from_dict(cls, d) -> LogitAdjustment:
        if not isinstance(d, dict) or set(d) != {"class_counts", "strength"}:
            raise ModelFileError("adjustment must record exactly class_counts and strength")
        return cls(d["class_counts"], d["strength"])


def check_shifts(shifts) -> tuple[tuple[int, int], ...]:
    """Test-time shifts as (dx, dy) whole pixels, each within what training ever chooses."""
    try:
        shifts = tuple((int(dx), int(dy)) for dx, dy in shifts)
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"tta_shifts must be (dx, dy) pairs of whole pixels ({exc})") from exc
    if not shifts:
        raise ModelFileError("tta_shifts is empty; (0, 0) alone means no test-time shift")
    too_far = [s for s in shifts if max(abs(s[0]), abs(s[1])) > MAX_TTA_SHIFT]
    if too_far:
        raise ModelFileError(
            f"tta_shifts {list(too_far[0])} moves the image more than {MAX_TTA_SHIFT} pixel(s), "
            "further than training ever chooses"
        )
    return shifts


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
    adjustment: LogitAdjustment | None = None  # the prior correction applied at prediction time
    tta_shifts: tuple[tuple[int, int], ...] = ((0, 0),)  # test-time shifts averaged at prediction time

    def __post_init__(self):
        self.tta_shifts = check_shifts(self.tta_shifts)
        if self.adjustment is not None and not isinstance(self.adjustment, LogitAdjustment):
            raise TypeError("adjustment must be a LogitAdjustment (class counts and strength) or None")
        if self.adjustment is not None and len(self.adjustment.class_counts) != len(self.classes):
            raise ModelFileError(
                f"adjustment.class_counts has {len(self.adjustment.class_counts)} entries for "
                f"{len(self.classes)} classes"
            )
        if not self.fingerprint:
            self.fingerprint = architecture_fingerprint(self.spec.arch)

    @property
    def parameters(self) -> int:
        return count_parameters(self.model)

    def with_prediction(self, *, adjustment=_KEEP, tta_shifts=_KEEP) -> TrainedModel:
        """The same weights (shared, not copied) with other prediction-time settings: `adjustment` a LogitAdjustment
        or None for none, `tta_shifts` a list of (dx, dy) shifts; omitted ones stay."""
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
            adjustment,
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
            out = out + self.adjustment.vector().to(out.dtype)
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
            "prediction": {
                "adjustment": self.adjustment.as_dict() if self.adjustment is not None else None,
                "tta_shifts": [list(s) for s in self.tta_shifts],
            },
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
        try:
            adjustment = prediction.get("adjustment")
            adjustment = LogitAdjustment.from_dict(adjustment) if adjustment is not None else None
            tta_shifts = check_shifts(prediction.get("tta_shifts", ((0, 0),)))
        except ModelFileError as exc:
            raise ModelFileError(f"{path}: prediction.{exc}") from exc
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
        _check_dtypes(path, state, model.state_dict())
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
                tta_shifts,
            )
        except ModelFileError as exc:
            raise ModelFileError(f"{path}: prediction.{exc}") from exc
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"{path}: invalid prediction settings ({exc})") from exc


def _check_dtypes(path: Path, state: dict, expected: dict) -> None:
    """Refuse weights stored with another dtype than the architecture's (e.g. integers where floats belong):
    loading would silently convert them into a different model."""
    for name, value in state.items():
        want = expected.get(name)
        if want is not None and value.dtype != want.dtype:
            raise ModelFileError(
                f"{path}: tensor {name!r} is stored as {value.dtype}; the architecture holds it as {want.dtype} "
                "(weights must be floating point). The file is damaged or was not written by this project."
            )


def _check_tensors(path: Path, state: dict) -> None:
    """Refuse weights that cannot give meaningful predictions: non-tensors, NaN or infinite values, BatchNorm
    variances that are not positive."""
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ModelFileError(f"{path}: entry {name!r} of the weights is not a tensor")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise ModelFileError(
                f"{path}: tensor {name!r} holds {bad} NaN or infinite value(s); the weights are "
                "damaged (or training diverged). Retrain the model."
            )
        if name.endswith("running_var") and bool((value <= 0).any()):
            raise ModelFileError(
                f"{path}: tensor {name!r} holds variances that are not positive; the weights are damaged."
            )
