"""Plain data structures shared by every engine layer.

Kept free of torch so that COCO I/O, evaluation and the plugin can use them cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


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

    @property
    def area(self) -> int:
        return int(self.mask.sum())


@dataclass
class ImageResult:
    """All instances found in one image, with the image's identity for export."""

    file_name: str  # relative to the input folder, POSIX separators
    height: int
    width: int
    instances: list[InstanceMask] = field(default_factory=list)
