"""Region, image and text embeddings (ravl.models.regions) for any adapter."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from ravl.models import load_model
from ravl.models.regions import (
    DEFAULT_REGION_MODE,
    REGION_MODES,
    box_pixel_bounds,
    embed_images,
    embed_regions,
    embed_texts,
    region_batch,
    region_image,
    region_pixels,
)


@pytest.fixture(scope="module")
def model():
    return load_model("tiny", seed=0)


def _image(w, h, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@dataclass(frozen=True)
class _Record:
    boxes: tuple


@dataclass(frozen=True)
class _Table:
    image_index: np.ndarray
    region_index: np.ndarray
    boxes: np.ndarray
    attributes: list | None = None


class _FakeDataset:
    """The parts of RegionDataset that region embedding uses (docs/dev/interfaces.md)."""

    def __init__(self, images, boxes):
        self.images = images
        self.records = tuple(_Record(tuple(map(tuple, b))) for b in boxes)

    def __len__(self):
        return len(self.images)

    def load_image(self, i):
        return self.images[i]

    def region_table(self):
        counts = [len(r.boxes) for r in self.records]
        return _Table(np.repeat(np.arange(len(counts)), counts),
                      np.concatenate([np.arange(c) for c in counts]) if counts else np.zeros(0, int),
                      np.array([b for r in self.records for b in r.boxes], dtype=np.float64).reshape(-1, 4))


@pytest.fixture(scope="module")
def fake():
    images = [_image(56, 56, 0), _image(100, 60, 1), _image(56, 56, 2), _image(17, 45, 3)]
    boxes = [
        [[0, 0, 28, 28], [28, 0, 56, 28], [0, 28, 56, 56]],
        [],                                              # an image without regions
        [[0, 0, 56, 56]],
        [[2.5, 3.2, 15.1, 40.7], [0, 0, 17, 45], [16.9, 44.8, 17, 45]],  # sub-pixel box at the corner
    ]
    return _FakeDataset(images, boxes)


def test_default_mode_is_masked():
    assert REGION_MODES == ("masked", "roi", "crop")
    assert DEFAULT_REGION_MODE == "masked"


def test_box_pixel_bounds_rule():
    assert box_pixel_bounds([0, 0, 28, 28], 56, 56) == (0, 0, 28, 28)
    assert box_pixel_bounds([28, 28, 56, 56], 56, 56) == (28, 28, 56, 56)
    assert box_pixel_bounds([-5, -5, 80, 80], 56, 56) == (0, 0, 56, 56)  # clipped
    assert box_pixel_bounds([10.2, 3.7, 10.4, 20.0], 56, 56) == (10, 4, 11, 20)  # thin: centre pixel kept
    assert box_pixel_bounds([55.9, 0, 56, 1], 56, 56) == (55, 0, 56, 1)


def test_region_image_masked_and_crop():
    im = _image(40, 30, 5)
    masked = np.asarray(region_image(im, [10, 5, 20, 25], "masked"))
    arr = np.asarray(im)
    assert masked.shape == arr.shape
    assert np.array_equal(masked[5:25, 10:20], arr[5:25, 10:20])
    outside = np.ones(arr.shape[:2], bool)
    outside[5:25, 10:20] = False
    assert (masked[outside] == 0).all()
    crop = region_image(im, [10, 5, 20, 25], "crop")
    assert crop.size == (10, 20) and np.array_equal(np.asarray(crop), arr[5:25, 10:20])
    with pytest.raises(ValueError, match="mode"):
        region_image(im, [0, 0, 1, 1], "roi")


@pytest.mark.parametrize("mode", REGION_MODES)
def test_shapes_order_and_any_image_size(model, fake, mode):
    emb = embed_regions(model, fake, mode=mode, progress=False)
    table = fake.region_table()
    assert emb.shape == (len(table.image_index), 128) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    # row k is region k of region_table(), whatever the batching
    for r, (i, box) in enumerate(zip(table.image_index, table.boxes)):
        one = embed_regions(model, [fake.images[i]], boxes=[[box]], mode=mode, progress=False)
        assert np.allclose(emb[r], one[0], atol=1e-4), (mode, r)
    small = embed_regions(model, fake, mode=mode, batch_size=1, progress=False)
    assert np.allclose(emb, small, atol=1e-4)


@pytest.mark.parametrize("mode", REGION_MODES)
def test_full_image_box_equals_image_embedding(model, mode):
    images = [_image(56, 56, 7), _image(90, 31, 8)]
    boxes = [[[0, 0, 56, 56]], [[0, 0, 90, 31]]]
    img = embed_images(model, images, progress=False)
    reg = embed_regions(model, images, boxes=boxes, mode=mode, progress=False)
    assert np.allclose(reg, img, atol=1e-5)


def test_modes_differ_on_sub_boxes(model):
    images = [_image(56, 56, 9)]
    boxes = [[[0, 0, 28, 28]]]
    emb = {m: embed_regions(model, images, boxes=boxes, mode=m, progress=False) for m in REGION_MODES}
    assert not np.allclose(emb["masked"], emb["crop"], atol=1e-3)
    assert not np.allclose(emb["masked"], emb["roi"], atol=1e-3)


def test_embed_images_dataset_list_and_batching(model, fake):
    a = embed_images(model, fake, progress=False)
    b = embed_images(model, fake.images, batch_size=3, progress=False)
    assert a.shape == (4, 128) and np.allclose(a, b, atol=1e-5)
    raw = embed_images(model, fake.images[:1], normalize=False, progress=False)
    with torch.no_grad():
        direct = model.encode_image(model.preprocess(fake.images[:1])).numpy()
    assert np.allclose(raw, direct, atol=1e-5)
    assert embed_images(model, [], progress=False).shape == (0, 128)
    with pytest.raises(TypeError, match="PIL"):
        embed_images(model, [np.zeros((5, 5, 3))], progress=False)


def test_embedding_restores_training_mode_and_builds_no_graph(model, fake):
    model.module.train()
    emb = embed_regions(model, fake, mode="roi", progress=False)
    assert model.module.training and isinstance(emb, np.ndarray)
    model.module.eval()
    embed_images(model, fake, progress=False)
    assert not model.module.training


def test_no_regions_and_bad_boxes(model):
    images = [_image(20, 20, 1)]
    for mode in REGION_MODES:
        assert embed_regions(model, images, boxes=[[]], mode=mode, progress=False).shape == (0, 128)
    with pytest.raises(ValueError, match="overlap the 20x20 image"):
        embed_regions(model, images, boxes=[[[30, 30, 40, 40]]], progress=False)
    with pytest.raises(ValueError, match="x0<x1"):
        embed_regions(model, images, boxes=[[[10, 0, 5, 10]]], mode="roi", progress=False)
    with pytest.raises(ValueError, match="one list of boxes per image"):
        embed_regions(model, images, boxes=[[], []], progress=False)
    with pytest.raises(ValueError, match="'mode' parameter of embed_regions"):
        embed_regions(model, images, boxes=[[]], mode="boxes", progress=False)
    with pytest.raises(TypeError, match="region_table"):
        embed_regions(model, images, progress=False)


def test_embed_texts(model):
    emb = embed_texts(model, ["the digit seven", "七", ""])
    assert isinstance(emb, torch.Tensor) and emb.shape == (3, 128) and not emb.requires_grad
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    raw = embed_texts(model, ["the digit seven"], normalize=False)
    assert torch.allclose(torch.nn.functional.normalize(raw, dim=-1), emb[:1], atol=1e-6)


# -- differentiable helpers ---------------------------------------------------------------------

def _norm_boxes(boxes, w, h):
    return torch.tensor([[i, x0 / w, y0 / h, x1 / w, y1 / h] for i, (x0, y0, x1, y1) in boxes])


@pytest.mark.parametrize("mode", ["masked", "roi"])
def test_region_batch_matches_embed_regions(model, mode):
    # For images stored at the model's input size, training-time regions equal discovery-time ones.
    images = [_image(56, 56, 11), _image(56, 56, 12)]
    boxes = [(0, [0, 0, 28, 28]), (0, [28, 28, 56, 56]), (1, [5.5, 10.2, 40.7, 30.0])]
    ref = embed_regions(model, images, boxes=[[b for i, b in boxes if i == k] for k in range(2)],
                        mode=mode, progress=False)
    px = model.preprocess(images)
    with torch.no_grad():
        out = torch.nn.functional.normalize(region_batch(model, px, _norm_boxes(boxes, 56, 56), mode), dim=-1)
    assert np.allclose(out.numpy(), ref, atol=1e-5)


def test_region_pixels_masked_and_crop(model):
    images = [_image(56, 56, 13)]
    px = model.preprocess(images)
    masked = region_pixels(model, px, _norm_boxes([(0, [0, 0, 28, 28])], 56, 56), "masked")
    black = model.preprocess([Image.new("RGB", (56, 56))])
    assert torch.equal(masked[0, :, :28, :28], px[0, :, :28, :28])
    assert torch.allclose(masked[0, :, 28:, :], black[0, :, 28:, :])
    full = region_pixels(model, px, torch.tensor([[0.0, 0, 0, 1, 1]]), "crop")
    assert torch.allclose(full, px, atol=1e-4)
    # a quadrant crop is the quadrant upsampled 2x (interior pixels; PIL clamps at the crop edge)
    crop = region_pixels(model, px, _norm_boxes([(0, [28, 0, 56, 28])], 56, 56), "crop")
    ref = model.preprocess([region_image(images[0], [28, 0, 56, 28], "crop")])
    assert crop.shape == (1, 3, 56, 56)
    assert torch.allclose(crop[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=2e-2)
    with pytest.raises(ValueError, match="mode"):
        region_pixels(model, px, torch.tensor([[0.0, 0, 0, 1, 1]]), "roi")


@pytest.mark.parametrize("mode", REGION_MODES)
def test_region_batch_is_differentiable(mode):
    m = load_model("tiny", seed=1)
    px = m.preprocess([_image(56, 56, 14), _image(56, 56, 15)]).requires_grad_(True)
    boxes = torch.tensor([[0, 0, 0, 0.5, 0.5], [1, 0.25, 0.25, 1, 1], [1, 0, 0, 1, 1]])
    emb = region_batch(m, px, boxes, mode)
    assert emb.shape == (3, 128)
    emb.pow(2).sum().backward()
    assert px.grad is not None and px.grad.abs().sum() > 0
    grads = [p.grad for p in m.module.visual.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert region_batch(m, px, torch.zeros(0, 5), mode).shape == (0, 128)
    with pytest.raises(ValueError, match=r"\[R, 5\]"):
        region_batch(m, px, torch.zeros(2, 4), mode)


# -- a real dataset folder ------------------------------------------------------------------------

def test_real_dataset_folder(model, tmp_path):
    from ravl.data.dataset import load_dataset, write_metadata

    rows = []
    sizes = [(56, 56), (80, 40), (56, 56)]
    for k, (w, h) in enumerate(sizes):
        _image(w, h, 20 + k).save(tmp_path / f"img{k}.png")
        row = {"file_name": f"img{k}.png", "label": "seven" if k % 2 else "one", "caption": "x"}
        if k == 1:
            row["boxes"] = [[0, 0, 40, 40], [40, 0, 80, 40], [10, 10, 30, 30]]
        rows.append(row)
    write_metadata(tmp_path, rows)
    ds = load_dataset(tmp_path)
    table = ds.region_table()
    assert len(table) == 4 + 3 + 4  # 2x2 grid on the images without boxes
    for mode in REGION_MODES:
        emb = embed_regions(model, ds, mode=mode, progress=False)
        assert emb.shape == (len(table), 128)
        k = int(np.flatnonzero((table.image_index == 1) & (table.region_index == 2))[0])
        one = embed_regions(model, [ds.load_image(1)], boxes=[[[10, 10, 30, 30]]], mode=mode, progress=False)
        assert np.allclose(emb[k], one[0], atol=1e-5)
    assert embed_images(model, ds, progress=False).shape == (3, 128)
