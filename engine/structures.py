"""Plain data structures shared by every engine layer.

Kept free of torch so that COCO I/O, evaluation and the plugin can use them cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# extra-field marking a mask the student must neither learn nor push to background (see engine/selftrain/pseudo.py)
IGNORE_KEY = "ignore"

Box = tuple[int, int, int, int]  # (y0, y1, x0, x1), image pixels, end exclusive


def tight_crop(crop: np.ndarray, box: Box) -> tuple[np.ndarray, Box]:
    """``crop`` (bool, placed at ``box``) cut to the rows and columns that hold a pixel, and its box.

    The result owns its memory when it is smaller than ``crop`` (a view would keep a full-size
    parent alive). An empty mask becomes a 0×0 crop at the box's top-left corner.
    """
    y0, _y1, x0, _x1 = box
    rows, cols = np.flatnonzero(crop.any(axis=1)), np.flatnonzero(crop.any(axis=0))
    if rows.size == 0:
        return np.zeros((0, 0), dtype=bool), (y0, y0, x0, x0)
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    if (r1 - r0, c1 - c0) != crop.shape:
        crop = crop[r0:r1, c0:c1].copy()
    return crop, (y0 + r0, y0 + r1, x0 + c0, x0 + c1)


def paste(crop: np.ndarray, box: Box, shape: tuple[int, int]) -> np.ndarray:
    """The full-size bool (H, W) array of ``crop`` placed at ``box``."""
    full = np.zeros(shape, dtype=bool)
    y0, y1, x0, x1 = box
    full[y0:y1, x0:x1] = crop
    return full


@dataclass(eq=False)
class InstanceMask:
    """One predicted (or annotated) object, held as a boolean crop and where it sits.

    ``crop`` is the mask inside its tight bounding ``box`` (y0, y1, x0, x1) of an image of
    ``shape`` (H, W). Without ``box`` the given array is the whole image's mask
    (``InstanceMask(full_mask, score)``) and is cut to its tight crop; with ``box`` the crop
    must have the box's size (it is tightened too). ``mask`` builds the full-size array on
    every access: hot paths use ``crop`` and ``box``. ``score`` is what ranks the instance
    (for Free Mask: the Matrix-NMS decayed maskness). ``extra`` carries per-source details that
    exporters keep as extra annotation fields (e.g. ``scale``, ``query_yx``, ``embedding``).
    """

    crop: np.ndarray
    score: float
    maskness: float | None = None
    source: str = "freemask"
    extra: dict[str, Any] = field(default_factory=dict)
    box: Box | None = None
    shape: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        crop = np.asarray(self.crop)
        if crop.ndim != 2:
            raise ValueError(f"mask must be 2-D, got shape {crop.shape}")
        crop = crop.astype(bool, copy=False)
        if self.box is None:
            if self.shape is not None and tuple(self.shape) != crop.shape:
                raise ValueError(f"a mask without a box must be the whole image {tuple(self.shape)}, got {crop.shape}")
            box = (0, crop.shape[0], 0, crop.shape[1])
            shape = crop.shape
        else:
            box = tuple(int(v) for v in self.box)
            if self.shape is None:
                raise ValueError("a crop with a box needs the image shape")
            shape = tuple(int(v) for v in self.shape)
            y0, y1, x0, x1 = box
            if (y1 - y0, x1 - x0) != crop.shape or not (0 <= y0 <= y1 <= shape[0] and 0 <= x0 <= x1 <= shape[1]):
                raise ValueError(f"crop {crop.shape} does not fit box {box} in an image of {shape}")
        self.crop, self.box = tight_crop(crop, box)
        self.shape = (int(shape[0]), int(shape[1]))

    @property
    def mask(self) -> np.ndarray:
        """The full-size bool (H, W) mask, built on each access (hold it if you need it twice)."""
        return paste(self.crop, self.box, self.shape)

    def window(self) -> tuple[slice, slice]:
        """Slices of the image that hold the whole mask (its box)."""
        y0, y1, x0, x1 = self.box
        return slice(y0, y1), slice(x0, x1)

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.crop))

    def centre(self) -> tuple[float, float]:
        """Centre of mass (y, x) in image pixels, from the crop's row and column sums ((nan, nan) when empty)."""
        per_row, per_col = self.crop.sum(axis=1), self.crop.sum(axis=0)
        n = int(per_row.sum())
        if n == 0:
            return float("nan"), float("nan")
        return (self.box[0] + float(per_row @ np.arange(per_row.size)) / n,
                self.box[2] + float(per_col @ np.arange(per_col.size)) / n)


def is_ignored(inst: InstanceMask) -> bool:
    """Whether pseudo-label selection marked ``inst`` as an ignore region."""
    return bool(inst.extra.get(IGNORE_KEY, 0))


@dataclass
class ImageResult:
    """All instances found in one image, with the image's identity for export."""

    file_name: str  # relative to the input folder, POSIX separators
    height: int
    width: int
    instances: list[InstanceMask] = field(default_factory=list)
    # what Free Mask chose automatically for the image (engine/generators/choices.py, AutoChoices.as_dict);
    # None: not recorded (ground truth, a model's predictions)
    automatic: dict[str, Any] | None = None


class Coverage:
    """The union of the masks taken so far on one image: how much of a new mask it already covers."""

    def __init__(self, shape: tuple[int, int]):
        self.covered = np.zeros(shape, dtype=bool)

    def share(self, inst: InstanceMask) -> float:
        return np.count_nonzero(inst.crop & self.covered[inst.window()]) / max(inst.area, 1)

    def add(self, inst: InstanceMask) -> None:
        self.covered[inst.window()] |= inst.crop
