"""Throughput of full-size open_clip models in ravl: images, regions per mode, training steps.

For each architecture (default open_clip RN50 and ViT-B-16, random weights, 224 px):

* **images/s** of bare ``encode_image`` on preprocessed pixels (no grad, eval mode);
* **roi images/s**: ``encode_roi`` on the same pixels with 4 (and 9) boxes per image, and its
  ratio to bare ``encode_image`` (target: >= 0.8 at 4 boxes, i.e. region pooling costs at most
  a quarter of a backbone pass);
* **regions/s** of :func:`ravl.models.regions.embed_regions` per mode (``masked``, ``crop``,
  ``roi``) at 4 and 9 regions per image, from PIL images (so preprocessing is included), next
  to :func:`~ravl.models.regions.embed_images` images/s;
* **training images/s** of a standard fine-tuning step (symmetric InfoNCE on image-caption pairs,
  :class:`ravl.training.loop.ContrastiveObjective`) and of a RaVL mitigation step
  (:class:`ravl.mitigation.methods.ravl.RegionAwareObjective`, CLIP loss + region-aware loss over
  ``--train-regions`` regions per image, the C x K class prompts encoded with gradients), in
  ``roi`` and ``masked`` region modes; forward + backward + AdamW step, train mode. Target: RaVL
  step <= 1.5x the standard step. Because the class prompts are a fixed per-step cost (10 classes
  x ``--templates`` texts) that small CPU batches cannot amortise, the table also times the
  standard step plus the class prompts alone, and the RaVL step against that (the region part).
  ``RaVL roi`` takes the images and their regions from one ``encode_image_and_roi`` pass (what
  mitigation does); ``RaVL roi_two_pass`` embeds the regions in a second backbone pass.

Every figure is the median of ``--repeats`` timed repeats after one warm-up; ratios are taken
inside each repeat (the compared runs are interleaved), so background load affects both sides.

    python benchmarks/real_models.py                        # 20-40 min on 2 busy CPU cores
    python benchmarks/real_models.py --archs RN50 --repeats 5 --batch 16 --train-batch 16
    python benchmarks/real_models.py --device cuda --batch 64 --train-batch 64 --images 256

Writes ``benchmarks/results/real_models-<time>.json`` (git-ignored) unless ``--out`` is given; the
JSON records the machine (CPUs, torch threads, load average).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def make_images(n: int, seed: int) -> list[Image.Image]:
    """Photo-like sizes (4:3 and 3:4, larger than 224 px) so resize and centre crop do real work."""
    rng = np.random.default_rng(seed)
    sizes = [(320, 240), (240, 320), (300, 300)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in
            (sizes[k % len(sizes)] for k in range(n))]


def grid_boxes(w: int, h: int, k: int) -> list[list[float]]:
    """``k`` = 4 (2x2) or 9 (3x3) grid cells of a ``w x h`` image, in pixels."""
    side = int(round(k ** 0.5))
    return [[c * w / side, r * h / side, (c + 1) * w / side, (r + 1) * h / side]
            for r in range(side) for c in range(side)]


def norm_grid(k: int) -> torch.Tensor:
    side = int(round(k ** 0.5))
    return torch.tensor([[c / side, r / side, (c + 1) / side, (r + 1) / side] for r in range(side) for c in range(side)])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def bench_encoders(model, images, batch: int, repeats: int) -> dict:
    """Bare encode_image vs encode_roi (4 and 9 boxes per image) on the same preprocessed pixels."""
    dev = model.device
    px = model.preprocess(images[:batch]).to(dev)
    n = px.shape[0]
    rois = {k: torch.cat([torch.cat([torch.full((k, 1), float(i)), norm_grid(k)], 1) for i in range(n)]).to(dev)
            for k in (4, 9)}
    with torch.no_grad():
        model.encode_image(px)
        for k in rois:
            model.encode_roi(px, rois[k])
        img, roi = [], {k: [] for k in rois}
        for _ in range(repeats):
            img.append(n / timed(lambda: model.encode_image(px), dev))
            for k in rois:
                roi[k].append(n / timed(lambda k=k: model.encode_roi(px, rois[k]), dev))
    out = {"encode_image_images_per_s": statistics.median(img)}
    for k in rois:
        out[f"encode_roi_{k}_images_per_s"] = statistics.median(roi[k])
        out[f"encode_roi_{k}_ratio"] = statistics.median(r / i for r, i in zip(roi[k], img))
    return out


def bench_pipeline(model, images, batch: int, repeats: int) -> dict:
    """embed_images and embed_regions per mode (PIL in, preprocessing included)."""
    from ravl.exceptions import RavlWarning
    from ravl.models.regions import REGION_MODES, embed_images, embed_regions

    out: dict[str, float] = {}
    runs: dict[str, list[float]] = {}
    boxes = {k: [grid_boxes(im.width, im.height, k) for im in images] for k in (4, 9)}
    n = len(images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RavlWarning)  # grid cells of 4:3 images are cut by the crop
        # warm-up of every call at full batch size (kernel selection for new shapes costs seconds)
        embed_images(model, images[:batch], batch_size=batch, progress=False)
        for k in (4, 9):
            for mode in REGION_MODES:
                embed_regions(model, images[:batch], boxes=boxes[k][:batch], mode=mode, batch_size=batch,
                              progress=False)
        for _ in range(repeats):
            runs.setdefault("embed_images", []).append(
                n / timed(lambda: embed_images(model, images, batch_size=batch, progress=False), model.device))
            for k in (4, 9):
                for mode in REGION_MODES:
                    t = timed(lambda: embed_regions(model, images, boxes=boxes[k], mode=mode, batch_size=batch,
                                                    progress=False), model.device)
                    runs.setdefault(f"{mode}_{k}", []).append(n * k / t)
    out["embed_images_images_per_s"] = statistics.median(runs["embed_images"])
    for k in (4, 9):
        for mode in REGION_MODES:
            out[f"embed_regions_{mode}_{k}_regions_per_s"] = statistics.median(runs[f"{mode}_{k}"])
    return out


def bench_training(model, images, train_batch: int, repeats: int, regions: int, n_templates: int,
                   ravl_steps=("roi", "roi_two_pass", "masked")) -> dict:
    """Standard contrastive step vs RaVL step (roi and masked), forward + backward + AdamW."""
    from ravl.mitigation.labelling import RegionLabels
    from ravl.mitigation.methods.ravl import RegionAwareObjective
    from ravl.training.loop import ContrastiveObjective
    from ravl.zeroshot import class_text_embeddings

    dev = model.device
    b = train_batch
    px = model.preprocess(images[:b]).to(dev)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(WORDS), size=b)
    tokens = model.tokenize([f"the number is a {WORDS[y]}" for y in labels]).to(dev)
    k = regions
    region_labels = RegionLabels(np.repeat(np.arange(b), k), np.tile(norm_grid(k).numpy(), (b, 1)),
                                 np.tile(np.arange(k) == 0, b))
    templates = ["a photo of the number {}", "the digit {}", "an image of a {}", "{}"][:n_templates]
    standard = ContrastiveObjective()

    def with_prompts(model, batch):
        # The standard step plus what RaVL adds besides regions: the class prompts, encoded with gradients.
        out = standard(model, batch)
        prompts = class_text_embeddings(model, WORDS, templates, grad=True)
        return {"loss": out["loss"] + 0.0 * prompts.sum()}

    objectives = {"standard": standard, "standard_prompts": with_prompts}
    for mode in ("roi", "masked"):
        objectives[f"ravl_{mode}"] = RegionAwareObjective(region_labels, labels, class_names=WORDS,
                                                          templates=templates, region_mode=mode, lam=1.0)
    if hasattr(model, "encode_image_and_roi"):
        # RegionAwareObjective takes roi regions and images from one encode_image_and_roi pass;
        # this variant embeds the regions in a second pass (encode_roi), as a model without it would.
        objectives["ravl_roi_two_pass"] = RegionAwareObjective(
            region_labels, labels, class_names=WORDS, templates=templates, region_mode="roi", lam=1.0,
            region_embedder=lambda m, px, boxes, mode: m.encode_roi(px, boxes))
    objectives = {k: v for k, v in objectives.items() if not k.startswith("ravl_") or k[5:] in ravl_steps}
    batch = {"pixels": px, "tokens": tokens, "indices": torch.arange(b), "labels": torch.as_tensor(labels)}
    opt = torch.optim.AdamW([p for p in model.module.parameters() if p.requires_grad], lr=1e-6)
    model.module.train()

    def step(obj) -> None:
        loss = obj(model, batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    try:
        for obj in objectives.values():
            step(obj)  # warm-up
        runs: dict[str, list[float]] = {name: [] for name in objectives}
        for _ in range(repeats):
            for name, obj in objectives.items():
                runs[name].append(b / timed(lambda obj=obj: step(obj), dev))
    finally:
        model.module.eval()
    out = {f"train_{name}_images_per_s": statistics.median(r) for name, r in runs.items()}
    for name in objectives:
        if name != "standard":
            out[f"train_{name}_slowdown"] = statistics.median(s / r for s, r in zip(runs["standard"], runs[name]))
        if name.startswith("ravl_"):  # the region part alone: RaVL step vs standard step + class prompts
            out[f"train_{name}_vs_prompts"] = statistics.median(
                s / r for s, r in zip(runs["standard_prompts"], runs[name]))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=["RN50", "ViT-B-16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=8, help="images for the region-mode pipeline runs")
    p.add_argument("--batch", type=int, default=8, help="images per forward (encoders and pipeline)")
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--train-regions", type=int, default=4, help="labelled regions per training image")
    p.add_argument("--templates", type=int, default=4, help="class-prompt templates of the RaVL objective (1-4)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--skip", nargs="*", default=[], choices=["encoders", "pipeline", "training"])
    p.add_argument("--ravl-steps", nargs="+", default=["roi", "roi_two_pass", "masked"],
                   choices=["roi", "roi_two_pass", "masked"], help="RaVL training steps to time (large train batches: "
                                                                 "masked costs a pass per region)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all CPUs)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    from ravl.models import load_model
    from ravl.utils.io import atomic_write_json

    if args.threads:
        torch.set_num_threads(args.threads)
    images = make_images(args.images, 0)
    results = {}
    for arch in args.archs:
        t0 = time.perf_counter()
        model = load_model(f"open_clip:{arch}", device=args.device)
        r: dict[str, float] = {}
        if "encoders" not in args.skip:
            r.update(bench_encoders(model, images, args.batch, args.repeats))
        if "pipeline" not in args.skip:
            r.update(bench_pipeline(model, images, args.batch, args.repeats))
        if "training" not in args.skip:
            r.update(bench_training(model, images, args.train_batch, args.repeats, args.train_regions, args.templates,
                                    ravl_steps=tuple(args.ravl_steps)))
        r["seconds"] = time.perf_counter() - t0
        results[arch] = r
        del model

    for arch, r in results.items():
        print(f"\nopen_clip:{arch} ({args.device}, batch {args.batch}, train batch {args.train_batch}, "
              f"{args.repeats} repeats, {r['seconds']:.0f} s)")
        rows = []
        if "encode_image_images_per_s" in r:
            rows.append(("encode_image", f"{r['encode_image_images_per_s']:.1f} images/s", ""))
            for k in (4, 9):
                rows.append((f"encode_roi, {k} boxes/image", f"{r[f'encode_roi_{k}_images_per_s']:.1f} images/s",
                             f"{r[f'encode_roi_{k}_ratio']:.2f}x encode_image" + (" (target >= 0.8)" if k == 4 else "")))
        if "embed_images_images_per_s" in r:
            rows.append(("embed_images (PIL in)", f"{r['embed_images_images_per_s']:.1f} images/s", ""))
            for k in (4, 9):
                for mode in ("masked", "crop", "roi"):
                    v = r[f"embed_regions_{mode}_{k}_regions_per_s"]
                    rows.append((f"embed_regions {mode}, {k}/image", f"{v:.1f} regions/s",
                                 f"{v / k / r['embed_images_images_per_s']:.2f}x embed_images (images/s)"))
        if "train_standard_images_per_s" in r:
            rows.append(("train step, standard", f"{r['train_standard_images_per_s']:.2f} images/s", ""))
            rows.append(("train step, standard + class prompts", f"{r['train_standard_prompts_images_per_s']:.2f} "
                         "images/s", f"{r['train_standard_prompts_slowdown']:.2f}x the standard step's time"))
            for mode in ("roi", "roi_two_pass", "masked"):
                if f"train_ravl_{mode}_images_per_s" not in r:
                    continue
                rows.append((f"train step, RaVL {mode}", f"{r[f'train_ravl_{mode}_images_per_s']:.2f} images/s",
                             f"{r[f'train_ravl_{mode}_slowdown']:.2f}x the standard step's time"
                             + (" (target <= 1.5)" if mode == "roi" else "")
                             + f"; {r[f'train_ravl_{mode}_vs_prompts']:.2f}x standard + prompts"))
        w = max(len(a) for a, _, _ in rows)
        for a, b, c in rows:
            print(f"  {a:<{w}}  {b:>18}  {c}")
    out = Path(args.out) if args.out else Path("benchmarks/results") / f"real_models-{time.strftime('%Y%m%d-%H%M%S')}.json"
    atomic_write_json(out, {"args": vars(args), "results": results,
                            "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                        "torch": torch.__version__, "platform": platform.platform(),
                                        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None}})
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
