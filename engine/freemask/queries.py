"""Pyramid queries: the key map pooled at several scales, one unit vector per cell.

The official Free Mask pools the key map to a coarse grid per pyramid scale; every pooled
vector is a query. Near-copies (cosine above ``DISTINCT_QUERY_COS`` to a coarser query) are
dropped before they cost anything downstream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.geometry import cell_centre

DISTINCT_QUERY_COS = 0.95  # queries closer than this to a better one are not split again
MIN_QUERY_CELLS = 16  # sized to the image: at scale 1 the short side has at least this many query cells


@dataclass
class Queries:
    vectors: torch.Tensor  # (Q, D) unit vectors
    scale: torch.Tensor  # (Q,) pyramid scale of each query
    yx: torch.Tensor  # (Q, 2) query centre in key-grid coordinates


def query_cell_ratio(key_grid: tuple[int, int], query_stride: int | None) -> float:
    """Query cells per key cell at scale 1.

    A fixed ``query_stride`` (input px per query cell; keys live at stride 8) gives 8 / stride.
    ``None`` sizes the grid to the image: stride 32, but at least ``MIN_QUERY_CELLS`` cells on the
    short side (a 320² input gets 16 × 16 queries, not 10 × 10) and never finer than the keys.
    """
    if query_stride is not None:
        return 8.0 / query_stride
    return min(1.0, max(0.25, MIN_QUERY_CELLS / max(1, min(key_grid))))


def query_grid(key_grid: tuple[int, int], query_stride: int | None, scale: float = 1.0) -> tuple[int, int]:
    """(rows, columns) of the query grid at pyramid ``scale`` on a key map of ``key_grid`` cells."""
    ratio = query_cell_ratio(key_grid, query_stride)
    return max(1, round(key_grid[0] * ratio * scale)), max(1, round(key_grid[1] * ratio * scale))


def build_queries(keys: torch.Tensor, scales: tuple[float, ...], query_stride: int | None) -> Queries:
    """Pool the key map into one query grid per pyramid scale (area pooling, then L2 norm)."""
    d, h, w = keys.shape
    vecs, sc, yx = [], [], []
    for s in sorted(set(scales)):  # coarse first: they survive de-duplication
        gh, gw = query_grid((h, w), query_stride, s)
        pooled = F.adaptive_avg_pool2d(keys[None], (gh, gw))[0]
        vecs.append(F.normalize(pooled.reshape(d, -1).T, dim=1))
        ys = cell_centre(torch.arange(gh, dtype=torch.float32), gh, h)  # in key-grid coordinates
        xs = cell_centre(torch.arange(gw, dtype=torch.float32), gw, w)
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)
        yx.append(grid)
        sc.append(torch.full((gh * gw,), float(s)))
    return Queries(torch.cat(vecs), torch.cat(sc), torch.cat(yx))


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
