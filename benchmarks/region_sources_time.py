"""How long do the superpixel region sources take, and what do the cache and the workers save?

Builds a dataset of natural-looking 640x480 JPEGs (scikit-image's sample photographs, cropped and
flipped so every image differs; no download), then times, for each source: segmenting every image
with 1 worker and with ``--workers`` workers (no cache), a first call that fills the cache, a
second call served by it (content keys: every image file is hashed) and the same with
``cache_key="stat"``. Prints a table and writes JSON.

    python benchmarks/region_sources_time.py                      # 40 images, slic:16 and felzenszwalb
    python benchmarks/region_sources_time.py --images 200 --workers 4 --out region_sources_time.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_images(root: Path, n: int) -> Path:
    from skimage import data

    from ravl.data.dataset import write_metadata

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry()]
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        src = Image.fromarray(photos[i % len(photos)]).resize((700, 525))
        dx, dy = (i * 7) % 60, (i * 5) % 45
        img = src.crop((dx, dy, dx + 640, dy + 480))
        if (i // len(photos)) % 2:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        img.save(root / "images" / f"{i:04d}.jpg", quality=90)
        rows.append({"file_name": f"images/{i:04d}.jpg", "label": "x"})
    write_metadata(root, rows)
    return root


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--sources", nargs="+", default=["slic:16", "felzenszwalb"])
    p.add_argument("--out", default=None, help="also write the results as JSON to this file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAVL_PROGRESS", "0")
    from ravl.data import load_dataset
    from ravl.data.region_sources import region_boxes

    results = {"images": args.images, "size": "640x480", "workers": args.workers, "cpus": os.cpu_count(),
               "sources": {}}
    with tempfile.TemporaryDirectory() as tmp:
        ds = load_dataset(make_images(Path(tmp) / "d", args.images))
        region_boxes(ds.subset(indices=[0]), args.sources[0], cache=False, workers=1)  # imports, warm-up
        for spec in args.sources:
            cache = Path(tmp) / f"cache-{spec.replace(':', '_')}"
            t1, one = timed(lambda: region_boxes(ds, spec, cache=False, workers=1))
            tw, many = timed(lambda: region_boxes(ds, spec, cache=False, workers=args.workers))
            assert one == many, "results differ with the number of workers"
            tf, _ = timed(lambda: region_boxes(ds, spec, cache_dir=cache, workers=args.workers))
            th, hit = timed(lambda: region_boxes(ds, spec, cache_dir=cache, workers=args.workers))
            region_boxes(ds, spec, cache_dir=cache, cache_key="stat", workers=args.workers)
            ts, _ = timed(lambda: region_boxes(ds, spec, cache_dir=cache, cache_key="stat", workers=args.workers))
            assert hit == one
            results["sources"][spec] = {
                "s_per_image_1_worker": t1 / args.images, f"s_per_image_{args.workers}_workers": tw / args.images,
                "first_call_s": tf, "cache_hit_s": th, "cache_hit_stat_s": ts, "speedup_cache": tf / th,
                "regions_per_image": float(np.mean([len(b) for b in one]))}
    print(f"{args.images} images of 640x480, {os.cpu_count()} CPU(s)")
    print(f"{'source':<14}{'s/img (1 w)':>12}{f's/img ({args.workers} w)':>13}{'first call':>12}{'cache hit':>11}"
          f"{'hit (stat)':>12}{'speed-up':>10}{'regions':>9}")
    for spec, r in results["sources"].items():
        print(f"{spec:<14}{r['s_per_image_1_worker']:>12.3f}{r[f's_per_image_{args.workers}_workers']:>13.3f}"
              f"{r['first_call_s']:>11.2f}s{r['cache_hit_s']:>10.3f}s{r['cache_hit_stat_s']:>11.3f}s"
              f"{r['speedup_cache']:>9.0f}x{r['regions_per_image']:>9.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
