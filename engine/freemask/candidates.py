"""Candidates: thresholded query masks (whole, or split into connected parts) entering Matrix NMS.

Everything here works on the ranking grid (one row per candidate, ``N = h * w`` cells).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from scipy import ndimage

from engine.ops.masks import border_sides_batch


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


class BackgroundFilter(Protocol):
    """The two filters that ``drop_background_candidates`` applies (``FreeMaskParams`` has them)."""

    max_border_sides: int
    max_area_frac: float


def drop_background_candidates(
    cands: Candidates, grid: tuple[int, int], p: BackgroundFilter, border_cells: int = 1
) -> Candidates:
    """Apply the border and area filters on the key grid already, before NMS.

    Background regions reach several image sides; removing them here keeps them from
    taking top-k slots and from decaying real objects in Matrix NMS.
    """
    if p.max_border_sides >= 4 and p.max_area_frac >= 1.0:
        return cands
    m = cands.binary.reshape(-1, *grid)
    sides = border_sides_batch(m, border_cells)
    keep = (sides <= p.max_border_sides) & (m.flatten(1).sum(1) <= p.max_area_frac * grid[0] * grid[1])
    return Candidates(cands.query[keep], cands.binary[keep], cands.maskness[keep])
