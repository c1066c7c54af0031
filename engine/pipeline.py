"""Free Mask over a batch of images: the loop shared by the CLI, the demo and the plugin.

One bad file never stops a batch: it is recorded with a one-line reason and the loop goes on.
Features are cached on disk by image content, so a rerun (or a resumed, interrupted run) skips
the backbone for every image already seen.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from engine.backbones.weights import cache_root
from engine.features import FeatureCache, FeatureConfig, FeatureExtractor, extract_cached
from engine.freemask import FreeMaskParams, postprocess
from engine.images import ImageLoadError, file_sha1, list_images, load_image, relative_name
from engine.structures import ImageResult

ProgressFn = Callable[[int, int, str], None]  # (done, total, current file name)


def default_cache_dir() -> Path:
    """Feature cache shared by the CLI and the plugin (``FREESOLO_CACHE`` overrides)."""
    return cache_root() / "features"


@dataclass
class BatchReport:
    results: list[ImageResult] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # non-images passed over
    cache_hits: int = 0
    backbone_seconds: float = 0.0
    postprocess_seconds: float = 0.0
    total_seconds: float = 0.0
    cancelled: bool = False
    images: dict[str, Path] = field(default_factory=dict)  # file_name -> path on disk
    order: dict[str, int] = field(default_factory=dict)  # file_name -> position in the whole input listing


def input_root(inputs: Sequence[str | Path]) -> Path | None:
    """The folder that COCO file names are relative to (the single input folder, if any)."""
    if len(inputs) == 1 and Path(inputs[0]).is_dir():
        return Path(inputs[0])
    return None


def shard_of(n: int, shard: tuple[int, int] | None) -> range:
    """Positions (in the input listing) that ``shard = (rank, world)`` takes: rank, rank + world, ...

    Every rank lists the same inputs in the same (natural name) order, so the shards are
    disjoint and together cover the listing, whatever the file sizes.
    """
    if shard is None:
        return range(n)
    rank, world = shard
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"shard {rank} of {world} does not exist")
    return range(rank, n, world)


def iter_batch(
    inputs: Sequence[str | Path],
    report: BatchReport,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    shard: tuple[int, int] | None = None,
) -> Iterator[tuple[str, Path, np.ndarray]]:
    """(file name, path, image) for every loadable image of ``inputs``: the loop every batch shares.

    Non-images go to ``report.skipped``, unreadable files to ``report.failures``; a stop request
    sets ``report.cancelled``. Progress is reported before each image and once at the end.
    ``shard = (rank, world)`` takes only that rank's share of the listing (see ``shard_of``).
    """
    all_paths, skipped = list_images(inputs)
    root = input_root(inputs)
    report.skipped += [(str(p), why) for p, why in skipped]
    positions = shard_of(len(all_paths), shard)
    paths = [all_paths[k] for k in positions]
    for i, (position, path) in enumerate(zip(positions, paths)):
        if should_stop is not None and should_stop():
            report.cancelled = True
            return
        name = relative_name(path, root if root is not None else path.parent)
        report.order[name] = position
        if progress is not None:
            progress(i, len(paths), name)
        try:
            image = load_image(path)
        except ImageLoadError as exc:
            report.failures.append((str(path), str(exc)))
            continue
        yield name, path, image
    if progress is not None:
        progress(len(paths), len(paths), "")


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
) -> BatchReport:
    """Run Free Mask on every image of ``inputs`` (folders and/or files).

    Raises only for problems with the whole batch (no images at all, missing input path);
    per-file problems go to ``report.failures``. ``shard = (rank, world)``: only that share of
    the images (``engine.sharding`` runs the shares in parallel and merges them).
    """
    params = (params or FreeMaskParams()).validated()
    report = BatchReport()
    images = iter_batch(inputs, report, progress, should_stop, shard)
    first = next(images, None)  # lists the inputs: a missing path or empty folder fails before the model loads
    extractor = extractor or FeatureExtractor(feature_config or FeatureConfig(), device=device)
    cache = FeatureCache(cache_dir or default_cache_dir()) if use_cache else None
    t_start = time.perf_counter()
    for name, path, image in itertools.chain([first] if first is not None else [], images):
        try:
            digest = file_sha1(path) if cache is not None else None
            t0 = time.perf_counter()
            feats, hit = extract_cached(extractor, image, digest, cache)
            t1 = time.perf_counter()
            result = postprocess(feats, params, image)
            t2 = time.perf_counter()
        except (OSError, RuntimeError, ValueError) as exc:  # e.g. out of memory on a huge image
            report.failures.append((str(path), f"{path}: {type(exc).__name__}: {exc}"))
            continue
        report.cache_hits += int(hit)
        report.backbone_seconds += 0.0 if hit else t1 - t0
        report.postprocess_seconds += t2 - t1
        h, w = image.shape[:2]
        img_result = ImageResult(file_name=name, height=h, width=w, instances=result.instances)
        report.results.append(img_result)
        report.images[name] = path
        if on_result is not None:
            on_result(img_result, image)
    report.total_seconds = time.perf_counter() - t_start
    return report
