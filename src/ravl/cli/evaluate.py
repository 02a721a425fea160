"""``ravl evaluate``: zero-shot accuracy overall, per class and per (class x feature) group."""

from __future__ import annotations

import json
from pathlib import Path

from ravl.cli._common import (
    add_data_class_arguments,
    add_model_arguments,
    fmt,
    model_from_args,
    print_table,
    templates_from_args,
    write_json,
)
from ravl.data.dataset import load_dataset
from ravl.evaluation.metrics import check_setting_validity, evaluate

DESCRIPTION = ("zero-shot accuracy: overall, per class, per (class x spurious feature) group, worst group. Group metrics need 'region_attributes' in metadata.jsonl; the core region is the region "
               "whose attribute is the image's label.")


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--data", required=True, help="dataset folder with metadata.jsonl (labels on every row)")
    parser.add_argument("--split", default="test", help="split to evaluate ('all' for every row)")
    add_data_class_arguments(parser)
    parser.add_argument("--spurious-feature", default=None,
                        help="region attribute marking the spurious feature (default: inferred from region_attributes)")
    parser.add_argument("--spurious-class", default=None,
                        help="class the feature was tied to; prints the validity rule (default: from ../setting.json "
                             "when the folder was made by `ravl make-benchmark`)")
    parser.add_argument("--min-gap", type=float, default=0.1, help="validity rule threshold")
    parser.add_argument("--region-mode", default=None, choices=["masked", "roi", "crop"],
                        help="region embedding mode for core-region metrics (default: ravl's default)")
    parser.add_argument("--no-regions", action="store_true", help="skip core-region metrics")
    parser.add_argument("--json", default=None, help="also write the results as JSON to this file")
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


def run(args) -> int:
    split = None if args.split == "all" else args.split
    ds = load_dataset(args.data, classes=args.classes, require_fields=("label",))
    model = model_from_args(args)
    res = evaluate(model, ds, split=split, templates=templates_from_args(args),
                   spurious_feature=args.spurious_feature, region_mode=args.region_mode,
                   regions=not args.no_regions, progress=not args.quiet)
    spurious_class = args.spurious_class or setting_spurious_class(args.data)
    print_evaluation(res, spurious_class)
    metrics = res.summary_metrics()
    if res.spurious_feature:
        print("  ".join(f"{k}: {fmt(v)}" for k, v in metrics.items()))
    out = {"metrics": metrics, "evaluation": res.to_dict(), "model": model.name, "checkpoint": args.checkpoint, "data": args.data}
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
