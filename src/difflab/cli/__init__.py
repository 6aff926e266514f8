"""The ``difflab`` command: one sub-command per module in this package."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .. import __version__
from . import _errors
from . import convert, demo, distill, export, reflow, sample, serve, train
from . import img2img, inpaint, interpolate, upscale
from . import eval as eval_cmd, experiments, train_classifier
from . import train_autoencoder

__all__ = ["main", "build_parser"]

# Each module exposes add_parser(subparsers), registering a sub-command with func=handler(args) -> int.
COMMANDS = [demo, train, sample, export]
COMMANDS += [inpaint, img2img, upscale, interpolate]  # editing (issue 6)
COMMANDS += [eval_cmd, train_classifier]  # evaluation (issue 5)
COMMANDS += [reflow]  # rectified flow (issue 22)
COMMANDS += [distill]  # few-step students (issue 23)
COMMANDS += [convert, serve]  # diffusers checkpoints in and out; the web page (issue 28)
COMMANDS += [train_autoencoder]  # the autoencoder of latent diffusion (issue 25)
COMMANDS += [experiments]  # only says where the experiments moved (python experiments/classic.py)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="difflab", description="Diffusion models: train, sample, evaluate.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of its one-line message")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    for command in sub.choices.values():  # --debug after the sub-command too; SUPPRESS: the global one stays
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the traceback of an error instead of its one-line message")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(f"difflab {__version__}")
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # One line per failure (cli/_errors.py): exit 2 for bad input, 1 for the environment (OS,
    # memory, a missing package); --debug shows the traceback; anything else is a bug: traceback.
    try:
        _errors.check_out_paths(args)
        return int(args.func(args) or 0)
    except Exception as err:  # noqa: BLE001 - sorted by _errors.describe; unknown ones re-raised
        reported = None if args.debug else _errors.describe(err, args)
        if reported is None:
            raise
        code, message = reported
        print(f"difflab {args.command}: error: {' '.join(message.split())}", file=sys.stderr)
        return code


if __name__ == "__main__":  # python -m difflab.cli
    sys.exit(main())
