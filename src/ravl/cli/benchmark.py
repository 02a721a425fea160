"""``ravl benchmark discover|mitigate``: the settings grids that measure discovery and mitigation methods.

Each benchmark is one subcommand of ``ravl benchmark``, added by its own ``_add_NAME(sub)``
function that sets ``_benchmark_run`` to the function running it; :func:`run` dispatches.
"""

from __future__ import annotations

import time
from pathlib import Path

COMMAND = "benchmark"
HELP = ("run a benchmark grid (discover: settings x methods -> Precision@10 tables and plot; "
        "mitigate: Stage 1 then every mitigation method -> Table 3)")


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    _add_discover(sub)
    from ravl.cli.benchmark_mitigate import add_mitigate_parser

    add_mitigate_parser(sub)


def run(args) -> int:
    return int(args._benchmark_run(args) or 0)


def _add_backend_arguments(p) -> None:
    """``--backend``, ``--workers``, ``--ray-address``, ``--threads`` (shared by every grid benchmark)."""
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


def _check_backend_arguments(args) -> None:
    if args.backend == "serial" and (args.workers is not None or args.ray_address is not None):
        raise SystemExit("error: --workers and --ray-address are used with --backend ray only.")
    if args.workers is not None and args.workers < 1:
        raise SystemExit(f"error: --workers must be >= 1; got {args.workers}.")


def _add_discover(sub) -> None:
    import argparse

    from ravl.evaluation.benchmark import DEFAULT_METHODS, GRID_PRESETS

    d = sub.add_parser("discover", help="discovery methods on a grid of controlled settings",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Builds every setting (feature x spurious class x V x seed), fine-tunes the tiny "
                                   "CLIP, applies the validity rule and runs every method; resumable. --grid picks "
                                   "the settings and sizes; explicit options override them.")
    d.add_argument("--out", default="benchmarks/results/discover", help="work folder (cache, results.jsonl, tables)")
    d.add_argument("--grid", choices=sorted(GRID_PRESETS), default="default",
                   help="; ".join(f"{k}: {v.description}" for k, v in GRID_PRESETS.items()))
    d.add_argument("--features", nargs="+", default=None, help="override the grid's features")
    d.add_argument("--spurious-classes", nargs="+", default=None, help="override the grid's spurious classes")
    d.add_argument("--strengths", nargs="+", type=float, default=None, help="override the grid's Cramér's V values")
    d.add_argument("--seeds", nargs="+", type=int, default=None, help="override the grid's seeds")
    d.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                   help="registered discovery methods (see ravl.discovery.registry.list_discovery_methods)")
    d.add_argument("--n-train", type=int, default=None, help="override the grid's fine-tuning images per setting")
    d.add_argument("--n-eval", type=int, default=None, help="override the grid's evaluation images per setting")
    d.add_argument("--epochs", type=int, default=None, help="override the grid's fine-tuning epochs")
    _add_backend_arguments(d)
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(_benchmark_run=_run_discover)


def _write_tables(rows, out: Path, *, methods, config, wall_seconds=None) -> dict:
    import csv
    import io

    from ravl.evaluation.benchmark import format_summary, summarize, summary_tables
    from ravl.utils.io import atomic_write_json, atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["method", "cramers_v", "p_at_10", "ci95", "n_settings", "class_accuracy"])
    w.writeheader()
    w.writerows(summarize(rows))
    atomic_write_text(out / "summary.csv", buf.getvalue())
    summary = summary_tables(rows, methods=methods, wall_seconds=wall_seconds, config=config)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", format_summary(summary))
    return summary


def _plot(summary, out: Path) -> None:
    """P@10 vs V in three panels: RaVL's ablations, baselines under adaptation A, under adaptation B.

    Error bars: 95 % CI half-widths, clipped to [0, 1].
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    table = {t["method"]: t for t in summary["methods"]}

    def of(adaptation):
        return [m for m, t in table.items() if t["adaptation"] == adaptation]

    ref = [m for m in ("ravl", "random") if m in table]
    groups = [(title, ms) for title, ms in [
        ("RaVL and its ablations", of("RaVL") + of("-")),
        ("baselines, adaptation A (image-then-region)", ref + of("A")),
        ("baselines, adaptation B (region-as-sample)", ref + of("B")),
        ("other methods", ref + of("?"))] if set(ms) - set(ref) or (title.startswith("RaVL") and ms)]
    groups = groups or [("methods", list(table))]
    xs_all = sorted({float(v) for t in table.values() for v in t["by_strength"]})
    step = (xs_all[-1] - xs_all[0]) / 120 if len(xs_all) > 1 else 0.002
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.9), sharey=True, squeeze=False)
    for ax, (title, ms) in zip(axes[0], groups):
        for i, m in enumerate(ms):
            dodge = (i - (len(ms) - 1) / 2) * step  # keep overlapping points and error bars apart
            pts = [(float(v), c["p_at_10"], c["ci95"]) for v, c in table[m]["by_strength"].items() if c["n"]]
            if not pts:
                continue
            xs, ys, es = zip(*sorted(pts))
            es = [0.0 if e is None else e for e in es]
            yerr = [[min(e, y) for y, e in zip(ys, es)], [min(e, 1 - y) for y, e in zip(ys, es)]]  # CI clipped to [0, 1]
            style = {"color": "black", "ls": "--"} if m == "ravl" and not title.startswith("RaVL") else {}
            if m == "random":
                style = {"color": "grey", "ls": ":"}
            ax.errorbar([x + dodge for x in xs], ys, yerr=yerr, marker="o", capsize=3, label=m, **style)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("Cramér's V of the planted correlation")
        ax.set_xticks(xs_all)
        ax.set_ylim(-0.02, 1.05)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0][0].set_ylabel("Precision@10")
    fig.tight_layout()
    fig.savefig(out / "p_at_10_vs_strength.png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def _discover_plan(args):
    """``(specs, config, methods)`` of ``ravl benchmark discover``: the --grid preset, explicit options override it."""
    from ravl.evaluation.benchmark import DISCOVERY_METHODS, GRID_PRESETS, BenchmarkConfig, grid

    _check_backend_arguments(args)
    unknown = [m for m in args.methods if m not in DISCOVERY_METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; known: {', '.join(DISCOVERY_METHODS)}")
    preset = GRID_PRESETS[args.grid]
    specs = grid(args.features or preset.features, args.spurious_classes or preset.spurious_classes,
                 args.strengths or preset.strengths, args.seeds or preset.seeds)
    over = {k: v for k, v in {"n_train": args.n_train, "n_eval": args.n_eval, "epochs": args.epochs,
                              "threads": args.threads}.items() if v is not None}
    try:
        cfg = BenchmarkConfig.from_dict({**preset.config.to_dict(), **over})
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    return specs, cfg, list(dict.fromkeys(args.methods))


def _run_discover(args) -> int:
    from ravl.evaluation.benchmark import run_grid

    specs, cfg, methods = _discover_plan(args)
    out = Path(args.out)
    print(f"{len(specs)} settings x {len(methods)} methods -> {out} (grid {args.grid}, {args.backend} backend, "
          f"{cfg.n_train} images x {cfg.epochs} epochs, {cfg.threads} thread(s) per setting)")
    t0 = time.monotonic()
    rows = run_grid(specs, out, cfg, methods=methods, progress=not args.quiet, backend=args.backend,
                    num_workers=args.workers, ray_address=args.ray_address)
    summary = _write_tables(rows, out, methods=methods, config=cfg, wall_seconds=round(time.monotonic() - t0, 1))
    _plot(summary, out)
    print((out / "summary.md").read_text())
    print(f"wrote {out / 'results.jsonl'}, timings.jsonl, summary.md, summary.json, summary.csv, "
          "p_at_10_vs_strength.png")
    return 0
