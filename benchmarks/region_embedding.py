"""Region-embedding throughput per mode, and training-step throughput, for one model.

Usage::

    python benchmarks/region_embedding.py                  # tiny CLIP, CPU, about a minute
    python benchmarks/region_embedding.py --device cuda --images 2048 --out results.json

Region embedding: ``--images`` synthetic 56x56 images (a bright 28x28 square in one quadrant),
``--regions`` boxes per image (the 2x2 quadrant grid by default), embedded with
:func:`ravl.models.regions.embed_regions` in every mode. The modes are run interleaved inside
each repeat and the ratio against ``masked`` is taken within the repeat, so background load on
a shared machine affects all modes alike; the table shows medians over repeats.

Training step: forward and backward of the symmetric InfoNCE loss (written inline here) plus an
AdamW step, on a batch of ``--train-batch`` image-caption pairs, in train mode; images/s is the
median over ``--train-steps`` timed steps after two warm-up steps.

Results go to ``benchmarks/results/region_embedding-<timestamp>.json`` (git-ignored) unless
``--out`` is given. The JSON records the machine (CPU count, torch threads, load average) so
numbers from a busy machine can be recognised.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ravl.models import load_model
from ravl.models.regions import REGION_MODES, embed_images, embed_regions
from ravl.utils.io import atomic_write_json

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def make_images(n: int, size: int, seed: int) -> tuple[list[Image.Image], list[str]]:
    rng = np.random.default_rng(seed)
    half = size // 2
    images, captions = [], []
    for _ in range(n):
        a = np.zeros((size, size, 3), np.uint8)
        q = rng.integers(4)
        y0, x0 = (q // 2) * half, (q % 2) * half
        a[y0:y0 + half, x0:x0 + half] = rng.integers(0, 256, (half, half, 1))
        images.append(Image.fromarray(a))
        captions.append(f"the number is a {WORDS[rng.integers(10)]}")
    return images, captions


def quadrant_boxes(size: int, k: int) -> list[list[float]]:
    half = size / 2
    grid = [[0, 0, half, half], [half, 0, size, half], [0, half, half, size], [half, half, size, size]]
    return [grid[i % 4] for i in range(k)]


def bench_regions(model, images, boxes, repeats: int, batch_size: int) -> dict:
    n_regions = sum(len(b) for b in boxes)
    for mode in REGION_MODES:  # warm-up (allocations, kernel selection)
        embed_regions(model, images[:8], boxes=boxes[:8], mode=mode, batch_size=batch_size, progress=False)
    rates: dict[str, list[float]] = {m: [] for m in REGION_MODES}
    ratios: dict[str, list[float]] = {m: [] for m in REGION_MODES}
    for _ in range(repeats):
        this = {}
        for mode in REGION_MODES:
            t0 = time.perf_counter()
            embed_regions(model, images, boxes=boxes, mode=mode, batch_size=batch_size, progress=False)
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            this[mode] = n_regions / (time.perf_counter() - t0)
            rates[mode].append(this[mode])
        for mode in REGION_MODES:
            ratios[mode].append(this[mode] / this["masked"])
    return {mode: {"regions_per_s_median": statistics.median(rates[mode]),
                   "regions_per_s_runs": [round(r, 1) for r in rates[mode]],
                   "ratio_vs_masked_median": statistics.median(ratios[mode])} for mode in REGION_MODES}


def bench_images(model, images, repeats: int, batch_size: int) -> float:
    embed_images(model, images[:8], progress=False)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        embed_images(model, images, batch_size=batch_size, progress=False)
        rates.append(len(images) / (time.perf_counter() - t0))
    return statistics.median(rates)


def bench_training(model, images, captions, batch: int, steps: int) -> dict:
    module = model.module
    module.train()
    dev = model.device
    px = model.preprocess(images[:batch]).to(dev)
    tokens = model.tokenize(captions[:batch]).to(dev)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    target = torch.arange(px.shape[0], device=dev)

    def step() -> None:
        img = F.normalize(model.encode_image(px), dim=-1)
        txt = F.normalize(model.encode_text(tokens), dim=-1)
        logits = model.logit_scale() * img @ txt.T
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    module.eval()
    med = statistics.median(times)
    return {"batch": int(px.shape[0]), "seconds_per_step_median": med, "images_per_s_median": px.shape[0] / med,
            "images_per_s_runs": [round(px.shape[0] / t, 1) for t in times]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch CPU threads")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--regions", type=int, default=4, help="boxes per image")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON output path")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    os.environ.setdefault("RAVL_PROGRESS", "0")
    model = load_model(args.model if args.checkpoint is None else None, checkpoint=args.checkpoint,
                       device=args.device)
    size = model.image_size[0]
    images, captions = make_images(max(args.images, args.train_batch), size, args.seed)
    region_images = images[:args.images]
    boxes = [quadrant_boxes(size, args.regions) for _ in region_images]
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None

    t_all = time.perf_counter()
    regions = bench_regions(model, region_images, boxes, args.repeats, args.batch_size)
    image_rate = bench_images(model, region_images, args.repeats, args.batch_size)
    training = bench_training(model, images, captions, args.train_batch, args.train_steps)
    elapsed = time.perf_counter() - t_all

    result = {
        "benchmark": "region_embedding",
        "model": model.name, "checkpoint": args.checkpoint, "device": str(model.device),
        "params": sum(p.numel() for p in model.module.parameters()),
        "images": len(region_images), "regions_per_image": args.regions, "repeats": args.repeats,
        "batch_size": args.batch_size,
        "regions": regions, "image_embedding_images_per_s_median": image_rate, "training_step": training,
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": platform.python_version(),
                    "platform": platform.platform(), "load_average_before": load_before,
                    "load_average_after": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "elapsed_s": elapsed, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    print(f"{model.name} on {model.device}, {torch.get_num_threads()} thread(s), {len(region_images)} images x "
          f"{args.regions} regions, median of {args.repeats}")
    print(f"{'mode':<8} {'regions/s':>10} {'vs masked':>10}")
    for mode in REGION_MODES:
        r = regions[mode]
        print(f"{mode:<8} {r['regions_per_s_median']:>10.0f} {r['ratio_vs_masked_median']:>9.2f}x")
    print(f"whole images: {image_rate:.0f} images/s")
    print(f"training step (batch {training['batch']}, fwd+bwd InfoNCE + AdamW): "
          f"{training['images_per_s_median']:.0f} images/s")
    if load_before is not None and load_before[0] > 0.5 * (os.cpu_count() or 1):
        print(f"note: load average was {load_before[0]:.2f} before the run; numbers may be low.")
    out = Path(args.out) if args.out else (Path(__file__).resolve().parent / "results"
                                           / f"region_embedding-{time.strftime('%Y%m%d-%H%M%S')}.json")
    atomic_write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
