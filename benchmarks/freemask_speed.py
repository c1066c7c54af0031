"""Free Mask speed on this machine, in one run (ratios are what to trust on a shared machine).

1. A 1024×1024 image: backbone pass vs post-processing from cached features (3 scales, top-20),
   medians over repeats; the first post-processing call (which also computes the guide
   statistics for refinement) is reported separately from repeated calls (a slider move).
2. A folder run (``run_freemask_batch``, no cache): the share of time spent in the backbone.

    python benchmarks/freemask_speed.py [--repeats 7] [--folder-n 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from engine.freemask.features import FeatureConfig, FeatureExtractor
from engine.freemask.postprocess import FreeMaskParams, postprocess
from engine.generators.pipeline import run_freemask_batch
from engine.data.synthetic import make_sample, write_synthetic_dataset


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--folder-n", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    image, _ = make_sample(42, (1024, 1024), kind="photo")
    config = FeatureConfig(input_scale=1.0)  # 1024² straight into the network
    ex = FeatureExtractor(config, device="cpu")
    ex.extract(image)  # warm-up
    backbone = timed(lambda: ex.extract(image), args.repeats)
    feats = ex.extract(image)
    params = FreeMaskParams(scales=(1.0, 0.5, 0.25), top_k=20)
    first = []
    for _ in range(3):
        feats.memo.clear()
        t0 = time.perf_counter()
        postprocess(feats, params, image)
        first.append(time.perf_counter() - t0)
    repeated = timed(lambda: postprocess(feats, params, image), args.repeats)
    no_refine = timed(lambda: postprocess(feats, FreeMaskParams(refine=False), image), args.repeats)
    mb, mf, mr, mn = (statistics.median(v) for v in (backbone, first, repeated, no_refine))
    print(f"1024x1024 image, input {feats.input_size}, key grid {feats.grid_size}, torch threads {args.threads}")
    print(f"  backbone pass (features)        median {mb * 1000:7.1f} ms")
    print(f"  post-processing, repeated call  median {mr * 1000:7.1f} ms   ratio to backbone {mr / mb:.3f}")
    print(f"  post-processing, first call     median {mf * 1000:7.1f} ms   ratio to backbone {mf / mb:.3f}")
    print(f"  post-processing, no refinement  median {mn * 1000:7.1f} ms   ratio to backbone {mn / mb:.3f}")

    with tempfile.TemporaryDirectory() as tmp:
        image_dir, _ = write_synthetic_dataset(Path(tmp) / "d", args.folder_n, seed=7, size=(512, 512), kind="photo")
        ex2 = FeatureExtractor(FeatureConfig(), device="cpu")
        t0 = time.perf_counter()
        report = run_freemask_batch([image_dir], extractor=ex2, use_cache=False)
        total = time.perf_counter() - t0
    share = report.backbone_seconds / total
    print(f"folder of {args.folder_n} images 512x512 (auto input scale): total {total:.2f}s, backbone "
          f"{report.backbone_seconds:.2f}s, post-processing {report.postprocess_seconds:.2f}s")
    print(f"  share of time in the backbone: {share:.1%}")


if __name__ == "__main__":
    main()
