"""emnist_utils.core.training: Recipe validation, the loss and weight average it builds, train_one_epoch, and fit
(learning, determinism, bit-identical resume from checkpoints, refusal of foreign, corrupt or code-carrying
checkpoints, class-aware options, weight averaging with recomputed BatchNorm statistics) on the stand-in data."""

from __future__ import annotations

import dataclasses
import math
import re
import warnings

import numpy as np
import pytest
import torch
from helpers import Interrupt, interrupt_at, same_weights, tiny_spec
from torch import nn

from emnist_utils.core import training as T
from emnist_utils.core.evaluation import evaluate_split, predict_logits
from emnist_utils.core.models import Architecture1
from emnist_utils.core.registry import ConfigError, ModelSpec, build_model
from emnist_utils.core.splits import Batches, is_balanced, normalisation_constants, train_val_split
from emnist_utils.core.training import (
    History,
    Recipe,
    fit,
    load_checkpoint,
    previous_checkpoint,
    save_checkpoint,
    seed_everything,
    set_aside_path,
    state_checksum,
)
from emnist_utils.experiments.trials import REPORT_FINAL

TINY = tiny_spec("arch2", epochs=3)  # Architecture 2 with c1=4, c2=8, hidden=32: BatchNorm and dropout
REPORT = REPORT_FINAL.recipe.with_(epochs=3)  # the report's recipe (Adam 1e-3, batch 290), 3 epochs
# every option that changes the training loop at once (on an imbalanced split, so sampling takes effect)
ROBUST = TINY.recipe.with_(
    schedule="onecycle", label_smoothing=0.1, augment="affine+erasing", sampling="sqrt", ema_decay=0.99
)
RECIPES = {"report": REPORT, "robust": ROBUST}


def train(splits, recipe, seed=0, init_seed=None, model=TINY.model, **kwargs):
    """Build a model (its initial weights from `init_seed`, default `seed`) and fit it on the CPU."""
    seed_everything(seed if init_seed is None else init_seed)
    net = build_model(model, splits.num_classes)
    fitted = fit(net, splits, recipe, seed=seed, device="cpu", progress=False, **kwargs)
    return net, fitted


def recorder(seen):
    def callback(done, history):
        seen.append(done)

    return callback


def assert_same_state(a, b, where="state"):
    """Two checkpoint states hold identical tensors and values, recursively."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def read_checkpoint(path):
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["history"].pop("seconds")  # wall time, never compared
    state.pop("checksum")  # covers the wall times too
    return state


@pytest.fixture(scope="module")
def references(small_splits, tmp_path_factory):
    """Uninterrupted 3-epoch runs of each recipe with seed 0 (computed once), with their final checkpoints."""
    done = {}

    def get(name):
        if name not in done:
            checkpoint = tmp_path_factory.mktemp("reference") / "run.pt"
            model, fitted = train(small_splits, RECIPES[name], checkpoint=checkpoint, run_key="run-a")
            done[name] = (model, fitted, read_checkpoint(checkpoint))
        return done[name]

    return get


@pytest.fixture(scope="module")
def balanced_splits(standin_data, small_splits):
    """A training split with exactly 20 images of every class (from the stand-in's training part), validated
    on small_splits' validation images."""
    train_idx, _ = train_val_split(len(standin_data.train_labels), 0)
    labels = standin_data.train_labels[train_idx]
    chosen = torch.cat([train_idx[labels == k][:20] for k in range(standin_data.num_classes)])
    chosen = chosen[torch.randperm(len(chosen), generator=torch.Generator().manual_seed(0))]
    images = standin_data.train_images[chosen]
    mean, std = normalisation_constants(images)
    splits = dataclasses.replace(
        small_splits, train_images=images, train_labels=standin_data.train_labels[chosen], mean=mean, std=std
    )
    assert is_balanced(splits.train_labels, splits.num_classes) and len(splits.train_labels) == 20 * 47
    return splits


# ----------------------------------------------------------------------------- Recipe


def test_recipe_defaults_are_the_reports():
    r = Recipe(lr=1e-3, batch_size=290, epochs=20)
    assert (
        r.optimizer,
        r.weight_decay,
        r.schedule,
        r.label_smoothing,
        r.precision,
        r.augment,
        r.input_norm,
        r.sampling,
        r.loss_weighting,
        r.ema_decay,
    ) == ("adam", 0.0, "constant", 0.0, "fp32", "none", "standardise", "none", "none", 0.0)
    assert REPORT_FINAL.recipe == r


@pytest.mark.parametrize(
    "field,value",
    [
        ("optimizer", "lbfgs"),
        ("schedule", "cosine"),
        ("precision", "fp16"),
        ("sampling", "oversample"),
        ("loss_weighting", "focal"),
        ("augment", "mixup"),
        ("input_norm", "zscore"),
        ("epochs", 0),
        ("epochs", -1),
        ("epochs", 2.5),
        ("epochs", True),
        ("batch_size", 0),
        ("batch_size", "32"),
        ("lr", 0),
        ("lr", -1e-3),
        ("lr", math.nan),
        ("lr", math.inf),
        ("lr", "0.001"),
        ("lr", True),
        ("weight_decay", -0.1),
        ("label_smoothing", 1.0),
        ("label_smoothing", -0.1),
        ("ema_decay", 1.0),
        ("ema_decay", -0.1),
        ("ema_decay", 1.5),
        ("ema_decay", math.nan),
        ("channels_last", "yes"),
        ("channels_last", 1),
    ],
)
def test_recipe_rejects_bad_values(field, value):
    with pytest.raises(ConfigError, match=field):
        Recipe(**{"lr": 1e-3, "batch_size": 32, "epochs": 1, field: value})
    with pytest.raises(ConfigError):
        REPORT.with_(**{field: value})


def test_recipe_from_dict():
    assert Recipe.from_dict(ROBUST.as_dict()) == ROBUST
    with pytest.raises(ConfigError, match="unknown recipe settings: bogus"):
        Recipe.from_dict({**REPORT.as_dict(), "bogus": 1})
    with pytest.raises(ConfigError, match="ema_decay"):
        Recipe.from_dict({**REPORT.as_dict(), "ema_decay": 2.0})


# ----------------------------------------------------------------------------- pieces of the loop


def test_history():
    h = History()
    h.append(train_loss=1, train_acc=50, val_loss=2, val_acc=40, val_balanced_acc=30, seconds=0.5)
    h.append(train_loss=0.5, train_acc=60, val_loss=1.5, val_acc=45, val_balanced_acc=35, seconds=0.7)
    assert h.epochs == 2 and h.val_acc == [40.0, 45.0]
    assert "seconds" not in h.metrics() and h.metrics()["train_loss"] == [1.0, 0.5]
    assert History.from_dict(h.to_dict()) == h


def test_make_loss_weights_classes_only_on_imbalanced_labels():
    device = torch.device("cpu")
    balanced = torch.arange(40) % 4
    for weighting in ("none", "sqrt", "balanced"):
        assert (
            T.make_loss(Recipe(lr=1, batch_size=1, epochs=1, loss_weighting=weighting), balanced, 4, device).weight
            is None
        )
    labels = torch.tensor([0] * 64 + [1] * 16 + [2] * 4)  # counts 64, 16, 4
    assert T.make_loss(Recipe(lr=1, batch_size=1, epochs=1), labels, 3, device).weight is None
    for weighting, ratio in (("sqrt", [1, 2, 4]), ("balanced", [1, 4, 16])):  # weight of class k / class 0
        loss = T.make_loss(
            Recipe(lr=1, batch_size=1, epochs=1, loss_weighting=weighting, label_smoothing=0.1), labels, 3, device
        )
        w = loss.weight
        torch.testing.assert_close(w / w[0], torch.tensor(ratio, dtype=torch.float32))
        assert float(w[labels].mean()) == pytest.approx(1.0)  # mean 1 over the training examples
        assert loss.label_smoothing == 0.1


def test_ema_decay_warms_up_to_the_recipes():
    """One parameter set to 0, 1, 2, ... before each update: the first update copies it, update t (t models
    averaged before it) moves the average by a = a + (v - a)(1 - decay), decay = min(target, (1 + t) / (10 + t))."""
    model = nn.Linear(1, 1, bias=False)
    ema = T.make_ema(model, Recipe(lr=1, batch_size=1, epochs=1, ema_decay=0.5))
    expected, decays = 0.0, []
    for t in range(12):
        with torch.no_grad():
            model.weight.fill_(float(t))
        ema.update_parameters(model)
        if t > 0:
            decays.append(min(0.5, (1 + t) / (10 + t)))
            expected = expected + (t - expected) * (1 - decays[-1])
        assert float(ema.module.weight.detach()) == pytest.approx(expected, rel=1e-6), t
    assert decays[:2] == [2 / 11, 3 / 12] and decays[-1] == 0.5  # warming up, then capped at the target
    assert T.make_ema(model, Recipe(lr=1, batch_size=1, epochs=1)) is None


def test_train_one_epoch_returns_the_mean_loss_and_accuracy(small_splits):
    """With a learning rate of 0 and a model without dropout or BatchNorm, the epoch's numbers are those of
    the fixed model on the whole training part."""
    torch.manual_seed(0)
    model = Architecture1(47, 4, 8, 16, dropout=0.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels = small_splits.train_images[:250], small_splits.train_labels[:250]
    batches = Batches(images, labels, 64, small_splits.mean, small_splits.std, shuffle=True, seed=3)
    loss, acc = T.train_one_epoch(model, batches, 0, torch.optim.SGD(model.parameters(), lr=0.0), nn.CrossEntropyLoss())
    assert same_weights(model, before) and model.training
    logits = predict_logits(model, images, small_splits.mean, small_splits.std)
    assert loss == pytest.approx(float(nn.functional.cross_entropy(logits, labels)), rel=1e-5)
    assert acc == pytest.approx(100 * float((logits.argmax(1) == labels).float().mean()))


def test_recompute_batchnorm_leaves_a_model_without_batchnorm_alone():
    model = Architecture1(47, 4, 8, 16).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    T.recompute_batchnorm(model, [(torch.randn(4, 1, 28, 28), None)])
    assert same_weights(model, before) and not model.training


def test_pick_device(monkeypatch):
    monkeypatch.delenv("EMNIST_DEVICE", raising=False)
    if not torch.cuda.is_available() and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        assert T.pick_device() == torch.device("cpu")
    monkeypatch.setenv("EMNIST_DEVICE", "meta")
    assert T.pick_device() == torch.device("meta")
    assert T.pick_device("cpu") == torch.device("cpu")  # an explicit choice beats the environment
    with pytest.raises(ConfigError, match="unknown device"):
        T.pick_device("gpu-please")


def test_require_available_refuses_an_accelerator_this_machine_lacks(monkeypatch):
    assert T.require_available(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU; use --device cpu"):
        T.require_available(torch.device("cuda:1"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert T.require_available(torch.device("cuda")) == torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None:
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
        with pytest.raises(ConfigError, match="no Apple MPS device"):
            T.require_available(torch.device("mps"))


def test_available_device_is_pick_device_refusing_what_this_machine_lacks(monkeypatch):
    monkeypatch.delenv("EMNIST_DEVICE", raising=False)
    assert T.available_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU; use --device cpu"):
        T.available_device("cuda")
    monkeypatch.setenv("EMNIST_DEVICE", "cuda")  # the environment's choice is checked too
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        T.available_device()


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_is_plain_tensors(tmp_path):
    state = {
        "key": "k",
        "epoch": 2,
        "model": {"w": torch.arange(6.0).view(2, 3)},
        "rng": torch.get_rng_state(),
        "history": {"val_acc": [1.0, 2.0]},
        "scheduler": None,
    }
    path = tmp_path / "sub" / "run.pt"
    save_checkpoint(path, state)
    assert [p.name for p in path.parent.iterdir()] == ["run.pt"]  # no temporary file left
    loaded = load_checkpoint(path, "k")
    assert_same_state(loaded, state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_checkpoint(tmp_path / "absent.pt", "k") is None  # nothing there: no warning
    with pytest.warns(UserWarning, match="different run"):
        assert load_checkpoint(path, "other") is None
    save_checkpoint(path, [1, 2, 3])
    with pytest.warns(UserWarning, match="different run"):
        assert load_checkpoint(path, "k") is None
    save_checkpoint(path, state)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a torn write
    with pytest.warns(UserWarning, match="unreadable checkpoint"):
        assert load_checkpoint(path, "k") is None


class _RunsCode:
    """Unpickling this creates a marker file: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def test_checkpoint_that_runs_code_when_unpickled_is_ignored(small_splits, tmp_path):
    control, marker = tmp_path / "control-marker", tmp_path / "marker"
    # the payload works: loading it the unsafe way runs it
    torch.save({"key": "x", "payload": _RunsCode(control)}, tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert control.is_file()

    checkpoint = tmp_path / "run.pt"
    torch.save({"key": "mine", "epoch": 1, "model": _RunsCode(marker)}, checkpoint)
    seen = []
    with pytest.warns(UserWarning, match="unreadable checkpoint"):
        _, fitted = train(
            small_splits, REPORT.with_(epochs=1), checkpoint=checkpoint, run_key="mine", callbacks=[recorder(seen)]
        )
    assert not marker.exists()
    assert seen == [1] and fitted.history.epochs == 1  # trained from scratch
    assert torch.load(checkpoint, weights_only=True)["key"] == "mine"  # and replaced by a safe checkpoint


@pytest.mark.parametrize("name", ["report", "robust"])
def test_interrupted_run_resumes_bit_identical(small_splits, references, tmp_path, name):
    """Interrupted after epoch 2 of 3 and resumed with a fresh model whose initial weights come from another
    seed: every tensor (model, optimiser, schedule, weight average, random state) and every metric ends equal
    to the uninterrupted run's."""
    recipe = RECIPES[name]
    if name == "robust":
        assert not is_balanced(small_splits.train_labels, small_splits.num_classes)  # sampling takes effect
    ref_model, ref_fitted, ref_state = references(name)
    checkpoint = tmp_path / "ckpt" / "run.pt"
    with pytest.raises(Interrupt):
        train(small_splits, recipe, checkpoint=checkpoint, run_key="run-a", callbacks=[interrupt_at(2)])
    saved = read_checkpoint(checkpoint)
    assert saved["epoch"] == 2 and saved["key"] == "run-a"
    assert saved["history"]["val_acc"] == ref_fitted.history.val_acc[:2]

    seen = []
    model, fitted = train(
        small_splits, recipe, init_seed=99, checkpoint=checkpoint, run_key="run-a", callbacks=[recorder(seen)]
    )
    assert seen == [3]  # it resumed: only the last epoch was trained
    assert fitted.history.metrics() == ref_fitted.history.metrics()
    assert same_weights(model, ref_model)
    assert same_weights(fitted.model, ref_fitted.model)
    assert_same_state(read_checkpoint(checkpoint), ref_state)
    if name == "robust":
        assert fitted.model is not model  # the weight average was resumed too
    # the fresh model really started elsewhere
    seed_everything(99)
    assert not same_weights(build_model(TINY.model, 47), ref_model)


def test_checkpoint_of_another_run_is_ignored(small_splits, references, tmp_path):
    ref_model, ref_fitted, _ = references("report")
    checkpoint = tmp_path / "run.pt"
    with pytest.raises(Interrupt):
        train(small_splits, REPORT, checkpoint=checkpoint, run_key="other", callbacks=[interrupt_at(1)])
    seen = []
    with pytest.warns(UserWarning, match="different run"):
        model, fitted = train(small_splits, REPORT, checkpoint=checkpoint, run_key="mine", callbacks=[recorder(seen)])
    assert seen == [1, 2, 3]  # trained from scratch
    assert fitted.history.metrics() == ref_fitted.history.metrics()
    assert same_weights(model, ref_model)
    assert torch.load(checkpoint, weights_only=True)["key"] == "mine"


def test_corrupt_checkpoint_is_ignored(small_splits, references, tmp_path):
    ref_model, ref_fitted, _ = references("report")
    checkpoint = tmp_path / "run.pt"
    checkpoint.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    seen = []
    with pytest.warns(UserWarning, match="unreadable checkpoint"):
        model, fitted = train(small_splits, REPORT, checkpoint=checkpoint, run_key="mine", callbacks=[recorder(seen)])
    assert seen == [1, 2, 3]
    assert fitted.history.metrics() == ref_fitted.history.metrics()
    assert same_weights(model, ref_model)


# ----------------------------------------------------------------------------- damaged checkpoints (issue 20)


def _flip_a_bit_in_the_middle(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _edit(path, change, *, recompute_checksum: bool):
    """Change a checkpoint's contents, then write it back with its old checksum (an accident or a careless edit)
    or with a fresh one (what only a deliberate forgery through this project's own code would give)."""
    state = torch.load(path, weights_only=True)
    old = state.pop("checksum")
    change(state)
    if recompute_checksum:
        path.unlink()  # so that save_checkpoint keeps the real previous checkpoint where it is
        save_checkpoint(path, state)
    else:
        torch.save({**state, "checksum": old}, path)


def _nan_weight(state):
    state["model"]["fc1.weight"][3, 5] = float("nan")


DAMAGE = {
    # fault of the table -> (how to cause it, what the warning says)
    "bit flipped in the middle": (_flip_a_bit_in_the_middle, "checksum|unreadable"),
    "epoch does not match its weights": (
        lambda p: _edit(p, lambda s: s.update(epoch=s["epoch"] - 1), recompute_checksum=False),
        "checksum",
    ),
    "epoch does not match its history (checksum recomputed)": (
        lambda p: _edit(p, lambda s: s.update(epoch=s["epoch"] - 1), recompute_checksum=True),
        "does not match its history",
    ),
    "zero bytes": (lambda p: p.write_bytes(b""), "unreadable"),
    "NaN weight": (lambda p: _edit(p, _nan_weight, recompute_checksum=False), "checksum"),
    "NaN weight (checksum recomputed)": (
        lambda p: _edit(p, _nan_weight, recompute_checksum=True),
        "NaN or infinite",
    ),
}


@pytest.mark.parametrize("fault", list(DAMAGE))
@pytest.mark.parametrize("interrupted_after", [2, 1])
def test_damaged_checkpoint_is_set_aside_and_the_run_ends_as_an_uninterrupted_one(
    small_splits, references, tmp_path, fault, interrupted_after
):
    """The last checkpoint is damaged after an interruption: one warning line names it and says why, it is moved
    aside, and the run resumes from the checkpoint before it (interrupted after epoch 2) or from the start (after
    epoch 1, when there is none before it). Never a traceback, never a silently different model. (The model is built
    from the run's seed, as every caller of `fit` in the package does, so that a restart from the start is the
    same run.)"""
    damage, why = DAMAGE[fault]
    ref_model, ref_fitted, ref_state = references("report")
    checkpoint = tmp_path / "run.pt"
    with pytest.raises(Interrupt):
        train(small_splits, REPORT, checkpoint=checkpoint, run_key="run-a", callbacks=[interrupt_at(interrupted_after)])
    assert previous_checkpoint(checkpoint).is_file() == (interrupted_after == 2)
    damage(checkpoint)
    seen = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, fitted = train(small_splits, REPORT, checkpoint=checkpoint, run_key="run-a", callbacks=[recorder(seen)])
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == 1, messages
    assert str(checkpoint) in messages[0] and "set aside" in messages[0] and "\n" not in messages[0]
    assert re.search(why, messages[0]), messages[0]
    assert set_aside_path(checkpoint).is_file() and set_aside_path(checkpoint).name in messages[0]
    assert seen == list(range(interrupted_after, 4))  # from the checkpoint before the damaged one, or the start
    assert fitted.history.metrics() == ref_fitted.history.metrics()
    assert same_weights(model, ref_model)
    assert_same_state(read_checkpoint(checkpoint), ref_state)


def test_checksum_covers_every_tensor_byte_and_the_epoch():
    state = {"key": "k", "epoch": 2, "model": {"w": torch.arange(6.0)}, "history": {"val_acc": [1.0, 2.0]}}
    reference = state_checksum(state)
    assert state_checksum({**state}) == reference
    flipped = {**state, "model": {"w": torch.arange(6.0)}}
    flipped["model"]["w"].view(torch.int32)[4] ^= 1  # the lowest bit of one float
    assert state_checksum(flipped) != reference
    assert state_checksum({**state, "epoch": 1}) != reference
    assert state_checksum({**state, "model": {"w": torch.arange(6.0).to(torch.float64)}}) != reference
    assert state_checksum({**state, "model": {"w": torch.arange(6.0).view(2, 3)}}) != reference


def test_checkpoints_of_a_finished_epoch_keep_the_one_before(small_splits, tmp_path):
    checkpoint = tmp_path / "run.pt"
    with pytest.raises(Interrupt):
        train(small_splits, REPORT, checkpoint=checkpoint, run_key="k", callbacks=[interrupt_at(2)])
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 2
    assert torch.load(previous_checkpoint(checkpoint), weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.previous.pt", "run.pt"]  # no temporary files


# ----------------------------------------------------------------------------- fit


def test_architecture2_learns(small_splits):
    """The report's final model (976,239 parameters) on 1,500 images: far above chance (100/47 = 2.1%) in two
    epochs, and the history's validation numbers are what the returned model scores."""
    recipe = Recipe(lr=1e-3, batch_size=100, epochs=2)
    model, fitted = train(small_splits, recipe, model=ModelSpec("arch2", 8, 32, 600, 0.5))
    history = fitted.history
    assert fitted.model is model and not model.training
    assert history.epochs == 2 and len(history.train_loss) == 2 and len(history.seconds) == 2
    assert history.train_loss[1] < history.train_loss[0]
    assert history.val_acc[-1] >= 35.0, history.val_acc
    assert 0 <= history.train_acc[-1] <= 100 and 0 <= history.val_balanced_acc[-1] <= 100
    val = evaluate_split(model, small_splits.val_images, small_splits.val_labels, small_splits.mean, small_splits.std)
    assert val["accuracy"] == pytest.approx(history.val_acc[-1], abs=1e-4)
    assert val["balanced_accuracy"] == pytest.approx(history.val_balanced_acc[-1], abs=1e-4)
    assert val["loss"] == pytest.approx(history.val_loss[-1], rel=1e-4)
    assert all(p.is_contiguous() for p in model.parameters())  # channels_last undone after training


def test_same_seed_same_run_different_seed_different_run(small_splits):
    recipe = TINY.recipe.with_(epochs=2)
    m1, f1 = train(small_splits, recipe, seed=0)
    m2, f2 = train(small_splits, recipe, seed=0)
    m3, f3 = train(small_splits, recipe, seed=1)
    assert f1.history.metrics() == f2.history.metrics()
    assert same_weights(m1, m2)
    assert f1.history.metrics() != f3.history.metrics()
    assert not same_weights(m1, m3)
    # the training seed alone (same initial weights) changes the batch order and dropout
    m4, f4 = train(small_splits, recipe, seed=1, init_seed=0)
    assert not same_weights(m1, m4) and f1.history.metrics() != f4.history.metrics()


def test_a_diverging_run_raises(small_splits):
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        train(small_splits, TINY.recipe.with_(lr=1e30, epochs=1))


CLASS_AWARE = (
    {"sampling": "sqrt"},
    {"sampling": "balanced"},
    {"loss_weighting": "sqrt"},
    {"loss_weighting": "balanced"},
)


def test_class_aware_options_change_nothing_on_balanced_data(balanced_splits):
    recipe = TINY.recipe.with_(epochs=2)
    plain_model, plain = train(balanced_splits, recipe)
    for changes in CLASS_AWARE:
        model, fitted = train(balanced_splits, recipe.with_(**changes))
        assert same_weights(model, plain_model), changes
        assert fitted.history.metrics() == plain.history.metrics(), changes


def test_class_aware_options_change_the_weights_on_imbalanced_data(small_splits):
    assert not is_balanced(small_splits.train_labels, small_splits.num_classes)
    recipe = TINY.recipe.with_(epochs=1)
    plain_model, _ = train(small_splits, recipe)
    for changes in CLASS_AWARE:
        model, _ = train(small_splits, recipe.with_(**changes))
        assert not same_weights(model, plain_model), changes


def test_unit_input_normalisation_feeds_pixels_in_0_1(small_splits):
    splits = dataclasses.replace(
        small_splits, train_images=small_splits.train_images[:300], train_labels=small_splits.train_labels[:300]
    )
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = build_model(TINY.model, 47)

        def forward(self, x):
            seen.append((float(x.min()), float(x.max())))
            return self.inner(x)

    recipe = TINY.recipe.with_(epochs=1)
    fit(Probe(), splits, recipe.with_(input_norm="unit"), progress=False, device="cpu")
    assert min(lo for lo, _ in seen) >= 0.0 and max(hi for _, hi in seen) <= 1.0
    seen.clear()
    fit(Probe(), splits, recipe, progress=False, device="cpu")
    assert min(lo for lo, _ in seen) < 0.0 and max(hi for _, hi in seen) > 1.0


def _batchnorm_statistics_by_hand(model, images, mean, std, batch_size=512):
    """Architecture 2's two BatchNorm layers' statistics as a cumulative average over the training images in
    batches of `batch_size`: the mean over batches of each batch's channel means and unbiased variances, with
    every layer fed batch-normalised inputs (train mode)."""
    x_all = (images.to(torch.float32) / 255 - mean) / std
    stats = {"1": ([], []), "2": ([], [])}
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            h = x_all[start : start + batch_size].unsqueeze(1)
            for name, conv, bn in (("1", model.conv1, model.batchnorm1), ("2", model.conv2, model.batchnorm2)):
                h = conv(h)
                m, v_biased = h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False)
                stats[name][0].append(m)
                stats[name][1].append(h.var((0, 2, 3), unbiased=True))
                h = (h - m.view(1, -1, 1, 1)) / torch.sqrt(v_biased.view(1, -1, 1, 1) + bn.eps)
                h = h * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
                h = nn.functional.max_pool2d(torch.relu(h), 2)
    return {
        name: (torch.stack(means).mean(0), torch.stack(variances).mean(0)) for name, (means, variances) in stats.items()
    }


def test_weight_average_is_returned_with_its_own_batchnorm_statistics(small_splits):
    # contiguous layout: torch's channels_last BatchNorm on the CPU sums in a way that is off by ~1e-3 relative
    model, fitted = train(small_splits, TINY.recipe.with_(epochs=2, ema_decay=0.9, channels_last=False))
    averaged = fitted.model
    assert averaged is not model and type(averaged) is type(model) and not averaged.training
    assert not same_weights(averaged, model)
    expected = _batchnorm_statistics_by_hand(averaged, small_splits.train_images, small_splits.mean, small_splits.std)
    for name, bn in (("1", averaged.batchnorm1), ("2", averaged.batchnorm2)):
        torch.testing.assert_close(bn.running_mean, expected[name][0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(bn.running_var, expected[name][1], atol=1e-4, rtol=1e-3)
        assert int(bn.num_batches_tracked) == 3  # 1,500 images in batches of 512
        assert bn.momentum == 0.1  # restored after the cumulative average
    # not the trained model's statistics
    assert not torch.allclose(averaged.batchnorm1.running_mean, model.batchnorm1.running_mean)


def test_weight_average_warm_up_leaves_the_initialisation_in_one_epoch(small_splits):
    """Decay 0.999 over 30 steps without warm-up would keep 0.999^29 = 97% of the initial weights (chance
    accuracy, 2.1%); with the warm-up the average is of recent weights and classifies well."""
    seed_everything(0)
    initial = build_model(ModelSpec("arch2", 8, 32, 600, 0.5), 47)
    model, fitted = train(
        small_splits,
        Recipe(lr=1e-3, batch_size=50, epochs=1, ema_decay=0.999),
        model=ModelSpec("arch2", 8, 32, 600, 0.5),
    )
    assert not same_weights(fitted.model, model) and not same_weights(fitted.model, initial)
    val = evaluate_split(
        fitted.model, small_splits.val_images, small_splits.val_labels, small_splits.mean, small_splits.std
    )
    assert val["accuracy"] > 20.0, val
