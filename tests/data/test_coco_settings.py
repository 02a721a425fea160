"""Tests of ravl.data.coco_settings: COCO settings at a target Cramér's V, candidate pairs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from ravl.cli import main
from ravl.data import load_dataset
from ravl.data.coco_settings import (
    V_TOLERANCE,
    CocoSetting,
    format_coco_pairs,
    list_coco_pairs,
    make_coco_setting,
    read_coco_setting,
)
from ravl.data.synthetic import SETTING_FILE, cramers_v_of
from ravl.exceptions import DatasetError, RavlWarning


@pytest.fixture(scope="module")
def setting09(coco_pool, tmp_path_factory) -> CocoSetting:
    out = tmp_path_factory.mktemp("coco-setting") / "dog-frisbee"
    return make_coco_setting(coco_pool, out, spurious_class="dog", feature_category="frisbee", cramers_v=0.9,
                             random_state=0, progress=False)


def table_of(folder: Path, feature: str, classes) -> np.ndarray:
    t = np.zeros((len(classes), 2), dtype=np.int64)
    for r in load_dataset(folder):
        t[classes.index(r.label), int(feature in r.region_attributes)] += 1
    return t


def test_setting_reaches_the_target_v(setting09):
    s = setting09
    assert abs(s.achieved_v - 0.9) <= V_TOLERANCE
    assert s.achieved_v <= 0.9  # approached from above, as in the synthetic builder
    assert abs(s.achieved_v - 0.9) <= 0.01
    # the table recorded is the table written, and its V is the achieved V
    t = table_of(s.train_dir, "frisbee", list(s.classes))
    assert t.tolist() == [list(r) for r in s.contingency]
    assert cramers_v_of(t) == pytest.approx(s.achieved_v)
    # the association points the planted way: the dog is mostly with the frisbee, the others mostly without
    rate = t[:, 1] / t.sum(1)
    assert rate[s.spurious_index] > 0.8 and (np.delete(rate, s.spurious_index) < 0.1).all()
    # balanced classes
    assert t.sum(1).max() - t.sum(1).min() <= 1


def test_evaluation_set_is_independent_and_halved(setting09):
    s = setting09
    e = table_of(s.eval_dir, "frisbee", list(s.classes))
    assert e.tolist() == [list(r) for r in s.eval_contingency]
    assert (e[:, 0] == e[:, 1]).all() and (e > 0).all()
    assert s.eval_v == 0.0
    ev = load_dataset(s.eval_dir)
    val, test = ev.subset("val"), ev.subset("test")
    assert len(val) == s.n_eval_val == len(test) == s.n_eval // 2
    # val and test are stratified by class x feature
    for part in (val, test):
        t = table_of_records(part, "frisbee", list(s.classes))
        assert (np.abs(t - e / 2) <= 1).all()


def table_of_records(ds, feature, classes) -> np.ndarray:
    t = np.zeros((len(classes), 2), dtype=np.int64)
    for r in ds:
        t[classes.index(r.label), int(feature in r.region_attributes)] += 1
    return t


def test_output_folders_are_valid_datasets(setting09, coco_pool):
    s = setting09
    train = load_dataset(s.train_dir, require_fields=("caption", "label", "split", "boxes", "region_attributes"))
    ev = load_dataset(s.eval_dir, require_fields=("caption", "label", "split", "boxes", "region_attributes"))
    assert main(["validate", str(s.train_dir), "--require", "caption", "label"]) == 0
    assert main(["validate", str(s.eval_dir), "--split", "test", "--require", "label"]) == 0
    assert train.classes == ev.classes == ("dog", "cat", "bird")
    assert len(train) == s.n_train and len(train.subset("val")) == s.n_val == round(0.05 * s.n_train)
    assert len(ev) == s.n_eval
    # the sets share no image; every image comes from the pool, hard-linked, with the pool row's fields
    names_train = {r.file_name for r in train}
    names_eval = {r.file_name for r in ev}
    assert not names_train & names_eval
    pool = {r.file_name: r for r in load_dataset(coco_pool)}
    for r in list(train)[:20] + list(ev)[:20]:
        p = pool[r.file_name]
        assert (r.caption, r.label, r.boxes, r.region_attributes) == (p.caption, p.label, p.boxes,
                                                                        p.region_attributes)
        assert os.path.samefile(r.path, p.path)
    row = json.loads((s.train_dir / "metadata.jsonl").read_text().splitlines()[0])
    assert row["has_feature"] == ("frisbee" in row["region_attributes"]) and "coco_id" in row
    # setting.json round-trips, and the fields evaluate/mitigate read are there
    assert read_coco_setting(s.root) == s
    d = json.loads((s.root / SETTING_FILE).read_text())
    assert d["spurious_class"] == "dog" and d["kind"] == "coco" and d["achieved_v"] == s.achieved_v
    assert "fine-tuning set:" in s.summary() and "dog *" in s.summary()


def test_same_seed_same_files_and_up_to_date_reuse(setting09, coco_pool, tmp_path):
    again = make_coco_setting(coco_pool, tmp_path / "again", spurious_class="dog", feature_category="frisbee",
                              cramers_v=0.9, random_state=0, progress=False)
    for part in ("train", "eval"):
        assert (again.root / part / "metadata.jsonl").read_bytes() == \
            (setting09.root / part / "metadata.jsonl").read_bytes()
    stamp = (again.root / SETTING_FILE).stat().st_mtime_ns
    assert make_coco_setting(coco_pool, tmp_path / "again", spurious_class="dog", feature_category="frisbee",
                             cramers_v=0.9, random_state=0, progress=False) == again
    assert (again.root / SETTING_FILE).stat().st_mtime_ns == stamp
    other = make_coco_setting(coco_pool, tmp_path / "again", spurious_class="dog", feature_category="frisbee",
                              cramers_v=0.9, random_state=1, progress=False)
    assert other.seed == 1
    assert (other.root / "train" / "metadata.jsonl").read_bytes() != \
        (setting09.root / "train" / "metadata.jsonl").read_bytes()


@pytest.mark.parametrize("target", [0.5, 0.7, 0.95])
def test_other_targets(coco_pool, tmp_path, target):
    s = make_coco_setting(coco_pool, tmp_path / "s", spurious_class="dog", feature_category="frisbee",
                          cramers_v=target, random_state=2, progress=False)
    assert abs(s.achieved_v - target) <= V_TOLERANCE


def test_fixed_sizes_and_what_the_pool_allows(coco_pool, tmp_path):
    s = make_coco_setting(coco_pool, tmp_path / "fixed", spurious_class="dog", feature_category="frisbee",
                          cramers_v=0.9, n_train=150, n_eval=40, progress=False)
    assert s.n_train == 150 and s.n_eval == 40 and abs(s.achieved_v - 0.9) <= V_TOLERANCE
    assert [sum(r) for r in s.contingency] == [50, 50, 50]
    with pytest.warns(RavlWarning, match=r"The pool allows \d+ evaluation images with each class half with "
                                         r"'frisbee' \(asked for 300\)"):
        s = make_coco_setting(coco_pool, tmp_path / "big-eval", spurious_class="dog", feature_category="frisbee",
                              cramers_v=0.9, n_eval=300, progress=False)
    assert s.eval_v == 0.0 and s.n_eval < 300


def test_unreachable_targets_say_what_the_pool_allows(coco_pool, tmp_path):
    with pytest.raises(DatasetError) as info:
        make_coco_setting(coco_pool, tmp_path / "x", spurious_class="dog", feature_category="frisbee", cramers_v=0.9,
                          n_train=3000, progress=False)
    msg = str(info.value)
    assert msg.startswith("The pool cannot give n_train=3000 fine-tuning images at Cramér's V = 0.9 (±0.02) between "
                          "'dog' and 'frisbee': after setting the evaluation set aside, ")
    assert "It reaches it with at most" in msg and "use n_train=" in msg
    k = int(msg.split("use n_train=")[1].split(" ")[0])
    s = make_coco_setting(coco_pool, tmp_path / "y", spurious_class="dog", feature_category="frisbee", cramers_v=0.9,
                          n_train=k, progress=False)
    assert abs(s.achieved_v - 0.9) <= V_TOLERANCE
    with pytest.raises(DatasetError, match=r"The pool cannot reach Cramér's V = 0.99 \(±0.02\) between 'bird' and "
                                           r"'frisbee' with balanced classes: after setting the evaluation set aside"):
        make_coco_setting(coco_pool, tmp_path / "z", spurious_class="bird", feature_category="frisbee",
                          cramers_v=0.99, progress=False)


def test_small_sets_are_warned_about(coco_pool, tmp_path):
    with pytest.warns(RavlWarning, match="The fine-tuning set has only"):
        s = make_coco_setting(coco_pool, tmp_path / "bird", spurious_class="bird", feature_category="frisbee",
                              cramers_v=0.9, progress=False)
    t = np.asarray(s.contingency)
    assert t[2, 1] > t[2, 0] and (t[:2, 1] <= t[:2, 0]).all()  # tied to the bird, not to the dog


def test_bad_names(coco_pool, tmp_path):
    kw = dict(cramers_v=0.9, progress=False)
    with pytest.raises(ValueError, match=r"must be one of the pool's classes 'dog', 'cat', 'bird'. Got 'dgo' instead. "
                                         r"Did you mean 'dog'\?"):
        make_coco_setting(coco_pool, tmp_path / "a", spurious_class="dgo", feature_category="frisbee", **kw)
    with pytest.raises(ValueError, match="must be a category that is not a class: 'cat' is a class"):
        make_coco_setting(coco_pool, tmp_path / "a", spurious_class="dog", feature_category="cat", **kw)
    with pytest.raises(ValueError, match=r"must be a category in the pool's region_attributes \('frisbee'\). Got "
                                         r"'frisbe' instead. Did you mean 'frisbee'\?"):
        make_coco_setting(coco_pool, tmp_path / "a", spurious_class="dog", feature_category="frisbe", **kw)
    assert not (tmp_path / "a").exists()


def test_pool_without_captions(coco_raw, tmp_path):
    from ravl.data.coco import convert_coco

    convert_coco(coco_raw["instances"], coco_raw["images"], tmp_path / "pool", label_categories=["dog", "cat", "bird"],
                 progress=False)
    with pytest.raises(DatasetError, match="has a caption; the fine-tuning set needs them. Convert with captions_json"):
        make_coco_setting(tmp_path / "pool", tmp_path / "s", spurious_class="dog", feature_category="frisbee",
                          cramers_v=0.9, progress=False)


def test_list_coco_pairs(coco_pool):
    pairs = list_coco_pairs(coco_pool)
    assert [(p.spurious_class, p.feature_category) for p in pairs] == [("dog", "frisbee")]
    p = pairs[0]
    ds = load_dataset(coco_pool)
    n_both = sum(r.label == "dog" and "frisbee" in r.region_attributes for r in ds)
    n_feature = sum("frisbee" in r.region_attributes for r in ds)
    assert (p.n_class, p.n_both, p.n_feature, p.n_images) == (150, n_both, n_feature, 450)
    assert p.lift == pytest.approx((n_both / 150) / (n_feature / 450))
    table = np.array([[300 - (n_feature - n_both), n_feature - n_both], [150 - n_both, n_both]])
    assert p.cramers_v == pytest.approx(cramers_v_of(table))
    text = format_coco_pairs(pairs)
    assert text.splitlines()[0].split() == ["class", "category", "V", "lift", "with", "in", "class", "with",
                                            "elsewhere"]
    assert f"{n_both}/150" in text
    assert list_coco_pairs(coco_pool, min_count=10 ** 6) == []
    assert format_coco_pairs([]).startswith("no (class, category) pair")
