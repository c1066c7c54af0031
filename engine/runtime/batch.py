"""The batch loop over image files, shared by Free Mask, the student's prediction and the plugin.

One bad file never stops a batch: it is recorded with a one-line reason and the loop goes on.
``shard = (rank, world)`` takes one share of the listing (``engine.runtime.sharding`` runs the
shares in parallel and merges them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from engine.io.images import ImageLoadError, list_images, relative_name
from engine.io.stacks import planes_of, plane_name
from engine.structures import ImageResult

ProgressFn = Callable[[int, int, str], None]  # (done, total, current file name)


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
    images: dict[str, Path] = field(default_factory=dict)  # file_name (with its plane) -> path on disk
    channel: int | None = None  # the channel taken from multi-channel images (None: all, as colour)
    order: dict[str, tuple[int, int]] = field(default_factory=dict)  # file_name -> (position in the listing, plane)


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
    channel: int | None = None,
) -> Iterator[tuple[str, Path, np.ndarray]]:
    """(file name, path, image) for every loadable image plane of ``inputs``: the loop every batch shares.

    A stack gives one item per plane, named ``FILE[z=3]`` (see ``engine/io/stacks.py``); ``channel``
    takes one channel of multi-channel images. Non-images go to ``report.skipped``, unreadable
    files to ``report.failures``; a stop request sets ``report.cancelled``. Progress is reported
    before each file and once at the end. ``shard = (rank, world)`` takes only that rank's share
    of the listing (see ``shard_of``).
    """
    all_paths, skipped = list_images(inputs)
    root = input_root(inputs)
    report.skipped += [(str(p), why) for p, why in skipped]
    report.channel = channel
    positions = shard_of(len(all_paths), shard)
    paths = [all_paths[k] for k in positions]
    for i, (position, path) in enumerate(zip(positions, paths)):
        if should_stop is not None and should_stop():
            report.cancelled = True
            return
        base = relative_name(path, root if root is not None else path.parent)
        if progress is not None:
            progress(i, len(paths), base)
        try:
            for k, (plane, image) in enumerate(planes_of(path, channel)):
                if k and should_stop is not None and should_stop():
                    report.cancelled = True
                    return
                name = plane_name(base, plane)
                report.order[name] = (position, k)
                yield name, path, image
        except ImageLoadError as exc:
            report.failures.append((str(path), str(exc)))
    if progress is not None:
        progress(len(paths), len(paths), "")
