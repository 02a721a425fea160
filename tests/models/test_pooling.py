"""Backend-free parts of the real-model adapters: resize/crop geometry and region pooling math.

These run without open_clip or transformers; the adapters' tests check them against the backends.
"""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from ravl.models.geometry import ResizeCropGeometry
from ravl.models.pooling import (
    ViTBlock,
    attnpool_regions,
    bilinear_matrix,
    box_patch_weights,
    check_roi_layers,
    image_slots,
    roi_align,
    split_roi_boxes,
    vit_region_tokens,
    weighted_patch_mean,
)

# -- geometry ------------------------------------------------------------------------------------

def test_plan_shortest_side_and_crop_offsets():
    g = ResizeCropGeometry(size=(224, 224))
    assert g.plan(320, 240) == (298, 224, 37, 0)          # int(224 * 320 / 240) = 298, round(37.0)
    assert g.plan(240, 320) == (224, 298, 0, 37)
    assert g.plan(224, 224) == (224, 224, 0, 0)
    # torchvision rounds half to even, Hugging Face floors
    assert ResizeCropGeometry(size=(64, 64)).plan(124, 80) == (99, 64, 18, 0)
    assert ResizeCropGeometry(size=(64, 64), crop_offset="floor").plan(124, 80) == (99, 64, 17, 0)
    # longest side with padding: negative offsets
    g = ResizeCropGeometry(size=(64, 64), resize="longest", fill=9)
    assert g.plan(128, 64) == (64, 32, 0, -16)
    # separate resize target (Hugging Face: shortest edge 80, then a 64 crop)
    assert ResizeCropGeometry(size=(64, 64), resize_target=(80, 80)).plan(100, 80) == (100, 80, 18, 8)


def test_pixels_pad_with_fill_and_normalise():
    g = ResizeCropGeometry(size=(8, 8), resize="longest", fill=51, mean=(0.2, 0.2, 0.2), std=(0.5, 0.5, 0.5))
    im = Image.new("RGB", (16, 8), (255, 255, 255))
    px = g([im])
    assert px.shape == (1, 3, 8, 8) and px.dtype == torch.float32
    assert torch.allclose(px[0, :, :2], torch.full((3, 2, 8), (51 / 255 - 0.2) / 0.5))   # padding rows
    assert torch.allclose(px[0, :, 2:6], torch.full((3, 4, 8), (1 - 0.2) / 0.5))
    assert g([]).shape == (0, 3, 8, 8)
    with pytest.raises(TypeError, match="item 0 is a ndarray"):
        g([np.zeros((4, 4, 3))])


def test_map_boxes_statuses_and_padding():
    g = ResizeCropGeometry(size=(64, 64), resize="longest")
    norm, status = g.map_boxes([[0, 0, 128, 64], [-10, -10, 20, 20]], (128, 64))
    assert status.tolist() == ["inside", "inside"]       # padding never cuts the image
    assert np.allclose(norm, [[0, 0.25, 1, 0.75], [0, 0.25, 20 / 128, 0.25 + 10 / 64]])
    g = ResizeCropGeometry(size=(64, 64))
    norm, status = g.map_boxes([[0, 0, 16, 64], [0, 0, 40, 64], [100, 0, 128, 64]], (128, 64))
    assert status.tolist() == ["outside", "clipped", "outside"]
    assert np.allclose(norm[1], [0, 0, (40 - 32) / 64, 1])
    with pytest.raises(ValueError, match="image size must be positive"):
        g.map_boxes([[0, 0, 1, 1]], (0, 5))


def test_geometry_validation_and_round_trip():
    g = ResizeCropGeometry(size=(48, 64), resize="shortest-keep-ratio", interpolation="bilinear")
    assert ResizeCropGeometry.from_dict(g.to_dict()) == g
    with pytest.raises(ValueError, match="square resize target"):
        ResizeCropGeometry(size=(48, 64))
    with pytest.raises(ValueError, match="'interpolation'"):
        ResizeCropGeometry(size=(8, 8), interpolation="cubic")
    with pytest.raises(ValueError, match="'std' parameter .* must be positive"):
        ResizeCropGeometry(size=(8, 8), std=(1, 0, 1))


# -- pooling -------------------------------------------------------------------------------------

def test_image_slots():
    slot, rmax = image_slots(torch.tensor([2, 0, 2, 2, 1, 0]), 4)
    assert slot.tolist() == [0, 0, 1, 2, 0, 1] and rmax == 3
    assert image_slots(torch.zeros(0, dtype=torch.long), 3)[1] == 0


def test_bilinear_matrix_is_roi_align():
    g = torch.Generator().manual_seed(0)
    fmap = torch.randn(2, 5, 7, 6, generator=g)
    boxes = torch.tensor([[0.1, 0.2, 0.7, 0.9], [0, 0, 1, 1], [0.95, 0.3, 1.0, 0.31], [0.5, 0.5, 0.5, 0.5]])
    idx = torch.tensor([0, 1, 1, 0])
    ref = roi_align(fmap, idx, boxes, (3, 4)).flatten(2)                      # [R, C, 12]
    b = bilinear_matrix(boxes, (3, 4), (7, 6))                                 # [R, 12, 42]
    got = torch.einsum("rsc,rkc->rks", b, fmap.flatten(2)[idx])
    assert torch.allclose(got, ref, atol=1e-6)
    assert torch.allclose(b.sum(-1), torch.ones(4, 12))
    full = roi_align(fmap, torch.tensor([0]), torch.tensor([[0.0, 0, 1, 1]]), (7, 6))
    assert torch.allclose(full[0], fmap[0], atol=1e-6)                          # cell centres exactly


def test_attnpool_regions_matches_a_direct_attention_pool():
    g = torch.Generator().manual_seed(1)
    c, heads, side = 16, 4, 3
    lin = [torch.nn.Linear(c, c) for _ in range(3)] + [torch.nn.Linear(c, 8)]
    pos = torch.randn(side * side + 1, c, generator=g)
    fmap = torch.randn(3, c, side, side, generator=g)
    idx = torch.tensor([2, 0, 2, 1])
    boxes = torch.tensor([[0, 0, 1, 1], [0.2, 0.1, 0.6, 0.9], [0.5, 0.5, 0.52, 0.52], [0, 0, 1, 1]])
    got = attnpool_regions(fmap, idx, boxes, positional_embedding=pos, q_proj=lin[0], k_proj=lin[1],
                           v_proj=lin[2], c_proj=lin[3], num_heads=heads)
    x = roi_align(fmap, idx, boxes, (side, side)).flatten(2).transpose(1, 2)   # [R, 9, C]
    x = torch.cat([x.mean(1, keepdim=True), x], 1) + pos
    q, k, v = (lin[i](x).view(4, -1, heads, c // heads).transpose(1, 2) for i in range(3))
    a = torch.softmax(q[:, :, :1] @ k.transpose(-1, -2) / math.sqrt(c // heads), -1) @ v
    ref = lin[3](a.transpose(1, 2).reshape(4, c))
    assert torch.allclose(got, ref, atol=1e-5)
    assert attnpool_regions(fmap, idx[:0], boxes[:0], positional_embedding=pos, q_proj=lin[0], k_proj=lin[1],
                            v_proj=lin[2], c_proj=lin[3], num_heads=heads).shape == (0, 8)


def test_box_patch_weights_cover_grow_and_full():
    w = box_patch_weights(torch.tensor([[0.0, 0, 1, 1], [0.25, 0, 0.5, 0.5], [0.3, 0.3, 0.31, 0.31]]), (4, 4))
    assert torch.equal(w[0], torch.ones(16))
    assert torch.allclose(w[1].view(4, 4), torch.tensor([[0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0.]]))
    # a box smaller than a patch grows to one patch about its centre: total weight = one patch
    assert w[2].sum() == pytest.approx(1.0) and (w[2] > 0).sum() == 4
    edge = box_patch_weights(torch.tensor([[0.99, 0.99, 1.0, 1.0]]), (4, 4))
    assert edge[0, 15] == 1 and edge.sum() == pytest.approx(1.0)                # shifted inside the image


def _toy_blocks(width=8, heads=2, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    blocks = []
    for _ in range(n):
        ln1, ln2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
        qkv, out = torch.nn.Linear(width, 3 * width), torch.nn.Linear(width, width)
        mlp = torch.nn.Sequential(torch.nn.Linear(width, 2 * width), torch.nn.GELU(), torch.nn.Linear(2 * width, width))
        for p in (*qkv.parameters(), *out.parameters(), *mlp.parameters()):
            torch.nn.init.normal_(p, std=0.3, generator=g)

        def fwd(x, mask=None, ln1=ln1, qkv=qkv, out=out, mlp=mlp, ln2=ln2):
            b, t, _ = x.shape
            q, k, v = (z.view(b, t, heads, -1).transpose(1, 2) for z in qkv(ln1(x)).chunk(3, -1))
            a = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = x + out(a.transpose(1, 2).reshape(b, t, width))
            return x + mlp(ln2(x))

        blocks.append((ViTBlock(ln_1=ln1, qkv=lambda h, qkv=qkv: qkv(h).chunk(3, -1), attn_out=out,
                                mlp_branch=lambda x, mlp=mlp, ln2=ln2: mlp(ln2(x)), heads=heads, forward=fwd), fwd))
    return blocks


def test_vit_region_tokens_equal_an_extra_masked_token():
    blocks = _toy_blocks()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 1 + 9, 8, generator=g)                                  # CLS + 3x3 patches
    boxes = torch.tensor([[0, 0, 1, 1], [0, 0, 2 / 3, 1 / 3], [1 / 3, 1 / 3, 1, 1]])
    idx = torch.tensor([1, 0, 1])
    got = vit_region_tokens(x, [b for b, _ in blocks], idx, box_patch_weights(boxes, (3, 3)))
    for r in range(3):
        inside = (box_patch_weights(boxes[r:r + 1], (3, 3))[0] > 0).nonzero().flatten() + 1
        seq = torch.cat([x[idx[r]][None], x[idx[r], :1][None]], 1)             # [1, 11, W]
        mask = torch.full((11, 11), float("-inf"))
        mask[:10, :10] = 0
        mask[10, inside] = 0
        mask[10, 10] = 0
        for _, fwd in blocks:
            seq = fwd(seq, mask)
        assert torch.allclose(got[r], seq[0, -1], atol=1e-5), r
    assert torch.allclose(got[0], vit_region_tokens(x, [b for b, _ in blocks], torch.tensor([1]),
                                                    torch.ones(1, 9))[0], atol=1e-6)


def test_weighted_patch_mean_and_option_checks():
    tokens = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    w = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 1], [1, 1, 1, 1.]])
    got = weighted_patch_mean(tokens, torch.tensor([0, 1, 1]), w)
    assert torch.allclose(got, torch.stack([tokens[0, :2].mean(0), tokens[1, 3], tokens[1].mean(0)]))
    assert check_roi_layers(None, "x") is None and check_roi_layers("all", "x") is None
    assert check_roi_layers(2, "x") == 2
    with pytest.raises(ValueError, match="'roi_layers' parameter of x must be an int >= 1 or 'all'"):
        check_roi_layers(0, "x")
    with pytest.raises(ValueError, match="x0 <= x1"):
        split_roi_boxes(torch.tensor([[0, 0.5, 0, 0.2, 1]]), 1, "f")
    with pytest.raises(ValueError, match="finite"):
        split_roi_boxes(torch.tensor([[0, float("nan"), 0, 1, 1]]), 1, "f")
