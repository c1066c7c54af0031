"""COCO export and import for the panel: Labels layers <-> engine ImageResults.

Only glue: encoding, validation and atomic writing are the engine's (``engine.io.coco``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from engine.io.coco import build_coco_dataset, load_image_results, write_coco
from engine.io.masks import label_image_to_crops
from engine.io.stacks import split_plane_name
from engine.structures import ImageResult, InstanceMask
from freesolo_napari.large import FACTOR_KEY, INSTANCES_KEY, upscale_crop
from freesolo_napari.layers import instance_table, labels_name, show_instances
from freesolo_napari.planes import layer_array


def image_file_name(layer) -> str:
    """The name an image layer is exported under: the COCO file name it was loaded with (folder
    and COCO reader), else its file's name, else the layer name + .png."""
    given = (getattr(layer, "metadata", None) or {}).get("file_name")
    if given:
        return str(given)
    path = getattr(getattr(layer, "source", None), "path", None)
    return Path(path).name if path else f"{layer.name}.png"


def layer_result(image_layer, labels_layer, automatic: np.ndarray | None = None) -> ImageResult:
    """The masks currently painted in ``labels_layer`` (user edits included) as an ImageResult."""
    meta = labels_layer.metadata
    if meta.get(FACTOR_KEY, 1) > 1:
        return preview_result(image_file_name(image_layer), labels_layer.data, labels_layer.features, automatic,
                              layer_array(image_layer).shape[:2], meta[FACTOR_KEY], meta.get(INSTANCES_KEY) or ())
    return labels_result(image_file_name(image_layer), np.asarray(labels_layer.data), labels_layer.features, automatic)


def _unchanged(automatic: np.ndarray, auto_areas: np.ndarray, label_id: int, crop: np.ndarray, box) -> bool:
    """Whether label ``label_id`` of ``automatic`` (pixel counts ``auto_areas``) is exactly ``crop`` at ``box``."""
    y0, y1, x0, x1 = box
    area = int(auto_areas[label_id]) if label_id < auto_areas.size else 0
    return area == int(np.count_nonzero(crop)) and np.array_equal(automatic[y0:y1, x0:x1] == label_id, crop)


def labels_result(file_name: str, data: np.ndarray, table, automatic: np.ndarray | None = None) -> ImageResult:
    """A label image with its ``features`` table as an ImageResult.

    A label whose pixels differ from the last automatic result (``automatic``) is marked
    ``source="edited"``; new labels painted by hand are edited too.
    """
    h, w = data.shape[:2]
    rows = {int(i): k for k, i in enumerate(table["index"])} if "index" in getattr(table, "columns", []) else {}
    instances = []
    auto_areas = np.bincount(np.clip(automatic, 0, None).ravel()) if automatic is not None else None
    for label_id, crop, box in label_image_to_crops(data):
        row = rows.get(int(label_id))
        score = float(table["score"].iloc[row]) if row is not None else 1.0
        mness = float(table["maskness"].iloc[row]) if row is not None else None
        source = str(table["source"].iloc[row]) if row is not None else "edited"
        if auto_areas is not None and not _unchanged(automatic, auto_areas, label_id, crop, box):
            source = "edited"
        instances.append(InstanceMask(crop, score=score, maskness=mness, source=source, box=box, shape=(h, w)))
    return ImageResult(file_name, h, w, instances)


def preview_result(file_name: str, data: np.ndarray, table, automatic: np.ndarray | None, shape,
                   factor: int, full=()) -> ImageResult:
    """A large image's downsampled masks ``data`` (every ``factor``-th pixel, ``large``) at full resolution,
    ``shape`` (H, W): a label unchanged since the last automatic result whose full-resolution mask is in
    ``full`` (label k + 1 = ``full[k]``) is that mask; any other label is its pixels scaled up."""
    data = np.asarray(data)
    small = labels_result(file_name, data, table, automatic)
    instances = []
    for (label_id, crop, box), m in zip(label_image_to_crops(data), small.instances):
        if m.source != "edited" and 1 <= label_id <= len(full):
            instances.append(full[label_id - 1])
            continue
        big, big_box = upscale_crop(crop, box, factor, shape)
        instances.append(InstanceMask(big, score=m.score, maskness=m.maskness, source=m.source, box=big_box,
                                      shape=tuple(shape)))
    return ImageResult(file_name, int(shape[0]), int(shape[1]), instances)


def open_results(viewer, automatic: dict[str, np.ndarray] | None = None,
                 names: list[str] | None = None, choices: dict | None = None) -> list[ImageResult]:
    """One ImageResult per image layer that has a masks layer (only ``names`` when given); with
    ``choices`` (the panel's automatic choices per view key) each result records its image's
    choices as ``automatic``, as ``freesolo freemask`` does."""
    from napari.layers import Image

    results = []
    for layer in viewer.layers:
        if names is not None and layer.name not in names:
            continue
        if isinstance(layer, Image) and labels_name(layer.name) in viewer.layers:
            auto = (automatic or {}).get(layer.name)
            labels = viewer.layers[labels_name(layer.name)]
            if np.ndim(labels.data) > 2:
                results.extend(stack_results(layer, labels, auto, choices=choices))
            else:
                results.append(_with_choices(layer_result(layer, labels, auto), (choices or {}).get(layer.name)))
    return results


def _with_choices(result: ImageResult, choices) -> ImageResult:
    """``result`` with the automatic choices (``engine.generators.choices.AutoChoices``) of its image."""
    return result if choices is None else replace(result, automatic=choices.as_dict())


def stack_results(image_layer, labels_layer, automatic: np.ndarray | None = None,
                  planes: list[tuple[int, ...]] | None = None, choices: dict | None = None) -> list[ImageResult]:
    """One ImageResult per plane of a stack's masks that has masks (computed or painted; only the
    ``planes`` given, when given), named as the command line names planes: ``stack.tif[z=3]``
    (``engine.io.stacks.plane_name``); ``choices`` as in ``open_results``."""
    import pandas as pd

    from freesolo_napari.planes import View, default_letters
    from freesolo_napari.stack_layers import AXES_KEY, computed_planes, stack_planes

    data = np.asarray(labels_layer.data)
    n = data.ndim - 2
    axes = tuple(labels_layer.metadata.get(AXES_KEY) or default_letters(n))
    stored = stack_planes(labels_layer) or {}
    base = image_file_name(image_layer)
    if automatic is not None and automatic.shape != data.shape:
        automatic = None
    results = []
    for index in computed_planes(labels_layer) if planes is None else planes:
        entry = stored.get(index)
        table = pd.DataFrame(entry.table if entry is not None else instance_table([]))
        view = View(image_layer.name, index, None, axes)
        result = labels_result(view.file_name(base), data[index], table, None if automatic is None else automatic[index])
        results.append(_with_choices(result, (choices or {}).get(view.key)))
    return results


def export_coco(viewer, path: str | Path, *, segmentation: str = "rle", overwrite: bool = False,
                automatic: dict[str, np.ndarray] | None = None, choices: dict | None = None) -> tuple[Path, int]:
    """Write every image that has a masks layer; returns (path, number of images)."""
    results = open_results(viewer, automatic, choices=choices)
    if not results:
        raise ValueError("nothing to export: run Free Mask (or import masks) on an image first")
    written = write_coco(path, build_coco_dataset(results, segmentation=segmentation,
                                                  info={"description": "freesolo-napari export"}), overwrite=overwrite)
    return written, len(results)


def image_layers_by_file(viewer) -> dict:
    """Open image layers by file name (``image_file_name``), file stem and layer name (the first layer wins)."""
    from napari.layers import Image

    layers = {}
    for layer in viewer.layers:
        if isinstance(layer, Image):
            for key in (image_file_name(layer), Path(image_file_name(layer)).stem, layer.name):
                layers.setdefault(key, layer)
    return layers


def find_image_layer(layers: dict, file_name: str):
    """(the open image layer of COCO image ``file_name``, its plane): a stack's plane ``movie.tif[t=1]`` is
    looked up by its file; (None, plane) when no open image has this name. ``layers``: ``image_layers_by_file``."""
    base, plane = split_plane_name(file_name)
    return layers.get(base) or layers.get(Path(base).name) or layers.get(Path(base).stem), plane


def import_coco(viewer, path: str | Path, show_plane: Callable[..., bool] | None = None) -> tuple[int, list[str]]:
    """Show a COCO file's masks on the open images whose file (or layer) name matches.

    A stack's plane (``movie.tif[t=1]``, as exports name them) goes onto that plane of the open stack
    through ``show_plane(layer name, instances, plane) -> bool`` (the panel's; False: no such plane, or
    another size). Returns (images matched, problems). Entries the engine's reader rejects are
    reported, never fatal; images of the file that are not open are listed as problems.
    """
    problems: list[str] = []
    results = load_image_results(path, source=None, problems=problems)
    layers = image_layers_by_file(viewer)
    matched = 0
    for name, res in results.items():
        layer, plane = find_image_layer(layers, name)
        if layer is None:
            problems.append(f"{name}: no open image with this name")
            continue
        if plane.index:
            if show_plane is not None and show_plane(layer.name, res.instances, plane):
                matched += 1
            else:
                problems.append(f"{name}: '{layer.name}' has no such plane of size {res.height}×{res.width}")
            continue
        if layer_array(layer).shape[:2] != (res.height, res.width):
            problems.append(f"{name}: size {res.height}×{res.width} does not match the open image")
            continue
        show_instances(viewer, layer, res.instances)
        matched += 1
    return matched, problems
