"""Tests of ``ravl validate`` (run in-process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from ravl.cli import build_parser, main


def write_folder(root: Path, rows, *, classes=None, size=(56, 56)) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for row in rows:
        lines.append(row if isinstance(row, str) else json.dumps(row))
        if isinstance(row, dict) and "file_name" in row and not (root / row["file_name"]).exists():
            (root / row["file_name"]).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", size).save(root / row["file_name"])
    (root / "metadata.jsonl").write_text("".join(line + "\n" for line in lines))
    if classes is not None:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def digit_rows(n=10):
    words = ["zero", "one", "nine"]
    return [{"file_name": f"img/{i}.png", "caption": f"the digit {words[i % 3]}", "label": words[i % 3],
             "split": "val" if i % 5 == 0 else "train",
             "region_attributes": [words[i % 3], "empty", "red_square" if i % 2 else "empty", "empty"]}
            for i in range(n)]


def run_cli(capsys, *argv):
    code = main(["validate", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_validate_is_a_subcommand():
    args = build_parser().parse_args(["validate", "somewhere", "--grid", "3x2", "--split", "val"])
    assert args.data == "somewhere" and args.grid == (3, 2) and args.split == "val"


def test_summary_of_a_good_folder(tmp_path, capsys):
    root = write_folder(tmp_path / "d", digit_rows(10), classes=["zero", "one", "nine"])
    code, out, _ = run_cli(capsys, root)
    assert code == 0
    assert out.startswith(f"OK: {root.resolve()} (metadata.jsonl: 10 image(s))")
    assert "images per split: train 8, val 2" in out
    assert "classes: 3 (from classes.txt)" in out
    assert [line.split() for line in out.splitlines() if line.startswith("  ")] == [
        ["zero", "4"], ["one", "3"], ["nine", "3"]]
    assert "regions: 40 (4 per image; 2x2 grid on 10 image(s), given boxes on 0)" in out
    assert "region_attributes: present on every image; values: empty 25, red_square 5" in out
    assert "captions: 10 of 10 image(s); labels: 10 of 10 image(s)" in out
    assert "image sizes: 56x56" in out


def test_summary_with_split_classes_and_grid(tmp_path, capsys):
    rows = [{k: v for k, v in r.items() if k != "region_attributes"} for r in digit_rows(10)]
    rows[0]["boxes"] = [[0, 0, 10, 10]]
    root = write_folder(tmp_path / "d", rows)
    code, out, _ = run_cli(capsys, root, "--split", "val", "--classes", "nine", "one", "zero", "--grid", "3x3")
    assert code == 0
    assert "(metadata.jsonl: 2 image(s) in split 'val')" in out and "images per split: val 2" in out
    assert "classes: 3 (from --classes)" in out
    assert "regions: 10 (1-9 per image; 3x3 grid on 1 image(s), given boxes on 1)" in out
    assert "region_attributes: absent" in out


def test_problems_are_all_printed_with_exit_code_1(tmp_path, capsys):
    rows = digit_rows(80)
    for r in rows:
        r["label"] = "nien"                              # 80 problems: more than the exception message shows
    rows[3]["boxes"] = [[30, 0, 20, 28]]
    root = write_folder(tmp_path / "d", rows, classes=["zero", "one", "nine"])
    code, out, _ = run_cli(capsys, root)
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == f"82 problem(s) in dataset {root.resolve()}:"
    assert sum(line.startswith("  - metadata.jsonl line ") for line in lines) == 82
    assert ("  - metadata.jsonl line 4, field 'boxes'[0]: box [30, 0, 20, 28] has x0 >= x1; boxes are "
            "[x0, y0, x1, y1] with x0 < x1, y0 < y1 inside the 56x56 image") in out
    assert "did you mean 'nine'?" in out
    assert lines[-1].startswith(f"Fix them and run `ravl validate {root}` again")


def test_missing_folder_and_metadata(tmp_path, capsys):
    code, out, _ = run_cli(capsys, tmp_path / "nope")
    assert code == 1 and "dataset folder does not exist" in out
    (tmp_path / "empty").mkdir()
    code, out, _ = run_cli(capsys, tmp_path / "empty")
    assert code == 1 and "metadata.jsonl: not found; create it" in out and "docs/dataset-format.md" in out


def test_require_and_split_filter(tmp_path, capsys):
    rows = digit_rows(5)
    del rows[2]["caption"]
    root = write_folder(tmp_path / "d", rows)
    code, out, _ = run_cli(capsys, root, "--require", "caption", "label")
    assert code == 1 and "metadata.jsonl line 3, field 'caption': missing, but required here" in out
    code, out, _ = run_cli(capsys, root, "--split", "test")
    assert code == 1 and "no row has split 'test'" in out and "'train' (4 rows), 'val' (1 rows)" in out


def test_no_verify_images_reads_headers_only(tmp_path, capsys):
    root = write_folder(tmp_path / "d", digit_rows(2))
    Image.effect_noise((56, 56), 40).convert("RGB").save(root / "img" / "1.png")
    data = (root / "img" / "1.png").read_bytes()
    (root / "img" / "1.png").write_bytes(data[:-300])
    code, out, _ = run_cli(capsys, root)
    assert code == 1 and "metadata.jsonl line 2, field 'file_name': cannot read image" in out
    code, out, _ = run_cli(capsys, root, "--no-verify-images")
    assert code == 0


def test_bad_options(tmp_path, capsys):
    root = write_folder(tmp_path / "d", digit_rows(2))
    with pytest.raises(SystemExit) as info:
        main(["validate", str(root), "--grid", "2by2"])
    assert info.value.code == 2
    assert "expected ROWSxCOLS" in capsys.readouterr().err
    code, out, err = run_cli(capsys, root, "--classes", "one", "one")
    assert code == 2 and "must not repeat a name" in err


def test_ignored_look_alike_keys_are_warned_about(tmp_path, capsys):
    rows = digit_rows(3)
    for r in rows:
        r["bbox"] = [0, 0, 1, 1]
    code, out, err = run_cli(capsys, write_folder(tmp_path / "d", rows))
    assert code == 0
    assert "warning:" in err and "'bbox' (as 'boxes'?) on 3 rows" in err
