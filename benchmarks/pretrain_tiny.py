"""Rebuild the tiny CLIP's shipped pretrained weights (``--pretrained synthetic``) and measure them.

One command builds the corpus (:mod:`ravl.data.pretraining`), pretrains the tiny CLIP on it with
the recipe of :data:`ravl.training.pretrain.PRETRAIN_DEFAULTS` (resumable), compares the result
with the shipped weights, and measures on a fresh corpus (another seed) and on handwritten digits
(a controlled setting's evaluation images, the feature independent of the class):

- zero-shot accuracy of whole images, against fresh random weights;
- for every registered feature, its lift: how much more often images carrying it are called the
  class its feature-only region is closest to than images without it (no feature should be tied
  to a class before fine-tuning).

    python benchmarks/pretrain_tiny.py --out runs/pretrain            # ~20 min on 2 CPU cores
    python benchmarks/pretrain_tiny.py --out runs/pretrain --install  # replace the shipped weights
    python benchmarks/pretrain_tiny.py --out runs/pretrain --measure-only  # the shipped weights, no build

Prints a table and writes ``OUT/pretrain_tiny.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ravl.data import load_dataset
from ravl.data.features import BUILTIN_FEATURES
from ravl.data.pretraining import make_pretraining_corpus
from ravl.data.synthetic import CAPTION_TEMPLATES, make_spurious_benchmark
from ravl.models import load_model
from ravl.models.regions import embed_images, embed_regions
from ravl.models.tiny import PRETRAINED_TINY, pretrained_tiny_path
from ravl.training.pretrain import PRETRAIN_DEFAULTS, pretrain_tiny_clip
from ravl.zeroshot import class_text_embeddings


def _sha(path: Path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def measure(model, ds) -> dict:
    """Zero-shot accuracy and, per registered feature, its lift: how much more often images carrying
    it are called the class its feature-only region is closest to than images without it (images of
    that class left out). A feature tied to a class would have a large lift."""
    classes = list(ds.classes)
    t = class_text_embeddings(model, classes, CAPTION_TEMPLATES).numpy()
    labels = np.array([classes.index(r.label) for r in ds])
    pred = (embed_images(model, ds, progress=False) @ t.T).argmax(1)
    reg = embed_regions(model, ds, mode="masked", progress=False)
    table = ds.region_table()
    attrs = np.array(table.attributes)
    lifts = {}
    for name in BUILTIN_FEATURES:
        rows = np.flatnonzero(attrs == name)
        if not rows.size:
            continue
        c = int(np.bincount((reg[rows] @ t.T).argmax(1), minlength=len(classes)).argmax())
        has = np.zeros(len(ds), bool)
        has[table.image_index[rows]] = True
        other = labels != c
        lift = float((pred[has & other] == c).mean() - (pred[~has & other] == c).mean())
        lifts[name] = {"class": classes[c], "lift": lift, "n_with": int((has & other).sum())}
    return {"zero_shot_accuracy": float((pred == labels).mean()), "feature_lift": lifts}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="work folder (corpus, training run, weights)")
    p.add_argument("--install", action="store_true", help="copy the weights into the package (ravl/models/pretrained)")
    p.add_argument("--measure-only", action="store_true", help="measure the shipped weights, build nothing")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.install and args.measure_only:
        print("error: --install needs a build; drop --measure-only", file=sys.stderr)
        return 2
    shipped = pretrained_tiny_path("synthetic")
    t0 = time.monotonic()
    weights = shipped if args.measure_only else pretrain_tiny_clip(args.out, **PRETRAIN_DEFAULTS)
    build_s = time.monotonic() - t0
    same = _sha(weights) == _sha(shipped)
    fresh_corpus = load_dataset(make_pretraining_corpus(args.out / "fresh-corpus", n_images=1000,
                                                        random_state=12345, progress=False))
    setting = make_spurious_benchmark(args.out / "handwritten", feature="red_square", cramers_v=0.0, n_train=200,
                                      n_eval=1000, random_state=0, progress=False)
    handwritten = load_dataset(setting.eval_dir)
    models = {"fresh weights (seed 0)": load_model("tiny", seed=0),
              "pretrained (shipped)" if args.measure_only else "pretrained (this build)":
              load_model("tiny", checkpoint=weights)}
    report = {"recipe": PRETRAIN_DEFAULTS, "build_seconds": round(build_s, 1), "weights_sha256": _sha(weights),
              "shipped_sha256": _sha(shipped), "identical_to_shipped": same, "models": {}}
    print("| model | zero-shot: printed digits (fresh corpus) | zero-shot: handwritten digits | feature lift: printed "
          "| feature lift: handwritten |")
    print("|---|---|---|---|---|")
    for name, model in models.items():
        a, b = measure(model, fresh_corpus), measure(model, handwritten)
        report["models"][name] = {"printed": a, "handwritten": b}
        lifts = [", ".join(f"{f} {v['lift']:+.3f} ({v['class']})" for f, v in x["feature_lift"].items()) for x in (a, b)]
        print(f"| {name} | {a['zero_shot_accuracy']:.3f} | {b['zero_shot_accuracy']:.3f} | {lifts[0]} | {lifts[1]} |")
    if not args.measure_only:
        print(f"\nbuilt in {build_s:.0f} s; identical to the shipped weights: {same}")
    if args.install:
        dest = shipped.parent / PRETRAINED_TINY["synthetic"]
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(weights, tmp)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        print(f"installed {dest}")
    (args.out / "pretrain_tiny.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out / 'pretrain_tiny.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
