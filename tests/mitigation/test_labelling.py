"""Region labelling: fine-tuning regions assigned to the nearest Stage-1 medoid."""

import json

import numpy as np
import pytest

from ravl.discovery import DiscoveryResult
from ravl.exceptions import DatasetError
from ravl.mitigation.labelling import (
    RegionLabelling,
    assign_to_medoids,
    label_regions,
    left_out_features,
    select_features,
)


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    from ravl.data.synthetic import make_spurious_benchmark

    return make_spurious_benchmark(tmp_path_factory.mktemp("lab_setting"), n_train=400, n_eval=200,
                                   random_state=0, progress=False)


@pytest.fixture(scope="module")
def model():
    from ravl.models import load_model

    return load_model("tiny", seed=0)


@pytest.fixture(scope="module")
def train_ds(setting):
    from ravl.data.dataset import load_dataset

    return load_dataset(setting.train_dir)


@pytest.fixture(scope="module")
def labelling(hand_discovery, model, train_ds, setting):
    return label_regions(model, train_ds, hand_discovery(setting.eval_dir), progress=False)


def test_red_square_medoid_labels_exactly_the_feature_quadrants(labelling, train_ds):
    train = train_ds.subset("train")
    table = train.region_table()
    truth = np.array(table.attributes) == "red_square"
    assert truth.any()
    np.testing.assert_array_equal(labelling.is_spurious, truth)
    np.testing.assert_array_equal(labelling.region_labels.image_index, table.image_index)
    present = np.array(["red_square" in r.region_attributes for r in train.records])
    np.testing.assert_array_equal(labelling.feature_present, present)
    np.testing.assert_array_equal(labelling.groups, 2 * train.label_indices + present)
    assert labelling.truth["region_precision"] == 1.0 and labelling.truth["region_recall"] == 1.0
    assert labelling.truth["attribute"] == "red_square"
    # boxes normalised to the image: quadrants of a 56 px image
    assert set(map(tuple, labelling.region_labels.boxes_norm.round(3).tolist())) == {
        (0.0, 0.0, 0.5, 0.5), (0.5, 0.0, 1.0, 0.5), (0.0, 0.5, 0.5, 1.0), (0.5, 0.5, 1.0, 1.0)}


def test_counts_per_class_and_group(labelling, train_ds, setting):
    train = train_ds.subset("train")
    counts = labelling.class_counts()
    assert sum(c["n_images"] for c in counts.values()) == len(train)
    nine = counts["nine"]
    assert nine["n_present"] > nine["n_absent"]  # the planted correlation (V = 0.95)
    assert nine["n_present"] + nine["n_absent"] == nine["n_images"]
    groups = labelling.group_counts()
    assert len(groups) == 2 * len(train.classes) == labelling.n_groups
    assert sum(g["n"] for g in groups) == len(train)
    assert {(g["class"], g["feature_present"]) for g in groups if g["group"] in (18, 19)} == {
        ("nine", False), ("nine", True)}
    summary = labelling.summary()
    json.dumps(summary)
    assert summary["n_spurious_regions"] == labelling.region_labels.n_spurious


def test_round_trip_to_json(labelling):
    back = RegionLabelling.from_dict(json.loads(json.dumps(labelling.to_dict())))
    np.testing.assert_array_equal(back.groups, labelling.groups)
    np.testing.assert_array_equal(back.region_labels.boxes_norm, labelling.region_labels.boxes_norm)
    assert back.summary() == labelling.summary()


def test_groups_follow_the_discovered_feature_not_ground_truth(hand_discovery, model, train_ds, setting):
    # A discovery whose "feature" is the cluster of 'three' regions: groups follow it.
    lab = label_regions(model, train_ds, hand_discovery(setting.eval_dir, "three"), progress=False)
    train = train_ds.subset("train")
    red = np.array(["red_square" in r.region_attributes for r in train.records])
    assert not np.array_equal(lab.feature_present, red)
    img_of = lab.region_labels.image_index
    expect = np.zeros(len(train), dtype=bool)
    expect[img_of[lab.is_spurious]] = True
    np.testing.assert_array_equal(lab.feature_present, expect)
    assert lab.truth["region_precision"] == 0.0


def test_explicit_medoids_and_moved_dataset(hand_discovery, model, train_ds, setting, tmp_path):
    disc = hand_discovery(setting.eval_dir)
    d = disc.to_dict()
    d["meta"]["data"] = str(tmp_path / "gone")
    moved = DiscoveryResult.from_dict(d)
    with pytest.raises(DatasetError, match="does not exist"):
        label_regions(model, train_ds, moved, progress=False)
    # the vectors can be given directly
    from ravl.mitigation.labelling import compute_medoid_embeddings

    med = compute_medoid_embeddings(model, disc)
    lab = label_regions(model, train_ds, moved, medoid_embeddings=med, split="val", progress=False)
    assert lab.split == "val" and lab.n_images == len(train_ds.subset("val"))
    # a changed folder (another region count) is refused
    d["meta"]["data"] = str(setting.eval_dir)
    d["n_regions"] += 4
    d["region_clusters"] += [0] * 4
    with pytest.raises(DatasetError, match="changed since discovery"):
        label_regions(model, train_ds, DiscoveryResult.from_dict(d), progress=False)


def test_feature_selection_and_errors(hand_discovery, setting):
    disc = hand_discovery(setting.eval_dir)
    assert [f.rank for f in select_features(disc)] == [1]
    assert [f.rank for f in select_features(disc, "all")] == [1]
    assert [f.rank for f in select_features(disc, "class")] == [1] == [f.rank for f in select_features(disc, "top")]
    with pytest.raises(ValueError, match="rank 2"):
        select_features(disc, [2])
    with pytest.raises(ValueError, match="'features' parameter"):
        select_features(disc, "some")
    # "class": every feature tied to the top feature's class, e.g. one square cluster per position
    d = disc.to_dict()
    f1 = d["features"][0]
    d["features"] = [f1, {**f1, "rank": 2, "cluster": f1["cluster"] + 1}, {**f1, "rank": 3, "class": "three"},
                     {**f1, "rank": 4, "cluster": f1["cluster"] + 2}]
    d["features"].append({**f1, "rank": 5, "cluster": f1["cluster"] + 3, "gap": 0.4 * f1["gap"]})  # weak
    many = DiscoveryResult.from_dict(d)
    assert [f.rank for f in select_features(many)] == [1, 2, 4]           # rank 5's gap < 0.5 x the top's
    assert [f.rank for f in select_features(many, min_gap_ratio=0.0)] == [1, 2, 4, 5]
    with pytest.raises(ValueError, match="'min_gap_ratio'"):
        select_features(many, min_gap_ratio=2)
    assert [f.rank for f in select_features(many, "top")] == [1] == [f.rank for f in select_features(many, None)]
    assert [f.rank for f in select_features(many, "all")] == [1, 2, 3, 4, 5]
    # named after the top's class by the unweighted gap (4 of its images are of that class), but
    # tied more to another class by the weighted gap: ordinary content of that class, left out
    # (measured: a cluster of "one"/"two"/"three" digits named "nine", docs/mitigation.md)

    def row(c, a_in, n_in, a_out, n_out):
        w = 2 * min(n_in, n_out) / (n_in + n_out)
        return {"class": c, "acc_present": a_in, "n_present": n_in, "acc_absent": a_out, "n_absent": n_out,
                "weight": w, "gap": w * (a_in - a_out)}

    other = next(c for c in disc.classes if c != f1["class"])
    mixed = [row(other, 0.40, 25, 0.20, 25), row(f1["class"], 0.75, 4, 0.48, 46)]
    d["features"][3] = {**d["features"][3], "table": mixed}
    assert [f.rank for f in select_features(DiscoveryResult.from_dict(d))] == [1, 2]
    notes = left_out_features(DiscoveryResult.from_dict(d))
    assert len(notes) == 2 and f"tied more to {other!r}" in notes[0] and notes[0].startswith("#4")
    assert notes[1].startswith("#5") and "below 0.5 x the top's" in notes[1]
    assert left_out_features(DiscoveryResult.from_dict(d), "top") == []
    d["features"][3]["table"] = [row(other, 0.0, 7, 0.5, 43), row(f1["class"], 1.0, 6, 0.4, 44)]
    assert [f.rank for f in select_features(DiscoveryResult.from_dict(d))] == [1, 2, 4]
    d = disc.to_dict()
    d["features"] = []
    with pytest.raises(ValueError, match="nothing to mitigate"):
        select_features(DiscoveryResult.from_dict(d))


def test_assign_to_medoids_is_cosine_nearest():
    cl, sim = assign_to_medoids(np.array([[1.0, 0.1], [0.0, 2.0], [-1.0, 0.0]]), np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert cl.tolist() == [0, 1, 1] and sim[1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        assign_to_medoids(np.zeros((2, 3)), np.zeros((1, 2)))


def test_discovery_without_medoids_is_refused_clearly(hand_discovery, model, train_ds, setting):
    d = hand_discovery(setting.eval_dir).to_dict()
    d["medoid_indices"] = []
    d["meta"]["method"] = "domino"
    with pytest.raises(ValueError, match=r"\(domino\) has no cluster medoids"):
        label_regions(model, train_ds, DiscoveryResult.from_dict(d), progress=False)


def test_spurious_assignment_threshold_keeps_outliers_out():
    from types import SimpleNamespace as NS

    from ravl.mitigation.labelling import MIN_MEMBERS_FOR_THRESHOLD, spurious_assignment

    members = [NS(similarity=v) for v in np.linspace(0.90, 1.0, 21)]     # the cluster's own regions
    feat = NS(cluster=2, regions=members)
    clusters = np.array([2, 2, 2, 0, 2])
    sims = np.array([0.99, 0.9046, 0.60, 0.99, 0.904])                  # q05 of members = 0.905
    spur, thr, n_out = spurious_assignment(clusters, sims, [feat], 0.05)
    assert thr == {2: pytest.approx(0.905 - 1e-3)}
    assert spur.tolist() == [True, True, False, False, True] and n_out == 1  # 0.60: far from the medoid
    spur, thr, n_out = spurious_assignment(clusters, sims, [feat], None)     # the paper's nearest-medoid rule
    assert spur.tolist() == [True, True, True, False, True] and thr is None and n_out == 0
    few = NS(cluster=2, regions=members[:MIN_MEMBERS_FOR_THRESHOLD - 1])     # too few members: no threshold
    spur, thr, _ = spurious_assignment(clusters, sims, [few], 0.05)
    assert thr == {} and spur.tolist() == [True, True, True, False, True]
    with pytest.raises(ValueError, match="'assignment_quantile'"):
        spurious_assignment(clusters, sims, [feat], 1.5)
