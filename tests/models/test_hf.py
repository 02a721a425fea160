"""The Hugging Face adapter (``hf:DIR``): preprocessing parity with the image processor, box
geometry, region pooling, ravl checkpoints, clear errors for incomplete folders, and export back
to ``from_pretrained``. Offline: small models with random weights saved to temporary folders."""

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")  # the backend is an optional extra

from ravl.exceptions import CheckpointError, RavlWarning  # noqa: E402
from ravl.models import VisionLanguageModel, load_model  # noqa: E402
from ravl.models.checkpoint import save_checkpoint  # noqa: E402
from ravl.models.hf import HFCLIPAdapter, export_hf, small_test_model  # noqa: E402
from ravl.models.regions import embed_images, embed_regions, region_batch  # noqa: E402


def _image(w, h, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _perturb(m, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.module.parameters():
            scale = max(float(p.std()), 0.05) if p.numel() > 1 else 0.05
            p.add_(0.3 * scale * torch.randn(p.shape, generator=g))
    return m


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return small_test_model(tmp_path_factory.mktemp("hf-clip"))


@pytest.fixture(scope="module")
def siglip(tmp_path_factory):
    return small_test_model(tmp_path_factory.mktemp("hf-siglip"), kind="siglip")


@pytest.fixture(params=["clip", "siglip"])
def model(request, clip, siglip):
    return clip if request.param == "clip" else siglip


def _pil_processor(folder):
    """The folder's PIL image processor (transformers 5 loads the torchvision one by default)."""
    import importlib

    proc = transformers.AutoImageProcessor.from_pretrained(str(folder))  # offline-ok: a folder the test wrote
    name = type(proc).__name__.removesuffix("Fast")
    kind = "clip" if name.startswith("CLIP") else "siglip"
    try:
        mod = importlib.import_module(f"transformers.models.{kind}.image_processing_pil_{kind}")
        return getattr(mod, name + "Pil").from_pretrained(str(folder))  # offline-ok: a folder the test wrote
    except (ImportError, AttributeError):  # transformers 4: the default processor is the PIL/NumPy one
        return proc


# -- preprocessing -------------------------------------------------------------------------------

def test_preprocess_matches_the_image_processor(model):
    images = [_image(w, h, k) for k, (w, h) in enumerate([(80, 120), (64, 64), (121, 37), (301, 300), (124, 80),
                                                           (10, 200)])]
    images += [images[0].convert("L"), images[2].convert("RGBA")]
    got = model.preprocess(images)
    ref = _pil_processor(model.folder)(images=images, return_tensors="pt")["pixel_values"]
    assert got.shape == ref.shape == (8, 3, 64, 64) and got.dtype == torch.float32
    assert torch.allclose(got, ref, atol=1e-5)
    # the default (torchvision) processor of transformers 5 antialiases differently: a few grey levels
    fast = transformers.AutoImageProcessor.from_pretrained(str(model.folder))(images=images, return_tensors="pt")  # offline-ok: a folder the test wrote
    assert (fast["pixel_values"] - got).abs().max() < 0.1


def test_geometry_from_processor_config(clip):
    from ravl.models.hf import geometry_from_processor

    g = clip.geometry
    assert (g.resize, g.resize_target, g.size, g.interpolation, g.crop_offset) == \
        ("shortest", (64, 64), (64, 64), "bicubic", "floor")
    # old configs: bare ints (shortest edge, then a square crop), scalar mean/std
    old = geometry_from_processor({"size": 64, "crop_size": 64, "do_center_crop": True, "resample": 2,
                                   "image_mean": 0.5, "image_std": 0.5}, image_size=64)
    assert (old.resize, old.resize_target, old.size, old.interpolation, old.mean) == \
        ("shortest", (64, 64), (64, 64), "bilinear", (0.5, 0.5, 0.5))
    with pytest.raises(CheckpointError, match="do_pad=true"):
        geometry_from_processor({"do_pad": True, "size": {"shortest_edge": 64}}, image_size=64)
    with pytest.raises(CheckpointError, match="produces 32x32 images but the vision tower takes 64x64"):
        geometry_from_processor({"size": {"shortest_edge": 32}, "do_center_crop": True,
                                 "crop_size": {"height": 32, "width": 32}, "image_mean": [0] * 3,
                                 "image_std": [1] * 3}, image_size=64)


# -- protocol ------------------------------------------------------------------------------------

def test_protocol_shapes_dtypes_norms(model):
    assert isinstance(model, VisionLanguageModel) and isinstance(model, HFCLIPAdapter)
    assert model.name == f"hf:{model.folder}" and model.folder.is_absolute()
    d = 32 if model.model_type == "clip" else 64
    assert model.embed_dim == d and model.image_size == (64, 64)
    json.dumps(model.config())
    images = [_image(64, 64, 0), _image(192, 64, 1), _image(50, 130, 2)]
    px = model.preprocess(images)
    assert px.shape == (3, 3, 64, 64) and px.dtype == torch.float32
    tokens = model.tokenize(["a photo of the number seven", "ünïcødé ✓ " * 50, ""])
    assert tokens.shape == (3, 16) and tokens.dtype == torch.int64
    with torch.no_grad():
        img, txt = model.encode_image(px), model.encode_text(tokens)
    assert img.shape == (3, d) and txt.shape == (3, d)
    assert model.logit_scale().ndim == 0 and float(model.logit_scale().detach()) > 0
    emb = embed_images(model, images, progress=False)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert embed_images(model, images, batch_size=1, progress=False) == pytest.approx(emb, abs=1e-5)
    assert not model.module.training


def test_tokenizer_round_trip(clip):
    tok = clip.tokenizer  # byte-level: about one token per character, 16 per text
    texts = ["The seven.", "red square!"]
    ids = clip.tokenize(texts)
    for row, text in zip(ids, texts):
        kept = [int(t) for t in row if int(t) not in (tok.bos_token_id, tok.eos_token_id)]
        assert tok.decode(kept).replace(" ", "") == text.lower().replace(" ", "")
        assert int(row[0]) == tok.bos_token_id and tok.eos_token_id in row.tolist()
    long = clip.tokenize(["seven " * 40])[0]
    assert int(long[-1]) == tok.eos_token_id  # truncation keeps the end token the text tower pools at


def test_clip_vocabulary_from_open_clip_gives_open_clips_tokens(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    from ravl.models.hf import clip_bpe_merges, write_byte_bpe_tokenizer

    # open_clip bundles OpenAI CLIP's BPE merges; vocab.json + merges.txt built from them load offline.
    bos, eos = write_byte_bpe_tokenizer(tmp_path, clip_bpe_merges())
    assert (bos, eos) == (49406, 49407)  # CLIP's <|startoftext|>, <|endoftext|>
    hf = transformers.CLIPTokenizer.from_pretrained(str(tmp_path))  # offline-ok: a folder the test wrote
    texts = ["a photo of the number seven", "A Red Square, top-left!", "naïve café 7"]
    ids = hf(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]
    ref = open_clip.tokenize(texts)
    # open_clip pads with 0, Hugging Face with <|endoftext|>; the tokens up to the end token agree
    for a, b in zip(ids, ref):
        n = int((b != 0).sum())
        assert a[:n].tolist() == b[:n].tolist()


# -- boxes and regions ---------------------------------------------------------------------------

def test_map_boxes_uses_hugging_faces_floor_crop(clip, siglip):
    # 124x80 -> shortest edge 64: 99x64; Hugging Face crops at floor(35 / 2) = 17 (open_clip: 18)
    norm, status = clip.map_boxes([[40, 0, 60, 80], [0, 0, 20, 80], [0, 0, 30, 40]], (124, 80))
    assert status.tolist() == ["inside", "outside", "clipped"]
    assert np.allclose(norm[0], [(40 * 99 / 124 - 17) / 64, 0, (60 * 99 / 124 - 17) / 64, 1])
    assert np.allclose(norm[2], [0, 0, (30 * 99 / 124 - 17) / 64, 0.5])
    # SigLIP squashes: nothing is cut off
    norm, status = siglip.map_boxes([[0, 0, 20, 80]], (124, 80))
    assert status.tolist() == ["inside"] and np.allclose(norm, [[0, 0, 20 / 124, 1]])


def test_embed_regions_reports_boxes_cut_by_the_crop(clip):
    im = _image(96, 64, 3)
    boxes = [[[0, 0, 48, 64], [16, 0, 80, 64], [0, 0, 8, 64]]]
    with pytest.warns(RavlWarning, match="1 are partly cut off.*1 lie entirely outside"):
        _, status = embed_regions(clip, [im], boxes=boxes, mode="roi", progress=False, return_status=True)
    assert status.tolist() == ["clipped", "inside", "outside"]


@pytest.mark.parametrize("mode", ["masked", "crop", "roi"])
def test_full_image_box_equals_image_embedding(model, mode):
    images = [_image(64, 64, 5), _image(130, 73, 6), _image(57, 192, 7)]
    boxes = [[[0, 0, im.width, im.height]] for im in images]
    img = embed_images(model, images, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RavlWarning)
        reg = embed_regions(model, images, boxes=boxes, mode=mode, progress=False)
    assert np.allclose(reg, img, atol=1e-5)


def test_clip_roi_last_block_attends_to_the_box_only(tmp_path):
    m = _perturb(small_test_model(tmp_path / "m", seed=2))
    m.roi_layers = 1
    vm = m.module.vision_model
    px = m.preprocess([_image(64, 64, 8)])
    box = torch.tensor([[0, 1 / 8, 2 / 8, 5 / 8, 7 / 8]])  # columns 1-4, rows 2-6
    with torch.no_grad():
        x = vm.pre_layrnorm(vm.embeddings(px))
        for layer in vm.encoder.layers[:-1]:
            out = layer(x, None)
            x = out[0] if isinstance(out, tuple) else out
        keep = [0] + [1 + r * 8 + c for r in range(2, 7) for c in range(1, 5)]
        out = vm.encoder.layers[-1](x[:, keep], None)
        out = out[0] if isinstance(out, tuple) else out
        ref = m.module.visual_projection(vm.post_layernorm(out[:, 0]))
        got = m.encode_roi(px, box)
    assert torch.allclose(got, ref, atol=1e-5)


def test_clip_roi_all_blocks_equals_an_extra_masked_class_token(tmp_path):
    m = _perturb(small_test_model(tmp_path / "m", seed=3))
    assert m.roi_layers is None
    vm = m.module.vision_model
    px = m.preprocess([_image(64, 64, 16)])
    box = torch.tensor([[0, 4 / 8, 0, 1, 3 / 8]])  # columns 4-7, rows 0-2
    inside = [1 + r * 8 + c for r in range(0, 3) for c in range(4, 8)]
    with torch.no_grad():
        x = vm.embeddings(px)
        x = vm.pre_layrnorm(torch.cat([x, x[:, :1]], 1))  # [CLS, 64 patches, region CLS]
        n = x.shape[1]
        mask = torch.zeros(n, n)
        mask[:n - 1, n - 1] = float("-inf")
        mask[n - 1] = float("-inf")
        mask[n - 1, inside + [n - 1]] = 0
        for layer in vm.encoder.layers:
            out = layer(x, mask[None, None])
            x = out[0] if isinstance(out, tuple) else out
        ref = m.module.visual_projection(vm.post_layernorm(x[:, -1]))
        got = m.encode_roi(px, box)
    assert torch.allclose(got, ref, atol=1e-5)


def test_siglip_roi_probe_attends_to_the_box_only(siglip):
    vm = siglip.module.vision_model
    px = siglip.preprocess([_image(64, 64, 9)])
    box = torch.tensor([[0, 0, 0, 0.5, 0.25]])  # columns 0-3, rows 0-1
    with torch.no_grad():
        hidden = vm(pixel_values=px).last_hidden_state  # after post_layernorm, what the head pools
        keep = [r * 8 + c for r in range(2) for c in range(4)]
        ref = vm.head(hidden[:, keep])
        got = siglip.encode_roi(px, box)
    assert torch.allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("mode", ["roi", "masked"])
def test_region_batch_is_differentiable(model, mode):
    model.module.train()
    try:
        px = model.preprocess([_image(70, 64, 10), _image(64, 64, 11)]).requires_grad_(True)
        emb = region_batch(model, px, torch.tensor([[0, 0, 0, 0.5, 0.5], [1, 0.25, 0.25, 1, 1]]), mode)
        emb.pow(2).sum().backward()
        assert px.grad is not None and px.grad.abs().sum() > 0
        proj = [p for n, p in model.module.named_parameters() if n.startswith(model.image_projection_prefixes)]
        assert proj and all(p.grad is not None for p in proj)
    finally:
        model.module.zero_grad(set_to_none=True)
        model.module.eval()


# -- checkpoints and errors ----------------------------------------------------------------------

def _same_outputs(a, b):
    px = a.preprocess([_image(80, 64, 12), _image(64, 64, 13)])
    tok = a.tokenize(["a seven", "a red square"])
    boxes = torch.tensor([[0, 0.1, 0.1, 0.6, 0.8]])
    with torch.no_grad():
        for x, y in ((a.encode_image(px), b.encode_image(px)), (a.encode_text(tok), b.encode_text(tok)),
                     (a.encode_roi(px, boxes), b.encode_roi(px, boxes)), (a.logit_scale(), b.logit_scale())):
            assert torch.allclose(x, y, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_ravl_checkpoint_round_trip(kind, tmp_path):
    m = _perturb(small_test_model(tmp_path / "src", kind=kind))
    out = save_checkpoint(m, tmp_path / "ckpt")
    for again in (load_model(None, checkpoint=out), load_model(m.name, checkpoint=out)):
        assert isinstance(again, HFCLIPAdapter) and again.name == m.name
        _same_outputs(m, again)
    other = small_test_model(tmp_path / "other", kind=kind)
    with pytest.raises(CheckpointError, match="is a checkpoint of model"):
        load_model(other.name, checkpoint=out)


def test_state_dict_file_with_module_prefix(tmp_path):
    m = _perturb(small_test_model(tmp_path / "src"))
    path = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in m.module.state_dict().items()}}, path)
    _same_outputs(m, load_model(m.name, checkpoint=path))
    sd = m.module.state_dict()
    sd.pop("visual_projection.weight")
    sd["text_projection.weight"] = torch.zeros(3, 3)
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"2 mismatched tensor\(s\), first visual_projection.weight \(missing\), "
                                              r"text_projection.weight \(file \(3, 3\) vs model \(32, 32\)\)"):
        load_model(m.name, checkpoint=path)


def test_incomplete_folders_give_clear_errors(tmp_path, clip):
    folder = tmp_path / "copy"
    shutil.copytree(clip.folder, folder)
    for f in ("vocab.json", "merges.txt", "tokenizer.json"):
        (folder / f).unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match=r"has no tokenizer: expected tokenizer.json or vocab.json\+merges.txt"):
        load_model(f"hf:{folder}")
    shutil.rmtree(folder)
    shutil.copytree(clip.folder, folder)
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(CheckpointError, match="has no preprocessor_config.json"):
        load_model(f"hf:{folder}")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="needs config.json and model.safetensors"):
        load_model(f"hf:{folder}")
    with pytest.raises(CheckpointError, match="is not a folder"):
        load_model(f"hf:{tmp_path / 'nowhere'}")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "blip"}))
    with pytest.raises(CheckpointError, match=r"describes a 'blip'.*CLIPModel, SiglipModel"):
        load_model(f"hf:{folder}")
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['seed'\]"):
        load_model(clip.name, seed=0)


# -- export --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_export_loads_with_from_pretrained(kind, tmp_path):  # offline-ok: a folder the test wrote
    m = _perturb(small_test_model(tmp_path / "src", kind=kind))
    ckpt = save_checkpoint(m, tmp_path / "ckpt")
    out = export_hf(ckpt, tmp_path / "exported")
    cls = transformers.CLIPModel if kind == "clip" else transformers.SiglipModel
    theirs = cls.from_pretrained(str(out)).eval()  # offline-ok: a folder the test wrote
    tok = transformers.AutoTokenizer.from_pretrained(str(out))  # offline-ok: a folder the test wrote
    images = [_image(90, 64, 14), _image(64, 120, 15)]
    px = _pil_processor(out)(images=images, return_tensors="pt")["pixel_values"]
    texts = ["a seven", "a red square"]
    ids = tok(texts, padding="max_length", max_length=16, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref_img = theirs.get_image_features(pixel_values=px)
        ref_txt = theirs.get_text_features(input_ids=ids)
    ref_img = ref_img if isinstance(ref_img, torch.Tensor) else ref_img.pooler_output
    ref_txt = ref_txt if isinstance(ref_txt, torch.Tensor) else ref_txt.pooler_output
    assert np.allclose(embed_images(m, images, normalize=False, progress=False), ref_img.numpy(), atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(m.encode_text(m.tokenize(texts)), ref_txt, atol=1e-5)
    _same_outputs(m, load_model(f"hf:{out}"))  # and ravl reads the export as a model folder
    with pytest.raises(ValueError, match="Hugging Face model"):
        export_hf(load_model("tiny"), tmp_path / "x")


def test_encode_image_and_roi_is_one_pass_of_both(model):
    px = model.preprocess([_image(64, 64, 17), _image(90, 64, 18)])
    boxes = torch.tensor([[0, 0, 0, 0.5, 0.5], [1, 0.2, 0.1, 1, 0.9], [1, 0, 0, 1, 1]])
    with torch.no_grad():
        img, reg = model.encode_image_and_roi(px, boxes)
        assert torch.allclose(img, model.encode_image(px), atol=1e-5)
        assert torch.allclose(reg, model.encode_roi(px, boxes), atol=1e-5)
