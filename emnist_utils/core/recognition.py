"""Pictures of handwritten characters to the model's top classes, one result per picture, failing per picture.

Why a module of its own: the command line (`python -m emnist_utils predict`) and notebook 07 must read a picture
exactly the same way, and one bad picture (blank, damaged, several pages) must not stop the others. Each picture
goes through core/handwriting.py's EMNIST conversion, then the trained model with whatever its file applies at
prediction time (test-time shifts, logit adjustment).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .handwriting import ImageError, Prepared, prepare_file
from .trained_model import TrainedModel


@dataclass
class Recognition:
    """The outcome for one picture: its top classes with probabilities, or why it could not be read."""

    source: str
    top: list[tuple[str, float]]  # (class, probability), most likely first; empty when `error`
    prepared: Prepared | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_json(self) -> dict:
        entry = {"image": self.source, "top": [[c, round(p, 6)] for c, p in self.top]}
        return entry if self.ok else {**entry, "error": self.error}

    def line(self) -> str:
        """One line for a terminal: `photo.png: 7 93.1% | 1 3.2% | T 1.0%`."""
        if not self.ok:
            return f"{self.source}: error: {self.error}"
        return f"{self.source}: " + " | ".join(f"{c} {p:.1%}" for c, p in self.top)


def top_classes(
    model: TrainedModel, images: np.ndarray | torch.Tensor, k: int = 5, device: torch.device | str = "cpu"
) -> list[list[tuple[str, float]]]:
    """The k most likely classes of each upright uint8 image (N, 28, 28), with their probabilities."""
    images = torch.as_tensor(np.asarray(images, dtype=np.uint8))
    if images.ndim == 2:
        images = images.unsqueeze(0)
    probabilities = model.probabilities(images, device=device)
    values, indices = probabilities.topk(min(k, probabilities.shape[1]), dim=1)
    return [[(model.classes[int(i)], float(v)) for v, i in zip(row_v, row_i)] for row_v, row_i in zip(values, indices)]


def recognise_files(
    model: TrainedModel, paths: Sequence[str | os.PathLike], k: int = 5, device: torch.device | str = "cpu"
) -> list[Recognition]:
    """Every picture converted, then all the readable ones predicted in one batch; unreadable ones carry their
    error instead of classes."""
    results = []
    for path in paths:
        try:
            results.append(Recognition(str(path), [], prepare_file(path)))
        except ImageError as exc:
            results.append(Recognition(str(path), [], error=str(exc)))
    readable = [r for r in results if r.ok]
    if readable:
        tops = top_classes(model, np.stack([r.prepared.image for r in readable]), k, device)
        for result, top in zip(readable, tops):
            result.top = top
    return results
