"""A self-training round's masks beside what is on screen: preview layers, before they are accepted (no Qt).

A round's COCO file names images as the training folder does (``img.png``, a stack's plane
``movie.tif[t=1]``). :func:`round_targets` finds the open image (plane) each one belongs to;
:func:`show_preview` lays that round's masks over the image as a Labels layer of its own,
``"<image> · round K preview"`` (outlines, so the masks on screen stay visible under them), which
never touches the image's masks layer. Accepting the round (``sections.round_loader``) is what
puts its masks into the masks layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.io.stacks import Plane
from engine.structures import ImageResult
from freesolo_napari.exchange import find_image_layer, image_layers_by_file
from freesolo_napari.layers import instances_to_labels, prepare_overlay
from freesolo_napari.planes import channel_choice, layout_of, plane_shape, plane_view

PREVIEW_KEY = "freesolo_round_preview"  # Labels metadata of a preview layer: (image layer name, round K)


@dataclass(frozen=True)
class Target:
    """Where one image of a round goes: the open image layer and its plane (``()``: a 2-D image)."""

    file_name: str  # as the round names it
    image: str  # the image layer's name
    index: tuple[int, ...]
    plane: Plane
    result: ImageResult


def preview_name(image_name: str, k: int) -> str:
    return f"{image_name} · round {k} preview"


def _target(viewer, state, layer, name: str, plane: Plane, res: ImageResult) -> Target | None:
    try:
        layout = layout_of(layer, channel_choice(state, layer))
        view = plane_view(viewer, layer, state, plane) if plane.index else None
    except ValueError:
        return None
    if bool(plane.index) != bool(layout.leading) or (plane.index and view is None):
        return None  # a plane's masks onto a 2-D image, or a 2-D image's onto a stack
    if plane_shape(layer, layout) != (res.height, res.width):
        return None
    return Target(name, layer.name, tuple(view.index) if view is not None else (), plane, res)


def round_targets(viewer, state, results: dict[str, ImageResult]) -> list[Target]:
    """The round's images that are open (a stack's planes on their planes), of the right size."""
    layers = image_layers_by_file(viewer)
    targets = []
    for name, res in results.items():
        layer, plane = find_image_layer(layers, name)
        target = _target(viewer, state, layer, name, plane, res) if layer is not None else None
        if target is not None:
            targets.append(target)
    return targets


def show_preview(viewer, state, k: int, image_name: str, targets: list[Target]):
    """The round's masks of image ``image_name`` (its ``targets``: one, or a stack's planes) as a
    preview Labels layer over it (replaced if there is one); returns the layer."""
    image = viewer.layers[image_name]
    layout = layout_of(image, channel_choice(state, image))
    shape = plane_shape(image, layout)
    name = preview_name(image_name, k)
    if name in viewer.layers:
        viewer.layers.remove(name)
    factor = 1
    if layout.leading:
        data = np.zeros(tuple(layout.leading) + shape, np.int32)
        for t in targets:
            data[t.index] = instances_to_labels(t.result.instances, shape)
    else:
        overlay = prepare_overlay(targets[0].result.instances, shape)  # a large image: downsampled
        data, factor = overlay.labels, overlay.factor
    ndim = data.ndim
    layer = viewer.add_labels(data, name=name, opacity=0.9, scale=tuple(np.asarray(image.scale[-ndim:]) * factor),
                              translate=tuple(image.translate[-ndim:]), metadata={PREVIEW_KEY: (image_name, k)})
    layer.contour = 2  # outlines: the masks on screen stay visible beneath
    return layer


def preview_layers(viewer) -> list:
    """The preview layers in the viewer."""
    return [layer for layer in viewer.layers if PREVIEW_KEY in (getattr(layer, "metadata", None) or {})]


def by_image(targets: list[Target]) -> dict[str, list[Target]]:
    """Targets grouped by image layer name."""
    groups: dict[str, list[Target]] = {}
    for t in targets:
        groups.setdefault(t.image, []).append(t)
    return groups

