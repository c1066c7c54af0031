"""The masks of a stack: one nD Labels layer with the image's leading shape, filled plane by plane.

Each plane's labels are numbered 1..n on their own, so each plane has its own features table
(score, maskness, ...). The tables, with the maskness text of each plane, are kept in the Labels
layer's metadata (:data:`PLANES_KEY`, plane index -> :class:`PlaneMasks`); the layer's
``features`` is the table of the plane napari's dims sliders show (:func:`follow_plane`), so
colouring by score and the table follow the slider. The maskness text of every plane is on one
Points layer, which napari slices like the labels. A plane never computed holds zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from freesolo_napari.layers import Overlay, instance_table, labels_name, show_scores
from freesolo_napari.planes import current_index

PLANES_KEY = "freesolo_planes"  # Labels metadata: plane index -> PlaneMasks
AXES_KEY = "freesolo_axes"  # Labels metadata: letters of the plane axes (for plane names)
SHOWN_KEY = "freesolo_shown_plane"  # Labels metadata: the plane whose table is ``features``


@dataclass(frozen=True)
class PlaneMasks:
    """What one plane's labels mean: its features table and its maskness text."""

    table: dict
    centres: np.ndarray  # (n, 2) y, x in the plane
    texts: list


def stack_planes(labels_layer) -> dict | None:
    """plane index -> PlaneMasks of a stack's Labels layer; None for the masks of a 2-D image."""
    return (getattr(labels_layer, "metadata", None) or {}).get(PLANES_KEY)


def show_plane_overlay(viewer, image_layer, view, leading: tuple[int, ...], overlay: Overlay):
    """Put ``overlay`` into plane ``view.index`` of the image's nD Labels layer (made on first use)."""
    name = labels_name(view.name)
    full = tuple(leading) + tuple(overlay.labels.shape)
    layer = viewer.layers[name] if name in viewer.layers else None
    if layer is not None and (tuple(layer.data.shape) != full or stack_planes(layer) is None):
        viewer.layers.remove(name)  # the image was read another way (2-D, other channels): start afresh
        layer = None
    if layer is None:
        data = np.zeros(full, overlay.labels.dtype)
        layer = viewer.add_labels(data, name=name, opacity=0.5, scale=image_layer.scale,
                                  translate=image_layer.translate, metadata={PLANES_KEY: {}})
    data = layer.data
    if np.iinfo(data.dtype).max < int(overlay.labels.max(initial=0)):
        data = data.astype(overlay.labels.dtype)
    data[tuple(view.index)] = overlay.labels
    layer.data = data  # napari redraws the plane
    planes = dict(stack_planes(layer))
    planes[tuple(view.index)] = PlaneMasks(overlay.table, overlay.centres, overlay.texts)
    layer.metadata[PLANES_KEY] = planes
    layer.metadata[AXES_KEY] = tuple(view.axes)
    follow_plane(viewer, layer, force=True)
    show_stack_scores(viewer, view.name, layer)
    return layer


def follow_plane(viewer, labels_layer, force: bool = False) -> bool:
    """Make ``features`` the table of the plane on screen; True if it changed."""
    planes = stack_planes(labels_layer)
    if planes is None:
        return False
    index = current_index(viewer, labels_layer, labels_layer.ndim - 2)
    if not force and labels_layer.metadata.get(SHOWN_KEY) == index:
        return False
    entry = planes.get(index)
    labels_layer.features = entry.table if entry is not None else instance_table([])
    labels_layer.metadata[SHOWN_KEY] = index
    return True


def show_stack_scores(viewer, image_name: str, labels_layer) -> None:
    """Every plane's maskness text on the image's Points layer, placed on its plane."""
    n = labels_layer.ndim
    rows, texts = [np.zeros((0, n))], []
    for index, entry in sorted((stack_planes(labels_layer) or {}).items()):
        centres = np.asarray(entry.centres, dtype=float).reshape(-1, 2)
        rows.append(np.column_stack([np.tile(np.asarray(index, float), (len(centres), 1)), centres]))
        texts += list(entry.texts)
    show_scores(viewer, image_name, np.concatenate(rows), texts,
                scale=labels_layer.scale, translate=labels_layer.translate)


def restore_stack(viewer, image_name: str, labels: np.ndarray, planes: dict):
    """Bring back a stack's masks and plane tables (Undo)."""
    layer = viewer.layers[labels_name(image_name)]
    layer.data = labels
    layer.metadata[PLANES_KEY] = dict(planes)
    follow_plane(viewer, layer, force=True)
    show_stack_scores(viewer, image_name, layer)
    return layer


def computed_planes(labels_layer) -> list[tuple[int, ...]]:
    """Planes with masks: every plane Free Mask filled, and any plane painted by hand."""
    data = np.asarray(labels_layer.data)
    lead = data.shape[:-2]
    painted = {tuple(int(i) for i in idx) for idx in np.argwhere(data.reshape(*lead, -1).any(axis=-1))} if lead else set()
    return sorted(set(stack_planes(labels_layer) or {}) | painted)
