"""The command-line entry points people use to check weights and data: exit codes and what they print."""
from __future__ import annotations

import pytest
import torch

from emnist_utils import evaluate
from emnist_utils.experiments import save_weights
from emnist_utils.models import FINAL_CONFIG, build_model
from helpers import build_dataset


def _weights_for(tmp_path, data_checksum="elsewhere", cfg=FINAL_CONFIG.with_(hidden=16)):
    torch.manual_seed(0)
    model = build_model(cfg)
    path = tmp_path / "model.pt"
    save_weights(model, cfg, path, mean=0.17, std=0.33,
                 provenance={"dataset": "emnist-synth", "split": "synth", "checksum": data_checksum})
    return model, path


@pytest.mark.parametrize("cfg", [FINAL_CONFIG.with_(hidden=16),
                                 FINAL_CONFIG.with_(arch="compact", c1=4, c2=8, hidden=8)],
                         ids=["report architecture", "compact CNN (notebook 05's best_model.pt)"])
def test_evaluate_prints_the_accuracy_of_saved_weights(tmp_path, capsys, cfg):
    root = build_dataset(tmp_path / "data", split="synth", n_train=40, n_test=12).root
    model, weights = _weights_for(tmp_path, cfg=cfg)
    from emnist_utils.data import load_emnist
    from emnist_utils.evaluation import accuracy, predict

    data = load_emnist(root, "synth", download=False)
    expected = accuracy(predict(model, data.test_images, 0.17, 0.33), data.test_labels)
    assert evaluate.main(["--weights", str(weights), "--data", str(root), "--split", "synth"]) == 0
    out = capsys.readouterr().out
    assert f"test accuracy: {expected:.2f}%" in out
    assert "DIFFERENT data from training" in out


def test_evaluate_fails_cleanly_on_a_file_that_is_not_weights(tmp_path, capsys):
    root = build_dataset(tmp_path / "data", split="synth").root
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a model")
    assert evaluate.main(["--weights", str(bogus), "--data", str(root), "--split", "synth"]) == 2
    assert "not a readable weights file" in capsys.readouterr().err


def test_evaluate_fails_cleanly_on_missing_data(tmp_path, capsys):
    _, weights = _weights_for(tmp_path)
    assert evaluate.main(["--weights", str(weights), "--data", str(tmp_path / "nowhere"), "--split", "synth"]) == 2
    assert "does not exist" in capsys.readouterr().err
