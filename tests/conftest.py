"""Shared fixtures: small settings and tiny models built in memory, no network."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAVL_PROGRESS", "0")

#: Optional dependencies the test extra installs; tests that need one skip where it is missing,
#: except under RAVL_REQUIRE_OPTIONAL=1 (set by .ci/run), where a missing one fails the run.
OPTIONAL_MODULES = ("open_clip", "torchvision", "transformers", "ray", "umap", "skimage")


def pytest_configure(config):
    if os.environ.get("RAVL_REQUIRE_OPTIONAL") == "1":
        import importlib

        missing = []
        for name in OPTIONAL_MODULES:
            try:
                importlib.import_module(name)
            except Exception as exc:  # noqa: BLE001 - any failure to import is a missing dependency here
                missing.append(f"{name} ({type(exc).__name__}: {exc})")
        if missing:
            raise pytest.UsageError("RAVL_REQUIRE_OPTIONAL=1 but these optional dependencies do not import: "
                                    + "; ".join(missing) + ". Install the test extra: pip install -e '.[test]'")


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


def _hand_discovery(eval_dir, feature_attribute="red_square", split="val"):
    """A DiscoveryResult-like medoid set: one medoid per ground-truth attribute of the eval split.

    The feature (rank 1, tied to 'nine') is the cluster whose medoid is a region with
    ``feature_attribute``.
    """
    import numpy as np

    from ravl.data.dataset import load_dataset
    from ravl.discovery import DiscoveryResult

    ds = load_dataset(eval_dir).subset(split)
    t = ds.region_table()
    attrs = np.array(t.attributes)
    names = sorted(set(attrs.tolist()))
    medoids = [int(np.flatnonzero(attrs == a)[0]) for a in names]
    cluster = names.index(feature_attribute)
    m = medoids[cluster]
    i = int(t.image_index[m])
    region = {"region_index": m, "image_index": i, "similarity": 1.0, "file_name": ds.records[i].file_name,
              "box": t.boxes[m].tolist()}
    d = {"status": "ok", "message": "hand-built", "scoring": "ravl", "classes": list(ds.classes), "config": {},
         "random_state": 0, "n_regions": len(t), "n_images": len(ds), "n_clusters": len(medoids),
         "silhouette": None, "silhouette_positive": False, "inertia": None, "k_sweep": [],
         "bounded_memory": False, "sample_size": None, "negative_similarity": "none", "medoid_indices": medoids,
         "region_clusters": [0] * len(t), "clusters": [],
         "features": [{"rank": 1, "cluster": cluster, "class": "nine", "gap": 1.0, "influence": 1.0,
                       "spurious_pattern": True, "n_regions": 1, "n_images": 1, "medoid_region_index": m,
                       "table": [], "regions": [region]}],
         "meta": {"data": str(eval_dir), "split": split, "region_mode": "masked"}}
    return DiscoveryResult.from_dict(d)


@pytest.fixture(scope="session")
def mitigation_env(tmp_path_factory):
    """A tiny mitigation setting: 32 training images, an audited checkpoint (1 short epoch), a
    hand-built discovery.json whose feature is the planted red square.

    ``{"setting", "train", "ckpt", "discovery", "root"}``.
    """
    from ravl.data.dataset import load_dataset
    from ravl.data.synthetic import make_spurious_benchmark
    from ravl.models import load_model
    from ravl.training.loop import FinetuneConfig, finetune

    root = tmp_path_factory.mktemp("mitigation_setting")
    s = make_spurious_benchmark(root / "setting", n_train=400, n_eval=200, random_state=0, progress=False)
    ds = load_dataset(s.train_dir)
    train_rows = [i for i, r in enumerate(ds.records) if r.split == "train"]
    # 8 red-square images and 24 others, so that the feature is in the small split
    red = [i for i in train_rows if "red_square" in ds.records[i].region_attributes]
    rest = [i for i in train_rows if i not in set(red)]
    small = ds.subset(indices=sorted(red[:8] + rest[:24]))
    ckpt = root / "audited"
    cfg = FinetuneConfig(epochs=1, batch_size=16, val_split=None, checkpoint_interval_s=1e-9)
    finetune(load_model("tiny", seed=0), small, ckpt, cfg, progress=False,
             init={"model": "tiny", "seed": 0, "checkpoint": None})
    disc = root / "discovery.json"
    _hand_discovery(s.eval_dir).to_json(disc)
    return {"setting": s, "train": small, "ckpt": ckpt, "discovery": disc, "root": root}


@pytest.fixture(scope="session")
def mitigation_labelling(mitigation_env):
    """The regions of ``mitigation_env``'s training split labelled with its discovery."""
    from ravl.mitigation.labelling import label_regions
    from ravl.models import load_model

    env = mitigation_env
    return label_regions(load_model("tiny", checkpoint=env["ckpt"]), env["train"], env["discovery"], progress=False)


@pytest.fixture(scope="session")
def hand_discovery():
    """``hand_discovery(eval_dir, feature_attribute="red_square", split="val") -> DiscoveryResult``."""
    return _hand_discovery
