"""Inference and the numbers a report needs: logits (with test-time shifts), accuracy and balanced accuracy,
confusion, confusable pairs, and the post-hoc correction of a training prior that differs from the test's."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from torch import nn

from .augment import shift_images
from .splits import normalise

EVAL_BATCH_SIZE = 2048  # inference holds no activations for backward: large batches are fastest

# Test-time augmentation: the image and its one-pixel shifts. Never flips (b/d, p/q are mirror images).
TTA_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))

# Logit adjustment strengths tried on validation (0 = none, 1 = subtract the whole log training prior).
ADJUSTMENT_STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)

# Pairs and triples EMNIST's writers cannot tell apart either (the report's and the literature's list).
CONFUSABLE_GROUPS = [
    ("0", "O"),
    ("1", "I", "l"),
    ("2", "Z"),
    ("5", "S"),
    ("9", "g", "q"),
    ("F", "f"),
    ("C", "c"),
    ("K", "k"),
    ("M", "m"),
    ("P", "p"),
    ("U", "u"),
    ("V", "v"),
    ("W", "w"),
    ("X", "x"),
    ("Y", "y"),
    ("J", "j"),
    ("L", "l"),
    ("O", "o"),
    ("S", "s"),
    ("Z", "z"),
]


def _is_channels_last(model: nn.Module) -> bool:
    kernels = [p for p in model.parameters() if p.dim() == 4]
    return bool(kernels) and all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)


def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    mean: float,
    std: float,
    *,
    device: torch.device | str | None = None,
    batch_size: int = EVAL_BATCH_SIZE,
    channels_last: bool | None = None,
    shifts: Sequence[tuple[int, int]] = ((0, 0),),
) -> torch.Tensor:
    """Logits for uint8 images (N, 28, 28), in eval mode, on `device` (default: the model's). With several
    `shifts`, the mean log-probability over the shifted copies (test-time augmentation).

    On the CPU the model runs in channels_last layout by default (about a third faster for these convs);
    a model that was not in that layout is put back as it was afterwards.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if channels_last is None:
        channels_last = device.type == "cpu"
    restore_layout = channels_last and not _is_channels_last(model)
    if restore_layout:
        model.to(memory_format=torch.channels_last)
    was_training = model.training
    model.eval()
    out = []
    with torch.inference_mode():  # not around the layout changes: parameters must stay normal tensors
        for start in range(0, len(images), batch_size):
            x = normalise(images[start : start + batch_size].to(device), mean, std, channels_last=channels_last)
            if len(shifts) == 1 and tuple(shifts[0]) == (0, 0):
                out.append(model(x).float().cpu())
            else:
                total = sum(
                    model(shift_images(x, dx, dy, background=-mean / std)).float().log_softmax(1) for dx, dy in shifts
                )
                out.append((total / len(shifts)).cpu())
    model.train(was_training)
    if restore_layout:
        model.to(memory_format=torch.contiguous_format)
    return torch.cat(out) if out else torch.empty(0, 0)


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Percentage of correct predictions."""
    predictions, labels = torch.as_tensor(predictions).cpu(), torch.as_tensor(labels).cpu()
    if len(labels) == 0:
        raise ValueError("accuracy of an empty split is undefined")
    return 100.0 * float((predictions == labels).float().mean())


def balanced_accuracy(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> float:
    """Mean per-class recall (%), over the classes present in `labels`: the accuracy a balanced test split
    would show, whatever the class frequencies of the split it is computed on."""
    predictions, labels = torch.as_tensor(predictions).cpu(), torch.as_tensor(labels).cpu()
    if len(labels) == 0:
        raise ValueError("balanced accuracy of an empty split is undefined")
    num_classes = num_classes or int(labels.max()) + 1
    support = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    hits = torch.bincount(labels[predictions == labels], minlength=num_classes).to(torch.float64)
    present = support > 0
    return 100.0 * float((hits[present] / support[present]).mean())


def evaluate_split(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: float, std: float, **kwargs
) -> dict[str, float]:
    """Mean cross-entropy, accuracy and balanced accuracy (%) of `model` on a whole split."""
    logits = predict_logits(model, images, mean, std, **kwargs)
    labels = labels.cpu()
    predictions = logits.argmax(1)
    return {
        "loss": float(nn.functional.cross_entropy(logits, labels)),
        "accuracy": accuracy(predictions, labels),
        "balanced_accuracy": balanced_accuracy(predictions, labels, logits.shape[1]),
    }


def logit_adjustment(prior: torch.Tensor, strength: float) -> torch.Tensor:
    """What to add to the logits to undo `strength` of a training prior (Menon et al., 2021): minus strength x
    log prior, centred. For a uniform prior it is zero, so it changes nothing on balanced training data."""
    log_prior = prior.to(torch.float64).clamp(min=1e-12).log()
    log_prior = log_prior - log_prior[0]  # exactly 0 for a uniform prior (a mean of equal values need not be)
    return (-strength * (log_prior - log_prior.mean())).to(torch.float32)


def choose_adjustment(
    logits: torch.Tensor,
    labels: torch.Tensor,
    prior: torch.Tensor,
    *,
    balanced: bool = True,
    strengths: Sequence[float] = ADJUSTMENT_STRENGTHS,
) -> tuple[float, dict[float, float]]:
    """The adjustment strength with the best validation score (balanced accuracy when the test split is
    balanced, else plain accuracy); ties go to the weaker adjustment. Returns it and the score of each."""
    score = balanced_accuracy if balanced else (lambda p, y, k=None: accuracy(p, y))
    scores = {s: score((logits + logit_adjustment(prior, s)).argmax(1), labels, logits.shape[1]) for s in strengths}
    best = max(scores.values())
    return min(s for s, v in scores.items() if v == best), scores


def confusion_matrix(predictions, labels, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes (scikit-learn's convention)."""
    return sk_confusion_matrix(np.asarray(labels), np.asarray(predictions), labels=list(range(num_classes)))


def per_class_accuracy(predictions, labels, classes: list[str]) -> pd.DataFrame:
    cm = confusion_matrix(predictions, labels, len(classes))
    support = cm.sum(1)
    acc = np.divide(100.0 * np.diag(cm), support, out=np.full(len(classes), np.nan), where=support > 0)
    return (
        pd.DataFrame({"class": classes, "accuracy": acc, "support": support})
        .sort_values("accuracy", kind="stable")
        .reset_index(drop=True)
    )


def most_confused_pairs(predictions, labels, classes: list[str], top: int = 15) -> pd.DataFrame:
    """The (true, predicted) pairs with the most errors, with the share of the true class they take."""
    cm = confusion_matrix(predictions, labels, len(classes)).astype(float)
    support = cm.sum(1)
    np.fill_diagonal(cm, 0)
    flat = np.argsort(cm, axis=None, kind="stable")[::-1][:top]
    rows = []
    for idx in flat:
        t, p = divmod(int(idx), len(classes))
        if cm[t, p] == 0:
            break
        rows.append(
            {
                "true": classes[t],
                "predicted": classes[p],
                "count": int(cm[t, p]),
                "share_of_true_class_%": round(100.0 * cm[t, p] / max(support[t], 1), 2),
            }
        )
    return pd.DataFrame(rows, columns=["true", "predicted", "count", "share_of_true_class_%"])


def merged_accuracy(predictions, labels, classes: list[str], groups=CONFUSABLE_GROUPS) -> float:
    """Accuracy when confusing members of a group (e.g. 0/O) is not counted as an error: an estimate of
    how much of the remaining error no classifier could remove."""
    index = {c: i for i, c in enumerate(classes)}
    parent = list(range(len(classes)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for group in groups:
        present = [index[c] for c in group if c in index]
        for other in present[1:]:
            parent[find(other)] = find(present[0])
    root = torch.tensor([find(i) for i in range(len(classes))])
    return accuracy(root[torch.as_tensor(predictions).cpu()], root[torch.as_tensor(labels).cpu()])


def report(predictions: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    """Everything a report gives for one set of test predictions."""
    return {
        "predictions": predictions,
        "classes": list(classes),
        "accuracy": accuracy(predictions, labels),
        "balanced_accuracy": balanced_accuracy(predictions, labels, len(classes)),
        "merged_accuracy": merged_accuracy(predictions, labels, classes),
        "confusion": confusion_matrix(predictions, labels, len(classes)),
        "per_class": per_class_accuracy(predictions, labels, classes),
        "most_confused": most_confused_pairs(predictions, labels, classes),
    }
