"""Tests of the dataset folder format: loader, validator, region views (ravl.data.dataset)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ravl.data import (
    CLASSES_FILE,
    DEFAULT_GRID,
    ImageRecord,
    RegionDataset,
    RegionTable,
    grid_boxes,
    load_dataset,
    parse_grid,
    write_classes,
    write_metadata,
)
from ravl.exceptions import DatasetError, DatasetValidationError

DOC = Path(__file__).resolve().parents[2] / "docs" / "dataset-format.md"


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def save_image(path: Path, size=(56, 56), mode="RGB", color=0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def make_folder(root: Path, rows, *, sizes=None, classes=None, images=True) -> Path:
    """Write ``rows`` (dicts, or raw strings for raw lines) and a 56x56 image for each file_name."""
    root.mkdir(parents=True, exist_ok=True)
    sizes = sizes or {}
    lines = []
    for row in rows:
        lines.append(row if isinstance(row, str) else json.dumps(row))
        if images and isinstance(row, dict) and isinstance(row.get("file_name"), str):
            p = root / row["file_name"]
            if not p.exists() and ".." not in row["file_name"] and not row["file_name"].startswith("/"):
                save_image(p, sizes.get(row["file_name"], (56, 56)))
    (root / "metadata.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    if classes is not None:
        (root / CLASSES_FILE).write_text("".join(c + "\n" for c in classes), encoding="utf-8")
    return root


def good_rows(n=6):
    labels = ["nine", "one", "zero"]
    return [{"file_name": f"images/{i:03d}.png", "caption": f"the digit {labels[i % 3]}", "label": labels[i % 3],
             "split": ["train", "train", "val", "test"][i % 4],
             "region_attributes": [labels[i % 3], "empty", "empty", "red_square" if i % 2 else "empty"]}
            for i in range(n)]


def problems_of(path, **kw) -> list[str]:
    with pytest.raises(DatasetValidationError) as info:
        load_dataset(path, **kw)
    err = info.value
    assert err.problems, "a validation error must carry its problems"
    assert "Traceback" not in str(err)
    return err.problems


def find(problems: list[str], prefix: str) -> str:
    hits = [p for p in problems if p.startswith(prefix)]
    assert hits, f"no problem starting with {prefix!r} in:\n" + "\n".join(problems)
    return hits[0]


# --------------------------------------------------------------------------------------------
# good paths
# --------------------------------------------------------------------------------------------

def test_grid_boxes_row_major():
    assert grid_boxes(56, 56) == [(0.0, 0.0, 28.0, 28.0), (28.0, 0.0, 56.0, 28.0),
                                  (0.0, 28.0, 28.0, 56.0), (28.0, 28.0, 56.0, 56.0)]
    boxes = grid_boxes(90, 60, (3, 2))
    assert len(boxes) == 6 and boxes[-1] == (45.0, 40.0, 90.0, 60.0)


def test_rows_without_boxes_get_the_grid(tmp_path):
    root = make_folder(tmp_path / "d", good_rows(4), sizes={"images/001.png": (90, 60)})
    ds = load_dataset(root)
    assert ds.grid == DEFAULT_GRID
    r0, r1 = ds[0], ds[1]
    assert isinstance(r0, ImageRecord) and r0.boxes_from_grid
    assert r0.boxes == tuple(grid_boxes(56, 56))
    assert (r1.width, r1.height) == (90, 60) and r1.boxes == tuple(grid_boxes(90, 60))
    assert r0.line == 1 and r0.path == (root / "images/000.png").resolve()
    rows = [{k: v for k, v in r.items() if k != "region_attributes"} for r in good_rows(2)]
    ds3 = load_dataset(make_folder(tmp_path / "e", rows), grid=(3, 3))
    assert ds3.grid == (3, 3) and len(ds3[0].boxes) == 9
    assert ds3.regions_per_image.tolist() == [9, 9]


def test_explicit_boxes_any_number_any_size_with_float_tolerance(tmp_path):
    many = [[x, y, x + 10, y + 5] for x in range(0, 300, 10) for y in range(0, 20, 5)]  # 120 boxes
    rows = [
        {"file_name": "wide.jpg", "label": "a", "boxes": many},
        {"file_name": "tiny.png", "label": "b", "boxes": [[0, 0, 1, 1]]},
        {"file_name": "f.png", "label": "a", "boxes": [[0.5, 0.25, 56.0000001, 27.9], [-1e-7, 28, 10, 56]]},
    ]
    root = make_folder(tmp_path / "d", rows, sizes={"wide.jpg": (300, 20), "tiny.png": (1, 1)})
    ds = load_dataset(root)
    assert [len(r.boxes) for r in ds] == [120, 1, 2]
    assert not any(r.boxes_from_grid for r in ds)
    assert (ds[0].width, ds[0].height) == (300, 20) and (ds[1].width, ds[1].height) == (1, 1)
    assert ds[2].boxes == ((0.5, 0.25, 56.0, 27.9), (0.0, 28.0, 10.0, 56.0))  # clipped into the image
    assert ds.regions_per_image.dtype == np.int64 and ds.regions_per_image.tolist() == [120, 1, 2]


def test_class_order_explicit_beats_classes_txt_beats_sorted_labels(tmp_path):
    rows = good_rows(6)
    root = make_folder(tmp_path / "d", rows)
    assert load_dataset(root).classes == ("nine", "one", "zero")  # sorted labels
    write_classes(root, ["zero", "one", "two", "nine"])             # a class without images is fine
    ds = load_dataset(root)
    assert ds.classes == ("zero", "one", "two", "nine")
    assert ds.label_indices.tolist() == [3, 1, 0, 3, 1, 0]
    ds = load_dataset(root, classes=["one", "nine", "zero"])
    assert ds.classes == ("one", "nine", "zero")
    assert ds.label_indices.tolist() == [1, 0, 2, 1, 0, 2]


def test_classes_txt_skips_blank_lines_and_spaces(tmp_path):
    root = make_folder(tmp_path / "d", good_rows(3))
    (root / CLASSES_FILE).write_text("\n zero \n\none\nnine\n\n", encoding="utf-8")
    assert load_dataset(root).classes == ("zero", "one", "nine")


def test_label_indices_and_labels(tmp_path):
    rows = good_rows(3)
    del rows[1]["label"]
    rows[2]["label"] = None  # null counts as absent
    ds = load_dataset(make_folder(tmp_path / "d", rows))
    assert ds.labels == ["nine", None, None]
    li = ds.label_indices
    assert li.dtype == np.int64 and li.tolist() == [0, -1, -1]


def test_subset_by_split_and_indices_keeps_classes(tmp_path):
    root = make_folder(tmp_path / "d", good_rows(8), classes=["zero", "one", "nine"])
    ds = load_dataset(root)
    train = ds.subset("train")
    assert len(train) == 4 and all(r.split == "train" for r in train)
    assert train.classes == ds.classes and train.grid == ds.grid and train.root == ds.root
    assert [r.index for r in train] == [0, 1, 2, 3]           # renumbered
    assert [r.line for r in train] == [1, 2, 5, 6]            # still points at the file
    assert train.label_indices.tolist() == [2, 1, 1, 0]
    assert len(ds.subset(["val", "test"])) == 4
    picked = ds.subset(indices=[5, 0])
    assert [r.line for r in picked] == [6, 1]
    assert [r.line for r in ds.subset(split="test", indices=[3, 2, 7])] == [4, 8]
    mask = np.array([True, False] * 4)
    assert [r.line for r in ds.subset(indices=mask)] == [1, 3, 5, 7]
    assert [r.line for r in ds[2:4]] == [3, 4]
    assert len(load_dataset(make_folder(tmp_path / "e", good_rows(2))).subset("test")) == 0  # empty, not an error
    with pytest.raises(ValueError, match=r"The 'split' parameter of RegionDataset.subset must be one of"):
        ds.subset("validation")
    with pytest.raises(ValueError, match="positions in"):
        ds.subset(indices=[8])


def test_split_filter_on_load(tmp_path):
    root = make_folder(tmp_path / "d", good_rows(8))
    ds = load_dataset(root, split="val")
    assert len(ds) == 2 and ds.classes == ("nine", "one", "zero")  # classes from the whole file
    assert [r.line for r in ds] == [3, 7]
    assert len(load_dataset(root, split=("val", "test"))) == 4


def test_region_table_flat_view(tmp_path):
    rows = [
        {"file_name": "a.png", "label": "x", "region_attributes": ["x", "empty", "empty", "sq"]},
        {"file_name": "b.png", "label": "y", "boxes": [[0, 0, 10, 10], [5, 5, 20, 30]],
         "region_attributes": ["y", "sq"]},
        {"file_name": "c.png", "label": "x", "boxes": [[1, 2, 3, 4]], "region_attributes": ["x"]},
    ]
    ds = load_dataset(make_folder(tmp_path / "d", rows))
    t = ds.region_table()
    assert isinstance(t, RegionTable) and len(t) == 7
    assert t.image_index.dtype == np.int64 and t.image_index.tolist() == [0, 0, 0, 0, 1, 1, 2]
    assert t.region_index.dtype == np.int64 and t.region_index.tolist() == [0, 1, 2, 3, 0, 1, 0]
    assert t.boxes.dtype == np.float64 and t.boxes.shape == (7, 4)
    np.testing.assert_array_equal(t.boxes[1], [28, 0, 56, 28])
    np.testing.assert_array_equal(t.boxes[5], [5, 5, 20, 30])
    assert t.attributes == ["x", "empty", "empty", "sq", "y", "sq", "x"]
    sub = ds.subset(indices=[2, 1]).region_table()
    assert sub.image_index.tolist() == [0, 1, 1] and sub.attributes == ["x", "y", "sq"]
    # attributes only when every image has them
    rows[2].pop("region_attributes")
    assert load_dataset(make_folder(tmp_path / "e", rows)).region_table().attributes is None
    empty = ds.subset(indices=[]).region_table()
    assert empty.boxes.shape == (0, 4) and len(empty) == 0


def test_load_image_returns_rgb_for_any_mode(tmp_path):
    root = tmp_path / "d"
    save_image(root / "gray.png", (30, 20), "L", 128)
    save_image(root / "rgba.png", (8, 8), "RGBA", (255, 0, 0, 0))
    pal = Image.new("P", (5, 7))
    pal.info["transparency"] = 0
    pal.save(root / "pal.png")
    save_image(root / "photo.jpg", (64, 48), "RGB", (10, 200, 30))
    rows = [{"file_name": n} for n in ("gray.png", "rgba.png", "pal.png", "photo.jpg")]
    ds = load_dataset(make_folder(root, rows))
    for i, size in enumerate([(30, 20), (8, 8), (5, 7), (64, 48)]):
        im = ds.load_image(i)
        assert im.mode == "RGB" and im.size == size == (ds[i].width, ds[i].height)
    assert ds.load_image(0).getpixel((0, 0)) == (128, 128, 128)


def test_extra_keys_blank_lines_and_metadata_path(tmp_path):
    rows = ["", json.dumps({"file_name": "a.png", "label": "x", "id": 7, "source": {"any": ["thing"]}}), "   ",
            json.dumps({"file_name": "sub/dir/b.png", "label": "y", "caption": "c"}), ""]
    root = tmp_path / "d"
    save_image(root / "a.png")
    save_image(root / "sub" / "dir" / "b.png")
    make_folder(root, rows)
    ds = load_dataset(root)
    assert [r.line for r in ds] == [2, 4] and ds[1].file_name == "sub/dir/b.png"
    ds2 = load_dataset(root / "metadata.jsonl")  # the file itself works too
    assert ds2.root == ds.root and len(ds2) == 2


def test_check_images_false_reads_only_headers(tmp_path):
    root = tmp_path / "d"
    save_image(root / "ok.png")
    Image.effect_noise((56, 56), 50).save(root / "full.png")
    data = (root / "full.png").read_bytes()
    (root / "trunc.png").write_bytes(data[: len(data) - 200])  # header intact, data truncated
    make_folder(root, [{"file_name": "ok.png"}, {"file_name": "trunc.png"}])
    assert len(load_dataset(root, check_images=False)) == 2
    p = find(problems_of(root), "metadata.jsonl line 2, field 'file_name'")
    assert "trunc.png" in p and "re-export it" in p


def test_write_metadata_roundtrip_with_numpy_values(tmp_path):
    root = tmp_path / "d"
    save_image(root / "a.png")
    out = write_metadata(root, [{"file_name": "a.png", "label": "x",
                                 "boxes": np.array([[0, 0, 28, 28]], dtype=np.int64), "split": "train",
                                 "region_attributes": ["x"], "score": np.float32(0.5)}])
    assert out == root / "metadata.jsonl"
    write_classes(root, ["x", "z"])
    ds = load_dataset(root, require_fields=("label",))
    assert ds[0].boxes == ((0.0, 0.0, 28.0, 28.0),) and ds.classes == ("x", "z")
    assert write_metadata(root / "other.jsonl", []).name == "other.jsonl"


def test_records_and_dataset_are_immutable(tmp_path):
    ds = load_dataset(make_folder(tmp_path / "d", good_rows(2)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds[0].label = "one"
    with pytest.raises(AttributeError):
        ds.classes = ("a",)
    assert isinstance(ds.records, tuple) and isinstance(ds.classes, tuple)
    assert list(iter(ds)) == list(ds.records)
    assert "n_images=2" in repr(ds)


def test_region_dataset_constructor_checks_labels(tmp_path):
    ds = load_dataset(make_folder(tmp_path / "d", good_rows(3)))
    rebuilt = RegionDataset(ds.root, reversed(ds.records), ds.classes)
    assert [r.index for r in rebuilt] == [0, 1, 2] and rebuilt[0].line == 3
    with pytest.raises(DatasetError, match="not among the classes"):
        RegionDataset(ds.root, ds.records, ["nine"])


def test_parameter_validation_messages(tmp_path):
    root = make_folder(tmp_path / "d", good_rows(2))
    with pytest.raises(ValueError, match=r"The 'grid\[0\]' parameter of load_dataset must be an int in \[1, inf\)"):
        load_dataset(root, grid=(0, 2))
    with pytest.raises(ValueError, match=r"The 'split' parameter of load_dataset must be one of"):
        load_dataset(root, split="validation")
    with pytest.raises(ValueError, match=r"The 'require_fields' parameter of load_dataset must be one of"):
        load_dataset(root, require_fields=("captions",))
    with pytest.raises(ValueError, match="must not repeat a name"):
        load_dataset(root, classes=["a", "a"])
    with pytest.raises(ValueError, match="list of class-name strings"):
        load_dataset(root, classes="nine")
    assert parse_grid("3x2") == (3, 2) and parse_grid(" 4X4 ") == (4, 4) and parse_grid((1, 5)) == (1, 5)
    with pytest.raises(ValueError, match="'ROWSxCOLS' like '2x2'"):
        parse_grid("2by2")


# --------------------------------------------------------------------------------------------
# bad inputs: every message names the place (file, line, field) and says how to fix it
# --------------------------------------------------------------------------------------------

def test_folder_missing(tmp_path):
    (tmp_path / "my-dataset").mkdir()
    [p] = problems_of(tmp_path / "my-datset")
    assert str(tmp_path / "my-datset") in p and "does not exist" in p
    assert "pass the folder that holds metadata.jsonl" in p and "did you mean" in p and "my-dataset" in p


def test_metadata_missing_suggests_creating_it(tmp_path):
    root = tmp_path / "d"
    save_image(root / "a.png")
    (root / "metadata.csv").write_text("file_name,text\na.png,hi\n")
    [p] = problems_of(root)
    assert p.startswith(str(root / "metadata.jsonl")) and "not found" in p
    assert "create it with one JSON object per image" in p and "docs/dataset-format.md" in p
    assert "metadata.csv" in p  # points at the file that is there


def test_empty_file(tmp_path):
    root = make_folder(tmp_path / "d", [])
    [p] = problems_of(root)
    assert p.startswith("metadata.jsonl: is empty") and "one JSON object per image" in p
    (root / "metadata.jsonl").write_text("\n  \n\n")
    [p] = problems_of(root)
    assert "is empty" in p


def test_invalid_json_line(tmp_path):
    root = make_folder(tmp_path / "d", good_rows(1) + ["{'file_name': 'b.png'}", '{"file_name": "c.png",}', "[{"])
    probs = problems_of(root)
    p = find(probs, "metadata.jsonl line 2: invalid JSON")
    assert "write one JSON object per line" in p and "double quotes" in p
    assert "Remove the comma" in find(probs, "metadata.jsonl line 3: invalid JSON")
    assert "JSON array" in find(probs, "metadata.jsonl line 4: invalid JSON")


def test_invalid_utf8_line(tmp_path):
    root = make_folder(tmp_path / "d", good_rows(1))
    with open(root / "metadata.jsonl", "ab") as fh:
        fh.write(b'{"file_name": "caf\xe9.png"}\n')
    p = find(problems_of(root), "metadata.jsonl line 2:")
    assert "not UTF-8" in p and "save the file as UTF-8" in p


def test_row_not_an_object(tmp_path):
    root = make_folder(tmp_path / "d", good_rows(1) + ['["images/001.png", "nine"]', "42"])
    probs = problems_of(root)
    p = find(probs, "metadata.jsonl line 2:")
    assert "expected a JSON object" in p and "got a list" in p and '"file_name":' in p
    assert "got a number 42" in find(probs, "metadata.jsonl line 3:")


def test_missing_file_name_names_the_misspelled_key(tmp_path):
    root = make_folder(tmp_path / "d", good_rows(1) + [{"filename": "b.png", "label": "nine"}, {"label": "x"}])
    probs = problems_of(root)
    p = find(probs, "metadata.jsonl line 2, field 'file_name': missing")
    assert "rename it to 'file_name'" in p and "relative to the dataset folder" in p
    assert "add the image path" in find(probs, "metadata.jsonl line 3, field 'file_name': missing")


def test_image_file_missing_suggests_close_name(tmp_path):
    root = tmp_path / "d"
    save_image(root / "images" / "Digit_01.png")
    save_image(root / "images" / "0001.jpg")
    make_folder(root, [{"file_name": "images/digit_01.png"}, {"file_name": "nowhere/x.png"},
                       {"file_name": "images/0001.png"}, {"file_name": "images/0002.jpg"}], images=False)
    probs = problems_of(root)
    p = find(probs, "metadata.jsonl line 1, field 'file_name'")
    assert "not found" in p and "did you mean 'images/Digit_01.png'" in p and "fix the path" in p
    p = find(probs, "metadata.jsonl line 2, field 'file_name'")
    assert "'nowhere' does not exist" in p
    assert "did you mean 'images/0001.jpg'" in find(probs, "metadata.jsonl line 3, field 'file_name'")
    p = find(probs, "metadata.jsonl line 4, field 'file_name'")
    assert "not found" in p and "did you mean" not in p  # no guess from a merely similar number


def test_image_corrupt(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    (root / "bad.png").write_bytes(b"this is not a png")
    (root / "folder.png").mkdir()
    make_folder(root, [{"file_name": "bad.png"}, {"file_name": "folder.png"}], images=False)
    probs = problems_of(root)
    p = find(probs, "metadata.jsonl line 1, field 'file_name'")
    assert "cannot read image \"bad.png\"" in p and "re-export it as PNG or JPEG, or remove the row" in p
    assert "is a folder, not an image" in find(probs, "metadata.jsonl line 2, field 'file_name'")


@pytest.mark.parametrize("field, value, expected", [
    ("caption", 3, "must be a string, got a number 3; write the caption text in quotes"),
    ("label", 9, "must be a class name string, got a number 9; write the class name in quotes"),
    ("split", ["train"], "must be a string, got a list [\"train\"]; use one of 'train', 'val', 'test'"),
    ("boxes", "0 0 28 28", "must be a list of [x0, y0, x1, y1] pixel boxes, got a string"),
    ("region_attributes", ["nine", 0, "a", "b"], "must be a list of strings (one per region), found a number 0"),
])
def test_wrong_types(tmp_path, field, value, expected):
    row = good_rows(1)[0]
    row[field] = value
    p = find(problems_of(make_folder(tmp_path / "d", [row])), f"metadata.jsonl line 1, field '{field}'")
    assert expected in p


@pytest.mark.parametrize("boxes, field, expected", [
    ([[0, 0, 28]], "'boxes'[0]", "expected [x0, y0, x1, y1] (a list of 4 numbers), got a list [0, 0, 28]"),
    ([[0, 0, 28, 28], [0, "0", 1, 1]], "'boxes'[1]", "has \"0\", which is not a finite number; write four numbers"),
    ([[0, 0, 28, 28], [0, 0, True, 1]], "'boxes'[1]", "not a finite number"),
    ([0, 0, 28, 28], "'boxes'", "is a single box, but 'boxes' is a list of boxes; wrap it: [[0, 0, 28, 28]]"),
    ([], "'boxes'", "is an empty list, so the image would have no region; give at least one"),
])
def test_boxes_malformed(tmp_path, boxes, field, expected):
    row = {"file_name": "a.png", "boxes": boxes}
    p = find(problems_of(make_folder(tmp_path / "d", [row])), f"metadata.jsonl line 1, field {field}:")
    assert expected in p


@pytest.mark.parametrize("box, reason", [
    ([30, 0, 20, 28], "has x0 >= x1;"),
    ([0, 40, 28, 30], "has y0 >= y1;"),
    ([5, 5, 5, 9], "has x0 >= x1 (zero width)"),
    ([0, 0, 57, 28], "x1 = 57 past the right edge (width 56)"),
    ([0, 30, 28, 56.5], "y1 = 56.5 past the bottom edge (height 56)"),
    ([-2, 0, 28, 28], "a negative coordinate"),
])
def test_boxes_outside_inverted_or_empty(tmp_path, box, reason):
    row = {"file_name": "a.png", "boxes": [[0, 0, 28, 28], [0, 0, 1, 1], box]}
    p = find(problems_of(make_folder(tmp_path / "d", [row])), "metadata.jsonl line 1, field 'boxes'[2]:")
    assert f"box {json.dumps(box)} " in p and reason in p
    assert "boxes are [x0, y0, x1, y1] with x0 < x1, y0 < y1 inside the 56x56 image" in p


def test_unknown_split_value(tmp_path):
    rows = good_rows(2)
    rows[1]["split"] = "validation"
    p = find(problems_of(make_folder(tmp_path / "d", rows)), "metadata.jsonl line 2, field 'split'")
    assert "unknown split \"validation\" (did you mean 'val'?)" in p and "use one of 'train', 'val', 'test'" in p


def test_label_not_in_class_list_suggests_close_match(tmp_path):
    rows = good_rows(3)
    rows[2]["label"] = "nien"
    root = make_folder(tmp_path / "d", rows, classes=["zero", "one", "nine"])
    p = find(problems_of(root), "metadata.jsonl line 3, field 'label'")
    assert "\"nien\" is not one of the 3 classes from classes.txt: 'zero', 'one', 'nine'" in p
    assert "did you mean 'nine'?" in p and "fix the label or add it to classes.txt" in p
    p = find(problems_of(root, classes=["zero", "one"]), "metadata.jsonl line 1, field 'label'")
    assert "from the classes passed" in p and "add it to the classes you passed" in p


def test_classes_txt_duplicate_and_empty(tmp_path):
    root = make_folder(tmp_path / "d", good_rows(2), classes=["nine", "one", "nine"])
    p = find(problems_of(root), "classes.txt line 3:")
    assert "'nine' is also on line 1; list each class once" in p
    (root / CLASSES_FILE).write_text("\n\n")
    p = find(problems_of(root), "classes.txt:")
    assert "holds no class name" in p and "one class per line" in p


@pytest.mark.parametrize("extra, n_attr, expected", [
    ({}, 3, "has 3 values for 4 regions (the cells of the 2x2 grid, as the row has no 'boxes'); give exactly one"),
    ({}, 9, "if the data was made for a 3x3 grid, load it with grid=(3, 3)"),
    ({"boxes": [[0, 0, 10, 10], [10, 10, 20, 20]]}, 1, "has 1 value for 2 regions (the row's boxes)"),
])
def test_region_attributes_count_mismatch(tmp_path, extra, n_attr, expected):
    row = {"file_name": "a.png", "region_attributes": ["empty"] * n_attr, **extra}
    p = find(problems_of(make_folder(tmp_path / "d", [row])), "metadata.jsonl line 1, field 'region_attributes'")
    assert expected in p and "one string per region, in the same order" in p


def test_region_attributes_follow_the_grid_option(tmp_path):
    row = {"file_name": "a.png", "region_attributes": ["e"] * 9}
    ds = load_dataset(make_folder(tmp_path / "d", [row]), grid=(3, 3))
    assert len(ds[0].region_attributes) == len(ds[0].boxes) == 9


def test_duplicate_file_name(tmp_path):
    rows = good_rows(3)
    rows[2]["file_name"] = "images/./000.png"
    p = find(problems_of(make_folder(tmp_path / "d", rows)), "metadata.jsonl line 3, field 'file_name'")
    assert "is also on line 1" in p and "merge the two rows or remove one" in p


@pytest.mark.parametrize("name, expected", [
    ("/etc/hosts", "is an absolute path; file names must be relative to the dataset folder"),
    ("C:\\data\\a.png", "is an absolute path"),
    ("../outside.png", "points outside the dataset folder; move the image inside"),
    ("images/../../outside.png", "points outside the dataset folder"),
])
def test_path_absolute_or_escaping(tmp_path, name, expected):
    save_image(tmp_path / "outside.png")
    p = find(problems_of(make_folder(tmp_path / "d", [{"file_name": name}])),
             "metadata.jsonl line 1, field 'file_name'")
    assert expected in p


def test_split_filter_leaving_zero_rows_lists_splits(tmp_path):
    rows = good_rows(4)
    rows = [r for r in rows if r["split"] != "test"]
    rows[0].pop("split")
    root = make_folder(tmp_path / "d", rows)
    [p] = problems_of(root, split="test")
    assert p.startswith("metadata.jsonl: no row has split 'test'")
    assert "'train' (1 rows), 'val' (1 rows) and 1 rows without a split" in p and "ask for one of those splits" in p
    root = make_folder(tmp_path / "e", [{"file_name": "a.png"}])
    [p] = problems_of(root, split="train")
    assert "no row has a 'split' field" in p and "\"split\": \"train\"" in p


def test_required_fields_missing(tmp_path):
    rows = good_rows(4)                      # splits: train, train, val, test
    del rows[1]["caption"]
    rows[2]["text"] = rows[2].pop("caption")
    del rows[3]["label"]
    root = make_folder(tmp_path / "d", rows)
    probs = problems_of(root, require_fields=("caption", "label"))
    assert len(probs) == 3
    p = find(probs, "metadata.jsonl line 2, field 'caption': missing, but required here")
    assert "add a \"caption\" string" in p
    assert "the row has 'text': rename it to 'caption'" in find(probs, "metadata.jsonl line 3, field 'caption'")
    assert "add a \"label\" (a class name" in find(probs, "metadata.jsonl line 4, field 'label'")
    rows[0]["caption"] = "  "
    p = find(problems_of(make_folder(tmp_path / "e", rows), require_fields=("caption",)),
             "metadata.jsonl line 1, field 'caption'")
    assert p.startswith("metadata.jsonl line 1, field 'caption': empty, but required here")
    # only the rows asked for must have the field
    assert len(load_dataset(root, split="test", require_fields="caption")) == 1
    assert [p[:40] for p in problems_of(root, split="train", require_fields=("caption",))] == [
        "metadata.jsonl line 2, field 'caption': "]


def test_every_problem_is_reported_at_once(tmp_path):
    rows = good_rows(12)
    rows[1]["split"] = "training"                          # line 2
    rows[3]["label"] = "nein"                              # line 4
    rows[4]["boxes"] = [[30, 0, 20, 28]]                   # line 5
    rows[6]["file_name"] = "images/000.png"                # line 7 duplicate
    root = make_folder(tmp_path / "d", rows, classes=["zero", "one", "nine"])
    (root / "images" / "009.png").unlink()                  # line 10 missing image
    with open(root / "metadata.jsonl", "a") as fh:
        fh.write("not json\n")                             # line 13
    with pytest.raises(DatasetValidationError) as info:
        load_dataset(root, require_fields=("label",))
    err = info.value
    heads = [re.match(r"metadata\.jsonl line (\d+)(?:, field ('[a-z_]+'))?", p).groups() for p in err.problems]
    assert heads == [("2", "'split'"), ("4", "'label'"), ("5", "'boxes'"), ("5", "'region_attributes'"),
                     ("7", "'file_name'"), ("10", "'file_name'"), ("13", None)]
    assert err.path == str(root.resolve())
    assert f"{len(err.problems)} problem(s) in dataset" in str(err)
    assert isinstance(err, DatasetError) and isinstance(err, ValueError)


# --------------------------------------------------------------------------------------------
# the documentation's examples work
# --------------------------------------------------------------------------------------------

def _code_block(lang: str, after: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(after)
    m = re.compile(rf"```{lang}\n(.*?)```", re.S).search(text, start)
    assert m, f"no ```{lang} block after {after!r} in {DOC}"
    return m.group(1)


def test_doc_example_metadata_is_valid(tmp_path):
    block = _code_block("jsonl", "## Example `metadata.jsonl`")
    root = tmp_path / "doc"
    root.mkdir()
    (root / "metadata.jsonl").write_text(block, encoding="utf-8")
    for line in block.splitlines():
        save_image(root / json.loads(line)["file_name"])
    ds = load_dataset(root)
    assert len(ds) == 4 and ds.classes == ("nine", "one")
    assert ds.regions_per_image.tolist() == [4, 4, 2, 4]
    assert ds.region_table().attributes is None  # the evaluation-only row has none


def test_doc_conversion_script_runs(tmp_path, monkeypatch, capsys):
    code = _code_block("python", "## Converting a plain image folder")
    for label, n in (("cat", 12), ("dog", 9)):
        for i in range(n):
            save_image(tmp_path / "photos" / label / f"{i}.jpg", (32, 24))
    (tmp_path / "photos" / "cat" / "notes.txt").write_text("not an image")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(DOC), "exec"), {"__name__": "__doc_example__"})
    ds = load_dataset(tmp_path / "photos", require_fields=("caption", "label"))
    assert len(ds) == 21 and ds.classes == ("cat", "dog")
    assert set(r.split for r in ds) <= {"train", "val", "test"}
    assert ds[0].caption == "a photo of a cat" and ds[0].file_name == "cat/0.jpg"
    assert "RegionDataset(" in capsys.readouterr().out
