"""SOLOv2 label assignment, class-agnostic and vectorised.

FreeSOLO trains a one-category SOLOv2 on coarse masks. Each instance is sent to the
FPN level(s) whose scale range holds ``sqrt(box_h * box_w)`` and, on each, to the grid
cells around its mass centre inside ``sigma * box`` (at most 3x3 cells). The official
code loops over cells in Python; here every level is a handful of tensor ops over
(instances x S x S), so assignment costs well under a millisecond per instance.

Conventions (all documented where they are used):

* image coordinates are continuous: pixel ``(i, j)`` covers ``[i, i+1) x [j, j+1)``, so
  the mass centre of a mask is the mean of its pixel centres ``(i + 0.5, j + 0.5)`` and
  grid cell ``k`` of an ``S``-grid covers ``[k H/S, (k+1) H/S)``;
* the box is the tight pixel box of the mask (``box_h = y_max - y_min + 1``), so a
  40x40 square has scale 40; scale ranges are inclusive at both ends;
* when two instances claim a cell, the one with the smaller mask area (pixel count)
  wins, ties going to the lower instance index - deterministic, and it keeps small
  objects (the ones hardest to recover) from being hidden by large ones;
* mask targets are soft: the fraction of each ``mask_stride`` x ``mask_stride`` block
  covered by the mask (average pooling, masks zero-padded at the bottom/right to a
  multiple of the stride, i.e. ``ceil(H / stride)`` x ``ceil(W / stride)`` - the size a
  "same"-padded stride-4 feature map has). Dice losses take soft targets directly, and
  averaging keeps thin coarse masks that nearest/threshold resizing would erase.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "BatchTargets",
    "SoloTargets",
    "TargetConfig",
    "assign_targets",
    "batch_targets",
    "downweight_negatives",
    "mask_target_size",
]


@dataclass(frozen=True)
class TargetConfig:
    """Grid sizes and instance scale ranges per FPN level (defaults: SOLOv2 / FreeSOLO, P2-P6)."""

    num_grids: tuple[int, ...] = (40, 36, 24, 16, 12)
    scale_ranges: tuple[tuple[float, float], ...] = (
        (1, 96),
        (48, 192),
        (96, 384),
        (192, 768),
        (384, 2048),
    )
    sigma: float = 0.2
    mask_stride: int = 4

    def __post_init__(self) -> None:
        if len(self.num_grids) != len(self.scale_ranges):
            raise ValueError("num_grids and scale_ranges need one entry per level")
        if any(s < 1 for s in self.num_grids):
            raise ValueError("grid sizes must be >= 1")
        if any(lo > hi for lo, hi in self.scale_ranges):
            raise ValueError("each scale range must be (low, high) with low <= high")
        if self.mask_stride < 1:
            raise ValueError("mask_stride must be >= 1")

    @property
    def num_levels(self) -> int:
        return len(self.num_grids)

    @classmethod
    def cpu_small(cls) -> TargetConfig:
        """The model's "cpu-small" preset: three levels with coarser grids, for CPU training.

        Fewer, coarser levels mean fewer cells to classify and kernels to run; the ranges
        still overlap by a factor of two so mid-sized objects train two levels.
        """
        return cls(num_grids=(24, 16, 12), scale_ranges=((1, 64), (32, 128), (64, 2048)))

    @classmethod
    def from_head(cls, head: object, sigma: float = 0.2, mask_stride: int = 4) -> TargetConfig:
        """Targets matching a model head config (anything with ``num_grids`` and ``scale_ranges``).

        Building the targets from the head the model was built with keeps the two from
        drifting apart (grid sizes must match the category maps the head predicts).
        """
        return cls(
            num_grids=tuple(int(s) for s in head.num_grids),  # type: ignore[attr-defined]
            scale_ranges=tuple(
                (float(lo), float(hi)) for lo, hi in head.scale_ranges  # type: ignore[attr-defined]
            ),
            sigma=sigma,
            mask_stride=mask_stride,
        )


def mask_target_size(image_size: tuple[int, int], stride: int) -> tuple[int, int]:
    """Size of the unified mask feature for an input of ``image_size``: ``ceil`` of H, W / stride."""
    return math.ceil(image_size[0] / stride), math.ceil(image_size[1] / stride)


def _downsample_masks(m: torch.Tensor, stride: int) -> torch.Tensor:
    """(M, H, W) 0/1 float -> (M, ceil(H/s), ceil(W/s)) coverage in [0, 1], zero-padded avg pooling."""
    if stride == 1:
        return m.clone()
    h, w = m.shape[-2:]
    oh, ow = mask_target_size((h, w), stride)
    if m.shape[0] == 0:
        return m.new_zeros((0, oh, ow))
    m = F.pad(m, (0, ow * stride - w, 0, oh * stride - h))
    return F.avg_pool2d(m[:, None], kernel_size=stride, stride=stride)[:, 0]


@dataclass(frozen=True)
class SoloTargets:
    """Targets of one image. Per-level fields are tuples indexed by level.

    ``category[l]`` (S, S) float, 1 where a cell must predict an object; ``weight[l]``
    (S, S) float per-cell loss weight; ``positive_index[l]`` (P_l,) long flat cell index
    ``i * S + j`` of the positive cells, ascending; ``instance_index[l]`` (P_l,) long, the
    instance whose mask each positive cell must predict. ``masks`` holds every instance
    downsampled once (M, h, w); ``mask_targets(l)`` gathers the rows level ``l`` needs.
    """

    category: tuple[torch.Tensor, ...]
    weight: tuple[torch.Tensor, ...]
    positive_index: tuple[torch.Tensor, ...]
    instance_index: tuple[torch.Tensor, ...]
    masks: torch.Tensor
    image_size: tuple[int, int]
    mask_stride: int

    @property
    def num_levels(self) -> int:
        return len(self.category)

    @property
    def num_instances(self) -> int:
        return int(self.masks.shape[0])

    def mask_targets(self, level: int) -> torch.Tensor:
        """(P_l, ceil(H/stride), ceil(W/stride)) soft mask targets for level ``level``'s positives."""
        return self.masks[self.instance_index[level]]


@dataclass(frozen=True)
class BatchTargets:
    """Targets of a batch of same-sized images, per level.

    ``category[l]`` / ``weight[l]`` are (B, S, S). Positives of all images are concatenated:
    ``batch_index[l]`` says which image, ``positive_index[l]`` is the flat cell index inside
    that image, ``instance_index[l]`` the instance inside that image; ``flat_index(l)``
    indexes predictions flattened to (B * S * S,). ``images`` keeps the per-image targets.
    """

    category: tuple[torch.Tensor, ...]
    weight: tuple[torch.Tensor, ...]
    batch_index: tuple[torch.Tensor, ...]
    positive_index: tuple[torch.Tensor, ...]
    instance_index: tuple[torch.Tensor, ...]
    images: tuple[SoloTargets, ...]

    @property
    def num_levels(self) -> int:
        return len(self.category)

    def flat_index(self, level: int) -> torch.Tensor:
        """(P_l,) index of each positive into level ``level``'s predictions flattened to (B*S*S,)."""
        s = self.category[level].shape[-1]
        return self.batch_index[level] * (s * s) + self.positive_index[level]

    def mask_targets(self, level: int) -> torch.Tensor:
        """(P_l, h, w) soft mask targets, in the order of the concatenated positives."""
        parts = [t.mask_targets(level) for t in self.images]
        return torch.cat(parts, 0)


def _instance_geometry(
    mf: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixel area, box height/width, mass centre (cy, cx) and non-emptiness of (M, H, W) 0/1 masks.

    Only two reductions touch the full-resolution masks (row and column sums, exact in
    float32); everything else works on those (M, H) / (M, W) profiles in float64, so cell
    boundaries land where exact arithmetic puts them.
    """
    _, h, w = mf.shape
    row_mass = mf.sum(2).double()  # (M, H)
    col_mass = mf.sum(1).double()  # (M, W)
    rows, cols = row_mass > 0, col_mass > 0
    area = row_mass.sum(1)
    ys = torch.arange(h, device=mf.device, dtype=torch.float64) + 0.5
    xs = torch.arange(w, device=mf.device, dtype=torch.float64) + 0.5
    safe = area.clamp(min=1.0)
    cy = (row_mass @ ys) / safe
    cx = (col_mass @ xs) / safe
    # First / last occupied row via argmax of the indicator (argmax returns the first maximum).
    y0 = rows.to(torch.uint8).argmax(1)
    y1 = h - 1 - rows.flip(1).to(torch.uint8).argmax(1)
    x0 = cols.to(torch.uint8).argmax(1)
    x1 = w - 1 - cols.flip(1).to(torch.uint8).argmax(1)
    box_h = (y1 - y0 + 1).to(torch.float64)
    box_w = (x1 - x0 + 1).to(torch.float64)
    return area, box_h, box_w, cy, cx, area > 0


def _assign_level(
    num_grid: int,
    image_size: tuple[int, int],
    area: torch.Tensor,
    cy: torch.Tensor,
    cx: torch.Tensor,
    half_h: torch.Tensor,
    half_w: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Winner per cell for the n instances of one level: (pos (S, S) bool, winner (S, S) long into n)."""
    s = num_grid
    h, w = image_size
    n = int(area.shape[0])
    dev = area.device
    if n == 0:
        return torch.zeros((s, s), dtype=torch.bool, device=dev), torch.zeros(
            (s, s), dtype=torch.long, device=dev
        )

    def cell(v: torch.Tensor, size: int) -> torch.Tensor:
        return torch.floor(v / size * s).long()

    coord_h = cell(cy, h).clamp(0, s - 1)
    coord_w = cell(cx, w).clamp(0, s - 1)
    top = torch.maximum(cell(cy - half_h, h).clamp(min=0), coord_h - 1)
    down = torch.minimum(cell(cy + half_h, h).clamp(max=s - 1), coord_h + 1)
    left = torch.maximum(cell(cx - half_w, w).clamp(min=0), coord_w - 1)
    right = torch.minimum(cell(cx + half_w, w).clamp(max=s - 1), coord_w + 1)

    g = torch.arange(s, device=dev)
    in_rows = (g >= top[:, None]) & (g <= down[:, None])  # (n, S)
    in_cols = (g >= left[:, None]) & (g <= right[:, None])  # (n, S)
    claim = in_rows[:, :, None] & in_cols[:, None, :]  # (n, S, S)

    # Priority rank: smaller area first, ties to the lower index (stable sort).
    order = torch.sort(area, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=dev)
    cost = torch.where(claim, rank[:, None, None], torch.full_like(rank[:, None, None], n))
    best = cost.min(0).values  # (S, S)
    pos = best < n
    winner = order[best.clamp(max=n - 1)]
    return pos, winner


def assign_targets(
    masks: torch.Tensor,
    image_size: tuple[int, int],
    cfg: TargetConfig | None = None,
    weights: torch.Tensor | None = None,
) -> SoloTargets:
    """SOLOv2 targets for ONE image from its instance masks (M, H, W) at input resolution.

    ``weights`` (M,), e.g. pseudo-label confidences, become the loss weight of the cells
    each instance wins; all other cells weigh 1. Empty masks are ignored.
    """
    cfg = cfg or TargetConfig()
    h, w = int(image_size[0]), int(image_size[1])
    if masks.dim() != 3 or tuple(masks.shape[-2:]) != (h, w):
        raise ValueError(f"masks must be (M, {h}, {w}), got {tuple(masks.shape)}")
    # One float copy serves both the geometry sums and the pooled mask targets.
    m = (masks > 0.5 if masks.is_floating_point() else masks.bool()).float()
    dev = m.device
    num = int(m.shape[0])
    if weights is None:
        inst_w = torch.ones(num, device=dev)
    else:
        inst_w = torch.as_tensor(weights, dtype=torch.float32, device=dev).reshape(-1)
        if inst_w.shape[0] != num:
            raise ValueError(f"weights has {inst_w.shape[0]} entries for {num} masks")

    area, box_h, box_w, cy, cx, nonempty = _instance_geometry(m)
    scale = torch.sqrt(box_h * box_w)
    half_h = 0.5 * cfg.sigma * box_h
    half_w = 0.5 * cfg.sigma * box_w

    category, weight, positive, instance = [], [], [], []
    for s, (lo, hi) in zip(cfg.num_grids, cfg.scale_ranges):
        sel = torch.nonzero(nonempty & (scale >= lo) & (scale <= hi)).squeeze(1)
        pos, winner = _assign_level(
            s, (h, w), area[sel], cy[sel], cx[sel], half_h[sel], half_w[sel]
        )
        flat_pos = torch.nonzero(pos.reshape(-1)).squeeze(1)
        inst = sel[winner.reshape(-1)[flat_pos]]
        cell_w = torch.ones(s * s, device=dev)
        cell_w[flat_pos] = inst_w[inst]
        category.append(pos.float())
        weight.append(cell_w.reshape(s, s))
        positive.append(flat_pos)
        instance.append(inst)

    return SoloTargets(
        category=tuple(category),
        weight=tuple(weight),
        positive_index=tuple(positive),
        instance_index=tuple(instance),
        masks=_downsample_masks(m, cfg.mask_stride),
        image_size=(h, w),
        mask_stride=cfg.mask_stride,
    )


def downweight_negatives(
    targets: SoloTargets, ignore_masks: torch.Tensor, factor: float = 0.1
) -> SoloTargets:
    """Scale the weight of NEGATIVE cells whose centre lies inside any ignore mask by ``factor``.

    Ignore masks are candidates that pseudo-label selection did not keep: they may well be
    objects, so their cells should not be pushed hard to background. Positive cells and
    cells outside every ignore mask keep their weight. Returns new targets.
    """
    h, w = targets.image_size
    if ignore_masks.dim() != 3 or tuple(ignore_masks.shape[-2:]) != (h, w):
        raise ValueError(f"ignore_masks must be (K, {h}, {w}), got {tuple(ignore_masks.shape)}")
    if ignore_masks.shape[0] == 0:
        return targets
    m = ignore_masks > 0.5 if ignore_masks.is_floating_point() else ignore_masks.bool()
    union = m.any(0)
    new_weight = []
    for cat, wt in zip(targets.category, targets.weight):
        s = cat.shape[-1]
        centres = torch.arange(s, device=union.device, dtype=torch.float64) + 0.5
        rows = torch.floor(centres * h / s).long().clamp(max=h - 1)
        cols = torch.floor(centres * w / s).long().clamp(max=w - 1)
        inside = union[rows][:, cols].to(wt.device)
        hit = inside & (cat <= 0)
        new_weight.append(torch.where(hit, wt * factor, wt))
    return dataclasses.replace(targets, weight=tuple(new_weight))


def batch_targets(
    masks_list: Sequence[torch.Tensor],
    image_size: tuple[int, int],
    cfg: TargetConfig | None = None,
    weights_list: Sequence[torch.Tensor | None] | None = None,
    ignore_list: Sequence[torch.Tensor | None] | None = None,
    ignore_factor: float = 0.1,
) -> BatchTargets:
    """Assign every image of a batch (all of ``image_size``) and stack the results per level.

    ``ignore_list`` optionally gives each image's ignore masks for ``downweight_negatives``.
    """
    cfg = cfg or TargetConfig()
    b = len(masks_list)
    if weights_list is not None and len(weights_list) != b:
        raise ValueError("weights_list needs one entry per image")
    if ignore_list is not None and len(ignore_list) != b:
        raise ValueError("ignore_list needs one entry per image")
    images = []
    for i, masks in enumerate(masks_list):
        t = assign_targets(masks, image_size, cfg, None if weights_list is None else weights_list[i])
        ign = None if ignore_list is None else ignore_list[i]
        if ign is not None:
            t = downweight_negatives(t, ign, ignore_factor)
        images.append(t)

    category, weight, batch_idx, positive, instance = [], [], [], [], []
    for lvl, s in enumerate(cfg.num_grids):
        if b == 0:
            category.append(torch.zeros((0, s, s)))
            weight.append(torch.zeros((0, s, s)))
            empty = torch.zeros(0, dtype=torch.long)
            batch_idx.append(empty)
            positive.append(empty.clone())
            instance.append(empty.clone())
            continue
        category.append(torch.stack([t.category[lvl] for t in images]))
        weight.append(torch.stack([t.weight[lvl] for t in images]))
        pos = [t.positive_index[lvl] for t in images]
        batch_idx.append(
            torch.cat([torch.full_like(p, i) for i, p in enumerate(pos)])
        )
        positive.append(torch.cat(pos))
        instance.append(torch.cat([t.instance_index[lvl] for t in images]))
    return BatchTargets(
        category=tuple(category),
        weight=tuple(weight),
        batch_index=tuple(batch_idx),
        positive_index=tuple(positive),
        instance_index=tuple(instance),
        images=tuple(images),
    )
