"""The tiny CLIP's shipped pretrained weights (``--pretrained synthetic``) and how they are built."""

import json

import numpy as np
import pytest
import torch

from ravl.data import load_dataset
from ravl.data.features import BUILTIN_FEATURES
from ravl.data.pretraining import make_pretraining_corpus
from ravl.data.synthetic import CAPTION_TEMPLATES
from ravl.exceptions import CheckpointError
from ravl.models import load_model
from ravl.models.checkpoint import read_checkpoint
from ravl.models.regions import embed_images, embed_regions
from ravl.models.tiny import PRETRAINED_TINY, pretrained_tiny_path
from ravl.training.pretrain import PRETRAIN_DEFAULTS, pretrain_tiny_clip
from ravl.zeroshot import class_text_embeddings


@pytest.fixture(scope="module")
def pretrained():
    return load_model("tiny", pretrained="synthetic")


@pytest.fixture(scope="module")
def fresh_corpus(tmp_path_factory):
    # a corpus the shipped weights never saw (another seed)
    return load_dataset(make_pretraining_corpus(tmp_path_factory.mktemp("pc") / "c", n_images=1000,
                                                random_state=12345, progress=False))


def test_shipped_weights_load_and_record_their_recipe(pretrained):
    path = pretrained_tiny_path("synthetic")
    _, cfg, state = read_checkpoint(path, expect_model="tiny")            # size and SHA-256 checked
    for k, v in pretrained.module.state_dict().items():
        assert torch.equal(v, state[k])
    recipe = cfg["pretraining"]
    assert {k: recipe[k] for k in PRETRAIN_DEFAULTS} == PRETRAIN_DEFAULTS  # the command rebuilds these weights
    assert pretrained.load_record == {"model": "tiny", "checkpoint": None, "pretrained": "synthetic"}
    assert sorted(PRETRAINED_TINY) == ["synthetic"]


def test_pretrained_weights_know_digits_and_objects_without_shortcuts(pretrained, fresh_corpus):
    classes = list(fresh_corpus.classes)
    t = class_text_embeddings(pretrained, classes, CAPTION_TEMPLATES).numpy()
    img = embed_images(pretrained, fresh_corpus, progress=False)
    labels = np.array([classes.index(r.label) for r in fresh_corpus])
    acc = float(((img @ t.T).argmax(1) == labels).mean())
    fresh = load_model("tiny", seed=0)
    t0 = class_text_embeddings(fresh, classes, CAPTION_TEMPLATES).numpy()
    acc0 = float(((embed_images(fresh, fresh_corpus, progress=False) @ t0.T).argmax(1) == labels).mean())
    assert acc > 0.4 and acc > acc0 + 0.25                                  # chance is 0.1
    # no registered feature is tied to a class: images carrying it are not called that class more often
    # (the class its feature-only region is closest to) than images without it
    pred = (img @ t.T).argmax(1)
    reg = embed_regions(pretrained, fresh_corpus, mode="masked", progress=False)
    table = fresh_corpus.region_table()
    attrs = np.array(table.attributes)
    for name in BUILTIN_FEATURES:
        rows = np.flatnonzero(attrs == name)
        c = int(np.bincount((reg[rows] @ t.T).argmax(1), minlength=10).argmax())
        has = np.zeros(len(fresh_corpus), bool)
        has[table.image_index[rows]] = True
        other = labels != c
        lift = pred[has & other].__eq__(c).mean() - pred[~has & other].__eq__(c).mean()
        assert (has & other).sum() >= 20 and lift < 0.15, (name, classes[c], lift)


def test_pretrain_command_builds_a_loadable_checkpoint(tmp_path):
    weights = pretrain_tiny_clip(tmp_path / "w", n_images=64, epochs=1, batch_size=16, progress=False)
    cfg = json.loads((weights / "config.json").read_text())
    assert cfg["pretraining"]["n_images"] == 64 and cfg["pretraining"]["final_epoch"]["epoch"] == 1
    model = load_model("tiny", checkpoint=weights)
    assert model.encode_image(torch.zeros(1, 3, 56, 56)).shape == (1, 128)


def test_bad_pretrained_requests():
    with pytest.raises(ValueError, match="Unknown pretrained weights 'openai' for model 'tiny'; choose one of"):
        load_model("tiny", pretrained="openai")   # offline-ok: an unknown tag is refused before any loading
    with pytest.raises(ValueError, match="either a checkpoint or pretrained weights, not both"):
        load_model("tiny", checkpoint="somewhere", pretrained="synthetic")


def test_missing_shipped_folder_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(PRETRAINED_TINY, "synthetic", "no-such-folder")
    with pytest.raises(CheckpointError, match="missing from the installation .*pretrain_tiny.py --install"):
        pretrained_tiny_path("synthetic")


def test_cli_finetune_from_the_pretrained_weights(tmp_path):
    from ravl.cli import main

    data = make_pretraining_corpus(tmp_path / "d", n_images=40, random_state=1, progress=False)
    assert main(["finetune", "--data", str(data), "--out", str(tmp_path / "ck"), "--epochs", "1", "--batch-size",
                 "16", "--pretrained", "synthetic", "--quiet"]) == 0
    init = json.loads((tmp_path / "ck" / "config.json").read_text())["init"]
    assert init["pretrained"] == "synthetic" and init["checkpoint"] is None   # `ravl mitigate --start init` restarts here
