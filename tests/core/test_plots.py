"""emnist_utils.core.plots: every plotting function returns a matplotlib Figure for small inputs; save_figure
writes PNG and PDF into the folder given, byte-stable, and refuses names that are not plain file stems."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from emnist_utils.core import plots as P
from emnist_utils.core.evaluation import per_class_accuracy
from emnist_utils.core.training import History
from emnist_utils.experiments import search

CLASSES = ["0", "O", "1", "I", "A", "a"]
GROUPS = [("0", "O"), ("1", "I", "l"), ("A",)]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _history(epochs=3, offset=0.0):
    h = History()
    for e in range(epochs):
        h.append(
            train_loss=2 - e * 0.3,
            train_acc=40 + 10 * e + offset,
            val_loss=2.1 - e * 0.2,
            val_acc=35 + 9 * e + offset,
            val_balanced_acc=30 + 9 * e,
            seconds=1.0,
        )
    return h


def _data(per_class=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(CLASSES)).repeat(per_class)
    images = torch.randint(0, 256, (len(labels), 28, 28), dtype=torch.uint8, generator=g)
    return images, labels


class _Run:
    def __init__(self, label, history):
        self.history = history
        self.spec = type("Spec", (), {"label": label})()


def _figures():
    images, labels = _data()
    predicted = labels.clone()
    predicted[::5] = (predicted[::5] + 1) % len(CLASSES)
    cm = np.bincount(labels.numpy() * len(CLASSES) + predicted.numpy(), minlength=len(CLASSES) ** 2)
    cm = cm.reshape(len(CLASSES), len(CLASSES))
    study = pd.DataFrame(
        {
            "variant": ["base", "gelu"],
            "seeds": [3, 1],
            "val_acc_mean_%": [88.0, 88.4],
            "val_acc_min_%": [87.8, 88.4],
            "val_acc_max_%": [88.3, 88.4],
        }
    )
    points = pd.DataFrame(
        {
            "group": ["report (arch2)", "compact", "compact"],
            "label": ["a", "b", "c"],
            "parameters": [976_239, 3e5, 6e5],
            "val_acc": [88.0, 89.5, 3.0],
        }
    )
    pareto = pd.DataFrame(
        {"label": ["a", "b", "c"], "cpu_minutes": [1.0, 4.0, 9.0], "val_balanced_acc": [85.0, 88.0, 87.0]}
    )
    ladder = pd.DataFrame({"step": ["report", "+ augmentation"], "val_balanced_acc_mean_%": [88.1, 89.0]})
    hand = search.curve("hand", 0, [(2.0, 40.0), (3.0, 43.0)])
    arms = [search.curve("tpe", s, [(1.0, 38.0 + s), (4.0, None), (2.0, 45.0)]) for s in range(2)]
    trials = pd.DataFrame(
        {
            "trial": [0, 1, 2],
            "source": ["notebook 05 candidate", "search", "search"],
            "widths": ["32/64/128", "16/32/64", "48/96/192"],
            "val_balanced_acc": [88.0, 86.0, 88.2],
            "cpu_train_s": [100.0, 40.0, 300.0],
            "pareto": [True, True, True],
        }
    )
    importance = pd.Series({"lr": 0.6, "c1": 0.3, "dropout": 0.1})
    protocol = pd.DataFrame(
        {
            "model": ["lean (train-only)", "lean refit"],
            "trained_on": ["training part", "training + validation"],
            "test_balanced_mean_%": [89.9, 90.3],
            "test_balanced_std": [0.16, float("nan")],
            "test_balanced_per_seed_%": ["89.79 / 89.96 / 90.11", "90.30"],
            "ensemble_test_balanced_%": [90.2, 90.3],
        }
    )
    return {
        "protocol": lambda: P.plot_protocol(protocol, title="f"),
        "search_curves": lambda: P.plot_search_curves(arms, hand, 5.0, title="s"),
        "search_pareto": lambda: P.plot_search_pareto(trials, chosen_trial=0, title="p"),
        "importances": lambda: P.plot_importances({"a": importance, "b": importance / 2}, title="i"),
        "history": lambda: P.plot_history(_history(), title="t"),
        "trial_curves": lambda: P.plot_trial_curves([_Run("a", _history()), _Run("b", _history(4, 2.0))]),
        "trial_curves_labels": lambda: P.plot_trial_curves([_Run("a", _history())], labels=["first"]),
        "confusion_matrix": lambda: P.plot_confusion_matrix(cm, CLASSES),
        "confusion_matrix_counts": lambda: P.plot_confusion_matrix(cm, CLASSES, normalize=False, title="counts"),
        "class_distribution": lambda: P.plot_class_distribution(labels, labels[:10], CLASSES),
        "image_grid": lambda: P.plot_image_grid(images[:5], [str(i) for i in range(5)], ncols=3, title="g"),
        "samples_per_class": lambda: P.plot_samples_per_class(images, labels, CLASSES, per_class=3),
        "confusable_groups": lambda: P.plot_confusable_groups(images, labels, CLASSES, GROUPS, per_class=2),
        "misclassified": lambda: P.plot_misclassified(images, labels, predicted, CLASSES, n=4),
        "per_class_accuracy": lambda: P.plot_per_class_accuracy(per_class_accuracy(predicted, labels, CLASSES)),
        "pixel_histogram": lambda: P.plot_pixel_histogram(images, 0.17, 0.33),
        "study": lambda: P.plot_study(study, title="s"),
        "accuracy_vs_parameters": lambda: P.plot_accuracy_vs_parameters(points, {"logistic regression": 60.0}),
        "pareto": lambda: P.plot_pareto(pareto, chosen="b", title="p"),
        "ladder": lambda: P.plot_ladder(ladder, title="l"),
        "per_class_change": lambda: P.plot_per_class_change(
            per_class_accuracy(predicted, labels, CLASSES), per_class_accuracy(labels, labels, CLASSES)
        ),
    }


@pytest.mark.parametrize("name", list(_figures()))
def test_every_plot_returns_a_figure(name):
    fig = _figures()[name]()
    assert isinstance(fig, Figure)
    assert fig.axes


def test_every_plot_function_is_covered():
    assert {f"plot_{name}" for name in _figures()} >= {n for n in dir(P) if n.startswith("plot_")}


def test_image_grid_shows_each_image_with_its_caption():
    images, _ = _data()
    fig = P.plot_image_grid(images[:5], list("abcde"), ncols=3)
    assert len(fig.axes) == 6  # 2 rows of 3, the last panel empty
    assert [ax.get_title() for ax in fig.axes[:5]] == list("abcde")
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), images[0].numpy())


def test_misclassified_shows_only_errors():
    images, labels = _data()
    predicted = labels.clone()
    predicted[[1, 7]] = 0
    fig = P.plot_misclassified(images, labels, predicted, CLASSES, n=10)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [f"{CLASSES[1]} → 0", f"{CLASSES[1]} → 0"]


@pytest.mark.parametrize("accs", [[88.0, 90.0, 3.5], [30.0, 45.0, 2.0], []])
def test_accuracy_vs_parameters_for_any_accuracies(accs):
    """Full runs (a diverged trial among ~88% ones) and smoke runs (everything far below 80%) both plot; points
    more than 20 points under the median (at most 80%) are listed instead of drawn."""
    points = pd.DataFrame(
        {
            "group": ["g1", "g2", "g1"][: len(accs)],
            "label": ["a", "b", "c"][: len(accs)],
            "parameters": [1e5, 6e5, 1e6][: len(accs)],
            "val_acc": accs,
        },
        columns=["group", "label", "parameters", "val_acc"],
    )
    fig = P.plot_accuracy_vs_parameters(points, {"logistic regression": 60.0})
    shown = sum(len(c.get_offsets()) for c in fig.axes[0].collections)
    expected = {(88.0, 90.0, 3.5): 2, (30.0, 45.0, 2.0): 2, (): 0}[tuple(accs)]  # floors 68.0, 10.0, 0.0
    assert shown == expected


def test_pareto_front_joins_the_points_no_other_point_beats():
    points = pd.DataFrame(
        {
            "label": ["c", "a", "b", "d"],
            "cpu_minutes": [9.0, 1.0, 4.0, 2.0],
            "val_balanced_acc": [87.0, 85.0, 88.0, 84.0],
        }
    )
    fig = P.plot_pareto(points, chosen="b")
    front = [line for line in fig.axes[0].lines if line.get_linestyle() == "--"]
    assert len(front) == 1
    assert list(front[0].get_xdata()) == [1.0, 4.0] and list(front[0].get_ydata()) == [85.0, 88.0]


def test_pareto_prints_a_note_under_the_labels_that_have_one():
    points = pd.DataFrame(
        {"label": ["a", "b"], "cpu_minutes": [1.0, 4.0], "val_balanced_acc": [85.0, 88.0], "gpu": ["", "2 min"]}
    )
    texts = [t.get_text() for t in P.plot_pareto(points, note="gpu").axes[0].texts]
    assert sorted(texts) == ["a", "b\n2 min"]


def _small_figure():
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1, 2], [1, 0, 2])
    ax.set_title("stable")
    return fig


def test_save_figure_writes_png_and_pdf_byte_stable(tmp_path):
    first, second = tmp_path / "one", tmp_path / "two"
    path = P.save_figure(_small_figure(), "final_curve", first)
    assert path == first / "final_curve.png"
    assert sorted(p.name for p in first.iterdir()) == ["final_curve.pdf", "final_curve.png"]
    assert (first / "final_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (first / "final_curve.pdf").read_bytes()[:5] == b"%PDF-"
    P.save_figure(_small_figure(), "final_curve", second)  # a new figure, drawn the same way
    for ext in ("png", "pdf"):
        assert (first / f"final_curve.{ext}").read_bytes() == (second / f"final_curve.{ext}").read_bytes(), ext
    before = {ext: (first / f"final_curve.{ext}").read_bytes() for ext in ("png", "pdf")}
    P.save_figure(_small_figure(), "final_curve", first)  # overwritten in place: same bytes
    assert {ext: (first / f"final_curve.{ext}").read_bytes() for ext in ("png", "pdf")} == before


@pytest.mark.parametrize("name", ["a/b", "a\\b", "with space", "", "../up"])
def test_save_figure_refuses_names_that_are_not_file_stems(tmp_path, name):
    with pytest.raises(ValueError, match="plain file stem"):
        P.save_figure(_small_figure(), name, tmp_path)
    assert list(tmp_path.iterdir()) == []
