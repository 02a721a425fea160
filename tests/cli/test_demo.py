"""``ravl demo`` end to end at a small size."""

import json

import pytest

from ravl.cli import main


@pytest.mark.slow
def test_demo_end_to_end_small(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--n-train", "600", "--n-eval", "400", "--epochs", "2", "--quiet"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "[4/5] RaVL discovery" in text and "The shortcut:" in text
    d = json.loads((out / "demo.json").read_text())
    assert d["setting"]["spurious_class"] == "nine" and abs(d["setting"]["achieved_v"] - 0.95) < 0.05
    assert d["discovery"]["class"] == "nine" and d["discovery"]["precision_at_10"] == [1.0]
    # step 5: mitigation from the same initialisation, before/after in the terminal, demo.json and the report
    assert "[5/5] RaVL mitigation" in text and "The shortcut after mitigation" in text
    assert set(d["mitigation"]["after"]) == {"Image Overall", "Image Worst-Group", "Region Overall",
                                             "Region Worst-Group"}
    ev = json.loads((out / "mitigated" / "evaluation.json").read_text())
    assert ev["method"] == "ravl" and ev["after"]["metrics"] == d["mitigation"]["after"]
    cfg = json.loads((out / "mitigated" / "config.json").read_text())
    assert cfg["mitigation"]["start"] == "init" and cfg["init"] == {"model": "tiny", "seed": 0, "checkpoint": None}
    page = (out / "discovery" / "report.html").read_text()
    assert "Mitigation: before and after" in page
    # a rerun resumes every step and repeats nothing
    capsys.readouterr()
    assert main(argv) == 0
    assert json.loads((out / "demo.json").read_text())["mitigation"] == d["mitigation"]


@pytest.mark.slow
def test_demo_from_the_pretrained_weights_on_another_layout(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n-train", "600", "--n-eval", "400", "--epochs", "2", "--pretrained",
                 "synthetic", "--placement", "adjacent", "--distractors", "1", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "from its shipped pretrained weights" in text and "feature next to the digit" in text
    # the planted feature is read from setting.json (region_attributes also name the distractors)
    assert "spurious feature 'red_square'" in text and "precision nan" not in text
    cfg = json.loads((out / "mitigated" / "config.json").read_text())
    assert cfg["init"]["pretrained"] == "synthetic" and cfg["mitigation"]["start"] == "init"
    d = json.loads((out / "demo.json").read_text())
    assert d["discovery"]["class"] == "nine"
    assert main(["demo", "--out", str(tmp_path / "x"), "--distractor-features", "red_square", "--distractors",
                 "1"]) == 2
    assert "--distractor-features includes red_square" in capsys.readouterr().err
