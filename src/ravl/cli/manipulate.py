"""``ravl manipulate``: a manipulated query set (an object removed or pasted) from a dataset folder."""

from __future__ import annotations

import difflib
from pathlib import Path

from ravl.cli._common import SPLIT_CHOICES, out_dir_arg
from ravl.data.attributes import EMPTY_ATTRIBUTE
from ravl.data.dataset import load_dataset
from ravl.data.manipulation import FILL_METHODS, RECORD_FILE, manipulate_dataset
from ravl.exceptions import DatasetError, InvalidParameterError

DESCRIPTION = ("write a manipulated copy of a dataset split as a new dataset folder: with --remove, every image "
               "showing the object (a region attribute of metadata.jsonl) gets its region(s) filled from the "
               "surrounding pixels and the mention removed from its captions; with --paste, every image without it "
               "gets the object pasted from a donor image into an empty region and the mention added. Each row "
               "records what was done under 'manipulation', and OUT/manipulation.json the whole run. The removed "
               "set is what `ravl retrieval --odmap-queries` reads. See docs/retrieval.md.")


def add_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="dataset folder with metadata.jsonl and 'region_attributes'")
    parser.add_argument("--split", default="test", choices=SPLIT_CHOICES, help="split to manipulate ('all': every row)")
    op = parser.add_mutually_exclusive_group(required=True)
    op.add_argument("--remove", default=None, metavar="ATTR",
                    help="region attribute of the object to remove (e.g. red_square)")
    op.add_argument("--paste", default=None, metavar="ATTR",
                    help="region attribute of the object to paste into images without it (donors: images with it)")
    parser.add_argument("--out", required=True, type=out_dir_arg, help="new dataset folder to write")
    parser.add_argument("--fill", default=None, choices=list(FILL_METHODS),
                        help="how --remove fills a region: ring (mean colour of the pixels around it) or diffuse "
                             "(smooth blend of its borders); default ring")
    parser.add_argument("--words", action="append", default=None, metavar="TEXT",
                        help="the caption words of the object, repeatable for synonyms (default: ATTR with '_' as "
                             "spaces)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --paste's donor and region draws (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    operation, obj = ("remove", args.remove) if args.remove is not None else ("paste", args.paste)
    flag = f"--{operation}"
    if not obj.strip():
        raise InvalidParameterError(f"{flag} needs a region attribute name like 'red_square'; got {obj!r}")
    if args.fill is not None and operation == "paste":
        raise InvalidParameterError("--fill applies to --remove only (--paste copies a donor's pixels); drop --fill")
    if args.words is not None and not all(w.strip() for w in args.words):
        raise InvalidParameterError(f"--words needs the object's caption words like 'red square'; got {args.words!r}")
    if args.seed < 0:
        raise InvalidParameterError(f"--seed must be a whole number >= 0; got {args.seed}")
    out = Path(args.out)
    if (out / "metadata.jsonl").exists():
        raise InvalidParameterError(f"--out {out} already holds a dataset (metadata.jsonl); choose a new folder")
    split = None if args.split == "all" else args.split
    ds = load_dataset(args.data, split=split)  # a missing folder or split is a data error (exit 1)
    missing = [r for r in ds if r.region_attributes is None]
    if missing:
        r = missing[0]
        raise DatasetError(f"{ds.metadata_path} line {r.line} ({r.file_name}) has no 'region_attributes': "
                           f"{flag} finds the object by its region's attribute. Add a 'region_attributes' list "
                           "(one name per box) to every row, as `ravl convert coco` and the synthetic builders write.")
    known = sorted({a for r in ds for a in r.region_attributes} - {EMPTY_ATTRIBUTE})
    if obj not in known:
        close = difflib.get_close_matches(obj, known, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise InvalidParameterError(
            f"{flag} {obj!r}: no image of {args.data} (split {args.split!r}) has a region with that attribute; the "
            f"attributes there are {', '.join(map(repr, known[:20]))}{' ...' if len(known) > 20 else ''}.{hint}")
    res = manipulate_dataset(ds, out, object=obj, operation=operation, method=args.fill or "ring",
                             words=args.words, random_state=args.seed, progress=not args.quiet)
    done = "removed from" if operation == "remove" else "pasted into"
    print(f"{obj!r} {done} {res.n_images} image(s) of {args.data} (split {args.split!r}; {res.n_skipped} left out) "
          f"-> {out}")
    print(f"record: {out / RECORD_FILE} and each row's 'manipulation'")
    if operation == "remove":
        print(f"score with: ravl retrieval --checkpoint CK --data {args.data} --split {args.split} --odmap-queries "
              f"{out}")
    return 0
