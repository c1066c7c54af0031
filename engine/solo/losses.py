"""Losses for FreeSOLO's self-supervised SOLOv2.

Free Masks are coarse, so FreeSOLO does not ask the predicted mask to match them pixel for pixel:
the mask loss compares only their projections onto the x and y axes (max-projection Dice, plus a
small average-projection term), and a BoxInst-style pairwise term asks neighbouring pixels of
similar colour to share a label, which puts the boundary on image edges. The category grid is
trained with focal loss; an optional cosine loss ties per-cell embeddings to Free Mask embeddings.

Every function is pure and batched over instances. All arithmetic runs in float32 (inputs are
upcast), so results are the same and finite under ``torch.autocast`` with fp16/bf16 inputs;
returned tensors are float32.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "dice_loss",
    "projection_dice_loss",
    "weak_mask_loss",
    "full_mask_loss",
    "rgb_to_lab",
    "lab_color_similarity",
    "pairwise_affinity_loss",
    "warmup_factor",
    "sigmoid_focal_loss",
    "focal_loss_positive_only",
    "embedding_cosine_loss",
]

ProjectionMode = Literal["max", "avg"]

# BoxInst's temperature for colour similarity in Lab units: exp(-||ΔLab|| / 2).
LAB_THETA = 2.0

# sRGB (linear) -> CIE XYZ, D65 white point (IEC 61966-2-1).
_RGB_TO_XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
_D65_WHITE = (0.95047, 1.0, 1.08883)


def dice_loss(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-instance Dice loss 1 - 2Σpt / (Σp² + Σt² + eps), SOLO's squared-denominator form.

    pred, target: (N, ...) with values in [0, 1]; every dimension after the first is summed, so
    the same function serves full masks (N, H, W) and projections (N, L). Returns (N,).
    Squared sums keep the gradient well defined for empty masks (it is 0, not NaN).
    """
    p = pred.float().flatten(1)
    t = target.to(p.dtype).flatten(1)
    inter = (p * t).sum(1)
    denom = (p * p).sum(1) + (t * t).sum(1) + eps
    return 1.0 - 2.0 * inter / denom


def _project(x: Tensor, dim: int, mode: ProjectionMode) -> Tensor:
    if mode == "max":
        return x.amax(dim=dim)
    if mode == "avg":
        return x.mean(dim=dim)
    raise ValueError(f"projection mode must be 'max' or 'avg', got {mode!r}")


def projection_dice_loss(pred: Tensor, target: Tensor, mode: ProjectionMode = "max") -> Tensor:
    """Dice on the x- and y-projections of the masks, summed: (N, H, W) x2 -> (N,).

    With ``mode="max"`` a mask and its bounding box have the same projections, so the loss only
    asks the prediction to fill the coarse mask's extent, not to copy its (unreliable) outline.
    ``mode="avg"`` projects by the mean, which also carries how much of each row/column is filled.
    """
    if pred.dim() != 3 or target.shape != pred.shape:
        shapes = f"{tuple(pred.shape)} and {tuple(target.shape)}"
        raise ValueError(f"expected pred and target of equal shape (N, H, W), got {shapes}")
    p = pred.float()
    t = target.to(p.dtype)
    along_y = dice_loss(_project(p, 1, mode), _project(t, 1, mode))  # (N, W)
    along_x = dice_loss(_project(p, 2, mode), _project(t, 2, mode))  # (N, H)
    return along_y + along_x


def weak_mask_loss(pred: Tensor, target: Tensor, alpha: float = 0.1) -> Tensor:
    """FreeSOLO's mask loss: max-projection Dice + alpha x average-projection Dice, (N,)."""
    return projection_dice_loss(pred, target, "max") + alpha * projection_dice_loss(pred, target, "avg")


# Plain SOLO (full-mask supervision), for ablations against the weak loss.
full_mask_loss = dice_loss


def rgb_to_lab(image: Tensor) -> Tensor:
    """sRGB (B, 3, H, W) -> CIE Lab (D65), same shape, float32.

    Float input is read as RGB in [0, 1]; uint8 input as 0..255 (divided by 255). The XYZ step uses
    broadcast multiply-and-sum rather than a matmul so autocast cannot drop it to half precision.
    """
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"expected image of shape (B, 3, H, W), got {tuple(image.shape)}")
    rgb = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    rgb = rgb.clamp(0.0, 1.0)
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    matrix = torch.tensor(_RGB_TO_XYZ, dtype=torch.float32, device=image.device)
    white = torch.tensor(_D65_WHITE, dtype=torch.float32, device=image.device)
    xyz = (matrix[None, :, :, None, None] * linear[:, None]).sum(2)  # (B, 3, H, W)
    xyz = xyz / white[None, :, None, None]
    delta = 6.0 / 29.0
    cube_root = xyz.clamp_min(delta**3) ** (1.0 / 3.0)  # clamp: no NaN gradient from the unused branch
    f = torch.where(xyz > delta**3, cube_root, xyz / (3 * delta * delta) + 4.0 / 29.0)
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    return torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), dim=1)


def _unfold_neighbours(x: Tensor, kernel: int, dilation: int) -> Tensor:
    """(B, C, H, W) -> (B, C, K²-1, H, W): the dilated K×K neighbours of each pixel, centre dropped.

    Out-of-image neighbours are zeros (unfold's padding); callers mask them with `_valid_neighbours`.
    """
    if kernel < 3 or kernel % 2 == 0:
        raise ValueError(f"kernel must be odd and >= 3, got {kernel}")
    b, c, h, w = x.shape
    cols = F.unfold(x, kernel_size=kernel, dilation=dilation, padding=dilation * (kernel // 2))
    cols = cols.view(b, c, kernel * kernel, h, w)
    centre = kernel * kernel // 2
    return torch.cat((cols[:, :, :centre], cols[:, :, centre + 1 :]), dim=2)


def _valid_neighbours(h: int, w: int, kernel: int, dilation: int, device: torch.device) -> Tensor:
    """(1, K²-1, H, W) float: 1 where the neighbour lies inside the image."""
    ones = torch.ones(1, 1, h, w, dtype=torch.float32, device=device)
    return _unfold_neighbours(ones, kernel, dilation)[:, 0]


def lab_color_similarity(
    image: Tensor, kernel: int = 3, dilation: int = 2, theta: float = LAB_THETA
) -> Tensor:
    """Colour similarity exp(-||Lab_i - Lab_j|| / theta) of each pixel to its K²-1 dilated neighbours.

    image: (B, 3, H, W) RGB, float in [0, 1] or uint8 0..255 (see `rgb_to_lab`).
    Returns (B, K²-1, H, W); neighbours outside the image get 0 (not the similarity to the
    zero padding, which would wrongly tie dark border pixels to "black" outside), so they never
    pass the pairwise loss's threshold.
    """
    if not theta > 0:
        raise ValueError(f"theta must be positive, got {theta}")
    lab = rgb_to_lab(image)
    b, _, h, w = lab.shape
    neigh = _unfold_neighbours(lab, kernel, dilation)  # (B, 3, K²-1, H, W)
    dist = (neigh - lab[:, :, None]).pow(2).sum(1).add(1e-12).sqrt()
    return torch.exp(-dist / theta) * _valid_neighbours(h, w, kernel, dilation, lab.device)


def pairwise_affinity_loss(
    mask_logits: Tensor,
    color_sim: Tensor,
    box_mask: Tensor,
    threshold: float = 0.3,
    kernel: int = 3,
    dilation: int = 2,
) -> Tensor:
    """BoxInst pairwise loss per instance: -mean log P(i, j same label) over similar-colour pairs.

    mask_logits: (N, H, W); color_sim: (N, K²-1, H, W) from `lab_color_similarity`, already indexed
    by each instance's image; box_mask: (N, H, W), 1 inside the coarse mask's bounding box (the
    centre pixel i must lie there). P(same) = p_i p_j + (1-p_i)(1-p_j) is evaluated as
    logaddexp(log p_i + log p_j, log(1-p_i) + log(1-p_j)) with logsigmoid, so saturated logits give
    neither log(0) nor NaN gradients. Pairs whose neighbour lies outside the image are ignored.
    Normalised by the number of weighted pairs (at least 1). Returns (N,).
    """
    if mask_logits.dim() != 3:
        raise ValueError(f"expected mask_logits (N, H, W), got {tuple(mask_logits.shape)}")
    n, h, w = mask_logits.shape
    k2 = kernel * kernel - 1
    if color_sim.shape != (n, k2, h, w):
        raise ValueError(f"expected color_sim of shape {(n, k2, h, w)}, got {tuple(color_sim.shape)}")
    x = mask_logits.float()[:, None]  # (N, 1, H, W)
    log_fg = F.logsigmoid(x)
    log_bg = F.logsigmoid(-x)
    log_fg_j = _unfold_neighbours(log_fg, kernel, dilation)[:, 0]  # (N, K²-1, H, W)
    log_bg_j = _unfold_neighbours(log_bg, kernel, dilation)[:, 0]
    log_same = torch.logaddexp(log_fg + log_fg_j, log_bg + log_bg_j)
    weights = (color_sim.float() >= threshold).float()
    weights = weights * box_mask.float()[:, None] * _valid_neighbours(h, w, kernel, dilation, x.device)
    total = -(log_same * weights).sum((1, 2, 3))
    return total / weights.sum((1, 2, 3)).clamp_min(1.0)


def warmup_factor(step: int, warmup_iters: int = 1000) -> float:
    """Linear ramp min(step / warmup_iters, 1) for the pairwise loss: early masks are noise, and
    asking noise to be smooth only slows learning the extent."""
    if warmup_iters <= 0:
        return 1.0
    return float(min(max(step, 0) / warmup_iters, 1.0))


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    weights: Tensor | None = None,
    reduction: Literal["none", "mean", "sum"] = "sum",
) -> Tensor:
    """RetinaNet focal loss -alpha_t (1 - p_t)^gamma log p_t, elementwise on logits of any shape.

    targets: same shape, in [0, 1]. alpha < 0 disables the class balance term. weights (broadcast
    to logits) scale each term: 0 drops negatives covered by unselected pseudo-labels, or every
    negative in self-training (see `focal_loss_positive_only`). "mean" divides by the element count.
    """
    x = logits.float()
    t = targets.to(x.dtype)
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1.0 - p) * (1.0 - t)
    loss = ce * (1.0 - p_t).clamp_min(0.0) ** gamma
    if alpha >= 0:
        loss = (alpha * t + (1.0 - alpha) * (1.0 - t)) * loss
    if weights is not None:
        loss = loss * weights.to(loss.dtype)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def focal_loss_positive_only(
    logits: Tensor,
    targets: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: Literal["none", "mean", "sum"] = "sum",
    weights: Tensor | None = None,
) -> Tensor:
    """Focal loss at positive cells only ("pseudo" self-training mode): objects the pseudo-labels
    missed are not pushed towards background. ``weights`` (e.g. ignore down-weighting) still apply."""
    positive = (targets > 0).to(logits.dtype)
    return sigmoid_focal_loss(logits, targets, alpha, gamma, reduction=reduction,
                              weights=positive if weights is None else weights * positive)


def embedding_cosine_loss(pred: Tensor, target: Tensor) -> Tensor:
    """1 - cos(pred, target) along the last dimension: (N, D) x2 -> (N,), in [0, 2].

    Only the direction of a Free Mask embedding is meaningful, so the scale is not supervised.
    """
    return 1.0 - F.cosine_similarity(pred.float(), target.float(), dim=-1, eps=1e-8)

