"""Shape measurements on boolean masks, shared by Free Mask, pseudo-label selection and the baselines."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

EIGHT = np.ones((3, 3), bool)  # 8-connectivity


def largest_part(mask: np.ndarray) -> np.ndarray:
    """The biggest 8-connected part of a boolean mask (the mask itself when it has at most one)."""
    labels, n = ndimage.label(mask, structure=EIGHT)
    if n <= 1:
        return mask
    return labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)


def border_sides(mask: np.ndarray, margin: int = 1, offset: tuple[int, int] = (0, 0),
                 image_size: tuple[int, int] | None = None) -> int:
    """How many of the image's four sides the mask reaches, within ``margin`` px of each.

    ``mask`` may be a crop whose top-left pixel sits at ``offset`` (y, x) in an image of
    ``image_size`` (H, W); by default it is the whole image. An empty mask touches no side.
    """
    h, w = image_size or mask.shape[:2]
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return 0
    y0, x0 = offset
    m = max(1, int(margin))
    return (int(rows[0] + y0 < m) + int(rows[-1] + y0 >= h - m)
            + int(cols[0] + x0 < m) + int(cols[-1] + x0 >= w - m))
