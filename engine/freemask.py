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
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from engine.features import Features
from engine.masks import split_components
from engine.nms import matrix_nms
from engine.refine import GuideStats
from engine.structures import InstanceMask

# Backbone padding makes the outermost key cells look unlike their neighbours, so "touching
# the image side" means reaching into this many cells of the border.
BORDER_CELLS = 2
DISTINCT_QUERY_COS = 0.95  # queries closer than this to a better one are not split again
REFINE_RADIUS_AT_SCALE_1 = 12  # px; measured best on photo-like images at native resolution


@dataclass(frozen=True)
class FreeMaskParams:
    """Every knob of the post-processing (none of them re-runs the backbone)."""

    tau: float = 0.65  # soft-mask threshold (official 0.5; measured best here, see README)
    scales: tuple[float, ...] = (1.0, 0.5, 0.25)  # query pyramid, relative to the query grid
    query_stride: int = 32  # input pixels per query cell at scale 1.0
    pre_nms_top: int = 200  # candidates kept by maskness before Matrix NMS (cost control)
    top_k: int = 20  # masks returned per image
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
        if self.top_k < 1 or self.pre_nms_top < 1:
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
    _soft: torch.Tensor = field(repr=False, default_factory=lambda: torch.zeros(0))
    _features: Features | None = field(repr=False, default=None)

    def soft_mask(self, index: int) -> np.ndarray:
        """Full-resolution soft mask (before refinement) of kept instance ``index``, on demand."""
        assert self._features is not None
        h, w = self._features.image_size
        src = self._soft[self.instances[index].extra["_slot"]]
        return upsample_crop(src, (h, w), (0, h, 0, w)).numpy()


def build_queries(keys: torch.Tensor, scales: tuple[float, ...], query_stride: int) -> Queries:
    """Pool the key map into one query grid per pyramid scale (area pooling, then L2 norm)."""
    d, h, w = keys.shape
    ratio = 8.0 / query_stride  # keys live at stride 8
    vecs, sc, yx = [], [], []
    for s in sorted(set(scales), reverse=True):
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
    area = binary.sum(dim=1)
    inside = (soft * binary).sum(dim=1)
    return binary, area, inside / area.clamp_min(1)


def query_similarity(features: Features, y: float, x: float) -> np.ndarray:
    """Soft mask (key-grid resolution) of the query at image pixel (y, x): the query inspector."""
    keys = features.keys
    h, w = features.grid_size
    ky = int(np.clip((y + 0.5) * h / features.image_size[0], 0, h - 1))
    kx = int(np.clip((x + 0.5) * w / features.image_size[1], 0, w - 1))
    q = keys[:, ky, kx][None]
    return soft_masks(q, keys)[0].reshape(h, w).numpy()


def upsample_crop(soft: torch.Tensor, out_size: tuple[int, int], box: tuple[int, int, int, int]) -> torch.Tensor:
    """Bilinear upsampling of ``soft`` (h, w) to ``out_size``, evaluated only inside ``box``.

    ``box`` = (y0, y1, x0, x1) in output pixels; equals ``F.interpolate(align_corners=False)``
    on that window, without materialising the full-size map.
    """
    h, w = soft.shape
    y0, y1, x0, x1 = box

    def _axis(lo: int, hi: int, n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pos = ((torch.arange(lo, hi, dtype=torch.float32) + 0.5) * n_in / n_out - 0.5).clamp(0, n_in - 1)
        i0 = pos.floor().long()
        i1 = (i0 + 1).clamp(max=n_in - 1)
        return i0, i1, pos - i0

    r0, r1, rw = _axis(y0, y1, h, out_size[0])
    c0, c1, cw = _axis(x0, x1, w, out_size[1])
    rows = soft[r0] * (1 - rw)[:, None] + soft[r1] * rw[:, None]
    return rows[:, c0] * (1 - cw)[None] + rows[:, c1] * cw[None]


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


def _distinct_queries(cands: Candidates, queries: torch.Tensor, top: int, max_cos: float = DISTINCT_QUERY_COS) -> Candidates:
    """The ``top`` best candidates after dropping queries nearly parallel to a better one.

    Hundreds of queries on one background region (or one kind of object) give the same mask;
    labelling them all would be wasted work and would crowd out the rarer queries.
    """
    vecs = queries[cands.query]
    sim = (vecs @ vecs.T).triu(diagonal=1)  # rows: better candidates (sorted by maskness)
    keep = ~(sim > max_cos).any(dim=0)
    idx = torch.nonzero(keep).flatten()[:top]
    return Candidates(cands.query[idx], cands.binary[idx], cands.maskness[idx])


def component_candidates(soft, binary, area, mness, queries: torch.Tensor, grid: tuple[int, int], top: int) -> Candidates:
    """Split the ``top`` best query masks into 8-connected parts (one labelling call for all).

    Free Mask's masks are semantic: a query on one nucleus lights up every nucleus. Splitting
    before NMS lets every part compete on its own maskness, and NMS then removes the copies of
    the same part that other queries found.
    """
    whole = whole_mask_candidates(soft, binary, area, mness, soft.shape[0])
    whole = _distinct_queries(whole, queries, top)
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
    owner = torch.zeros(n + 1, dtype=torch.long)
    owner[flat.flatten()] = torch.arange(len(volume)).repeat_interleave(h * w)
    ids = torch.nonzero(counts[1:] > 1).flatten() + 1  # parts of at least 2 cells
    comp_mness = sums[ids] / counts[ids]
    ids = ids[torch.argsort(comp_mness, descending=True)][:top]
    rows = owner[ids]
    return Candidates(whole.query[rows], flat[rows] == ids[:, None], sums[ids] / counts[ids])


def postprocess(
    features: Features, params: FreeMaskParams | None = None, image: np.ndarray | None = None
) -> FreeMaskResult:
    """Run Free Mask on cached ``features``; ``image`` (H, W, 3 uint8) guides the refinement.

    Without ``image`` the masks are the upsampled soft masks thresholded at τ (no refinement).
    """
    p = (params or FreeMaskParams()).validated()
    keys = features.keys
    grid = features.grid_size
    H, W = features.image_size
    if image is not None and tuple(image.shape[:2]) != (H, W):
        raise ValueError(f"image is {tuple(image.shape[:2])} but features were computed for {(H, W)}")
    queries = build_queries(keys, p.scales, p.query_stride)
    soft = soft_masks(queries.vectors, keys)
    binary, area, mness = maskness(soft, p.tau)
    if p.split_components:
        cands = component_candidates(soft, binary, area, mness, queries.vectors, grid, p.pre_nms_top)
    else:
        cands = whole_mask_candidates(soft, binary, area, mness, p.pre_nms_top)
    cands = drop_background_candidates(cands, grid, p)
    decayed = matrix_nms(cands.binary.float(), cands.maskness, kernel=p.nms_kernel, sigma=p.nms_sigma)
    order = torch.argsort(decayed, descending=True)
    order = order[decayed[order] >= p.min_score]
    radius = p.refine_radius or auto_refine_radius(features)
    guide = guide_stats(features, image, radius, p.refine_eps) if (p.refine and image is not None) else None

    found: list[tuple[InstanceMask, torch.Tensor]] = []
    for ci in order[: 3 * p.top_k].tolist():  # spare candidates replace ones the filters drop
        if len(found) >= p.top_k:
            break
        qi = int(cands.query[ci])
        region = soft[qi]
        if p.split_components:  # keep this part only (grown by one cell for the refinement)
            gate = F.max_pool2d(cands.binary[ci].reshape(1, *grid).float(), 3, stride=1, padding=1)
            region = region * gate.flatten()
        mask = _full_resolution_mask(region, cands.binary[ci], grid, (H, W), p, radius, guide)
        if mask is None or not _passes_filters(mask, p, (H, W), margin=round(BORDER_CELLS * H / grid[0])):
            continue
        qy, qx = queries.yx[qi].tolist()
        inst = InstanceMask(
            mask=mask,
            score=float(decayed[ci]),
            maskness=float(cands.maskness[ci]),
            source="freemask",
            extra={
                "scale": float(queries.scale[qi]),
                "query_yx": [round((qy + 0.5) * H / grid[0] - 0.5, 1), round((qx + 0.5) * W / grid[1] - 0.5, 1)],
                "embedding": [round(v, 4) for v in queries.vectors[qi].tolist()],
                "_slot": len(found),
            },
        )
        found.append((inst, region))
    return FreeMaskResult(
        instances=[inst for inst, _ in found],
        candidate_maskness=mness[area > 1].numpy(),
        n_queries=int(queries.vectors.shape[0]),
        refine_radius=int(radius),
        _soft=torch.stack([r.reshape(grid) for _, r in found]) if found else torch.zeros(0, *grid),
        _features=features,
    )


def _full_resolution_mask(
    soft_q: torch.Tensor,
    binary_q: torch.Tensor,
    grid: tuple[int, int],
    image_size: tuple[int, int],
    p: FreeMaskParams,
    radius: int,
    guide: GuideStats | None,
) -> np.ndarray | None:
    """Upsample one candidate's soft mask inside its box, refine, threshold at τ.

    With ``split_components`` only the largest full-resolution part is kept, so every
    instance is one connected object.
    """
    H, W = image_size
    y0, y1, x0, x1 = _crop_box(binary_q, grid, image_size, radius if guide is not None else 0)
    crop = upsample_crop(soft_q.reshape(grid), image_size, (y0, y1, x0, x1))
    if guide is not None:
        crop = guide.filter(crop, (y0, y1, x0, x1)).clamp_(0.0, 1.0)
    inside = crop.numpy() >= p.tau
    if not inside.any():
        return None
    if p.split_components:
        parts = split_components(inside, min_area=1)
        inside = parts[0] if parts else inside
    full = np.zeros((H, W), dtype=bool)
    full[y0:y1, x0:x1] = inside
    return full


def border_sides(mask: np.ndarray | torch.Tensor, margin: int = 1) -> int:
    """How many image sides the mask reaches (within ``margin`` pixels of the edge)."""
    m = max(1, int(margin))
    return int(mask[:m].any()) + int(mask[-m:].any()) + int(mask[:, :m].any()) + int(mask[:, -m:].any())


def drop_background_candidates(cands: Candidates, grid: tuple[int, int], p: FreeMaskParams) -> Candidates:
    """Apply the border and area filters on the key grid already, before NMS.

    Background regions reach several image sides; removing them here keeps them from
    taking top-k slots and from decaying real objects in Matrix NMS.
    """
    if p.max_border_sides >= 4 and p.max_area_frac >= 1.0:
        return cands
    m = cands.binary.reshape(-1, *grid)
    e = BORDER_CELLS
    sides = (m[:, :e].flatten(1).any(1).int() + m[:, -e:].flatten(1).any(1).int()
             + m[:, :, :e].flatten(1).any(1).int() + m[:, :, -e:].flatten(1).any(1).int())
    keep = (sides <= p.max_border_sides) & (m.flatten(1).sum(1) <= p.max_area_frac * grid[0] * grid[1])
    return Candidates(cands.query[keep], cands.binary[keep], cands.maskness[keep])


def _passes_filters(mask: np.ndarray, p: FreeMaskParams, image_size: tuple[int, int], margin: int = 1) -> bool:
    H, W = image_size
    area = int(mask.sum())
    if area < max(p.min_area, 2) or area > p.max_area_frac * H * W:
        return False
    if p.max_border_sides < 4 and border_sides(mask, margin) > p.max_border_sides:
        return False
    if p.center_y_min is not None or p.max_box_width is not None:
        ys, xs = np.nonzero(mask)
        if p.center_y_min is not None and ys.mean() <= p.center_y_min * H:
            return False
        if p.max_box_width is not None and (xs.max() - xs.min() + 1) >= p.max_box_width * W:
            return False
    return True
