"""Turn SOLOv2 grid outputs of one image into scored instance masks (SOLOv2 inference).

Score = objectness x maskness (mean soft mask value inside the binary mask), because
FreeSOLO's objectness is trained on coarse, noisy targets and the mask's own confidence
ranks instances better. Duplicates from neighbouring cells are softly suppressed with the
engine's single Matrix NMS.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from engine.ops.masks import maskness
from engine.ops.nms import matrix_nms
from engine.structures import InstanceMask, tight_crop
from .config import InferenceConfig
from .model import MASK_STRIDE, SoloOutputs, dynamic_masks

__all__ = ["point_nms", "predict_instances"]


def point_nms(heat: torch.Tensor) -> torch.Tensor:
    """Zero every cell of (B, C, S, S) scores that is not the max of its 2x2 window (SOLO's point NMS).

    Neighbouring cells of one object fire together; keeping local maxima thins them
    before the expensive mask step.
    """
    pooled = F.max_pool2d(heat, kernel_size=2, stride=1, padding=1)[..., :-1, :-1]
    return heat * (pooled == heat)


def _flatten_levels(outputs: SoloOutputs, b: int) -> tuple[torch.Tensor, ...]:
    """Per-cell scores, kernels, level index, row and column over all levels of image ``b``."""
    scores, kernels, levels, rows, cols = [], [], [], [], []
    for level, (cate, kern) in enumerate(zip(outputs.categories, outputs.kernels, strict=True)):
        s = cate.shape[-1]
        scores.append(point_nms(cate[b : b + 1].sigmoid()).reshape(-1))
        kernels.append(kern[b].reshape(kern.shape[1], -1).T)
        idx = torch.arange(s * s, device=cate.device)
        levels.append(torch.full_like(idx, level))
        rows.append(idx // s)
        cols.append(idx % s)
    return tuple(torch.cat(t) for t in (scores, kernels, levels, rows, cols))


def _to_image(
    soft: torch.Tensor, image_size: tuple[int, int], input_size: tuple[int, int], thr: float, chunk: int = 16
) -> list[tuple[np.ndarray, tuple[int, int, int, int]]]:
    """Soft masks (N, h, w) at stride 4 -> (bool crop, tight box) per mask at image size.

    Upsample to the padded input, crop the valid region, resize to the image; done in
    chunks so 100 full-resolution float masks never sit in memory at once.
    """
    padded = (soft.shape[-2] * MASK_STRIDE, soft.shape[-1] * MASK_STRIDE)
    whole = (0, image_size[0], 0, image_size[1])
    out = []
    for start in range(0, soft.shape[0], chunk):
        x = soft[None, start : start + chunk]
        x = F.interpolate(x, size=padded, mode="bilinear", align_corners=False)
        x = x[..., : input_size[0], : input_size[1]]
        x = F.interpolate(x, size=tuple(image_size), mode="bilinear", align_corners=False)[0]
        out += [tight_crop(m, whole) for m in (x > thr).cpu().numpy()]
    return out


def _embeddings(outputs: SoloOutputs, b: int, cells: torch.Tensor) -> list[list[float]] | None:
    """Unit-length semantic embeddings of the flat cells ``cells`` (the order of ``_flatten_levels``),
    rounded as Free Mask writes its own; None without the embedding branch."""
    if not outputs.embeddings:
        return None
    flat = torch.cat([e[b].reshape(e.shape[1], -1).T for e in outputs.embeddings])[cells]
    return np.round(F.normalize(flat.float(), dim=1).cpu().numpy(), 4).tolist()


@torch.no_grad()
def predict_instances(
    outputs: SoloOutputs,
    image_index: int,
    image_size: tuple[int, int],
    input_size: tuple[int, int],
    cfg: InferenceConfig,
) -> list[InstanceMask]:
    """Instances of image ``image_index`` of the batch, at the original ``image_size`` (H, W).

    ``input_size`` (h, w) is the region of the (possibly padded) network input the image
    was resized to; the padded size is the mask feature size x 4. Masks are cropped to
    that region, then resized to the image, so padding never leaks into a mask.
    """
    scores, kernels, levels, rows, cols = _flatten_levels(outputs, image_index)
    keep = torch.nonzero(scores > cfg.score_thr).squeeze(1)
    if keep.numel() == 0:
        return []
    top = torch.argsort(scores[keep], descending=True)[: cfg.nms_pre]
    keep = keep[top]
    cate, kernels, levels, rows, cols = scores[keep], kernels[keep], levels[keep], rows[keep], cols[keep]

    soft = dynamic_masks(kernels, outputs.mask_features[image_index]).sigmoid()
    binary, area, mness = maskness(soft, cfg.mask_thr, strict=True)
    strides = torch.as_tensor(outputs.strides, device=area.device, dtype=area.dtype)
    big = area > strides[levels]  # masks smaller than their level's stride are noise
    if not bool(big.any()):
        return []
    soft, binary, area, mness, cate, levels, rows, cols, keep = (
        t[big] for t in (soft, binary, area, mness, cate, levels, rows, cols, keep)
    )
    score = cate * mness

    decayed = matrix_nms(binary, score, kernel=cfg.nms_kernel, sigma=cfg.nms_sigma)
    kept = torch.nonzero(decayed > cfg.update_thr).squeeze(1)
    if kept.numel() == 0:
        return []
    kept = kept[torch.argsort(decayed[kept], descending=True)[: cfg.max_per_image]]

    masks = _to_image(soft[kept], image_size, input_size, cfg.mask_thr)
    embeddings = _embeddings(outputs, image_index, keep[kept])

    out = []
    for n, k in enumerate(kept.tolist()):  # one InstanceMask per kept mask (<= max_per_image)
        extra = {"level": int(levels[k]), "cell": [int(rows[k]), int(cols[k])]}
        if embeddings is not None:
            extra["embedding"] = embeddings[n]
        out.append(
            InstanceMask(
                masks[n][0],
                box=masks[n][1],
                shape=tuple(image_size),
                score=float(decayed[k]),
                maskness=float(mness[k]),
                source="solo",
                extra=extra,
            )
        )
    return out
