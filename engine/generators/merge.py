"""Several mask generators, one ranking: every mask scored by one measure, one Matrix NMS, top-k.

The measure is the same for every generator's masks (``GeneratorConfig.score``):

- ``features``: the feature contrast (``feature_contrast``): with the mask's own query (the
  normalised mean key inside it) and Free Mask's soft mask for that query, the mean soft value
  inside the mask minus the mean in the ring of cells around it, on the key grid;
- ``image``: the grey contrast (``image_contrast``): mean grey inside the mask minus the mean in
  a ring a few pixels around it, over the image's robust grey range, at most 1 -- on the image
  the network sees (the hematoxylin channel of a stained slide);
- ``both``: the mean of the two.
On microscopy, where classical proposals are in the merge, Free Mask's scores are multiplied by
``GeneratorConfig.freemask_weight`` (0.5); a mask that carries a prior of its own
(``extra['prior']``: the grouping's regions, ``engine/generators/grouping.py``) has its score
multiplied by it. All masks then go through one Matrix NMS (exact IoU
from crops, no full-size arrays) and the
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
from engine.freemask.stain import looks_like_microscopy, stain_view
from engine.generators.classical import (
    felzenszwalb_segments,
    grey_contrast_view,
    local_watershed,
    otsu_watershed,
    ring_contrast,
    ring_width,
)
from engine.generators.grouping import GroupingParams, grouping_instances
from engine.generators.maskcut import MaskCutParams, maskcut_ranked
from engine.ops.masks import crop_cell_means, crop_iou_matrix
from engine.ops.nms import matrix_nms_from_iou
from engine.structures import InstanceMask

GENERATORS = ("freemask", "maskcut", "classical", "grouping")
MERGE_SCORES = ("features", "image", "both")
MAX_AUTO_TOP_K = 100  # COCO's AR100 and AP count the best 100 masks
# each classical method on (the image as the network sees it, the estimated object size or None)
CLASSICAL = {
    "watershed": lambda seen, _size: otsu_watershed(seen),
    "local_watershed": lambda seen, size: local_watershed(seen, object_size=size),
    "felzenszwalb": lambda seen, _size: felzenszwalb_segments(seen),
}
# the classical methods by image kind (``classical_methods``), chosen on the real tuning halves
MICROSCOPY_CLASSICAL = ("watershed", "local_watershed")
COLOUR_CLASSICAL = ("watershed", "felzenszwalb")


@dataclass(frozen=True)
class GeneratorConfig:
    generators: tuple[str, ...] = ("freemask",)
    maskcut: MaskCutParams = field(default_factory=MaskCutParams)
    grouping: GroupingParams = field(default_factory=GroupingParams)
    classical: tuple[str, ...] | None = None  # None: by image kind (``classical_methods``)
    classical_top: int = 100  # per classical method, its best masks (by its own score) enter the merge
    score: str = "both"  # the one measure every mask is ranked by (module docstring)
    # classical proposals join the chosen generators on grey-level and stained images (``chosen``)
    classical_on_microscopy: bool = True
    # on microscopy, Free Mask's merge scores are multiplied by this where classical proposals are in the merge
    freemask_weight: float = 0.5

    def validated(self) -> "GeneratorConfig":
        unknown = [g for g in self.generators if g not in GENERATORS]
        if not self.generators or unknown:
            raise ValueError(f"generators must be some of {', '.join(GENERATORS)}; got {', '.join(self.generators)}")
        bad = [c for c in self.classical or () if c not in CLASSICAL]
        if bad:
            raise ValueError(f"classical methods must be some of {', '.join(CLASSICAL)}; got {', '.join(bad)}")
        if self.score not in MERGE_SCORES:
            raise ValueError(f"the merge score must be one of {', '.join(MERGE_SCORES)}; got {self.score!r}")
        if not 0.0 < self.freemask_weight <= 1.0:
            raise ValueError(f"the Free Mask weight must be in (0, 1]; got {self.freemask_weight}")
        return self


def parse_generators(text: str) -> tuple[str, ...]:
    """'freemask, maskcut' -> ('freemask', 'maskcut'); ValueError names an unknown one."""
    names = tuple(dict.fromkeys(p.strip().lower() for p in text.split(",") if p.strip()))
    GeneratorConfig(generators=names).validated()
    return names


def parse_classical(text: str) -> tuple[str, ...] | None:
    """'auto' -> None (by image kind); 'watershed, local_watershed' -> ('watershed', 'local_watershed');
    ValueError names an unknown one."""
    if text.strip().lower() == "auto":
        return None
    names = tuple(dict.fromkeys(p.strip().lower() for p in text.split(",") if p.strip()))
    if not names:
        raise ValueError(f"classical methods must be 'auto' or some of {', '.join(CLASSICAL)}")
    return GeneratorConfig(classical=names).validated().classical


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


def classical_methods(config: GeneratorConfig, image: np.ndarray, stain: str) -> tuple[str, ...]:
    """``config.classical``, or by image kind when it is None: on microscopy (``looks_like_microscopy``)
    Otsu + watershed and local-threshold + watershed (Felzenszwalb's regions cost AP50 on both
    real nuclei sets there), elsewhere Otsu + watershed and Felzenszwalb (docs/measurements.md)."""
    if config.classical is not None:
        return config.classical
    return MICROSCOPY_CLASSICAL if looks_like_microscopy(image, stain) else COLOUR_CLASSICAL


def classical_instances(features: Features, image: np.ndarray, params: FreeMaskParams,
                        config: GeneratorConfig) -> list[InstanceMask]:
    """Each classical method's best masks that pass Free Mask's filters (its own score kept as
    ``own_score``; the merge ranks them with every other generator's masks)."""
    fingerprint = image_fingerprint(image)
    methods = classical_methods(config, image, features.stain)

    def compute() -> list[InstanceMask]:
        seen, found = stain_view(image, features.stain), []
        for name in methods:
            found += sorted(CLASSICAL[name](seen, features.object_size), key=lambda m: -m.score)[: config.classical_top]
        return found

    proposals = features.memo.get("classical", (fingerprint, methods, config.classical_top, features.object_size),
                                  compute)
    H, W = features.image_size
    margin = round(16 / max(features.input_scale, 1e-6))
    kept = []
    for inst in proposals:
        if inst.area and passes_filters(inst.crop, inst.box, params, (H, W), margin=margin):
            kept.append(replace(inst, extra={**inst.extra, "own_score": inst.score, "method": inst.source},
                                source="classical"))
    return kept


def grouping_masks(features: Features, image: np.ndarray, params: FreeMaskParams,
                   config: GeneratorConfig) -> list[InstanceMask]:
    """The grouping's regions (``grouping_instances``, memoised with the features) that pass Free
    Mask's filters."""
    found = features.memo.get("grouping", (image_fingerprint(image), config.grouping),
                              lambda: grouping_instances(features, image, config.grouping))
    H, W = features.image_size
    margin = round(16 / max(features.input_scale, 1e-6))
    return [m for m in found if passes_filters(m.crop, m.box, params, (H, W), margin=margin)]


def nms_rank(instances: list[InstanceMask], scores: torch.Tensor, params: FreeMaskParams,
             top_k: int | None = None) -> list[InstanceMask]:
    """One Matrix NMS over masks (exact IoU of their crops), best decayed score first, at least
    ``params.min_score``; each kept mask gets its decayed score."""
    iou = crop_iou_matrix([m.crop for m in instances], [m.box for m in instances])
    decayed = matrix_nms_from_iou(iou, scores, kernel=params.nms_kernel, sigma=params.nms_sigma)
    order = [int(i) for i in torch.argsort(decayed, descending=True) if float(decayed[i]) >= params.min_score]
    return [replace(instances[i], score=float(decayed[i])) for i in order[:top_k]]


def image_fingerprint(image: np.ndarray) -> int:
    """A cheap identity of the image for the memo of work done on it beside its features."""
    return hash(np.ascontiguousarray(image[::7, ::5]).tobytes())


def image_contrast(features: Features, image: np.ndarray, instances: list[InstanceMask]) -> torch.Tensor:
    """How much each mask stands out in grey from the ring around it, in [0, 1] (M,), on the image
    the network sees (``stain_view``), times area / (area + 0.1 % of the image) so specks rank low.
    The grey view is memoised with the features: a slider move does not convert the image again."""
    grey, scale = features.memo.get("grey", (image_fingerprint(image), features.stain),
                                    lambda: grey_contrast_view(stain_view(image, features.stain)))
    width, a0 = ring_width(grey.shape), 1e-3 * grey.shape[0] * grey.shape[1]
    return torch.tensor([min(ring_contrast(grey, m.crop, m.box, width) / scale, 1.0) * m.area / (m.area + a0)
                         for m in instances], dtype=torch.float32)


def merge_scores(features: Features, instances: list[InstanceMask], image: np.ndarray | None,
                 score: str) -> torch.Tensor:
    """The measure ``score`` (module docstring) of every mask; without the image, the feature contrast."""
    if score == "features" or image is None:
        return feature_contrast(features, instances)
    grey = image_contrast(features, image, instances)
    if score == "image":
        return grey
    return 0.5 * (grey + feature_contrast(features, instances))


def merge(features: Features, instances: list[InstanceMask], params: FreeMaskParams, top_k: int,
          image: np.ndarray | None = None, score: str = "both", freemask_weight: float = 1.0) -> list[InstanceMask]:
    """Every generator's masks scored by one measure (``merge_scores``), one Matrix NMS, the best ``top_k``.

    ``freemask_weight`` scales Free Mask's scores where classical proposals are among ``instances``:
    on the real nuclei sets its masks of several touching nuclei otherwise outrank the classical
    methods' single nuclei (docs/measurements.md)."""
    kept = [m for m in instances if m.area]
    if not kept:
        return []
    scores = merge_scores(features, kept, image, score)
    scores = scores * torch.tensor([float(m.extra.get("prior", 1.0)) for m in kept], dtype=torch.float32)
    if any(m.source == "classical" for m in kept):
        scores = scores * torch.tensor([freemask_weight if m.source == "freemask" else 1.0 for m in kept])
    return nms_rank(kept, scores, params, top_k)


def chosen(config: GeneratorConfig, image: np.ndarray | None, stain: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the generators that run on this image, those of them added automatically). Classical
    proposals join on microscopy (``looks_like_microscopy``: grey-level, one-dye or H&E) when
    ``classical_on_microscopy``: on the real microscopy sets they add the nuclei Free Mask merges or
    misses (docs/measurements.md); on colour photos they do not help, so they stay out there."""
    if (config.classical_on_microscopy and image is not None and "classical" not in config.generators
            and looks_like_microscopy(image, stain)):
        return config.generators + ("classical",), ("classical",)
    return config.generators, ()


def generate(features: Features, params: FreeMaskParams | None = None, image: np.ndarray | None = None,
             config: GeneratorConfig | None = None, threads: int | None = None) -> FreeMaskResult:
    """Free Mask alone (``postprocess``, unchanged), or every generator ``chosen`` for the image merged
    into one ranking."""
    p = (params or FreeMaskParams()).validated()
    config = (config or GeneratorConfig()).validated()
    generators, added = chosen(config, image, features.stain)
    base = postprocess(features, p, image, threads)
    if generators == ("freemask",):
        return base
    top_k = p.top_k or auto_top_k(features)
    pool = list(base.instances) if "freemask" in generators else []
    if "maskcut" in generators:
        ranked = features.memo.get("maskcut", (p.score_stride, config.maskcut),
                                   lambda: maskcut_ranked(features, p, config.maskcut))
        pool += [inst for _row, inst in Refiner(features, ranked, p, image, top_k, source="maskcut").first(top_k, threads)]
    methods: tuple[str, ...] = ()
    if "classical" in generators and image is not None:
        classical = classical_instances(features, image, p, config)
        pool += classical
        methods = classical_methods(config, image, features.stain) if config.classical is None else ()
        if not p.top_k:  # the classical proposals count the objects: room for every one of them
            top_k = max(top_k, min(MAX_AUTO_TOP_K, len(classical)))
    if "grouping" in generators and image is not None:
        grouped = grouping_masks(features, image, p, config)
        pool += grouped
        if not p.top_k:  # the hierarchy holds objects at every scale: room for them
            top_k = max(top_k, min(MAX_AUTO_TOP_K, len(grouped)))
    weight = config.freemask_weight if image is not None and looks_like_microscopy(image, features.stain) else 1.0
    weighted = weight != 1.0 and "freemask" in generators and any(m.source == "classical" for m in pool)
    kept = merge(features, pool, p, top_k, image, config.score, weight)
    return FreeMaskResult(instances=kept, candidate_maskness=base.candidate_maskness, n_queries=base.n_queries,
                          refine_radius=base.refine_radius, top_k=top_k, generators=generators,
                          auto_generators=added, classical_methods=methods,
                          freemask_weight=weight if weighted else None,
                          _soft=torch.zeros(len(kept), *features.grid_size), _features=features)
