"""The ``ravl`` command line. Each subcommand lives in its own module of this package.

A subcommand module defines ``COMMAND`` (its name), ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from ravl.exceptions import RavlError

# Order shown in --help.
_SUBCOMMANDS = [
    "demo",
    "make_benchmark",
    "finetune",
    "evaluate",
    "discover",
    "mitigate",
    "benchmark",
    "validate",
    "models",
]


def _load_subcommands():
    mods = []
    for name in _SUBCOMMANDS:
        try:
            mods.append(importlib.import_module(f"ravl.cli.{name}"))
        except ModuleNotFoundError as exc:  # subcommand module not present in this build
            if exc.name != f"ravl.cli.{name}":
                raise
    return mods


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (used by ``main`` and by the docs tests)."""
    from ravl import __version__

    parser = argparse.ArgumentParser(
        prog="ravl",
        description="Find and fix spurious correlations in fine-tuned vision-language models (RaVL).",
    )
    parser.add_argument("--version", action="version", version=f"ravl {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _load_subcommands():
        p = sub.add_parser(mod.COMMAND, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ravl`` console script. Returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    if getattr(args, "quiet", False):
        import os

        os.environ["RAVL_PROGRESS"] = "0"  # every progress bar, library ones included
    try:
        return int(args._run(args) or 0)
    except RavlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `ravl validate DIR | head`
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted: finished results are saved; rerun the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
