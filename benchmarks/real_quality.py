"""Coarse-mask quality on real annotated images: generators x backbones beside the classical baselines.

Each set is a folder of images with a COCO ground-truth file (per-object masks; file names
relative to the folder)::

    python benchmarks/real_quality.py --set nuclei=DIR/images:DIR/gt.json [--set photos=...] \\
        [--generators freemask freemask,maskcut freemask,classical] [--backbone efficientnet-lite0 ...] \\
        [--tile 640] [--out benchmarks/out/real] [--json table.json]

For every set, every generator combination and every backbone it runs ``run_freemask_batch``
(features cached under ``--out``), scores the masks with class-agnostic COCO mask AP and prints
one markdown row: AP, AP50, AR100 and seconds per image; then the classical baselines alone
(Otsu + components, Otsu + watershed, local-threshold watershed,
Felzenszwalb) for the same images. Report held-out sets
only: tune on a separate split.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from engine.eval.coco_eval import evaluate_segm
from engine.freemask.features import FeatureConfig
from engine.freemask.postprocess import FreeMaskParams
from engine.freemask.stain import resolve_stain, stain_view
from engine.generators.classical import BASELINES
from engine.generators.merge import GeneratorConfig, parse_classical, parse_generators
from engine.generators.pipeline import run_freemask_batch
from engine.io.coco import build_coco_dataset, read_coco
from engine.io.images import load_image
from engine.structures import ImageResult



def _parse_set(text: str) -> tuple[str, Path, Path]:
    name, _, paths = text.partition("=")
    images, _, gt = paths.rpartition(":")
    if not name or not images or not gt:
        raise argparse.ArgumentTypeError(f"expected NAME=IMAGES:GT.json, got {text!r}")
    return name, Path(images), Path(gt)


def _score(gt: Path, results: list[ImageResult]) -> dict:
    m = evaluate_segm(gt, build_coco_dataset(results))
    return {k: round(float(m[k]), 4) for k in ("AP", "AP50", "AR100")}


def _params(text: str) -> dict:
    """'tau=0.5,query_stride=16' -> FreeMaskParams overrides (numbers parsed; empty: defaults)."""
    out = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        out[key.strip()] = None if value == "none" else (int(value) if value.isdigit() else float(value))
    return out


def run_generators(name: str, images: Path, gt: Path, generators: tuple[str, ...], backbone: str,
                   tile: int | None, cache: Path, params: str = "", input_scale: float | None = None,
                   stain: str = "auto", merge_score: str = "features",
                   classical: tuple[str, ...] | None = None, auto_classical: bool = True,
                   freemask_weight: float = 0.5) -> dict:
    t0 = time.perf_counter()
    fconf = FeatureConfig(backbone=backbone, input_scale=input_scale, stain=stain)
    report = run_freemask_batch([images], feature_config=fconf, device="cpu",
                                params=FreeMaskParams(**_params(params)), cache_dir=cache,
                                generators=GeneratorConfig(generators=generators, score=merge_score, classical=classical,
                                                           classical_on_microscopy=auto_classical,
                                                           freemask_weight=freemask_weight),
                                tile=tile)
    seconds = (time.perf_counter() - t0) / max(1, len(report.results))
    extras = [params] if params else []
    extras += [f"input scale {input_scale}"] if input_scale else []
    extras += [f"tile {tile}"] if tile else []
    extras += [f"stain {stain}"] if stain != "auto" else []
    extras += [f"merge score {merge_score}"] if merge_score != "both" else []
    extras += [f"classical {'+'.join(classical)}"] if classical is not None else []
    extras += [f"Free Mask weight {freemask_weight:g}"] if freemask_weight != 0.5 else []
    extras += [] if auto_classical else ["no classical on microscopy"]
    method = "+".join(generators) + (f" ({'; '.join(extras)})" if extras else "")
    return {"set": name, "method": method, "backbone": backbone, **_score(gt, report.results),
            "sec_per_image": round(seconds, 2), "failures": len(report.failures)}


def run_baselines(name: str, images: Path, gt: Path) -> list[dict]:
    """The classical baselines on the images; on stained (H&E) images also on their hematoxylin
    channel, as a classical user would run them (colour deconvolution, then threshold)."""
    rows = []
    listed = read_coco(gt).images
    loaded = [(im["file_name"], load_image(images / im["file_name"])) for im in listed]
    views = {"": loaded}
    if loaded and all(resolve_stain(img, "auto") == "he" for _f, img in loaded):
        views[" (hematoxylin)"] = [(f, stain_view(img, "he")) for f, img in loaded]
    for suffix, view in views.items():
        for method, fn in BASELINES.items():
            t0 = time.perf_counter()
            results = [ImageResult(f, img.shape[0], img.shape[1], fn(img)) for f, img in view]
            seconds = (time.perf_counter() - t0) / max(1, len(view))
            rows.append({"set": name, "method": method + suffix, "backbone": "-", **_score(gt, results),
                         "sec_per_image": round(seconds, 2), "failures": 0})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| set | method | backbone | AP | AP50 | AR100 | s/image |", "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['set']} | {r['method']} | {r['backbone']} | {r['AP']:.3f} | {r['AP50']:.3f} | "
                     f"{r['AR100']:.3f} | {r['sec_per_image']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", dest="sets", type=_parse_set, action="append", required=True)
    ap.add_argument("--generators", nargs="+", default=["freemask", "freemask,maskcut", "freemask,classical"])
    ap.add_argument("--backbone", nargs="+", default=["efficientnet-lite0"])
    ap.add_argument("--tile", type=int, default=None)
    ap.add_argument("--input-scale", type=float, default=None, help="fixed input scale (default: automatic)")
    ap.add_argument("--stain", default="auto", choices=("auto", "he", "none"), help="see freesolo freemask --stain")
    ap.add_argument("--params", nargs="+", default=[""], metavar="K=V,...",
                    help="Free Mask parameter variants, e.g. 'tau=0.5,query_stride=16' (default: the defaults)")
    ap.add_argument("--auto-classical", nargs="+", default=["on"], choices=("on", "off"),
                    help="classical proposals join on microscopy (on: the default) or not (off: Free Mask alone)")
    ap.add_argument("--merge-score", nargs="+", default=["both"], choices=("features", "image", "both"),
                    help="how merged generators' masks are ranked (engine/generators/merge.py)")
    ap.add_argument("--classical", default="auto",
                    help="the classical generator's methods, comma-separated (auto: by image kind)")
    ap.add_argument("--freemask-weight", type=float, nargs="+", default=[0.5],
                    help="Free Mask's merge-score weight beside classical proposals (engine/generators/merge.py)")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/real"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    classical = parse_classical(args.classical)
    rows = []
    for name, images, gt in args.sets:
        for backbone in args.backbone:
            for gens in args.generators:
                for params, score, auto, weight in itertools.product(args.params, args.merge_score,
                                                                     args.auto_classical, args.freemask_weight):
                    rows.append(run_generators(name, images, gt, parse_generators(gens), backbone, args.tile,
                                               args.out / "cache", params, args.input_scale, args.stain, score,
                                               classical, auto == "on", weight))
                    print(format_table(rows[-1:]).splitlines()[-1], flush=True)
        if not args.no_baselines:
            rows += run_baselines(name, images, gt)
    print(format_table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
