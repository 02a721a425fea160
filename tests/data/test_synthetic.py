"""Tests of the synthetic spurious-correlation builder (ravl.data.synthetic) and `ravl make-benchmark`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats.contingency import association

from ravl.cli import main
from ravl.data.dataset import grid_boxes, load_dataset
from ravl.data.digits import DIGIT_CLASSES
from ravl.data.features import render_feature
from ravl.data.synthetic import (
    CAPTION_TEMPLATES,
    SETTING_FILE,
    SpuriousSetting,
    cramers_v_of,
    make_contingency_table,
    make_spurious_benchmark,
    read_setting,
)
from ravl.exceptions import DatasetError, RavlWarning

TARGETS = (0.7, 0.8, 0.9, 0.95, 0.99)
# tiny builds (tens of images) cannot reach a target V closely and say so; expected here
tiny = pytest.mark.filterwarnings("ignore:The fine-tuning set reached:ravl.exceptions.RavlWarning")
FEATURE_WORDS = ("red", "square", "ring", "stripe", "yellow", "cyan", "circle", "feature", "colour", "color")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def build(out, **kw):
    kw = {"n_train": 300, "n_eval": 100, "progress": False, **kw}
    return make_spurious_benchmark(out, **kw)


def read_rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


def load_pixels(folder: Path, rows: list[dict]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(folder / r["file_name"])) for r in rows])


def table_of(rows: list[dict]) -> np.ndarray:
    t = np.zeros((10, 2), dtype=np.int64)
    for r in rows:
        t[DIGIT_CLASSES.index(r["label"]), int(r["has_feature"])] += 1
    return t


def quadrant(img: np.ndarray, k: int) -> np.ndarray:
    q = img.shape[0] // 2
    y, x = (k // 2) * q, (k % 2) * q
    return img[y:y + q, x:x + q]


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """red_square <-> 'nine', V = 0.9, 1,000 + 300 images."""
    return make_spurious_benchmark(tmp_path_factory.mktemp("s") / "out", spurious_class="nine", feature="red_square",
                                   cramers_v=0.9, n_train=1000, n_eval=300, random_state=0, progress=False)


@pytest.fixture(scope="module")
def train_rows(setting):
    return read_rows(setting.train_dir)


@pytest.fixture(scope="module")
def eval_rows(setting):
    return read_rows(setting.eval_dir)


# --------------------------------------------------------------------------------------------
# contingency construction
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("spurious_index", [0, 3, 9])
@pytest.mark.parametrize("seed", [0, 1])
def test_cramers_v_reaches_target(target, spurious_index, seed):
    table, v = make_contingency_table(10000, spurious_index=spurious_index, cramers_v=target, random_state=seed)
    assert abs(v - target) <= 0.02
    assert v <= target + 1e-9                      # stops as soon as chi2 <= V^2 N
    assert abs(v - target) <= 0.002                # the single-move finish makes it much tighter
    assert v == pytest.approx(association(table, method="cramer"), abs=1e-12)
    assert table.sum() == 10000 and (table >= 0).all()
    counts = table.sum(1)
    assert (np.abs(counts - 1000) <= 21).all()      # N/C +- 20 (+1 to make the total exact)
    rate = table[:, 1] / counts
    assert rate[spurious_index] > 0.9 and np.delete(rate, spurious_index).max() < 0.15


@pytest.mark.parametrize("target", TARGETS)
def test_cramers_v_reaches_target_at_small_n(target):
    for seed in range(3):
        _, v = make_contingency_table(1200, spurious_index=seed * 4, cramers_v=target, random_state=seed)
        assert abs(v - target) <= 0.02


def test_zero_v_means_independence():
    table, v = make_contingency_table(10001, spurious_index=4, cramers_v=0.0, random_state=0)
    assert (np.abs(table[:, 1] - table[:, 0]) <= 1).all()   # half of every class has the feature
    assert v < 0.01


def test_full_v_is_perfect_association():
    table, v = make_contingency_table(500, spurious_index=2, cramers_v=1.0, random_state=0)
    assert v == pytest.approx(1.0)
    assert table[2, 0] == 0 and table[2, 1] > 0 and (np.delete(table, 2, axis=0)[:, 1] == 0).all()


def test_contingency_is_deterministic():
    a = make_contingency_table(3000, cramers_v=0.8, random_state=5)
    b = make_contingency_table(3000, cramers_v=0.8, random_state=5)
    c = make_contingency_table(3000, cramers_v=0.8, random_state=6)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1] and not np.array_equal(a[0], c[0])


def test_cramers_v_of_matches_scipy():
    rng = np.random.default_rng(0)
    for _ in range(5):
        t = rng.integers(1, 50, size=(10, 2))
        assert cramers_v_of(t) == pytest.approx(association(t, method="cramer"))
    assert cramers_v_of(np.array([[5, 0], [3, 0]])) == 0.0   # one column: no association measurable
    assert cramers_v_of(np.array([[10, 0], [0, 10]])) == pytest.approx(1.0)


def test_contingency_bad_parameters():
    with pytest.raises(ValueError, match=r"The 'cramers_v' parameter of make_contingency_table must be a float in "
                                         r"\[0.0, 1.0\]. Got 1.2 instead."):
        make_contingency_table(100, cramers_v=1.2)
    with pytest.raises(ValueError, match=r"The 'n' parameter of make_contingency_table must be an int in \[20, inf\)"):
        make_contingency_table(10)
    with pytest.raises(ValueError, match="'spurious_index' parameter"):
        make_contingency_table(100, spurious_index=10)


# --------------------------------------------------------------------------------------------
# the built setting
# --------------------------------------------------------------------------------------------

def test_setting_record(setting):
    assert isinstance(setting, SpuriousSetting)
    assert setting.spurious_class == "nine" and setting.spurious_index == 9 and setting.feature == "red_square"
    assert setting.target_v == 0.9 and abs(setting.achieved_v - 0.9) <= 0.02
    assert setting.classes == DIGIT_CLASSES and setting.templates == CAPTION_TEMPLATES
    assert (setting.n_train, setting.n_val, setting.n_eval, setting.n_eval_val) == (1000, 50, 300, 150)
    assert setting.seed == 0 and setting.source == "sklearn" and setting.image_size == 56
    assert setting.contingency_table.shape == (10, 2) and setting.contingency_table.sum() == 1000
    assert setting.feature_rate[9] > 0.9
    assert setting.n_train_digits + setting.n_eval_digits == 1797
    assert setting.train_dir.is_absolute() and setting.train_dir.name == "train" and setting.eval_dir.name == "eval"
    assert setting.root == setting.train_dir.parent


def test_setting_round_trips_to_json(setting):
    assert SpuriousSetting.from_dict(setting.to_dict()) == setting
    assert SpuriousSetting.from_json(setting.to_json()) == setting
    on_disk = json.loads((setting.root / SETTING_FILE).read_text())
    assert on_disk == json.loads(setting.to_json())
    assert read_setting(setting.root) == setting and read_setting(setting.root / SETTING_FILE) == setting
    for key in ("target_v", "achieved_v", "contingency", "spurious_class", "feature", "seed", "source",
                "train_dir", "eval_dir", "classes", "n_train", "n_eval"):
        assert key in on_disk


def test_read_setting_errors(tmp_path):
    with pytest.raises(DatasetError, match="No setting.json"):
        read_setting(tmp_path)
    (tmp_path / SETTING_FILE).write_text("{}")
    with pytest.raises(DatasetError, match="is not a setting"):
        read_setting(tmp_path)


def test_folders_load_and_validate(setting):
    train = load_dataset(setting.train_dir, require_fields=("caption", "label", "split", "boxes",
                                                            "region_attributes"))
    ev = load_dataset(setting.eval_dir, require_fields=("label", "split", "region_attributes"))
    assert train.classes == DIGIT_CLASSES and ev.classes == DIGIT_CLASSES
    assert (setting.train_dir / "classes.txt").read_text().splitlines() == list(DIGIT_CLASSES)
    assert len(train) == 1000 and len(ev) == 300
    assert len(train.subset("val")) == 50 and len(train.subset("train")) == 950
    assert len(ev.subset("val")) == 150 and len(ev.subset("test")) == 150
    rec = train[0]
    assert (rec.width, rec.height) == (56, 56) and not rec.boxes_from_grid
    assert list(rec.boxes) == grid_boxes(56, 56, (2, 2))
    assert ev.region_table().attributes is not None


def test_train_table_matches_metadata(setting, train_rows):
    t = table_of(train_rows)
    assert np.array_equal(t, setting.contingency_table)
    assert cramers_v_of(t) == pytest.approx(setting.achieved_v)
    # the val split follows the same association (stratified by class and feature)
    val = [r for r in train_rows if r["split"] == "val"]
    tv = table_of(val)
    assert np.all(np.abs(tv - t * 0.05) <= 1.0)


def test_eval_feature_is_independent_of_class(setting, eval_rows):
    t = table_of(eval_rows)
    assert np.array_equal(t, np.asarray(setting.eval_contingency))
    assert (t.sum(1) == 30).all()                       # balanced classes
    assert (np.abs(t[:, 1] - t[:, 0]) <= 1).all()       # p(feature) = 0.5 in every class
    assert setting.eval_v < 0.05
    for split in ("val", "test"):                        # halves stratified by class and feature
        ts = table_of([r for r in eval_rows if r["split"] == split])
        assert np.all(np.abs(ts - t / 2) <= 1.0)
        assert abs(ts[:, 1].sum() / ts.sum() - 0.5) < 0.05


def test_captions_name_the_digit_only(train_rows, eval_rows):
    used = set()
    for r in train_rows + eval_rows:
        matches = [t for t in CAPTION_TEMPLATES if t.format(r["label"]) == r["caption"]]
        assert len(matches) == 1, r["caption"]
        used.add(matches[0])
        assert not any(w in r["caption"] for w in FEATURE_WORDS)
        assert "red_square" not in r["caption"]
    assert used == set(CAPTION_TEMPLATES)


@pytest.mark.parametrize("which", ["train", "eval"])
def test_region_attributes_match_pixels(setting, which, train_rows, eval_rows):
    folder = setting.train_dir if which == "train" else setting.eval_dir
    rows = train_rows if which == "train" else eval_rows
    images = load_pixels(folder, rows)
    red = render_feature("red_square", 28)
    positions = set()
    for r, img in zip(rows, images):
        attrs = r["region_attributes"]
        assert img.shape == (56, 56, 3) and img.dtype == np.uint8
        assert sorted(attrs).count(r["label"]) == 1
        assert ("red_square" in attrs) == r["has_feature"]
        assert attrs.count("empty") == (2 if r["has_feature"] else 3)
        for k, a in enumerate(attrs):
            q = quadrant(img, k).astype(int)
            if a == "red_square":
                assert np.array_equal(q, red)                      # pure red, the whole quadrant
            elif a == "empty":
                assert not q.any()                                 # black
            else:
                assert a == r["label"]
                assert (q[..., 0] == q[..., 1]).all() and (q[..., 1] == q[..., 2]).all()  # grey digit
                assert q.max() > 200 and (q > 100).mean() > 0.03  # something is drawn
        positions.add((attrs.index(r["label"]), attrs.index("red_square") if r["has_feature"] else -1))
    # all 4 digit positions and all 12 (digit, feature) ordered pairs occur: drawn without replacement
    assert {p[0] for p in positions} == {0, 1, 2, 3}
    assert {p for p in positions if p[1] >= 0} == {(a, b) for a in range(4) for b in range(4) if a != b}


def test_train_and_eval_digits_are_disjoint(train_rows, eval_rows):
    train_ids = {r["digit_id"] for r in train_rows}
    eval_ids = {r["digit_id"] for r in eval_rows}
    assert train_ids.isdisjoint(eval_ids)
    assert len(eval_ids) > 200  # evaluation uses many distinct digits, not a handful


def test_digit_pixels_come_from_the_source(setting, train_rows):
    from ravl.data.digits import load_sklearn_digits

    src = load_sklearn_digits()
    rows = train_rows[:40]
    for r, img in zip(rows, load_pixels(setting.train_dir, rows)):
        k = r["region_attributes"].index(r["label"])
        assert np.array_equal(quadrant(img, k)[..., 0], src.images[r["digit_id"]])
        assert DIGIT_CLASSES[src.labels[r["digit_id"]]] == r["label"]


# --------------------------------------------------------------------------------------------
# variants
# --------------------------------------------------------------------------------------------

@tiny
@pytest.mark.parametrize("feature", ["ring", "stripes"])
def test_other_features_painted_where_the_attributes_say(tmp_path, feature):
    s = build(tmp_path, feature=feature, spurious_class=3, cramers_v=0.0, n_train=100, n_eval=40)
    tile = render_feature(feature, 28)
    rows = read_rows(s.eval_dir)
    assert s.spurious_class == "three"
    n_with = 0
    for r, img in zip(rows, load_pixels(s.eval_dir, rows)):
        for k, a in enumerate(r["region_attributes"]):
            if a == feature:
                n_with += 1
                assert np.array_equal(quadrant(img, k), tile)
    assert n_with == 20


def test_zero_v_setting_is_independent(tmp_path):
    s = build(tmp_path, cramers_v=0.0, n_train=400)
    t = table_of(read_rows(s.train_dir))
    assert (np.abs(t[:, 1] - t[:, 0]) <= 1).all() and s.achieved_v < 0.05


@tiny
def test_other_image_size(tmp_path):
    s = build(tmp_path, image_size=32, n_train=40, n_eval=20)
    rows = read_rows(s.train_dir)
    assert rows[0]["boxes"] == [[0, 0, 16, 16], [16, 0, 32, 16], [0, 16, 16, 32], [16, 16, 32, 32]]
    for r, img in zip(rows, load_pixels(s.train_dir, rows)):
        assert img.shape == (32, 32, 3)
        if r["has_feature"]:
            q = quadrant(img, r["region_attributes"].index("red_square"))
            assert (q == (255, 0, 0)).all()


@tiny
def test_custom_registered_feature(tmp_path, monkeypatch):
    from ravl.data import features

    monkeypatch.setattr(features.FEATURES, "_entries", dict(features.FEATURES._entries))
    features.register_feature("green_bar", lambda s: np.pad(np.full((s, s // 2, 3), (0, 255, 0), np.uint8),
                                                              ((0, 0), (0, s - s // 2), (0, 0))))
    s = build(tmp_path, feature="green_bar", n_train=60, n_eval=20)
    rows = read_rows(s.train_dir)
    assert any("green_bar" in r["region_attributes"] for r in rows)
    features._render_cached.cache_clear()


def test_warns_when_too_few_images_for_the_target(tmp_path):
    with pytest.warns(RavlWarning, match="too few to get closer"):
        build(tmp_path, n_train=20, n_eval=20, cramers_v=0.8)


# --------------------------------------------------------------------------------------------
# determinism, reuse, rebuild
# --------------------------------------------------------------------------------------------

def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = build(tmp_path / "a", random_state=7)
    b = build(tmp_path / "b", random_state=7)
    c = build(tmp_path / "c", random_state=8)
    for d in ("train", "eval"):
        fa, fb = files_of(tmp_path / "a" / d), files_of(tmp_path / "b" / d)
        assert fa == fb  # metadata.jsonl, classes.txt and every PNG byte-identical
    assert a.contingency == b.contingency and a.achieved_v == b.achieved_v
    assert (tmp_path / "a/train/metadata.jsonl").read_bytes() != (tmp_path / "c/train/metadata.jsonl").read_bytes()
    assert (tmp_path / "a/eval/metadata.jsonl").read_bytes() != (tmp_path / "c/eval/metadata.jsonl").read_bytes()
    assert c.seed == 8


def test_eval_set_shared_across_classes_and_strengths(tmp_path):
    build(tmp_path / "a", spurious_class="nine", cramers_v=0.9)
    build(tmp_path / "b", spurious_class="two", cramers_v=0.7)
    assert files_of(tmp_path / "a" / "eval") == files_of(tmp_path / "b" / "eval")
    assert files_of(tmp_path / "a" / "train") != files_of(tmp_path / "b" / "train")


def test_same_parameters_reuse_the_folder(tmp_path, caplog, monkeypatch):
    s1 = build(tmp_path)
    from ravl.data import synthetic

    def boom(*a, **k):
        raise AssertionError("should not rebuild")

    monkeypatch.setattr(synthetic, "_write_folder", boom)
    with caplog.at_level(logging.INFO, logger="ravl.data.synthetic"):
        s2 = build(tmp_path, spurious_class=9)  # same parameters, class given as an index
    assert s2 == s1 and "up to date" in caplog.text


def test_changed_parameters_rebuild(tmp_path, caplog):
    s1 = build(tmp_path)
    (tmp_path / "train" / "stale.txt").write_text("old")
    with caplog.at_level(logging.INFO, logger="ravl.data.synthetic"):
        s2 = build(tmp_path, cramers_v=0.7)
    assert "Rebuilding" in caplog.text and "cramers_v 0.95 -> 0.7" in caplog.text
    assert s2.target_v == 0.7 and s2.contingency != s1.contingency
    assert read_setting(tmp_path) == s2
    assert not (tmp_path / "train" / "stale.txt").exists()
    assert not list(tmp_path.glob(".ravl-build-*"))


def test_incomplete_folder_is_rebuilt(tmp_path, caplog):
    build(tmp_path)
    (tmp_path / "eval" / "metadata.jsonl").unlink()
    with caplog.at_level(logging.INFO, logger="ravl.data.synthetic"):
        build(tmp_path)
    assert "incomplete" in caplog.text and (tmp_path / "eval" / "metadata.jsonl").is_file()


def test_unseeded_builds_record_their_seed(tmp_path):
    a = build(tmp_path / "a", random_state=None)
    b = build(tmp_path / "b", random_state=np.random.default_rng(3))
    again = build(tmp_path / "c", random_state=b.seed)
    assert isinstance(a.seed, int) and a.seed >= 0
    assert files_of(tmp_path / "b" / "train") == files_of(tmp_path / "c" / "train")
    assert again.contingency == b.contingency


def test_refuses_foreign_folders_and_cleans_staging(tmp_path):
    (tmp_path / "mine" / "train").mkdir(parents=True)
    (tmp_path / "mine" / "train" / "precious.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not made by make_spurious_benchmark"):
        build(tmp_path / "mine")
    assert (tmp_path / "mine" / "train" / "precious.txt").read_text() == "keep me"
    out = tmp_path / "out"
    (out / ".ravl-build-deadbeef").mkdir(parents=True)
    build(out)
    assert not (out / ".ravl-build-deadbeef").exists()


def test_failed_build_keeps_the_previous_setting(tmp_path, monkeypatch):
    s1 = build(tmp_path)
    from ravl.data import synthetic

    monkeypatch.setattr(synthetic, "_png_bytes", lambda img: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        build(tmp_path, cramers_v=0.8)
    assert read_setting(tmp_path) == s1
    assert not list(tmp_path.glob(".ravl-build-*"))


# --------------------------------------------------------------------------------------------
# parameter validation
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,match", [
    ({"spurious_class": "ten"}, r"The 'spurious_class' parameter of make_spurious_benchmark must be a class name in "
                                r"\{'zero', .*'nine'\} or an index in \[0, 9\]. Got 'ten' instead.$"),
    ({"spurious_class": "nien"}, "Did you mean 'nine'"),
    ({"spurious_class": 10}, r"The 'spurious_class' parameter of make_spurious_benchmark must be an int in \[0, 9\]"),
    ({"spurious_class": True}, "'spurious_class' parameter"),
    ({"feature": "red_sqare"}, r"Unknown spurious feature 'red_sqare' \(the 'feature' parameter of "
                               r"make_spurious_benchmark\)\. Did you mean 'red_square'"),
    ({"cramers_v": 1.5}, r"The 'cramers_v' parameter of make_spurious_benchmark must be a float in \[0.0, 1.0\]. "
                         r"Got 1.5 instead."),
    ({"cramers_v": float("nan")}, "'cramers_v' parameter"),
    ({"n_train": 10}, r"The 'n_train' parameter of make_spurious_benchmark must be an int in \[20, inf\). "
                      r"Got 10 instead."),
    ({"n_eval": 2.5}, "'n_eval' parameter"),
    ({"val_fraction": 0.7}, r"'val_fraction' parameter of make_spurious_benchmark must be a float in \[0.0, 0.5\]"),
    ({"source": "cifar"}, r"The 'source' parameter must be one of"),
    ({"source": 3}, r"The 'source' parameter of make_spurious_benchmark must be a string"),
    ({"image_size": 57}, r"The 'image_size' parameter of make_spurious_benchmark must be an int in \[8, 1024\], a "
                         r"multiple of the grid size 2"),
    ({"random_state": -1}, "'random_state' parameter of make_spurious_benchmark"),
    ({"random_state": "abc"}, "'random_state' parameter of make_spurious_benchmark"),
])
def test_bad_parameters(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        build(tmp_path, **kw)
    assert not (tmp_path / "train").exists()


@tiny
@pytest.mark.parametrize("given", ["nine", "NINE", "9", 9])
def test_spurious_class_spellings(tmp_path, given):
    assert build(tmp_path, spurious_class=given, n_train=40, n_eval=20).spurious_class == "nine"


def test_bad_source_path_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        build(tmp_path, source=f"mnist-idx:{tmp_path / 'nope'}")


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------

def test_cli_builds_and_prints_summary(tmp_path, capsys):
    out = tmp_path / "bench"
    rc = main(["make-benchmark", "--out", str(out), "--spurious-class", "three", "--feature", "ring",
               "--cramers-v", "0.8", "--n-train", "400", "--n-eval", "60", "--seed", "2", "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    s = read_setting(out)
    assert s.spurious_class == "three" and s.feature == "ring" and s.seed == 2 and s.n_train == 400
    assert "target 0.800" in text and f"achieved {s.achieved_v:.4f}" in text
    assert "three *" in text and str(out / "train") in text and str(out / "eval") in text
    assert "setting.json" in text
    # the caption templates, ready for --templates (read back by ravl.zeroshot.read_templates)
    from ravl.data.synthetic import CAPTION_TEMPLATES
    from ravl.zeroshot import read_templates

    assert read_templates(out / "templates.txt") == tuple(CAPTION_TEMPLATES) and "templates.txt" in text
    # the contingency table is printed, one line per class
    for c, (without, with_) in zip(s.classes, s.contingency):
        line = next(ln for ln in text.splitlines() if ln.startswith(c))
        assert line.split()[-5:-3] == [str(without), str(with_)]


def test_cli_errors(tmp_path, capsys):
    assert main(["make-benchmark", "--out", str(tmp_path), "--feature", "rng"]) == 2
    err = capsys.readouterr().err
    assert "error: Unknown spurious feature 'rng'" in err and "Did you mean 'ring'" in err
    assert main(["make-benchmark", "--out", str(tmp_path), "--cramers-v", "2"]) == 2
    assert main(["make-benchmark", "--out", str(tmp_path), "--source", f"mnist-idx:{tmp_path / 'x'}"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_cli_help_lists_features(capsys):
    with pytest.raises(SystemExit):
        main(["make-benchmark", "--help"])
    text = capsys.readouterr().out
    for name in ("red_square", "ring", "stripes", "--cramers-v", "--source", "--n-train", "--seed"):
        assert name in text


@tiny
def test_no_global_random_state_used(tmp_path):
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    build(tmp_path, n_train=40, n_eval=20)
    assert np.array_equal(np.random.get_state()[1], before)
