"""Matrix NMS (SOLOv2): soft suppression of overlapping masks in one matrix operation.

Instead of greedily deleting overlapping masks, every mask's score is decayed by how much it
overlaps any higher-scored mask, compensated by how much that higher mask was itself
suppressed. This is the one implementation shared by Free Mask and the SOLO head.
"""

from __future__ import annotations

from typing import Literal

import torch

Kernel = Literal["gaussian", "linear"]


def mask_iou_matrix(masks: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of flattened masks ``(N, P)`` (bool or float in [0, 1]) -> ``(N, N)``."""
    m = masks.reshape(masks.shape[0], -1).float()
    inter = m @ m.T
    area = m.sum(dim=1)
    union = area[:, None] + area[None, :] - inter
    return inter / union.clamp_min(1e-6)


def matrix_nms(
    masks: torch.Tensor,
    scores: torch.Tensor,
    *,
    kernel: Kernel = "gaussian",
    sigma: float = 2.0,
) -> torch.Tensor:
    """Decayed scores for ``masks`` (N, ...) with ``scores`` (N,), in the input order.

    gaussian: decay_ij = exp(-sigma * (iou_ij^2 - comp_i^2));
    linear:   decay_ij = (1 - iou_ij) / (1 - comp_i);
    where iou_ij is the IoU of mask j with a higher-scored mask i and comp_i the largest IoU
    that mask i has with any mask scored above it.
    """
    n = scores.shape[0]
    if n == 0:
        return scores.clone()
    if masks.shape[0] != n:
        raise ValueError(f"{masks.shape[0]} masks but {n} scores")
    return matrix_nms_from_iou(mask_iou_matrix(masks), scores, kernel=kernel, sigma=sigma)


def matrix_nms_from_iou(
    iou: torch.Tensor,
    scores: torch.Tensor,
    *,
    kernel: Kernel = "gaussian",
    sigma: float = 2.0,
) -> torch.Tensor:
    """``matrix_nms`` given the pairwise IoU matrix (N, N) of the masks, in the input order
    (for masks held as crops, whose IoU is computed without full-size arrays)."""
    n = scores.shape[0]
    if n == 0:
        return scores.clone()
    order = torch.argsort(scores, descending=True)
    iou = iou[order][:, order].triu(diagonal=1)  # iou[i, j], i scored above j
    comp = iou.max(dim=0).values  # how much each mask was overlapped by a better one
    comp_ij = comp[:, None].expand(n, n)  # row i: suppression of the suppressor i
    if kernel == "gaussian":
        decay = torch.exp(-sigma * (iou**2 - comp_ij**2))
    elif kernel == "linear":
        decay = (1.0 - iou) / (1.0 - comp_ij).clamp_min(1e-6)
    else:
        raise ValueError(f"unknown Matrix NMS kernel {kernel!r} (use 'gaussian' or 'linear')")
    coef = decay.min(dim=0).values.clamp(max=1.0)
    decayed = torch.empty_like(scores)
    decayed[order] = scores[order] * coef
    return decayed
