"""Choosing which masks the student learns from (pseudo-label selection), without ground truth.

Free Mask's masks, or a student's predictions, mix objects with background fragments, merged
blobs and near-duplicates. Training on all of them teaches the junk; training on a fixed score
threshold keeps too few. The rule here keeps, per image, the best-scored masks that look like
single objects (a sensible share of the image, touching at most one image side, not mostly
covered by a better positive) and marks the others *ignore* instead of dropping them: the
trainer then down-weights the category loss in their cells rather than pushing them to
background, since many of them are real objects.

How many per image: a cap (``top``) and, with ``score_quantile``, a score floor taken from the
whole folder (the q-quantile of all its masks' scores). A folder-level floor adapts to the
images: a photo with a few objects keeps a few, a field of 60 nuclei keeps most of them.
Measured on the default Free Mask's masks of the CTC nuclei tuning half (a positive is right
when it matches a ground-truth nucleus at IoU 0.5): the best 8 per image kept 160 positives,
precision 0.68, recall 0.20; the 0.6-quantile floor (cap 100, objects from 0.05 % of the image,
``max_covered`` 0.5) kept 462 at 0.79 and 0.70. On 40 synthetic photos: 320 at 0.25 and 0.45
against 236 at 0.33 and 0.44.

Pure functions on ``ImageResult`` lists; the choice travels in COCO files as an ``ignore``
field on the annotation, so every round's training masks can be inspected.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from engine.ops.masks import border_sides
from engine.structures import IGNORE_KEY, Coverage, ImageResult, InstanceMask


@dataclass(frozen=True)
class SelectionConfig:
    """Which masks become positives; every other mask of the image is kept as an ignore region."""

    top: int = 8  # best-scored masks kept per image
    min_score: float = 0.0  # absolute score floor (self-training rounds use --keep-thr)
    score_quantile: float = 0.0  # > 0: also a floor at this quantile of all the folder's scores
    min_area_frac: float = 0.0015  # of the image area
    max_area_frac: float = 0.3
    max_border_sides: int = 1  # masks reaching more image sides look like background
    ignore_min_score: float = 0.0  # unselected masks scoring below this are dropped, not ignore regions
    max_covered: float = 1.0  # a mask with more than this share of its area under better positives is not one


def is_plausible_object(inst: InstanceMask, cfg: SelectionConfig) -> bool:
    h, w = inst.shape
    frac = inst.area / float(h * w)
    return (inst.score >= cfg.min_score and cfg.min_area_frac <= frac <= cfg.max_area_frac
            and border_sides(inst.crop, 1, (inst.box[0], inst.box[2]), inst.shape) <= cfg.max_border_sides)


def folder_score_floor(results: list[ImageResult], cfg: SelectionConfig) -> float:
    """The absolute floor and, with ``score_quantile``, the quantile of every mask's score in the folder."""
    scores = [inst.score for res in results for inst in res.instances]
    if cfg.score_quantile <= 0 or not scores:
        return cfg.min_score
    return max(cfg.min_score, float(np.quantile(np.asarray(scores, dtype=np.float64), cfg.score_quantile)))


def select_pseudo_labels(results: list[ImageResult], cfg: SelectionConfig | None = None) -> list[ImageResult]:
    """The same images; selected masks as they are, others with ``extra['ignore'] = 1`` (or dropped
    when they score below ``ignore_min_score``)."""
    cfg = cfg or SelectionConfig()
    floor = folder_score_floor(results, cfg)
    out = []
    for res in results:
        ranked = sorted(res.instances, key=lambda m: m.score, reverse=True)
        covered = Coverage((res.height, res.width)) if cfg.max_covered < 1.0 else None
        kept = 0
        marked = []
        for inst in ranked:
            take = (kept < cfg.top and inst.score >= floor and is_plausible_object(inst, cfg)
                    and (covered is None or covered.share(inst) <= cfg.max_covered))
            kept += take
            if take and covered is not None:
                covered.add(inst)
            if not take and inst.score < cfg.ignore_min_score:
                continue  # a confident "no": plain background for the student
            extra = {k: v for k, v in inst.extra.items() if k != IGNORE_KEY}
            if not take:
                extra[IGNORE_KEY] = 1
            marked.append(replace(inst, extra=extra))
        out.append(ImageResult(res.file_name, res.height, res.width, marked))
    return out
