"""The correction loop without Qt: the corrected images as trusted labels, and the next image to fix.

An image counts as corrected when the user edited or imported its masks: the open images whose
masks differ from their last automatic result, and the folder images whose edits are stored
(``FolderSession.has_edits``). A corrected image is complete: all its masks go into the trusted
labels, and everything else in it is background for training (``engine.solo.data``). The file
is written with the engine's COCO writer (atomic), named as the training folder names its images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from engine.io.coco import build_coco_dataset, write_coco
from engine.io.images import list_images, relative_name
from engine.io.stacks import plane_name, split_plane_name
from engine.structures import ImageResult
from freesolo_napari.exchange import labels_result


@dataclass(frozen=True)
class Trusted:
    """What a trusted-labels file holds: its path (None: nothing written), its images, the ones left out."""

    path: Path | None
    names: list[str]
    left_out: list[str]


@dataclass(frozen=True)
class NextToFix:
    """The most uncertain uncorrected image of a ranking, its rank (1 = most uncertain) and why."""

    file_name: str
    rank: int
    total: int
    uncertainty: float
    skipped: int  # corrected images ranked above it


def folder_corrections(session, skip: set[str] = frozenset()) -> list[ImageResult]:
    """The stored edits of a folder's images (not those named in ``skip``) as ImageResults."""
    import pandas as pd

    results = []
    if session is None:
        return results
    for path, name in zip(session.paths, session.names):
        if name in skip or not session.has_edits(path):
            continue
        edits = session.load_edits(path)
        if edits is not None:
            results.append(labels_result(name, edits.labels, pd.DataFrame(edits.table), edits.automatic))
    return results


def corrected_names(session, extra: set[str] = frozenset()) -> set[str]:
    """File names of the folder's corrected images, plus ``extra`` (edited open images)."""
    names = set(extra)
    if session is not None:
        names |= {name for path, name in zip(session.paths, session.names) if session.has_edits(path)}
    return names


def match_training_names(results: list[ImageResult], images: Path) -> tuple[list[ImageResult], list[str]]:
    """Results renamed as the training folder names its images (by relative name, else a unique file name;
    a stack's plane ``movie.tif[t=2]`` by its file, keeping the plane); returns (matched, names of the
    results with no image in the folder)."""
    paths, _skipped = list_images([images])
    names = [relative_name(p, images) for p in paths]
    by_file: dict[str, list[str]] = {}
    for name in names:
        by_file.setdefault(Path(name).name, []).append(name)
    known, matched, left_out = set(names), [], []
    for res in results:
        base, plane = split_plane_name(res.file_name)
        candidates = [base] if base in known else by_file.get(Path(base).name, [])
        if len(candidates) == 1:
            matched.append(replace(res, file_name=plane_name(candidates[0], plane)))
        else:
            left_out.append(res.file_name)
    return matched, left_out


def write_trusted(target: Path, live: list[ImageResult], session, images: Path) -> Trusted:
    """Worker body: the corrected images (``live`` open ones first, then the folder's stored edits)
    as a trusted-labels COCO file at ``target`` (atomic; replaces an earlier attempt for the same round).

    Nothing is written when no corrected image belongs to the training folder ``images``."""
    results = list(live) + folder_corrections(session, {r.file_name for r in live})
    matched, left_out = match_training_names(results, Path(images))
    unique = list({r.file_name: r for r in reversed(matched)}.values())[::-1]  # the open image wins
    if not unique:
        return Trusted(None, [], left_out)
    dataset = build_coco_dataset(unique, info={"description": "freesolo-napari corrections (trusted labels)"})
    return Trusted(write_coco(target, dataset, overwrite=True), [r.file_name for r in unique], left_out)


def read_ranking(path: Path) -> list[dict]:
    """The rows ``freesolo next-to-fix --json`` wrote (most uncertain first)."""
    rows = json.loads(Path(path).read_text())
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "file_name" in r for r in rows):
        raise ValueError(f"{path} is not a next-to-fix ranking")
    return rows


def next_to_fix(rows: list[dict], corrected: set[str]) -> NextToFix | None:
    """The first row of a ranking whose image is not corrected (None: every image is)."""
    for rank, row in enumerate(rows, 1):
        if row["file_name"] not in corrected:
            return NextToFix(row["file_name"], rank, len(rows), float(row.get("uncertainty", 0.0)), rank - 1)
    return None


def ranked_files(rows: list[dict]) -> set[str]:
    """The files a ranking covers (a stack's planes ``movie.tif[t=1]`` by their file ``movie.tif``)."""
    return {split_plane_name(r["file_name"])[0] for r in rows}


def pick_next(ranking: Path, session, live: list[ImageResult] = ()) -> NextToFix | None:
    """Worker body: the ranking read and the corrected images skipped: the folder's stored edits and the
    ``live`` open ones (a stack's edited planes among them), named as the folder names its images."""
    matched, _left_out = match_training_names(list(live), session.folder) if live else ([], [])
    return next_to_fix(read_ranking(ranking), corrected_names(session, {r.file_name for r in matched}))
