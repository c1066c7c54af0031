"""The ``freesolo`` command line: Free Mask over folders, evaluation, the demo and the SOLO student.

Every subcommand prints one clear line per problem, never a traceback for user errors, and
exits non-zero when anything failed (after finishing what it could). One module per command
group (``freemask``, ``solo``), shared options in ``common``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

from engine.cli.common import EXIT_USAGE, UserError
from engine.cli.freemask import add_freemask_commands
from engine.cli.solo import add_solo_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="freesolo",
        description="FreeSOLO: instance masks without labels. Free Mask, evaluation, demo.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_freemask_commands(sub)
    add_solo_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from engine.io.atomic import OutputError, OutputExistsError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    user_errors: tuple[type[BaseException], ...] = (UserError, OutputExistsError, OutputError, FileNotFoundError)
    try:
        from engine.backbones import BackboneError
        from engine.io.coco import CocoFormatError
        from engine.io.images import NoImagesError

        from engine.runtime.sharding import ShardError
        from engine.solo.checkpoint import CheckpointError
        from engine.solo.train import MissingEmbeddingsError
        from engine.solo.trainer import TrainingDivergedError

        user_errors += (BackboneError, CocoFormatError, NoImagesError, CheckpointError, TrainingDivergedError,
                        ShardError, MissingEmbeddingsError)
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
