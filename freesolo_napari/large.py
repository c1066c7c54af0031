"""Very large images in napari: the image as a multiscale pyramid, its masks as a downsampled view.

No Qt, no napari calls. An image over :data:`LARGE_IMAGE_PX` pixels is handed to napari as a
pyramid of strided views of the one array (level k reads every 2**k-th pixel: no copy, no
allocation), so napari draws only the level and the part the canvas shows. Its masks are
painted at :func:`preview_factor` (every f-th pixel of each mask's crop) into a label image of at
most :data:`PREVIEW_SIDE` px per side, shown with a layer scale of f: each update allocates about
1/f² of a full-size label image. Exports read the full-resolution masks (``exchange``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from engine.io.masks import masks_to_label_image
from engine.structures import InstanceMask

LARGE_IMAGE_PX = 16_000_000  # images with more pixels are shown as a pyramid, their masks downsampled
PREVIEW_SIDE = 4096  # the downsampled masks' longest side (at most)
PYRAMID_SIDE = 1024  # the pyramid's coarsest level has a longest side of at most this
INSTANCES_KEY = "freesolo_instances"  # masks layer metadata: the full-resolution masks a preview shows
FACTOR_KEY = "freesolo_preview_factor"  # masks layer metadata: f of a downsampled view (absent: full size)


def is_large(shape: Sequence[int]) -> bool:
    """Whether an image of ``shape`` (H, W, ...) is shown as a pyramid with downsampled masks."""
    return int(shape[0]) * int(shape[1]) > LARGE_IMAGE_PX


def preview_factor(shape: Sequence[int]) -> int:
    """f of the masks' view of an image of ``shape``: 1 (full size) unless it is large."""
    if not is_large(shape):
        return 1
    return max(1, -(-max(int(shape[0]), int(shape[1])) // PREVIEW_SIDE))


def preview_shape(shape: Sequence[int], factor: int) -> tuple[int, int]:
    """(H, W) of the masks' view at ``factor``: pixel (i, j) is image pixel (i·f, j·f)."""
    return -(-int(shape[0]) // factor), -(-int(shape[1]) // factor)


def image_layer_data(image: np.ndarray) -> tuple[object, dict]:
    """(data, extra add_image keywords): a large image as a pyramid of strided views, else itself."""
    if not is_large(image.shape):
        return image, {}
    levels = [image]
    while max(levels[-1].shape[:2]) > PYRAMID_SIDE:
        step = 2 ** len(levels)
        levels.append(image[::step, ::step])
    extra = {"multiscale": True}
    if image.dtype == np.uint8:
        extra["contrast_limits"] = (0, 255)  # napari would otherwise scan a level for them
    return levels, extra


def preview_labels(instances: Sequence[InstanceMask], shape: Sequence[int], factor: int) -> np.ndarray:
    """The label image of ``instances`` (label k + 1 = instance k, higher score on top) sampled every
    ``factor``-th pixel: each crop is subsampled in place, no full-size array is made."""
    small = preview_shape(shape, factor)
    crops, boxes = [], []
    for m in instances:
        y0, _y1, x0, _x1 = m.box
        oy, ox = (-y0) % factor, (-x0) % factor  # the crop's first row and column on the grid
        sub = m.crop[oy::factor, ox::factor]
        ty, tx = (y0 + oy) // factor, (x0 + ox) // factor
        crops.append(sub)
        boxes.append((ty, ty + sub.shape[0], tx, tx + sub.shape[1]))
    if not crops:
        return np.zeros(small, np.uint16)
    return masks_to_label_image(crops, [m.score for m in instances], shape=small, boxes=boxes)


def upscale_crop(crop: np.ndarray, box: tuple[int, int, int, int], factor: int,
                 shape: Sequence[int]) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A crop of the masks' view (at ``factor``) as a full-resolution crop and box, clipped to ``shape``."""
    y0, y1, x0, x1 = (int(v) * factor for v in box)
    y1, x1 = min(y1, int(shape[0])), min(x1, int(shape[1]))
    big = np.repeat(np.repeat(crop, factor, axis=0), factor, axis=1)[: y1 - y0, : x1 - x0]
    return big, (y0, y1, x0, x1)
