"""emnist_utils.core.evaluation: logits with test-time shifts, accuracy and balanced accuracy, logit adjustment
and its choice on validation, confusion matrix, per-class accuracy, confusable pairs, merged accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import BALANCED_CLASSES
from torch import nn

from emnist_utils.core import evaluation as E
from emnist_utils.core.models import Architecture2

CLASSES = BALANCED_CLASSES
IDX = {c: i for i, c in enumerate(CLASSES)}


# ----------------------------------------------------------------------------- accuracy


def test_accuracy_and_balanced_accuracy_on_imbalanced_labels():
    labels = torch.tensor([0] * 8 + [1] * 2)
    always_zero = torch.zeros(10, dtype=torch.long)
    assert E.accuracy(always_zero, labels) == pytest.approx(80.0)
    assert E.balanced_accuracy(always_zero, labels) == pytest.approx(50.0)  # (100 + 0) / 2
    # 6 of 8 zeros and both ones right: plain 80%, balanced (75 + 100) / 2
    preds = torch.tensor([0] * 6 + [1] * 2 + [1] * 2)
    assert E.accuracy(preds, labels) == pytest.approx(80.0)
    assert E.balanced_accuracy(preds, labels) == pytest.approx(87.5)


def test_balanced_accuracy_averages_over_classes_present_only():
    labels = torch.tensor([0, 0, 0, 2])
    preds = torch.tensor([0, 0, 1, 2])
    # class 1 never occurs: recall of 0 is 2/3, of 2 is 1; classes absent from the labels do not count
    assert E.balanced_accuracy(preds, labels, num_classes=5) == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert E.balanced_accuracy(preds, labels) == pytest.approx(100 * (2 / 3 + 1) / 2)
    # predictions of a class beyond the labels' maximum are wrong, not an error
    assert E.balanced_accuracy(torch.tensor([4, 4, 4, 4]), labels, num_classes=5) == 0.0


def test_accuracy_accepts_arrays_and_rejects_empty_splits():
    assert E.accuracy(np.array([1, 2, 3]), np.array([1, 2, 0])) == pytest.approx(200 / 3)
    with pytest.raises(ValueError):
        E.accuracy(torch.tensor([]), torch.tensor([]))
    with pytest.raises(ValueError):
        E.balanced_accuracy(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long))


# ----------------------------------------------------------------------------- logit adjustment


def test_logit_adjustment_of_a_uniform_prior_is_zero_and_changes_no_prediction():
    prior = torch.full((47,), 1 / 47)
    logits = torch.randn(100, 47, generator=torch.Generator().manual_seed(0))
    for strength in (0.0, 0.5, 1.0):
        adjustment = E.logit_adjustment(prior, strength)
        assert adjustment.shape == (47,)
        assert torch.count_nonzero(adjustment) == 0
        assert torch.equal((logits + adjustment).argmax(1), logits.argmax(1))


def test_logit_adjustment_by_hand():
    prior = torch.tensor([0.5, 0.25, 0.25])
    # log prior = [-ln 2, -2 ln 2, -2 ln 2], mean -5/3 ln 2; minus the centred log prior: [-2/3, 1/3, 1/3] ln 2
    ln2 = math.log(2)
    torch.testing.assert_close(E.logit_adjustment(prior, 1.0), torch.tensor([-2 / 3, 1 / 3, 1 / 3]) * ln2)
    torch.testing.assert_close(E.logit_adjustment(prior, 0.5), torch.tensor([-1 / 3, 1 / 6, 1 / 6]) * ln2)
    assert torch.count_nonzero(E.logit_adjustment(prior, 0.0)) == 0
    # a class never seen in training gets a large but finite boost
    assert torch.isfinite(E.logit_adjustment(torch.tensor([0.5, 0.5, 0.0]), 1.0)).all()


def _two_class_case(base_rows, labels, prior):
    """Logits of a model that learnt `prior`: a class-conditional score plus log prior (Menon et al.)."""
    return torch.tensor(base_rows, dtype=torch.float32) + prior.log(), torch.tensor(labels)


PRIOR = torch.tensor([0.9, 0.1])  # log(0.9 / 0.1) = 2.197 in favour of class 0


def test_choose_adjustment_undoes_a_biasing_prior():
    """Every example has a margin of 1 for its true class, which the prior's 2.2 overwhelms for class 1.
    Strength s leaves (1 - s) x 2.2 of it: class 1 is right from s = 0.75 on; 0.75 and 1.0 tie, the weaker wins."""
    logits, labels = _two_class_case([[1, 0]] * 10 + [[0, 1]] * 10, [0] * 10 + [1] * 10, PRIOR)
    strength, scores = E.choose_adjustment(logits, labels, PRIOR)
    assert scores == pytest.approx({0.0: 50.0, 0.25: 50.0, 0.5: 50.0, 0.75: 100.0, 1.0: 100.0})
    assert strength == 0.75


def test_choose_adjustment_keeps_zero_where_the_prior_does_not_bias():
    # margins of 5 (the prior is not in these logits): every strength scores 100%, the tie goes to 0
    logits, labels = _two_class_case([[5, 0]] * 10 + [[0, 5]] * 10, [0] * 10 + [1] * 10, torch.ones(2))
    strength, scores = E.choose_adjustment(logits, labels, PRIOR)
    assert set(scores.values()) == {100.0} and strength == 0.0
    # margins of 1 without the prior in the logits: adjusting by >= 0.5 x 2.2 flips class 0, so 0 is best
    logits, labels = _two_class_case([[1, 0]] * 10 + [[0, 1]] * 10, [0] * 10 + [1] * 10, torch.ones(2))
    strength, scores = E.choose_adjustment(logits, labels, PRIOR)
    assert strength == 0.0 and scores[0.0] == 100.0 and scores[1.0] == 50.0


def test_choose_adjustment_scores_plain_or_balanced_accuracy():
    """12 confident class-0 examples, 4 fragile ones (margin 1.2 for class 1, right only while (1 - s) x 2.2
    > 1.2, i.e. s <= 0.25), 4 class-1 examples right from s = 0.75 on."""
    rows = [[1, 0]] * 12 + [[0, 1.2]] * 4 + [[0, 1]] * 4
    logits, labels = _two_class_case(rows, [0] * 16 + [1] * 4, PRIOR)
    strength, scores = E.choose_adjustment(logits, labels, PRIOR, balanced=True)
    assert scores == pytest.approx({0.0: 50.0, 0.25: 50.0, 0.5: 37.5, 0.75: 87.5, 1.0: 87.5})
    assert strength == 0.75
    strength, scores = E.choose_adjustment(logits, labels, PRIOR, balanced=False)
    assert scores == pytest.approx({0.0: 80.0, 0.25: 80.0, 0.5: 60.0, 0.75: 80.0, 1.0: 80.0})
    assert strength == 0.0
    strength, scores = E.choose_adjustment(logits, labels, PRIOR, strengths=(1.0, 0.5))
    assert strength == 1.0 and set(scores) == {1.0, 0.5}


# ----------------------------------------------------------------------------- predict_logits


class PixelReader(nn.Module):
    """A fixed function: logit k is the (normalised) value of pixel PIXELS[k]."""

    PIXELS = [(10, 10), (12, 15), (20, 8), (14, 14)]

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return torch.stack([x[:, 0, r, c] for r, c in self.PIXELS], 1) * self.scale


def _images(n=7, seed=0):
    return torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


MEAN, STD = 0.17, 0.33


def test_predict_logits_without_shifts_gives_the_models_logits():
    images = _images()
    x = (images.float() / 255 - MEAN) / STD
    expected = torch.stack([x[:, r, c] for r, c in PixelReader.PIXELS], 1)
    got = E.predict_logits(PixelReader(), images, MEAN, STD)
    torch.testing.assert_close(got, expected)


def test_predict_logits_with_shifts_averages_log_probabilities_over_shifted_copies():
    """Shifting by (dx, dy) makes pixel (r, c) show what was at (r - dy, c - dx): the pixels read are inside
    the image for every shift, so the background fill never enters."""
    images = _images()
    x = (images.float() / 255 - MEAN) / STD
    shifts = E.TTA_SHIFTS
    expected = sum(
        torch.stack([x[:, r - dy, c - dx] for r, c in PixelReader.PIXELS], 1).log_softmax(1) for dx, dy in shifts
    ) / len(shifts)
    model = PixelReader()
    got = E.predict_logits(model, images, MEAN, STD, shifts=shifts)
    torch.testing.assert_close(got, expected)
    assert model.calls == len(shifts)
    # in batches of 3 the result is the same
    torch.testing.assert_close(
        E.predict_logits(PixelReader(), images, MEAN, STD, shifts=shifts, batch_size=3), expected
    )
    # without shifts the result is the raw logits, not log-probabilities
    no_tta = E.predict_logits(PixelReader(), images, MEAN, STD)
    assert not torch.allclose(no_tta.log_softmax(1), got)


def test_predict_logits_with_shifts_matches_manual_shifting_with_a_real_model():
    torch.manual_seed(0)
    model = Architecture2(47, 4, 8, 16).eval()
    images = torch.zeros(5, 28, 28, dtype=torch.uint8)
    images[:, 8:20, 9:19] = torch.randint(50, 256, (5, 12, 10), dtype=torch.uint8)  # ink away from the edges
    shifts = ((0, 0), (2, 0), (0, -1))
    manual = []
    for dx, dy in shifts:
        moved = torch.roll(images, shifts=(dy, dx), dims=(1, 2))  # the border is blank, so rolling = shifting
        manual.append(E.predict_logits(model, moved, MEAN, STD).log_softmax(1))
    torch.testing.assert_close(
        E.predict_logits(model, images, MEAN, STD, shifts=shifts), sum(manual) / len(manual), atol=1e-5, rtol=1e-5
    )


def test_predict_logits_restores_the_mode():
    model = PixelReader().train()
    E.predict_logits(model, _images(), MEAN, STD)
    assert model.training
    E.predict_logits(model.eval(), _images(), MEAN, STD)
    assert not model.training


def test_prediction_layout_is_restored_and_does_not_change_predictions():
    torch.manual_seed(0)
    model = Architecture2(47, 8, 32, 32).eval()
    images = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8)
    plain = E.predict_logits(model, images, MEAN, STD, channels_last=False)
    fast = E.predict_logits(model, images, MEAN, STD)  # CPU default: channels_last
    assert all(p.is_contiguous() for p in model.parameters())  # put back as it was
    assert not E._is_channels_last(model)
    assert torch.equal(plain.argmax(1), fast.argmax(1))
    torch.testing.assert_close(plain, fast, atol=1e-4, rtol=1e-4)
    model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(E.predict_logits(model, images, MEAN, STD), fast, atol=1e-4, rtol=1e-4)
    assert E._is_channels_last(model)  # a channels_last model stays channels_last


def test_predict_logits_of_no_images():
    assert E.predict_logits(PixelReader(), torch.zeros(0, 28, 28, dtype=torch.uint8), MEAN, STD).numel() == 0


def test_evaluate_split_by_hand():
    images = _images(20, seed=3)
    labels = torch.randint(0, 4, (20,), generator=torch.Generator().manual_seed(1))
    result = E.evaluate_split(PixelReader(), images, labels, MEAN, STD)
    x = (images.float() / 255 - MEAN) / STD
    logits = torch.stack([x[:, r, c] for r, c in PixelReader.PIXELS], 1)
    loss = float(-(logits.log_softmax(1)[torch.arange(20), labels]).mean())
    hits = logits.argmax(1) == labels
    recalls = [float(hits[labels == k].float().mean()) for k in range(4) if (labels == k).any()]
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert result["accuracy"] == pytest.approx(100 * float(hits.float().mean()))
    assert result["balanced_accuracy"] == pytest.approx(100 * sum(recalls) / len(recalls))


# ----------------------------------------------------------------------------- confusion and friends


def hand_made():
    """(labels, predictions): 0->O twice, O->0 once, A->a once, 1->I once; 6 of 11 right."""
    pairs = [
        ("0", "0"),
        ("0", "O"),
        ("0", "O"),
        ("0", "0"),
        ("O", "O"),
        ("O", "0"),
        ("A", "A"),
        ("A", "A"),
        ("A", "a"),
        ("1", "I"),
        ("1", "1"),
    ]
    labels = np.array([IDX[t] for t, _ in pairs])
    preds = np.array([IDX[p] for _, p in pairs])
    return labels, preds


def test_accuracy_and_confusion_matrix():
    labels, preds = hand_made()
    assert E.accuracy(torch.tensor(preds), torch.tensor(labels)) == pytest.approx(100 * 6 / 11)
    cm = E.confusion_matrix(preds, labels, 47)
    assert cm.shape == (47, 47) and cm.sum() == len(labels)
    assert cm[IDX["0"], IDX["O"]] == 2 and cm[IDX["O"], IDX["0"]] == 1  # rows true, columns predicted
    assert cm[IDX["0"], IDX["0"]] == 2 and np.trace(cm) == 6
    np.testing.assert_array_equal(cm.sum(1), np.bincount(labels, minlength=47))


def test_per_class_accuracy():
    labels, preds = hand_made()
    df = E.per_class_accuracy(preds, labels, CLASSES)
    assert len(df) == 47 and list(df.columns) == ["class", "accuracy", "support"]
    by_class = df.set_index("class")
    assert by_class.loc["0", "accuracy"] == pytest.approx(50.0) and by_class.loc["0", "support"] == 4
    assert by_class.loc["O", "accuracy"] == pytest.approx(50.0)
    assert by_class.loc["A", "accuracy"] == pytest.approx(200 / 3)
    assert by_class.loc["1", "accuracy"] == pytest.approx(50.0)
    assert np.isnan(by_class.loc["Z", "accuracy"]) and by_class.loc["Z", "support"] == 0
    assert df["accuracy"].dropna().is_monotonic_increasing  # worst first


def test_most_confused_pairs():
    labels, preds = hand_made()
    df = E.most_confused_pairs(preds, labels, CLASSES)
    assert len(df) == 4  # only pairs with errors
    first = df.iloc[0]
    assert (first["true"], first["predicted"], first["count"]) == ("0", "O", 2)
    assert first["share_of_true_class_%"] == pytest.approx(50.0)
    rest = {(r["true"], r["predicted"], r["count"]) for _, r in df.iloc[1:].iterrows()}
    assert rest == {("O", "0", 1), ("A", "a", 1), ("1", "I", 1)}
    assert len(E.most_confused_pairs(preds, labels, CLASSES, top=2)) == 2
    none = E.most_confused_pairs(labels, labels, CLASSES)
    assert len(none) == 0 and list(none.columns) == ["true", "predicted", "count", "share_of_true_class_%"]


def test_merged_accuracy():
    labels, preds = hand_made()
    # 0/O and 1/I are merged groups, A/a is not: 10 of 11 count as right
    assert E.merged_accuracy(preds, labels, CLASSES) == pytest.approx(100 * 10 / 11)
    assert E.merged_accuracy(preds, labels, CLASSES, groups=[]) == pytest.approx(100 * 6 / 11)
    assert E.merged_accuracy([IDX["g"], IDX["q"]], [IDX["9"], IDX["9"]], CLASSES) == 100.0  # 9/g/q
    assert E.merged_accuracy([IDX["A"]], [IDX["B"]], CLASSES) == 0.0
    # groups merge transitively: A~B and B~C make A~C
    assert E.merged_accuracy([IDX["A"]], [IDX["C"]], CLASSES, groups=[("A", "B"), ("B", "C")]) == 100.0
    # members missing from the class list (balanced has no lowercase l) are ignored: L and 1 stay apart
    assert E.merged_accuracy([IDX["L"]], [IDX["1"]], CLASSES) == 0.0


def test_report_collects_every_number():
    labels, preds = hand_made()
    result = E.report(torch.tensor(preds), torch.tensor(labels), CLASSES)
    assert result["accuracy"] == pytest.approx(100 * 6 / 11)
    # per-class recall of the classes present: 0: 2/4, O: 1/2, A: 2/3, 1: 1/2
    assert result["balanced_accuracy"] == pytest.approx(100 * (0.5 + 0.5 + 2 / 3 + 0.5) / 4)
    assert result["merged_accuracy"] == pytest.approx(100 * 10 / 11)
    assert result["confusion"].shape == (47, 47) and len(result["per_class"]) == 47
    assert len(result["most_confused"]) == 4
