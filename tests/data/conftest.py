"""Fixtures of the data tests: a small COCO-format dataset drawn with PIL, and its conversion.

The COCO fixture imitates the real files: ``instances.json`` (``images``, ``annotations`` with
``[x, y, w, h]`` boxes and ``iscrowd``, ``categories`` with COCO's ids) and ``captions.json``
(several captions per image), next to a folder of JPEG images. Each category is drawn as a
coloured shape where its box is: dog = blue rectangle, cat = green ellipse, bird = yellow
triangle, frisbee = red disc, person = magenta bar. The frisbee is the spurious feature: it is in
75 % of the dog images and 15 % of the others.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

CATEGORIES = [{"id": 1, "name": "person", "supercategory": "person"},
              {"id": 16, "name": "bird", "supercategory": "animal"},
              {"id": 17, "name": "cat", "supercategory": "animal"},
              {"id": 18, "name": "dog", "supercategory": "animal"},
              {"id": 34, "name": "frisbee", "supercategory": "sports"}]
CAT_ID = {c["name"]: c["id"] for c in CATEGORIES}
COLOURS = {"dog": (40, 60, 220), "cat": (30, 200, 60), "bird": (240, 220, 20), "frisbee": (230, 20, 20),
           "person": (220, 40, 220)}
WIDTH, HEIGHT = 96, 72
CAPTIONS = ["a {} sitting on the grass", "a photo of a {}", "two {}s in a park", "the {} looks at the camera"]


def draw(drawer: ImageDraw.ImageDraw, name: str, box: list[float]) -> None:
    x0, y0, x1, y1 = box
    colour = COLOURS[name]
    if name == "cat":
        drawer.ellipse([x0, y0, x1 - 1, y1 - 1], fill=colour)
    elif name == "bird":
        drawer.polygon([(x0, y1 - 1), ((x0 + x1) / 2, y0), (x1 - 1, y1 - 1)], fill=colour)
    elif name == "frisbee":
        drawer.ellipse([x0, y0, x1 - 1, y1 - 1], fill=colour)
    else:
        drawer.rectangle([x0, y0, x1 - 1, y1 - 1], fill=colour)


def make_coco(root: Path, *, n_per_class: int = 150, seed: int = 0) -> dict[str, Path]:
    """Write ``root/instances.json``, ``root/captions.json`` and ``root/images/*.jpg``; returns the paths."""
    rng = np.random.default_rng(seed)
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    images, anns, caps = [], [], []
    plan = []
    for label in ("dog", "cat", "bird"):
        for _ in range(n_per_class):
            p = 0.75 if label == "dog" else 0.15
            plan.append((label, [label] + (["frisbee"] if rng.random() < p else [])))
    plan += [(None, ["person"])] * 6 + [(None, ["dog", "cat"])] * 4  # skipped: no label / two labels
    order = rng.permutation(len(plan))
    ann_id = 1000
    cap_id = 5000
    for k, pos in enumerate(order):
        label, objects = plan[pos]
        image_id = 100 + 7 * k
        name = f"{image_id:012d}.jpg"
        img = Image.new("RGB", (WIDTH, HEIGHT), (90, 90, 90))
        d = ImageDraw.Draw(img)
        # object positions: the left half and the right half, so boxes do not overlap
        slots = [(4, 8, 44, 64), (52, 8, 92, 64)]
        for j, obj in enumerate(objects):
            sx0, sy0, sx1, sy1 = slots[j % 2]
            if obj == "frisbee":
                w = h = int(rng.integers(14, 22))
            else:
                w, h = int(rng.integers(24, 38)), int(rng.integers(24, 50))
            x = int(rng.integers(sx0, sx1 - w + 1))
            y = int(rng.integers(sy0, sy1 - h + 1))
            draw(d, obj, [x, y, x + w, y + h])
            anns.append({"id": ann_id, "image_id": image_id, "category_id": CAT_ID[obj], "bbox": [x, y, w, h],
                         "area": float(w * h), "iscrowd": 0, "segmentation": []})
            ann_id += 3
        img.save(images_dir / name, quality=92)
        images.append({"id": image_id, "file_name": name, "width": WIDTH, "height": HEIGHT, "license": 1})
        for t in rng.permutation(len(CAPTIONS))[: 2 + k % 2]:
            word = label or objects[0]
            caps.append({"id": cap_id, "image_id": image_id, "caption": CAPTIONS[t].format(word)})
            cap_id += 1
    instances = {"info": {"description": "ravl test fixture"}, "licenses": [], "images": images,
                 "annotations": anns, "categories": CATEGORIES}
    captions = {"info": {}, "licenses": [], "images": images, "annotations": caps}
    (root / "instances.json").write_text(json.dumps(instances))
    (root / "captions.json").write_text(json.dumps(captions))
    return {"instances": root / "instances.json", "captions": root / "captions.json", "images": images_dir}


@pytest.fixture(scope="session")
def coco_raw(tmp_path_factory) -> dict[str, Path]:
    """The raw COCO fixture (do not modify it; copy what a test changes)."""
    return make_coco(tmp_path_factory.mktemp("coco-raw"))


@pytest.fixture(scope="session")
def coco_pool(coco_raw, tmp_path_factory) -> Path:
    """The COCO fixture converted by ``convert_coco`` (classes dog, cat, bird)."""
    from ravl.data.coco import convert_coco

    out = tmp_path_factory.mktemp("coco-pool") / "pool"
    convert_coco(coco_raw["instances"], coco_raw["images"], out, captions_json=coco_raw["captions"],
                 label_categories=["dog", "cat", "bird"], split="train", progress=False)
    return out


def make_plain_dataset(root: Path, n: int = 6, *, size=(64, 48), with_attributes: bool = False) -> Path:
    """A dataset folder without ``boxes``: coloured blocks on a grey background, PNG."""
    from ravl.data.dataset import write_metadata

    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        img = Image.new("RGB", size, (128, 128, 128))
        d = ImageDraw.Draw(img)
        w, h = size
        d.rectangle([0, 0, w // 2 - 1, h // 2 - 1], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        d.ellipse([w // 2, h // 2, w - 1, h - 1], fill=(250, 10, 10))
        img.save(root / "images" / f"{i:03d}.png")
        row = {"file_name": f"images/{i:03d}.png", "label": "dog" if i % 2 else "cat", "caption": "a photo",
               "split": "val" if i < n // 2 else "test"}
        if with_attributes:
            row["region_attributes"] = ["dog" if i % 2 else "cat", "empty", "empty", "red"]
        rows.append(row)
    write_metadata(root, rows)
    return root


@pytest.fixture
def plain_factory():
    """:func:`make_plain_dataset` (test modules cannot import this conftest under --import-mode=importlib)."""
    return make_plain_dataset
