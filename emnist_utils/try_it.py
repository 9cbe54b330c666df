"""What notebook 07 ("Try it") calls: the model to try, a canvas that predicts while you draw, a picture
loaded the same way, what the model looked at, and look-alike characters side by side.

Every picture, drawn or loaded, goes through core/handwriting.py's EMNIST conversion and core/recognition.py's
prediction, exactly like `python -m emnist_utils predict`, so what the notebook shows is what the command does.
The canvas (ipycanvas inside ipywidgets, for JupyterLab 4) needs a browser; where none is attached (nbval, the
main job's execution) the notebook shows the same panel for a drawing made in code instead, so no cell needs a
person. Everything here runs on the CPU: one picture at a time needs nothing more.
"""

from __future__ import annotations

import html
import io
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import ipywidgets as widgets
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from ipycanvas import Canvas
from IPython.display import display
from PIL import Image, ImageDraw
from torch import nn

from .core.data import EMNIST
from .core.handwriting import ImageError, Prepared, prepare, prepare_image, read_image
from .core.paths import resolve, shown
from .core.recognition import top_classes
from .core.registry import ModelSpec
from .core.splits import make_splits, normalise
from .core.trained_model import ModelFileError, TrainedModel
from .core.training import Recipe
from .experiments.profiles import Profile
from .experiments.spec import RunSpec
from .experiments.store import Store

MODEL_FILE = "results/best_model.pt"  # written by notebook 05
CPU = torch.device("cpu")
CANVAS = 280  # canvas pixels (10 per pixel of EMNIST's 28x28 grid)
PEN = 24  # stroke width shown on the canvas
STROKE = 0.12  # stroke width of the rendered drawing as a share of its size: EMNIST's strokes are ~3 of 24 pixels
TOP = 5
LIVE_INTERVAL = 0.25  # seconds between predictions while a stroke is being drawn

# Drawings made in code, in canvas coordinates: the sample shown where no browser is attached, and what the
# browser test draws with the mouse. Each is a list of strokes, each stroke a list of (x, y) points.
SAMPLE_STROKES: dict[str, list[list[tuple[int, int]]]] = {
    "7": [[(70, 60), (210, 60), (120, 235)]],
    "L": [[(95, 45), (95, 235), (205, 235)]],
    "T": [[(55, 55), (225, 55)], [(140, 55), (140, 235)]],
}

# Pairs that EMNIST's writers themselves make alike (see core/evaluation.py's CONFUSABLE_GROUPS).
LOOKALIKES = (("F", "f"), ("9", "q"), ("0", "O"), ("2", "Z"), ("5", "S"), ("1", "I"))

# The stand-in for results/best_model.pt while notebook 05 has not written it: a small lean CNN trained on part
# of the data in about a minute on a CPU (cached like every run). Far weaker than the study's model (about 73% on
# the stand-in's test images). Random affine augmentation costs it no accuracy in 3 epochs and makes it read
# pictures as well as the test images: without it, it read EMNIST's test images handed in as pictures about 4
# points worse than the images themselves (the conversion can place a character up to half a pixel away from where
# EMNIST put it); with it, under 2.
TEMPORARY_RUN = RunSpec(
    ModelSpec("lean", 16, 32, 64, 0.1),
    Recipe(
        lr=3e-3, batch_size=128, epochs=3, optimizer="adamw", schedule="onecycle", label_smoothing=0.1, augment="affine"
    ),  # fmt: skip
    name="try-it-temporary",
)
TEMPORARY_PROFILE = Profile("try-it", "the temporary model of notebook 07", train_limit=12_000, val_limit=1_000)


# ----------------------------------------------------------------------------- which model


@dataclass
class ModelChoice:
    """The model the notebook tries, where it came from, and why any better one was not used."""

    model: TrainedModel
    source: str
    temporary: bool = False
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        m = self.model
        head = (
            f"model: {self.source} ({m.spec.arch}, {m.parameters:,} parameters, trained on "
            f"{m.provenance.get('dataset', '?')})"
        )
        if not self.temporary:
            return head
        return "\n".join(
            [
                head,
                *self.notes,
                "This is a TEMPORARY model, trained here in about a minute on "
                f"{TEMPORARY_PROFILE.train_limit:,} images: expect many more mistakes than from the "
                "study's model.",
                "To try the real one, run notebook 05 (it writes results/best_model.pt; `bash tasks.sh "
                "main` runs every notebook), or train one in about 20 minutes on 2 CPU cores with "
                "`python -m emnist_utils train --recipe cpu --out results/best_model.pt`, then run this "
                "notebook again.",
            ]
        )


def load_model(path: str | os.PathLike, classes: Sequence[str]) -> TrainedModel:
    """A trained-model file that predicts `classes`; ModelFileError says why not."""
    model = TrainedModel.load(resolve(path))
    model.check_classes(classes, "this notebook's data")
    model.model.to(CPU)
    return model


def temporary_model(data: EMNIST, store: Store | None = None, device: torch.device | str = CPU) -> TrainedModel:
    """TEMPORARY_RUN on `data` (trained once, then read from the store's cache)."""
    splits = make_splits(data, 0, **TEMPORARY_PROFILE.limits())
    result = (store or Store()).run(
        TEMPORARY_RUN.bind(splits, TEMPORARY_PROFILE), splits, device=device, progress=False
    )
    model = result.trained_model
    model.model.to(CPU)
    return model


def choose_model(
    data: EMNIST,
    store: Store | None = None,
    candidates: Sequence[str | os.PathLike] = (MODEL_FILE,),
    device: torch.device | str = CPU,
) -> ModelChoice:
    """The first candidate file that loads and predicts the data's classes, else a temporary model (with the
    reasons every candidate was passed over)."""
    notes, seen = [], set()
    for candidate in candidates:
        path = resolve(candidate)
        if path in seen:
            continue
        seen.add(path)
        if not path.is_file():
            notes.append(f"{shown(path)}: not there yet")
            continue
        try:
            return ModelChoice(load_model(path, data.classes), shown(path), notes=notes)
        except ModelFileError as exc:
            notes.append(f"{shown(path)}: cannot be used: {exc}")
    return ModelChoice(
        temporary_model(data, store, device),
        "TEMPORARY model (results/best_model.pt is not usable yet)",
        temporary=True,
        notes=notes,
    )


def frontend_attached() -> bool:
    """Whether a Jupyter server started this kernel for a notebook open in a browser (it sets JPY_SESSION_NAME);
    nbval, nbclient and papermill do not."""
    return bool(os.environ.get("JPY_SESSION_NAME"))


def use_live_canvas(live: bool | None = None) -> bool:
    """`live` if given, else whether a browser can show the canvas."""
    if live is not None:
        return bool(live)
    return frontend_attached()


# ----------------------------------------------------------------------------- drawings and pictures


@dataclass
class Sketch:
    """Strokes drawn on the canvas, kept in the kernel and rendered here, so that the picture predicted is exactly
    the strokes received (no round trip of the canvas's pixels through the browser)."""

    size: int = CANVAS
    pen: int = PEN
    strokes: list[list[tuple[float, float]]] = field(default_factory=list)

    @classmethod
    def from_strokes(cls, strokes: Sequence[Sequence[tuple[float, float]]], **kwargs) -> Sketch:
        return cls(strokes=[[(float(x), float(y)) for x, y in s] for s in strokes], **kwargs)

    @property
    def empty(self) -> bool:
        return not self.strokes

    def begin(self, x: float, y: float) -> None:
        self.strokes.append([(float(x), float(y))])

    def extend(self, x: float, y: float) -> None:
        if not self.strokes:
            self.begin(x, y)
        else:
            self.strokes[-1].append((float(x), float(y)))

    def clear(self) -> None:
        self.strokes.clear()

    def stroke_width(self) -> int:
        """The pen of the rendered drawing: STROKE of the drawing's longer side, so that a small and a large
        drawing of one character give the model the same strokes (the conversion scales both to 24 pixels)."""
        points = np.array([p for stroke in self.strokes for p in stroke] or [(0.0, 0.0)])
        extent = float((points.max(0) - points.min(0)).max())
        return int(np.clip(round(STROKE * extent), 4, self.size // 6))

    def render(self) -> Image.Image:
        """Black strokes with round ends on white, like a pen on paper (grey levels, mode "L")."""
        image = Image.new("L", (self.size, self.size), 255)
        draw = ImageDraw.Draw(image)
        width = self.stroke_width()
        r = width / 2
        for stroke in self.strokes:
            if len(stroke) > 1:
                draw.line(stroke, fill=0, width=width, joint="curve")
            for x, y in stroke:
                draw.ellipse((x - r, y - r, x + r, y + r), fill=0)
        return image


def render_like_a_person(
    image: np.ndarray,
    scale: int = 8,
    *,
    dark_ink: bool = True,
    offset: tuple[int, int] = (0, 0),
    size: tuple[int, int] | None = None,
) -> Image.Image:
    """An upright 28x28 EMNIST image as a person would hand it in: enlarged `scale` times (bicubic), dark ink on
    white (or light on black), placed at `offset` (top, left) on a page of `size` (height, width; default: the
    enlarged image with a margin of `scale` * 4 pixels all round, the character off-centre by `offset`)."""
    enlarged = Image.fromarray(np.asarray(image, dtype=np.uint8)).resize(
        (28 * scale, 28 * scale), Image.Resampling.BICUBIC
    )
    ink = np.asarray(enlarged)
    if size is None:
        margin = 4 * scale
        top, left = margin + offset[0], margin + offset[1]
        height, width = ink.shape[0] + 2 * margin + offset[0], ink.shape[1] + 2 * margin + offset[1]
    else:
        (top, left), (height, width) = offset, size
    page = np.zeros((height, width), dtype=np.uint8)
    rows, cols = max(0, min(ink.shape[0], height - top)), max(0, min(ink.shape[1], width - left))
    page[top : top + rows, left : left + cols] = ink[:rows, :cols]
    return Image.fromarray(255 - page if dark_ink else page)


def describe_prepared(prepared: Prepared) -> str:
    """What the conversion did to one picture, in words (profile- and model-independent)."""
    top, left, bottom, right = prepared.box
    height, width = prepared.shape
    polarity = (
        "dark ink on a light background (inverted)" if prepared.inverted else "light ink on a dark background (kept)"
    )
    longer = max(bottom - top, right - left)
    return (
        f"picture: {width}x{height} pixels, {polarity}\n"
        f"character: rows {top}-{bottom - 1}, columns {left}-{right - 1} ({right - left}x{bottom - top} pixels), "
        f"scaled by {24 / longer:.3f} so that its longer side is 24 of 28 pixels, centred\n"
        f"model input: {prepared.image.shape} {prepared.image.dtype}, ink {prepared.image.min()}-"
        f"{prepared.image.max()}, upright like the loader's images"
    )


# ----------------------------------------------------------------------------- what the model looked at


def _feature_maps(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the last spatial feature map (N, C, H, W with H > 1) computed on the way, for any architecture
    of the registry: the output of the last module that produced one."""
    last: dict[str, torch.Tensor] = {}

    def keep(module, inputs, output):
        if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[-1] > 1:
            last["map"] = output

    handles = [m.register_forward_hook(keep) for m in net.modules() if not list(m.children())]
    try:
        logits = net(x)
    finally:
        for h in handles:
            h.remove()
    if "map" not in last:
        raise ValueError("the model has no spatial feature map to explain")
    return logits, last["map"]


def _input(model: TrainedModel, image: np.ndarray) -> torch.Tensor:
    return normalise(torch.as_tensor(np.asarray(image, dtype=np.uint8))[None], model.mean, model.std)


def grad_cam(model: TrainedModel, image: np.ndarray, target: int | None = None) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) of class `target` (default: the top class) for one upright 28x28 uint8
    image: where in the last feature map the evidence for that class lies, upsampled to 28x28, 0-1."""
    net = model.model.to(CPU).eval()
    with torch.enable_grad():
        logits, maps = _feature_maps(net, _input(model, image))
        target = int(logits.argmax()) if target is None else int(target)
        (grads,) = torch.autograd.grad(logits[0, target], maps)
    cam = torch.relu((grads.mean((2, 3), keepdim=True) * maps).sum(1, keepdim=True)).detach()
    cam = nn.functional.interpolate(cam, size=image.shape, mode="bilinear", align_corners=False)[0, 0]
    return (cam / cam.max()).numpy() if float(cam.max()) > 0 else cam.numpy()


def saliency(model: TrainedModel, image: np.ndarray, target: int | None = None) -> np.ndarray:
    """Vanilla gradient saliency (Simonyan et al. 2014): how much each pixel would change the `target` class's
    score (default: the top class), 28x28, 0-1."""
    net = model.model.to(CPU).eval()
    x = _input(model, image).requires_grad_(True)
    with torch.enable_grad():
        logits = net(x)
        target = int(logits.argmax()) if target is None else int(target)
        (grads,) = torch.autograd.grad(logits[0, target], x)
    values = grads[0, 0].abs()
    return (values / values.max()).numpy() if float(values.max()) > 0 else values.numpy()


def overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """A heat map over the grey image, as RGB uint8 (for the canvas panel and figures)."""
    colours = matplotlib.colormaps["inferno"](np.clip(heat, 0, 1))[..., :3]
    grey = (np.asarray(image, dtype=np.float32) / 255.0)[..., None]
    return np.round(255 * (0.45 * grey + 0.55 * colours)).astype(np.uint8)


# ----------------------------------------------------------------------------- one prediction, shown


@dataclass
class Reading:
    """One picture as the model read it."""

    prepared: Prepared
    top: list[tuple[str, float]]
    cam: np.ndarray


def read_picture(
    model: TrainedModel, picture: Image.Image | np.ndarray, name: str = "the picture", k: int = TOP
) -> Reading:
    """Convert (EMNIST's way), predict and explain one picture: a Pillow image or grey levels in 0-1."""
    prepared = prepare_image(picture, name) if isinstance(picture, Image.Image) else prepare(picture, name)
    top = top_classes(model, prepared.image, k, CPU)[0]
    return Reading(prepared, top, grad_cam(model, prepared.image, model.classes.index(top[0][0])))


def to_png(array: np.ndarray, scale: int = 1) -> bytes:
    """PNG bytes of a grey (H, W) or RGB (H, W, 3) uint8 array, enlarged `scale` times without smoothing."""
    image = Image.fromarray(np.asarray(array, dtype=np.uint8))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="png")
    return buffer.getvalue()


def bars_html(top: Sequence[tuple[str, float]]) -> str:
    """The top classes as horizontal bars; the outer element names the top class (`data-top`) for tests."""
    rows = "".join(
        f'<div style="display:flex;align-items:center;gap:6px;margin:2px 0">'
        f'<code style="width:1.6em;font-size:1.2em">{html.escape(c)}</code>'
        f'<div style="background:#4c72b0;height:14px;width:{max(1, round(200 * p))}px"></div>'
        f"<span>{p:.1%}</span></div>"
        for c, p in top
    )
    best, p = top[0]
    return (
        f'<div class="emnist-prediction" data-top="{html.escape(best)}">'
        f'<div style="font-size:1.6em;margin-bottom:4px">prediction: <b>{html.escape(best)}</b> ({p:.0%})</div>'
        f"{rows}</div>"
    )


def reading_figure(model: TrainedModel, pictures: Sequence[tuple[str, Image.Image | np.ndarray]]) -> plt.Figure:
    """One row per picture: the picture, the 28x28 image the model receives, Grad-CAM over it, the top classes."""
    fig, axes = plt.subplots(len(pictures), 4, figsize=(12, 3 * len(pictures)), squeeze=False)
    for row, (title, picture) in zip(axes, pictures):
        reading = read_picture(model, picture, title)
        shown_picture = picture if isinstance(picture, np.ndarray) else np.asarray(picture.convert("L"))
        row[0].imshow(shown_picture, cmap="gray", vmin=0, vmax=255 if shown_picture.dtype == np.uint8 else 1)
        row[0].set_title(title)
        row[1].imshow(reading.prepared.image, cmap="gray", vmin=0, vmax=255)
        row[1].set_title("what the model receives (28x28)")
        row[2].imshow(overlay(reading.prepared.image, reading.cam))
        row[2].set_title(f"Grad-CAM for '{reading.top[0][0]}'")
        classes, probs = zip(*reading.top)
        row[3].barh(range(len(classes))[::-1], probs, color="#4c72b0")
        row[3].set_yticks(range(len(classes))[::-1], [f"'{c}'" for c in classes])
        row[3].set(xlim=(0, 1), xlabel="probability", title="top classes")
        for ax in row[:3]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return fig


def explanation_figure(model: TrainedModel, images: torch.Tensor, written: Sequence[str]) -> plt.Figure:
    """Per image (upright uint8 28x28, of class `written`): the image, gradient saliency and Grad-CAM for the
    class the model predicts."""
    fig, axes = plt.subplots(3, len(images), figsize=(1.6 * len(images), 5.2), squeeze=False)
    tops = top_classes(model, images, 1, CPU)
    for i, (image, name, top) in enumerate(zip(images.numpy(), written, tops)):
        predicted = model.classes.index(top[0][0])
        axes[0, i].imshow(image, cmap="gray")
        axes[0, i].set_title(f"'{name}' read '{top[0][0]}'", fontsize=9)
        axes[1, i].imshow(saliency(model, image, predicted), cmap="inferno")
        axes[2, i].imshow(overlay(image, grad_cam(model, image, predicted)))
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[1, 0].set_ylabel("saliency")
    axes[2, 0].set_ylabel("Grad-CAM")
    fig.tight_layout()
    return fig


def round_trip(images: torch.Tensor, scale: int = 6) -> tuple[list[Image.Image], np.ndarray]:
    """Test images rendered as a person would hand them in (dark ink on white, enlarged, off-centre), and what
    the conversion makes of them again: (pictures, converted uint8 (N, 28, 28)). Matching the loader's images
    shows that nothing is transposed or shifted on the way."""
    pictures = [render_like_a_person(image, scale, offset=(2 * scale, 7 * scale)) for image in images.numpy()]
    converted = np.stack([prepare_image(p).image for p in pictures])
    return pictures, converted


def round_trip_figure(images: torch.Tensor, scale: int = 6) -> plt.Figure:
    """Rows: the loader's image, the picture a person would give, the conversion of that picture, and the
    mean absolute difference to the loader's image and to its transpose (what a wrong orientation would give)."""
    pictures, converted = round_trip(images, scale)
    fig, axes = plt.subplots(3, len(images), figsize=(1.7 * len(images), 5.6), squeeze=False)
    for i, (image, picture, back) in enumerate(zip(images.numpy(), pictures, converted)):
        same = np.abs(back.astype(float) - image).mean()
        flipped = np.abs(back.astype(float) - image.T).mean()
        axes[0, i].imshow(image, cmap="gray")
        axes[1, i].imshow(np.asarray(picture), cmap="gray", vmin=0, vmax=255)
        axes[2, i].imshow(back, cmap="gray")
        axes[2, i].set_xlabel(f"diff {same:.0f} (transposed {flipped:.0f})", fontsize=8)
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("loader")
    axes[1, 0].set_ylabel("as handed in")
    axes[2, 0].set_ylabel("converted")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- look-alikes


def lookalike_examples(
    data: EMNIST, pairs: Sequence[tuple[str, str]] = LOOKALIKES, per_class: int = 1
) -> tuple[torch.Tensor, list[str]]:
    """The first `per_class` test images of each class of each pair (deterministic), and their class names."""
    images, names = [], []
    for pair in pairs:
        for name in pair:
            if name not in data.classes:
                raise ValueError(f"no class {name!r} in emnist-{data.split} (classes: {''.join(data.classes)})")
            label = data.classes.index(name)
            idx = torch.nonzero(data.test_labels == label).flatten()[:per_class]
            images.append(data.test_images[idx])
            names += [name] * len(idx)
    return torch.cat(images), names


def lookalike_table(
    model: TrainedModel, data: EMNIST, pairs: Sequence[tuple[str, str]] = LOOKALIKES, per_class: int = 20
) -> pd.DataFrame:
    """For each pair (a, b): over `per_class` test images of each, the mean probability the model gives a and b,
    and how often it picks the right one."""
    rows = []
    for a, b in pairs:
        for name in (a, b):
            images, _ = lookalike_examples(data, [(name,)], per_class)
            probs = model.probabilities(images, device=CPU)
            ia, ib, i_true = data.classes.index(a), data.classes.index(b), data.classes.index(name)
            rows.append(
                {
                    "pair": f"{a} / {b}",
                    "written": name,
                    "images": len(images),
                    "p(first of pair)_%": round(100 * float(probs[:, ia].mean()), 1),
                    "p(second of pair)_%": round(100 * float(probs[:, ib].mean()), 1),
                    "read correctly_%": round(100 * float((probs.argmax(1) == i_true).float().mean()), 1),
                }
            )
    return pd.DataFrame(rows)


def lookalike_figure(model: TrainedModel, data: EMNIST, pairs: Sequence[tuple[str, str]] = LOOKALIKES) -> plt.Figure:
    """Each pair side by side (one test image of each) with the probabilities the model gives both classes."""
    images, names = lookalike_examples(data, pairs)
    probs = model.probabilities(images, device=CPU)
    fig, axes = plt.subplots(
        2, len(pairs) * 2, figsize=(1.45 * 2 * len(pairs), 3.8), squeeze=False, gridspec_kw={"height_ratios": [3, 2]}
    )
    for i, (image, name, p) in enumerate(zip(images.numpy(), names, probs)):
        a, b = pairs[i // 2]
        axes[0, i].imshow(image, cmap="gray")
        axes[0, i].set_title(f"written '{name}'", fontsize=10)
        axes[0, i].set_xticks([])
        axes[0, i].set_yticks([])
        values = [float(p[data.classes.index(a)]), float(p[data.classes.index(b)])]
        axes[1, i].bar([f"'{a}'", f"'{b}'"], values, color=["#4c72b0", "#dd8452"])
        axes[1, i].set_ylim(0, 1)
        if i:
            axes[1, i].set_yticklabels([])
    axes[1, 0].set_ylabel("probability")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- the live canvas


class TryIt:
    """The live panel: a canvas to draw on (mouse), Clear, a picture upload; beside it the 28x28 image the model
    receives, Grad-CAM over it and the top classes as bars, updated while you draw."""

    def __init__(self, model: TrainedModel, size: int = CANVAS, pen: int = PEN, k: int = TOP, label: str = ""):
        self.model, self.k = model, k
        self.sketch = Sketch(size=size, pen=pen)
        self.drawing = False
        self.last_update = 0.0
        self.canvas = Canvas(
            width=size,
            height=size,
            layout=widgets.Layout(width=f"{size}px", height=f"{size}px", border="1px solid #888"),
        )
        self.canvas.add_class("emnist-canvas")
        self.canvas.line_width, self.canvas.line_cap, self.canvas.line_join = pen, "round", "round"
        self.canvas.on_mouse_down(self._down)
        self.canvas.on_mouse_move(self._move)
        self.canvas.on_mouse_up(self._up)
        self.canvas.on_mouse_out(self._up)
        self.clear_button = widgets.Button(description="Clear", icon="eraser")
        self.clear_button.on_click(lambda _: self.clear())
        self.upload = widgets.FileUpload(accept="image/*", multiple=False, description="Load a picture")
        self.upload.observe(self._uploaded, "value")
        self.received = widgets.Image(format="png", width="140", height="140")
        self.attention = widgets.Image(format="png", width="140", height="140")
        self.bars = widgets.HTML()
        self.status = widgets.HTML()
        self.label = widgets.HTML(f"<small>model: {html.escape(label)}</small>" if label else "")
        spaced = widgets.Layout(margin="0 24px 0 0")
        self.panel = widgets.HBox(
            [
                widgets.VBox([self.canvas, widgets.HBox([self.clear_button, self.upload])], layout=spaced),
                widgets.VBox(
                    [
                        widgets.HTML("<b>what the model receives</b>"),
                        self.received,
                        widgets.HTML("<b>where it looked (Grad-CAM)</b>"),
                        self.attention,
                    ],
                    layout=widgets.Layout(margin="0 24px 0 0"),
                ),
                widgets.VBox([self.bars, self.status, self.label], layout=widgets.Layout(min_width="320px")),
            ]
        )
        self.panel.add_class("emnist-try-it")
        self.clear()

    def _ipython_display_(self):
        display(self.panel)

    # events (canvas coordinates)
    def _down(self, x: float, y: float) -> None:
        self.drawing = True
        self.sketch.begin(x, y)
        self.canvas.fill_circle(x, y, self.sketch.pen / 2)

    def _move(self, x: float, y: float) -> None:
        if not self.drawing:
            return
        x0, y0 = self.sketch.strokes[-1][-1]
        self.sketch.extend(x, y)
        self.canvas.stroke_line(x0, y0, x, y)
        if time.monotonic() - self.last_update > LIVE_INTERVAL:
            self.update()

    def _up(self, x: float, y: float) -> None:
        if self.drawing:
            self.drawing = False
            self.update()

    def _uploaded(self, change) -> None:
        files = change["new"]
        if not files:
            return
        upload = files[0]
        try:
            grey = read_image(io.BytesIO(bytes(upload["content"])), upload["name"])
            self.show(read_picture(self.model, grey, upload["name"], self.k), f"picture {upload['name']}")
        except ImageError as exc:
            self.status.value = f'<span style="color:#b00">{html.escape(str(exc))}</span>'

    def clear(self) -> None:
        self.sketch.clear()
        self.canvas.fill_style = "white"
        self.canvas.fill_rect(0, 0, self.sketch.size, self.sketch.size)
        self.canvas.fill_style, self.canvas.stroke_style = "black", "black"
        blank = np.zeros((28, 28), dtype=np.uint8)
        self.received.value = self.attention.value = to_png(blank, 5)
        self.bars.value = '<div class="emnist-prediction" data-top="">draw a character (or load a picture)</div>'
        self.status.value = ""

    def update(self) -> None:
        """Predict the drawing as it is now."""
        self.last_update = time.monotonic()
        if self.sketch.empty:
            return
        try:
            self.show(read_picture(self.model, self.sketch.render(), "the drawing", self.k), "drawing")
        except ImageError as exc:
            self.status.value = f'<span style="color:#b00">{html.escape(str(exc))}</span>'

    def show(self, reading: Reading, what: str) -> None:
        self.received.value = to_png(reading.prepared.image, 5)
        self.attention.value = to_png(overlay(reading.prepared.image, reading.cam), 5)
        self.bars.value = bars_html(reading.top)
        self.status.value = f"<small>{html.escape(what)}</small>"


def try_it(model: TrainedModel, live: bool | None = None, sample: str = "7", label: str = ""):
    """The live canvas where a browser shows it (see `use_live_canvas`), else the same panel for the drawn
    `sample` (SAMPLE_STROKES) as a figure. `label` names the model under the panel. Returns the TryIt panel
    (displayed) or the figure (shown by the notebook's backend)."""
    if use_live_canvas(live):
        panel = TryIt(model, label=label)
        display(panel)
        return panel
    print(
        f"No browser is attached (nbval, the main job), so instead of the canvas here is a '{sample}' drawn in "
        "code, read the way the canvas reads your strokes."
    )
    return reading_figure(model, [(f"a drawn '{sample}'", Sketch.from_strokes(SAMPLE_STROKES[sample]).render())])


def sample_picture_file(data: EMNIST, folder: str | os.PathLike, index: int = 0, scale: int = 8) -> Path:
    """A test image of `data` saved as a person would photograph it (enlarged, dark on white, off-centre, JPEG),
    for the notebook to load like any picture."""
    path = Path(folder) / f"emnist_test_{index}_as_photo.jpg"
    picture = render_like_a_person(data.test_images[index].numpy(), scale, offset=(3 * scale, 9 * scale))
    picture.save(path, quality=90)
    return path


def summary(choice: ModelChoice, data: EMNIST, images: int = 100) -> str:
    """The notebook's closing lines: which model, how it reads the drawn samples, and how close the conversion
    comes to the loader's own images (and to their transposes) over the first `images` test images."""
    lines = [choice.describe().splitlines()[0]]
    for name, strokes in SAMPLE_STROKES.items():
        top = read_picture(choice.model, Sketch.from_strokes(strokes).render(), f"drawn '{name}'", 1).top[0]
        lines.append(f"drawn '{name}': read as '{top[0]}' ({top[1]:.0%})")
    originals = data.test_images[:images]
    _, converted = round_trip(originals)
    same = np.abs(converted.astype(float) - originals.numpy()).mean()
    flipped = np.abs(converted.astype(float) - originals.numpy().transpose(0, 2, 1)).mean()
    lines.append(
        f"conversion of {len(originals)} test images handed in as photos: mean difference {same:.1f} of 255 "
        f"from the loader's images, {flipped:.1f} from their transposes"
    )
    return "\n".join(lines)
