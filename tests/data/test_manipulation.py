"""Object removal / pasting: pixels change inside the box only, captions follow, records are written."""

import json

import numpy as np
import pytest
from PIL import Image

from ravl.data.dataset import load_dataset, write_metadata
from ravl.data.digits import DIGIT_CLASSES
from ravl.data.manipulation import (
    add_mention,
    fill_region,
    manipulate_dataset,
    paste_object,
    remove_mention,
    remove_object,
)
from ravl.data.synthetic import CAPTION_TEMPLATES
from ravl.exceptions import DatasetError, InvalidParameterError


def _scene(seed=0, size=32):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)  # dark noisy background
    a[8:16, 8:16] = (250, 10, 10)  # the object
    return a


@pytest.mark.parametrize("method", ["ring", "diffuse"])
def test_fill_changes_only_the_box(method):
    a = _scene()
    box = [8, 8, 16, 16]
    out = fill_region(a, box, method=method)
    assert out.shape == a.shape and out.dtype == a.dtype
    outside = np.ones(a.shape[:2], dtype=bool)
    outside[8:16, 8:16] = False
    assert np.array_equal(out[outside], a[outside])  # bit-identical outside
    assert (out[8:16, 8:16] != a[8:16, 8:16]).any(axis=-1).all()  # every inside pixel changed
    # filled from the surroundings: no trace of the red object, colours within the background's range
    assert out[8:16, 8:16, 0].max() < 60


def test_ring_fill_is_the_mean_of_the_ring():
    a = np.zeros((10, 10), dtype=np.float64)
    a[2:8, 2:8] = 5.0
    a[3:7, 3:7] = 100.0
    out = fill_region(a, [3, 3, 7, 7], ring=1)
    assert np.allclose(out[3:7, 3:7], 5.0)  # the ring of width 1 around the box is all 5
    with pytest.raises(InvalidParameterError, match="whole"):
        fill_region(a, [0, 0, 10, 10])
    with pytest.raises(InvalidParameterError, match="'method' parameter"):
        fill_region(a, [3, 3, 7, 7], method="opencv")


def test_remove_and_paste_objects():
    img = Image.fromarray(_scene())
    removed = np.asarray(remove_object(img, [8, 8, 16, 16], method="diffuse"))
    assert removed[8:16, 8:16, 0].max() < 60
    target = Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8))
    pasted = np.asarray(paste_object(target, img, [8, 8, 16, 16], [20, 20, 28, 28]))
    assert (pasted[20:28, 20:28] == (250, 10, 10)).all()
    mask = np.ones((32, 32), dtype=bool)
    mask[20:28, 20:28] = False
    assert (pasted[mask] == 0).all()
    # a crop of another size is resized into the box
    resized = np.asarray(paste_object(target, img, [8, 8, 16, 16], [0, 0, 4, 4]))
    assert (resized[0:4, 0:4, 0] > 200).all() and (resized[4:, :] == 0).all()


def test_caption_edits():
    assert remove_mention("a dog with a frisbee on the grass", "frisbee") == "a dog on the grass"
    assert remove_mention("A frisbee and a dog.", "frisbee") == "a dog."
    assert remove_mention("two dogs playing with frisbees", ["frisbee", "disc"]) == "two dogs playing"
    assert remove_mention("the number is a nine with a red square and a ring", "red_square") == \
        "the number is a nine with a ring"
    assert remove_mention("a dog with a frisbee and a ball", "frisbee") == "a dog with a ball"
    assert remove_mention("a dog and a frisbee and a ball", "frisbee") == "a dog and a ball"
    assert remove_mention("a dog", "cat") == "a dog"
    assert add_mention("the number is a nine", "red_square") == "the number is a nine with a red square"
    assert add_mention("a nine with a ring.", "red_square") == "a nine with a ring and a red square"


@pytest.mark.parametrize("template", CAPTION_TEMPLATES)
@pytest.mark.parametrize("digit", DIGIT_CLASSES)
def test_removing_a_mention_gives_the_caption_of_the_scene_without_it(template, digit):
    # the edited caption of a decorrelating pair / an ODmAP query must be the caption the builder
    # writes for the scene without the object: the digit word ("a four" ends in a determiner) and
    # the phrasing ("with a ring", not "and a ring") stay
    plain = template.format(digit)
    a_only, b_only = add_mention(plain, "red_square"), add_mention(plain, "ring")
    both = add_mention(a_only, "ring")
    assert remove_mention(a_only, "red square") == plain
    assert remove_mention(both, "red square") == b_only
    assert remove_mention(both, "ring") == a_only


def _folder(tmp_path):
    root = tmp_path / "src"
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(4):
        a = np.full((32, 32, 3), 40, dtype=np.uint8)
        attrs = ["empty", "empty", "empty", "empty"]
        a[0:16, 0:16] = 200  # a "digit" region
        attrs[0] = "nine"
        if i < 2:  # images 0, 1 show the red square in the bottom-right quadrant
            a[16:32, 16:32] = (250, 0, 0)
            attrs[3] = "red_square"
        Image.fromarray(a).save(root / f"images/{i}.png")
        cap = "the number is a nine" + (" with a red square" if i < 2 else "")
        rows.append({"file_name": f"images/{i}.png", "caption": cap, "label": "nine", "split": "test",
                     "boxes": [[0, 0, 16, 16], [16, 0, 32, 16], [0, 16, 16, 32], [16, 16, 32, 32]],
                     "region_attributes": attrs})
    write_metadata(root, rows)
    return load_dataset(root)


def test_manipulate_dataset_remove_records(tmp_path):
    ds = _folder(tmp_path)
    res = manipulate_dataset(ds, tmp_path / "removed", object="red_square", operation="remove", progress=False)
    assert res.n_images == 2 and res.n_skipped == 2
    out = load_dataset(tmp_path / "removed")
    rows = [json.loads(line) for line in (tmp_path / "removed/metadata.jsonl").read_text().splitlines()]
    for i, (r, row) in enumerate(zip(out, rows)):
        m = row["manipulation"]
        assert m["op"] == "remove" and m["object"] == "red_square" and m["source_file"] == f"images/{i}.png"
        assert m["boxes"] == [[16, 16, 32, 32]] and m["fill"] == "ring"
        assert m["caption_before"] == "the number is a nine with a red square"
        assert r.caption == "the number is a nine" and r.region_attributes[3] == "empty"
        before = np.asarray(Image.open(ds[i].path).convert("RGB"))
        after = np.asarray(Image.open(r.path).convert("RGB"))
        assert not (after[16:32, 16:32] == before[16:32, 16:32]).all(axis=-1).any()
        assert np.array_equal(after[:16], before[:16]) and np.array_equal(after[16:, :16], before[16:, :16])
    with pytest.raises(DatasetError, match="already holds"):
        manipulate_dataset(ds, tmp_path / "removed", object="red_square", progress=False)
    with pytest.raises(DatasetError, match="nothing to remove"):
        manipulate_dataset(ds, tmp_path / "none", object="ring", progress=False)


def test_manipulate_dataset_paste_records(tmp_path):
    ds = _folder(tmp_path)
    res = manipulate_dataset(ds, tmp_path / "pasted", object="red_square", operation="paste", random_state=0,
                             progress=False)
    assert res.n_images == 2
    rows = [json.loads(line) for line in (tmp_path / "pasted/metadata.jsonl").read_text().splitlines()]
    out = load_dataset(tmp_path / "pasted")
    for r, row in zip(out, rows):
        m = row["manipulation"]
        assert m["op"] == "paste" and m["donor_file"] in ("images/0.png", "images/1.png")
        assert m["donor_box"] == [16, 16, 32, 32]
        (box,) = m["boxes"]
        j = [list(b) for b in r.boxes].index(box)
        assert r.region_attributes[j] == "red_square"
        assert r.caption == "the number is a nine with a red square"
        src = np.asarray(Image.open(ds.root / m["source_file"]).convert("RGB"))
        after = np.asarray(Image.open(r.path).convert("RGB"))
        x0, y0, x1, y1 = box
        assert (after[y0:y1, x0:x1] == (250, 0, 0)).all()
        mask = np.ones((32, 32), dtype=bool)
        mask[y0:y1, x0:x1] = False
        assert np.array_equal(after[mask], src[mask])
