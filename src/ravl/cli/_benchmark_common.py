"""Execution options shared by the ``ravl benchmark`` grids (serial or Ray)."""

from __future__ import annotations

import argparse

from ravl.exceptions import InvalidParameterError


def add_backend_arguments(p: argparse.ArgumentParser) -> None:
    """``--backend``, ``--workers``, ``--ray-address``, ``--threads``."""
    g = p.add_argument_group("execution")
    g.add_argument("--backend", choices=["serial", "ray"], default="serial",
                   help="run settings one after another in this process, or as Ray tasks (pip install 'ravl[ray]'); "
                        "results.jsonl is byte-identical either way")
    g.add_argument("--workers", type=int, default=None,
                   help="Ray: settings run at once (default: CPUs / --threads)")
    g.add_argument("--ray-address", default=None,
                   help="Ray: address of an existing cluster ('auto', HOST:PORT, ray://HOST:PORT); "
                        "default: a private local Ray instance")
    g.add_argument("--threads", type=int, default=None,
                   help="torch/BLAS threads inside each setting (part of the configuration; default: the grid's)")


def check_backend_arguments(args) -> None:
    """Refuse Ray-only options without ``--backend ray`` and a worker count below 1."""
    if args.backend == "serial" and (args.workers is not None or args.ray_address is not None):
        raise InvalidParameterError("--workers and --ray-address are used with --backend ray only.")
    if args.workers is not None and args.workers < 1:
        raise InvalidParameterError(f"--workers must be >= 1; got {args.workers}.")


def add_layout_arguments(p: argparse.ArgumentParser) -> None:
    """``--grid-size``, ``--distractors``, ``--placement``, ``--distractor-features``: the image layout."""
    from ravl.data.synthetic import PLACEMENTS

    g = p.add_argument_group("image layout (default: the reference's 2x2 grid, digit and feature in random cells)")
    g.add_argument("--grid-size", type=int, default=2, metavar="G",
                   help="cells per side: images are a GxG grid of 28-px cells, the regions (2-8)")
    g.add_argument("--distractors", type=int, default=0, metavar="N",
                   help="objects added to every image in free cells, drawn from --distractor-features independently "
                        "of the class: clutter tied to nothing")
    g.add_argument("--placement", choices=list(PLACEMENTS), default="random",
                   help="where the feature goes: any free cell, or a cell next to the digit's ('adjacent')")
    g.add_argument("--distractor-features", nargs="+", default=None, metavar="FEATURE",
                   help="registered features the distractors are drawn from (default: the built-in features other "
                        "than the setting's)")


def layout_from_args(args, features=()) -> dict:
    """The layout options that differ from the default, checked (also against every planted
    feature of ``features``: a distractor must not be one), naming the flag on a bad value."""
    from ravl.benchmarks.grid import grid_layout
    from ravl.data.features import FEATURES

    fields = {"grid_size": args.grid_size, "distractors": args.distractors, "placement": args.placement,
              "distractor_features": args.distractor_features}
    if args.distractor_features is not None and not args.distractors:
        raise InvalidParameterError("--distractor-features needs --distractors N (how many distractors per image).")
    if not 2 <= args.grid_size <= 8:
        raise InvalidParameterError(f"--grid-size must be in [2, 8]; got {args.grid_size}.")
    if not 0 <= args.distractors <= args.grid_size ** 2 - 2:
        raise InvalidParameterError(f"--distractors must be in [0, {args.grid_size ** 2 - 2}] with --grid-size "
                                    f"{args.grid_size} (the digit and the feature need two cells); got "
                                    f"{args.distractors}.")
    for name in args.distractor_features or ():
        FEATURES.get(name, where="--distractor-features")
    layout = grid_layout(fields, where="the image layout options")
    clash = sorted(set(features) & set(args.distractor_features or ()))
    if clash:
        raise InvalidParameterError(f"--distractor-features includes {', '.join(clash)}, a planted feature of this run: "
                                    "a distractor must not be the feature tied to the class; drop it from "
                                    "--distractor-features.")
    return layout
