"""``ravl mitigate``: fine-tune again with RaVL's region-aware loss or a baseline (Stage 2)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ravl.cli._common import add_model_arguments, fmt, print_table, resolve_device, templates_from_args
from ravl.cli._methods import add_method_arguments, method_configs_from_args
from ravl.data.dataset import load_dataset
from ravl.evaluation.metrics import evaluate
from ravl.exceptions import InvalidParameterError
from ravl.mitigation.api import MitigationOptions, mitigate
from ravl.mitigation.labelling import FEATURE_CHOICES
from ravl.mitigation.registry import TRAINABLE, describe_mitigation_methods, list_mitigation_methods
from ravl.models.base import load_model
from ravl.models.checkpoint import read_checkpoint_config
from ravl.models.regions import REGION_MODES
from ravl.training.loop import FinetuneConfig
from ravl.utils.io import atomic_write_json

DESCRIPTION = ("fine-tune again so the model stops relying on the discovered feature (RaVL Stage 2), resumable. Labels the fine-tuning regions with the audited checkpoint and discovery.json, then "
               "fine-tunes from the original starting weights (--start init) or the audited ones "
               "(--start checkpoint). Rerun the same command after an interruption to continue.")

def add_arguments(parser) -> None:
    add_model_arguments(parser, checkpoint_help="the audited checkpoint folder (the model `ravl discover` examined)")
    parser.add_argument("--data", required=True, help="fine-tuning dataset folder (captions and labels on train rows)")
    parser.add_argument("--discovery", required=True, help="discovery.json written by `ravl discover`")
    parser.add_argument("--method", default="ravl", choices=list_mitigation_methods(),
                        help="; ".join(f"{k}: {v}" for k, v in describe_mitigation_methods().items()))
    parser.add_argument("--out", required=True, help="output checkpoint folder")
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
                             "feature's class), 'top', 'all' or comma-separated ranks")
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
    parser.add_argument("--templates", default=None,
                        help="text file with one prompt template per line containing '{}' for the class text of the "
                             "losses and the before/after evaluation (default: the templates discovery scored with, "
                             "recorded in discovery.json)")
    g = parser.add_argument_group("fine-tuning (default: the audited checkpoint's recorded values)")
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--seed", type=int, default=None, help="data-order seed")
    g.add_argument("--val-split", default=None, help="split validated after each epoch ('none' to skip)")
    parser.add_argument("--no-resume", action="store_true", help="ignore and overwrite an existing resume state")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_method_arguments(parser)


def parse_features(text: str, flag: str = "--features"):
    """``'class'``, ``'top'``, ``'all'`` or comma-separated ranks (``'1,2'`` -> ``(1, 2)``)."""
    t = str(text).strip().lower()
    if t in FEATURE_CHOICES:
        return t
    try:
        return tuple(int(p) for p in t.split(","))
    except ValueError:
        raise InvalidParameterError(f"{flag} must be 'class', 'top', 'all' or comma-separated ranks like '1,2'; "
                                    f"got {text!r}") from None


def parse_quantile(text: str, flag: str = "--assignment-quantile") -> float | None:
    """A number in [0, 1] or ``'none'`` (``None``)."""
    q = str(text).strip().lower()
    try:
        return None if q == "none" else float(q)
    except ValueError:
        raise InvalidParameterError(f"{flag} must be a number in [0, 1] or 'none'; got {text!r}") from None


def default_eval_data(data: str | Path) -> Path | None:
    """The sibling ``eval`` folder of a synthetic setting's ``train`` folder, if there is one."""
    root = Path(data).resolve().parent
    if (root / "setting.json").is_file() and (root / "eval" / "metadata.jsonl").is_file():
        return root / "eval"
    return None


def before_after(before_ckpt, after_ckpt, eval_dir, *, templates, method: str, model_name: str | None = None,
                 device: str | None = None, spurious_feature: str | None = None, split: str = "test",
                 progress: bool = True) -> dict:
    """Evaluate two checkpoints on ``eval_dir``, print the four metrics side by side and write
    ``AFTER/evaluation.json`` (read by the report); returns that dict."""
    ds = load_dataset(eval_dir)
    res = {}
    for which, ckpt in (("before", before_ckpt), ("after", after_ckpt)):
        ev = evaluate(load_model(model_name, checkpoint=ckpt, device=device), ds, split=split, templates=templates,
                      spurious_feature=spurious_feature, progress=progress)
        res[which] = {"checkpoint": str(ckpt), "metrics": ev.summary_metrics(), "result": ev.to_dict()}
    mb, ma = res["before"]["metrics"], res["after"]["metrics"]
    print(f"\nzero-shot accuracy on the {split} split of {eval_dir} (before = {before_ckpt}, after = {after_ckpt})")
    print_table([[k, fmt(mb[k]), fmt(ma[k]), "  -  " if mb[k] is None or ma[k] is None else f"{ma[k] - mb[k]:+.3f}"]
                 for k in mb], ["metric", "before", "after", "change"])
    for which in ("before", "after"):
        wg = res[which]["result"]["image"]["worst_group"]
        if wg:
            state = "with" if wg["feature_present"] else "without"
            feat = res[which]["result"]["spurious_feature"]
            print(f"worst image group {which}: {wg['label']} {state} {feat} ({fmt(wg['accuracy'])}, n={wg['n']})")
    out = {"eval_data": str(Path(eval_dir).resolve()), "split": split, "method": method,
           "templates": list(templates) if templates else None, **res}
    atomic_write_json(Path(after_ckpt) / "evaluation.json", out)
    return out


def run(args) -> int:
    if not args.checkpoint:
        raise InvalidParameterError("--checkpoint is required: the audited checkpoint folder that discovery examined")
    method_config = method_configs_from_args(args, [args.method]).get(args.method)
    progress = not args.quiet
    device = resolve_device(args.device)
    ck = read_checkpoint_config(args.checkpoint)
    name = args.model or ck["model"]
    cfg = FinetuneConfig.from_dict(ck["finetune"]) if isinstance(ck.get("finetune"), dict) else FinetuneConfig()
    over = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr),
                              ("seed", args.seed)) if v is not None}
    if args.val_split is not None:
        over["val_split"] = None if args.val_split.lower() == "none" else args.val_split
    cfg = replace(cfg, **over)
    if args.init is not None and args.init_seed is not None:
        raise InvalidParameterError("give --init (starting weights) or --init-seed (a fresh tiny CLIP), not both")
    init = None
    if args.init is not None:
        init = {"model": name, "checkpoint": str(Path(args.init).resolve()) if Path(args.init).exists() else args.init}
    elif args.init_seed is not None:
        init = {"model": name, "checkpoint": None, "seed": args.init_seed}
    opts = MitigationOptions(features=parse_features(args.features), min_gap_ratio=args.min_gap_ratio,
                             assignment_quantile=parse_quantile(args.assignment_quantile),
                             region_mode=args.region_mode, templates=templates_from_args(args),
                             trainable=args.trainable)
    train = load_dataset(args.data)
    res = mitigate(args.checkpoint, train, args.discovery, out_dir=args.out, method=args.method, start=args.start,
                   config=cfg, options=opts, method_config=method_config, model_name=name, init=init,
                   eval_dataset=args.discovery_data, device=device, resume=not args.no_resume, progress=progress)

    lab = res.labelling
    if lab:
        t = lab.get("truth")
        extra = (f"; vs planted '{t['attribute']}': precision {fmt(t['region_precision'])}, recall "
                 f"{fmt(t['region_recall'])}") if t else ""
        ranks = ", ".join(f"#{r}" for r in lab.get("feature_ranks", []))
        print(f"labelled {lab['n_regions']} regions with discovered feature(s) {ranks}: {lab['n_spurious_regions']} "
              f"spurious in {lab['n_images_with_feature']} of {lab['n_images']} images{extra}")
        if lab.get("n_outside_threshold"):
            print(f"  ({lab['n_outside_threshold']} regions nearest to a spurious medoid but less similar to it than "
                  "the cluster's own members were left as candidate core; --assignment-quantile none keeps them)")
    rows = [[h["epoch"], f"{h['train_loss']:.4f}", fmt(h.get("val_zero_shot_accuracy")), f"{h['images_per_s']:.0f}"]
            for h in res.history]
    print_table(rows, ["epoch", "train loss", "val zero-shot acc", "images/s"])
    if res.resumed_from:
        print(f"(resumed from epoch {res.resumed_from[0] + 1}, step {res.resumed_from[1]})")

    eval_dir = Path(args.eval_data) if args.eval_data else default_eval_data(args.data)
    if eval_dir is not None:
        before_after(args.checkpoint, args.out, eval_dir, templates=res.options["templates"], method=args.method,
                     model_name=name, device=device, progress=progress)
    print(f"checkpoint: {res.checkpoint_dir}")
    return 0
