"""The 2022 report's training pipeline, kept as the report wrote it, for the benchmarks to compare `fit` with.

torchvision.datasets.EMNIST with per-sample ToTensor + Normalize, DataLoader(batch_size=290, shuffle=True), a
plain fp32 loop with Adam (torch's defaults besides the learning rate) and cross-entropy, and an evaluation
through a DataLoader after every epoch. The model is the report's final one (REPORT_FINAL, Architecture 2).

Only where the data comes from is ours: torchvision reads split "balanced" from <root>/EMNIST/raw/, so
`torchvision_root` decompresses the loaded split's files there under that name. The train/validation split and
the normalisation are the project's, so both pipelines see the same images. torchvision keeps EMNIST's stored
(transposed) orientation; training and test images are transposed alike, so accuracy is comparable and speed
is unaffected.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from emnist_utils.core.data import EMNIST, file_name
from emnist_utils.core.registry import build_model
from emnist_utils.core.splits import train_val_split
from emnist_utils.core.training import seed_everything
from emnist_utils.experiments.trials import REPORT_FINAL

TORCHVISION_SPLIT = "balanced"  # torchvision's EMNIST knows only the official split names
BATCH_SIZE = REPORT_FINAL.recipe.batch_size  # 290


def torchvision_root(data: EMNIST, dest: Path) -> Path:
    """A folder that torchvision.datasets.EMNIST(dest, split="balanced") reads: the loaded split's four IDX
    files, decompressed, in dest/EMNIST/raw/ under the names of split "balanced"."""
    raw = dest / "EMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for part in ("train", "test"):
        for kind in ("images", "labels"):
            source = data.files[f"{part}_{kind}"]
            opener = gzip.open if source.suffix == ".gz" else open
            with opener(source, "rb") as src, open(raw / file_name(TORCHVISION_SPLIT, part, kind), "wb") as dst:
                shutil.copyfileobj(src, dst)
    return dest


def datasets(
    root: Path,
    mean: float,
    std: float,
    *,
    seed: int = 0,
    train_limit: int | None = None,
    val_limit: int | None = None,
    test_limit: int | None = None,
) -> tuple[Subset, Subset, Subset]:
    """Training, validation and test sets as the report built them; the split is the project's (same seed)."""
    from torchvision import datasets as tv_datasets
    from torchvision import transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))])
    train_set = tv_datasets.EMNIST(root, split=TORCHVISION_SPLIT, train=True, download=False, transform=transform)
    test_set = tv_datasets.EMNIST(root, split=TORCHVISION_SPLIT, train=False, download=False, transform=transform)
    train_idx, val_idx = train_val_split(len(train_set), seed)
    return (
        Subset(train_set, train_idx[:train_limit].tolist()),
        Subset(train_set, val_idx[:val_limit].tolist()),
        Subset(test_set, list(range(len(test_set)))[:test_limit]),
    )


def loader(dataset, *, shuffle: bool, num_workers: int = 0) -> DataLoader:
    return DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=shuffle, num_workers=num_workers)


def new_model(num_classes: int, device: torch.device, seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The report's final model and its optimiser: Adam at lr 1e-3, everything else torch's default."""
    seed_everything(seed)
    model = build_model(REPORT_FINAL.model, num_classes).to(device)
    return model, torch.optim.Adam(model.parameters(), lr=REPORT_FINAL.recipe.lr)


def train_epoch(model, loader, optimizer, loss_fn, device, max_batches: int | None = None) -> tuple[float, float]:
    """One epoch of the report's loop, with its per-batch .item() bookkeeping; returns (loss, accuracy %)."""
    model.train()
    running_loss, correct, seen = 0.0, 0, 0
    for i, (images, labels) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        outputs = model(images)
        loss = loss_fn(outputs, labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item() * len(labels)
        correct += (outputs.argmax(1) == labels).sum().item()
        seen += len(labels)
    return running_loss / max(seen, 1), 100.0 * correct / max(seen, 1)


@torch.no_grad()
def evaluate(model, loader, device, max_batches: int | None = None) -> tuple[float, float]:
    """The report's evaluation: eval mode, no_grad, batches from a DataLoader; returns (loss, accuracy %)."""
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    for i, (images, labels) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        images, labels = images.to(device), labels.to(device)
        outputs = model(images)
        loss_sum += nn.functional.cross_entropy(outputs, labels, reduction="sum").item()
        correct += (outputs.argmax(1) == labels).sum().item()
        seen += len(labels)
    return loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1)
