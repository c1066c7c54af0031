"""Tiling: images with many small objects, processed in overlapping windows at the chosen input scale.

Without tiling an image whose chosen input (image size × input scale) is over ``max_side`` is
shrunk to fit, and small objects fall below the key grid. With ``tile`` (the window side in
network-input pixels) the image is cut into windows of ``tile / scale`` image pixels that overlap
by ``overlap / scale``; each window gets its own backbone pass at the full input scale (cached on
disk like any image) and its own post-processing. A window keeps the masks whose centre lies in
its *core* (the part of the window nearer to its centre than to a neighbour's), so an
object cut by one window's edge is kept from the window that holds it whole; one Matrix NMS over
all kept masks (exact IoU on crops) removes what is left twice. Masks are at full resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from engine.freemask.features import FeatureCache, FeatureConfig, FeatureExtractor, Features, choose_input_scale
from engine.freemask.features import extract_cached
from engine.freemask.postprocess import FreeMaskParams
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


def _spans(length: int, size: int, step: int) -> list[tuple[int, int, int, int]]:
    """Along one axis: (start, stop, core start, core stop) of each window. Cores meet in the
    middle of each overlap, so every pixel lies in exactly one core."""
    if length <= size:
        return [(0, length, 0, length)]
    starts = sorted(set(list(range(0, length - size, step)) + [length - size]))
    stops = [s + size for s in starts]
    bounds = [0] + [(starts[i + 1] + stops[i]) // 2 for i in range(len(starts) - 1)] + [length]
    return [(s, e, bounds[i], bounds[i + 1]) for i, (s, e) in enumerate(zip(starts, stops))]


def plan_tiles(image_size: tuple[int, int], scale: float, tile: int, overlap: int, stain: str = "none") -> TilePlan:
    """Windows of ``tile`` input px overlapping by at least ``overlap`` input px, covering the image."""
    if tile < 64 or not 0 <= overlap < tile // 2:
        raise ValueError(f"tile must be at least 64 px and overlap in [0, tile/2); got tile {tile}, overlap {overlap}")
    size = max(1, round(tile / scale))
    step = max(1, size - round(overlap / scale))
    windows, cores = [], []
    for y0, y1, cy0, cy1 in _spans(image_size[0], size, step):
        for x0, x1, cx0, cx1 in _spans(image_size[1], size, step):
            windows.append((y0, y1, x0, x1))
            cores.append((cy0, cy1, cx0, cx1))
    return TilePlan(scale, stain, tuple(windows), tuple(cores))


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


def extract_tiles(extractor: FeatureExtractor, image: np.ndarray, plan: TilePlan, digest: str | None,
                  cache: FeatureCache | None) -> tuple[list[Features], int]:
    """Each window's features (cached per window); also how many came from the cache."""
    config = tile_config(extractor.config, plan.scale, plan.stain)
    out, hits = [], 0
    for (y0, y1, x0, x1) in plan.windows:
        key = f"{digest}[win={y0},{y1},{x0},{x1}]" if digest else None
        feats, hit = extract_cached(extractor, np.ascontiguousarray(image[y0:y1, x0:x1]), key, cache, config)
        out.append(feats)
        hits += int(hit)
    return out, hits


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


def postprocess_tiles(tiles: list[Features], plan: TilePlan, image: np.ndarray, params: FreeMaskParams,
                      generators: GeneratorConfig | None, top_k: int) -> list[InstanceMask]:
    """Every window's masks whose centre is in its core, in image coordinates, through one Matrix NMS."""
    p = replace(params, top_k=top_k).validated()
    kept: list[InstanceMask] = []
    for feats, window, core in zip(tiles, plan.windows, plan.cores):
        y0, y1, x0, x1 = window
        found = generate(feats, p, np.ascontiguousarray(image[y0:y1, x0:x1]), generators).instances
        placed = (_place(m, window, image.shape[:2]) for m in found if m.area)
        kept += [m for m in placed if _centre_in(m, core)]
    if len(plan.windows) == 1 or not kept:
        return kept
    return nms_rank(kept, torch.tensor([m.score for m in kept], dtype=torch.float32), params)
