"""``freesolo freemask``, ``eval`` and ``demo``: Free Mask over folders, evaluation, the sample run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.cli.common import (
    EXIT_OK,
    EXIT_PARTIAL,
    UserError,
    add_channel_option,
    add_feature_options,
    add_freemask_options,
    add_nproc_option,
    check_outputs_free,
    feature_config_from_args,
    generator_config_from_args,
    params_from_args,
    sharded,
)
from engine.io.export import FREEMASK_INFO, ImageOutputs, ResultStream


def add_freemask_commands(sub) -> None:
    fm = sub.add_parser("freemask", help="coarse instance masks for a folder of images (COCO JSON out)",
                        description="Run Free Mask on images and write a COCO dataset of the masks found. "
                        "One line per image says what was chosen automatically (input scale, stain view, query "
                        "grid, tiles, top-k, generators added on microscopy); each COCO images entry keeps it "
                        "as 'automatic'. Resumable: features are cached, so a rerun skips the backbone for images already seen. "
                        "Bad files are reported and skipped; the exit code is 1 if any failed.")
    fm.add_argument("images", nargs="+", help="image files and/or folders")
    fm.add_argument("--out", required=True, type=Path, help="output COCO JSON file")
    fm.add_argument("--format", choices=("rle", "polygon"), default="rle", help="segmentation encoding (default: rle)")
    fm.add_argument("--labels", type=Path, default=None, help="also write one 16-bit label PNG per image into this folder")
    fm.add_argument("--overlays", type=Path, default=None, help="also write an overlay PNG per image into this folder")
    fm.add_argument("--overwrite", action="store_true", help="replace existing outputs (the old file is kept as .bak)")
    fm.add_argument("--quiet", action="store_true", help="do not print the automatic choices of each image (they "
                    "are still stored as 'automatic' in each COCO images entry)")
    add_nproc_option(fm)
    add_channel_option(fm)
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


def freemask_shard(args, fconf, params, *, shard, device, progress, on_result):
    """One rank's share of ``freesolo freemask``: each image's masks to ``on_result`` (its part of the COCO
    file), its label image and overlay written, as it finishes."""
    from engine.generators.pipeline import run_freemask_batch

    files = ImageOutputs(args.labels, args.overlays, args.overwrite)

    def each(res, image) -> None:
        on_result(res, image)
        files.add(res, image)

    return run_freemask_batch(args.images, feature_config=fconf, params=params, device=device,
                              cache_dir=args.cache_dir, use_cache=not args.no_cache, progress=progress, shard=shard,
                              channel=args.channel, generators=generator_config_from_args(args),
                              tile=args.tile, tile_overlap=args.tile_overlap, keep_results=False, on_result=each)


def cmd_freemask(args: argparse.Namespace) -> int:
    from engine.generators.pipeline import run_freemask_batch
    from engine.generators.tiling import check_tiling
    from engine.runtime.device import configure_cpu_threads
    from engine.runtime.progress import ProgressBar

    configure_cpu_threads()
    try:
        fconf = feature_config_from_args(args)
        params = params_from_args(args)
        check_tiling(args.tile, args.tile_overlap)  # before any image: not one failure per image
    except ValueError as exc:
        raise UserError(str(exc)) from None
    check_outputs_free([args.out], args.overwrite)
    if sharded(args):
        return _freemask_sharded(args, fconf, params)
    # Every output is written as images finish (the COCO file's entries are spooled and the file
    # written at the end), so memory stays flat over long folders.
    stream = ResultStream(args.out, args.format, args.labels, args.overlays, args.overwrite)
    choices: list[tuple[str, dict | None]] = []  # each image's automatic choices, printed at the end

    def on_result(res, image) -> None:
        choices.append((res.file_name, res.automatic))
        stream.add(res, image)

    with stream:  # a run that fails leaves no COCO file
        report = run_freemask_batch(
            args.images, feature_config=fconf, params=params, device=args.device,
            cache_dir=args.cache_dir, use_cache=not args.no_cache, progress=ProgressBar("freemask"),
            channel=args.channel, generators=generator_config_from_args(args), tile=args.tile,
            tile_overlap=args.tile_overlap, keep_results=False, on_result=on_result,
        )
        for path, why in report.skipped:
            print(f"skipped {path}: {why}", file=sys.stderr)
        for _path, why in report.failures:
            print(f"error: {why}", file=sys.stderr)
        written, n_images, n_masks = stream.close(), stream.coco.n_images, stream.coco.n_annotations
    if not args.quiet:
        print_choices(choices)
    print(f"{n_images} images, {n_masks} masks -> {written}"
          f" ({report.cache_hits} from cache, backbone {report.backbone_seconds:.1f}s, "
          f"post-processing {report.postprocess_seconds:.1f}s)")
    _print_extra_outputs(args)
    if report.failures:
        print(f"{len(report.failures)} file(s) failed (listed above)", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


def _freemask_sharded(args: argparse.Namespace, fconf, params) -> int:
    """``--nproc N`` (or torchrun): shares of the images in parallel processes, merged into ``--out``."""
    from engine.runtime.sharding import print_summary, run_sharded

    summary = run_sharded(freemask_shard, (args, fconf, params), out=args.out, nproc=args.nproc,
                          device=args.device, fmt=args.format, info=FREEMASK_INFO, overwrite=args.overwrite,
                          title="freemask")
    if summary is not None and not args.quiet:  # the merging process: the lines as one process prints them
        images = json.loads(summary.out.read_text())["images"]
        print_choices((img["file_name"], img.get("automatic")) for img in images)
    code = print_summary(summary, what="{s.cache_hits} from cache, backbone {s.backbone_seconds:.1f}s, "
                         "post-processing {s.postprocess_seconds:.1f}s")
    if summary is not None:
        _print_extra_outputs(args)
    return code


def print_choices(images) -> None:
    """'name: used: input scale ×1.26 (auto, objects ≈40 px) · …' for each (file name, ``automatic``
    dict of its COCO images entry); images without one are left out."""
    from engine.generators.choices import AutoChoices

    for name, automatic in images:
        if automatic is not None:
            print(f"{name}: {AutoChoices.from_dict(automatic).text()}")


def _print_extra_outputs(args: argparse.Namespace) -> None:
    for folder, what in ((args.labels, "label images"), (args.overlays, "overlays")):
        if folder is not None:
            print(f"{what} -> {folder}")


def cmd_eval(args: argparse.Namespace) -> int:
    from engine.eval.coco_eval import evaluate_segm, format_metrics


    metrics = evaluate_segm(args.gt, args.pred)
    print(json.dumps(metrics, indent=2) if args.json else format_metrics(metrics))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from engine.demo import run_demo


    run_demo(args.out, n=args.n, size=args.size, device=args.device)
    return EXIT_OK
