"""Tests of ravl.data.coco: COCO instances + captions -> ravl dataset folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from ravl.cli import main
from ravl.data import load_dataset
from ravl.data.coco import CONVERSION_FILE, convert_coco, read_coco_instances
from ravl.exceptions import DatasetError, DatasetValidationError


def small_coco(root: Path) -> tuple[Path, Path, Path]:
    """Four hand-made images (100x80) with every rule exercised; returns (instances, captions, images)."""
    images = root / "imgs"
    images.mkdir(parents=True)
    entries = []
    for k, name in enumerate(["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]):
        Image.new("RGB", (100, 80), (10 * k, 0, 0)).save(images / name)
        entries.append({"id": k + 1, "file_name": name, "width": 100, "height": 80})
    cats = [{"id": 3, "name": "dog"}, {"id": 5, "name": "cat"}, {"id": 9, "name": "frisbee"}]
    anns = [
        # a.jpg: a dog, a frisbee sticking out on the right (clipped), a sub-pixel frisbee (dropped)
        {"id": 12, "image_id": 1, "category_id": 9, "bbox": [80, 10, 30.5, 20], "iscrowd": 0},
        {"id": 11, "image_id": 1, "category_id": 3, "bbox": [10.25, 20, 40, 50], "iscrowd": 0},
        {"id": 13, "image_id": 1, "category_id": 9, "bbox": [5, 5, 0.4, 8], "iscrowd": 0},
        # b.jpg: a crowd of cats
        {"id": 21, "image_id": 2, "category_id": 5, "bbox": [0, 0, 100, 40], "iscrowd": 1},
        # c.jpg: a dog and a cat (several labels)
        {"id": 31, "image_id": 3, "category_id": 3, "bbox": [0, 0, 10, 10], "iscrowd": 0},
        {"id": 32, "image_id": 3, "category_id": 5, "bbox": [20, 20, 10, 10], "iscrowd": 0},
        # d.jpg: only a frisbee (no label); e.jpg: a cat, no caption
        {"id": 41, "image_id": 4, "category_id": 9, "bbox": [0, 0, 10, 10], "iscrowd": 0},
        {"id": 51, "image_id": 5, "category_id": 5, "bbox": [50, 40, 50, 40], "iscrowd": 0},
    ]
    (root / "instances.json").write_text(json.dumps({"images": entries, "annotations": anns, "categories": cats}))
    caps = [{"id": 7, "image_id": 1, "caption": "A dog  with a frisbee. "},
            {"id": 3, "image_id": 1, "caption": "a dog playing"},
            {"id": 4, "image_id": 2, "caption": "cats on a sofa"}]
    (root / "captions.json").write_text(json.dumps({"images": entries, "annotations": caps}))
    return root / "instances.json", root / "captions.json", images


def rows_of(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


def test_conversion_rules_by_hand(tmp_path):
    inst, caps, imgs = small_coco(tmp_path)
    out = tmp_path / "out"
    summary = convert_coco(inst, imgs, out, captions_json=caps, label_categories=["dog", "cat"], split="val",
                           progress=False)
    rows = rows_of(out)
    assert rows == [
        {"file_name": "images/a.jpg", "caption": "a dog playing", "label": "dog", "split": "val",
         "boxes": [[10.25, 20, 50.25, 70], [80, 10, 100, 30]], "region_attributes": ["dog", "frisbee"],
         "coco_id": 1, "coco_captions": ["a dog playing", "A dog with a frisbee."]},
        {"file_name": "images/b.jpg", "caption": "cats on a sofa", "label": "cat", "split": "val",
         "boxes": [[0, 0, 100, 40]], "region_attributes": ["cat"], "coco_id": 2},
        {"file_name": "images/e.jpg", "label": "cat", "split": "val", "boxes": [[50, 40, 100, 80]],
         "region_attributes": ["cat"], "coco_id": 5},
    ]
    assert (out / "classes.txt").read_text() == "dog\ncat\n"
    assert (summary.n_images_in_json, summary.n_written) == (5, 3)
    assert summary.class_counts == {"dog": 1, "cat": 2}
    assert (summary.skipped_no_label, summary.skipped_several_labels, summary.skipped_crowd) == (1, 1, 0)
    assert (summary.n_boxes, summary.n_crowd_boxes, summary.n_boxes_clipped, summary.n_boxes_dropped) == (4, 1, 1, 1)
    assert summary.n_without_caption == 1 and summary.images_mode == "hardlink"
    assert json.loads((out / CONVERSION_FILE).read_text())["n_written"] == 3
    # images are hard links: no copy, same file
    assert os.path.samefile(out / "images" / "a.jpg", imgs / "a.jpg")
    # the result is a valid dataset, also for `ravl validate`
    ds = load_dataset(out, require_fields=("label", "boxes", "region_attributes"))
    assert ds.classes == ("dog", "cat") and ds[0].boxes[1] == (80.0, 10.0, 100.0, 30.0)
    assert main(["validate", str(out), "--require", "label", "boxes"]) == 0
    assert "converted 3 of 5 COCO image(s)" in summary.summary()


def test_crowd_policies_and_random_caption(tmp_path):
    inst, caps, imgs = small_coco(tmp_path)
    s = convert_coco(inst, imgs, tmp_path / "ignore", label_categories=["dog", "cat"], crowd="ignore", progress=False)
    # without its crowd box b.jpg has no cat any more
    assert [r["file_name"] for r in rows_of(tmp_path / "ignore")] == ["images/a.jpg", "images/e.jpg"]
    assert s.skipped_no_label == 2 and s.n_crowd_boxes == 0
    s = convert_coco(inst, imgs, tmp_path / "skip", label_categories=["dog", "cat"], crowd="skip_image",
                     progress=False)
    assert s.skipped_crowd == 1 and s.n_written == 2
    # "random": a seeded choice among the image's captions
    chosen = set()
    for seed in range(8):
        convert_coco(inst, imgs, tmp_path / "rnd", captions_json=caps, label_categories=["dog"], caption="random",
                     random_state=seed, progress=False)
        chosen.add(rows_of(tmp_path / "rnd")[0]["caption"])
    assert chosen == {"a dog playing", "A dog with a frisbee."}


def test_copy_and_symlink_modes_and_reconversion(tmp_path):
    inst, caps, imgs = small_coco(tmp_path)
    out = tmp_path / "out"
    s = convert_coco(inst, imgs, out, label_categories=["dog", "cat"], images="copy", progress=False)
    assert s.images_mode == "copy" and not os.path.samefile(out / "images" / "a.jpg", imgs / "a.jpg")
    # converting again with only "dog" removes the cat images (c.jpg, with a dog and a cat, is now a dog)
    s = convert_coco(inst, imgs, out, label_categories=["dog"], images="symlink", progress=False)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["a.jpg", "c.jpg"]
    assert (out / "images" / "a.jpg").is_symlink() and s.images_mode == "symlink"
    assert [r.label for r in load_dataset(out)] == ["dog", "dog"]


def test_refuses_a_folder_it_did_not_write(tmp_path):
    inst, caps, imgs = small_coco(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "metadata.jsonl").write_text("{}\n")
    with pytest.raises(DatasetError, match="already holds a metadata.jsonl not written by convert_coco"):
        convert_coco(inst, imgs, tmp_path / "mine", label_categories=["dog"], progress=False)


def test_fixture_conversion_counts(coco_raw, coco_pool):
    inst = json.loads(coco_raw["instances"].read_text())
    labels = {"dog", "cat", "bird"}
    names = {c["id"]: c["name"] for c in inst["categories"]}
    present: dict[int, set] = {im["id"]: set() for im in inst["images"]}
    for a in inst["annotations"]:
        present[a["image_id"]].add(names[a["category_id"]])
    expected = sum(len(p & labels) == 1 for p in present.values())
    conv = json.loads((coco_pool / CONVERSION_FILE).read_text())
    assert conv["n_written"] == expected == 450
    assert conv["skipped_no_label"] == 6 and conv["skipped_several_labels"] == 4
    ds = load_dataset(coco_pool, require_fields=("caption", "label", "region_attributes"))
    assert len(ds) == 450 and ds.classes == ("dog", "cat", "bird")
    assert all(r.label in r.region_attributes for r in ds)


def bad_instances(coco_raw, tmp_path) -> Path:
    doc = json.loads(coco_raw["instances"].read_text())
    doc["images"][1]["width"] = "96"
    del doc["images"][2]["file_name"]
    doc["images"][3]["id"] = doc["images"][0]["id"]
    a = doc["annotations"]
    a[0]["bbox"] = [1, 2, 3]
    a[1]["bbox"] = [1, 2, -3, 4]
    a[2]["image_id"] = 999999
    a[3]["category_id"] = 77
    a[4]["iscrowd"] = 2
    a[5]["bbox"] = [100, 2, 3, 4]
    a[6]["bbox"] = [1, "2", 3, 4]
    del a[7]["category_id"]
    doc["categories"].append({"id": 18, "name": "doggo"})
    doc["categories"].append({"id": 99, "name": "cat"})
    path = tmp_path / "instances_bad.json"
    path.write_text(json.dumps(doc))
    return path, doc


def test_every_problem_of_an_instances_file_is_listed(coco_raw, tmp_path):
    path, doc = bad_instances(coco_raw, tmp_path)
    with pytest.raises(DatasetValidationError) as info:
        read_coco_instances(path)
    a = doc["annotations"]
    ids = [e["id"] for e in doc["images"]]
    where = {k: f"instances_bad.json annotations[{k}] (id {a[k]['id']})" for k in range(8)}
    img3_id = json.loads(coco_raw["instances"].read_text())["images"][3]["id"]
    expected = [
        f"instances_bad.json images[1] (id {ids[1]}), field 'width': must be a positive int (pixels), got a string \"96\"",
        f"instances_bad.json images[2] (id {ids[2]}), field 'file_name': is missing; it must be a non-empty string",
        f"instances_bad.json images[3] (id {ids[0]}), field 'id': {ids[0]} is also the id of images[0]; image ids are "
        "unique",
        "instances_bad.json categories[5] (id 18), field 'id': 18 is also the id of categories[3]; category ids are "
        "unique",
        "instances_bad.json categories[6] (id 99), field 'name': \"cat\" is also the name of categories[2]; category "
        "names are unique",
    ]
    # annotations: the image-id problems depend on which images the fixture's first annotations are on
    assert info.value.problems[:5] == expected
    rest = info.value.problems[5:]
    assert f"{where[0]}, field 'bbox': must be [x, y, width, height] (4 numbers, pixels), got a list [1, 2, 3]" in rest
    assert f"{where[1]}, field 'bbox': [1, 2, -3, 4] has a negative width; COCO boxes are [x, y, width, height] " \
           "with width, height >= 0" in rest
    assert f"{where[2]}, field 'image_id': 999999 is not the id of any entry of \"images\"; fix the id or add the " \
           "image" in rest
    assert f"{where[3]}, field 'category_id': 77 is not the id of any entry of \"categories\" (1, 16, 17, 18, 34); " \
           "fix the id or add the category" in rest
    assert f"{where[4]}, field 'iscrowd': must be 0 or 1, got 2" in rest
    assert f"{where[6]}, field 'bbox': [1, \"2\", 3, 4] has \"2\", which is not a finite number; write [x, y, " \
           "width, height] in pixels" in rest
    assert f"{where[7]}, field 'category_id': is missing; it must be an int" in rest
    # the annotation outside its image is reported unless its image is itself flawed
    if a[5]["image_id"] in {e["id"] for e in doc["images"][4:]} | {ids[0]}:
        assert any(p.startswith(f"{where[5]}, field 'bbox': [100, 2, 3, 4] lies outside its 96x72 image")
                   for p in rest)
    # annotations of flawed images are not reported a second time; those of the image whose id was
    # overwritten are (their image id no longer exists)
    assert not any(f"field 'image_id': {ids[1]} " in p or f"field 'image_id': {ids[2]} " in p for p in rest)
    assert all(f"field 'image_id': {img3_id} is not the id" in p
               for p in rest if f"'image_id': {img3_id} " in p)


@pytest.mark.parametrize("content, message", [
    ('{"images": [], "annotations": [}', "x.json: invalid JSON (Expecting value at line 1, column 32); it must be "
                                          "the COCO instances (instances_*.json) file as downloaded (one JSON object)"),
    ("[1, 2]", "x.json: must hold a JSON object {\"images\": [...], \"annotations\": [...], \"categories\": [...]}, "
               "got a list"),
    ('{"images": [], "annotations": []}', "x.json, field 'categories': missing; a COCO instances file names its "
                                          "categories under \"categories\""),
    ('{"images": {}, "annotations": [], "categories": []}', "x.json, field 'images': must be a list, got an object; "
                                                            "a COCO instances file lists its images under \"images\""),
    ('{"images": [], "annotations": [{"id": 1, "image_id": 1, "caption": "a dog"}]}',
     "x.json: looks like a COCO captions file (its annotations have 'caption'); pass it as captions_json and give the "
     "instances file (instances_*.json) as instances_json"),
])
def test_malformed_instances_files(tmp_path, content, message):
    (tmp_path / "x.json").write_text(content)
    with pytest.raises(DatasetValidationError) as info:
        read_coco_instances(tmp_path / "x.json")
    assert info.value.problems == [message]


def test_missing_instances_file_suggests_a_close_name(tmp_path):
    (tmp_path / "instances_val2017.json").write_text("{}")
    with pytest.raises(DatasetValidationError) as info:
        read_coco_instances(tmp_path / "instances_val2107.json")
    assert info.value.problems == [
        f"instances_val2107.json: not found (did you mean {str(tmp_path / 'instances_val2017.json')!r}?); pass the "
        "path of the COCO instances (instances_*.json) file"]


def test_unknown_label_category_and_missing_images_folder(tmp_path):
    inst, caps, imgs = small_coco(tmp_path)
    with pytest.raises(DatasetValidationError) as info:
        convert_coco(inst, tmp_path / "nowhere", tmp_path / "out", label_categories=["dogs", "cat"])
    assert info.value.problems == [
        "instances.json: label category 'dogs' is not a category of this file (did you mean 'dog'?); its categories: "
        "'dog', 'cat', 'frisbee'",
        f"instances.json: images folder {str(tmp_path / 'nowhere')!r} does not exist; pass the folder that holds the "
        "images named in \"images\" (e.g. val2017/)"]


def test_missing_and_mismatched_image_files(tmp_path):
    inst, caps, imgs = small_coco(tmp_path)
    (imgs / "a.jpg").rename(imgs / "A.JPG")
    Image.new("RGB", (50, 50)).save(imgs / "b.jpg")
    (imgs / "e.jpg").write_bytes(b"not a jpeg")
    (imgs / "d.jpg").unlink()  # d.jpg is not kept (no label): not looked for
    with pytest.raises(DatasetValidationError) as info:
        convert_coco(inst, imgs, tmp_path / "out", label_categories=["dog", "cat"], progress=False)
    problems = info.value.problems
    assert problems[0] == (f"instances.json images[0] (id 1), field 'file_name': image file \"a.jpg\" not found in "
                           f"{imgs} (did you mean 'A.JPG'?); pass the images folder of this annotation file or add "
                           "the file")
    assert problems[1] == ("instances.json images[1] (id 2), field 'width': the JSON says 100x80 but \"b.jpg\" is 50x50; "
                           "boxes would not fit the pixels: use the images that belong to this annotation file")
    assert problems[2].startswith("instances.json images[4] (id 5), field 'file_name': cannot read image \"e.jpg\" (")
    assert len(problems) == 3
    assert not (tmp_path / "out").exists()  # nothing written


def test_bad_captions_file(tmp_path):
    inst, caps, imgs = small_coco(tmp_path)
    doc = json.loads(caps.read_text())
    doc["annotations"] += [{"id": 8, "image_id": 42, "caption": "a ghost"}, {"id": 9, "image_id": 1, "caption": " "},
                           {"id": 7, "image_id": 2, "caption": "again"}]
    caps.write_text(json.dumps(doc))
    with pytest.raises(DatasetValidationError) as info:
        convert_coco(inst, imgs, tmp_path / "out", captions_json=caps, label_categories=["dog"])
    assert info.value.problems == [
        "captions.json annotations[3] (id 8), field 'image_id': 42 is not the id of any image of instances.json; the "
        "captions and instances files must come from the same split (e.g. both val2017)",
        "captions.json annotations[4] (id 9), field 'caption': must be a non-empty string, got a string \" \"",
        "captions.json annotations[5] (id 7), field 'id': 7 is also the id of annotations[0]; caption ids are unique"]
    with pytest.raises(DatasetValidationError) as info:
        convert_coco(inst, imgs, tmp_path / "out", captions_json=inst, label_categories=["dog"])
    assert info.value.problems == [
        "instances.json: looks like an instances file (its annotations have 'bbox', no 'caption'); pass the captions "
        "file (captions_*.json) as captions_json"]


def test_bad_parameters(tmp_path):
    inst, caps, imgs = small_coco(tmp_path)
    with pytest.raises(ValueError, match="'label_categories' parameter of convert_coco must be a non-empty list"):
        convert_coco(inst, imgs, tmp_path / "o", label_categories="dog")
    with pytest.raises(ValueError, match="must not repeat a name. Got 'dog' twice"):
        convert_coco(inst, imgs, tmp_path / "o", label_categories=["dog", "dog"])
    with pytest.raises(ValueError, match="The 'crowd' parameter of convert_coco must be one of"):
        convert_coco(inst, imgs, tmp_path / "o", label_categories=["dog"], crowd="drop")
    with pytest.raises(ValueError, match="The 'split' parameter of convert_coco must be one of"):
        convert_coco(inst, imgs, tmp_path / "o", label_categories=["dog"], split="validation")
    shutil.rmtree(tmp_path / "o", ignore_errors=True)
