"""``difflab experiments`` moved out of the package: the classic experiments are a research pipeline
beside it, ``python experiments/classic.py`` in a clone of the repository. This entry, hidden from
``difflab --help``, only says so (exit status 2), with the user's arguments in the command to run."""

from __future__ import annotations

import shlex
import sys

__all__ = ["add_parser", "MOVED_TO"]

MOVED_TO = "python experiments/classic.py"


def add_parser(sub) -> None:
    # no help: not listed among the commands; no option prefix: every argument lands in `rest`
    p = sub.add_parser("experiments", prefix_chars="\x00", add_help=False)
    p.add_argument("rest", nargs="*")
    p.set_defaults(func=_main)


def _main(args) -> int:
    command = " ".join([MOVED_TO, *map(shlex.quote, args.rest)])
    print(f"`difflab experiments` moved out of the package: run `{command}` from a clone of the repository",
          file=sys.stderr)
    return 2
