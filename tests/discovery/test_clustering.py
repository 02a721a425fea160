"""Fast K-Medoids and silhouettes against the n x n reference computations."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import silhouette_score as sk_silhouette

from ravl.discovery import (
    clipped_cosine_distances,
    cluster_regions,
    kmedoids,
    kmedoids_objective,
    kmedoids_sweep,
    normalize_embeddings,
    silhouette_score,
    silhouette_scores,
)
from ravl.discovery.clustering import _Geometry, _kpp_init, _Negatives

# --------------------------------------------------------------------------------------------
# naive reference: scikit-learn-extra's KMedoids(metric="precomputed", init="k-medoids++",
# method="alternate") written out on the full matrix (it is not a test dependency)


def naive_kpp(dist, k, seed, n_trials=None):
    rs = np.random.RandomState(seed)
    n = dist.shape[0]
    t = 2 + int(np.log(k)) if n_trials is None else n_trials
    centers = [rs.randint(n)]
    closest = dist[centers[0]] ** 2
    pot = closest.sum()
    for _ in range(1, k):
        cand = np.minimum(np.searchsorted(np.cumsum(closest, dtype=np.float64), rs.random_sample(t) * pot), n - 1)
        best = None
        for c in cand:
            new = np.minimum(closest, dist[c] ** 2)
            if best is None or new.sum() < best[1]:
                best = (c, new.sum(), new)
        centers.append(best[0])
        pot, closest = best[1], best[2]
    return np.array(centers)


def naive_alternate(dist, medoids, max_iter=300):
    medoids = medoids.copy()
    for _ in range(max_iter):
        old = medoids.copy()
        labels = np.argmin(dist[medoids], axis=0)
        for k in range(len(medoids)):
            idx = np.flatnonzero(labels == k)
            if idx.size == 0:
                continue
            costs = dist[np.ix_(idx, idx)].sum(axis=1)
            j = np.argmin(costs)
            cur = costs[np.argmax(idx == medoids[k])]
            if costs[j] < cur:
                medoids[k] = idx[j]
        if np.array_equal(old, medoids):
            break
    labels = np.argmin(dist[medoids], axis=0)
    return medoids, labels, float(dist[:, medoids].min(axis=1).sum())


def _data(kind: str, n: int = 240, d: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "random":  # about half of all similarities negative
        x = rng.standard_normal((n, d))
    elif kind == "cone":  # all similarities positive, clustered
        centres = rng.standard_normal((6, d))
        x = 8.0 * np.ones(d) / np.sqrt(d) + centres[rng.integers(0, 6, n)] + 0.3 * rng.standard_normal((n, d))
    else:  # clustered, some negative similarities, with exact duplicates (ties)
        centres = rng.standard_normal((5, d)) * 2
        x = centres[rng.integers(0, 5, n)] + 0.7 * rng.standard_normal((n, d))
        x[n // 2:n // 2 + 10] = x[0]
        x[n // 2 + 10:n // 2 + 14] = x[1]
    return x


# --------------------------------------------------------------------------------------------
# distances and normalisation


def test_clipped_distances_match_definition():
    x = np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.1], [3.0, 3.0]])
    d = clipped_cosine_distances(x)
    assert d[0, 1] == pytest.approx(1.0)  # orthogonal
    assert d[0, 2] == 1.0  # negative similarity -> distance 1
    assert d[0, 3] == pytest.approx(1 - 1 / np.sqrt(2))
    assert np.all(np.diag(d) == 0) and np.allclose(d, d.T)


@pytest.mark.parametrize("bad, match", [
    (np.array([[1.0, 0.0], [0.0, 0.0]]), "all-zero"),
    (np.array([[1.0, np.nan]]), "finite"),
    (np.ones(3), "2-D"),
    (np.array([["a", "b"]]), "real numbers"),
])
def test_normalize_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        normalize_embeddings(bad)


def test_normalize_unit_rows_float32():
    e = normalize_embeddings(np.array([[3.0, 4.0], [0.0, -2.0]]))
    assert e.dtype == np.float32
    np.testing.assert_allclose(e, [[0.6, 0.8], [0.0, -1.0]], atol=1e-7)


# --------------------------------------------------------------------------------------------
# silhouettes


@pytest.mark.parametrize("kind", ["random", "cone", "mixed"])
@pytest.mark.parametrize("max_pairs", [10_000_000, 0])  # sparse list of negatives, or dense pass
def test_silhouette_equals_sklearn(kind, max_pairs):
    x = _data(kind, n=180)
    dist = clipped_cosine_distances(x)
    if kind == "random":
        assert (dist == 1.0).mean() > 0.3  # clipping really is active
    rng = np.random.default_rng(1)
    labelings = [rng.integers(0, k, len(x)) for k in (2, 3, 7, 20)]
    lab = rng.integers(0, 5, len(x))
    lab[lab == 3] = 9  # label ids with gaps (empty clusters)
    lab[0] = 11  # a singleton cluster
    labelings.append(lab)
    got = silhouette_scores(x, labelings, max_negative_pairs=max_pairs)
    want = [sk_silhouette(dist, lab, metric="precomputed") for lab in labelings]
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_silhouette_negative_handling_modes():
    g_cone = _Geometry(normalize_embeddings(_data("cone")), 64)
    assert g_cone.nonnegative and _Negatives(g_cone, None, 10).mode == "none"
    e = normalize_embeddings(_data("random", n=50))
    g = _Geometry(e, 16)
    assert not g.nonnegative
    neg = _Negatives(g, None, 10**7)
    sims = e.astype(np.float64) @ e.T.astype(np.float64)
    iu = np.triu_indices(50, 1)
    assert neg.mode == "sparse" and neg.n_pairs == int((sims[iu] < 0).sum())
    assert _Negatives(g, None, 0).mode == "dense"


def test_silhouette_undefined_is_nan_and_hand_value():
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    # two tight pairs at distance 1 from each other: a = 0, b = 1 -> s = 1 for every row
    assert silhouette_score(x, np.array([0, 0, 1, 1])) == pytest.approx(1.0)
    assert np.isnan(silhouette_score(x, np.array([0, 0, 0, 0])))  # one cluster
    assert np.isnan(silhouette_score(x, np.array([0, 1, 2, 3])))  # n clusters


def test_silhouette_rejects_bad_labels():
    with pytest.raises(ValueError, match="non-negative ints"):
        silhouette_scores(np.eye(3), [np.array([0, -1, 1])])


# --------------------------------------------------------------------------------------------
# K-Medoids


def test_kpp_init_matches_naive():
    x = _data("mixed")
    dist = clipped_cosine_distances(x).astype(np.float32)
    g = _Geometry(normalize_embeddings(x), 64)
    for k, seed in ((5, 0), (12, 3)):
        centres, table = _kpp_init(g, k, seed, 2 + int(np.log(k)))
        np.testing.assert_array_equal(centres, naive_kpp(dist, k, seed))
        np.testing.assert_allclose(table, dist[:, centres], atol=1e-6)


@pytest.mark.parametrize("kind", ["random", "cone", "mixed"])
def test_kmedoids_matches_naive_reference_on_same_init(kind):
    x = _data(kind)
    dist = clipped_cosine_distances(x).astype(np.float32)
    ks = [2, 3, 5, 8, 13]
    fits = kmedoids_sweep(x, ks, random_state=7)
    for fit in fits:
        med, lab, obj = naive_alternate(dist, naive_kpp(dist, fit.n_clusters, 7))
        assert fit.inertia <= obj + 1e-4
        assert fit.inertia == pytest.approx(obj, abs=1e-4)
        np.testing.assert_array_equal(fit.medoid_indices, med)
        np.testing.assert_array_equal(fit.labels, lab)
        assert fit.inertia == pytest.approx(kmedoids_objective(x, fit.medoid_indices), abs=1e-5)


def test_sweep_prefix_sharing_equals_single_fits():
    x = _data("cone", n=200)
    sweep = kmedoids_sweep(x, [4, 7, 20, 21], random_state=0)
    for fit in sweep:
        single = kmedoids(x, fit.n_clusters, random_state=0)
        np.testing.assert_array_equal(single.medoid_indices, fit.medoid_indices)
        np.testing.assert_array_equal(single.labels, fit.labels)


def test_kmedoids_two_obvious_groups_and_validation():
    x = np.array([[1.0, 0.0], [0.99, 0.1], [0.98, -0.1], [0.0, 1.0], [0.1, 0.99], [-0.1, 0.98]])
    fit = kmedoids(x, 2)
    assert len(set(fit.labels[:3])) == 1 and len(set(fit.labels[3:])) == 1 and fit.labels[0] != fit.labels[3]
    assert sorted(fit.medoid_indices.tolist()) == [0, 3]  # the central point of each group
    assert fit.converged
    with pytest.raises(ValueError, match="at most the number of rows"):
        kmedoids(x, 7)
    with pytest.raises(ValueError, match="'max_iter' parameter of kmedoids_sweep"):
        kmedoids_sweep(x, [2], max_iter=-1)


def test_kmedoids_max_iter_zero_returns_init_labels():
    x = _data("cone", n=60)
    fit = kmedoids(x, 4, max_iter=0, random_state=2)
    dist = clipped_cosine_distances(x).astype(np.float32)
    init = naive_kpp(dist, 4, 2)
    np.testing.assert_array_equal(fit.medoid_indices, init)
    np.testing.assert_array_equal(fit.labels, dist[init].argmin(axis=0))
    assert not fit.converged


# --------------------------------------------------------------------------------------------
# the sweep


def test_cluster_regions_picks_best_silhouette_and_drops_too_large_k():
    x = _data("cone", n=90)
    sw = cluster_regions(x, range(2, 200), random_state=0)
    assert sw.k_values == tuple(range(2, 89 + 1))  # K <= n - 1
    dist = clipped_cosine_distances(x)
    best = int(np.nanargmax(sw.silhouettes))
    assert sw.best_k == sw.k_values[best]
    assert sw.best_silhouette == pytest.approx(sk_silhouette(dist, sw.labels, metric="precomputed"), abs=1e-6)
    assert not sw.bounded_memory and sw.negative_similarity == "none"


def test_cluster_regions_no_k_left():
    sw = cluster_regions(np.eye(3), [3, 4])
    assert sw.best_k is None and sw.k_values == () and sw.labels is None


def test_cluster_regions_bounded_memory_path():
    x = _data("mixed", n=600)
    sw = cluster_regions(x, [3, 4, 5], random_state=0, max_exact=300, sample_size=200)
    assert sw.bounded_memory and sw.sample_indices.size == 200
    assert set(sw.medoid_indices.tolist()) <= set(sw.sample_indices.tolist())
    dist = clipped_cosine_distances(x)
    np.testing.assert_array_equal(sw.labels, dist[:, sw.medoid_indices].argmin(axis=1))
    assert sw.inertia == pytest.approx(dist[:, sw.medoid_indices].min(axis=1).sum(), abs=1e-3)
    # the silhouettes are those of the clustered sample
    sub = clipped_cosine_distances(x[sw.sample_indices])
    k = sw.k_values.index(sw.best_k)
    assert sw.silhouettes[k] == pytest.approx(
        sk_silhouette(sub, sw.labels[sw.sample_indices], metric="precomputed"), abs=1e-6)


def test_cluster_regions_is_deterministic():
    x = _data("random", n=120)
    a = cluster_regions(x, [3, 5], random_state=4)
    b = cluster_regions(x, [3, 5], random_state=4)
    assert a.silhouettes == b.silhouettes
    np.testing.assert_array_equal(a.labels, b.labels)
