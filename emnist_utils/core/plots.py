"""Report-ready figures: every plotting function returns its figure; `save_figure` writes it under a stable
name as PNG (200 dpi) and PDF into the folder it is given (the notebook context chooses it from its profile)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch

from .paths import atomic_path

sns.set_theme(style="whitegrid", context="notebook")
matplotlib.rcParams.update({"figure.dpi": 100, "savefig.bbox": "tight", "pdf.fonttype": 42})


def save_figure(fig: plt.Figure, name: str, directory: Path, formats: Sequence[str] = ("png", "pdf")) -> Path:
    """Write `fig` as <directory>/<name>.png and .pdf (byte-stable metadata); returns the PNG path."""
    if not name or any(c in name for c in "/\\ "):
        raise ValueError(f"figure name {name!r} must be a plain file stem like 'final_confusion_matrix'")
    for fmt in formats:
        # Fixed metadata keeps re-runs byte-stable where the backend allows it.
        metadata = {"Software": None} if fmt == "png" else {"CreationDate": None, "ModDate": None}
        with atomic_path(Path(directory) / f"{name}.{fmt}") as tmp:
            fig.savefig(tmp, dpi=200, metadata=metadata, format=fmt)
    return Path(directory) / f"{name}.{formats[0]}"


def plot_history(history, title: str = "") -> plt.Figure:
    """Train/validation loss and accuracy per epoch, side by side."""
    epochs = np.arange(1, history.epochs + 1)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(epochs, history.train_loss, "o-", label="train")
    ax_loss.plot(epochs, history.val_loss, "s-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    ax_acc.plot(epochs, history.train_acc, "o-", label="train")
    ax_acc.plot(epochs, history.val_acc, "s-", label="validation")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_trial_curves(results, title: str = "", labels: Sequence[str] | None = None) -> plt.Figure:
    """Validation loss and accuracy of every trial in one figure, one line per trial (named by `labels`,
    else by each run's label)."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    palette = sns.color_palette("tab10", len(results))
    for i, (color, result) in enumerate(zip(palette, results)):
        h = result.history
        epochs = np.arange(1, h.epochs + 1)
        label = f"{labels[i] if labels else result.spec.label} ({h.val_acc[-1]:.1f}%)"
        ax_loss.plot(epochs, h.val_loss, "o-", color=color, label=label, markersize=3)
        ax_acc.plot(epochs, h.val_acc, "o-", color=color, label=label, markersize=3)
    ax_loss.set(xlabel="epoch", ylabel="validation loss", title="Validation loss")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)", title="Validation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_acc.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(
    cm: np.ndarray, classes: Sequence[str], normalize: bool = True, title: str = ""
) -> plt.Figure:
    """47x47 heatmap with character labels; rows are true classes. Normalised rows show recall per class."""
    values = cm / np.maximum(cm.sum(1, keepdims=True), 1) * 100 if normalize else cm
    fig, ax = plt.subplots(figsize=(15, 13))
    sns.heatmap(
        values,
        ax=ax,
        cmap="viridis",
        square=True,
        xticklabels=classes,
        yticklabels=classes,
        vmax=np.percentile(values[~np.eye(len(classes), dtype=bool)], 99.5) if normalize else None,
        cbar_kws={"label": "% of true class" if normalize else "count", "shrink": 0.7},
    )
    ax.set(xlabel="predicted", ylabel="true", title=title or "Confusion matrix (colour capped to show errors)")
    ax.tick_params(axis="both", labelsize=9, rotation=0)
    fig.tight_layout()
    return fig


def plot_class_distribution(train_labels, test_labels, classes: Sequence[str], title: str = "") -> plt.Figure:
    """Images per class in train and test, one grouped bar chart."""
    n = len(classes)
    train_counts = np.bincount(np.asarray(train_labels), minlength=n)
    test_counts = np.bincount(np.asarray(test_labels), minlength=n)
    x = np.arange(n)
    fig, ax = plt.subplots(figsize=(15, 4.5))
    ax.bar(x - 0.2, train_counts, width=0.4, label=f"train ({train_counts.sum():,})")
    ax.bar(x + 0.2, test_counts, width=0.4, label=f"test ({test_counts.sum():,})")
    ax.set_xticks(x, classes)
    ax.set(xlabel="class", ylabel="images", title=title or "Images per class")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_image_grid(
    images, titles: Sequence[str], ncols: int = 12, title: str = "", title_colors: Sequence[str] | None = None
) -> plt.Figure:
    """Small grey-scale images (N, 28, 28) with a caption each."""
    images = torch.as_tensor(images)
    n = len(images)
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 1.05, nrows * 1.25), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i].numpy(), cmap="gray_r", vmin=0, vmax=255)
            ax.set_title(titles[i], fontsize=9, color=(title_colors[i] if title_colors else "black"))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def first_per_class(labels, num_classes: int, per_class: int) -> list[int]:
    """Indices of the first `per_class` examples of each class, class by class."""
    labels = np.asarray(labels)
    return [int(i) for k in range(num_classes) for i in np.flatnonzero(labels == k)[:per_class]]


def plot_samples_per_class(images, labels, classes: Sequence[str], per_class: int = 6, title: str = "") -> plt.Figure:
    """One panel per class showing `per_class` upright samples side by side, captioned with the character."""
    images, labels = torch.as_tensor(images), np.asarray(labels)
    ncols = 6
    nrows = -(-len(classes) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 2.6, nrows * 0.75), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= len(classes):
            continue
        idx = np.flatnonzero(labels == k)[:per_class]
        strip = torch.cat([images[i] for i in idx], dim=1) if len(idx) else torch.zeros(28, 28)
        ax.imshow(strip.numpy(), cmap="gray_r", vmin=0, vmax=255)
        ax.set_title(f"'{classes[k]}'", fontsize=9, loc="left", pad=2)
    fig.suptitle(title or "Samples per class (upright)")
    fig.tight_layout()
    return fig


def plot_confusable_groups(images, labels, classes: Sequence[str], groups, per_class: int = 6) -> plt.Figure:
    """Rows of look-alike classes (0/O, 1/I, ...): each row shows samples of one group's members."""
    index = {c: i for i, c in enumerate(classes)}
    groups = [[c for c in g if c in index] for g in groups]
    groups = [g for g in groups if len(g) > 1]
    labels = np.asarray(labels)
    fig, axes = plt.subplots(len(groups), 1, figsize=(per_class * 3 * 0.9, len(groups) * 1.0), squeeze=False)
    for ax, group in zip(axes[:, 0], groups):
        strips = []
        for c in group:
            idx = np.flatnonzero(labels == index[c])[:per_class]
            strips.append(torch.cat([torch.as_tensor(images[i]) for i in idx], dim=1))
            strips.append(torch.full((28, 10), 0, dtype=torch.uint8))
        ax.imshow(torch.cat(strips[:-1], dim=1).numpy(), cmap="gray_r", vmin=0, vmax=255)
        ax.set_axis_off()
        ax.set_title("  vs  ".join(f"'{c}'" for c in group), fontsize=10, loc="left")
    fig.suptitle("Classes that look alike")
    fig.tight_layout()
    return fig


def plot_misclassified(images, true, predicted, classes: Sequence[str], n: int = 48) -> plt.Figure:
    """The first `n` test errors, captioned 'true -> predicted'."""
    true, predicted = np.asarray(true), np.asarray(predicted)
    wrong = np.flatnonzero(true != predicted)[:n]
    titles = [f"{classes[true[i]]} → {classes[predicted[i]]}" for i in wrong]
    return plot_image_grid(
        torch.as_tensor(images)[wrong],
        titles,
        ncols=12,
        title="Misclassified test images (true → predicted)",
        title_colors=["firebrick"] * len(wrong),
    )


def plot_per_class_accuracy(table, title: str = "") -> plt.Figure:
    """Bar chart of per-class accuracy, worst first (table from evaluation.per_class_accuracy)."""
    fig, ax = plt.subplots(figsize=(15, 4))
    ax.bar(range(len(table)), table["accuracy"], color=sns.color_palette("viridis", len(table)))
    ax.set_xticks(range(len(table)), table["class"])
    ax.set(ylabel="accuracy (%)", xlabel="class (worst first)", ylim=(0, 100), title=title or "Per-class test accuracy")
    fig.tight_layout()
    return fig


def plot_pixel_histogram(images, mean: float, std: float) -> plt.Figure:
    """Distribution of pixel intensities, with the normalisation constants marked."""
    values = torch.as_tensor(images).flatten().float() / 255
    fig, ax = plt.subplots(figsize=(7, 3.5))
    counts = torch.bincount((values * 255).round().long(), minlength=256).numpy()
    ax.bar(np.arange(256) / 255, counts, width=1 / 255)
    ax.set_yscale("log")
    ax.axvline(mean, color="firebrick", label=f"mean {mean:.4f}")
    ax.axvspan(max(mean - std, 0), mean + std, color="firebrick", alpha=0.1, label=f"± std {std:.4f}")
    ax.set(xlabel="pixel value (scaled to [0, 1])", ylabel="pixels (log scale)", title="Pixel intensities (train)")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_study(table, title: str = "", baseline_row: int = 0) -> plt.Figure:
    """Mean validation accuracy of each variant with its spread over seeds (min to max) and the baseline's mean
    as a reference line, so differences within seed noise are visible as such."""
    n = len(table)
    fig, ax = plt.subplots(figsize=(11, 0.5 * n + 1.4))
    y = np.arange(n)[::-1]
    mean = table["val_acc_mean_%"].to_numpy()
    low = mean - table["val_acc_min_%"].to_numpy()
    high = table["val_acc_max_%"].to_numpy() - mean
    ax.errorbar(mean, y, xerr=[low, high], fmt="o", capsize=4, color="tab:blue")
    ax.axvline(mean[baseline_row], color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(y, [f"{v} ({s} seed{'s' if s > 1 else ''})" for v, s in zip(table["variant"], table["seeds"])])
    ax.set_xlabel("validation accuracy (%): mean, bars from min to max over seeds")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_accuracy_vs_parameters(points, baselines=None, title: str = "", floor: float | None = None) -> plt.Figure:
    """Left: validation accuracy against parameter count for every CNN (one colour per group; runs below
    `floor`, such as a diverged trial, are listed instead of stretching the axis; default: 20 points under the
    median, at most 80%). Right: the best CNN of each group beside the classic classifiers, whose 'parameters'
    are not comparable, on one accuracy axis."""
    if floor is None:
        floor = min(80.0, float(points["val_acc"].median()) - 20) if len(points) else 0.0
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(14, 7), gridspec_kw={"width_ratios": [3, 2]})
    groups = list(dict.fromkeys(points["group"]))
    palette = dict(zip(groups, sns.color_palette("tab10", max(len(groups), 1))))
    shown = points[points["val_acc"] >= floor]
    for group in groups:
        part = shown[shown["group"] == group]
        ax.scatter(part["parameters"], part["val_acc"], color=palette[group], label=group, s=40, alpha=0.85)
    dropped = points[points["val_acc"] < floor]
    if len(dropped):
        ax.text(
            0.01,
            0.01,
            f"not shown (below {floor:.0f}%): "
            + "; ".join(f"{r['group'].split(' (')[0]} {r['label']} {r['val_acc']:.1f}%" for _, r in dropped.iterrows()),
            transform=ax.transAxes,
            fontsize=7,
            color="dimgrey",
        )
    ax.set(
        xlabel="trainable parameters (log scale)", ylabel="validation accuracy (%)", title="CNNs: accuracy against size"
    )
    if len(shown):  # an empty axis cannot be log-scaled and has nothing to label
        ax.set_xscale("log")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    best = points.loc[points.groupby("group", sort=False)["val_acc"].idxmax()] if len(points) else points
    labels = [f"{r['group'].split(' (')[0]}: {r['label']}" for _, r in best.iterrows()] + list(baselines or {})
    values = list(best["val_acc"]) + list((baselines or {}).values())
    colors = [palette[g] for g in best["group"]] + ["grey"] * len(baselines or {})
    order = np.argsort(values)
    bars.barh(np.arange(len(values)), np.array(values)[order], color=np.array(colors, dtype=object)[order])
    for y, v in enumerate(np.array(values)[order]):
        bars.text(v + 0.3, y, f"{v:.1f}", va="center", fontsize=7)
    bars.set_yticks(np.arange(len(values)), np.array(labels, dtype=object)[order], fontsize=7)
    low = 50 if len(values) and min(values) >= 55 else 0  # start the axis where the differences are
    bars.set(xlabel="validation accuracy (%)", title="Best of each group and classic classifiers", xlim=(low, 100))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_pareto(
    points,
    x: str = "cpu_minutes",
    y: str = "val_balanced_acc",
    label: str = "label",
    chosen: str | None = None,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    note: str | None = None,
) -> plt.Figure:
    """Accuracy against cost, one labelled point per model, the Pareto front (no other point is both cheaper
    and more accurate) as a line, and the chosen model circled. `points` is a DataFrame; `note` names a column
    printed under each label where it is not empty (e.g. what the run really took on a GPU)."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    data = points.sort_values(x)
    front, best = [], -np.inf
    for _, row in data.iterrows():
        if row[y] > best:
            front.append(row)
            best = row[y]
    ax.scatter(data[x], data[y], s=40, color="tab:blue", zorder=3)
    if front:
        ax.plot([r[x] for r in front], [r[y] for r in front], "--", color="tab:orange", label="Pareto front", zorder=2)
    for _, row in data.iterrows():
        text = str(row[label]) + (f"\n{row[note]}" if note and row[note] else "")
        ax.annotate(text, (row[x], row[y]), textcoords="offset points", xytext=(10, 4), fontsize=8, va="top")
        if chosen is not None and row[label] == chosen:
            ax.scatter(
                [row[x]],
                [row[y]],
                s=220,
                facecolors="none",
                edgecolors="firebrick",
                linewidths=2,
                label="chosen on validation",
                zorder=4,
            )
    ax.set_xscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")  # 4, 6, 10, 20 rather than 4x10^0
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.margins(x=0.15, y=0.12)
    ax.set(xlabel=xlabel or x, ylabel=ylabel or y, title=title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_ladder(table, value: str = "val_balanced_acc_mean_%", title: str = "") -> plt.Figure:
    """One horizontal bar per step of a ladder (one change at a time), labelled with its value and its gain over
    the first step."""
    n = len(table)
    fig, ax = plt.subplots(figsize=(11, 0.5 * n + 1.4))
    y = np.arange(n)[::-1]
    values = table[value].to_numpy(dtype=float)
    ax.barh(y, values, color=sns.color_palette("viridis", n))
    for yi, v in zip(y, values):
        ax.text(v + 0.05, yi, f"{v:.2f} ({v - values[0]:+.2f})", va="center", fontsize=8)
    low = max(0.0, float(np.floor(values.min() - 2)))
    ax.set_xlim(low, float(np.ceil(values.max() + 1.5)))
    ax.set_yticks(y, list(table["step"]), fontsize=8)
    ax.set_xlabel(value.replace("_", " ").replace(" %", " (%)"))
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_per_class_change(before, after, title: str = "") -> plt.Figure:
    """Per-class accuracy before and after a change (tables from evaluation.per_class_accuracy), in class order,
    with the classes that moved most labelled."""
    b = before.set_index("class")["accuracy"]
    a = after.set_index("class")["accuracy"].reindex(b.index)
    order = sorted(b.index, key=lambda c: b[c])
    x = np.arange(len(order))
    fig, ax = plt.subplots(figsize=(15, 4.5))
    ax.bar(x - 0.2, [b[c] for c in order], width=0.4, label="before")
    ax.bar(x + 0.2, [a[c] for c in order], width=0.4, label="after")
    ax.set_xticks(x, order)
    ax.set(
        ylabel="accuracy (%)",
        xlabel="class (worst first before the change)",
        ylim=(0, 100),
        title=title or "Per-class test accuracy before and after",
    )
    ax.legend()
    fig.tight_layout()
    return fig


def plot_search_curves(curves, hand, budget: float, title: str = "") -> plt.Figure:
    """Best validation so far against compute spent: the hand trials as one line, each search arm as the mean of its
    sampler seeds with their range shaded. `curves` and `hand` are ArmCurve-like (arm, compute, best, best_at)."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.step(hand.compute, hand.best, where="post", color="black", lw=2, label="hand (report's Table 1.2)")
    end = max([budget, *[c.compute[-1] for c in curves if c.compute]])
    grid = np.linspace(0, end, 300)
    ax.axvline(budget, color="grey", ls="--", lw=1, label="the hand trials' compute (every arm's budget)")
    for i, arm in enumerate(sorted({c.arm for c in curves})):
        values = np.array([[c.best_at(x) for x in grid] for c in curves if c.arm == arm])
        if not np.isfinite(values).any():
            continue
        color = sns.color_palette()[i]
        with warnings.catch_warnings():  # before an arm's first finished trial its best is NaN: left blank
            warnings.simplefilter("ignore", RuntimeWarning)
            ax.plot(grid, np.nanmean(values, axis=0), color=color, label=f"{arm} (mean of {len(values)} seed(s))")
            if len(values) > 1:
                ax.fill_between(grid, np.nanmin(values, 0), np.nanmax(values, 0), color=color, alpha=0.2)
    ax.set(xlabel="compute spent (seconds of this machine's training)", ylabel="best balanced validation (%)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    return fig


def plot_search_pareto(table, chosen_trial: int | None = None, title: str = "") -> plt.Figure:
    """Every trial of the accuracy/cost study: the search's, notebook 05's hand-picked candidates, the Pareto front
    as a line, and the chosen trial ringed."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    searched = table[table["source"] == "search"]
    hand = table[table["source"] != "search"]
    ax.scatter(searched["cpu_train_s"], searched["val_balanced_acc"], s=25, alpha=0.6, label="search trials")
    ax.scatter(hand["cpu_train_s"], hand["val_balanced_acc"], s=70, marker="D", color="black", label="notebook 05")
    for _, row in hand.iterrows():
        ax.annotate(row["widths"], (row["cpu_train_s"], row["val_balanced_acc"]), fontsize=8, xytext=(4, -10),
                    textcoords="offset points")  # fmt: skip
    front = table[table["pareto"]].sort_values("cpu_train_s")
    ax.step(front["cpu_train_s"], front["val_balanced_acc"], where="post", color="C3", label="Pareto front")
    if chosen_trial is not None and (table["trial"] == chosen_trial).any():
        row = table[table["trial"] == chosen_trial].iloc[0]
        ax.scatter([row["cpu_train_s"]], [row["val_balanced_acc"]], s=220, facecolors="none", edgecolors="C3", lw=2,
                   label=f"smallest within 0.3 points of the best ({row['widths']})")  # fmt: skip
    ax.set(xlabel="CPU training seconds (measured throughput x images)", ylabel="balanced validation (%)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_importances(importances: dict, title: str = "") -> plt.Figure:
    """Parameter importances (fANOVA, share of the objective's variance) of one or more studies, side by side."""
    fig, axes = plt.subplots(1, len(importances), figsize=(5.5 * len(importances), 3.8), squeeze=False)
    for ax, (name, series) in zip(axes[0], importances.items()):
        ordered = series.sort_values()
        ax.barh(list(ordered.index), list(ordered.values), color="C0")
        ax.set(xlabel="importance (fANOVA)", title=name, xlim=(0, 1))
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_protocol(table, title: str = "") -> plt.Figure:
    """Test balanced accuracy of each row of the final-model protocol: the mean of its seeds with their spread
    (bars), each seed (dots) and the ensemble of its seeds (a cross)."""
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(table) + 1.6))
    y = np.arange(len(table))[::-1]
    means = table["test_balanced_mean_%"].to_numpy(dtype=float)
    spread = np.nan_to_num(table["test_balanced_std"].to_numpy(dtype=float))
    ax.barh(y, means, xerr=spread, color="C0", alpha=0.5, capsize=4, label="mean of seeds (+- std)")
    for yi, per_seed in zip(y, table["test_balanced_per_seed_%"]):
        values = [float(v) for v in str(per_seed).split(" / ")]
        ax.scatter(values, [yi] * len(values), color="C0", s=18, zorder=3)
    ax.scatter(table["ensemble_test_balanced_%"], y, marker="x", color="C3", s=60, zorder=4, label="ensemble of seeds")
    labels = [f"{m} ({t})" for m, t in zip(table["model"], table["trained_on"])]
    ax.set_yticks(y, labels)
    low = float(np.nanmin(np.concatenate([means - spread, table["ensemble_test_balanced_%"].to_numpy(float)])))
    high = float(np.nanmax(np.concatenate([means + spread, table["ensemble_test_balanced_%"].to_numpy(float)])))
    ax.set_xlim(low - 1.0, high + 0.5)
    ax.set(xlabel="test balanced accuracy (%)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return fig
