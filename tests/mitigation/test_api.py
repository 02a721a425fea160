"""mitigate(): every method runs, resumes exactly, restarts from the original initialisation."""

import json

import numpy as np
import pytest
import torch

from ravl.exceptions import CheckpointError
from ravl.mitigation.api import MitigationOptions, mitigate
from ravl.training.loop import FinetuneConfig

CFG = FinetuneConfig(epochs=1, batch_size=16, val_split=None, checkpoint_interval_s=1e-9)


@pytest.fixture(scope="module")
def env(mitigation_env):
    return mitigation_env


def _weights(path):
    from ravl.models import load_model

    return load_model("tiny", checkpoint=path).module.state_dict()


@pytest.fixture(scope="module")
def labelling(mitigation_labelling):
    return mitigation_labelling


def test_standard_reproduces_the_audited_fine_tuning(env, labelling, tmp_path):
    res = mitigate(env["ckpt"], env["train"], env["discovery"], out_dir=tmp_path, method="standard", config=CFG,
                   labelling=labelling, progress=False)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["mitigation"]["method"] == "standard" and cfg["mitigation"]["start"] == "init"
    assert cfg["init"] == {"model": "tiny", "seed": 0, "checkpoint": None}
    assert cfg["mitigation"]["labelling"]["n_spurious_regions"] == labelling.region_labels.n_spurious
    assert res.method_config == {}
    # same start, same recipe, same data order: the original fine-tuning is reproduced exactly
    ref = _weights(env["ckpt"])
    for k, v in _weights(tmp_path).items():
        torch.testing.assert_close(v, ref[k], rtol=0, atol=0)


def test_interrupted_ravl_run_resumes_to_identical_weights(env, labelling, tmp_path, monkeypatch):
    from ravl.mitigation import RegionAwareObjective

    ref = mitigate(env["ckpt"], env["train"], env["discovery"], out_dir=tmp_path / "ref", method="ravl",
                   config=CFG, progress=False)  # labels the regions itself
    assert ref.objective == "ravl" and ref.discovery == str(env["discovery"].resolve())
    assert ref.labelling == labelling.summary() and ref.labelling["truth"]["region_precision"] == 1.0
    assert ref.labelling["n_spurious_regions"] == 8 and (tmp_path / "ref" / "labelling.json").is_file()
    original = RegionAwareObjective.__call__
    calls = {"n": 0}

    def interrupting(self, model, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # like Ctrl-C mid-epoch
        return original(self, model, batch)

    monkeypatch.setattr(RegionAwareObjective, "__call__", interrupting)
    with pytest.raises(KeyboardInterrupt):
        mitigate(env["ckpt"], env["train"], env["discovery"], out_dir=tmp_path / "run", method="ravl", config=CFG,
                 progress=False)
    assert (tmp_path / "run" / "training_state.pt").exists()
    assert not (tmp_path / "run" / "config.json").exists()
    monkeypatch.setattr(RegionAwareObjective, "__call__", original)
    res = mitigate(env["ckpt"], env["train"], env["discovery"], out_dir=tmp_path / "run", method="ravl", config=CFG,
                   labelling=labelling, progress=False)
    assert res.resumed_from == (0, 1)
    ref = _weights(tmp_path / "ref")
    for k, v in _weights(tmp_path / "run").items():
        torch.testing.assert_close(v, ref[k], rtol=0, atol=0)


def test_upsample_groups_come_from_discovery(hand_discovery, env, tmp_path):
    from ravl.mitigation.labelling import label_regions
    from ravl.models import load_model

    # a discovery pointing at 'three' regions: groups follow it, not the planted red square
    disc = hand_discovery(env["setting"].eval_dir, "three")
    lab = label_regions(load_model("tiny", checkpoint=env["ckpt"]), env["train"], disc, progress=False)
    truth = np.array(["red_square" in r.region_attributes for r in env["train"].subset("train").records])
    assert not np.array_equal(lab.feature_present, truth)
    res = mitigate(env["ckpt"], env["train"], disc, out_dir=tmp_path, method="upsample", config=CFG,
                   labelling=lab, progress=False)
    assert res.labelling["groups"] == lab.group_counts()
    assert res.discovery is None  # given as an object, not a file


def test_start_checkpoint_and_missing_init(env, labelling, tmp_path):
    res = mitigate(env["ckpt"], env["train"], env["discovery"], out_dir=tmp_path / "c", method="vl-erm",
                   start="checkpoint", config=CFG, labelling=labelling, progress=False)
    assert res.init["checkpoint"] == str(env["ckpt"].resolve())
    # a checkpoint without "init" cannot restart from the initialisation unless told where
    from ravl.models import load_model, save_checkpoint

    bare = save_checkpoint(load_model("tiny", seed=3), tmp_path / "bare")
    with pytest.raises(CheckpointError, match="init"):
        mitigate(bare, env["train"], env["discovery"], out_dir=tmp_path / "x", method="vl-erm", config=CFG,
                 labelling=labelling, progress=False)
    res = mitigate(bare, env["train"], env["discovery"], out_dir=tmp_path / "y", method="vl-erm", config=CFG,
                   labelling=labelling, init={"model": "tiny", "seed": 3}, progress=False)
    assert res.init == {"model": "tiny", "seed": 3}


def test_bad_arguments(env, labelling, tmp_path):
    with pytest.raises(ValueError, match="Unknown mitigation method 'nope' \\(the 'method' parameter of mitigate\\)"):
        mitigate(env["ckpt"], env["train"], env["discovery"], out_dir=tmp_path, method="nope")
    with pytest.raises(ValueError, match="'start'"):
        mitigate(env["ckpt"], env["train"], env["discovery"], out_dir=tmp_path, start="middle")
    with pytest.raises(ValueError, match="'lam'"):
        mitigate(env["ckpt"], env["train"], env["discovery"], out_dir=tmp_path, method="ravl",
                 method_config={"lam": -1})
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['eta'\] for mitigation method 'ravl'"):
        mitigate(env["ckpt"], env["train"], env["discovery"], out_dir=tmp_path, method="ravl",
                 method_config={"eta": 0.1})
    opts = MitigationOptions(features=[1], templates=["a {}"])
    assert MitigationOptions.from_dict(json.loads(json.dumps(opts.to_dict()))) == opts


def test_resuming_another_set_up_is_refused(env, labelling, tmp_path):
    from ravl.training.loop import FinetuneConfig

    cfg = FinetuneConfig(epochs=2, batch_size=16, val_split=None, checkpoint_interval_s=1e-9)
    mitigate(env["ckpt"], env["train"], env["discovery"], out_dir=tmp_path, method="ravl", config=cfg,
             labelling=labelling, method_config={"lam": 0.5}, progress=False)
    # same folder, same recipe, another λ: not silently continued (nor returned as finished)
    with pytest.raises(CheckpointError, match="differs in: method_config"):
        mitigate(env["ckpt"], env["train"], env["discovery"], out_dir=tmp_path, method="ravl", config=cfg,
                 labelling=labelling, method_config={"lam": 1.0}, progress=False)
    # another labelling (here: no spurious region at all) is refused too
    from dataclasses import replace

    from ravl.mitigation import RegionLabels

    rl = labelling.region_labels
    other = replace(labelling, region_labels=RegionLabels(rl.image_index, rl.boxes_norm, np.zeros(len(rl), bool)))
    assert other.fingerprint() != labelling.fingerprint()
    # a labelling with no spurious region at all is an error of its own, unless allowed
    from ravl.exceptions import DatasetError

    with pytest.raises(DatasetError, match="No region of the 'train' split was assigned"):
        mitigate(env["ckpt"], env["train"], env["discovery"], out_dir=tmp_path / "empty", method="ravl",
                 config=cfg, labelling=other, method_config={"lam": 0.5}, progress=False)
    assert not (tmp_path / "empty" / "training_state.pt").exists()  # refused before any training
    with pytest.raises(CheckpointError, match="labelling"):
        mitigate(env["ckpt"], env["train"], env["discovery"], out_dir=tmp_path, method="ravl", config=cfg,
                 labelling=other, method_config={"lam": 0.5}, allow_empty_labelling=True, progress=False)
    again = mitigate(env["ckpt"], env["train"], env["discovery"], out_dir=tmp_path, method="ravl", config=cfg,
                     labelling=labelling, method_config={"lam": 0.5}, progress=False)
    assert again.resumed_from == (2, 0)  # the finished run, returned as is
    assert again.options["region_warmup_epochs"] == 1  # from init: one epoch of the CLIP loss first
    cont = mitigate(env["ckpt"], env["train"], env["discovery"], out_dir=tmp_path / "cont", method="ravl",
                    start="checkpoint", config=cfg, labelling=labelling, progress=False)
    assert cont.options["region_warmup_epochs"] == 0
    # from pretrained weights the region embeddings mean something at the first step: no warm-up
    pre = mitigate(env["ckpt"], env["train"], env["discovery"], out_dir=tmp_path / "pre", method="ravl", config=cfg,
                   labelling=labelling, init={"model": "tiny", "pretrained": "synthetic"}, progress=False)
    assert pre.options["region_warmup_epochs"] == 0
    assert json.loads((tmp_path / "pre" / "config.json").read_text())["init"]["pretrained"] == "synthetic"


def test_class_text_templates_come_from_discovery(env, labelling, tmp_path):
    from ravl.discovery import DiscoveryResult
    from ravl.mitigation.api import resolve_templates
    from ravl.zeroshot import DEFAULT_TEMPLATES

    disc = DiscoveryResult.from_json(env["discovery"])
    assert resolve_templates(MitigationOptions(), disc) == (tuple(DEFAULT_TEMPLATES), "default")  # none recorded
    assert resolve_templates(MitigationOptions(), disc, ["b {}"]) == (("b {}",), "checkpoint")
    recorded = DiscoveryResult.from_dict({**disc.to_dict(), "meta": {**disc.meta, "templates": ["the digit {}"]}})
    assert resolve_templates(MitigationOptions(), recorded, ["b {}"]) == (("the digit {}",), "discovery")
    assert resolve_templates(MitigationOptions(templates=("a {}",)), recorded) == (("a {}",), "given")
    path = tmp_path / "discovery.json"
    recorded.to_json(path)
    res = mitigate(env["ckpt"], env["train"], path, out_dir=tmp_path / "erm", method="vl-erm", config=CFG,
                   labelling=labelling, progress=False)
    assert res.options["templates"] == ["the digit {}"]
    assert json.loads((tmp_path / "erm" / "config.json").read_text())["mitigation"]["options"]["templates"] == \
        ["the digit {}"]


def test_cfr_calibrates_the_audited_erm_model(env, labelling, tmp_path, monkeypatch):
    import ravl.mitigation.api as api

    def no_init(*a, **k):
        raise AssertionError("CFR must calibrate the ERM (audited) weights, not the initialisation")

    monkeypatch.setattr(api, "load_init_model", no_init)
    res = mitigate(env["ckpt"], env["train"], env["discovery"], out_dir=tmp_path, method="cfr", config=CFG,
                   labelling=labelling, progress=False)
    assert res.start == "init" and res.init == {"model": "tiny", "seed": 0, "checkpoint": None}
    assert res.options["cfr_calibration_samples"] >= 0 and res.options["trainable"] == "image-projection"
    # only the image projection moved (CFR trains the projection on top of the ERM model)
    before, after = _weights(env["ckpt"]), _weights(tmp_path)
    moved = {k for k in before if not torch.equal(before[k], after[k]) and "running" not in k
             and "num_batches" not in k}
    assert moved and all(k.startswith(("visual_norm.", "visual_proj.")) for k in moved)


def test_set_trainable():
    from ravl.mitigation.api import set_trainable
    from ravl.models import load_model

    m = load_model("tiny", seed=0)
    n = set_trainable(m, "image-projection")
    assert n == 4 and {k for k, p in m.module.named_parameters() if p.requires_grad} == \
        {"visual_norm.weight", "visual_norm.bias", "visual_proj.weight", "visual_proj.bias"}
    assert set_trainable(m, "all") == len(list(m.module.parameters()))

    class Bare:
        name = "bare"
        module = torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match="does not name its image projection"):
        set_trainable(Bare(), "image-projection")
    with pytest.raises(ValueError, match="'trainable'"):
        MitigationOptions(trainable="backbone")


def test_ravl_labels_once_per_run_not_per_epoch(env, tmp_path, monkeypatch):
    # The regions are labelled once, before training; the epochs reuse them (and the prompt tokens).
    from ravl.mitigation import api
    from ravl.zeroshot import prompt_tokens

    counts = {"label": 0, "tokens": 0}
    real_label, real_tokens = api.label_regions, prompt_tokens

    def label(*a, **k):
        counts["label"] += 1
        return real_label(*a, **k)

    def tokens(*a, **k):
        counts["tokens"] += 1
        return real_tokens(*a, **k)

    monkeypatch.setattr(api, "label_regions", label)
    monkeypatch.setattr("ravl.mitigation.common.prompt_tokens", tokens)
    res = mitigate(env["ckpt"], env["train"], env["discovery"], out_dir=tmp_path, method="ravl",
                   config=FinetuneConfig(epochs=3, batch_size=16, val_split=None), progress=False,
                   method_config={"warmup_epochs": 0, "train_region_mode": "roi"})
    assert len(res.history) == 3 and counts == {"label": 1, "tokens": 1}
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["mitigation"]["method_config"]["train_region_mode"] == "roi"
    assert res.labelling["region_mode"] == "masked"      # labelled in the labelling's mode, trained on roi


def test_context_knows_fresh_from_trained_starting_weights():
    from ravl.mitigation.registry import MitigationContext

    def ctx(start, init):
        return MitigationContext(train=None, labels=np.zeros(0, dtype=np.int64), classes=[], templates=(),
                                 labelling=None, finetune=FinetuneConfig(), start=start, region_mode="masked",
                                 load_audited=lambda: None, init=init)

    assert ctx("init", {"model": "tiny", "seed": 0, "checkpoint": None}).from_random_weights
    assert ctx("init", {"model": "open_clip:RN50", "checkpoint": None}).from_random_weights
    assert ctx("init", None).from_random_weights                       # no record: the built-in default
    assert not ctx("init", {"model": "tiny", "pretrained": "synthetic"}).from_random_weights
    assert not ctx("init", {"model": "open_clip:RN50", "pretrained": "openai"}).from_random_weights
    assert not ctx("init", {"model": "tiny", "checkpoint": "/ck"}).from_random_weights
    assert not ctx("init", {"model": "hf:/models/clip", "checkpoint": None}).from_random_weights
    assert not ctx("checkpoint", None).from_random_weights
