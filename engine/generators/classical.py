"""Classical, training-free instance segmenters to compare Free Mask against.

A number like "Free Mask gets 30 AP" means little on its own; these baselines show
what thresholding (global Otsu, or local: ``local_watershed``), watershed and graph-based
superpixels already achieve on the same images; the merge (``engine/generators/merge.py``)
also uses them as proposals. Each returns ``list[InstanceMask]`` with ``source`` set to its name and
a ``score`` in (0, 1] so that COCO AP, which ranks by score, is meaningful:

    score = contrast(mask, surrounding ring) * area / (area + a0)

Contrast rewards segments that stand out from their immediate surroundings (objects)
over arbitrary pieces of a textured background; the area factor ranks tiny
fragments below real objects. ``a0`` is 0.1% of the image area.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_local, threshold_otsu
from skimage.segmentation import felzenszwalb, watershed

from engine.io.images import to_unit_rgb
from engine.io.masks import label_image_to_crops
from engine.structures import InstanceMask

__all__ = [
    "BASELINES",
    "felzenszwalb_segments",
    "otsu_components",
    "otsu_watershed",
    "local_watershed",
    "local_foreground",
    "local_block",
    "grey_contrast_view",
    "ring_contrast",
    "ring_width",
]

_MIN_SCORE = 1e-3


def _gray(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.2125, 0.7154, 0.0721])


def _otsu_foreground(gray: np.ndarray, sigma: float) -> np.ndarray:
    """Otsu mask on lightly smoothed grey, polarity = the smaller side.

    Objects are usually the minority of pixels, whether brighter (nuclei) or darker
    (objects on a light table) than the background.
    """
    smooth = ndi.gaussian_filter(gray, sigma) if sigma > 0 else gray
    if float(smooth.max()) - float(smooth.min()) < 1e-9:
        return np.zeros(gray.shape, dtype=bool)
    t = threshold_otsu(smooth)
    fg = smooth > t
    if fg.sum() > fg.size / 2:
        fg = ~fg
    return ndi.binary_fill_holes(fg)


def ring_contrast(feat: np.ndarray, crop: np.ndarray, box: tuple[int, int, int, int], width: int,
                  gap: int = 2) -> float:
    """Distance between the mean feature inside a mask (a bool ``crop`` placed at ``box`` =
    (y0, y1, x0, x1) in ``feat``'s image) and in a ring around it.

    The ring starts ``gap`` px out: the pixels right at an edge are a blur of both
    sides and would understate the contrast of a clean object.
    """
    h, w = feat.shape[:2]
    by0, by1, bx0, bx1 = box
    pad = gap + width + 1
    y0, y1, x0, x1 = max(by0 - pad, 0), min(by1 + pad, h), max(bx0 - pad, 0), min(bx1 + pad, w)
    m = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    m[by0 - y0: by1 - y0, bx0 - x0: bx1 - x0] = crop
    if not m.any():
        return 0.0
    inner = ndi.binary_dilation(m, iterations=gap) if gap > 0 else m
    ring = ndi.binary_dilation(inner, iterations=width) & ~inner
    if not ring.any():  # the mask fills its whole window (e.g. the image)
        return 0.0
    f = feat[y0:y1, x0:x1]
    diff = f[m].mean(axis=0) - f[ring].mean(axis=0)
    return float(np.sqrt(np.sum(np.square(diff))))


def ring_width(shape: tuple[int, ...]) -> int:
    """The ring the contrast scores look at: ~1% of the short image side, at least 3 px."""
    return max(3, int(round(min(shape[:2]) / 100)))


def grey_contrast_view(image: np.ndarray) -> tuple[np.ndarray, float]:
    """Grey in [0, 1] (H, W, 1) and its robust range: what ``ring_contrast`` is divided by so a
    contrast score does not depend on exposure."""
    gray = _gray(to_unit_rgb(image))
    return gray[..., None], _gray_scale(gray)


def _instances_from_labels(
    labels: np.ndarray, feat: np.ndarray, source: str, min_area: int, contrast_scale: float
) -> list[InstanceMask]:
    """One InstanceMask per label >= ``min_area``; scores as in the module docstring."""
    h, w = labels.shape
    a0 = 1e-3 * h * w
    width = ring_width(labels.shape)
    out: list[InstanceMask] = []
    for _label, crop, box in label_image_to_crops(labels):
        area = int(np.count_nonzero(crop))
        if area < min_area:
            continue
        contrast = min(ring_contrast(feat, crop, box, width) / contrast_scale, 1.0)
        score = max(contrast * area / (area + a0), _MIN_SCORE)
        out.append(InstanceMask(crop, score=float(score), source=source, extra={"contrast": contrast},
                                box=box, shape=(h, w)))
    out.sort(key=lambda m: -m.score)
    return out


def _gray_scale(gray: np.ndarray) -> float:
    """Robust grey range, so contrast scores do not depend on exposure."""
    lo, hi = np.percentile(gray, [1, 99])
    return max(float(hi - lo), 1e-6)


def otsu_components(image: np.ndarray, min_area: int = 20, sigma: float = 1.0) -> list[InstanceMask]:
    """Otsu threshold on grey, then connected components (holes filled)."""
    gray = _gray(to_unit_rgb(image))
    fg = _otsu_foreground(gray, sigma)
    labels, _ = ndi.label(fg)
    return _instances_from_labels(labels, gray[..., None], "otsu_components", min_area, _gray_scale(gray))


def _watershed_split(fg: np.ndarray, min_distance: int | None) -> np.ndarray:
    """Labels of a foreground split by a distance-transform watershed, one seed per peak.

    Touching convex objects (nuclei) merge into one component under plain thresholding; the
    distance transform has one peak per object, so seeding a watershed from its peaks separates
    them. ``min_distance`` defaults to ~1/40 of the image side (8 px at 320 px), roughly the
    smallest object radius we expect.
    """
    h, w = fg.shape
    if min_distance is None:
        min_distance = max(3, int(round(min(h, w) / 40)))
    comps, n_comp = ndi.label(fg)
    if n_comp == 0:
        return comps
    # smoothing removes the flat ridges of elongated shapes that would over-split them
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(fg), 1.0)
    peaks = peak_local_max(dist, min_distance=min_distance, labels=comps, exclude_border=False)
    markers = np.zeros(fg.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # a component without a peak (tiny or flat) keeps one marker so it is not lost
    seeded = np.zeros(n_comp + 1, dtype=bool)
    seeded[comps[markers > 0]] = True
    next_id = len(peaks) + 1
    for lab, sl in enumerate(ndi.find_objects(comps), start=1):
        if sl is None or seeded[lab]:
            continue
        local = comps[sl] == lab
        iy, ix = np.unravel_index(int(np.argmax(np.where(local, dist[sl], -1))), local.shape)
        markers[sl[0].start + iy, sl[1].start + ix] = next_id
        next_id += 1
    return watershed(-dist, markers, mask=fg)


def otsu_watershed(
    image: np.ndarray,
    min_area: int = 20,
    sigma: float = 1.0,
    min_distance: int | None = None,
) -> list[InstanceMask]:
    """Otsu foreground split by a distance-transform watershed (``_watershed_split``)."""
    gray = _gray(to_unit_rgb(image))
    labels = _watershed_split(_otsu_foreground(gray, sigma), min_distance)
    return _instances_from_labels(labels, gray[..., None], "otsu_watershed", min_area, _gray_scale(gray))


def local_block(shape: tuple[int, ...], object_size: float | None = None) -> int:
    """The local threshold's window (odd px): 4 object diameters, or a fifth of the short side
    when the object size is unknown."""
    size = 4.0 * object_size if object_size else min(shape[:2]) / 5.0
    return max(3, int(size) // 2 * 2 + 1)


def local_foreground(gray: np.ndarray, sigma: float = 1.0, object_size: float | None = None) -> np.ndarray:
    """Pixels above their neighbourhood's mean (``local_block``) and above half-way from the darkest
    grey to the Otsu level (holes filled); polarity as ``_otsu_foreground``: objects are the minority.

    One global threshold misses faint objects beside bright ones and merges neighbours whose
    shared edge is only a little darker; a local one follows the background as it varies."""
    smooth = ndi.gaussian_filter(gray, sigma) if sigma > 0 else gray
    if float(smooth.max()) - float(smooth.min()) < 1e-9:
        return np.zeros(gray.shape, dtype=bool)
    if (smooth > threshold_otsu(smooth)).sum() > smooth.size / 2:
        smooth = -smooth
    floor = float(smooth.min()) + 0.5 * (threshold_otsu(smooth) - float(smooth.min()))
    fg = (smooth > threshold_local(smooth, local_block(gray.shape, object_size), offset=0)) & (smooth > floor)
    return ndi.binary_fill_holes(fg)


def local_watershed(
    image: np.ndarray,
    min_area: int = 20,
    sigma: float = 1.0,
    min_distance: int | None = None,
    object_size: float | None = None,
) -> list[InstanceMask]:
    """Local-threshold foreground (``local_foreground``) split by the same watershed as ``otsu_watershed``."""
    gray = _gray(to_unit_rgb(image))
    labels = _watershed_split(local_foreground(gray, sigma, object_size), min_distance)
    return _instances_from_labels(labels, gray[..., None], "local_watershed", min_area, _gray_scale(gray))


def felzenszwalb_segments(
    image: np.ndarray,
    scale: float = 300.0,
    sigma: float = 0.8,
    min_size: int | None = None,
    min_area: int = 20,
    max_fraction: float = 0.5,
) -> list[InstanceMask]:
    """Felzenszwalb graph segments on RGB; background-like segments dropped.

    A segment is taken for background when it covers more than ``max_fraction`` of
    the image, when its bounding box spans the whole image, or when it lies along
    more than a quarter of the image border; slivers (under a quarter of the pixels
    survive a 1 px erosion) are the blurred rims between regions and are dropped too.
    Every other segment is an instance.
    ``min_size`` defaults to 0.2% of the image area (~200 px at 320x320) so texture
    does not shatter into specks.
    """
    rgb = to_unit_rgb(image)
    h, w = rgb.shape[:2]
    if min_size is None:
        min_size = max(20, int(2e-3 * h * w))
    seg = felzenszwalb(rgb, scale=scale, sigma=sigma, min_size=int(min_size)) + 1
    border = np.concatenate([seg[0, :], seg[-1, :], seg[1:-1, 0], seg[1:-1, -1]])
    border_count = np.bincount(border, minlength=int(seg.max()) + 1)
    area = np.bincount(seg.ravel(), minlength=int(seg.max()) + 1)
    labels = np.zeros_like(seg, dtype=np.int32)
    for lab, sl in enumerate(ndi.find_objects(seg), start=1):
        if sl is None:
            continue
        spans_all = (sl[0].stop - sl[0].start) == h and (sl[1].stop - sl[1].start) == w
        if area[lab] > max_fraction * h * w or spans_all or border_count[lab] > 0.25 * border.size:
            continue
        local = seg[sl] == lab
        # thin slivers are the blurred rims between two regions, not objects
        if ndi.binary_erosion(local).sum() < 0.25 * area[lab]:
            continue
        labels[sl][local] = lab
    return _instances_from_labels(labels, rgb, "felzenszwalb", min_area, float(np.sqrt(3.0)) / 2)


BASELINES: dict[str, Callable[..., list[InstanceMask]]] = {
    "otsu_components": otsu_components,
    "otsu_watershed": otsu_watershed,
    "local_watershed": local_watershed,
    "felzenszwalb": felzenszwalb_segments,
}
