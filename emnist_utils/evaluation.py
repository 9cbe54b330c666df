"""Inference and the numbers a report needs: accuracy, per-class accuracy, confusion, confusable pairs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

EVAL_BATCH_SIZE = 2048  # inference holds no activations for backward: large batches are fastest

# Pairs and triples EMNIST's writers cannot tell apart either (the report's and the literature's list).
CONFUSABLE_GROUPS = [("0", "O"), ("1", "I", "l"), ("2", "Z"), ("5", "S"), ("9", "g", "q"), ("F", "f"),
                     ("C", "c"), ("K", "k"), ("M", "m"), ("P", "p"), ("U", "u"), ("V", "v"), ("W", "w"),
                     ("X", "x"), ("Y", "y"), ("J", "j"), ("L", "l"), ("O", "o"), ("S", "s"), ("Z", "z")]


def predict_logits(model: nn.Module, images: torch.Tensor, mean: float, std: float, *,
                   device: torch.device | str | None = None, batch_size: int = EVAL_BATCH_SIZE,
                   channels_last: bool | None = None) -> torch.Tensor:
    """Logits for uint8 images (N, 28, 28), in eval mode, on `device` (default: the model's).

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
    scale, shift = 1.0 / (255.0 * std), -mean / std
    out = []
    with torch.inference_mode():  # not around the layout changes: parameters must stay normal tensors
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device).unsqueeze(1).float().mul_(scale).add_(shift)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(model(x).float().cpu())
    model.train(was_training)
    if restore_layout:
        model.to(memory_format=torch.contiguous_format)
    return torch.cat(out) if out else torch.empty(0, 0)


def _is_channels_last(model: nn.Module) -> bool:
    kernels = [p for p in model.parameters() if p.dim() == 4]
    return bool(kernels) and all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)


def predict(model: nn.Module, images: torch.Tensor, mean: float, std: float, **kwargs) -> torch.Tensor:
    return predict_logits(model, images, mean, std, **kwargs).argmax(1)


def evaluate_loss_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: float, std: float,
                           **kwargs) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (%) of `model` on a whole split."""
    logits = predict_logits(model, images, mean, std, **kwargs)
    loss = float(nn.functional.cross_entropy(logits, labels.cpu()))
    return loss, accuracy(logits.argmax(1), labels)


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Percentage of correct predictions."""
    predictions, labels = torch.as_tensor(predictions).cpu(), torch.as_tensor(labels).cpu()
    if len(labels) == 0:
        raise ValueError("accuracy of an empty split is undefined")
    return 100.0 * float((predictions == labels).float().mean())


def confusion_matrix(predictions, labels, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes (scikit-learn's convention)."""
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    return sk_confusion_matrix(np.asarray(labels), np.asarray(predictions), labels=list(range(num_classes)))


def per_class_accuracy(predictions, labels, classes: list[str]) -> pd.DataFrame:
    cm = confusion_matrix(predictions, labels, len(classes))
    support = cm.sum(1)
    acc = np.divide(100.0 * np.diag(cm), support, out=np.full(len(classes), np.nan), where=support > 0)
    return (pd.DataFrame({"class": classes, "accuracy": acc, "support": support})
            .sort_values("accuracy").reset_index(drop=True))


def most_confused_pairs(predictions, labels, classes: list[str], top: int = 15) -> pd.DataFrame:
    """The (true, predicted) pairs with the most errors, with the share of the true class they take."""
    cm = confusion_matrix(predictions, labels, len(classes)).astype(float)
    support = cm.sum(1)
    np.fill_diagonal(cm, 0)
    flat = np.argsort(cm, axis=None)[::-1][:top]
    rows = []
    for idx in flat:
        t, p = divmod(int(idx), len(classes))
        if cm[t, p] == 0:
            break
        rows.append({"true": classes[t], "predicted": classes[p], "count": int(cm[t, p]),
                     "share_of_true_class_%": 100.0 * cm[t, p] / max(support[t], 1)})
    return pd.DataFrame(rows)


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
