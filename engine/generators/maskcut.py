"""MaskCut (Wang et al., CutLER, CVPR 2023): objects as normalised cuts of the key-map affinity graph.

On the ranking grid (N cells, unit keys k_i) the affinity is W_ij = 1 if cos(k_i, k_j) > tau_ncut,
else eps; D = diag(sum_j W_ij). The second-smallest generalised eigenvector x of
(D - W) x = lambda D x splits the cells at its mean; the side holding the largest |x_i| is the
foreground, unless it covers 3 or more grid corners (then it is background and the other side is
taken). Its connected part holding that seed is one object; its cells leave the graph and the cut
repeats, up to ``n_masks`` times.

Each object becomes a query (the normalised mean key of its cells), so it is upsampled and
refined exactly as Free Mask's candidates are (``engine/freemask/postprocess.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from scipy import ndimage

from engine.freemask.candidates import Candidates
from engine.freemask.features import Features
from engine.freemask.postprocess import FreeMaskParams, Ranked
from engine.freemask.queries import Queries
from engine.freemask.soft_masks import score_keys, soft_masks
from engine.geometry import cell_centre


@dataclass(frozen=True)
class MaskCutParams:
    n_masks: int = 3  # cuts per image (CutLER: 3)
    tau: float = 0.2  # affinity threshold on the cosine of two keys (CutLER on DINO keys: 0.15)
    eps: float = 1e-5  # affinity below the threshold
    min_cells: int = 2  # smaller partitions are not objects
    max_cells: int = 1600  # the cut runs on at most this many cells (keys pooled further if needed)


def _second_eigenvector(keys: torch.Tensor, p: MaskCutParams) -> np.ndarray:
    a = (keys @ keys.T).numpy().astype(np.float64)
    w = np.where(a > p.tau, 1.0, p.eps)
    d = np.diag(w.sum(axis=1))
    _vals, vecs = scipy.linalg.eigh(d - w, d, subset_by_index=[1, 1])
    return vecs[:, 0]


def _corners(part: np.ndarray) -> int:
    return int(part[0, 0]) + int(part[0, -1]) + int(part[-1, 0]) + int(part[-1, -1])


def cut_once(keys: torch.Tensor, alive: np.ndarray, grid: tuple[int, int], p: MaskCutParams) -> np.ndarray | None:
    """One object (bool grid) among the ``alive`` cells, or None when nothing separates."""
    idx = np.flatnonzero(alive.ravel())
    if idx.size < max(4, 2 * p.min_cells):
        return None
    vec = _second_eigenvector(keys[idx], p)
    side = vec > vec.mean()
    seed = int(np.argmax(np.abs(vec)))
    if not side[seed]:
        side = ~side
    part = np.zeros(grid[0] * grid[1], bool)
    part[idx[side]] = True
    part = part.reshape(grid)
    if _corners(part) >= 3:  # the background: take the other side, seeded at its strongest cell
        rest = ~side
        if not rest.any():
            return None
        seed = int(np.argmax(np.where(rest, np.abs(vec), -1.0)))
        part = np.zeros(grid[0] * grid[1], bool)
        part[idx[rest]] = True
        part = part.reshape(grid)
    labels, _n = ndimage.label(part, structure=np.ones((3, 3), bool))
    seed_label = labels.ravel()[idx[seed]]
    obj = labels == seed_label if seed_label else part
    return obj if obj.sum() >= p.min_cells else None


def maskcut_ranked(features: Features, params: FreeMaskParams, mc: MaskCutParams | None = None) -> Ranked:
    """MaskCut's objects as ranked candidates on Free Mask's ranking grid (best maskness first)."""
    mc = mc or MaskCutParams()
    coarse = score_keys(features, params.score_stride)
    factor = math.ceil(math.sqrt(coarse.shape[1] * coarse.shape[2] / mc.max_cells))
    if factor > 1:  # a dense eigenproblem is cubic in the cells: pool the keys further
        coarse = F.normalize(F.avg_pool2d(coarse[None], factor, ceil_mode=True)[0], dim=0)
    grid = (int(coarse.shape[1]), int(coarse.shape[2]))
    keys = coarse.reshape(coarse.shape[0], -1).T.contiguous()  # (N, D)
    alive = np.ones(grid, bool)
    parts = []
    for _ in range(mc.n_masks):
        obj = cut_once(keys, alive, grid, mc)
        if obj is None:
            break
        parts.append(obj)
        alive &= ~obj
    if not parts:
        empty = torch.zeros(0, dtype=torch.long)
        return Ranked(Queries(torch.zeros(0, keys.shape[1]), torch.zeros(0), torch.zeros(0, 2)),
                      Candidates(empty, torch.zeros(0, keys.shape[0], dtype=torch.bool), torch.zeros(0)),
                      torch.zeros(0), empty, np.zeros(0), grid)
    binary = torch.from_numpy(np.stack([o.ravel() for o in parts]))
    vectors = F.normalize(binary.float() @ keys, dim=1)
    inside = (soft_masks(vectors, coarse) * binary).sum(1) / binary.sum(1).clamp_min(1)  # mean soft inside the part
    centres = torch.tensor(np.stack([np.argwhere(o).mean(axis=0) for o in parts]), dtype=torch.float32)
    fine = features.grid_size  # query centres in the fine key grid's coordinates, as Free Mask's
    yx = torch.stack([cell_centre(centres[:, 0], grid[0], fine[0]), cell_centre(centres[:, 1], grid[1], fine[1])], 1)
    queries = Queries(vectors, torch.ones(len(parts)), yx)
    cands = Candidates(torch.arange(len(parts)), binary, inside)
    order = torch.argsort(inside, descending=True)
    return Ranked(queries, cands, inside.clone(), order, inside.numpy(), grid)
