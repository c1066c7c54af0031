"""Writing a finished batch: COCO JSON, label images and overlay PNGs (the CLI's and the demo's outputs)."""

from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Sequence

import numpy as np

from PIL import Image
from skimage.segmentation import find_boundaries

from engine.io.atomic import atomic_save
from engine.io.coco import build_coco_dataset, write_coco, write_label_images
from engine.io.images import to_unit_rgb
from engine.io.stacks import load_plane, split_plane_name
from engine.structures import Coverage

FREEMASK_INFO = {"description": "freesolo free masks"}


def write_outputs(report, out: Path, fmt: str, labels: Path | None, overlays: Path | None, overwrite: bool) -> list[Path]:
    """COCO JSON (+ label images, + overlay PNGs) for a finished batch; returns what was written."""

    dataset = build_coco_dataset(report.results, segmentation=fmt, info=FREEMASK_INFO)
    written = [write_coco(out, dataset, overwrite=overwrite)]
    if labels is not None:
        written += write_label_images(report.results, labels, fmt="png", overwrite=overwrite)
    if overlays is not None:
        written += write_overlays(report, overlays, overwrite)
    return written


def readable_subset(instances, limit: int = 30, max_overlap: float = 0.5):
    """The best-scored masks that do not mostly cover one already shown: what a person can read.


    The COCO file keeps every mask (low-scored ones only add recall); overlays would be a
    patchwork if they drew them all.
    """
    shown, covered = [], None
    for inst in sorted(instances, key=lambda m: m.score, reverse=True):
        if covered is None:
            covered = Coverage(inst.shape)
        if covered.share(inst) > max_overlap:
            continue
        shown.append(inst)
        covered.add(inst)
        if len(shown) >= limit:
            break
    return shown


def write_overlays(report, folder: Path, overwrite: bool) -> list[Path]:


    written = []
    for res in report.results:
        image = load_plane(report.images[res.file_name], split_plane_name(res.file_name)[1], report.channel)
        shown = readable_subset(res.instances)
        over = render_overlay(image, [m.mask for m in shown], [m.score for m in shown])
        base, plane = split_plane_name(res.file_name)
        target = folder / (str(Path(base).with_suffix("")) + plane.suffix() + "_overlay.png")
        written.append(atomic_save(target, lambda tmp, a=over: Image.fromarray(a).save(tmp, format="PNG"), overwrite=overwrite))
    return written


def render_overlay(
    image: np.ndarray, masks: Sequence[np.ndarray], scores: Sequence[float] | None = None
) -> np.ndarray:
    """RGB uint8 picture with a translucent fill and a solid outline per mask.

    With ``scores`` the fill opacity follows the score, so confident instances stand
    out in demo overlays.
    """
    out = to_unit_rgb(image) * 255.0
    if scores is not None and len(scores) != len(masks):
        raise ValueError("scores and masks differ in length")
    for i, m in enumerate(masks):
        m = np.asarray(m, dtype=bool)
        if m.shape != out.shape[:2]:
            raise ValueError(f"mask {i} has shape {m.shape}, image {out.shape[:2]}")
        if not m.any():
            continue
        colour = _colour(i) * 255
        alpha = 0.4 if scores is None else 0.15 + 0.45 * float(np.clip(scores[i], 0, 1))
        out[m] = (1 - alpha) * out[m] + alpha * colour
        edge = find_boundaries(m, mode="inner")
        out[edge] = colour
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _colour(i: int) -> np.ndarray:
    """Deterministic, well-separated colours via golden-ratio hue steps."""
    return np.array(colorsys.hsv_to_rgb((0.13 + i * 0.618033988749895) % 1.0, 0.85, 1.0))
