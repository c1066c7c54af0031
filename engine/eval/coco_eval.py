"""Class-agnostic COCO mask evaluation (AP, AP50, AP75, AR100).

FreeSOLO finds "objects" without classes, so predictions are scored against any
ground-truth object (``useCats = 0``). Inputs go through :mod:`engine.io.coco` first so
a bad file gives a one-line error naming it rather than a pycocotools traceback,
and predictions saved as a full dataset (with their own image ids) are matched to
the ground truth by ``file_name``.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from engine.io.coco import CATEGORY, CocoDataset, CocoFormatError, annotation_to_mask, parse_coco, read_coco
from engine.io.masks import mask_to_bbox, mask_to_rle

__all__ = ["evaluate_segm"]

CocoInput = str | os.PathLike[str] | Mapping[str, Any] | Sequence[Mapping[str, Any]]


def _load(obj: CocoInput) -> CocoDataset:
    if isinstance(obj, (str, os.PathLike)):
        return read_coco(obj)
    if isinstance(obj, (Mapping, list)):
        return parse_coco(obj)
    raise TypeError(f"expected a path, a COCO dataset dict or a result list, got {type(obj).__name__}")


def _to_rle_ann(ann: Mapping[str, Any], h: int, w: int) -> dict[str, Any] | None:
    """RLE-encoded copy with area/bbox recomputed from the mask (None if undecodable)."""
    try:
        mask = annotation_to_mask(ann, h, w)
    except (ValueError, TypeError):
        return None
    return {
        "segmentation": mask_to_rle(mask),
        "area": float(mask.sum()),
        "bbox": mask_to_bbox(mask),
    }


def _coco_object(dataset: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def evaluate_segm(gt: CocoInput, pred: CocoInput) -> dict[str, float | int]:
    """COCO ``segm`` metrics with categories ignored; all metrics in [0, 1].

    ``gt`` is a COCO dataset (path or dict). ``pred`` is a dataset (its images are
    matched to GT by ``file_name``; unmatched ones are ignored and counted in
    ``n_unmatched``) or a result list (matched by ``image_id``). Predictions without
    ``score`` count as 1.0. With ground-truth objects present, undefined metrics
    (e.g. no predictions) are 0; with none at all, pycocotools' -1 is kept.
    """
    gt_ds = _load(gt)
    if gt_ds.is_result_list:
        raise CocoFormatError(gt_ds.path, "ground truth must be a COCO dataset with images, not a result list")
    pred_ds = _load(pred)
    sizes = {img["id"]: (img["height"], img["width"]) for img in gt_ds.images}
    images = [{k: img[k] for k in ("id", "file_name", "height", "width")} for img in gt_ds.images]
    gt_anns = _ground_truth_annotations(gt_ds, sizes)
    id_map, unmatched = _match_images(gt_ds, pred_ds, sizes)
    dt_anns = _prediction_annotations(pred_ds, id_map, sizes)
    n_gt = sum(1 for a in gt_anns if not a["iscrowd"])
    result: dict[str, float | int] = {"n_images": len(images), "n_gt": n_gt, "n_pred": len(dt_anns),
                                      "n_unmatched": len(unmatched)}
    if not images or not dt_anns:  # undefined: -1 without objects (pycocotools' value), else 0
        result.update({k: (0.0 if images and n_gt else -1.0) for k in METRICS})
        return result
    for key, value in _coco_metrics(images, gt_anns, dt_anns, sorted(sizes, key=lambda i: (str(type(i)), i))).items():
        result[key] = max(value, 0.0) if n_gt else value
    return result


METRICS = ("AP", "AP50", "AP75", "AR100")


def _ground_truth_annotations(gt_ds: CocoDataset, sizes: dict) -> list[dict[str, Any]]:
    """Every decodable ground-truth mask as RLE, one category, crowd regions ignored."""
    out: list[dict[str, Any]] = []
    for ann in gt_ds.annotations:
        enc = _to_rle_ann(ann, *sizes[ann["image_id"]])
        if enc is None:
            continue
        crowd = int(bool(ann.get("iscrowd", 0)))
        out.append({**enc, "id": len(out) + 1, "image_id": ann["image_id"], "category_id": CATEGORY["id"],
                    "iscrowd": crowd, "ignore": crowd})
    return out


def _match_images(gt_ds: CocoDataset, pred_ds: CocoDataset, sizes: dict) -> tuple[dict, set]:
    """Prediction image id -> ground-truth image id (by id for result lists, by file name for datasets),
    and the prediction image ids without a match."""
    if pred_ds.is_result_list:
        return {i: i for i in sizes}, {a["image_id"] for a in pred_ds.annotations if a["image_id"] not in sizes}
    by_name = {img["file_name"]: img["id"] for img in gt_ds.images}
    id_map = {img["id"]: by_name[img["file_name"]] for img in pred_ds.images if img["file_name"] in by_name}
    return id_map, {img["id"] for img in pred_ds.images if img["file_name"] not in by_name}


def _prediction_annotations(pred_ds: CocoDataset, id_map: dict, sizes: dict) -> list[dict[str, Any]]:
    """Every decodable, non-empty predicted mask on a matched image, as RLE with its score."""
    out: list[dict[str, Any]] = []
    for ann in pred_ds.annotations:
        gt_id = id_map.get(ann["image_id"])
        if gt_id is None:
            continue
        enc = _to_rle_ann(ann, *sizes[gt_id])
        if enc is None or enc["area"] == 0:
            continue
        out.append({**enc, "id": len(out) + 1, "image_id": gt_id, "category_id": CATEGORY["id"],
                    "iscrowd": 0, "score": float(ann.get("score", 1.0))})
    return out


def _coco_metrics(images: list, gt_anns: list, dt_anns: list, image_ids: list) -> dict[str, float]:
    """pycocotools' segm AP, AP50, AP75 and AR@100 with categories ignored (its printout silenced)."""
    categories = [dict(CATEGORY)]
    coco_gt = _coco_object({"images": images, "annotations": gt_anns, "categories": categories})
    coco_dt = _coco_object({"images": images, "annotations": dt_anns, "categories": categories})
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        ev.params.useCats = 0
        ev.params.maxDets = [1, 10, 100]
        ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = np.asarray(ev.stats, dtype=np.float64)
    return {"AP": float(stats[0]), "AP50": float(stats[1]), "AP75": float(stats[2]), "AR100": float(stats[8])}


def format_metrics(metrics: dict) -> str:
    """AP, AP50, AP75 and AR100 as a small table, with the counts behind them."""
    keys = ("AP", "AP50", "AP75", "AR100")
    head = " | ".join(f"{k:>6}" for k in keys)
    vals = " | ".join(f"{metrics[k]:6.3f}" for k in keys)
    return f"{head}\n{vals}\n({metrics.get('n_images', '?')} images, {metrics.get('n_gt', '?')} objects, {metrics.get('n_pred', '?')} predictions)"
