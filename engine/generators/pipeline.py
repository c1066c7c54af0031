"""Coarse masks over a batch of images (Free Mask, and any other generators merged with it): the
steps shared by the CLI, the demo, self-training and the plugin.

Features are cached on disk by image content, so a rerun (or a resumed, interrupted run) skips
the backbone for every image already seen.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from engine.backbones.weights import cache_root
from engine.freemask.features import FeatureCache, FeatureConfig, FeatureExtractor
from engine.freemask.postprocess import FreeMaskParams
from engine.generators.choices import AutoChoices
from engine.generators.image import generate_image, image_features
from engine.generators.merge import GeneratorConfig
from engine.io.images import file_sha1
from engine.io.stacks import content_key
from engine.runtime.batch import BatchReport, ProgressFn, iter_batch
from engine.structures import ImageResult, InstanceMask


def default_cache_dir() -> Path:
    """Feature cache shared by the CLI and the plugin (``FREESOLO_CACHE`` overrides)."""
    return cache_root() / "features"


def run_freemask_batch(
    inputs: Sequence[str | Path],
    *,
    feature_config: FeatureConfig | None = None,
    params: FreeMaskParams | None = None,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    extractor: FeatureExtractor | None = None,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_result: Callable[[ImageResult, np.ndarray], None] | None = None,
    shard: tuple[int, int] | None = None,
    channel: int | None = None,
    generators: GeneratorConfig | None = None,
    tile: int | None = None,
    tile_overlap: int = 64,
    keep_results: bool = True,
) -> BatchReport:
    """Run Free Mask on every image of ``inputs`` (folders and/or files).

    Raises only for problems with the whole batch (no images at all, missing input path);
    per-file problems go to ``report.failures``. ``shard = (rank, world)``: only that share of
    the images (``engine.runtime.sharding`` runs the shares in parallel and merges them).
    ``tile``: images whose input would be over ``tile`` network pixels are processed in
    overlapping windows (``engine/generators/tiling.py``). Each result's ``automatic`` holds what
    was chosen automatically for its image (``AutoChoices.as_dict``). ``keep_results=False``:
    results go only to ``on_result`` (e.g. a :class:`~engine.io.coco.CocoStreamWriter`), not into
    ``report.results``, so memory does not grow with the number of images.
    """
    params = (params or FreeMaskParams()).validated()
    report = BatchReport()
    images = iter_batch(inputs, report, progress, should_stop, shard, channel)
    first = next(images, None)  # lists the inputs: a missing path or empty folder fails before the model loads
    extractor = extractor or FeatureExtractor(feature_config or FeatureConfig(), device=device)
    cache = FeatureCache(cache_dir or default_cache_dir()) if use_cache else None
    t_start = time.perf_counter()
    for name, path, image in itertools.chain([first] if first is not None else [], images):
        try:
            instances, choices = _one_image(extractor, cache, params, generators, (tile, tile_overlap), path, name,
                                            image, report)
        except (OSError, RuntimeError, ValueError) as exc:  # e.g. out of memory on a huge image
            report.failures.append((str(path), f"{path}: {type(exc).__name__}: {exc}"))
            continue
        h, w = image.shape[:2]
        img_result = ImageResult(file_name=name, height=h, width=w, instances=instances,
                                 automatic=choices.as_dict())
        if keep_results:
            report.results.append(img_result)
        report.images[name] = path
        if on_result is not None:
            on_result(img_result, image)
    report.total_seconds = time.perf_counter() - t_start
    return report


def _one_image(extractor: FeatureExtractor, cache: FeatureCache | None, params: FreeMaskParams,
               generators: GeneratorConfig | None, tiling: tuple[int | None, int], path: Path, name: str,
               image: np.ndarray, report: BatchReport) -> tuple[list[InstanceMask], AutoChoices]:
    """Features (from the cache when it has them) and post-processing of one image plane, timed into
    ``report``; also what was chosen automatically."""
    digest = content_key(_sha1(path), name, report.channel) if cache is not None else None
    tile, overlap = tiling
    t0 = time.perf_counter()
    feats, hit = image_features(extractor, image, digest, cache, tile, overlap)
    t1 = time.perf_counter()
    result, choices = generate_image(feats, params, image, generators)
    report.cache_hits += int(hit)
    report.backbone_seconds += 0.0 if hit else t1 - t0
    report.postprocess_seconds += time.perf_counter() - t1
    return result.instances, choices


_last_sha: dict[str, str] = {}


def _sha1(path: Path) -> str:
    """``file_sha1``, computed once for the planes of one stack in a row."""
    key = f"{path}:{path.stat().st_mtime_ns}:{path.stat().st_size}"
    if key not in _last_sha:
        _last_sha.clear()
        _last_sha[key] = file_sha1(path)
    return _last_sha[key]
