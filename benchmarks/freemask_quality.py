"""Free Mask quality on the project's synthetic data, for a grid of settings.

Features are computed once per feature configuration and reused for every post-processing
variant (exactly what the panel does), so the sweep is cheap. Prints a markdown table of
class-agnostic AP / AP50 / AP75 / AR100 (pycocotools, useCats=0).

    python benchmarks/freemask_quality.py --data /tmp/fmq --n 40 --kind photo [--sweep quick|full]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from engine.coco import build_coco_dataset
from engine.evaluate import evaluate_segm
from engine.features import FeatureConfig, FeatureExtractor
from engine.freemask import FreeMaskParams, postprocess
from engine.images import list_images, load_image
from engine.structures import ImageResult
from engine.synthetic import write_synthetic_dataset


def dataset(folder: Path, n: int, size: int, kind: str, seed: int) -> tuple[Path, Path]:
    gt = folder / "gt.json"
    if gt.exists():
        return folder / "images", gt
    return write_synthetic_dataset(folder, n, seed=seed, size=(size, size), kind=kind)


def evaluate_variants(image_dir: Path, gt: Path, fconf: FeatureConfig, variants: dict[str, FreeMaskParams]) -> list[dict]:
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
        print(f"  {rows[-1]['features']:<34} {name:<28} AP {m['AP']:.3f} AP50 {m['AP50']:.3f} AR100 {m['AR100']:.3f}"
              f"  ({backbone_s:.2f}s + {post_s:.2f}s /img)", flush=True)
    return rows


def describe_config(c: FeatureConfig) -> str:
    scale = "auto" if c.input_scale is None else f"x{c.input_scale:g}"
    return f"{'+'.join(c.levels)} dim={c.dim} scale={scale}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--kind", default="photo")
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--sweep", choices=("default", "quick", "full", "levels", "tune"), default="default")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    image_dir, gt = dataset(args.data, args.n, args.size, args.kind, args.seed)
    base = FreeMaskParams()
    post = {"default": base}
    if args.sweep == "levels":
        post = {"default": base, "tau .6": replace(base, tau=0.6), "border<=2": replace(base, max_border_sides=2), "border<=2 tau .6": replace(base, max_border_sides=2, tau=0.6)}
    feats = [FeatureConfig()]
    if args.sweep in ("quick", "full"):
        post.update({
            "no refine": replace(base, refine=False),
            "tau 0.4": replace(base, tau=0.4),
            "tau 0.6": replace(base, tau=0.6),
            "split components": replace(base, split_components=True),
            "max area 0.5": replace(base, max_area_frac=0.5),
            "border<=2": replace(base, max_border_sides=2),
            "border<=1": replace(base, max_border_sides=1),
            "border<=2 tau .6": replace(base, max_border_sides=2, tau=0.6),
            "border<=2 tau .6 split": replace(base, max_border_sides=2, tau=0.6, split_components=True),
            "official filters": replace(base, min_score=0.7, center_y_min=0.2, max_box_width=0.95),
        })
        feats += [replace(FeatureConfig(), input_scale=1.0), replace(FeatureConfig(), dim=None)]
    if args.sweep == "tune":
        feats = [replace(FeatureConfig(), dim=64)]
        if args.kind == "microscopy":
            feats += [replace(FeatureConfig(), input_scale=1.5), replace(FeatureConfig(), input_scale=2.0)]
        b = replace(base, tau=0.6, max_border_sides=2, split_components=True)
        post = {"tau .6 border<=2 split": b, "tau .5": replace(b, tau=0.5), "tau .55": replace(b, tau=0.55),
                "tau .65": replace(b, tau=0.65), "tau .7": replace(b, tau=0.7), "no split": replace(b, split_components=False),
                "border<=4": replace(b, max_border_sides=4), "top-k 100": replace(b, top_k=100),
                "no refine": replace(b, refine=False)}
    if args.sweep == "levels":
        post = {"default": base, "tau .6": replace(base, tau=0.6), "border<=2": replace(base, max_border_sides=2), "border<=2 tau .6": replace(base, max_border_sides=2, tau=0.6)}
    feats = [FeatureConfig()]
    if args.sweep in ("quick", "full"):
        post.update({
            "no refine": replace(base, refine=False),
            "tau 0.4": replace(base, tau=0.4),
            "tau 0.6": replace(base, tau=0.6),
            "split components": replace(base, split_components=True),
            "max area 0.5": replace(base, max_area_frac=0.5),
            "border<=2": replace(base, max_border_sides=2),
            "border<=1": replace(base, max_border_sides=1),
            "border<=2 tau .6": replace(base, max_border_sides=2, tau=0.6),
            "border<=2 tau .6 split": replace(base, max_border_sides=2, tau=0.6, split_components=True),
            "official filters": replace(base, min_score=0.7, center_y_min=0.2, max_box_width=0.95),
        })
        feats += [replace(FeatureConfig(), input_scale=1.0), replace(FeatureConfig(), dim=None)]
    if args.sweep == "tune":
        feats = [replace(FeatureConfig(), dim=64)] + ([replace(FeatureConfig(), dim=None)] if args.kind != "microscopy" else [])
        b = replace(base, tau=0.6, max_border_sides=2)
        post = {"tau .6 border<=2": b, "tau .55": replace(b, tau=0.55), "tau .65": replace(b, tau=0.65),
                "tau .7": replace(b, tau=0.7), "tau .65 r16": replace(b, tau=0.65, refine_radius=16),
                "border<=4": replace(b, max_border_sides=4), "split": replace(b, split_components=True),
                "radius 6": replace(b, refine_radius=6), "radius 20": replace(b, refine_radius=20),
                "no refine": replace(b, refine=False), "max area .5": replace(b, max_area_frac=0.5)}
    if args.sweep == "levels":
        feats = [replace(FeatureConfig(), levels=lv, dim=d) for lv in (("s8", "s16", "s32"), ("s16", "s32"), ("s32", "head"), ("s8", "s16", "s32", "head"), ("s16",)) for d in (None, 64)]
    if args.sweep == "full":
        feats += [replace(FeatureConfig(), levels=("s32",)), replace(FeatureConfig(), levels=("head",)),
                  replace(FeatureConfig(), levels=("s16", "s32")), replace(FeatureConfig(), input_scale=2.0)]
        post.update({"radius 6": replace(base, refine_radius=6), "radius 20": replace(base, refine_radius=20),
                     "scales 1.0": replace(base, scales=(1.0,)), "scales 1,.5,.25,.125": replace(base, scales=(1.0, 0.5, 0.25, 0.125))})
    rows = []
    for fc in feats:
        rows += evaluate_variants(image_dir, gt, fc, post if (fc == feats[0] or args.sweep in ("levels", "tune") and fc == feats[0]) else {k: post[k] for k in list(post)[:1]})
    print("\n| features | post-processing | AP | AP50 | AP75 | AR100 | backbone s/img | post s/img |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['features']} | {r['post']} | {r['AP']:.3f} | {r['AP50']:.3f} | {r['AP75']:.3f} | {r['AR100']:.3f} "
              f"| {r['backbone_s']:.2f} | {r['post_s']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    sys.exit(main())
