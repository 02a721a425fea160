"""Training options: frozen towers, precision, gradient checkpointing, data-loading workers and
the per-model default recipe."""

import json

import pytest
import torch

from ravl.exceptions import CheckpointError, InvalidParameterError
from ravl.training import loop
from ravl.training.loop import FinetuneConfig, finetune
from ravl.training.options import (
    _reached_by,
    check_precision,
    freeze_tower,
    set_grad_checkpointing,
    tower_parameter_names,
)


@pytest.fixture(scope="module")
def train_ds(small_setting):
    from ravl.data.dataset import load_dataset

    ds = load_dataset(small_setting.train_dir, require_fields=("caption",))
    keep = [i for i, r in enumerate(ds.records) if r.split == "val"][:40] + \
           [i for i, r in enumerate(ds.records) if r.split == "train"][:96]
    return ds.subset(indices=sorted(keep))


def _model():
    from ravl.models import load_model

    return load_model("tiny", seed=0)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


CFG = FinetuneConfig(epochs=1, batch_size=32)


def test_towers_from_prefixes_match_the_gradient_probe():
    model = _model()
    for tower, other in (("image", "text"), ("text", "image")):
        probed = _reached_by(model, tower) - _reached_by(model, other)
        assert tower_parameter_names(model, tower) == probed
    names = {n for n, _ in model.module.named_parameters()}
    assert names - tower_parameter_names(model, "image") - tower_parameter_names(model, "text") == {"logit_scale"}


@pytest.mark.parametrize("frozen", ["text", "image"])
def test_freeze_keeps_that_tower(train_ds, tmp_path, frozen):
    model = _model()
    before = _weights(model)
    finetune(model, train_ds, tmp_path, FinetuneConfig(epochs=1, batch_size=32, freeze=frozen, val_split=None),
             progress=False)
    after = model.module.state_dict()
    kept = tower_parameter_names(model, frozen)
    trained = tower_parameter_names(model, "image" if frozen == "text" else "text")
    assert all(torch.equal(before[n], after[n]) for n in kept)
    assert sum(not torch.equal(before[n], after[n]) for n in trained) >= len(trained) // 2
    assert not torch.equal(before["logit_scale"], after["logit_scale"])


def test_freeze_leaving_nothing_is_refused():
    model = _model()
    for n, p in model.module.named_parameters():
        p.requires_grad_(n in tower_parameter_names(model, "image"))
    with pytest.raises(InvalidParameterError, match="Nothing .* is left to train"):
        freeze_tower(model, "image")


def test_grad_checkpointing_gives_the_same_gradients(train_ds):
    torch.manual_seed(0)
    pixels = torch.randn(4, 3, *_model().image_size)
    grads = []
    for enable in (False, True):
        model = _model()
        set_grad_checkpointing(model, enable)
        obj = loop.ContrastiveObjective()
        loss = obj(model, {"pixels": pixels, "tokens": model.tokenize(["a", "bb", "the digit nine", "x y"])})["loss"]
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.module.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-6)


def test_grad_checkpointing_needs_an_adapter_that_offers_it():
    class NoCkpt:
        name = "custom"

    with pytest.raises(InvalidParameterError, match="offers no gradient checkpointing"):
        set_grad_checkpointing(NoCkpt(), True)
    set_grad_checkpointing(NoCkpt(), False)  # turning it off is always fine


def test_precision_checks():
    assert check_precision("bf16", "cpu") == "bf16"
    with pytest.raises(InvalidParameterError, match="fp16 needs a CUDA device"):
        check_precision("fp16", "cpu")
    with pytest.raises(InvalidParameterError, match="'precision'"):
        FinetuneConfig(precision="fp8")
    with pytest.raises(InvalidParameterError, match="'freeze'"):
        FinetuneConfig(freeze="both")


def test_bf16_autocast_trains_on_cpu(train_ds, tmp_path):
    model = _model()
    before = _weights(model)
    res = finetune(model, train_ds, tmp_path, FinetuneConfig(epochs=1, batch_size=32, precision="bf16"),
                   progress=False)
    assert all(p.dtype == torch.float32 for p in model.module.parameters())  # autocast, not bf16 weights
    assert torch.isfinite(torch.tensor(res.history[0]["train_loss"]))
    assert 0 <= res.history[0]["val_zero_shot_accuracy"] <= 1
    assert any(not torch.equal(before[k], v) for k, v in model.module.state_dict().items())
    assert json.loads((tmp_path / "config.json").read_text())["finetune"]["precision"] == "bf16"


def test_uncached_loading_with_workers_gives_the_same_weights(train_ds, tmp_path, monkeypatch):
    ref = _model()
    finetune(ref, train_ds, tmp_path / "ref", CFG, progress=False)
    monkeypatch.setattr(loop, "PIXEL_CACHE_BYTES", 0)  # every batch loaded by the worker processes
    model = _model()
    finetune(model, train_ds, tmp_path / "workers", CFG, progress=False, workers=2)
    serial = _model()
    finetune(serial, train_ds, tmp_path / "serial", CFG, progress=False, workers=0)
    for k, v in ref.module.state_dict().items():  # cached, uncached in workers, uncached here: one result
        assert torch.equal(model.module.state_dict()[k], v), k
        assert torch.equal(serial.module.state_dict()[k], v), k


def test_load_batches_with_workers_equals_serial(train_ds):
    model = _model()
    batches = [[0, 5, 3], [7], [2, 1]]
    serial = list(loop.load_batches(model, train_ds, batches))
    par = list(loop.load_batches(model, train_ds, batches, workers=2))
    assert len(par) == 3 and all(torch.equal(a, b) for a, b in zip(serial, par))
    with pytest.raises(InvalidParameterError, match="'workers'"):
        finetune(model, train_ds, "unused", CFG, workers=-1)


def test_resume_rules_for_the_new_fields(train_ds, tmp_path):
    state = tmp_path / loop.STATE_FILE
    model = _model()
    finetune(model, train_ds, tmp_path, CFG, progress=False)
    # a state saved before precision / freeze / grad_checkpointing existed still resumes
    saved = torch.load(state, weights_only=False)
    for k in ("precision", "freeze", "grad_checkpointing"):
        del saved["config"][k]
    torch.save(saved, state)
    assert finetune(_model(), train_ds, tmp_path, CFG, progress=False).resumed_from == (1, 0)
    # gradient checkpointing may change (memory, not results); precision may not
    with_ckpt = FinetuneConfig(epochs=1, batch_size=32, grad_checkpointing=True)
    assert finetune(_model(), train_ds, tmp_path, with_ckpt, progress=False).resumed_from == (1, 0)
    with pytest.raises(CheckpointError, match="another configuration"):
        finetune(_model(), train_ds, tmp_path, FinetuneConfig(epochs=1, batch_size=32, precision="bf16"),
                 progress=False)


def test_model_defaults_fill_the_recipe(train_ds, tmp_path):
    model = _model()
    model.finetune_defaults = {"lr": 1e-5, "warmup_fraction": 0.1, "not_a_field": 3}
    cfg = FinetuneConfig.for_model(model, epochs=1, batch_size=32)
    assert (cfg.lr, cfg.warmup_fraction, cfg.epochs, cfg.weight_decay) == (1e-5, 0.1, 1, 0.05)
    assert FinetuneConfig.for_model(model, lr=3e-4).lr == 3e-4
