"""What notebooks call (emnist_utils.notebook): a Context's outputs follow its own profile whatever EMNIST_PROFILE
says, also when a committed notebook is executed papermill-style with injected parameters (the committed
figures/ and results/ stay untouched); model_summary leaves the RNG and trained models alone; test_report refuses
other classes; save_model writes a loadable trained-model file with its test metrics and the metrics JSON."""

from __future__ import annotations

import copy
import hashlib
import json
import time

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import nbformat
import pandas as pd
import pytest
import torch
from helpers import BALANCED_CLASSES, PROJECT_ROOT, STANDIN_DIR, build_dataset, same_weights, tiny_spec

from emnist_utils import main_job
from emnist_utils import notebook as nb
from emnist_utils.core import paths as paths_module
from emnist_utils.core.registry import ConfigError, ModelSpec, build_model
from emnist_utils.core.trained_model import ModelFileError, TrainedModel
from emnist_utils.experiments import beyond

NOTEBOOK_01 = PROJECT_ROOT / "notebooks" / "01_data_exploration.ipynb"
# The figures notebook 01 saves (ctx.save_figure), each as .png and .pdf.
NOTEBOOK_01_FIGURES = ("data_class_distribution", "data_samples_per_class", "data_pixel_histogram",
                       "data_confusable_classes")  # fmt: skip
SPEC = ModelSpec("arch2", 4, 8, 16, 0.5)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A small 47-class split (every class equally often) with its SHA256SUMS."""
    root = tmp_path_factory.mktemp("nb-data")
    return build_dataset(root, "synth47", 470, 94, classes=BALANCED_CLASSES, balanced_labels=True)


@pytest.fixture
def ctx(synth):
    """A smoke-profile context on the synthetic split, writing under this test's EMNIST_OUTPUT."""
    return nb.start("smoke", 0, str(synth.root), "synth47", device="cpu")


def trained_model(classes, mean=0.17, std=0.33, seed=0) -> TrainedModel:
    """A model with random weights and non-trivial BatchNorm statistics (one training-mode pass)."""
    torch.manual_seed(seed)
    model = build_model(SPEC, len(classes))
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 1, 28, 28))
    model.eval()
    provenance = {"dataset": "emnist-synth47", "split": "synth47", "checksum": "cd" * 32}
    return TrainedModel(model, SPEC, list(classes), mean, std, provenance, metrics={"val_acc": 3.0})


def accuracy_by_hand(model: TrainedModel, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Pixels / 255, standardised with the model's constants, through the network in eval mode."""
    with torch.no_grad():
        logits = model.model.eval()(((images.to(torch.float32) / 255.0 - model.mean) / model.std).unsqueeze(1))
    return 100.0 * float((logits.argmax(1) == labels).float().mean())


def files_under(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- where outputs go


@pytest.mark.parametrize(
    "env_profile, asked, expected",
    [("full", "smoke", "outputs/smoke"), ("smoke", "full", "."), ("quick", None, "outputs/quick")],
    ids=["smoke-under-EMNIST_PROFILE=full", "full-under-EMNIST_PROFILE=smoke", "None-takes-EMNIST_PROFILE"],
)
def test_outputs_follow_the_contexts_own_profile(tmp_path, monkeypatch, capsys, synth, env_profile, asked, expected):
    """Without EMNIST_OUTPUT: full writes the committed figures/ and results/, any other profile
    outputs/<profile>/ (the project root is a temporary folder here, so nothing real is written)."""
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.setattr(paths_module, "PROJECT_ROOT", root)
    monkeypatch.delenv("EMNIST_OUTPUT")
    monkeypatch.setenv("EMNIST_PROFILE", env_profile)
    context = nb.start(asked, 0, str(synth.root), "synth47", device="cpu")
    want = (root / expected).resolve()
    assert context.profile.name == (asked or env_profile)
    # a notebook run under another profile than full says how it differs from the full study
    said = capsys.readouterr().out
    assert ("not the full study: " + context.profile.description in said) == (context.profile.name != "full")
    assert context.output == want
    assert context.figures_dir == want / "figures" and context.results_dir == want / "results"

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    context.save_figure(fig, "a_figure")
    plt.close(fig)
    context.write_table(pd.DataFrame({"variant": ["a", "b"], "val_acc_%": [1.5, 2.5]}), "a_table", "caption")
    context.write_json({"answer": 42}, "a_json")
    prefix = "" if expected == "." else f"{expected}/"
    assert files_under(root) == {
        f"{prefix}figures/a_figure.png",
        f"{prefix}figures/a_figure.pdf",
        f"{prefix}results/a_table.csv",
        f"{prefix}results/a_table.md",
        f"{prefix}results/a_table.tex",
        f"{prefix}results/a_json.json",
    }
    table = pd.read_csv(want / "results" / "a_table.csv")
    assert set(table["profile"]) == {context.profile.name}
    assert set(table["data_sha256"]) == {context.data.checksum}
    assert json.loads((want / "results" / "a_json.json").read_text())["profile"] == context.profile.name


def test_emnist_output_overrides_the_folder_but_not_the_profile(ctx, isolated_env):
    assert ctx.output == (isolated_env / "output").resolve()
    assert ctx.profile.name == "smoke" and ctx.stamp().endswith("profile: smoke")


# ----------------------------------------------------------------------------- model_summary


def test_model_summary_leaves_the_rng_and_trained_models_alone():
    model = trained_model(BALANCED_CLASSES)
    before_weights = copy.deepcopy(model.model.state_dict())
    torch.manual_seed(1234)
    rng = torch.get_rng_state().clone()
    expected_draw = torch.rand(5)
    torch.set_rng_state(rng)

    text = nb.model_summary(model.spec, len(model.classes))
    text_again = nb.model_summary(tiny_spec("arch2"), 47)  # a run spec: its model is summarised

    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(torch.rand(5), expected_draw)
    assert same_weights(model.model, before_weights) and not model.model.training
    parameters = sum(p.numel() for p in build_model(SPEC, 47).parameters())
    assert f"Total params: {parameters:,}" in text
    assert "Conv2d" in text and "Linear" in text
    assert "Total params:" in text_again


def test_a_bound_run_is_never_bound_again(ctx):
    """Binding applies the profile's epoch fraction; a result's spec bound a second time would train a quarter of
    a quarter of the epochs under `quick` (what notebook 05 once did with the chosen candidate)."""
    candidate = beyond.CANDIDATES[0]
    bound = ctx.bind(candidate)
    assert bound.recipe.epochs == ctx.profile.epochs(candidate.recipe.epochs) < candidate.recipe.epochs
    with pytest.raises(ConfigError, match="already bound"):
        ctx.bind(bound)
    with pytest.raises(ConfigError, match="already bound"):
        ctx.run_many([bound.with_(seed=1)])
    assert [s.seed for s in beyond.seed_specs(candidate, ctx.profile)] == list(ctx.profile.seeds(beyond.SEEDS))
    assert all(not s.data for s in beyond.seed_specs(candidate, ctx.profile))


# ----------------------------------------------------------------------------- the test split, once


def test_test_report_refuses_a_model_of_other_classes(ctx):
    letters = [f"{u}/{u.lower()}" for u in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
    with pytest.raises(ModelFileError, match="predicts 26 classes.*emnist-synth47 has 47"):
        ctx.test_report(trained_model(letters))
    with pytest.raises(ModelFileError, match="predicts 47 classes"):
        ctx.test_report(trained_model(BALANCED_CLASSES[::-1]))  # same count, other order


def test_test_report_and_save_model(ctx):
    model = trained_model(ctx.classes, ctx.splits.mean, ctx.splits.std)
    metrics_before = dict(model.metrics)
    expected = accuracy_by_hand(model, ctx.splits.test_images, ctx.splits.test_labels)
    evaluation = ctx.test_report(model)
    assert evaluation["accuracy"] == pytest.approx(expected)
    assert evaluation["logits"].shape == (len(ctx.splits.test_labels), 47)

    written = ctx.save_model(model, "final_model", evaluation, extra={"note": "test"})
    weights = ctx.results_dir / "final_model.pt"
    metrics_file = ctx.results_dir / "final_model_metrics.json"
    assert weights.is_file() and metrics_file.is_file()
    assert written["model"].endswith("final_model.pt") and written["metrics"].endswith("final_model_metrics.json")

    loaded = TrainedModel.load(weights)
    assert same_weights(loaded.model, model.model)
    assert loaded.classes == ctx.classes and (loaded.mean, loaded.std) == (ctx.splits.mean, ctx.splits.std)
    assert loaded.metrics["test_acc"] == pytest.approx(expected)
    assert loaded.metrics["test_balanced_acc"] == evaluation["balanced_accuracy"]
    assert loaded.metrics["test_sizes"] == {"train": 417, "validation": 53, "test": 94}
    assert loaded.metrics["profile"] == "smoke" and loaded.metrics["note"] == "test"
    assert loaded.metrics["val_acc"] == 3.0
    assert accuracy_by_hand(loaded, ctx.splits.test_images, ctx.splits.test_labels) == pytest.approx(expected)
    assert model.metrics == metrics_before  # the model handed in is not changed

    saved = json.loads(metrics_file.read_text())
    assert saved["metrics"]["test_acc"] == pytest.approx(expected)
    assert saved["profile"] == "smoke" and saved["provenance"]["checksum"] == ctx.data.checksum
    assert saved["parameters"] == sum(p.numel() for p in model.model.parameters())
    assert saved["model"]["arch"] == "arch2"


# ----------------------------------------------------------------------------- papermill-style execution


def snapshot(*folders) -> dict[str, str]:
    """sha256 of every file under the given folders."""
    return {
        str(p.relative_to(PROJECT_ROOT)): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def repo_smoke_outputs():
    """outputs/smoke/ in the repository (git-ignored): what this test creates there that did not exist before is
    removed afterwards; files that existed stay (overwritten by the same notebook)."""
    smoke = PROJECT_ROOT / "outputs" / "smoke"
    ours = [PROJECT_ROOT / "outputs", smoke, smoke / "figures", smoke / "results", PROJECT_ROOT / "outputs" / "failed"]
    ours += [smoke / "figures" / f"{n}.{ext}" for n in NOTEBOOK_01_FIGURES for ext in ("png", "pdf")]
    ours.append(PROJECT_ROOT / "outputs" / "failed" / NOTEBOOK_01.name)
    existed = {p: p.exists() for p in ours}
    yield smoke
    for path in reversed(ours):
        if existed[path] or not path.exists():
            continue
        if path.is_dir():
            try:
                path.rmdir()  # only if empty
            except OSError:
                pass
        else:
            path.unlink()


def test_papermill_style_execution_writes_under_outputs_smoke_only(tmp_path, monkeypatch, repo_smoke_outputs):
    """Notebook 01 with PROFILE = "smoke" injected, EMNIST_PROFILE and EMNIST_OUTPUT unset (the real rule of
    where outputs go): its figures go to outputs/smoke/figures/, the committed figures/ and results/ and the
    committed notebook stay byte for byte as they were."""
    if not STANDIN_DIR.is_dir():
        pytest.skip(f"stand-in data not found at {STANDIN_DIR}")
    monkeypatch.delenv("EMNIST_OUTPUT")
    committed = snapshot(PROJECT_ROOT / "figures", PROJECT_ROOT / "results")
    assert committed, "no committed figures or results found: this test would prove nothing"
    notebook_bytes = NOTEBOOK_01.read_bytes()
    target = tmp_path / "executed" / NOTEBOOK_01.name
    started = time.time()

    main_job.execute_notebook(
        NOTEBOOK_01, target, parameters={"PROFILE": "smoke", "DATA_DIR": str(STANDIN_DIR), "SPLIT": "standin"}
    )

    assert snapshot(PROJECT_ROOT / "figures", PROJECT_ROOT / "results") == committed
    assert NOTEBOOK_01.read_bytes() == notebook_bytes
    for name in NOTEBOOK_01_FIGURES:
        for ext in ("png", "pdf"):
            path = repo_smoke_outputs / "figures" / f"{name}.{ext}"
            assert path.is_file() and path.stat().st_mtime >= started - 1, path

    executed = nbformat.read(target, as_version=4)
    tags = [c.metadata.get("tags", []) for c in executed.cells]
    assert tags.index(["injected-parameters"]) == tags.index(["parameters"]) + 1
    printed = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "profile: smoke | seed: 0 | device: " in printed and "outputs: outputs/smoke\n" in printed
    assert "dataset: emnist-standin" in printed
