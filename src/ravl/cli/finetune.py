"""``ravl finetune``: contrastive fine-tuning on a dataset folder's image-caption pairs."""

from __future__ import annotations

from ravl.cli._common import (
    add_model_arguments,
    add_recipe_arguments,
    fmt_rate,
    model_from_args,
    model_options,
    out_dir_arg,
    print_table,
    recipe_overrides,
)
from ravl.data.dataset import load_dataset
from ravl.training.loop import FinetuneConfig, finetune
from ravl.training.options import check_precision, model_defaults

DESCRIPTION = ("fine-tune a model on image-caption pairs (symmetric InfoNCE), resumable. Writes "
               "OUT/model.safetensors + OUT/config.json after every epoch and a resume state; rerun the same command"
               " after an interruption to continue where it stopped.")


def add_arguments(parser) -> None:
    add_model_arguments(parser, checkpoint_help="weights to start from (default: the model's own initialisation)")
    parser.add_argument("--model-seed", type=int, default=0, help="seed of the tiny CLIP's initial weights")
    parser.add_argument("--data", required=True, help="dataset folder with metadata.jsonl (captions on train rows)")
    parser.add_argument("--out", required=True, type=out_dir_arg, help="output checkpoint folder")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--no-resume", action="store_true", help="ignore and overwrite an existing resume state")
    parser.add_argument("--allow-data-change", action="store_true",
                        help="resume even though the training data changed since the run started (refused otherwise)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_recipe_arguments(parser, title="recipe (default: the model's, see --lr)")


def run(args) -> int:
    over = {**recipe_overrides(args), "train_split": args.train_split}
    # the recipe is checked first: a bad --epochs / --lr / --precision fails before any loading
    FinetuneConfig(**over)
    check_precision(over.get("precision", "fp32"), args.device)
    ds = load_dataset(args.data)  # finetune() checks that every training row has a caption
    model_kwargs = {"seed": args.model_seed} if (args.model or "tiny") == "tiny" else {}
    model = model_from_args(args, **model_kwargs)
    cfg = FinetuneConfig.for_model(model, **over)
    defaults = {k: v for k, v in model_defaults(model).items() if k not in over}
    if defaults:
        print(f"recipe defaults of {model.name}: " + ", ".join(f"{k}={v}" for k, v in defaults.items()))
    init = {"model": model.name, "checkpoint": args.checkpoint, **model_options(args), **model_kwargs}
    res = finetune(model, ds, args.out, cfg, resume=not args.no_resume, progress=not args.quiet, init=init,
                   allow_data_change=args.allow_data_change, workers=args.workers)
    rows = [[h["epoch"], f"{h['train_loss']:.4f}", f"{h.get('val_loss', float('nan')):.4f}",
             f"{h.get('val_zero_shot_accuracy', float('nan')):.3f}", fmt_rate(h['images_per_s'])] for h in res.history]
    print_table(rows, ["epoch", "train loss", "val loss", "val zero-shot acc", "images/s"])
    if res.resumed_from:
        print(f"(resumed from epoch {res.resumed_from[0] + 1}, step {res.resumed_from[1]})")
    print(f"checkpoint: {res.checkpoint_dir}")
    return 0
