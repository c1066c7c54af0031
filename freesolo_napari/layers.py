"""Turning engine instances into napari layers: one reused Labels layer per image."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from engine.io.masks import masks_to_label_image
from engine.structures import InstanceMask
from freesolo_napari.large import FACTOR_KEY, INSTANCES_KEY, preview_factor, preview_labels, preview_shape
from freesolo_napari.planes import layer_array

SCORE_COLORMAP = "viridis"  # low score dark purple, high score yellow
_RANDOM_COLORMAP_KEY = "freesolo_random_colormap"
# colour by source: the generators and the user's edits; other sources (a model round, an
# imported file) get one of OTHER_SOURCE_COLORS
SOURCE_COLORS = {"freemask": (1.0, 0.55, 0.0), "maskcut": (0.2, 0.6, 1.0), "classical": (0.3, 0.85, 0.3),
                 "grouping": (0.55, 0.25, 0.85), "edited": (1.0, 0.2, 0.6)}
OTHER_SOURCE_COLORS = ((0.6, 0.4, 0.9), (0.9, 0.9, 0.2), (0.2, 0.9, 0.9), (0.9, 0.3, 0.3), (0.6, 0.6, 0.4))


def labels_name(image_name: str) -> str:
    return f"{image_name} · free masks"


def points_name(image_name: str) -> str:
    return f"{image_name} · maskness"


def image_from_layer(layer) -> np.ndarray:
    """RGB uint8 (H, W, 3) from a napari image layer (2D, grayscale or RGB/RGBA)."""
    from engine.io.images import to_uint8_rgb

    data = np.asarray(layer_array(layer))
    if data.ndim == 3 and data.shape[-1] not in (3, 4) or data.ndim > 3:
        raise ValueError(f"layer '{layer.name}' is a stack (shape {data.shape}), not a 2D image: "
                         "Run Free Mask runs on the plane on screen, 'all planes of this image' on every plane")
    return to_uint8_rgb(data)


def image_name_of(layer_name: str) -> str:
    """The image a layer belongs to: its own name, or the name its masks/text layers derive from."""
    for suffix in (labels_name(""), points_name("")):
        if layer_name.endswith(suffix):
            return layer_name[: -len(suffix)]
    return layer_name


def instance_table(instances: Sequence[InstanceMask]) -> dict[str, np.ndarray]:
    """The Labels layer's ``features``: one row per label value (row 0 = background)."""
    n = len(instances)
    areas = [m.area for m in instances]
    return {
        "index": np.arange(n + 1),
        "score": np.array([0.0] + [m.score for m in instances]),
        "maskness": np.array([0.0] + [m.maskness or 0.0 for m in instances]),
        "scale": np.array([0.0] + [float(m.extra.get("scale", 0.0)) for m in instances]),
        "area": np.array([0] + areas),
        "source": np.array(["background"] + [m.source for m in instances], dtype=object),
    }


def instances_to_labels(instances: Sequence[InstanceMask], shape: tuple[int, int]) -> np.ndarray:
    """Label image of ``instances`` (label k + 1 = instance k; higher score on top)."""
    if not instances:
        return np.zeros(tuple(shape), np.uint16)
    return masks_to_label_image([m.crop for m in instances], [m.score for m in instances], shape=shape,
                                boxes=[m.box for m in instances])


@dataclass
class Overlay:
    """Everything an image's layers show for a set of instances, ready to hand to napari.

    Built by :func:`prepare_overlay` in the worker thread that produced the instances, so the
    GUI thread only swaps layer data (painting 20 full-size masks, their areas and centres
    would otherwise cost it tens of milliseconds per slider move).
    """

    labels: np.ndarray  # (H, W) label image, label k + 1 = instance k (a large image's: every f-th pixel)
    table: dict[str, np.ndarray]  # the Labels layer's features
    centres: np.ndarray  # (n, 2) where each mask's maskness text goes (image pixels)
    texts: list[str]
    factor: int = 1  # f of a large image's downsampled masks (``large.preview_factor``); 1: full size
    instances: tuple = ()  # with f > 1: the full-resolution masks, for exports


def prepare_overlay(instances: Sequence[InstanceMask], shape: tuple[int, int], preview: bool = True) -> Overlay:
    """Label image, features table and text positions of ``instances`` (no napari calls: any thread).

    With ``preview`` a large image's label image is downsampled (``large.preview_labels``)."""
    centres = np.array([m.centre() if m.area else (0.0, 0.0) for m in instances], dtype=float).reshape(-1, 2)
    factor = preview_factor(shape) if preview else 1
    labels = instances_to_labels(instances, shape) if factor == 1 else preview_labels(instances, shape, factor)
    return Overlay(labels, instance_table(instances), centres, [f"{m.maskness or 0:.2f}" for m in instances],
                   factor, tuple(instances) if factor > 1 else ())


@dataclass
class FreeMaskUpdate:
    """Free Mask's result for one image, with what it takes to show it (built in a worker).

    ``params`` and ``generators`` travel with the result, so the panel knows which settings the
    overlay on screen was made with even when several updates of one image are in flight.
    """

    name: str  # the image layer's name
    result: object  # engine.freemask.postprocess.FreeMaskResult
    overlay: Overlay
    params: object  # the engine.freemask.postprocess.FreeMaskParams it was made with
    view: object = None  # the planes.View (plane, channel) it was computed for; None: the 2-D image in colour
    generators: object = None  # the engine.generators.merge.GeneratorConfig it was made with (None: Free Mask)
    choices: object = None  # engine.generators.choices.AutoChoices: what was chosen automatically

    @property
    def key(self) -> str:
        """The panel state's key of what this update shows (``planes.View.key``)."""
        return self.name if self.view is None else self.view.key


def freemask_update(name: str, features, params, image: np.ndarray, view=None, generators=None) -> FreeMaskUpdate:
    """The chosen generators' masks on cached ``features`` (the whole image's, or its windows'), merged
    by the engine (post-processing only), and the overlay of its masks (no napari calls: any thread)."""
    from engine.generators.image import generate_image

    result, choices = generate_image(features, params, image, generators)
    preview = view is None or not view.index  # a stack's planes go into one nD layer at full size
    return FreeMaskUpdate(name, result, prepare_overlay(result.instances, image.shape[:2], preview), params, view,
                          generators, choices)


def show_instances(viewer, image_layer, instances: Sequence[InstanceMask]):
    """Create or update the image's Labels layer (reused, never duplicated) and its score text."""
    h, w = layer_array(image_layer).shape[:2]
    return show_overlay(viewer, image_layer.name, prepare_overlay(instances, (h, w)))


def show_overlay(viewer, image_name: str, overlay: Overlay):
    """Put a prepared :class:`Overlay` into the image's reused Labels and text layers."""
    layer = set_labels(viewer, image_name, overlay.labels, overlay.table, scores=False, instances=overlay.instances)
    show_scores(viewer, image_name, overlay.centres, overlay.texts)
    return layer


def set_labels(viewer, image_name: str, labels: np.ndarray, table, *, scores: bool = True, instances=()):
    """Put ``labels`` with its ``features`` table into the image's (reused) Labels layer.

    A large image's downsampled labels (``large.preview_shape``) get the layer scale that lays them
    over the image, and ``instances`` (their full-resolution masks) go into the layer's metadata.
    With ``scores`` the maskness text is rebuilt from the labels and the table's maskness column.
    """
    name = labels_name(image_name)
    factor = labels_factor(viewer, image_name, labels)
    if name in viewer.layers and (np.ndim(viewer.layers[name].data) != labels.ndim
                                  or viewer.layers[name].metadata.get(FACTOR_KEY, 1) != factor):
        viewer.layers.remove(name)  # a stack's masks (the image is now one 2-D image), or another scale
    if name in viewer.layers:
        layer = viewer.layers[name]
        layer.data = labels
        layer.features = table
    else:
        layer = viewer.add_labels(labels, name=name, opacity=0.5, features=table,
                                  scale=(factor,) * labels.ndim, metadata={FACTOR_KEY: factor})
    layer.metadata[INSTANCES_KEY] = tuple(instances) if factor > 1 else ()
    if scores:
        show_label_scores(viewer, image_name, layer)
    return layer


def labels_factor(viewer, image_name: str, labels: np.ndarray) -> int:
    """f of ``labels`` as masks of image layer ``image_name``: >1 when they are its downsampled view."""
    if labels.ndim != 2 or image_name not in viewer.layers:
        return 1
    shape = layer_array(viewer.layers[image_name]).shape
    factor = preview_factor(shape)
    return factor if factor > 1 and labels.shape == preview_shape(shape, factor) else 1


def show_label_scores(viewer, image_name: str, labels_layer) -> None:
    """Maskness text at the centre of every label painted in ``labels_layer``."""
    from scipy import ndimage

    data = np.asarray(labels_layer.data)
    ids = [int(i) for i in np.unique(data) if i > 0]
    centres = np.array(ndimage.center_of_mass(data > 0, data, ids)).reshape(-1, 2) if ids else np.zeros((0, 2))
    centres = centres * labels_layer.metadata.get(FACTOR_KEY, 1)  # image pixels
    table = labels_layer.features
    rows = {}
    if "index" in getattr(table, "columns", []) and "maskness" in table.columns:
        rows = dict(zip(table["index"].astype(int), table["maskness"].astype(float)))
    show_scores(viewer, image_name, centres, [f"{rows[i]:.2f}" if i in rows else "" for i in ids])


def show_scores(viewer, image_name: str, centres: np.ndarray, text: list[str], **placed) -> None:
    """Maskness at each mask's centre, as text on a Points layer (reused; ``placed``: its scale and
    translate when it is made). A layer of other dimensions (a 2-D image became a stack) is replaced."""
    name = points_name(image_name)
    feats = {"maskness_text": np.array(text, dtype=object)}
    if name in viewer.layers and viewer.layers[name].ndim != centres.shape[1]:
        viewer.layers.remove(name)
    if name in viewer.layers:
        layer = viewer.layers[name]
        layer.data = centres
        layer.features = feats  # the text template reads this column: no need to set the text again
        if getattr(layer.text.string, "format", None) != "{maskness_text}":
            layer.text = {"string": "{maskness_text}", "color": "white", "size": 9}
    else:
        viewer.add_points(
            centres, name=name, size=2, face_color="transparent", border_color="transparent",
            features=feats, text={"string": "{maskness_text}", "color": "white", "size": 9}, **placed,
        )


def score_colors(table) -> dict:
    """Label value -> RGBA from the score colormap (labels without a score row are grey)."""
    from napari.utils.colormaps import ensure_colormap

    colors = _base_colors()
    if "index" not in getattr(table, "columns", []) or "score" not in table.columns:
        return colors
    ids = np.asarray(table["index"], dtype=np.int64)
    rgba = ensure_colormap(SCORE_COLORMAP).map(np.clip(np.asarray(table["score"], dtype=float), 0.0, 1.0))
    for label, color in zip(ids, rgba):
        if label > 0:
            colors[int(label)] = np.asarray(color, dtype=float)
    return colors


def source_color(source: str) -> np.ndarray:
    """RGBA of a mask source: fixed for the generators and edits, else picked from a palette by
    the name (the same colour in every layer and session)."""
    rgb = SOURCE_COLORS.get(source) or OTHER_SOURCE_COLORS[zlib.crc32(source.encode()) % len(OTHER_SOURCE_COLORS)]
    return np.array([*rgb, 1.0])


def source_colors(table) -> dict:
    """Label value -> RGBA of its mask's ``source`` (labels without a row are grey)."""
    colors = _base_colors()
    if "index" not in getattr(table, "columns", []) or "source" not in table.columns:
        return colors
    for label, source in zip(np.asarray(table["index"], dtype=np.int64), table["source"]):
        if label > 0:
            colors[int(label)] = source_color(str(source))
    return colors


def _base_colors() -> dict:
    return {None: np.array([0.6, 0.6, 0.6, 1.0]), 0: np.zeros(4)}


COLORINGS = {"score": score_colors, "source": source_colors}


def color_labels(labels_layer, by: str | None) -> None:
    """Colour each label by its ``by`` column ('score': viridis, 'source': one colour per source),
    or (None) go back to napari's random label colours."""
    from napari.utils.colormaps import DirectLabelColormap, label_colormap

    if by is not None:
        if not isinstance(labels_layer.colormap, DirectLabelColormap):
            labels_layer.metadata[_RANDOM_COLORMAP_KEY] = labels_layer.colormap
        labels_layer.colormap = DirectLabelColormap(color_dict=COLORINGS[by](labels_layer.features))
    elif isinstance(labels_layer.colormap, DirectLabelColormap):
        labels_layer.colormap = labels_layer.metadata.pop(_RANDOM_COLORMAP_KEY, None) or label_colormap(49)
