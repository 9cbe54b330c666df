"""The architectures beyond the report (emnist_utils.variants), the studies built on them
(emnist_utils.studies, notebook helpers) and the options they added to training and caching."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from emnist_utils import experiments as X
from emnist_utils import studies as S
from emnist_utils import variants as V
from emnist_utils.data import make_splits
from emnist_utils.models import FINAL_CONFIG, ConfigError, build_model, count_parameters, model_code_version
from emnist_utils.profiles import Profile
from emnist_utils.run_studies import main as run_studies_main
from emnist_utils.run_studies import parse_shard
from emnist_utils.training import REPORT_RECIPE, Recipe, fit

PROFILE = Profile("test", max_epochs=1)
TINY = FINAL_CONFIG.with_(c1=4, c2=8, hidden=32, batch_size=100, epochs=1, name="tiny")


@pytest.fixture(scope="module")
def splits(standin_data):
    return make_splits(standin_data, 0, train_limit=600, val_limit=200, test_limit=200)


def test_every_variant_builds_and_classifies_47_classes():
    for arch in ("arch2-depth1", "arch2-depth3", "arch2-depth4", "arch2-leakyrelu", "arch2-gelu", "arch2-silu",
                 "arch2-nobn", "compact"):
        model = build_model(TINY.with_(arch=arch)).eval()
        assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 47), arch


def test_two_block_stack_is_architecture_2():
    """ConvStack with the defaults has exactly Architecture 2's layers, so depth 2 in the study is the report's model."""
    stack, arch2 = V.ConvStack(8, 32, 600, 0.5), build_model(FINAL_CONFIG)
    assert [tuple(p.shape) for p in stack.parameters()] == [tuple(p.shape) for p in arch2.parameters()]
    assert count_parameters(stack) == 976_239


def test_parameter_counts():
    counts = {arch: count_parameters(build_model(FINAL_CONFIG.with_(arch=arch)))
              for arch in ("arch2-depth1", "arch2-depth3", "arch2-depth4", "arch2-nobn")}
    # one block: the FC layer sees 8 x 14 x 14 maps; no BatchNorm: 2 x (8 + 32) fewer parameters
    assert counts["arch2-depth1"] == 8 * 9 + 8 + 2 * 8 + 8 * 14 * 14 * 600 + 600 + 600 * 47 + 47
    assert counts["arch2-nobn"] == 976_239 - 2 * (8 + 32)
    assert counts["arch2-depth1"] > counts["arch2-depth3"] > counts["arch2-depth4"]


def test_compact_models_of_the_study_stay_under_one_million_parameters():
    for v in S.BEYOND_STUDY.variants:
        assert count_parameters(build_model(v.config)) <= 1_000_000, v.label


def test_activation_and_batchnorm_switches_take_effect():
    gelu = build_model(TINY.with_(arch="arch2-gelu"))
    assert any(isinstance(m, torch.nn.GELU) for m in gelu.modules())
    assert not any(isinstance(m, torch.nn.ReLU) for m in gelu.modules())
    nobn = build_model(TINY.with_(arch="arch2-nobn"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in nobn.modules())


def test_model_code_version_covers_inherited_source(monkeypatch):
    """Editing ConvStack (the base of Depth3) must invalidate Depth3's cached results."""
    import inspect

    before = model_code_version("arch2-depth3")
    assert before != model_code_version("arch2-depth4") != model_code_version("arch2")
    real = inspect.getsource
    monkeypatch.setattr(inspect, "getsource",
                        lambda obj: real(obj) + ("# edited" if obj is V.ConvStack else ""))
    assert model_code_version("arch2-depth3") != before


def test_unit_input_normalisation_feeds_pixels_in_0_1(splits):
    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = build_model(TINY)

        def forward(self, x):
            seen.append((float(x.min()), float(x.max())))
            return self.inner(x)

    fit(Probe(), splits, TINY, recipe=Recipe(input_norm="unit"), progress=False, device="cpu")
    assert min(lo for lo, _ in seen) >= 0.0 and max(hi for _, hi in seen) <= 1.0
    seen.clear()
    fit(Probe(), splits, TINY, recipe=REPORT_RECIPE, progress=False, device="cpu")
    assert min(lo for lo, _ in seen) < 0.0 and max(hi for _, hi in seen) > 1.0


def test_recipe_rejects_unknown_options():
    with pytest.raises(ConfigError, match="input_norm"):
        Recipe(input_norm="zscore")
    with pytest.raises(ConfigError, match="augment"):
        Recipe(augment="mixup")


def test_new_recipe_fields_keep_old_cache_keys(splits):
    """Recipe fields at their defaults are left out of the key: results cached before they existed stay valid."""
    k1 = X.run_key(TINY, REPORT_RECIPE, splits, PROFILE, 0)
    assert k1 == X.run_key(TINY, Recipe(input_norm="standardise"), splits, PROFILE, 0)
    assert k1 != X.run_key(TINY, Recipe(input_norm="unit"), splits, PROFILE, 0)


def test_split_seed_enters_the_key_only_when_it_differs(splits):
    assert X.run_key(TINY, REPORT_RECIPE, splits, PROFILE, 0) != X.run_key(TINY, REPORT_RECIPE, splits, PROFILE, 1)
    import dataclasses

    moved = dataclasses.replace(splits, seed=1)
    assert X.run_key(TINY, REPORT_RECIPE, moved, PROFILE, 1) != X.run_key(TINY, REPORT_RECIPE, splits, PROFILE, 1)


def test_results_record_the_device(splits):
    result = X.run_trial(TINY, splits, PROFILE, progress=False, device="cpu")
    assert result.device == "cpu"
    assert X.run_trial(TINY, splits, PROFILE, progress=False).device == "cpu"  # from the cache


def test_metrics_only_runs_accept_a_cached_result_without_weights(splits, monkeypatch):
    X.run_trial(TINY, splits, PROFILE, progress=False, keep_model=False)  # cached without weights
    calls = []
    monkeypatch.setattr(X, "fit", lambda *a, **k: calls.append(1) or pytest.fail("retrained"))
    result = X.run_trial(TINY, splits, PROFILE, progress=False, keep_model=True, require_model=False)
    assert result.model is None and not calls


def test_jobs_train_a_shared_baseline_once():
    jobs = S.jobs(S.COMPARISON_STUDIES)
    baseline = [j for j in jobs if j[0].config == S.BASELINE_VARIANT.config and j[0].recipe == REPORT_RECIPE]
    assert sorted(seed for _, seed in baseline) == list(S.SEEDS)
    idents = [(repr(v.config.training_dict()), repr(v.recipe), s) for v, s in jobs]
    assert len(idents) == len(set(idents))


def test_shards_partition_the_jobs():
    jobs = S.jobs(S.COMPARISON_STUDIES)
    shards = [jobs[i::3] for i in range(3)]
    assert sum(len(s) for s in shards) == len(jobs)
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "-1/2", "a/b", "1"):
        with pytest.raises(Exception):
            parse_shard(bad)


class _Run:
    def __init__(self, acc, params=10, seconds=1.0, device="cpu"):
        self.val_acc, self.parameters, self.train_seconds, self.device = acc, params, seconds, device
        self.history = type("H", (), {"epochs": 3})()


def test_summary_row_and_noise_screen():
    rows = pd.DataFrame([S.summary_row("base", [_Run(88.0), _Run(88.2), _Run(88.1)]),
                         S.summary_row("same", [_Run(88.1), _Run(88.0), _Run(88.2)]),
                         S.summary_row("better", [_Run(89.0), _Run(89.1), _Run(88.9)])])
    assert rows.loc[0, "val_acc_mean_%"] == pytest.approx(88.1)
    assert rows.loc[0, "val_acc_std"] == pytest.approx(0.1)
    assert list(S.within_noise(rows)) == ["yes", "yes", "no"]
    assert list(S.within_noise(rows, baseline_row=2)) == ["no", "no", "yes"]
    single = S.summary_row("one seed", [_Run(50.0)])
    assert math.isnan(single["val_acc_std"])
    assert list(S.within_noise(pd.DataFrame([rows.iloc[0].to_dict(), single]))) == ["yes", "one seed"]


def test_run_study_in_a_notebook_context(splits, tmp_path):
    from emnist_utils import notebook as nb

    study = S.Study("tiny_study", "tiny", (S.Variant("a", TINY, seeds=(0, 1)),
                                          S.Variant("b", TINY.with_(arch="arch2-gelu"), seeds=(0, 1))))
    ctx = nb.Context(profile=PROFILE, seed=0, device=torch.device("cpu"), data=None, splits=splits)
    table, results = nb.run_study(ctx, study)
    assert list(table["variant"]) == ["a", "b"] and list(table["seeds"]) == [2, 2]
    assert table.loc[0, "gain_vs_baseline"] == 0
    assert [r.seed for r in results["a"]] == [0, 1]
    assert results["a"][0].val_acc != results["a"][1].val_acc  # the seeds really differ
    from emnist_utils.paths import results_dir

    assert (results_dir(PROFILE.name) / "tiny_study.csv").is_file()


def test_run_studies_cli_fills_the_cache(monkeypatch, capsys, tmp_path):
    tiny = S.Study("tiny_cli", "tiny", (S.Variant("tiny variant", TINY, seeds=(0, 1)),))
    monkeypatch.setitem(S.STUDIES, "tiny_cli", tiny)
    monkeypatch.setattr("emnist_utils.run_studies.STUDIES", S.STUDIES)
    from helpers import STANDIN_DIR

    monkeypatch.setenv("EMNIST_PROFILE", "smoke")
    run_studies_main(["--studies", "tiny_cli", "--shard", "1/2", "--data", str(STANDIN_DIR), "--split", "standin",
                      "--quiet", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "tiny variant [seed 1]" in out and "[seed 0]" not in out and "on cpu" in out


def test_describe_study_lists_what_each_variant_trains():
    table = S.describe_study(S.BEYOND_STUDY)
    assert list(table["variant"]) == [v.label for v in S.BEYOND_STUDY.variants]
    assert table.loc[0, "recipe changes"] == "-" and table.loc[0, "parameters"] == 976_239
    assert "augment=affine+erasing" in table.loc[4, "recipe changes"]
    assert (table["parameters"] <= 1_000_000).all()


@pytest.mark.parametrize("accs", [[88.0, 90.0, 3.5], [30.0, 45.0, 2.0], []])
def test_summary_figure_for_any_accuracies(accs):
    """Full runs (a diverged trial among ~88% ones) and smoke runs (everything far below 80%) both plot."""
    import matplotlib

    matplotlib.use("Agg")
    from emnist_utils.plots import plot_accuracy_vs_parameters

    points = pd.DataFrame({"group": ["g1", "g2", "g1"][:len(accs)], "label": ["a", "b", "c"][:len(accs)],
                           "parameters": [1e5, 6e5, 1e6][:len(accs)], "val_acc": accs},
                          columns=["group", "label", "parameters", "val_acc"])
    fig = plot_accuracy_vs_parameters(points, {"logistic regression": 60.0})
    scatter = fig.axes[0]
    shown = sum(len(c.get_offsets()) for c in scatter.collections)
    assert shown == sum(a >= min(80.0, (pd.Series(accs).median() if accs else 0) - 20) for a in accs)


def test_saved_and_evaluated_models_use_the_normalisation_they_were_trained_with(splits):
    from emnist_utils import notebook as nb
    from emnist_utils.evaluation import predict_logits
    from emnist_utils.experiments import load_weights

    ctx = nb.Context(profile=PROFILE, seed=0, device=torch.device("cpu"), data=None, splits=splits)
    unit = ctx.run(TINY, recipe=Recipe(input_norm="unit"))
    assert nb.input_normalisation(ctx, unit) == (0.0, 1.0)
    expected = predict_logits(unit.model, splits.test_images, 0.0, 1.0).softmax(1)
    assert torch.allclose(nb.test_probabilities(ctx, unit), expected)
    paths = nb.save_model_and_metrics(ctx, unit, nb.evaluate_on_test(ctx, unit), "unit_model")
    _, meta = load_weights(paths["weights"])
    assert (meta["mean"], meta["std"]) == (0.0, 1.0)
    standard = ctx.run(TINY)
    assert nb.input_normalisation(ctx, standard) == (splits.mean, splits.std)
