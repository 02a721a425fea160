"""Users' own data through the command line: region sources, prompts mined from captions, groups
from discovery when there are no region labels, ``ravl audit`` and the verify step of ``ravl mitigate``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ravl.cli import main
from ravl.data.dataset import load_dataset, write_metadata


def _copy_without(src: Path, dst: Path, *, drop=("region_attributes",), caption=None, splits=None) -> Path:
    """A copy of a dataset folder (images hard-linked) without some fields, with other captions."""
    ds = load_dataset(src)
    dst.mkdir(parents=True)
    rows = []
    for r in ds.records:
        if splits and r.split not in splits:
            continue
        (dst / r.file_name).parent.mkdir(parents=True, exist_ok=True)
        if not (dst / r.file_name).exists():
            shutil.copyfile(r.path, dst / r.file_name)
        row = {"file_name": r.file_name, "label": r.label, "split": r.split, "caption": r.caption}
        if "region_attributes" not in drop and r.region_attributes is not None:
            row["region_attributes"] = list(r.region_attributes)
        if caption is not None:
            row["caption"] = caption(r)
        rows.append(row)
    write_metadata(dst, rows)
    if (src / "classes.txt").is_file():
        shutil.copyfile(src / "classes.txt", dst / "classes.txt")
    return dst


def test_discover_with_region_sources_on_data_without_boxes(small_setting, trained_tiny, tmp_path, capsys):
    _, ckpt = trained_tiny
    ev = _copy_without(small_setting.eval_dir, tmp_path / "noboxes", drop=(), splits=("val",))
    assert not any("boxes" in json.loads(x) for x in (ev / "metadata.jsonl").read_text().splitlines())
    for spec in ("grid:3x3", "slic:16"):
        out = tmp_path / spec.replace(":", "_")
        assert main(["discover", "--checkpoint", str(ckpt), "--data", str(ev), "--out", str(out), "--regions", spec,
                     "--region-workers", "1", "--region-cache", str(tmp_path / "cache"), "--no-report",
                     "--quiet"]) == 0, capsys.readouterr().err
        d = json.loads((out / "discovery.json").read_text())
        assert d["meta"]["region_source"].startswith(spec) and d["meta"]["region_iou"] == 0.5
        per_image = 9 if spec == "grid:3x3" else None
        if per_image:
            assert d["n_regions"] == per_image * d["n_images"]
    # proposals a detector might give: each quadrant shrunk by 3 px (IoU (22/28)^2 = 0.62 with the annotated
    # quadrant), so each inherits its quadrant's attribute and the planted red square is scored by P@10
    props = tmp_path / "proposals.jsonl"
    q = [(0, 0), (28, 0), (0, 28), (28, 28)]
    props.write_text("".join(json.dumps({"file_name": r.file_name,
                                         "boxes": [[x + 3, y + 3, x + 25, y + 25] for x, y in q]}) + "\n"
                             for r in load_dataset(ev).records))
    out = tmp_path / "proposals"
    assert main(["discover", "--checkpoint", str(ckpt), "--data", str(ev), "--out", str(out), "--regions",
                 f"file:{props}", "--truth", "red_square", "--no-report", "--quiet"]) == 0
    d = json.loads((out / "discovery.json").read_text())
    assert d["features"] and d["features"][0]["class"] == "nine"
    assert d["features"][0]["precision_at_10"] >= 0.8
    # a bad spec is a usage error, before any work
    with pytest.raises(SystemExit) as exc:
        main(["discover", "--checkpoint", str(ckpt), "--data", str(ev), "--out", str(out), "--regions", "grid:0x3"])
    assert exc.value.code == 2
    assert "argument --regions: Invalid region source 'grid:0x3'" in capsys.readouterr().err


def test_finetune_records_caption_templates_and_evaluate_uses_them(small_setting, tmp_path, capsys):
    data = _copy_without(small_setting.train_dir, tmp_path / "data", drop=(),
                         caption=lambda r: f"snapshot whose digit reads {r.label} today")
    ckpt = tmp_path / "ckpt"
    assert main(["finetune", "--data", str(data), "--out", str(ckpt), "--epochs", "1", "--quiet"]) == 0
    recorded = json.loads((ckpt / "config.json").read_text())["templates"]
    assert recorded["templates"] == ["snapshot whose digit reads {} today"]
    assert recorded["source"] == "training captions"
    capsys.readouterr()
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(small_setting.eval_dir), "--json", str(out),
                 "--no-regions", "--quiet"]) == 0
    assert "prompt templates: mined from the training captions" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["templates"] == ["snapshot whose digit reads {} today"]
    assert res["evaluation"]["templates"] == ["snapshot whose digit reads {} today"]
    assert "mined from the training captions" in res["template_source"]
    # --templates wins over the checkpoint's
    tfile = tmp_path / "t.txt"
    tfile.write_text("the digit {}\n")
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(small_setting.eval_dir), "--json", str(out),
                 "--templates", str(tfile), "--no-regions", "--quiet"]) == 0
    assert json.loads(out.read_text())["templates"] == ["the digit {}"]


def test_evaluate_groups_from_discovery_without_region_labels(small_setting, trained_tiny, tmp_path, capsys):
    _, ckpt = trained_tiny
    bare = _copy_without(small_setting.eval_dir, tmp_path / "bare")
    assert main(["discover", "--checkpoint", str(ckpt), "--data", str(bare), "--out", str(tmp_path / "disc"),
                 "--no-report", "--quiet"]) == 0
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(bare), "--groups-from",
                 str(tmp_path / "disc" / "discovery.json"), "--json", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "groups: discovered feature #1" in text and "worst group (image)" in text
    res = json.loads(out.read_text())
    assert res["evaluation"]["meta"]["groups_from"] == "given"
    assert res["groups_from"].endswith("discovery.json")
    assert res["metrics"]["Image Worst-Group"] is not None and res["metrics"]["Region Overall"] is None
    # the discovered feature is the red square: 'nine' is much better recognised with it than without
    groups = {(g["label"], g["feature_present"]): g["accuracy"] for g in res["evaluation"]["image"]["groups"]}
    assert groups[("nine", True)] - groups[("nine", False)] > 0.3


@pytest.mark.slow
def test_audit_then_mitigate_with_the_verify_step(small_setting, trained_tiny, tmp_path, capsys):
    _, ckpt = trained_tiny
    audit = tmp_path / "audit"
    assert main(["audit", "--checkpoint", str(ckpt), "--data", str(small_setting.eval_dir), "--out", str(audit),
                 "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "report:" in text and (audit / "report.html").is_file()
    page = (audit / "report.html").read_text()
    assert "Zero-shot accuracy" in page and "Feature 1" in page
    ev = json.loads((audit / "evaluation.json").read_text())
    assert ev["groups_from"] == "region_attributes" and ev["metrics"]["Image Worst-Group"] is not None

    out = tmp_path / "mitigated"
    assert main(["mitigate", "--checkpoint", str(ckpt), "--data", str(small_setting.train_dir), "--discovery",
                 str(audit / "discovery.json"), "--out", str(out), "--epochs", "2", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "verify: each discovered feature" in text and "discovery on the mitigated model" in text
    v = json.loads((out / "verify.json").read_text())
    top = v["features"][0]
    assert top["class"] == "nine" and top["class_before"]["gap"] > 0
    assert set(top["class_after"]) == {"class", "acc_with", "n_with", "acc_without", "n_without", "gap"}
    assert v["rediscovery"] is not None
    page = (out / "report.html").read_text()
    assert "Each discovered feature, before and after mitigation" in page and "Mitigation: before and after" in page
