"""A tiny captioned dataset folder built in memory (no network)."""

from __future__ import annotations

import pytest


def write_caption_folder(root, n: int = 8, size: int = 32):
    """``n`` coloured-square images; the test split holds the odd ones; image 1 has extra captions."""
    from PIL import Image

    from ravl.data.dataset import write_metadata

    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 20)}
    names = list(colours)
    rows = []
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = names[i % len(names)]
        img = Image.new("RGB", (size, size), (128, 128, 128))
        img.paste(colours[c], (4 + i, 4, 20 + i, 20))
        fn = f"images/{i:03d}.png"
        img.save(root / fn)
        row = {"file_name": fn, "caption": f"a {c} square", "label": c, "split": "test" if i % 2 else "train"}
        if i == 1:
            row["captions"] = [f"a {c} square", "a small square on grey", "a coloured block"]
        rows.append(row)
    write_metadata(root, rows)
    return root


@pytest.fixture()
def caption_folder(tmp_path):
    return write_caption_folder(tmp_path / "caps")


def write_object_folder(root, n: int = 6, size: int = 32):
    """``n`` images: a grey block (region 0, 'nine'); the even ones also a red square (region 3),
    named in their 'caption' (their second caption, in 'captions', does not name it)."""
    import numpy as np
    from PIL import Image

    from ravl.data.dataset import write_metadata

    (root / "images").mkdir(parents=True, exist_ok=True)
    h = size // 2
    rows = []
    for i in range(n):
        a = np.full((size, size, 3), 30, dtype=np.uint8)
        a[2:h - 2, 2 + i % 3:h - 2] = 200
        attrs = ["nine", "empty", "empty", "empty"]
        cap = "the number is a nine"
        if i % 2 == 0:
            a[h + 2:size - 2, h + 2:size - 2] = (240, 20, 20)
            attrs[3] = "red_square"
            cap += " with a red square"
        Image.fromarray(a).save(root / f"images/{i:03d}.png")
        rows.append({"file_name": f"images/{i:03d}.png", "caption": cap, "label": "nine", "split": "test",
                     "captions": [f"image {i} of a nine"],
                     "boxes": [[0, 0, h, h], [h, 0, size, h], [0, h, h, size], [h, h, size, size]],
                     "region_attributes": attrs})
    write_metadata(root, rows)
    return root


@pytest.fixture()
def object_folder(tmp_path):
    return write_object_folder(tmp_path / "objects")
