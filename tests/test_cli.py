"""The command line (emnist_utils.cli) through `main(argv)`: damaged and malicious trained-model files are refused
(exit 2, nothing run), any class count trains and evaluates and mismatched classes are refused, data errors are
one line naming the path, the help texts, and the data / train / evaluate / trials / studies / notebooks --plan
commands on the stand-in (smoke profile). `predict` is tested in test_cli_predict.py."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import PROJECT_ROOT, STANDIN_DIR, build_dataset, record_calls

from emnist_utils import cli, main_job
from emnist_utils.core.registry import ModelSpec, build_model
from emnist_utils.core.trained_model import FORMAT, TrainedModel
from emnist_utils.experiments import plan as plan_module
from emnist_utils.experiments import store as store_module

COMMANDS = ("data", "train", "evaluate", "trials", "studies", "notebooks", "search", "predict")
DIGITS, UPPER, LOWER = "0123456789", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"
BYCLASS_CLASSES = list(DIGITS + UPPER + LOWER)  # 62 classes, as EMNIST byclass
BALANCED_CLASSES = list(DIGITS + UPPER + "abdefghnqrt")  # 47 classes, as EMNIST balanced
LETTERS_CLASSES = [f"{u}/{lo}" for u, lo in zip(UPPER, LOWER)]  # 26 classes, labels 1-26, as EMNIST letters
SMALL = ["--profile", "smoke", "--device", "cpu", "--jobs", "1"]


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(err: str) -> str:
    """The single line a user-fixable error prints (anything more, e.g. a traceback, fails the test)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Small synthetic splits (every class equally often) under custom names, each with its SHA256SUMS."""
    root = tmp_path_factory.mktemp("cli-data")
    return {
        "synth47": build_dataset(root / "d47", "synth47", 470, 94, classes=BALANCED_CLASSES, balanced_labels=True),
        "synth62": build_dataset(root / "d62", "synth62", 620, 124, classes=BYCLASS_CLASSES, balanced_labels=True),
        "synthletters": build_dataset(
            root / "d26",
            "synthletters",
            520,
            104,
            classes=LETTERS_CLASSES,
            first_label=1,
            mapping_columns=3,
            balanced_labels=True,
        ),
    }


def data_args(ds) -> list[str]:
    return ["--data", str(ds.root), "--split", ds.split]


def tiny_trained_model(classes: list[str]) -> TrainedModel:
    """A small model with random weights and non-trivial BatchNorm statistics (one training-mode pass)."""
    spec = ModelSpec("arch2", 4, 8, 16, 0.5)
    torch.manual_seed(0)
    model = build_model(spec, len(classes))
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 1, 28, 28))
    model.eval()
    provenance = {"dataset": "emnist-synth47", "split": "synth47", "checksum": "ab" * 32}
    return TrainedModel(model, spec, list(classes), 0.17, 0.33, provenance)


def edit_state(path: Path, edit) -> None:
    """Change one tensor of a saved trained-model file and save it again in the same format."""
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == FORMAT
    edit(payload["state_dict"])
    torch.save(payload, path)


# ----------------------------------------------------------------------------- damaged and malicious model files


def _nan_weight(state):
    state["fc1.weight"][0, 3] = float("nan")


def _inf_running_var(state):
    state["batchnorm2.running_var"][1] = float("inf")


def _negative_running_var(state):
    state["batchnorm1.running_var"][0] = -0.5


@pytest.mark.parametrize(
    "edit, tensor, problem",
    [
        (_nan_weight, "fc1.weight", "NaN or infinite"),
        (_inf_running_var, "batchnorm2.running_var", "NaN or infinite"),
        (_negative_running_var, "batchnorm1.running_var", "variances that are not positive"),
    ],
    ids=["nan-weight", "inf-running-var", "negative-running-var"],
)
def test_evaluate_refuses_damaged_weights(tmp_path, capsys, datasets, edit, tensor, problem):
    """Before: such a file was evaluated and printed e.g. "test accuracy: 2.13%" with exit code 0."""
    ds = datasets["synth47"]
    path = tiny_trained_model(ds.classes).save(tmp_path / "model.pt")
    rc, out, err = run(capsys, "evaluate", "--weights", path, *data_args(ds))
    assert rc == 0 and "test accuracy:" in out, err  # the undamaged file is accepted ...

    edit_state(path, edit)
    rc, out, err = run(capsys, "evaluate", "--weights", path, *data_args(ds))
    assert rc == 2  # ... and the same file with one bad tensor is not
    line = one_error_line(err)
    assert tensor in line and problem in line and str(path) in line
    assert "test accuracy" not in out


class _MakesAFile:
    """Unpickling this creates a file: what a malicious model file could do if it were loaded with pickle."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("kind", ["inside a trained-model dict", "bare pickle"])
def test_evaluate_never_runs_code_from_a_model_file(tmp_path, capsys, datasets, kind):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    if kind == "bare pickle":
        path.write_bytes(pickle.dumps(_MakesAFile(marker)))
    else:
        meta = tiny_trained_model(datasets["synth47"].classes).metadata()
        torch.save({"format": FORMAT, "metadata": json.dumps(meta), "state_dict": {}, "x": _MakesAFile(marker)}, path)

    rc, out, err = run(capsys, "evaluate", "--weights", path, *data_args(datasets["synth47"]))
    assert rc == 2
    line = one_error_line(err)
    assert str(path) in line
    assert not marker.exists()

    # The file really is malicious: unpickling it without the weights-only guard runs its code.
    with open(path, "rb") as f:
        try:
            pickle.load(f) if kind == "bare pickle" else torch.load(f, weights_only=False)
        except Exception:
            pass
    assert marker.exists()


# ----------------------------------------------------------------------------- any number of classes


def test_62_classes_train_and_evaluate_and_other_classes_are_refused(tmp_path, capsys, datasets):
    """Before: training on 62 classes failed with "IndexError: Target 51 is out of bounds" (a 47-class model)."""
    ds62 = datasets["synth62"]
    out_file = tmp_path / "model62.pt"
    rc, out, err = run(capsys, "train", "--recipe", "fast", *SMALL, *data_args(ds62), "--out", out_file)
    assert rc == 0, err
    assert "test accuracy" in out and "trained-model file written to" in out
    model = TrainedModel.load(out_file)
    assert model.classes == BYCLASS_CLASSES
    images = torch.from_numpy(ds62.stored["test"][:5].transpose(0, 2, 1).copy())
    assert model.logits(images).shape == (5, 62)
    assert model.provenance["dataset"] == "emnist-synth62"

    rc, out, err = run(capsys, "evaluate", "--weights", out_file, *data_args(ds62))
    assert rc == 0, err
    assert "the data it was trained on" in out and "test accuracy:" in out

    for other, count in (("synth47", 47), ("synthletters", 26)):
        rc, out, err = run(capsys, "evaluate", "--weights", out_file, *data_args(datasets[other]))
        assert rc == 2
        line = one_error_line(err)
        assert "predicts 62 classes" in line and f"emnist-{other} has {count}" in line
        assert "test accuracy" not in out


def test_26_letters_classes_train_and_evaluate(tmp_path, capsys, datasets):
    """EMNIST-letters-style data: labels 1-26 and a three-column mapping."""
    ds = datasets["synthletters"]
    out_file = tmp_path / "letters.pt"
    rc, out, err = run(capsys, "train", "--recipe", "fast", *SMALL, *data_args(ds), "--out", out_file)
    assert rc == 0, err
    model = TrainedModel.load(out_file)
    assert model.classes == LETTERS_CLASSES
    rc, out, err = run(capsys, "evaluate", "--weights", out_file, *data_args(ds))
    assert rc == 0, err
    assert "test split, 104 images" in out and "test accuracy:" in out


# ----------------------------------------------------------------------------- data errors


def test_data_pointing_at_a_file(tmp_path, capsys):
    path = tmp_path / "emnist.zip"
    path.write_bytes(b"not a folder")
    rc, out, err = run(capsys, "data", "--data", path, "--split", "balanced")
    assert rc == 2 and out == ""
    line = one_error_line(err)
    assert str(path.resolve()) in line and "is a file, not a folder" in line


def test_empty_split_name(capsys, datasets):
    root = datasets["synth47"].root
    rc, out, err = run(capsys, "data", "--data", root, "--split", "")
    assert rc == 2
    line = one_error_line(err)
    assert "split name is empty" in line and str(root.resolve()) in line and "synth47" in line


def test_missing_data_folder(tmp_path, capsys):
    nowhere = tmp_path / "nowhere"
    rc, out, err = run(capsys, "data", "--data", nowhere, "--split", "synth47")
    assert rc == 2
    line = one_error_line(err)
    assert str(nowhere.resolve()) in line and "does not exist" in line


def test_folder_with_one_split_loads_it_without_a_split_name(tmp_path, capsys):
    ds = build_dataset(tmp_path / "only", "onlyone", 30, 10)
    rc, out, err = run(capsys, "data", "--data", ds.root)
    assert rc == 0, err
    assert "EMNIST split 'onlyone'" in out
    assert "train: (30, 28, 28) images, test: (10, 28, 28) images, 47 classes" in out


def test_unreadable_file(tmp_path, capsys, monkeypatch):
    """A data file this user may not read (simulated: root reads everything): one line naming the file."""
    import builtins
    import io

    ds = build_dataset(tmp_path / "d", "synth47", 30, 10)
    path = ds.files["train_images"]
    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr(io, "open", guarded)
    rc, out, err = run(capsys, "data", *data_args(ds))
    assert rc == 2
    line = one_error_line(err)
    assert str(path) in line and "cannot be read" in line and "Permission denied" in line


def test_data_error_in_a_real_process_is_one_line_without_traceback(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("x")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMNIST_")}
    proc = subprocess.run(
        [sys.executable, "-m", "emnist_utils", "data", "--data", str(path)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    line = one_error_line(proc.stderr)
    assert str(path.resolve()) in line


# ----------------------------------------------------------------------------- help


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m emnist_utils ")
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("    ") and line.split()}
    assert set(COMMANDS) <= listed, listed
    assert set(_subcommands(cli.build_parser())) == set(COMMANDS)


def test_every_option_of_every_command_has_a_help_text():
    parser = cli.build_parser()
    missing = []
    for name, sub in _subcommands(parser).items():
        for action in sub._actions:
            if action.help == argparse.SUPPRESS:
                continue
            if not (action.help or "").strip():
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing
    top = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert all((c.help or "").strip() for c in top._choices_actions)


@pytest.mark.parametrize("command", COMMANDS)
def test_usage_names_the_module_command(capsys, command):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m emnist_utils {command} ")
    assert "__main__.py" not in out and "cli.py" not in out


def test_usage_in_a_real_process_and_on_a_usage_error():
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMNIST_")}
    proc = subprocess.run(
        [sys.executable, "-m", "emnist_utils", "evaluate"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2  # argparse: --weights is required
    assert proc.stderr.startswith("usage: python -m emnist_utils evaluate ")
    assert "__main__.py" not in proc.stderr and "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- the commands on the stand-in


def _idx_parts(path: Path) -> tuple[tuple[int, ...], bytes]:
    """An IDX file's dimensions and payload, read here by hand."""
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return dims, raw[4 + 4 * ndim :]


@pytest.fixture(scope="module")
def standin_facts():
    """Image counts and the data checksum of the stand-in, computed here from the raw files (upright images, then
    labels, train then test)."""
    if not STANDIN_DIR.is_dir():
        pytest.skip(f"stand-in data not found at {STANDIN_DIR}")
    digest, counts, per_class = hashlib.sha256(), {}, {}
    for part in ("train", "test"):
        dims, images = _idx_parts(STANDIN_DIR / f"emnist-standin-{part}-images-idx3-ubyte.gz")
        _, labels = _idx_parts(STANDIN_DIR / f"emnist-standin-{part}-labels-idx1-ubyte.gz")
        upright = np.frombuffer(images, dtype=np.uint8).reshape(dims).transpose(0, 2, 1)
        digest.update(np.ascontiguousarray(upright).tobytes())
        digest.update(labels)
        counts[part] = dims[0]
        per_class[part] = np.bincount(np.frombuffer(labels, dtype=np.uint8), minlength=47)
    return {"counts": counts, "per_class": per_class, "checksum": digest.hexdigest()}


STANDIN = ["--data", str(STANDIN_DIR), "--split", "standin"]


def test_data_describes_the_standin(capsys, standin_facts):
    rc, out, err = run(capsys, "data", *STANDIN)
    assert rc == 0, err
    n_train, n_test = standin_facts["counts"]["train"], standin_facts["counts"]["test"]
    assert "EMNIST split 'standin'" in out
    assert f"train: ({n_train}, 28, 28) images, test: ({n_test}, 28, 28) images, 47 classes" in out
    assert f"sha256 (decompressed data): {standin_facts['checksum']}" in out
    assert "verified by: SHA256SUMS" in out


def test_train_evaluate_and_train_again_from_the_cache(tmp_path, capsys, monkeypatch, standin_facts):
    trainings = record_calls(monkeypatch, store_module, "train_run")
    weights = tmp_path / "fast.pt"
    rc, first, err = run(capsys, "train", "--recipe", "fast", *SMALL, *STANDIN, "--out", weights)
    assert rc == 0, err
    assert len(trainings) == 1
    assert "recipe fast: 1 epochs" in first and "profile smoke, seed 0" in first
    assert f"data: emnist-standin sha256 {standin_facts['checksum'][:12]}" in first
    assert weights.is_file()
    # the file carries the prior correction chosen on validation (the stand-in's training split is imbalanced)
    saved = TrainedModel.load(weights)
    strength = float(first.split("logit adjustment strength ")[1].split(",")[0])
    assert strength > 0 and saved.adjustment is not None and saved.adjustment.strength == strength
    # -strength * log(prior of the training part): rare classes raised, common ones lowered; the training part is a
    # random subset, so its prior follows the whole training split's closely
    log_prior = np.log(standin_facts["per_class"]["train"] / standin_facts["counts"]["train"])
    assert np.corrcoef(saved.adjustment.vector(), log_prior)[0, 1] < -0.9

    rc, out, err = run(capsys, "evaluate", "--weights", weights, *STANDIN)
    assert rc == 0, err
    assert f"emnist-standin test split, {standin_facts['counts']['test']:,} images" in out
    assert "(the data it was trained on)" in out
    accuracy = float(out.split("test accuracy: ")[1].split("%")[0])
    assert 100 / 47 < accuracy <= 100  # one epoch on 3,000 images: well above chance
    assert "logit adjustment" in out  # evaluate says it applies what the file carries

    rc, second, err = run(capsys, "train", "--recipe", "fast", *SMALL, *STANDIN, "--out", weights)
    assert rc == 0, err
    assert len(trainings) == 1  # cached: not trained again
    assert second == first  # the same run, the same numbers (its recorded training time included)


def test_an_accelerator_this_machine_lacks_is_one_line_for_every_command(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for command in (["train", "--recipe", "fast"], ["trials", "--tables", "1.1"], ["notebooks", "--plan"]):
        rc, _, err = run(capsys, *command, "--profile", "smoke", "--device", "cuda", *STANDIN)
        assert rc == 2 and "this machine has no CUDA GPU; use --device cpu" in one_error_line(err), command


def test_trials_trains_one_trial(capsys, monkeypatch):
    trainings = record_calls(monkeypatch, store_module, "train_run")
    rc, out, err = run(capsys, "trials", "--tables", "1.1", "--trials", "1", *SMALL, *STANDIN)
    assert rc == 0, err
    assert "profile: smoke, 1 runs, 1 at a time on cpu" in out
    result_lines = [line for line in out.splitlines() if line.startswith("arch1-trial")]
    assert len(result_lines) == 1 and result_lines[0].startswith("arch1-trial1: validation ")
    assert ", 1 epochs, " in result_lines[0]
    assert len(trainings) == 1


def test_trials_with_no_such_trial_is_a_user_error(capsys):
    rc, out, err = run(capsys, "trials", "--tables", "1.1", "--trials", "9", *SMALL, *STANDIN)
    assert rc == 2
    assert "no trial numbered [9]" in one_error_line(err)


def test_studies_trains_the_depth_study(capsys, monkeypatch):
    trainings = record_calls(monkeypatch, store_module, "train_run")
    rc, out, err = run(capsys, "studies", "--studies", "depth_study", *SMALL, *STANDIN)
    assert rc == 0, err
    assert "profile: smoke, 4 runs, 1 at a time on cpu" in out
    labels = [line.split(": validation ")[0] for line in out.splitlines() if ": validation " in line]
    assert labels == ["arch2-depth1-10ep seed 0", "arch2-10ep seed 0", "arch2-depth3-10ep seed 0",
                      "arch2-depth4-10ep seed 0"]  # fmt: skip
    assert all(", 1 epochs, " in line for line in out.splitlines() if ": validation " in line)
    assert len(trainings) == 4


def test_notebooks_plan_prints_the_plan_and_does_nothing_else(capsys, monkeypatch, isolated_env):
    """The plan of every notebook. The machine measurements it needs are faked (they take minutes here)."""
    measured = []
    monkeypatch.setattr(plan_module, "measure_throughput", lambda spec, *a, **k: measured.append(spec) or 500.0)
    monkeypatch.setattr(main_job, "estimate_baseline", lambda name, splits, profile: 3.0)
    trainings = record_calls(monkeypatch, store_module, "train_run")
    executed = record_calls(monkeypatch, main_job, "execute_notebook")
    rc, out, err = run(capsys, "notebooks", "--plan", *SMALL, *STANDIN)
    assert rc == 0, err
    assert "plan (smoke profile, cpu, 1 job(s) at a time" in out
    notebooks = sorted(p.name for p in (PROJECT_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    plan_rows = [line.split()[0] for line in out.splitlines() if line.startswith("  ") and ".ipynb" in line]
    assert plan_rows == notebooks
    assert "runs to train: " in out and "executing" not in out
    assert measured and not trainings and not executed
    assert not list((isolated_env / "output").rglob("*.ipynb"))


@pytest.mark.parametrize(
    "run_fields, says",
    [
        ({}, "training images)"),
        ({"train_on": "train+val"}, "training + validation images)"),
        ({"train_on": "train+val", "teacher": ["a" * 24, "b" * 24]}, "training + validation images, distilled from 2"),
    ],
)
def test_evaluate_says_which_images_a_model_was_trained_on(tmp_path, capsys, datasets, run_fields, says):
    ds = datasets["synth47"]
    model = tiny_trained_model(BALANCED_CLASSES)
    model.run = {"seed": 0, **run_fields}
    weights = model.save(tmp_path / "model.pt")
    rc, out, err = run(capsys, "evaluate", "--weights", weights, *data_args(ds))
    assert rc == 0, err
    assert says in out.splitlines()[0]
    rc, out, err = run(capsys, "evaluate", "--weights", weights, *data_args(ds), "--json")
    numbers = json.loads(out)
    assert numbers["trained_on_images"] == run_fields.get("train_on", "train")
    assert numbers["distilled_from_runs"] == len(run_fields.get("teacher", []))
