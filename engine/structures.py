"""Plain data structures shared by every engine layer.

Kept free of torch so that COCO I/O, evaluation and the plugin can use them cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# extra-field marking a mask the student must neither learn nor push to background (see engine/selftrain/pseudo.py)
IGNORE_KEY = "ignore"


@dataclass
class InstanceMask:
    """One predicted (or annotated) object.

    ``mask`` is a full-resolution boolean array (H, W). ``score`` is what ranks the
    instance (for Free Mask: the Matrix-NMS decayed maskness). ``extra`` carries
    per-source details that exporters keep as extra annotation fields
    (e.g. ``scale``, ``query_yx``, ``embedding``).
    """

    mask: np.ndarray
    score: float
    maskness: float | None = None
    source: str = "freemask"
    extra: dict[str, Any] = field(default_factory=dict)
    # (y0, y1, x0, x1): a window known to hold the whole mask, when the producer knows it. Only a
    # speed hint (sums, centres and painting look inside it); never exported.
    box: tuple[int, int, int, int] | None = field(default=None, repr=False, compare=False)

    def window(self) -> tuple[slice, slice]:
        """Slices of the image that contain the mask (the whole image without a ``box``)."""
        if self.box is None:
            return slice(None), slice(None)
        y0, y1, x0, x1 = self.box
        return slice(y0, y1), slice(x0, x1)

    @property
    def area(self) -> int:
        return int(self.mask[self.window()].sum())


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
