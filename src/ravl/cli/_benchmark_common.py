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
