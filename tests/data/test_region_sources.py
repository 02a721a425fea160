"""Tests of ravl.data.region_sources: specs, the six sources, the cache, workers, IoU inheritance."""

from __future__ import annotations

import doctest
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from ravl.data import load_dataset
from ravl.data import region_sources as rs
from ravl.data.dataset import grid_boxes
from ravl.data.region_sources import (
    SourcedRegionDataset,
    box_iou,
    inherit_attributes,
    parse_region_source,
    read_proposals,
    region_boxes,
    segments_to_boxes,
    with_region_source,
)
from ravl.exceptions import DatasetError, DatasetValidationError

HELP = ("boxes, grid:RxC (e.g. grid:3x3), multiscale or multiscale:1,2,3, slic:N (e.g. slic:16), felzenszwalb, "
        "file:PATH (a JSON Lines proposals file)")


@pytest.fixture
def plain(tmp_path, plain_factory) -> Path:
    """Six 64x48 PNG images without boxes, with 2x2 grid region_attributes."""
    return plain_factory(tmp_path / "plain", n=6, with_attributes=True)


def counting(monkeypatch) -> list[str]:
    """Count the images segmented in this process (workers=1)."""
    calls: list[str] = []
    real = rs._segment_file

    def spy(job):
        calls.append(Path(job[0]).name)
        return real(job)

    monkeypatch.setattr(rs, "_segment_file", spy)
    return calls


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, canonical", [
    ("boxes", "boxes"),
    ("grid:3x3", "grid:3x3"),
    (" GRID : 2x4 ", "grid:2x4"),
    ("multiscale", "multiscale:1,2,3"),
    ("multiscale:1,2x3,4", "multiscale:1,2x3,4"),
    ("slic:16", "slic:16,compactness=10,max_regions=0,max_side=640,min_area=0.015625,sigma=1"),
    ("slic:8,compactness=20,max_regions=5", "slic:8,compactness=20,max_regions=5,max_side=640,min_area=0.03125,sigma=1"),
    ("felzenszwalb", "felzenszwalb:max_regions=0,max_side=640,min_area=0.01,scale=100,sigma=0.8"),
    ("felzenszwalb:scale=200,sigma=0", "felzenszwalb:max_regions=0,max_side=640,min_area=0.01,scale=200,sigma=0"),
])
def test_specs_parse_to_a_canonical_spelling_that_parses_back(spec, canonical):
    src = parse_region_source(spec)
    assert src.spec == canonical
    assert parse_region_source(canonical) == src
    assert parse_region_source(src) is src


def test_file_spec_keeps_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = parse_region_source("file:props/p.jsonl")
    assert src.kind == "file" and src.path == tmp_path / "props" / "p.jsonl"
    assert src.spec == f"file:{tmp_path / 'props' / 'p.jsonl'}"


@pytest.mark.parametrize("spec, message", [
    ("grid:0x3", "Invalid region source 'grid:0x3': the grid must be ROWSxCOLS with whole numbers >= 1, e.g. grid:3x3; "
                 "got '0x3'."),
    ("grid:3by3", "Invalid region source 'grid:3by3': the grid must be ROWSxCOLS with whole numbers >= 1, e.g. "
                  "grid:3x3; got '3by3'."),
    ("grid", "Region source 'grid' needs a grid size: write grid:RxC, e.g. grid:3x3; got 'grid'."),
    ("slic:abc", "Invalid region source 'slic:abc': the number of segments must be a whole number >= 1, e.g. slic:16; "
                 "got 'abc'."),
    ("slic:0", "Invalid region source 'slic:0': the number of segments must be a whole number >= 1, e.g. slic:16; "
               "got '0'."),
    ("slic", "Region source 'slic' needs the number of segments: write slic:N, e.g. slic:16; got 'slic'."),
    ("slick:16", f"Unknown region source kind 'slick' in 'slick:16' (did you mean 'slic'?); use one of: {HELP}."),
    ("superpixels:8", f"Unknown region source kind 'superpixels' in 'superpixels:8' (did you mean 'slic'?); use one "
                      f"of: {HELP}."),
    ("felzenswalb", f"Unknown region source kind 'felzenswalb' in 'felzenswalb' (did you mean 'felzenszwalb'?); use "
                    f"one of: {HELP}."),
    ("watershed:9", f"Unknown region source kind 'watershed' in 'watershed:9'; use one of: {HELP}."),
    ("", f"Empty region source; use one of: {HELP}."),
    ("boxes:3", "Region source 'boxes' takes no parameter; got 'boxes:3'. Write 'boxes' (the dataset's own boxes, or "
                "its grid for rows without boxes)."),
    ("file:", "Region source 'file' needs a path: write file:PATH (a JSON Lines file with one {\"file_name\": ..., "
              "\"boxes\": [[x0, y0, x1, y1], ...]} per image); got 'file:'."),
    ("multiscale:1,0", "Invalid region source 'multiscale:1,0': each scale is K (a KxK grid) or RxC with whole numbers "
                       ">= 1, e.g. multiscale:1,2,3 or multiscale:1,2x3; got '0'."),
    ("multiscale:2,2x2", "Invalid region source 'multiscale:2,2x2': the scale 2x2 is repeated; list each grid once."),
    ("slic:16,compact=5", "Invalid region source 'slic:16,compact=5': unknown parameter 'compact' (did you mean "
                          "'compactness'?); slic takes compactness, sigma, min_area, max_regions, max_side."),
    ("slic:16,sigma=-1", "Invalid region source 'slic:16,sigma=-1': sigma must be a number >= 0; got '-1'."),
    ("slic:16,max_regions=2.5", "Invalid region source 'slic:16,max_regions=2.5': max_regions must be a whole number "
                                ">= 0; got '2.5'."),
    ("slic:16,sigma=1,sigma=2", "Invalid region source 'slic:16,sigma=1,sigma=2': parameter 'sigma' is given twice."),
    ("slic:8,min_area=2", "Invalid region source 'slic:8,min_area=2': min_area is a fraction of the image area and "
                          "must be below 1; got 2."),
    ("felzenszwalb:200", "Invalid region source 'felzenszwalb:200': '200' is not key=value; write "
                         "felzenszwalb:key=value, with keys scale, sigma, min_area, max_regions, max_side."),
    (3, f"A region source must be a spec string like 'grid:3x3' ({HELP}). Got 3 instead."),
])
def test_bad_specs_say_what_is_wrong_and_the_right_form(spec, message):
    with pytest.raises(ValueError) as info:
        parse_region_source(spec)
    assert str(info.value) == message


# --------------------------------------------------------------------------------------------
# Sources on a dataset without boxes
# --------------------------------------------------------------------------------------------

def test_boxes_source_is_the_dataset_itself(plain):
    ds = load_dataset(plain)
    view = with_region_source(ds, "boxes")
    assert view.region_source == "boxes"
    assert [r for r in view] == [r for r in ds]
    assert region_boxes(ds, "boxes") == [r.boxes for r in ds]


def test_grid_3x3_on_images_without_boxes(plain):
    ds = load_dataset(plain)
    view = with_region_source(ds, "grid:3x3")
    assert isinstance(view, SourcedRegionDataset) and view.region_source == "grid:3x3"
    for r in view:
        assert r.boxes == tuple(grid_boxes(64, 48, (3, 3))) and r.boxes_from_grid
    table = view.region_table()
    assert len(table) == 6 * 9 and table.boxes.shape == (54, 4)
    # each 3x3 cell overlaps a 2x2 quadrant with IoU <= (1/9)/(1/4) = 0.44 < 0.5: no attribute is inherited
    assert set(table.attributes) == {"empty"}
    # views of the view keep the source; the dataset itself is unchanged
    assert view.subset("val").region_source == "grid:3x3" and len(view.subset("val")) == 3
    assert view[1:3].region_source == "grid:3x3"
    assert ds[0].boxes == tuple(grid_boxes(64, 48, (2, 2)))
    assert "region_source='grid:3x3'" in repr(view)
    with pytest.raises(ValueError, match="not a view whose regions already come from 'grid:3x3'"):
        with_region_source(view, "multiscale")


def test_multiscale_regions_and_inherited_attributes_by_hand(plain):
    ds = load_dataset(plain)
    view = with_region_source(ds, "multiscale")
    r = view[1]
    assert len(r.boxes) == 1 + 4 + 9
    assert r.boxes[0] == (0.0, 0.0, 64.0, 48.0)
    assert r.boxes[1:5] == tuple(grid_boxes(64, 48, (2, 2)))
    # whole image vs a quadrant: IoU 1/4 -> empty; the 2x2 cells are the annotated quadrants (IoU 1);
    # 3x3 cells: at most 4/9 of a quadrant -> empty
    assert r.region_attributes == ("empty", "dog", "empty", "empty", "red") + ("empty",) * 9
    assert not r.boxes_from_grid


def test_slic_16_gives_distinct_sorted_boxes_inside_each_image(plain, tmp_path):
    pytest.importorskip("skimage")
    ds = load_dataset(plain)
    view = with_region_source(ds, "slic:16", cache_dir=tmp_path / "cache", workers=1)
    assert view.region_source.startswith("slic:16,")
    for r in view:
        b = np.array(r.boxes)
        assert 4 <= len(b) <= 32
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= 64).all() and (b[:, 3] <= 48).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert len({tuple(x) for x in b.tolist()}) == len(b)
        keys = [(y0, x0, y1, x1) for x0, y0, x1, y1 in b.tolist()]
        assert keys == sorted(keys)
        assert len(r.region_attributes) == len(r.boxes)
    # loadable by the model code: the region table has one row per box
    assert len(view.region_table()) == int(view.regions_per_image.sum())


def test_felzenszwalb_finds_the_drawn_shapes(plain, tmp_path):
    pytest.importorskip("skimage")
    ds = load_dataset(plain)
    # without smoothing and with segments of at least 5 % of the image, the segments are exactly the
    # grey background (its box is the whole image), the top-left block and the bottom-right disc
    boxes = region_boxes(ds, "felzenszwalb:sigma=0,min_area=0.05", cache_dir=tmp_path, workers=1)
    for b in boxes:
        assert b == ((0.0, 0.0, 32.0, 24.0), (0.0, 0.0, 64.0, 48.0), (32.0, 24.0, 64.0, 48.0))
    view = with_region_source(ds, "felzenszwalb:sigma=0,min_area=0.05", cache_dir=tmp_path, workers=1)
    # inherited from the 2x2 annotation: the block is quadrant 0, the disc's box quadrant 3 ("red")
    assert view[0].region_attributes == ("cat", "empty", "red")
    assert view[1].region_attributes == ("dog", "empty", "red")


def test_large_images_are_segmented_at_max_side(tmp_path, plain_factory):
    pytest.importorskip("skimage")
    root = plain_factory(tmp_path / "big", n=1, size=(1300, 700))
    ds = load_dataset(root)
    src = parse_region_source("felzenszwalb:sigma=0,min_area=0.05,max_side=650")
    (b,) = region_boxes(ds, src, cache=False, workers=1)
    # segmented at 650x350 and scaled back by 2: the same three shapes at full size
    assert b == ((0.0, 0.0, 650.0, 350.0), (0.0, 0.0, 1300.0, 700.0), (650.0, 350.0, 1300.0, 700.0))


def test_segments_to_boxes_rule():
    labels = np.array([[0, 0, 1, 1],
                       [0, 0, 1, 1],
                       [2, 2, 2, 3],
                       [4, 2, 2, 2]])
    # segment 3 and 4 cover 1/16 of the image each
    assert segments_to_boxes(labels).tolist() == [[0, 0, 2, 2], [2, 0, 4, 2], [0, 2, 4, 4], [3, 2, 4, 3], [0, 3, 1, 4]]
    assert segments_to_boxes(labels, min_area=0.1).tolist() == [[0, 0, 2, 2], [2, 0, 4, 2], [0, 2, 4, 4]]
    # the two largest: segment 2 (5 px) and the first of the 4-px segments (0)
    assert segments_to_boxes(labels, max_regions=2).tolist() == [[0, 0, 2, 2], [0, 2, 4, 4]]
    # identical boxes are kept once; nothing left -> the whole image
    assert segments_to_boxes(np.array([[0, 1], [1, 0]])).tolist() == [[0, 0, 2, 2]]
    assert segments_to_boxes(labels, min_area=0.9).tolist() == [[0, 0, 4, 4]]


# --------------------------------------------------------------------------------------------
# Proposals files
# --------------------------------------------------------------------------------------------

def write_lines(path: Path, lines) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_file_source_reads_and_clips_proposals(plain, tmp_path):
    ds = load_dataset(plain)
    props = write_lines(tmp_path / "props.jsonl", [
        {"file_name": f"images/{i:03d}.png", "boxes": [[0, 0, 32, 24], [10, 10, 64.0004, 48]], "scores": [0.9, 0.2]}
        for i in range(6)])
    view = with_region_source(ds, f"file:{props}")
    assert view.region_source == f"file:{props}"
    assert view[0].boxes == ((0.0, 0.0, 32.0, 24.0), (10.0, 10.0, 64.0, 48.0))
    # [0, 0, 32, 24] is quadrant 0 (IoU 1); [10, 10, 64, 48] overlaps quadrant 3 with IoU 32*24/(54*38) < 0.5
    assert view[0].region_attributes == ("cat", "empty")


def test_file_source_for_one_split_ignores_rows_of_other_splits(plain):
    ds = load_dataset(plain, split="val")  # images 000-002
    write_lines(plain / "props.jsonl", [{"file_name": f"images/{i:03d}.png", "boxes": [[0, 0, 8, 8]]}
                                        for i in range(6)])
    found = read_proposals("props.jsonl", ds)  # a relative path is also looked for in the dataset folder
    assert sorted(found) == ["images/000.png", "images/001.png", "images/002.png"]


def test_bad_proposals_file_lists_every_problem(plain, tmp_path):
    ds = load_dataset(plain)
    props = write_lines(tmp_path / "proposals.jsonl", [
        {"file_name": "images/000.png", "boxes": [[0, 0, 70, 20], [5, 5, 4, 30]], "scores": [0.9, 0.5]},
        "{bad json",
        {"file_name": "images/001.png", "bbox": [[0, 0, 10, 10]]},
        {"file_name": "00l.png", "boxes": [[0, 0, 10, 10]]},
        {"file_name": "images/001.png", "boxes": []},
        {"file_name": "images/002.png", "boxes": [0, 0, 10, 10]},
        ["images/003.png"],
        {"file_name": "004.png", "boxes": [[0, 0, 10, 10]]},
        {"file_name": "images/005.png", "boxes": []},
    ])
    with pytest.raises(DatasetValidationError) as info:
        read_proposals(props, ds)
    image = "inside the 64x48 image (pixels, origin at the top-left corner): fix or clip it"
    example = '{"file_name": "images/0001.jpg", "boxes": [[0, 0, 28, 28], [10, 5, 40, 30]]}'
    assert info.value.problems == [
        f"proposals.jsonl line 1, field 'boxes'[0]: box [0, 0, 70, 20] has x1 = 70 past the right edge (width 64); "
        f"boxes are [x0, y0, x1, y1] with x0 < x1, y0 < y1 {image}",
        f"proposals.jsonl line 1, field 'boxes'[1]: box [5, 5, 4, 30] has x0 >= x1; boxes are [x0, y0, x1, y1] with "
        f"x0 < x1, y0 < y1 {image}",
        "proposals.jsonl line 2: invalid JSON (Expecting property name enclosed in double quotes at column 2); write "
        f"one JSON object per line, e.g. {example}",
        "proposals.jsonl line 3, field 'boxes': missing (the row has 'bbox': rename it to 'boxes'); add the image's "
        "regions as \"boxes\": [[x0, y0, x1, y1], ...] in pixels",
        f"proposals.jsonl line 4, field 'file_name': \"00l.png\" is not an image of the dataset {plain.resolve()} "
        "(metadata.jsonl); fix the path (relative to the dataset folder, as in its metadata) or remove the row",
        "proposals.jsonl line 5, field 'file_name': \"images/001.png\" is also on line 3; give each image one row "
        "with all its boxes",
        "proposals.jsonl line 6, field 'boxes': [0, 0, 10, 10] is a single box, but 'boxes' is a list of boxes; "
        "wrap it: [[0, 0, 10, 10]]",
        "proposals.jsonl line 7: expected a JSON object {...}, got a list [\"images/003.png\"]; write one object per "
        f"line, e.g. {example}",
        f"proposals.jsonl line 8, field 'file_name': \"004.png\" is not an image of the dataset {plain.resolve()} "
        "(metadata.jsonl) (did you mean 'images/004.png'?); fix the path (relative to the dataset folder, as in its "
        "metadata) or remove the row",
        "proposals.jsonl line 9, field 'boxes': is an empty list, so the image would have no region; give at least "
        "one box, e.g. the whole image [0, 0, 64, 48] if the detector found nothing",
        "proposals.jsonl: no row for image \"images/003.png\" (metadata.jsonl line 4); every image needs its regions: "
        "add {\"file_name\": \"images/003.png\", \"boxes\": [[0, 0, 64, 48]]} (the whole image) if the detector found "
        "nothing",
        "proposals.jsonl: no row for image \"images/004.png\" (metadata.jsonl line 5); every image needs its regions: "
        "add {\"file_name\": \"images/004.png\", \"boxes\": [[0, 0, 64, 48]]} (the whole image) if the detector found "
        "nothing",
    ]
    assert str(info.value).startswith(f"12 problem(s) in dataset {props}:")


def test_missing_proposals_file(plain, tmp_path):
    with pytest.raises(DatasetValidationError) as info:
        region_boxes(load_dataset(plain), f"file:{tmp_path / 'nope.jsonl'}")
    assert info.value.problems == [
        f"{tmp_path / 'nope.jsonl'}: not found; give a JSON Lines file with one {{\"file_name\": ..., \"boxes\": "
        "[[x0, y0, x1, y1], ...]} per image (region source file:PATH)"]


# --------------------------------------------------------------------------------------------
# Cache and workers
# --------------------------------------------------------------------------------------------

def test_superpixel_boxes_are_cached_by_content(plain, tmp_path, monkeypatch, caplog):
    pytest.importorskip("skimage")
    ds = load_dataset(plain)
    calls = counting(monkeypatch)
    cache = tmp_path / "cache"
    first = region_boxes(ds, "slic:12", cache_dir=cache, workers=1)
    assert len(calls) == 6
    assert len(list(cache.glob("slic-*.npz"))) == 1
    # second call: every image from the cache
    calls.clear()
    assert region_boxes(ds, "slic:12", cache_dir=cache, workers=1) == first
    assert calls == []
    # a split of the same images is served by the same cache
    assert region_boxes(ds.subset("test"), "slic:12", cache_dir=cache, workers=1) == first[3:]
    assert calls == []
    # another parameter is another cache entry
    region_boxes(ds.subset("test"), "slic:12,compactness=5", cache_dir=cache, workers=1)
    assert len(calls) == 3 and len(list(cache.glob("slic-*.npz"))) == 2
    # changing one image's pixels recomputes that image only
    calls.clear()
    with Image.open(plain / "images" / "004.png") as im:
        im = im.copy()
    ImageDraw.Draw(im).rectangle([40, 0, 63, 20], fill=(0, 0, 255))
    im.save(plain / "images" / "004.png")
    changed = region_boxes(load_dataset(plain), "slic:12", cache_dir=cache, workers=1)
    assert calls == ["004.png"]
    assert changed[:4] == first[:4] and changed[5] == first[5] and changed[4] != first[4]
    # touching a file does not change its content key
    calls.clear()
    os.utime(plain / "images" / "000.png", ns=(1, 1))
    region_boxes(load_dataset(plain), "slic:12", cache_dir=cache, workers=1)
    assert calls == []


def test_stat_cache_key_follows_size_and_mtime(plain, tmp_path, monkeypatch):
    pytest.importorskip("skimage")
    ds = load_dataset(plain)
    calls = counting(monkeypatch)
    region_boxes(ds, "slic:6", cache_dir=tmp_path, cache_key="stat", workers=1)
    calls.clear()
    region_boxes(ds, "slic:6", cache_dir=tmp_path, cache_key="stat", workers=1)
    assert calls == []
    os.utime(plain / "images" / "002.png", ns=(10 ** 18, 10 ** 18))
    region_boxes(ds, "slic:6", cache_dir=tmp_path, cache_key="stat", workers=1)
    assert calls == ["002.png"]


def test_identical_images_are_segmented_once(tmp_path, monkeypatch, plain_factory):
    pytest.importorskip("skimage")
    root = plain_factory(tmp_path / "d", n=2)
    (root / "images" / "001.png").write_bytes((root / "images" / "000.png").read_bytes())
    calls = counting(monkeypatch)
    a, b = region_boxes(load_dataset(root), "slic:6", cache_dir=tmp_path / "c", workers=1)
    assert a == b and calls == ["000.png"]


def test_a_damaged_cache_is_ignored_and_rewritten(plain, tmp_path, monkeypatch, caplog):
    pytest.importorskip("skimage")
    ds = load_dataset(plain)
    first = region_boxes(ds, "slic:6", cache_dir=tmp_path, workers=1)
    (path,) = tmp_path.glob("slic-*.npz")
    path.write_bytes(b"not a zip file")
    calls = counting(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="ravl.data.region_sources"):
        assert region_boxes(ds, "slic:6", cache_dir=tmp_path, workers=1) == first
    assert len(calls) == 6 and "Ignoring the region cache" in caplog.text
    calls.clear()
    region_boxes(ds, "slic:6", cache_dir=tmp_path, workers=1)
    assert calls == []


def test_results_do_not_depend_on_the_number_of_workers(plain, tmp_path):
    pytest.importorskip("skimage")
    ds = load_dataset(plain)
    one = region_boxes(ds, "slic:10", cache=False, workers=1)
    two = region_boxes(ds, "slic:10", cache=False, workers=2)
    assert one == two
    # and a cache written by two workers serves one worker
    region_boxes(ds, "felzenszwalb", cache_dir=tmp_path, workers=2)
    assert region_boxes(ds, "felzenszwalb", cache_dir=tmp_path, workers=1) == \
        region_boxes(ds, "felzenszwalb", cache=False, workers=1)


def test_unreadable_image_names_its_row(plain, tmp_path):
    pytest.importorskip("skimage")
    ds = load_dataset(plain)
    (plain / "images" / "003.png").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"Cannot read image .*003\.png \(metadata\.jsonl line 4\)"):
        region_boxes(ds, "slic:6", cache=False, workers=1)


def test_bad_arguments(plain):
    ds = load_dataset(plain)
    with pytest.raises(ValueError, match="The 'cache_key' parameter of region_boxes must be one of"):
        region_boxes(ds, "grid:2x2", cache_key="mtime")
    with pytest.raises(ValueError, match="The 'workers' parameter of region_boxes must be an int in"):
        region_boxes(ds, "grid:2x2", workers=0)
    with pytest.raises(TypeError, match="region_boxes takes a RegionDataset"):
        region_boxes([ds[0]], "grid:2x2")
    with pytest.raises(ValueError, match="The 'iou_threshold' parameter of with_region_source must be a float in"):
        with_region_source(ds, "grid:2x2", iou_threshold=0)


# --------------------------------------------------------------------------------------------
# IoU and inheritance
# --------------------------------------------------------------------------------------------

def test_box_iou_hand_computed():
    a = [[0, 0, 2, 2]]
    b = [[0, 0, 2, 2],      # identical: 1
         [1, 0, 3, 2],      # half of each: 2 / (4 + 4 - 2) = 1/3
         [2, 0, 4, 2],      # touching edges: 0
         [0.5, 0.5, 1.5, 1.5],  # inside: 1 / 4
         [5, 5, 6, 6],      # disjoint: 0
         [1, 1, 1, 3]]      # empty box: 0
    assert box_iou(a, b).tolist() == [[1.0, 1 / 3, 0.0, 0.25, 0.0, 0.0]]
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 6)


def test_inherit_attributes_hand_computed():
    annotated = [[0, 0, 10, 10], [10, 0, 20, 10]]
    attrs = ["dog", "frisbee"]
    proposals = [[0, 0, 10, 5],    # IoU 50/100 = 0.5 with the dog: inherits (>= threshold)
                 [0, 0, 10, 4.9],  # IoU 0.49: empty
                 [5, 0, 15, 10],   # IoU 1/3 with both: empty
                 [4, 0, 16, 10],   # IoU 60/160 = 0.375 with each: empty
                 [11, 1, 20, 10],  # IoU 81/100 with the frisbee
                 [30, 30, 40, 40]]  # no overlap
    assert inherit_attributes(proposals, annotated, attrs) == ["dog", "empty", "empty", "empty", "frisbee", "empty"]
    # 0.49 >= 0.3; 1/3 with both: a tie, the first annotated box wins; 0.375 with both: the first
    assert inherit_attributes(proposals, annotated, attrs, iou_threshold=0.3) == \
        ["dog", "dog", "dog", "dog", "frisbee", "empty"]
    # the same box annotated twice: the first one
    assert inherit_attributes([[0, 0, 10, 10]], [[0, 0, 10, 10], [0, 0, 10, 10]], ["a", "b"]) == ["a"]
    assert inherit_attributes(proposals, annotated, attrs, iou_threshold=1.0) == ["empty"] * 6
    assert inherit_attributes(proposals, [], [], empty="none") == ["none"] * 6
    with pytest.raises(ValueError, match="one attribute per annotated box: 2 boxes, 1 attributes"):
        inherit_attributes(proposals, annotated, ["dog"])


def test_view_on_annotated_boxes_inherits_their_categories(coco_pool):
    ds = load_dataset(coco_pool)
    view = with_region_source(ds, "grid:2x2")
    for r, orig in zip(view, ds):
        expected = inherit_attributes(r.boxes, orig.boxes, orig.region_attributes)
        assert list(r.region_attributes) == expected
    # a proposal identical to an annotated box inherits its category
    props = [{"file_name": r.file_name, "boxes": [list(r.boxes[0]), [0, 0, r.width, r.height]]} for r in ds]
    write_lines(coco_pool.parent / "props.jsonl", props)
    view = with_region_source(ds, f"file:{coco_pool.parent / 'props.jsonl'}", iou_threshold=0.5)
    assert all(v.region_attributes[0] == r.region_attributes[0] for v, r in zip(view, ds))


def test_embed_regions_reads_a_view(plain):
    import torch

    from ravl.models import load_model
    from ravl.models.regions import embed_regions

    torch.manual_seed(0)
    model = load_model("tiny", seed=0)
    view = with_region_source(load_dataset(plain, split="val"), "multiscale:1,2")
    emb = embed_regions(model, view, mode="crop", progress=False)
    assert emb.shape == (3 * 5, model.embed_dim)


def test_module_examples():
    assert doctest.testmod(rs).failed == 0


def test_missing_scikit_image_names_the_extra(plain, monkeypatch):
    import sys

    from ravl.exceptions import MissingDependencyError

    monkeypatch.setitem(sys.modules, "skimage.segmentation", None)  # makes the import fail
    with pytest.raises(MissingDependencyError, match=r"pip install 'ravl\[superpixels\]'"):
        region_boxes(load_dataset(plain), "slic:8", cache=False)
