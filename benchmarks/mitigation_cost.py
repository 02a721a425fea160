"""What does a RaVL mitigation epoch cost against a standard one, and what do the cheaper variants lose?

On synthetic settings (:func:`ravl.make_spurious_benchmark`), Stage 1 as in ``ravl benchmark
mitigate``: the tiny CLIP fine-tuned from its seeded initialisation (the audited model, also the
``standard`` row), RaVL discovery on the evaluation ``val`` split, and the training regions
labelled **once** with the audited model (``label_regions``; every variant below reuses that
labelling, as ``ravl benchmark mitigate`` does across methods).

**Cost** (first setting and seed): every variant trains 1 epoch from the initialisation through
:func:`ravl.mitigation.mitigate` with the region terms on from the first step (no warm-up), so the
timed epoch is a RaVL epoch; the seconds are ``finetune``'s own per-epoch training time (steps
only: no image loading, validation or checkpoint writing). Variants are interleaved within each
repeat, so a load change on the machine hits all of them; medians over the repeats and the ratio
to the standard epoch of the same run.

**Quality** (``--quality``): every variant trains the full recipe (as ``ravl mitigate``: warm-up
epoch included) and is scored zero-shot on the evaluation **val** split (never test): Image /
Region Overall and Worst-Group; per setting and seed, and the mean over them with the paired
difference to masked RaVL (the default).

    python benchmarks/mitigation_cost.py --out runs/cost                    # cost only, 1 setting
    python benchmarks/mitigation_cost.py --out runs/cost --quality \\
        --settings red_square/nine stripes/three --seeds 0 1 2 --json runs/cost/result.json
    python benchmarks/mitigation_cost.py --out runs/cost --merge runs/cost/a.json runs/cost/b.json  # one table

Variants: ``standard``; ``masked`` (RaVL's default: one encoder pass per labelled region);
``roi`` (``train_region_mode="roi"``: regions pooled from the CLIP pass's own feature map,
``encode_image_and_roi``); ``masked-rN`` (``region_images=N``: the masked region terms on the
first N images of each batch only); ``masked-sN`` (the same with the batch's images that have a
spurious region first).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

#: variant -> (method, RegionAwareConfig fields)
VARIANTS = {
    "standard": ("standard", {}),
    "masked": ("ravl", {}),
    "roi": ("ravl", {"train_region_mode": "roi"}),
    "masked-r32": ("ravl", {"region_images": 32}),
    "masked-r16": ("ravl", {"region_images": 16}),
    "masked-s16": ("ravl", {"region_images": 16, "region_image_choice": "spurious"}),
    "crop28": ("ravl", {"train_region_mode": "crop", "train_region_size": 28}),
    "masked28": ("ravl", {"train_region_size": 28}),
    "crop20": ("ravl", {"train_region_mode": "crop", "train_region_size": 20}),
    "crop28-r64": ("ravl", {"train_region_mode": "crop", "train_region_size": 28, "region_images": 64}),
}
METRICS = ("Image Overall", "Image Worst-Group", "Region Overall", "Region Worst-Group")


def stage1(work: Path, feature: str, spurious_class: str, seed: int, args):
    """Setting, audited model, discovery on eval val and the labelling (each cached in ``work``)."""
    from ravl.benchmarks.grid import grid_init_record
    from ravl.data.dataset import load_dataset
    from ravl.data.synthetic import CAPTION_TEMPLATES, make_spurious_benchmark
    from ravl.discovery.pipeline import discover_on_inputs, discovery_inputs
    from ravl.discovery.result import DiscoveryResult
    from ravl.mitigation.labelling import RegionLabelling, label_regions
    from ravl.models.base import load_model
    from ravl.training.loop import FinetuneConfig, finetune

    setting = make_spurious_benchmark(work / "setting", spurious_class=spurious_class, feature=feature,
                                      cramers_v=args.cramers_v, n_train=args.n_train, n_eval=args.n_eval,
                                      random_state=seed, progress=False)
    cfg = FinetuneConfig(epochs=args.epochs, batch_size=args.batch_size, seed=seed)
    audited = work / "model"
    init = grid_init_record(args.init, seed)
    model = load_model(init["model"], **{k: v for k, v in init.items() if k != "model"})
    finetune(model, load_dataset(setting.train_dir), audited, cfg, progress=False, init=init)
    ev = load_dataset(setting.eval_dir)
    dpath = work / "discovery.json"
    if not dpath.exists():
        inputs = discovery_inputs(model, ev, split="val", templates=CAPTION_TEMPLATES, progress=False)
        discover_on_inputs(inputs, random_state=seed, progress=False,
                           meta={"model": "tiny", "checkpoint": str(audited.resolve()),
                                 "data": str(Path(setting.eval_dir).resolve()), "split": "val"}).to_json(dpath)
    lpath = work / "labelling.json"
    train = load_dataset(setting.train_dir)
    if lpath.exists():
        labelling = RegionLabelling.from_dict(json.loads(lpath.read_text()))
    else:
        t = time.perf_counter()
        labelling = label_regions(load_model(None, checkpoint=audited), train, DiscoveryResult.from_json(dpath),
                                  split=cfg.train_split, progress=False)
        lpath.write_text(json.dumps(labelling.to_dict()))
        print(f"  labelling (once per setting): {time.perf_counter() - t:.1f} s", flush=True)
    return setting, cfg, audited, dpath, train, ev, labelling


def run_variant(name: str, out: Path, s1, *, epochs: int | None = None, warmup: int | None = None):
    from ravl.data.synthetic import CAPTION_TEMPLATES
    from ravl.mitigation import MitigationOptions, mitigate

    setting, cfg, audited, dpath, train, ev, labelling = s1
    method, fields = VARIANTS[name]
    mcfg = dict(fields)
    if method == "ravl" and warmup is not None:
        mcfg["warmup_epochs"] = warmup
    return mitigate(audited, train, dpath, out_dir=out, method=method, start="init",
                    config=replace(cfg, epochs=epochs or cfg.epochs),
                    options=MitigationOptions(templates=tuple(CAPTION_TEMPLATES)),
                    method_config=mcfg if method == "ravl" else None, labelling=labelling,
                    allow_empty_labelling=True, progress=False, resume=epochs is None)


def val_metrics(ckpt: Path, ev, feature: str) -> dict:
    from ravl.data.synthetic import CAPTION_TEMPLATES
    from ravl.evaluation.metrics import evaluate
    from ravl.models.base import load_model

    path = ckpt / "val_eval.json"
    if path.exists():
        return json.loads(path.read_text())
    ev_res = evaluate(load_model(None, checkpoint=ckpt), ev, split="val", templates=CAPTION_TEMPLATES,
                      spurious_feature=feature, progress=False)
    m = {k: v for k, v in ev_res.summary_metrics().items() if k in METRICS}
    path.write_text(json.dumps(m))
    return m


def cost(work: Path, s1, variants, repeats: int) -> dict:
    seconds = {v: [] for v in variants}
    for r in range(repeats):
        for v in variants:
            res = run_variant(v, work / "cost" / v, s1, epochs=1, warmup=0)
            seconds[v].append(res.history[0]["seconds"])
        print(f"  repeat {r + 1}: " + "  ".join(f"{v} {seconds[v][-1]:.1f}s" for v in variants), flush=True)
    med = {v: statistics.median(s) for v, s in seconds.items()}
    ref = med.get("standard")
    return {v: {"seconds": seconds[v], "median_s": med[v], "ratio_vs_standard": med[v] / ref if ref else None}
            for v in variants}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="work folder (settings, checkpoints; reused when rerun)")
    p.add_argument("--settings", nargs="+", default=["red_square/nine"], help="FEATURE/CLASS ...")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--n-train", type=int, default=3000)
    p.add_argument("--n-eval", type=int, default=1000)
    p.add_argument("--cramers-v", type=float, default=0.95)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--init", choices=["scratch", "pretrained"], default="scratch",
                   help="start of the audited fine-tuning and of every variant (as `ravl benchmark mitigate --init`)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per variant (cost)")
    p.add_argument("--no-cost", action="store_true", help="skip the timing")
    p.add_argument("--quality", action="store_true", help="train every variant fully and score it on eval val")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the results as JSON to this file")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="only print (and with --json write) the tables of several earlier --json files together")
    args = p.parse_args(argv)
    if args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge]
        merged = {**parts[0], "cost": next((r["cost"] for r in parts if r["cost"]), None),
                  "quality": list({(q["setting"], q["seed"], q["variant"]): q
                                   for r in parts for q in r["quality"]}.values())}   # a row given twice: the last
        if args.json:
            Path(args.json).write_text(json.dumps(merged, indent=2) + "\n")
        report(merged)
        return 0
    if not args.out:
        p.error("--out is required (except with --merge)")
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAVL_PROGRESS", "0")
    import torch

    torch.set_num_threads(args.threads)
    if "standard" not in args.variants:
        args.variants.insert(0, "standard")
    out = Path(args.out)
    results = {"n_train": args.n_train, "n_eval": args.n_eval, "epochs": args.epochs, "batch_size": args.batch_size,
               "init": args.init,
               "cramers_v": args.cramers_v, "threads": args.threads, "cpus": os.cpu_count(),
               "torch": torch.__version__, "cost": None, "quality": []}
    for si, spec in enumerate(args.settings):
        feature, cls = spec.split("/")
        for seed in args.seeds:
            key = f"{feature}-{cls}-s{seed}"
            print(f"{key}: stage 1", flush=True)
            s1 = stage1(out / key, feature, cls, seed, args)
            if not args.no_cost and results["cost"] is None:
                print(f"{key}: cost, {args.repeats} repeats", flush=True)
                results["cost"] = {"setting": key, "n_train_images": len(s1[4].subset(s1[1].train_split)),
                                   "variants": cost(out / key, s1, args.variants, args.repeats)}
            if args.quality:
                for v in args.variants:
                    t = time.perf_counter()
                    ckpt = s1[2] if v == "standard" else out / key / v
                    if v != "standard" and not (ckpt / "val_eval.json").exists():  # scored runs are reused
                        run_variant(v, ckpt, s1)
                    m = val_metrics(ckpt, s1[5], feature)
                    results["quality"].append({"setting": f"{feature}/{cls}", "seed": seed, "variant": v, **m,
                                               "train_s": round(time.perf_counter() - t, 1)})
                    print(f"  {v:<11} " + "  ".join(f"{k} {m[k]:.3f}" for k in METRICS), flush=True)
            if args.json:
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    report(results)
    return 0


def report(results: dict) -> None:
    c = results["cost"]
    if c:
        print(f"\nCost per epoch ({c['setting']}, {c['n_train_images']} training images, batch "
              f"{results['batch_size']}, {results['threads']} thread(s)); median of the repeats:")
        print(f"{'variant':<12}{'median s':>10}{'x standard':>12}   repeats")
        for v, r in c["variants"].items():
            print(f"{v:<12}{r['median_s']:>10.2f}{r['ratio_vs_standard']:>12.2f}   "
                  + " ".join(f"{s:.1f}" for s in r["seconds"]))
    rows = results["quality"]
    if rows:
        print("\nQuality on the evaluation val split (mean over settings x seeds; paired difference to masked):")
        print(f"{'variant':<12}" + "".join(f"{k:>20}" for k in METRICS) + f"{'n':>4}")
        ref = {(r["setting"], r["seed"]): r for r in rows if r["variant"] == "masked"}
        for v in dict.fromkeys(r["variant"] for r in rows):
            rs = [r for r in rows if r["variant"] == v]
            cells = ""
            for k in METRICS:
                mean = statistics.fmean(r[k] for r in rs)
                d = [r[k] - ref[(r["setting"], r["seed"])][k] for r in rs if (r["setting"], r["seed"]) in ref]
                cells += f"{mean:>10.3f} ({statistics.fmean(d):+.3f})" if d else f"{mean:>20.3f}"
            print(f"{v:<12}{cells}{len(rs):>4}")


if __name__ == "__main__":
    sys.exit(main())
