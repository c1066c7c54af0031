"""Mask encodings: boolean arrays <-> COCO RLE, COCO polygons, boxes, label images.

Every exporter, importer and the evaluator convert masks; keeping the conversions
here as pure functions means one tested definition of the COCO conventions
(column-major RLE, XYWH boxes, polygon coordinates on pixel edges).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage as ndi
from skimage import measure

from engine.structures import paste

__all__ = [
    "box_to_bbox",
    "check_rle",
    "crop_to_rle",
    "label_image_to_crops",
    "label_image_to_masks",
    "mask_to_bbox",
    "mask_to_polygons",
    "mask_to_rle",
    "masks_to_label_image",
    "polygons_to_crop",
    "polygons_to_mask",
    "rle_to_crop",
    "rle_to_mask",
    "split_components",
]


def _as_2d_bool(mask: np.ndarray) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}")
    return m.astype(bool, copy=False)


RLE_BAND_PX = 1 << 24  # crop_to_rle pads this many pixels at a time (16 MB of int8, twice)


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """Compressed COCO RLE with ``counts`` as ``str`` so it can go straight into JSON."""
    m = _as_2d_bool(mask)
    return crop_to_rle(m, (0, m.shape[0], 0, m.shape[1]), m.shape)


def crop_to_rle(crop: np.ndarray, box: tuple[int, int, int, int], shape: tuple[int, int]) -> dict[str, Any]:
    """Compressed COCO RLE of the (H, W) = ``shape`` image holding ``crop`` at ``box`` (y0, y1, x0, x1).

    COCO runs go down the columns of the whole image; they are computed from the crop alone
    (the crop with a false row above and below, read column by column, gives each run's first and
    past-the-end pixel, which map to image positions; a run that ends at the bottom of the image
    and goes on at the top of the next column is joined), so no image-sized array is made: the
    padded copy holds at most ``RLE_BAND_PX`` pixels of columns at a time.
    """
    c = _as_2d_bool(crop)
    H, W = int(shape[0]), int(shape[1])
    y0, y1, x0, x1 = (int(v) for v in box)
    if c.shape != (y1 - y0, x1 - x0) or not (0 <= y0 <= y1 <= H and 0 <= x0 <= x1 <= W):
        raise ValueError(f"crop {c.shape} does not fit box {box} in an image of {(H, W)}")
    band = max(1, RLE_BAND_PX // (c.shape[0] + 2))  # crop columns per padded copy
    pos = np.concatenate([np.zeros(0, np.int64)] + [_run_bounds(c[:, j: j + band], H) + (x0 + j) * H + (y0 - 1)
                                                     for j in range(0, c.shape[1], band)])
    starts, ends = pos[0::2], pos[1::2]
    if starts.size:
        apart = ends[:-1] != starts[1:]
        starts, ends = starts[np.concatenate([[True], apart])], ends[np.concatenate([apart, [True]])]
    bounds = np.empty(2 * starts.size + 2, dtype=np.int64)
    bounds[0], bounds[-1] = 0, H * W
    bounds[1:-1:2], bounds[2:-1:2] = starts, ends
    counts = np.diff(bounds)
    if counts.size > 1 and counts[-1] == 0:
        counts = counts[:-1]  # a mask ending on the last pixel ends on a foreground run, as pycocotools writes it
    rle = mask_utils.frPyObjects({"counts": counts.tolist(), "size": [H, W]}, H, W)
    counts = rle["counts"]
    return {"size": [H, W], "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def _run_bounds(cols: np.ndarray, H: int) -> np.ndarray:
    """Run starts and ends (alternately) of boolean ``cols`` read column by column, each column with a
    false pixel above and below: column * H + row + 1, in an image ``H`` tall (int64)."""
    tall = cols.shape[0] + 2
    padded = np.zeros((cols.shape[1], tall), dtype=np.int8)  # one row per column
    padded[:, 1:-1] = cols.T
    at = np.flatnonzero(np.diff(padded.ravel())) + 1
    return (at // tall).astype(np.int64) * H + at % tall


def box_to_bbox(box: tuple[int, int, int, int]) -> list[float]:
    """COCO ``[x, y, width, height]`` of a tight box (y0, y1, x0, x1)."""
    y0, y1, x0, x1 = box
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def _decode_uncompressed(counts: Sequence[int], h: int, w: int) -> np.ndarray:
    runs = np.asarray(counts, dtype=np.int64)
    if runs.ndim != 1 or (runs < 0).any():
        raise ValueError("uncompressed RLE counts must be non-negative integers")
    if int(runs.sum()) != h * w:
        raise ValueError(f"RLE counts sum to {int(runs.sum())}, expected {h}*{w} = {h * w}")
    values = np.zeros(runs.size, dtype=bool)
    values[1::2] = True  # runs alternate background / foreground, starting with background
    flat = np.repeat(values, runs)
    return flat.reshape(w, h).T.copy()  # column-major, like Fortran order


def _string_to_counts(counts: str | bytes) -> list[int]:
    """Run lengths from COCO's compressed RLE string (6-bit chunks, delta-coded after 2).

    Decoded in Python so a corrupt string is rejected before pycocotools' C decoder,
    which trusts the counts and would write past its buffer.
    """
    data = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    out: list[int] = []
    value = shift = 0
    for ch in data:
        c = ch - 48
        if not 0 <= c < 64:
            raise ValueError(f"invalid character {chr(ch)!r} in RLE counts")
        value |= (c & 0x1F) << shift
        shift += 5
        if c & 0x20:
            continue
        if c & 0x10:
            value -= 1 << shift  # sign-extend
        if len(out) > 2:
            value += out[-2]
        out.append(value)
        value = shift = 0
    if shift:
        raise ValueError("RLE counts string ends in the middle of a number")
    return out


def check_rle(rle: Mapping[str, Any], h: int | None = None, w: int | None = None) -> tuple[int, int]:
    """Validate an RLE dict without decoding it; returns its (height, width).

    Raises ``ValueError`` saying what is wrong (size, negative runs, wrong total).
    """
    if not isinstance(rle, Mapping) or "counts" not in rle:
        raise ValueError("RLE must be a dict with 'counts' (and 'size')")
    size = rle.get("size")
    if size is None:
        if h is None or w is None:
            raise ValueError("RLE has no 'size'; pass h and w")
        size = [h, w]
    if not isinstance(size, (list, tuple)) or len(size) != 2:
        raise ValueError(f"RLE size must be [height, width], got {size!r}")
    rh, rw = int(size[0]), int(size[1])
    if rh <= 0 or rw <= 0:
        raise ValueError(f"RLE size must be positive, got {size!r}")
    if (h is not None and int(h) != rh) or (w is not None and int(w) != rw):
        raise ValueError(f"RLE size {rh}x{rw} (h x w) does not match the expected {h}x{w}")
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        runs = _string_to_counts(counts)
    elif isinstance(counts, (list, tuple, np.ndarray)):
        runs = [int(c) for c in counts]
    else:
        raise ValueError(f"RLE counts must be str, bytes or a list, got {type(counts).__name__}")
    if any(c < 0 for c in runs):
        raise ValueError("RLE counts contain a negative run")
    if sum(runs) != rh * rw:
        raise ValueError(f"RLE counts sum to {sum(runs)}, expected {rh}*{rw} = {rh * rw}")
    return rh, rw


def rle_to_mask(rle: Mapping[str, Any], h: int | None = None, w: int | None = None) -> np.ndarray:
    """Decode compressed (str/bytes) or uncompressed (list) COCO RLE into a bool (H, W) array.

    ``h``/``w`` supply the size when the RLE lacks one and are checked against it otherwise.
    """
    rh, rw = check_rle(rle, h, w)
    counts = rle["counts"]
    if isinstance(counts, (list, tuple, np.ndarray)):
        return _decode_uncompressed(counts, rh, rw)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    decoded = mask_utils.decode({"size": [rh, rw], "counts": counts})
    return decoded.astype(bool)


def rle_to_crop(rle: Mapping[str, Any], h: int | None = None,
                w: int | None = None) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Decode COCO RLE (as :func:`rle_to_mask`) into its tight bool crop and box (y0, y1, x0, x1).

    Made from the runs alone: each foreground run is cut into its column segments, which are
    marked in the crop, so memory follows the mask's box, not the image. An empty mask gives a
    (0, 0) crop at (0, 0, 0, 0).
    """
    rh, rw = check_rle(rle, h, w)
    counts = rle["counts"]
    runs = np.asarray(_string_to_counts(counts) if isinstance(counts, (str, bytes)) else counts, dtype=np.int64)
    bounds = np.concatenate([[0], np.cumsum(runs)])
    starts, ends = bounds[1:-1:2], bounds[2::2]  # foreground runs [start, end) in column-major order
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    if not starts.size:
        return np.zeros((0, 0), bool), (0, 0, 0, 0)
    first, last = starts // rh, (ends - 1) // rh  # the columns each run starts and ends in
    per_run = last - first + 1
    run = np.repeat(np.arange(starts.size), per_run)
    col = first[run] + (np.arange(run.size) - np.repeat(np.cumsum(per_run) - per_run, per_run))
    top = np.where(col == first[run], starts[run] % rh, 0)
    bottom = np.where(col == last[run], (ends[run] - 1) % rh + 1, rh)
    y0, y1, x0, x1 = int(top.min()), int(bottom.max()), int(col.min()), int(col.max()) + 1
    # one row per crop column: +1 at each segment's top, -1 past its bottom; segments of a column
    # never overlap, so the running sum is 0 or 1 and fits the int8 array it is summed into
    steps = np.zeros((x1 - x0, y1 - y0 + 1), np.int8)
    np.add.at(steps, (col - x0, top - y0), 1)
    np.add.at(steps, (col - x0, bottom - y0), -1)
    np.cumsum(steps, axis=1, dtype=np.int8, out=steps)
    return np.ascontiguousarray(steps[:, :-1].T).view(np.bool_), (y0, y1, x0, x1)


def polygons_to_crop(polygons: Sequence[Sequence[float]], h: int,
                     w: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Rasterise COCO polygons (as :func:`polygons_to_mask`) into a crop of the image and its box: the
    polygons are shifted into their bounding box (one pixel of margin, within the image) and rasterised
    there, so memory follows the polygons' extent."""
    coords = [np.asarray(poly, dtype=np.float64).reshape(-1) for poly in polygons]
    finite = [c for c in coords if c.size >= 2 and np.isfinite(c).all()]
    if not finite:  # nothing to bound: polygons_to_mask says what is wrong, or gives the empty mask
        return polygons_to_mask(polygons, 1, 1)[:0, :0], (0, 0, 0, 0)
    xs = np.concatenate([c[0::2] for c in finite])
    ys = np.concatenate([c[1::2] for c in finite])
    x0, x1 = max(int(np.floor(xs.min())) - 1, 0), min(int(np.ceil(xs.max())) + 2, int(w))
    y0, y1 = max(int(np.floor(ys.min())) - 1, 0), min(int(np.ceil(ys.max())) + 2, int(h))
    if x1 <= x0 or y1 <= y0:  # wholly outside the image
        return np.zeros((0, 0), bool), (0, 0, 0, 0)
    shifted = []
    for c in coords:
        c = c.copy()
        c[0::2] -= x0
        c[1::2] -= y0
        shifted.append(c.tolist())
    return polygons_to_mask(shifted, y1 - y0, x1 - x0), (y0, y1, x0, x1)


def split_components(
    mask: np.ndarray, min_area: int = 1, connectivity: int = 2
) -> list[np.ndarray]:
    """Connected parts of a mask (8-connected by default), largest first."""
    m = _as_2d_bool(mask)
    labels, n = measure.label(m, connectivity=connectivity, return_num=True)
    if n == 0:
        return []
    areas = np.bincount(labels.reshape(-1), minlength=n + 1)[1:]
    order = np.argsort(-areas, kind="stable")
    return [labels == (i + 1) for i in order if areas[i] >= min_area]


def _square(y: int, x: int) -> list[float]:
    return [float(x), float(y), float(x + 1), float(y), float(x + 1), float(y + 1), float(x), float(y + 1)]


def _ring_area(xs: np.ndarray, ys: np.ndarray) -> float:
    return 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    """Remove vertices lying on a straight line between their neighbours (lossless)."""
    if len(points) < 4:
        return points
    prev = np.roll(points, 1, axis=0)
    nxt = np.roll(points, -1, axis=0)
    a, b = points - prev, nxt - points
    cross = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    keep = np.abs(cross) > 1e-9
    return points[keep] if keep.sum() >= 3 else points


def mask_to_polygons(mask: np.ndarray, tolerance: float = 0.0, offset: tuple[int, int] = (0, 0)) -> list[list[float]]:
    """COCO polygons (flat ``[x0, y0, x1, y1, ...]``), one per 8-connected part.

    Coordinates are on pixel edges (pixel ``(r, c)`` spans ``[c, c+1] x [r, r+1]``),
    which is how pycocotools rasterises them. Holes are filled, because COCO merges
    polygons by union and cannot express them. Parts too small for a contour
    (single pixels, thin slivers) become their pixel bounding square so no part is
    lost. ``tolerance`` > 0 simplifies with Douglas-Peucker (in pixels). ``mask`` may be a crop
    whose top-left pixel sits at ``offset`` (y, x) in the image; coordinates are the image's.
    """
    m = _as_2d_bool(mask)
    polygons: list[list[float]] = []
    oy, ox = int(offset[0]), int(offset[1])
    for part in split_components(m):
        rows, cols = np.nonzero(part)
        r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
        if rows.size == 1:
            polygons.append(_square(int(r0) + oy, int(c0) + ox))
            continue
        # Crop (1-pixel zero border) so contour finding costs the part's size only.
        crop = ndi.binary_fill_holes(part[r0 : r1 + 1, c0 : c1 + 1])
        padded = np.pad(crop.astype(np.float32), 1)
        contours = measure.find_contours(padded, 0.5, fully_connected="high")
        best: list[float] | None = None
        best_area = 0.0
        for contour in contours:
            if len(contour) > 1 and np.allclose(contour[0], contour[-1]):
                contour = contour[:-1]
            contour = _drop_collinear(contour)
            if len(contour) < 3:
                continue
            area = _ring_area(contour[:, 1], contour[:, 0])
            if tolerance > 0:
                simple = measure.approximate_polygon(np.vstack([contour, contour[:1]]), tolerance)[:-1]
                # Thin parts can collapse under simplification; keep them exact then.
                if len(simple) >= 3 and _ring_area(simple[:, 1], simple[:, 0]) >= 0.5 * area:
                    contour = simple
            # padded (row, col) of pixel centres -> COCO edge coordinates
            ys = contour[:, 0] - 1.0 + 0.5 + r0 + oy
            xs = contour[:, 1] - 1.0 + 0.5 + c0 + ox
            if area > best_area:
                best_area = area
                best = np.round(np.stack([xs, ys], axis=1), 2).reshape(-1).tolist()
        if best is None or best_area < 1.0:
            # Degenerate contour: cover the part's bounding box instead of dropping it.
            r0, r1, c0, c1 = r0 + oy, r1 + oy, c0 + ox, c1 + ox
            best = [float(c0), float(r0), float(c1 + 1), float(r0),
                    float(c1 + 1), float(r1 + 1), float(c0), float(r1 + 1)]
        polygons.append(best)
    return polygons


def polygons_to_mask(polygons: Sequence[Sequence[float]], h: int, w: int) -> np.ndarray:
    """Rasterise COCO polygons (union of all parts) into a bool (h, w) array."""
    polys: list[list[float]] = []
    for i, poly in enumerate(polygons):
        coords = np.asarray(poly, dtype=np.float64).reshape(-1)
        if coords.size < 6 or coords.size % 2:
            raise ValueError(
                f"polygon {i} needs an even number of at least 6 coordinates, got {coords.size}"
            )
        if not np.isfinite(coords).all():
            raise ValueError(f"polygon {i} has non-finite coordinates")
        polys.append(coords.tolist())
    if not polys:
        return np.zeros((int(h), int(w)), dtype=bool)
    rles = mask_utils.frPyObjects(polys, int(h), int(w))
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def mask_to_bbox(mask: np.ndarray) -> list[float]:
    """COCO ``[x, y, width, height]`` of the mask's pixels; ``[0, 0, 0, 0]`` when empty."""
    m = _as_2d_bool(mask)
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    cols = np.flatnonzero(m.any(axis=0))
    x0, x1, y0, y1 = cols[0], cols[-1], rows[0], rows[-1]
    return [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)]


def masks_to_label_image(
    masks: Sequence[np.ndarray],
    scores: Sequence[float] | None = None,
    *,
    shape: tuple[int, int] | None = None,
    boxes: Sequence[tuple[int, int, int, int]] | None = None,
) -> np.ndarray:
    """Paint masks into one label image; label ``k + 1`` is ``masks[k]``.

    Where masks overlap, the higher score wins (painted last). Without scores the
    given order decides (later masks on top). uint16, or uint32 past 65535 masks.
    With ``boxes`` (y0, y1, x0, x1), each mask is a crop placed at its box and ``shape`` (H, W)
    is required; without, every mask is the whole image and ``shape`` is needed only when
    ``masks`` is empty.
    """
    if boxes is not None and len(boxes) != len(masks):
        raise ValueError(f"{len(boxes)} boxes for {len(masks)} masks")
    if len(masks) == 0 or boxes is not None:
        if shape is None:
            raise ValueError("pass shape=(H, W) for an empty label image or for masks given as crops")
        out_shape = tuple(shape)
    else:
        out_shape = tuple(shape) if shape is not None else _as_2d_bool(masks[0]).shape
    dtype = np.uint16 if len(masks) <= np.iinfo(np.uint16).max else np.uint32
    labels = np.zeros(out_shape, dtype=dtype)
    if scores is None:
        order = np.arange(len(masks))
    else:
        if len(scores) != len(masks):
            raise ValueError(f"{len(scores)} scores for {len(masks)} masks")
        order = np.argsort(np.asarray(scores, dtype=np.float64), kind="stable")
    for k in order:
        m = _as_2d_bool(masks[k])
        y0, y1, x0, x1 = boxes[k] if boxes is not None else (0, out_shape[0], 0, out_shape[1])
        if m.shape != (y1 - y0, x1 - x0) or y1 > out_shape[0] or x1 > out_shape[1] or min(y0, x0) < 0:
            raise ValueError(f"mask {k} has shape {m.shape}, which does not fit {(y0, y1, x0, x1)} in {out_shape}")
        labels[y0:y1, x0:x1][m] = k + 1
    return labels


def label_image_to_crops(labels: np.ndarray) -> list[tuple[int, np.ndarray, tuple[int, int, int, int]]]:
    """(label, bool crop, box (y0, y1, x0, x1)) per label > 0, in increasing label order.

    Each label is compared only inside its bounding box (``find_objects``), so the cost follows
    the objects, not labels × image size, and no full-size mask is made.
    """
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"label image must be 2-D, got shape {lab.shape}")
    if lab.dtype.kind not in "iub":
        if not np.array_equal(lab, np.round(lab)):
            raise ValueError("label image must hold whole numbers")
        lab = lab.astype(np.int64)
    out = []
    for value, window in enumerate(ndi.find_objects(np.clip(lab, 0, None)), start=1):
        if window is None:
            continue
        box = (window[0].start, window[0].stop, window[1].start, window[1].stop)
        out.append((value, lab[window] == value, box))
    return out


def label_image_to_masks(labels: np.ndarray, *, with_ids: bool = False) -> list:
    """One full-size bool mask per label > 0, in increasing label order (``with_ids``: (label, mask) pairs)."""
    shape = np.shape(labels)
    out = []
    for value, crop, box in label_image_to_crops(labels):
        mask = paste(crop, box, shape)
        out.append((value, mask) if with_ids else mask)
    return out
