"""emnist_utils.try_it, what notebook 07 calls: which model it tries (and the temporary one when
results/best_model.pt is not usable), drawings rendered from strokes, saliency and Grad-CAM for every architecture,
the live panel driven by mouse events without a browser, the fallback where no browser is attached, and the
look-alike tables."""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from helpers import BALANCED_CLASSES
from PIL import Image
from try_it_support import session_model

from emnist_utils import try_it as ti
from emnist_utils.core.registry import ModelSpec, build_model
from emnist_utils.core.trained_model import TrainedModel

SHAPES = {"arch1": (4, 8, 16, 0.3), "arch2": (4, 8, 32, 0.5), "compact": (4, 8, 16, 0.3), "lean": (4, 8, 16, 0.2)}


def untrained(arch: str = "lean", seed: int = 0) -> TrainedModel:
    torch.manual_seed(seed)
    spec = ModelSpec(arch, *SHAPES[arch])
    return TrainedModel(build_model(spec, 47).eval(), spec, list(BALANCED_CLASSES), 0.17, 0.33,
                        {"dataset": "emnist-test"})  # fmt: skip


def _seven() -> Image.Image:
    return ti.Sketch.from_strokes(ti.SAMPLE_STROKES["7"]).render()


# ----------------------------------------------------------------------------- explanations


@pytest.mark.parametrize("arch", sorted(SHAPES))
def test_saliency_and_grad_cam_for_every_architecture(arch, standin_data):
    model = untrained(arch)
    image = standin_data.test_images[0].numpy()
    for explain in (ti.saliency, ti.grad_cam):
        heat = explain(model, image)
        assert heat.shape == (28, 28) and heat.dtype == np.float32
        assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() == pytest.approx(1.0)
    assert not model.model.training  # explaining never leaves the model in training mode


def test_explanations_depend_on_the_class_asked_about(standin_data):
    model = untrained("lean")
    image = standin_data.test_images[1].numpy()
    for explain in (ti.saliency, ti.grad_cam):
        assert not np.allclose(explain(model, image, 3), explain(model, image, 30))


def test_grad_cam_matches_a_hand_computed_one(standin_data):
    """For the lean CNN, Grad-CAM by hand: the last conv block's ReLU output, weighted by its mean gradient."""
    model = untrained("lean")
    image = standin_data.test_images[2].numpy()
    x = ti._input(model, image)
    features = model.model.features
    maps = features[:-2](x)  # everything before global average pooling and flatten
    maps.retain_grad()
    logits = model.model.fc(model.model.dropout(features[-1](features[-2](maps))))
    logits[0, 5].backward()
    cam = torch.relu((maps.grad.mean((2, 3), keepdim=True) * maps).sum(1, keepdim=True)).detach()
    cam = torch.nn.functional.interpolate(cam, size=(28, 28), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(ti.grad_cam(model, image, 5), (cam / cam.max()).numpy(), atol=1e-5)


# ----------------------------------------------------------------------------- drawings


def test_sketch_renders_strokes_as_dark_ink_on_white():
    sketch = ti.Sketch.from_strokes([[(40, 140), (240, 140)]])
    picture = np.asarray(sketch.render())
    assert picture.shape == (ti.CANVAS, ti.CANVAS)
    assert picture[140, 40:241].max() == 0  # along the stroke
    assert picture[20, 20] == 255 and picture[260, 140] == 255  # away from it


def test_stroke_width_follows_the_drawing_size():
    """A small and a large drawing of one shape give the model nearly the same strokes, far nearer than one pen
    width for both would."""
    from emnist_utils.core.handwriting import prepare_image

    class FixedPen(ti.Sketch):
        def stroke_width(self) -> int:
            return ti.PEN

    small, large = [(120, 110), (160, 110), (135, 170)], [(60, 50), (220, 50), (120, 250)]
    assert ti.Sketch.from_strokes([large]).stroke_width() > 2 * ti.Sketch.from_strokes([small]).stroke_width()

    def difference(kind) -> float:
        a, b = (prepare_image(kind.from_strokes([s]).render()).image.astype(float) for s in (small, large))
        return float(np.abs(a - b).mean())

    assert difference(ti.Sketch) < 0.6 * difference(FixedPen)


def test_empty_sketch_is_blank():
    from emnist_utils.core.handwriting import ImageError, prepare_image

    with pytest.raises(ImageError, match="no character found"):
        prepare_image(ti.Sketch().render())


def test_describe_prepared_names_the_steps():
    from emnist_utils.core.handwriting import prepare_image

    text = ti.describe_prepared(prepare_image(_seven()))
    assert "280x280" in text and "inverted" in text and "(28, 28) uint8" in text and "upright" in text


# ----------------------------------------------------------------------------- which model


def test_a_usable_model_file_is_chosen(tmp_path, standin_data, monkeypatch):
    path = untrained("lean").save(tmp_path / "best_model.pt")
    monkeypatch.setattr(ti, "temporary_model", lambda *a, **k: pytest.fail("must not train"))
    choice = ti.choose_model(standin_data, candidates=[tmp_path / "missing.pt", path])
    assert not choice.temporary and choice.source.endswith("best_model.pt")
    assert "not there yet" in choice.notes[0]
    assert "TEMPORARY" not in choice.describe()


def test_without_a_usable_file_a_labelled_temporary_model_is_used(tmp_path, standin_data, monkeypatch):
    """A missing file, a damaged one and one for other classes are passed over, each with its reason; the
    temporary model says clearly what it is and how to make results/best_model.pt."""
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"not a model")
    spec = ModelSpec("lean", *SHAPES["lean"])
    digits = TrainedModel(build_model(spec, 10), spec, list("0123456789"), 0.17, 0.33, {}).save(tmp_path / "d.pt")
    stand_in = untrained("lean")
    monkeypatch.setattr(ti, "temporary_model", lambda *a, **k: stand_in)
    choice = ti.choose_model(standin_data, candidates=[tmp_path / "missing.pt", damaged, digits])
    assert choice.temporary and choice.model is stand_in
    assert len(choice.notes) == 3
    assert "not there yet" in choice.notes[0] and "cannot be used" in choice.notes[1]
    assert "10 classes" in choice.notes[2]
    text = choice.describe()
    assert "TEMPORARY" in text and "notebook 05" in text and "results/best_model.pt" in text


def test_temporary_model_reads_well_above_chance(tmp_path_factory, standin_data):
    """The session's model (results/best_model.pt, else the temporary one trained here): far above chance
    (1/47) on the test images, and its file loads back to the same predictions."""
    found = session_model(tmp_path_factory, standin_data)
    images, labels = standin_data.test_images[:470], standin_data.test_labels[:470]
    predictions = found.model.predict(images, device="cpu")
    assert float((predictions == labels).float().mean()) > 0.4
    assert torch.equal(TrainedModel.load(found.path).predict(images, device="cpu"), predictions)


# ----------------------------------------------------------------------------- live panel and fallback


def test_live_canvas_only_where_a_browser_is_attached(monkeypatch):
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    assert not ti.frontend_attached() and not ti.use_live_canvas()
    monkeypatch.setenv("JPY_SESSION_NAME", "/work/notebooks/07_try_it.ipynb")
    assert ti.frontend_attached() and ti.use_live_canvas()
    assert ti.use_live_canvas(False) is False
    monkeypatch.delenv("JPY_SESSION_NAME")
    assert ti.use_live_canvas(True) is True


def test_fallback_shows_a_drawn_sample(capsys, monkeypatch):
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    fig = ti.try_it(untrained("lean"))
    try:
        assert isinstance(fig, plt.Figure) and len(fig.axes) == 4
        assert "No browser is attached" in capsys.readouterr().out
    finally:
        plt.close(fig)


def test_panel_predicts_from_mouse_events_without_a_browser(tmp_path_factory, standin_data):
    """The panel's own event handlers, called as ipycanvas calls them: down, moves, up. The strokes received are
    the strokes predicted, and the 28x28 image, Grad-CAM and bars are updated."""
    pytest.importorskip("ipycanvas")
    model = session_model(tmp_path_factory, standin_data).model
    panel = ti.TryIt(model)
    assert 'data-top=""' in panel.bars.value
    blank_png = panel.received.value
    for stroke in ti.SAMPLE_STROKES["7"]:
        panel._down(*stroke[0])
        for (x0, y0), (x1, y1) in zip(stroke, stroke[1:]):
            for t in np.linspace(0, 1, 12)[1:]:
                panel._move(x0 + t * (x1 - x0), y0 + t * (y1 - y0))
        panel._up(*stroke[-1])
    assert [(round(x), round(y)) for x, y in (panel.sketch.strokes[0][0], panel.sketch.strokes[0][-1])] == [
        ti.SAMPLE_STROKES["7"][0][0],
        ti.SAMPLE_STROKES["7"][0][-1],
    ]
    expected = ti.read_picture(model, panel.sketch.render()).top[0][0]
    assert f'data-top="{expected}"' in panel.bars.value
    assert panel.received.value != blank_png
    panel._move(10, 10)  # moving without the button held draws nothing
    assert len(panel.sketch.strokes) == 1
    panel.clear()
    assert panel.sketch.empty and 'data-top=""' in panel.bars.value


def test_panel_reads_uploads_and_reports_bad_ones(tmp_path_factory, standin_data):
    pytest.importorskip("ipycanvas")
    model = session_model(tmp_path_factory, standin_data).model
    panel = ti.TryIt(model)
    buffer = io.BytesIO()
    ti.render_like_a_person(standin_data.test_images[0].numpy(), 6).save(buffer, format="png")
    panel._uploaded({"new": ({"name": "mine.png", "content": memoryview(buffer.getvalue())},)})
    assert 'data-top="' in panel.bars.value and 'data-top=""' not in panel.bars.value
    assert "mine.png" in panel.status.value
    panel._uploaded({"new": ({"name": "junk.png", "content": memoryview(b"junk")},)})
    assert "junk.png: not an image" in panel.status.value


def test_bars_name_the_top_class_and_escape_it():
    text = ti.bars_html([("<", 0.6), ("7", 0.3)])
    assert text.startswith('<div class="emnist-prediction" data-top="&lt;">')
    assert "60.0%" in text and "30.0%" in text and "<b>&lt;</b>" in text


# ----------------------------------------------------------------------------- look-alikes and figures


def test_lookalike_examples_and_table(standin_data):
    model = untrained("lean")
    images, names = ti.lookalike_examples(standin_data, [("F", "f"), ("9",)], per_class=2)
    assert images.shape == (6, 28, 28) and names == ["F", "F", "f", "f", "9", "9"]
    table = ti.lookalike_table(model, standin_data, [("F", "f")], per_class=5)
    assert list(table["written"]) == ["F", "f"] and (table["images"] == 5).all()
    assert table.filter(like="_%").apply(lambda c: c.between(0, 100)).all().all()
    with pytest.raises(ValueError, match="no class 'k'"):
        ti.lookalike_examples(standin_data, [("K", "k")])


def test_figures_are_made_without_error(standin_data):
    model = untrained("arch2")
    for fig in (ti.lookalike_figure(model, standin_data, [("F", "f")]),
                ti.explanation_figure(model, standin_data.test_images[:3], ["?", "?", "?"]),
                ti.round_trip_figure(standin_data.test_images[:2]),
                ti.reading_figure(model, [("a 7", _seven())])):  # fmt: skip
        assert fig.axes
        plt.close(fig)
