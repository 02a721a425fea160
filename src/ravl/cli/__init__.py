"""The ``ravl`` command line. Each subcommand lives in its own module of this package.

:data:`COMMANDS` lists the subcommands (name, module, one-line help) in ``--help`` order. A
subcommand module defines ``add_arguments(parser)``, ``run(args) -> int`` and optionally
``DESCRIPTION``; it is imported only when its command runs (or when the full parser is built),
so ``ravl --help`` and ``ravl validate`` do not pay for torch.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Sequence

from ravl._version import __version__
from ravl.exceptions import InvalidParameterError, RavlError, RavlWarning, UnknownNameError

#: Entry-point group of plugins: modules that register models, discovery or mitigation methods or
#: features, imported before the command line is built (``[project.entry-points."ravl.plugins"]``).
PLUGIN_GROUP = "ravl.plugins"

#: ``(command, module, one-line help)`` of every subcommand, in ``--help`` order.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("demo", "ravl.cli.demo",
     "build a red-square <-> 'nine' setting, fine-tune the tiny CLIP, show the shortcut, discover and fix it"),
    ("make-benchmark", "ravl.cli.make_benchmark",
     "build a synthetic setting: a feature tied to one digit class with a chosen Cramér's V"),
    ("finetune", "ravl.cli.finetune", "fine-tune a model on image-caption pairs (symmetric InfoNCE), resumable"),
    ("evaluate", "ravl.cli.evaluate",
     "zero-shot accuracy: overall, per class, per (class x spurious feature) group, worst group"),
    ("retrieval", "ravl.cli.retrieval",
     "image->text and text->image retrieval: Recall@1/5/10 and mAP over a dataset folder's captions"),
    ("manipulate", "ravl.cli.manipulate",
     "write a manipulated query set: an object removed (region filled, mention dropped) or pasted, recorded"),
    ("audit", "ravl.cli.audit",
     "validate + evaluate + discover + one report page, for a checkpoint and a labelled folder"),
    ("discover", "ravl.cli.discover",
     "discover region features the model spuriously ties to a class; writes discovery.json and report.html"),
    ("mitigate", "ravl.cli.mitigate",
     "fine-tune again so the model stops relying on the discovered feature (RaVL Stage 2), resumable"),
    ("benchmark", "ravl.cli.benchmark",
     "run a benchmark grid (discover: settings x methods -> Precision@10 tables and plot; mitigate: Stage 1 then "
     "every mitigation method -> Table 3)"),
    ("export", "ravl.cli.export",
     "write a ravl checkpoint in its backend's own format (open_clip weights, Hugging Face save_pretrained)"),
    ("convert", "ravl.cli.convert", "convert another dataset format (COCO) into ravl's dataset folder format"),
    ("validate", "ravl.cli.validate", "check a dataset folder (metadata.jsonl + images) and report every problem"),
    ("models", "ravl.cli.models", "list the model names load_model accepts"),
)


class _Parser(argparse.ArgumentParser):
    """argparse with one ``error:`` line for a usage mistake (exit 2), like every other ravl error."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser: every subcommand's arguments, or only ``command``'s (what ``main`` uses)."""
    parser = _Parser(
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
                           formatter_class=_HelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless its help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False):
            return text
        return super()._get_help_string(action)


def load_plugins() -> list[str]:
    """Import every module registered under the :data:`PLUGIN_GROUP` entry point; returns their names.

    A package adds its own methods to ``ravl`` by declaring, in its ``pyproject.toml``::

        [project.entry-points."ravl.plugins"]
        my_methods = "my_package.ravl_methods"

    Raises:
        RavlError: A plugin that fails to import (its name, module and the error).
    """
    names = []
    for ep in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        try:
            ep.load()
        except Exception as exc:  # noqa: BLE001 - any failure of a third-party module is reported the same way
            raise RavlError(f"The ravl plugin {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}. "
                            "Fix it or uninstall the package that declares it.") from exc
        names.append(ep.name)
    return names


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (the first argument that is not an option), if any."""
    names = {c[0] for c in COMMANDS}
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in names else None
    return None


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one ``warning:`` line (the location only for warnings that are not ravl's)."""
    where = "" if issubclass(category, RavlWarning) else f" ({category.__name__} at {filename}:{lineno})"
    print(f"warning: {message}{where}", file=sys.stderr)


def _error(exc: BaseException | str, verbose: int, code: int) -> int:
    """Print ``error: MESSAGE`` (the traceback first with ``-v``) and return ``code``."""
    if verbose:
        traceback.print_exc(file=sys.stderr)
    print(f"error: {exc}", file=sys.stderr)
    return code


def _ravl_info_only(record: logging.LogRecord) -> bool:
    """Logging filter: warnings from anyone, information from ravl's own loggers only."""
    return record.levelno >= logging.WARNING or record.name == "ravl" or record.name.startswith("ravl.")


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    oom = getattr(torch.cuda, "OutOfMemoryError", ())
    return (bool(oom) and isinstance(exc, oom)) or "out of memory" in str(exc).lower()


def _out_of_memory(what: str, exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return (f"out of {what} ({first}). For fine-tuning and mitigation lower --batch-size or add --precision bf16 "
            "and --grad-checkpointing; otherwise use a smaller model or another --device. Finished work is saved: "
            "rerun the same command to resume.")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ravl`` console script. Returns the process exit code.

    A :class:`~ravl.exceptions.RavlError` ends in one ``error:`` line on stderr (the traceback
    too with ``-v``): exit code 2 for a usage mistake (:class:`~ravl.exceptions.InvalidParameterError`,
    an unknown name), 1 for a problem with the data, a checkpoint or the environment.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_of(argv)
    if command:
        try:
            load_plugins()
        except RavlError as exc:
            return _error(exc, 0, 1)
    parser = build_parser(command or "")
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    if not args.verbose:  # backends (open_clip, transformers) log their own progress at INFO: -v shows it
        for handler in logging.getLogger().handlers:
            handler.addFilter(_ravl_info_only)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    if getattr(args, "quiet", False):
        os.environ["RAVL_PROGRESS"] = "0"  # every progress bar, library ones included
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return int(args._run(args) or 0)
    except (InvalidParameterError, UnknownNameError) as exc:  # a usage mistake: exit 2, as argparse does
        return _error(exc, args.verbose, 2)
    except RavlError as exc:  # the data, a checkpoint or the environment: exit 1
        return _error(exc, args.verbose, 1)
    except MemoryError as exc:  # also torch.cuda.OutOfMemoryError (a RuntimeError) below
        return _error(_out_of_memory("memory", exc), args.verbose, 1)
    except RuntimeError as exc:
        if not _is_out_of_memory(exc):
            raise
        return _error(_out_of_memory("GPU memory", exc), args.verbose, 1)
    except BrokenPipeError:  # e.g. `ravl validate DIR | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as exc:  # a path that cannot be read or written, a full disk: exit 1, no traceback
        where = f": {exc.filename}" if exc.filename else ""
        return _error(f"{exc.strerror or exc}{where} ({type(exc).__name__}); check the path and its permissions",
                      args.verbose, 1)
    except KeyboardInterrupt:
        print("interrupted: finished results are saved; rerun the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
