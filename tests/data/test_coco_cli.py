"""COCO through the command line: convert, validate, list pairs, build a setting at V = 0.9, audit it.

Uses the COCO-format fixture of ``conftest.py`` (drawn objects with real annotations and captions;
the frisbee is tied to the dog).
"""

from __future__ import annotations

import json

import pytest

from ravl.cli import main
from ravl.data.dataset import load_dataset


@pytest.fixture(scope="module")
def converted(coco_raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("coco_cli") / "pool"
    code = main(["convert", "coco", "--instances", str(coco_raw["instances"]), "--images", str(coco_raw["images"]),
                 "--captions", str(coco_raw["captions"]), "--label-categories", "dog", "cat", "bird", "--out",
                 str(out), "--quiet"])
    assert code == 0
    return out


def test_convert_then_validate_clean(converted, capsys):
    assert main(["validate", str(converted), "--require", "caption", "label"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK:")
    ds = load_dataset(converted)
    assert set(ds.classes) == {"dog", "cat", "bird"}
    assert all(r.boxes and r.region_attributes and r.caption for r in ds.records)
    assert any("frisbee" in r.region_attributes for r in ds.records)


def test_list_pairs_ranks_the_planted_pair_first(converted, capsys):
    assert main(["make-benchmark", "--from-coco", str(converted), "--list-pairs", "--top", "5"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "frisbee" in ln or "person" in ln]
    assert lines and "dog" in lines[0] and "frisbee" in lines[0]


def test_make_benchmark_from_coco_at_v_09(converted, tmp_path, capsys):
    out = tmp_path / "dog-frisbee"
    assert main(["make-benchmark", "--from-coco", str(converted), "--spurious-class", "dog", "--feature", "frisbee",
                 "--cramers-v", "0.9", "--out", str(out), "--quiet"]) == 0
    setting = json.loads((out / "setting.json").read_text())
    assert abs(setting["achieved_v"] - 0.9) <= 0.02
    for sub in ("train", "eval"):
        assert main(["validate", str(out / sub), "--require", "caption", "label", "region_attributes"]) == 0
    assert "achieved" in capsys.readouterr().out


def test_from_coco_needs_the_pair(converted, tmp_path, capsys):
    assert main(["make-benchmark", "--from-coco", str(converted), "--out", str(tmp_path / "x")]) == 2
    assert "--from-coco needs --spurious-class, --feature" in capsys.readouterr().err
    assert main(["make-benchmark", "--list-pairs"]) == 2
    assert "give --from-coco" in capsys.readouterr().err
    assert main(["make-benchmark", "--from-coco", str(converted), "--spurious-class", "dgo", "--feature", "frisbee",
                 "--out", str(tmp_path / "y")]) == 2
    assert "dgo" in capsys.readouterr().err
