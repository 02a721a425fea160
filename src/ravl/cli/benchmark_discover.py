"""``ravl benchmark discover``: discovery methods on a grid of controlled settings.

Writes results.jsonl (one row per setting x method), summary.md / summary.csv / summary.json and
the P@10-vs-strength chart.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ravl.benchmarks.discovery import (
    DEFAULT_METHODS,
    GRID_PRESETS,
    BenchmarkConfig,
    grid,
    run_grid,
    summarize,
    summary_tables,
)
from ravl.benchmarks.grid import GRID_INITS, describe_grid_layout
from ravl.cli._benchmark_common import (
    add_backend_arguments,
    add_layout_arguments,
    check_backend_arguments,
    layout_from_args,
)
from ravl.cli._common import out_dir_arg
from ravl.discovery.registry import DISCOVERY_METHODS
from ravl.report.figures import precision_vs_strength
from ravl.report.tables import discovery_csv, format_discovery_summary
from ravl.utils.io import atomic_write, atomic_write_json, atomic_write_text


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``discover`` subcommand to the ``ravl benchmark`` subparsers."""
    d = sub.add_parser("discover", help="discovery methods on a grid of controlled settings",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Builds every setting (feature x spurious class x V x seed), fine-tunes the tiny "
                                   "CLIP, applies the validity rule and runs every method; resumable. --grid picks "
                                   "the settings and sizes; explicit options override them.")
    d.add_argument("--out", default="benchmarks/results/discover", type=out_dir_arg,
                   help="work folder (cache, results.jsonl, tables)")
    d.add_argument("--grid", choices=sorted(GRID_PRESETS), default="default",
                   help="; ".join(f"{k}: {v.description}" for k, v in GRID_PRESETS.items()))
    d.add_argument("--features", nargs="+", default=None, help="override the grid's features")
    d.add_argument("--spurious-classes", nargs="+", default=None, help="override the grid's spurious classes")
    d.add_argument("--strengths", nargs="+", type=float, default=None, help="override the grid's Cramér's V values")
    d.add_argument("--seeds", nargs="+", type=int, default=None, help="override the grid's seeds")
    d.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="METHOD",
                   help="registered discovery methods: " + ", ".join(DISCOVERY_METHODS.list()))
    d.add_argument("--n-train", type=int, default=None, help="override the grid's fine-tuning images per setting")
    d.add_argument("--n-eval", type=int, default=None, help="override the grid's evaluation images per setting")
    d.add_argument("--epochs", type=int, default=None, help="override the grid's fine-tuning epochs")
    d.add_argument("--init", default="scratch", choices=list(GRID_INITS),
                   help="start of every fine-tuning: fresh seeded weights ('scratch') or the tiny CLIP's shipped "
                        "pretrained weights ('pretrained', the paper's protocol)")
    add_layout_arguments(d)
    add_backend_arguments(d)
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(_benchmark_run=run_discover)
    return d


def write_outputs(rows, out: Path, *, methods, config, wall_seconds=None) -> dict:
    """summary.csv / summary.json / summary.md and p_at_10_vs_strength.png from result rows."""
    atomic_write_text(out / "summary.csv", discovery_csv(summarize(rows)))
    summary = summary_tables(rows, methods=methods, wall_seconds=wall_seconds, config=config)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", format_discovery_summary(summary))
    png = precision_vs_strength(summary)
    atomic_write(out / "p_at_10_vs_strength.png", lambda tmp: Path(tmp).write_bytes(png))
    return summary


def plan(args):
    """``(specs, config, methods)``: the --grid preset, explicit options override it."""
    check_backend_arguments(args)
    for m in args.methods:
        DISCOVERY_METHODS.get(m, where="--methods")
    preset = GRID_PRESETS[args.grid]
    specs = grid(args.features or preset.features, args.spurious_classes or preset.spurious_classes,
                 args.strengths or preset.strengths, args.seeds or preset.seeds)
    over = {k: v for k, v in {"n_train": args.n_train, "n_eval": args.n_eval, "epochs": args.epochs,
                              "threads": args.threads}.items() if v is not None}
    over["init"] = args.init
    over["layout"] = layout_from_args(args, {s.feature for s in specs})
    cfg = BenchmarkConfig.from_dict({**preset.config.to_dict(), **over})
    return specs, cfg, list(dict.fromkeys(args.methods))


def run_discover(args) -> int:
    specs, cfg, methods = plan(args)
    out = Path(args.out)
    print(f"{len(specs)} settings x {len(methods)} methods -> {out} (grid {args.grid}, {args.backend} backend, "
          f"{cfg.n_train} images x {cfg.epochs} epochs from {cfg.init} weights, {describe_grid_layout(cfg.layout)}, "
          f"{cfg.threads} thread(s) per setting)")
    t0 = time.monotonic()
    rows = run_grid(specs, out, cfg, methods=methods, progress=not args.quiet, backend=args.backend,
                    num_workers=args.workers, ray_address=args.ray_address)
    write_outputs(rows, out, methods=methods, config=cfg, wall_seconds=round(time.monotonic() - t0, 1))
    print((out / "summary.md").read_text())
    print(f"wrote {out / 'results.jsonl'}, timings.jsonl, summary.md, summary.json, summary.csv, "
          "p_at_10_vs_strength.png")
    return 0
