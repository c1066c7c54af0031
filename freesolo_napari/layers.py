"""Turning engine instances into napari layers: one reused Labels layer per image."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from engine.masks import masks_to_label_image
from engine.structures import InstanceMask


def labels_name(image_name: str) -> str:
    return f"{image_name} · free masks"


def instance_table(instances: Sequence[InstanceMask]) -> dict[str, np.ndarray]:
    """The Labels layer's ``features``: one row per label value (row 0 = background)."""
    n = len(instances)
    return {
        "index": np.arange(n + 1),
        "score": np.array([0.0] + [m.score for m in instances]),
        "maskness": np.array([0.0] + [m.maskness or 0.0 for m in instances]),
        "scale": np.array([0.0] + [float(m.extra.get("scale", 0.0)) for m in instances]),
        "area": np.array([0] + [m.area for m in instances]),
        "source": np.array(["background"] + [m.source for m in instances], dtype=object),
    }


def show_instances(viewer, image_layer, instances: Sequence[InstanceMask]):
    """Create or update the image's Labels layer (reused, never duplicated) and its score text."""
    h, w = np.asarray(image_layer.data).shape[:2]
    labels = (
        masks_to_label_image([m.mask for m in instances], [m.score for m in instances])
        if instances
        else np.zeros((h, w), np.uint16)
    )
    name = labels_name(image_layer.name)
    table = instance_table(instances)
    if name in viewer.layers:
        layer = viewer.layers[name]
        layer.data = labels
        layer.features = table
    else:
        layer = viewer.add_labels(labels, name=name, opacity=0.5, features=table)
    _show_scores(viewer, image_layer.name, instances)
    return layer


def _show_scores(viewer, image_name: str, instances: Sequence[InstanceMask]) -> None:
    """Maskness at each mask's centre, as text on a Points layer (reused)."""
    name = f"{image_name} · maskness"
    centres = np.array([np.argwhere(m.mask).mean(axis=0) for m in instances]) if instances else np.zeros((0, 2))
    text = [f"{m.maskness or 0:.2f}" for m in instances]
    feats = {"maskness_text": np.array(text, dtype=object)}
    if name in viewer.layers:
        layer = viewer.layers[name]
        layer.data = centres
        layer.features = feats
        layer.text = {"string": "{maskness_text}", "color": "white", "size": 9}
    else:
        viewer.add_points(
            centres, name=name, size=2, face_color="transparent", border_color="transparent",
            features=feats, text={"string": "{maskness_text}", "color": "white", "size": 9},
        )
