"""Where mitigation leaves errors: image vs region evidence on the images of every group.

For each setting of a mitigation-grid work folder (``ravl benchmark mitigate --out DIR``) and each
method's checkpoint, on the evaluation split (``--split val`` by default; ``test`` to describe the
reported numbers), groups the images by (spurious class or other class) x (feature present or
absent) and reports, per group:

- ``acc``: image zero-shot accuracy;
- ``img→spur``: share of images the whole-image classifier calls the spurious class;
- ``core→true``: share whose core (digit) region alone is classified correctly;
- ``feat→spur``: share whose feature region alone is called the spurious class (an argmax: a
  region with no digit always goes to *some* class);
- ``p(spur|feat)``: mean zero-shot probability of the spurious class for the feature region
  (softmax at τ = 0.07), how strongly the feature alone still means that class;
- ``cos(img,core)`` / ``cos(img,feat)``: cosine of the image embedding to its core / feature
  region embedding (masked regions, as discovery and evaluation use them).

This separates "the region embeddings still carry the shortcut" (feat→spur high) from "the
regions are fixed but the whole-image decision still follows the feature" (feat→spur low,
img→spur high for other classes with the feature).

    python benchmarks/mitigation_groups.py --work runs/mitigate --methods standard spurious-aware ravl \\
        --json groups.json

Prints one table per setting and a mean table, and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ravl.data import load_dataset
from ravl.data.synthetic import CAPTION_TEMPLATES
from ravl.models import load_model
from ravl.models.regions import embed_images, embed_regions
from ravl.zeroshot import class_text_embeddings

COLUMNS = ("n", "acc", "img→spur", "core→true", "feat→spur", "p(spur|feat)", "cos(img,core)", "cos(img,feat)")
GROUPS = ("spurious class, with feature", "spurious class, without", "other classes, with feature",
          "other classes, without")


def analyse(ckpt: Path, ds, spurious: str, feature: str, split: str) -> dict[str, dict[str, float]]:
    """Per-group statistics of one checkpoint on ``split`` of the evaluation set ``ds``."""
    sub = ds.subset(split)
    model = load_model(None, checkpoint=ckpt)
    classes = list(sub.classes)
    with torch.no_grad():
        t = class_text_embeddings(model, classes, CAPTION_TEMPLATES).cpu().numpy()
    img = embed_images(model, sub, progress=False)
    reg = embed_regions(model, sub, mode="masked", progress=False)
    table = sub.region_table()
    labels = np.array([classes.index(r.label) for r in sub])
    s_idx = classes.index(spurious)
    n = len(sub)
    core = np.full(n, -1)
    feat = np.full(n, -1)
    for k, (i, attr) in enumerate(zip(table.image_index, table.attributes)):
        if attr == classes[labels[i]]:
            core[i] = k
        elif attr == feature:
            feat[i] = k
    pred_img = (img @ t.T).argmax(1)
    pred_reg = (reg @ t.T).argmax(1)
    logits = reg @ t.T / 0.07
    prob_reg = np.exp(logits - logits.max(1, keepdims=True))
    prob_reg /= prob_reg.sum(1, keepdims=True)
    has = feat >= 0
    out = {}
    for name, sel in zip(GROUPS, ((labels == s_idx) & has, (labels == s_idx) & ~has, (labels != s_idx) & has,
                                  (labels != s_idx) & ~has)):
        rows = np.flatnonzero(sel)
        with_core = rows[core[rows] >= 0]
        with_feat = rows[feat[rows] >= 0]
        out[name] = {
            "n": int(rows.size),
            "acc": float((pred_img[rows] == labels[rows]).mean()) if rows.size else float("nan"),
            "img→spur": float((pred_img[rows] == s_idx).mean()) if rows.size else float("nan"),
            "core→true": float((pred_reg[core[with_core]] == labels[with_core]).mean()) if with_core.size
            else float("nan"),
            "feat→spur": float((pred_reg[feat[with_feat]] == s_idx).mean()) if with_feat.size else float("nan"),
            "p(spur|feat)": float(prob_reg[feat[with_feat], s_idx].mean()) if with_feat.size else float("nan"),
            "cos(img,core)": float(np.mean(np.sum(img[with_core] * reg[core[with_core]], 1))) if with_core.size
            else float("nan"),
            "cos(img,feat)": float(np.mean(np.sum(img[with_feat] * reg[feat[with_feat]], 1))) if with_feat.size
            else float("nan"),
        }
    return out


def _fmt(v) -> str:
    if isinstance(v, int):
        return str(v)
    return "–" if v != v else f"{v:.2f}"


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = ["| method | group | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for method, groups in results.items():
        for g, vals in groups.items():
            lines.append(f"| {method} | {g} | " + " | ".join(_fmt(vals[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, type=Path, help="a `ravl benchmark mitigate --out` folder")
    p.add_argument("--methods", nargs="+", default=["standard", "spurious-aware", "vl-gdro", "ravl"])
    p.add_argument("--split", default="val", choices=["val", "test"])
    p.add_argument("--settings", nargs="+", default=None, metavar="SETTING",
                   help="only these settings of the folder (e.g. red_square-nine-v0.95-s0); default: every valid one")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = [json.loads(x) for x in (args.work / "results.jsonl").read_text().splitlines()]
    settings = list(dict.fromkeys(r["setting"] for r in rows if r.get("valid")))
    if args.settings:
        settings = [s for s in settings if s in args.settings]
    if not settings:
        print(f"error: no valid setting in {args.work / 'results.jsonl'}", file=sys.stderr)
        return 1
    report: dict[str, dict] = {}
    for key in settings:
        meta = next(r for r in rows if r["setting"] == key)
        ds = load_dataset(args.work / key / "setting" / "eval")
        report[key] = {}
        for m in args.methods:
            ckpt = args.work / key / ("model" if m == "standard" else m)
            if not (ckpt / "config.json").exists():
                continue
            report[key][m] = analyse(ckpt, ds, meta["spurious_class"], meta["feature"], args.split)
        print(f"\n### {key} ({args.split} split)\n\n" + table(report[key]))
    mean: dict[str, dict[str, dict[str, float]]] = {}
    for m in args.methods:
        per = [report[k][m] for k in settings if m in report[k]]
        if per:
            mean[m] = {g: {c: float(np.nanmean([x[g][c] for x in per])) if c != "n" else int(sum(x[g]["n"] for x in per))
                           for c in COLUMNS} for g in GROUPS}
    print(f"\n### mean over {len(settings)} settings ({args.split} split)\n\n" + table(mean))
    if args.json:
        args.json.write_text(json.dumps({"split": args.split, "settings": report, "mean": mean}, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
