"""Several mask generators, one ranking: every mask scored by one measure, one Matrix NMS, top-k.

score(mask) = its feature contrast (``feature_contrast``): with the mask's own query (the normalised
mean key inside it) and Free Mask's soft mask for that query, the mean soft value inside the mask
minus the mean in the ring of cells around it, on the key grid -- the same measure for every
generator's masks.
All masks then go through one Matrix NMS (exact IoU from crops, no full-size arrays) and the
best ``top_k`` are kept, each with its ``source``. Every generator's work depends on the features
and the image only, not on τ or the filters, so a slider move reuses it (memoised on ``features``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from engine.freemask.features import Features
from engine.freemask.postprocess import FreeMaskParams, FreeMaskResult, Refiner, auto_top_k, postprocess
from engine.freemask.refine import passes_filters
from engine.freemask.soft_masks import soft_masks
from engine.freemask.stain import stain_view
from engine.generators.classical import felzenszwalb_segments, otsu_watershed
from engine.generators.maskcut import MaskCutParams, maskcut_ranked
from engine.ops.masks import crop_cell_means, crop_iou_matrix
from engine.ops.nms import matrix_nms_from_iou
from engine.structures import InstanceMask

GENERATORS = ("freemask", "maskcut", "classical")
CLASSICAL = {"watershed": otsu_watershed, "felzenszwalb": felzenszwalb_segments}


@dataclass(frozen=True)
class GeneratorConfig:
    generators: tuple[str, ...] = ("freemask",)
    maskcut: MaskCutParams = field(default_factory=MaskCutParams)
    classical: tuple[str, ...] = ("watershed", "felzenszwalb")
    classical_top: int = 50  # per classical method, its best masks (by its own score) enter the merge

    def validated(self) -> "GeneratorConfig":
        unknown = [g for g in self.generators if g not in GENERATORS]
        if not self.generators or unknown:
            raise ValueError(f"generators must be some of {', '.join(GENERATORS)}; got {', '.join(self.generators)}")
        bad = [c for c in self.classical if c not in CLASSICAL]
        if bad:
            raise ValueError(f"classical methods must be some of {', '.join(CLASSICAL)}; got {', '.join(bad)}")
        return self


def parse_generators(text: str) -> tuple[str, ...]:
    """'freemask, maskcut' -> ('freemask', 'maskcut'); ValueError names an unknown one."""
    names = tuple(dict.fromkeys(p.strip().lower() for p in text.split(",") if p.strip()))
    GeneratorConfig(generators=names).validated()
    return names


def feature_contrast(features: Features, masks: list[InstanceMask], ring: int = 1) -> torch.Tensor:
    """How much each full-resolution mask stands out in feature space, on the key grid (M,).

    contrast = maskness inside - mean soft value in the ``ring`` cells around the mask, where the
    soft mask is Free Mask's for the mask's own query (its normalised mean key). A whole object
    is similar inside and unlike its surroundings; a fragment of a larger region is similar to
    its surroundings too, so it scores low whatever generator made it.
    """
    if not masks:
        return torch.zeros(0)
    keys = features.keys
    h, w = features.grid_size
    cells = torch.from_numpy(np.stack([crop_cell_means(m.crop, m.box, m.shape, (h, w)) for m in masks]))
    on = (cells >= 0.5).reshape(len(masks), -1)
    on[torch.arange(len(masks)), cells.reshape(len(masks), -1).argmax(dim=1)] = True  # keep the main cell
    grown = F.max_pool2d(on.reshape(-1, 1, h, w).float(), 2 * ring + 1, stride=1, padding=ring).reshape(len(masks), -1)
    around = (grown > 0) & ~on
    vectors = F.normalize(on.float() @ keys.reshape(keys.shape[0], -1).T, dim=1)
    soft = soft_masks(vectors, keys)
    inside = (soft * on).sum(1) / on.sum(1)
    outside = (soft * around).sum(1) / around.sum(1).clamp_min(1)
    return (inside - outside).clamp_min(0.0)


def classical_instances(features: Features, image: np.ndarray, params: FreeMaskParams,
                        config: GeneratorConfig) -> list[InstanceMask]:
    """Each classical method's best masks that pass Free Mask's filters, scored by feature maskness."""
    fingerprint = hash(np.ascontiguousarray(image[::7, ::5]).tobytes())

    def compute() -> list[InstanceMask]:
        seen, found = stain_view(image, features.stain), []
        for name in config.classical:
            found += sorted(CLASSICAL[name](seen), key=lambda m: -m.score)[: config.classical_top]
        return found

    proposals = features.memo.get("classical", (fingerprint, config.classical, config.classical_top), compute)
    H, W = features.image_size
    margin = round(16 / max(features.input_scale, 1e-6))
    kept = []
    for inst in proposals:
        if inst.area and passes_filters(inst.crop, inst.box, params, (H, W), margin=margin):
            kept.append(replace(inst, extra={**inst.extra, "own_score": inst.score, "method": inst.source},
                                source="classical"))
    return kept


def nms_rank(instances: list[InstanceMask], scores: torch.Tensor, params: FreeMaskParams,
             top_k: int | None = None) -> list[InstanceMask]:
    """One Matrix NMS over masks (exact IoU of their crops), best decayed score first, at least
    ``params.min_score``; each kept mask gets its decayed score."""
    iou = crop_iou_matrix([m.crop for m in instances], [m.box for m in instances])
    decayed = matrix_nms_from_iou(iou, scores, kernel=params.nms_kernel, sigma=params.nms_sigma)
    order = [int(i) for i in torch.argsort(decayed, descending=True) if float(decayed[i]) >= params.min_score]
    return [replace(instances[i], score=float(decayed[i])) for i in order[:top_k]]


def merge(features: Features, instances: list[InstanceMask], params: FreeMaskParams, top_k: int) -> list[InstanceMask]:
    """Every generator's masks scored by ``feature_contrast``, one Matrix NMS, the best ``top_k``."""
    kept = [m for m in instances if m.area]
    if not kept:
        return []
    return nms_rank(kept, feature_contrast(features, kept), params, top_k)


def generate(features: Features, params: FreeMaskParams | None = None, image: np.ndarray | None = None,
             config: GeneratorConfig | None = None, threads: int | None = None) -> FreeMaskResult:
    """Free Mask alone (``postprocess``, unchanged), or every chosen generator merged into one ranking."""
    p = (params or FreeMaskParams()).validated()
    config = (config or GeneratorConfig()).validated()
    if config.generators == ("freemask",):
        return postprocess(features, p, image, threads)
    top_k = p.top_k or auto_top_k(features)
    base = postprocess(features, p, image, threads)
    pool = list(base.instances) if "freemask" in config.generators else []
    if "maskcut" in config.generators:
        ranked = features.memo.get("maskcut", (p.score_stride, config.maskcut),
                                   lambda: maskcut_ranked(features, p, config.maskcut))
        pool += [inst for _row, inst in Refiner(features, ranked, p, image, top_k, source="maskcut").first(top_k, threads)]
    if "classical" in config.generators and image is not None:
        pool += classical_instances(features, image, p, config)
    kept = merge(features, pool, p, top_k)
    grid = features.grid_size
    return FreeMaskResult(instances=kept, candidate_maskness=base.candidate_maskness, n_queries=base.n_queries,
                          refine_radius=base.refine_radius, top_k=top_k, _soft=torch.zeros(len(kept), *grid),
                          _features=features)
