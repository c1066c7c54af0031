"""Free Mask quality on the project's synthetic data, for one or several settings.

Features are computed once per feature configuration and reused for every post-processing
variant (exactly what the panel does), so sweeps are cheap. Prints a markdown table of
class-agnostic AP / AP50 / AP75 / AR100 (pycocotools, useCats=0).

    python benchmarks/freemask_quality.py --data /tmp/fmq --n 40 --kind photo [--sweep default|tune|grid|levels]

``tune`` changes one knob at a time around the defaults; ``levels`` compares backbone levels.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from engine.io.coco import build_coco_dataset
from engine.eval.coco_eval import evaluate_segm
from engine.freemask.features import FeatureConfig, FeatureExtractor
from engine.freemask.postprocess import FreeMaskParams, postprocess
from engine.io.images import list_images, load_image
from engine.structures import ImageResult
from engine.data.synthetic import write_synthetic_dataset


def dataset(folder: Path, n: int, size: int, kind: str, seed: int) -> tuple[Path, Path]:
    gt = folder / "gt.json"
    if gt.exists():
        return folder / "images", gt
    return write_synthetic_dataset(folder, n, seed=seed, size=(size, size), kind=kind)


def describe_config(c: FeatureConfig) -> str:
    scale = "auto" if c.input_scale is None else f"x{c.input_scale:g}"
    return f"{'+'.join(c.levels)} dim={c.dim} scale={scale}"


def evaluate_variants(image_dir: Path, gt: Path, fconf: FeatureConfig, variants: dict[str, FreeMaskParams]) -> list[dict]:
    """Extract features once, then evaluate every post-processing variant on them."""
    ex = FeatureExtractor(fconf, device="cpu")
    paths, _ = list_images([image_dir])
    cached = []
    t0 = time.perf_counter()
    for p in paths:
        img = load_image(p)
        cached.append((p, img, ex.extract(img)))
    backbone_s = (time.perf_counter() - t0) / len(paths)
    rows = []
    for name, params in variants.items():
        t1 = time.perf_counter()
        results = [
            ImageResult(p.name, img.shape[0], img.shape[1], postprocess(f, params, img).instances) for p, img, f in cached
        ]
        post_s = (time.perf_counter() - t1) / len(paths)
        m = evaluate_segm(gt, build_coco_dataset(results))
        rows.append({"features": describe_config(fconf), "post": name, "AP": m["AP"], "AP50": m["AP50"],
                     "AP75": m["AP75"], "AR100": m["AR100"], "backbone_s": backbone_s, "post_s": post_s})
        print(f"  {rows[-1]['features']:<34} {name:<20} AP {m['AP']:.3f} AP50 {m['AP50']:.3f} AR100 {m['AR100']:.3f}"
              f"  ({backbone_s:.2f}s + {post_s:.2f}s /img)", flush=True)
    return rows


def sweep(kind: str, name: str) -> tuple[list[FeatureConfig], dict[str, FreeMaskParams]]:
    base = FreeMaskParams()
    post = {"default": base}
    feats = [FeatureConfig()]
    if name == "tune":
        post.update({
            "tau 0.5": replace(base, tau=0.5), "tau 0.6": replace(base, tau=0.6),
            "tau 0.7": replace(base, tau=0.7), "tau 0.75": replace(base, tau=0.75),
            "no split": replace(base, split_components=False), "no border filter": replace(base, max_border_sides=4),
            "top-k 100": replace(base, top_k=100), "no refinement": replace(base, refine=False),
            "refine radius 6": replace(base, refine_radius=6), "refine radius 18": replace(base, refine_radius=18),
        })
        feats.append(replace(FeatureConfig(), dim=None))
        if kind == "microscopy":
            feats += [replace(FeatureConfig(), input_scale=1.0), replace(FeatureConfig(), input_scale=2.0)]
    elif name == "grid":
        post["query grid sized to image"] = replace(base, query_stride=None)
    elif name == "levels":
        feats = [replace(FeatureConfig(), levels=lv) for lv in (
            ("s8", "s16", "s32"), ("s16", "s32"), ("s32", "head"), ("s8", "s16", "s32", "head"), ("s16",), ("head",))]
    return feats, post


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--kind", default="photo")
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--sweep", choices=("default", "tune", "grid", "levels"), default="default")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    image_dir, gt = dataset(args.data, args.n, args.size, args.kind, args.seed)
    feats, post = sweep(args.kind, args.sweep)
    rows = []
    for i, fc in enumerate(feats):
        rows += evaluate_variants(image_dir, gt, fc, post if i == 0 else {"default": post["default"]})
    print("\n| features | post-processing | AP | AP50 | AP75 | AR100 | backbone s/img | post s/img |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['features']} | {r['post']} | {r['AP']:.3f} | {r['AP50']:.3f} | {r['AP75']:.3f} | {r['AR100']:.3f} "
              f"| {r['backbone_s']:.2f} | {r['post_s']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    sys.exit(main())
