"""How responsive the panel stays at scale: one very large image, and a folder of thousands (not a test).

The GUI thread's longest stall is measured with the 10 ms heartbeat of ``panel_responsiveness``
(the longest gap between two ticks: the longest time the viewer could not react).

  (L) ``--large 20000x15000``: a generated photo tiled to the size (``scale_memory.tiled_photo``),
      written as an uncompressed TIFF into a folder and opened with the panel's folder browser;
      stalls while it opens and is first drawn, while the camera pans and zooms, while Free Mask
      runs on it (Run, current image; no feature cache) and shows its masks, and after one τ
      change. ``--old-way`` first shows the same image and a full-size label image as plain
      (single-scale) layers, as the panel did before, for comparison.
  (F) ``--folder 20 2000``: a folder of N small generated photos (``--side`` px) per number;
      stalls while the browser opens the folder, while Next is pressed ``--steps`` times (each
      shows the next image), when it jumps to the last image, and during the first
      ``--run-seconds`` of Run whole folder (then Cancel), with the status line at that moment.
      The folders share one feature cache and 20 (40) distinct contents, so most images of the
      second folder are cache hits: its run shows the panel's cost per finished image.

``--trace-stalls`` prints the GUI thread's stack during stalls over 400 ms.

Each measurement runs in a process of its own with one viewer (as napari runs for a user): a
second shown viewer in one process, after a first one ran the panel, ended in a segmentation
fault inside vispy's ``glDrawArrays`` in 4 of 5 runs here (software OpenGL under Xvfb).

    python benchmarks/panel_scale.py --large 20000x15000 --old-way --folder 20 2000 --side 64

Without a display it re-runs itself under ``xvfb-run``. Feature cache and panel settings go to
a temporary folder (never the user's).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

print = partial(print, flush=True)  # noqa: A001
SHARED_ENV = "FREESOLO_SCALE_SHARED"  # set for the child processes: the parent's session folder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from panel_responsiveness import Heartbeat, StallTracer, bench_session, open_viewer, wait_until  # noqa: E402


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def _say(what: str, r: dict, seconds: float | None = None) -> None:
    took = f"{seconds:.1f}s, " if seconds is not None else ""
    print(f"  {what}: {took}longest GUI stall {r['max_ms']:.0f} ms (p99 {r['p99_ms']:.0f} ms, "
          f"{r['over_100ms']} gaps > 100 ms of {r['ticks']}); peak RSS so far {_peak_gb():.2f} GB")


def _timed(beat, start, done, timeout: float, settle: float = 1.0) -> tuple[dict, float]:
    """Heartbeat from ``start()`` until ``done()`` and ``settle`` seconds more (the redraw)."""
    beat.start()
    t0 = time.perf_counter()
    start()
    wait_until(done, timeout)
    seconds = time.perf_counter() - t0
    wait_until(lambda: False, settle)
    return beat.stop(), seconds


def pan_zoom(viewer, beat, moves: int = 12) -> dict:
    """Zoom in towards the image's middle and pan across it, one camera move every 0.25 s."""
    beat.start()
    cam = viewer.camera
    y, x = cam.center[-2:]
    for k in range(moves):
        cam.zoom = cam.zoom * (1.6 if k < moves // 2 else 0.8)
        cam.center = (y + (k - moves / 2) * 200, x + (k - moves / 2) * 300)
        wait_until(lambda: False, 0.25)
    return beat.stop()


def measure_large(napari, size: tuple[int, int], tmp: Path, old_way: bool, trace: bool) -> None:
    import tifffile

    from scale_memory import tiled_photo

    h, w = size
    folder = tmp / "large"
    folder.mkdir()
    image = tiled_photo(h, w)
    tifffile.imwrite(folder / "large.tif", image)
    print(f"(L) one {h}×{w} photo ({image.nbytes / 1e9:.2f} GB uint8 RGB)")
    if old_way:
        old_way_stalls(napari, image)
    del image
    viewer, panel = open_viewer(napari)
    beat = Heartbeat()
    if trace:
        StallTracer(beat, 400)
    view = panel.run_scope.folder_view
    r, s = _timed(beat, lambda: view.open_folder(folder), lambda: "large.tif" in viewer.layers, 600, 2.0)
    layer = viewer.layers["large.tif"]
    print(f"  shown as multiscale: {layer.multiscale}, levels {[tuple(d.shape[:2]) for d in layer.data]}")
    _say("open (load in a worker, add the pyramid, first draw)", r, s)
    _say("pan and zoom (12 camera moves)", pan_zoom(viewer, beat))
    panel.run_scope.set_scope("current image")
    name = "large.tif · free masks"
    r, s = _timed(beat, panel.run, lambda: panel.run_button.isEnabled() and name in viewer.layers, 3600, 2.0)
    labels = viewer.layers[name]
    _say(f"Run Free Mask ({len(labels.metadata.get('freesolo_instances', ()))} masks shown as a "
         f"{labels.data.shape[1]}×{labels.data.shape[0]} view, scale {labels.scale[-1]:.0f})", r, s)
    _say("pan and zoom over the masks", pan_zoom(viewer, beat))
    n = panel.state.params_shown.get("large.tif")
    r, s = _timed(beat, lambda: panel.tau_slider.setValue(panel.tau_slider.value() - 5),
                  lambda: panel._update_worker is None and panel.state.params_shown.get("large.tif") is not n, 1800)
    _say("one τ change (post-processing in a worker, the masks layer updated)", r, s)
    viewer.close()


def old_way_stalls(napari, image) -> None:
    """The same image and a full-size label image as plain layers (what the panel showed before)."""
    import numpy as np

    viewer = napari.Viewer(title="old way", show=True)
    beat = Heartbeat()
    r, s = _timed(beat, lambda: viewer.add_image(image, name="plain", rgb=True), lambda: True, 1, 3.0)
    _say("old way: add the image as one plain layer and draw it", r, s)
    _say("old way: pan and zoom", pan_zoom(viewer, beat))
    labels = np.zeros(image.shape[:2], np.uint16)
    labels[::7, ::5] = 3
    r, s = _timed(beat, lambda: viewer.add_labels(labels, name="masks"), lambda: True, 1, 3.0)
    _say("old way: a full-size label image (uint16) added and drawn", r, s)
    viewer.close()


def measure_folder(napari, n: int, side: int, steps: int, run_seconds: float, tmp: Path, trace: bool) -> None:
    from PIL import Image

    from engine.data.synthetic import make_sample

    folder = tmp / "folder"
    folder.mkdir(parents=True)
    base = [make_sample(300 + i, (side, side), kind="photo")[0] for i in range(20)]
    for i in range(n):
        Image.fromarray(base[i % 20] if i % 40 < 20 else base[i % 20][::-1]).save(folder / f"img{i:05d}.png")
    print(f"(F) a folder of {n} photos {side}²")
    viewer, panel = open_viewer(napari)
    beat = Heartbeat()
    if trace:
        StallTracer(beat, 400)
    wait_until(lambda: False, 2.0)  # the empty viewer's first draws are not the folder's
    panel.run_scope.set_scope("folder")
    view = panel.run_scope.folder_view
    r, s = _timed(beat, lambda: view.open_folder(folder), lambda: "img00000.png" in viewer.layers, 120)
    _say("open the folder (list it, show the first image)", r, s)

    def press_next():
        for _ in range(steps):
            view.next_button.click()
            wait_until(lambda: False, 0.05)

    last = f"img{min(steps, n - 1):05d}.png"
    r, s = _timed(beat, press_next, lambda: last in viewer.layers, 120)
    _say(f"Next pressed {steps} times, 50 ms apart", r, s)
    final = f"img{n - 1:05d}.png"
    r, s = _timed(beat, lambda: view.show_name(final), lambda: final in viewer.layers, 120)
    _say("jump to the last image", r, s)
    beat.start()
    t0 = time.perf_counter()
    panel.run()
    wait_until(lambda: False, run_seconds)
    done = panel.status.text()  # "k / N · name" while the folder runs
    panel.cancel()
    wait_until(lambda: panel.run_button.isEnabled() and not panel.run_scope.busy, 600)
    _say(f"Run whole folder for {run_seconds:.0f} s, then Cancel (status then: {done!r})", beat.stop(),
         time.perf_counter() - t0)
    viewer.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--large", default=None, help="HxW of the large image, e.g. 20000x15000 (as scale_memory.py)")
    ap.add_argument("--old-way", action="store_true", help="also show it as plain layers, as before")
    ap.add_argument("--folder", type=int, nargs="*", default=[], help="images per folder, one run each (e.g. 20 2000)")
    ap.add_argument("--side", type=int, default=64, help="their side in px (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=40, help="Next presses (default: %(default)s)")
    ap.add_argument("--run-seconds", type=float, default=60, help="Run whole folder this long (default: %(default)s)")
    ap.add_argument("--trace-stalls", action="store_true",
                    help="print the GUI thread's stack during stalls over 400 ms (its watchdog thread polls a Qt "
                         "timer, which has crashed a run here: off by default)")
    args = ap.parse_args()
    shared = os.environ.get(SHARED_ENV)
    tmp = Path(shared) if shared else bench_session("freesolo-scale-")
    pieces = [["--folder", str(n)] for n in args.folder] + ([["--large", args.large]] if args.large else [])
    if len(pieces) > 1 and not shared:
        return _one_process_each(pieces, args, tmp)
    import napari

    try:
        for n in args.folder:
            measure_folder(napari, n, args.side, args.steps, args.run_seconds, tmp / f"f{n}", args.trace_stalls)
        if args.large:
            h, w = (int(v) for v in args.large.lower().split("x"))
            measure_large(napari, (h, w), tmp, args.old_way, args.trace_stalls)
    finally:
        if not shared:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _one_process_each(pieces: list[list[str]], args, tmp: Path) -> int:
    """Each measurement in a child process with one viewer, all sharing ``tmp`` (and its feature cache)."""
    common = ["--side", str(args.side), "--steps", str(args.steps), "--run-seconds", str(args.run_seconds)]
    common += ["--old-way"] * args.old_way + ["--trace-stalls"] * args.trace_stalls
    env = dict(os.environ, **{SHARED_ENV: str(tmp)})
    try:
        codes = [subprocess.run([sys.executable, __file__, *piece, *common], env=env).returncode for piece in pieces]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for piece, code in zip(pieces, codes):
        if code:
            print(f"{' '.join(piece)}: the child process ended with code {code}")
    return max(codes, key=abs)


if __name__ == "__main__":
    sys.exit(main())
