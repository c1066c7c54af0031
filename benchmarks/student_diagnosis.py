"""Where does a student lose against its teacher? Masks files scored per group of images.

For each COCO masks file (Free Mask's ``round_0/coarse.json``, a round's ``predictions.json``, a
``train_masks.json``), on the images of the ground truth, per group of images (file names
starting with each ``--group`` prefix, and all of them): class-agnostic AP50 and AR100, the number
of masks, and how well the ground-truth objects are found at all — the share whose best-matching
mask reaches IoU 0.5, and IoU 0.3 (found, but the mask is off)::

    python benchmarks/student_diagnosis.py --gt DIR/gt.json --group N2DH-GOWT1 --group N2DL-HeLa \\
        RUN/round_0/coarse.json RUN/round_1/predictions.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from engine.eval.coco_eval import evaluate_segm
from engine.io.coco import build_coco_dataset, load_image_results
from engine.structures import ImageResult


def _gt_rles(gt: dict) -> dict[str, list]:
    """Ground-truth RLEs per file name (polygons and RLE both decoded by pycocotools)."""
    by_id = {im["id"]: im for im in gt["images"]}
    out: dict[str, list] = {im["file_name"]: [] for im in gt["images"]}
    for ann in gt["annotations"]:
        im = by_id[ann["image_id"]]
        seg = ann["segmentation"]
        if isinstance(seg, list):
            seg = mask_utils.merge(mask_utils.frPyObjects(seg, im["height"], im["width"]))
        elif isinstance(seg.get("counts"), list):
            seg = mask_utils.frPyObjects(seg, im["height"], im["width"])
        out[im["file_name"]].append(seg)
    return out


def best_ious(result: ImageResult, gt_rles: list) -> np.ndarray:
    """For each ground-truth object, the IoU of the mask that overlaps it most (0 without masks)."""
    if not gt_rles:
        return np.zeros(0)
    if not result.instances:
        return np.zeros(len(gt_rles))
    found = [mask_utils.encode(np.asfortranarray(m.mask.astype(np.uint8))) for m in result.instances]
    return np.asarray(mask_utils.iou(found, gt_rles, [0] * len(gt_rles))).max(0)


def score_group(gt: dict, names: list[str], results: dict[str, ImageResult], rles: dict[str, list]) -> dict:
    ids = {im["id"] for im in gt["images"] if im["file_name"] in names}
    subset = {**gt, "images": [im for im in gt["images"] if im["id"] in ids],
              "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}
    present = [results[n] for n in names if n in results]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gt.json"
        path.write_text(json.dumps(subset))
        metrics = evaluate_segm(path, build_coco_dataset(present))
    ious = np.concatenate([best_ious(results[n], rles[n]) if n in results else np.zeros(len(rles[n]))
                           for n in names] or [np.zeros(0)])
    return {"objects": len(subset["annotations"]), "masks": sum(len(r.instances) for r in present),
            "AP50": round(float(metrics["AP50"]), 3), "AR100": round(float(metrics["AR100"]), 3),
            "found@0.5": round(float((ious >= 0.5).mean()), 2) if ious.size else 0.0,
            "found@0.3": round(float((ious >= 0.3).mean()), 2) if ious.size else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("masks", type=Path, nargs="+", help="COCO masks files to diagnose")
    ap.add_argument("--gt", type=Path, required=True)
    ap.add_argument("--group", action="append", default=[], help="a file-name prefix (repeatable)")
    args = ap.parse_args()
    gt = json.loads(args.gt.read_text())
    rles = _gt_rles(gt)
    names = sorted(rles)
    groups = {"all": names} | {g: [n for n in names if n.startswith(g)] for g in args.group}
    print("| masks file | images | objects | masks | AP50 | AR100 | found at IoU 0.5 | at IoU 0.3 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for path in args.masks:
        results = load_image_results(path)
        for group, members in groups.items():
            r = score_group(gt, members, results, rles)
            print(f"| {path} | {group} | {r['objects']} | {r['masks']} | {r['AP50']:.3f} | {r['AR100']:.3f} | "
                  f"{r['found@0.5']:.2f} | {r['found@0.3']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
