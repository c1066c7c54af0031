"""One batch (Free Mask, SOLO prediction) split across processes, one COCO file out.

Under torchrun (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment) or with ``--nproc N``
(N processes on this machine, started like training's), rank r of W takes the images at
positions r, r + W, r + 2W, ... of the input listing (natural name order, the same on every
rank), so the shares are disjoint and cover everything. Each rank writes its share atomically
as ``OUT.rank{r}-of-{W}.part`` next to the output, with its bad files and timings. When all
ranks are done (a barrier), one process merges the parts into OUT: images in listing order
with ids 1..N, annotation ids 1..M — the file a single process writes — honouring
``overwrite`` (the old file kept as ``.bak``), and deletes the parts. Under torchrun that is
rank 0; with ``--nproc`` it is the launching process, after every rank has exited.

Ranks only meet at the end, so a long share does not have to be balanced; with several
machines the output folder must be one they all see (the parts are merged from disk).
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch

from engine.io.coco import CocoStreamWriter, write_coco
from engine.runtime.batch import BatchReport

__all__ = ["ShardError", "ShardSummary", "env_world", "merge_parts", "part_path", "print_summary", "run_sharded",
           "write_part"]

PART_KEY = "freesolo_shard"
# ranks meet only once all their images are done: allow for very unequal shares
BARRIER_TIMEOUT = timedelta(days=2)

# job(*job_args, shard=(rank, world), device=torch.device, progress=callable | None,
#     on_result=callable(ImageResult, image)) -> BatchReport: each image's result goes to on_result as it
# finishes (the rank's part of the output, spooled to disk), so a rank keeps no image's masks
Job = Callable[..., BatchReport]


class ShardError(RuntimeError):
    """A rank failed, or its part of the output cannot be found or read."""


@dataclass
class ShardSummary:
    """What the merged run did (all ranks together)."""

    out: Path
    world: int
    images: int = 0
    masks: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    cache_hits: int = 0
    backbone_seconds: float = 0.0
    postprocess_seconds: float = 0.0
    seconds: float = 0.0  # the slowest rank's batch time
    cancelled: bool = False


def env_world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) outside it."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def part_path(out: str | os.PathLike[str], rank: int, world: int) -> Path:
    out = Path(out)
    return out.with_name(f"{out.name}.rank{rank}-of-{world}.part")


def write_part(out: Path, rank: int, world: int, report: BatchReport, part: CocoStreamWriter) -> Path:
    """This rank's share: the COCO dataset of its images (spooled in ``part``) plus where they go and what failed."""
    meta = {
        "rank": rank,
        "world": world,
        "index": [report.order[name] for name in part.file_names],
        "failures": [list(f) for f in report.failures],
        "skipped": [list(s) for s in report.skipped],
        "cache_hits": report.cache_hits,
        "backbone_seconds": report.backbone_seconds,
        "postprocess_seconds": report.postprocess_seconds,
        "total_seconds": report.total_seconds,
        "cancelled": report.cancelled,
    }
    return part.close(extra={PART_KEY: meta})


def _read_part(path: Path, rank: int, world: int) -> dict[str, Any]:
    if not path.is_file():
        raise ShardError(f"{path} is missing: rank {rank} of {world} did not finish, or (with several machines) "
                         f"the output folder is not one every machine shares")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        meta = data[PART_KEY]
        if (meta["rank"], meta["world"]) != (rank, world) or len(meta["index"]) != len(data["images"]):
            raise ValueError("it describes another rank or run")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ShardError(f"{path}: not a usable part of the output ({type(exc).__name__}: {exc})") from None
    return data


def _position(entry: Any) -> tuple[int, int]:
    """(position in the listing, plane) of a part's image; older parts wrote the position alone."""
    return (int(entry[0]), int(entry[1])) if isinstance(entry, (list, tuple)) else (int(entry), 0)


def merge_parts(out: str | os.PathLike[str], world: int, *, overwrite: bool = False) -> ShardSummary:
    """Merge every rank's part into ``out`` (atomically; refuses to replace it unless ``overwrite``).

    The parts are deleted once ``out`` is written; on any error they stay, so nothing computed
    is lost.
    """
    out = Path(out)
    paths = [part_path(out, r, world) for r in range(world)]
    parts = [_read_part(p, r, world) for r, p in enumerate(paths)]
    summary = ShardSummary(out, world)
    entries: list[tuple[tuple[int, int], dict[str, Any], list[dict[str, Any]]]] = []
    seen_skipped: set[tuple[str, str]] = set()
    for data in parts:
        meta = data[PART_KEY]
        by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        for ann in data["annotations"]:
            by_image[ann["image_id"]].append(ann)
        entries += [(_position(i), img, by_image[img["id"]]) for i, img in zip(meta["index"], data["images"])]
        summary.failures += [(str(p), str(why)) for p, why in meta["failures"]]
        for p, why in meta["skipped"]:  # every rank lists the same inputs: report each once
            if (p, why) not in seen_skipped:
                seen_skipped.add((p, why))
                summary.skipped.append((p, why))
        summary.cache_hits += int(meta["cache_hits"])
        summary.backbone_seconds += float(meta["backbone_seconds"])
        summary.postprocess_seconds += float(meta["postprocess_seconds"])
        summary.seconds = max(summary.seconds, float(meta["total_seconds"]))
        summary.cancelled |= bool(meta["cancelled"])
    entries.sort(key=lambda e: e[0])
    positions = [e[0] for e in entries]
    if len(set(positions)) != len(positions):
        raise ShardError(f"the parts of {out} overlap (the ranks did not list the same inputs)")
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, (_pos, img, anns) in enumerate(entries, start=1):
        images.append({**img, "id": image_id})
        annotations += [{**ann, "id": len(annotations) + k, "image_id": image_id} for k, ann in enumerate(anns, 1)]
    first = parts[0]
    dataset = {"info": first.get("info", {}), "licenses": first.get("licenses", []), "images": images,
               "annotations": annotations, "categories": first.get("categories", [])}
    write_coco(out, dataset, overwrite=overwrite)
    for p in paths:
        p.unlink(missing_ok=True)
    summary.images, summary.masks = len(images), len(annotations)
    return summary


def _last_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def run_sharded(
    job: Job,
    job_args: tuple,
    *,
    out: Path,
    nproc: int = 1,
    device: str | torch.device = "auto",
    fmt: str = "rle",
    info: dict[str, Any] | None = None,
    overwrite: bool = False,
    title: str = "batch",
) -> ShardSummary | None:
    """Run ``job`` sharded: under torchrun on this rank, else in ``nproc`` local processes.

    Returns the summary on the process that merged the output (torchrun's rank 0, or the
    launching process), None on the other ranks.
    """
    _rank, world = env_world()
    if world > 1:
        if nproc > 1:
            raise ShardError("--nproc inside torchrun: let torchrun start the processes (--nproc-per-node)")
        return _rank_main(job, job_args, out=out, device=device, fmt=fmt, info=info, overwrite=overwrite,
                          merge=True, title=title)
    import torch.multiprocessing as mp

    from engine.runtime.distributed import launch

    try:
        launch(_rank_main, nproc, job, job_args, out=out, device=device, fmt=fmt, info=info, overwrite=overwrite,
               merge=False, title=title)
    except mp.ProcessRaisedException as exc:
        raise ShardError(f"process {exc.error_index} of {nproc} failed: {_last_line(exc)}") from None
    except mp.ProcessExitedException as exc:
        raise ShardError(f"process {exc.error_index} of {nproc} died (exit code {exc.exit_code})") from None
    return merge_parts(out, nproc, overwrite=overwrite)


def _rank_main(job: Job, job_args: tuple, *, out: Path, device, fmt: str, info, overwrite: bool, merge: bool,
               title: str) -> ShardSummary | None:
    from engine.runtime.device import resolve_device
    from engine.runtime.progress import ProgressBar
    from engine.runtime import distributed

    rank, world = env_world()
    local = distributed.local_device(resolve_device(device))
    # the ranks only exchange a barrier and a few integers: gloo does, even between GPUs
    group = distributed.setup(torch.device("cpu"), backend="gloo", timeout=BARRIER_TIMEOUT)
    finished = False
    try:
        progress = ProgressBar(f"{title} (rank 0 of {world})") if rank == 0 else None
        with CocoStreamWriter(part_path(out, rank, world), segmentation=fmt, info=info, overwrite=True,
                              backup=False) as part:
            report = job(*job_args, shard=(rank, world), device=local, progress=progress,
                         on_result=lambda res, _image: part.add(res))
            write_part(out, rank, world, report, part)
        if group.world > 1:
            torch.distributed.barrier()  # every part is on disk
        summary = merge_parts(out, world, overwrite=overwrite) if merge and rank == 0 else None
        finished = True
    finally:
        if finished:
            distributed.teardown(group)
        elif group.owned and torch.distributed.is_initialized():  # the others notice and stop
            torch.distributed.destroy_process_group()
    return summary


def print_summary(summary: ShardSummary | None, *, what: str = "") -> int:
    """The run's summary and exit code (1 if a file failed on any rank) on the merging process.

    The other ranks say nothing and exit 0, so under torchrun a failed file makes rank 0, and
    so torchrun, exit non-zero without torchrun stopping rank 0 before it has reported.
    """
    if summary is None:
        return 0
    for path, why in summary.skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    for _path, why in summary.failures:
        print(f"error: {why}", file=sys.stderr)
    print(f"{summary.images} images, {summary.masks} masks -> {summary.out} ({summary.world} processes"
          f"{', ' + what.format(s=summary) if what else ''})")
    if summary.failures:
        print(f"{len(summary.failures)} file(s) failed (listed above)", file=sys.stderr)
        return 1
    return 0
