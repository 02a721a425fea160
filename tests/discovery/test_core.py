"""RaVL discovery on a planted structure, checked against values computed by hand.

The scenario (classes a, b, c; 8 images; 16 regions of three kinds):

    image  label pred  regions (kind)
    i0     a     a     r0 digit, r1 FEATURE
    i1     a     a     r2 digit, r3 empty
    i2     a     b     r4 digit, r5 empty
    i3     b     a     r6 digit, r7 FEATURE
    i4     b     b     r8 digit, r9 empty
    i5     b     b     r10 digit, r11 empty, r12 empty
    i6     c     a     r13 digit, r14 FEATURE
    i7     c     c     r15 digit                      (single region)

Feature cluster, A = {i0, i3, i6}:
    a: present 1/1 right, absent {i1, i2} 1/2 -> w = 2*1/3, Δ = 2/3 * (1 - 1/2) = 1/3
    b: present 0/1, absent {i4, i5} 2/2      -> w = 2/3,     Δ = -2/3
    c: present 0/1, absent {i7} 1/1          -> w = 2*1/2=1, Δ = -1
    G = 2, spurious pattern, attribute "a" (largest positive raw gap, 1/2).
    Influence: i3 (b, wrong, Δ_b < 0): its best region for the predicted class a is r7 (the
    feature) -> 1; i6 (c, wrong, Δ_c < 0): r13 and r14 tie for class a -> first region r13 -> 0.
    H^b = 1, H^c = 0 -> H = 1.
Empty cluster, A = {i1, i2, i4, i5}:
    a: present 1/2, absent {i0} 1/1 -> w = 2/3, Δ = -1/3;  b: present 2/2, absent {i3} 0/1 -> Δ = 2/3
    G = 1, spurious pattern, attribute "b". Influence: i2 (a, wrong, Δ_a < 0), predicted b: r5 (empty)
    scores higher than r4 for b -> 1 ("hit" variant) or r4 does -> 0 ("miss" variant).
Digit cluster: every image is in A, so no class has an "absent" set: G = 0, no pattern, H = -inf.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import replace

import numpy as np
import pytest

from ravl.discovery import (
    DiscoveryConfig,
    DiscoveryResult,
    DiscoveryWarning,
    NoFeatureWarning,
    WeakClusteringWarning,
    discover,
    rank_clusters,
    score_clusters,
)
from ravl.exceptions import RavlWarning

CLASSES = ["a", "b", "c"]
IMAGE = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 5, 6, 6, 7])
LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2])
PREDS = np.array([0, 0, 1, 0, 1, 1, 0, 2])
FEATURE, DIGIT, EMPTY = [1, 7, 14], [0, 2, 4, 6, 8, 10, 13, 15], [3, 5, 9, 11, 12]
KIND = np.zeros(16, dtype=int)  # cluster ids for score_clusters: 0 feature, 1 digit, 2 empty
KIND[DIGIT] = 1
KIND[EMPTY] = 2


def probs(hit: bool = True, n_classes: int = 3) -> np.ndarray:
    q = np.full((16, n_classes), 1.0 / n_classes)
    q[7, 0], q[6, 0] = 0.9, 0.05  # i3 predicted a: the feature region wins
    q[13, 0] = q[14, 0] = 0.5  # i6 predicted a: tie -> first region (digit)
    q[5, 1], q[4, 1] = (0.8, 0.1) if hit else (0.1, 0.8)  # i2 predicted b
    return q


def embeddings() -> np.ndarray:
    """Three orthogonal tight groups; the feature regions sit at angles 0.1, 0, -0.1 around e0."""
    e = np.zeros((16, 6))
    for r, t in zip(FEATURE, (0.1, 0.0, -0.1)):
        e[r, 0], e[r, 3] = np.cos(t), np.sin(t)
    for j, r in enumerate(DIGIT):
        t = 0.02 * (j - 3.5)
        e[r, 1], e[r, 4] = np.cos(t), np.sin(t)
    for j, r in enumerate(EMPTY):
        t = 0.02 * (j - 2)
        e[r, 2], e[r, 5] = np.cos(t), np.sin(t)
    return e


def run(**kw) -> DiscoveryResult:
    kw.setdefault("k_min", 3)
    kw.setdefault("k_max", 3)
    q = kw.pop("q", probs())
    return discover(embeddings(), IMAGE, LABELS, PREDS, q, classes=kw.pop("classes", CLASSES), progress=False, **kw)


def feature_by_regions(res: DiscoveryResult, regions) -> object:
    return next(f for f in res.features if sorted(f.region_indices) == sorted(regions))


# --------------------------------------------------------------------------------------------
# score_clusters against the hand computation


def test_score_clusters_hand_values():
    s = score_clusters(KIND, IMAGE, LABELS, PREDS, probs(), 3)
    np.testing.assert_array_equal(s.n_regions, [3, 8, 5])
    np.testing.assert_array_equal(s.n_images, [3, 8, 4])
    np.testing.assert_allclose(s.delta[0], [1 / 3, -2 / 3, -1])
    np.testing.assert_allclose(s.weight[0], [2 / 3, 2 / 3, 1])
    np.testing.assert_array_equal(s.n_present[0], [1, 1, 1])
    np.testing.assert_array_equal(s.n_absent[0], [2, 2, 1])
    np.testing.assert_allclose(s.acc_present[0], [1, 0, 0])
    np.testing.assert_allclose(s.acc_absent[0], [0.5, 1, 1])
    np.testing.assert_allclose(s.delta[2], [-1 / 3, 2 / 3, 0])
    assert not s.valid[2, 2] and not s.valid[1].any()
    np.testing.assert_allclose(s.gap, [2, 0, 1])
    np.testing.assert_array_equal(s.spurious_pattern, [True, False, True])
    np.testing.assert_allclose(s.influence_per_class[0], [np.nan, 1, 0])
    np.testing.assert_allclose(s.influence, [1, -np.inf, 1])
    np.testing.assert_array_equal(s.attribute, [0, -1, 1])


def test_score_clusters_unweighted_and_miss_variant():
    s = score_clusters(KIND, IMAGE, LABELS, PREDS, probs(hit=False), 3, weighted=False)
    np.testing.assert_allclose(s.delta[0], [0.5, -1, -1])
    np.testing.assert_allclose(s.gap, [2.5, 0, 1.5])
    np.testing.assert_allclose(s.influence, [1, -np.inf, 0])


def test_single_region_images_are_not_scored_for_influence():
    # clusters 0 (feature) and 1; images: j0 a->a [r0:0, r1:1], j1 a->b [r2:1, r3:1],
    # j2 b->a [r4:0] (one region), j3 b->a [r5:0, r6:1], j4 b->b [r7:1, r8:1].
    # Cluster 0: A = {j0, j2, j3}; Δ_a = 1 * (1 - 0) = 1, Δ_b = 2/3 * (0 - 1) = -2/3.
    # Influence over wrong b images: j2 is skipped (one region); j3's best region for a is r6
    # (not in cluster 0) -> H = 0/1 = 0. Counting j2 would give 1/2.
    clusters = np.array([0, 1, 1, 1, 0, 0, 1, 1, 1])
    image = np.array([0, 0, 1, 1, 2, 3, 3, 4, 4])
    labels, preds = np.array([0, 0, 1, 1, 1]), np.array([0, 1, 0, 0, 1])
    q = np.full((9, 2), 0.5)
    q[6, 0], q[5, 0] = 0.9, 0.1
    s = score_clusters(clusters, image, labels, preds, q, 2)
    np.testing.assert_allclose(s.delta[0], [1, -2 / 3])
    np.testing.assert_allclose(s.influence_per_class[0], [np.nan, 0.0])
    assert s.influence[0] == 0.0


def test_rank_clusters_filters_and_orders():
    s = score_clusters(KIND, IMAGE, LABELS, PREDS, probs(hit=False), 3)
    order = lambda **kw: rank_clusters(s, DiscoveryConfig(**kw))[1].tolist()  # noqa: E731
    assert order() == [0]  # empty cluster has influence 0 < 0.25
    assert order(scoring="gap_only") == [0, 2]
    assert order(scoring="influence_only") == [0]
    assert order(min_influence=0.0) == [0, 2]
    assert order(scoring="influence_only", min_influence=0.0) == [0, 2]  # H: 1 then 0
    s2 = replace(s, influence=np.array([0.5, -np.inf, 1.0]))
    assert rank_clusters(s2, DiscoveryConfig(scoring="influence_only"))[1].tolist() == [2, 0]
    assert rank_clusters(s2, DiscoveryConfig())[1].tolist() == [0, 2]  # by gap
    s3 = replace(s, gap=np.array([1.0, 0.0, 1.0]), influence=np.array([1.0, -np.inf, 1.0]))
    assert rank_clusters(s3, DiscoveryConfig())[1].tolist() == [0, 2]  # ties: lower cluster id first


# --------------------------------------------------------------------------------------------
# discover end to end


def test_discover_planted_feature():
    boxes = np.arange(64, dtype=float).reshape(16, 4)
    names = [f"img{i}.png" for i in IMAGE]
    res = run(region_file_names=names, region_boxes=boxes, meta={"model": "test"})
    assert res.status == "ok" and res.n_clusters == 3 and res.silhouette > 0.9
    assert [sorted(f.region_indices) for f in res.features] == [sorted(FEATURE), sorted(EMPTY)]
    top = res.top
    assert top.rank == 1 and top.class_name == "a"
    assert top.gap == pytest.approx(2.0) and top.influence == pytest.approx(1.0) and top.spurious_pattern
    assert (top.n_regions, top.n_images, top.medoid_region_index) == (3, 3, 7)
    # regions by similarity to the medoid (r7 at angle 0); r1 and r14 tie at cos 0.1 -> by index
    assert top.region_indices == [7, 1, 14]
    np.testing.assert_allclose([r.similarity for r in top.regions], [1, np.cos(0.1), np.cos(0.1)], atol=1e-6)
    assert top.regions[1].file_name == "img0.png" and top.regions[1].box == (4.0, 5.0, 6.0, 7.0)
    assert top.regions[1].image_index == 0
    rows = {t.class_name: t for t in top.table}
    assert (rows["a"].acc_present, rows["a"].n_present, rows["a"].acc_absent, rows["a"].n_absent) == (1, 1, 0.5, 2)
    assert rows["a"].weight == pytest.approx(2 / 3) and rows["a"].gap == pytest.approx(1 / 3)
    assert rows["c"].gap == pytest.approx(-1.0)
    second = res.features[1]
    assert second.class_name == "b" and second.gap == pytest.approx(1.0) and second.rank == 2
    assert res.ranked_regions() == [7, 1, 14]
    assert res.ranked_regions(all_features=True)[:3] == [7, 1, 14] and len(res.ranked_regions(True)) == 8
    assert len(res.clusters) == 3 and sum(c.passed for c in res.clusters) == 2
    assert len(res.region_clusters) == 16 and len(res.medoid_indices) == 3
    assert res.meta == {"model": "test"} and not res.bounded_memory and res.random_state == 0


def test_discover_chooses_k_by_silhouette():
    res = run(k_min=2, k_max=6)
    assert [e.k for e in res.k_sweep] == [2, 3, 4, 5, 6]
    sils = [e.silhouette for e in res.k_sweep]
    assert res.n_clusters == 3 and max(sils) == sils[1] == res.silhouette


@pytest.mark.parametrize("scoring, expected", [
    ("ravl", [FEATURE]), ("gap_only", [FEATURE, EMPTY]), ("influence_only", [FEATURE]), ("unweighted", [FEATURE]),
])
def test_discover_ablations(scoring, expected):
    res = run(scoring=scoring, q=probs(hit=False))
    assert [sorted(f.region_indices) for f in res.features] == [sorted(r) for r in expected]
    assert res.scoring == scoring and res.config.scoring == scoring
    if scoring == "unweighted":
        assert res.top.gap == pytest.approx(2.5)


def test_no_feature_is_an_explained_result():
    with pytest.warns(NoFeatureWarning, match="none of the 3 clusters"):
        res = run(q=probs(), classes=CLASSES, image_probabilities=None, k_min=3,
                  **{"min_influence": 2.0})
    assert res.status == "no_feature" and res.features == () and res.top is None
    assert "influence >= 2" in res.message and res.ranked_regions() == []
    assert len(res.clusters) == 3 and not any(c.passed for c in res.clusters)


def test_all_correct_predictions_find_nothing():
    with pytest.warns(NoFeatureWarning):
        res = discover(embeddings(), IMAGE, LABELS, LABELS, probs(), classes=CLASSES, k_min=3, k_max=3,
                       progress=False)
    assert res.status == "no_feature" and all(c.gap == 0 for c in res.clusters)


@pytest.mark.filterwarnings("ignore::ravl.discovery.NoFeatureWarning")
def test_all_silhouettes_non_positive_warns_and_continues():
    e = np.eye(16)  # every pair at distance 1: every silhouette is exactly 0
    with pytest.warns(WeakClusteringWarning, match="<= 0"):
        res = discover(e, IMAGE, LABELS, PREDS, probs(), classes=CLASSES, k_min=2, k_max=5, progress=False,
                       scoring="gap_only")
    assert res.n_clusters == 2 and res.silhouette == 0.0 and not res.silhouette_positive
    assert all(s.silhouette == 0.0 for s in res.k_sweep)
    assert "no clear cluster structure" in res.message


def test_single_region_images_give_no_influence():
    image = np.arange(16)
    labels = np.array([0, 0, 1, 1] * 4)
    preds = labels.copy()
    preds[FEATURE] = 0  # featured images predicted a ...
    preds[0] = 1  # ... and one plain a image wrong, so a gains with the feature (spurious pattern)
    with pytest.warns(NoFeatureWarning):
        res = discover(embeddings(), image, labels, preds, probs(), classes=CLASSES, k_min=3, k_max=3,
                       progress=False)
    assert res.status == "no_feature" and all(c.influence == -math.inf for c in res.clusters)
    res = discover(embeddings(), image, labels, preds, probs(), classes=CLASSES, k_min=3, k_max=3,
                   progress=False, scoring="gap_only")
    assert res.top is not None and res.top.influence == -math.inf
    assert res.to_dict()["features"][0]["influence"] is None
    assert DiscoveryResult.from_dict(json.loads(json.dumps(res.to_dict()))) == res


def test_absent_classes_and_k_range_beyond_regions():
    classes = ["a", "b", "c", "d"]  # "d" has no image; default K range 8..19 exceeds 16 - 1
    with pytest.warns(DiscoveryWarning, match="exceeds"):
        res = discover(embeddings(), IMAGE, LABELS, PREDS, probs(n_classes=4), classes=classes, progress=False)
    assert [e.k for e in res.k_sweep] == list(range(8, 16))
    for f in res.features:
        assert "d" not in {t.class_name for t in f.table}


@pytest.mark.filterwarnings("ignore:The K range:ravl.discovery.DiscoveryWarning")
def test_too_few_regions_is_an_explained_result():
    with pytest.warns(NoFeatureWarning, match="could be scored"):
        res = discover(np.eye(2), [0, 1], [0, 1], [0, 1], np.full((2, 2), 0.5), classes=["a", "b"], progress=False)
    assert res.status == "no_clusters" and res.n_clusters is None and res.features == ()
    assert DiscoveryResult.from_dict(res.to_dict()) == res


def test_identical_embeddings_cannot_be_clustered():
    with pytest.warns(NoFeatureWarning, match="fewer than 2 non-empty clusters"):
        res = discover(np.ones((16, 4)), IMAGE, LABELS, PREDS, probs(), classes=CLASSES, k_min=2, k_max=4,
                       progress=False)
    assert res.status == "no_clusters"


# --------------------------------------------------------------------------------------------
# result, config and inputs


def test_json_round_trip(tmp_path):
    res = run(region_file_names=[f"f{i}" for i in IMAGE], region_boxes=np.zeros((16, 4)))
    path = res.to_json(tmp_path / "out" / "discovery.json")
    assert sorted(p.name for p in path.parent.iterdir()) == ["discovery.json"]  # no temp file left
    d = json.loads(path.read_text())
    assert d["schema"] == "ravl.discovery/1" and d["status"] == "ok"
    reg = d["features"][0]["regions"][0]
    assert reg == {"region_index": 7, "image_index": 3, "similarity": pytest.approx(1.0), "file_name": "f3",
                   "box": [0.0, 0.0, 0.0, 0.0]}
    assert d["features"][0]["class"] == "a" and d["features"][0]["table"][0]["class"] == "a"
    assert {"k", "silhouette", "inertia", "n_iter", "converged"} <= set(d["k_sweep"][0])
    assert DiscoveryResult.from_json(path) == dataclasses.replace(res, timings={})  # wall clock left out
    assert d["timings"] == {}
    assert DiscoveryResult.from_json(res.to_json(tmp_path / "t.json", timings=True)) == res
    plain = run()
    assert "file_name" not in plain.to_dict()["features"][0]["regions"][0]


def test_config_validation_messages():
    with pytest.raises(ValueError, match=r"The 'scoring' parameter of DiscoveryConfig must be one of"):
        DiscoveryConfig(scoring="gap")
    with pytest.raises(ValueError, match=r"'k_max' parameter of DiscoveryConfig must be >= k_min"):
        DiscoveryConfig(k_min=5, k_max=4)
    with pytest.raises(ValueError, match=r"'k_min' parameter of DiscoveryConfig must be an int in \[2, inf\)"):
        DiscoveryConfig(k_min=1)
    with pytest.raises(TypeError, match="unexpected keyword"):
        run(n_clusters=3)
    cfg = DiscoveryConfig(scoring="influence_only")
    assert not cfg.spurious_filter and cfg.influence_filter and cfg.k_range(10) == (20, 49)
    assert DiscoveryConfig.from_dict(cfg.to_dict()) == cfg
    res = run(config={"scoring": "gap_only", "k_min": 3, "k_max": 3})
    assert res.scoring == "gap_only"


@pytest.mark.parametrize("kwargs, match", [
    (dict(region_image_index=IMAGE[:-1]), r"'region_image_index' parameter of discover must be a \[16\]"),
    (dict(image_labels=np.array([0, 0, 0, 1, 1, 1, 2, 3])), r"'image_labels'.*\[0, 3\)"),
    (dict(image_predictions=PREDS[:4]), r"'image_predictions' parameter of discover must be a \[8\]"),
    (dict(region_probabilities=np.ones((16, 2))), r"must have shape \[R, C\] = \[16, 3\]"),
    (dict(region_image_index=IMAGE + 1), r"'region_image_index'.*\[0, 8\)"),
    (dict(classes=["a", "a", "b"]), "without duplicates"),
    (dict(classes="abc"), "sequence of class names"),
    (dict(region_boxes=np.zeros((16, 3))), r"\[R, 4\]"),
    (dict(region_file_names=["x"]), "one file name per region"),
    (dict(image_labels=np.array([0.5] * 8)), "must hold integers"),
])
def test_input_validation(kwargs, match):
    args = dict(region_embeddings=embeddings(), region_image_index=IMAGE, image_labels=LABELS,
                image_predictions=PREDS, region_probabilities=probs(), classes=CLASSES)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        discover(args.pop("region_embeddings"), args.pop("region_image_index"), args.pop("image_labels"),
                 args.pop("image_predictions"), args.pop("region_probabilities"), progress=False, k_min=3, k_max=3,
                 **args)


def test_image_probabilities_disagreeing_with_predictions_warn():
    p = np.eye(3)[LABELS]  # argmax = labels, differs from PREDS on 3 images
    with pytest.warns(DiscoveryWarning, match="differ from argmax") as rec:
        run(image_probabilities=p)
    assert all(issubclass(w.category, RavlWarning) for w in rec)
    assert rec[0].filename == __file__  # stacklevel points at the caller


def test_random_state_generator_and_int_are_recorded():
    a = run(random_state=np.random.default_rng(5))
    b = run(random_state=a.random_state)
    assert a.features == b.features and isinstance(a.random_state, int)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run()  # the clean scenario emits no warning
