"""``ravl convert coco``: bring data from another format into ravl's dataset folder format."""

from __future__ import annotations

import argparse

from ravl.cli._common import out_dir_arg
from ravl.data.coco import IMAGE_MODES, convert_coco
from ravl.data.dataset import SPLITS

DESCRIPTION = ("convert another dataset format into ravl's (metadata.jsonl + images). `ravl convert coco`: a COCO "
               "instances file (+ captions) -> boxes from the annotations, category names as region_attributes, the "
               "label from --label-categories (images with none or several of them are skipped and counted). "
               "See docs/coco.md.")


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="format", metavar="FORMAT", required=True)
    c = sub.add_parser("coco", help="COCO instances (+ captions) JSON and its images",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter, description=DESCRIPTION)
    c.add_argument("--instances", required=True, metavar="FILE", help="COCO instances_*.json")
    c.add_argument("--images", required=True, metavar="DIR", help="folder holding the images the JSON names")
    c.add_argument("--captions", default=None, metavar="FILE", help="COCO captions_*.json of the same images")
    c.add_argument("--label-categories", nargs="+", required=True, metavar="CATEGORY",
                   help="COCO category names that are the classes; each kept image contains exactly one of them")
    c.add_argument("--out", required=True, metavar="DIR", type=out_dir_arg, help="output dataset folder")
    c.add_argument("--split", default=None, choices=list(SPLITS), help="split written on every row")
    c.add_argument("--caption", default="first", choices=["first", "random"],
                   help="which caption of an image becomes its 'caption' (the others are kept in 'coco_captions')")
    c.add_argument("--crowd", default="keep", choices=["keep", "ignore", "skip_image"],
                   help="what to do with crowd annotations")
    c.add_argument("--images-mode", default="hardlink", choices=list(IMAGE_MODES),
                   help="how images are placed in the output folder (hardlink falls back to copying)")
    c.add_argument("--min-box-size", type=float, default=1.0, help="boxes smaller than this (pixels) are dropped")
    c.add_argument("--seed", type=int, default=0, help="seed of --caption random")
    c.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    res = convert_coco(args.instances, args.images, args.out, label_categories=args.label_categories,
                       captions_json=args.captions, split=args.split, caption=args.caption, crowd=args.crowd,
                       images=args.images_mode, min_box_size=args.min_box_size, random_state=args.seed,
                       progress=not args.quiet)
    print(res.summary())
    print(f"dataset: {res.out_dir} (check it with `ravl validate {res.out_dir}`)")
    return 0
