"""How much do corrected images teach the student? AP on a real folder against the number of
images whose masks a user corrected (issue 11's curve).

For a folder with ground truth (a held-out half built by ``benchmarks/real_data.py``), for each
K in ``--corrected`` (default 0 1 3 10): the first K images by file name get their ground-truth
masks as trusted labels (what a user's corrections become), ``freesolo selftrain`` trains one
round on the whole folder with them, and the round's predictions are scored on the images that
were not corrected (the same images for every K: those after the largest K). Printed beside
them, on the same images: Free Mask's coarse masks (round 0, the teacher) and the classical
baselines. One markdown row per run, with minutes per round::

    python benchmarks/corrections_curve.py --images DIR/images --gt DIR/gt.json --out /tmp/curve \
        [--corrected 0 1 3 10] [--iters 1500] [--rounds 1] [--object-px PX] [--plot curve.png]
        [--trusted-weights 1 3 10]

``--trusted-weights`` runs every K > 0 once per weight (``selftrain --trusted-weight``: how much
more often a corrected image is sampled); the plot then shows the first weight's curve.

``--plot`` also draws the curve (AP50 against corrected images, beside the teacher and the best
classical baseline) as a PNG.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from engine.eval.coco_eval import evaluate_segm
from engine.io.coco import build_coco_dataset, load_image_results
from engine.selftrain.layout import RunLayout
from engine.solo.config import TrainConfig
from engine.structures import ImageResult
from real_quality import run_baselines  # this folder: the classical baselines, as that table runs them


def subset_gt(gt: dict, names: set[str]) -> dict:
    """The ground truth of ``names`` only (images and their annotations)."""
    images = [im for im in gt["images"] if im["file_name"] in names]
    ids = {im["id"] for im in images}
    return {**gt, "images": images, "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}


def score(gt_path: Path, results: list[ImageResult]) -> dict:
    m = evaluate_segm(gt_path, build_coco_dataset(results))
    return {k: round(float(m[k]), 3) for k in ("AP", "AP50", "AR100")}


def run_round(images: Path, trusted: Path | None, out: Path, args: argparse.Namespace, coarse: Path | None,
              weight: float | None = None) -> float:
    """One ``freesolo selftrain`` run (round 0 copied from ``coarse`` when given: Free Mask runs
    once per curve); its minutes per SOLO round (training and prediction, from the round folders)."""
    layout = RunLayout(out)
    if coarse is not None and not layout.coarse().exists():
        layout.coarse().parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(coarse, layout.coarse())
    cmd = [sys.executable, "-m", "engine.cli", "selftrain", str(images), "--out", str(out),
           "--rounds", str(args.rounds), "--iters", str(args.iters), "--device", "cpu", "--progress", "json",
           "--object-px", str(args.object_px)]
    if trusted is not None:
        cmd += ["--labels", str(trusted)] + (["--trusted-weight", str(weight)] if weight is not None else [])
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return sum(float(layout.seconds(k).read_text()) for k in range(1, args.rounds + 1)) / 60.0 / args.rounds


def row(name: str, metrics: dict, minutes: float | None = None) -> str:
    m = "" if minutes is None else f"{minutes:.1f}"
    return f"| {name} | {metrics['AP']:.3f} | {metrics['AP50']:.3f} | {metrics['AR100']:.3f} | {m} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--gt", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--corrected", type=int, nargs="+", default=[0, 1, 3, 10])
    ap.add_argument("--iters", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--object-px", type=float, default=TrainConfig().object_px,
                    help="the student's --object-px (default: the default's)")
    ap.add_argument("--plot", type=Path, default=None, help="also draw the curve into this PNG")
    ap.add_argument("--trusted-weights", type=float, nargs="+", default=[None],
                    help="one run per weight for every K > 0 (default: selftrain's --trusted-weight)")
    args = ap.parse_args()

    gt = json.loads(args.gt.read_text())
    names = sorted(im["file_name"] for im in gt["images"])
    if max(args.corrected) >= len(names):
        raise SystemExit(f"{args.gt}: {len(names)} images, too few to correct {max(args.corrected)} and score the rest")
    scored = set(names[max(args.corrected):])
    args.out.mkdir(parents=True, exist_ok=True)
    scored_gt = args.out / "scored_gt.json"
    scored_subset = subset_gt(gt, scored)
    scored_gt.write_text(json.dumps(scored_subset))

    print(f"scored on {len(scored)} images ({len(scored_subset['annotations'])} objects); "
          f"{args.rounds} round(s) of {args.iters} iterations")
    print("| method | AP | AP50 | AR100 | min/round |\n|---|---:|---:|---:|---:|", flush=True)
    teacher, coarse, curve = None, None, []
    for k, weight in [(k, w) for k in args.corrected for w in (args.trusted_weights if k else [None])]:
        trusted = None
        if k:
            trusted = args.out / f"trusted_{k}.json"
            trusted.write_text(json.dumps(subset_gt(gt, set(names[:k]))))
        run = args.out / (f"run_{k}" if weight is None else f"run_{k}_w{weight:g}")
        minutes = run_round(args.images, trusted, run, args, coarse, weight)
        layout = RunLayout(run)
        coarse = layout.coarse()
        if teacher is None:
            coarse_masks = load_image_results(layout.coarse())
            teacher = score(scored_gt, [coarse_masks[n] for n in scored if n in coarse_masks])
            print(row("Free Mask (teacher, defaults)", teacher), flush=True)
        preds = load_image_results(layout.predictions(args.rounds))
        metrics = score(scored_gt, [preds[n] for n in scored if n in preds])
        if weight in (None, args.trusted_weights[0]):
            curve.append((k, metrics))
        weighted = "" if weight is None else f", trusted weight {weight:g}"
        print(row(f"SOLO round {args.rounds}, {k} corrected{weighted}", metrics, minutes), flush=True)
    baselines = run_baselines("", args.images, scored_gt)
    for baseline in baselines:
        print(row(baseline["method"], baseline), flush=True)
    if args.plot is not None:
        best = max(baselines, key=lambda b: b["AP50"])
        print(f"plot: {plot_curve(curve, teacher['AP50'], (best['method'], best['AP50']), args.plot)}")


def plot_curve(curve: list[tuple[int, dict]], teacher: float, baseline: tuple[str, float], out: Path,
               size: tuple[int, int] = (560, 340)) -> Path:
    """AP50 against the number of corrected images (points joined), the teacher's and the best
    classical baseline's AP50 as horizontal lines; drawn with PIL."""
    from PIL import Image, ImageDraw

    w, h, pad = size[0], size[1], 44
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([pad, pad // 2, w - pad // 2, h - pad], outline=(160, 160, 160))
    ks = [k for k, _m in curve]
    span = max(max(ks) - min(ks), 1)

    def at(k: float, ap50: float) -> tuple[float, float]:
        return (pad + (w - 1.5 * pad) * (k - min(ks)) / span, h - pad - (h - 1.5 * pad) * ap50)

    lines = (("teacher", teacher, (214, 39, 40), max(ks), -150), (baseline[0], baseline[1], (120, 120, 120), min(ks), 4))
    for label, value, colour, k_text, dx in lines:  # labels at opposite ends: the two lines may nearly touch
        draw.line([at(min(ks), value), at(max(ks), value)], fill=colour, width=1)
        draw.text((at(k_text, value)[0] + dx, at(k_text, value)[1] - 12), f"{label} {value:.3f}", fill=colour)
    points = [at(k, m["AP50"]) for k, m in curve]
    draw.line(points, fill=(31, 119, 180), width=2)
    for (k, m), (x, y) in zip(curve, points):
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(31, 119, 180))
        draw.text((x - 4, h - pad + 4), str(k), fill=(80, 80, 80))
        draw.text((x + 5 if x < w - 70 else x - 40, y - 14), f"{m['AP50']:.3f}", fill=(31, 119, 180))
    draw.text((4, 4), "AP50 of the student (blue) against corrected images", fill=(40, 40, 40))
    draw.text((4, h - 16), "1.0 at the top, 0 at the frame's bottom", fill=(120, 120, 120))
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, format="PNG")
    return out


if __name__ == "__main__":
    main()
