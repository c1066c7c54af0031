"""Cell grids and image pixels, and image resizing: one place for each convention.

A grid of ``n`` cells laid over ``N`` pixels (a key map over its image, a query grid over the key
map) has cells ``N / n`` pixels wide and follows ``F.interpolate``'s ``align_corners=False``:

    centre of cell c        = (c + 0.5) * N / n - 0.5        (pixel coordinates)
    cell holding pixel p    = floor((p + 0.5) * n / N), clipped to [0, n - 1]
    pixels covered by c0..c1 = [floor(c0 * N / n), ceil((c1 + 1) * N / n))
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def cell_centre(c, cells: int, pixels: int):
    """Pixel coordinate of the centre of cell ``c`` (a number or a tensor of them)."""
    return (c + 0.5) * pixels / cells - 0.5


def pixel_cell(p: float, cells: int, pixels: int) -> int:
    """The cell that holds pixel coordinate ``p``."""
    return int(np.clip(math.floor((p + 0.5) * cells / pixels), 0, cells - 1))


def cell_span(c0: int, c1: int, cells: int, pixels: int, margin: int = 0) -> tuple[int, int]:
    """Pixels [start, stop) covered by cells ``c0..c1``, widened by ``margin`` px and one cell each side."""
    size = pixels / cells
    start = max(0, math.floor(c0 * size) - margin - int(size))
    stop = min(pixels, math.ceil((c1 + 1) * size) + margin + int(size))
    return start, stop


def resize_image(image: np.ndarray, size: tuple[int, int], rows_per_band: int = 1024) -> torch.Tensor:
    """uint8 (H, W, 3) -> uint8-range float tensor (1, 3, h, w), bilinear, antialiased when shrinking.

    Shrinking resizes the width band by band (``rows_per_band`` image rows), then the height: the
    same numbers as one antialiased resize (torch resizes the two axes one after the other), but
    a slide-sized image never gets a full-size float copy.
    """
    H, W = image.shape[:2]
    size = (int(size[0]), int(size[1]))

    def band(r0: int, r1: int) -> torch.Tensor:
        return torch.from_numpy(np.array(image[r0:r1], dtype=np.uint8, copy=True)).permute(2, 0, 1)[None].float()

    if (H, W) == size:
        return band(0, H).clamp(0, 255)
    if size[0] >= H and size[1] >= W:
        return F.interpolate(band(0, H), size=size, mode="bilinear", align_corners=False).clamp(0, 255)
    narrow = torch.cat([F.interpolate(band(r0, min(H, r0 + rows_per_band)), size=(min(H, r0 + rows_per_band) - r0, size[1]),
                                      mode="bilinear", align_corners=False, antialias=True)
                        for r0 in range(0, H, rows_per_band)], dim=2)
    return F.interpolate(narrow, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 255)


def letterbox(image: np.ndarray, size: int, scale: float | None = None) -> tuple[torch.Tensor, float, tuple[int, int]]:
    """Resize so the long side is ``size`` (or by ``scale``, when that fits), pad to size×size:
    (uint8 (3,S,S), scale, (h, w))."""
    h, w = image.shape[:2]
    scale = size / max(h, w) if scale is None else min(scale, size / max(h, w))
    nh, nw = min(size, max(1, round(h * scale))), min(size, max(1, round(w * scale)))
    out = torch.zeros(3, size, size, dtype=torch.uint8)
    out[:, :nh, :nw] = resize_image(image, (nh, nw))[0].round().clamp(0, 255).to(torch.uint8)
    return out, scale, (nh, nw)
