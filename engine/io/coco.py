"""COCO datasets in and out (class-agnostic: a single ``object`` category).

COCO JSON is the exchange format between the engine, the napari plugin (import
for review), training (pseudo-labels as input) and evaluation. Files coming back
from users or other tools are often slightly wrong, so reading validates every
entry and reports bad ones by file name instead of failing deep inside
pycocotools.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import tifffile
from PIL import Image

from engine import __version__
from engine.io.atomic import (
    OutputExistsError,
    atomic_save,
    atomic_write_json,
    json_text,
    prepare_output_dir,
    to_jsonable,
)
from engine.io.masks import (
    box_to_bbox,
    check_rle,
    crop_to_rle,
    mask_to_polygons,
    masks_to_label_image,
    polygons_to_crop,
    polygons_to_mask,
    rle_to_crop,
    rle_to_mask,
)
from engine.io.stacks import split_plane_name
from engine.structures import ImageResult, InstanceMask

__all__ = [
    "CATEGORY",
    "CocoDataset",
    "CocoFormatError",
    "CocoStreamWriter",
    "annotation_to_crop",
    "annotation_to_mask",
    "build_coco_dataset",
    "build_results",
    "load_image_results",
    "parse_coco",
    "read_coco",
    "write_coco",
    "write_label_images",
]

CATEGORY: dict[str, Any] = {"id": 1, "name": "object", "supercategory": "object"}

# Keys written by build_coco_dataset itself; InstanceMask.extra never overrides them,
# and load_image_results does not copy them into extra.
_CORE_KEYS = frozenset(
    {"id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd",
     "score", "maskness", "source"}
)
# Slack for polygon coordinates just outside the image (rounding in other tools).
_POLYGON_SLACK = 1.0
MAX_IMAGE_PIXELS = 400_000_000  # the image loader's default limit: a mask is never larger than an image


class CocoFormatError(ValueError):
    """A COCO file is unusable; the message names the file and what is wrong."""

    def __init__(self, path: str | os.PathLike[str] | None, problem: str) -> None:
        self.path = Path(path) if path is not None else None
        self.problem = problem
        where = f"'{self.path}'" if self.path is not None else "COCO data"
        super().__init__(f"{where}: {problem}")


@dataclass
class CocoDataset:
    """Validated contents of a COCO file.

    ``images`` is empty for a result list (a bare list of annotations with
    ``image_id``, as written by detectors for evaluation); ``is_result_list`` tells
    the two apart. ``problems`` lists entries that were skipped, one line each.
    """

    images: list[dict[str, Any]]
    annotations: list[dict[str, Any]]
    problems: list[str]
    path: Path | None
    categories: list[dict[str, Any]] = field(default_factory=lambda: [dict(CATEGORY)])
    is_result_list: bool = False


# --------------------------------------------------------------------------- writing


def _annotation(
    inst: InstanceMask, ann_id: int, image_id: int, segmentation: str
) -> dict[str, Any] | None:
    area = inst.area
    if area == 0:
        return None
    polys = mask_to_polygons(inst.crop, offset=(inst.box[0], inst.box[2])) if segmentation == "polygon" else []
    seg: Any = polys if polys else crop_to_rle(inst.crop, inst.box, inst.shape)
    ann: dict[str, Any] = {
        "id": ann_id,
        "image_id": image_id,
        "category_id": CATEGORY["id"],
        "segmentation": seg,
        "area": area,
        "bbox": box_to_bbox(inst.box),
        "iscrowd": 0,
        "score": float(inst.score),
    }
    if inst.maskness is not None:
        ann["maskness"] = float(inst.maskness)
    ann["source"] = inst.source
    for key, value in inst.extra.items():
        if not isinstance(key, str) or key in _CORE_KEYS:
            continue
        try:
            ann[key] = to_jsonable(value)
        except TypeError:
            continue  # not representable in JSON: kept in memory only
    return ann


def _default_info(info: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(info) if info is not None else {"description": "freesolo-napari masks", "version": __version__}


def _image_entries(
    res: ImageResult, image_id: int, first_ann_id: int, segmentation: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The COCO image entry of one result and its annotations (ids from ``first_ann_id``; empty masks skipped)."""
    image = {"id": image_id, "file_name": res.file_name, "width": int(res.width), "height": int(res.height)}
    if res.automatic is not None:
        image["automatic"] = dict(res.automatic)
    annotations: list[dict[str, Any]] = []
    for k, inst in enumerate(res.instances):
        shape = inst.shape
        if shape != (res.height, res.width):
            raise ValueError(
                f"{res.file_name}: instance {k} mask has shape {shape}, "
                f"image is {res.height}x{res.width} (h x w)"
            )
        ann = _annotation(inst, first_ann_id + len(annotations), image_id, segmentation)
        if ann is not None:
            annotations.append(ann)
    return image, annotations


def _check_segmentation_kind(segmentation: str) -> None:
    if segmentation not in ("rle", "polygon"):
        raise ValueError(f"segmentation must be 'rle' or 'polygon', got {segmentation!r}")


def build_coco_dataset(
    results: Sequence[ImageResult],
    *,
    segmentation: Literal["rle", "polygon"] = "rle",
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """COCO dataset dict: images get ids 1..N in order, empty masks are skipped.

    Polygons keep every connected part (holes are filled); a mask without a usable
    polygon falls back to RLE. Extra per-instance fields that can be JSON-encoded
    are written as additional annotation keys; an image's ``automatic`` choices (when
    recorded) go into its ``images`` entry under that key. :class:`CocoStreamWriter` writes
    the same file image by image.
    """
    _check_segmentation_kind(segmentation)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    seen: set[str] = set()
    for image_id, res in enumerate(results, start=1):
        if res.file_name in seen:
            raise ValueError(f"duplicate file_name {res.file_name!r} in results")
        seen.add(res.file_name)
        image, anns = _image_entries(res, image_id, len(annotations) + 1, segmentation)
        images.append(image)
        annotations += anns
    return {
        "info": _default_info(info),
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [dict(CATEGORY)],
    }


class CocoStreamWriter:
    """A COCO dataset written as images finish, so memory does not grow with the number of images.

    ``add(result)`` encodes one image's masks at once and spools its image entry and annotations
    to two anonymous temporary files beside ``path`` (the caller can then drop the masks);
    ``close()`` writes ``path`` atomically (temp file, rename) from the spools. The file is
    byte for byte what ``write_coco(path, build_coco_dataset(results, ...))`` writes for the
    same results. An existing ``path`` is refused at construction (unless ``overwrite``), so a
    long run does not end in a refusal; a writer never closed (an error, Ctrl-C) leaves nothing.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        segmentation: Literal["rle", "polygon"] = "rle",
        info: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        backup: bool = True,
    ) -> None:
        _check_segmentation_kind(segmentation)
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise OutputExistsError(self.path)
        self.segmentation = segmentation
        self.overwrite = overwrite
        self.backup = backup  # a replaced file is kept as .bak (atomic_save)
        self.file_names: list[str] = []  # the images added, in order
        self.info = _default_info(info)
        self.n_images = 0
        self.n_annotations = 0
        self._seen: set[str] = set()
        prepare_output_dir(self.path)
        self._images = tempfile.TemporaryFile("w+", encoding="utf-8", dir=self.path.parent)
        self._annotations = tempfile.TemporaryFile("w+", encoding="utf-8", dir=self.path.parent)

    def add(self, res: ImageResult) -> int:
        """Encode and spool one image's result; returns how many annotations it gave."""
        if res.file_name in self._seen:
            raise ValueError(f"duplicate file_name {res.file_name!r} in results")
        image, anns = _image_entries(res, self.n_images + 1, self.n_annotations + 1, self.segmentation)
        self._seen.add(res.file_name)
        self.file_names.append(res.file_name)
        self._images.write(("," if self.n_images else "") + json_text(image))
        self.n_images += 1
        for ann in anns:
            self._annotations.write(("," if self.n_annotations else "") + json_text(ann))
            self.n_annotations += 1
        return len(anns)

    def close(self, extra: Mapping[str, Any] | None = None) -> Path:
        """Write the COCO file (atomically, with the ``extra`` top-level keys after its own) and drop the spools."""
        tail = "".join("," + json_text(str(k)) + ":" + json_text(v) for k, v in (extra or {}).items()) + "}"
        try:
            def _write(tmp: Path) -> None:
                with open(tmp, "w", encoding="utf-8") as out:
                    out.write('{"info":' + json_text(self.info) + ',"licenses":[],"images":[')
                    for spool, after in ((self._images, '],"annotations":['),
                                         (self._annotations, '],"categories":' + json_text([CATEGORY]) + tail)):
                        spool.seek(0)
                        shutil.copyfileobj(spool, out)
                        out.write(after)

            return atomic_save(self.path, _write, overwrite=self.overwrite, backup=self.backup)
        finally:
            self.discard()

    def discard(self) -> None:
        """Drop the spools without writing anything."""
        self._images.close()
        self._annotations.close()

    def __enter__(self) -> CocoStreamWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.discard()


def build_results(
    results: Sequence[ImageResult], image_ids: Mapping[str, int]
) -> list[dict[str, Any]]:
    """COCO result list (RLE + score per instance) for evaluation against a GT file."""
    out: list[dict[str, Any]] = []
    for res in results:
        if res.file_name not in image_ids:
            raise KeyError(f"no image id for file_name {res.file_name!r}")
        image_id = int(image_ids[res.file_name])
        for inst in res.instances:
            if inst.area == 0:
                continue
            out.append(
                {"image_id": image_id, "category_id": CATEGORY["id"],
                 "segmentation": crop_to_rle(inst.crop, inst.box, inst.shape), "score": float(inst.score),
                 "bbox": box_to_bbox(inst.box), "area": inst.area}
            )
    return out


def write_coco(
    path: str | os.PathLike[str], dataset: Mapping[str, Any] | list[Any], *, overwrite: bool = False
) -> Path:
    """Write a dataset (or result list) atomically; refuses to overwrite unless asked."""
    return atomic_write_json(path, dataset, overwrite=overwrite)


# --------------------------------------------------------------------------- reading


def _ann_name(ann: Any, index: int) -> str:
    if isinstance(ann, Mapping) and isinstance(ann.get("id"), (int, str)):
        return f"annotation {ann['id']}"
    return f"annotation at index {index}"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _check_segmentation(seg: Any, h: int | None, w: int | None) -> str | None:
    """Why ``seg`` is unusable for an image of h x w (None when fine)."""
    if isinstance(seg, Mapping):
        size = seg.get("size")
        if (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_number(v) for v in size)
                and size[0] * size[1] > MAX_IMAGE_PIXELS):
            return f"RLE size {size[0]}x{size[1]} is over the limit of {MAX_IMAGE_PIXELS:,} pixels"
        if (h is not None and isinstance(size, (list, tuple)) and len(size) == 2
                and (size[0], size[1]) != (h, w)):
            return (f"segmentation outside the image size (RLE is {size[0]}x{size[1]}, "
                    f"image is {h}x{w}, h x w)")
        if size is not None and (not isinstance(size, (list, tuple)) or
                                 not all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
            return f"RLE size {size!r} is not [height, width]"
        counts = seg.get("counts")
        if isinstance(counts, list) and not all(
                isinstance(c, int) and not isinstance(c, bool) for c in counts):
            return "uncompressed RLE counts must be integers"
        try:
            check_rle(seg, h, w)
        except (ValueError, TypeError) as exc:
            return f"malformed RLE ({exc})"
        return None
    if isinstance(seg, list):
        if not seg:
            return "segmentation is an empty polygon list"
        for i, poly in enumerate(seg):
            if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
                return f"polygon {i} is not a list of numbers"
            if len(poly) < 6 or len(poly) % 2:
                return f"polygon {i} has {len(poly)} coordinates (needs an even number >= 6)"
            if h is not None and w is not None:
                xs, ys = poly[0::2], poly[1::2]
                if (min(xs) < -_POLYGON_SLACK or min(ys) < -_POLYGON_SLACK
                        or max(xs) > w + _POLYGON_SLACK or max(ys) > h + _POLYGON_SLACK):
                    return (f"segmentation outside the image size (polygon {i} spans "
                            f"x {min(xs):g}..{max(xs):g}, y {min(ys):g}..{max(ys):g}; "
                            f"image is {w}x{h}, w x h)")
        return None
    return f"segmentation has unsupported type {type(seg).__name__}"


def inside(root: Path, file_name: str) -> Path | None:
    """``root / file_name`` when that stays inside ``root``; None for absolute names, ``..`` parts,
    drive letters or empty names (a COCO file must not make us read or write elsewhere)."""
    rel = PurePosixPath(str(file_name).replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts or not rel.name or re.fullmatch(r"[A-Za-z]:", rel.parts[0]):
        return None
    return Path(root).joinpath(*rel.parts)


def _image_problem(img: Any) -> str | None:
    """Why an ``images`` entry is unusable (None when fine)."""
    if not isinstance(img, Mapping):
        return "is not an object"
    missing = [k for k in ("id", "file_name", "width", "height") if k not in img]
    if missing:
        return f"has no {', '.join(missing)}"
    if not isinstance(img["id"], (int, str)) or isinstance(img["id"], bool):
        return f"has an invalid id {img['id']!r}"
    if not isinstance(img["file_name"], str) or not img["file_name"]:
        return f"has an invalid file_name {img['file_name']!r}"
    for key in ("width", "height"):
        v = img[key]
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            return f"has an invalid {key} {v!r}"
    if img["width"] * img["height"] > MAX_IMAGE_PIXELS:
        return (f"declares {img['width']}x{img['height']} pixels, over the limit of {MAX_IMAGE_PIXELS:,} "
                "(the same as for loading images)")
    return None


def _parse_images(raw: Any, path: Path | None, problems: list[str]) -> list[dict[str, Any]]:
    """The usable ``images`` entries; bad ones and repeated ids or names are skipped into ``problems``.

    Only a file with images of which none is usable is refused as a whole.
    """
    if not isinstance(raw, list):
        raise CocoFormatError(path, "'images' must be a list")
    images: list[dict[str, Any]] = []
    ids: set[Any] = set()
    names: set[str] = set()
    skipped: list[str] = []
    for i, img in enumerate(raw):
        label = (f"image {img['id']!r} (index {i})" if isinstance(img, Mapping) and isinstance(img.get("id"), (int, str))
                 else f"image at index {i}")
        reason = _image_problem(img)
        if reason is None and img["id"] in ids:
            reason = "repeats an earlier image id"
        if reason is None and img["file_name"] in names:
            reason = f"repeats the file_name {img['file_name']!r}"
        if reason is not None:
            skipped.append(f"{label} {reason}; skipped with its annotations")
            continue
        ids.add(img["id"])
        names.add(img["file_name"])
        images.append(dict(img))
    if raw and not images:
        raise CocoFormatError(path, f"no usable image: {skipped[0]}")
    problems.extend(skipped)
    return images


def parse_coco(obj: Any, *, path: str | os.PathLike[str] | None = None) -> CocoDataset:
    """Validate an already-loaded COCO object (dataset dict or result list).

    Structural errors raise :class:`CocoFormatError`; bad annotations are skipped
    and listed in ``problems``.
    """
    p = Path(path) if path is not None else None
    problems: list[str] = []
    sizes: dict[Any, tuple[int, int]] = {}
    if isinstance(obj, Mapping):
        if "images" not in obj:
            raise CocoFormatError(p, "top level is an object without 'images' (not a COCO dataset)")
        images = _parse_images(obj["images"], p, problems)
        sizes = {img["id"]: (img["height"], img["width"]) for img in images}
        raw_anns = obj.get("annotations", [])
        if not isinstance(raw_anns, list):
            raise CocoFormatError(p, "'annotations' must be a list")
        cats = obj.get("categories")
        categories = [dict(c) for c in cats if isinstance(c, Mapping)] if isinstance(cats, list) else []
        is_results = False
    elif isinstance(obj, list):
        images, raw_anns, categories, is_results = [], obj, [dict(CATEGORY)], True
    else:
        raise CocoFormatError(
            p, f"top level is a {type(obj).__name__}; expected a COCO dataset object or a result list"
        )
    if not categories:
        categories = [dict(CATEGORY)]

    file_names = {img["id"]: img["file_name"] for img in images}
    annotations: list[dict[str, Any]] = []
    ann_ids: set[Any] = set()
    for i, ann in enumerate(raw_anns):
        name = _ann_name(ann, i)
        if not isinstance(ann, Mapping):
            problems.append(f"{name} is not an object")
            continue
        if isinstance(ann.get("id"), (int, str)) and not isinstance(ann.get("id"), bool):
            if ann["id"] in ann_ids:
                problems.append(f"{name} (index {i}) repeats an earlier annotation id; skipped")
                continue
            ann_ids.add(ann["id"])
        if "image_id" not in ann:
            problems.append(f"{name} has no image_id")
            continue
        image_id = ann["image_id"]
        if not isinstance(image_id, (int, str)) or isinstance(image_id, bool):
            problems.append(f"{name} (index {i}) has an invalid image_id {image_id!r}")
            continue
        where = (f" (image '{file_names[image_id]}')"
                 if isinstance(image_id, (int, str)) and image_id in file_names else "")
        if "segmentation" not in ann:
            problems.append(f"{name} has no segmentation{where}")
            continue
        h = w = None
        if not is_results:
            if ann["image_id"] not in sizes:
                problems.append(f"{name} refers to missing image {ann['image_id']!r}")
                continue
            h, w = sizes[ann["image_id"]]
        if "score" in ann and not _is_number(ann["score"]):
            problems.append(f"{name} has an invalid score {ann['score']!r}{where}")
            continue
        reason = _check_segmentation(ann["segmentation"], h, w)
        if reason is not None:
            problems.append(f"{name}: {reason}{where}")
            continue
        annotations.append(dict(ann))
    return CocoDataset(images, annotations, problems, p, categories, is_results)


def read_coco(path: str | os.PathLike[str]) -> CocoDataset:
    """Read and validate a COCO dataset or result list from a JSON file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise CocoFormatError(p, "file does not exist") from None
    except IsADirectoryError:
        raise CocoFormatError(p, "is a folder, not a JSON file") from None
    except OSError as exc:
        raise CocoFormatError(p, f"cannot read file ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CocoFormatError(p, "not UTF-8 text (is this a JSON file?)") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CocoFormatError(
            p, f"not valid JSON at line {exc.lineno} column {exc.colno} ({exc.msg})"
        ) from None
    return parse_coco(obj, path=p)


def annotation_to_mask(ann: Mapping[str, Any], h: int | None, w: int | None) -> np.ndarray:
    """Decode an annotation's segmentation (RLE or polygons) into a bool (h, w) mask."""
    seg = ann["segmentation"]
    if isinstance(seg, Mapping):
        return rle_to_mask(seg, h, w)
    if h is None or w is None:
        raise ValueError("polygon segmentation needs the image size")
    return polygons_to_mask(seg, h, w)


def annotation_to_crop(ann: Mapping[str, Any], h: int | None,
                       w: int | None) -> tuple[np.ndarray, tuple[int, int, int, int], tuple[int, int]]:
    """An annotation's segmentation as (tight bool crop, box (y0, y1, x0, x1), image (h, w)), decoded
    into the crop only (``rle_to_crop``, ``polygons_to_crop``): no image-sized array."""
    seg = ann["segmentation"]
    if isinstance(seg, Mapping):
        crop, box = rle_to_crop(seg, h, w)
        return crop, box, check_rle(seg, h, w)
    if h is None or w is None:
        raise ValueError("polygon segmentation needs the image size")
    crop, box = polygons_to_crop(seg, h, w)
    return crop, box, (int(h), int(w))


def load_image_results(
    path: str | os.PathLike[str],
    *,
    source: str | None = None,
    problems: list[str] | None = None,
) -> dict[str, ImageResult]:
    """Decode a COCO file into ImageResults keyed by ``file_name`` (images in file order).

    Images without annotations are kept (they say "nothing here"). ``score``
    defaults to 1.0 (ground truth); ``source`` overrides each annotation's own
    source (default ``"coco"``). Non-standard keys go to ``InstanceMask.extra``; an
    image's ``automatic`` choices (written by ``freesolo freemask``) to ``ImageResult.automatic``.
    A result list has no file names or sizes: images are keyed by ``str(image_id)``
    and sized from their RLE; polygon entries there are skipped. Skipped entries
    are appended to ``problems`` when given.
    """
    ds = read_coco(path)
    notes = list(ds.problems)
    out: dict[str, ImageResult] = {}
    by_id: dict[Any, ImageResult] = {}
    for img in ds.images:
        automatic = img.get("automatic")
        res = ImageResult(img["file_name"], int(img["height"]), int(img["width"]),
                          automatic=dict(automatic) if isinstance(automatic, Mapping) else None)
        out[res.file_name] = res
        by_id[img["id"]] = res
    for i, ann in enumerate(ds.annotations):
        name = _ann_name(ann, i)
        res = by_id.get(ann["image_id"])
        try:
            if res is None:  # result list
                seg = ann["segmentation"]
                if not isinstance(seg, Mapping) or "size" not in seg:
                    notes.append(f"{name}: polygons in a result list need an image size; skipped")
                    continue
                h, w = int(seg["size"][0]), int(seg["size"][1])
                key = str(ann["image_id"])
                res = out.setdefault(key, ImageResult(key, h, w))
                by_id[ann["image_id"]] = res
            crop, box, shape = annotation_to_crop(ann, res.height, res.width)
        except (ValueError, TypeError) as exc:
            where = f" (image '{res.file_name}')" if res is not None else ""
            notes.append(f"{name}: cannot decode segmentation ({exc}){where}")
            continue
        extra = {k: v for k, v in ann.items() if k not in _CORE_KEYS}
        maskness = ann.get("maskness")
        res.instances.append(
            InstanceMask(
                crop,
                box=box,
                shape=shape,
                score=float(ann.get("score", 1.0)),
                maskness=float(maskness) if _is_number(maskness) else None,
                source=source if source is not None else str(ann.get("source", "coco")),
                extra=extra,
            )
        )
    if problems is not None:
        problems.extend(notes)
    return out


# --------------------------------------------------------------------------- label images


def _label_path(out_dir: Path, file_name: str, ext: str) -> Path:
    """``stack.tif[z=3]`` -> ``OUT/stack[z=3].png``: one label image per plane, never outside ``out_dir``."""
    base, plane = split_plane_name(file_name)
    target = inside(out_dir, base)
    if target is None:
        raise ValueError(f"file_name {file_name!r} would write outside the output folder")
    target = target.with_suffix(ext)
    return target.with_name(target.stem + plane.suffix() + ext)


def write_label_images(
    results: Sequence[ImageResult],
    out_dir: str | os.PathLike[str],
    *,
    fmt: Literal["png", "tif"] = "png",
    overwrite: bool = False,
) -> list[Path]:
    """Write one 16-bit label image per image (label k = instance k; higher score on top).

    Sub-folders of ``file_name`` are kept. All targets are checked before anything is
    written, so a refused overwrite or a name clash leaves the folder untouched.
    """
    fmt_l = fmt.lower()
    if fmt_l not in ("png", "tif", "tiff"):
        raise ValueError(f"fmt must be 'png' or 'tif', got {fmt!r}")
    ext = ".png" if fmt_l == "png" else ".tif"
    out = Path(out_dir)
    targets: list[Path] = []
    seen: dict[Path, str] = {}
    for res in results:
        target = _label_path(out, res.file_name, ext)
        if target in seen:
            raise ValueError(
                f"{res.file_name!r} and {seen[target]!r} would both be written to '{target}'"
            )
        seen[target] = res.file_name
        if target.exists() and not overwrite:
            raise OutputExistsError(target)
        targets.append(target)

    written: list[Path] = []
    for res, target in zip(results, targets):
        labels = masks_to_label_image(
            [inst.crop for inst in res.instances],
            [inst.score for inst in res.instances],
            shape=(res.height, res.width),
            boxes=[inst.box for inst in res.instances],
        )
        if ext == ".png":
            if labels.dtype != np.uint16:
                raise ValueError(
                    f"{res.file_name!r} has {len(res.instances)} instances; PNG holds at most "
                    f"65535 labels, use fmt='tif'"
                )

            def _write(tmp: Path, labels: np.ndarray = labels) -> None:
                Image.fromarray(labels).save(tmp, format="PNG")
        else:

            def _write(tmp: Path, labels: np.ndarray = labels) -> None:
                tifffile.imwrite(tmp, labels, compression="zlib", photometric="minisblack")

        written.append(atomic_save(target, _write, overwrite=overwrite))
    return written
