"""Very large images in the panel: a multiscale pyramid, downsampled masks, full-resolution exports.

The size limits of ``freesolo_napari.large`` are lowered so that a small image counts as large:
the same code paths as a 20000×15000 image, in seconds. Real napari viewers under Xvfb, the real
backbone (``benchmarks/panel_scale.py`` measures the real size).
"""

import time

import numpy as np
import pytest
from PIL import Image

from engine.data.synthetic import make_sample
from engine.structures import InstanceMask
from freesolo_napari import large

pytestmark = pytest.mark.gui


@pytest.fixture
def small_limits(monkeypatch):
    """A 240×320 image is 'large': a pyramid down to 80 px, masks at 1/3 (longest side 107)."""
    monkeypatch.setattr(large, "LARGE_IMAGE_PX", 50_000)
    monkeypatch.setattr(large, "PREVIEW_SIDE", 120)
    monkeypatch.setattr(large, "PYRAMID_SIDE", 80)


def _random_instances(rng, shape, n=12):
    out = []
    for _ in range(n):
        y0, x0 = rng.integers(0, shape[0] - 5), rng.integers(0, shape[1] - 5)
        y1, x1 = rng.integers(y0 + 1, min(shape[0], y0 + 90) + 1), rng.integers(x0 + 1, min(shape[1], x0 + 90) + 1)
        crop = rng.random((y1 - y0, x1 - x0)) < 0.7
        out.append(InstanceMask(crop, score=float(rng.random()), box=(int(y0), int(y1), int(x0), int(x1)),
                                shape=shape))
    return out


def test_preview_labels_are_the_full_label_image_sampled(small_limits):
    from freesolo_napari.layers import instances_to_labels

    rng = np.random.default_rng(3)
    for shape in [(240, 320), (241, 319), (300, 97)]:
        instances = _random_instances(rng, shape)
        full = instances_to_labels(instances, shape)
        for factor in (1, 2, 3, 5):
            small = large.preview_labels(instances, shape, factor)
            assert small.shape == large.preview_shape(shape, factor)
            np.testing.assert_array_equal(small, full[::factor, ::factor])
    crop = np.array([[1, 0], [1, 1]], bool)
    big, box = large.upscale_crop(crop, (1, 3, 4, 6), 3, (8, 100))
    assert box == (3, 8, 12, 18) and big.shape == (5, 6) and big[:3, :3].all() and not big[:3, 3:].any()


def test_pyramid_levels_are_views_of_the_image(small_limits):
    image = np.zeros((240, 320, 3), np.uint8)
    data, extra = large.image_layer_data(image)
    assert extra["multiscale"] and [d.shape[:2] for d in data] == [(240, 320), (120, 160), (60, 80)]
    assert all(np.shares_memory(level, image) for level in data)  # strided views: nothing allocated
    small = np.zeros((200, 200, 3), np.uint8)
    assert large.image_layer_data(small) == (small, {})  # 40,000 px: shown as it is
    assert large.preview_factor((240, 320)) == 3 and large.preview_factor((200, 200)) == 1


class _Beat:
    """The longest gap between 10 ms ticks of a GUI-thread timer: how long the viewer could not react."""

    def __init__(self):
        from qtpy.QtCore import QTimer

        self.last, self.longest = None, 0.0
        self.timer = QTimer(interval=10)
        self.timer.timeout.connect(self._tick)
        self.timer.start()

    def _tick(self):
        now = time.perf_counter()
        if self.last is not None:
            self.longest = max(self.longest, now - self.last)
        self.last = now


def test_large_image_in_the_panel_is_multiscale_and_exports_full_size(make_napari_viewer, qtbot, tmp_path,
                                                                         small_limits):
    from engine.io.coco import load_image_results

    folder = tmp_path / "big"
    folder.mkdir()
    Image.fromarray(make_sample(5, (240, 320), kind="photo")[0]).save(folder / "big.png")
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("freesolo-napari", "FreeSOLO")
    qtbot.wait(300)  # the first draw of the empty viewer is not the panel's
    beat = _Beat()
    widget.run_scope.folder_view.open_folder(folder)
    qtbot.waitUntil(lambda: "big.png" in viewer.layers, timeout=30_000)
    layer = viewer.layers["big.png"]
    assert layer.multiscale and len(layer.data) == 3 and layer.data[0].shape == (240, 320, 3)

    widget.run_scope.set_scope("current image")
    widget.run_button.click()
    qtbot.waitUntil(lambda: widget.run_button.isEnabled() and "big.png · free masks" in viewer.layers,
                    timeout=120_000)
    labels = viewer.layers["big.png · free masks"]
    assert labels.data.shape == (80, 107) and tuple(labels.scale) == (3.0, 3.0)
    assert widget.state.automatic["big.png"].shape == (80, 107)  # no full-size copy either
    widget.tau_slider.setValue(widget.tau_slider.value() - 5)  # a slider move re-uses the layer
    qtbot.waitUntil(lambda: widget._update_worker is None, timeout=60_000)
    assert viewer.layers["big.png · free masks"] is labels and labels.data.shape == (80, 107)
    qtbot.wait(200)
    beat.timer.stop()
    # a coarse guard only: napari's own first image and Labels layers take up to ~2.5 s of the GUI thread
    # on 2 shared software-rendered cores; the stalls at 20000×15000 are benchmarks/panel_scale.py's
    assert beat.longest < 5.0, f"the GUI thread was blocked {beat.longest:.2f} s"

    shown = labels.metadata[large.INSTANCES_KEY]
    assert shown and all(m.shape == (240, 320) for m in shown)
    data = np.array(labels.data)
    present = [int(i) for i in np.unique(data) if i]  # masks hidden under others at this resolution are not
    data[data == present[0]] = 99  # one mask repainted by hand (at the view's resolution): a new label
    labels.data = data
    out = tmp_path / "out.json"
    worker = widget.export_coco(str(out), scope="all open images")
    assert worker is not None  # a large image's masks are encoded in a worker, not on the GUI thread
    qtbot.waitUntil(lambda: out.exists() and widget.run_button.isEnabled(), timeout=30_000)
    assert "Exported 1 image(s)" in widget.status.text()
    res = load_image_results(out)["big.png"]
    assert (res.height, res.width) == (240, 320) and len(res.instances) == len(present)
    edited = [m for m in res.instances if m.source == "edited"]
    assert len(edited) == 1 and edited[0].area == 9 * int((data == 99).sum()) - _clipped(data == 99, (240, 320))
    kept = sorted((m.box, m.area) for m in res.instances if m.source != "edited")
    assert kept == sorted((shown[i - 1].box, shown[i - 1].area) for i in present[1:])  # the others at full size

    view = widget.run_scope.folder_view  # the edits stored for the folder, and its export, at full size too
    view.save_current_edits()
    assert view.session.load_edits(view.session.path).shape == (240, 320)
    [(_i, _name, stored, problem)] = list(view.session.iter_results(widget.current_params(), widget.feature_config()))
    assert problem is None and (stored.height, stored.width) == (240, 320) and len(stored.instances) == len(present)
    assert sum(m.area for m in stored.instances if m.source == "edited") == edited[0].area


def _clipped(mask, shape, factor=3):
    """Pixels of ``mask`` scaled up by ``factor`` that fall outside ``shape``."""
    big = np.repeat(np.repeat(mask, factor, axis=0), factor, axis=1)
    return int(big.sum() - big[: shape[0], : shape[1]].sum())


def test_coco_reader_opens_a_large_image_as_a_pyramid(tmp_path, small_limits):
    from engine.io.coco import build_coco_dataset, write_coco
    from engine.structures import ImageResult
    from freesolo_napari.reader import read_coco_layers

    rng = np.random.default_rng(1)
    Image.fromarray(make_sample(6, (240, 320), kind="photo")[0]).save(tmp_path / "a.png")
    instances = _random_instances(rng, (240, 320), n=4)
    write_coco(tmp_path / "a.json", build_coco_dataset([ImageResult("a.png", 240, 320, instances)]))
    (image, image_meta, _), (labels, labels_meta, kind) = read_coco_layers(tmp_path / "a.json")
    assert image_meta["multiscale"] and len(image) == 3 and kind == "labels"
    assert labels.shape == (80, 107) and labels_meta["scale"] == (3, 3)
    assert len(labels_meta["metadata"][large.INSTANCES_KEY]) == 4
