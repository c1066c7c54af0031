"""Hierarchical grouping of Felzenszwalb regions by their backbone features (selective-search style).

COCO objects come at every scale and are made of parts that look different (a person's coat and
face), so no single over-segmentation or threshold finds them. As in selective search (Uijlings
et al., IJCV 2013) the image is first over-segmented (Felzenszwalb, fine scale), then the two most
similar *adjacent* regions are merged, again and again until one region is left; every region of
that hierarchy -- the initial ones and each merge -- is a candidate mask. Similarity of regions a
and b (each term in [0, 1], weights ``GroupingParams``):

    s(a, b) = cos(f_a, f_b) + w_colour * exp(-|lab_a - lab_b| / 20)
              + w_size * (1 - (n_a + n_b) / N) + w_fill * (1 - (box_ab - n_a - n_b) / N)

with f the region's mean key (Free Mask's fused, L2-normalised backbone features; a pixel takes
the key of the cell that holds it, ``engine/geometry.py``), lab its mean CIELAB colour, n its
pixel count, box_ab the area of the box around both and N the image's pixels. The size term
merges small regions first (so the hierarchy grows evenly everywhere), the fill term prefers
regions that fill each other's gaps.

Each region's prior is its *distinctness* (1 - cos of its mean key with that of the region it is
merged with next: an object is merged with something unlike it, a part of it with a similar part)
times (area / image area)^(1/4), over the image's largest such product (so the most distinct
region has prior 1); the ``top`` regions by prior become masks (source ``grouping``). The merge
(``engine/generators/merge.py``) scores them with the same measure as every other generator's
masks and multiplies that score by the prior (the COCO tuning half's figures for each part of it
are in docs/measurements.md). Everything is on the region graph (a few hundred nodes): per-pixel
work is a handful of vectorised passes (labels, bincounts, one ``isin`` per kept mask).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.color import rgb2lab
from skimage.segmentation import felzenszwalb

from engine.freemask.features import Features
from engine.io.images import to_unit_rgb
from engine.structures import InstanceMask

__all__ = ["GroupingParams", "region_graph", "pixel_cells", "merge_hierarchy", "distinctness",
           "grouping_instances"]


@dataclass(frozen=True)
class GroupingParams:
    scale: float = 300.0  # Felzenszwalb's scale for the initial regions (a few hundred regions)
    sigma: float = 0.8
    min_size: float = 5e-4  # the initial regions' minimum size, a fraction of the image
    w_colour: float = 1.0
    w_size: float = 1.0
    w_fill: float = 1.0
    min_area: float = 3e-4  # candidates smaller than this fraction of the image are dropped
    max_area: float = 0.8  # ... and larger than this
    top: int = 100  # masks handed to the merge, highest prior first


def region_graph(labels: np.ndarray) -> np.ndarray:
    """The pairs (a, b), a < b, of labels that touch (4-neighbourhood), as an (E, 2) int array."""
    n = int(labels.max()) + 1
    pairs = [np.stack([labels[:, :-1].ravel(), labels[:, 1:].ravel()]),
             np.stack([labels[:-1, :].ravel(), labels[1:, :].ravel()])]
    ab = np.concatenate(pairs, axis=1).astype(np.int64)
    ab = ab[:, ab[0] != ab[1]]
    lo, hi = np.minimum(ab[0], ab[1]), np.maximum(ab[0], ab[1])
    codes = np.unique(lo * n + hi)
    return np.stack([codes // n, codes % n], axis=1)


def pixel_cells(shape: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """The flat index of the key cell that holds each pixel of an image of ``shape`` (H, W), with
    ``engine/geometry.py``'s convention: cell = floor((p + 0.5) * n / N), clipped."""
    (H, W), (h, w) = shape, grid
    cy = np.clip(np.floor((np.arange(H) + 0.5) * h / H).astype(np.int64), 0, h - 1)
    cx = np.clip(np.floor((np.arange(W) + 0.5) * w / W).astype(np.int64), 0, w - 1)
    return cy[:, None] * w + cx[None, :]


@dataclass
class _Regions:
    """Per-region sums the similarity needs (rows grow as regions merge)."""

    feat: np.ndarray  # (R, D) summed keys
    lab: np.ndarray  # (R, 3) summed CIELAB colour
    area: np.ndarray  # (R,) pixels
    box: np.ndarray  # (R, 4) y0, y1, x0, x1 (exclusive ends)


def _similarity(r: _Regions, a: int, b: int, total: float, p: GroupingParams) -> float:
    fa, fb = r.feat[a], r.feat[b]
    cos = float(fa @ fb) / max(float(np.linalg.norm(fa) * np.linalg.norm(fb)), 1e-12)
    colour = float(np.exp(-np.linalg.norm(r.lab[a] / r.area[a] - r.lab[b] / r.area[b]) / 20.0))
    size = 1.0 - (r.area[a] + r.area[b]) / total
    ya, yb = min(r.box[a, 0], r.box[b, 0]), max(r.box[a, 1], r.box[b, 1])
    xa, xb = min(r.box[a, 2], r.box[b, 2]), max(r.box[a, 3], r.box[b, 3])
    fill = 1.0 - ((yb - ya) * (xb - xa) - r.area[a] - r.area[b]) / total
    return cos + p.w_colour * colour + p.w_size * size + p.w_fill * fill


def _grown(regions: _Regions) -> _Regions:
    """``regions`` with room for the R - 1 merged regions after its R rows (zeros)."""
    extra = len(regions.area) - 1
    return _Regions(*(np.concatenate([x, np.zeros((extra, *x.shape[1:]), x.dtype)])
                      for x in (regions.feat, regions.lab, regions.area, regions.box)))


def merge_hierarchy(regions: _Regions, edges: np.ndarray, p: GroupingParams) -> tuple[_Regions, list[tuple[int, int]]]:
    """Greedy merging of the most similar adjacent pair (``_similarity``) until no edge is left.

    Returns every region's sums (the R initial ones, then one row per merge) and the merges in
    order as (a, b): merge i makes region R + i of regions a and b (sums added, boxes joined)."""
    n = len(regions.area)
    total = float(regions.area.sum())
    r = _grown(regions)
    neighbours: dict[int, set[int]] = {i: set() for i in range(n)}
    for a, b in edges.tolist():
        neighbours[a].add(b)
        neighbours[b].add(a)
    heap = [(-_similarity(r, a, b, total, p), a, b) for a, b in edges.tolist()]
    heapq.heapify(heap)
    alive = set(range(n))
    merges: list[tuple[int, int]] = []
    while heap:
        _s, a, b = heapq.heappop(heap)
        if a not in alive or b not in alive:
            continue
        c = n + len(merges)
        merges.append((a, b))
        r.feat[c], r.lab[c], r.area[c] = r.feat[a] + r.feat[b], r.lab[a] + r.lab[b], r.area[a] + r.area[b]
        r.box[c] = [min(r.box[a, 0], r.box[b, 0]), max(r.box[a, 1], r.box[b, 1]),
                    min(r.box[a, 2], r.box[b, 2]), max(r.box[a, 3], r.box[b, 3])]
        alive -= {a, b}
        alive.add(c)
        around = (neighbours.pop(a) | neighbours.pop(b)) - {a, b}
        neighbours[c] = around
        for x in around:
            neighbours[x] -= {a, b}
            neighbours[x].add(c)
            heapq.heappush(heap, (-_similarity(r, c, x, total, p), min(c, x), max(c, x)))
    used = n + len(merges)
    return _Regions(r.feat[:used], r.lab[:used], r.area[:used], r.box[:used]), merges


def _initial_regions(rgb: np.ndarray, features: Features, p: GroupingParams) -> tuple[np.ndarray, _Regions]:
    """Felzenszwalb's labels (H, W) and their regions' sums (the keys' sum from each region's pixel
    count per key cell: one bincount and one product, no loop over pixels)."""
    H, W = rgb.shape[:2]
    seg = felzenszwalb(rgb, scale=p.scale, sigma=p.sigma, min_size=max(2, int(p.min_size * H * W)))
    labels = np.unique(seg, return_inverse=True)[1].reshape(seg.shape)  # 0..n-1, none missing
    n = int(labels.max()) + 1
    keys = features.keys
    cells = keys.shape[1] * keys.shape[2]
    counts = np.bincount((labels.astype(np.int64) * cells + pixel_cells((H, W), features.grid_size)).ravel(),
                         minlength=n * cells).reshape(n, cells).astype(np.float32)
    feat = counts @ keys.reshape(keys.shape[0], -1).T.numpy()
    lab_image = rgb2lab(rgb).reshape(-1, 3)
    lab = np.stack([np.bincount(labels.ravel(), weights=lab_image[:, i], minlength=n) for i in range(3)], 1)
    box = np.array([[s[0].start, s[0].stop, s[1].start, s[1].stop] for s in ndi.find_objects(labels + 1)])
    area = np.bincount(labels.ravel(), minlength=n).astype(np.float64)
    return labels, _Regions(feat.astype(np.float64), lab, area, box)


def _leaves(node: int, n: int, merges: list[tuple[int, int]]) -> list[int]:
    """The initial regions that make region ``node`` of the hierarchy."""
    out, stack = [], [node]
    while stack:
        x = stack.pop()
        if x < n:
            out.append(x)
        else:
            stack.extend(merges[x - n])
    return out


def distinctness(regions: _Regions, merges: list[tuple[int, int]]) -> np.ndarray:
    """1 - cos(f_r, f_s) for every region r of the hierarchy, where s is the region r is merged with
    (its sibling); 0 for the last region (the whole image). A region that is merged with something
    unlike it is a whole thing; a part of an object merges with a similar part."""
    out = np.zeros(len(regions.area))
    if not merges:
        return out
    pairs = np.array(merges)
    unit = regions.feat / np.maximum(np.linalg.norm(regions.feat, axis=1, keepdims=True), 1e-12)
    d = 1.0 - np.sum(unit[pairs[:, 0]] * unit[pairs[:, 1]], axis=1)
    out[pairs[:, 0]] = d
    out[pairs[:, 1]] = d
    return out


def grouping_instances(features: Features, image: np.ndarray, p: GroupingParams | None = None) -> list[InstanceMask]:
    """The hierarchy's regions of ``p.min_area``..``p.max_area`` of the image with the highest prior

        prior = distinctness * (area / image area) ** 0.25,  divided by its maximum over those regions

    (``distinctness``; the area factor ranks small fragments lower; the image's most distinct region
    has prior 1, so in the merge it keeps the score any generator's mask would get) as masks: source
    ``grouping``, ``score`` = ``extra['prior']`` = the prior, ``extra['regions']`` = how many initial
    regions it joins."""
    p = p or GroupingParams()
    rgb = to_unit_rgb(image)
    H, W = rgb.shape[:2]
    labels, regions = _initial_regions(rgb, features, p)
    n = len(regions.area)
    regions, merges = merge_hierarchy(regions, region_graph(labels), p)
    share = regions.area / (H * W)
    prior = distinctness(regions, merges) * share ** 0.25
    pick = np.flatnonzero((share >= p.min_area) & (share <= p.max_area) & (prior > 0))
    if pick.size == 0:
        return []
    prior = prior / prior[pick].max()
    out = []
    for node in pick[np.argsort(-prior[pick], kind="stable")[: p.top]].tolist():
        y0, y1, x0, x1 = (int(v) for v in regions.box[node])
        leaves = _leaves(node, n, merges)
        out.append(InstanceMask(np.isin(labels[y0:y1, x0:x1], leaves), score=float(prior[node]), source="grouping",
                                box=(y0, y1, x0, x1), shape=(H, W),
                                extra={"prior": float(prior[node]), "regions": len(leaves)}))
    return out
