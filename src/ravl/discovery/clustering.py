"""Fast K-Medoids and silhouette on clipped cosine distances (RaVL Stage 1, step 2).

The reference clusters region embeddings ``E`` (rows L2-normalised) with the distance

    d(i, j) = clip(1 - <e_i, e_j>, 0, 1),  d(i, i) = 0

(negative similarity -> distance 1) by running scikit-learn-extra's
``KMedoids(metric="precomputed", init="k-medoids++", random_state=seed)`` (method
``"alternate"``, ``max_iter=300``) and ``sklearn.metrics.silhouette_score(metric="precomputed")``
once per K on the full ``n x n`` matrix. This module computes the same quantities without that
matrix:

* **k-medoids++ seeding** draws the same random numbers as the reference (a local
  ``numpy.random.RandomState(seed)`` per K, ``2 + int(log K)`` local trials) and needs only the
  distance rows of the candidates. Ks that share the number of local trials share a prefix of the
  same seeding sequence, so one seeding serves all of them.
* **Alternating (Voronoi) iterations** keep an ``n x K`` distance table to the medoids and
  recompute only the columns of medoids that moved. The medoid update needs, for each point,
  the summed distance to the other members of its cluster; for unit vectors without negative
  similarities that is ``m - <e_i, s>`` with ``s`` the cluster's summed embedding. A cluster
  whose members all lie within 45 degrees of its mean direction cannot hold a negative
  similarity (angle certificate); any other cluster is summed exactly, block by block, with the
  clipping applied. Costs are screened in float32 and the near-minimal ones re-evaluated in
  float64; costs within ``1e-10 * |S|`` are ties, broken as the reference breaks them. Only
  clusters whose membership changed are updated (the reference's update of an unchanged cluster
  is a no-op).
* **Silhouettes** follow from per-cluster summed embeddings too. The clipping of negative
  similarities is handled exactly: pairs that may be negative are found with angle bounds
  between groups of points, their negative parts are collected (sparse) and added per cluster
  with ``bincount``; if there are too many of them, a blockwise pass adds them with a one-hot
  matrix product instead. Each K is scored right after its fit.
* **Bounded memory**: above ``max_exact`` rows the sweep runs on a random sample of
  ``sample_size`` rows (silhouettes are those of the sample, as
  ``silhouette_score(sample_size=...)`` does), then every row is assigned to its nearest medoid.

Nothing here materialises an ``n x n`` array: the largest temporaries are ``block_size x n``
(and ``n x K``). Differences from the reference are at the level of floating-point rounding (the
reference sums a float32 matrix; here similarities are float32 and sums float64), which could
only matter for near-ties closer than float32 resolution.
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from ravl.exceptions import InvalidParameterError
from ravl.utils.progress import progress as _progress
from ravl.utils.validation import check_int, check_random_state

__all__ = [
    "KMedoidsFit",
    "ClusterSweep",
    "normalize_embeddings",
    "clipped_cosine_distances",
    "kmedoids",
    "kmedoids_sweep",
    "silhouette_scores",
    "silhouette_score",
    "kmedoids_objective",
    "cluster_regions",
    "resolve_seed",
]

logger = logging.getLogger(__name__)

# Safety margin (radians) for the angle certificates "no similarity below 0 in this set".
_MARGIN = 1e-3
_HALF_PI = math.pi / 2
# Costs closer than this (relative to the cluster size) are ties: the float64 closed form has
# rounding noise ~1e-14 m, so exact ties of the reference (a two-member cluster, duplicated
# embeddings) stay ties and are broken as the reference does (first row; keep the medoid).
_TIE = 1e-10


# --------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class KMedoidsFit:
    """One K-Medoids fit.

    Attributes:
        n_clusters: K.
        medoid_indices: ``[K]`` row index of each cluster's medoid.
        labels: ``[n]`` cluster of every row (index into ``medoid_indices``).
        inertia: Sum over rows of the distance to the nearest medoid (the K-Medoids objective).
        n_iter: Iterations run (the reference's ``n_iter_``).
        converged: Whether the medoids stopped changing before ``max_iter``.
    """

    n_clusters: int
    medoid_indices: np.ndarray
    labels: np.ndarray
    inertia: float
    n_iter: int
    converged: bool


@dataclass(frozen=True)
class ClusterSweep:
    """The K sweep of RaVL Stage 1: one K-Medoids fit and one silhouette per K, best K kept.

    Attributes:
        k_values: The K tried, ascending.
        silhouettes: Silhouette per K (``nan`` when undefined: fewer than 2 or more than n-1
            non-empty clusters).
        inertias: K-Medoids objective per K, on the rows that were clustered.
        n_iters: Iterations per K.
        converged: Convergence flag per K.
        best_k: The chosen K (first K with the highest silhouette), ``None`` if none is defined.
        labels: ``[R]`` cluster of every row for ``best_k`` (``None`` without a best K).
        medoid_indices: ``[best_k]`` medoid row indices into all R rows.
        inertia: Objective of the chosen clustering over all R rows.
        bounded_memory: Whether the sweep ran on a sample (``R > max_exact``).
        sample_indices: Rows clustered in the bounded-memory path (sorted), else ``None``.
        negative_similarity: How clipped negative similarities were handled in the silhouettes:
            ``"none"`` (provably none), ``"sparse"`` or ``"dense"``.
        n_negative_pairs: Pairs with negative similarity found (``None`` in the dense path).
        timings: Seconds spent per step.
    """

    k_values: tuple[int, ...]
    silhouettes: tuple[float, ...]
    inertias: tuple[float, ...]
    n_iters: tuple[int, ...]
    converged: tuple[bool, ...]
    best_k: int | None
    labels: np.ndarray | None
    medoid_indices: np.ndarray | None
    inertia: float | None
    bounded_memory: bool
    sample_indices: np.ndarray | None
    negative_similarity: str
    n_negative_pairs: int | None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def best_silhouette(self) -> float | None:
        """Silhouette of ``best_k`` (``None`` without a best K)."""
        if self.best_k is None:
            return None
        return self.silhouettes[self.k_values.index(self.best_k)]


# --------------------------------------------------------------------------------------------
# helpers


def normalize_embeddings(embeddings: np.ndarray, *, caller: str = "discover",
                         name: str = "region_embeddings", dtype=np.float32) -> np.ndarray:
    """L2-normalise rows (norms computed in float64, block by block).

    Args:
        embeddings: ``[n, D]`` finite values, no all-zero row.
        caller: Function named in error messages.
        name: Argument named in error messages.
        dtype: Output dtype (float32 by default: similarities are float32, sums float64).

    Returns:
        ``[n, D]`` unit rows, C-contiguous.

    Raises:
        ValueError: Not 2-D, not real, not finite, or a row of zeros.
    """
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[1] == 0:
        raise InvalidParameterError(f"The '{name}' parameter of {caller} must be a 2-D array [n, D] with D >= 1. "
                                    f"Got shape {x.shape} instead.")
    if x.dtype == bool or not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise InvalidParameterError(f"The '{name}' parameter of {caller} must hold real numbers. Got dtype {x.dtype}.")
    out = np.empty(x.shape, dtype=dtype)
    step = 8192
    for a in range(0, x.shape[0], step):
        blk = x[a:a + step].astype(np.float64)
        finite = np.isfinite(blk).all(axis=1)
        if not finite.all():
            bad = a + int(np.flatnonzero(~finite)[0])
            raise InvalidParameterError(f"The '{name}' parameter of {caller} must be finite; row {bad} holds NaN or "
                                        "inf.")
        norms = np.sqrt(np.einsum("ij,ij->i", blk, blk))
        if (norms == 0).any():
            bad = a + int(np.flatnonzero(norms == 0)[0])
            raise InvalidParameterError(f"The '{name}' parameter of {caller} must have no all-zero row (cosine "
                                        f"distance is undefined); row {bad} is all zeros.")
        out[a:a + step] = blk / norms[:, None]
    return out


def clipped_cosine_distances(embeddings: np.ndarray) -> np.ndarray:
    """The reference's full distance matrix ``clip(1 - E Eᵀ, 0, 1)`` with a zero diagonal.

    Memory grows with n²: meant for tests and small inputs (the fast functions never build it).

    Args:
        embeddings: ``[n, D]``; rows are L2-normalised first (in float64).

    Returns:
        ``[n, n]`` float64 distances.
    """
    e = normalize_embeddings(embeddings, caller="clipped_cosine_distances", name="embeddings",
                             dtype=np.float64)
    d = 1.0 - e @ e.T
    np.clip(d, 0.0, 1.0, out=d)
    np.fill_diagonal(d, 0.0)
    return d


def resolve_seed(random_state) -> int:
    """The integer seed used for k-medoids++ (an int ``random_state`` as is, else drawn from it).

    The reference seeds every K with the same integer (``KMedoids(random_state=0)``); ravl does
    the same with a local ``numpy.random.RandomState(seed)``, so an int ``random_state``
    reproduces the reference's seeding. A ``numpy.random.Generator`` or ``None`` yields a drawn
    seed. Global random state is never touched.
    """
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        if not 0 <= int(random_state) < 2**32:
            raise InvalidParameterError("The 'random_state' parameter must be None, an int in [0, 2**32) or a numpy "
                             f"Generator. Got {random_state!r} instead.")
        return int(random_state)
    return int(check_random_state(random_state).integers(0, 2**32 - 1))


def _group_starts(sorted_labels: np.ndarray) -> np.ndarray:
    if sorted_labels.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])


def _changed(prev: np.ndarray | None, labels: np.ndarray, k: int) -> np.ndarray:
    """Clusters whose membership differs between ``prev`` and ``labels`` (all when ``prev`` is None)."""
    if prev is None:
        return np.arange(k)
    diff = labels != prev
    changed = np.zeros(k, dtype=bool)
    changed[labels[diff]] = True
    changed[prev[diff]] = True
    return np.flatnonzero(changed)


class _Geometry:
    """Unit rows (float32), their exact self-distance terms and the global cone certificate."""

    def __init__(self, e32: np.ndarray, block_size: int):
        self.e32 = np.ascontiguousarray(e32, dtype=np.float32)
        self.n, self.dim = self.e32.shape
        self.block = int(block_size)
        # d(i, i) is 0 by definition; the closed forms include 1 - <e_i, e_i> for j = i.
        self.self_term = 1.0 - np.einsum("ij,ij->i", self.e32, self.e32, dtype=np.float64)
        self.nonnegative = self._cone_certificate()

    def _cone_certificate(self) -> bool:
        """True when no pair of rows can have a negative similarity (angles to the mean direction)."""
        if self.n <= 1:
            return True
        s = self.e32.sum(axis=0, dtype=np.float64)
        ns = np.linalg.norm(s)
        if ns <= 1e-12:
            return False
        cos = np.clip(self.e32 @ (s / ns).astype(np.float32), -1.0, 1.0).astype(np.float64)
        worst = np.sort(np.arccos(np.partition(cos, 1)[:2]))
        return bool(worst[0] + worst[1] < _HALF_PI - _MARGIN)

    def dist_to(self, cols: np.ndarray) -> np.ndarray:
        """``[n, len(cols)]`` float32 clipped distances from every row to rows ``cols``."""
        return _dist_to(self.e32, cols, self.block)

    def exact_neg_sum(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """For each of ``rows``: sum over ``cols`` of min(similarity, 0), block by block."""
        out = np.zeros(rows.size, dtype=np.float64)
        ec = self.e32[cols]
        for s in range(0, rows.size, self.block):
            blk = self.e32[rows[s:s + self.block]] @ ec.T
            np.minimum(blk, 0.0, out=blk)
            out[s:s + blk.shape[0]] = blk.sum(axis=1, dtype=np.float64)
        return out

    def groups(self, labels: np.ndarray, ks: np.ndarray, k: int, own: bool = True):
        """Members of clusters ``ks`` with their summed embeddings, in one gather pass.

        Returns:
            ``idx`` (members sorted by cluster, then row), ``starts``, ``ends``, ``glab`` (the
            cluster of each group), ``sums`` ``[groups, D]`` float64 and, with ``own``, the float32
            screening values ``<e_i, s_{l(i)}>`` per member.
        """
        sel = np.flatnonzero(np.isin(labels, ks)) if ks.size < k else np.arange(labels.size)
        idx = sel[np.argsort(labels[sel], kind="stable")]
        lab = labels[idx]
        starts = _group_starts(lab)
        ends = np.r_[starts[1:], idx.size].astype(np.int64)
        ex = self.e32[idx]
        sums = np.empty((starts.size, self.dim), dtype=np.float64)
        dots = np.empty(idx.size, dtype=np.float32) if own else None
        for g, (a, b) in enumerate(zip(starts.tolist(), ends.tolist())):
            blk = ex[a:b]
            blk.sum(axis=0, dtype=np.float64, out=sums[g])
            if own:
                np.matmul(blk, sums[g].astype(np.float32), out=dots[a:b])
        return idx, starts, ends, lab[starts], sums, dots


def _dist_to(e32: np.ndarray, cols: np.ndarray, block: int) -> np.ndarray:
    """``[n, len(cols)]`` float32 clipped distances from every row of ``e32`` to rows ``cols``."""
    cols = np.asarray(cols, dtype=np.int64)
    n = e32.shape[0]
    out = np.empty((n, cols.size), dtype=np.float32)
    ec = e32[cols]
    step = max(block * 8, 1)
    for s in range(0, n, step):
        blk = out[s:s + step]
        np.matmul(e32[s:s + step], ec.T, out=blk)
        np.subtract(1.0, blk, out=blk)
        np.clip(blk, 0.0, 1.0, out=blk)
    out[cols, np.arange(cols.size)] = 0.0
    return out


# --------------------------------------------------------------------------------------------
# K-Medoids


def _kpp_init(geom: _Geometry, n_clusters: int, seed: int, n_local_trials: int) -> tuple[np.ndarray, np.ndarray]:
    """k-medoids++ exactly as scikit-learn-extra draws it (same RandomState calls, float32 distances).

    Returns:
        The centres ``[K]`` and the ``[n, K]`` distances to them (the first distance table of
        every K that starts from a prefix of these centres).
    """
    rs = np.random.RandomState(seed)
    n = geom.n
    centers = np.empty(n_clusters, dtype=np.int64)
    table = np.empty((n, n_clusters), dtype=np.float32)
    centers[0] = rs.randint(n)
    table[:, 0] = geom.dist_to(centers[:1])[:, 0]
    closest = table[:, 0] ** 2
    pot = closest.sum()
    for c in range(1, n_clusters):
        rand_vals = rs.random_sample(n_local_trials) * pot
        cand = np.searchsorted(np.cumsum(closest, dtype=np.float64), rand_vals)
        np.minimum(cand, n - 1, out=cand)
        draw = geom.dist_to(cand).T  # [trials, n]
        dc = draw ** 2
        best, best_pot, best_d, best_t = None, None, None, 0
        for t in range(n_local_trials):
            new = np.minimum(closest, dc[t])
            new_pot = new.sum()
            if best is None or new_pot < best_pot:
                best, best_pot, best_d, best_t = cand[t], new_pot, new, t
        centers[c] = best
        table[:, c] = draw[best_t]
        pot, closest = best_pot, best_d
    return centers, table


def _update_medoids(geom: _Geometry, labels: np.ndarray, ks: np.ndarray, medoids: np.ndarray,
                    sums: np.ndarray, sizes: np.ndarray) -> None:
    """Refresh sums and sizes of clusters ``ks`` and apply the reference's medoid update to them.

    For every member i of cluster S the cost is sum_{j in S} d(i, j); the reference adopts the
    member of least cost (first on ties) if it is strictly cheaper than the current medoid. Costs
    are screened in float32 (``|S| - <e_i, s>``) and the near-minimal ones, within a rigorous
    bound of the float32 rounding, re-evaluated in float64, so decisions equal the float64 closed
    form. Clusters that may hold negative similarities (no 45-degree certificate) are summed
    exactly with clipping.
    """
    k = medoids.size
    idx, starts, ends, glab, gsums, own32 = geom.groups(labels, ks, k)
    sums[ks] = 0.0
    sizes[ks] = 0.0
    sums[glab] = gsums
    sizes[glab] = ends - starts
    if idx.size == 0:
        return
    own = own32.astype(np.float64)
    lens = ends - starts
    grp = np.repeat(np.arange(starts.size), lens)
    m = lens[grp].astype(np.float64)
    cost32 = m - own - geom.self_term[idx]
    snorm = np.linalg.norm(gsums, axis=1)
    exact_groups = np.zeros(starts.size, dtype=bool)
    if not geom.nonnegative:
        with np.errstate(divide="ignore", invalid="ignore"):
            cos = np.minimum.reduceat(own, starts) / snorm
        worst = np.arccos(np.clip(np.nan_to_num(cos, nan=-1.0), -1.0, 1.0))
        exact_groups = (2 * worst >= _HALF_PI - _MARGIN) & (lens > 1)
    # candidates: near-minimal screened cost, the current medoid, the first member
    gmin = np.minimum.reduceat(cost32, starts)
    tol = 2.0 * (geom.dim + 2) * 2.0**-24 * snorm + 1e-12
    cand = cost32 <= (gmin + tol)[grp]
    cand[starts] = True
    in_cluster = labels[medoids[glab]] == glab
    cand |= np.isin(idx, medoids[glab[in_cluster]])
    cand &= ~exact_groups[grp]
    cpos = np.flatnonzero(cand)
    crow = idx[cpos]
    cgrp = grp[cpos]
    ccost = (m[cpos] - np.einsum("ij,ij->i", geom.e32[crow].astype(np.float64), gsums[cgrp])
             - geom.self_term[crow])
    cost_of = dict(zip(crow.tolist(), ccost.tolist()))
    best_of = {}
    if cpos.size:  # candidates are grouped and, inside a group, in row order
        cst = _group_starts(cgrp)
        cmin = np.minimum.reduceat(ccost, cst)
        tau = _TIE * lens[cgrp[cst]]
        cnt = np.diff(np.r_[cst, cgrp.size])
        near = np.flatnonzero(ccost <= np.repeat(cmin + tau, cnt))
        _, first = np.unique(cgrp[near], return_index=True)
        for f, mn in zip(near[first].tolist(), cmin.tolist()):
            best_of[int(cgrp[f])] = (int(crow[f]), mn)
    for g in range(starts.size):
        kk = int(glab[g])
        a, b = int(starts[g]), int(ends[g])
        tau = _TIE * (b - a)
        if exact_groups[g]:
            members = idx[a:b]
            cost = ((b - a) - geom.e32[members].astype(np.float64) @ gsums[g] - geom.self_term[members]
                    + geom.exact_neg_sum(members, members))
            best_cost = float(cost.min())
            best_row = int(members[np.flatnonzero(cost <= best_cost + tau)[0]])
            hit = np.flatnonzero(members == medoids[kk])
            cur = float(cost[hit[0]]) if hit.size else float(cost[0])
        else:
            best_row, best_cost = best_of[g]
            cur = cost_of[int(medoids[kk]) if in_cluster[g] else int(idx[a])]  # reference quirk
        if best_cost < cur - tau:
            medoids[kk] = best_row


def _alternate(geom: _Geometry, init: np.ndarray, max_iter: int, dist: np.ndarray | None = None):
    """Alternating K-Medoids from ``init``.

    Args:
        geom: The rows.
        init: Initial medoid rows.
        max_iter: Maximum iterations.
        dist: Optional ``[n, K]`` distance table to ``init`` (modified in place).

    Returns:
        ``(fit, sizes, sums)``: the fit and the size and summed embedding of each cluster.
    """
    medoids = np.array(init, dtype=np.int64)
    k = medoids.size
    dist = geom.dist_to(medoids) if dist is None else dist
    sums = np.zeros((k, geom.dim), dtype=np.float64)
    sizes = np.zeros(k, dtype=np.float64)
    cur = None
    n_iter = 0
    converged = False
    for it in range(max_iter):
        n_iter = it
        old = medoids.copy()
        labels = dist.argmin(axis=1)
        ks = _changed(cur, labels, k)
        cur = labels
        if ks.size:
            _update_medoids(geom, labels, ks, medoids, sums, sizes)
        moved = np.flatnonzero(old != medoids)
        if moved.size == 0:
            converged = True
            break
        dist[:, moved] = geom.dist_to(medoids[moved])
    labels = dist.argmin(axis=1)
    ks = _changed(cur, labels, k)
    if ks.size:
        _, starts, ends, glab, gsums, _ = geom.groups(labels, ks, k, own=False)
        sums[ks] = 0.0
        sizes[ks] = 0.0
        sums[glab] = gsums
        sizes[glab] = ends - starts
    inertia = float(dist.min(axis=1).sum(dtype=np.float64))
    fit = KMedoidsFit(k, medoids, labels.astype(np.int64), inertia, n_iter, converged)
    return fit, sizes, sums


def _n_trials(k: int, n_local_trials: int | None) -> int:
    return 2 + int(np.log(k)) if n_local_trials is None else int(n_local_trials)


def _check_ks(k_values, n: int, caller: str) -> list[int]:
    ks = sorted({check_int(k, "k_values", caller, low=1) for k in k_values})
    if not ks:
        raise InvalidParameterError(f"The 'k_values' parameter of {caller} must hold at least one K. Got none.")
    if ks[-1] > n:
        raise InvalidParameterError(f"The 'k_values' parameter of {caller} must hold values of at most the number of "
                                    f"rows ({n}). Got {ks[-1]} instead.")
    return ks


def _kpp_inits(geom: _Geometry, ks: list[int], seed: int,
               n_local_trials: int | None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """One k-medoids++ sequence per number of local trials; each K takes a prefix of its sequence."""
    inits = {}
    for t in sorted({_n_trials(k, n_local_trials) for k in ks}):
        kmax = max(k for k in ks if _n_trials(k, n_local_trials) == t)
        inits[t] = _kpp_init(geom, kmax, seed, t)
    return inits


def _run_sweep(geom: _Geometry, ks: list[int], seed: int, max_iter: int, n_local_trials: int | None,
               max_pairs: int | None, show_progress: bool):
    """Fit every K; with ``max_pairs`` not None also score each fit's silhouette.

    Returns:
        ``(fits, silhouettes or None, negatives or None, timings)``.
    """
    t0 = time.perf_counter()
    inits = _kpp_inits(geom, ks, seed, n_local_trials)
    timings = {"kmedoids_s": time.perf_counter() - t0, "silhouette_s": 0.0}
    neg = None
    if max_pairs is not None:
        t = time.perf_counter()
        part = None
        if not geom.nonnegative:
            kmax = ks[-1]
            part = inits[_n_trials(kmax, n_local_trials)][1][:, :kmax].argmin(axis=1)
        neg = _Negatives(geom, part, max_pairs)
        timings["silhouette_s"] += time.perf_counter() - t
    fits, sils = [], []
    for k in _progress(ks, desc="K-Medoids sweep", disable=not show_progress):
        t = time.perf_counter()
        centres, table = inits[_n_trials(k, n_local_trials)]
        fit, sizes, sums = _alternate(geom, centres[:k], max_iter, table[:, :k].copy())
        t2 = time.perf_counter()
        timings["kmedoids_s"] += t2 - t
        fits.append(fit)
        if neg is not None and neg.mode != "dense":
            sils.append(_silhouette_closed(geom, fit.labels, sizes, _projections(geom, sums), neg))
            timings["silhouette_s"] += time.perf_counter() - t2
    if neg is not None and neg.mode == "dense":
        t = time.perf_counter()
        sils = _silhouettes_dense(geom, [f.labels for f in fits])
        timings["silhouette_s"] += time.perf_counter() - t
    return fits, (sils if neg is not None else None), neg, timings


def kmedoids_sweep(embeddings: np.ndarray, k_values: Sequence[int], *, random_state=0, max_iter: int = 300,
                   n_local_trials: int | None = None, block_size: int = 2048,
                   progress: bool = False) -> list[KMedoidsFit]:
    """K-Medoids for several K at once, as the reference fits each K.

    Equivalent to ``KMedoids(n_clusters=k, metric="precomputed", method="alternate",
    init="k-medoids++", max_iter=max_iter, random_state=seed).fit(D)`` (scikit-learn-extra) for
    every ``k`` on the clipped cosine distance ``D``, without building ``D``.

    Args:
        embeddings: ``[n, D]`` (rows are L2-normalised).
        k_values: The K to fit (each in [1, n]).
        random_state: Seed (see :func:`resolve_seed`).
        max_iter: Maximum alternating iterations.
        n_local_trials: k-medoids++ candidates per step (default ``2 + int(log K)``).
        block_size: Rows per block in blockwise products.
        progress: Show a progress bar.

    Returns:
        One :class:`KMedoidsFit` per K, ascending K.
    """
    caller = "kmedoids_sweep"
    e = normalize_embeddings(embeddings, caller=caller, name="embeddings")
    ks = _check_ks(k_values, e.shape[0], caller)
    max_iter = check_int(max_iter, "max_iter", caller, low=0)
    block_size = check_int(block_size, "block_size", caller, low=1)
    if n_local_trials is not None:
        n_local_trials = check_int(n_local_trials, "n_local_trials", caller, low=1)
    fits, _, _, _ = _run_sweep(_Geometry(e, block_size), ks, resolve_seed(random_state), max_iter,
                               n_local_trials, None, progress)
    return fits


def kmedoids(embeddings: np.ndarray, n_clusters: int, *, random_state=0, max_iter: int = 300,
             n_local_trials: int | None = None, block_size: int = 2048) -> KMedoidsFit:
    """K-Medoids (k-medoids++ seeding, alternating updates) on clipped cosine distances.

    See :func:`kmedoids_sweep`.

    Example:
        >>> e = np.array([[1, 0], [0.99, 0.1], [0, 1], [0.1, 0.99]])
        >>> fit = kmedoids(e, 2)
        >>> bool(fit.labels[0] == fit.labels[1] != fit.labels[2] == fit.labels[3])
        True
    """
    return kmedoids_sweep(embeddings, [n_clusters], random_state=random_state, max_iter=max_iter,
                          n_local_trials=n_local_trials, block_size=block_size)[0]


def kmedoids_objective(embeddings: np.ndarray, medoid_indices: np.ndarray, *, block_size: int = 2048) -> float:
    """Sum over rows of the clipped cosine distance to the nearest medoid (the K-Medoids objective)."""
    e = normalize_embeddings(embeddings, caller="kmedoids_objective", name="embeddings")
    d = _dist_to(e, np.asarray(medoid_indices, dtype=np.int64), block_size)
    return float(d.min(axis=1).sum(dtype=np.float64))


# --------------------------------------------------------------------------------------------
# silhouettes


class _Negatives:
    """Negative similarities, found with angle bounds between groups: none, a sparse list, or dense.

    Groups come from a partition (a clustering); a group pair whose centre angle plus both radii
    stays below 90 degrees cannot hold a negative similarity and is skipped. The others are
    scanned block by block and their negative pairs (i < j) kept, up to ``max_pairs``.
    """

    def __init__(self, geom: _Geometry, partition: np.ndarray | None, max_pairs: int):
        self.mode = "none"
        self.rows = self.cols = self.vals = None
        self.n_pairs: int | None = 0
        if geom.nonnegative:
            return
        n = geom.n
        part = np.zeros(n, dtype=np.int64) if partition is None else np.asarray(partition, dtype=np.int64)
        k = int(part.max()) + 1
        idx, starts, ends, _, sums, own = geom.groups(part, np.arange(k), k)
        members = [idx[a:b] for a, b in zip(starts, ends)]
        g = len(members)
        norms = np.linalg.norm(sums, axis=1)
        ok = norms > 1e-12
        centres = np.zeros_like(sums)
        centres[ok] = sums[ok] / norms[ok, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            cmin = np.minimum.reduceat(own.astype(np.float64), starts) / norms
        radius = np.where(ok, np.arccos(np.clip(np.nan_to_num(cmin, nan=-1.0), -1.0, 1.0)), math.pi)
        radius = np.minimum(radius + 1e-3, math.pi)  # float32 screening slack
        phi = np.arccos(np.clip(centres @ centres.T, -1.0, 1.0))
        phi[~ok] = 0.0
        phi[:, ~ok] = 0.0
        may = (phi + radius[:, None] + radius[None, :]) >= _HALF_PI - _MARGIN
        may &= np.triu(np.ones((g, g), dtype=bool))
        may &= (ends - starts)[None, :] > np.eye(g, dtype=np.int64)  # a singleton has no pair with itself
        if not may.any():
            return
        rows, cols, vals = [], [], []
        total = 0
        for a in range(g):
            hs = np.flatnonzero(may[a])
            if hs.size == 0:
                continue
            ra = members[a]
            cb = np.concatenate([members[h] for h in hs])
            same = np.concatenate([np.full(members[h].size, h == a) for h in hs])
            ec = geom.e32[cb]
            for s in range(0, ra.size, geom.block):
                r = ra[s:s + geom.block]
                blk = geom.e32[r] @ ec.T
                neg = blk < 0
                neg &= ~same[None, :] | (cb[None, :] > r[:, None])
                ii, jj = np.nonzero(neg)
                total += ii.size
                if total > max_pairs:
                    self.mode, self.n_pairs = "dense", None
                    return
                if ii.size:
                    rows.append(r[ii].astype(np.int32))
                    cols.append(cb[jj].astype(np.int32))
                    vals.append(blk[ii, jj])
        self.n_pairs = total
        if total:
            self.mode = "sparse"
            self.rows = np.concatenate(rows)
            self.cols = np.concatenate(cols)
            self.vals = np.concatenate(vals).astype(np.float64)


def _projections(geom: _Geometry, sums: np.ndarray) -> np.ndarray:
    """``[n, K]`` float32 ``proj[i, k] = <e_i, s_k>``: every row's summed similarity to every cluster."""
    s32 = np.ascontiguousarray(sums, dtype=np.float32)
    out = np.empty((geom.n, sums.shape[0]), dtype=np.float32)
    step = max(geom.block * 8, 1)
    for a in range(0, geom.n, step):
        np.matmul(geom.e32[a:a + step], s32.T, out=out[a:a + step])
    return out


def _silhouette_from_totals(totals: np.ndarray, labels: np.ndarray, sizes: np.ndarray) -> float:
    """Mean silhouette from ``totals[i, k]`` = summed distance of row i to cluster k (self excluded).

    Same conventions as scikit-learn: a(i) over the other members of i's cluster, b(i) the least
    mean distance to another non-empty cluster, s(i) = 0 where undefined (singletons).
    """
    n = labels.size
    rows = np.arange(n)
    own = sizes[labels]
    with np.errstate(divide="ignore", invalid="ignore"):
        a = totals[rows, labels] / (own - 1)
        mean = totals / sizes[None, :]
    mean[:, sizes == 0] = np.inf
    mean[rows, labels] = np.inf
    b = mean.min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (b - a) / np.maximum(a, b)
    s[own <= 1] = 0.0
    return float(np.nan_to_num(s).mean())


def _silhouette_closed(geom: _Geometry, labels: np.ndarray, sizes: np.ndarray, proj: np.ndarray,
                       neg: _Negatives | None, dense_corr: np.ndarray | None = None) -> float:
    """Exact silhouette from cluster sizes and ``proj`` plus the clipped-negative corrections.

    sum_{j in k} d(i, j) = |k| - <e_i, s_k> + sum_{j in k, sim < 0} sim(i, j), minus the self term.
    """
    n = geom.n
    used = int((sizes > 0).sum())
    if not 2 <= used <= n - 1:
        return float("nan")
    k = sizes.size
    totals = sizes[None, :] - proj.astype(np.float64)
    totals[np.arange(n), labels] -= geom.self_term
    if neg is not None and neg.mode == "sparse":
        flat = np.bincount(neg.rows.astype(np.int64) * k + labels[neg.cols], neg.vals, minlength=n * k)
        flat += np.bincount(neg.cols.astype(np.int64) * k + labels[neg.rows], neg.vals, minlength=n * k)
        totals += flat.reshape(n, k)
    if dense_corr is not None:
        totals += dense_corr
    return _silhouette_from_totals(totals, labels, sizes)


def _labeling_stats(geom: _Geometry, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    k = int(labels.max()) + 1
    _, starts, ends, glab, gsums, _ = geom.groups(labels, np.arange(k), k, own=False)
    sums = np.zeros((k, geom.dim))
    sizes = np.zeros(k)
    sums[glab] = gsums
    sizes[glab] = ends - starts
    return sizes, _projections(geom, sums)


def _silhouettes_dense(geom: _Geometry, labelings: Sequence[np.ndarray], max_cols: int = 4096) -> list[float]:
    """Silhouettes when negative similarities are too many to list: blockwise one-hot products."""
    out: list[float] = []
    chunk: list[np.ndarray] = []
    width = 0

    def flush():
        corr = _dense_corrections(geom, chunk)
        for lab, c in zip(chunk, corr):
            sizes, proj = _labeling_stats(geom, lab)
            out.append(_silhouette_closed(geom, lab, sizes, proj, None, c))
        chunk.clear()

    for lab in labelings:
        k = int(lab.max()) + 1
        if chunk and width + k > max_cols:
            flush()
            width = 0
        chunk.append(lab)
        width += k
    if chunk:
        flush()
    return out


def _dense_corrections(geom: _Geometry, labelings: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per labeling, ``[n, K]`` sums of min(similarity, 0) per cluster, one blockwise pass for all."""
    n = geom.n
    ks = [int(lab.max()) + 1 for lab in labelings]
    offs = np.r_[0, np.cumsum(ks)].astype(np.int64)
    onehot = np.zeros((n, int(offs[-1])), dtype=np.float32)
    for lab, o in zip(labelings, offs[:-1]):
        onehot[np.arange(n), o + lab] = 1.0
    acc = np.empty((n, int(offs[-1])), dtype=np.float64)
    for s in range(0, n, geom.block):
        blk = geom.e32[s:s + geom.block] @ geom.e32.T
        np.minimum(blk, 0.0, out=blk)
        acc[s:s + blk.shape[0]] = blk @ onehot
    return [acc[:, a:b] for a, b in zip(offs[:-1], offs[1:])]


def silhouette_scores(embeddings: np.ndarray, labelings: Sequence[np.ndarray], *, block_size: int = 2048,
                      max_negative_pairs: int = 10_000_000) -> np.ndarray:
    """Exact mean silhouettes on the clipped cosine distance, for several labelings at once.

    Equal (to floating-point rounding) to ``sklearn.metrics.silhouette_score(D, labels,
    metric="precomputed")`` with ``D = clipped_cosine_distances(embeddings)``, without building D.

    Args:
        embeddings: ``[n, D]`` (rows are L2-normalised).
        labelings: Each ``[n]`` non-negative int cluster labels.
        block_size: Rows per block.
        max_negative_pairs: Most negative-similarity pairs kept in memory (12 bytes each); beyond
            it a blockwise dense pass is used.

    Returns:
        ``[len(labelings)]`` silhouettes, ``nan`` where undefined (fewer than 2 or more than
        n-1 distinct labels).

    Example:
        >>> e = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]])
        >>> round(silhouette_score(e, np.array([0, 0, 1, 1])), 4)
        0.9931
    """
    caller = "silhouette_scores"
    e = normalize_embeddings(embeddings, caller=caller, name="embeddings")
    check_int(block_size, "block_size", caller, low=1)
    check_int(max_negative_pairs, "max_negative_pairs", caller, low=0)
    labs = []
    for lab in labelings:
        lab = np.asarray(lab)
        if lab.shape != (e.shape[0],) or not np.issubdtype(lab.dtype, np.integer) or (lab < 0).any():
            raise InvalidParameterError(f"Every labeling passed to {caller} must be [n] non-negative ints with n = "
                                        f"{e.shape[0]}. Got shape {lab.shape}, dtype {lab.dtype}.")
        labs.append(lab.astype(np.int64))
    geom = _Geometry(e, block_size)
    part = max(labs, key=lambda x: int(np.unique(x).size)) if labs and not geom.nonnegative else None
    neg = _Negatives(geom, part, max_negative_pairs)
    if neg.mode == "dense":
        scores = _silhouettes_dense(geom, labs)
    else:
        scores = [_silhouette_closed(geom, lab, *_labeling_stats(geom, lab), neg) for lab in labs]
    return np.asarray(scores, dtype=np.float64)


def silhouette_score(embeddings: np.ndarray, labels: np.ndarray, **kwargs) -> float:
    """Exact mean silhouette of one labeling (see :func:`silhouette_scores`)."""
    return float(silhouette_scores(embeddings, [labels], **kwargs)[0])


# --------------------------------------------------------------------------------------------
# the sweep used by discover


def cluster_regions(embeddings: np.ndarray, k_values: Sequence[int], *, random_state=0, max_iter: int = 300,
                    n_local_trials: int | None = None, max_exact: int | None = 20_000,
                    sample_size: int = 10_000, block_size: int = 2048,
                    max_negative_pairs: int = 10_000_000, progress: bool = False,
                    normalized: bool = False, blas_threads: int | None = 1) -> ClusterSweep:
    """RaVL's K sweep: K-Medoids per K, silhouette per K, keep the first K with the best silhouette.

    Args:
        embeddings: ``[R, D]`` region embeddings (rows are L2-normalised unless ``normalized``).
        k_values: Candidate K; values above n - 1 (n = rows clustered) are dropped, since a
            silhouette needs at most n - 1 clusters. If none is left, no K is chosen.
        random_state: Seed for k-medoids++ (every K uses the same seed, as the reference) and for
            the bounded-memory sample.
        max_iter: Maximum alternating iterations per K.
        n_local_trials: k-medoids++ candidates per step (default ``2 + int(log K)``).
        max_exact: Above this many rows, cluster a sample (``None``: never).
        sample_size: Rows clustered in the bounded-memory path.
        block_size: Rows per block in blockwise products.
        max_negative_pairs: See :func:`silhouette_scores`.
        progress: Show progress bars.
        normalized: ``embeddings`` are already float32 unit rows (skip normalisation).
        blas_threads: BLAS threads inside the sweep (``None``: leave the BLAS setting alone). The
            products here are skinny (``n x D`` times ``D x K``) and memory-bound; extra threads
            only add synchronisation, which is costly on shared machines. Like scikit-learn's
            KMeans, the limit is applied with ``threadpoolctl`` for the duration of the call.

    Returns:
        A :class:`ClusterSweep`.
    """
    if blas_threads is None:
        return _cluster_regions(embeddings, k_values, random_state, max_iter, n_local_trials, max_exact,
                                sample_size, block_size, max_negative_pairs, progress, normalized)
    with threadpool_limits(limits=int(blas_threads), user_api="blas"):
        return _cluster_regions(embeddings, k_values, random_state, max_iter, n_local_trials, max_exact,
                                sample_size, block_size, max_negative_pairs, progress, normalized)


def _cluster_regions(embeddings, k_values, random_state, max_iter, n_local_trials, max_exact, sample_size,
                     block_size, max_negative_pairs, progress, normalized) -> ClusterSweep:
    t0 = time.perf_counter()
    e = (np.ascontiguousarray(embeddings, dtype=np.float32) if normalized else
         normalize_embeddings(embeddings, caller="cluster_regions", name="embeddings"))
    r = e.shape[0]
    seed = resolve_seed(random_state)
    bounded = max_exact is not None and r > max_exact and sample_size < r
    sample = None
    if bounded:
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(r, size=sample_size, replace=False))
        e_fit = e[sample]
    else:
        e_fit = e
    n = e_fit.shape[0]
    ks = sorted({int(k) for k in k_values if 1 <= int(k) <= n - 1})
    if not ks:
        return ClusterSweep((), (), (), (), (), None, None, None, None, bounded, sample, "none", 0,
                            {"total_s": time.perf_counter() - t0})
    geom = _Geometry(e_fit, block_size)
    fits, sil, neg, timings = _run_sweep(geom, ks, seed, max_iter, n_local_trials, max_negative_pairs, progress)
    best = None
    best_s = -math.inf
    for k, s in zip(ks, sil):
        if not math.isnan(s) and s > best_s:
            best, best_s = k, s
    labels = medoids = None
    inertia = None
    if best is not None:
        fit = fits[ks.index(best)]
        if bounded:
            t = time.perf_counter()
            medoids = sample[fit.medoid_indices]
            labels = np.empty(r, dtype=np.int64)
            inertia = 0.0
            step = 65536
            for a in range(0, r, step):  # assign every row to its nearest medoid, block by block
                sims = e[a:a + step] @ e[medoids].T
                d = np.clip(1.0 - sims, 0.0, 1.0)
                hit = (medoids >= a) & (medoids < a + step)
                d[medoids[hit] - a, np.flatnonzero(hit)] = 0.0
                labels[a:a + step] = d.argmin(axis=1)
                inertia += float(d.min(axis=1).sum(dtype=np.float64))
            timings["assign_s"] = time.perf_counter() - t
        else:
            medoids, labels, inertia = fit.medoid_indices, fit.labels, fit.inertia
    timings["total_s"] = time.perf_counter() - t0
    logger.info("K sweep %s..%s on %d rows%s: best K = %s (silhouette %s), clipping handled as %r",
                ks[0], ks[-1], n, " (sample)" if bounded else "", best,
                None if best is None else round(best_s, 4), neg.mode)
    return ClusterSweep(tuple(ks), tuple(float(s) for s in sil), tuple(f.inertia for f in fits),
                        tuple(f.n_iter for f in fits), tuple(f.converged for f in fits), best, labels, medoids,
                        inertia, bounded, sample, neg.mode, neg.n_pairs, timings)
