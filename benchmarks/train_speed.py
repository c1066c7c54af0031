"""SOLO training speed on this machine, in one run: iterations/s of the cpu-small preset at 512²
(frozen backbone, cached features), and 2 gloo processes against 1 with the same global batch.

    python benchmarks/train_speed.py [--iters 40] [--size 512] [--batch 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from engine.io.coco import build_coco_dataset, write_coco
from engine.runtime.distributed import launch
from engine.solo.config import TrainConfig
from engine.solo.train import train
from engine.structures import ImageResult
from engine.data.synthetic import label_map_to_masks, make_sample, sample_seed, write_synthetic_dataset


def make_data(root: Path, n: int, size: int) -> tuple[Path, Path]:
    image_dir, _gt = write_synthetic_dataset(root, n, seed=5, size=(size, size), kind="photo")
    results = []
    for i in range(n):
        _img, labels = make_sample(sample_seed(5, i), (size, size), kind="photo")
        results.append(ImageResult(f"img_{i:04d}.png", size, size, label_map_to_masks(labels)))
    write_coco(root / "masks.json", build_coco_dataset(results))
    return image_dir, root / "masks.json"


def timed_run(image_dir: Path, masks: Path, out: Path, cfg: TrainConfig, nproc: int) -> float:
    """Seconds per iteration after a warm-up run that fills the feature bank."""
    t0 = time.perf_counter()
    if nproc == 1:
        train(image_dir, masks, out, cfg=cfg)
    else:
        launch(train, nproc, image_dir, masks, out, cfg=cfg)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--images", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        image_dir, masks = make_data(root / "data", args.images, args.size)
        short = TrainConfig(iters=5, batch=args.batch, size=args.size, checkpoint_every=10_000)
        long = TrainConfig(iters=5 + args.iters, batch=args.batch, size=args.size, checkpoint_every=10_000)
        rows = {}
        for nproc in (1, 2):
            # the difference between a long and a short run removes start-up and feature caching
            a = timed_run(image_dir, masks, root / f"a{nproc}", short, nproc)
            b = timed_run(image_dir, masks, root / f"b{nproc}", long, nproc)
            rows[nproc] = args.iters / max(b - a, 1e-9)
            print(f"{nproc} process(es): {rows[nproc]:.2f} iterations/s (global batch {args.batch}, {args.size}², cpu-small)",
                  flush=True)
        print(json.dumps({"iters_per_s_1": rows[1], "iters_per_s_2": rows[2], "speedup_2_vs_1": rows[2] / rows[1]}))


if __name__ == "__main__":
    main()
