"""The ``freesolo`` command line: Free Mask over folders, evaluation and the demo.

Every subcommand prints one clear line per problem, never a traceback for user errors, and
exits non-zero when anything failed (after finishing what it could).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2


class UserError(Exception):
    """A problem the user can fix; printed as one line without a traceback."""


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _scale_arg(text: str) -> float | None:
    if text == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number, got {text!r}") from None
    if not 0.05 <= value <= 8:
        raise argparse.ArgumentTypeError("input scale must be between 0.05 and 8")
    return value


def add_nproc_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nproc", type=int, default=1,
                   help="split the images across this many processes on this machine (one GPU each with --device "
                   "cuda) and merge their outputs into --out; under torchrun the ranks split them instead")


def add_feature_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("features (the backbone pass, cached on disk)")
    g.add_argument("--backbone", default="efficientnet-lite0",
                   help="registered backbone name or path to a local .pth checkpoint (default: %(default)s, ships offline)")
    g.add_argument("--levels", default="s8,s16,s32",
                   help="backbone levels fused into the key map, among s4,s8,s16,s32,head (default: %(default)s)")
    g.add_argument("--input-scale", type=_scale_arg, default=None, metavar="auto|X",
                   help="resize factor before the backbone; 'auto' (default) upsamples images with small objects")
    g.add_argument("--short-side", type=int, default=None, help="resize so the short side has this many px (official: 800)")
    g.add_argument("--max-side", type=int, default=1333, help="cap on the long side of the network input (default: %(default)s)")
    g.add_argument("--feature-dim", type=int, default=64, help="PCA dimensions of the key map, 0 = keep all (default: %(default)s)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    g.add_argument("--cache-dir", type=Path, default=None, help="feature cache folder (default: ~/.cache/freesolo-napari/features)")
    g.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")


def add_freemask_options(p: argparse.ArgumentParser) -> None:
    from engine.freemask import FreeMaskParams

    d = FreeMaskParams()
    g = p.add_argument_group("Free Mask post-processing (cheap; never re-runs the backbone)")
    g.add_argument("--tau", type=float, default=d.tau, help="soft-mask threshold τ (default: %(default)s; paper: 0.5)")
    g.add_argument("--scales", type=_floats, default=d.scales, help="query pyramid scales (default: 1.0,0.5,0.25)")
    g.add_argument("--top-k", type=int, default=d.top_k,
                   help="masks kept per image (default: 20, or 100 when the automatic input scale found small objects)")
    g.add_argument("--pre-nms-top", type=int, default=d.pre_nms_top, help="candidates entering Matrix NMS (default: %(default)s)")
    g.add_argument("--nms-kernel", choices=("gaussian", "linear"), default=d.nms_kernel, help="Matrix NMS kernel (default: %(default)s)")
    g.add_argument("--nms-sigma", type=float, default=d.nms_sigma, help="gaussian Matrix NMS σ (default: %(default)s)")
    g.add_argument("--min-score", type=float, default=d.min_score, help="minimum decayed maskness (official script: 0.7)")
    g.add_argument("--min-area", type=int, default=d.min_area, help="minimum mask area in image px (default: %(default)s)")
    g.add_argument("--max-area-frac", type=float, default=d.max_area_frac, help="drop masks covering more of the image than this")
    g.add_argument("--max-border-sides", type=int, default=d.max_border_sides, choices=range(5), metavar="0-4",
                   help="drop masks reaching more image sides than this: background (default: %(default)s; 4 = off)")
    g.add_argument("--split-components", action=argparse.BooleanOptionalAction, default=d.split_components,
                   help="one instance per connected part, so one query lighting up several objects gives each of them "
                   "(default: on; --no-split-components keeps the paper's whole masks)")
    g.add_argument("--no-refine", action="store_true", help="skip the image-guided boundary refinement")
    g.add_argument("--refine-radius", type=int, default=None, help="guided filter radius in image px (default: 12 / input scale)")
    g.add_argument("--official-filters", action="store_true",
                   help="the official script's COCO heuristics: centre y > 0.2·H, box width < 0.95·W, score >= 0.7")


def feature_config_from_args(args: argparse.Namespace):
    from engine.features import FeatureConfig

    levels = tuple(v.strip() for v in args.levels.split(",") if v.strip())
    return FeatureConfig(
        backbone=args.backbone,
        levels=levels,
        input_scale=args.input_scale,
        short_side=args.short_side,
        max_side=args.max_side,
        dim=args.feature_dim or None,
    )


def params_from_args(args: argparse.Namespace):
    from engine.freemask import FreeMaskParams

    official = args.official_filters
    return FreeMaskParams(
        tau=args.tau,
        scales=tuple(args.scales),
        top_k=args.top_k,
        pre_nms_top=args.pre_nms_top,
        nms_kernel=args.nms_kernel,
        nms_sigma=args.nms_sigma,
        min_score=max(args.min_score, 0.7 if official else 0.0),
        min_area=args.min_area,
        max_area_frac=args.max_area_frac,
        max_border_sides=args.max_border_sides,
        split_components=args.split_components,
        refine=not args.no_refine,
        refine_radius=args.refine_radius,
        center_y_min=0.2 if official else None,
        max_box_width=0.95 if official else None,
    ).validated()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="freesolo",
        description="FreeSOLO: instance masks without labels. Free Mask, evaluation, demo.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    fm = sub.add_parser("freemask", help="coarse instance masks for a folder of images (COCO JSON out)",
                        description="Run Free Mask on images and write a COCO dataset of the masks found. "
                        "Resumable: features are cached, so a rerun skips the backbone for images already seen. "
                        "Bad files are reported and skipped; the exit code is 1 if any failed.")
    fm.add_argument("images", nargs="+", help="image files and/or folders")
    fm.add_argument("--out", required=True, type=Path, help="output COCO JSON file")
    fm.add_argument("--format", choices=("rle", "polygon"), default="rle", help="segmentation encoding (default: rle)")
    fm.add_argument("--labels", type=Path, default=None, help="also write one 16-bit label PNG per image into this folder")
    fm.add_argument("--overlays", type=Path, default=None, help="also write an overlay PNG per image into this folder")
    fm.add_argument("--overwrite", action="store_true", help="replace existing outputs (the old file is kept as .bak)")
    add_nproc_option(fm)
    add_feature_options(fm)
    add_freemask_options(fm)
    fm.set_defaults(func=cmd_freemask)

    ev = sub.add_parser("eval", help="class-agnostic COCO mask AP of predictions against ground truth",
                        description="Evaluate PRED against GT with pycocotools (segm, useCats=0). "
                        "Images are matched by file_name when PRED is a dataset, by image_id when it is a result list.")
    ev.add_argument("gt", type=Path, help="ground-truth COCO dataset")
    ev.add_argument("pred", type=Path, help="predictions: COCO dataset or result list")
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.set_defaults(func=cmd_eval)

    demo = sub.add_parser("demo", help="make sample data and run the headless pipeline on it",
                          description="Generate synthetic images with ground truth, run Free Mask, write COCO JSON, "
                          "label images and overlay PNGs, evaluate, and print where everything is.")
    demo.add_argument("--out", type=Path, default=Path("freesolo_demo"), help="parent folder; each run gets a new subfolder")
    demo.add_argument("--n", type=int, default=6, help="synthetic images per kind (default: %(default)s)")
    demo.add_argument("--size", type=int, default=320, help="image side in px (default: %(default)s)")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    demo.set_defaults(func=cmd_demo)

    from engine.cli_solo import add_solo_commands

    add_solo_commands(sub)
    return parser


def _check_outputs_free(paths: Sequence[Path | None], overwrite: bool) -> None:
    from engine.atomic import OutputExistsError

    for path in paths:
        if path is not None and path.exists() and path.is_file() and not overwrite:
            raise OutputExistsError(path)


def write_outputs(report, out: Path, fmt: str, labels: Path | None, overlays: Path | None, overwrite: bool) -> list[Path]:
    """COCO JSON (+ label images, + overlay PNGs) for a finished batch; returns what was written."""
    from engine.coco import build_coco_dataset, write_coco, write_label_images

    dataset = build_coco_dataset(report.results, segmentation=fmt, info=FREEMASK_INFO)
    written = [write_coco(out, dataset, overwrite=overwrite)]
    if labels is not None:
        written += write_label_images(report.results, labels, fmt="png", overwrite=overwrite)
    if overlays is not None:
        written += write_overlays(report, overlays, overwrite)
    return written


def readable_subset(instances, limit: int = 30, max_overlap: float = 0.5):
    """The best-scored masks that do not mostly cover one already shown: what a person can read.

    The COCO file keeps every mask (low-scored ones only add recall); overlays would be a
    patchwork if they drew them all.
    """
    shown, covered = [], None
    for inst in sorted(instances, key=lambda m: m.score, reverse=True):
        if covered is not None and (inst.mask & covered).sum() > max_overlap * max(inst.area, 1):
            continue
        shown.append(inst)
        covered = inst.mask.copy() if covered is None else covered | inst.mask
        if len(shown) >= limit:
            break
    return shown


def write_overlays(report, folder: Path, overwrite: bool) -> list[Path]:
    from PIL import Image

    from engine.atomic import atomic_save
    from engine.images import load_image
    from engine.synthetic import render_overlay

    written = []
    for res in report.results:
        image = load_image(report.images[res.file_name])
        shown = readable_subset(res.instances)
        over = render_overlay(image, [m.mask for m in shown], [m.score for m in shown])
        target = folder / (str(Path(res.file_name).with_suffix("")) + "_overlay.png")
        written.append(atomic_save(target, lambda tmp, a=over: Image.fromarray(a).save(tmp, format="PNG"), overwrite=overwrite))
    return written


FREEMASK_INFO = {"description": "freesolo free masks"}


def sharded(args: argparse.Namespace) -> bool:
    """Whether to split the batch across processes (``--nproc N`` or torchrun's environment)."""
    from engine.sharding import env_world

    if args.nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {args.nproc}")
    return args.nproc > 1 or env_world()[1] > 1


def freemask_shard(args, fconf, params, *, shard, device, progress):
    """One rank's share of ``freesolo freemask``: its masks, label images and overlays."""
    from engine.coco import write_label_images
    from engine.pipeline import run_freemask_batch

    report = run_freemask_batch(args.images, feature_config=fconf, params=params, device=device,
                                cache_dir=args.cache_dir, use_cache=not args.no_cache, progress=progress, shard=shard)
    if args.labels is not None:
        write_label_images(report.results, args.labels, fmt="png", overwrite=args.overwrite)
    if args.overlays is not None:
        write_overlays(report, args.overlays, args.overwrite)
    return report


def cmd_freemask(args: argparse.Namespace) -> int:
    from engine.device import configure_cpu_threads
    from engine.pipeline import run_freemask_batch
    from engine.progress import ProgressBar

    configure_cpu_threads()
    try:
        fconf = feature_config_from_args(args)
        params = params_from_args(args)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    _check_outputs_free([args.out], args.overwrite)
    if sharded(args):
        from engine.sharding import print_summary, run_sharded

        summary = run_sharded(freemask_shard, (args, fconf, params), out=args.out, nproc=args.nproc,
                              device=args.device, fmt=args.format, info=FREEMASK_INFO, overwrite=args.overwrite,
                              title="freemask")
        code = print_summary(summary, what="{s.cache_hits} from cache, backbone {s.backbone_seconds:.1f}s, "
                             "post-processing {s.postprocess_seconds:.1f}s")
        for folder, what in ((args.labels, "label images"), (args.overlays, "overlays")):
            if summary is not None and folder is not None:
                print(f"{what} -> {folder}")
        return code
    report = run_freemask_batch(
        args.images, feature_config=fconf, params=params, device=args.device,
        cache_dir=args.cache_dir, use_cache=not args.no_cache, progress=ProgressBar("freemask"),
    )
    for path, why in report.skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    for _path, why in report.failures:
        print(f"error: {why}", file=sys.stderr)
    written = write_outputs(report, args.out, args.format, args.labels, args.overlays, args.overwrite)
    n_masks = sum(len(r.instances) for r in report.results)
    print(f"{len(report.results)} images, {n_masks} masks -> {written[0]}"
          f" ({report.cache_hits} from cache, backbone {report.backbone_seconds:.1f}s, "
          f"post-processing {report.postprocess_seconds:.1f}s)")
    if args.labels is not None:
        print(f"label images -> {args.labels}")
    if args.overlays is not None:
        print(f"overlays -> {args.overlays}")
    if report.failures:
        print(f"{len(report.failures)} file(s) failed (listed above)", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


def format_metrics(metrics: dict) -> str:
    keys = ("AP", "AP50", "AP75", "AR100")
    head = " | ".join(f"{k:>6}" for k in keys)
    vals = " | ".join(f"{metrics[k]:6.3f}" for k in keys)
    return f"{head}\n{vals}\n({metrics.get('n_images', '?')} images, {metrics.get('n_gt', '?')} objects, {metrics.get('n_pred', '?')} predictions)"


def cmd_eval(args: argparse.Namespace) -> int:
    from engine.evaluate import evaluate_segm

    metrics = evaluate_segm(args.gt, args.pred)
    print(json.dumps(metrics, indent=2) if args.json else format_metrics(metrics))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from engine.demo import run_demo

    run_demo(args.out, n=args.n, size=args.size, device=args.device)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    from engine.atomic import OutputError, OutputExistsError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    user_errors: tuple[type[BaseException], ...] = (UserError, OutputExistsError, OutputError, FileNotFoundError)
    try:
        from engine.backbones import BackboneError
        from engine.coco import CocoFormatError
        from engine.images import NoImagesError

        from engine.sharding import ShardError
        from engine.solo.train import CheckpointError, TrainingDivergedError

        user_errors += (BackboneError, CocoFormatError, NoImagesError, CheckpointError, TrainingDivergedError,
                        ShardError)
    except ImportError:  # pragma: no cover - partial installs still report cleanly
        pass
    started = time.perf_counter()
    try:
        code = args.func(args)
    except user_errors as exc:
        print(f"freesolo {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"freesolo {args.command}: interrupted after {time.perf_counter() - started:.0f}s", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
