"""The built-in tiny CLIP and its byte-level tokenizer."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ravl.models import VisionLanguageModel, load_model
from ravl.models.tiny import CLIP_MEAN, CLIP_STD, TinyCLIP, TinyCLIPAdapter, TinyCLIPConfig, build_tiny_clip
from ravl.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, ByteTokenizer


@pytest.fixture(scope="module")
def model():
    return load_model("tiny", seed=0)


def _images(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


# -- tokenizer --------------------------------------------------------------------------------

def test_tokenizer_layout_and_padding():
    tok = ByteTokenizer(context_length=10)
    out = tok(["Hi", ""])
    assert out.dtype == torch.long and out.shape == (2, 10)
    assert out[0].tolist() == [BOS_ID, ord("h") + 3, ord("i") + 3, EOS_ID] + [PAD_ID] * 6
    assert out[1].tolist()[:2] == [BOS_ID, EOS_ID]
    assert tok("x").shape == (1, 10)  # a single string is one row


@pytest.mark.parametrize("text", ["naïve café", "数字は七です", "emoji 🙂🌍 mix", "ＦＵＬＬＷＩＤＴＨ", "\u00e9 vs e\u0301"])
def test_tokenizer_any_unicode_round_trips(text):
    tok = ByteTokenizer(context_length=64, lower=False)
    row = tok([text])[0]
    assert tok.decode(row) == tok.normalize(text)
    assert row[0] == BOS_ID and EOS_ID in row.tolist()


def test_tokenizer_nfc_lower_and_whitespace():
    tok = ByteTokenizer()
    # composed and decomposed accents, case and runs of whitespace give the same tokens
    assert torch.equal(tok(["Caf\u00e9  IS\topen"]), tok(["cafe\u0301 is open"]))
    assert not torch.equal(ByteTokenizer(lower=False)(["A"]), ByteTokenizer(lower=False)(["a"]))


def test_tokenizer_truncation_keeps_eos_and_whole_characters():
    tok = ByteTokenizer(context_length=12)
    for text in ["a" * 100, "é" * 100, "🙂" * 100, "ab🙂" * 30]:
        row = tok([text])[0].tolist()
        assert len(row) == 12 and row[0] == BOS_ID
        last = max(i for i, t in enumerate(row) if t != PAD_ID)
        assert row[last] == EOS_ID
        decoded = tok.decode(row)
        assert "\ufffd" not in decoded and text.startswith(decoded) and decoded
    with pytest.raises(TypeError, match="str"):
        tok([3])
    with pytest.raises(ValueError, match="context_length"):
        ByteTokenizer(context_length=2)


# -- config -----------------------------------------------------------------------------------

def test_config_json_round_trip_and_validation():
    cfg = TinyCLIPConfig(conv_widths=(8, 16), conv_strides=(2, 2), text_layers=1)
    back = TinyCLIPConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.feature_map_size == 14
    assert TinyCLIPConfig().feature_map_size == 7
    with pytest.raises(ValueError, match="conv_strides"):
        TinyCLIPConfig(conv_widths=(10,), conv_strides=(3,))
    with pytest.raises(ValueError, match="one stride per conv"):
        TinyCLIPConfig(conv_widths=(8, 16), conv_strides=(2,))
    with pytest.raises(ValueError, match="text_heads"):
        TinyCLIPConfig(text_width=30, text_heads=4)
    with pytest.raises(ValueError, match="Unknown TinyCLIPConfig field"):
        TinyCLIPConfig.from_dict({"imag_size": 56})
    with pytest.raises(ValueError, match="TinyCLIPConfig fields are"):
        load_model("tiny", widht=3)


# -- adapter protocol -------------------------------------------------------------------------

def test_protocol_conformance(model):
    assert isinstance(model, VisionLanguageModel)
    assert isinstance(model, TinyCLIPAdapter) and isinstance(model.module, TinyCLIP)
    assert model.name == "tiny" and model.embed_dim == 128 and model.image_size == (56, 56)
    assert model.device == torch.device("cpu")
    assert model.to("cpu") is model
    json.dumps(model.config())
    assert math.isclose(model.logit_scale().item(), 1 / 0.07, rel_tol=1e-5)
    assert model.logit_scale().requires_grad


def test_preprocess_any_size_and_mode(model):
    ims = _images([(56, 56), (100, 70), (9, 300)])
    ims.append(ims[1].convert("L"))
    ims.append(ims[2].convert("RGBA"))
    px = model.preprocess(ims)
    assert px.shape == (5, 3, 56, 56) and px.dtype == torch.float32
    black = model.preprocess([Image.new("RGB", (13, 7))])
    expected = -torch.tensor(CLIP_MEAN) / torch.tensor(CLIP_STD)
    assert torch.allclose(black[0].mean(dim=(1, 2)), expected, atol=1e-6)
    assert model.preprocess([]).shape == (0, 3, 56, 56)
    with pytest.raises(TypeError, match="PIL"):
        model.preprocess([np.zeros((56, 56, 3))])


def test_encoders_shapes(model):
    px = model.preprocess(_images([(56, 56)] * 3))
    assert model.encode_image(px).shape == (3, 128)
    assert model.encode_text(model.tokenize(["a", "the number is a seven"])).shape == (2, 128)
    boxes = torch.tensor([[0, 0, 0, 1, 1], [2, 0.5, 0.5, 1, 1], [2, 0.1, 0.2, 0.3, 0.9]])
    assert model.encode_roi(px, boxes).shape == (3, 128)
    assert model.encode_roi(px, torch.zeros(0, 5)).shape == (0, 128)
    with pytest.raises(ValueError, match="index"):
        model.encode_roi(px, torch.tensor([[3.0, 0, 0, 1, 1]]))
    with pytest.raises(ValueError, match=r"\[R, 5\]"):
        model.encode_roi(px, torch.zeros(2, 4))


def test_roi_full_box_equals_global_average_pooling(model):
    px = model.preprocess(_images([(56, 56), (40, 80)]))
    with torch.no_grad():
        full = model.encode_roi(px, torch.tensor([[1.0, 0, 0, 1, 1], [0.0, 0, 0, 1, 1]]))
        img = model.encode_image(px)
    assert torch.allclose(full, img[[1, 0]], atol=1e-5, rtol=1e-5)
    # a sub-box pools something else
    with torch.no_grad():
        part = model.encode_roi(px, torch.tensor([[0.0, 0, 0, 0.5, 0.5]]))
    assert not torch.allclose(part, img[:1], atol=1e-3)


def test_encode_image_and_roi_is_one_pass_of_both(model):
    px = model.preprocess(_images([(56, 56), (40, 80), (70, 70)]))
    boxes = torch.tensor([[0, 0, 0, 0.5, 0.5], [1, 0.2, 0.1, 1, 0.9], [2, 0, 0, 1, 1], [0, 0.5, 0.5, 1, 1]])
    with torch.no_grad():
        img, reg = model.encode_image_and_roi(px, boxes)
        assert torch.allclose(img, model.encode_image(px), atol=1e-5)
        assert torch.allclose(reg, model.encode_roi(px, boxes), atol=1e-5)
        img0, reg0 = model.encode_image_and_roi(px, torch.zeros(0, 5))
    assert torch.allclose(img0, img, atol=1e-6) and reg0.shape == (0, 128)
    with pytest.raises(ValueError, match="index"):
        model.encode_image_and_roi(px, torch.tensor([[3.0, 0, 0, 1, 1]]))
    with pytest.raises(ValueError, match=r"\[R, 5\]"):
        model.encode_image_and_roi(px, torch.zeros(2, 4))


def test_encode_image_and_roi_in_training_mode():
    # Training mode (BatchNorm on batch statistics): same values and gradients as the two separate
    # passes; only the BatchNorm running statistics differ (updated once instead of twice).
    px = build_tiny_clip(seed=0).preprocess(_images([(56, 56)] * 4, seed=3))
    boxes = torch.tensor([[0, 0, 0, 0.5, 0.5], [1, 0.5, 0, 1, 0.5], [3, 0.1, 0.2, 0.9, 1.0]])
    one, two = build_tiny_clip(seed=5), build_tiny_clip(seed=5)
    one.module.train()
    two.module.train()
    img1, reg1 = one.encode_image_and_roi(px, boxes)
    img2, reg2 = two.encode_image(px), two.encode_roi(px, boxes)
    assert torch.allclose(img1, img2, atol=1e-5) and torch.allclose(reg1, reg2, atol=1e-5)
    (img1.square().sum() + reg1.sum()).backward()
    (img2.square().sum() + reg2.sum()).backward()
    g1 = dict(one.module.named_parameters())
    for name, p in two.module.named_parameters():
        if p.grad is not None:
            assert torch.allclose(g1[name].grad, p.grad, atol=1e-4, rtol=1e-4), name
    bn1, bn2 = one.module.visual[0].norm, two.module.visual[0].norm
    assert int(bn1.num_batches_tracked) == 1 and int(bn2.num_batches_tracked) == 2
    m = bn1.momentum   # running = (1 - m) * running + m * batch_mean, once vs twice
    batch_mean = bn1.running_mean / m
    assert torch.allclose(bn2.running_mean, (1 - (1 - m) ** 2) * batch_mean, atol=1e-5)


def test_text_padding_and_batching_do_not_change_embeddings(model):
    texts = ["a", "the digit appears to be seven", "🙂"]
    with torch.no_grad():
        together = model.encode_text(model.tokenize(texts))
        alone = torch.cat([model.encode_text(model.tokenize([t])) for t in texts])
    assert torch.allclose(together, alone, atol=1e-5)
    with pytest.raises(ValueError, match="context length"):
        model.encode_text(torch.ones(1, 40, dtype=torch.long))


def test_eval_mode_embeddings_do_not_depend_on_the_batch(model):
    # Models come back in eval mode: BatchNorm uses its running statistics.
    assert not load_model("tiny").module.training
    px = model.preprocess(_images([(56, 56)] * 4))
    with torch.no_grad():
        a = model.encode_image(px)
        c = model.encode_image(px[:1])
    assert torch.allclose(a[:1], c, atol=1e-5)


def test_seeded_weights_are_deterministic_and_leave_global_rng_alone():
    state = torch.get_rng_state()
    a = load_model("tiny", seed=0).module.state_dict()
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(12345)  # the caller's global seed has no effect
    b = load_model("tiny", seed=0).module.state_dict()
    c = load_model("tiny", seed=1).module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_custom_architecture():
    cfg = TinyCLIPConfig(image_size=32, conv_widths=(8, 16), conv_strides=(2, 2),
                         embed_dim=16, text_width=16, text_layers=1, text_heads=2, context_length=16,
                         roi_samples=3)
    m = build_tiny_clip(cfg, seed=3)
    px = m.preprocess(_images([(50, 20)]))
    assert px.shape == (1, 3, 32, 32) and m.encode_image(px).shape == (1, 16)
    assert m.encode_roi(px, torch.tensor([[0.0, 0.1, 0.1, 0.6, 0.9]])).shape == (1, 16)
    assert m.tokenize(["x" * 100]).shape == (1, 16)


def test_contrastive_steps_fit_a_small_batch():
    # The network can learn: a few AdamW steps on 8 distinct image-caption pairs.
    m = build_tiny_clip(seed=0)
    m.module.train()
    rng = np.random.default_rng(0)
    ims = []
    for k in range(8):
        a = np.zeros((56, 56, 3), np.uint8)
        a[(k // 4) * 28:(k // 4) * 28 + 28, (k % 4) * 14:(k % 4) * 14 + 14] = rng.integers(50, 256, 3)
        ims.append(Image.fromarray(a))
    px = m.preprocess(ims)
    tok = m.tokenize([f"caption number {w}" for w in "abcdefgh"])
    opt = torch.optim.AdamW(m.module.parameters(), lr=2e-3)
    target = torch.arange(8)

    def loss_fn():
        logits = m.logit_scale() * F.normalize(m.encode_image(px), dim=-1) @ F.normalize(m.encode_text(tok), dim=-1).T
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

    first = loss_fn().item()
    for _ in range(15):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss_fn().item() < 0.25 * first
