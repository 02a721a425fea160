"""``ravl mitigate``: fine-tune again with RaVL's region-aware loss or a baseline (Stage 2)."""

from __future__ import annotations

import sys
from pathlib import Path

from ravl.cli._common import add_model_arguments, fmt, print_table, resolve_device, templates_from_args
from ravl.exceptions import RavlError

COMMAND = "mitigate"
HELP = "fine-tune again so the model stops relying on the discovered feature (RaVL Stage 2), resumable"
DESCRIPTION = (HELP + ". Labels the fine-tuning regions with the audited checkpoint and discovery.json, then "
               "fine-tunes from the original starting weights (--start init) or the audited ones "
               "(--start checkpoint). Rerun the same command after an interruption to continue.")

#: Methods offered on the command line (ravl.mitigation.api.METHODS).
METHOD_CHOICES = ["ravl", "standard", "upsample", "vl-erm", "vl-gdro", "spurious-aware", "cfr"]


def add_arguments(parser) -> None:
    add_model_arguments(parser, checkpoint_help="the audited checkpoint folder (the model `ravl discover` examined)")
    parser.add_argument("--data", required=True, help="fine-tuning dataset folder (captions and labels on train rows)")
    parser.add_argument("--discovery", required=True, help="discovery.json written by `ravl discover`")
    parser.add_argument("--method", default="ravl", choices=METHOD_CHOICES)
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
    parser.add_argument("--region-mode", default=None, choices=["masked", "roi", "crop"],
                        help="region embedding mode (default: the discovery's)")
    parser.add_argument("--lam", type=float, default=1.0, help="weight λ of RaVL's region-aware terms")
    parser.add_argument("--region-warmup-epochs", type=int, default=None,
                        help="RaVL: first epochs with the CLIP loss only (default: 1 with --start init, 0 with "
                             "--start checkpoint)")
    parser.add_argument("--tau", type=float, default=0.07, help="temperature of RaVL's region-aware terms")
    parser.add_argument("--eta", type=float, default=0.01, help="Group DRO step size (vl-gdro)")
    parser.add_argument("--trainable", default=None, choices=["all", "image-projection"],
                        help="train every parameter, or the image tower's final projection only (default: 'all'; "
                             "'image-projection' for cfr, as its authors do)")
    parser.add_argument("--templates", default=None,
                        help="text file with one prompt template per line containing '{}' for the class text of the "
                             "losses and the before/after evaluation (default: the templates discovery scored with, "
                             "recorded in discovery.json)")
    parser.add_argument("--spurious-name", action="append", default=[],
                        help="name of the spurious attribute for spurious-aware's L_ls (repeatable)")
    g = parser.add_argument_group("fine-tuning (default: the audited checkpoint's recorded values)")
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--seed", type=int, default=None, help="data-order seed")
    g.add_argument("--val-split", default=None, help="split validated after each epoch ('none' to skip)")
    parser.add_argument("--no-resume", action="store_true", help="ignore and overwrite an existing resume state")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _features(text: str):
    t = str(text).strip().lower()
    if t in ("class", "top", "all"):
        return t
    try:
        return tuple(int(p) for p in t.split(","))
    except ValueError:
        raise SystemExit(f"error: --features must be 'class', 'top', 'all' or comma-separated ranks like '1,2'; "
                         f"got {text!r}")


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
    from ravl.data.dataset import load_dataset
    from ravl.evaluation.metrics import evaluate
    from ravl.models import load_model
    from ravl.utils.io import atomic_write_json

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
    from dataclasses import replace

    from ravl.data.dataset import load_dataset
    from ravl.mitigation.api import MitigationOptions, mitigate
    from ravl.models.checkpoint import read_checkpoint_config
    from ravl.training.loop import FinetuneConfig

    if not args.checkpoint:
        raise SystemExit("error: --checkpoint is required: the audited checkpoint folder that discovery examined")
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
        raise SystemExit("error: give --init (starting weights) or --init-seed (a fresh tiny CLIP), not both")
    init = None
    if args.init is not None:
        init = {"model": name, "checkpoint": str(Path(args.init).resolve()) if Path(args.init).exists() else args.init}
    elif args.init_seed is not None:
        init = {"model": name, "checkpoint": None, "seed": args.init_seed}
    q = str(args.assignment_quantile).strip().lower()
    try:
        quantile = None if q == "none" else float(q)
    except ValueError:
        raise SystemExit(f"error: --assignment-quantile must be a number in [0, 1] or 'none'; got {args.assignment_quantile!r}")
    opts = MitigationOptions(features=_features(args.features), min_gap_ratio=args.min_gap_ratio,
                             assignment_quantile=quantile, region_mode=args.region_mode, lam=args.lam,
                             region_warmup_epochs=args.region_warmup_epochs,
                             tau=args.tau, eta=args.eta, spurious_names=tuple(args.spurious_name),
                             templates=templates_from_args(args), trainable=args.trainable)
    train = load_dataset(args.data)
    try:
        res = mitigate(args.checkpoint, train, args.discovery, out_dir=args.out, method=args.method,
                       start=args.start, config=cfg, options=opts, model_name=name, init=init,
                       eval_dataset=args.discovery_data, device=device, resume=not args.no_resume,
                       progress=progress)
    except ValueError as exc:  # e.g. a discovery without a feature, a feature rank it does not have
        if isinstance(exc, RavlError):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1

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
