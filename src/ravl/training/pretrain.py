"""Pretrain the tiny CLIP on the broad synthetic corpus: the weights behind ``--pretrained synthetic``.

The paper fine-tunes pretrained CLIPs on each setting. :func:`pretrain_tiny_clip` gives the tiny
CLIP a pretrained starting point of its own, reproducibly: it builds the corpus of
:mod:`ravl.data.pretraining` (printed digits, every feature and shape in several colours, no
object tied to any class, captions naming the objects), trains the tiny CLIP on it from seeded
weights with the usual CLIP loss and writes a ravl checkpoint. ravl ships the result
(``load_model("tiny", pretrained="synthetic")``); ``python benchmarks/pretrain_tiny.py`` rebuilds
it and measures it.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from ravl.data.dataset import load_dataset
from ravl.data.pretraining import CORPUS_VERSION, make_pretraining_corpus
from ravl.models.base import load_model
from ravl.models.checkpoint import save_checkpoint
from ravl.training.loop import FinetuneConfig, finetune
from ravl.utils.validation import check_int

__all__ = ["PRETRAIN_DEFAULTS", "pretrain_tiny_clip"]

#: The recipe of the shipped ``"synthetic"`` weights.
PRETRAIN_DEFAULTS: dict[str, Any] = {"n_images": 20000, "epochs": 6, "seed": 0, "batch_size": 128, "lr": 2e-3}


def pretrain_tiny_clip(out_dir: str | os.PathLike, *, n_images: int = PRETRAIN_DEFAULTS["n_images"],
                       epochs: int = PRETRAIN_DEFAULTS["epochs"], seed: int = PRETRAIN_DEFAULTS["seed"],
                       batch_size: int = PRETRAIN_DEFAULTS["batch_size"], lr: float = PRETRAIN_DEFAULTS["lr"],
                       progress: bool = True) -> Path:
    """Build the corpus and pretrain the tiny CLIP on it; resumable (rerun the same call).

    Writes ``out_dir/corpus/`` (the dataset), ``out_dir/training/`` (the fine-tuning run:
    checkpoint, ``history.jsonl``, resume state) and ``out_dir/weights/``, a clean ravl checkpoint
    whose ``config.json`` records the recipe under ``"pretraining"`` (the folder ravl ships).

    Args:
        out_dir: Work folder (created).
        n_images: Images in the corpus (5 % of them form its val split).
        epochs: Passes over the corpus.
        seed: Seed of the corpus, the initial weights and the data order.
        batch_size: Image-caption pairs per step.
        lr: Peak learning rate (AdamW, cosine, as :class:`~ravl.training.FinetuneConfig`).
        progress: Show progress bars.

    Returns:
        The ``weights`` checkpoint folder; ``load_model("tiny", checkpoint=...)`` loads it.
    """
    seed = check_int(seed, "seed", "pretrain_tiny_clip", low=0)
    out = Path(out_dir)
    corpus = make_pretraining_corpus(out / "corpus", n_images=n_images, random_state=seed, progress=progress)
    config = replace(FinetuneConfig(), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    model = load_model("tiny", seed=seed)
    result = finetune(model, load_dataset(corpus), out / "training", config, progress=progress,
                      init={"model": "tiny", "seed": seed, "checkpoint": None})
    recipe = {"corpus_version": CORPUS_VERSION, "n_images": n_images, "epochs": epochs, "seed": seed,
              "batch_size": batch_size, "lr": lr}
    if result.history:   # the last epoch's losses and val accuracy (not its timings: the record stays reproducible)
        recipe["final_epoch"] = {k: v for k, v in result.history[-1].items() if k == "epoch" or "loss" in k
                                 or "acc" in k}
    return save_checkpoint(model, out / "weights", extra={"pretraining": recipe})
