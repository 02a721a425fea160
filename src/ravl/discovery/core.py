"""RaVL Stage 1 discovery on arrays (docs/algorithm.md §2): cluster regions, score clusters, rank.

Shape symbols: N images, R regions, C classes, D embedding dim, K clusters.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from ravl._version import __version__
from ravl.discovery.clustering import cluster_regions, normalize_embeddings, resolve_seed
from ravl.discovery.result import (
    ClassGap,
    ClusterScore,
    DiscoveredFeature,
    DiscoveryConfig,
    DiscoveryResult,
    KSweepEntry,
    RankedRegion,
)
from ravl.exceptions import InvalidParameterError, RavlWarning

__all__ = [
    "DiscoveryWarning",
    "NoFeatureWarning",
    "WeakClusteringWarning",
    "ClusterStats",
    "score_clusters",
    "rank_clusters",
    "discover",
]

logger = logging.getLogger(__name__)

_CALLER = "discover"


class DiscoveryWarning(RavlWarning):
    """Something about a discovery run the caller should know (inputs or outcome)."""


class NoFeatureWarning(DiscoveryWarning):
    """Discovery finished but returned no feature (nothing passed the filters, or no clustering)."""


class WeakClusteringWarning(DiscoveryWarning):
    """Every silhouette of the K sweep is <= 0: the regions have no clear cluster structure."""


# --------------------------------------------------------------------------------------------
# per-cluster scores


@dataclass(frozen=True)
class ClusterStats:
    """Per-cluster, per-class statistics of docs/algorithm.md §2 (arrays; row = cluster id).

    Attributes:
        n_regions: ``[K]`` regions per cluster.
        n_images: ``[K]`` images with at least one region in the cluster (|A_c|).
        n_present: ``[K, C]`` images of class y in A_c.
        acc_present: ``[K, C]`` their accuracy (``nan`` if none).
        n_absent: ``[K, C]`` images of class y outside A_c.
        acc_absent: ``[K, C]`` their accuracy (``nan`` if none).
        valid: ``[K, C]`` class y is scored for the cluster (both sets non-empty).
        weight: ``[K, C]`` w = 2 min / (sum), or 1 when unweighted (``0`` where not valid).
        delta: ``[K, C]`` weighted gap Δ (``0`` where not valid).
        gap: ``[K]`` G_c = sum_y |Δ|.
        spurious_pattern: ``[K]`` S_c.
        influence_per_class: ``[K, C]`` H_c^y (``nan`` where no image was recorded).
        influence: ``[K]`` H_c = max_y H_c^y (``-inf`` where none).
        attribute: ``[K]`` class index with the largest positive unweighted gap (-1 if none).
    """

    n_regions: np.ndarray
    n_images: np.ndarray
    n_present: np.ndarray
    acc_present: np.ndarray
    n_absent: np.ndarray
    acc_absent: np.ndarray
    valid: np.ndarray
    weight: np.ndarray
    delta: np.ndarray
    gap: np.ndarray
    spurious_pattern: np.ndarray
    influence_per_class: np.ndarray
    influence: np.ndarray
    attribute: np.ndarray


def score_clusters(region_clusters: np.ndarray, region_image_index: np.ndarray, image_labels: np.ndarray,
                   image_predictions: np.ndarray, region_probabilities: np.ndarray, n_clusters: int, *,
                   weighted: bool = True) -> ClusterStats:
    """Cluster performance gaps, spurious pattern and influence for every cluster (vectorised).

    Follows the reference exactly: for cluster c, A_c = images with a region in c; for each class
    y seen in A_c, In = images of A_c labelled y, Out = other images labelled y (y skipped if
    either is empty); Δ = w (acc(In) - acc(Out)), w = 2 min(|In|, |Out|) / (|In| + |Out|).
    Influence: for each image of A_c with at least 2 regions, r* is its region with the largest
    score for the image's predicted class (first region on ties); over images that are
    misclassified and whose class has Δ < 0, record whether r* is in c; H_c^y is the mean per
    class, H_c the max.

    Args:
        region_clusters: ``[R]`` cluster id per region, in [0, n_clusters).
        region_image_index: ``[R]`` image of every region.
        image_labels: ``[N]`` true class index.
        image_predictions: ``[N]`` predicted class index.
        region_probabilities: ``[R, C]`` zero-shot class scores of every region.
        n_clusters: K.
        weighted: Use the weight w (``False``: w = 1, the unweighted ablation).

    Returns:
        A :class:`ClusterStats`.
    """
    lab = np.asarray(region_clusters, dtype=np.int64)
    img = np.asarray(region_image_index, dtype=np.int64)
    y = np.asarray(image_labels, dtype=np.int64)
    yhat = np.asarray(image_predictions, dtype=np.int64)
    q = np.asarray(region_probabilities)
    k = int(n_clusters)
    n = y.size
    c = q.shape[1]
    correct = (y == yhat).astype(np.float64)

    # A_c as unique (cluster, image) pairs
    pairs = np.unique(lab * n + img)
    pc, pi = pairs // n, pairs % n
    n_regions = np.bincount(lab, minlength=k)
    n_images = np.bincount(pc, minlength=k)
    key = pc * c + y[pi]
    n_in = np.bincount(key, minlength=k * c).reshape(k, c).astype(np.float64)
    ok_in = np.bincount(key, weights=correct[pi], minlength=k * c).reshape(k, c)
    n_tot = np.bincount(y, minlength=c).astype(np.float64)
    ok_tot = np.bincount(y, weights=correct, minlength=c)
    n_out = n_tot[None, :] - n_in
    ok_out = ok_tot[None, :] - ok_in
    valid = (n_in > 0) & (n_out > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc_in = np.where(n_in > 0, ok_in / n_in, np.nan)
        acc_out = np.where(n_out > 0, ok_out / n_out, np.nan)
        w = 2.0 * np.minimum(n_in, n_out) / (n_in + n_out) if weighted else np.ones((k, c))
    raw = np.where(valid, acc_in - acc_out, 0.0)
    w = np.where(valid, w, 0.0)
    delta = w * raw
    gap = np.abs(delta).sum(axis=1)
    spurious = ((delta > 0) & valid).any(axis=1) & ((delta < 0) & valid).any(axis=1)
    pos = np.where(valid & (raw > 0), raw, -np.inf)
    attribute = np.where(np.isfinite(pos.max(axis=1)), pos.argmax(axis=1), -1)

    # influence
    n_reg_img = np.bincount(img, minlength=n)
    score = q[np.arange(lab.size), yhat[img]]
    order = np.lexsort((np.arange(lab.size), -score, img))
    first = order[np.r_[True, img[order][1:] != img[order][:-1]]] if lab.size else order
    rstar = np.full(n, -1, dtype=np.int64)
    rstar[img[first]] = first
    yi = y[pi]
    eligible = (n_reg_img[pi] >= 2) & (correct[pi] == 0) & valid[pc, yi] & (delta[pc, yi] < 0)
    ec, ei, ey = pc[eligible], pi[eligible], yi[eligible]
    hit = (lab[rstar[ei]] == ec).astype(np.float64)
    cnt = np.bincount(ec * c + ey, minlength=k * c).reshape(k, c)
    hits = np.bincount(ec * c + ey, weights=hit, minlength=k * c).reshape(k, c)
    with np.errstate(divide="ignore", invalid="ignore"):
        h_cls = np.where(cnt > 0, hits / cnt, np.nan)
    influence = np.where((cnt > 0).any(axis=1), np.nanmax(np.where(cnt > 0, h_cls, -np.inf), axis=1), -np.inf)
    return ClusterStats(n_regions, n_images, n_in.astype(np.int64), acc_in, n_out.astype(np.int64), acc_out,
                        valid, w, delta, gap, spurious, h_cls, influence, attribute)


def rank_clusters(stats: ClusterStats, config: DiscoveryConfig) -> tuple[np.ndarray, np.ndarray]:
    """Apply the filters of ``config.scoring`` and rank.

    Returns:
        ``(passed [K] bool, ranked cluster ids)``; ranking is by G_c (or H_c for
        ``"influence_only"``) descending, ties by cluster id ascending; empty clusters never pass.
    """
    passed = stats.n_regions > 0
    if config.spurious_filter:
        passed = passed & stats.spurious_pattern
    if config.influence_filter:
        passed = passed & (stats.influence >= config.min_influence)
    key = stats.influence if config.scoring == "influence_only" else stats.gap
    ids = np.flatnonzero(passed)
    order = ids[np.lexsort((ids, -key[ids]))]
    return passed, order


# --------------------------------------------------------------------------------------------
# input checks


def _int_array(x: Any, name: str, length: int | None, low: int, high: int, hint: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1 or (length is not None and a.shape[0] != length):
        want = f"[{length}]" if length is not None else "1-D"
        raise InvalidParameterError(f"The '{name}' parameter of {_CALLER} must be a {want} array. Got shape {a.shape} "
                                    "instead.")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        else:
            raise InvalidParameterError(f"The '{name}' parameter of {_CALLER} must hold integers. Got dtype {a.dtype}.")
    a = a.astype(np.int64)
    bad = np.flatnonzero((a < low) | (a >= high))
    if bad.size:
        raise InvalidParameterError(f"The '{name}' parameter of {_CALLER} must hold values in [{low}, {high}) "
                                    f"({hint}); "
                         f"{bad.size} do not, e.g. position {int(bad[0])} holds {int(a[bad[0]])}.")
    return a


def _check_inputs(region_embeddings, region_image_index, image_labels, image_predictions, region_probabilities,
                  classes, image_probabilities, region_file_names, region_boxes):
    if isinstance(classes, str) or not isinstance(classes, Sequence) or not all(
            isinstance(c, str) for c in classes):
        raise InvalidParameterError(f"The 'classes' parameter of {_CALLER} must be a sequence of class names (str). "
                                    f"Got {classes!r} instead.")
    classes = tuple(classes)
    c = len(classes)
    if c < 1 or len(set(classes)) != c:
        raise InvalidParameterError(f"The 'classes' parameter of {_CALLER} must hold at least one name, without "
                                    f"duplicates. Got {classes!r}.")
    e = normalize_embeddings(region_embeddings, caller=_CALLER, name="region_embeddings")
    r = e.shape[0]
    q = np.asarray(region_probabilities, dtype=np.float64)
    if q.shape != (r, c):
        raise InvalidParameterError(f"The 'region_probabilities' parameter of {_CALLER} must have shape [R, C] = [{r}, "
                                    f"{c}] "
                                    f"(one row per region embedding, one column per class). Got {q.shape} instead.")
    if not np.isfinite(q).all():
        raise InvalidParameterError(f"The 'region_probabilities' parameter of {_CALLER} must be finite.")
    y_raw = np.asarray(image_labels)
    if y_raw.ndim != 1:
        raise InvalidParameterError(f"The 'image_labels' parameter of {_CALLER} must be a 1-D array [N]. Got shape "
                                    f"{y_raw.shape} instead.")
    n = y_raw.shape[0]
    y = _int_array(y_raw, "image_labels", n, 0, c, "class indices into 'classes'")
    yhat = _int_array(image_predictions, "image_predictions", n, 0, c, "class indices into 'classes'")
    img = _int_array(region_image_index, "region_image_index", r, 0, max(n, 0),
                     "image positions into image_labels")
    if image_probabilities is not None:
        p = np.asarray(image_probabilities, dtype=np.float64)
        if p.shape != (n, c):
            raise InvalidParameterError(f"The 'image_probabilities' parameter of {_CALLER} must have shape [N, C] = "
                                        f"[{n}, {c}]. Got {p.shape} instead.")
        differ = int((p.argmax(axis=1) != yhat).sum())
        if differ:
            warnings.warn(f"image_predictions differ from argmax(image_probabilities) for {differ} of {n} images; "
                          "discover uses image_predictions.", DiscoveryWarning, stacklevel=3)
    names = None
    if region_file_names is not None:
        names = [str(s) for s in region_file_names]
        if len(names) != r:
            raise InvalidParameterError(f"The 'region_file_names' parameter of {_CALLER} must hold one file name per "
                                        f"region ({r}). Got {len(names)} instead.")
    boxes = None
    if region_boxes is not None:
        boxes = np.asarray(region_boxes, dtype=np.float64)
        if boxes.shape != (r, 4):
            raise InvalidParameterError(f"The 'region_boxes' parameter of {_CALLER} must have shape [R, 4] = [{r}, 4] "
                                        f"([x0, y0, x1, y1] pixels per region). Got {boxes.shape} instead.")
    return classes, e, q, y, yhat, img, names, boxes


def _make_config(config: DiscoveryConfig | Mapping[str, Any] | None, params: dict[str, Any]) -> DiscoveryConfig:
    if config is None:
        config = DiscoveryConfig()
    elif isinstance(config, Mapping):
        config = DiscoveryConfig.from_dict(config)
    elif not isinstance(config, DiscoveryConfig):
        raise InvalidParameterError(f"The 'config' parameter of {_CALLER} must be a DiscoveryConfig, a dict or None. "
                                    f"Got {type(config).__name__} instead.")
    names = {f.name for f in fields(DiscoveryConfig)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise InvalidParameterError(f"{_CALLER}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
                                    f"configuration keywords are: {', '.join(sorted(names))}.")
    return replace(config, **params) if params else config


# --------------------------------------------------------------------------------------------
# discover


def discover(region_embeddings: np.ndarray, region_image_index: np.ndarray, image_labels: np.ndarray,
             image_predictions: np.ndarray, region_probabilities: np.ndarray, *, classes: Sequence[str],
             image_probabilities: np.ndarray | None = None, config: DiscoveryConfig | Mapping | None = None,
             region_file_names: Sequence[str] | None = None, region_boxes: np.ndarray | None = None,
             random_state=0, progress: bool = True, meta: Mapping[str, Any] | None = None,
             **params: Any) -> DiscoveryResult:
    """Find image features the model ties to a class (RaVL Stage 1, docs/algorithm.md §2).

    1. Cluster the L2-normalised region embeddings with K-Medoids on the clipped cosine distance
       (k-medoids++, fixed seed) for every K in ``k_min..k_max`` (default 2C..5C-1) and keep the
       first K with the highest silhouette.
    2. Score each cluster: class gaps Δ, performance gap G_c, spurious pattern S_c, influence H_c.
    3. Keep clusters with S_c and H_c >= 0.25 and rank them by G_c (or an ablation, see
       ``scoring``); inside a cluster, regions by similarity to the medoid.

    Nothing found is a valid outcome: ``status`` and ``message`` say why and a
    :class:`NoFeatureWarning` is emitted; all silhouettes <= 0 emits a
    :class:`WeakClusteringWarning` (the reference would crash) and ravl goes on with the best K.

    Args:
        region_embeddings: ``[R, D]`` region embeddings (any scale; rows are L2-normalised).
        region_image_index: ``[R]`` image of every region (position in ``image_labels``).
        image_labels: ``[N]`` true class index of every image.
        image_predictions: ``[N]`` zero-shot predicted class index of every image.
        region_probabilities: ``[R, C]`` zero-shot class probabilities of every region.
        classes: The C class names.
        image_probabilities: ``[N, C]`` image probabilities (optional; only checked against
            ``image_predictions``).
        config: A :class:`DiscoveryConfig` (or its dict); keyword ``params`` override its fields,
            e.g. ``discover(..., scoring="gap_only", k_min=4)``.
        region_file_names: ``[R]`` image file name of every region, copied into the result.
        region_boxes: ``[R, 4]`` box of every region (pixels), copied into the result.
        random_state: Seed (int, Generator or None); an int seeds k-medoids++ exactly as the
            reference's ``KMedoids(random_state=...)``.
        progress: Show progress bars.
        meta: Provenance to record in the result (e.g. model name, region mode).
        **params: :class:`DiscoveryConfig` fields.

    Returns:
        A :class:`~ravl.discovery.DiscoveryResult`.

    Example:
        >>> res = discover(emb, region_image, labels, preds, region_probs, classes=names)  # doctest: +SKIP
        >>> res.top.class_name, res.ranked_regions()[:10]  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    cfg = _make_config(config, params)
    classes, e, q, y, yhat, img, names, boxes = _check_inputs(
        region_embeddings, region_image_index, image_labels, image_predictions, region_probabilities, classes,
        image_probabilities, region_file_names, region_boxes)
    seed = resolve_seed(random_state)
    r, n, c = e.shape[0], y.size, len(classes)
    lo, hi = cfg.k_range(c)
    n_fit = r if cfg.max_exact is None or r <= cfg.max_exact else min(r, cfg.sample_size)
    if hi > n_fit - 1:
        usable = f"K in {lo}..{n_fit - 1}" if lo <= n_fit - 1 else "no K"
        warnings.warn(f"The K range {lo}..{hi} exceeds what {n_fit} clustered regions allow (a silhouette needs "
                      f"K <= {n_fit - 1}); using {usable}.", DiscoveryWarning, stacklevel=2)
    sweep = cluster_regions(e, range(lo, hi + 1), random_state=seed, max_iter=cfg.max_iter,
                            n_local_trials=cfg.n_local_trials, max_exact=cfg.max_exact, sample_size=cfg.sample_size,
                            block_size=cfg.block_size, max_negative_pairs=cfg.max_negative_pairs, progress=progress,
                            normalized=True, blas_threads=cfg.blas_threads)
    timings = {k: float(v) for k, v in sweep.timings.items() if k != "total_s"}
    timings["clustering_s"] = float(sweep.timings.get("total_s", 0.0))
    k_sweep = tuple(KSweepEntry(k, None if math.isnan(s) else float(s), float(i), int(it), bool(cv))
                    for k, s, i, it, cv in zip(sweep.k_values, sweep.silhouettes, sweep.inertias, sweep.n_iters,
                                               sweep.converged))
    common = dict(classes=classes, scoring=cfg.scoring, config=cfg, random_state=seed, n_regions=r, n_images=n,
                  k_sweep=k_sweep, bounded_memory=sweep.bounded_memory,
                  sample_size=None if sweep.sample_indices is None else int(sweep.sample_indices.size),
                  negative_similarity=sweep.negative_similarity, meta=dict(meta or {}), ravl_version=__version__)

    if sweep.best_k is None:
        why = (f"no K in {lo}..{hi} could be scored: {r} regions" +
               (" allow no K >= 2 with K <= regions - 1" if lo > n_fit - 1 else
                ", and every clustering had fewer than 2 non-empty clusters (duplicate embeddings?)"))
        msg = f"No feature: {why}."
        warnings.warn(msg, NoFeatureWarning, stacklevel=2)
        timings["total_s"] = time.perf_counter() - t0
        return DiscoveryResult(status="no_clusters", message=msg, n_clusters=None, silhouette=None,
                               silhouette_positive=False, inertia=None, timings=timings, medoid_indices=(),
                               region_clusters=(), clusters=(), features=(), **common)

    t1 = time.perf_counter()
    k = sweep.best_k
    labels = sweep.labels
    medoids = sweep.medoid_indices
    stats = score_clusters(labels, img, y, yhat, q, k, weighted=cfg.weighted)
    passed, order = rank_clusters(stats, cfg)
    clusters = tuple(
        ClusterScore(int(i), int(stats.n_regions[i]), int(stats.n_images[i]), int(medoids[i]), float(stats.gap[i]),
                     float(stats.influence[i]), bool(stats.spurious_pattern[i]), bool(passed[i]))
        for i in range(k) if stats.n_regions[i] > 0)
    members_of = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[members_of], np.arange(k + 1))
    features = []
    for rank, cid in enumerate(order.tolist(), start=1):
        members = members_of[bounds[cid]:bounds[cid + 1]]
        sims = (e[members] @ e[medoids[cid]]).astype(np.float64)
        ranked = members[np.lexsort((members, -sims))]
        sim_of = dict(zip(members.tolist(), sims.tolist()))
        regions = tuple(
            RankedRegion(int(ri), int(img[ri]), float(sim_of[int(ri)]),
                         None if names is None else names[ri],
                         None if boxes is None else tuple(float(v) for v in boxes[ri]))
            for ri in ranked.tolist())
        table = tuple(
            ClassGap(classes[yy], float(stats.acc_present[cid, yy]), int(stats.n_present[cid, yy]),
                     float(stats.acc_absent[cid, yy]), int(stats.n_absent[cid, yy]), float(stats.weight[cid, yy]),
                     float(stats.delta[cid, yy]))
            for yy in np.flatnonzero(stats.valid[cid]).tolist())
        attr = int(stats.attribute[cid])
        features.append(DiscoveredFeature(
            rank, int(cid), classes[attr] if attr >= 0 else None, float(stats.gap[cid]), float(stats.influence[cid]),
            bool(stats.spurious_pattern[cid]), int(stats.n_regions[cid]), int(stats.n_images[cid]),
            int(medoids[cid]), table, regions))
    timings["scoring_s"] = time.perf_counter() - t1

    sil = float(sweep.best_silhouette)
    positive = sil > 0
    notes = []
    if not positive:
        wmsg = (f"Every silhouette of the K sweep {lo}..{hi} is <= 0 (best {sil:.3f} at K = {k}): the region "
                "embeddings show no clear cluster structure; results below use that K anyway.")
        warnings.warn(wmsg, WeakClusteringWarning, stacklevel=2)
        notes.append(wmsg)
    filt = []
    if cfg.spurious_filter:
        filt.append("a spurious pattern (some class gap > 0 and some < 0)")
    if cfg.influence_filter:
        filt.append(f"influence >= {cfg.min_influence:g}")
    filt_txt = " and ".join(filt) if filt else "no filter"
    n_nonempty = len(clusters)
    if features:
        top = features[0]
        status = "ok"
        msg = (f"{len(features)} of {n_nonempty} clusters (K = {k}, silhouette {sil:.3f}) passed {filt_txt}; top "
               f"feature: cluster {top.cluster} tied to {top.class_name!r} (gap {top.gap:.3f}, "
               f"{top.n_regions} regions).")
    else:
        status = "no_feature"
        n_s = int(stats.spurious_pattern[stats.n_regions > 0].sum())
        n_h = int((stats.influence[stats.n_regions > 0] >= cfg.min_influence).sum())
        msg = (f"No feature: none of the {n_nonempty} clusters (K = {k}, silhouette {sil:.3f}) passed {filt_txt} "
               f"({n_s} showed a spurious pattern, {n_h} had influence >= {cfg.min_influence:g}). The model may "
               "not rely on a region feature, or the evaluation set lacks misclassified images.")
        warnings.warn(msg, NoFeatureWarning, stacklevel=2)
    if notes:
        msg = msg + " " + " ".join(notes)
    timings["total_s"] = time.perf_counter() - t0
    if status != "no_feature":  # the no-feature message was just given as a warning
        logger.info("discover: %s", msg)
    return DiscoveryResult(status=status, message=msg, n_clusters=k, silhouette=sil, silhouette_positive=positive,
                           inertia=float(sweep.inertia), timings=timings,
                           medoid_indices=tuple(int(i) for i in medoids),
                           region_clusters=tuple(int(i) for i in labels), clusters=clusters,
                           features=tuple(features), **common)
