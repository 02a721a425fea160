"""Fine-tuning and mitigation through the open_clip and Hugging Face adapters: frozen towers,
gradient checkpointing, the pretrained recipe, region boxes through the centre crop, RaVL's
one-pass region loss, and the whole CLI from fine-tuning to export on a small open_clip ViT."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

open_clip = pytest.importorskip("open_clip")  # CI installs the backends (RAVL_REQUIRE_OPTIONAL=1)
transformers = pytest.importorskip("transformers")

from ravl.data.dataset import load_dataset  # noqa: E402
from ravl.mitigation.labelling import RegionLabels, _training_regions  # noqa: E402
from ravl.mitigation.methods.ravl import RegionAwareObjective  # noqa: E402
from ravl.models import hf as hf_backend  # noqa: E402
from ravl.models import openclip as oc_backend  # noqa: E402
from ravl.training import options  # noqa: E402
from ravl.training.loop import FinetuneConfig, finetune  # noqa: E402
from ravl.training.losses import clip_loss  # noqa: E402
from ravl.zeroshot import default_templates  # noqa: E402

KINDS = ["open_clip-vit", "open_clip-resnet", "hf-clip", "hf-siglip"]


@pytest.fixture(scope="module")
def models():
    return {"open_clip-vit": oc_backend.small_test_model("vit"),
            "open_clip-resnet": oc_backend.small_test_model("resnet"),
            "hf-clip": hf_backend.small_test_model(kind="clip"),
            "hf-siglip": hf_backend.small_test_model(kind="siglip")}


@pytest.fixture(scope="module")
def tiny_setting(tmp_path_factory):
    from ravl.data.synthetic import make_spurious_benchmark

    return make_spurious_benchmark(tmp_path_factory.mktemp("setting"), spurious_class="nine", feature="red_square",
                                   cramers_v=0.9, n_train=96, n_eval=64, random_state=0, progress=False)


@pytest.mark.parametrize("kind", KINDS)
def test_tower_prefixes_are_what_each_encoder_alone_reaches(models, kind):
    m = models[kind]
    for tower, other in (("image", "text"), ("text", "image")):
        by_prefix = options.tower_parameter_names(m, tower)
        probed = options._reached_by(m, tower) - options._reached_by(m, other)
        assert by_prefix and by_prefix == probed, (tower, sorted(by_prefix ^ probed)[:5])
    assert "logit_scale" not in options.tower_parameter_names(m, "image") | options.tower_parameter_names(m, "text")


@pytest.mark.parametrize("kind", ["open_clip-vit", "hf-clip"])
def test_grad_checkpointing_gives_the_same_gradients(models, kind):
    m = models[kind]
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)) for _ in range(4)]
    px, tok = m.preprocess(images), m.tokenize(["a photo of a cat", "a dog", "two birds", "a red square"])

    def grads():
        m.module.train()
        m.module.zero_grad(set_to_none=True)
        clip_loss(m.encode_image(px), m.encode_text(tok), m.logit_scale())["loss"].backward()
        out = {n: p.grad.clone() for n, p in m.module.named_parameters() if p.grad is not None}
        m.module.eval()
        return out

    plain = grads()
    options.set_grad_checkpointing(m, True)
    try:
        ckpt = grads()
    finally:
        options.set_grad_checkpointing(m, False)
        m.module.zero_grad(set_to_none=True)
    assert plain.keys() == ckpt.keys()
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("kind", ["open_clip-vit", "hf-clip"])
def test_pretrained_recipe_and_templates(models, kind):
    m = models[kind]
    cfg = FinetuneConfig.for_model(m, epochs=1)
    assert (cfg.lr, cfg.warmup_fraction, cfg.weight_decay) == (1e-5, 0.1, 0.1)
    assert FinetuneConfig.for_model(m, lr=3e-5).lr == 3e-5  # an explicit value wins
    digits = default_templates(m, ["zero", "one", "nine"])
    objects = default_templates(m, ["dog", "cat"])
    assert digits != objects and len(objects) >= 7 and all(t.count("{}") == 1 for t in digits + objects)


def test_freeze_text_fine_tunes_only_the_image_tower(models, tiny_setting, tmp_path):
    m = oc_backend.small_test_model("vit", seed=3)
    before = {n: p.detach().clone() for n, p in m.module.named_parameters()}
    ds = load_dataset(tiny_setting.train_dir)
    cfg = FinetuneConfig.for_model(m, epochs=1, batch_size=32, lr=1e-3, freeze="text", val_split=None)
    finetune(m, ds, tmp_path / "ft", cfg, progress=False, init={"model": m.name, "seed": 3, "checkpoint": None})
    text, image = options.tower_parameter_names(m, "text"), options.tower_parameter_names(m, "image")
    after = dict(m.module.named_parameters())
    assert all(torch.equal(after[n], before[n]) for n in text)
    assert sum(not torch.equal(after[n], before[n]) for n in image) > len(image) // 2
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["finetune"]["freeze"] == "text"


def test_training_boxes_follow_the_centre_crop(models):
    m = models["open_clip-vit"]  # 64 x 64 input: a 128 x 64 image is resized to 128 x 64 and cropped to x in [32, 96)

    class _Rec:
        width, height = 128, 64

    class _Table:
        image_index = np.array([0, 0, 0, 1])
        boxes = np.array([[40, 8, 72, 40], [0, 0, 16, 16], [24, 0, 48, 32], [0, 0, 64, 64]], dtype=float)

        def __len__(self):
            return 4

    class _Ds:
        records = [_Rec(), type("R", (), {"width": 64, "height": 64})()]

    rl, kept = _training_regions(m, _Ds(), _Table(), np.array([True, False, True, False]))
    assert isinstance(rl, RegionLabels) and kept.tolist() == [True, False, True, True]
    # the box entirely left of the crop is left out; the one across its edge is clipped to it
    assert rl.image_index.tolist() == [0, 0, 1] and rl.is_spurious.tolist() == [True, True, False]
    np.testing.assert_allclose(rl.boxes_norm, [[8 / 64, 8 / 64, 40 / 64, 40 / 64], [0, 0, 16 / 64, 32 / 64],
                                               [0, 0, 1, 1]], atol=1e-6)


@pytest.mark.parametrize("kind", ["open_clip-vit", "hf-clip", "hf-siglip"])
def test_unmap_boxes_inverts_map_boxes_inside_the_crop(models, kind):
    from ravl.models.regions import map_boxes, unmap_boxes

    m = models[kind]
    boxes = np.array([[40, 8, 72, 40], [30, 0, 100, 64], [0, 0, 16, 16]], dtype=float)
    norm, status = map_boxes(m, boxes, (128, 64))
    back = unmap_boxes(m, norm, (128, 64))
    inside = status == "inside"
    assert inside.any()
    np.testing.assert_allclose(back[inside], boxes[inside], atol=1e-6)
    # a clipped box comes back as its visible part: inside the original box
    cut = status == "clipped"
    assert (back[cut][:, :2] >= boxes[cut][:, :2] - 1e-6).all() and (back[cut][:, 2:] <= boxes[cut][:, 2:] + 1e-6).all()


def test_ravl_objective_roi_uses_one_backbone_pass(models):
    m = models["open_clip-vit"]
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(4)]
    rl = RegionLabels(np.array([0, 0, 1, 2, 3]), np.array([[0, 0, .5, .5], [.5, .5, 1, 1], [.1, .1, .9, .6],
                                                           [0, 0, 1, 1], [.2, .3, .7, .8]]),
                      np.array([True, False, True, False, False]))
    batch = {"pixels": m.preprocess(images), "indices": torch.arange(4),
             "tokens": m.tokenize(["a photo of a one", "a nine", "a one", "a nine"])}
    kw = dict(class_names=["one", "nine"], templates=["a photo of a {}."], region_mode="roi", warmup_epochs=0)
    one_pass = RegionAwareObjective(rl, np.array([0, 1, 0, 1]), **kw)
    calls = []
    real_encode_image = m.encode_image
    try:
        m.encode_image = lambda px: calls.append(px.shape) or real_encode_image(px)
        got = one_pass(m, batch)
    finally:
        del m.encode_image
    assert calls == []  # the image embedding came from encode_image_and_roi
    separate = RegionAwareObjective(rl, np.array([0, 1, 0, 1]), region_embedder=lambda mm, px, b, mode:
                                    mm.encode_roi(px, b), **kw)
    ref = separate(m, batch)
    for k in ("loss", "clip_loss", "region_loss", "alignment_loss"):
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-5, msg=k)
    assert float(got["region_loss"].detach()) > 0


@pytest.mark.slow
def test_cli_finetune_discover_mitigate_export_on_open_clip(tiny_setting, tmp_path, capsys, hand_discovery):
    from ravl.cli import main

    oc_backend.small_test_model("vit")  # registers the small test architecture in this process
    train, ev = str(tiny_setting.train_dir), str(tiny_setting.eval_dir)
    ft, disc, fixed = tmp_path / "ft", tmp_path / "disc", tmp_path / "fixed"
    assert main(["finetune", "--model", "open_clip:ravl-test-vit", "--model-seed", "0", "--data", train,
                 "--out", str(ft), "--epochs", "1", "--batch-size", "32", "--lr", "1e-3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "recipe defaults of open_clip:ravl-test-vit: warmup_fraction=0.1, weight_decay=0.1" in out
    cfg = json.loads((ft / "config.json").read_text())
    assert cfg["model"] == "open_clip:ravl-test-vit" and cfg["model_config"]["preprocess"]["image_size"] == [64, 64]
    assert main(["evaluate", "--checkpoint", str(ft), "--data", ev, "--split", "test", "--quiet"]) == 0
    assert main(["discover", "--checkpoint", str(ft), "--data", ev, "--out", str(disc), "--k-min", "2", "--k-max", "6",
                 "--quiet"]) == 0
    assert json.loads((disc / "discovery.json").read_text())["meta"]["model"] == "open_clip:ravl-test-vit"
    # One epoch of a random 2-block ViT learns no shortcut to discover: mitigate the planted one.
    hand_discovery(ev).to_json(tmp_path / "planted.json")
    assert main(["mitigate", "--checkpoint", str(ft), "--data", train, "--discovery", str(tmp_path / "planted.json"),
                 "--out", str(fixed), "--method", "ravl", "--region-mode", "roi", "--epochs", "1", "--quiet",
                 "--no-verify"]) == 0
    out = capsys.readouterr().out
    assert "spurious" in out
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(fixed), "--out", str(tmp_path / "oc")]) == 0
    assert "create_model_and_transforms('local-dir:" in capsys.readouterr().out
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'oc'}")
    from ravl.models import load_model

    ours = load_model(None, checkpoint=fixed)
    px = ours.preprocess([Image.new("RGB", (80, 64), (200, 30, 30))])
    with torch.no_grad():
        torch.testing.assert_close(model.eval().encode_image(px), ours.encode_image(px), rtol=1e-4, atol=1e-5)


def test_label_regions_on_wide_images_leaves_out_regions_the_crop_removes(tiny_setting, hand_discovery, tmp_path):
    """Each 56 x 56 training image centred on a 112 x 56 canvas, plus a box left of the centre crop."""
    from ravl.data.dataset import write_metadata
    from ravl.mitigation.labelling import label_regions

    src = load_dataset(tiny_setting.train_dir).subset("train")
    rows = []
    (tmp_path / "wide" / "images").mkdir(parents=True)
    for k, r in enumerate(src.records[:24]):
        canvas = Image.new("RGB", (112, 56))
        canvas.paste(src.load_image(k), (28, 0))
        name = f"images/{k}.png"
        canvas.save(tmp_path / "wide" / name)
        boxes = [[b[0] + 28, b[1], b[2] + 28, b[3]] for b in r.boxes] + [[0, 0, 28, 28]]
        rows.append({"file_name": name, "label": r.label, "caption": r.caption, "split": "train", "boxes": boxes,
                     "region_attributes": list(r.region_attributes) + ["empty"]})
    write_metadata(tmp_path / "wide" / "metadata.jsonl", rows)
    ds = load_dataset(tmp_path / "wide", classes=src.classes)
    m = oc_backend.small_test_model("vit")
    with pytest.warns(UserWarning, match="lie entirely outside"):
        lab = label_regions(m, ds, hand_discovery(tiny_setting.eval_dir), progress=False)
    n_table = len(ds.region_table())
    assert len(lab.region_labels) == n_table - 24 and lab.region_clusters.shape == (n_table - 24,)
    # the kept boxes are the digit image's quadrants in the model input (x from 0 to 1 across the crop)
    assert lab.region_labels.boxes_norm[:, [0, 2]].min() >= 0 and lab.region_labels.boxes_norm.max() <= 1
