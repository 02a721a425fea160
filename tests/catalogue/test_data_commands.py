"""Catalogue: `ravl validate`, `ravl make-benchmark`, `ravl convert`, and the command line itself."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from ravl.data.dataset import write_metadata

from .conftest import expect, run, snapshot


def _folder(tmp_path, rows, images=None):
    root = tmp_path / "data"
    root.mkdir()
    for name in images or [r["file_name"] for r in rows]:
        Image.new("RGB", (16, 16), (10, 20, 30)).save(root / name)
    write_metadata(root, rows)
    return root


# -- clear errors -----------------------------------------------------------------------------

def test_unknown_command_and_missing_arguments():
    expect(run("nope"), 2, r"invalid choice: 'nope'", r"ravl --help")
    expect(run("evaluate"), 2, r"required: --data")


def test_validate_missing_folder(tmp_path):
    res = run("validate", tmp_path / "nowhere")
    expect(res, 1, r"1 problem\(s\) in dataset .*nowhere")
    assert "dataset folder does not exist" in res.stdout


def test_validate_names_the_row_and_field(tmp_path):
    root = _folder(tmp_path, [{"file_name": "a.png", "label": "dog", "boxes": [[0, 0, 40, 8]]}])
    res = run("validate", root)
    expect(res, 1, r"1 problem")
    assert "line 1" in res.stdout and "'boxes'" in res.stdout


def test_validate_misspelt_split(tmp_path):
    root = _folder(tmp_path, [{"file_name": "a.png", "label": "dog"}])
    expect(run("validate", root, "--split", "tset"), 2, r"--split: invalid choice: 'tset'")


def test_labels_that_differ_only_in_case_or_white_space(tmp_path):
    root = _folder(tmp_path, [{"file_name": "a.png", "label": "Dog"}, {"file_name": "b.png", "label": "dog "},
                              {"file_name": "c.png", "label": "cat"}])
    res = run("validate", root)
    expect(res, 1, r"problem")
    assert "'Dog', 'dog '" in res.stdout and "differ only in upper/lower case or white space" in res.stdout


def test_a_decompression_bomb_is_named(tmp_path):
    """A PNG whose header claims 20,000 x 20,000 pixels: Pillow's bomb limit, not "corrupt"."""
    root = tmp_path / "data"
    root.mkdir()

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    (root / "big.png").write_bytes(png)
    write_metadata(root, [{"file_name": "big.png", "label": "dog"}])
    res = run("validate", root)
    expect(res, 1, r"problem")
    assert "decompression-bomb limit" in res.stdout and "MAX_IMAGE_PIXELS" in res.stdout and "corrupt" not in res.stdout


def test_make_benchmark_misspelt_feature_and_bad_out(tmp_path):
    expect(run("make-benchmark", "--out", tmp_path / "s", "--feature", "rng"), 2,
           r"Unknown spurious feature 'rng'", r"Did you mean 'ring'")
    (tmp_path / "afile").write_text("x")
    expect(run("make-benchmark", "--out", tmp_path / "afile"), 2, r"--out: .*afile is a file")
    expect(run("make-benchmark", "--out", tmp_path / "s", "--cramers-v", "1.5"), 2, r"'cramers_v'.*\[0.0, 1.0\]")
    assert not (tmp_path / "s").exists()  # refused before anything was written


def test_make_benchmark_layout_mistakes(tmp_path):
    expect(run("make-benchmark", "--out", tmp_path / "s", "--distractors", "3"), 2,
           r"--distractors must be in \[0, 2\] with --grid-size 2")
    expect(run("make-benchmark", "--out", tmp_path / "s", "--distractors", "1", "--distractor-features", "red_square"),
           2, r"--distractor-features includes red_square, a planted feature")
    expect(run("benchmark", "mitigate", "--out", tmp_path / "m", "--grid-size", "9"), 2, r"--grid-size must be in \[2, 8\]")
    assert not (tmp_path / "s").exists() and not (tmp_path / "m").exists()


def test_convert_coco_missing_instances_file(tmp_path):
    (tmp_path / "imgs").mkdir()
    res = run("convert", "coco", "--instances", tmp_path / "missing.json", "--images", tmp_path / "imgs",
              "--label-categories", "dog", "--out", tmp_path / "pool")
    expect(res, 1, r"problem")
    assert "missing.json" in res.stdout + res.stderr


def _object_folder(tmp_path, attrs=True):
    rows = [{"file_name": f"{i}.png", "caption": f"a dog{' with a red square' if i % 2 else ''}", "split": "test",
             "boxes": [[0, 0, 8, 8], [8, 8, 16, 16]],
             **({"region_attributes": ["red_square" if i % 2 else "empty", "dog"]} if attrs else {})}
            for i in range(4)]
    return _folder(tmp_path, rows)


def test_manipulate_misspelt_object_names_the_flag_and_the_attributes(tmp_path):
    root = _object_folder(tmp_path)
    expect(run("manipulate", "--data", root, "--remove", "red_sqare", "--out", tmp_path / "q"), 2,
           r"--remove 'red_sqare'", r"'dog', 'red_square'", r"Did you mean 'red_square'")
    expect(run("manipulate", "--data", root, "--paste", "frisbee", "--out", tmp_path / "q"), 2, r"--paste 'frisbee'")
    assert not (tmp_path / "q").exists()  # refused before anything was written


def test_manipulate_usage_mistakes(tmp_path):
    root = _object_folder(tmp_path)
    expect(run("manipulate", "--data", root, "--out", tmp_path / "q"), 2, r"one of the arguments --remove --paste")
    expect(run("manipulate", "--data", root, "--remove", "red_square", "--paste", "red_square", "--out",
               tmp_path / "q"), 2, r"--paste: not allowed with argument --remove")
    expect(run("manipulate", "--data", root, "--paste", "red_square", "--fill", "diffuse", "--out", tmp_path / "q"),
           2, r"--fill applies to --remove only", r"drop --fill")
    expect(run("manipulate", "--data", root, "--remove", "red_square", "--fill", "inpaint", "--out", tmp_path / "q"),
           2, r"--fill: invalid choice: 'inpaint'")
    (tmp_path / "afile").write_text("x")
    expect(run("manipulate", "--data", root, "--remove", "red_square", "--out", tmp_path / "afile"), 2,
           r"--out: .*afile is a file")


def test_manipulate_data_problems(tmp_path):
    expect(run("manipulate", "--data", tmp_path / "nowhere", "--remove", "ring", "--out", tmp_path / "q"), 1,
           r"nowhere")
    (tmp_path / "bare").mkdir()
    bare = _object_folder(tmp_path / "bare", attrs=False)
    expect(run("manipulate", "--data", bare, "--remove", "red_square", "--out", tmp_path / "q"), 1,
           r"line 1 \(0.png\) has no 'region_attributes'", r"Add a 'region_attributes' list")
    root = _object_folder(tmp_path)
    res = run("manipulate", "--data", root, "--split", "val", "--remove", "red_square", "--out", tmp_path / "q")
    expect(res, 1, r"problem\(s\) in dataset .*data")
    assert "no row has split 'val'" in res.stderr and not (tmp_path / "q").exists()


def test_manipulate_writes_a_folder_and_keeps_an_earlier_one(tmp_path):
    root = _object_folder(tmp_path)
    out = tmp_path / "q"
    expect(run("manipulate", "--data", root, "--remove", "red_square", "--out", out, "--quiet"), 0,
           r"'red_square' removed from 2 image\(s\)", r"manipulation.json", r"--odmap-queries")
    rec = json.loads((out / "manipulation.json").read_text())
    assert rec["operation"] == "remove" and rec["n_images"] == 2 and rec["n_skipped"] == 2 and rec["fill"] == "ring"
    assert [r["source_file"] for r in rec["images"]] == ["1.png", "3.png"]
    expect(run("validate", out), 0)
    before = snapshot(out)
    expect(run("manipulate", "--data", root, "--paste", "red_square", "--out", out), 2,
           r"--out .*already holds a dataset", r"choose a new folder")
    assert snapshot(out) == before


# -- defined results (they already behaved; kept so they stay so) ------------------------------

def test_16_bit_png_is_scaled_not_binarised(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(ramp).save(root / "g16.png")
    write_metadata(root, [{"file_name": "g16.png", "label": "dog"}])
    expect(run("validate", root), 0, r"OK")
    from ravl.data.dataset import load_dataset

    arr = np.asarray(load_dataset(root).load_image(0))[..., 0]
    assert len(np.unique(arr)) > 200  # convert("RGB") would leave 2 values (0 and 255)
    assert arr[0, 0] == 0 and arr[-1, -1] == round(65472 / 257)


def test_make_benchmark_is_byte_identical_and_locked(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        expect(run("make-benchmark", "--out", out, "--n-train", "100", "--n-eval", "40", "--quiet"), 0)
    sa, sb = snapshot(a), snapshot(b)
    assert sa.keys() == sb.keys()
    diff = [k for k in sa if sa[k] != sb[k] and not k.endswith("setting.json")]
    assert not diff
    ja, jb = (json.loads(sa["setting.json"]), json.loads(sb["setting.json"]))
    for d in (ja, jb):
        d.pop("root", None), d.pop("train_dir", None), d.pop("eval_dir", None)
    assert ja == jb


@pytest.mark.parametrize("argv", [["validate", "--help"], ["--version"], ["models"]])
def test_simple_commands_succeed(argv):
    expect(run(*argv), 0)
