"""Peak memory of ``freesolo freemask`` on very large images and on long folders, measured in one run.

Each run is a separate ``python -m engine.cli freemask`` process; its peak resident set size is
the kernel's figure for that child (``os.wait4``), its time the wall clock around it.

1. Large images (``--large 12000x9000 20000x15000``): a generated photo (``make_sample``) tiled to
   the size, written as an uncompressed TIFF; one run each (no feature cache, default settings).
2. A folder (``--folder 2000 --checkpoints 100 1000 2000 --side 96``): N small generated photos
   in one run; the peak RSS so far (``VmHWM``) and the current RSS are read from /proc when the
   feature cache (one file per image, written when the image's backbone pass ends) first holds
   each checkpoint count, so the figures show whether memory grows with the number of images.
   The output COCO file is loaded with pycocotools at the end and its masks counted.
3. Stages (``--stages 20000x15000``): the same tiled photo processed step by step in this
   process (load, input scale, backbone, Free Mask, COCO), with the resident set after each step
   and its peak during the step (sampled every 20 ms), and the largest mask crops: where the
   peak of a large image comes from.
4. RLE (``--rle 20000x15000``): the COCO RLE of one image-sized mask (a filled image with a margin
   and a hole) in a child process: its peak resident set over the mask itself, and the time.

    python benchmarks/scale_memory.py --large 12000x9000 --folder 2000 --side 96
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # --stages imports this checkout's engine, as the child processes do

from engine.data.synthetic import make_sample, sample_seed  # noqa: E402


def tiled_photo(height: int, width: int, tile: tuple[int, int] = (960, 1280), seed: int = 7) -> np.ndarray:
    """A generated photo repeated to ``height`` × ``width`` (uint8 RGB)."""
    image, _ = make_sample(seed, tile, kind="photo")
    reps = (-(-height // tile[0]), -(-width // tile[1]), 1)
    return np.ascontiguousarray(np.tile(image, reps)[:height, :width])


def _status(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS of a running process, in kB (empty once it has ended)."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0])
    return out


def run_freemask(args: list[str], cache: Path, on_poll=None) -> tuple[int, float, float, str]:
    """(exit code, peak RSS in GB, seconds, stderr tail) of one ``freesolo freemask`` process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), FREESOLO_CACHE=str(cache))
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "freemask", *args], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if on_poll is not None:
                on_poll(proc.pid, time.perf_counter() - t0)
            time.sleep(0.25)
        seconds = time.perf_counter() - t0
        err.seek(0)
        tail = err.read().decode(errors="replace")[-600:]
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024**2, seconds, tail


def large_images(sizes: list[tuple[int, int]], work: Path, extra: list[str]) -> None:
    for h, w in sizes:
        path = work / f"large_{h}x{w}.tif"
        t0 = time.perf_counter()
        tifffile.imwrite(path, tiled_photo(h, w))
        made = time.perf_counter() - t0
        out = work / f"large_{h}x{w}.json"
        code, peak, seconds, tail = run_freemask([str(path), "--out", str(out), "--no-cache", *extra], work / "cache")
        masks = _count_masks(out) if code == 0 else "-"
        print(f"{h}x{w} ({h * w / 1e6:.0f} Mpx, image {h * w * 3 / 1024**3:.2f} GB as uint8 RGB): "
              f"exit {code}, peak RSS {peak:.2f} GB, {seconds:.0f} s, {masks} masks (image written in {made:.0f} s)",
              flush=True)
        if code != 0:
            print(tail, flush=True)
        path.unlink()


def _count_masks(path: Path) -> int:
    """Load a COCO file with pycocotools (as a user's training code would) and count its masks."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
    anns = coco.loadAnns(coco.getAnnIds())
    if anns:
        coco.annToMask(anns[0])  # the first mask decodes
    return len(anns)


def folder(n: int, side: int, checkpoints: list[int], work: Path, extra: list[str]) -> None:
    images = work / "folder"
    images.mkdir()
    t0 = time.perf_counter()
    for i in range(n):
        image, _ = make_sample(sample_seed(3, i), (side, side), kind="photo")
        Image.fromarray(image).save(images / f"img_{i:05d}.png")
    print(f"folder: {n} generated photos of {side}x{side} px written in {time.perf_counter() - t0:.0f} s", flush=True)
    cache = work / "fcache"
    features = cache / "features"
    pending = sorted(checkpoints)
    seen: list[tuple[int, float, dict[str, int]]] = []

    def poll(pid: int, elapsed: float) -> None:
        if not pending or not features.is_dir():
            return
        done = sum(1 for _ in features.iterdir())
        while pending and done >= pending[0]:
            seen.append((pending.pop(0), elapsed, _status(pid)))

    out = work / "folder.json"
    code, peak, seconds, tail = run_freemask([str(images), "--out", str(out), *extra], cache, poll)
    for count, elapsed, st in seen:
        print(f"  after {count:5d} images ({elapsed:6.0f} s): peak RSS so far {st.get('VmHWM', 0) / 1024**2:.3f} GB, "
              f"current {st.get('VmRSS', 0) / 1024**2:.3f} GB", flush=True)
    masks = _count_masks(out) if code == 0 else "-"
    print(f"folder of {n}: exit {code}, peak RSS of the whole run (COCO file written) {peak:.3f} GB, {seconds:.0f} s, "
          f"{masks} masks loaded by pycocotools", flush=True)
    if code != 0:
        print(tail, flush=True)


def stages(height: int, width: int, work: Path) -> None:
    import threading

    from engine.freemask.features import FeatureConfig, FeatureExtractor
    from engine.freemask.postprocess import FreeMaskParams
    from engine.generators.merge import generate
    from engine.generators.tiling import whole_image_choice
    from engine.io.coco import build_coco_dataset
    from engine.io.stacks import planes_of
    from engine.structures import ImageResult

    path = work / "stages.tif"
    tifffile.imwrite(path, tiled_photo(height, width))
    peak = [0]

    def watch() -> None:
        while True:
            peak[0] = max(peak[0], _status(os.getpid()).get("VmRSS", 0))
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()
    print(f"stages of {height}x{width} (GB: resident after the step, peak during it)", flush=True)
    state: dict = {}
    steps = [("load", lambda: state.update(image=next(iter(planes_of(path, None)))[1])),
             ("extractor", lambda: state.update(ex=FeatureExtractor(FeatureConfig(), device="cpu"))),
             ("input scale", lambda: state.update(choice=whole_image_choice(state["image"], state["ex"].config))),
             # the object-size estimate is passed on, as engine/generators/pipeline.py does
             ("backbone", lambda: state.update(feats=state["ex"].extract(state["image"], object_size=state["choice"][3]))),
             ("Free Mask", lambda: state.update(res=generate(state["feats"], FreeMaskParams(), state["image"], None))),
             ("COCO", lambda: build_coco_dataset([ImageResult("a.tif", height, width, state["res"].instances)]))]
    for name, step in steps:
        time.sleep(0.05)
        peak[0] = 0
        step()
        time.sleep(0.05)
        print(f"  {name:12s} resident {_status(os.getpid())['VmRSS'] / 1024**2:.2f}, peak {peak[0] / 1024**2:.2f}", flush=True)
    crops = sorted((m.crop.nbytes for m in state["res"].instances), reverse=True)
    print(f"  largest mask crops (MB): {[round(c / 1e6) for c in crops[:5]]}, all {sum(crops) / 1e9:.2f} GB", flush=True)


_RLE_CHILD = """
import resource, sys, time
import numpy as np
from engine.io.masks import crop_to_rle
h, w = int(sys.argv[1]), int(sys.argv[2])
m = np.zeros((h, w), bool)
m[h // 200: -h // 200, w // 300: -w // 300] = True
m[h // 4: h // 4 + h // 20, w // 5: w // 5 * 3] = False
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
rle = crop_to_rle(m, (0, h, 0, w), (h, w))
print(f"{(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1e6:.3f} {time.perf_counter() - t0:.2f}")
"""


def rle_encoding(height: int, width: int) -> None:
    """Peak memory over an image-sized mask while it is RLE-encoded (child process: a clean peak)."""
    out = subprocess.run([sys.executable, "-c", _RLE_CHILD, str(height), str(width)], capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout.split()
    print(f"RLE of a {height}x{width} mask ({height * width / 1e9:.2f} GB as bool): "
          f"peak {float(out[0]):.3f} GB over the mask, {float(out[1]):.2f} s", flush=True)


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--large", nargs="*", type=_size, default=[], help="image sizes HxW, e.g. 12000x9000")
    ap.add_argument("--stages", type=_size, default=None, help="profile one image HxW step by step in this process")
    ap.add_argument("--rle", type=_size, default=None, help="RLE-encode one image-sized mask HxW")
    ap.add_argument("--folder", type=int, default=0, help="images in the folder run (0: none)")
    ap.add_argument("--checkpoints", nargs="*", type=int, default=[100, 1000, 2000])
    ap.add_argument("--side", type=int, default=96, help="side of the folder's images in px")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--freemask-args", default="", help="extra arguments for freesolo freemask, one string")
    args = ap.parse_args()
    extra = args.freemask_args.split()
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs visible", flush=True)
        if args.rle is not None:
            rle_encoding(*args.rle)
        large_images(args.large, work, extra)
        if args.stages is not None:
            stages(*args.stages, work)
        if args.folder:
            folder(args.folder, args.side, [c for c in args.checkpoints if c <= args.folder], work, extra)


if __name__ == "__main__":
    main()
