"""Argument groups and printing helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ravl.models import load_model
from ravl.models.checkpoint import read_checkpoint_config
from ravl.utils.io import atomic_write_json
from ravl.zeroshot import read_templates


def add_model_arguments(parser: argparse.ArgumentParser, *, checkpoint_help: str | None = None) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model", default=None,
                   help="registry name (see `ravl models`); default: the name stored in --checkpoint, else 'tiny'")
    g.add_argument("--checkpoint", default=None,
                   help=checkpoint_help or "ravl checkpoint folder (model.safetensors + config.json) or backend weights")
    g.add_argument("--device", default="auto", help="'auto' (CUDA when available, else CPU), 'cpu', 'cuda', 'cuda:1', ...")


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def model_from_args(args, **kwargs):
    """Load the model named by ``--model`` / ``--checkpoint`` on ``--device``."""
    name = args.model
    if name is None and args.checkpoint and (Path(args.checkpoint) / "config.json").is_file():
        name = read_checkpoint_config(args.checkpoint).get("model")
    return load_model(name or "tiny", checkpoint=args.checkpoint, device=resolve_device(args.device), **kwargs)


def add_data_class_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("classes and prompts")
    g.add_argument("--classes", nargs="+", default=None,
                   help="class names, in order (default: classes.txt in the folder, else the labels found)")
    g.add_argument("--templates", default=None,
                   help="text file with one prompt template per line containing '{}' (default: ravl's generic set)")


def templates_from_args(args):
    return read_templates(args.templates) if args.templates else None


def fmt(x: float | None) -> str:
    return "  -  " if x is None or x != x else f"{x:.3f}"


def print_table(rows: list[list[Any]], header: list[str]) -> None:
    """Print a plain aligned text table."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for k, r in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_json(path, json.loads(json.dumps(obj, default=_default)))


def _default(o: Any):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
