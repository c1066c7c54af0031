"""Free Mask (defaults) against the three classical baselines, on the same synthetic images.

For each kind (photo: real textures; cartoon: flat colour objects; microscopy: nuclei) this
generates (or reuses) a labeled set, runs ``freesolo freemask`` with default settings (the real
command line, in a subprocess) and every baseline, evaluates all of them with ``freesolo eval``'s
engine (class-agnostic COCO mask AP) and prints one markdown table per kind.

    python benchmarks/quality_table.py --data /tmp/quality [--n 40] [--size 320] [--kinds photo,cartoon,microscopy]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baselines import ensure_dataset, run_baselines  # noqa: E402

from engine.eval.coco_eval import evaluate_segm  # noqa: E402


def run_freemask(image_dir: Path, out: Path, n: int, cache: Path) -> dict:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "engine.cli", "freemask", str(image_dir), "--out", str(out), "--overwrite",
           "--cache-dir", str(cache)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    seconds = (time.perf_counter() - t0) / n
    return {"method": "Free Mask (defaults)", "sec_per_image": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--kinds", default="photo,cartoon,microscopy")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    all_rows = {}
    for kind in args.kinds.split(","):
        folder = args.data / kind
        image_dir, gt = ensure_dataset(folder, args.n, args.size, kind, args.seed)
        rows = run_baselines(image_dir, gt, folder)
        fm = run_freemask(image_dir, folder / "pred_freemask.json", args.n, args.data / f"cache-{kind}")
        fm.update(evaluate_segm(gt, folder / "pred_freemask.json"))
        rows.append(fm)
        all_rows[kind] = rows
        print(f"\n{kind} ({args.n} images, {args.size}x{args.size}, seed {args.seed})\n")
        print("| method | AP | AP50 | AP75 | AR100 | s/image |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['method']} | {r['AP']:.3f} | {r['AP50']:.3f} | {r['AP75']:.3f} | {r['AR100']:.3f} | {r['sec_per_image']:.2f} |")
        sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps(all_rows, indent=1, default=str))


if __name__ == "__main__":
    main()
