"""``ravl retrieval``: image->text and text->image Recall@k and mAP over a dataset folder's captions."""

from __future__ import annotations

from ravl.cli._common import (
    SPLIT_CHOICES,
    add_model_arguments,
    fmt,
    model_from_args,
    out_file_arg,
    print_table,
    write_json,
)
from ravl.data.dataset import load_dataset
from ravl.exceptions import InvalidParameterError
from ravl.retrieval.evaluate import DEFAULT_KS, evaluate_retrieval
from ravl.retrieval.odmap import RELEVANCE_RULES, evaluate_odmap

DESCRIPTION = ("cross-modal retrieval of a model over a dataset folder: every image of the split queries every "
               "caption (relevant: its own captions) and every caption queries every image (relevant: its image); "
               "prints Recall@k and mAP of both directions. An image's captions are its 'caption' plus any "
               "'captions' (or 'coco_captions') list on its row. See docs/retrieval.md.")


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(p) for p in str(text).split(","))
    except ValueError:
        ks = ()
    if not ks or min(ks) < 1:
        raise InvalidParameterError(f"--ks must be comma-separated whole numbers >= 1 like '1,5,10'; got {text!r}")
    return ks


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--data", required=True, help="dataset folder with metadata.jsonl (a caption on every row)")
    parser.add_argument("--split", default="test", choices=SPLIT_CHOICES, help="split to evaluate ('all' for every row)")
    parser.add_argument("--ks", default=",".join(map(str, DEFAULT_KS)), help="Recall@k cut-offs, comma-separated")
    parser.add_argument("--batch-size", type=int, default=128, help="images or captions per forward pass")
    parser.add_argument("--same-text", action="store_true",
                        help="captions with the same text as a relevant caption count as relevant too (for data "
                             "whose captions repeat, like the synthetic settings); default: own captions only")
    g = parser.add_argument_group("object decorrelation (ODmAP@k, reconstructed; see docs/retrieval.md)")
    g.add_argument("--odmap-queries", default=None, metavar="DIR",
                   help="dataset folder of object-removed query images (ravl.data.manipulation.manipulate_dataset "
                        "with operation='remove', made from --data); adds ODmAP@k against --data's captions")
    g.add_argument("--odmap-k", type=int, default=5, help="ODmAP cut-off k")
    g.add_argument("--relevance", default="own", choices=list(RELEVANCE_RULES),
                   help="which captions are relevant to a query: 'own' (its source image's captions that do not "
                        "mention the removed object) or 'any' (every caption that does not mention it)")
    g.add_argument("--no-edited-captions", action="store_true",
                   help="gallery of the original captions only (default: the queries' edited captions join it, as "
                        "captions of their source images)")
    parser.add_argument("--json", default=None, type=out_file_arg, help="also write the results as JSON to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    ks = _ks(args.ks)
    if args.batch_size < 1:
        raise InvalidParameterError(f"--batch-size must be >= 1; got {args.batch_size}")
    if args.odmap_k < 1:
        raise InvalidParameterError(f"--odmap-k must be >= 1; got {args.odmap_k}")
    split = None if args.split == "all" else args.split
    queries = load_dataset(args.odmap_queries) if args.odmap_queries else None
    ds = load_dataset(args.data, split=split)  # an absent split is a data error (exit 1)
    model = model_from_args(args)
    res = evaluate_retrieval(model, ds, ks=ks, batch_size=args.batch_size, same_text=args.same_text,
                             progress=not args.quiet)
    print(f"split {args.split!r}: {res.n_images} images, {res.n_captions} captions")
    header = ["direction", *(f"R@{k}" for k in res.ks), "mAP"]
    rows = [[name, *(fmt(d[f"recall@{k}"]) for k in res.ks), fmt(d["map"])]
            for name, d in (("image->text", res.image_to_text), ("text->image", res.text_to_image))]
    print_table(rows, header)
    print(f"rsum {res.rsum:.3f}")
    out = {"retrieval": {**res.to_dict(), "split": args.split}, "model": model.name,
           "checkpoint": args.checkpoint, "data": args.data}
    if queries is not None:
        od = evaluate_odmap(model, queries, ds, k=args.odmap_k, rule=args.relevance,
                            edited_captions=not args.no_edited_captions, batch_size=args.batch_size,
                            progress=not args.quiet)
        print(f"ODmAP@{od.k} ({od.relevance} relevance, reconstructed): {fmt(od.value)} over {od.n_queries} "
              f"object-removed queries ({od.n_skipped} skipped); captions naming the removed object in the top "
              f"{od.k}: {fmt(od.false_hits_at_k)}")
        out["odmap"] = {**od.to_dict(), "queries": args.odmap_queries}
    if args.json:
        write_json(args.json, out)
        print(f"wrote {args.json}")
    return 0
