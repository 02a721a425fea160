"""``ravl audit``: validate + evaluate + discover + one report page, in one command.

For a checkpoint and a labelled dataset folder: checks the folder, measures zero-shot accuracy,
runs RaVL discovery on the same split, and, when the data has no ``region_attributes``, forms the
(class x feature present/absent) groups from the feature discovery found, so worst-group
accuracy is measured without annotations. Everything goes to one folder: ``discovery.json``,
``evaluation.json`` and ``report.html``.
"""

from __future__ import annotations

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
    parse_features,
    region_meta,
    sharding_from_args,
    templates_from_args,
    write_json,
)
from ravl.cli.discover import discovery_result, print_discovery
from ravl.cli.evaluate import print_evaluation
from ravl.cli.validate import print_summary
from ravl.discovery.registry import get_discovery_method
from ravl.discovery.result import DiscoveryResult
from ravl.evaluation.metrics import evaluate, groups_from_discovery
from ravl.models.regions import REGION_MODES
from ravl.report.html import write_report
from ravl.utils.io import atomic_write_json
from ravl.utils.outputs import check_output_dir, output_lock, staged_output

DESCRIPTION = ("audit a fine-tuned model on a labelled dataset folder in one step: validate the folder, measure "
               "zero-shot accuracy, discover the region features the model ties to a class, measure worst-group "
               "accuracy (groups from region_attributes, else from the discovered feature), and write one report "
               "page. Use a split where the correlation you suspect does not hold.")


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--data", required=True, help="dataset folder with metadata.jsonl (labels on every row)")
    parser.add_argument("--split", default="val", choices=SPLIT_CHOICES, help="split to audit ('all' for every row)")
    parser.add_argument("--out", default="audit", type=out_dir_arg,
                        help="output folder: discovery.json, evaluation.json, report.html")
    add_data_class_arguments(parser)
    parser.add_argument("--region-mode", default=None, choices=list(REGION_MODES),
                        help="how regions are embedded (default: masked)")
    parser.add_argument("--features", default="class",
                        help="which discovered features form the groups: 'class' (every feature tied to the top "
                             "feature's class), 'top', 'all' or ranks like '1,2'")
    parser.add_argument("--seed", type=int, default=0, help="seed of the clustering")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_region_arguments(parser)
    add_sharding_arguments(parser)


def run(args) -> int:
    split = None if args.split == "all" else args.split
    features = parse_features(args.features)
    sharding_from_args(args)  # Ray flags checked before any work
    out = check_output_dir(args.out)
    with output_lock(out, "ravl audit"):
        page = _audit(args, split, features, out)
    print(f"\nwrote {out / 'discovery.json'}, {out / 'evaluation.json'}")
    print(f"report: {page}")
    return 0


def _audit(args, split, features, out: Path) -> Path:
    print("1. the dataset")
    ds = data_from_args(args, args.data, classes=args.classes, require_fields=("label",))
    print_summary(ds.subset(split) if split else ds, split=split, classes_given=args.classes is not None)
    model = model_from_args(args)
    templates, origin = templates_from_args(args, model=model, classes=ds.classes)

    print("\n2. discovery")
    # the knobs of `ravl discover` this command does not expose keep their defaults
    args.method, args.scoring, args.influence_threshold, args.k_min, args.k_max = "ravl", "ravl", 0.25, None, None
    d, _ = discovery_result(args, model, ds, split, templates, origin, get_discovery_method("ravl"))
    print_discovery(d)

    print("\n3. zero-shot accuracy")
    has_attr = all(r.region_attributes is not None for r in (ds.subset(split) if split else ds).records)
    present, feature, groups_from = None, None, "region_attributes" if has_attr else None
    if not has_attr and d.get("features"):
        present, feature = groups_from_discovery(model, ds, DiscoveryResult.from_dict(d), split=split,
                                                 features=features, progress=not args.quiet)
        groups_from = "discovery"
        print(f"groups: {feature}, present in {int(present.sum())} of {len(present)} images (no region_attributes)")
    res = evaluate(model, ds, split=split, templates=templates, spurious_feature=feature, region_mode=args.region_mode,
                   feature_present=present, progress=not args.quiet)
    print_evaluation(res)
    metrics = res.summary_metrics()
    print("  ".join(f"{k}: {fmt(v)}" for k, v in metrics.items()))
    evaluation = {"metrics": metrics, "evaluation": res.to_dict(), "model": model.name, "checkpoint": args.checkpoint,
                  "data": str(Path(args.data).resolve()), "templates": list(templates), "template_source": origin,
                  "groups_from": groups_from, **region_meta(ds, args)}
    with staged_output(out, what="ravl audit") as stage:  # the three files replace the folder as one unit
        atomic_write_json(stage / "timings.json", d.pop("timings", {}))  # wall clock kept apart
        atomic_write_json(stage / "discovery.json", {**d, "timings": {}})  # the same run gives the same bytes
        write_json(stage / "evaluation.json", evaluation)
        write_report(d, ds, stage, title=f"ravl audit: {model.name} on {Path(args.data).name}", evaluation=evaluation)
    return out / "report.html"
