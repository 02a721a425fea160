"""``ravl benchmark mitigate``: Stage 1 then every mitigation method on a grid of settings.

Writes the RaVL paper's Table 3 shape (Image / Region Overall and Worst-Group accuracy, mean with
95 % CI, for settings whose Stage-1 Precision@10 exceeds 0.6 and 0.8) as Markdown, CSV, JSON and a
PNG chart. The methods, and their options, come from the mitigation registry.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from ravl.benchmarks.grid import GRID_INITS, describe_grid_layout
from ravl.benchmarks.mitigation import (
    CONTINUE_SUFFIX,
    MitigationBenchmarkConfig,
    benchmark_methods,
    check_benchmark_method,
    default_benchmark_methods,
    grid,
    run_mitigation_grid,
    summarize_groups,
    summarize_mitigation,
)
from ravl.cli._benchmark_common import (
    add_backend_arguments,
    add_layout_arguments,
    check_backend_arguments,
    layout_from_args,
)
from ravl.cli._common import out_dir_arg, parse_features, parse_quantile
from ravl.cli._methods import add_method_arguments, method_configs_from_args
from ravl.evaluation.metrics import SUMMARY_METRICS
from ravl.mitigation.api import MitigationOptions
from ravl.models.regions import REGION_MODES
from ravl.report.figures import metric_bars
from ravl.report.tables import format_group_summary, format_mitigation_summary, mitigation_csv
from ravl.utils.io import atomic_write, atomic_write_json, atomic_write_text

DEFAULT_FEATURES = ["red_square", "ring", "stripes"]
DEFAULT_CLASSES = ["nine", "three"]
DEFAULT_STRENGTHS = [0.95]


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``mitigate`` subcommand to the ``ravl benchmark`` subparsers."""
    d = MitigationBenchmarkConfig()
    p = sub.add_parser("mitigate", help="mitigation methods on a grid of controlled settings (Table 3)",
                       description="Builds every setting (feature x spurious class x V x seed), fine-tunes the tiny "
                                   "CLIP (the audited model), runs RaVL discovery, then every mitigation method from "
                                   "the same initialisation, and scores the four metrics on the eval test split; "
                                   "resumable (rerun the same command).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/mitigate", type=out_dir_arg,
                   help="work folder (cache, results.jsonl, tables)")
    p.add_argument("--features", nargs="+", default=DEFAULT_FEATURES, help="planted features of the grid")
    p.add_argument("--spurious-classes", nargs="+", default=DEFAULT_CLASSES)
    p.add_argument("--strengths", nargs="+", type=float, default=DEFAULT_STRENGTHS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--methods", nargs="+", default=default_benchmark_methods(), choices=benchmark_methods(),
                   metavar="METHOD",
                   help="registered mitigation methods (" + ", ".join(default_benchmark_methods()[:-1]) + "), each "
                        f"from the initialisation, or NAME{CONTINUE_SUFFIX} to start NAME from the audited weights")
    p.add_argument("--n-train", type=int, default=d.n_train)
    p.add_argument("--n-eval", type=int, default=d.n_eval)
    p.add_argument("--epochs", type=int, default=d.finetune.epochs,
                   help="epochs of the original fine-tuning and every method")
    p.add_argument("--batch-size", type=int, default=d.finetune.batch_size)
    p.add_argument("--lr", type=float, default=d.finetune.lr,
                   help="peak learning rate of the original fine-tuning and every method")
    p.add_argument("--init", default=d.init, choices=list(GRID_INITS),
                   help="start of every fine-tuning: fresh seeded weights ('scratch') or the tiny CLIP's "
                        "shipped pretrained weights ('pretrained', the paper's protocol)")
    p.add_argument("--continue-epochs", type=int, default=d.continue_epochs,
                   help=f"epochs of the NAME{CONTINUE_SUFFIX} methods (from the audited weights)")
    p.add_argument("--region-mode", default=None, choices=list(REGION_MODES),
                   help="region embedding mode of discovery, labelling, region losses and the evaluation "
                        "(default: the library's)")
    p.add_argument("--features-used", default="class", dest="features_used",
                   help="which discovered features mitigation treats as spurious: 'class' (every feature tied "
                        "to the top feature's class), 'top', 'all' or ranks like '1,2'")
    p.add_argument("--min-gap-ratio", type=float, default=d.options.min_gap_ratio,
                   help="with --features-used class: a feature joins the top one only if its gap is at least this "
                        "fraction of the top feature's")
    p.add_argument("--assignment-quantile", default=str(d.options.assignment_quantile),
                   help="labelling threshold (quantile of the cluster members' similarity to the medoid); 'none': "
                        "nearest medoid only")
    add_layout_arguments(p)
    add_backend_arguments(p)
    p.add_argument("--quiet", action="store_true")
    add_method_arguments(p)
    p.set_defaults(_benchmark_run=run_mitigate)
    return p


def write_outputs(rows, out: Path, config: dict) -> dict:
    """summary.md / summary.csv / summary.json and mitigation.png from result rows."""
    summary = summarize_mitigation(rows)
    groups = summarize_groups(rows)
    atomic_write_json(out / "summary.json", {"config": config, **summary, "groups": groups})
    atomic_write_text(out / "summary.md", format_mitigation_summary(summary, config)
                      + "\n### Where the errors are\n\n" + format_group_summary(groups))
    atomic_write_text(out / "summary.csv", mitigation_csv(summary))
    block = summary["thresholds"][0]
    if block["methods"]:
        png = metric_bars([e["method"] for e in block["methods"]], list(SUMMARY_METRICS),
                          [[e[m]["mean"] for m in SUMMARY_METRICS] for e in block["methods"]],
                          [[e[m]["ci95"] for m in SUMMARY_METRICS] for e in block["methods"]],
                          title=f"settings with Stage-1 P@10 > {block['threshold']:g} (n = {block['n_settings']}), "
                                "mean ± 95 % CI", highlight="ravl", ylabel="zero-shot accuracy (test)")
        atomic_write(out / "mitigation.png", lambda tmp: Path(tmp).write_bytes(png))
    return summary


def plan(args) -> tuple[list, MitigationBenchmarkConfig, list[str]]:
    """``(specs, config, methods)`` from the command line; every option is checked before any work."""
    check_backend_arguments(args)
    methods = list(dict.fromkeys(args.methods))
    bases = list(dict.fromkeys(check_benchmark_method(m, "--methods")[0] for m in methods))
    d = MitigationBenchmarkConfig()
    options = MitigationOptions(features=parse_features(args.features_used, "--features-used"),
                                min_gap_ratio=args.min_gap_ratio,
                                assignment_quantile=parse_quantile(args.assignment_quantile),
                                region_mode=args.region_mode)
    cfg = MitigationBenchmarkConfig(
        n_train=args.n_train, n_eval=args.n_eval, continue_epochs=args.continue_epochs, init=args.init,
        threads=args.threads if args.threads is not None else d.threads,
        finetune=replace(d.finetune, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr), options=options,
        method_configs=method_configs_from_args(args, bases), layout=layout_from_args(args, args.features))
    specs = grid(args.features, args.spurious_classes, args.strengths, args.seeds)
    return specs, cfg, methods


def run_mitigate(args) -> int:
    specs, cfg, methods = plan(args)
    out = Path(args.out)
    print(f"{len(specs)} settings x {len(methods)} methods -> {out} (from {cfg.init} weights, "
          f"{describe_grid_layout(cfg.layout)})")
    rows = run_mitigation_grid(specs, out, cfg, methods=methods, backend=args.backend, num_workers=args.workers,
                               ray_address=args.ray_address, progress=not args.quiet)
    write_outputs(rows, out, cfg.to_dict())
    print((out / "summary.md").read_text())
    print(f"wrote {out / 'results.jsonl'}, summary.md, summary.csv, summary.json, mitigation.png")
    return 0
