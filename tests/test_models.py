"""emnist_utils.models: shapes, parameter counts, the report's tables and config validation."""
from __future__ import annotations

import math

import pytest
import torch

from emnist_utils import models as M
from emnist_utils.models import (FINAL_CONFIG, REPORT_FINAL_PARAMETERS, TABLE_1_1, TABLE_1_2, Architecture1,
                                 Architecture2, ConfigError, TrialConfig, build_model, count_parameters)


def arch1_parameters(c1, c2, hidden, classes=47):
    conv1 = 1 * c1 * 3 * 3 + c1
    conv2 = c1 * c2 * 3 * 3 + c2
    fc1 = c2 * 7 * 7 * hidden + hidden
    fc2 = hidden * classes + classes
    return conv1 + conv2 + fc1 + fc2


def arch2_parameters(c1, c2, hidden, classes=47):
    conv1 = 1 * c1 * 3 * 3 + c1
    bn1 = 2 * c1  # weight and bias (running stats are buffers)
    conv2 = c1 * c2 * 5 * 5 + c2
    bn2 = 2 * c2
    fc1 = c2 * 7 * 7 * hidden + hidden
    fc2 = hidden * classes + classes
    return conv1 + bn1 + conv2 + bn2 + fc1 + fc2


@pytest.mark.parametrize("cls", [Architecture1, Architecture2])
@pytest.mark.parametrize("c1,c2,hidden,dropout", [(1, 1, 1, 0.0), (4, 8, 16, 0.3), (8, 32, 600, 0.5),
                                                  (3, 5, 7, 0.9)])
def test_output_shapes(cls, c1, c2, hidden, dropout):
    model = cls(c1, c2, hidden, dropout)
    for n in (1, 5):
        out = model.train()(torch.randn(n, 1, 28, 28))
        assert out.shape == (n, 47)
        assert model.eval()(torch.randn(n, 1, 28, 28)).shape == (n, 47)
    assert cls(c1, c2, hidden, dropout, num_classes=10)(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_final_model_parameter_count():
    model = Architecture2(8, 32, 600, 0.5)
    assert count_parameters(model) == 976_239
    assert count_parameters(model) == REPORT_FINAL_PARAMETERS
    assert count_parameters(model) == arch2_parameters(8, 32, 600)
    assert count_parameters(build_model(FINAL_CONFIG)) == REPORT_FINAL_PARAMETERS


@pytest.mark.parametrize("c1,c2,hidden", [(16, 32, 32), (80, 120, 512), (3, 5, 7)])
def test_parameter_counts_by_formula(c1, c2, hidden):
    assert count_parameters(Architecture1(c1, c2, hidden)) == arch1_parameters(c1, c2, hidden)
    assert count_parameters(Architecture2(c1, c2, hidden)) == arch2_parameters(c1, c2, hidden)


def test_count_parameters_ignores_frozen():
    model = Architecture1(4, 8, 16)
    model.fc2.weight.requires_grad_(False)
    assert count_parameters(model) == arch1_parameters(4, 8, 16) - 16 * 47


def test_report_tables():
    assert len(TABLE_1_1) == 7 and len(TABLE_1_2) == 7
    assert all(c.arch == "arch1" and c.epochs == 5 for c in TABLE_1_1)
    assert all(c.arch == "arch2" and c.epochs == 20 for c in TABLE_1_2)
    assert len({c.name for c in TABLE_1_1 + TABLE_1_2}) == 14
    assert all(c.report_val_acc is not None for c in TABLE_1_1 + TABLE_1_2)
    assert FINAL_CONFIG.arch == "arch2" and FINAL_CONFIG.batch_size == 290 and FINAL_CONFIG.epochs == 20
    assert (FINAL_CONFIG.c1, FINAL_CONFIG.c2, FINAL_CONFIG.hidden, FINAL_CONFIG.dropout) == (8, 32, 600, 0.5)
    assert FINAL_CONFIG.lr == 1e-3
    assert FINAL_CONFIG.training_dict() == TABLE_1_2[0].training_dict()
    # every table config builds a model that runs
    for cfg in (TABLE_1_1[0], TABLE_1_2[-1]):
        assert build_model(cfg)(torch.zeros(1, 1, 28, 28)).shape == (1, 47)


def test_training_dict_excludes_labels_only():
    d = FINAL_CONFIG.training_dict()
    assert "name" not in d and "report_val_acc" not in d
    assert d == {"arch": "arch2", "lr": 1e-3, "batch_size": 290, "epochs": 20, "c1": 8, "c2": 32,
                 "hidden": 600, "dropout": 0.5}
    assert FINAL_CONFIG.with_(name="x", report_val_acc=1.0).training_dict() == d
    assert FINAL_CONFIG.with_(lr=2e-3).training_dict() != d


BASE = dict(arch="arch2", lr=1e-3, batch_size=32, epochs=1, c1=4, c2=8, hidden=16, dropout=0.5)


def test_valid_base_config():
    cfg = TrialConfig(**BASE)
    assert cfg.model_kwargs() == {"c1": 4, "c2": 8, "hidden": 16, "dropout": 0.5}
    TrialConfig(**{**BASE, "dropout": 0.0, "lr": 1, "hidden": 4096})


@pytest.mark.parametrize("field,value", [
    ("batch_size", 0), ("batch_size", -1), ("batch_size", 2.5), ("batch_size", True),
    ("epochs", 0),
    ("lr", 0), ("lr", -1e-3), ("lr", math.nan), ("lr", math.inf), ("lr", "0.001"),
    ("dropout", -0.1), ("dropout", 1.0), ("dropout", 1.5),
    ("c1", 0), ("c2", -3), ("hidden", 10**6),
    ("arch", "nope"),
])
def test_invalid_configs_raise_config_error(field, value):
    with pytest.raises(ConfigError, match=field if field != "arch" else "architecture"):
        TrialConfig(**{**BASE, field: value})
    with pytest.raises(ConfigError):
        FINAL_CONFIG.with_(**{field: value})


def test_model_code_version():
    v1, v2 = M.model_code_version("arch1"), M.model_code_version("arch2")
    assert v1 != v2
    assert len(v1) == 12 and v1 == M.model_code_version("arch1")


def test_register_architecture(monkeypatch):
    monkeypatch.setattr(M, "ARCHITECTURES", dict(M.ARCHITECTURES))

    class Tiny(torch.nn.Module):
        def __init__(self, c1, c2, hidden, dropout):
            super().__init__()
            self.fc = torch.nn.Linear(28 * 28, 47)

        def forward(self, x):
            return self.fc(x.flatten(1))

    M.register_architecture("tiny", Tiny)
    cfg = TrialConfig(**{**BASE, "arch": "tiny"})
    assert isinstance(build_model(cfg), Tiny)
