"""What every ``freesolo`` command shares: exit codes, user errors, option groups and their parsing.

Command modules (``freemask``, ``solo``) import this one and never each other.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2


class UserError(Exception):
    """A problem the user can fix; printed as one line without a traceback."""


def scales_arg(text: str) -> tuple[float, ...]:
    """``--scales``: Free Mask's own parsing, its error as argparse's."""
    from engine.freemask.postprocess import parse_scales

    try:
        return parse_scales(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def generators_arg(text: str) -> tuple[str, ...]:
    from engine.generators.merge import parse_generators

    try:
        return parse_generators(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def classical_arg(text: str) -> tuple[str, ...] | None:
    from engine.generators.merge import parse_classical

    try:
        return parse_classical(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def weight_arg(text: str) -> float:
    """A weight in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def scale_arg(text: str) -> float | None:
    if text == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number, got {text!r}") from None
    if not 0.05 <= value <= 8:
        raise argparse.ArgumentTypeError("input scale must be between 0.05 and 8")
    return value


def query_stride_arg(text: str) -> int | None:
    if text == "auto":
        return None
    if not text.isdigit() or int(text) < 8:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a whole number of pixels >= 8, got {text!r}")
    return int(text)


def add_nproc_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nproc", type=int, default=1,
                   help="split the images across this many processes on this machine (one GPU each with --device "
                   "cuda) and merge their outputs into --out; under torchrun the ranks split them instead")


def add_channel_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--channel", type=int, default=None, metavar="K",
                   help="multi-channel images: use channel K alone (0-based), as grey; default: all channels as "
                   "colour (2: red/green, more: the first 3). Stacks (3-D, time-lapse TIFFs) are always processed "
                   "plane by plane, each named FILE[z=3] in the output")


def add_feature_options(p: argparse.ArgumentParser, device: bool = True) -> None:
    """The backbone pass's options; ``device=False`` where the command has its own ``--device``."""
    g = p.add_argument_group("features (the backbone pass, cached on disk)")
    g.add_argument("--backbone", default="efficientnet-lite0",
                   help="registered backbone name or path to a local .pth checkpoint (default: %(default)s, ships offline)")
    g.add_argument("--levels", default="s8,s16,s32",
                   help="backbone levels fused into the key map, among s4,s8,s16,s32,head (default: %(default)s)")
    g.add_argument("--input-scale", type=scale_arg, default=None, metavar="auto|X",
                   help="resize factor before the backbone; 'auto' (default) upsamples images with small objects")
    g.add_argument("--stain", choices=("auto", "he", "none"), default="auto",
                   help="'he': the network sees the hematoxylin channel of stained (H&E) brightfield images; 'auto' "
                   "(default) does so when most pixels are magenta-to-purple; 'none': the colour image")
    g.add_argument("--short-side", type=int, default=None, help="resize so the short side has this many px (official: 800)")
    g.add_argument("--max-side", type=int, default=1333, help="cap on the long side of the network input (default: %(default)s)")
    g.add_argument("--feature-dim", type=int, default=64, help="PCA dimensions of the key map, 0 = keep all (default: %(default)s)")
    if device:
        g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: %(default)s)")
    g.add_argument("--cache-dir", type=Path, default=None, help="feature cache folder (default: ~/.cache/freesolo-napari/features)")
    g.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")


def add_freemask_options(p: argparse.ArgumentParser) -> None:
    from engine.freemask.postprocess import FreeMaskParams


    d = FreeMaskParams()
    g = p.add_argument_group("Free Mask post-processing (cheap; never re-runs the backbone)")
    g.add_argument("--tile", type=int, default=None, metavar="PX",
                   help="process images whose network input would be over PX pixels in overlapping windows of PX "
                   "input pixels at the full input scale (for many small objects; default: no tiling, shrink to "
                   "--max-side)")
    g.add_argument("--tile-overlap", type=int, default=64, metavar="PX",
                   help="overlap of neighbouring windows in input pixels (default: %(default)s)")
    g.add_argument("--generators", type=generators_arg, default=("freemask",), metavar="LIST",
                   help="mask generators merged into one ranking, among freemask, maskcut, classical, "
                   "grouping (default: freemask)")
    g.add_argument("--classical-on-microscopy", action=argparse.BooleanOptionalAction, default=True,
                   help="on grey-level and stained (H&E) images the classical proposals join the generators "
                   "(default: on)")
    g.add_argument("--classical", type=classical_arg, default=None, metavar="auto|LIST",
                   help="the classical proposals' methods, among watershed, local_watershed, felzenszwalb (default: "
                   "auto: watershed,local_watershed on microscopy, watershed,felzenszwalb on other images)")
    g.add_argument("--freemask-weight", type=weight_arg, default=0.5, metavar="W",
                   help="on microscopy, Free Mask's merge scores are multiplied by W in (0, 1] where classical proposals "
                   "are in the merge (default: %(default)s)")
    g.add_argument("--merge-score", choices=("features", "image", "both"), default="both",
                   help="what ranks merged generators' masks: their feature contrast, their grey contrast in the "
                   "image, or the mean of both (default: %(default)s; Free Mask alone keeps its own maskness)")
    g.add_argument("--tau", type=float, default=d.tau, help="soft-mask threshold τ (default: %(default)s; paper: 0.5)")
    g.add_argument("--query-stride", type=query_stride_arg, default=d.query_stride, metavar="auto|PX",
                   help="input pixels per query cell at pyramid scale 1 (default: %(default)s); 'auto' sizes the grid "
                   "to the image: at least 16 cells on the short side")
    g.add_argument("--scales", type=scales_arg, default=d.scales, help="query pyramid scales (default: 1.0,0.5,0.25)")
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
    from engine.freemask.features import FeatureConfig


    levels = tuple(v.strip() for v in args.levels.split(",") if v.strip())
    return FeatureConfig(
        backbone=args.backbone,
        levels=levels,
        input_scale=args.input_scale,
        short_side=args.short_side,
        max_side=args.max_side,
        dim=args.feature_dim or None,
        stain=args.stain,
    )


def generator_config_from_args(args: argparse.Namespace):
    from engine.generators.merge import GeneratorConfig

    return GeneratorConfig(generators=tuple(args.generators), score=args.merge_score,
                           classical_on_microscopy=args.classical_on_microscopy, classical=args.classical,
                           freemask_weight=args.freemask_weight)


def params_from_args(args: argparse.Namespace):
    from engine.freemask.postprocess import FreeMaskParams


    official = args.official_filters
    return FreeMaskParams(
        tau=args.tau,
        scales=tuple(args.scales),
        query_stride=args.query_stride,
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


def freemask_args(feature_config, params, generators, tile: int | None = None, tile_overlap: int = 64) -> list[str]:
    """The options of ``add_feature_options`` and ``add_freemask_options`` that give these settings back
    (``feature_config_from_args``, ``params_from_args``, ``generator_config_from_args`` read them): how
    the panel hands the settings on screen to ``freesolo selftrain``. ValueError names a value the
    command line cannot set (only its defaults are allowed there)."""
    from engine.freemask.features import FeatureConfig
    from engine.freemask.postprocess import FreeMaskParams
    from engine.generators.merge import GeneratorConfig

    fixed = [(params, FreeMaskParams(), ("score_stride", "refine_eps", "center_y_min", "max_box_width")),
             (feature_config, FeatureConfig(), ("min_side",)),
             (generators, GeneratorConfig(), ("maskcut", "classical_top"))]
    for value, default, names in fixed:
        for name in names:
            if getattr(value, name) != getattr(default, name):
                raise ValueError(f"{name} = {getattr(value, name)!r} cannot be given on the command line")
    fc, p, g = feature_config, params, generators

    def auto(v) -> str:  # the *_arg parsers read 'auto' as None
        return "auto" if v is None else repr(v)

    args = ["--backbone", fc.backbone, "--levels", ",".join(fc.levels), "--input-scale", auto(fc.input_scale),
            "--stain", fc.stain, "--max-side", str(fc.max_side), "--feature-dim", str(fc.dim or 0),
            "--generators", ",".join(g.generators), "--classical", "auto" if g.classical is None else ",".join(g.classical),
            "--freemask-weight", repr(g.freemask_weight), "--merge-score", g.score,
            "--tau", repr(p.tau), "--query-stride", auto(p.query_stride), "--scales", ",".join(map(repr, p.scales)),
            "--pre-nms-top", str(p.pre_nms_top), "--nms-kernel", p.nms_kernel, "--nms-sigma", repr(p.nms_sigma),
            "--min-score", repr(p.min_score), "--min-area", str(p.min_area), "--max-area-frac", repr(p.max_area_frac),
            "--max-border-sides", str(p.max_border_sides), "--tile-overlap", str(tile_overlap)]
    args += ["--short-side", str(fc.short_side)] * (fc.short_side is not None)
    args += ["--top-k", str(p.top_k)] * (p.top_k is not None)
    args += ["--refine-radius", str(p.refine_radius)] * (p.refine_radius is not None)
    args += ["--tile", str(tile)] * (tile is not None)
    args += ["--classical-on-microscopy" if g.classical_on_microscopy else "--no-classical-on-microscopy",
             "--split-components" if p.split_components else "--no-split-components"]
    return args + ["--no-refine"] * (not p.refine)


def check_outputs_free(paths: Sequence[Path | None], overwrite: bool) -> None:
    from engine.io.atomic import OutputExistsError


    for path in paths:
        if path is not None and path.exists() and path.is_file() and not overwrite:
            raise OutputExistsError(path)


def sharded(args: argparse.Namespace) -> bool:
    """Whether to split the batch across processes (``--nproc N`` or torchrun's environment)."""
    from engine.runtime.sharding import env_world


    if args.nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {args.nproc}")
    return args.nproc > 1 or env_world()[1] > 1
