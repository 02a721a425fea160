"""How much do RaVL's spurious regions still weigh in its loss, before and after each method?

RaVL's region-aware loss (docs/algorithm.md §4) puts the regions labelled spurious only into the
denominators of L_R and L_A. This script measures, for the checkpoints of a mitigation-grid work
folder (``ravl benchmark mitigate --out DIR``), on the first ``--images`` training images of each
setting, with the RaVL labelling of that setting (``ravl/labelling.json``) and the caption
templates as class text, in eval mode and without gradients:

- ``L_R`` and ``L_A`` (τ = 0.07, as in training);
- ``share L_R`` / ``share L_A``: the mean fraction of each anchor's denominator that the spurious
  regions' terms hold (:func:`ravl.mitigation.methods.ravl.region_aware_loss`'s
  ``spurious_share_r`` / ``spurious_share_a``): the share of the loss's gradient that still
  pushes the spurious regions;
- ``p(spur | spurious region)``: the mean zero-shot probability (softmax at τ) of the setting's
  spurious class for the regions labelled spurious.

Rows: the starting weights (``start``: the checkpoint's ``init`` record), standard fine-tuning
(the audited ``model``) and each method's checkpoint.

    python benchmarks/mitigation_loss_terms.py --work runs/mitigate --methods spurious-aware ravl \\
        --json runs/loss_terms.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ravl.data import load_dataset
from ravl.data.synthetic import CAPTION_TEMPLATES
from ravl.mitigation.api import load_init_model
from ravl.mitigation.labelling import RegionLabelling
from ravl.mitigation.methods.ravl import region_aware_loss
from ravl.models import load_model
from ravl.models.checkpoint import read_checkpoint_config
from ravl.models.regions import region_batch
from ravl.zeroshot import class_text_embeddings

COLUMNS = ("L_R", "L_A", "share L_R", "share L_A", "p(spur | spurious region)")


def measure(model, train, lab: RegionLabelling, spurious_index: int, n_images: int, batch: int = 128,
            tau: float = 0.07) -> dict[str, float]:
    """The columns for one checkpoint, averaged over batches of the first ``n_images`` images."""
    module = getattr(model, "module", None)
    if module is not None:
        module.eval()
    rl = lab.region_labels
    sums = {c: [] for c in COLUMNS}
    with torch.no_grad():
        t = class_text_embeddings(model, lab.classes, CAPTION_TEMPLATES)
        for start in range(0, min(n_images, len(train)), batch):
            pos = np.arange(start, min(start + batch, n_images, len(train)))
            pixels = model.preprocess([Image.open(train.records[i].path) for i in pos])
            keep = (rl.image_index >= pos[0]) & (rl.image_index <= pos[-1])
            rows = torch.from_numpy(rl.image_index[keep] - pos[0])
            boxes = torch.cat([rows[:, None].float(), torch.from_numpy(np.asarray(rl.boxes_norm[keep])).float()], 1)
            emb = region_batch(model, pixels, boxes, mode=lab.region_mode)
            spur = torch.from_numpy(np.asarray(rl.is_spurious[keep]))
            out = region_aware_loss(emb, rows, spur, t, torch.from_numpy(lab.labels[pos]), tau=tau)
            sums["L_R"].append(float(out["region_loss"]))
            sums["L_A"].append(float(out["alignment_loss"]))
            sums["share L_R"].append(float(out["spurious_share_r"]))
            sums["share L_A"].append(float(out["spurious_share_a"]))
            if spur.any():
                e = torch.nn.functional.normalize(emb[spur], dim=-1)
                p = torch.softmax(e @ t.to(e.dtype).T / tau, dim=-1)[:, spurious_index]
                sums["p(spur | spurious region)"].append(float(p.mean()))
    return {c: float(np.nanmean(v)) if v else float("nan") for c, v in sums.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, type=Path, help="a `ravl benchmark mitigate --out` folder")
    p.add_argument("--methods", nargs="+", default=["spurious-aware", "ravl"])
    p.add_argument("--settings", nargs="+", default=None, metavar="SETTING", help="default: every valid one")
    p.add_argument("--images", type=int, default=1024, help="first training images measured per setting")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = [json.loads(x) for x in (args.work / "results.jsonl").read_text().splitlines()]
    settings = list(dict.fromkeys(r["setting"] for r in rows if r.get("valid")))
    settings = [s for s in settings if not args.settings or s in args.settings]
    if not settings:
        print(f"error: no valid setting in {args.work / 'results.jsonl'} (or none of --settings)", file=sys.stderr)
        return 1
    report: dict[str, dict[str, dict[str, float]]] = {}
    for key in settings:
        folder = args.work / key
        lab_path = folder / "ravl" / "labelling.json"
        if not lab_path.is_file():
            print(f"{key}: no RaVL labelling ({lab_path}); skipped", file=sys.stderr)
            continue
        lab = RegionLabelling.from_dict(json.loads(lab_path.read_text()))
        meta = next(r for r in rows if r["setting"] == key)
        train = load_dataset(folder / "setting" / "train").subset(lab.split)
        spurious_index = list(lab.classes).index(meta["spurious_class"])
        models = {"start": lambda: load_init_model(read_checkpoint_config(folder / "model")["init"]),
                  "standard": lambda: load_model(None, checkpoint=folder / "model")}
        for m in args.methods:
            if (folder / m / "config.json").is_file():
                models[m] = (lambda m=m: load_model(None, checkpoint=folder / m))
        report[key] = {name: measure(fn(), train, lab, spurious_index, args.images) for name, fn in models.items()}
        print(f"\n### {key}\n\n| checkpoint | " + " | ".join(COLUMNS) + " |\n|---|" + "---|" * len(COLUMNS))
        for name, vals in report[key].items():
            print(f"| {name} | " + " | ".join(f"{vals[c]:.3f}" for c in COLUMNS) + " |", flush=True)
    names = list(dict.fromkeys(n for r in report.values() for n in r))
    mean = {n: {c: float(np.nanmean([r[n][c] for r in report.values() if n in r])) for c in COLUMNS} for n in names}
    print(f"\n### mean over {len(report)} settings\n\n| checkpoint | " + " | ".join(COLUMNS) + " |\n|---|"
          + "---|" * len(COLUMNS))
    for n, vals in mean.items():
        print(f"| {n} | " + " | ".join(f"{vals[c]:.3f}" for c in COLUMNS) + " |")
    if args.json:
        args.json.write_text(json.dumps({"images": args.images, "settings": report, "mean": mean}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
