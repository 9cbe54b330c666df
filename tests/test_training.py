"""emnist_utils.training and .evaluation on a small subset of the real stand-in data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from emnist_utils import evaluation as E
from emnist_utils.data import BUILTIN_CLASSES, make_splits
from emnist_utils.models import FINAL_CONFIG, ConfigError, build_model
from emnist_utils.training import Recipe, fit, pick_device, seed_everything

# Small Architecture 2 (BatchNorm and dropout) for the determinism and resume checks.
SMALL = FINAL_CONFIG.with_(epochs=3, c1=4, c2=8, hidden=32, batch_size=100, name="small")


@pytest.fixture(scope="module")
def splits(standin_data):
    return make_splits(standin_data, 0, train_limit=3000, val_limit=1000, test_limit=1000)


def train(splits, cfg, seed=0, init_seed=None, **kw):
    seed_everything(seed if init_seed is None else init_seed)
    model = build_model(cfg)
    history = fit(model, splits, cfg, seed=seed, device="cpu", progress=False, **kw)
    return model, history


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def weights_differ(a, b):
    return any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.fixture(scope="module")
def small_splits(standin_data):
    """A smaller subset for the many short runs of the determinism and checkpoint checks."""
    return make_splits(standin_data, 0, train_limit=1500, val_limit=500, test_limit=500)


@pytest.fixture(scope="module")
def reference(small_splits):
    """An uninterrupted 3-epoch run of SMALL with seed 0."""
    return train(small_splits, SMALL, seed=0)


class Interrupt(Exception):
    pass


def interrupt_at(epoch):
    def callback(done, history):
        if done == epoch:
            raise Interrupt(done)
    return callback


def record(epochs):
    def callback(done, history):
        epochs.append(done)
    return callback


# ----------------------------------------------------------------------------- learning


def test_architecture2_learns(splits):
    assert splits.sizes() == {"train": 3000, "validation": 1000, "test": 1000}
    cfg = FINAL_CONFIG.with_(epochs=2, hidden=128, batch_size=64)
    model, history = train(splits, cfg, seed=0)
    assert history.epochs == 2 and len(history.train_loss) == 2 and len(history.seconds) == 2
    assert history.train_loss[1] < history.train_loss[0]
    assert history.val_acc[-1] >= 40.0, history.val_acc  # chance is 100/47 ~ 2.1%
    assert 0 <= history.train_acc[-1] <= 100
    # the history's validation numbers are what the model gives on the validation split
    loss, acc = E.evaluate_loss_accuracy(model, splits.val_images, splits.val_labels, splits.mean, splits.std)
    assert acc == pytest.approx(history.val_acc[-1], abs=1e-4)
    assert loss == pytest.approx(history.val_loss[-1], rel=1e-4)
    test_pred = E.predict(model, splits.test_images, splits.mean, splits.std)
    assert E.accuracy(test_pred, splits.test_labels) >= 40.0
    assert all(p.is_contiguous() for p in model.parameters())  # channels_last undone after training


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_run_different_seed_different_run(small_splits):
    cfg = SMALL.with_(epochs=2)
    m1, h1 = train(small_splits, cfg, seed=0)
    m2, h2 = train(small_splits, cfg, seed=0)
    m3, h3 = train(small_splits, cfg, seed=1)
    assert h1.metrics() == h2.metrics()
    assert_same_weights(m1, m2)
    assert h1.metrics() != h3.metrics()
    assert weights_differ(m1, m3)
    # the training seed alone (same initial weights) changes the batch order and dropout
    m4, h4 = train(small_splits, cfg, seed=1, init_seed=0)
    assert weights_differ(m1, m4) and h1.metrics() != h4.metrics()


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("fresh_init_seed", [0, 99])
def test_interrupted_run_resumes_to_identical_result(small_splits, reference, tmp_path, fresh_init_seed):
    ref_model, ref_history = reference
    checkpoint = tmp_path / "ckpt" / "run.pt"
    with pytest.raises(Interrupt):
        train(small_splits, SMALL, seed=0, checkpoint=checkpoint, run_key="run-a",
              callbacks=[interrupt_at(2)])
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert saved["epoch"] == 2 and saved["key"] == "run-a"
    assert saved["history"]["val_acc"] == ref_history.val_acc[:2]

    seen = []
    # a fresh model (built with the same seed, or even another one): its weights come from the checkpoint
    model, history = train(small_splits, SMALL, seed=0, init_seed=fresh_init_seed, checkpoint=checkpoint,
                           run_key="run-a", callbacks=[record(seen)])
    assert seen == [3]  # it resumed: only the last epoch was trained
    assert history.metrics() == ref_history.metrics()
    assert_same_weights(model, ref_model)
    assert torch.load(checkpoint, map_location="cpu", weights_only=False)["epoch"] == 3


def test_checkpoint_of_another_run_is_ignored(small_splits, reference, tmp_path):
    ref_model, ref_history = reference
    checkpoint = tmp_path / "run.pt"
    with pytest.raises(Interrupt):
        train(small_splits, SMALL.with_(epochs=1), seed=0, checkpoint=checkpoint, run_key="other",
              callbacks=[interrupt_at(1)])
    assert checkpoint.is_file()
    seen = []
    with pytest.warns(UserWarning, match="different run"):
        model, history = train(small_splits, SMALL, seed=0, checkpoint=checkpoint, run_key="mine",
                               callbacks=[record(seen)])
    assert seen == [1, 2, 3]  # trained from scratch
    assert history.metrics() == ref_history.metrics()
    assert_same_weights(model, ref_model)
    assert torch.load(checkpoint, map_location="cpu", weights_only=False)["key"] == "mine"


def test_corrupted_checkpoint_is_ignored(small_splits, reference, tmp_path):
    ref_model, ref_history = reference
    checkpoint = tmp_path / "run.pt"
    checkpoint.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    seen = []
    with pytest.warns(UserWarning, match="unreadable checkpoint"):
        model, history = train(small_splits, SMALL, seed=0, checkpoint=checkpoint, run_key="mine",
                               callbacks=[record(seen)])
    assert seen == [1, 2, 3]
    assert history.metrics() == ref_history.metrics()
    assert_same_weights(model, ref_model)


def test_recipe_validation():
    for bad in (dict(optimizer="lbfgs"), dict(schedule="cosine"), dict(precision="fp16"),
                dict(label_smoothing=1.0), dict(label_smoothing=-0.1)):
        with pytest.raises(ConfigError):
            Recipe(**bad)


# ----------------------------------------------------------------------------- evaluation helpers

CLASSES = BUILTIN_CLASSES["balanced"]
IDX = {c: i for i, c in enumerate(CLASSES)}


def hand_made():
    """(labels, predictions): 0->O twice, O->0 once, A->a once, 1->I once; 6 of 11 right."""
    pairs = [("0", "0"), ("0", "O"), ("0", "O"), ("0", "0"),
             ("O", "O"), ("O", "0"),
             ("A", "A"), ("A", "A"), ("A", "a"),
             ("1", "I"), ("1", "1")]
    labels = np.array([IDX[t] for t, _ in pairs])
    preds = np.array([IDX[p] for _, p in pairs])
    return labels, preds


def test_accuracy_and_confusion_matrix():
    labels, preds = hand_made()
    assert E.accuracy(torch.tensor(preds), torch.tensor(labels)) == pytest.approx(100 * 6 / 11)
    assert E.accuracy(preds, labels) == pytest.approx(100 * np.mean(preds == labels))
    with pytest.raises(ValueError):
        E.accuracy(torch.tensor([]), torch.tensor([]))
    cm = E.confusion_matrix(preds, labels, 47)
    assert cm.shape == (47, 47) and cm.sum() == len(labels)
    assert cm[IDX["0"], IDX["O"]] == 2 and cm[IDX["O"], IDX["0"]] == 1  # rows true, columns predicted
    assert cm[IDX["0"], IDX["0"]] == 2 and np.trace(cm) == 6
    np.testing.assert_array_equal(cm.sum(1), np.bincount(labels, minlength=47))


def test_per_class_accuracy():
    labels, preds = hand_made()
    df = E.per_class_accuracy(preds, labels, CLASSES)
    assert len(df) == 47
    by_class = df.set_index("class")
    assert by_class.loc["0", "accuracy"] == pytest.approx(50.0) and by_class.loc["0", "support"] == 4
    assert by_class.loc["O", "accuracy"] == pytest.approx(50.0)
    assert by_class.loc["A", "accuracy"] == pytest.approx(200 / 3)
    assert by_class.loc["1", "accuracy"] == pytest.approx(50.0)
    assert np.isnan(by_class.loc["Z", "accuracy"]) and by_class.loc["Z", "support"] == 0
    assert df["accuracy"].dropna().is_monotonic_increasing


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
    assert len(E.most_confused_pairs(labels, labels, CLASSES)) == 0


def test_merged_accuracy():
    labels, preds = hand_made()
    # 0/O and 1/I are merged groups, A/a is not: 10 of 11 count as right
    assert E.merged_accuracy(preds, labels, CLASSES) == pytest.approx(100 * 10 / 11)
    assert E.merged_accuracy(preds, labels, CLASSES, groups=[]) == pytest.approx(100 * 6 / 11)
    assert E.merged_accuracy([IDX["g"], IDX["q"]], [IDX["9"], IDX["9"]], CLASSES) == 100.0  # 9/g/q
    assert E.merged_accuracy([IDX["A"]], [IDX["B"]], CLASSES) == 0.0
    # groups merge transitively: A~B and B~C make A~C
    assert E.merged_accuracy([IDX["A"]], [IDX["C"]], CLASSES, groups=[("A", "B"), ("B", "C")]) == 100.0
    # members missing from the class list (balanced has no lowercase l) are ignored
    assert E.merged_accuracy([IDX["L"]], [IDX["1"]], CLASSES) == 0.0


# ----------------------------------------------------------------------------- device


def test_pick_device(monkeypatch):
    monkeypatch.delenv("EMNIST_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else (
        "mps" if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available() else "cpu")
    assert pick_device().type == expected
    if not torch.cuda.is_available():
        assert pick_device() == torch.device("cpu")
    monkeypatch.setenv("EMNIST_DEVICE", "meta")
    assert pick_device() == torch.device("meta")
    assert pick_device("cpu") == torch.device("cpu")  # an explicit choice beats the environment


def test_prediction_layout_is_restored_and_does_not_change_predictions():
    from emnist_utils.evaluation import _is_channels_last, predict_logits
    from emnist_utils.models import FINAL_CONFIG, build_model

    torch.manual_seed(0)
    model = build_model(FINAL_CONFIG.with_(hidden=32)).eval()
    images = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8)
    plain = predict_logits(model, images, 0.17, 0.33, channels_last=False)
    fast = predict_logits(model, images, 0.17, 0.33)  # CPU default: channels_last
    assert not _is_channels_last(model)  # put back as it was
    assert torch.equal(plain.argmax(1), fast.argmax(1))
    assert torch.allclose(plain, fast, atol=1e-4)
    model.to(memory_format=torch.channels_last)
    predict_logits(model, images, 0.17, 0.33)
    assert _is_channels_last(model)  # a channels_last model stays channels_last
