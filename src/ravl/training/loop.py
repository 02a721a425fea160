"""The fine-tuning loop: one plain function, resumable, with atomic checkpoints.

Layout of an output folder::

    OUT/model.safetensors, OUT/config.json   the model after the last finished epoch (a ravl
                                             checkpoint: ``load_model(..., checkpoint=OUT)``);
                                             config.json also records the recipe, the start
                                             (``init``) and the prompt templates mined from the
                                             training captions (``templates``)
    OUT/training_state.pt                    everything needed to resume (model, optimiser,
                                             scheduler, position in the epoch, history); once
                                             the run is finished only its record (the weights
                                             are the checkpoint's; no optimiser state is kept)
    OUT/history.json                         per-epoch metrics, human-readable

Each file is written atomically, ``training_state.pt`` at every epoch end and at most every
``checkpoint_interval_s`` seconds inside an epoch, so an interrupted run loses at most that much
work. Rerunning the same call resumes from it; the data order of every epoch is drawn from
``(seed, epoch)``, so a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ravl.data.dataset import SPLITS, check_dataset
from ravl.data.templates import templates_from_dataset
from ravl.exceptions import CheckpointError, DatasetError, InvalidParameterError
from ravl.models.base import check_model, set_load_record
from ravl.models.checkpoint import read_checkpoint, save_checkpoint
from ravl.training.losses import clip_loss
from ravl.training.options import (
    FREEZE,
    PRECISIONS,
    autocast,
    check_precision,
    freeze_tower,
    grad_scaler,
    model_defaults,
    set_grad_checkpointing,
)
from ravl.utils.io import atomic_write, atomic_write_json
from ravl.utils.outputs import locks_output
from ravl.utils.progress import progress as _progress
from ravl.utils.validation import check_choice, check_float, check_int
from ravl.zeroshot import class_text_embeddings

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "ContrastiveObjective", "PixelStore"]

logger = logging.getLogger(__name__)

#: A split is cached in memory (float16 pixels) when it fits in this many bytes; larger splits are
#: loaded batch by batch, ``workers`` processes ahead of the training step.
PIXEL_CACHE_BYTES = 2 << 30

STATE_FILE = "training_state.pt"
HISTORY_FILE = "history.json"


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyper-parameters of :func:`finetune`.

    Attributes:
        epochs: Passes over the training split.
        batch_size: Image-caption pairs per step (the contrastive negatives are the batch).
        lr: Peak AdamW learning rate (cosine decay after a linear warm-up). The default suits
            the tiny CLIP trained from its initialisation; use ~1e-5 for a pretrained CLIP.
        weight_decay: AdamW weight decay.
        warmup_fraction: Fraction of all steps used for linear warm-up.
        seed: Seeds the data order of every epoch (with the epoch number).
        train_split: Split of the dataset to train on.
        val_split: Split evaluated after every epoch (``None`` to skip).
        checkpoint_interval_s: Save the resume state inside an epoch at most this often.
        grad_clip: Max gradient norm (``0`` disables clipping).
        precision: ``"fp32"``, or autocast to ``"bf16"`` / ``"fp16"`` (fp16 needs CUDA and uses a
            gradient scaler; bf16 also runs on CPU). Weights and optimiser state stay float32.
        freeze: ``"none"``, or ``"text"`` / ``"image"``: that tower keeps its weights.
        grad_checkpointing: Recompute activations in the backward pass (less memory, more
            time), where the model's adapter offers it.
    """

    epochs: int = 6
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    seed: int = 0
    train_split: str = "train"
    val_split: str | None = "val"
    checkpoint_interval_s: float = 120.0
    grad_clip: float = 1.0
    precision: str = "fp32"
    freeze: str = "none"
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        check_int(self.epochs, "epochs", "FinetuneConfig", low=1)
        for name in ("train_split", "val_split"):
            value = getattr(self, name)
            if not (value is None and name == "val_split") and value not in SPLITS:
                raise InvalidParameterError(f"The '{name}' parameter of FinetuneConfig must be one of {SPLITS}"
                                            f"{' or None' if name == 'val_split' else ''}. Got {value!r} instead.")
        check_int(self.batch_size, "batch_size", "FinetuneConfig", low=2)
        check_float(self.lr, "lr", "FinetuneConfig", low=0, high=1, closed="right")  # AdamW diverges far below 1
        check_float(self.weight_decay, "weight_decay", "FinetuneConfig", low=0)
        check_float(self.warmup_fraction, "warmup_fraction", "FinetuneConfig", low=0, high=1)
        check_int(self.seed, "seed", "FinetuneConfig", low=0)
        check_float(self.checkpoint_interval_s, "checkpoint_interval_s", "FinetuneConfig", low=0)
        check_float(self.grad_clip, "grad_clip", "FinetuneConfig", low=0)
        check_choice(self.precision, "precision", "FinetuneConfig", PRECISIONS)
        check_choice(self.freeze, "freeze", "FinetuneConfig", FREEZE)
        if not isinstance(self.grad_checkpointing, bool):
            raise InvalidParameterError("The 'grad_checkpointing' parameter of FinetuneConfig must be a bool. Got "
                                        f"{self.grad_checkpointing!r}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FinetuneConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def for_model(cls, model, **overrides: Any) -> "FinetuneConfig":
        """The default recipe for ``model``: the adapter's ``finetune_defaults`` (a pretrained
        backbone's small learning rate, longer warm-up...) over the class defaults, then
        ``overrides``.

        Example:
            >>> import ravl
            >>> FinetuneConfig.for_model(ravl.load_model("tiny"), epochs=2).lr
            0.002
        """
        names = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in model_defaults(model).items() if k in names}, **overrides})


@dataclass(frozen=True)
class FinetuneResult:
    """What :func:`finetune` did.

    Attributes:
        checkpoint_dir: Folder holding the final model (a ravl checkpoint).
        config: The configuration used.
        history: One dict per finished epoch (train loss, val loss, val accuracy, time, images/s).
        resumed_from: ``(epoch, step)`` the run resumed from, or ``None`` for a fresh run.
    """

    checkpoint_dir: str
    config: FinetuneConfig
    history: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    resumed_from: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"checkpoint_dir": self.checkpoint_dir, "config": self.config.to_dict(),
                "history": list(self.history), "resumed_from": self.resumed_from}


class _BatchImages(torch.utils.data.Dataset):
    """Preprocessed pixels of one batch of dataset positions per item (what data-loading worker
    processes compute)."""

    def __init__(self, preprocess: Callable[..., torch.Tensor], dataset, batches: list[list[int]]):
        self.preprocess = preprocess
        self.dataset = dataset
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> torch.Tensor:
        return self.preprocess([self.dataset.load_image(int(i)) for i in self.batches[k]])


def load_batches(model, dataset, batches: list[list[int]], *, workers: int = 0) -> Iterator[torch.Tensor]:
    """Preprocessed pixels ``[B, 3, H, W]`` (float32, CPU) of each batch of dataset positions, in order.

    With ``workers > 0`` the images are decoded and preprocessed in that many processes
    (a :class:`torch.utils.data.DataLoader`), a few batches ahead of the consumer; the pixels are
    the same as with ``workers=0``.
    """
    if workers <= 0:
        for b in batches:
            yield model.preprocess([dataset.load_image(int(i)) for i in b])
        return
    loader = torch.utils.data.DataLoader(_BatchImages(model.preprocess, dataset, batches), batch_size=None,
                                         shuffle=False, num_workers=int(workers), prefetch_factor=2)
    yield from loader


class PixelStore:
    """Preprocessed pixels of a dataset, cached in memory (float16) when they fit.

    Args:
        model: Supplies ``preprocess``.
        dataset: A :class:`~ravl.data.RegionDataset`.
        cache_limit_bytes: Cache when the whole split fits in this many bytes (default
            :data:`PIXEL_CACHE_BYTES`); otherwise images are loaded and preprocessed batch by batch.
        workers: Data-loading processes (``0``: this process).
    """

    def __init__(self, model, dataset, *, cache_limit_bytes: int | None = None, progress: bool = True,
                 desc: str = "loading images", workers: int = 0):
        self.model = model
        self.dataset = dataset
        self.workers = int(workers)
        h, w = model.image_size
        self._cache: torch.Tensor | None = None
        limit = PIXEL_CACHE_BYTES if cache_limit_bytes is None else cache_limit_bytes
        if len(dataset) * 3 * h * w * 2 <= limit:
            chunks = []
            idx = list(range(len(dataset)))
            parts = [idx[s:s + 256] for s in range(0, len(idx), 256)]
            bar = _progress(total=len(idx), desc=desc, disable=None if progress else True)
            for part, px in zip(parts, load_batches(model, dataset, parts, workers=self.workers)):
                chunks.append(px.to(torch.float16))
                bar.update(len(part))
            bar.close()
            self._cache = torch.cat(chunks) if chunks else torch.empty(0, 3, h, w, dtype=torch.float16)

    def __len__(self) -> int:
        return len(self.dataset)

    def get(self, indices) -> torch.Tensor:
        """Float32 pixels ``[B, 3, H, W]`` for dataset positions ``indices``.

        Uncached pixels are rounded to float16 too, so a run does not depend on whether its
        split fitted in the cache.
        """
        if self._cache is not None:
            return self._cache[torch.as_tensor(indices, dtype=torch.long)].float()
        return self.model.preprocess([self.dataset.load_image(int(i)) for i in indices]).half().float()

    def batches(self, batches: list[list[int]]) -> Iterator[torch.Tensor]:
        """:meth:`get` of each batch in turn (loaded ahead by the worker processes when uncached)."""
        if self._cache is not None:
            for b in batches:
                yield self.get(b)
        else:
            for px in load_batches(self.model, self.dataset, batches, workers=self.workers):
                yield px.half().float()


class ContrastiveObjective:
    """Standard CLIP fine-tuning objective: symmetric InfoNCE on image-caption pairs.

    An objective joins a model and a loss: ``objective(model, batch) -> dict`` of named
    components, ``"loss"`` being the one optimised. ``batch`` holds ``pixels`` ``[B, 3, H, W]``,
    ``tokens`` ``[B, T]`` and ``indices`` (dataset positions).
    """

    name = "contrastive"

    def __call__(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        img = model.encode_image(batch["pixels"])
        txt = model.encode_text(batch["tokens"])
        return clip_loss(img, txt, model.logit_scale())


def _lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def _mined_templates(train) -> dict[str, Any] | None:
    """The prompt templates mined from the training captions (recorded in the checkpoint; zero-shot
    scoring of this model uses them by default), or ``None`` when no phrasing qualifies."""
    mined = templates_from_dataset(train)
    if not mined:
        logger.info("No prompt template mined from the training captions (%s).", mined.reason)
        return None
    return {"templates": list(mined), "counts": list(mined.counts), "n_captions": mined.n_captions,
            "n_used": mined.n_used, "source": "training captions"}


def _same_config(saved: Any, config: FinetuneConfig) -> bool:
    """Whether a resume state's config is ``config`` (fields added since it was saved take their
    defaults, so an older run still resumes; gradient checkpointing, which changes memory and not
    results, may differ, e.g. to continue a run that ran out of memory)."""
    try:
        return isinstance(saved, dict) and replace(FinetuneConfig.from_dict(saved),
                                                   grad_checkpointing=config.grad_checkpointing) == config
    except (InvalidParameterError, TypeError):
        return False


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))
    return torch.randperm(n, generator=g)


def _save_state(out: Path, state: dict[str, Any]) -> None:
    atomic_write(out / STATE_FILE, lambda tmp: torch.save(state, tmp))


def _clamp_logit_scale(model) -> None:
    # CLIP clamps the learned temperature at 100 (log 4.6052).
    for name, p in model.module.named_parameters():
        if name.endswith("logit_scale"):
            with torch.no_grad():
                p.clamp_(0, math.log(100))


@torch.no_grad()
def _validate(model, pixels: PixelStore, tokens: torch.Tensor, labels: np.ndarray, classes,
              objective, batch_size: int, precision: str = "fp32") -> dict[str, float]:
    model.module.eval()
    dev = model.device
    losses, embs = [], []
    batches = [list(range(s, min(s + batch_size, len(pixels)))) for s in range(0, len(pixels), batch_size)]
    with autocast(precision, dev):
        for idx, px in zip(batches, pixels.batches(batches)):
            px = px.to(dev)
            if len(idx) >= 2:
                out = objective(model, {"pixels": px, "tokens": tokens[idx].to(dev)})
                losses.append(float(out["loss"]) * len(idx))
            embs.append(torch.nn.functional.normalize(model.encode_image(px).float(), dim=-1).cpu())
        text = class_text_embeddings(model, classes).float().cpu() if classes and (labels >= 0).any() else None
    res: dict[str, float] = {"val_loss": sum(losses) / max(1, len(pixels))}
    if text is not None:
        pred = (torch.cat(embs) @ text.T).argmax(-1).numpy()
        keep = labels >= 0
        res["val_zero_shot_accuracy"] = float((pred[keep] == labels[keep]).mean())
    model.module.train()
    return res


def _without_defaults(info: dict[str, Any] | None, defaults: dict[str, dict[str, Any]] | None
                      ) -> dict[str, Any] | None:
    """``info`` with, in each dict entry named in ``defaults``, the settings at their default left out."""
    if not info or not defaults:
        return info
    out = dict(info)
    for key, d in defaults.items():
        if isinstance(out.get(key), dict):
            out[key] = {k: v for k, v in out[key].items() if not (k in d and d[k] == v)}
    return out


@locks_output("out_dir", "finetune")
def finetune(model, dataset, out_dir: str | os.PathLike, config: FinetuneConfig | None = None, *,
             objective: Callable[..., dict[str, torch.Tensor]] | None = None,
             resume: bool = True, progress: bool = True, init: dict[str, Any] | None = None,
             extra_state: Callable[[], dict[str, Any]] | None = None,
             epoch_order: Callable[[int], torch.Tensor] | None = None,
             run_info: dict[str, Any] | None = None, run_info_defaults: dict[str, dict[str, Any]] | None = None,
             allow_data_change: bool = False,
             workers: int = 0) -> FinetuneResult:
    """Fine-tune ``model`` in place on the image-caption pairs of ``dataset``.

    Args:
        model: A :class:`~ravl.models.VisionLanguageModel`; its ``module`` is trained in place.
        dataset: A :class:`~ravl.data.RegionDataset` with ``caption`` on every training row.
        out_dir: Output folder (see the module docstring for its layout).
        config: Hyper-parameters (default: :meth:`FinetuneConfig.for_model`, the class defaults
            with the adapter's ``finetune_defaults`` over them).
        objective: ``objective(model, batch) -> dict`` with a ``"loss"`` entry (default:
            :class:`ContrastiveObjective`, i.e. standard CLIP fine-tuning).
        resume: Continue from ``out_dir/training_state.pt`` when present. A finished run is
            returned as is. With ``False`` an existing state is ignored and overwritten.
        progress: Show progress bars.
        init: Where the weights came from before fine-tuning (recorded in the checkpoint so that
            mitigation can restart from the same point), e.g. ``{"model": "tiny", "seed": 0}``.
            Default: ``model.load_record``, which :func:`ravl.load_model` sets (and this
            function points at ``out_dir`` once it returns, as the weights are then those).
        extra_state: Optional callable whose dict is saved with the resume state.
        epoch_order: ``epoch_order(epoch) -> LongTensor`` of training-split positions to visit in
            that epoch (e.g. group-balanced upsampling); it must be deterministic in ``epoch`` for
            exact resumption. Default: a permutation drawn from ``(config.seed, epoch)``.
        run_info: JSON-ready description of everything else that determines the run (e.g. the
            mitigation method, its options and a fingerprint of the labelled regions). Saved
            in the resume state; resuming a state saved with another ``run_info`` is refused
            with a :class:`~ravl.exceptions.CheckpointError` naming the keys that differ.
        run_info_defaults: For entries of ``run_info`` that are dicts of settings (e.g.
            ``"method_config"``), their default values: a setting at its default counts as equal
            to one the saved state does not record, so a run saved before a new setting existed
            still resumes (and a run that changed the setting away from its default does not).
        allow_data_change: Resume even though the training split changed since the run started
            (its content fingerprint, :meth:`~ravl.data.RegionDataset.fingerprint`, differs);
            without it such a resume is refused, so a run never silently mixes two datasets.
        workers: Processes that decode and preprocess images (``0``: this process). Results do
            not depend on it.

    Returns:
        A :class:`FinetuneResult`.

    Raises:
        DatasetError: When the training split is empty or lacks captions.
        CheckpointError: When ``out_dir`` holds the state of a run with another configuration.
    """
    check_model(model, "finetune")
    check_dataset(dataset, "finetune")
    config = config or FinetuneConfig.for_model(model)
    if not isinstance(config, FinetuneConfig):
        raise InvalidParameterError(f"The 'config' parameter of finetune must be a FinetuneConfig. Got "
                                    f"{type(config).__name__}.")
    workers = check_int(workers, "workers", "finetune", low=0)
    check_precision(config.precision, model.device)
    objective = objective or ContrastiveObjective()
    out = Path(out_dir)
    if init is None:
        init = getattr(model, "load_record", None)
        if init is not None and init.get("checkpoint") == str(out.resolve()):
            # the model was loaded from this very (partial) run: keep the start the run recorded
            try:
                init = json.loads((out / "config.json").read_text(encoding="utf-8")).get("init")
            except (OSError, ValueError):
                init = None
    out.mkdir(parents=True, exist_ok=True)

    try:
        train = dataset.subset(config.train_split)
    except ValueError:
        train = dataset.subset(indices=[])
    if len(train) < 2:
        raise DatasetError(f"The '{config.train_split}' split of {dataset.root} has {len(train)} image(s); "
                           "fine-tuning needs at least 2. Check the 'split' field of metadata.jsonl.")
    missing = [r for r in train.records if not isinstance(r.caption, str) or not r.caption]
    if missing:
        r = missing[0]
        raise DatasetError(f"{len(missing)} training row(s) have no caption, e.g. metadata.jsonl line {r.line} "
                           f"({r.file_name}). Fine-tuning needs a 'caption' string on every "
                           f"'{config.train_split}' row.")
    val = None
    if config.val_split:
        try:
            val = dataset.subset(config.val_split)
        except ValueError:  # DatasetError is a ValueError: no such split, no validation
            logger.info("No %r split in %s: no validation after each epoch.", config.val_split, dataset.root)
            val = None
        if val is not None and len(val) == 0:
            val = None

    data_fp = train.fingerprint()
    state_path = out / STATE_FILE
    state: dict[str, Any] | None = None
    if resume and state_path.exists():
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - any unreadable state is reported the same way
            raise CheckpointError(f"Cannot read the resume state {state_path} ({exc}). Delete it to start "
                                  "over, or pass resume=False / --no-resume.") from exc
        saved = state.get("config", {})
        if not _same_config(saved, config) or state.get("objective") != getattr(objective, "name", None):
            raise CheckpointError(
                f"{out} holds a run with another configuration (saved {saved}, objective "
                f"{state.get('objective')!r}). Use another --out folder, or --no-resume to overwrite it.")
        saved_info = _without_defaults(state.get("run_info"), run_info_defaults)
        if (saved_info or None) != (_without_defaults(run_info, run_info_defaults) or None):
            a, b = saved_info or {}, _without_defaults(run_info, run_info_defaults) or {}
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise CheckpointError(f"{out} holds a run of another set-up (differs in: {', '.join(keys)}; saved "
                                  f"{ {k: a.get(k) for k in keys} }, now { {k: b.get(k) for k in keys} }). Use "
                                  "another --out folder, or --no-resume to overwrite it.")
        if state.get("n_train") != len(train):
            raise CheckpointError(f"{out} was trained on {state.get('n_train')} images but the dataset now "
                                  f"has {len(train)}. Use another --out folder or --no-resume.")
        if state.get("data_fingerprint") not in (None, data_fp) and not allow_data_change:
            raise CheckpointError(
                f"The training data changed since the run in {out} started: the '{config.train_split}' split of "
                f"{dataset.root} has the same {len(train)} images but other content (captions, labels, regions or "
                "image files). Resuming would mix two datasets. Restore the data, start over with --no-resume "
                "(resume=False), or continue anyway with --allow-data-change (allow_data_change=True).")

    module = model.module
    dev = model.device
    freeze_tower(model, config.freeze)
    if config.grad_checkpointing:
        set_grad_checkpointing(model, True)
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    n_epoch = len(epoch_order(0)) if epoch_order else len(train)
    steps_per_epoch = math.ceil(n_epoch / config.batch_size)
    # Drop a trailing batch of one: contrastive losses need two pairs.
    if n_epoch % config.batch_size == 1:
        steps_per_epoch -= 1
    total = steps_per_epoch * config.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, int(config.warmup_fraction * total)))
    scaler = grad_scaler(config.precision, dev)

    history: list[dict[str, Any]] = []
    epoch, step_in_epoch, running = 0, 0, {"loss_sum": 0.0, "n": 0, "seconds": 0.0}
    resumed_from = None
    if state is not None:
        if state.get("finished"):  # the final weights are the checkpoint's (the state keeps no copy)
            module.load_state_dict(read_checkpoint(out, expect_model=model.name)[2])
        else:
            module.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            if scaler is not None and state.get("scaler") is not None:
                scaler.load_state_dict(state["scaler"])
        epoch, step_in_epoch = state["epoch"], state["step_in_epoch"]
        history = list(state["history"])
        running = dict(state["running"])
        if hasattr(objective, "load_state_dict") and state.get("objective_state") is not None:
            objective.load_state_dict(state["objective_state"])
        resumed_from = (epoch, step_in_epoch)
        if epoch >= config.epochs:
            logger.info("%s already holds a finished run (%d epochs); nothing to do.", out, config.epochs)
            set_load_record(model, {"model": model.name, "checkpoint": str(out.resolve())})
            return FinetuneResult(str(out), config, tuple(history), resumed_from)
        logger.info("Resuming %s at epoch %d, step %d.", out, epoch + 1, step_in_epoch)

    def snapshot() -> dict[str, Any]:
        return {"model": module.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "epoch": epoch, "step_in_epoch": step_in_epoch, "history": history, "running": running,
                "config": config.to_dict(), "objective": getattr(objective, "name", None),
                "objective_state": objective.state_dict() if hasattr(objective, "state_dict") else None,
                "n_train": len(train), "data_fingerprint": data_fp,
                "extra": extra_state() if extra_state else None, "run_info": run_info,
                "scaler": scaler.state_dict() if scaler is not None else None}

    pixels = PixelStore(model, train, progress=progress, desc="loading train images", workers=workers)
    tokens = model.tokenize([r.caption for r in train.records])
    val_pixels = val_tokens = None
    val_labels = np.zeros(0)
    if val is not None:
        val_pixels = PixelStore(model, val, progress=progress, desc="loading val images", workers=workers)
        val_tokens = model.tokenize([r.caption or "" for r in val.records])
        val_labels = val.label_indices

    ckpt_extra = {"finetune": config.to_dict(), "init": init, "objective": getattr(objective, "name", None),
                  "train_data": str(Path(dataset.root).resolve()), "train_fingerprint": data_fp,
                  "templates": _mined_templates(train)}
    module.train()
    last_save = time.monotonic()
    while epoch < config.epochs:
        order = epoch_order(epoch) if epoch_order else _epoch_order(len(train), config.seed, epoch)
        if hasattr(objective, "set_epoch"):
            objective.set_epoch(epoch)
        bar = _progress(total=steps_per_epoch, initial=step_in_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                        disable=None if progress else True)
        t0 = time.monotonic()
        bs = config.batch_size
        todo = [order[s * bs:(s + 1) * bs] for s in range(step_in_epoch, steps_per_epoch)]
        for idx, px in zip(todo, pixels.batches(todo)):
            batch = {"pixels": px.to(dev), "tokens": tokens[idx].to(dev), "indices": idx}
            with autocast(config.precision, dev):
                loss = objective(model, batch)["loss"].float()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"Loss became {float(loss)} at epoch {epoch + 1}, step "
                                         f"{step_in_epoch + 1}; lower the learning rate (lr={config.lr})"
                                         + (" or use --precision bf16 / fp32" if config.precision == "fp16" else "")
                                         + ".")
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
            else:
                loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            sched.step()
            _clamp_logit_scale(model)
            step_in_epoch += 1
            running["loss_sum"] += float(loss.detach()) * len(idx)
            running["n"] += len(idx)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if config.checkpoint_interval_s and time.monotonic() - last_save > config.checkpoint_interval_s \
                    and step_in_epoch < steps_per_epoch:
                running["seconds"] += time.monotonic() - t0
                t0 = time.monotonic()
                _save_state(out, snapshot())
                last_save = time.monotonic()
        bar.close()
        running["seconds"] += time.monotonic() - t0
        row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": running["loss_sum"] / max(1, running["n"]),
                               "seconds": round(running["seconds"], 3),
                               "images_per_s": round(running["n"] / max(running["seconds"], 1e-9), 1),
                               "lr": sched.get_last_lr()[0]}
        if val_pixels is not None:
            # Validation uses the standard contrastive loss for every objective, so runs compare.
            row.update(_validate(model, val_pixels, val_tokens, val_labels, list(dataset.classes),
                                 ContrastiveObjective(), config.batch_size, config.precision))
        history.append(row)
        logger.info("epoch %d/%d  %s", epoch + 1, config.epochs,
                    "  ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch" and isinstance(v, float)))
        epoch += 1
        step_in_epoch = 0
        running = {"loss_sum": 0.0, "n": 0, "seconds": 0.0}
        # Model first, then the resume state: a crash in between replays the epoch's save only.
        save_checkpoint(model, out, extra={**ckpt_extra, "epochs_completed": epoch})
        if epoch < config.epochs:
            _save_state(out, snapshot())
        else:  # finished: no optimiser state (twice the model's size) is left on disk
            _save_state(out, {**{k: v for k, v in snapshot().items()
                                 if k not in ("model", "optimizer", "scheduler", "scaler")}, "finished": True})
        atomic_write_json(out / HISTORY_FILE, history)
        last_save = time.monotonic()
    if config.grad_checkpointing:
        set_grad_checkpointing(model, False)
    set_load_record(model, {"model": model.name, "checkpoint": str(out.resolve())})
    return FinetuneResult(str(out), config, tuple(history), resumed_from)
