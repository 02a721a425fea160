"""``ravl validate``: check a dataset folder and print a summary, or every problem found."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections import Counter

from ravl.data.dataset import CLASSES_FILE, SPLITS, load_dataset, parse_grid
from ravl.exceptions import DatasetValidationError

DESCRIPTION = ("check a dataset folder (metadata.jsonl + images) and report every problem. Prints a summary (images "
               "per split, classes and counts, regions, region_attributes) and exits 0, or prints every problem, "
               "each naming the file, line and field with the fix, and exits 1. The format is described in "
               "docs/dataset-format.md.")

_SPLIT_CHOICES = ("train", "val", "test", "all")


def _grid_type(text: str) -> tuple[int, int]:
    try:
        return parse_grid(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROWSxCOLS with numbers >= 1, like 2x2 or 3x3; got {text!r}") \
            from None


def add_arguments(parser) -> None:
    parser.add_argument("data", metavar="DIR", help="dataset folder holding metadata.jsonl (or the file itself)")
    parser.add_argument("--split", default="all", choices=_SPLIT_CHOICES,
                        help="check that this split has rows and summarise only it (the whole file is validated)")
    parser.add_argument("--classes", nargs="+", default=None,
                        help="class names, in order (default: classes.txt in the folder, else the labels found)")
    parser.add_argument("--grid", type=_grid_type, default="2x2",
                        help="ROWSxCOLS grid of regions for rows without 'boxes'")
    parser.add_argument("--require", nargs="+", default=[], metavar="FIELD",
                        choices=["caption", "label", "split", "boxes", "region_attributes"],
                        help="fields every checked row must have, e.g. 'caption' for fine-tuning, 'label' for "
                             "evaluation")
    parser.add_argument("--no-verify-images", dest="verify_images", action="store_false",
                        help="read only each image's header (its size), not the full data; faster on big images")


def run(args) -> int:
    split = None if args.split == "all" else args.split
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = load_dataset(args.data, split=split, classes=args.classes, grid=args.grid,
                              require_fields=tuple(args.require), check_images=args.verify_images)
    except DatasetValidationError as exc:
        print(f"{len(exc.problems)} problem(s) in dataset {exc.path or args.data}:")
        for p in exc.problems:
            print(f"  - {p}")
        print(f"Fix them and run `ravl validate {args.data}` again (format: docs/dataset-format.md).")
        print(f"error: {len(exc.problems)} problem(s) in dataset {exc.path or args.data} (listed above)",
              file=sys.stderr)
        return 1
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print_summary(ds, split=split, classes_given=args.classes is not None)
    return 0


def print_summary(ds, *, split: str | None = None, classes_given: bool = False) -> None:
    """Print what a loaded :class:`~ravl.data.RegionDataset` holds."""
    n = len(ds)
    print(f"OK: {ds.root} ({ds.metadata_path.name}: {n} image(s)" + (f" in split {split!r})" if split else ")"))

    splits = Counter(r.split for r in ds.records)
    parts = [f"{s} {splits[s]}" for s in SPLITS if splits.get(s)]
    if splits.get(None):
        parts.append(f"no split {splits[None]}")
    print(f"images per split: {', '.join(parts)}")

    if classes_given:
        source = "from --classes"
    elif (ds.root / CLASSES_FILE).is_file():
        source = f"from {CLASSES_FILE}"
    else:
        source = "from the labels, sorted"
    labels = Counter(r.label for r in ds.records)
    print(f"classes: {len(ds.classes)} ({source})")
    width = max((len(c) for c in ds.classes), default=0)
    for c in ds.classes:
        print(f"  {c:<{width}}  {labels.get(c, 0)}")
    if labels.get(None):
        print(f"  images without a label: {labels[None]}")

    per_image = ds.regions_per_image
    n_grid = sum(r.boxes_from_grid for r in ds.records)
    counts = sorted(set(per_image.tolist()))
    span = "-" if not counts else (str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}")
    rows, cols = ds.grid
    print(f"regions: {int(per_image.sum())} ({span} per image; {rows}x{cols} grid on {n_grid} image(s), "
          f"given boxes on {n - n_grid})")

    with_attr = [r for r in ds.records if r.region_attributes is not None]
    if not with_attr:
        print("region_attributes: absent (only needed to score discovery and group metrics)")
    else:
        values = Counter(a for r in with_attr for a in r.region_attributes)
        top = ", ".join(f"{v} {k}" for v, k in values.most_common(10))
        more = f", ... ({len(values)} values)" if len(values) > 10 else ""
        where = "every image" if len(with_attr) == n else f"{len(with_attr)} of {n} images (scoring needs every image)"
        print(f"region_attributes: present on {where}; values: {top}{more}")

    n_cap = sum(r.caption is not None for r in ds.records)
    print(f"captions: {n_cap} of {n} image(s); labels: {n - labels.get(None, 0)} of {n} image(s)")
    sizes = Counter((r.width, r.height) for r in ds.records)
    if sizes:
        (w, h), k = sizes.most_common(1)[0]
        print(f"image sizes: {w}x{h}" + (f" ({k} images; {len(sizes)} sizes in all)" if len(sizes) > 1 else ""))
