"""Argument groups and printing helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ravl.data.dataset import SPLITS, RegionDataset, load_dataset
from ravl.data.region_sources import DEFAULT_IOU_THRESHOLD, parse_region_source, with_region_source
from ravl.exceptions import InvalidParameterError
from ravl.mitigation.labelling import FEATURE_CHOICES
from ravl.models import load_model
from ravl.models.checkpoint import is_checkpoint, read_checkpoint_config
from ravl.models.sharded import Sharding
from ravl.training.options import FREEZE, PRECISIONS
from ravl.utils.io import atomic_write_json
from ravl.utils.outputs import check_output_dir, check_output_file
from ravl.zeroshot import TEMPLATE_SETS, default_templates, templates_from_spec


def add_model_arguments(parser: argparse.ArgumentParser, *, checkpoint_help: str | None = None,
                        loader_options: bool = True) -> None:
    """``--model``, ``--checkpoint``, ``--device`` and (``loader_options``) ``--pretrained``, ``--model-option``."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", default=None,
                   help="registry name (see `ravl models`); default: the name stored in --checkpoint, else 'tiny'")
    g.add_argument("--checkpoint", default=None,
                   help=checkpoint_help
                   or "ravl checkpoint folder (model.safetensors + config.json) or backend weights")
    if not loader_options:
        add_device_argument(g)
        return
    g.add_argument("--pretrained", default=None, metavar="TAG",
                   help="open_clip: a pretrained tag (e.g. openai) or weights file, resolved by open_clip from its "
                        "local cache (ravl works offline); tiny: 'synthetic', the weights ravl ships (pretrained "
                        "on a broad synthetic corpus); not with --checkpoint")
    g.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the model's loader, repeatable, e.g. roi_layers=4 or roi_pool=patch-mean for "
                        "open_clip / Hugging Face ViTs (values are read as JSON when they parse, else as text)")
    add_device_argument(g)


def model_options(args) -> dict[str, Any]:
    """``--pretrained`` and ``--model-option KEY=VALUE`` as ``load_model`` keyword arguments.

    Raises:
        InvalidParameterError: A malformed option, or ``--pretrained`` for a model that is neither
            open_clip nor the tiny CLIP.
    """
    opts: dict[str, Any] = {}
    for item in getattr(args, "model_option", None) or []:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip().isidentifier():
            raise InvalidParameterError(f"--model-option {item!r} must be KEY=VALUE with KEY a name, e.g. "
                                        "roi_layers=4.")
        try:
            opts[key.strip()] = json.loads(value)
        except ValueError:
            opts[key.strip()] = value
    if getattr(args, "pretrained", None) is not None:
        name = args.model or ""
        if not (name.startswith("open_clip:") or name == "tiny" or (not name and not args.checkpoint)):
            raise InvalidParameterError("--pretrained is for open_clip models (--model open_clip:ARCH) and the tiny "
                                        f"CLIP (--model tiny --pretrained synthetic); got --model {name or '(none)'}"
                                        f"{' with --checkpoint' if not name else ''}.")
        opts["pretrained"] = args.pretrained
    return opts


def add_device_argument(parser) -> None:
    """``--device``, checked when the command line is parsed (before any work)."""
    parser.add_argument("--device", default="auto", type=_device_type,
                        help="'auto' (CUDA when available, else CPU), 'cpu', 'cuda', 'cuda:1', ...")


def _device_type(text: str) -> str:
    try:
        return resolve_device(text)
    except InvalidParameterError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def resolve_device(name: str) -> str:
    """``--device``: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``, checked.

    Raises:
        InvalidParameterError: An unknown device, CUDA where there is none, or a GPU index beyond
            the GPUs present.
    """
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise InvalidParameterError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidParameterError(f"--device {name} asks for CUDA, which is not available on this machine "
                                        "(no GPU, or a CPU-only torch build); use --device cpu or auto.")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise InvalidParameterError(f"--device {name}: this machine has {n} CUDA device(s), numbered 0 to "
                                        f"{n - 1}.")
    elif dev.type not in ("cpu", "mps"):
        raise InvalidParameterError(f"--device {name!r}: ravl runs on cpu or cuda (auto picks); got a {dev.type} "
                                    "device.")
    return str(dev)


def model_from_args(args, **kwargs):
    """Load the model named by ``--model`` / ``--checkpoint`` on ``--device``."""
    name = args.model
    if name is None and args.checkpoint and (Path(args.checkpoint) / "config.json").is_file():
        name = read_checkpoint_config(args.checkpoint).get("model")
    return load_model(name or "tiny", checkpoint=args.checkpoint, device=resolve_device(args.device),
                      **{**model_options(args), **kwargs})


def _workers_type(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0 (0: load images in the main process); "
                                         f"got {text!r}")
    return n


def add_recipe_arguments(parser: argparse.ArgumentParser, *, title: str) -> None:
    """The fine-tuning recipe flags of ``ravl finetune`` and ``ravl mitigate``; every one defaults to
    ``None`` (the model's defaults for finetune, the audited run's recorded values for mitigate),
    except ``--workers``, which changes how fast the run is, not its result."""
    g = parser.add_argument_group(title)
    g.add_argument("--epochs", type=int, default=None, help="passes over the training split")
    g.add_argument("--batch-size", type=int, default=None,
                   help="image-caption pairs per step (the contrastive negatives are the batch)")
    g.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (the model's default: 2e-3 for the tiny CLIP, 1e-5 for pretrained "
                        "open_clip / Hugging Face CLIPs)")
    g.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay")
    g.add_argument("--warmup-fraction", type=float, default=None, help="fraction of the steps in linear warm-up")
    g.add_argument("--seed", type=int, default=None, help="data-order seed")
    g.add_argument("--val-split", default=None, help="split validated after each epoch ('none' to skip)")
    g.add_argument("--precision", default=None, choices=list(PRECISIONS),
                   help="fp32, or autocast to bf16 / fp16 (fp16: CUDA only, with loss scaling); weights stay fp32")
    g.add_argument("--freeze", default=None, choices=list(FREEZE),
                   help="keep one tower's weights: 'text' (train the image tower), 'image' or 'none'")
    g.add_argument("--grad-checkpointing", action="store_true", default=None,
                   help="recompute activations in the backward pass: less memory, about a third more time")
    g.add_argument("--workers", type=_workers_type, default=0, metavar="N",
                   help="processes that decode and preprocess images (default 0: this process)")


def recipe_overrides(args) -> dict[str, Any]:
    """The :class:`~ravl.training.FinetuneConfig` fields given by :func:`add_recipe_arguments` flags."""
    names = ("epochs", "batch_size", "lr", "weight_decay", "warmup_fraction", "seed", "precision", "freeze",
             "grad_checkpointing")
    over = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    if getattr(args, "val_split", None) is not None:
        over["val_split"] = None if str(args.val_split).lower() == "none" else args.val_split
    return over


def add_sharding_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backend serial|ray`` and the Ray options of sharded embedding extraction."""
    g = parser.add_argument_group("embedding on a Ray cluster (results identical to the serial run)")
    g.add_argument("--backend", choices=["serial", "ray"], default="serial",
                   help="'ray': embed images and regions in shards as Ray tasks, each loading the model from the "
                        "checkpoint (same path on every node)")
    g.add_argument("--ray-address", default=None,
                   help="existing Ray cluster ('auto', HOST:PORT or ray://HOST:PORT); default: a local Ray")
    g.add_argument("--ray-workers", type=int, default=None, metavar="N",
                   help="shards embedded at once (default: the cluster's CPUs, or GPUs with --gpus-per-worker)")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="G",
                   help="GPUs each Ray task reserves; such tasks embed on cuda (default 0: CPU tasks)")
    g.add_argument("--threads-per-worker", type=int, default=1, metavar="N",
                   help="CPUs (torch threads) each Ray task reserves")
    g.add_argument("--shard-batches", type=int, default=32, metavar="N",
                   help="batches per shard (each shard loads the model once)")


def sharding_from_args(args) -> Sharding | None:
    """The :class:`~ravl.models.sharded.Sharding` the flags ask for (``None``: plain serial)."""
    if args.backend == "serial":
        given = [f for f, v in (("--ray-address", args.ray_address), ("--ray-workers", args.ray_workers),
                                ("--gpus-per-worker", args.gpus_per_worker)) if v]
        if given:
            raise InvalidParameterError(f"{', '.join(given)} need --backend ray.")
        return None
    try:
        return Sharding(backend="ray", num_workers=args.ray_workers, ray_address=args.ray_address,
                        shard_batches=args.shard_batches, gpus_per_worker=args.gpus_per_worker,
                        threads_per_worker=args.threads_per_worker)
    except InvalidParameterError as exc:
        flags = {"num_workers": "--ray-workers", "shard_batches": "--shard-batches",
                 "gpus_per_worker": "--gpus-per-worker", "threads_per_worker": "--threads-per-worker"}
        text = str(exc)
        for k, flag in flags.items():
            text = text.replace(f"The '{k}' parameter of Sharding", flag)
        raise InvalidParameterError(text) from None


def add_data_class_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("classes and prompts")
    g.add_argument("--classes", nargs="+", default=None,
                   help="class names, in order (default: classes.txt in the folder, else the labels found)")
    g.add_argument("--templates", default=None, metavar="SET|FILE",
                   help="prompt templates: a named set (generic, digits, imagenet) or a text file with one template "
                        "per line containing '{}' (default: the ones mined from the checkpoint's training captions, "
                        "else the model's default set)")


def templates_from_args(args, checkpoint: str | Path | None = None, *, quiet: bool = False, model: Any = None,
                        classes: Any = None) -> tuple[tuple[str, ...], str]:
    """The prompt templates and where they came from: ``--templates`` SET or FILE, else the
    templates the checkpoint recorded (mined from its training captions by ``ravl finetune``),
    else the model's default set for these classes (:func:`ravl.zeroshot.default_templates`).

    Prints the choice (unless ``quiet``); every output JSON records it.
    """
    if getattr(args, "templates", None):
        found, origin = templates_from_spec(args.templates), f"--templates {args.templates}"
    else:
        ck = checkpoint if checkpoint is not None else getattr(args, "checkpoint", None)
        recorded = None
        if ck and is_checkpoint(ck):
            recorded = (read_checkpoint_config(ck).get("templates") or {}).get("templates")
        if recorded:
            found, origin = tuple(recorded), f"mined from the training captions (recorded in {ck})"
        else:
            found = default_templates(model, classes)
            set_name = next((k for k, v in TEMPLATE_SETS.items() if v == found), "custom")
            origin = f"the model's default set ({set_name})"
    if not quiet:
        shown = "; ".join(repr(t) for t in found[:4]) + (f"; ... ({len(found)} in all)" if len(found) > 4 else "")
        print(f"prompt templates: {origin}: {shown}")
    return found, origin


def add_region_arguments(parser: argparse.ArgumentParser) -> None:
    """``--regions SPEC`` and its cache and worker options."""
    g = parser.add_argument_group("regions")
    g.add_argument("--regions", default=None, metavar="SPEC", type=_region_spec,
                   help="where image regions come from: boxes (metadata.jsonl's, else the grid), grid:RxC, "
                        "multiscale, slic:N, felzenszwalb, file:PATH (JSON lines file_name -> boxes); default: boxes "
                        "(see docs/region-sources.md)")
    g.add_argument("--region-cache", default=None, metavar="DIR",
                   help="cache folder of computed region proposals (default: ~/.cache/ravl/regions)")
    g.add_argument("--region-workers", type=int, default=None, metavar="N",
                   help="processes that compute superpixel proposals (default: every CPU)")
    g.add_argument("--region-iou", type=float, default=DEFAULT_IOU_THRESHOLD, metavar="IOU",
                   help="IoU with an annotated box needed for a proposal to inherit its region_attribute")


def _region_spec(text: str) -> str:
    try:
        return parse_region_source(text).spec
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def data_from_args(args, path: str | Path, **load_kwargs) -> RegionDataset:
    """``load_dataset(path, **load_kwargs)`` with the regions of ``--regions`` (when given)."""
    ds = load_dataset(path, **load_kwargs)
    spec = getattr(args, "regions", None)
    if spec and spec != "boxes":
        ds = with_region_source(ds, spec, iou_threshold=args.region_iou, cache_dir=args.region_cache,
                                workers=args.region_workers, progress=not getattr(args, "quiet", False))
    return ds


def region_meta(ds: RegionDataset, args) -> dict[str, Any]:
    """What an output JSON records about the regions of ``ds`` (loaded by :func:`data_from_args`)."""
    source = getattr(ds, "region_source", "boxes")
    return {"region_source": source} if source == "boxes" else {"region_source": source,
                                                                 "region_iou": args.region_iou}


def fmt(x: float | None) -> str:
    return "  -  " if x is None or x != x else f"{x:.3f}"


def fmt_rate(x: float) -> str:
    """A throughput: whole numbers from 100 up, three significant digits below (0.31, 12.5)."""
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def print_table(rows: list[list[Any]], header: list[str]) -> None:
    """Print a plain aligned text table."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for k, r in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_json(path, json.loads(json.dumps(obj, default=_default)))


def _default(o: Any):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


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


def out_dir_arg(text: str) -> str:
    """argparse type of an output folder: not a file, and writable (checked before any work)."""
    try:
        check_output_dir(text)
    except InvalidParameterError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("--out ", "", 1)) from None
    return text


def out_file_arg(text: str) -> str:
    """argparse type of an output file (``--json``): not a folder, in a writable folder."""
    try:
        check_output_file(text)
    except InvalidParameterError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("--json ", "", 1)) from None
    return text


#: ``--split`` choices of the commands that read one split (``all``: every row).
SPLIT_CHOICES = [*SPLITS, "all"]
