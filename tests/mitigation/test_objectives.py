"""Mitigation objectives: a contract battery over every objective, then per-objective checks.

The objectives are exercised with a tiny fake model built here from torch modules (linear
encoders), so these tests depend only on the model protocol, not on a real backend.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ravl.mitigation import (
    CFRCalibrationObjective,
    CFRConfig,
    GroupDROConfig,
    GroupDROObjective,
    RegionAwareConfig,
    RegionAwareObjective,
    RegionLabels,
    SpuriousAwareConfig,
    SpuriousAwareObjective,
    VLERMObjective,
    calibration_contrastive_loss,
    class_feature_groups,
    group_balanced_indices,
    group_uniform_indices,
    group_uniform_weights,
    region_aware_loss,
    supervised_contrastive_loss,
    vl_erm_per_sample,
)
from ravl.training.loop import ContrastiveObjective
from ravl.training.losses import clip_loss
from ravl.zeroshot import class_text_embeddings

CLASSES = ("zero", "one", "two")
TEMPLATES = ("a photo of a {}", "the digit {}")
N, B, H, D = 12, 6, 8, 6


class FakeModel:
    """The model protocol with linear encoders: enough for every objective, instant on CPU."""

    name = "fake"
    embed_dim = D
    image_size = (H, H)

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.module = nn.ModuleDict({"img": nn.Linear(3 * H * H, D), "tok": nn.Embedding(259, 8),
                                     "txt": nn.Linear(8, D), "roi": nn.Linear(3, D)})
        self.module.register_parameter("log_scale", nn.Parameter(torch.tensor(math.log(10.0))))
        with torch.no_grad():
            for name, p in self.module.named_parameters():
                if name != "log_scale":
                    p.copy_(0.3 * torch.randn(p.shape, generator=g))

    def preprocess(self, images):
        return torch.stack([torch.from_numpy(np.asarray(im.resize((H, H)), dtype=np.float32) / 255).permute(2, 0, 1)
                            for im in images])

    def tokenize(self, texts):
        out = torch.full((len(texts), 24), 256, dtype=torch.long)
        for i, t in enumerate(texts):
            b = list(t.encode())[:24]
            out[i, :len(b)] = torch.tensor(b)
        return out

    def encode_image(self, pixels):
        return self.module["img"](pixels.flatten(1))

    def encode_text(self, tokens):
        mask = (tokens != 256).float()[..., None]
        return self.module["txt"]((self.module["tok"](tokens) * mask).sum(1) / mask.sum(1).clamp(min=1))

    def encode_roi(self, pixels, boxes):
        feats = pixels[boxes[:, 0].long()].mean(dim=(2, 3))            # [M, 3]
        return self.module["roi"](feats) + self.module["roi"](boxes[:, 1:4].float())

    def logit_scale(self):
        return self.module.log_scale.exp()

    @property
    def device(self):
        return torch.device("cpu")


def roi_embedder(model, pixels, boxes, mode):
    return model.encode_roi(pixels, boxes)


LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
PRESENT = np.array([1, 0, 0, 1, 0, 1, 1, 0, 0, 0, 1, 0], dtype=bool)


def region_labels() -> RegionLabels:
    """Two quadrant regions per training image; the top-left one is spurious where PRESENT.

    Image 5 has only a spurious region, image 7 has no region at all.
    """
    idx, boxes, spur = [], [], []
    for i in range(N):
        if i == 7:
            continue
        idx += [i, i]
        boxes += [[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]]
        spur += [bool(PRESENT[i]), False]
    idx, boxes, spur = idx[::-1], boxes[::-1], spur[::-1]         # rows in any order
    keep = [k for k in range(len(idx)) if not (idx[k] == 5 and not spur[k])]
    return RegionLabels(np.array(idx)[keep], np.array(boxes)[keep], np.array(spur)[keep])


def make_batch(indices=(0, 1, 2, 5, 7, 9), seed=0):
    g = torch.Generator().manual_seed(seed)
    model = FakeModel()
    captions = [f"the digit {CLASSES[LABELS[i]]}" for i in indices]
    return {"pixels": torch.rand(len(indices), 3, H, H, generator=g), "tokens": model.tokenize(captions),
            "indices": torch.tensor(indices)}


def pos_neg(n_calib: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_calib, 3, D, generator=g), torch.randn(n_calib, 4, D, generator=g)


FACTORIES = {
    "contrastive": lambda: ContrastiveObjective(),
    "vl_erm": lambda: VLERMObjective(LABELS, class_names=CLASSES, templates=TEMPLATES),
    "vl_gdro": lambda: GroupDROObjective(LABELS, class_feature_groups(LABELS, PRESENT)[0], class_names=CLASSES,
                                         templates=TEMPLATES),
    "ravl": lambda: RegionAwareObjective(region_labels(), LABELS, class_names=CLASSES, templates=TEMPLATES,
                                         region_mode="roi", region_embedder=roi_embedder),
    "spurious_aware": lambda: SpuriousAwareObjective(LABELS, class_names=CLASSES, templates=TEMPLATES,
                                                     spurious_names=("red square",)),
    "cfr_calibration": lambda: CFRCalibrationObjective(LABELS, [1, 5, 11], *pos_neg(3), class_names=CLASSES,
                                                       templates=TEMPLATES, n_epochs=4),
}


# ---------------------------------------------------------------------------------------------
# Contract battery
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", sorted(FACTORIES))
def test_contract_finite_scalar_loss_and_named_components(key):
    obj = FACTORIES[key]()
    assert isinstance(obj.name, str) and obj.name
    out = obj(FakeModel(), make_batch())
    assert isinstance(out, dict) and "loss" in out
    for name, value in out.items():
        assert isinstance(value, torch.Tensor) and value.ndim == 0, name
        assert torch.isfinite(value), name


def test_contract_names_are_unique():
    names = [FACTORIES[k]().name for k in FACTORIES]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("key", sorted(FACTORIES))
def test_contract_gradients_reach_model_parameters(key):
    model = FakeModel()
    obj = FACTORIES[key]()
    obj(model, make_batch())["loss"].backward()
    grads = {n: p.grad for n, p in model.module.named_parameters()}
    assert grads["img.weight"] is not None and grads["img.weight"].abs().sum() > 0
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())
    if key in ("contrastive", "vl_erm", "vl_gdro", "ravl", "spurious_aware", "cfr_calibration"):
        assert grads["txt.weight"] is not None and grads["txt.weight"].abs().sum() > 0
    if key == "ravl":
        assert grads["roi.weight"] is not None and grads["roi.weight"].abs().sum() > 0


@pytest.mark.parametrize("key", sorted(FACTORIES))
def test_contract_deterministic(key):
    outs = []
    for _ in range(2):
        model = FakeModel()
        out = FACTORIES[key]()(model, make_batch())
        out["loss"].backward()
        outs.append(({k: float(v.detach()) for k, v in out.items()}, model.module["img"].weight.grad.clone()))
    assert outs[0][0] == outs[1][0]
    assert torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("key", sorted(FACTORIES))
def test_contract_runs_under_no_grad_without_changing_state(key):
    obj = FACTORIES[key]()
    before = obj.state_dict() if hasattr(obj, "state_dict") else None
    with torch.no_grad():
        out = obj(FakeModel(), make_batch())
    assert torch.isfinite(out["loss"])
    if before is not None:
        after = obj.state_dict()
        assert before.keys() == after.keys()
        for k in before:
            assert torch.equal(torch.as_tensor(before[k]), torch.as_tensor(after[k]))


@pytest.mark.parametrize("key", sorted(k for k in FACTORIES if k != "contrastive"))
def test_contract_config_round_trips_through_json(key):
    obj = FACTORIES[key]()
    cfg = obj.config
    again = type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(Exception):
        cfg.lam = 2.0  # frozen


@pytest.mark.parametrize("key", sorted(k for k in FACTORIES if k != "contrastive"))
def test_contract_indices_out_of_range_are_explained(key):
    batch = make_batch()
    batch["indices"] = torch.tensor([0, 1, 2, 3, 4, N + 3])
    with pytest.raises(IndexError, match="training split"):
        FACTORIES[key]()(FakeModel(), batch)


@pytest.mark.parametrize("key", sorted(k for k in FACTORIES if k != "contrastive"))
def test_contract_batch_labels_override_positions(key):
    batch = make_batch()
    obj = FACTORIES[key]()
    a = obj(FakeModel(), batch)["loss"]
    batch2 = dict(batch, labels=torch.as_tensor(LABELS[batch["indices"].numpy()]))
    b = FACTORIES[key]()(FakeModel(), batch2)["loss"]
    assert torch.allclose(a, b)


# ---------------------------------------------------------------------------------------------
# Per-objective checks
# ---------------------------------------------------------------------------------------------

def class_prompt_embeddings(model, names, templates):
    return class_text_embeddings(model, names, templates, grad=True)


def test_class_prompt_embeddings_match_zero_shot_classifier():
    model = FakeModel()
    emb = class_prompt_embeddings(model, CLASSES, TEMPLATES)
    assert emb.requires_grad
    assert torch.allclose(emb.detach(), class_text_embeddings(model, CLASSES, TEMPLATES), atol=1e-6)


def test_vl_erm_equals_cross_entropy_over_class_prompts():
    model, batch = FakeModel(), make_batch()
    out = VLERMObjective(LABELS, class_names=CLASSES, templates=TEMPLATES)(model, batch)
    img = F.normalize(model.encode_image(batch["pixels"]), dim=-1)
    logits = model.logit_scale() * img @ class_prompt_embeddings(model, CLASSES, TEMPLATES).T
    ref = F.cross_entropy(logits, torch.as_tensor(LABELS[batch["indices"].numpy()]))
    assert torch.allclose(out["loss"], ref, atol=1e-6)


def test_vl_erm_rejects_unlabelled_images_and_bad_config():
    labels = LABELS.copy()
    labels[2] = -1
    with pytest.raises(ValueError, match=r"positions \[2\] have none"):
        VLERMObjective(labels, class_names=CLASSES)(FakeModel(), make_batch())
    with pytest.raises(ValueError, match="'labels_by_index' parameter of VLERMObjective"):
        VLERMObjective(LABELS + 1, class_names=CLASSES)
    with pytest.raises(TypeError, match="either 'config' or keyword"):
        GroupDROObjective(LABELS, LABELS, GroupDROConfig(), eta=0.1, class_names=CLASSES)
    with pytest.raises(ValueError, match="string containing '\\{\\}'"):
        VLERMObjective(LABELS, class_names=CLASSES, templates=("no placeholder",))
    with pytest.raises(ValueError, match="distinct names"):
        VLERMObjective(LABELS, class_names=("a", "a", "b"))
    assert VLERMObjective(LABELS, class_names=list(CLASSES)).templates  # defaults resolved and stored


def test_group_dro_update_loss_and_exact_resume():
    groups, n_groups = class_feature_groups(LABELS, PRESENT)
    assert n_groups == 6 and groups.tolist()[:3] == [1, 2, 4]
    model, batch = FakeModel(), make_batch()
    obj = GroupDROObjective(LABELS, groups, GroupDROConfig(eta=0.5), class_names=CLASSES, templates=TEMPLATES)
    assert obj.n_groups == 6
    out = obj(model, batch)
    # Recompute: per-sample VL-ERM, group means, q <- q exp(eta l) normalised, loss = q . means.
    img = model.encode_image(batch["pixels"])
    per = vl_erm_per_sample(img, class_prompt_embeddings(model, CLASSES, TEMPLATES),
                            torch.as_tensor(LABELS[batch["indices"].numpy()]), model.logit_scale()).detach()
    g = torch.as_tensor(groups[batch["indices"].numpy()])
    means = torch.stack([per[g == k].mean() if (g == k).any() else per.new_zeros(()) for k in range(6)]).double()
    q = torch.full((6,), 1 / 6, dtype=torch.float64) * torch.exp(0.5 * means)
    q = q / q.sum()
    assert torch.allclose(obj.group_weights, q)
    assert torch.allclose(out["loss"].double(), (q * means).sum(), atol=1e-6)

    # Resume: 3 steps straight == 1 step, save, load into a fresh objective, 2 more steps.
    batches = [make_batch(seed=s) for s in range(3)]
    straight = GroupDROObjective(LABELS, groups, class_names=CLASSES, templates=TEMPLATES)
    for bt in batches:
        straight(model, bt)
    first = GroupDROObjective(LABELS, groups, class_names=CLASSES, templates=TEMPLATES)
    first(model, batches[0])
    state = first.state_dict()
    resumed = GroupDROObjective(LABELS, groups, class_names=CLASSES, templates=TEMPLATES)
    resumed.load_state_dict(state)
    for bt in batches[1:]:
        resumed(model, bt)
    assert torch.equal(straight.group_weights, resumed.group_weights)
    with pytest.raises(ValueError, match="groups"):
        resumed.load_state_dict({"group_weights": torch.ones(3)})


def test_group_dro_gives_no_weight_to_empty_groups():
    groups = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    obj = GroupDROObjective(LABELS, groups, class_names=CLASSES, templates=TEMPLATES, n_groups=3, eta=1.0)
    assert obj.group_weights.tolist() == [0.5, 0.5, 0.0]
    out = obj(FakeModel(), make_batch())
    assert obj.group_weights[2] == 0 and math.isclose(float(obj.group_weights.sum()), 1.0)
    assert torch.isfinite(out["loss"])


def test_region_objective_gathers_the_batch_regions():
    seen = {}

    def spy(model, pixels, boxes, mode):
        seen["boxes"], seen["mode"] = boxes.clone(), mode
        return model.encode_roi(pixels, boxes)

    labels = region_labels()
    obj = RegionAwareObjective(labels, LABELS, class_names=CLASSES, templates=TEMPLATES, region_mode="crop",
                               region_embedder=spy)
    batch = make_batch(indices=(3, 7, 5, 3))       # a duplicate, an image without regions, a spurious-only one
    out = obj(FakeModel(), batch)
    assert seen["mode"] == "crop"
    rows = seen["boxes"][:, 0].long().tolist()
    assert rows == [0, 0, 2, 3, 3]
    expected = {0: {(0, 0, 0.5, 0.5), (0.5, 0.5, 1, 1)}, 2: {(0, 0, 0.5, 0.5)}, 3: {(0, 0, 0.5, 0.5), (0.5, 0.5, 1, 1)}}
    for r, boxes in expected.items():
        got = {tuple(b) for b in seen["boxes"][seen["boxes"][:, 0] == r, 1:].tolist()}
        assert got == boxes
    assert set(out) == {"loss", "clip_loss", "region_loss", "alignment_loss"}


def test_region_objective_value_and_weights():
    model, batch = FakeModel(), make_batch()
    kw = dict(class_names=CLASSES, templates=TEMPLATES, region_embedder=roi_embedder)
    base = RegionAwareObjective(region_labels(), LABELS, lam=0.0, **kw)(model, batch)
    ref_clip = clip_loss(model.encode_image(batch["pixels"]), model.encode_text(batch["tokens"]), model.logit_scale())
    assert torch.allclose(base["loss"], ref_clip["loss"]) and float(base["region_loss"].detach()) == 0.0
    out = RegionAwareObjective(region_labels(), LABELS, lam=0.2, clip_weight=0.5, region_weight=2.0,
                               alignment_weight=3.0, tau=0.1, **kw)(model, batch)
    # Recompute the region terms from the region rows of the batch (image 7 has none).
    rl = region_labels()
    idx = batch["indices"].tolist()
    sel = [(k, idx.index(int(i))) for k, i in enumerate(rl.image_index) if int(i) in idx]
    boxes = torch.tensor([[r, *rl.boxes_norm[k]] for k, r in sel])
    emb = model.encode_roi(batch["pixels"], boxes)
    ra = region_aware_loss(emb, boxes[:, 0].long(), torch.tensor([bool(rl.is_spurious[k]) for k, _ in sel]),
                           class_prompt_embeddings(model, CLASSES, TEMPLATES),
                           torch.as_tensor(LABELS[idx]), tau=0.1)
    assert torch.allclose(out["region_loss"], ra["region_loss"], atol=1e-6)
    assert torch.allclose(out["alignment_loss"], ra["alignment_loss"], atol=1e-6)
    want = 0.5 * out["clip_loss"] + 0.2 * (2 * ra["region_loss"] + 3 * ra["alignment_loss"])
    assert torch.allclose(out["loss"], want, atol=1e-6)


def test_region_objective_warmup_epochs():
    model, batch = FakeModel(), make_batch()
    kw = dict(class_names=CLASSES, templates=TEMPLATES, region_embedder=roi_embedder, lam=0.5)
    full = RegionAwareObjective(region_labels(), LABELS, **kw)(model, batch)
    obj = RegionAwareObjective(region_labels(), LABELS, warmup_epochs=2, **kw)
    for epoch, lam in ((0, 0.0), (1, 0.0), (2, 0.5), (5, 0.5)):
        obj.set_epoch(epoch)
        assert obj.current_lam == lam
        out = obj(model, batch)
        want = full["loss"] if lam else full["clip_loss"]  # the CLIP loss only during the warm-up
        assert torch.allclose(out["loss"], want, atol=1e-6)
    obj.load_state_dict({"epoch": 1})
    assert obj.state_dict() == {"epoch": 1} and obj.current_lam == 0.0
    with pytest.raises(ValueError, match="'warmup_epochs'"):
        RegionAwareObjective(region_labels(), LABELS, warmup_epochs=-1, **kw)


def test_region_objective_with_the_real_region_batch_on_the_fake_model():
    for mode in ("masked", "roi"):
        model = FakeModel()
        obj = RegionAwareObjective(region_labels(), LABELS, class_names=CLASSES, templates=TEMPLATES,
                                   region_mode=mode)
        out = obj(model, make_batch())
        out["loss"].backward()
        assert torch.isfinite(out["loss"]) and float(out["region_loss"].detach()) > 0
        assert model.module["img" if mode == "masked" else "roi"].weight.grad.abs().sum() > 0


def _tiny_and_batch():
    """The tiny CLIP and a 4-image batch of random pixels with digit captions."""
    import ravl

    model = ravl.load_model("tiny", seed=0)
    h, w = model.image_size
    g = torch.Generator().manual_seed(0)
    batch = {"pixels": torch.randn(4, 3, h, w, generator=g), "indices": torch.tensor([0, 1, 2, 3]),
             "tokens": model.tokenize([f"the digit {CLASSES[LABELS[i]]}" for i in range(4)])}
    return model, batch


def test_region_objective_with_the_tiny_clip():
    model, batch = _tiny_and_batch()
    obj = RegionAwareObjective(region_labels(), LABELS, class_names=CLASSES, templates=TEMPLATES,
                               region_mode="masked")
    out = obj(model, batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and float(out["region_loss"].detach()) > 0
    grads = [p.grad for p in model.module.parameters() if p.requires_grad]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads[:3])


def test_region_objective_train_region_mode_overrides_the_labelling_mode():
    seen = []

    def spy(model, pixels, boxes, mode):
        seen.append(mode)
        return model.encode_roi(pixels, boxes)

    kw = dict(class_names=CLASSES, templates=TEMPLATES, region_embedder=spy)
    RegionAwareObjective(region_labels(), LABELS, region_mode="masked", **kw)(FakeModel(), make_batch())
    obj = RegionAwareObjective(region_labels(), LABELS, region_mode="masked", train_region_mode="roi", **kw)
    obj(FakeModel(), make_batch())
    assert seen == ["masked", "roi"] and obj.region_mode == "roi"
    assert RegionAwareConfig.from_dict(RegionAwareConfig(train_region_mode="roi").to_dict()).train_region_mode == "roi"
    with pytest.raises(ValueError, match="'train_region_mode'"):
        RegionAwareConfig(train_region_mode="pixels")


def test_region_objective_roi_on_the_tiny_clip_is_one_backbone_pass():
    # train_region_mode="roi" on the tiny CLIP: images and regions from one feature-map pass
    # (encode_image_and_roi), the same loss as the separate passes (BatchNorm in eval mode here).
    model, batch = _tiny_and_batch()
    kw = dict(class_names=CLASSES, templates=TEMPLATES, region_mode="masked", train_region_mode="roi")
    calls = []
    orig = model.module.feature_map
    model.module.feature_map = lambda px: calls.append(px.shape[0]) or orig(px)
    one = RegionAwareObjective(region_labels(), LABELS, **kw)(model, batch)
    assert calls == [4]
    sep = RegionAwareObjective(region_labels(), LABELS, region_embedder=lambda m, px, bx, mode: m.encode_roi(px, bx),
                               **kw)(model, batch)
    assert calls == [4, 4, 4]
    for k in ("loss", "clip_loss", "region_loss", "alignment_loss"):
        assert torch.allclose(one[k], sep[k], atol=1e-5), k


def test_region_objective_train_region_size_encodes_smaller_region_inputs():
    # train_region_size=28 on the tiny CLIP: the regions enter the image tower as 28 x 28 inputs,
    # exactly the crops region_pixels makes at that size; gradients reach the conv tower.
    from ravl.models.regions import region_pixels

    model, batch = _tiny_and_batch()
    model.module.eval()                       # BatchNorm statistics independent of the pass order
    shapes, seen = [], {}
    orig = model.module.feature_map
    model.module.feature_map = lambda px: shapes.append(tuple(px.shape)) or orig(px)
    kw = dict(class_names=CLASSES, templates=TEMPLATES, region_mode="masked")
    obj = RegionAwareObjective(region_labels(), LABELS, train_region_mode="crop", train_region_size=28, **kw)
    out = obj(model, batch)
    assert shapes[0] == (4, 3, 56, 56) and shapes[-1][1:] == (3, 28, 28)

    def ref_embedder(m, px, bx, mode):
        seen["boxes"] = bx
        return m.encode_image(region_pixels(m, px, bx, mode, size=28))

    ref = RegionAwareObjective(region_labels(), LABELS, train_region_mode="crop", region_embedder=ref_embedder,
                               **kw)(model, batch)
    for k in ("loss", "region_loss", "alignment_loss"):
        assert torch.allclose(out[k], ref[k], atol=1e-5), k
    out["loss"].backward()
    conv = model.module.visual[0].conv.weight.grad
    assert conv is not None and conv.abs().sum() > 0
    assert RegionAwareConfig.from_dict(RegionAwareConfig(train_region_size=28).to_dict()).train_region_size == 28
    with pytest.raises(ValueError, match="'train_region_size'"):
        RegionAwareConfig(train_region_size=4)
    with pytest.raises(ValueError, match="'roi' pools features"):
        RegionAwareConfig(train_region_mode="roi", train_region_size=28)
    with pytest.raises(ValueError, match="region mode here is 'roi'"):
        RegionAwareObjective(region_labels(), LABELS, class_names=CLASSES, templates=TEMPLATES, region_mode="roi",
                             train_region_size=28)


def test_train_region_size_refuses_towers_of_one_input_size():
    obj = RegionAwareObjective(region_labels(), LABELS, class_names=CLASSES, templates=TEMPLATES,
                               region_mode="masked", train_region_size=4 * H)
    with pytest.raises(ValueError, match=r"train_region_size \(32\) needs an image tower that takes inputs of other "
                                         "sizes.*FakeModel.*Drop --train-region-size"):
        obj(FakeModel(), make_batch())


def test_region_pixels_at_a_smaller_size():
    from ravl.models.regions import region_pixels

    model, batch = _tiny_and_batch()
    px = batch["pixels"]
    quadrant = torch.tensor([[1, 0.5, 0.0, 1.0, 0.5]])        # image 1, top-right quadrant
    crop = region_pixels(model, px, quadrant, "crop", size=28)
    assert crop.shape == (1, 3, 28, 28)
    assert torch.allclose(crop[0], px[1, :, :28, 28:], atol=1e-5)   # a cell at its own resolution: its pixels
    full = region_pixels(model, px, quadrant, "masked")
    small = region_pixels(model, px, quadrant, "masked", size=28)
    assert small.shape == (1, 3, 28, 28)
    assert torch.allclose(small, F.interpolate(full, size=(28, 28), mode="bilinear", antialias=True))
    assert region_pixels(model, px, quadrant, "masked", size=56).equal(full)


def test_region_objective_region_images_keeps_the_first_rows():
    seen = {}

    def spy(model, pixels, boxes, mode):
        seen["boxes"] = boxes.clone()
        return model.encode_roi(pixels, boxes)

    model, batch = FakeModel(), make_batch()          # indices 0, 1, 2, 5, 7, 9
    kw = dict(class_names=CLASSES, templates=TEMPLATES, region_embedder=spy, tau=0.1)
    out = RegionAwareObjective(region_labels(), LABELS, region_images=3, **kw)(model, batch)
    assert sorted(set(seen["boxes"][:, 0].long().tolist())) == [0, 1, 2]
    # = the full objective on a batch of those three images (CLIP loss aside)
    small = {k: v[:3] for k, v in batch.items()}
    ref = RegionAwareObjective(region_labels(), LABELS, **kw)(model, small)
    assert torch.allclose(out["region_loss"], ref["region_loss"], atol=1e-6)
    assert torch.allclose(out["alignment_loss"], ref["alignment_loss"], atol=1e-6)
    full = RegionAwareObjective(region_labels(), LABELS, region_images=6, **kw)(model, batch)
    assert torch.allclose(full["loss"], RegionAwareObjective(region_labels(), LABELS, **kw)(model, batch)["loss"])
    with pytest.raises(ValueError, match="'region_images'"):
        RegionAwareConfig(region_images=0)


def test_region_objective_region_images_spurious_first():
    seen = {}

    def spy(model, pixels, boxes, mode):
        seen["boxes"] = boxes.clone()
        return model.encode_roi(pixels, boxes)

    model, batch = FakeModel(), make_batch()          # indices 0, 1, 2, 5, 7, 9; spurious: 0 and 5
    kw = dict(class_names=CLASSES, templates=TEMPLATES, region_embedder=spy, tau=0.1)
    out = RegionAwareObjective(region_labels(), LABELS, region_images=3, region_image_choice="spurious",
                               **kw)(model, batch)
    assert sorted(set(seen["boxes"][:, 0].long().tolist())) == [0, 1, 3]   # rows of images 0, 5, then 1
    small = {k: v[[0, 3, 1]] for k, v in batch.items()}
    ref = RegionAwareObjective(region_labels(), LABELS, **kw)(model, small)
    assert torch.allclose(out["region_loss"], ref["region_loss"], atol=1e-6)
    assert torch.allclose(out["alignment_loss"], ref["alignment_loss"], atol=1e-6)
    with pytest.raises(ValueError, match="'region_image_choice'"):
        RegionAwareConfig(region_image_choice="random")


def test_region_labels_validation_and_round_trip():
    rl = region_labels()
    again = RegionLabels.from_dict(json.loads(json.dumps(rl.to_dict())))
    assert np.array_equal(again.image_index, rl.image_index) and np.array_equal(again.is_spurious, rl.is_spurious)
    assert np.allclose(again.boxes_norm, rl.boxes_norm) and len(again) == len(rl)
    assert not rl.boxes_norm.flags.writeable
    with pytest.raises(ValueError, match=r"row 1 has \[0.5, 0.0, 0.2, 1.0\]"):
        RegionLabels(np.array([0, 0]), np.array([[0, 0, 1, 1], [0.5, 0, 0.2, 1]]), np.array([False, True]))
    with pytest.raises(ValueError, match="is_spurious"):
        RegionLabels(np.array([0]), np.array([[0, 0, 1, 1]]), np.array([1]))
    with pytest.raises(ValueError, match="same training split"):
        RegionAwareObjective(RegionLabels(np.array([N]), np.array([[0, 0, 1, 1]]), np.array([False])), LABELS,
                             class_names=CLASSES)
    with pytest.raises(ValueError, match="'lam' parameter of RegionAwareConfig"):
        RegionAwareConfig(lam=-1.0)
    with pytest.raises(ValueError, match="'region_mode' parameter"):
        RegionAwareObjective(region_labels(), LABELS, class_names=CLASSES, region_mode="pixels")


def test_spurious_aware_components_and_weights():
    model, batch = FakeModel(), make_batch()
    cfg = SpuriousAwareConfig(spurious_names=("red square", "square"), clip_weight=2.0, vision_weight=0.5,
                              language_weight=0.0, spurious_weight=3.0)
    out = SpuriousAwareObjective(LABELS, cfg, class_names=CLASSES, templates=TEMPLATES)(model, batch)
    want = 2 * out["clip_loss"] + 0.5 * out["vision_contrastive_loss"] + 3 * out["language_spurious_loss"]
    assert torch.allclose(out["loss"], want)
    assert float(out["language_spurious_loss"].detach()) > 0
    none = SpuriousAwareObjective(LABELS, class_names=CLASSES, templates=TEMPLATES)(model, batch)
    assert float(none["language_spurious_loss"].detach()) == 0.0


def test_cfr_calibration_objective():
    model, batch = FakeModel(), make_batch()          # indices 0, 1, 2, 5, 7, 9
    pos, neg = pos_neg(3)
    obj = CFRCalibrationObjective(LABELS, [1, 5, 11], pos, neg, CFRConfig(), class_names=CLASSES,
                                  templates=TEMPLATES, n_epochs=4)
    out = obj(model, batch)
    img = model.encode_image(batch["pixels"])
    labels = torch.as_tensor(LABELS[batch["indices"].numpy()])
    sup = supervised_contrastive_loss(img, labels, tau=0.1)["loss"]
    rows, calib = torch.tensor([1, 3]), torch.tensor([0, 1])          # positions 1 and 5
    ce = vl_erm_per_sample(img[rows], class_prompt_embeddings(model, CLASSES, TEMPLATES), labels[rows],
                           model.logit_scale()).mean()
    cal = calibration_contrastive_loss(img[rows], pos[calib], neg[calib], tau=1.0)["loss"]
    assert torch.allclose(out["supcon_loss"], sup) and torch.allclose(out["calibration_ce_loss"], ce)
    assert torch.allclose(out["calibration_contrastive_loss"], cal)
    assert torch.allclose(out["loss"], sup + 1.5 * (ce + cal), atol=1e-6)       # lambda_0 = 1.5
    obj.set_epoch(2)                                                            # lambda_2 = 0.5 (E = 4)
    assert torch.allclose(obj(model, batch)["loss"], sup + 0.5 * (ce + cal), atol=1e-6)
    fresh = CFRCalibrationObjective(LABELS, [1, 5, 11], pos, neg, class_names=CLASSES, templates=TEMPLATES,
                                    n_epochs=4)
    fresh.load_state_dict(obj.state_dict())
    assert fresh.epoch == 2
    no_calib = obj(model, make_batch(indices=(0, 2, 3)))
    assert float(no_calib["calibration_ce_loss"].detach()) == 0.0 and float(no_calib["calibration_contrastive_loss"].detach()) == 0.0
    with pytest.raises(ValueError, match="distinct"):
        CFRCalibrationObjective(LABELS, [1, 1, 11], pos, neg, class_names=CLASSES)
    with pytest.raises(ValueError, match="positive_embeddings"):
        CFRCalibrationObjective(LABELS, [1, 5], pos, neg, class_names=CLASSES)


# ---------------------------------------------------------------------------------------------
# Sampling helpers
# ---------------------------------------------------------------------------------------------

def test_group_balanced_indices():
    groups = np.array([0] * 6 + [1] * 2 + [3] * 1)
    idx = group_balanced_indices(groups, random_state=0)
    assert idx.dtype == np.int64 and len(idx) == 3 * 6
    assert sorted(np.bincount(groups[idx]).tolist()) == [0, 6, 6, 6]
    assert set(range(len(groups))) <= set(idx.tolist())                # nothing dropped
    assert np.array_equal(idx, group_balanced_indices(groups, random_state=0))
    assert not np.array_equal(idx, group_balanced_indices(groups, random_state=1))
    with pytest.raises(ValueError, match="'groups' parameter"):
        group_balanced_indices(np.array([0, -1]))


def test_group_uniform_weights_and_indices():
    groups = np.array([0] * 90 + [1] * 10)
    w = group_uniform_weights(groups)
    assert math.isclose(w.sum(), 1.0) and math.isclose(w[groups == 0].sum(), 0.5)
    draw = group_uniform_indices(groups, 4000, random_state=0)
    frac = (groups[draw] == 1).mean()
    assert 0.45 < frac < 0.55
    assert np.array_equal(draw, group_uniform_indices(groups, 4000, random_state=0))
    assert len(group_uniform_indices(groups, random_state=0)) == len(groups)
