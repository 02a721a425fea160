"""``ravl mitigate``: fine-tune again with RaVL's region-aware loss or a baseline (Stage 2)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ravl.cli._common import (
    add_model_arguments,
    add_recipe_arguments,
    add_region_arguments,
    add_sharding_arguments,
    data_from_args,
    fmt,
    fmt_rate,
    out_dir_arg,
    parse_features,
    parse_quantile,
    print_table,
    recipe_overrides,
    resolve_device,
    sharding_from_args,
)
from ravl.cli._methods import add_method_arguments, method_configs_from_args
from ravl.data.dataset import load_dataset
from ravl.discovery.result import DiscoveryResult
from ravl.evaluation.metrics import evaluate, groups_from_discovery
from ravl.evaluation.verify import verify_mitigation
from ravl.exceptions import InvalidParameterError
from ravl.mitigation.api import MitigationOptions, mitigate
from ravl.mitigation.labelling import discovery_dataset, left_out_features
from ravl.mitigation.registry import TRAINABLE, describe_mitigation_methods, list_mitigation_methods
from ravl.models.base import load_model
from ravl.models.checkpoint import read_checkpoint_config
from ravl.models.regions import REGION_MODES
from ravl.report.html import write_report
from ravl.training.loop import FinetuneConfig
from ravl.training.options import check_precision
from ravl.utils.io import atomic_write_json
from ravl.zeroshot import templates_from_spec

DESCRIPTION = ("fine-tune again so the model stops relying on the discovered feature (RaVL Stage 2), resumable. "
               "Labels the fine-tuning regions with the audited checkpoint and discovery.json, then fine-tunes from "
               "the original starting weights (--start init) or the audited ones (--start checkpoint). Rerun the "
               "same command after an interruption to continue.")

def add_arguments(parser) -> None:
    add_model_arguments(parser, checkpoint_help="the audited checkpoint folder (the model `ravl discover` examined)",
                        loader_options=False)
    parser.add_argument("--data", required=True, help="fine-tuning dataset folder (captions and labels on train rows)")
    parser.add_argument("--discovery", required=True, help="discovery.json written by `ravl discover`")
    parser.add_argument("--method", default="ravl", choices=list_mitigation_methods(),
                        help="; ".join(f"{k}: {v}" for k, v in describe_mitigation_methods().items()))
    parser.add_argument("--out", required=True, type=out_dir_arg, help="output checkpoint folder")
    parser.add_argument("--start", default="init", choices=["init", "checkpoint"],
                        help="start from the original fine-tuning's initial weights, or from the audited checkpoint")
    parser.add_argument("--init", default=None, metavar="WEIGHTS",
                        help="with --start init: the weights the original fine-tuning started from (a ravl checkpoint "
                             "folder or the backend's weights for --model), when the audited checkpoint records none "
                             "or you want another")
    parser.add_argument("--init-seed", type=int, default=None,
                        help="with --start init: tiny CLIP seed to start from when the checkpoint records no 'init'")
    parser.add_argument("--eval-data", default=None,
                        help="evaluation folder for the before/after table (test split); default: the sibling "
                             "'eval' folder when --data is a synthetic setting's 'train' folder")
    parser.add_argument("--discovery-data", default=None,
                        help="the folder discovery ran on, if it moved (default: recorded in discovery.json)")
    parser.add_argument("--features", default="class",
                        help="discovered features treated as spurious: 'class' (every feature tied to the top "
                             "feature's class, by its name and its largest weighted gap), 'top', 'all' or "
                             "comma-separated ranks")
    parser.add_argument("--min-gap-ratio", type=float, default=0.5,
                        help="with --features class: a feature joins the top one only if its performance gap is at "
                             "least this fraction of the top feature's")
    parser.add_argument("--assignment-quantile", default="0.05",
                        help="a training region joins a spurious cluster only if it is as close to the medoid as this "
                             "quantile of the cluster's own members in discovery; 'none': nearest medoid only")
    parser.add_argument("--region-mode", default=None, choices=list(REGION_MODES),
                        help="region embedding mode (default: the discovery's)")
    parser.add_argument("--trainable", default=None, choices=list(TRAINABLE),
                        help="train every parameter, or the image tower's final projection only (default: the "
                             "method's: 'image-projection' for cfr, as its authors do, else 'all')")
    parser.add_argument("--templates", default=None, metavar="SET|FILE",
                        help="prompt templates of the class text of the losses and the before/after evaluation: a "
                             "named set (generic, digits, imagenet) or a text file with one template per line "
                             "containing '{}' (default: the templates discovery scored with, recorded in "
                             "discovery.json)")
    add_recipe_arguments(parser, title="fine-tuning (default: the audited checkpoint's recorded values)")
    parser.add_argument("--no-resume", action="store_true", help="ignore and overwrite an existing resume state")
    parser.add_argument("--allow-data-change", action="store_true",
                        help="accept data changed since discovery (its split) or since the interrupted run started")
    parser.add_argument("--allow-empty-labelling", action="store_true",
                        help="train even when no training region is assigned to the discovered feature (an error "
                             "otherwise: the feature is not in the training data as discovery saw it)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the verify step (each discovered feature before/after, and discovery on the "
                             "mitigated model)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_region_arguments(parser)
    add_sharding_arguments(parser)
    add_method_arguments(parser)


def default_eval_data(data: str | Path) -> Path | None:
    """The sibling ``eval`` folder of a synthetic setting's ``train`` folder, if there is one."""
    root = Path(data).resolve().parent
    if (root / "setting.json").is_file() and (root / "eval" / "metadata.jsonl").is_file():
        return root / "eval"
    return None


def before_after(before_ckpt, after_ckpt, eval_dir, *, templates, method: str, model_name: str | None = None,
                 device: str | None = None, spurious_feature: str | None = None, split: str = "test",
                 discovery=None, allow_data_change: bool = False, progress: bool = True) -> dict:
    """Evaluate two checkpoints on ``eval_dir``, print the four metrics side by side and write
    ``AFTER/evaluation.json`` (read by the report); returns that dict.

    The groups come from ``region_attributes`` when the data has them; otherwise from the
    discovered feature (``discovery``, assigned with the audited model), and the table says so.
    """
    ds = load_dataset(eval_dir)
    models = {"before": load_model(model_name, checkpoint=before_ckpt, device=device),
              "after": load_model(model_name, checkpoint=after_ckpt, device=device)}
    present = None
    groups_from = "region_attributes"
    if discovery is not None and not all(r.region_attributes is not None for r in ds.subset(split).records):
        present, spurious_feature = groups_from_discovery(models["before"], ds, discovery, split=split,
                                                          allow_data_change=allow_data_change, progress=progress)
        groups_from = "discovery"
    res = {}
    for which, ckpt in (("before", before_ckpt), ("after", after_ckpt)):
        ev = evaluate(models[which], ds, split=split, templates=templates, spurious_feature=spurious_feature,
                      feature_present=present, progress=progress)
        res[which] = {"checkpoint": str(ckpt), "metrics": ev.summary_metrics(), "result": ev.to_dict()}
    mb, ma = res["before"]["metrics"], res["after"]["metrics"]
    print(f"\nzero-shot accuracy on the {split} split of {eval_dir} (before = {before_ckpt}, after = {after_ckpt})")
    print_table([[k, fmt(mb[k]), fmt(ma[k]), "  -  " if mb[k] is None or ma[k] is None else f"{ma[k] - mb[k]:+.3f}"]
                 for k in mb], ["metric", "before", "after", "change"])
    feat = res["after"]["result"]["spurious_feature"]
    if feat is None:
        print("(no worst-group metrics: the evaluation data has no region_attributes and no discovered feature was "
              "given to form the groups)")
    elif groups_from == "discovery":
        print(f"(groups: {feat}, present in {int(present.sum())} of {len(present)} images; the data has no "
              "region_attributes, so the groups come from discovery)")
    if mb["Region Overall"] is None:
        print("(no region metrics: they score each image's core region, which needs region_attributes naming the "
              "class)")
    for which in ("before", "after"):
        wg = res[which]["result"]["image"]["worst_group"]
        if wg:
            state = "with" if wg["feature_present"] else "without"
            print(f"worst image group {which}: {wg['label']} {state} {feat} ({fmt(wg['accuracy'])}, n={wg['n']})")
    out = {"eval_data": str(Path(eval_dir).resolve()), "split": split, "method": method,
           "templates": list(templates) if templates else None, "groups_from": groups_from if feat else None, **res}
    atomic_write_json(Path(after_ckpt) / "evaluation.json", out)
    return out


def print_verify(v: dict) -> None:
    """Print the verify step: each discovered feature's class with / without it, before and after."""
    print(f"\nverify: each discovered feature on the {v['split']} split discovery examined (an image carries a "
          "feature when one of its regions is in the feature's cluster)")
    rows = []
    for f in v["features"]:
        b, a = f.get("class_before") or {}, f.get("class_after") or {}
        rows.append([f"#{f['rank']} {f['class']}", f["n_images_with"],
                     f"{fmt(b.get('acc_with'))} / {fmt(b.get('acc_without'))}", fmt(b.get("gap")),
                     f"{fmt(a.get('acc_with'))} / {fmt(a.get('acc_without'))}", fmt(a.get("gap")),
                     f"{fmt(f['before']['G'])} -> {fmt(f['after']['G'])}"])
    print_table(rows, ["feature", "images with it", "before: with / without", "before: gap", "after: with / without",
                       "after: gap", "G (all classes)"])
    redo = v.get("rediscovery")
    if redo is not None:
        if not redo["features"]:
            print("discovery on the mitigated model: no feature found.")
        for g in redo["features"][:3]:
            match = (f"overlaps original #{g['matches_original']} (Jaccard {g['jaccard']:.2f})"
                     if g["matches_original"] is not None else "a new cluster")
            print(f"discovery on the mitigated model: #{g['rank']} tied to {g['class']!r}, gap {fmt(g['gap'])}, "
                  f"{match}")


def run(args) -> int:
    if not args.checkpoint:
        raise InvalidParameterError("--checkpoint is required: the audited checkpoint folder that discovery examined")
    method_config = method_configs_from_args(args, [args.method]).get(args.method)
    sharding = sharding_from_args(args)
    progress = not args.quiet
    device = resolve_device(args.device)
    ck = read_checkpoint_config(args.checkpoint)
    name = args.model or ck["model"]
    cfg = FinetuneConfig.from_dict(ck["finetune"]) if isinstance(ck.get("finetune"), dict) else FinetuneConfig()
    cfg = replace(cfg, **recipe_overrides(args))
    check_precision(cfg.precision, device)
    if args.init is not None and args.init_seed is not None:
        raise InvalidParameterError("give --init (starting weights) or --init-seed (a fresh tiny CLIP), not both")
    init = None
    if args.init is not None:
        init = {"model": name, "checkpoint": str(Path(args.init).resolve()) if Path(args.init).exists() else args.init}
    elif args.init_seed is not None:
        init = {"model": name, "checkpoint": None, "seed": args.init_seed}
    opts = MitigationOptions(features=parse_features(args.features), min_gap_ratio=args.min_gap_ratio,
                             assignment_quantile=parse_quantile(args.assignment_quantile),
                             region_mode=args.region_mode,
                             templates=templates_from_spec(args.templates) if args.templates else None,
                             trainable=args.trainable)
    train = data_from_args(args, args.data)
    res = mitigate(args.checkpoint, train, args.discovery, out_dir=args.out, method=args.method, start=args.start,
                   config=cfg, options=opts, method_config=method_config, model_name=name, init=init,
                   eval_dataset=args.discovery_data, device=device, resume=not args.no_resume,
                   allow_data_change=args.allow_data_change, allow_empty_labelling=args.allow_empty_labelling,
                   progress=progress, workers=args.workers, sharding=sharding)

    discovery = DiscoveryResult.from_json(args.discovery)
    lab = res.labelling
    if lab:
        t = lab.get("truth")
        extra = (f"; vs planted '{t['attribute']}': precision {fmt(t['region_precision'])}, recall "
                 f"{fmt(t['region_recall'])}") if t else ""
        ranks = ", ".join(f"#{r}" for r in lab.get("feature_ranks", []))
        print(f"labelled {lab['n_regions']} regions with discovered feature(s) {ranks}: {lab['n_spurious_regions']} "
              f"spurious in {lab['n_images_with_feature']} of {lab['n_images']} images{extra}")
        left = left_out_features(discovery, opts.features, min_gap_ratio=opts.min_gap_ratio)
        if left:
            print("  left out (not the same shortcut): " + "; ".join(left) + " (--features RANKS uses them)")
        if lab.get("n_outside_threshold"):
            print(f"  ({lab['n_outside_threshold']} regions nearest to a spurious medoid but less similar to it than "
                  "the cluster's own members were left as candidate core; --assignment-quantile none keeps them)")
    rows = [[h["epoch"], f"{h['train_loss']:.4f}", fmt(h.get("val_zero_shot_accuracy")), fmt_rate(h['images_per_s'])]
            for h in res.history]
    print_table(rows, ["epoch", "train loss", "val zero-shot acc", "images/s"])
    if res.resumed_from:
        print(f"(resumed from epoch {res.resumed_from[0] + 1}, step {res.resumed_from[1]})")

    print(f"prompt templates ({res.options['template_source']}): "
          + "; ".join(repr(t) for t in res.options["templates"][:4]))

    out = Path(args.out)
    eval_dir = Path(args.eval_data) if args.eval_data else default_eval_data(args.data)
    evaluation = None
    if eval_dir is not None:
        before_after(args.checkpoint, args.out, eval_dir, templates=res.options["templates"], method=args.method,
                     model_name=name, device=device, discovery=discovery, allow_data_change=args.allow_data_change,
                     progress=progress)
        evaluation = out / "evaluation.json"
    verify = None
    if not args.no_verify and discovery.features:
        v = verify_mitigation(load_model(name, checkpoint=args.checkpoint, device=device),
                              load_model(name, checkpoint=args.out, device=device), discovery,
                              eval_dataset=args.discovery_data, templates=res.options["templates"],
                              random_state=discovery.random_state or 0, allow_data_change=args.allow_data_change,
                              progress=progress)
        verify = out / "verify.json"
        atomic_write_json(verify, v)
        print_verify(v)
    if evaluation is not None or verify is not None:
        ds = discovery_dataset(discovery, args.discovery_data, allow_data_change=args.allow_data_change)
        page = write_report(discovery, ds, out, title=f"ravl mitigation ({args.method}): {Path(args.out).name}",
                            mitigation=evaluation, verify=verify)
        print(f"wrote {page} (open it in a browser)")
    print(f"checkpoint: {res.checkpoint_dir}")
    return 0
