"""Markdown and CSV tables of the benchmark grids, rendered from their saved summaries.

The summaries are computed by :mod:`ravl.benchmarks` (``summary.json``); these functions only
format them, so ``summary.md`` and ``summary.csv`` can be regenerated from the JSON.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

from ravl.evaluation.metrics import SUMMARY_METRICS

__all__ = ["format_discovery_summary", "discovery_csv", "format_mitigation_summary", "mitigation_csv",
           "format_group_summary"]


_ADAPTATION_TEXT = {"RaVL": "RaVL (regions)", "A": "A: image-then-region", "B": "B: region-as-sample",
                    "-": "–", "?": "?"}


def _fmt_cell(c: Mapping[str, Any]) -> str:
    if not c["n"] or c["p_at_10"] is None:
        return "–"
    ci = "" if c["ci95"] is None else f" ± {c['ci95']:.2f}"
    return f"{c['p_at_10']:.2f}{ci} (n={c['n']})"


def format_discovery_summary(summary: Mapping[str, Any]) -> str:
    """``summary.md`` of the discovery grid from
    :func:`ravl.benchmarks.discovery.summary_tables`' dict (so it can be regenerated from ``summary.json``)."""
    strengths = summary["strengths"]
    gap = summary.get("min_gap")
    rule = f"spurious-class accuracy gap >= {gap:g} on eval val" if gap is not None else "see benchmark config"
    md = [f"Valid settings: {summary['n_valid']} of {summary['n_settings']} (validity rule: {rule}).", ""]
    if summary.get("wall_seconds") is not None:
        md += [f"Wall time of this run: {summary['wall_seconds'] / 60:.1f} min.", ""]
    md += ["Mean Precision@10 of the top discovered feature (± 95 % CI half-width; n = valid settings); "
           "'class' = fraction of settings whose implicated class is the planted one. Adaptation: "
           "A = image-then-region (bare baseline names), B = region-as-sample (`*_region`).", "",
           "| method | adaptation | " + " | ".join(f"V = {v}" for v in strengths) + " | all | class |",
           "|---|---|" + "---|" * (len(strengths) + 2)]
    for t in summary["methods"]:
        cells = [_fmt_cell(t["by_strength"][v]) for v in strengths] + [_fmt_cell(t["all"])]
        ca = t["all"]["class_accuracy"]
        cls = "–" if t["method"] == "random" or ca is None else f"{ca:.2f}"
        md.append(f"| {t['method']} | {_ADAPTATION_TEXT.get(t['adaptation'], t['adaptation'])} | "
                  + " | ".join(cells) + f" | {cls} |")
    if summary["ablation"]:
        md += ["", "Ablation (the paper's Table 2): RaVL's scoring variants on the same clusters; mean Precision@10 "
               "± 95 % CI over valid settings.", "",
               "| variant | method | spurious-pattern filter | influence filter (H_c >= 0.25) | ranked by | "
               "balance weight | " + " | ".join(f"V = {v}" for v in strengths) + " | all | class |",
               "|---|---|---|---|---|---|" + "---|" * (len(strengths) + 2)]
        for a in summary["ablation"]:
            cells = [_fmt_cell(a["by_strength"][v]) for v in strengths] + [_fmt_cell(a["all"])]
            ca = a["all"]["class_accuracy"]
            md.append(f"| {a['variant']} | {a['method']} | {a['spurious_filter']} | {a['influence_filter']} | "
                      f"{a['ranked_by']} | {a['balance_weight']} | " + " | ".join(cells)
                      + f" | {'–' if ca is None else f'{ca:.2f}'} |")
    cb = summary.get("closest_baseline")
    if cb is not None:
        ratio = "–" if cb["ravl_ratio"] is None else f"{cb['ravl_ratio']:.2f}x"
        md += ["", f"Closest baseline overall: {cb['method']} (adaptation {cb['adaptation']}, mean P@10 "
               f"{cb['p_at_10']:.2f}); RaVL / closest = {ratio} (the paper reports ≈ 2.9x)."]
    return "\n".join(md) + "\n"


def discovery_csv(per_strength: Sequence[Mapping[str, Any]]) -> str:
    """``summary.csv`` of the discovery grid from :func:`ravl.benchmarks.discovery.summarize`'s rows."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["method", "cramers_v", "p_at_10", "ci95", "n_settings", "class_accuracy"])
    w.writeheader()
    w.writerows(per_strength)
    return buf.getvalue()


def _cell(c: Mapping[str, Any], *, signed: bool = False, scale: float = 100.0) -> str:
    if not c or c.get("mean") is None:
        return "–"
    mean = c["mean"] * scale
    s = f"{mean:+.1f}" if signed else f"{mean:.1f}"
    if c.get("ci95") is not None:
        s += f" ± {c['ci95'] * scale:.1f}"
    return s


def format_mitigation_summary(summary: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> str:
    """Markdown: one Table 3-shaped table per P@10 threshold, plus the paired differences."""
    lines = [f"Valid settings: {summary['n_valid']} of {summary['n_settings']} (validity rule: spurious-class "
             "accuracy gap >= 0.1 on eval val)."]
    if config:
        ft, opts = config.get("finetune") or {}, config.get("options") or {}
        given = "; ".join(f"{m}: " + ", ".join(f"{k} = {v}" for k, v in c.items())
                          for m, c in (config.get("method_configs") or {}).items())
        lines.append(f"Per setting: {config.get('n_train')} training images, {ft.get('epochs')} epochs from the "
                     f"tiny CLIP's {'pretrained weights' if config.get('init') == 'pretrained' else 'initialisation'} (NAME-continue: {config.get('continue_epochs')} epochs from the "
                     f"audited weights), region mode {opts.get('region_mode') or 'default'}, features = "
                     f"{opts.get('features')}; method options: {given or 'the defaults'}.")
    lines.append("")
    head = "| method | " + " | ".join(SUMMARY_METRICS) + " | n |"
    sep = "|---|" + "---|" * (len(SUMMARY_METRICS) + 1)
    for block in summary["thresholds"]:
        lines += [f"### Settings with Stage-1 P@10 > {block['threshold']:g} (n = {block['n_settings']})", "",
                  "Accuracy in % (mean ± 95 % CI half-width over settings), zero-shot on the evaluation test split.",
                  "", head, sep]
        for e in block["methods"]:
            lines.append(f"| {e['method']} | " + " | ".join(_cell(e[m]) for m in SUMMARY_METRICS) + f" | {e['n']} |")
        lines += ["", f"Paired difference to {summary['baseline']} (points, same setting):", "", head, sep]
        for e in block["methods"]:
            if e["method"] == summary["baseline"]:
                continue
            lines.append(f"| {e['method']} | " + " | ".join(_cell(e["delta"][m], signed=True)
                                                             for m in SUMMARY_METRICS) + f" | {e['n']} |")
        best = block.get("best_peer")
        if best:
            lines += ["", f"Paired difference to the best peer, {best} (highest mean Image Worst-Group; points, "
                      "same setting):", "", head, sep]
            for e in block["methods"]:
                if e["method"] == best or "delta_best_peer" not in e:
                    continue
                lines.append(f"| {e['method']} | " + " | ".join(_cell(e["delta_best_peer"][m], signed=True)
                                                                 for m in SUMMARY_METRICS) + f" | {e['n']} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def format_group_summary(groups: Mapping[str, Any]) -> str:
    """Markdown table of :func:`ravl.benchmarks.mitigation.summarize_groups` (accuracy in %)."""
    cols = groups["columns"]
    lines = [f"Per-group accuracy in % (mean ± 95 % CI over {groups['n_settings']} valid settings; evaluation test "
             "split, groups from the planted attribute). 'other classes with feature' are the images of every "
             "class but the spurious one that carry the feature.", "",
             "| method | " + " | ".join(cols) + " | n |", "|---|" + "---|" * (len(cols) + 1)]
    for e in groups["methods"]:
        lines.append(f"| {e['method']} | " + " | ".join(_cell(e[c]) for c in cols) + f" | {e['n']} |")
    return "\n".join(lines) + "\n"


def mitigation_csv(summary: Mapping[str, Any]) -> str:
    """``summary.csv`` of the mitigation grid from :func:`ravl.benchmarks.mitigation.summarize_mitigation`."""
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
    return buf.getvalue()
