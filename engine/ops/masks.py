"""Shape measurements on boolean masks, shared by Free Mask, pseudo-label selection and the baselines."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

BANDED_PARTS_PX = 16_000_000  # masks larger than this are labelled in bands of about BAND_PX pixels
BAND_PX = 4_000_000


def largest_part(mask: np.ndarray, connectivity: int = 2, band_px: int = BAND_PX,
                 banded_over_px: int = BANDED_PARTS_PX) -> np.ndarray:
    """The biggest connected part of a boolean mask (the mask itself when it has at most one).

    ``connectivity`` 2: 8-connected (diagonal neighbours join); 1: 4-connected. Ties go to the
    lowest label (the part met first in scan order). Labels are 16-bit when they fit (half the
    memory of scipy's default on a slide-sized mask), 32-bit otherwise. A mask over
    ``banded_over_px`` pixels is labelled in row bands of about ``band_px`` pixels, whose parts
    are joined across the band edges (``_largest_part_banded``): the same answer, without an
    image-sized label array.
    """
    structure = ndimage.generate_binary_structure(2, connectivity)
    mask = np.asarray(mask)
    if mask.size > banded_over_px and mask.shape[0] > 1:
        return _largest_part_banded(mask, structure, max(1, band_px // max(1, mask.shape[1])))
    labels, n = _label(mask, structure)
    if n <= 1:
        return mask
    return labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)


def _label(mask: np.ndarray, structure: np.ndarray) -> tuple[np.ndarray, int]:
    """``ndimage.label`` into 16-bit labels when they fit, else 32-bit."""
    try:
        labels = np.empty(np.shape(mask), dtype=np.uint16)
        n = ndimage.label(mask, structure=structure, output=labels)
    except RuntimeError:  # more than 65535 parts
        labels, n = ndimage.label(mask, structure=structure)
    return labels, n


def _largest_part_banded(mask: np.ndarray, structure: np.ndarray, rows: int) -> np.ndarray:
    """``largest_part`` labelling ``rows`` rows at a time.

    Each band's parts get ids after the previous bands' (so ids follow the scan order of each
    part's first pixel); parts of neighbouring bands that touch across the edge (straight, or
    diagonally with 8-connectivity) are joined with a graph's connected components. The largest
    joined part wins, ties to the lowest first id, as with one labelling; a second pass labels
    each band again and keeps that part's pixels.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    H = mask.shape[0]
    starts = list(range(0, H, rows))
    sizes, offsets, edges = [np.zeros(1, np.int64)], [], []
    total, last_row = 0, None
    for r0 in starts:
        labels, n = _label(mask[r0: r0 + rows], structure)
        offsets.append(total)
        sizes.append(np.bincount(labels.ravel(), minlength=n + 1)[1:])
        first = labels[0].astype(np.int64)
        if last_row is not None:
            shifts = (-1, 0, 1) if structure[0].all() else (0,)
            for dx in shifts:  # the pixel above-left, above and above-right of each first-row pixel
                a = last_row[max(0, dx): len(last_row) + min(0, dx)]
                b = first[max(0, -dx): len(first) + min(0, -dx)]
                both = (a > 0) & (b > 0)
                edges.append(np.stack([a[both] + offsets[-2], b[both] + total]))
        last_row = labels[-1].astype(np.int64)
        total += n
    if total <= 1:
        return mask
    size = np.concatenate(sizes)  # per id, id 0 the background
    pairs = np.concatenate(edges, axis=1) if edges else np.zeros((2, 0), np.int64)
    graph = coo_matrix((np.ones(pairs.shape[1], np.int8), (pairs[0], pairs[1])), shape=(total + 1, total + 1))
    n_parts, part_of = connected_components(graph, directed=False)
    if n_parts - 1 <= 1:  # the background and one part
        return mask
    part_size = np.bincount(part_of[1:], weights=size[1:], minlength=n_parts)
    # parts in the order of their lowest id (= scan order of their first pixel), ties to the first
    _ids, first_id = np.unique(part_of[1:], return_index=True)
    order = np.argsort(first_id, kind="stable")
    winner = _ids[order[int(np.argmax(part_size[_ids[order]]))]]
    keep = part_of == winner
    out = np.empty(mask.shape, dtype=bool)
    for r0, off in zip(starts, offsets):
        labels, n = _label(mask[r0: r0 + rows], structure)
        lookup = np.zeros(n + 1, dtype=bool)
        lookup[1:] = keep[off + 1: off + n + 1]
        out[r0: r0 + rows] = lookup[labels]
    return out


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


def border_sides_batch(masks: torch.Tensor, margin: int = 1) -> torch.Tensor:
    """``border_sides`` for a batch of whole-image masks (M, h, w), e.g. on a feature grid: (M,) ints."""
    e = max(1, int(margin))
    m = masks.bool()
    return (m[:, :e].flatten(1).any(1).int() + m[:, -e:].flatten(1).any(1).int()
            + m[:, :, :e].flatten(1).any(1).int() + m[:, :, -e:].flatten(1).any(1).int())


def maskness(soft: torch.Tensor, tau: float, strict: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(binary masks, areas, maskness) of soft masks (M, ...) thresholded at ``tau``.

    maskness_i = sum(soft_i * [soft_i >= tau]) / max(1, area_i) -- the mean soft value inside the
    mask, 0 for an empty one (``strict``: ``soft_i > tau``, SOLO's mask threshold).
    """
    flat = soft.reshape(soft.shape[0], -1)
    binary = flat > tau if strict else flat >= tau
    weights = binary.to(flat.dtype)  # float sums are several times faster than bool sums
    area = weights.sum(dim=1)
    inside = torch.einsum("qn,qn->q", flat, weights)  # row dot products: no (M, N) product tensor
    return binary.reshape(soft.shape), area, inside / area.clamp_min(1)


def inner_edge(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (the image border does not count as outside)."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def crop_iou_matrix(crops: list[np.ndarray], boxes: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """Exact pairwise IoU (M, M) of masks held as bool crops placed at boxes (y0, y1, x0, x1):
    only overlapping boxes are compared, and no full-size array is made."""
    m = len(crops)
    areas = [int(c.sum()) for c in crops]
    iou = torch.zeros(m, m, dtype=torch.float32)
    for i in range(m):
        ay0, ay1, ax0, ax1 = boxes[i]
        for j in range(i + 1, m):
            by0, by1, bx0, bx1 = boxes[j]
            y0, y1, x0, x1 = max(ay0, by0), min(ay1, by1), max(ax0, bx0), min(ax1, bx1)
            if y0 >= y1 or x0 >= x1:
                continue
            a = crops[i][y0 - ay0: y1 - ay0, x0 - ax0: x1 - ax0]
            b = crops[j][y0 - by0: y1 - by0, x0 - bx0: x1 - bx0]
            inter = int(np.logical_and(a, b).sum())
            union = areas[i] + areas[j] - inter
            iou[i, j] = iou[j, i] = inter / union if union else 0.0
    return iou


def _cell_edges(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) of each output cell's input span, as ``adaptive_avg_pool2d`` takes them."""
    i = np.arange(n_out)
    return (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)


def crop_cell_means(crop: np.ndarray, box: tuple[int, int, int, int], shape: tuple[int, int],
                    grid: tuple[int, int]) -> np.ndarray:
    """The mean of the full-size mask (``crop`` at ``box`` in an image of ``shape``) over each cell of
    ``grid`` (h, w), exactly as ``F.adaptive_avg_pool2d`` of the full mask, from the crop's integral image."""
    (H, W), (h, w) = shape, grid
    y0, y1, x0, x1 = box
    out = np.zeros((h, w), dtype=np.float32)
    rs, re = _cell_edges(H, h)
    cs, ce = _cell_edges(W, w)
    rows = np.flatnonzero((re > y0) & (rs < y1))
    cols = np.flatnonzero((ce > x0) & (cs < x1))
    if rows.size == 0 or cols.size == 0:
        return out
    integral = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=np.int64)
    integral[1:, 1:] = np.asarray(crop, dtype=bool).cumsum(axis=0).cumsum(axis=1)
    r0, r1 = np.clip(rs[rows], y0, y1) - y0, np.clip(re[rows], y0, y1) - y0
    c0, c1 = np.clip(cs[cols], x0, x1) - x0, np.clip(ce[cols], x0, x1) - x0
    sums = (integral[r1][:, c1] - integral[r0][:, c1] - integral[r1][:, c0] + integral[r0][:, c0])
    size = (re[rows] - rs[rows])[:, None] * (ce[cols] - cs[cols])[None, :]
    out[np.ix_(rows, cols)] = sums / size
    return out
