"""Discovery baselines of RaVL's Table 1, on the same arrays and with the same output as RaVL.

Every baseline takes a :class:`~ravl.discovery.pipeline.DiscoveryInputs` and returns a
:class:`~ravl.discovery.result.DiscoveryResult` whose features are ranked region lists, so one
scorer (Precision@k of ``result.ranked_regions()``) and one ``discovery.json`` serve all methods.
The image-level methods are run under one of two adaptations (docs/baselines.md):

* ``adaptation="image"`` (A, image-then-region): the method runs on image embeddings and ranks
  images; each ranked image contributes its regions ordered by similarity to the slice direction.
  ``image_regions="best_first"`` (default) emits the best region of every ranked image first, then
  the second best, and so on; ``"grouped"`` emits all regions of image 1, then of image 2...
* ``adaptation="region"`` (B, region-as-sample): the method runs on region embeddings, each region
  inheriting its image's label, prediction and probabilities.

The implicated class of a feature is computed exactly as RaVL computes it (the class with the
largest positive present - absent accuracy gap, :func:`ravl.discovery.core.score_clusters`), with
"present" = images holding one of the feature's *present regions*: for Spurious-Aware Detection
the regions carrying the attribute; for the slice methods the ``m`` regions (of every class) most
similar to the slice direction, ``m`` = the number of images in the slice. Details and defaults: ``docs/baselines.md``.

Shape symbols: N images, R regions, C classes, D embedding dim.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import balanced_accuracy_score, silhouette_score
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from ravl._version import __version__
from ravl.discovery.core import score_clusters
from ravl.discovery.result import ClassGap, DiscoveredFeature, DiscoveryConfig, DiscoveryResult, RankedRegion
from ravl.exceptions import InvalidParameterError
from ravl.utils.validation import check_choice, check_float, check_int, check_random_state

__all__ = [
    "ADAPTATIONS",
    "result_from_ranking",
    "random_baseline",
    "distilling_failures",
    "george",
    "domino",
    "spurious_aware",
    "DominoMixture",
    "region_vocabulary",
]

logger = logging.getLogger(__name__)

#: ``"image"``: adaptation A (image-then-region); ``"region"``: adaptation B (region-as-sample).
ADAPTATIONS = ("image", "region")
_IMAGE_REGIONS = ("best_first", "grouped")
_EPS = 1e-12


# --------------------------------------------------------------------------------------------
# shared helpers


def _single_thread(fn):
    """Run ``fn`` with single-threaded BLAS and OpenMP: the baselines work on small matrices, and
    thread pools (GaussianMixture's 2x2 Cholesky solves, KMeans) cost up to 30x their work when
    the cores are shared (measured on 2 busy cores)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1):
            return fn(*args, **kwargs)

    return wrapper


def _seed(rng: np.random.Generator) -> int:
    """An int seed for scikit-learn, drawn from the local generator."""
    return int(rng.integers(0, 2**31 - 1))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, _EPS)


class _Arrays:
    """The arrays of a :class:`DiscoveryInputs`, as float64 / int64, with the sample view of an adaptation."""

    def __init__(self, inputs: Any, adaptation: str, caller: str):
        check_choice(adaptation, "adaptation", caller, ADAPTATIONS)
        self.adaptation = adaptation
        self.classes = tuple(inputs.classes)
        self.reg_emb = _unit(inputs.region_embeddings)
        self.reg_img = np.asarray(inputs.region_image_index, dtype=np.int64)
        self.reg_prob = np.asarray(inputs.region_probabilities, dtype=np.float64)
        self.img_emb = _unit(inputs.image_embeddings)
        self.y = np.asarray(inputs.image_labels, dtype=np.int64)
        self.yhat = np.asarray(inputs.image_predictions, dtype=np.int64)
        self.img_prob = np.asarray(inputs.image_probabilities, dtype=np.float64)
        self.names = list(inputs.region_file_names) if getattr(inputs, "region_file_names", None) is not None else None
        boxes = getattr(inputs, "region_boxes", None)
        self.boxes = None if boxes is None else np.asarray(boxes, dtype=np.float64)
        r, n, c = self.reg_emb.shape[0], self.y.size, len(self.classes)
        if self.reg_img.shape != (r,) or (r and (self.reg_img.min() < 0 or self.reg_img.max() >= n)):
            raise InvalidParameterError(f"The 'region_image_index' input of {caller} must be [R] = [{r}] image "
                                        f"positions in [0, {n}).")
        if self.img_emb.shape[0] != n or self.img_prob.shape != (n, c) or self.yhat.shape != (n,):
            raise InvalidParameterError(f"The image arrays given to {caller} must have N = {n} rows (image_embeddings, "
                                        f"image_predictions, image_probabilities [N, C = {c}]).")
        if self.reg_prob.shape != (r, c):
            raise InvalidParameterError(f"The 'region_probabilities' input of {caller} must have shape [R, C] = [{r}, "
                                        f"{c}]. Got {self.reg_prob.shape} instead.")
        if self.names is not None and len(self.names) != r:
            self.names = None
        if self.boxes is not None and self.boxes.shape != (r, 4):
            self.boxes = None
        self.n_regions, self.n_images, self.n_classes = r, n, c
        if adaptation == "image":
            self.emb, self.s_y, self.s_yhat, self.s_prob = self.img_emb, self.y, self.yhat, self.img_prob
        else:
            i = self.reg_img
            self.emb, self.s_y, self.s_yhat, self.s_prob = self.reg_emb, self.y[i], self.yhat[i], self.img_prob[i]

    @property
    def correct(self) -> np.ndarray:
        """``[S]`` whether each sample's (image's) prediction is right."""
        return self.s_y == self.s_yhat

    def regions_of_samples(self, samples: np.ndarray, region_score: np.ndarray, image_regions: str) -> np.ndarray:
        """Ranked samples -> ranked regions (A: regions of each image by ``region_score``; B: identity)."""
        samples = np.asarray(samples, dtype=np.int64)
        if self.adaptation == "region":
            return samples
        order = np.argsort(self.reg_img, kind="stable")
        bounds = np.searchsorted(self.reg_img[order], np.arange(self.n_images + 1))
        per_image = []
        for i in samples.tolist():
            regs = order[bounds[i]:bounds[i + 1]]
            per_image.append(regs[np.lexsort((regs, -region_score[regs]))])
        if image_regions == "grouped":
            return np.concatenate(per_image) if per_image else np.zeros(0, dtype=np.int64)
        depth = max((len(p) for p in per_image), default=0)
        return np.array([p[d] for d in range(depth) for p in per_image if d < len(p)], dtype=np.int64)

    def n_slice_images(self, samples: np.ndarray) -> int:
        """Distinct images among a slice's samples: the number of "present" regions of its feature."""
        samples = np.asarray(samples, dtype=np.int64)
        return int(np.unique(samples if self.adaptation == "image" else self.reg_img[samples]).size)

    def direction(self, weights: np.ndarray) -> np.ndarray:
        """Slice direction: weighted slice mean minus the mean of the other samples of the slice's classes.

        The rest is weighted by (1 - w_i) times the slice's label frequency of y_i, so that the
        direction contrasts the slice with its own classes (what the slice adds to them), not
        the class prototypes with each other. Unit norm.
        """
        w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, 1.0)
        a = (w[:, None] * self.emb).sum(0) / max(w.sum(), _EPS)
        freq = np.bincount(self.s_y, weights=w, minlength=self.n_classes) / max(w.sum(), _EPS)
        v = (1 - w) * freq[self.s_y]
        b = (v[:, None] * self.emb).sum(0) / max(v.sum(), _EPS)
        d = a - b if v.sum() > _EPS else a
        if np.linalg.norm(d) < _EPS:
            d = a
        return _unit(d)


def _check_common(caller: str, image_regions: str, random_state: Any) -> np.random.Generator:
    check_choice(image_regions, "image_regions", caller, _IMAGE_REGIONS)
    return check_random_state(random_state)


def _top_by_score(region_score: np.ndarray, m: int) -> np.ndarray:
    """The ``m`` regions with the highest score (ties by index)."""
    m = int(min(max(m, 0), region_score.size))
    order = np.lexsort((np.arange(region_score.size), -region_score))
    return order[:m]


def result_from_ranking(inputs: Any, features: Sequence[dict[str, Any]], method: str, *, random_state: int = 0,
                        message: str = "", meta: dict[str, Any] | None = None,
                        timings: dict[str, float] | None = None) -> DiscoveryResult:
    """Build a :class:`DiscoveryResult` from ranked region lists, with RaVL's class tables.

    Args:
        inputs: A :class:`~ravl.discovery.pipeline.DiscoveryInputs` (or an object with its arrays).
        features: One dict per feature in rank order, with ``"regions"`` (ranked region indices,
            unique) and optionally ``"present"`` (region indices that define "feature present" for
            the class table; no table and no class when absent), ``"similarity"`` ([R] score
            reported as each region's ``similarity``), ``"id"`` (slice or attribute id).
        method: The method's name (stored as ``scoring`` and in ``meta["method"]``).
        random_state: The integer seed recorded in the result.
        message: Plain-language summary (default: generated).
        meta: Extra provenance (adaptation, parameters...).
        timings: Seconds per step.

    Returns:
        A :class:`DiscoveryResult` (status ``"ok"`` with at least one feature, else ``"no_feature"``).
    """
    classes = tuple(inputs.classes)
    emb = np.asarray(inputs.region_embeddings)
    r = emb.shape[0]
    img = np.asarray(inputs.region_image_index, dtype=np.int64)
    y = np.asarray(inputs.image_labels, dtype=np.int64)
    yhat = np.asarray(inputs.image_predictions, dtype=np.int64)
    q = np.asarray(inputs.region_probabilities, dtype=np.float64)
    names = getattr(inputs, "region_file_names", None)
    names = list(names) if names is not None and len(names) == r else None
    boxes = getattr(inputs, "region_boxes", None)
    boxes = np.asarray(boxes, dtype=np.float64) if boxes is not None and np.shape(boxes) == (r, 4) else None
    out = []
    for rank, f in enumerate(features, start=1):
        regs = np.asarray(f["regions"], dtype=np.int64)
        if regs.size == 0:
            continue
        if np.unique(regs).size != regs.size or regs.min() < 0 or regs.max() >= r:
            raise InvalidParameterError(f"The ranked regions of {method} must be unique region indices in [0, {r}).")
        sim = f.get("similarity")
        sim = np.zeros(r) if sim is None else np.asarray(sim, dtype=np.float64)
        present = f.get("present")
        table: tuple[ClassGap, ...] = ()
        cls_name, gap, infl, spur = None, 0.0, -math.inf, False
        if present is not None and len(present):
            lab = np.ones(r, dtype=np.int64)
            lab[np.asarray(present, dtype=np.int64)] = 0
            st = score_clusters(lab, img, y, yhat, q, 2)
            table = tuple(ClassGap(classes[c], float(st.acc_present[0, c]), int(st.n_present[0, c]),
                                   float(st.acc_absent[0, c]), int(st.n_absent[0, c]), float(st.weight[0, c]),
                                   float(st.delta[0, c])) for c in np.flatnonzero(st.valid[0]).tolist())
            attr = int(st.attribute[0])
            cls_name = classes[attr] if attr >= 0 else None
            gap, infl, spur = float(st.gap[0]), float(st.influence[0]), bool(st.spurious_pattern[0])
        regions = tuple(RankedRegion(int(i), int(img[i]), float(sim[i]), None if names is None else str(names[i]),
                                     None if boxes is None else tuple(float(v) for v in boxes[i]))
                        for i in regs.tolist())
        out.append(DiscoveredFeature(len(out) + 1, int(f.get("id", rank - 1)), cls_name, gap, infl, spur,
                                     int(regs.size), int(np.unique(img[regs]).size), int(regs[0]), table, regions))
    if not message:
        message = (f"{method}: {len(out)} feature(s); top feature tied to {out[0].class_name!r} "
                   f"({out[0].n_regions} regions)." if out else f"{method}: no feature found.")
    return DiscoveryResult(
        status="ok" if out else "no_feature", message=message, classes=classes, scoring=method,
        config=DiscoveryConfig(), random_state=int(random_state), n_regions=int(r), n_images=int(y.size),
        n_clusters=None, silhouette=None, silhouette_positive=False, inertia=None, k_sweep=(),
        bounded_memory=False, sample_size=None, negative_similarity="none", timings=dict(timings or {}),
        medoid_indices=(), region_clusters=(), clusters=(), features=tuple(out),
        meta={"method": method, **(meta or {})}, ravl_version=__version__)


def _int_seed(random_state: Any) -> int:
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        return int(random_state)
    return 0


# --------------------------------------------------------------------------------------------
# Random


def random_baseline(inputs: Any, *, random_state: Any = 0) -> DiscoveryResult:
    """Random: a uniform random permutation of all regions (one feature, no class).

    Args:
        inputs: A :class:`~ravl.discovery.pipeline.DiscoveryInputs`.
        random_state: Seed (int, Generator or None) of the local generator.

    Returns:
        A :class:`DiscoveryResult` with one feature holding every region in random order.
    """
    rng = check_random_state(random_state)
    r = len(inputs.region_embeddings)
    perm = rng.permutation(r)
    return result_from_ranking(inputs, [{"regions": perm}] if r else [], "random",
                               random_state=_int_seed(random_state),
                               message=f"random: a uniform permutation of the {r} regions.")


# --------------------------------------------------------------------------------------------
# Distilling Failures (Jain et al., ICLR 2023)


@_single_thread
def distilling_failures(inputs: Any, *, adaptation: str = "image", c_grid: Sequence[float] | None = None,
                        cv_folds: int = 2, max_iter: int = 10_000, image_regions: str = "best_first",
                        random_state: Any = 0) -> DiscoveryResult:
    """Distilling Failures: a per-class linear SVM separating correct from incorrect samples.

    Embeddings are whitened with the mean and std of every dimension and L2-normalised; per class a
    ``LinearSVC(class_weight="balanced")`` predicts correct (1) vs incorrect (0), with C chosen from
    ``c_grid`` (default ``logspace(-6, 0, 7)``) by ``cv_folds``-fold cross-validated balanced
    accuracy. Samples of the class are ranked by decision value, most negative first. One feature
    per class that has both outcomes, ordered by the chosen C's CV balanced accuracy (best first).

    Args:
        inputs: A :class:`~ravl.discovery.pipeline.DiscoveryInputs`.
        adaptation: ``"image"`` (A) or ``"region"`` (B).
        c_grid: Candidate C values.
        cv_folds: Cross-validation folds (stratified, shuffled with the local generator).
        max_iter: LinearSVC iterations.
        image_regions: Order of the regions of ranked images under A (``"best_first"``, ``"grouped"``).
        random_state: Seed of the local generator.

    Returns:
        A :class:`DiscoveryResult`; region similarity = minus the SVM decision value.
    """
    caller = "distilling_failures"
    rng = _check_common(caller, image_regions, random_state)
    check_int(cv_folds, "cv_folds", caller, low=2)
    grid = np.logspace(-6, 0, 7) if c_grid is None else np.asarray(list(c_grid), dtype=np.float64)
    if grid.size == 0 or (grid <= 0).any():
        raise InvalidParameterError(f"The 'c_grid' parameter of {caller} must hold positive floats. Got {c_grid!r} "
                                    "instead.")
    t0 = time.perf_counter()
    a = _Arrays(inputs, adaptation, caller)
    mu, sd = a.emb.mean(0), a.emb.std(0)
    sd = np.where(sd > _EPS, sd, 1.0)

    def white(x):
        return _unit((x - mu) / sd)

    x = white(a.emb)
    xr = white(a.reg_emb)
    ok = a.correct.astype(np.int64)
    feats = []
    for c in range(a.n_classes):
        idx = np.flatnonzero(a.s_y == c)
        yc = ok[idx]
        n_min = int(min(yc.sum(), (1 - yc).sum()))
        if n_min < 1:
            continue
        folds = min(cv_folds, n_min)
        best = (-1.0, float(grid[0]))
        if folds >= 2:
            skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=_seed(rng))
            splits = list(skf.split(x[idx], yc))
            for cval in grid.tolist():
                scores = []
                for tr, te in splits:
                    m = LinearSVC(C=cval, class_weight="balanced", max_iter=max_iter).fit(x[idx][tr], yc[tr])
                    scores.append(balanced_accuracy_score(yc[te], m.predict(x[idx][te])))
                s = float(np.mean(scores))
                if s > best[0] + 1e-12:
                    best = (s, float(cval))
        svm = LinearSVC(C=best[1], class_weight="balanced", max_iter=max_iter).fit(x[idx], yc)
        dec = svm.decision_function(x[idx])
        ranked = idx[np.lexsort((idx, dec))]
        fail_region = -svm.decision_function(xr)  # higher = more failure-like, for every region
        regions = a.regions_of_samples(ranked, fail_region, image_regions)
        present = _top_by_score(fail_region, a.n_slice_images(idx[dec < 0]))
        feats.append({"regions": regions, "present": present, "similarity": fail_region, "id": c,
                      "_key": (-best[0], -int((1 - yc).sum()), c)})
    feats.sort(key=lambda f: f["_key"])
    return result_from_ranking(inputs, feats, "distilling_failures", random_state=_int_seed(random_state),
                               meta={"adaptation": adaptation,
                                     "cv_balanced_accuracy": [None if f["_key"][0] > 0 else -f["_key"][0]
                                                              for f in feats],
                                     "classes_order": [a.classes[f["id"]] for f in feats]},
                               timings={"total_s": time.perf_counter() - t0})


# --------------------------------------------------------------------------------------------
# George (Sohoni et al., NeurIPS 2020)


def _reduce_2d(x: np.ndarray, reducer: str, n_neighbors: int, seed: int) -> tuple[np.ndarray, str]:
    """UMAP (n_neighbors, min_dist 0) to 2-d; PCA to 2-d when umap-learn is missing or reducer='pca'."""
    if x.shape[0] <= 3:
        return np.pad(x[:, :2], ((0, 0), (0, max(0, 2 - x.shape[1])))), "none"
    if reducer in ("auto", "umap"):
        try:
            from ravl.utils.optional import require

            umap = require("umap", extra="umap", purpose="George's UMAP projection")
            nn = int(min(n_neighbors, x.shape[0] - 1))
            return umap.UMAP(n_components=2, n_neighbors=nn, min_dist=0.0, random_state=seed).fit_transform(x), "umap"
        except ImportError:
            if reducer == "umap":
                raise
    return PCA(n_components=2, random_state=seed).fit_transform(x), "pca"


#: reg_covar values George's Gaussian mixtures try in turn: UMAP with min_dist=0 can collapse a
#: component onto (nearly) one point, whose covariance is then singular at scikit-learn's 1e-6.
_GMM_REG_COVARS = (1e-6, 1e-4, 1e-2)


def _fit_gmm(k: int, z: np.ndarray, seed: int):
    """``GaussianMixture(k, full covariance).fit(z)``, retried with a larger ``reg_covar`` when a component collapses."""
    for reg in _GMM_REG_COVARS:
        try:
            return GaussianMixture(k, covariance_type="full", random_state=seed, reg_covar=reg).fit(z)
        except ValueError as exc:  # "ill-defined empirical covariance"
            if reg == _GMM_REG_COVARS[-1] or "covariance" not in str(exc):
                raise
    raise AssertionError("unreachable")  # pragma: no cover


@_single_thread
def george(inputs: Any, *, adaptation: str = "image", n_components: int | str = "silhouette",
           k_range: tuple[int, int] = (2, 10), reducer: str = "auto", n_neighbors: int = 10,
           n_features: int = 5, cluster_score: str = "sum", image_regions: str = "best_first",
           random_state: Any = 0) -> DiscoveryResult:
    """George: per-class UMAP to 2-d, Gaussian mixture, worst cluster by summed cross-entropy loss.

    Per class, embeddings are projected to 2-d with UMAP (``n_neighbors`` 10, ``min_dist`` 0;
    PCA to 2-d when umap-learn is not installed, recorded in ``meta["reducer"]``) and clustered
    with a Gaussian mixture whose number of components is chosen by silhouette over
    ``k_range`` (or fixed, e.g. 25 as in the Domino benchmark). Each cluster is scored by the
    membership-weighted sum of the samples' cross-entropy losses -log p(y); clusters of all
    classes are ranked by that score and the members (hard assignment) of each are ranked by
    membership, then loss. The top ``n_features`` clusters become features.

    Args:
        inputs: A :class:`~ravl.discovery.pipeline.DiscoveryInputs`.
        adaptation: ``"image"`` (A) or ``"region"`` (B).
        n_components: ``"silhouette"`` or a fixed number of mixture components (e.g. 25).
        k_range: Inclusive range of component counts tried by silhouette.
        reducer: ``"auto"`` (UMAP if installed, else PCA), ``"umap"`` (required) or ``"pca"``.
        n_neighbors: UMAP neighbours.
        n_features: Clusters returned as features.
        cluster_score: ``"sum"`` (George, the default) or ``"mean"`` (membership-weighted mean
            loss; a variant that does not favour large clusters, e.g. empty regions under B).
        image_regions: Order of the regions of ranked images under A.
        random_state: Seed of the local generator.

    Returns:
        A :class:`DiscoveryResult`; region similarity = cosine to the cluster's direction.
    """
    caller = "george"
    rng = _check_common(caller, image_regions, random_state)
    check_choice(reducer, "reducer", caller, ("auto", "umap", "pca"))
    if n_components != "silhouette":
        check_int(n_components, "n_components", caller, low=1)
    lo, hi = check_int(k_range[0], "k_range[0]", caller, low=2), check_int(k_range[1], "k_range[1]", caller, low=2)
    check_int(n_neighbors, "n_neighbors", caller, low=2)
    check_int(n_features, "n_features", caller, low=1)
    check_choice(cluster_score, "cluster_score", caller, ("sum", "mean"))
    t0 = time.perf_counter()
    a = _Arrays(inputs, adaptation, caller)
    loss = -np.log(np.clip(a.s_prob[np.arange(a.s_y.size), a.s_y], _EPS, None))
    clusters = []  # (score, class, cluster id, members, membership)
    used = set()
    for c in range(a.n_classes):
        idx = np.flatnonzero(a.s_y == c)
        if idx.size < 2:
            continue
        z, used_red = _reduce_2d(a.emb[idx], reducer, n_neighbors, _seed(rng))
        used.add(used_red)
        seed = _seed(rng)
        if n_components == "silhouette":
            best = None
            for k in range(lo, min(hi, idx.size - 1) + 1):
                gm = _fit_gmm(k, z, seed)
                lab = gm.predict(z)
                if np.unique(lab).size < 2:
                    continue
                s = silhouette_score(z, lab)
                if best is None or s > best[0] + 1e-12:
                    best = (s, gm)
            gm = best[1] if best is not None else GaussianMixture(1, random_state=seed).fit(z)
        else:
            gm = _fit_gmm(min(int(n_components), idx.size), z, seed)
        resp = gm.predict_proba(z)
        hard = resp.argmax(1)
        for j in range(resp.shape[1]):
            mem = np.flatnonzero(hard == j)
            if mem.size == 0:
                continue
            score = float((resp[:, j] * loss[idx]).sum())
            if cluster_score == "mean":
                score /= max(float(resp[:, j].sum()), _EPS)
            clusters.append((score, c, j, idx[mem], resp[mem, j], idx, resp[:, j]))
    clusters.sort(key=lambda t: (-t[0], t[1], t[2]))
    feats = []
    for fid, (score, c, j, mem, memb, idx, r_all) in enumerate(clusters[:n_features]):
        ranked = mem[np.lexsort((mem, -loss[mem], -memb))]
        w = np.zeros(a.s_y.size)
        w[idx] = r_all
        d = a.direction(w)
        sim = a.reg_emb @ d
        regions = a.regions_of_samples(ranked, sim, image_regions)
        present = _top_by_score(sim, a.n_slice_images(mem))
        feats.append({"regions": regions, "present": present, "similarity": sim, "id": fid})
    return result_from_ranking(inputs, feats, "george", random_state=_int_seed(random_state),
                               meta={"adaptation": adaptation, "reducer": sorted(used), "cluster_score": cluster_score,
                                     "n_components": n_components,
                                     "cluster_loss": [float(t[0]) for t in clusters[:n_features]],
                                     "cluster_class": [a.classes[t[1]] for t in clusters[:n_features]]},
                               timings={"total_s": time.perf_counter() - t0})


# --------------------------------------------------------------------------------------------
# Domino (Eyuboglu et al., ICLR 2022)


class DominoMixture:
    """Domino's error-aware mixture: diagonal Gaussians over embeddings plus label/prediction categoricals.

    E-step: log r_is ∝ log π_s + log N(z_i; μ_s, σ²_s) + γ log(y_i · p_s) + γ̂ log(ŷ_i · p̂_s),
    with y_i one-hot and ŷ_i the predicted probabilities; M-step: weighted moments. Initialised
    from the confusion matrix (Domino's ``init_params="confusion"``): responsibilities = the outer
    product of the one-hot label and the predicted probabilities, tiled over the components, plus
    ``confusion_noise`` uniform noise. With fewer components than C² cells (Domino raises), the
    most populated (label, predicted class) cells get one component each and the other samples a
    random one of them.

    Args:
        n_slices: Number of components (25).
        y_weight: γ (10).
        y_hat_weight: γ̂ (10).
        max_iter: EM iterations (100).
        tol: Stop when the mean log-likelihood improves by less (1e-3).
        reg_covar: Added to every variance (1e-6).
        confusion_noise: Uniform noise added to the initial responsibilities (1e-3).
        random_state: Seed of the local generator.
    """

    def __init__(self, n_slices: int = 25, y_weight: float = 10.0, y_hat_weight: float = 10.0, max_iter: int = 100,
                 tol: float = 1e-3, reg_covar: float = 1e-6, confusion_noise: float = 1e-3, random_state: Any = 0):
        self.n_slices = n_slices
        self.y_weight = y_weight
        self.y_hat_weight = y_hat_weight
        self.max_iter = max_iter
        self.tol = tol
        self.reg_covar = reg_covar
        self.confusion_noise = confusion_noise
        self.random_state = random_state

    def _init_resp(self, y: np.ndarray, y_hat: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n, c = y.shape
        k = self.n_slices
        if k >= c * c:  # Domino's "confusion" init: the outer product y ⊗ ŷ, tiled over the components
            cells = (y[:, :, None] * y_hat[:, None, :]).reshape(n, c * c)
            resp = np.tile(cells, (1, k // (c * c) + 1))[:, :k]
        else:  # fewer components than cells: the most populated (label, prediction) cells get one each
            cell = y.argmax(1) * c + y_hat.argmax(1)
            cells, counts = np.unique(cell, return_counts=True)
            top = cells[np.argsort(-counts, kind="stable")][:k]
            resp = np.zeros((n, k))
            for j, cl in enumerate(top.tolist()):
                resp[cell == cl, j] = 1.0
            rest = ~np.isin(cell, top)
            resp[np.flatnonzero(rest), rng.integers(0, top.size, size=int(rest.sum()))] = 1.0
        resp = resp + self.confusion_noise * rng.random((n, k))
        return resp / resp.sum(1, keepdims=True)

    def _m_step(self, z, y, y_hat, resp):
        nk = resp.sum(0) + 10 * np.finfo(float).eps
        self.weights_ = nk / nk.sum()
        self.means_ = (resp.T @ z) / nk[:, None]
        self.vars_ = (resp.T @ (z * z)) / nk[:, None] - self.means_ ** 2 + self.reg_covar
        self.vars_ = np.maximum(self.vars_, self.reg_covar)
        self.y_probs_ = (resp.T @ y) / nk[:, None]
        self.y_hat_probs_ = (resp.T @ y_hat) / nk[:, None]

    def _log_resp(self, z, y, y_hat):
        prec = 1.0 / self.vars_
        log_gauss = -0.5 * (z.shape[1] * np.log(2 * np.pi) + np.log(self.vars_).sum(1)[None, :]
                            + (z * z) @ prec.T - 2 * z @ (self.means_ * prec).T
                            + (self.means_ ** 2 * prec).sum(1)[None, :])
        lp = (np.log(self.weights_)[None, :] + log_gauss
              + self.y_weight * np.log(y @ self.y_probs_.T + _EPS)
              + self.y_hat_weight * np.log(y_hat @ self.y_hat_probs_.T + _EPS))
        mx = lp.max(1, keepdims=True)
        norm = mx + np.log(np.exp(lp - mx).sum(1, keepdims=True))
        return lp - norm, float(norm.mean())

    def fit(self, z: np.ndarray, y: np.ndarray, y_hat: np.ndarray) -> DominoMixture:
        """Fit by EM on ``z`` [S, d], one-hot labels ``y`` [S, C] and predicted probabilities ``y_hat`` [S, C]."""
        check_int(self.n_slices, "n_slices", "DominoMixture", low=1)
        check_float(self.y_weight, "y_weight", "DominoMixture", low=0)
        check_float(self.y_hat_weight, "y_hat_weight", "DominoMixture", low=0)
        check_int(self.max_iter, "max_iter", "DominoMixture", low=1)
        rng = check_random_state(self.random_state)
        z = np.asarray(z, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        y_hat = np.asarray(y_hat, dtype=np.float64)
        resp = self._init_resp(y, y_hat, rng)
        prev = -np.inf
        self.converged_ = False
        for it in range(1, self.max_iter + 1):
            self._m_step(z, y, y_hat, resp)
            log_resp, ll = self._log_resp(z, y, y_hat)
            resp = np.exp(log_resp)
            self.n_iter_ = it
            if abs(ll - prev) < self.tol:
                self.converged_ = True
                break
            prev = ll
        self._m_step(z, y, y_hat, resp)
        self.log_likelihood_ = ll
        return self

    def predict_proba(self, z: np.ndarray, y: np.ndarray, y_hat: np.ndarray) -> np.ndarray:
        """Responsibilities ``[S, n_slices]``."""
        return np.exp(self._log_resp(np.asarray(z, float), np.asarray(y, float), np.asarray(y_hat, float))[0])

    def slice_scores(self) -> np.ndarray:
        """Per slice: max over classes of p̂_sc - p_sc (predicted mass over true-label mass)."""
        return (self.y_hat_probs_ - self.y_probs_).max(1)


@_single_thread
def domino(inputs: Any, *, adaptation: str = "image", n_slices: int = 25, n_pca_components: int = 128,
           y_weight: float = 10.0, y_hat_weight: float = 10.0, max_iter: int = 100, n_features: int = 5,
           image_regions: str = "best_first", random_state: Any = 0) -> DiscoveryResult:
    """Domino: PCA to 128 dims, error-aware mixture (:class:`DominoMixture`), slices by max_c (p̂_sc - p_sc).

    Every sample is ranked by its responsibility for the slice (members = samples whose most
    likely slice it is, used for the slice's size). The ``n_features`` best slices become features.

    Args:
        inputs: A :class:`~ravl.discovery.pipeline.DiscoveryInputs`.
        adaptation: ``"image"`` (A) or ``"region"`` (B).
        n_slices: Mixture components (25).
        n_pca_components: PCA dimensions (128, capped by D and the sample count).
        y_weight: γ (10).
        y_hat_weight: γ̂ (10).
        max_iter: EM iterations.
        n_features: Slices returned as features.
        image_regions: Order of the regions of ranked images under A.
        random_state: Seed of the local generator.

    Returns:
        A :class:`DiscoveryResult`; region similarity = cosine to the slice's direction.
    """
    caller = "domino"
    rng = _check_common(caller, image_regions, random_state)
    check_int(n_slices, "n_slices", caller, low=1)
    check_int(n_pca_components, "n_pca_components", caller, low=1)
    check_int(n_features, "n_features", caller, low=1)
    t0 = time.perf_counter()
    a = _Arrays(inputs, adaptation, caller)
    s = a.s_y.size
    d = int(min(n_pca_components, a.emb.shape[1], max(s - 1, 1)))
    z = PCA(n_components=d, random_state=_seed(rng)).fit_transform(a.emb) if s > 1 else a.emb[:, :d]
    y1 = np.eye(a.n_classes)[a.s_y]
    mix = DominoMixture(min(n_slices, max(s, 1)), y_weight, y_hat_weight, max_iter=max_iter,
                        random_state=rng).fit(z, y1, a.s_prob)
    resp = mix.predict_proba(z, y1, a.s_prob)
    scores = mix.slice_scores()
    hard = resp.argmax(1)
    order = [int(j) for j in np.lexsort((np.arange(scores.size), -scores)) if (hard == j).any()]
    feats = []
    allidx = np.arange(s)
    for j in order[:n_features]:
        mem = np.flatnonzero(hard == j)
        ranked = allidx[np.lexsort((allidx, -resp[:, j]))]  # every sample, by responsibility for slice j
        direc = a.direction(resp[:, j])
        sim = a.reg_emb @ direc
        regions = a.regions_of_samples(ranked, sim, image_regions)
        feats.append({"regions": regions, "present": _top_by_score(sim, a.n_slice_images(mem)), "similarity": sim,
                      "id": j})
    return result_from_ranking(inputs, feats, "domino", random_state=_int_seed(random_state),
                               meta={"adaptation": adaptation,
                                     "slice_scores": [float(scores[j]) for j in order[:n_features]],
                                     "n_iter": int(mix.n_iter_), "converged": bool(mix.converged_),
                                     "pca_components": d},
                               timings={"total_s": time.perf_counter() - t0})


# --------------------------------------------------------------------------------------------
# Spurious-Aware Detection (Yang et al., ICML 2023)


def _mutual_information(x: np.ndarray, e: np.ndarray) -> float:
    """MI (nats) between two binary arrays."""
    n = x.size
    mi = 0.0
    for xv in (0, 1):
        for ev in (0, 1):
            pxy = np.sum((x == xv) & (e == ev)) / n
            if pxy > 0:
                mi += pxy * math.log(pxy / ((np.sum(x == xv) / n) * (np.sum(e == ev) / n)))
    return float(mi)


def region_vocabulary(region_embeddings: np.ndarray, n_classes: int, *, n_attributes: int | None = None,
                      random_state: Any = 0, sample_size: int = 2000) -> np.ndarray:
    """Offline attribute vocabulary: KMeans clusters of region embeddings (one tag per region).

    The number of attributes is ``n_attributes`` or, by default, the K in 2C..5C-1 (RaVL's range)
    with the highest silhouette (cosine, on at most ``sample_size`` regions).
    """
    rng = check_random_state(random_state)
    e = _unit(region_embeddings)
    r = e.shape[0]
    seed = _seed(rng)
    if n_attributes is not None:
        k = int(min(check_int(n_attributes, "n_attributes", "region_vocabulary", low=1), r))
        return KMeans(k, n_init=1, random_state=seed).fit_predict(e)
    ks = [k for k in range(2 * n_classes, 5 * n_classes) if 2 <= k <= r - 1] or [min(2, r)]
    samp = rng.choice(r, size=min(r, sample_size), replace=False)
    best = None
    for k in ks:
        lab = KMeans(k, n_init=1, random_state=seed).fit_predict(e)
        sl = lab[samp]
        s = silhouette_score(e[samp], sl, metric="cosine") if 1 < np.unique(sl).size < samp.size else -np.inf
        if best is None or s > best[0] + 1e-12:
            best = (s, lab)
    return best[1]


@_single_thread
def spurious_aware(inputs: Any, *, adaptation: str = "image", tags: Sequence | np.ndarray | None = None,
                   n_attributes: int | None = None, min_images: int = 10, top_per_class: int = 5,
                   random_state: Any = 0) -> DiscoveryResult:
    """Spurious-Aware Detection: attributes whose presence carries the model's errors, per class.

    Every region carries one attribute tag (``tags``, or offline KMeans clusters of the region
    embeddings, :func:`region_vocabulary`). Per class: a sample has an attribute if it carries
    it (A: the image has a region with the tag; B: the region's own tag); attributes seen in
    fewer than ``min_images`` images of the class are dropped; the mutual information between
    presence and error is computed; attributes with MI > 0 are kept, ``top_per_class`` per class
    by MI; all kept (class, attribute) pairs are sorted by accuracy-with minus accuracy-without,
    ascending. Each distinct attribute becomes a feature (first occurrence), its regions = every
    region carrying it, by cosine similarity to the attribute's mean embedding.

    Args:
        inputs: A :class:`~ravl.discovery.pipeline.DiscoveryInputs`.
        adaptation: ``"image"`` (A) or ``"region"`` (B).
        tags: ``[R]`` attribute tag per region (str or int), e.g. from a detector.
        n_attributes: Vocabulary size when clustering (default: silhouette over 2C..5C-1).
        min_images: Minimum images of the class carrying an attribute (10).
        top_per_class: Attributes kept per class (5).
        random_state: Seed of the local generator.

    Returns:
        A :class:`DiscoveryResult`.
    """
    caller = "spurious_aware"
    rng = check_random_state(random_state)
    check_int(min_images, "min_images", caller, low=1)
    check_int(top_per_class, "top_per_class", caller, low=1)
    t0 = time.perf_counter()
    a = _Arrays(inputs, adaptation, caller)
    r = a.n_regions
    if tags is None:
        tag_ids = region_vocabulary(a.reg_emb, a.n_classes, n_attributes=n_attributes, random_state=rng) if r else \
            np.zeros(0, dtype=np.int64)
        vocab = "region_kmeans"
    else:
        t = np.asarray(tags)
        if t.shape != (r,):
            raise InvalidParameterError(f"The 'tags' parameter of {caller} must hold one tag per region ([R] = [{r}]). "
                                        f"Got shape {t.shape} instead.")
        _, tag_ids = np.unique(t.astype(str), return_inverse=True)
        vocab = "supplied"
    n_tags = int(tag_ids.max()) + 1 if r else 0
    # presence [S, n_tags] and image presence [N, n_tags]
    img_has = np.zeros((a.n_images, n_tags), dtype=bool)
    img_has[a.reg_img, tag_ids] = True
    if adaptation == "image":
        has = img_has
    else:
        has = np.zeros((r, n_tags), dtype=bool)
        has[np.arange(r), tag_ids] = True
    err = (~a.correct).astype(np.int64)
    cands = []  # (acc_with - acc_without, class, tag, mi)
    for c in range(a.n_classes):
        idx = np.flatnonzero(a.s_y == c)
        img_c = np.flatnonzero(a.y == c)
        if idx.size == 0:
            continue
        kept = []
        for t in range(n_tags):
            if int(img_has[img_c, t].sum()) < min_images:
                continue
            x = has[idx, t].astype(np.int64)
            if x.all() or not x.any():
                continue
            mi = _mutual_information(x, err[idx])
            if mi > 1e-12:
                kept.append((mi, t, x))
        kept.sort(key=lambda k: (-k[0], k[1]))
        for mi, t, x in kept[:top_per_class]:
            ok = 1 - err[idx]
            cands.append((float(ok[x == 1].mean() - ok[x == 0].mean()), c, t, mi))
    cands.sort(key=lambda k: (k[0], k[1], k[2]))
    feats, seen = [], set()
    for diff, c, t, mi in cands:
        if t in seen:
            continue
        seen.add(t)
        regs = np.flatnonzero(tag_ids == t)
        centre = _unit(a.reg_emb[regs].mean(0))
        sim = a.reg_emb @ centre
        ranked = regs[np.lexsort((regs, -sim[regs]))]
        feats.append({"regions": ranked, "present": regs, "similarity": sim, "id": int(t)})
    return result_from_ranking(inputs, feats, "spurious_aware", random_state=_int_seed(random_state),
                               meta={"adaptation": adaptation, "vocabulary": vocab, "n_attributes": n_tags,
                                     "candidates": [{"acc_diff": d, "class": a.classes[c], "attribute": int(t),
                                                     "mi": m} for d, c, t, m in cands[:20]]},
                               timings={"total_s": time.perf_counter() - t0})
