"""One image through Free Mask and the other generators, whole or in tiles: the steps the CLI's
pipeline (``engine/generators/pipeline.py``) and the panel share.

``image_features`` is the expensive half (backbone passes: one for the whole image, or one per
window of its tile plan, ``engine/generators/tiling.py``), cached on disk under ``digest``;
``generate_image`` is the cheap half (post-processing, merging) and reads back what was chosen
automatically (``engine/generators/choices.py``).
"""

from __future__ import annotations

import numpy as np

from engine.freemask.features import FeatureCache, FeatureConfig, FeatureExtractor, Features, extract_cached
from engine.freemask.postprocess import FreeMaskParams, FreeMaskResult
from engine.generators.choices import AutoChoices, automatic_choices
from engine.generators.merge import GeneratorConfig, generate
from engine.generators.tiling import TiledFeatures, extract_tiles, plan_image, postprocess_tiles, tile_config
from engine.generators.tiling import whole_image_choice, window_key

ImageFeatures = Features | TiledFeatures


def image_features(extractor: FeatureExtractor, image: np.ndarray, digest: str | None = None,
                   cache: FeatureCache | None = None, tile: int | None = None,
                   overlap: int = 64) -> tuple[ImageFeatures, bool]:
    """The image's features (``TiledFeatures`` when ``tile`` cuts it into windows) and whether all of
    them came from the cache. The object size is estimated once (deciding the tiling needs it, and
    the backbone pass reuses it)."""
    if tile is None:
        return extract_cached(extractor, image, digest, cache)
    choice = whole_image_choice(image, extractor.config)
    plan = plan_image(image, extractor.config, tile, overlap, choice)
    if plan is None:
        return extract_cached(extractor, image, digest, cache, object_size=choice[3])
    tiled, hits = extract_tiles(extractor, image, plan, digest, cache)
    return tiled, hits == len(plan.windows)


def cached_image_features(cache: FeatureCache, image: np.ndarray, digest: str, config: FeatureConfig,
                          tile: int | None = None, overlap: int = 64) -> ImageFeatures | None:
    """What ``image_features`` would return, from the cache alone (never the backbone); None if the
    image, or any of its windows, was never computed with ``config`` and this tiling."""
    plan = plan_image(image, config, tile, overlap)
    if plan is None:
        return cache.get(digest, config)
    windows = [cache.get(window_key(digest, w), tile_config(config, plan.scale, plan.stain)) for w in plan.windows]
    return None if any(f is None for f in windows) else TiledFeatures(plan, windows)


def generate_image(features: ImageFeatures, params: FreeMaskParams, image: np.ndarray,
                   generators: GeneratorConfig | None = None) -> tuple[FreeMaskResult, AutoChoices]:
    """The generators' masks on ``features`` (post-processing only) and the automatic choices of the run."""
    if isinstance(features, TiledFeatures):
        result = postprocess_tiles(features, image, params, generators)
        return result, automatic_choices(features.windows[0], params, result, features.plan)
    result = generate(features, params, image, generators)
    return result, automatic_choices(features, params, result)
