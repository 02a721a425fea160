"""The ``decorrelate`` mitigation method: its synthesised pairs and the contract with a named object."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ravl.data.cooccurrence import make_cooccurrence_benchmark
from ravl.data.dataset import load_dataset
from ravl.exceptions import InvalidParameterError
from ravl.mitigation.checks import check_mitigation_method
from ravl.mitigation.methods.decorrelate import DecorrelateConfig, decorrelate_method
from ravl.mitigation.registry import MitigationContext
from ravl.models import load_model
from ravl.training.loop import FinetuneConfig


def _ctx(ds):
    return MitigationContext(train=ds, labels=np.zeros(len(ds), dtype=np.int64), classes=list(ds.classes),
                             templates=("{}",), labelling=None, finetune=FinetuneConfig(seed=3), start="init",
                             region_mode="masked", load_audited=lambda: None, progress=False)


@pytest.fixture(scope="module")
def cooc_train(tmp_path_factory):
    s = make_cooccurrence_benchmark(tmp_path_factory.mktemp("cooc"), strength=0.9, n_train=40, n_eval=20,
                                    random_state=0, progress=False)
    return load_dataset(s.train_dir, split="train")


def test_pairs_follow_the_object(cooc_train):
    ds = cooc_train
    plan = decorrelate_method(_ctx(ds), DecorrelateConfig(object="ring", mix="separate", fraction=1.0))
    obj = plan.objective
    with_ring = {r.index for r in ds if "ring" in r.region_attributes}
    assert set(obj.remove) == with_ring and plan.info["n_remove_images"] == len(with_ring)
    assert set(obj.paste) == {r.index for r in ds} - with_ring  # every image has an empty quadrant
    for i in with_ring:
        r = ds[i]
        assert obj.remove[i] == [list(b) for b, a in zip(r.boxes, r.region_attributes) if a == "ring"]
        assert "ring" in r.caption and "ring" not in obj.removed_caption[i]
        assert obj.removed_caption[i].startswith(r.caption.split(" with ")[0])
    for i in obj.paste:
        assert obj.pasted_caption[i].endswith(" a ring") and "ring" not in ds[i].caption

    model = load_model("tiny", seed=0)
    idx = list(range(8))
    batch = {"pixels": model.preprocess([ds.load_image(i) for i in idx]),
             "tokens": model.tokenize([ds[i].caption for i in idx]), "indices": torch.tensor(idx)}
    out = obj(model, batch)
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
    assert int(out["n_removed"]) == len(with_ring & set(idx)) and int(out["n_pasted"]) == 8 - int(out["n_removed"])
    assert out["loss"].item() == pytest.approx((out["clip"] + out["removed"] + out["pasted"]).item(), rel=1e-5)
    again = obj(model, batch)  # deterministic: the same donors and regions for the same batch
    assert again["loss"].item() == pytest.approx(out["loss"].item(), rel=1e-6)
    out["loss"].backward()
    # weights 0: the standard CLIP loss only
    plain = decorrelate_method(_ctx(ds), DecorrelateConfig(object="ring", remove_weight=0.0, paste_weight=0.0,
                                                           fraction=1.0, mix="separate"))
    only = plain.objective(model, batch)
    assert only["loss"].item() == pytest.approx(out["clip"].item(), rel=1e-5) and int(only["n_removed"]) == 0


def test_joint_mix_contrasts_each_synthesised_pair_with_its_original(cooc_train):
    # the first version contrasted the removed pairs only among themselves (none shows the object,
    # none names it) and the pasted ones likewise: no pair of either batch differed in the object.
    # Joint: one contrastive batch, so a removed image's own original caption (naming the object)
    # is one of its negatives.
    ds = cooc_train
    obj = decorrelate_method(_ctx(ds), DecorrelateConfig(object="ring", paste_weight=0.5, fraction=1.0)).objective
    model = load_model("tiny", seed=0)
    idx = list(range(8))
    batch = {"pixels": model.preprocess([ds.load_image(i) for i in idx]),
             "tokens": model.tokenize([ds[i].caption for i in idx]), "indices": torch.tensor(idx)}
    out = obj(model, batch)
    syn = obj.synthesise(idx)
    pairs = syn["removed"] + syn["pasted"]
    assert len(syn["removed"]) == int(out["n_removed"]) >= 1 and len(syn["pasted"]) == int(out["n_pasted"]) >= 1
    with torch.no_grad():
        img = model.encode_image(torch.cat([batch["pixels"], model.preprocess([p[1] for p in pairs])]))
        txt = model.encode_text(model.tokenize([ds[i].caption for i in idx] + [p[2] for p in pairs]))
        logits = model.logit_scale() * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    w = torch.tensor([1.0] * 8 + [1.0] * len(syn["removed"]) + [0.5] * len(syn["pasted"]))
    target = torch.arange(len(w))
    ce = (F.cross_entropy(logits, target, reduction="none") + F.cross_entropy(logits.T, target, reduction="none"))
    assert out["loss"].item() == pytest.approx(((ce * w).sum() / w.sum() / 2).item(), rel=1e-4)
    # each removed pair's original caption is in the same batch and names the ring
    for i, _, caption in syn["removed"]:
        assert "ring" in ds[i].caption and "ring" not in caption and i in idx
    out["loss"].backward()
    # fraction: fewer synthesised pairs, drawn per batch (the same for the same batch)
    half = decorrelate_method(_ctx(ds), DecorrelateConfig(object="ring", fraction=0.5)).objective
    a, b = half.synthesise(list(range(40))), half.synthesise(list(range(40)))
    assert [p[0] for p in a["removed"]] == [p[0] for p in b["removed"]]
    assert 0 < len(a["removed"]) + len(a["pasted"]) < len(ds)


def test_bad_object_and_config(cooc_train):
    with pytest.raises(InvalidParameterError, match="no training image has a region 'frisbee'"):
        decorrelate_method(_ctx(cooc_train), DecorrelateConfig(object="frisbee"))
    with pytest.raises(InvalidParameterError, match="'fill' parameter"):
        DecorrelateConfig(fill="inpaint")
    with pytest.raises(InvalidParameterError, match="'remove_weight' parameter"):
        DecorrelateConfig(remove_weight=-1.0)
    with pytest.raises(InvalidParameterError, match="'mix' parameter"):
        DecorrelateConfig(mix="both")
    with pytest.raises(InvalidParameterError, match="'fraction' parameter"):
        DecorrelateConfig(fraction=0.0)


def test_contract_with_a_named_object(mitigation_env, mitigation_labelling, tmp_path):
    env = mitigation_env
    res = check_mitigation_method("decorrelate", checkpoint=env["ckpt"], train=env["train"],
                                  discovery=env["discovery"], work_dir=tmp_path,
                                  config=FinetuneConfig(epochs=1, batch_size=16, val_split=None),
                                  method_config={"object": "red_square"}, labelling=mitigation_labelling)
    assert res.method == "decorrelate"
