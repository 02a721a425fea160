"""The ``ravl`` command line. Each subcommand lives in its own module of this package.

:data:`COMMANDS` lists the subcommands (name, module, one-line help) in ``--help`` order. A
subcommand module defines ``add_arguments(parser)``, ``run(args) -> int`` and optionally
``DESCRIPTION``; it is imported only when its command runs (or when the full parser is built),
so ``ravl --help`` and ``ravl validate`` do not pay for torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from ravl._version import __version__
from ravl.exceptions import InvalidParameterError, RavlError, UnknownNameError

#: ``(command, module, one-line help)`` of every subcommand, in ``--help`` order.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("demo", "ravl.cli.demo",
     "build a red-square <-> 'nine' setting, fine-tune the tiny CLIP, show the shortcut, discover and fix it"),
    ("make-benchmark", "ravl.cli.make_benchmark",
     "build a synthetic setting: a feature tied to one digit class with a chosen Cramér's V"),
    ("finetune", "ravl.cli.finetune", "fine-tune a model on image-caption pairs (symmetric InfoNCE), resumable"),
    ("evaluate", "ravl.cli.evaluate",
     "zero-shot accuracy: overall, per class, per (class x spurious feature) group, worst group"),
    ("discover", "ravl.cli.discover",
     "discover region features the model spuriously ties to a class; writes discovery.json and report.html"),
    ("mitigate", "ravl.cli.mitigate",
     "fine-tune again so the model stops relying on the discovered feature (RaVL Stage 2), resumable"),
    ("benchmark", "ravl.cli.benchmark",
     "run a benchmark grid (discover: settings x methods -> Precision@10 tables and plot; mitigate: Stage 1 then "
     "every mitigation method -> Table 3)"),
    ("validate", "ravl.cli.validate", "check a dataset folder (metadata.jsonl + images) and report every problem"),
    ("models", "ravl.cli.models", "list the model names load_model accepts"),
)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser: every subcommand's arguments, or only ``command``'s (what ``main`` uses)."""
    parser = argparse.ArgumentParser(
        prog="ravl",
        description="Find and fix spurious correlations in fine-tuned vision-language models (RaVL).",
    )
    parser.add_argument("--version", action="version", version=f"ravl {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-vv for debug); tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_ in COMMANDS:
        if command is not None and name != command:
            sub.add_parser(name, help=help_, add_help=False)
            continue
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_, description=getattr(mod, "DESCRIPTION", help_),
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (the first argument that is not an option), if any."""
    names = {c[0] for c in COMMANDS}
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in names else None
    return None


def _error(exc: BaseException, verbose: int, code: int) -> int:
    """Print ``error: MESSAGE`` (the traceback first with ``-v``) and return ``code``."""
    if verbose:
        traceback.print_exc(file=sys.stderr)
    print(f"error: {exc}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ravl`` console script. Returns the process exit code.

    A :class:`~ravl.exceptions.RavlError` ends in one ``error:`` line on stderr (the traceback
    too with ``-v``): exit code 2 for a usage mistake (:class:`~ravl.exceptions.InvalidParameterError`,
    an unknown name), 1 for a problem with the data, a checkpoint or the environment.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_of(argv) or "")
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    if getattr(args, "quiet", False):
        os.environ["RAVL_PROGRESS"] = "0"  # every progress bar, library ones included
    try:
        return int(args._run(args) or 0)
    except (InvalidParameterError, UnknownNameError) as exc:  # a usage mistake: exit 2, as argparse does
        return _error(exc, args.verbose, 2)
    except RavlError as exc:  # the data, a checkpoint or the environment: exit 1
        return _error(exc, args.verbose, 1)
    except BrokenPipeError:  # e.g. `ravl validate DIR | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted: finished results are saved; rerun the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
