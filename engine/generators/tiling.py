"""Tiling: images with many small objects, processed in overlapping windows at the chosen input scale.

Without tiling an image whose chosen input (image size × input scale) is over ``max_side`` is
shrunk to fit, and small objects fall below the key grid. With ``tile`` (the window side in
network-input pixels) the image is cut into windows of ``tile / scale`` image pixels that overlap
by ``overlap / scale``; each window gets its own backbone pass at the full input scale (cached on
disk like any image) and its own post-processing. A window keeps the masks whose centre lies in
its *core* (the part of the window nearer to its centre than to a neighbour's), so an
object cut by one window's edge is kept from the window that holds it whole; one Matrix NMS over
all kept masks (exact IoU on crops) removes what is left twice, and a top-k the user set caps the
whole image's masks (the automatic top-k stays per window). Masks are at full resolution.

``plan_image`` decides whether an image is tiled (and how), ``TiledFeatures`` are its windows'
features, which ``postprocess_tiles`` turns into one result: the CLI's pipeline and the panel
run the same three steps (``engine/generators/image.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from engine.freemask.features import FeatureCache, FeatureConfig, FeatureExtractor, Features, choose_input_scale
from engine.freemask.features import extract_cached
from engine.freemask.postprocess import FreeMaskParams, FreeMaskResult
from engine.freemask.stain import resolve_stain, stain_view
from engine.generators.merge import GeneratorConfig, generate, nms_rank
from engine.structures import InstanceMask

Box = tuple[int, int, int, int]  # (y0, y1, x0, x1)


@dataclass(frozen=True)
class TilePlan:
    scale: float  # network input / image pixels, the same in every window
    stain: str  # what the network sees in every window ('he' or 'none'), decided on the whole image
    windows: tuple[Box, ...]
    cores: tuple[Box, ...]
    # how the whole image's scale and stain were decided (reported by engine/generators/choices.py)
    auto_scale: bool = False
    object_size: float | None = None  # estimated object diameter in image px (automatic scale only)
    stain_auto: bool = False


@dataclass
class TiledFeatures:
    """One tiled image's features: one ``Features`` per window of ``plan``, in the plan's order."""

    plan: TilePlan
    windows: list[Features]

    @property
    def backbone_seconds(self) -> float:
        return sum(f.backbone_seconds for f in self.windows)


def _spans(length: int, size: int, step: int) -> list[tuple[int, int, int, int]]:
    """Along one axis: (start, stop, core start, core stop) of each window. Cores meet in the
    middle of each overlap, so every pixel lies in exactly one core."""
    if length <= size:
        return [(0, length, 0, length)]
    starts = sorted(set(list(range(0, length - size, step)) + [length - size]))
    stops = [s + size for s in starts]
    bounds = [0] + [(starts[i + 1] + stops[i]) // 2 for i in range(len(starts) - 1)] + [length]
    return [(s, e, bounds[i], bounds[i + 1]) for i, (s, e) in enumerate(zip(starts, stops))]


def check_tiling(tile: int | None, overlap: int) -> None:
    """ValueError unless ``tile`` (None: no tiling) and ``overlap`` (input px) can be planned."""
    if tile is not None and (tile < 64 or not 0 <= overlap < tile // 2):
        raise ValueError(f"tile must be at least 64 px and overlap in [0, tile/2); got tile {tile}, overlap {overlap}")


def plan_tiles(image_size: tuple[int, int], scale: float, tile: int, overlap: int, stain: str = "none",
               **decided) -> TilePlan:
    """Windows of ``tile`` input px overlapping by at least ``overlap`` input px, covering the image.
    ``decided``: how the scale and stain were chosen (``auto_scale``, ``object_size``, ``stain_auto``)."""
    check_tiling(tile, overlap)
    size = max(1, round(tile / scale))
    step = max(1, size - round(overlap / scale))
    windows, cores = [], []
    for y0, y1, cy0, cy1 in _spans(image_size[0], size, step):
        for x0, x1, cx0, cx1 in _spans(image_size[1], size, step):
            windows.append((y0, y1, x0, x1))
            cores.append((cy0, cy1, cx0, cx1))
    return TilePlan(scale, stain, tuple(windows), tuple(cores), **decided)


def tile_config(config: FeatureConfig, scale: float, stain: str) -> FeatureConfig:
    """The windows' feature config: the whole image's input scale (never shrunk to ``max_side``) and stain."""
    return replace(config, input_scale=scale, max_side=10**9, short_side=None, stain=stain)


def whole_image_scale(image: np.ndarray, config: FeatureConfig) -> tuple[float, bool, str]:
    """The input scale the image would get with no ``max_side`` cap, whether it was automatic, and
    the stain the network sees (``engine/freemask/stain.py``; the scale is chosen on that view)."""
    return whole_image_choice(image, config)[:3]


def whole_image_choice(image: np.ndarray, config: FeatureConfig) -> tuple[float, bool, str, float | None]:
    """``whole_image_scale`` and the object-size estimate it was made from (None when the scale is
    not automatic), for the backbone pass to reuse instead of estimating again."""
    stain = resolve_stain(image, config.stain)
    scale, auto, size = choose_input_scale(stain_view(image, stain), replace(config, max_side=10**9))
    return scale, auto, stain, size


def plan_image(image: np.ndarray, config: FeatureConfig, tile: int | None, overlap: int = 64,
               choice: tuple[float, bool, str, float | None] | None = None) -> TilePlan | None:
    """The windows ``image`` is processed in with ``tile`` (input px; None: no tiling), or None when
    it is processed whole: no tiling asked, or its input at the chosen scale fits in one tile.
    ``choice``: ``whole_image_choice(image, config)`` when the caller has it already."""
    if tile is None:
        return None
    scale, auto, stain, size = choice or whole_image_choice(image, config)
    if max(image.shape[:2]) * scale <= tile:
        return None
    return plan_tiles(image.shape[:2], scale, tile, overlap, stain, auto_scale=auto, object_size=size,
                      stain_auto=config.stain == "auto")


def window_key(digest: str, window: Box) -> str:
    """The feature cache key of one window of the image whose key is ``digest``."""
    y0, y1, x0, x1 = window
    return f"{digest}[win={y0},{y1},{x0},{x1}]"


def extract_tiles(extractor: FeatureExtractor, image: np.ndarray, plan: TilePlan, digest: str | None,
                  cache: FeatureCache | None) -> tuple[TiledFeatures, int]:
    """Each window's features (cached per window); also how many came from the cache."""
    config = tile_config(extractor.config, plan.scale, plan.stain)
    out, hits = [], 0
    for window in plan.windows:
        y0, y1, x0, x1 = window
        key = window_key(digest, window) if digest else None
        feats, hit = extract_cached(extractor, np.ascontiguousarray(image[y0:y1, x0:x1]), key, cache, config)
        out.append(feats)
        hits += int(hit)
    return TiledFeatures(plan, out), hits


def _place(inst: InstanceMask, window: Box, image_size: tuple[int, int]) -> InstanceMask:
    """A window's mask in image coordinates (the same crop, its box moved)."""
    y0, _y1, x0, _x1 = window
    by0, by1, bx0, bx1 = inst.box
    extra = dict(inst.extra)
    if "query_yx" in extra:
        extra["query_yx"] = [extra["query_yx"][0] + y0, extra["query_yx"][1] + x0]
    return replace(inst, box=(y0 + by0, y0 + by1, x0 + bx0, x0 + bx1), shape=tuple(image_size), extra=extra)


def _centre_in(inst: InstanceMask, core: Box) -> bool:
    cy, cx = inst.centre()
    return core[0] <= cy < core[1] and core[2] <= cx < core[3]


def core_instances(per_window: list[list[InstanceMask]], plan: TilePlan, image_size: tuple[int, int]
                   ) -> list[InstanceMask]:
    """Every window's non-empty masks whose centre lies in its core, in image coordinates."""
    kept: list[InstanceMask] = []
    for found, window, core in zip(per_window, plan.windows, plan.cores):
        kept += [m for m in (_place(i, window, image_size) for i in found if i.area) if _centre_in(m, core)]
    return kept


def tiles_top_k(params: FreeMaskParams, plan: TilePlan) -> int:
    """Masks kept per window: the set top-k (the merged image then keeps the best top-k of all
    windows: ``postprocess_tiles``), else ``auto_top_k``'s rule on the whole image's scale (each
    window's own features carry the fixed scale, never the automatic choice), and then the merged
    image keeps every window's (the automatic top-k counts the objects of one window's area)."""
    return params.top_k or (100 if plan.auto_scale and plan.scale > 1.0 else 20)


def postprocess_tiles(tiled: TiledFeatures, image: np.ndarray, params: FreeMaskParams,
                      generators: GeneratorConfig | None) -> FreeMaskResult:
    """Every window's masks whose centre is in its core, in image coordinates, through one Matrix NMS;
    the candidates' maskness of all windows, and the generators any window added automatically."""
    plan = tiled.plan
    top_k = tiles_top_k(params, plan)
    p = replace(params, top_k=top_k).validated()
    results = []
    for feats, (y0, y1, x0, x1) in zip(tiled.windows, plan.windows):
        results.append(generate(feats, p, np.ascontiguousarray(image[y0:y1, x0:x1]), generators))
    kept = core_instances([r.instances for r in results], plan, image.shape[:2])
    if len(plan.windows) > 1 and kept:  # a set top-k is the whole image's total, not each window's
        kept = nms_rank(kept, torch.tensor([m.score for m in kept], dtype=torch.float32), params, params.top_k)
    added = tuple(dict.fromkeys(g for r in results for g in r.auto_generators))
    methods = tuple(dict.fromkeys(c for r in results for c in r.classical_methods))
    weight = next((r.freemask_weight for r in results if r.freemask_weight is not None), None)
    return FreeMaskResult(instances=kept, candidate_maskness=np.concatenate([r.candidate_maskness for r in results]),
                          n_queries=sum(r.n_queries for r in results), refine_radius=results[0].refine_radius,
                          top_k=top_k, generators=tuple(dict.fromkeys(g for r in results for g in r.generators)),
                          auto_generators=added, classical_methods=methods, freemask_weight=weight)
