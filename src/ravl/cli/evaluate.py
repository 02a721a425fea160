"""``ravl evaluate``: zero-shot accuracy overall, per class and per (class x feature) group."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from ravl.cli._common import (
    SPLIT_CHOICES,
    add_data_class_arguments,
    add_model_arguments,
    add_region_arguments,
    data_from_args,
    fmt,
    model_from_args,
    out_file_arg,
    parse_features,
    print_table,
    region_meta,
    resolve_device,
    templates_from_args,
    write_json,
)
from ravl.discovery.result import DiscoveryResult
from ravl.evaluation.metrics import check_setting_validity, evaluate, groups_from_discovery
from ravl.exceptions import InvalidParameterError
from ravl.models.base import load_model
from ravl.models.regions import REGION_MODES

DESCRIPTION = ("zero-shot accuracy: overall, per class, per (class x spurious feature) group, worst group. Group "
               "metrics need 'region_attributes' in metadata.jsonl; the core region is the region whose attribute is"
               " the image's label.")


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--data", required=True, help="dataset folder with metadata.jsonl (labels on every row)")
    parser.add_argument("--split", default="test", choices=SPLIT_CHOICES,
                        help="split to evaluate ('all' for every row)")
    add_data_class_arguments(parser)
    parser.add_argument("--spurious-feature", default=None,
                        help="region attribute marking the spurious feature (default: from ../setting.json when the "
                             "folder was made by `ravl make-benchmark`, else inferred from region_attributes)")
    parser.add_argument("--spurious-class", default=None,
                        help="class the feature was tied to; prints the validity rule (default: from ../setting.json "
                             "when the folder was made by `ravl make-benchmark`)")
    parser.add_argument("--min-gap", type=float, default=0.1, help="validity rule threshold")
    parser.add_argument("--region-mode", default=None, choices=list(REGION_MODES),
                        help="region embedding mode for core-region metrics (default: ravl's default)")
    parser.add_argument("--groups-from", default=None, metavar="DISCOVERY_JSON",
                        help="form the (class x feature present/absent) groups from a discovered feature instead of "
                             "region_attributes: an image carries it when one of its regions joins the feature's "
                             "cluster (for data without region labels)")
    parser.add_argument("--features", default="class",
                        help="with --groups-from: which discovered features: 'class' (every feature tied to the top "
                             "feature's class), 'top', 'all' or ranks like '1,2'")
    add_region_arguments(parser)
    parser.add_argument("--no-regions", action="store_true", help="skip core-region metrics")
    parser.add_argument("--json", default=None, type=out_file_arg, help="also write the results as JSON to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def setting_spurious_class(data_dir: str | Path) -> str | None:
    """The spurious class recorded by ``ravl make-benchmark`` next to an evaluation folder."""
    p = Path(data_dir).resolve().parent / "setting.json"
    if p.is_file():
        try:
            return json.loads(p.read_text()).get("spurious_class")
        except (OSError, ValueError):
            return None
    return None


def print_evaluation(res, spurious_class: str | None = None) -> None:
    """Print an :class:`~ravl.evaluation.EvaluationResult` as tables."""
    print(f"split {res.split!r}: {res.n_images} images, {len(res.classes)} classes"
          + (f", spurious feature {res.spurious_feature!r}" if res.spurious_feature else ""))
    reports = [("image", res.image)] + ([("core region", res.core_region)] if res.core_region else [])
    print("  ".join(f"{name} accuracy {fmt(r.overall)}" for name, r in reports))
    header = ["class"]
    for name, _ in reports:
        header += [f"{name}: all"] + ([f"{name}: with", f"{name}: without"] if res.spurious_feature else [])
    rows = []
    for c in res.classes:
        row = [c + (" *" if c == spurious_class else "")]
        for _, r in reports:
            pc = r.per_class.get(c)
            row.append(fmt(pc["accuracy"]) if pc else "  -  ")
            if res.spurious_feature:
                for present in (True, False):
                    g = r.group(c, present)
                    row.append(f"{fmt(g.accuracy)} ({g.n})" if g else "  -  ")
        rows.append(row)
    print_table(rows, header)
    for name, r in reports:
        if r.worst_group is not None:
            g = r.worst_group
            state = "with" if g.feature_present else "without"
            print(f"worst group ({name}): {g.label} {state} {res.spurious_feature}: {fmt(g.accuracy)} (n={g.n})")
    if spurious_class:
        print("* spurious class")


def discovered_groups(path, ds, split, *, features="class", device=None, progress=True):
    """``(feature_present, name, info)`` of ``ds``'s split from the feature of a discovery.json, with the
    model discovery audited (recorded in the file)."""
    disc = DiscoveryResult.from_json(path)
    ck = disc.meta.get("checkpoint")
    if not ck:
        raise InvalidParameterError(f"{path} does not record the checkpoint discovery audited (meta['checkpoint']), "
                                    "which defines its clusters; rerun `ravl discover --checkpoint ...`.")
    audited = load_model(disc.meta.get("model"), checkpoint=ck, device=device)
    present, name = groups_from_discovery(audited, ds, disc, split=split, features=features, progress=progress)
    return present, name, {"groups_from": str(Path(path).resolve()), "audited_checkpoint": ck}


def run(args) -> int:
    split = None if args.split == "all" else args.split
    ds = data_from_args(args, args.data, classes=args.classes, require_fields=("label",))
    features = parse_features(args.features)
    if args.spurious_class is not None and args.spurious_class not in ds.classes:
        close = difflib.get_close_matches(args.spurious_class, ds.classes, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise InvalidParameterError(f"--spurious-class {args.spurious_class!r} is not a class of {args.data}.{hint} "
                                    f"The classes are: {', '.join(ds.classes)}.")
    model = model_from_args(args)
    templates, origin = templates_from_args(args, model=model, classes=ds.classes)
    present, group_info = None, {}
    if args.groups_from:
        present, args.spurious_feature, group_info = discovered_groups(
            args.groups_from, ds, split, features=features, device=resolve_device(args.device),
            progress=not args.quiet)
        print(f"groups: {args.spurious_feature}, present in {int(present.sum())} of {len(present)} images")
    res = evaluate(model, ds, split=split, templates=templates, spurious_feature=args.spurious_feature,
                   region_mode=args.region_mode, regions=not args.no_regions, feature_present=present,
                   progress=not args.quiet)
    spurious_class = args.spurious_class or setting_spurious_class(args.data)
    print_evaluation(res, spurious_class)
    metrics = res.summary_metrics()
    if res.spurious_feature:
        print("  ".join(f"{k}: {fmt(v)}" for k, v in metrics.items()))
    out = {"metrics": metrics, "evaluation": res.to_dict(), "model": model.name, "checkpoint": args.checkpoint,
           "data": args.data, "templates": list(templates), "template_source": origin, **region_meta(ds, args),
           **group_info}
    if spurious_class and res.spurious_feature:
        try:
            v = check_setting_validity(res, spurious_class, min_gap=args.min_gap)
        except ValueError as exc:
            print(f"validity: cannot be decided ({exc})")
        else:
            verdict = "VALID (the model learned the correlation)" if v.valid else "NOT VALID (no learned correlation)"
            print(f"validity: {verdict}: gap {v.gap:+.3f} = {v.accuracy_with:.3f} (n={v.n_with}) - "
                  f"{v.accuracy_without:.3f} (n={v.n_without}); rule: {v.rule}")
            out["validity"] = v.to_dict()
    if args.json:
        write_json(args.json, out)
        print(f"wrote {args.json}")
    return 0
