"""``ravl benchmark mitigate``: Stage 1 then every mitigation method on a grid of settings.

Writes the RaVL paper's Table 3 shape (Image / Region Overall and Worst-Group accuracy, mean with
95 % CI, for settings whose Stage-1 Precision@10 exceeds 0.6 and 0.8) as Markdown, CSV, JSON and a
PNG chart. Registered as a subcommand of ``ravl benchmark`` by :mod:`ravl.cli.benchmark`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_FEATURES = ["red_square", "ring", "stripes"]
DEFAULT_CLASSES = ["nine", "three"]
DEFAULT_STRENGTHS = [0.95]


def add_mitigate_parser(sub) -> argparse.ArgumentParser:
    """Add the ``mitigate`` subcommand to the ``ravl benchmark`` subparsers."""
    from ravl.evaluation.mitigation_benchmark import MITIGATION_BENCHMARK_METHODS, MitigationBenchmarkConfig

    d = MitigationBenchmarkConfig()
    p = sub.add_parser("mitigate", help="mitigation methods on a grid of controlled settings (Table 3)",
                       description="Builds every setting (feature x spurious class x V x seed), fine-tunes the tiny "
                                   "CLIP (the audited model), runs RaVL discovery, then every mitigation method from "
                                   "the same initialisation, and scores the four metrics on the eval test split; "
                                   "resumable (rerun the same command).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/mitigate", help="work folder (cache, results.jsonl, tables)")
    p.add_argument("--features", nargs="+", default=DEFAULT_FEATURES, help="planted features of the grid")
    p.add_argument("--spurious-classes", nargs="+", default=DEFAULT_CLASSES)
    p.add_argument("--strengths", nargs="+", type=float, default=DEFAULT_STRENGTHS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--methods", nargs="+", default=list(MITIGATION_BENCHMARK_METHODS),
                   choices=list(MITIGATION_BENCHMARK_METHODS), metavar="METHOD",
                   help="any of: " + ", ".join(MITIGATION_BENCHMARK_METHODS))
    p.add_argument("--n-train", type=int, default=d.n_train)
    p.add_argument("--n-eval", type=int, default=d.n_eval)
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs of the original fine-tuning and every method")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--continue-epochs", type=int, default=d.continue_epochs,
                   help="epochs of ravl-continue (RaVL from the audited weights)")
    p.add_argument("--region-mode", default=d.region_mode, choices=["masked", "roi", "crop"])
    p.add_argument("--lam", type=float, default=d.lam, help="λ of the RaVL loss")
    p.add_argument("--features-used", default=d.features, dest="features_used",
                   help="which discovered features mitigation treats as spurious: 'class' (every feature tied "
                        "to the top feature's class), 'top', 'all' or ranks like '1,2'")
    p.add_argument("--min-gap-ratio", type=float, default=d.min_gap_ratio,
                   help="with --features-used class: a feature joins the top one only if its gap is at least this "
                        "fraction of the top feature's")
    p.add_argument("--assignment-quantile", type=lambda t: None if t.lower() == "none" else float(t),
                   default=d.assignment_quantile,
                   help="labelling threshold (quantile of the cluster members' similarity to the medoid); 'none': "
                        "nearest medoid only")
    from ravl.cli.benchmark import _add_backend_arguments

    _add_backend_arguments(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(_benchmark_run=run_mitigate)
    return p


def write_outputs(rows, out: Path, config: dict) -> dict:
    """summary.md / summary.csv / summary.json and mitigation.png from result rows."""
    import csv
    import io

    from ravl.evaluation.metrics import SUMMARY_METRICS
    from ravl.evaluation.mitigation_benchmark import format_mitigation_summary, summarize_mitigation
    from ravl.report.figures import metric_bars
    from ravl.utils.io import atomic_write, atomic_write_json, atomic_write_text

    summary = summarize_mitigation(rows)
    atomic_write_json(out / "summary.json", {"config": config, **summary})
    atomic_write_text(out / "summary.md", format_mitigation_summary(summary, config))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["p_at_10_above", "method", "n_settings"]
               + [f"{m} {k}" for m in SUMMARY_METRICS for k in ("mean", "ci95")]
               + [f"delta {m} {k}" for m in SUMMARY_METRICS for k in ("mean", "ci95")])
    for block in summary["thresholds"]:
        for e in block["methods"]:
            w.writerow([block["threshold"], e["method"], e["n"]]
                       + [e[m][k] for m in SUMMARY_METRICS for k in ("mean", "ci95")]
                       + [e["delta"][m][k] for m in SUMMARY_METRICS for k in ("mean", "ci95")])
    atomic_write_text(out / "summary.csv", buf.getvalue())
    block = summary["thresholds"][0]
    if block["methods"]:
        png = metric_bars([e["method"] for e in block["methods"]], list(SUMMARY_METRICS),
                          [[e[m]["mean"] for m in SUMMARY_METRICS] for e in block["methods"]],
                          [[e[m]["ci95"] for m in SUMMARY_METRICS] for e in block["methods"]],
                          title=f"settings with Stage-1 P@10 > {block['threshold']:g} (n = {block['n_settings']}), "
                                "mean ± 95 % CI", highlight="ravl", ylabel="zero-shot accuracy (test)")
        atomic_write(out / "mitigation.png", lambda tmp: Path(tmp).write_bytes(png))
    return summary


def run_mitigate(args) -> int:
    from ravl.cli.benchmark import _check_backend_arguments
    from ravl.evaluation.mitigation_benchmark import MitigationBenchmarkConfig, grid, run_mitigation_grid

    _check_backend_arguments(args)
    threads = args.threads if args.threads is not None else MitigationBenchmarkConfig().threads
    out = Path(args.out)
    specs = grid(args.features, args.spurious_classes, args.strengths, args.seeds)
    cfg = MitigationBenchmarkConfig(n_train=args.n_train, n_eval=args.n_eval, epochs=args.epochs,
                                    batch_size=args.batch_size,
                                    continue_epochs=args.continue_epochs, region_mode=args.region_mode,
                                    lam=args.lam, features=args.features_used, min_gap_ratio=args.min_gap_ratio,
                                    assignment_quantile=args.assignment_quantile, threads=threads)
    print(f"{len(specs)} settings x {len(args.methods)} methods -> {out}")
    rows = run_mitigation_grid(specs, out, cfg, methods=args.methods, backend=args.backend,
                               num_workers=args.workers, ray_address=args.ray_address, progress=not args.quiet)
    write_outputs(rows, out, cfg.to_dict())
    print((out / "summary.md").read_text())
    print(f"wrote {out / 'results.jsonl'}, summary.md, summary.csv, summary.json, mitigation.png")
    return 0
