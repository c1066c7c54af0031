"""FreeSOLO's central claim, measured here: does the SOLO student beat its own coarse masks?

The paper's protocol on the project's synthetic data: ``freesolo selftrain`` (the real command,
in a subprocess) trains on an unlabeled split, and every round is evaluated on a disjoint
labeled split (class-agnostic COCO mask AP, pycocotools). Prints one markdown row per round
(Free Mask = round 0, SOLO = round 1, self-training = round 2 …) with its wall time, plus the
change of each round's AP50 over Free Mask and over the round before, each with a noise
estimate: the standard error of that change over disjoint folds of the evaluation images (a
small gain inside it is noise).

    python benchmarks/solo_quality.py --data /tmp/solo_q [--train-n 100] [--eval-n 80] [--size 320]
        [--kind photo] [--rounds 2] [--eval-seed 2026] [--folds 4] [-- EXTRA SELFTRAIN OPTIONS]

Extra options after ``--`` go to ``freesolo selftrain`` unchanged (e.g. ``--iters 1500``), which
is how the effect of one lever is measured: same data, same evaluation, one option changed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from engine.eval.coco_eval import evaluate_segm
from engine.data.synthetic import write_synthetic_dataset

TRAIN_SEED = 77  # the unlabeled split
EVAL_SEED = 2026  # the labeled split (the held-out seed of the Free Mask quality table)


def split(folder: Path, n: int, seed: int, size: int, kind: str) -> tuple[Path, Path]:
    if (folder / "gt.json").exists():
        return folder / "images", folder / "gt.json"
    return write_synthetic_dataset(folder, n, seed=seed, size=(size, size), kind=kind)


def subset(dataset: dict, names: set[str]) -> dict:
    """The part of a COCO dataset whose images are in ``names``."""
    images = [im for im in dataset["images"] if im["file_name"] in names]
    ids = {im["id"] for im in images}
    return {**dataset, "images": images, "annotations": [a for a in dataset["annotations"] if a["image_id"] in ids]}


def fold_ap50(gt: dict, pred: dict, folds: int) -> list[float]:
    names = sorted(im["file_name"] for im in gt["images"])
    parts = [set(names[i::folds]) for i in range(folds)]
    return [evaluate_segm(subset(gt, p), subset(pred, p))["AP50"] for p in parts]


def paired_change(folds: list[float], reference: list[float]) -> str:
    """Mean change over the folds ± its standard error (paired: same images on both sides)."""
    d = [a - b for a, b in zip(folds, reference)]
    se = statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else float("nan")
    return f"{statistics.mean(d):+.3f} ± {se:.3f}"


def main() -> int:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--train-n", type=int, default=100)
    ap.add_argument("--eval-n", type=int, default=80)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--kind", default="photo")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--eval-seed", type=int, default=EVAL_SEED, help="seed of the labeled split (default: %(default)s)")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--run", type=Path, help="run folder (default: DATA/run-<timestamp>)")
    args = ap.parse_args(argv)

    train_images, _ = split(args.data / f"train-{args.kind}", args.train_n, TRAIN_SEED, args.size, args.kind)
    eval_images, gt_path = split(args.data / f"eval-{args.kind}-{args.eval_seed}-{args.eval_n}", args.eval_n,
                                 args.eval_seed, args.size, args.kind)
    run = args.run or args.data / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = [sys.executable, "-m", "engine.cli", "selftrain", str(train_images), "--out", str(run),
           "--rounds", str(args.rounds), "--eval-images", str(eval_images), "--gt", str(gt_path), *extra]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    total = time.perf_counter() - t0

    gt = json.loads(gt_path.read_text())
    rows = json.loads((run / "summary.json").read_text())
    base = prev = None
    print(f"\ntrain: {args.train_n} unlabeled {args.kind} images, eval: {args.eval_n} labeled (disjoint seeds), "
          f"{args.size}², whole run {total / 60:.1f} min; options: {' '.join(extra) or 'defaults'}\n")
    print("| round | model | AP | AP50 | AR100 | ΔAP50 vs Free Mask | ΔAP50 vs previous round | minutes |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        pred = json.loads((run / f"round_{r['round']}" / "eval_predictions.json").read_text())
        folds = fold_ap50(gt, pred, args.folds)
        delta = "—" if base is None else paired_change(folds, base)
        step = "—" if prev is None else paired_change(folds, prev)
        base = folds if base is None else base
        prev = folds
        m = r["metrics"]
        print(f"| {r['round']} | {r['what']} | {m.get('AP', 0):.3f} | {m.get('AP50', 0):.3f} | {m.get('AR100', 0):.3f} "
              f"| {delta} | {step} | {r['seconds'] / 60:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
