"""The student at its objects' scale: training windows and tiled prediction.

Letterboxed whole to one size (320 px), a field of small nuclei shrinks until several share a
cell of SOLO's finest grid and the stride-4 mask features hold a nucleus in 3–4 px. Trained on
the ground truth of the CTC tuning half for 400 iterations, the student then found the large
GOWT1 nuclei (9 of 9) but 17 of 89 in a crowded HeLa quarter (AP50 0.23 on its own training
images). With ``TrainConfig.object_px`` the run gets one *scale* (network px per image px) that
makes the training masks' median object ``object_px`` wide; an image larger than ``size`` at
that scale is cut into windows of ``size`` network px that overlap by a quarter (the plan and
cores of ``engine/generators/tiling.py``). Each window is a training sample; prediction runs the
same windows, keeps each window's masks whose centre lies in its core, and one Matrix NMS over
them removes what two windows both found. An image that fits at the scale (or whose objects are
already large) is letterboxed whole, as without it. The scale is resolved once per training run
and saved in the checkpoint's ``train_config``, so prediction needs no masks.

Conventions: ``scale`` 0 means "no tiling"; windows are (y0, y1, x0, x1) in image px; a mask cut
by a window's edge is a positive of that window when at least half of its area lies inside,
otherwise an ignore region there (neither object nor background).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable

import numpy as np
import torch

from engine.generators.tiling import TilePlan, core_instances, plan_tiles
from engine.ops.masks import crop_iou_matrix
from engine.ops.nms import matrix_nms_from_iou
from engine.solo.config import InferenceConfig
from engine.structures import InstanceMask

KEEP_INSIDE = 0.5  # share of a mask's area a window must hold for it to be that window's positive


def folder_scale(masks: Iterable[InstanceMask], object_px: float) -> float:
    """Network px per image px that makes the median mask ``object_px`` wide (its square root of
    area); 0.0 (no tiling) when ``object_px`` is 0 or there are no masks."""
    sides = [float(np.sqrt(m.area)) for m in masks if m.area]
    if object_px <= 0 or not sides:
        return 0.0
    return float(object_px / np.median(sides))


def windows(shape: tuple[int, int], scale: float, size: int) -> TilePlan | None:
    """The windows an image of ``shape`` is cut into at ``scale``, or None when it fits in one
    ``size``-px input (or ``scale`` is 0) and is letterboxed whole."""
    if scale <= 0 or round(max(shape) * scale) <= size:
        return None
    return plan_tiles(shape, scale, size, size // 4)


def split_masks(instances: list[InstanceMask], window: tuple[int, int, int, int]
                ) -> tuple[list[tuple[int, np.ndarray]], list[np.ndarray]]:
    """One window's (positives as (index into ``instances``, mask), ignore regions), as
    window-sized boolean arrays; masks outside the window are in neither."""
    y0, y1, x0, x1 = window
    inside, cut = [], []
    for k, inst in enumerate(instances):
        by0, by1, bx0, bx1 = inst.box
        iy0, iy1, ix0, ix1 = max(y0, by0), min(y1, by1), max(x0, bx0), min(x1, bx1)
        if iy0 >= iy1 or ix0 >= ix1:
            continue
        part = inst.crop[iy0 - by0: iy1 - by0, ix0 - bx0: ix1 - bx0]
        n = int(np.count_nonzero(part))
        if not n:
            continue
        full = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        full[iy0 - y0: iy1 - y0, ix0 - x0: ix1 - x0] = part
        if n >= KEEP_INSIDE * inst.area:
            inside.append((k, full))
        else:
            cut.append(full)
    return inside, cut


def merge_windows(per_window: list[list[InstanceMask]], plan: TilePlan, image_size: tuple[int, int],
                  inference: InferenceConfig) -> list[InstanceMask]:
    """Every window's masks whose centre is in its core, in image coordinates, through one Matrix
    NMS (exact IoU of the crops; the model's kernel and sigma), best decayed score first, those
    above ``update_thr``."""
    kept = core_instances(per_window, plan, image_size)
    if len(kept) < 2:
        return kept
    scores = torch.tensor([m.score for m in kept], dtype=torch.float32)
    iou = crop_iou_matrix([m.crop for m in kept], [m.box for m in kept])
    decayed = matrix_nms_from_iou(iou, scores, kernel=inference.nms_kernel, sigma=inference.nms_sigma)
    order = [int(i) for i in torch.argsort(decayed, descending=True) if float(decayed[i]) > inference.update_thr]
    return [replace(kept[i], score=float(decayed[i])) for i in order]
