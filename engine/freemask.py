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

from engine.features import Features
from engine.masks import split_components
from engine.nms import matrix_nms
from engine.refine import GuideStats
from engine.structures import InstanceMask

REFINE_RADIUS_AT_SCALE_1 = 12  # px; measured best on photo-like images at native resolution


@dataclass(frozen=True)
class FreeMaskParams:
    """Every knob of the post-processing (none of them re-runs the backbone)."""

    tau: float = 0.5  # soft-mask threshold
    scales: tuple[float, ...] = (1.0, 0.5, 0.25)  # query pyramid, relative to the query grid
    query_stride: int = 32  # input pixels per query cell at scale 1.0
    pre_nms_top: int = 200  # candidates kept by maskness before Matrix NMS (cost control)
    top_k: int = 20  # masks returned per image
    nms_kernel: Literal["gaussian", "linear"] = "gaussian"
    nms_sigma: float = 2.0
    min_score: float = 0.0  # decayed maskness threshold (official script: 0.7)
    min_area: int = 16  # px at image resolution
    max_area_frac: float = 1.0  # drop masks covering more of the image than this
    max_border_sides: int = 4  # drop masks touching more image sides than this (background)
    split_components: bool = False  # one instance per connected part (touching objects)
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
    queries = build_queries(keys, p.scales, p.query_stride)
    soft = soft_masks(queries.vectors, keys)
    binary, area, mness = maskness(soft, p.tau)
    valid = area > 1
    cand = torch.nonzero(valid).flatten()
    cand = cand[torch.argsort(mness[cand], descending=True)][: p.pre_nms_top]
    decayed = matrix_nms(binary[cand].float(), mness[cand], kernel=p.nms_kernel, sigma=p.nms_sigma)
    order = torch.argsort(decayed, descending=True)
    order = order[decayed[order] >= p.min_score]
    radius = p.refine_radius or auto_refine_radius(features)
    if image is not None and tuple(image.shape[:2]) != (H, W):
        raise ValueError(f"image is {tuple(image.shape[:2])} but features were computed for {(H, W)}")
    guide = guide_stats(features, image, radius, p.refine_eps) if (p.refine and image is not None) else None

    found: list[tuple[InstanceMask, int]] = []
    slots = cand[order[: 3 * p.top_k]]  # spare candidates replace ones the filters drop
    for rank, qi in enumerate(slots.tolist()):
        if len(found) >= p.top_k:
            break
        score = float(decayed[order[rank]])
        qy, qx = queries.yx[qi].tolist()
        for mask, part_mness, whole_mness in _full_resolution_parts(
            soft[qi], binary[qi], grid, (H, W), p, radius, guide
        ):
            if not _passes_filters(mask, p, (H, W)):
                continue
            inst = InstanceMask(
                mask=mask,
                score=score * (part_mness / whole_mness if whole_mness > 0 else 1.0),
                maskness=float(mness[qi]),
                source="freemask",
                extra={
                    "scale": float(queries.scale[qi]),
                    "query_yx": [round((qy + 0.5) * H / grid[0] - 0.5, 1), round((qx + 0.5) * W / grid[1] - 0.5, 1)],
                    "embedding": [round(v, 4) for v in queries.vectors[qi].tolist()],
                },
            )
            found.append((inst, qi))
    found.sort(key=lambda pair: pair[0].score, reverse=True)
    found = found[: p.top_k]
    for slot, (inst, _) in enumerate(found):
        inst.extra["_slot"] = slot
    kept_q = torch.tensor([qi for _, qi in found], dtype=torch.long)
    return FreeMaskResult(
        instances=[inst for inst, _ in found],
        candidate_maskness=mness[valid].numpy(),
        n_queries=int(queries.vectors.shape[0]),
        refine_radius=int(radius),
        _soft=soft[kept_q].reshape(-1, *grid),
        _features=features,
    )


def _full_resolution_parts(
    soft_q: torch.Tensor,
    binary_q: torch.Tensor,
    grid: tuple[int, int],
    image_size: tuple[int, int],
    p: FreeMaskParams,
    radius: int,
    guide: GuideStats | None,
) -> list[tuple[np.ndarray, float, float]]:
    """Upsample one query's soft mask inside its box, refine, threshold, optionally split.

    Returns (full-size bool mask, maskness of the part, maskness of the whole) per part.
    """
    H, W = image_size
    y0, y1, x0, x1 = _crop_box(binary_q, grid, image_size, radius if guide is not None else 0)
    crop = upsample_crop(soft_q.reshape(grid), image_size, (y0, y1, x0, x1))
    if guide is not None:
        crop = guide.filter(crop, (y0, y1, x0, x1)).clamp_(0.0, 1.0)
    crop_np = crop.numpy()
    inside = crop_np >= p.tau
    if not inside.any():
        return []
    whole = float(crop_np[inside].mean())
    pieces = split_components(inside, min_area=max(p.min_area, 1)) if p.split_components else [inside]
    out = []
    for piece in pieces:
        full = np.zeros((H, W), dtype=bool)
        full[y0:y1, x0:x1] = piece
        out.append((full, float(crop_np[piece].mean()) if piece.any() else 0.0, whole))
    return out


def _passes_filters(mask: np.ndarray, p: FreeMaskParams, image_size: tuple[int, int]) -> bool:
    H, W = image_size
    area = int(mask.sum())
    if area < max(p.min_area, 2) or area > p.max_area_frac * H * W:
        return False
    if p.max_border_sides < 4:
        sides = int(mask[0].any()) + int(mask[-1].any()) + int(mask[:, 0].any()) + int(mask[:, -1].any())
        if sides > p.max_border_sides:
            return False
    if p.center_y_min is not None or p.max_box_width is not None:
        ys, xs = np.nonzero(mask)
        if p.center_y_min is not None and ys.mean() <= p.center_y_min * H:
            return False
        if p.max_box_width is not None and (xs.max() - xs.min() + 1) >= p.max_box_width * W:
            return False
    return True
