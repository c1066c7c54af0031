"""``freesolo demo``: sample data in, COCO + label images + overlays out, headless.

It is what the README's main command runs on a machine without a display, and it proves the
whole pipeline end to end on images with known ground truth.
"""

from __future__ import annotations

import time
from pathlib import Path

from engine.eval.coco_eval import evaluate_segm, format_metrics
from engine.freemask.features import FeatureConfig
from engine.freemask.postprocess import FreeMaskParams
from engine.generators.pipeline import run_freemask_batch
from engine.runtime.progress import ProgressBar
from engine.data.synthetic import write_synthetic_dataset
from engine.io.export import write_outputs

DEMO_KINDS = ("photo", "microscopy")


def new_run_folder(parent: Path) -> Path:
    """A fresh sub-folder per run, so a demo never overwrites an earlier one."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = parent / f"run-{stamp}"
    k = 1
    while folder.exists():
        k += 1
        folder = parent / f"run-{stamp}-{k}"
    folder.mkdir(parents=True)
    return folder


def run_demo(parent: Path, *, n: int = 6, size: int = 320, device: str = "auto", cache_dir: Path | None = None) -> Path:

    run = new_run_folder(Path(parent))
    print(f"demo: writing everything under {run.resolve()}")
    for i, kind in enumerate(DEMO_KINDS):
        image_dir, gt = write_synthetic_dataset(run / kind / "data", n, seed=100 + i, size=(size, size), kind=kind)
        report = run_freemask_batch(
            [image_dir], feature_config=FeatureConfig(), params=FreeMaskParams(), device=device,
            cache_dir=cache_dir or run / "feature-cache", progress=ProgressBar(f"freemask {kind}"),
        )
        out = run / kind
        write_outputs(report, out / "freemask.json", "rle", out / "labels", out / "overlays", overwrite=False)
        metrics = evaluate_segm(gt, out / "freemask.json")
        print(f"\n{kind}: {len(report.results)} images, Free Mask against ground truth:")
        print(format_metrics(metrics))
        print(f"  images      {image_dir.resolve()}")
        print(f"  COCO masks  {(out / 'freemask.json').resolve()}")
        print(f"  labels      {(out / 'labels').resolve()}")
        print(f"  overlays    {(out / 'overlays').resolve()}\n")
    print(f"demo: done; outputs are in {run.resolve()}")
    return run
