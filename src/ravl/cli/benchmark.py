"""``ravl benchmark discover``: the settings grid that measures discovery methods."""

from __future__ import annotations

from pathlib import Path

COMMAND = "benchmark"
HELP = "run a benchmark grid (discover: settings x methods -> Precision@10 tables and plot)"

DEFAULT_FEATURES = ["red_square", "ring", "stripes"]
DEFAULT_CLASSES = ["nine", "three", "five"]
DEFAULT_STRENGTHS = [0.9, 0.95, 0.99]
DEFAULT_METHODS = ["ravl", "ravl_gap_only", "ravl_influence_only", "ravl_unweighted", "random",
                   "distilling_failures", "george", "domino", "spurious_aware"]


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    d = sub.add_parser("discover", help="discovery methods on a grid of controlled settings",
                       description="Builds every setting (feature x spurious class x V x seed), fine-tunes the tiny "
                                   "CLIP, applies the validity rule and runs every method; resumable.")
    d.add_argument("--out", default="benchmarks/results/discover", help="work folder (cache, results.jsonl, tables)")
    d.add_argument("--features", nargs="+", default=DEFAULT_FEATURES)
    d.add_argument("--spurious-classes", nargs="+", default=DEFAULT_CLASSES)
    d.add_argument("--strengths", nargs="+", type=float, default=DEFAULT_STRENGTHS)
    d.add_argument("--seeds", nargs="+", type=int, default=[0])
    d.add_argument("--methods", nargs="+", default=DEFAULT_METHODS,
                   help="registered discovery methods (see ravl.discovery.registry.list_discovery_methods)")
    d.add_argument("--n-train", type=int, default=4000)
    d.add_argument("--n-eval", type=int, default=2000)
    d.add_argument("--epochs", type=int, default=5)
    d.add_argument("--quiet", action="store_true")


def _write_tables(rows, out: Path) -> list[dict]:
    import csv
    import io

    from ravl.evaluation.benchmark import summarize
    from ravl.utils.io import atomic_write_text

    summary = summarize(rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["method", "cramers_v", "p_at_10", "ci95", "n_settings", "class_accuracy"])
    w.writeheader()
    w.writerows(summary)
    atomic_write_text(out / "summary.csv", buf.getvalue())
    n_total = len({r["setting"] for r in rows})
    n_valid = len({r["setting"] for r in rows if r["valid"]})
    strengths = sorted({s["cramers_v"] for s in summary if s["cramers_v"] != "all"})
    md = [f"Valid settings: {n_valid} of {n_total} (validity rule: spurious-class accuracy gap >= 0.1 on eval val).",
          "", "Mean Precision@10 of the top discovered feature (± 95 % CI half-width; n = valid settings); "
          "'class' = fraction of settings whose implicated class is the planted one.", "",
          "| method | " + " | ".join(f"V = {v:g}" for v in strengths) + " | all | class |",
          "|---|" + "---|" * (len(strengths) + 2)]
    for m in dict.fromkeys(s["method"] for s in summary):
        cells = []
        for v in strengths + ["all"]:
            s = next((s for s in summary if s["method"] == m and s["cramers_v"] == v), None)
            if s is None or s["n_settings"] == 0:
                cells.append("–")
            else:
                ci = "" if s["ci95"] != s["ci95"] else f" ± {s['ci95']:.2f}"
                cells.append(f"{s['p_at_10']:.2f}{ci} (n={s['n_settings']})")
        s_all = next(s for s in summary if s["method"] == m and s["cramers_v"] == "all")
        cls = "–" if m == "random" else f"{s_all['class_accuracy']:.2f}"
        md.append(f"| {m} | " + " | ".join(cells) + f" | {cls} |")
    atomic_write_text(out / "summary.md", "\n".join(md) + "\n")
    return summary


def _plot(summary, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    methods = list(dict.fromkeys(s["method"] for s in summary))
    for i, m in enumerate(methods):
        dodge = (i - (len(methods) - 1) / 2) * 0.0015  # keep overlapping error bars apart
        pts = sorted((s["cramers_v"], s["p_at_10"], s["ci95"]) for s in summary
                     if s["method"] == m and s["cramers_v"] != "all" and s["n_settings"] > 0)
        if pts:
            xs, ys, es = zip(*pts)
            ax.errorbar([x + dodge for x in xs], ys, yerr=[0 if e != e else e for e in es], marker="o", capsize=3, label=m)
    ax.set_xlabel("Cramér's V of the planted correlation")
    ax.set_ylabel("Precision@10")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left", frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.savefig(out / "p_at_10_vs_strength.png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def run(args) -> int:
    from ravl.evaluation.benchmark import DISCOVERY_METHODS, BenchmarkConfig, grid, run_grid

    unknown = [m for m in args.methods if m not in DISCOVERY_METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; known: {', '.join(DISCOVERY_METHODS)}")
    out = Path(args.out)
    specs = grid(args.features, args.spurious_classes, args.strengths, args.seeds)
    cfg = BenchmarkConfig(n_train=args.n_train, n_eval=args.n_eval, epochs=args.epochs)
    print(f"{len(specs)} settings x {len(args.methods)} methods -> {out}")
    rows = run_grid(specs, out, cfg, methods=args.methods, progress=not args.quiet)
    summary = _write_tables(rows, out)
    _plot(summary, out)
    print((out / "summary.md").read_text())
    print(f"wrote {out / 'results.jsonl'}, summary.md, summary.csv, p_at_10_vs_strength.png")
    return 0
