"""``ravl discover``: which image regions does the model tie to which class? (RaVL Stage 1)"""

from __future__ import annotations

import difflib
from dataclasses import replace
from pathlib import Path

from ravl.cli._common import (
    SPLIT_CHOICES,
    add_data_class_arguments,
    add_model_arguments,
    add_region_arguments,
    add_sharding_arguments,
    data_from_args,
    fmt,
    model_from_args,
    out_dir_arg,
    print_table,
    region_meta,
    sharding_from_args,
    templates_from_args,
)
from ravl.discovery.metrics import precision_at_k
from ravl.discovery.pipeline import discover_on_inputs, discovery_inputs
from ravl.discovery.registry import RAVL_METHODS, get_discovery_method
from ravl.exceptions import InvalidParameterError
from ravl.models.regions import REGION_MODES
from ravl.report.html import write_report
from ravl.utils.io import atomic_write_json
from ravl.utils.outputs import check_output_dir, output_lock, staged_output

DESCRIPTION = ("discover region features the model spuriously ties to a class; writes discovery.json and "
               "report.html. Runs on a labelled evaluation split in which the correlation does not hold (default "
               "'val').")


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--data", required=True, help="dataset folder with metadata.jsonl (labels on every row)")
    parser.add_argument("--split", default="val", choices=SPLIT_CHOICES, help="split to examine ('all' for every row)")
    add_data_class_arguments(parser)
    parser.add_argument("--out", required=True, type=out_dir_arg,
                        help="output folder for discovery.json, report.html and PNGs")
    parser.add_argument("--region-mode", default=None, choices=list(REGION_MODES),
                        help="how regions are embedded (default: masked)")
    add_region_arguments(parser)
    add_sharding_arguments(parser)
    parser.add_argument("--method", default="ravl", metavar="NAME",
                        help="discovery method from the registry (default ravl; e.g. ravl_gap_only, random, "
                             "distilling_failures, george, domino, spurious_aware, NAME_region for the "
                             "region-as-sample adaptation; see docs/baselines.md)")
    parser.add_argument("--scoring", default="ravl", choices=["ravl", "gap_only", "influence_only", "unweighted"],
                        help="full RaVL or one of the paper's ablations (with --method ravl)")
    parser.add_argument("--influence-threshold", type=float, default=0.25)
    parser.add_argument("--k-min", type=int, default=None, help="smallest K tried (default 2C)")
    parser.add_argument("--k-max", type=int, default=None, help="largest K tried (default 5C-1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--truth", default=None,
                        help="region attribute of the planted feature: prints Precision@10 of each feature")
    parser.add_argument("--no-report", action="store_true", help="only write discovery.json")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def print_discovery(result, truth_p10: list[float] | None = None, max_features: int = 3) -> None:
    """Print the top discovered features and their per-class tables."""
    d = result.to_dict() if hasattr(result, "to_dict") else result
    feats = d.get("features", [])
    if not feats:
        print(f"No spurious feature found. {d.get('message') or ''}".strip())
        return
    k = f" (K = {d['n_clusters']})" if d.get("n_clusters") is not None else ""
    method = (d.get("meta") or {}).get("method")
    by = f" by {method}" if method else ""
    print(f"{len(feats)} feature(s) found{by}{k}.")
    for j, f in enumerate(feats[:max_features]):
        extra = f", P@10 = {truth_p10[j]:.2f}" if truth_p10 else ""
        print(f"\nfeature {f.get('rank', j + 1)}: tied to {f['class']!r} (gap {fmt(f.get('gap'))}, "
              f"influence {fmt(f.get('influence'))}, {len(f.get('regions', []))} regions{extra})")
        rows = [[t["class"], f"{fmt(t.get('acc_present'))} ({t.get('n_present')})",
                 f"{fmt(t.get('acc_absent'))} ({t.get('n_absent')})", fmt(t.get("gap"))]
                for t in f.get("table", [])]
        print_table(rows, ["class", "acc. with feature (n)", "acc. without (n)", "weighted gap"])


def discovery_result(args, model, ds, split, templates, template_origin, method):
    """Run ``--method`` on ``ds`` (RaVL's knobs for RaVL and its ablations); ``(result dict, inputs)``."""
    inputs = discovery_inputs(model, ds, split=split, templates=templates, region_mode=args.region_mode,
                              progress=not args.quiet, sharding=sharding_from_args(args))
    meta = {"model": model.name, "checkpoint": args.checkpoint, "data": str(Path(args.data).resolve()),
            "split": split, "region_mode": inputs.region_mode, "method": args.method,
            "templates": list(inputs.templates), "template_source": template_origin, **region_meta(ds, args),
            "data_fingerprint": (ds.subset(split) if split else ds).fingerprint()}
    if args.method == "ravl":
        result = discover_on_inputs(inputs, scoring=args.scoring, min_influence=args.influence_threshold,
                                    k_min=args.k_min, k_max=args.k_max, random_state=args.seed,
                                    progress=not args.quiet, meta=meta)
    elif args.method in RAVL_METHODS:  # the ablations take RaVL's knobs too
        result = method(inputs, random_state=args.seed, min_influence=args.influence_threshold, k_min=args.k_min,
                        k_max=args.k_max, progress=not args.quiet, meta=meta)
    else:
        result = method(inputs, random_state=args.seed)
        result = replace(result, meta={**meta, **result.meta})
    return result.to_dict(), inputs


def check_cluster_range(args) -> None:
    """``--k-min`` / ``--k-max`` / ``--influence-threshold`` before any work."""
    if args.k_min is not None and args.k_min < 2:
        raise InvalidParameterError(f"--k-min must be >= 2 (a clustering needs two clusters); got {args.k_min}.")
    if args.k_max is not None and args.k_max < 2:
        raise InvalidParameterError(f"--k-max must be >= 2; got {args.k_max}.")
    if args.k_min is not None and args.k_max is not None and args.k_min > args.k_max:
        raise InvalidParameterError(f"--k-min {args.k_min} is larger than --k-max {args.k_max}; the K tried run from "
                                    "--k-min to --k-max.")
    if not 0 <= args.influence_threshold <= 1:
        raise InvalidParameterError(f"--influence-threshold must be in [0, 1]; got {args.influence_threshold}.")


def check_truth(truth: str | None, ds, split) -> None:
    """``--truth`` must be a region attribute of the split (close matches suggested)."""
    if truth is None:
        return
    recs = (ds.subset(split) if split else ds).records
    if any(r.region_attributes is None for r in recs):
        raise InvalidParameterError(f"--truth {truth!r} scores Precision@10 against region_attributes, which not every "
                                    f"row of {ds.root} has; add them or drop --truth.")
    attrs = sorted({a for r in recs for a in r.region_attributes})
    if truth not in attrs:
        close = difflib.get_close_matches(truth, attrs, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise InvalidParameterError(f"--truth {truth!r} is not a region attribute of the data.{hint} The attributes "
                                    f"are: {', '.join(attrs)}.")


def run(args) -> int:
    method = get_discovery_method(args.method)  # unknown name: error listing the registered ones, before any work
    check_cluster_range(args)
    sharding_from_args(args)  # Ray flags checked before any work
    split = None if args.split == "all" else args.split
    out = check_output_dir(args.out)
    with output_lock(out, "ravl discover"):
        ds = data_from_args(args, args.data, classes=args.classes, require_fields=("label",))
        check_truth(args.truth, ds, split)
        model = model_from_args(args)
        templates, origin = templates_from_args(args, model=model, classes=ds.classes)
        d, inputs = discovery_result(args, model, ds, split, templates, origin, method)
        p10 = None
        if args.truth:
            if inputs.region_attributes is None:
                print("--truth needs region_attributes in metadata.jsonl; Precision@10 not computed.")
            else:
                p10 = []
                for f in d.get("features", []):
                    ranked = [inputs.region_attributes[r["region_index"]] for r in f["regions"]]
                    f["precision_at_10"] = float(precision_at_k(ranked, args.truth, k=10))
                    p10.append(f["precision_at_10"])
        print_discovery(d, p10)
        # discovery.json, report.html and its PNGs replace the folder's previous content as one unit
        with staged_output(out, what="ravl discover") as stage:
            atomic_write_json(stage / "timings.json", d.pop("timings", {}))  # wall clock kept apart:
            atomic_write_json(stage / "discovery.json", {**d, "timings": {}})  # the same run, the same bytes
            if not args.no_report:
                write_report(d, ds, stage, title=f"ravl discovery: {model.name} on {Path(args.data).name}")
    print(f"\nwrote {out / 'discovery.json'}")
    if not args.no_report:
        print(f"wrote {out / 'report.html'} (open it in a browser)")
    return 0
