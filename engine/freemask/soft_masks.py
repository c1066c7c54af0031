"""Soft masks: cosine similarity of each query with every key, min-max normalised per query; maskness.

soft_q(n) = (cos(q, k_n) - min_m cos(q, k_m)) / (max_m cos(q, k_m) - min_m cos(q, k_m))
maskness_q = mean of soft_q over the cells where soft_q >= tau

Candidates are ranked on a pooled key grid (``score_stride``); the queries and their soft masks
there depend on the features and the pyramid only, so they are memoised and a slider move
(tau, NMS, filters) reuses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from engine.freemask.features import Features
from engine.geometry import cell_centre, pixel_cell
from engine.ops.masks import inner_edge, maskness
from engine.freemask.queries import Queries, build_queries, distinct_queries


class QueryPyramid(Protocol):
    """The parameters that fix the queries and the ranking grid (``FreeMaskParams`` has them)."""

    scales: tuple[float, ...]
    query_stride: int | None
    score_stride: int


def soft_masks(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Cosine similarity (Q, N) of each query with every key, min-max normalised per query."""
    sim = queries @ keys.reshape(keys.shape[0], -1)
    lo = sim.min(dim=1, keepdim=True).values
    hi = sim.max(dim=1, keepdim=True).values
    return (sim - lo) / (hi - lo).clamp_min(1e-6)


def query_similarity(features: Features, y: float, x: float) -> np.ndarray:
    """Soft mask (key-grid resolution) of the query at image pixel (y, x): the query inspector."""
    keys = features.keys
    h, w = features.grid_size
    ky = pixel_cell(y, h, features.image_size[0])
    kx = pixel_cell(x, w, features.image_size[1])
    q = keys[:, ky, kx][None]
    return soft_masks(q, keys)[0].reshape(h, w).numpy()


@dataclass
class QueryView:
    """What the query inspector shows for one clicked pixel, on the key grid."""

    soft: np.ndarray  # (h, w) float32 soft mask of the query
    edge: np.ndarray  # (h, w) bool: the inner edge of soft >= tau
    maskness: float  # mean soft value inside soft >= tau (0 if empty)
    area_fraction: float  # share of the grid inside soft >= tau
    scale: tuple[float, float]  # image pixels per grid cell
    translate: tuple[float, float]  # pixel coordinate of the first cell's centre


def query_view(features: Features, y: float, x: float, tau: float) -> QueryView:
    """The soft mask, τ contour and maskness of the query at image pixel (y, x)."""
    soft = query_similarity(features, y, x).astype(np.float32)
    binary, area, mness = maskness(torch.from_numpy(soft)[None], tau)
    inside = binary[0].numpy()
    (h, w), (H, W) = soft.shape, features.image_size
    return QueryView(soft, inner_edge(inside), float(mness[0]), float(area[0]) / inside.size,
                     (H / h, W / w), (cell_centre(0, h, H), cell_centre(0, w, W)))


def score_keys(features: Features, score_stride: int) -> torch.Tensor:
    """The key map pooled to ``score_stride`` (memoised): where candidates are scored and ranked.

    Scoring every query against every stride-8 key costs Q × N work per slider move; ranking
    on a coarser grid (the paper ranks on stride 32) is 4× cheaper at stride 16, and only the
    kept masks are then recomputed on the stride-8 grid.
    """
    factor = max(1, score_stride // 8)
    if factor == 1:
        return features.keys
    return features.memo.get("score_keys", factor,
                             lambda: F.normalize(F.avg_pool2d(features.keys[None], factor, ceil_mode=True)[0], dim=0))


def ranked_soft_masks(features: Features, p: QueryPyramid) -> tuple[Queries, torch.Tensor, tuple[int, int]]:
    """Distinct pyramid queries and their soft masks on the ranking grid (memoised).

    Neither depends on τ, NMS or the filters, so a slider move reuses them: only the
    thresholding, labelling, NMS and the kept masks' upsampling run again.
    """
    key = (tuple(sorted(set(p.scales))), p.query_stride, p.score_stride)

    def compute():
        queries = distinct_queries(build_queries(features.keys, p.scales, p.query_stride))
        coarse = score_keys(features, p.score_stride)
        return queries, soft_masks(queries.vectors, coarse), (int(coarse.shape[1]), int(coarse.shape[2]))

    return features.memo.get("ranked", key, compute)
