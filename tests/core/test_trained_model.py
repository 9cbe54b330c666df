"""Trained-model files (emnist_utils.core.trained_model): the round trip, safe loading (weights only), refusal of
damaged weights, changed architecture code, foreign and old files and other class lists, and the prediction-time
settings (logit adjustment, test-time shifts)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import BALANCED_CLASSES, same_weights

from emnist_utils.core.evaluation import logit_adjustment
from emnist_utils.core.registry import ModelSpec, architecture_fingerprint, build_model
from emnist_utils.core.splits import prior_from_counts
from emnist_utils.core.trained_model import FORMAT, LogitAdjustment, ModelFileError, TrainedModel

SPEC = ModelSpec("arch2", 4, 8, 16, 0.5)
MEAN, STD = 0.17, 0.33
PROVENANCE = {"dataset": "emnist-synth", "split": "synth", "checksum": "ab" * 32}
# An imbalanced training split like the stand-in's (215 to 2,400 images per class) and a strength validation chooses
COUNTS = tuple(215 + 47 * i for i in range(47))
ADJUSTMENT = LogitAdjustment(COUNTS, 0.75)


def expected_vector(counts=COUNTS, strength=0.75) -> torch.Tensor:
    """The adjustment a file records, computed here from its counts: minus strength x log prior, centred."""
    log_prior = torch.tensor(counts, dtype=torch.float64).div(sum(counts)).log()
    return (-strength * (log_prior - log_prior.mean())).to(torch.float32)


def make_model(spec: ModelSpec = SPEC, seed: int = 0, **kwargs) -> TrainedModel:
    """A model with random weights and non-trivial BatchNorm statistics (one training-mode pass)."""
    torch.manual_seed(seed)
    model = build_model(spec, len(BALANCED_CLASSES))
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 1, 28, 28) * 2 + 0.5)
    model.eval()
    return TrainedModel(
        model,
        spec,
        list(BALANCED_CLASSES),
        MEAN,
        STD,
        dict(PROVENANCE),
        run={"key": "k" * 24, "seed": seed},
        metrics={"val_acc": 12.5},
        **kwargs,
    )


def images(n: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8))


def expected_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The logits computed here, by hand: pixels / 255, standardised, through the model in eval mode."""
    with torch.no_grad():
        return model.eval()(((x.to(torch.float32) / 255.0 - MEAN) / STD).unsqueeze(1))


def rewrite(path, edit) -> None:
    """Change the metadata JSON of a saved file (weights untouched), as a hand edit of the file would."""
    payload = torch.load(path, weights_only=True)
    meta = json.loads(payload["metadata"])
    edit(meta, payload["state_dict"])
    payload["metadata"] = json.dumps(meta)
    torch.save(payload, path)


# ----------------------------------------------------------------------------- round trip


def test_save_load_round_trip(tmp_path):
    original = make_model(adjustment=ADJUSTMENT, tta_shifts=((0, 0), (1, 0)))
    path = original.save(tmp_path / "sub" / "model.pt")
    loaded = TrainedModel.load(path)
    assert same_weights(original.model, loaded.model) and not loaded.model.training
    assert loaded.spec == SPEC and loaded.classes == list(BALANCED_CLASSES)
    assert (loaded.mean, loaded.std) == (MEAN, STD)
    assert loaded.provenance == PROVENANCE and loaded.run == original.run and loaded.metrics == {"val_acc": 12.5}
    assert loaded.adjustment == original.adjustment and loaded.tta_shifts == ((0, 0), (1, 0))
    assert loaded.fingerprint == architecture_fingerprint("arch2")
    x = images()
    assert torch.equal(original.logits(x), loaded.logits(x))
    assert torch.equal(original.predict(x), loaded.predict(x))
    assert not list(path.parent.glob("*.tmp"))


def test_logits_use_the_stored_normalisation(tmp_path):
    model = TrainedModel.load(make_model().save(tmp_path / "m.pt"))
    x = images()
    assert torch.allclose(model.logits(x), expected_logits(model.model, x), atol=1e-5)
    assert torch.allclose(model.probabilities(x).sum(1), torch.ones(len(x)))


@pytest.mark.parametrize(
    "spec",
    [ModelSpec("arch1", 4, 6, 16, 0.3), ModelSpec("lean", 4, 8, 16, 0.2), ModelSpec("arch2-depth3", 4, 8, 16, 0.5)],
    ids=lambda s: s.arch,
)
def test_round_trip_for_other_architectures(tmp_path, spec):
    original = make_model(spec)
    loaded = TrainedModel.load(original.save(tmp_path / "m.pt"))
    assert same_weights(original.model, loaded.model)
    assert torch.equal(original.logits(images()), loaded.logits(images()))


# ----------------------------------------------------------------------------- safe loading


class _MakesAFile:
    """Unpickling this creates a file: what a malicious model file could do if loaded with pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_loading_never_runs_code_from_the_file(tmp_path):
    marker = tmp_path / "marker"
    payload = {
        "format": FORMAT,
        "metadata": json.dumps(make_model().metadata()),
        "state_dict": {},
        "extra": _MakesAFile(marker),
    }
    path = tmp_path / "evil.pt"
    torch.save(payload, path)
    with pytest.raises(ModelFileError, match="nothing in the file was run"):
        TrainedModel.load(path)
    assert not marker.exists()
    # the file really would have run code under an unsafe load (so the check above means something)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_pickle_is_refused_too(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_MakesAFile(marker)))
    with pytest.raises(ModelFileError):
        TrainedModel.load(path)
    assert not marker.exists()


# ----------------------------------------------------------------------------- damaged weights


def _nan_weight(model):
    model.fc1.weight.data[3, 5] = float("nan")
    return "fc1.weight"


def _inf_bias(model):
    model.conv2.bias.data[0] = float("-inf")
    return "conv2.bias"


def _inf_running_var(model):
    model.batchnorm1.running_var[1] = float("inf")
    return "batchnorm1.running_var"


def _nan_running_mean(model):
    model.batchnorm2.running_mean[0] = float("nan")
    return "batchnorm2.running_mean"


@pytest.mark.parametrize(
    "damage", [_nan_weight, _inf_bias, _inf_running_var, _nan_running_mean], ids=lambda f: f.__name__.strip("_")
)
def test_non_finite_tensors_are_refused_naming_the_tensor(tmp_path, damage):
    trained = make_model()
    name = damage(trained.model)
    path = trained.save(tmp_path / "m.pt")
    with pytest.raises(ModelFileError, match="NaN or infinite") as info:
        TrainedModel.load(path)
    assert repr(name) in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("variance", [-0.5, 0.0])
def test_batchnorm_variance_that_is_not_positive_is_refused(tmp_path, variance):
    trained = make_model()
    trained.model.batchnorm2.running_var[2] = variance
    path = trained.save(tmp_path / "m.pt")
    with pytest.raises(ModelFileError, match="variances that are not positive") as info:
        TrainedModel.load(path)
    assert "'batchnorm2.running_var'" in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.float64])
def test_weights_stored_with_another_dtype_are_refused(tmp_path, dtype):
    """Issue 20: integer weights were silently converted on load and evaluated (2.13%, exit 0)."""
    path = make_model().save(tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["fc1.weight"] = (payload["state_dict"]["fc1.weight"] * 100).to(dtype)
    torch.save(payload, path)
    with pytest.raises(ModelFileError) as info:
        TrainedModel.load(path)
    message = str(info.value)
    assert "'fc1.weight'" in message and str(dtype) in message and str(path) in message and "\n" not in message


@pytest.mark.parametrize(
    "adjustment, field",
    [
        ({"class_counts": list(COUNTS), "strength": 20.0}, "adjustment.strength"),
        ({"class_counts": list(COUNTS), "strength": float("nan")}, "adjustment.strength"),
        ({"class_counts": list(COUNTS), "strength": -0.5}, "adjustment.strength"),
        ({"class_counts": [1] + [10**9] * 46, "strength": 1.0}, "adjustment.class_counts"),  # +20 for one class
        ({"class_counts": [0] + list(COUNTS[1:]), "strength": 0.5}, "adjustment.class_counts"),
        ({"class_counts": [2.5] * 47, "strength": 0.5}, "adjustment.class_counts"),
        ({"class_counts": list(COUNTS[:46]), "strength": 0.5}, "adjustment.class_counts"),
        ([20.0] + [0.0] * 46, "adjustment must record"),  # a vector, as format 2 stored it
        ({"class_counts": list(COUNTS), "strength": 0.5, "vector": [20.0] * 47}, "adjustment must record"),
    ],
)
def test_implausible_logit_adjustment_is_refused_naming_the_field(tmp_path, adjustment, field):
    """Issue 20: a file whose adjustment was +20 for one class was evaluated and predicted (a few percent, exit 0).
    The file now records the class counts and the strength, and every vector it can give is one training gives."""
    path = make_model().save(tmp_path / "m.pt")
    rewrite(path, lambda meta, state: meta["prediction"].update(adjustment=adjustment))
    with pytest.raises(ModelFileError, match=field) as info:
        TrainedModel.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("shifts", [[[14, 0]], [[0, 0], [0, -2]], [], [["a", 0]]])
def test_implausible_test_time_shifts_are_refused(tmp_path, shifts):
    """Issue 20: a file asking for a 14-pixel test-time shift was evaluated (a few percent, exit 0)."""
    path = make_model().save(tmp_path / "m.pt")
    rewrite(path, lambda meta, state: meta["prediction"].update(tta_shifts=shifts))
    with pytest.raises(ModelFileError, match="tta_shifts") as info:
        TrainedModel.load(path)
    assert str(path) in str(info.value)


def test_the_adjustment_is_derived_from_the_recorded_prior_and_strength(tmp_path):
    path = make_model(adjustment=ADJUSTMENT).save(tmp_path / "m.pt")
    stored = json.loads(torch.load(path, weights_only=True)["metadata"])["prediction"]["adjustment"]
    assert stored == {"class_counts": list(COUNTS), "strength": 0.75}  # no vector in the file
    loaded = TrainedModel.load(path)
    assert torch.allclose(loaded.adjustment.vector(), expected_vector(), atol=1e-6)
    # exactly what validation's choice computes from the training split's prior
    prior = prior_from_counts(torch.tensor(COUNTS))
    assert torch.equal(loaded.adjustment.vector(), logit_adjustment(prior, 0.75))


def test_invalid_normalisation_is_refused(tmp_path):
    path = make_model().save(tmp_path / "m.pt")
    rewrite(path, lambda meta, state: meta["normalisation"].update(std=0.0))
    with pytest.raises(ModelFileError, match="normalisation"):
        TrainedModel.load(path)


# ----------------------------------------------------------------------------- changed code


def test_changed_architecture_code_is_refused_naming_what_changed(tmp_path):
    path = make_model().save(tmp_path / "m.pt")

    def edit(meta, state):
        meta["fingerprint"]["emnist_utils.core.models.Architecture2"] = "0" * 16

    rewrite(path, edit)
    with pytest.raises(ModelFileError, match="changed since these weights were saved") as info:
        TrainedModel.load(path)
    message = str(info.value)
    assert "emnist_utils.core.models.Architecture2" in message and "allow_code_change" in message
    loaded = TrainedModel.load(path, allow_code_change=True)
    assert loaded.fingerprint["emnist_utils.core.models.Architecture2"] == "0" * 16  # what the file said
    assert same_weights(loaded.model, make_model().model)


def test_saved_with_another_fingerprint_names_added_and_changed_definitions(tmp_path):
    current = architecture_fingerprint("arch2-depth3")
    old = {**current, "emnist_utils.core.variants.ConvStack": "1" * 16, "emnist_utils.core.variants.gone": "2" * 16}
    path = make_model(ModelSpec("arch2-depth3", 4, 8, 16, 0.5), fingerprint=old).save(tmp_path / "m.pt")
    with pytest.raises(ModelFileError) as info:
        TrainedModel.load(path)
    message = str(info.value)
    assert "emnist_utils.core.variants.ConvStack" in message and "emnist_utils.core.variants.gone" in message
    assert "emnist_utils.core.variants.Depth3" not in message  # unchanged definitions are not named
    assert TrainedModel.load(path, allow_code_change=True).spec.arch == "arch2-depth3"


# ----------------------------------------------------------------------------- foreign and old files


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="no trained-model file"):
        TrainedModel.load(tmp_path / "absent.pt")


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / "random.pt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes())
    with pytest.raises(ModelFileError, match="not a trained-model file this project can read"):
        TrainedModel.load(path)


def test_old_weights_format_is_refused_clearly(tmp_path):
    model = build_model(SPEC, 47)
    path = tmp_path / "old.pt"
    torch.save(
        {
            "format": "emnist-cnn-weights/1",
            "config": {"arch": "arch2", "c1": 4, "c2": 8, "hidden": 16},
            "state_dict": model.state_dict(),
            "mean": MEAN,
            "std": STD,
        },
        path,
    )
    with pytest.raises(ModelFileError) as info:
        TrainedModel.load(path)
    message = str(info.value)
    assert "'emnist-cnn-weights/1'" in message and FORMAT in message and "trained again" in message


@pytest.mark.parametrize("payload", ["bare state dict", "list"])
def test_other_torch_files_are_refused(tmp_path, payload):
    path = tmp_path / "other.pt"
    state = build_model(SPEC, 47).state_dict()
    torch.save(state if payload == "bare state dict" else [state], path)
    with pytest.raises(ModelFileError, match="not an emnist-cnn trained-model file"):
        TrainedModel.load(path)


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    path = make_model().save(tmp_path / "m.pt")
    rewrite(path, lambda meta, state: meta["model"].update(c2=9))
    with pytest.raises(ModelFileError, match="do not fit architecture 'arch2'") as info:
        TrainedModel.load(path)
    assert str(path) in str(info.value)


def test_invalid_model_description_is_refused(tmp_path):
    path = make_model().save(tmp_path / "m.pt")
    rewrite(path, lambda meta, state: meta["model"].update(c2=-3))
    with pytest.raises(ModelFileError, match="description stored with the weights"):
        TrainedModel.load(path)


# ----------------------------------------------------------------------------- classes


@pytest.mark.parametrize("count", [27, 62])
def test_check_classes_refuses_other_class_lists(count):
    model = make_model()
    other = list("0123456789") + [chr(ord("A") + i) for i in range(26)] + [chr(ord("a") + i) for i in range(26)]
    other = other[:count]
    with pytest.raises(ModelFileError, match=f"predicts 47 classes.*has {count}") as info:
        model.check_classes(other, where="the test data")
    assert "the test data" in str(info.value)


def test_check_classes_refuses_the_same_classes_in_another_order():
    model = make_model()
    with pytest.raises(ModelFileError):
        model.check_classes(list(reversed(BALANCED_CLASSES)))
    model.check_classes(list(BALANCED_CLASSES))  # the right ones pass


# ----------------------------------------------------------------------------- prediction settings


def test_logits_apply_the_stored_adjustment_unless_raw(tmp_path):
    model = TrainedModel.load(make_model(adjustment=ADJUSTMENT).save(tmp_path / "m.pt"))
    x = images()
    raw = expected_logits(model.model, x)
    assert torch.allclose(model.logits(x, raw=True), raw, atol=1e-5)
    assert torch.allclose(model.logits(x), raw + expected_vector(), atol=1e-5)
    assert torch.equal(model.predict(x), model.logits(x).argmax(1))


def _shift(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Move normalised (N, 1, 28, 28) images by whole pixels, filling with the background value (by hand)."""
    out = torch.full_like(x, float(x.amin()))
    h, w = x.shape[-2:]
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def test_logits_average_the_test_time_shifts_unless_raw(tmp_path):
    shifts = ((0, 0), (1, 0), (0, -1))
    model = TrainedModel.load(make_model(tta_shifts=shifts, adjustment=ADJUSTMENT).save(tmp_path / "m.pt"))
    x = images()
    normalised = ((x.to(torch.float32) / 255.0 - MEAN) / STD).unsqueeze(1)
    with torch.no_grad():
        views = [F.log_softmax(model.model(_shift(normalised, dx, dy)), 1) for dx, dy in shifts]
    expected = torch.stack(views).mean(0) + expected_vector()
    assert torch.allclose(model.logits(x), expected, atol=1e-4)
    assert torch.allclose(model.logits(x, raw=True), expected_logits(model.model, x), atol=1e-5)


def test_with_prediction_keeps_omitted_settings_and_shares_the_weights():
    model = make_model(adjustment=ADJUSTMENT, tta_shifts=((0, 0), (1, 0)))
    same = model.with_prediction()
    assert same.adjustment == ADJUSTMENT and same.tta_shifts == ((0, 0), (1, 0))
    assert same.model is model.model and same.classes == model.classes and same.run == model.run
    only_shifts = model.with_prediction(tta_shifts=[(0, 0)])
    assert only_shifts.tta_shifts == ((0, 0),) and only_shifts.adjustment == ADJUSTMENT
    no_adjustment = model.with_prediction(adjustment=None)
    assert no_adjustment.adjustment is None and no_adjustment.tta_shifts == ((0, 0), (1, 0))
    other = LogitAdjustment(COUNTS, 0.25)
    replaced = model.with_prediction(adjustment=other, tta_shifts=[[1, 1]])
    assert replaced.adjustment == other and replaced.tta_shifts == ((1, 1),)
    # the original is unchanged
    assert model.adjustment == ADJUSTMENT and model.tta_shifts == ((0, 0), (1, 0))


def test_adjustment_must_have_one_count_per_class():
    with pytest.raises(ModelFileError, match="46 entries for 47 classes"):
        make_model(adjustment=LogitAdjustment(COUNTS[:46], 0.5))
    with pytest.raises(ModelFileError, match="3 entries"):
        make_model().with_prediction(adjustment=LogitAdjustment((5, 6, 7), 0.5))
    with pytest.raises(TypeError, match="LogitAdjustment"):
        make_model(adjustment=[0.0] * 47)


def test_prediction_settings_survive_a_save(tmp_path):
    model = make_model().with_prediction(adjustment=LogitAdjustment(COUNTS, 0.25), tta_shifts=[(0, 0), (-1, 0)])
    loaded = TrainedModel.load(model.save(tmp_path / "m.pt"))
    assert loaded.adjustment == LogitAdjustment(COUNTS, 0.25) and loaded.tta_shifts == ((0, 0), (-1, 0))
    assert torch.equal(loaded.logits(images()), model.logits(images()))
