"""emnist_utils.core.splits: the train/validation split, normalisation, class counts and balance, make_splits with
its limits, class-aware sampling weights and the mini-batches (plain and weighted)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import BALANCED_CLASSES

from emnist_utils.core import splits as S
from emnist_utils.core.data import EMNIST


def _emnist(train_labels, test_labels, classes=BALANCED_CLASSES, seed=0) -> EMNIST:
    """An in-memory EMNIST whose test image i is filled with the value i (so a subset shows which it took)."""
    train_labels, test_labels = torch.as_tensor(train_labels), torch.as_tensor(test_labels)
    g = torch.Generator().manual_seed(seed)
    train_images = torch.randint(0, 256, (len(train_labels), 28, 28), generator=g, dtype=torch.uint8)
    test_images = (torch.arange(len(test_labels)) % 256).to(torch.uint8).view(-1, 1, 1).expand(-1, 28, 28).clone()
    return EMNIST(
        split="synth",
        root=Path("."),
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        classes=list(classes),
        checksum="c" * 64,
        verified_by="test",
    )


def _taken(splits: S.Splits) -> list[int]:
    """The indices of the test images a Splits holds (see _emnist)."""
    return splits.test_images[:, 0, 0].tolist()


# ----------------------------------------------------------------------------- train / validation split


def test_train_val_split_report_sizes():
    train, val = S.train_val_split(112_800, seed=0)
    assert len(train) == 100_000 and len(val) == 12_800
    assert torch.equal(torch.sort(torch.cat([train, val])).values, torch.arange(112_800))  # disjoint, covering
    train2, val2 = S.train_val_split(112_800, seed=0)
    assert torch.equal(train, train2) and torch.equal(val, val2)
    train3, val3 = S.train_val_split(112_800, seed=1)
    assert not torch.equal(val, val3)
    assert len(val3) == 12_800
    # the same proportion on a smaller set: 12,800 / 112,800 of 1,128 is 128
    train4, val4 = S.train_val_split(1_128, seed=0)
    assert len(train4) == 1_000 and len(val4) == 128


def test_make_splits_normalisation_and_limits():
    labels = torch.arange(2000) % 47
    data = _emnist(labels, torch.arange(300) % 47)
    full = S.make_splits(data, seed=3)
    train_idx, val_idx = S.train_val_split(2000, seed=3)
    assert full.sizes() == {"train": len(train_idx), "validation": len(val_idx), "test": 300}
    assert torch.equal(full.train_images, data.train_images[train_idx])
    assert torch.equal(full.val_images, data.train_images[val_idx])
    assert torch.equal(full.train_labels, labels[train_idx]) and torch.equal(full.val_labels, labels[val_idx])
    assert torch.equal(full.test_images, data.test_images) and torch.equal(full.test_labels, data.test_labels)
    direct = data.train_images.numpy()[train_idx.numpy()].astype(np.float64) / 255.0
    assert full.mean == pytest.approx(direct.mean(), abs=1e-12)
    assert full.std == pytest.approx(direct.std(ddof=1), abs=1e-12)
    # computed from the training split only, not from all training images
    everything = data.train_images.numpy().astype(np.float64) / 255.0
    assert full.mean != everything.mean()

    small = S.make_splits(data, seed=3, train_limit=500, val_limit=50, test_limit=20)
    assert small.sizes() == {"train": 500, "validation": 50, "test": 20}
    assert torch.equal(small.train_images, data.train_images[train_idx[:500]])
    assert torch.equal(small.val_images, data.train_images[val_idx[:50]])
    sub = data.train_images.numpy()[train_idx[:500].numpy()].astype(np.float64) / 255.0
    assert small.mean == pytest.approx(sub.mean(), abs=1e-12)
    assert small.std == pytest.approx(sub.std(ddof=1), abs=1e-12)
    assert small.provenance == data.provenance() and small.classes == data.classes and small.seed == 3
    assert small.num_classes == 47


def test_make_splits_test_limit_takes_classes_in_turn():
    # test split sorted by class: 4 of class 0 (indices 0-3), 4 of class 1 (4-7), 1 of class 2 (8)
    test_labels = [0, 0, 0, 0, 1, 1, 1, 1, 2]
    data = _emnist(torch.arange(30) % 3, test_labels, classes="abc")
    # one of each class in turn, the earliest first, until the limit; a class that runs out is skipped
    assert _taken(S.make_splits(data, test_limit=3)) == [0, 4, 8]
    assert _taken(S.make_splits(data, test_limit=6)) == [0, 1, 2, 4, 5, 8]
    assert _taken(S.make_splits(data, test_limit=7)) == [0, 1, 2, 4, 5, 6, 8]
    limited = S.make_splits(data, test_limit=5)
    assert _taken(limited) == [0, 1, 4, 5, 8]
    assert limited.test_labels.tolist() == [0, 0, 1, 1, 2]  # labels travel with their images
    # no limit, or one that is not smaller than the split: everything in its stored order
    for limit in (None, 9, 50):
        assert _taken(S.make_splits(data, test_limit=limit)) == list(range(9))


def test_make_splits_test_limit_balanced_on_real_standin(small_splits):
    # the stand-in's test split has 200 images of each of its 47 classes; 470 = 10 of each
    assert S.class_counts(small_splits.test_labels, 47).tolist() == [10] * 47
    assert small_splits.test_is_balanced


def test_test_is_balanced_reflects_the_whole_test_split():
    # whole test split balanced (3 of each), but a limit of 7 takes 3, 2, 2
    balanced = _emnist(torch.arange(30) % 3, [0, 0, 0, 1, 1, 1, 2, 2, 2], classes="abc")
    limited = S.make_splits(balanced, test_limit=7)
    assert S.class_counts(limited.test_labels, 3).tolist() == [3, 2, 2]
    assert limited.test_is_balanced is True
    # whole test split imbalanced (4, 4, 1), but a limit of 3 takes one of each
    imbalanced = _emnist(torch.arange(30) % 3, [0, 0, 0, 0, 1, 1, 1, 1, 2], classes="abc")
    limited = S.make_splits(imbalanced, test_limit=3)
    assert S.class_counts(limited.test_labels, 3).tolist() == [1, 1, 1]
    assert limited.test_is_balanced is False
    assert S.make_splits(imbalanced).test_is_balanced is False


# ----------------------------------------------------------------------------- counts, balance, priors


def test_class_counts_and_is_balanced():
    assert S.class_counts(torch.tensor([0, 2, 2]), 4).tolist() == [1, 0, 2, 0]
    assert S.is_balanced(torch.tensor([0, 1, 2, 2, 1, 0]), 3)
    assert not S.is_balanced(torch.tensor([0, 1, 2, 2, 1]), 3)
    assert not S.is_balanced(torch.tensor([0, 1, 0, 1]), 3)  # class 2 has no example at all


def test_train_prior():
    data = _emnist(torch.tensor([0, 0, 0, 1] * 10), [0, 1], classes="ab")
    splits = S.make_splits(data, train_limit=None)
    counts = np.bincount(splits.train_labels.numpy(), minlength=2)
    np.testing.assert_allclose(splits.train_prior().numpy(), counts / counts.sum(), rtol=1e-6)
    assert splits.train_prior().dtype == torch.float32


# ----------------------------------------------------------------------------- class-aware sampling


# 30 examples, interleaved: class 0 once, class 1 four times, class 2 sixteen times, class 3 nine times
SKEWED = torch.tensor([2, 1, 3, 2, 2, 0, 3, 2, 1, 2, 3, 2, 2, 3, 2, 1, 2, 3, 2, 3, 2, 2, 3, 1, 2, 3, 2, 2, 3, 2])
# sqrt of the counts 1, 4, 16, 9 is 1, 2, 4, 3 (sum 10): class draw probabilities 0.1, 0.2, 0.4, 0.3
SQRT_EXPECTED = [0.1, 0.2, 0.4, 0.3]


def _class_mass(weights: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """The probability that one weighted draw picks each class."""
    w = weights.double()
    return [float(w[labels == k].sum() / w.sum()) for k in range(num_classes)]


def test_skewed_labels_are_what_the_expectations_assume():
    assert S.class_counts(SKEWED, 4).tolist() == [1, 4, 16, 9]


def test_sampling_weights_none_for_balanced_training_split_and_for_none():
    balanced = torch.arange(60) % 6
    for sampling in S.SAMPLINGS:
        assert S.sampling_weights(balanced, 6, sampling) is None
    assert S.sampling_weights(SKEWED, 4, "none") is None
    with pytest.raises(ValueError, match="unknown sampling"):
        S.sampling_weights(SKEWED, 4, "inverse")


def test_sqrt_sampling_draws_classes_in_proportion_to_sqrt_of_count():
    weights = S.sampling_weights(SKEWED, 4, "sqrt")
    assert weights.shape == SKEWED.shape and bool((weights > 0).all())
    assert _class_mass(weights, SKEWED, 4) == pytest.approx(SQRT_EXPECTED, abs=1e-12)
    # within a class every example is equally likely
    for k in range(4):
        assert len(set(weights[SKEWED == k].tolist())) == 1
    # a class with no training example gets no draws; the others keep their proportions
    assert _class_mass(S.sampling_weights(SKEWED, 5, "sqrt"), SKEWED, 5) == pytest.approx([*SQRT_EXPECTED, 0.0])


def test_balanced_sampling_draws_every_class_equally_often():
    weights = S.sampling_weights(SKEWED, 4, "balanced")
    assert _class_mass(weights, SKEWED, 4) == pytest.approx([0.25] * 4, abs=1e-12)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 28, 28), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _weighted(seed: int = 3, sampling: str = "sqrt", batch_size: int = 7) -> S.Batches:
    """Batches over SKEWED whose labels are the example ids (and SKEWED[id] the class)."""
    weights = S.sampling_weights(SKEWED, 4, sampling)
    return S.Batches(_images(30), torch.arange(30), batch_size, 0.5, 0.25, shuffle=True, seed=seed, weights=weights)


def _ids(batches: S.Batches, epoch: int) -> torch.Tensor:
    return torch.cat([y for _, y in batches.epoch(epoch)])


def test_weighted_batches_draw_n_with_replacement_deterministic_per_seed_and_epoch():
    b = _weighted()
    assert len(b) == 5  # ceil(30 / 7)
    assert [len(y) for _, y in b.epoch(0)] == [7, 7, 7, 7, 2]
    epochs = [_ids(b, e) for e in range(10)]
    assert all(len(ids) == 30 for ids in epochs)
    # with replacement: class 0's single example alone is expected 3 times an epoch, so repeats must show up
    assert any(len(set(ids.tolist())) < 30 for ids in epochs)
    # epoch 7 is the same whether or not epochs 0-6 ran before, and in a fresh object with the same seed
    assert torch.equal(_ids(_weighted(), 7), epochs[7])
    assert not torch.equal(epochs[0], epochs[1])
    assert not torch.equal(_ids(_weighted(seed=4), 0), epochs[0])
    # images travel with their ids
    for x, y in b.epoch(2):
        assert torch.equal(x, b.normalise(b.images[y]))


@pytest.mark.parametrize(("sampling", "expected"), [("sqrt", SQRT_EXPECTED), ("balanced", [0.25] * 4)])
def test_weighted_batches_class_frequencies(sampling, expected):
    b = _weighted(sampling=sampling, batch_size=30)
    drawn = torch.cat([SKEWED[_ids(b, e)] for e in range(300)])  # 9,000 draws: std of a frequency <= 0.0053
    freq = (torch.bincount(drawn, minlength=4).double() / len(drawn)).tolist()
    assert freq == pytest.approx(expected, abs=0.03)
    # plain shuffling would follow the counts 1/30, 4/30, 16/30, 9/30 instead
    plain = S.Batches(_images(30), torch.arange(30), 30, 0.5, 0.25, shuffle=True, seed=3)
    assert torch.bincount(SKEWED[_ids(plain, 0)], minlength=4).tolist() == [1, 4, 16, 9]


# ----------------------------------------------------------------------------- batches


def _batches(n=1000, batch_size=64, **kw):
    images = _images(n)
    mean, std = S.normalisation_constants(images)
    return S.Batches(images, torch.arange(n), batch_size, mean, std, **kw), images


def test_batches_cover_every_example_once_per_epoch():
    b, _ = _batches(shuffle=True, seed=5)
    assert len(b) == 16  # ceil(1000 / 64)
    for epoch in range(3):
        sizes = [len(y) for _, y in b.epoch(epoch)]
        assert len(sizes) == 16 and sizes[:-1] == [64] * 15 and sizes[-1] == 1000 - 15 * 64
        assert torch.equal(torch.sort(_ids(b, epoch)).values, torch.arange(1000))
    plain, _ = _batches(shuffle=False)
    assert torch.equal(_ids(plain, 0), torch.arange(1000))
    assert torch.equal(torch.cat([y for _, y in plain]), torch.arange(1000))  # iterating is epoch 0


def test_batches_shuffle_deterministic_per_seed_and_epoch():
    a, _ = _batches(shuffle=True, seed=5)
    b, _ = _batches(shuffle=True, seed=5)
    c, _ = _batches(shuffle=True, seed=6)
    assert torch.equal(_ids(a, 2), _ids(b, 2))  # same (seed, epoch): same order, whatever ran before
    assert not torch.equal(_ids(a, 0), _ids(a, 1))
    assert not torch.equal(_ids(a, 0), _ids(c, 0))
    assert not torch.equal(_ids(a, 0), torch.arange(1000))
    # images travel with their labels
    for x, y in a.epoch(1):
        assert torch.equal(x, a.normalise(a.images[y]))


def test_batches_normalisation():
    b, images = _batches(shuffle=True, seed=0)
    x = torch.cat([x for x, _ in b.epoch(0)]).double()
    assert x.shape == (1000, 1, 28, 28)
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-4
    mean, std = S.normalisation_constants(images)
    expected = (images[:5].double() / 255.0 - mean) / std
    got = S.Batches(images, torch.arange(1000), 5, mean, std).normalise(images[:5])[:, 0].double()
    assert torch.allclose(got, expected, atol=1e-5)


def test_normalisation_constants_and_normalise_values():
    # half the pixels 0, half 255: mean 0.5; sample std over 2 * 784 values of +-0.5 is 0.5 * sqrt(1568 / 1567)
    images = torch.zeros(2, 28, 28, dtype=torch.uint8)
    images[1] = 255
    mean, std = S.normalisation_constants(images)
    assert mean == pytest.approx(0.5, abs=1e-12)
    assert std == pytest.approx(0.5 * (1568 / 1567) ** 0.5, abs=1e-12)
    x = S.normalise(images, 0.5, 0.25)
    assert x.shape == (2, 1, 28, 28) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.full((1, 28, 28), -2.0)) and torch.allclose(x[1], torch.full((1, 28, 28), 2.0))
    mid = S.normalise(torch.full((1, 28, 28), 51, dtype=torch.uint8), 0.1, 0.5)  # (0.2 - 0.1) / 0.5
    assert torch.allclose(mid, torch.full((1, 1, 28, 28), 0.2), atol=1e-6)


def test_batches_channels_last_flag():
    # For 1-channel batches channels_last and contiguous strides coincide, so this mainly checks that the flag
    # is honoured and changes no values.
    cl, _ = _batches(shuffle=True, seed=1, channels_last=True)
    plain, _ = _batches(shuffle=True, seed=1, channels_last=False)
    for (x1, y1), (x2, y2) in zip(cl.epoch(0), plain.epoch(0)):
        assert x1.is_contiguous(memory_format=torch.channels_last)
        assert x2.is_contiguous()
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_batches_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        S.Batches(torch.zeros(3, 28, 28, dtype=torch.uint8), torch.zeros(2, dtype=torch.long), 2, 0.5, 0.2)
