"""Benchmark the classical baselines on synthetic data with exact ground truth.

Usage::

    python benchmarks/baselines.py --data DIR [--n 40] [--size 320] [--kind photo|cartoon|microscopy]
                                   [--seed 0] [--json OUT] [--overwrite]

``DIR`` gets ``images/``, ``gt.json`` (from ``engine.data.synthetic``) and one COCO result
list per baseline (``pred_<method>.json``). An existing data set is reused when its
recorded kind/seed/n/size match the arguments; otherwise the script stops rather
than evaluate against the wrong ground truth (``--overwrite`` regenerates it).
Prints a markdown table (AP, AP50, AP75, AR100, seconds per image).

Reuse from another benchmark script (this folder is not a package)::

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks folder
    from baselines import run_baselines, format_table
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from engine.io.atomic import atomic_write_json
from engine.generators.classical import BASELINES
from engine.io.coco import build_results, read_coco
from engine.eval.coco_eval import evaluate_segm
from engine.structures import ImageResult, InstanceMask
from engine.data.synthetic import KINDS, write_synthetic_dataset

METRICS = ("AP", "AP50", "AP75", "AR100")


def run_baselines(
    image_dir: str | Path,
    gt_json: str | Path,
    out_dir: str | Path,
    methods: Mapping[str, Callable[[np.ndarray], list[InstanceMask]]] | None = None,
) -> list[dict[str, Any]]:
    """Run each method on every GT image, write ``pred_<name>.json``, evaluate.

    Returns one row per method: ``method``, the COCO metrics, ``sec_per_image``
    (segmentation time only, image loading excluded), ``n_images``, ``n_pred`` and
    ``pred_json``. Prediction files are rewritten on every run.
    """
    image_dir, gt_json, out_dir = Path(image_dir), Path(gt_json), Path(out_dir)
    methods = dict(BASELINES if methods is None else methods)
    gt = read_coco(gt_json)
    image_ids = {img["file_name"]: int(img["id"]) for img in gt.images}
    images = [
        (img["file_name"], np.asarray(Image.open(image_dir / img["file_name"]).convert("RGB")))
        for img in gt.images
    ]
    rows: list[dict[str, Any]] = []
    for name, fn in methods.items():
        results: list[ImageResult] = []
        seconds = 0.0
        for file_name, image in images:
            t0 = time.perf_counter()
            instances = fn(image)
            seconds += time.perf_counter() - t0
            results.append(ImageResult(file_name, image.shape[0], image.shape[1], instances))
        pred_json = out_dir / f"pred_{name}.json"
        atomic_write_json(pred_json, build_results(results, image_ids), overwrite=True, backup=False)
        metrics = evaluate_segm(gt_json, pred_json)
        rows.append(
            {
                "method": name,
                **{k: float(metrics[k]) for k in METRICS},
                "sec_per_image": seconds / max(len(images), 1),
                "n_images": len(images),
                "n_pred": int(metrics["n_pred"]),
                "pred_json": str(pred_json),
            }
        )
    return rows


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table; metrics as percentages like the COCO papers report them."""
    lines = [
        "| method | AP | AP50 | AP75 | AR100 | s/image |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        metrics = " | ".join(f"{100 * r[k]:.1f}" for k in METRICS)
        lines.append(f"| {r['method']} | {metrics} | {r['sec_per_image']:.3f} |")
    return "\n".join(lines)


def ensure_dataset(
    data: Path, n: int, size: int, kind: str, seed: int, overwrite: bool = False
) -> tuple[Path, Path]:
    """Reuse ``data`` if it holds exactly the requested synthetic set, else build it."""
    image_dir, gt_json = data / "images", data / "gt.json"
    if gt_json.exists() and not overwrite:
        info = json.loads(gt_json.read_text()).get("info", {})
        wanted = {"kind": kind, "seed": seed, "n": n, "size": [size, size]}
        found = {k: info.get(k) for k in wanted}
        if found != wanted:
            raise SystemExit(
                f"{gt_json} holds a different data set ({found}, wanted {wanted}); "
                "use another --data folder or --overwrite"
            )
        return image_dir, gt_json
    return write_synthetic_dataset(data, n, seed=seed, size=(size, size), kind=kind, overwrite=overwrite)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="data set folder (created if missing)")
    p.add_argument("--n", type=int, default=40, help="number of images (default: %(default)s)")
    p.add_argument("--size", type=int, default=320, help="image side in px (default: %(default)s)")
    p.add_argument("--kind", choices=KINDS, default="photo")
    p.add_argument("--seed", type=int, default=0, help="data set seed (default: %(default)s)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    p.add_argument("--overwrite", action="store_true", help="regenerate an existing data set")
    args = p.parse_args(argv)

    image_dir, gt_json = ensure_dataset(args.data, args.n, args.size, args.kind, args.seed, args.overwrite)
    rows = run_baselines(image_dir, gt_json, args.data)
    print(f"{args.kind}, n={args.n}, {args.size}x{args.size}, seed={args.seed}")
    print(format_table(rows))
    if args.json is not None:
        atomic_write_json(args.json, rows, overwrite=True, backup=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
