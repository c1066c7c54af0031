"""A batch's outputs: COCO JSON, label images and overlay PNGs, written as images finish (``ResultStream``, the
CLI's) or for a finished batch (``write_outputs``, the demo's)."""

from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Sequence

import numpy as np

from PIL import Image
from skimage.segmentation import find_boundaries

from engine.io.atomic import atomic_save
from engine.io.coco import CocoStreamWriter, build_coco_dataset, write_coco, write_label_images
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


class ImageOutputs:
    """One image's label image and overlay PNG written as it finishes (into ``labels`` / ``overlays``;
    None: not written). A target that exists is refused unless ``overwrite`` (nothing is replaced);
    two images that would write the same file are refused."""

    def __init__(self, labels: Path | None = None, overlays: Path | None = None, overwrite: bool = False):
        self.labels, self.overlays, self.overwrite = labels, overlays, overwrite
        self._names: dict[Path, str] = {}  # each output's stem -> the image it came from

    def add(self, res, image: np.ndarray) -> None:
        """Write ``res``'s label image and overlay (``image``: its pixels)."""
        if self.labels is None and self.overlays is None:
            return
        stem = overlay_path(Path(), res.file_name)
        if stem in self._names:
            raise ValueError(f"{res.file_name!r} and {self._names[stem]!r} would both be written to '{stem}'")
        self._names[stem] = res.file_name
        if self.labels is not None:
            write_label_images([res], self.labels, fmt="png", overwrite=self.overwrite)
        if self.overlays is not None:
            write_overlay(res, image, self.overlays, self.overwrite)


class ResultStream:
    """A batch's outputs written as each image finishes: its COCO entries spooled (``CocoStreamWriter``;
    ``close`` writes the file), its label image and overlay PNG (``ImageOutputs``) written at once, so
    no image's masks are kept until the end. A label image or overlay that exists stops the run at that
    image unless ``overwrite``; the COCO file is written only by ``close``."""

    def __init__(self, out: Path, fmt: str, labels: Path | None = None, overlays: Path | None = None,
                 overwrite: bool = False, info=FREEMASK_INFO):
        self.coco = CocoStreamWriter(out, segmentation=fmt, info=info, overwrite=overwrite)
        self.files = ImageOutputs(labels, overlays, overwrite)

    def add(self, res, image: np.ndarray) -> None:
        self.coco.add(res)
        self.files.add(res, image)

    def close(self) -> Path:
        return self.coco.close()

    def __enter__(self) -> "ResultStream":
        return self

    def __exit__(self, *_exc) -> None:
        self.coco.discard()


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
    """An overlay PNG per result of a finished batch (each image loaded again)."""
    written = []
    for res in report.results:
        image = load_plane(report.images[res.file_name], split_plane_name(res.file_name)[1], report.channel)
        written.append(write_overlay(res, image, folder, overwrite))
    return written


def overlay_path(folder: Path, file_name: str) -> Path:
    """``sub/a.png`` -> ``FOLDER/sub/a_overlay.png``; a plane ``s.tif[z=3]`` -> ``FOLDER/s[z=3]_overlay.png``."""
    base, plane = split_plane_name(file_name)
    return folder / (str(Path(base).with_suffix("")) + plane.suffix() + "_overlay.png")


def write_overlay(res, image: np.ndarray, folder: Path, overwrite: bool) -> Path:
    """The overlay PNG of one result (its readable subset of masks drawn over ``image``)."""
    shown = readable_subset(res.instances)
    over = render_overlay(image, [m.crop for m in shown], [m.score for m in shown], boxes=[m.box for m in shown])
    return atomic_save(overlay_path(folder, res.file_name),
                       lambda tmp: Image.fromarray(over).save(tmp, format="PNG"), overwrite=overwrite)


def render_overlay(
    image: np.ndarray, masks: Sequence[np.ndarray], scores: Sequence[float] | None = None,
    boxes: Sequence[tuple[int, int, int, int]] | None = None,
) -> np.ndarray:
    """RGB uint8 picture with a translucent fill and a solid outline per mask.

    With ``scores`` the fill opacity follows the score, so confident instances stand
    out in demo overlays. With ``boxes`` (y0, y1, x0, x1) each mask is a crop placed at its box:
    only the crop's pixels are drawn, in float, so a large image costs one uint8 copy.
    """
    out = _uint8_rgb_copy(image)
    if scores is not None and len(scores) != len(masks):
        raise ValueError("scores and masks differ in length")
    if boxes is not None and len(boxes) != len(masks):
        raise ValueError("boxes and masks differ in length")
    for i, m in enumerate(masks):
        m = np.asarray(m, dtype=bool)
        y0, y1, x0, x1 = boxes[i] if boxes is not None else (0, out.shape[0], 0, out.shape[1])
        if m.shape != (y1 - y0, x1 - x0) or min(y0, x0) < 0 or y1 > out.shape[0] or x1 > out.shape[1]:
            raise ValueError(f"mask {i} has shape {m.shape}, which does not fit {(y0, y1, x0, x1)} in {out.shape[:2]}")
        if not m.any():
            continue
        colour = _colour(i) * 255
        alpha = 0.4 if scores is None else 0.15 + 0.45 * float(np.clip(scores[i], 0, 1))
        region = out[y0:y1, x0:x1]
        region[m] = np.clip(np.round((1 - alpha) * region[m] + alpha * colour), 0, 255).astype(np.uint8)
        edge = find_boundaries(np.pad(m, 1), mode="inner")[1:-1, 1:-1]  # outside the box is background
        region[edge] = np.round(colour).astype(np.uint8)
    return out


def _uint8_rgb_copy(image: np.ndarray) -> np.ndarray:
    """A uint8 RGB copy of ``image`` to draw on (uint8 RGB: copied as it is, no float image made)."""
    img = np.asarray(image)
    if img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3:
        return img.copy()
    return np.clip(np.round(to_unit_rgb(img) * 255.0), 0, 255).astype(np.uint8)


def _colour(i: int) -> np.ndarray:
    """Deterministic, well-separated colours via golden-ratio hue steps."""
    return np.array(colorsys.hsv_to_rgb((0.13 + i * 0.618033988749895) % 1.0, 0.85, 1.0))
