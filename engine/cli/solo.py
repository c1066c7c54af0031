"""``freesolo train``, ``predict`` and ``selftrain``: the SOLO half of the command line."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from pathlib import Path

from engine.cli.common import (
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
from engine.solo.checkpoint import CHECKPOINT, LOG


def add_solo_commands(sub) -> None:
    from engine.solo.config import TrainConfig

    d = TrainConfig()
    tr = sub.add_parser("train", help="train a class-agnostic SOLO on coarse masks (FreeSOLO's weak losses)",
                        description="Train SOLO on IMAGES with the masks of a COCO file (e.g. from freesolo freemask). "
                        "Writes RUN_DIR/checkpoint.pt every --checkpoint-every iterations, RUN_DIR/model.pt at the end, "
                        "RUN_DIR/log.jsonl and RUN_DIR/loss.png. Ctrl-C saves a checkpoint; --resume continues.")
    tr.add_argument("images", type=Path, help="folder of training images")
    tr.add_argument("--masks", required=True, type=Path, help="COCO file with the coarse masks")
    tr.add_argument("--out", required=True, type=Path, help="run folder")
    _train_options(tr, d)
    tr.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    tr.add_argument("--nproc", type=int, default=1,
                    help="training processes on this machine (DistributedDataParallel; gloo on CPU, NCCL on GPUs). "
                    "Multi-node: torchrun --nnodes ... -m engine.cli train ...")
    tr.set_defaults(func=cmd_train)

    pr = sub.add_parser("predict", help="run a trained SOLO over images (COCO JSON out)")
    pr.add_argument("images", nargs="+", help="image files and/or folders")
    pr.add_argument("--model", required=True, type=Path, help="RUN_DIR/model.pt")
    pr.add_argument("--out", required=True, type=Path, help="output COCO JSON")
    pr.add_argument("--score-thr", type=float, default=0.1, help="minimum score (default: %(default)s)")
    pr.add_argument("--max-per-image", type=int, default=100, help="masks per image (default: %(default)s)")
    pr.add_argument("--format", choices=("rle", "polygon"), default="rle")
    pr.add_argument("--device", default="auto")
    _amp_options(pr)
    pr.add_argument("--overwrite", action="store_true")
    add_nproc_option(pr)
    add_channel_option(pr)
    pr.set_defaults(func=cmd_predict)

    _add_selftrain(sub, d)

    ex = sub.add_parser("export-backbone", help="write a trained model's backbone as a plain state dict",
                        description="RUN/round_K/model.pt -> OUT.pth, loadable with --backbone OUT.pth and by "
                        "downstream code (the backbone's own key layout)")
    ex.add_argument("model", type=Path)
    ex.add_argument("out", type=Path)
    ex.add_argument("--overwrite", action="store_true")
    ex.set_defaults(func=cmd_export_backbone)

    nx = sub.add_parser("next-to-fix", help="rank images by how unsure a trained student is (correct the first ones)",
                        description="Predicts each image and its mirror image; the more the two disagree "
                        "(score-weighted), the more a correction of that image teaches. Most uncertain first.")
    nx.add_argument("model", type=Path)
    nx.add_argument("images", nargs="+", type=Path)
    nx.add_argument("--json", type=Path, default=None, help="also write the ranking as JSON")
    nx.add_argument("--device", default="auto")
    nx.set_defaults(func=cmd_next_to_fix)


def _add_selftrain(sub, d) -> None:
    from engine.selftrain.config import SelfTrainConfig

    st = sub.add_parser("selftrain", help="Free Mask, then SOLO, then self-training rounds on a folder",
                        description="RUN_DIR/round_0 holds Free Mask's coarse masks, round_1 SOLO trained on them, "
                        "round_K (K >= 2) SOLO retrained on round K-1's confident predictions. Resumable.")
    st.add_argument("images", type=Path)
    st.add_argument("--out", required=True, type=Path)
    s = SelfTrainConfig()
    st.add_argument("--rounds", type=int, default=s.rounds, help="training rounds (default: %(default)s)")
    st.add_argument("--keep-thr", type=float, default=s.keep_thr, help="score kept as a pseudo-label (default: %(default)s)")
    st.add_argument("--max-keep", type=int, default=s.max_keep, help="pseudo-labels per image (default: %(default)s)")
    st.add_argument("--positive-only", action="store_true",
                    help="rounds >= 2: focal loss only at positive cells (the official 'pseudo' mode) instead of "
                    "down-weighting negatives inside unselected predictions")
    st.add_argument("--ignore-min-score", type=float, default=s.ignore_min_score,
                    help="rounds >= 2: unselected predictions scoring at least this become ignore regions (negatives "
                    "down-weighted), lower ones background (default: none, all unselected are background)")
    st.add_argument("--coarse-top", type=int, default=s.coarse_top,
                    help="round 1 learns from at most N plausible coarse masks per image that score at least "
                    "--coarse-quantile of the folder's coarse scores; the others become ignore regions with "
                    "down-weighted negatives (0: all coarse masks; default: %(default)s)")
    st.add_argument("--coarse-quantile", type=float, default=s.coarse_quantile, help="round 1's score floor: "
                    "this quantile of all the folder's coarse scores (0: none; default: %(default)s)")
    st.add_argument("--eval-images", type=Path, default=None, help="labeled images to evaluate each round on")
    st.add_argument("--gt", type=Path, default=None, help="ground truth COCO for --eval-images (or for IMAGES)")
    st.add_argument("--resume", action="store_true",
                    help="continue the run in RUN_DIR (which must exist); finished rounds are kept either way")
    st.add_argument("--progress", choices=("bar", "json"), default="bar",
                    help="bar: a progress bar on stderr; json: one JSON object per line on stdout "
                    "(phase, progress, round_done, stopped events) for front ends (default: %(default)s)")
    _train_options(st, d)
    add_feature_options(st, device=False)  # round 0's Free Mask (its device is --device)
    add_freemask_options(st)
    st.set_defaults(func=cmd_selftrain)


def _train_options(p: argparse.ArgumentParser, d) -> None:
    p.add_argument("--iters", type=int, default=d.iters, help="iterations (default: %(default)s)")
    p.add_argument("--batch", type=int, default=d.batch, help="images per iteration (default: %(default)s)")
    p.add_argument("--size", type=int, default=d.size, help="training image size, long side (default: %(default)s)")
    p.add_argument("--object-px", type=float, default=d.object_px,
                   help="scale the run so that the median training mask is this many px wide; images larger "
                   "than --size at that scale are trained and predicted in overlapping windows (0: every image "
                   "letterboxed whole to --size; default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate (default: %(default)s)")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default=d.optimizer, help="(default: %(default)s)")
    p.add_argument("--preset", choices=("cpu-small", "paper"), default="cpu-small", help="model size (default: %(default)s)")
    p.add_argument("--train-backbone", action="store_true",
                   help="train the backbone too (no feature caching: about ten times slower on a CPU); "
                   "`freesolo export-backbone` then writes the trained backbone")
    p.add_argument("--mask-loss", choices=("weak", "full"), default=d.mask_loss,
                   help="weak: projection Dice + pairwise (FreeSOLO); full: plain SOLO Dice (default: %(default)s)")
    p.add_argument("--copy-paste", type=float, default=d.copy_paste,
                   help="chance that a training image is the strong view, with objects of another image and their "
                   "masks pasted in (costs a backbone pass each time; default: %(default)s)")
    p.add_argument("--embedding-weight", type=float, default=d.embedding_weight,
                   help="weight of FreeSOLO's semantic embedding loss: the student also learns each mask's Free Mask "
                   "query embedding (the official code uses 4; 0: no embedding branch; default: %(default)s)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--labels", type=Path, default=None, metavar="TRUSTED.json",
                   help="COCO file of trusted masks (your corrections) for some images: those images are complete "
                   "(everything else in them is background), take part in every round and are never replaced by "
                   "predictions")
    p.add_argument("--trusted-weight", type=float, default=d.trusted_weight,
                   help="images with trusted labels are sampled this many times as often (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    _amp_options(p)
    p.add_argument("--amp-dtype", choices=("float16", "bfloat16"), default=d.amp_dtype,
                   help="float16 (with loss scaling) or bfloat16, which also autocasts on the CPU (default: %(default)s)")


def _amp_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (float16 autocast; in training with loss scaling): on by default on CUDA, "
                   "ignored on the CPU and MPS (float32)")


def _amp_note(args, amp_dtype: str = "float16") -> None:
    """Say so when an explicit --amp cannot apply on the chosen device."""
    from engine.runtime.device import resolve_device
    from engine.solo.amp import resolve_precision

    if args.amp:
        _precision, note = resolve_precision(resolve_device(args.device), True, amp_dtype)
        if note:
            print(f"note: --amp: {note}", file=sys.stderr)


def _train_config(args):
    from engine.solo.config import TrainConfig

    _amp_note(args, args.amp_dtype)
    return TrainConfig(iters=args.iters, batch=args.batch, size=args.size, object_px=args.object_px, lr=args.lr,
                       optimizer=args.optimizer,
                       mask_loss=args.mask_loss, copy_paste=args.copy_paste,
                       checkpoint_every=args.checkpoint_every, amp=args.amp is not False, amp_dtype=args.amp_dtype,
                       trusted_weight=args.trusted_weight, embedding_weight=args.embedding_weight)


def _model_config(args):
    from dataclasses import replace

    from engine.solo.config import SoloConfig

    cfg = SoloConfig.paper() if args.preset == "paper" else SoloConfig.cpu_small()
    if args.train_backbone:
        cfg = replace(cfg, backbone=replace(cfg.backbone, frozen=False))
    return cfg


@contextlib.contextmanager
def stop_on_sigint():
    """Yield a ``should_stop`` callable that turns true on the first Ctrl-C / SIGINT.

    The trainer checks it between iterations and saves its checkpoint before returning; a
    second Ctrl-C interrupts at once (KeyboardInterrupt), as usual.
    """
    flag = {"stop": False}

    def handler(_sig, _frame):
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True
        print("stopping after this iteration (saving a checkpoint); Ctrl-C again to abort", file=sys.stderr, flush=True)

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: no handler, nothing to stop on
        yield lambda: False
        return
    try:
        yield lambda: flag["stop"]
    finally:
        signal.signal(signal.SIGINT, previous)


def _loss_bar(title: str):
    from engine.runtime.progress import ProgressBar

    bar = ProgressBar(title)

    def show(i: int, n: int, info) -> None:  # info: loss terms (training) or a file name (Free Mask)
        text = info if isinstance(info, str) else " ".join(f"{k}={v:.3f}" for k, v in info.items() if k != "lr")
        bar(i, n, text)

    return show


def cmd_train(args) -> int:
    from engine.runtime.device import configure_cpu_threads, resolve_device
    from engine.solo.plot import plot_losses
    from engine.solo.train import train

    configure_cpu_threads()
    device = resolve_device(args.device)
    if args.nproc > 1:
        from engine.runtime.distributed import launch
        from engine.solo.checkpoint import load_model

        launch(train, args.nproc, args.images, args.masks, args.out, cfg=_train_config(args),
               model_cfg=_model_config(args), device=device, resume=args.resume, labels=args.labels)
        _model, state = load_model(args.out / CHECKPOINT)
        plot_losses(args.out / LOG, args.out / "loss.png")
        print(f"{state['step']} iterations on {args.nproc} processes (images per rank "
              f"{state.get('images_per_rank')}) -> {args.out / 'model.pt'}")
        return 0
    try:
        with stop_on_sigint() as should_stop:
            result = train(args.images, args.masks, args.out, cfg=_train_config(args), model_cfg=_model_config(args),
                           device=device, resume=args.resume, progress=_loss_bar("train"), should_stop=should_stop,
                           labels=args.labels)
    except KeyboardInterrupt:
        print(f"interrupted: the last checkpoint is in {args.out}; continue with --resume", file=sys.stderr)
        return 130
    if result.iterations < args.iters:
        print(f"stopped at iteration {result.iterations}: checkpoint saved in {args.out}; continue with --resume",
              file=sys.stderr)
        return 130
    for problem in result.problems:
        print(f"skipped: {problem}", file=sys.stderr)
    plot_losses(args.out / LOG, args.out / "loss.png")
    print(f"{result.iterations} iterations in {result.seconds:.0f}s -> {result.model_path} (loss plot {args.out / 'loss.png'})")
    return 0


def predict_shard(args, *, shard, device, progress, on_result):
    """One rank's share of ``freesolo predict`` (each image's result to ``on_result`` as it finishes)."""
    from engine.solo.predict import predict_folder

    return predict_folder(args.images, args.model, score_thr=args.score_thr, max_per_image=args.max_per_image,
                          device=device, progress=progress, amp=args.amp is not False, shard=shard,
                          channel=args.channel, on_result=on_result)


def cmd_predict(args) -> int:
    from engine.io.coco import build_coco_dataset, write_coco
    from engine.runtime.device import configure_cpu_threads, resolve_device
    from engine.runtime.progress import ProgressBar
    from engine.solo.predict import predict_folder

    configure_cpu_threads()
    check_outputs_free([args.out], args.overwrite)
    _amp_note(args)
    if sharded(args):
        from engine.runtime.sharding import print_summary, run_sharded
        from engine.solo.checkpoint import load_model

        load_model(args.model)  # a bad checkpoint is one clear error here, not one per process
        summary = run_sharded(predict_shard, (args,), out=args.out, nproc=args.nproc, device=args.device,
                              fmt=args.format, overwrite=args.overwrite, title="predict")
        return print_summary(summary)
    report = predict_folder(args.images, args.model, score_thr=args.score_thr, max_per_image=args.max_per_image,
                            device=resolve_device(args.device), progress=ProgressBar("predict"), amp=args.amp is not False,
                            channel=args.channel)
    for _path, why in report.failures:
        print(f"error: {why}", file=sys.stderr)
    written = write_coco(args.out, build_coco_dataset(report.results, segmentation=args.format), overwrite=args.overwrite)
    print(f"{len(report.results)} images, {sum(len(r.instances) for r in report.results)} masks -> {written}")
    return 1 if report.failures else 0


def cmd_selftrain(args) -> int:
    from engine.runtime.device import configure_cpu_threads, resolve_device
    from engine.selftrain.events import DONE, JsonLines
    from engine.selftrain.config import SelfTrainConfig
    from engine.selftrain.rounds import SelfTrainStopped, format_summary, selftrain

    configure_cpu_threads()
    if args.resume and not args.out.is_dir():
        print(f"freesolo selftrain: error: --resume: {args.out} holds no earlier run", file=sys.stderr)
        return 2
    if args.progress == "json":
        lines = JsonLines()
        events, progress, say = lines.events, lines.progress, lines.message
    else:
        events, progress, say = None, _loss_bar("selftrain"), print
    try:
        with stop_on_sigint() as should_stop:
            config = SelfTrainConfig(rounds=args.rounds, keep_thr=args.keep_thr, max_keep=args.max_keep,
                                     coarse_top=args.coarse_top, coarse_quantile=args.coarse_quantile,
                                     positive_only=args.positive_only, ignore_min_score=args.ignore_min_score)
            rows = selftrain(args.images, args.out, config=config, train_cfg=_train_config(args), labels=args.labels,
                             model_cfg=_model_config(args), device=str(resolve_device(args.device)), eval_images=args.eval_images, gt=args.gt,
                             say=say, progress=progress, should_stop=should_stop, events=events,
                             coarse=_coarse_settings(args))
    except SelfTrainStopped as exc:
        print(f"freesolo selftrain: {exc} (with --resume)", file=sys.stderr)
        return 130
    if events is not None:
        events({"event": DONE, "rounds": args.rounds})
    print(format_summary(rows))
    print(f"outputs in {args.out}")
    return 0


def _coarse_settings(args):
    """Round 0's Free Mask settings from the command line (a bad value is the user's error)."""
    from engine.generators.tiling import check_tiling
    from engine.selftrain.config import CoarseSettings

    try:
        check_tiling(args.tile, args.tile_overlap)
        return CoarseSettings(feature_config_from_args(args), params_from_args(args), generator_config_from_args(args),
                              args.tile, args.tile_overlap, args.cache_dir, not args.no_cache)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def cmd_export_backbone(args) -> int:
    from engine.solo.checkpoint import export_backbone, read_checkpoint

    frozen = read_checkpoint(args.model)["model_config"]["backbone"].get("frozen", True)
    written = export_backbone(args.model, args.out, overwrite=args.overwrite)
    note = " (it was frozen during training: these are its pretrained weights)" if frozen else ""
    print(f"backbone of {args.model} -> {written}{note}")
    return 0


def cmd_next_to_fix(args) -> int:
    from dataclasses import asdict

    from engine.io.atomic import atomic_write_json
    from engine.runtime.device import resolve_device
    from engine.selftrain.uncertainty import rank_uncertain

    rows = rank_uncertain(args.images, args.model, device=str(resolve_device(args.device)))
    print("| rank | image | uncertainty | masks | mean score |\n|---:|---|---:|---:|---:|")
    for k, r in enumerate(rows, 1):
        print(f"| {k} | {r.file_name} | {r.uncertainty:.3f} | {r.masks} | {r.mean_score:.3f} |")
    if args.json is not None:
        atomic_write_json(args.json, [asdict(r) for r in rows], overwrite=True)
    return 0
