"""Shared fixtures: small settings and tiny models built in memory, no network."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAVL_PROGRESS", "0")


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    yield


@pytest.fixture(scope="session")
def small_setting(tmp_path_factory):
    """A small red-square <-> 'nine' setting (V = 0.95): 1,200 train and 400 eval images."""
    from ravl.data.synthetic import make_spurious_benchmark

    out = tmp_path_factory.mktemp("setting")
    return make_spurious_benchmark(out, spurious_class="nine", feature="red_square", cramers_v=0.95,
                                   n_train=1200, n_eval=400, random_state=0, progress=False)


@pytest.fixture(scope="session")
def trained_tiny(small_setting, tmp_path_factory):
    """A tiny CLIP fine-tuned for 2 short epochs on ``small_setting``: (model, checkpoint_dir)."""
    from ravl.data.dataset import load_dataset
    from ravl.models import load_model
    from ravl.training.loop import FinetuneConfig, finetune

    out = tmp_path_factory.mktemp("ckpt")
    model = load_model("tiny", seed=0)
    ds = load_dataset(small_setting.train_dir, require_fields=("caption",))
    finetune(model, ds, out, FinetuneConfig(epochs=2, batch_size=64), progress=False,
             init={"model": "tiny", "seed": 0, "checkpoint": None})
    return model, out
