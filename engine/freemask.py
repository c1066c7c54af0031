"""Free Mask post-processing: cached features in, ranked instance masks out.

The steps follow FreeSOLO's Free Mask (Wang et al., CVPR 2022):
queries = the key map pooled at pyramid scales; cosine similarity of each query with every key
location; per-query min-max normalisation to [0, 1] = soft masks; threshold τ; maskness = mean
soft value inside the mask; Matrix NMS with maskness as score; top-k. Then the kept soft masks
are upsampled to the image (one crop at a time, so no full-size soft map is ever held for all
masks), refined by an image-guided filter and thresholded at τ again.

Everything here is cheap relative to the backbone pass, which is why the panel can re-run it on
every slider move.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from engine.device import available_cpu_count
from engine.features import Features
from engine.nms import matrix_nms
from engine.refine import GuideStats, upsample_crop
from engine.structures import InstanceMask

# Backbone padding makes the outermost key cells look unlike their neighbours, so "touching
# the image side" means reaching within this many network-input pixels of it.
BORDER_INPUT_PX = 16
MAX_MASK_THREADS = 4  # masks refined at once by default (capped by the usable cores)
DISTINCT_QUERY_COS = 0.95  # queries closer than this to a better one are not split again
REFINE_RADIUS_AT_SCALE_1 = 12  # px; measured best on photo-like images at native resolution


@dataclass(frozen=True)
class FreeMaskParams:
    """Every knob of the post-processing (none of them re-runs the backbone)."""

    tau: float = 0.65  # soft-mask threshold (official 0.5; measured best here, see README)
    scales: tuple[float, ...] = (1.0, 0.5, 0.25)  # query pyramid, relative to the query grid
    query_stride: int = 32  # input pixels per query cell at scale 1.0
    pre_nms_top: int = 100  # candidates kept by maskness before Matrix NMS (cost control; at least 2×top-k)
    score_stride: int = 16  # key grid (input px per cell) on which candidates are ranked: 8 or 16
    top_k: int | None = None  # masks per image; None = 20, or 100 for auto-upscaled small objects
    nms_kernel: Literal["gaussian", "linear"] = "gaussian"
    nms_sigma: float = 2.0
    min_score: float = 0.0  # decayed maskness threshold (official script: 0.7)
    min_area: int = 16  # px at image resolution
    max_area_frac: float = 1.0  # drop masks covering more of the image than this
    max_border_sides: int = 2  # drop masks reaching more image sides than this (background)
    split_components: bool = True  # one instance per connected part (semantic masks -> objects)
    refine: bool = True  # image-guided boundary refinement
    refine_radius: int | None = None  # px at image resolution; None = 12 / input scale
    refine_eps: float = 1e-3
    center_y_min: float | None = None  # official COCO filter: mass centre y > 0.2·H
    max_box_width: float | None = None  # official COCO filter: box width < 0.95·W

    def validated(self) -> "FreeMaskParams":
        """Return self, or raise ValueError naming the first bad field."""
        if not 0.0 < self.tau < 1.0:
            raise ValueError(f"tau must be in (0, 1), got {self.tau}")
        if not self.scales or any(not 0.0 < s <= 4.0 for s in self.scales):
            raise ValueError(f"scales must be non-empty values in (0, 4], got {self.scales}")
        if self.score_stride not in (8, 16, 32):
            raise ValueError(f"score_stride must be 8, 16 or 32, got {self.score_stride}")
        if (self.top_k is not None and self.top_k < 1) or self.pre_nms_top < 1:
            raise ValueError("top_k and pre_nms_top must be at least 1")
        if self.nms_kernel not in ("gaussian", "linear"):
            raise ValueError(f"nms_kernel must be 'gaussian' or 'linear', got {self.nms_kernel!r}")
        if self.nms_sigma <= 0 or self.refine_eps <= 0:
            raise ValueError("nms_sigma and refine_eps must be positive")
        if self.refine_radius is not None and self.refine_radius < 1:
            raise ValueError("refine_radius must be at least 1 px")
        if self.min_area < 0 or not 0.0 < self.max_area_frac <= 1.0:
            raise ValueError("min_area must be >= 0 and max_area_frac in (0, 1]")
        return self

    def with_updates(self, **changes) -> "FreeMaskParams":
        return replace(self, **changes).validated()


@dataclass
class Queries:
    vectors: torch.Tensor  # (Q, D) unit vectors
    scale: torch.Tensor  # (Q,) pyramid scale of each query
    yx: torch.Tensor  # (Q, 2) query centre in key-grid coordinates


@dataclass
class FreeMaskResult:
    """Kept instances plus what the panel needs for visual debugging."""

    instances: list[InstanceMask]
    candidate_maskness: np.ndarray  # maskness of every candidate (histogram of τ's effect)
    n_queries: int
    refine_radius: int
    top_k: int = 20
    _soft: torch.Tensor = field(repr=False, default_factory=lambda: torch.zeros(0))
    _features: Features | None = field(repr=False, default=None)

    def soft_mask(self, index: int) -> np.ndarray:
        """Full-resolution soft mask (before refinement) of kept instance ``index``, on demand."""
        assert self._features is not None
        h, w = self._features.image_size
        src = self._soft[index]  # one soft row per kept instance, in the same order
        return upsample_crop(src, (h, w), (0, h, 0, w)).numpy()


def build_queries(keys: torch.Tensor, scales: tuple[float, ...], query_stride: int) -> Queries:
    """Pool the key map into one query grid per pyramid scale (area pooling, then L2 norm)."""
    d, h, w = keys.shape
    ratio = 8.0 / query_stride  # keys live at stride 8
    vecs, sc, yx = [], [], []
    for s in sorted(set(scales)):  # coarse first: they survive de-duplication
        gh = max(1, round(h * ratio * s))
        gw = max(1, round(w * ratio * s))
        pooled = F.adaptive_avg_pool2d(keys[None], (gh, gw))[0]
        vecs.append(F.normalize(pooled.reshape(d, -1).T, dim=1))
        ys = (torch.arange(gh, dtype=torch.float32) + 0.5) * h / gh - 0.5
        xs = (torch.arange(gw, dtype=torch.float32) + 0.5) * w / gw - 0.5
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)
        yx.append(grid)
        sc.append(torch.full((gh * gw,), float(s)))
    return Queries(torch.cat(vecs), torch.cat(sc), torch.cat(yx))


def soft_masks(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Cosine similarity (Q, N) of each query with every key, min-max normalised per query."""
    sim = queries @ keys.reshape(keys.shape[0], -1)
    lo = sim.min(dim=1, keepdim=True).values
    hi = sim.max(dim=1, keepdim=True).values
    return (sim - lo) / (hi - lo).clamp_min(1e-6)


def maskness(soft: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(binary masks, areas, maskness = mean soft value inside each mask)."""
    binary = soft >= tau
    weights = binary.to(soft.dtype)  # float sums are several times faster than bool sums
    area = weights.sum(dim=1)
    inside = torch.einsum("qn,qn->q", soft, weights)  # row dot products: no (Q, N) product tensor
    return binary, area, inside / area.clamp_min(1)


def query_similarity(features: Features, y: float, x: float) -> np.ndarray:
    """Soft mask (key-grid resolution) of the query at image pixel (y, x): the query inspector."""
    keys = features.keys
    h, w = features.grid_size
    ky = int(np.clip((y + 0.5) * h / features.image_size[0], 0, h - 1))
    kx = int(np.clip((x + 0.5) * w / features.image_size[1], 0, w - 1))
    q = keys[:, ky, kx][None]
    return soft_masks(q, keys)[0].reshape(h, w).numpy()


def auto_top_k(features: Features) -> int:
    """20 masks per image (the paper's), 100 where the automatic input scale found small objects.

    Images that needed upsampling (nuclei and the like) typically hold dozens of objects; on
    the project's nuclei set top-100 raised AP50 from 0.50 to 0.64.
    """
    return 100 if features.auto_scale and features.input_scale > 1.0 else 20


def auto_refine_radius(features: Features) -> int:
    return int(np.clip(round(REFINE_RADIUS_AT_SCALE_1 / max(features.input_scale, 1e-3)), 2, 32))


def _crop_box(binary: torch.Tensor, grid: tuple[int, int], image_size: tuple[int, int], margin_px: int):
    ys, xs = torch.nonzero(binary.reshape(grid), as_tuple=True)
    h, w = grid
    H, W = image_size
    sy, sx = H / h, W / w
    y0 = max(0, int(math.floor(int(ys.min()) * sy)) - margin_px - int(sy))
    y1 = min(H, int(math.ceil((int(ys.max()) + 1) * sy)) + margin_px + int(sy))
    x0 = max(0, int(math.floor(int(xs.min()) * sx)) - margin_px - int(sx))
    x1 = min(W, int(math.ceil((int(xs.max()) + 1) * sx)) + margin_px + int(sx))
    return y0, y1, x0, x1


def guide_stats(features: Features, image: np.ndarray, radius: int, eps: float) -> GuideStats:
    """Guide statistics for ``image``, memoised on ``features`` so slider moves reuse them."""
    fingerprint = hash(np.ascontiguousarray(image[::7, ::5]).tobytes())
    key = (radius, eps, fingerprint)
    memo = features.memo
    if key not in memo:
        for old in [k for k in memo if isinstance(k, tuple) and len(k) == 3]:
            del memo[old]  # keep one entry: a new radius replaces the old statistics
        guide = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1) / 255.0
        memo[key] = GuideStats.compute(guide, radius, eps)
    return memo[key]


@dataclass
class Candidates:
    """Masks entering Matrix NMS: whole query masks, or their connected parts."""

    query: torch.Tensor  # (M,) index of the query each candidate comes from
    binary: torch.Tensor  # (M, N) bool on the key grid
    maskness: torch.Tensor  # (M,)


def whole_mask_candidates(soft, binary, area, mness, top: int) -> Candidates:
    valid = torch.nonzero(area > 1).flatten()
    valid = valid[torch.argsort(mness[valid], descending=True)][:top]
    return Candidates(valid, binary[valid], mness[valid])


def distinct_queries(queries: Queries, max_cos: float = DISTINCT_QUERY_COS) -> Queries:
    """Drop queries nearly parallel to an earlier one (coarse scales first).

    Hundreds of queries on one background region, or on one kind of object, give the same
    mask; scoring, labelling and suppressing all of them is wasted work (and near-copies
    would crowd out rarer queries in the candidate cap). One Q×Q product decides.
    """
    v = queries.vectors
    sim = (v @ v.T).triu(diagonal=1)
    keep = ~(sim > max_cos).any(dim=0)
    return Queries(v[keep], queries.scale[keep], queries.yx[keep])


def component_candidates(soft, binary, area, mness, grid: tuple[int, int], top: int) -> Candidates:
    """Split the ``top`` best query masks into 8-connected parts (one labelling call for all).

    Free Mask's masks are semantic: a query on one nucleus lights up every nucleus. Splitting
    before NMS lets every part compete on its own maskness, and NMS then removes the copies of
    the same part that other queries found.
    """
    whole = whole_mask_candidates(soft, binary, area, mness, top)
    if whole.query.numel() == 0:
        return whole
    h, w = grid
    volume = whole.binary.reshape(-1, h, w).numpy()
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # connect within a mask, never across masks
    labels, n = ndimage.label(volume, structure=structure)
    if n == 0:
        return whole
    flat = torch.from_numpy(labels.reshape(len(volume), -1)).long()
    soft_rows = soft[whole.query]
    counts = torch.bincount(flat.flatten(), minlength=n + 1).float()
    sums = torch.bincount(flat.flatten(), weights=soft_rows.flatten().double(), minlength=n + 1).float()
    # labels are numbered in scan order and never cross masks, so mask i owns the labels
    # between the previous masks' highest label and its own
    last = np.maximum.accumulate(labels.reshape(len(volume), -1).max(axis=1))
    owner = torch.from_numpy(np.searchsorted(last, np.arange(n + 1), side="left")).long()
    ids = torch.nonzero(counts[1:] > 1).flatten() + 1  # parts of at least 2 cells
    comp_mness = sums[ids] / counts[ids]
    ids = ids[torch.argsort(comp_mness, descending=True)][:top]
    rows = owner[ids]
    return Candidates(whole.query[rows], flat[rows] == ids[:, None], sums[ids] / counts[ids])


def score_keys(features: Features, score_stride: int) -> torch.Tensor:
    """The key map pooled to ``score_stride`` (memoised): where candidates are scored and ranked.

    Scoring every query against every stride-8 key costs Q × N work per slider move; ranking
    on a coarser grid (the paper ranks on stride 32) is 4× cheaper at stride 16, and only the
    kept masks are then recomputed on the stride-8 grid.
    """
    factor = max(1, score_stride // 8)
    if factor == 1:
        return features.keys
    key = ("score_keys", factor)
    if key not in features.memo:
        pooled = F.avg_pool2d(features.keys[None], factor, ceil_mode=True)[0]
        features.memo[key] = F.normalize(pooled, dim=0)
    return features.memo[key]


def ranked_soft_masks(features: Features, p: FreeMaskParams) -> tuple[Queries, torch.Tensor, tuple[int, int]]:
    """Distinct pyramid queries and their soft masks on the ranking grid (memoised).

    Neither depends on τ, NMS or the filters, so a slider move reuses them: only the
    thresholding, labelling, NMS and the kept masks' upsampling run again.
    """
    key = ("ranked", tuple(sorted(set(p.scales))), p.query_stride, p.score_stride)
    memo = features.memo
    if key not in memo:
        for old in [k for k in memo if isinstance(k, tuple) and k and k[0] == "ranked"]:
            del memo[old]  # one entry: a new pyramid replaces the old one
        queries = distinct_queries(build_queries(features.keys, p.scales, p.query_stride))
        coarse = score_keys(features, p.score_stride)
        memo[key] = (queries, soft_masks(queries.vectors, coarse), (int(coarse.shape[1]), int(coarse.shape[2])))
    return memo[key]


def postprocess(
    features: Features, params: FreeMaskParams | None = None, image: np.ndarray | None = None,
    threads: int | None = None,
) -> FreeMaskResult:
    """Run Free Mask on cached ``features``; ``image`` (H, W, 3 uint8) guides the refinement.

    Without ``image`` the masks are the upsampled soft masks thresholded at τ (no refinement).
    ``threads``: how many masks are refined at once (default: the usable cores, at most 4);
    the result does not depend on it.
    """
    p = (params or FreeMaskParams()).validated()
    keys = features.keys
    grid = features.grid_size
    H, W = features.image_size
    if image is not None and tuple(image.shape[:2]) != (H, W):
        raise ValueError(f"image is {tuple(image.shape[:2])} but features were computed for {(H, W)}")
    queries, soft, cgrid = ranked_soft_masks(features, p)
    binary, area, mness = maskness(soft, p.tau)
    top_k = p.top_k or auto_top_k(features)
    pre_nms = max(p.pre_nms_top, 2 * top_k)  # images with many small objects need more candidates
    if p.split_components:
        cands = component_candidates(soft, binary, area, mness, cgrid, pre_nms)
    else:
        cands = whole_mask_candidates(soft, binary, area, mness, pre_nms)
    cands = drop_background_candidates(cands, cgrid, p, border_cells=max(1, -(-BORDER_INPUT_PX // p.score_stride)))
    decayed = matrix_nms(cands.binary.float(), cands.maskness, kernel=p.nms_kernel, sigma=p.nms_sigma)
    order = torch.argsort(decayed, descending=True)
    order = order[decayed[order] >= p.min_score]
    radius = p.refine_radius or auto_refine_radius(features)
    guide = guide_stats(features, image, radius, p.refine_eps) if (p.refine and image is not None) else None
    margin = round(BORDER_INPUT_PX / max(features.input_scale, 1e-6))

    found: list[tuple[InstanceMask, torch.Tensor]] = []
    shortlist = order[: 2 * top_k]  # spare candidates replace ones the filters drop
    fine = soft_masks(queries.vectors[cands.query[shortlist]], keys)  # kept masks on the fine grid, one product
    embeddings = np.round(queries.vectors[cands.query[shortlist]].numpy(), 4).tolist()
    if p.split_components:  # keep each part only (grown by one coarse cell for the refinement)
        gates = F.max_pool2d(cands.binary[shortlist].reshape(-1, 1, *cgrid).float(), 3, stride=1, padding=1)
        fine = fine * F.interpolate(gates, size=grid, mode="nearest").reshape(len(shortlist), -1)
    def refine_row(row: int):
        """The full-resolution mask crop and box of shortlist row ``row``, or None if filtered out."""
        region = fine[row]
        fine_binary = region >= p.tau
        if not bool(fine_binary.any()):
            return None
        out = _full_resolution_mask(region, fine_binary, grid, (H, W), p, radius, guide)
        if out is None or not _passes_filters(*out, p, (H, W), margin=margin):
            return None
        return out

    if guide is not None:
        guide.prepare()  # shared read-only arrays, made once before any thread reads them
    candidates = shortlist.tolist()
    with _mask_pool(threads, len(candidates)) as run:
        done = 0
        while done < len(candidates) and len(found) < top_k:
            # exactly as many candidates as masks still missing, so the work (and the result)
            # is that of a one-by-one loop stopping at the top_k-th mask
            batch = list(range(done, min(len(candidates), done + top_k - len(found))))
            done = batch[-1] + 1
            for row, out in zip(batch, run(refine_row, batch)):
                if out is None:
                    continue
                ci = candidates[row]
                qi = int(cands.query[ci])
                crop, (y0, y1, x0, x1) = out
                mask = np.zeros((H, W), dtype=bool)
                mask[y0:y1, x0:x1] = crop
                qy, qx = queries.yx[qi].tolist()
                inst = InstanceMask(
                    mask=mask,
                    score=float(decayed[ci]),
                    maskness=float(cands.maskness[ci]),
                    source="freemask",
                    box=(y0, y1, x0, x1),
                    extra={
                        "scale": float(queries.scale[qi]),
                        "query_yx": [round((qy + 0.5) * H / grid[0] - 0.5, 1),
                                     round((qx + 0.5) * W / grid[1] - 0.5, 1)],
                        "embedding": embeddings[row],
                    },
                )
                found.append((inst, fine[row]))
    return FreeMaskResult(
        top_k=top_k,
        instances=[inst for inst, _ in found],
        candidate_maskness=mness[area > 1].numpy(),
        n_queries=int(queries.vectors.shape[0]),
        refine_radius=int(radius),
        _soft=torch.stack([r.reshape(grid) for _, r in found]) if found else torch.zeros(0, *grid),
        _features=features,
    )


@contextmanager
def _mask_pool(threads: int | None, jobs: int):
    """A ``map`` that refines masks on a few threads (numpy, scipy and torch release the GIL
    in their inner loops, so two threads do about 1.5x the work of one), or in this thread."""
    n = min(MAX_MASK_THREADS, available_cpu_count()) if threads is None else int(threads)
    if n <= 1 or jobs <= 1:
        yield lambda fn, items: [fn(i) for i in items]
        return
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="freemask") as pool:
        yield pool.map


def _full_resolution_mask(
    soft_q: torch.Tensor,
    binary_q: torch.Tensor,
    grid: tuple[int, int],
    image_size: tuple[int, int],
    p: FreeMaskParams,
    radius: int,
    guide: GuideStats | None,
) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """Upsample one candidate's soft mask inside its box, refine, threshold at τ.

    Returns the mask crop and its box (y0, y1, x0, x1). With ``split_components`` only the
    largest full-resolution part is kept, so every instance is one connected object.
    """
    H, W = image_size
    y0, y1, x0, x1 = _crop_box(binary_q, grid, image_size, radius if guide is not None else 0)
    if guide is not None:
        crop = guide.filter_soft(soft_q.reshape(grid), (y0, y1, x0, x1)).clamp_(0.0, 1.0)
    else:
        crop = upsample_crop(soft_q.reshape(grid), image_size, (y0, y1, x0, x1))
    inside = crop.numpy() >= p.tau
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if rows.size == 0:
        return None
    # the tight box: labelling, filters and the final copy then skip the empty margins
    inside = inside[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
    y0, y1, x0, x1 = y0 + rows[0], y0 + rows[-1] + 1, x0 + cols[0], x0 + cols[-1] + 1
    if p.split_components:
        inside = largest_part(inside)
    return inside, (int(y0), int(y1), int(x0), int(x1))


def drop_background_candidates(
    cands: Candidates, grid: tuple[int, int], p: FreeMaskParams, border_cells: int = 1
) -> Candidates:
    """Apply the border and area filters on the key grid already, before NMS.

    Background regions reach several image sides; removing them here keeps them from
    taking top-k slots and from decaying real objects in Matrix NMS.
    """
    if p.max_border_sides >= 4 and p.max_area_frac >= 1.0:
        return cands
    m = cands.binary.reshape(-1, *grid)
    e = max(1, border_cells)
    sides = (m[:, :e].flatten(1).any(1).int() + m[:, -e:].flatten(1).any(1).int()
             + m[:, :, :e].flatten(1).any(1).int() + m[:, :, -e:].flatten(1).any(1).int())
    keep = (sides <= p.max_border_sides) & (m.flatten(1).sum(1) <= p.max_area_frac * grid[0] * grid[1])
    return Candidates(cands.query[keep], cands.binary[keep], cands.maskness[keep])


def largest_part(mask: np.ndarray) -> np.ndarray:
    """The biggest 8-connected part of a boolean mask."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n <= 1:
        return mask
    return labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)


def _passes_filters(
    crop: np.ndarray, box: tuple[int, int, int, int], p: FreeMaskParams, image_size: tuple[int, int], margin: int = 1
) -> bool:
    """Area, border and the official filters, on a mask crop placed at ``box`` in the image."""
    H, W = image_size
    y0, y1, x0, x1 = box
    area = int(crop.sum())
    if area < max(p.min_area, 2) or area > p.max_area_frac * H * W:
        return False
    if p.max_border_sides < 4:
        m = max(1, int(margin))
        rows, cols = crop.any(axis=1), crop.any(axis=0)
        ys, xs = np.nonzero(rows)[0] + y0, np.nonzero(cols)[0] + x0
        sides = int(ys.min() < m) + int(ys.max() >= H - m) + int(xs.min() < m) + int(xs.max() >= W - m)
        if sides > p.max_border_sides:
            return False
    if p.center_y_min is not None or p.max_box_width is not None:
        ys, xs = np.nonzero(crop)
        if p.center_y_min is not None and ys.mean() + y0 <= p.center_y_min * H:
            return False
        if p.max_box_width is not None and (xs.max() - xs.min() + 1) >= p.max_box_width * W:
            return False
    return True
