"""The open_clip adapter: preprocessing parity with open_clip, box geometry, region pooling,
weights in every accepted form, clear errors, and export back to open_clip. Offline: models are
small custom architectures (or full-size ones with random weights, marked slow)."""

import json
import subprocess
import sys
import warnings
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image

open_clip = pytest.importorskip("open_clip")  # the backend is an optional extra

from ravl.exceptions import CheckpointError, RavlWarning  # noqa: E402
from ravl.models import load_model  # noqa: E402
from ravl.models.checkpoint import save_checkpoint  # noqa: E402
from ravl.models.openclip import (  # noqa: E402
    OpenCLIPAdapter,
    _geometry,
    _preprocess_dict,
    export_open_clip,
    small_test_model,
)
from ravl.models.pooling import roi_align  # noqa: E402
from ravl.models.regions import embed_images, embed_regions, map_boxes, region_batch  # noqa: E402


def _image(w, h, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def vit():
    return small_test_model("vit")


@pytest.fixture(scope="module")
def rn():
    return small_test_model("resnet")


@pytest.fixture(params=["vit", "resnet"])
def model(request, vit, rn):
    return vit if request.param == "vit" else rn


def _perturbed(kind, seed=1):
    """A model whose weights differ from every fresh initialisation (and with non-zero bn3 weights)."""
    m = small_test_model(kind, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.module.parameters():
            scale = max(float(p.std()), 0.05) if p.numel() > 1 else 0.05
            p.add_(0.3 * scale * torch.randn(p.shape, generator=g))
    bns = [mod for mod in m.module.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    if bns:  # calibrate BatchNorm statistics so features have unit scale, as in a trained ResNet
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        m.module.train()
        with torch.no_grad():
            m.encode_image(m.preprocess([_image(96, 96, 100 + k) for k in range(8)]))
        m.module.eval()
    return m


# -- preprocessing -------------------------------------------------------------------------------

PREPROCESS_CASES = [
    {"size": 64}, {"size": 64, "interpolation": "bilinear"}, {"size": (64, 48)}, {"size": (48, 64)},
    {"size": 64, "resize_mode": "longest", "fill_color": 17}, {"size": (40, 64), "resize_mode": "longest"},
    {"size": 64, "resize_mode": "squash"}, {"size": 64, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
]


@pytest.mark.parametrize("cfg", PREPROCESS_CASES, ids=[str(c) for c in PREPROCESS_CASES])
def test_preprocess_matches_open_clip_transform(cfg):
    from open_clip.transform import PreprocessCfg, image_transform_v2

    pc = PreprocessCfg(**cfg)
    theirs = image_transform_v2(pc, is_train=False)
    ours = _geometry(_preprocess_dict(asdict(pc)))
    images = [_image(w, h, k) for k, (w, h) in enumerate([(80, 120), (64, 64), (121, 37), (301, 300), (10, 200),
                                                           (124, 80)])]
    images += [images[0].convert("L"), images[2].convert("RGBA"), images[3].convert("P")]
    ref = torch.stack([theirs(im) for im in images])
    got = ours(images)
    assert got.shape == ref.shape and got.dtype == torch.float32
    assert torch.allclose(got, ref, atol=1e-5)


def test_model_preprocess_is_open_clips(vit):
    pc = open_clip.get_model_preprocess_cfg(vit.module)
    from open_clip.transform import PreprocessCfg, image_transform_v2

    t = image_transform_v2(PreprocessCfg(**pc), is_train=False)
    im = _image(97, 61, 3)
    assert torch.allclose(vit.preprocess([im])[0], t(im), atol=1e-5)
    assert vit.config()["preprocess"] == {"image_size": [64, 64], "mean": list(pc["mean"]), "std": list(pc["std"]),
                                          "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}


# -- protocol ------------------------------------------------------------------------------------

def test_protocol_shapes_dtypes_norms(model):
    from ravl.models import VisionLanguageModel

    assert isinstance(model, VisionLanguageModel) and isinstance(model, OpenCLIPAdapter)
    assert model.name.startswith("open_clip:ravl-test-") and model.embed_dim == 32
    h, w = model.image_size
    json.dumps(model.config())
    images = [_image(w, h, 0), _image(3 * w, h, 1), _image(50, 130, 2)]
    px = model.preprocess(images)
    assert px.shape == (3, 3, h, w) and px.dtype == torch.float32 and px.device.type == "cpu"
    tokens = model.tokenize(["a photo of a seven", "ünïcødé ✓ " * 50, ""])
    assert tokens.shape == (3, 16) and tokens.dtype == torch.int64
    with torch.no_grad():
        img, txt = model.encode_image(px), model.encode_text(tokens)
    assert img.shape == (3, 32) and txt.shape == (3, 32) and img.dtype == txt.dtype == torch.float32
    assert model.logit_scale().ndim == 0 and float(model.logit_scale().detach()) == pytest.approx(1 / 0.07, rel=1e-4)
    emb = embed_images(model, images, progress=False)
    assert emb.dtype == np.float32 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert model.device.type == "cpu" and model.to("cpu") is model


def test_eval_mode_is_deterministic_and_batch_independent(model):
    images = [_image(70, 64, k) for k in range(4)]
    assert not model.module.training
    a = embed_images(model, images, batch_size=4, progress=False)
    b = embed_images(model, images, batch_size=1, progress=False)
    c = embed_images(model, images, batch_size=3, progress=False)
    assert np.allclose(a, b, atol=1e-5) and np.allclose(a, c, atol=1e-5)
    fresh = small_test_model("vit" if "vit" in model.name else "resnet")
    with torch.no_grad():
        px = model.preprocess(images)
        assert torch.equal(fresh.encode_image(px), model.encode_image(px))  # seeded weights


def test_tokenizer_round_trip(vit):
    from open_clip.tokenizer import SimpleTokenizer

    texts = ["A photo of the number seven.", "red   square, top-left!"]
    tokens = vit.tokenize(texts)
    assert torch.equal(tokens, open_clip.get_tokenizer("ravl-test-vit")(texts))
    dec = SimpleTokenizer()
    for row, text in zip(tokens, texts):
        ids = [int(t) for t in row if int(t) not in (0, dec.sot_token_id, dec.eot_token_id)]
        assert dec.decode(ids).strip().replace(" ", "") == text.lower().replace(" ", "")
    long = vit.tokenize(["seven " * 40])[0]
    assert int(long[-1]) == dec.eot_token_id  # truncated rows keep their end token
    with pytest.raises(TypeError, match="item 1"):
        vit.tokenize(["ok", 3])


def test_image_projection_prefixes_name_real_parameters(vit, rn):
    assert vit.image_projection_prefixes == ("visual.proj",)
    assert rn.image_projection_prefixes == ("visual.attnpool.c_proj.",)
    for m, expected in ((vit, {"visual.proj"}), (rn, {"visual.attnpool.c_proj.weight", "visual.attnpool.c_proj.bias"})):
        names = {n for n, _ in m.module.named_parameters() if n.startswith(m.image_projection_prefixes)}
        assert names == expected


# -- box geometry --------------------------------------------------------------------------------

def test_map_boxes_through_resize_and_centre_crop(vit):
    # 120x80 -> shortest side 80 -> 64: resized 96x64, centre crop left = round(32 / 2) = 16, top 0.
    boxes = np.array([[30, 10, 90, 70],    # inside: x 24-16=8 .. 72-16=56, y 8 .. 56
                      [0, 0, 60, 40],      # cut by the crop on the left
                      [0, 0, 15, 80],      # x1 = 12 - 16 < 0: entirely outside
                      [110, 0, 130, 80]])  # clipped to the image first, then outside on the right
    norm, status = vit.map_boxes(boxes, (120, 80))
    assert status.tolist() == ["inside", "clipped", "outside", "outside"]
    assert np.allclose(norm[0], [8 / 64, 8 / 64, 56 / 64, 56 / 64])
    assert np.allclose(norm[1], [0, 0, 0.5, 0.5])
    assert norm[2][2] == norm[2][0] == 0 and norm[3][0] == norm[3][2] == 1
    # banker's rounding of torchvision's crop: 124x80 -> 99x64, offset round(17.5) = 18
    norm, status = vit.map_boxes([[0, 0, 124, 80]], (124, 80))
    assert status.tolist() == ["clipped"] and np.allclose(norm, [[0, 0, 1, 1]])
    norm, _ = vit.map_boxes([[40, 0, 60, 80]], (124, 80))
    assert np.allclose(norm[0, [0, 2]], [(40 * 99 / 124 - 18) / 64, (60 * 99 / 124 - 18) / 64])
    # the generic helper dispatches to the adapter; the tiny CLIP keeps dividing by the image size
    assert np.allclose(map_boxes(vit, boxes, (120, 80))[0], vit.map_boxes(boxes, (120, 80))[0])
    tiny = load_model("tiny")
    n, s = map_boxes(tiny, [[0, 0, 60, 40]], (120, 80))
    assert np.allclose(n, [[0, 0, 0.5, 0.5]]) and s.tolist() == ["inside"]


def test_embed_regions_reports_clipped_and_outside_boxes(model):
    h, w = model.image_size
    im = _image(w * 3 // 2, h, 4)  # wider than the input: the crop cuts w/4 off each side
    boxes = [[[0, 0, w // 2, h], [w // 4, 0, w, h], [w // 2, 0, w, h // 2], [0, 0, w // 8, h]]]
    expect = ["clipped", "inside", "inside", "outside"]
    for mode in ("masked", "roi"):
        with pytest.warns(RavlWarning, match=r"of 4 regions, 1 are partly cut off.*and 1 lie entirely outside"):
            emb, status = embed_regions(model, [im], boxes=boxes, mode=mode, progress=False, return_status=True)
        assert status.tolist() == expect and emb.shape == (4, 32) and np.isfinite(emb).all()
    # an outside box in masked mode is a black image (reported, not dropped)
    black = embed_images(model, [Image.new("RGB", im.size)], progress=False)
    with pytest.warns(RavlWarning):
        masked = embed_regions(model, [im], boxes=boxes, mode="masked", progress=False)
    assert np.allclose(masked[3], black[0], atol=1e-5)
    # crop mode cuts the box from the original image: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", RavlWarning)
        _, status = embed_regions(model, [im], boxes=boxes, mode="crop", progress=False, return_status=True)
    assert status.tolist() == expect


@pytest.mark.parametrize("mode", ["masked", "crop", "roi"])
def test_full_image_box_equals_image_embedding(model, mode):
    h, w = model.image_size
    images = [_image(w, h, 5), _image(w * 2, h + 9, 6), _image(w - 7, h * 3, 7)]
    boxes = [[[0, 0, im.width, im.height]] for im in images]
    img = embed_images(model, images, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RavlWarning)  # the full boxes of non-square images are clipped
        reg = embed_regions(model, images, boxes=boxes, mode=mode, progress=False)
    assert np.allclose(reg, img, atol=1e-5)


# -- region pooling ------------------------------------------------------------------------------

def test_resnet_roi_equals_attention_pool_on_roi_aligned_features():
    rn = _perturbed("resnet")
    visual = rn.module.visual
    px = rn.preprocess([_image(96, 96, 8), _image(120, 96, 9)])
    boxes = torch.tensor([[0, 0.1, 0.2, 0.7, 0.9], [1, 0.5, 0.0, 1.0, 0.45], [1, 0.3, 0.3, 0.31, 0.31],
                          [0, 0.0, 0.0, 1.0, 1.0]])
    with torch.no_grad():
        fmap = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(px)))))
        g = int(round((visual.attnpool.positional_embedding.shape[0] - 1) ** 0.5))
        ref = visual.attnpool(roi_align(fmap, boxes[:, 0].long(), boxes[:, 1:], (g, g)))
        got = rn.encode_roi(px, boxes)
        img = rn.encode_image(px)
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-4)
    assert torch.allclose(got[3], img[0], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got[0], img[0], atol=1e-3)


def test_vit_roi_last_block_attends_to_the_box_only():
    vit = _perturbed("vit")
    vit.roi_layers = 1
    visual = vit.module.visual
    px = vit.preprocess([_image(64, 64, 10)])
    # patch-aligned box: columns 2-5, rows 1-3 of the 8x8 grid
    box = torch.tensor([[0, 2 / 8, 1 / 8, 6 / 8, 4 / 8]])
    with torch.no_grad():
        x = visual.conv1(px).flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding.expand(1, 1, -1), x], 1) + visual.positional_embedding
        x = visual.ln_pre(x)
        for blk in visual.transformer.resblocks[:-1]:
            x = blk(x)
        keep = [0] + [1 + r * 8 + c for r in range(1, 4) for c in range(2, 6)]
        ref = visual.ln_post(visual.transformer.resblocks[-1](x[:, keep])[:, 0]) @ visual.proj
        got = vit.encode_roi(px, box)
    assert torch.allclose(got, ref, atol=1e-5)


def test_vit_roi_all_blocks_equals_an_extra_masked_class_token():
    # Reference with open_clip's own blocks: append a region class token that attends to itself and
    # the box's patches in every block, while no other token attends to it.
    vit = _perturbed("vit")
    assert vit.roi_layers is None  # the default: every block
    visual = vit.module.visual
    px = vit.preprocess([_image(64, 64, 22)])
    box = torch.tensor([[0, 1 / 8, 3 / 8, 4 / 8, 7 / 8]])  # columns 1-3, rows 3-6
    inside = [1 + r * 8 + c for r in range(3, 7) for c in range(1, 4)]
    with torch.no_grad():
        x = visual.conv1(px).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.expand(1, 1, -1)
        x = torch.cat([cls, x], 1) + visual.positional_embedding
        x = visual.ln_pre(torch.cat([x, x[:, :1]], 1))  # [CLS, 64 patches, region CLS]
        n = x.shape[1]
        mask = torch.zeros(n, n)
        mask[:n - 1, n - 1] = float("-inf")
        mask[n - 1] = float("-inf")
        mask[n - 1, inside + [n - 1]] = 0
        for blk in visual.transformer.resblocks:
            x = blk(x, attn_mask=mask)
        ref = visual.ln_post(x[:, -1]) @ visual.proj
        img_ref = visual.ln_post(x[:, 0]) @ visual.proj
        got = vit.encode_roi(px, box)
        img = vit.encode_image(px)
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(img_ref, img, atol=1e-5)  # the region token does not disturb the image pass


@pytest.mark.parametrize("layers", [1, None])
def test_vit_roi_full_box_and_sub_patch_boxes(layers):
    vit = small_test_model("vit", seed=3)
    vit.roi_layers = layers
    px = vit.preprocess([_image(64, 64, 11), _image(64, 64, 12)])
    c = (3.5 / 8, 2.5 / 8)  # centre of patch (row 2, column 3)
    boxes = torch.tensor([[0, 0, 0, 1, 1], [1, 0, 0, 1, 1],
                          [0, c[0] - 0.01, c[1] - 0.01, c[0] + 0.01, c[1] + 0.01],   # smaller than a patch
                          [0, 3 / 8, 2 / 8, 4 / 8, 3 / 8]])                          # exactly that patch
    with torch.no_grad():
        got, img = vit.encode_roi(px, boxes), vit.encode_image(px)
    assert torch.allclose(got[:2], img, atol=1e-5)
    assert torch.allclose(got[2], got[3], atol=1e-5)  # grown to one patch


def test_patch_mean_pooling_option(vit):
    m = load_model("open_clip:ravl-test-vit", roi_pool="patch-mean")
    assert m.config()["roi_pool"] == "patch-mean"
    px = m.preprocess([_image(64, 64, 13)])
    with torch.no_grad():
        a = m.encode_roi(px, torch.tensor([[0, 0, 0, 0.5, 0.5]]))
        b = vit.encode_roi(px, torch.tensor([[0, 0, 0, 0.5, 0.5]]))
    assert a.shape == (1, 32) and not torch.allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match="roi_pool"):
        load_model("open_clip:ravl-test-vit", roi_pool="mean")


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_roi_is_differentiable(kind):
    m = small_test_model(kind)
    m.module.train()
    try:
        px = m.preprocess([_image(70, 64, 14), _image(64, 90, 15)]).requires_grad_(True)
        emb = region_batch(m, px, torch.tensor([[0, 0, 0, 0.5, 0.5], [1, 0.25, 0.25, 1, 1]]), "roi")
        emb.pow(2).sum().backward()
        assert px.grad is not None and px.grad.abs().sum() > 0
        proj = [p for n, p in m.module.named_parameters() if n.startswith(m.image_projection_prefixes)]
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in proj)
    finally:
        m.module.eval()


def test_encode_roi_rejects_bad_boxes(vit):
    px = vit.preprocess([_image(64, 64, 0)])
    with pytest.raises(ValueError, match=r"\[R, 5\]"):
        vit.encode_roi(px, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="must index the 1 image"):
        vit.encode_roi(px, torch.tensor([[1.0, 0, 0, 1, 1]]))
    assert vit.encode_roi(px, torch.zeros(0, 5)).shape == (0, 32)


def test_attention_pooled_vit_has_no_roi_but_masked_works():
    from ravl.exceptions import RegionPoolingNotSupportedError
    from ravl.models.openclip import TEST_CONFIGS, register_open_clip_config
    from ravl.models.regions import embed_regions

    cfg = {**TEST_CONFIGS["ravl-test-vit"]}
    cfg["vision_cfg"] = {**cfg["vision_cfg"], "attentional_pool": True, "attn_pooler_queries": 1,
                         "attn_pooler_heads": 2}
    register_open_clip_config("ravl-test-vit-attnpool", cfg)
    m = load_model("open_clip:ravl-test-vit-attnpool")
    img = [_image(64, 64, 3)]
    with pytest.raises(RegionPoolingNotSupportedError, match="attentional pooler.*'masked' or 'crop'") as err:
        embed_regions(m, img, boxes=[[[0, 0, 32, 32]]], mode="roi", progress=False)
    assert isinstance(err.value, NotImplementedError)  # the protocol's signal for "no roi"
    assert embed_regions(m, img, boxes=[[[0, 0, 32, 32]]], mode="masked", progress=False).shape == (1, 32)


# -- weights -------------------------------------------------------------------------------------

def _same_outputs(a, b, atol=0.0):
    px = a.preprocess([_image(80, 64, 16), _image(64, 64, 17)])
    tok = a.tokenize(["a seven", "a red square"])
    boxes = torch.tensor([[0, 0.1, 0.1, 0.6, 0.8]])
    with torch.no_grad():
        for x, y in ((a.encode_image(px), b.encode_image(px)), (a.encode_text(tok), b.encode_text(tok)),
                     (a.encode_roi(px, boxes), b.encode_roi(px, boxes)), (a.logit_scale(), b.logit_scale())):
            assert torch.allclose(x, y, atol=atol, rtol=0)


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_ravl_checkpoint_round_trip(kind, tmp_path):
    m = _perturbed(kind)
    out = save_checkpoint(m, tmp_path / "ckpt")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == m.name and cfg["model_config"]["arch"] == m.arch
    from safetensors.torch import load_file

    assert set(load_file(str(out / "model.safetensors"))) == set(m.module.state_dict())  # open_clip's own keys
    for again in (load_model(None, checkpoint=out), load_model(m.name, checkpoint=out / "config.json")):
        assert isinstance(again, OpenCLIPAdapter) and again.name == m.name
        _same_outputs(m, again)
    with pytest.raises(CheckpointError, match="not 'open_clip:RN50'"):
        load_model("open_clip:RN50", checkpoint=out)


def test_checkpoint_of_custom_architecture_loads_in_a_fresh_process(tmp_path):
    m = _perturbed("vit")
    out = save_checkpoint(m, tmp_path / "ckpt")
    with torch.no_grad():
        ref = m.encode_text(m.tokenize(["a seven"]))
    code = ("import sys, torch, ravl; m = ravl.load_model(None, checkpoint=sys.argv[1]);"
            "print(m.encode_text(m.tokenize(['a seven'])).detach().numpy().tolist())")
    res = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert np.allclose(json.loads(res.stdout.strip().splitlines()[-1]), ref.numpy(), atol=1e-6)


@pytest.mark.parametrize("fmt", ["open_clip-training", "plain-pt", "safetensors", "orig-mod"])
def test_weight_files(fmt, tmp_path):
    m = _perturbed("resnet")
    sd = m.module.state_dict()
    if fmt == "open_clip-training":  # what open_clip's training script writes (DDP prefixes)
        path = tmp_path / "epoch_3.pt"
        torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in sd.items()},
                    "optimizer": {"state": {}, "param_groups": []}}, path)
    elif fmt == "plain-pt":
        path = tmp_path / "weights.bin"
        torch.save(sd, path)
    elif fmt == "orig-mod":
        path = tmp_path / "compiled.pt"
        torch.save({f"_orig_mod.{k}": v for k, v in sd.items()}, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "weights.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    _same_outputs(m, load_model("open_clip:ravl-test-rn", checkpoint=path))


def test_wrong_architecture_names_the_closest_one(tmp_path):
    rn = small_test_model("resnet")
    path = tmp_path / "rn.pt"
    torch.save(rn.module.state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_model("open_clip:ravl-test-vit", checkpoint=path)
    msg = str(err.value)
    assert str(path) in msg and "'ravl-test-vit'" in msg
    assert "match open_clip architecture 'ravl-test-rn' best" in msg
    assert "load_model('open_clip:ravl-test-rn', checkpoint=...)" in msg
    assert "(missing)" in msg or "(unexpected)" in msg
    # the same architecture family with one tensor of another shape
    sd = rn.module.state_dict()
    sd["text_projection"] = torch.zeros(32, 16)
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"text_projection \(file \(32, 16\) vs model \(32, 32\)\)"):
        load_model("open_clip:ravl-test-rn", checkpoint=path)


def test_unreadable_files_and_bad_options(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="plain PyTorch state dict"):
        load_model("open_clip:ravl-test-rn", checkpoint=bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model("open_clip:ravl-test-rn", checkpoint=tmp_path / "missing.pt")
    torch.save({"epoch": 1}, bad)
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        load_model("open_clip:ravl-test-rn", checkpoint=bad)
    with pytest.raises(ValueError, match="Did you mean 'open_clip:RN50'"):
        load_model("open_clip:RN5O")
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['sed'\].*'seed'"):
        load_model("open_clip:ravl-test-rn", sed=1)
    with pytest.raises(ValueError, match="either checkpoint= or pretrained="):
        load_model("open_clip:ravl-test-rn", checkpoint=bad, pretrained="openai")  # offline-ok: refused before loading


def test_pretrained_tag_offline_error(monkeypatch):
    import open_clip.factory as factory

    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(factory, "download_pretrained", offline)  # no network access in tests, ever
    with pytest.raises(CheckpointError) as err:
        load_model("open_clip:RN50", pretrained="openai")  # offline-ok: download_pretrained is patched to fail
    msg = str(err.value)
    assert "pretrained='openai'" in msg and "Network is unreachable" in msg and "already holds" in msg  # offline-ok
    assert "checkpoint=FILE" in msg


# -- export --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["vit", "resnet"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_export_file_loads_in_open_clip(kind, suffix, tmp_path):
    m = _perturbed(kind)
    ckpt = save_checkpoint(m, tmp_path / "ckpt")
    info = export_open_clip(ckpt, tmp_path / f"model{suffix}")
    assert info["arch"] == m.arch and info["kwargs"] == {}
    theirs, _, transform = open_clip.create_model_and_transforms(m.arch, pretrained=str(info["path"]))
    theirs.eval()
    images = [_image(90, 64, 18), _image(64, 120, 19)]
    tokenizer = open_clip.get_tokenizer(m.arch)
    with torch.no_grad():
        ref_img = theirs.encode_image(torch.stack([transform(im) for im in images]))
        ref_txt = theirs.encode_text(tokenizer(["a seven", "a red square"]))
    assert np.allclose(embed_images(m, images, normalize=False, progress=False), ref_img.numpy(), atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(m.encode_text(m.tokenize(["a seven", "a red square"])), ref_txt, atol=1e-5)


def test_export_folder_is_open_clip_local_dir(tmp_path):
    m = _perturbed("vit")
    m.preprocess_config = {**m.preprocess_config, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    m.geometry = _geometry(m.preprocess_config)
    info = export_open_clip(m, tmp_path / "exported")
    assert sorted(p.name for p in info["path"].iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors"]
    theirs, _, transform = open_clip.create_model_and_transforms(f"local-dir:{info['path']}")
    theirs.eval()
    im = _image(100, 70, 20)
    with torch.no_grad():
        ref = theirs.encode_image(transform(im)[None])
    assert np.allclose(embed_images(m, [im], normalize=False, progress=False), ref.numpy(), atol=1e-5)
    again = load_model("open_clip:ravl-test-vit", checkpoint=info["path"])  # ravl reads the folder back
    assert again.config()["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    _same_outputs(m, again)
    # a file export with non-default preprocessing says what open_clip needs to reproduce it
    assert export_open_clip(m, tmp_path / "m.safetensors")["kwargs"] == {"image_mean": (0.5, 0.5, 0.5),
                                                                         "image_std": (0.25, 0.25, 0.25)}
    with pytest.raises(ValueError, match="open_clip model"):
        export_open_clip(load_model("tiny"), tmp_path / "x.pt")


# -- full size ------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("arch", ["RN50", "ViT-B-16"])
def test_full_size_architectures(arch):
    m = load_model(f"open_clip:{arch}")
    assert m.image_size == (224, 224) and m.embed_dim == (1024 if arch == "RN50" else 512)
    im = _image(320, 240, 21)
    img = embed_images(m, [im], progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RavlWarning)
        roi = embed_regions(m, [im], boxes=[[[0, 0, 320, 240], [40, 30, 200, 200]]], mode="roi", progress=False)
    assert img.shape == (1, m.embed_dim) and roi.shape == (2, m.embed_dim)
    assert np.allclose(roi[0], img[0], atol=1e-4)
    assert embed_regions(m, [im], boxes=[[[0, 0, 320, 240]]], mode="crop", progress=False).shape == (1, m.embed_dim)
    with torch.no_grad():
        assert m.encode_text(m.tokenize(["a photo of a dog"])).shape == (1, m.embed_dim)


def test_missing_backend_names_the_normalised_extra(monkeypatch):
    from ravl.exceptions import MissingDependencyError

    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if the extra were not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'ravl\[open-clip\]'"):
        load_model("open_clip:RN50")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'ravl\[hf\]'"):
        load_model("hf:/nowhere")


@pytest.mark.parametrize("kind", ["vit", "resnet"])
@pytest.mark.parametrize("pool", ["cls", "patch-mean"])
def test_encode_image_and_roi_is_one_pass_of_both(kind, pool):
    m = _perturbed(kind)
    m.roi_pool = pool
    h, w = m.image_size
    px = m.preprocess([_image(w, h, 23), _image(w + 20, h, 24)])
    boxes = torch.tensor([[0, 0, 0, 0.5, 0.5], [1, 0.2, 0.1, 1, 0.9], [1, 0, 0, 1, 1]])
    with torch.no_grad():
        img, reg = m.encode_image_and_roi(px, boxes)
        assert torch.allclose(img, m.encode_image(px), atol=1e-5)
        assert torch.allclose(reg, m.encode_roi(px, boxes), atol=1e-5)
        img0, reg0 = m.encode_image_and_roi(px, torch.zeros(0, 5))
    assert torch.allclose(img0, img, atol=1e-5) and reg0.shape == (0, 32)
