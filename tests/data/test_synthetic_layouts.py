"""Other image layouts of the synthetic builder: more cells, distractor objects, the feature next to
the digit (ravl.data.synthetic.SyntheticLayout), through the builder, the benchmark configs and the CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ravl.benchmarks.discovery import BenchmarkConfig
from ravl.benchmarks.grid import describe_grid_layout, grid_layout
from ravl.benchmarks.mitigation import MitigationBenchmarkConfig
from ravl.cli import main
from ravl.data.dataset import grid_boxes, load_dataset
from ravl.data.features import render_feature
from ravl.data.synthetic import SETTING_FILE, SyntheticLayout, make_spurious_benchmark, read_setting
from ravl.exceptions import InvalidParameterError

tiny = pytest.mark.filterwarnings("ignore:The fine-tuning set reached:ravl.exceptions.RavlWarning")


def build(out, **kw):
    kw = {"n_train": 600, "n_eval": 200, "progress": False, **kw}
    return make_spurious_benchmark(out, **kw)


def rows_and_pixels(folder: Path):
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    return rows, np.stack([np.asarray(Image.open(folder / r["file_name"])) for r in rows])


def cell(img: np.ndarray, k: int, g: int) -> np.ndarray:
    q = img.shape[0] // g
    y, x = (k // g) * q, (k % g) * q
    return img[y:y + q, x:x + q]


def neighbours(a: int, b: int, g: int) -> bool:
    (ra, ca), (rb, cb) = divmod(a, g), divmod(b, g)
    return abs(ra - rb) + abs(ca - cb) == 1


@pytest.fixture(scope="module")
def grid3(tmp_path_factory):
    """3x3 grid, two distractors per image, 28-px cells."""
    return build(tmp_path_factory.mktemp("g3") / "out", layout={"grid_size": 3, "distractors": 2}, random_state=1)


def test_grid_setting_records_its_layout(grid3):
    assert grid3.layout == SyntheticLayout(grid_size=3, distractors=2, distractor_features=("ring", "stripes"))
    assert grid3.image_size == 84
    assert read_setting(grid3.root) == grid3
    assert "3x3 grid, 2 distractors per image (ring, stripes)" in grid3.summary()
    ds = load_dataset(grid3.train_dir)
    assert len(ds) == 600


@pytest.mark.parametrize("which", ["train", "eval"])
def test_grid_cells_hold_what_the_attributes_say(grid3, which):
    folder = grid3.train_dir if which == "train" else grid3.eval_dir
    rows, images = rows_and_pixels(folder)
    tiles = {name: render_feature(name, 28) for name in ("red_square", "ring", "stripes")}
    boxes = [[int(v) for v in b] for b in grid_boxes(84, 84, (3, 3))]
    cells_used = set()
    for r, img in zip(rows, images):
        attrs = r["region_attributes"]
        assert img.shape == (84, 84, 3) and r["boxes"] == boxes and len(attrs) == 9
        assert attrs.count(r["label"]) == 1
        assert ("red_square" in attrs) == r["has_feature"]
        assert attrs.count("ring") + attrs.count("stripes") == 2          # exactly two distractors
        assert attrs.count("empty") == 9 - 3 - r["has_feature"]
        for k, a in enumerate(attrs):
            c = cell(img, k, 3)
            if a in tiles:
                assert np.array_equal(c, tiles[a])
            elif a == "empty":
                assert not c.any()
            else:
                assert (c[..., 0] == c[..., 1]).all() and c.max() > 200   # a grey digit
        cells_used.add(attrs.index(r["label"]))
    assert cells_used == set(range(9))                                     # the digit goes everywhere


def test_distractors_are_independent_of_the_class(grid3):
    rows, _ = rows_and_pixels(grid3.train_dir)
    ring = np.array(["ring" in r["region_attributes"] for r in rows])
    nine = np.array([r["label"] == "nine" for r in rows])
    feat = np.array([r["has_feature"] for r in rows])
    # the feature is tied to 'nine' (V 0.95), the distractors are not: P(ring) is the same for both groups
    assert feat[nine].mean() - feat[~nine].mean() > 0.8
    assert abs(ring[nine].mean() - ring[~nine].mean()) < 0.12
    assert 0.6 < ring.mean() < 0.9     # P(at least one ring among two draws of two kinds) = 0.75


@tiny
def test_adjacent_placement_puts_the_feature_next_to_the_digit(tmp_path):
    for g in (2, 3):
        s = build(tmp_path / f"g{g}", layout={"grid_size": g, "placement": "adjacent"}, cramers_v=0.0, n_train=200,
                  n_eval=60)
        pairs = set()
        for folder in (s.train_dir, s.eval_dir):
            rows, _ = rows_and_pixels(folder)
            for r in rows:
                if r["has_feature"]:
                    a = r["region_attributes"]
                    d, f = a.index(r["label"]), a.index("red_square")
                    assert neighbours(d, f, g)
                    pairs.add((d, f))
        n_adjacent = sum(neighbours(a, b, g) for a in range(g * g) for b in range(g * g))
        assert len(pairs) == n_adjacent     # every adjacent pair occurs


def test_default_layout_is_the_reference_grid(tmp_path):
    s = build(tmp_path, n_train=200, n_eval=60)
    assert s.layout == SyntheticLayout(distractor_features=()) and s.image_size == 56
    assert s.layout.describe() == "2x2 grid, feature in any free cell"


def test_setting_without_a_layout_record_is_reused(tmp_path, caplog, monkeypatch):
    """Folders written before layouts existed (no "layout" in setting.json) are the default layout."""
    s = build(tmp_path, n_train=200, n_eval=60)
    d = json.loads((tmp_path / SETTING_FILE).read_text())
    del d["layout"]
    (tmp_path / SETTING_FILE).write_text(json.dumps(d))
    from ravl.data import synthetic

    monkeypatch.setattr(synthetic, "_write_folder", lambda *a, **k: pytest.fail("rebuilt"))
    with caplog.at_level(logging.INFO, logger="ravl.data.synthetic"):
        again = build(tmp_path, n_train=200, n_eval=60)
    assert again.layout == s.layout and "up to date" in caplog.text


@tiny
def test_another_layout_rebuilds(tmp_path, caplog):
    build(tmp_path, n_train=100, n_eval=40)
    with caplog.at_level(logging.INFO, logger="ravl.data.synthetic"):
        s = build(tmp_path, n_train=100, n_eval=40, layout=SyntheticLayout(distractors=1))
    assert "Rebuilding" in caplog.text and "layout" in caplog.text
    assert s.layout.distractors == 1 and s.layout.distractor_features == ("ring", "stripes")


@pytest.mark.parametrize("layout, match", [
    ({"grid_size": 1}, r"'grid_size' parameter of SyntheticLayout must be an int in \[2, 8\]"),
    ({"distractors": 3}, r"'distractors' parameter of SyntheticLayout must be an int in \[0, 2\]"),
    ({"placement": "near"}, "'placement' parameter of SyntheticLayout must be one of 'random', 'adjacent'"),
    ({"distractors": 1, "distractor_features": ["red_square"]}, "include the setting's feature 'red_square'"),
    ({"distractors": 1, "distractor_features": ["rng"]}, "Unknown spurious feature 'rng'"),
    ({"grid": 3}, r"unknown layout field\(s\) \['grid'\]"),
])
def test_bad_layouts(tmp_path, layout, match):
    with pytest.raises(ValueError, match=match):   # InvalidParameterError or UnknownNameError
        build(tmp_path, layout=layout)
    assert not (tmp_path / "train").exists()


@tiny
def test_image_size_must_fit_the_grid(tmp_path):
    with pytest.raises(InvalidParameterError, match="multiple of the grid size 3"):
        build(tmp_path, layout={"grid_size": 3}, image_size=56)
    s = build(tmp_path, layout={"grid_size": 3}, image_size=60, n_train=100, n_eval=40)
    assert s.image_size == 60 and tuple(load_dataset(s.train_dir)[0].boxes[1]) == (20.0, 0.0, 40.0, 20.0)


# --------------------------------------------------------------------------------------------
# benchmark configs and the command line
# --------------------------------------------------------------------------------------------

def test_grid_configs_record_a_layout_only_when_not_the_default():
    assert grid_layout(None) == {} and grid_layout({"grid_size": 2, "placement": "random"}) == {}
    for cls in (BenchmarkConfig, MitigationBenchmarkConfig):
        assert "layout" not in cls().to_dict()       # earlier work folders still resume
        cfg = cls(layout={"grid_size": 3, "distractors": 2, "placement": "random"})
        assert cfg.to_dict()["layout"] == {"grid_size": 3, "distractors": 2}
        assert cls.from_dict(cfg.to_dict()) == cfg
        with pytest.raises(InvalidParameterError, match="distractors"):
            cls(layout={"distractors": 5})
    assert describe_grid_layout({"placement": "adjacent"}) == "2x2 grid, feature next to the digit"


def test_cli_builds_a_layout(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["make-benchmark", "--out", str(out), "--grid-size", "3", "--distractors", "1",
                 "--distractor-features", "stripes", "--placement", "adjacent", "--n-train", "200", "--n-eval", "60",
                 "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "layout: 3x3 grid, 1 distractor per image (stripes), feature next to the digit, 84x84 px" in text
    s = read_setting(out)
    assert s.layout == SyntheticLayout(grid_size=3, distractors=1, placement="adjacent",
                                       distractor_features=("stripes",))


@pytest.mark.parametrize("argv, message", [
    (["--grid-size", "9"], "error: --grid-size must be in [2, 8]; got 9."),
    (["--distractors", "3"], "error: --distractors must be in [0, 2] with --grid-size 2"),
    (["--distractor-features", "ring"], "error: --distractor-features needs --distractors N"),
    (["--distractors", "1", "--distractor-features", "red_square"],
     "error: --distractor-features includes red_square, a planted feature of this run"),
    (["--distractors", "1", "--distractor-features", "rng"], "error: Unknown spurious feature 'rng' (--distractor-features)"),
    (["--grid-size", "3", "--image-size", "56"], "error: --image-size must be a multiple of --grid-size 3"),
])
def test_cli_layout_errors(tmp_path, capsys, argv, message):
    assert main(["make-benchmark", "--out", str(tmp_path / "s"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s" / "train").exists()


def test_benchmark_cli_checks_the_layout_before_any_work(tmp_path, capsys):
    for cmd in (["benchmark", "mitigate"], ["benchmark", "discover"]):
        assert main([*cmd, "--out", str(tmp_path / "w"), "--features", "ring", "--distractors", "1",
                     "--distractor-features", "ring"]) == 2
        assert "--distractor-features includes ring" in capsys.readouterr().err
        assert not (tmp_path / "w").exists()


# --------------------------------------------------------------------------------------------
# the planted feature where several attributes are neither a class nor empty
# --------------------------------------------------------------------------------------------

def test_planted_feature_is_read_from_the_setting(grid3, tmp_path):
    from ravl.data.attributes import infer_spurious_feature
    from ravl.data.synthetic import planted_feature

    rows, _ = rows_and_pixels(grid3.eval_dir)
    attrs = [a for r in rows for a in r["region_attributes"]]
    assert infer_spurious_feature(attrs, grid3.classes) is None          # ring, stripes, red_square: ambiguous
    assert planted_feature(grid3.eval_dir) == planted_feature(grid3.train_dir) == "red_square"
    assert planted_feature(tmp_path) is None
    (tmp_path / "x").mkdir()
    (tmp_path / SETTING_FILE).write_text("not json")
    assert planted_feature(tmp_path / "x") is None


def test_evaluate_cli_groups_a_distractor_setting_by_its_planted_feature(grid3, tmp_path, capsys):
    import ravl

    ckpt = tmp_path / "ckpt"
    ravl.save_checkpoint(ravl.load_model("tiny", seed=0), ckpt)
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(grid3.eval_dir), "--no-regions",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "spurious feature 'red_square'" in out and "with red_square" in out and "Image Worst-Group" in out


def test_evaluate_api_groups_a_distractor_setting_by_its_planted_feature(grid3, tmp_path):
    import shutil

    import ravl

    model = ravl.load_model("tiny", seed=0)
    r = ravl.evaluate(model, ravl.load_dataset(grid3.eval_dir), split="test", regions=False, progress=False)
    assert r.spurious_feature == "red_square" and r.meta["groups_from"] == "region_attributes"
    assert {g.feature_present for g in r.image.groups} == {True, False}
    # the same rows outside their setting folder: ambiguous again, so no groups and a warning
    shutil.copytree(grid3.eval_dir, tmp_path / "alone")
    with pytest.warns(ravl.RavlWarning, match="several region attributes"):
        r = ravl.evaluate(model, ravl.load_dataset(tmp_path / "alone"), split="test", regions=False, progress=False)
    assert r.spurious_feature is None
