"""Refinement: each kept candidate's soft mask upsampled inside its box, guided-filtered, thresholded.

Only the kept masks reach full resolution, one crop at a time, so no full-size soft map is ever
held for all of them. The guided filter (``engine/ops/guided_filter.py``) snaps the blocky
stride-8 edges to colour edges; its guide statistics are memoised per image and radius. With
``split_components`` only the largest full-resolution part is kept, so every instance is one
connected object. The area, border and official filters then judge the crop in image space.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Protocol

import numpy as np
import torch

from engine.freemask.features import Features
from engine.freemask.stain import stain_view
from engine.geometry import cell_span
from engine.ops.guided_filter import GuideStats, upsample_crop
from engine.ops.masks import border_sides, largest_part
from engine.runtime.device import available_cpu_count

REFINE_RADIUS_AT_SCALE_1 = 12  # px; measured best on photo-like images at native resolution
MAX_MASK_THREADS = 4  # masks refined at once by default (capped by the usable cores)
LARGE_CROP_PX = 16_000_000  # masks whose box is larger are refined one at a time (each costs ~7 bytes a pixel)
_one_large_mask = threading.Lock()


class MaskFilters(Protocol):
    """What refinement and the filters read of ``FreeMaskParams``."""

    tau: float
    split_components: bool
    min_area: int
    max_area_frac: float
    max_border_sides: int
    center_y_min: float | None
    max_box_width: float | None


def auto_refine_radius(features: Features) -> int:
    return int(np.clip(round(REFINE_RADIUS_AT_SCALE_1 / max(features.input_scale, 1e-3)), 2, 32))


def _crop_box(binary: torch.Tensor, grid: tuple[int, int], image_size: tuple[int, int], margin_px: int):
    """The image window (y0, y1, x0, x1) of a key-grid mask, widened by ``margin_px`` and a cell."""
    ys, xs = torch.nonzero(binary.reshape(grid), as_tuple=True)
    y0, y1 = cell_span(int(ys.min()), int(ys.max()), grid[0], image_size[0], margin_px)
    x0, x1 = cell_span(int(xs.min()), int(xs.max()), grid[1], image_size[1], margin_px)
    return y0, y1, x0, x1


def guide_stats(features: Features, image: np.ndarray, radius: int, eps: float) -> GuideStats:
    """Guide statistics for ``image`` as the network saw it (``stain_view``), memoised on ``features``
    so slider moves reuse them."""
    fingerprint = hash(np.ascontiguousarray(image[::7, ::5]).tobytes())

    def compute() -> GuideStats:
        seen = np.asarray(stain_view(image, features.stain), dtype=np.uint8)
        return GuideStats.compute(seen, radius, eps)

    return features.memo.get("guide", (radius, eps, fingerprint), compute)


def full_resolution_mask(
    soft_q: torch.Tensor,
    binary_q: torch.Tensor,
    grid: tuple[int, int],
    image_size: tuple[int, int],
    p: MaskFilters,
    radius: int,
    guide: GuideStats | None,
) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """Upsample one candidate's soft mask inside its box, refine, threshold at τ.

    Returns the mask crop and its box (y0, y1, x0, x1). With ``split_components`` only the
    largest full-resolution part is kept, so every instance is one connected object.
    """
    box = _crop_box(binary_q, grid, image_size, radius if guide is not None else 0)
    if (box[1] - box[0]) * (box[3] - box[2]) > LARGE_CROP_PX:
        with _one_large_mask:
            return _refined(soft_q, grid, image_size, p, guide, box)
    return _refined(soft_q, grid, image_size, p, guide, box)


def _refined(soft_q: torch.Tensor, grid: tuple[int, int], image_size: tuple[int, int], p: MaskFilters,
             guide: GuideStats | None, box: tuple[int, int, int, int]) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """``full_resolution_mask`` inside ``box``."""
    y0, y1, x0, x1 = box
    if guide is not None:
        inside = guide.filter_soft(soft_q.reshape(grid), (y0, y1, x0, x1), tau=p.tau).numpy()
    else:
        inside = upsample_crop(soft_q.reshape(grid), image_size, (y0, y1, x0, x1)).numpy() >= p.tau
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if rows.size == 0:
        return None
    # the tight box: labelling, filters and the final copy then skip the empty margins
    inside = inside[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
    y0, y1, x0, x1 = y0 + rows[0], y0 + rows[-1] + 1, x0 + cols[0], x0 + cols[-1] + 1
    if p.split_components:
        inside = largest_part(inside)
    return inside, (int(y0), int(y1), int(x0), int(x1))


def passes_filters(
    crop: np.ndarray, box: tuple[int, int, int, int], p: MaskFilters, image_size: tuple[int, int], margin: int = 1
) -> bool:
    """Area, border and the official filters, on a mask crop placed at ``box`` in the image."""
    H, W = image_size
    y0, y1, x0, x1 = box
    area = int(crop.sum())
    if area < max(p.min_area, 2) or area > p.max_area_frac * H * W:
        return False
    if p.max_border_sides < 4 and border_sides(crop, margin, (y0, x0), (H, W)) > p.max_border_sides:
        return False
    if p.center_y_min is not None or p.max_box_width is not None:
        ys, xs = np.nonzero(crop)
        if p.center_y_min is not None and ys.mean() + y0 <= p.center_y_min * H:
            return False
        if p.max_box_width is not None and (xs.max() - xs.min() + 1) >= p.max_box_width * W:
            return False
    return True


@contextmanager
def mask_pool(threads: int | None, jobs: int):
    """A ``map`` that refines masks on a few threads (numpy, scipy and torch release the GIL
    in their inner loops, so two threads do about 1.5x the work of one), or in this thread."""
    n = min(MAX_MASK_THREADS, available_cpu_count()) if threads is None else int(threads)
    if n <= 1 or jobs <= 1:
        yield lambda fn, items: [fn(i) for i in items]
        return
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="freemask") as pool:
        yield pool.map
