"""The split rule and the batches: train/validation split, input normalisation, class priors and mini-batches.

Everything here changes what a run trains to, so it is part of every run's code fingerprint. Batches are
sliced from in-memory uint8 tensors and normalised per batch on the target device, so the training loop does
no per-sample Python work. Shuffling is seeded by (seed, epoch): epoch k's order is the same whether or not
the run was interrupted before it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch

from .data import EMNIST

# The report's split: 12,800 of the 112,800 balanced training images are held out for validation.
VALIDATION_FRACTION = 12_800 / 112_800

SAMPLINGS = ("none", "sqrt", "balanced")


def train_val_split(
    n: int, seed: int = 0, val_fraction: float = VALIDATION_FRACTION
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random split keeping the report's proportion (exactly 100,000 / 12,800 on balanced)."""
    n_val = round(n * val_fraction)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:], perm[:n_val]


def normalisation_constants(images: torch.Tensor) -> tuple[float, float]:
    """Mean and std of the pixel values (scaled to [0, 1]) of the given (training) images."""
    x = images.to(torch.float64) / 255.0
    return float(x.mean()), float(x.std())


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.bincount(labels.cpu(), minlength=num_classes)


def prior_from_counts(counts) -> torch.Tensor:
    """Class frequencies from class counts, as every prior here is computed (so that a trained-model file that stores
    the counts derives exactly the adjustment its training chose)."""
    counts = torch.as_tensor(counts).to(torch.float64)
    return (counts / counts.sum()).to(torch.float32)


def is_balanced(labels: torch.Tensor, num_classes: int) -> bool:
    """True when every class has the same number of examples (EMNIST balanced, and every test split here)."""
    counts = class_counts(labels, num_classes)
    return bool((counts == counts[0]).all())


@dataclass
class Splits:
    """Train / validation / test tensors as the models see them, plus the normalisation they share."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    mean: float
    std: float
    classes: list[str]
    provenance: dict
    seed: int = 0  # the seed of the train/validation split
    test_balanced: bool = True  # whether the data's whole test split has as many images of every class
    train_limit: int | None = None  # the limits make_splits applied (None: all), recorded with every run
    val_limit: int | None = None
    validation_trained: bool = False  # the validation images are also in the training part (a refit)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train_labels), "validation": len(self.val_labels), "test": len(self.test_labels)}

    def train_prior(self) -> torch.Tensor:
        """Class frequencies of the training part (what an unweighted model learns to expect)."""
        return prior_from_counts(class_counts(self.train_labels, self.num_classes))

    def with_validation_trained(self) -> Splits:
        """The refit's splits: every labelled image (training and validation) in the training part, normalised by
        their own statistics. The validation part stays for monitoring only: those images are now trained on, so
        nothing may be chosen on them; a refit takes every setting from its train-only twin."""
        if self.validation_trained:
            return self
        train_images = torch.cat([self.train_images, self.val_images])
        mean, std = normalisation_constants(train_images)
        return replace(
            self,
            train_images=train_images,
            train_labels=torch.cat([self.train_labels, self.val_labels]),
            mean=mean,
            std=std,
            validation_trained=True,
        )

    @property
    def test_is_balanced(self) -> bool:
        """Whether the data's test split has as many images of every class (a property of the data, not of a
        profile's subset); then models are chosen on balanced validation accuracy (mean per-class recall),
        which estimates accuracy under that prior."""
        return self.test_balanced


def make_splits(
    data: EMNIST,
    seed: int = 0,
    train_limit: int | None = None,
    val_limit: int | None = None,
    test_limit: int | None = None,
) -> Splits:
    """The report's train/validation split of `data`'s training images, optionally cut to the first
    `*_limit` examples after the seeded shuffle (small profiles), so subsets stay class-mixed. A test limit
    keeps the test split's class balance by taking the same number of each class where it can."""
    train_idx, val_idx = train_val_split(len(data.train_labels), seed)
    train_idx, val_idx = train_idx[:train_limit], val_idx[:val_limit]
    test_idx = _balanced_subset(data.test_labels, test_limit, data.num_classes)
    train_images = data.train_images[train_idx]
    mean, std = normalisation_constants(train_images)
    return Splits(
        train_images=train_images,
        train_labels=data.train_labels[train_idx],
        val_images=data.train_images[val_idx],
        val_labels=data.train_labels[val_idx],
        test_images=data.test_images[test_idx],
        test_labels=data.test_labels[test_idx],
        mean=mean,
        std=std,
        classes=data.classes,
        provenance=data.provenance(),
        seed=seed,
        test_balanced=is_balanced(data.test_labels, data.num_classes),
        train_limit=len(train_idx) if train_limit is not None else None,
        val_limit=len(val_idx) if val_limit is not None else None,
    )


def _balanced_subset(labels: torch.Tensor, limit: int | None, num_classes: int) -> torch.Tensor:
    """The first `limit` indices, taken class by class in turn (all indices when no limit)."""
    if limit is None or limit >= len(labels):
        return torch.arange(len(labels))
    per_class = [torch.nonzero(labels == k).flatten() for k in range(num_classes)]
    depth = max((len(p) for p in per_class), default=0)
    order = [int(p[i]) for i in range(depth) for p in per_class if i < len(p)]
    return torch.tensor(sorted(order[:limit]), dtype=torch.long)


def sampling_weights(labels: torch.Tensor, num_classes: int, sampling: str) -> torch.Tensor | None:
    """Per-example sampling weights for class-aware sampling, or None for plain shuffling.

    `sqrt` draws each class in proportion to the square root of its count, `balanced` each class equally often.
    On a training split that is already balanced every weight is equal and plain shuffling is used, so these
    options then change nothing at all (tested).
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"unknown sampling {sampling!r}; choose one of {SAMPLINGS}")
    if sampling == "none" or is_balanced(labels, num_classes):
        return None
    counts = class_counts(labels, num_classes).to(torch.float64).clamp(min=1)
    per_class = counts.rsqrt() if sampling == "sqrt" else counts.reciprocal()
    return per_class[labels.cpu()]


class Batches:
    """Mini-batches sliced from in-memory uint8 tensors, normalised per batch on the target device.

    With `weights`, each epoch draws as many examples as there are, with replacement, in proportion to the
    weights (class-aware sampling); otherwise each epoch is a permutation. With `soft` (a teacher's probabilities,
    one row per example), every batch carries its rows as a third element.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        mean: float,
        std: float,
        *,
        shuffle: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
        weights: torch.Tensor | None = None,
        soft: torch.Tensor | None = None,
    ):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if soft is not None and len(soft) != len(labels):
            raise ValueError(f"{len(soft)} rows of soft targets for {len(labels)} labels")
        if weights is not None and (len(weights) != len(labels) or not shuffle):
            raise ValueError("sampling weights need one weight per example and shuffle=True")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.mean, self.std = mean, std
        self.channels_last = channels_last
        self.weights = weights
        self.soft = soft.to(self.device) if soft is not None else None

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return normalise(images, self.mean, self.std, channels_last=self.channels_last)

    def order(self, epoch: int) -> torch.Tensor | None:
        """The example indices of `epoch`, or None for the stored order."""
        if not self.shuffle:
            return None
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        n = len(self.labels)
        if self.weights is not None:
            return torch.multinomial(self.weights, n, replacement=True, generator=gen).to(self.device)
        return torch.randperm(n, generator=gen).to(self.device)

    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
        """(images, labels) batches, or (images, labels, soft targets) when the batches carry soft targets."""
        order = self.order(epoch)
        for start in range(0, len(self.labels), self.batch_size):
            if order is None:
                idx = slice(start, start + self.batch_size)
            else:
                idx = order[start : start + self.batch_size]
            if self.soft is None:
                yield self.normalise(self.images[idx]), self.labels[idx]
            else:
                yield self.normalise(self.images[idx]), self.labels[idx], self.soft[idx]

    __iter__ = epoch


def normalise(images: torch.Tensor, mean: float, std: float, *, channels_last: bool = False) -> torch.Tensor:
    """uint8 images (N, 28, 28) as the models see them: (N, 1, 28, 28) float32, (pixel / 255 - mean) / std."""
    x = images.unsqueeze(1).to(torch.float32).mul_(1.0 / (255.0 * std)).add_(-mean / std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
