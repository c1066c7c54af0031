"""Training data for the SOLO student: images + coarse masks, letterboxed to one square size.

Bad entries never stop training: images listed in the coarse-mask file but missing from the
folder, unreadable images and masks whose size does not match their image are reported and
skipped; images whose coarse-mask list is empty stay in (they teach "background").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.io.coco import load_image_results
from engine.geometry import letterbox
from engine.io.images import ImageLoadError, list_images, relative_name
from engine.io.stacks import load_plane, split_plane_name
from engine.solo import tiles
from engine.structures import ImageResult, InstanceMask, is_ignored


@dataclass
class TrainSample:
    file_name: str
    image: torch.Tensor  # (3, S, S) uint8, letterboxed (image top-left, zero padding)
    masks: torch.Tensor  # (M, S, S) bool
    weights: torch.Tensor  # (M,) float: pseudo-label confidence (1 for coarse masks)
    content: tuple[int, int]  # (h, w) of the real image inside the S×S square
    ignore: torch.Tensor | None = None  # (K, S, S) bool: unselected candidates (negatives down-weighted there)
    trusted: bool = False  # the masks are a person's (complete: everything else is background)
    # (M, E) float: each mask's Free Mask query embedding, a zero row where it has none (classical
    # proposals, trusted masks); None when the run learns no embeddings
    embeddings: torch.Tensor | None = None


def letterbox_masks(masks: list[np.ndarray], content: tuple[int, int], size: int) -> torch.Tensor:
    if not masks:
        return torch.zeros(0, size, size, dtype=torch.bool)
    m = torch.from_numpy(np.stack(masks)).float()[:, None]
    m = F.interpolate(m, size=content, mode="bilinear", align_corners=False)[:, 0] >= 0.5
    out = torch.zeros(len(masks), size, size, dtype=torch.bool)
    out[:, : content[0], : content[1]] = m
    return out


def load_training_set(
    image_dir: str | Path, masks_json: str | Path, size: int, *, min_score: float | None = None,
    trusted_json: str | Path | None = None, scale: float = 0.0, embedding_dim: int = 0,
) -> tuple[list[TrainSample], list[str]]:
    """(samples, problems) for the images of ``masks_json`` (and ``trusted_json``) found in ``image_dir``.

    An image in ``trusted_json`` takes its masks from there, whatever ``masks_json`` says: all of
    them are positives and the rest of the image is background (no ignore regions). ``scale``
    (network px per image px, ``engine/solo/tiles.py``): an image larger than ``size`` at that
    scale becomes one sample per window; 0 letterboxes every image whole.
    """
    problems: list[str] = []
    results, trusted = read_training_masks(masks_json, trusted_json, problems)
    paths, _skipped = list_images([image_dir], recursive=True)
    by_name = {relative_name(p, image_dir): p for p in paths}
    samples = []
    for name, res in results.items():
        base, plane = split_plane_name(name)  # a stack's plane: FILE[z=3]
        path = by_name.get(base)
        if path is None:
            where = Path(trusted_json if name in trusted else masks_json).name
            problems.append(f"{name}: listed in {where} but not found in {image_dir}")
            continue
        try:
            image = load_plane(path, plane)
        except ImageLoadError as exc:
            problems.append(str(exc))
            continue
        kept, ignored = _split_instances(name, res.instances, image, min_score, name in trusted, problems)
        samples += _samples(name, kept, ignored, image, size, scale, name in trusted, embedding_dim)
    return samples, problems


def read_training_masks(masks_json: str | Path, trusted_json: str | Path | None, problems: list[str]
                        ) -> tuple[dict[str, ImageResult], dict[str, ImageResult]]:
    """(every image's training masks, the trusted ones among them): trusted masks replace the others."""
    results = load_image_results(masks_json, problems=problems)
    trusted = load_image_results(trusted_json, problems=problems, source="trusted") if trusted_json else {}
    return results | trusted, trusted


def positive_masks(results: dict[str, ImageResult], trusted: dict[str, ImageResult]) -> list[InstanceMask]:
    """The masks training takes as objects (trusted ones, and the others not marked ignore)."""
    return [m for name, res in results.items() for m in res.instances if name in trusted or not is_ignored(m)]


def embedding_dim_of(masks: list[InstanceMask]) -> int:
    """Length of the query embeddings the training masks carry (``extra["embedding"]``, written by
    Free Mask and by a student with the embedding branch); 0 when none has one."""
    for m in masks:
        vector = m.extra.get("embedding")
        if isinstance(vector, list) and vector:
            return len(vector)
    return 0


def _embedding_rows(kept: list[InstanceMask], dim: int, trusted: bool) -> torch.Tensor | None:
    """(M, dim) embeddings of ``kept``; zero rows for masks without one of that length (and for
    trusted masks: a person's mask has no query)."""
    if not dim:
        return None
    rows = torch.zeros(len(kept), dim)
    for k, m in enumerate(kept):
        vector = m.extra.get("embedding")
        if not trusted and isinstance(vector, list) and len(vector) == dim:
            rows[k] = torch.tensor([float(v) for v in vector])
    return torch.nan_to_num(rows, nan=0.0, posinf=0.0, neginf=0.0)


def _split_instances(name: str, instances: list, image: np.ndarray, min_score: float | None, trusted: bool,
                     problems: list[str]) -> tuple[list[InstanceMask], list[InstanceMask]]:
    """(positives, ignore regions) of one image; masks of the wrong size are reported and left out."""
    kept, ignored = [], []
    for k, inst in enumerate(instances):
        if inst.shape != image.shape[:2]:
            problems.append(f"{name}: mask {k} is {inst.shape}, image is {image.shape[:2]}; skipped")
        elif not inst.area:
            continue
        elif not trusted and (is_ignored(inst) or (min_score is not None and inst.score < min_score)):
            ignored.append(inst)
        else:
            kept.append(inst)
    return kept, ignored


def _samples(name: str, kept: list[InstanceMask], ignored: list[InstanceMask], image: np.ndarray, size: int,
             scale: float, trusted: bool, embedding_dim: int = 0) -> list[TrainSample]:
    """The image letterboxed whole, or one sample per window of ``tiles.windows``."""
    weights = [1.0 if trusted else float(m.extra.get("weight", 1.0)) for m in kept]
    embeddings = _embedding_rows(kept, embedding_dim, trusted)
    plan = tiles.windows(image.shape[:2], scale, size)
    if plan is None:
        tensor, _scale, content = letterbox(image, size)
        return [_sample(name, tensor, content, size, [m.mask for m in kept], weights,
                        [m.mask for m in ignored], trusted, embeddings)]
    out = []
    for y0, y1, x0, x1 in plan.windows:
        tensor, _scale, content = letterbox(np.ascontiguousarray(image[y0:y1, x0:x1]), size, scale)
        inside, cut = tiles.split_masks(kept, (y0, y1, x0, x1))
        ignored_inside, ignored_cut = tiles.split_masks(ignored, (y0, y1, x0, x1))
        ignore = cut + ignored_cut + [m for _k, m in ignored_inside]  # objects cut by the edge: neither
        rows = None if embeddings is None else embeddings[[k for k, _m in inside]]
        out.append(_sample(name, tensor, content, size, [m for _k, m in inside], [weights[k] for k, _m in inside],
                           ignore, trusted, rows))
    return out


def _sample(name: str, tensor: torch.Tensor, content: tuple[int, int], size: int, masks: list[np.ndarray],
            weights: list[float], ignore: list[np.ndarray], trusted: bool,
            embeddings: torch.Tensor | None = None) -> TrainSample:
    return TrainSample(
        file_name=name,
        image=tensor,
        masks=letterbox_masks(masks, content, size),
        weights=torch.tensor(weights, dtype=torch.float32),
        content=content,
        ignore=letterbox_masks(ignore, content, size) if ignore else None,
        trusted=trusted,
        embeddings=embeddings,
    )


def flip_sample(sample: TrainSample) -> TrainSample:
    """Horizontal flip of the whole square (padding moves to the left; the model never minds)."""
    ignore = None if sample.ignore is None else sample.ignore.flip(-1)
    return TrainSample(sample.file_name, sample.image.flip(-1), sample.masks.flip(-1), sample.weights, sample.content,
                       ignore, sample.trusted, sample.embeddings)
