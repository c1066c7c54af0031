"""Choosing which masks the student learns from (pseudo-label selection), without ground truth.

Free Mask's top-20 per image, or a student's predictions, mix objects with background
fragments and merged blobs. Training on all of them teaches the junk; training on a fixed score
threshold keeps too few. The rule here keeps, per image, the best-scored masks that look like
single objects (a sensible share of the image, touching at most one image side), and marks the
others *ignore* instead of dropping them: the trainer then down-weights the category loss in
their cells rather than pushing them to background, since many of them are real objects.

Pure functions on ``ImageResult`` lists; the choice travels in COCO files as an ``ignore``
field on the annotation, so every round's training masks can be inspected.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


from engine.ops.masks import border_sides
from engine.structures import IGNORE_KEY, ImageResult, InstanceMask



@dataclass(frozen=True)
class SelectionConfig:
    """Which masks become positives; every other mask of the image is kept as an ignore region."""

    top: int = 8  # best-scored masks kept per image
    min_score: float = 0.0  # absolute score floor (self-training rounds use --keep-thr)
    min_area_frac: float = 0.0015  # of the image area
    max_area_frac: float = 0.3
    max_border_sides: int = 1  # masks reaching more image sides look like background
    ignore_min_score: float = 0.0  # unselected masks scoring below this are dropped, not ignore regions


def is_plausible_object(inst: InstanceMask, cfg: SelectionConfig) -> bool:
    h, w = inst.shape
    frac = inst.area / float(h * w)
    return (inst.score >= cfg.min_score and cfg.min_area_frac <= frac <= cfg.max_area_frac
            and border_sides(inst.crop, 1, (inst.box[0], inst.box[2]), inst.shape) <= cfg.max_border_sides)


def select_pseudo_labels(results: list[ImageResult], cfg: SelectionConfig | None = None) -> list[ImageResult]:
    """The same images; selected masks as they are, others with ``extra['ignore'] = 1`` (or dropped
    when they score below ``ignore_min_score``)."""
    cfg = cfg or SelectionConfig()
    out = []
    for res in results:
        ranked = sorted(res.instances, key=lambda m: m.score, reverse=True)
        kept = 0
        marked = []
        for inst in ranked:
            take = kept < cfg.top and is_plausible_object(inst, cfg)
            kept += take
            if not take and inst.score < cfg.ignore_min_score:
                continue  # a confident "no": plain background for the student
            extra = {k: v for k, v in inst.extra.items() if k != IGNORE_KEY}
            if not take:
                extra[IGNORE_KEY] = 1
            marked.append(replace(inst, extra=extra))
        out.append(ImageResult(res.file_name, res.height, res.width, marked))
    return out

