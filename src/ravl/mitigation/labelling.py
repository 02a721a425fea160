"""Region labelling for RaVL mitigation: which fine-tuning regions carry the discovered feature?

Every region of the fine-tuning split is embedded with the model that discovery audited and
assigned to the nearest Stage-1 medoid (cosine similarity). Regions assigned to the medoid of a
chosen discovered feature are *spurious* (``R^s``); all other regions are *candidate core*
(``R^r``), as in docs/algorithm.md §4. The result gives :class:`~ravl.mitigation.RegionLabels` for
:class:`~ravl.mitigation.RegionAwareObjective` and, per image, the class ×
discovered-feature-present/absent group used by upsampling, VL-GDRO and Spurious-Aware. Groups
come from the discovered feature only; ground-truth ``region_attributes`` are read only to
report how well the labelling matches the planted feature.

Medoid embeddings [design]: ``discovery.json`` stores the medoids as region indices into the
split that discovery examined (``meta["data"]``, ``meta["split"]``), not as vectors. They are
recomputed by embedding exactly those K regions with the audited model and the discovery's
region mode, which reproduces discovery's vectors (same model, same pixels, same mode) while
keeping ``discovery.json`` small and model-independent. The recomputation is checked: the
dataset must have the number of regions discovery saw, and every medoid whose file name and box
``discovery.json`` records (the features' medoids) must match the region found at that index;
otherwise a :class:`~ravl.exceptions.DatasetError` says the evaluation folder changed. Callers
that hold the vectors can pass ``medoid_embeddings=`` instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ravl.data.attributes import infer_spurious_feature
from ravl.data.dataset import RegionDataset, check_dataset, load_dataset
from ravl.data.region_sources import DEFAULT_IOU_THRESHOLD, with_region_source
from ravl.data.synthetic import planted_feature
from ravl.discovery.result import DiscoveryResult
from ravl.exceptions import DatasetError, InvalidParameterError
from ravl.mitigation.groups import class_feature_groups
from ravl.models.base import check_model
from ravl.models.regions import DEFAULT_REGION_MODE, REGION_MODES, embed_regions, map_boxes
from ravl.models.sharded import Sharding, embed_regions_sharded
from ravl.utils.validation import check_choice, check_float, check_int

__all__ = ["RegionLabels", "FEATURE_CHOICES", "DEFAULT_MIN_GAP_RATIO", "DEFAULT_ASSIGNMENT_QUANTILE", "MIN_MEMBERS_FOR_THRESHOLD",
           "RegionLabelling", "spurious_assignment", "label_regions", "select_features", "left_out_features",
           "compute_medoid_embeddings",
           "assign_to_medoids", "discovery_dataset"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class RegionLabels:
    """Regions of the fine-tuning images and whether each is spurious (input of RaVL mitigation).

    Produced by region labelling (each region assigned to the nearest Stage-1 medoid); rows are
    in any order. Arrays are stored read-only.

    Attributes:
        image_index: ``[M]`` int64 position of the region's image in the training split (the
            positions :func:`~ravl.training.finetune` passes as ``batch["indices"]``).
        boxes_norm: ``[M, 4]`` float32 boxes ``x0, y0, x1, y1`` normalised to ``[0, 1]`` of
            the model's input (the image itself unless the model's preprocessing crops it; see
            :func:`ravl.models.regions.map_boxes`).
        is_spurious: ``[M]`` bool, ``True`` for regions in the discovered spurious cluster(s)
            (``R^s``), ``False`` for candidate-core regions (``R^r``).
    """

    image_index: np.ndarray
    boxes_norm: np.ndarray
    is_spurious: np.ndarray

    def __post_init__(self) -> None:
        c = "RegionLabels"
        idx = np.asarray(self.image_index)
        boxes = np.asarray(self.boxes_norm, dtype=np.float64)
        spur = np.asarray(self.is_spurious)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise InvalidParameterError(f"The 'image_index' parameter of {c} must be a 1-d array of ints. "
                                        f"Got shape {idx.shape}, dtype {idx.dtype}.")
        m = idx.shape[0]
        if boxes.shape != (m, 4):
            raise InvalidParameterError(f"The 'boxes_norm' parameter of {c} must have shape ({m}, 4) (one box per "
                                        f"region). Got {boxes.shape}.")
        if spur.shape != (m,) or (spur.size and spur.dtype != np.bool_):
            raise InvalidParameterError(f"The 'is_spurious' parameter of {c} must be a bool array of shape ({m},). "
                                        f"Got shape {spur.shape}, dtype {spur.dtype}.")
        if m and idx.min() < 0:
            row = int(np.argmin(idx))
            raise InvalidParameterError(f"The 'image_index' parameter of {c} must hold positions >= 0; row {row} has "
                                        f"{int(idx[row])}.")
        bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 0] >= boxes[:, 2]) | (boxes[:, 1] >= boxes[:, 3]) \
            | (boxes < 0).any(axis=1) | (boxes > 1).any(axis=1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InvalidParameterError("boxes_norm must be x0<x1, y0<y1 inside [0, 1] (pixel boxes divided by the "
                                        f"image width and height); row {row} has {boxes[row].tolist()} "
                                        f"({int(bad.sum())} bad row(s) in all).")
        for name, arr in (("image_index", idx.astype(np.int64)), ("boxes_norm", boxes.astype(np.float32)),
                          ("is_spurious", spur.astype(bool))):
            arr = np.array(arr, copy=True)
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    def __len__(self) -> int:
        return int(self.image_index.shape[0])

    @property
    def n_spurious(self) -> int:
        """Number of spurious regions."""
        return int(self.is_spurious.sum())

    def to_dict(self) -> dict[str, Any]:
        return {"image_index": self.image_index.tolist(), "boxes_norm": self.boxes_norm.tolist(),
                "is_spurious": self.is_spurious.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RegionLabels":
        m = len(d["image_index"])
        return cls(np.asarray(d["image_index"], dtype=np.int64).reshape(m),
                   np.asarray(d["boxes_norm"], dtype=np.float32).reshape(m, 4),
                   np.asarray(d["is_spurious"], dtype=bool).reshape(m))


def _thresholds_json(t: dict[int, float] | None) -> dict[str, float] | None:
    return None if t is None else {str(k): float(v) for k, v in sorted(t.items())}


def _ro(arr: np.ndarray) -> np.ndarray:
    arr = np.array(arr, copy=True)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class RegionLabelling:
    """Fine-tuning regions labelled spurious / candidate core, and per-image groups.

    Shapes: N images of the labelled split, M regions, C classes. Arrays are read-only.

    Attributes:
        classes: The C class names (label-id order).
        split: The split labelled (``None``: every row), i.e. the training split whose
            positions :func:`~ravl.training.finetune` uses.
        region_mode: How regions were embedded.
        spurious_clusters: Discovery cluster ids treated as spurious.
        feature_ranks: Ranks of the chosen discovered features.
        feature_classes: The class each chosen feature is tied to (``None`` where unknown).
        region_labels: ``RegionLabels`` (image position, normalised box, spurious flag per region).
        region_clusters: ``[M]`` nearest medoid (cluster id) of every region.
        region_similarity: ``[M]`` cosine similarity to that medoid.
        labels: ``[N]`` class id of every image.
        feature_present: ``[N]`` whether an image has at least one spurious region.
        groups: ``[N]`` group id ``2 * label + feature_present``.
        n_groups: ``2 * C``.
        truth: Agreement with the planted feature when ground-truth region attributes exist
            (report only): ``attribute``, ``region_precision``, ``region_recall``,
            ``image_precision``, ``image_recall``; else ``None``.
        assignment_thresholds: Per spurious cluster, the similarity a region needed to join it
            (``None``: nearest medoid only).
        n_outside_threshold: Regions whose nearest medoid was spurious but which were below its
            threshold, hence labelled candidate core.
    """

    classes: tuple[str, ...]
    split: str | None
    region_mode: str
    spurious_clusters: tuple[int, ...]
    feature_ranks: tuple[int, ...]
    feature_classes: tuple[str | None, ...]
    region_labels: RegionLabels
    region_clusters: np.ndarray
    region_similarity: np.ndarray
    labels: np.ndarray
    feature_present: np.ndarray
    groups: np.ndarray
    n_groups: int
    truth: dict[str, Any] | None = None
    assignment_thresholds: dict[int, float] | None = None
    n_outside_threshold: int = 0

    def __post_init__(self) -> None:
        for name, dtype in (("region_clusters", np.int64), ("region_similarity", np.float32),
                            ("labels", np.int64), ("feature_present", bool), ("groups", np.int64)):
            object.__setattr__(self, name, _ro(np.asarray(getattr(self, name), dtype=dtype)))
        m, n = len(self.region_labels), self.labels.shape[0]
        if self.region_clusters.shape != (m,) or self.region_similarity.shape != (m,):
            raise InvalidParameterError(f"RegionLabelling needs one cluster and similarity per region ({m}).")
        if self.feature_present.shape != (n,) or self.groups.shape != (n,):
            raise InvalidParameterError(f"RegionLabelling needs one feature flag and group per image ({n}).")

    @property
    def n_images(self) -> int:
        """N."""
        return int(self.labels.shape[0])

    @property
    def is_spurious(self) -> np.ndarray:
        """``[M]`` spurious flag of every region."""
        return self.region_labels.is_spurious

    def class_counts(self) -> dict[str, dict[str, int]]:
        """Per class: images, images with / without the discovered feature, regions, spurious regions."""
        img_of = self.region_labels.image_index
        out = {}
        for c, name in enumerate(self.classes):
            m = self.labels == c
            r = m[img_of]
            out[name] = {"n_images": int(m.sum()), "n_present": int((m & self.feature_present).sum()),
                         "n_absent": int((m & ~self.feature_present).sum()), "n_regions": int(r.sum()),
                         "n_spurious_regions": int((r & self.is_spurious).sum())}
        return out

    def group_counts(self) -> list[dict[str, Any]]:
        """One row per (class, feature present/absent) group: ``group``, ``class``, ``feature_present``, ``n``."""
        counts = np.bincount(self.groups, minlength=self.n_groups)
        return [{"group": g, "class": self.classes[g // 2], "feature_present": bool(g % 2), "n": int(counts[g])}
                for g in range(self.n_groups)]

    def fingerprint(self) -> str:
        """SHA-256 of what training reads (region positions, boxes, spurious flags, groups):
        two labellings with the same fingerprint train the same run."""
        h = hashlib.sha256()
        rl = self.region_labels
        for arr in (rl.image_index, rl.boxes_norm, rl.is_spurious, self.labels, self.groups):
            a = np.ascontiguousarray(arr)
            h.update(str(a.dtype).encode() + str(a.shape).encode())
            h.update(a.tobytes())
        return h.hexdigest()

    def summary(self) -> dict[str, Any]:
        """Small JSON-ready summary (recorded in mitigated checkpoints' ``config.json``)."""
        return {"split": self.split, "region_mode": self.region_mode,
                "spurious_clusters": list(self.spurious_clusters), "feature_ranks": list(self.feature_ranks),
                "feature_classes": list(self.feature_classes), "n_images": self.n_images,
                "n_regions": len(self.region_labels), "n_spurious_regions": self.region_labels.n_spurious,
                "n_images_with_feature": int(self.feature_present.sum()),
                "assignment_thresholds": _thresholds_json(self.assignment_thresholds),
                "n_outside_threshold": self.n_outside_threshold,
                "per_class": self.class_counts(), "groups": self.group_counts(), "truth": self.truth}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (every array as a list)."""
        return {"classes": list(self.classes), "split": self.split, "region_mode": self.region_mode,
                "spurious_clusters": list(self.spurious_clusters), "feature_ranks": list(self.feature_ranks),
                "feature_classes": list(self.feature_classes), "region_labels": self.region_labels.to_dict(),
                "region_clusters": self.region_clusters.tolist(),
                "region_similarity": self.region_similarity.tolist(), "labels": self.labels.tolist(),
                "feature_present": self.feature_present.tolist(), "groups": self.groups.tolist(),
                "n_groups": self.n_groups, "truth": self.truth,
                "assignment_thresholds": _thresholds_json(self.assignment_thresholds),
                "n_outside_threshold": self.n_outside_threshold}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RegionLabelling:
        """Inverse of :meth:`to_dict`."""
        return cls(classes=tuple(d["classes"]), split=d["split"], region_mode=str(d["region_mode"]),
                   spurious_clusters=tuple(int(c) for c in d["spurious_clusters"]),
                   feature_ranks=tuple(int(r) for r in d["feature_ranks"]),
                   feature_classes=tuple(d["feature_classes"]),
                   region_labels=RegionLabels.from_dict(d["region_labels"]),
                   region_clusters=np.asarray(d["region_clusters"], dtype=np.int64),
                   region_similarity=np.asarray(d["region_similarity"], dtype=np.float32),
                   labels=np.asarray(d["labels"], dtype=np.int64),
                   feature_present=np.asarray(d["feature_present"], dtype=bool),
                   groups=np.asarray(d["groups"], dtype=np.int64), n_groups=int(d["n_groups"]),
                   truth=d.get("truth"),
                   assignment_thresholds=None if d.get("assignment_thresholds") is None else
                   {int(k): float(v) for k, v in d["assignment_thresholds"].items()},
                   n_outside_threshold=int(d.get("n_outside_threshold", 0)))


# ---------------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------------

#: Named feature selections of :func:`select_features` (besides explicit ranks).
FEATURE_CHOICES = ("class", "top", "all")


#: Default of ``min_gap_ratio``: a feature joins the top one under ``features="class"`` only
#: when its performance gap is at least half the top feature's (docs/mitigation.md has the
#: measurements behind it: on the discovery grid, clusters of the planted feature had ratios
#: >= 0.43, clusters of digits tied to the same class <= 0.38).
DEFAULT_MIN_GAP_RATIO = 0.5
#: Default of ``assignment_quantile``: a region joins a spurious cluster only when it is at least
#: as close to the medoid as the 5 % least similar of the cluster's own members in discovery.
DEFAULT_ASSIGNMENT_QUANTILE = 0.05


def _weighted_class(feature) -> str | None:
    """The class with the largest positive *weighted* gap Δ in a feature's table (``None``
    without one). ``class_name`` is the reference's: the largest *unweighted* gap, which a class
    seen in a handful of the cluster's images can win."""
    pos = [(g.gap, g.class_name) for g in feature.table if g.gap > 0]
    return max(pos)[1] if pos else None


def left_out_features(discovery, features: Any = "class", *, min_gap_ratio: float = DEFAULT_MIN_GAP_RATIO
                      ) -> list[str]:
    """Why ``features="class"`` left out features that carry the top feature's class name: one
    line per such feature (empty for any other ``features``).

    Example:
        ``"#5 ('nine' by name) is tied more to 'one' by the weighted gap"``.
    """
    feats = list(discovery.features)
    if features != "class" or not feats or feats[0].class_name is None:
        return []
    top, chosen = feats[0], {f.rank for f in select_features(discovery, features, min_gap_ratio=min_gap_ratio)}
    out = []
    for f in feats[1:]:
        if f.rank in chosen or f.class_name != top.class_name:
            continue
        if f.gap < min_gap_ratio * top.gap:
            out.append(f"#{f.rank} ({f.class_name!r}): gap {f.gap:.3g} is below {min_gap_ratio:g} x the top's "
                       f"{top.gap:.3g}")
        else:
            out.append(f"#{f.rank} ({f.class_name!r} by name) is tied more to {_weighted_class(f)!r} by the "
                       "weighted gap")
    return out


def select_features(discovery, features: Any = "class", *, min_gap_ratio: float = DEFAULT_MIN_GAP_RATIO) -> list:
    """The discovered features to treat as spurious.

    Args:
        discovery: A :class:`~ravl.discovery.DiscoveryResult`.
        features: ``"class"`` (every kept feature tied to the same class as the top-ranked
            one, by its ``class_name`` and by its largest weighted gap Δ), ``"top"`` or
            ``None`` (the top-ranked feature only), ``"all"`` (every kept feature) or a
            sequence of feature ranks (1 = top). ``"class"`` is the default of
            mitigation: masked-region discovery often splits one visual feature into several
            clusters (e.g. a square at each position), each tied to the same class.
        min_gap_ratio: With ``"class"``, keep a feature besides the top one only when its
            performance gap G is at least this fraction of the top feature's (clusters of
            ordinary class content can be tied to the same class with a small gap; labelling
            them spurious is harmful, see docs/mitigation.md). ``0`` keeps every feature of the
            class.

    Returns:
        The chosen :class:`~ravl.discovery.DiscoveredFeature` objects.

    Raises:
        ValueError: When discovery found no feature or a rank does not exist.
    """
    caller = "label_regions"
    feats = list(discovery.features)
    if not feats:
        raise InvalidParameterError(f"Discovery found no spurious feature ({discovery.status}: {discovery.message}); "
                                    "there is nothing to mitigate. Standard fine-tuning needs no discovery.")
    if features is None:
        return feats[:1]
    if isinstance(features, str):
        check_choice(features, "features", caller, FEATURE_CHOICES)
        if features == "top":
            return feats[:1]
        if features == "class":
            ratio = check_float(min_gap_ratio, "min_gap_ratio", caller, low=0, high=1)
            top = feats[0]
            if top.class_name is None:
                return feats[:1]
            return [top] + [f for f in feats[1:] if f.class_name == top.class_name and f.gap >= ratio * top.gap
                            and _weighted_class(f) in (None, top.class_name)]
        return feats
    if isinstance(features, (int, np.integer)):
        features = [features]
    by_rank = {f.rank: f for f in feats}
    out = []
    for r in features:
        r = check_int(r, "features", caller, low=1)
        if r not in by_rank:
            raise InvalidParameterError(f"The 'features' parameter of {caller} names rank {r}, but discovery kept "
                                        f"ranks {sorted(by_rank)}.")
        out.append(by_rank[r])
    if not out:
        raise InvalidParameterError(f"The 'features' parameter of {caller} must name at least one feature rank.")
    return out


def _discovery_split(discovery) -> str | None:
    split = discovery.meta.get("split", "val")
    return None if split in (None, "all") else split


def discovery_dataset(discovery, eval_dataset: Any = None, *, allow_data_change: bool = False):
    """The split discovery examined, with the regions it saw (its region source reapplied).

    Args:
        discovery: A :class:`~ravl.discovery.DiscoveryResult`.
        eval_dataset: The dataset discovery ran on (a :class:`~ravl.data.RegionDataset` or a
            folder), when it moved; default ``discovery.meta["data"]``.
        allow_data_change: Accept a split whose content fingerprint differs from the one
            discovery recorded (``meta["data_fingerprint"]``).

    Raises:
        DatasetError: When the dataset is not recorded, does not exist any more, or changed since
            discovery (unless ``allow_data_change``).
    """
    if eval_dataset is None:
        path = discovery.meta.get("data")
        if not path:
            raise DatasetError("discovery.json does not record the dataset it ran on (meta['data']); pass the "
                               "evaluation dataset (eval_dataset= / --discovery-data) to recompute the medoids.")
        eval_dataset = path
    if not isinstance(eval_dataset, RegionDataset):
        if not Path(eval_dataset).exists():
            raise DatasetError(f"The dataset discovery ran on, {eval_dataset}, does not exist any more; pass its "
                               "new location (eval_dataset= / --discovery-data).")
        eval_dataset = load_dataset(eval_dataset)
    source = discovery.meta.get("region_source")
    if source and source != getattr(eval_dataset, "region_source", "boxes"):
        # discovery ran on regions from a region source: rebuild exactly those regions
        eval_dataset = with_region_source(eval_dataset, source, progress=False,
                                          iou_threshold=discovery.meta.get("region_iou", DEFAULT_IOU_THRESHOLD))
    split = _discovery_split(discovery)
    ds = eval_dataset.subset(split) if split else eval_dataset
    recorded = discovery.meta.get("data_fingerprint")
    if recorded and not allow_data_change and ds.fingerprint() != recorded:
        raise DatasetError(f"The {split or 'whole'} split of {eval_dataset.root} changed since discovery examined it "
                           "(its content fingerprint differs from discovery.json's meta['data_fingerprint']): the "
                           "discovered clusters would be matched to other images. Rerun `ravl discover` on the data as "
                           "it is now, restore the data, or pass --allow-data-change (allow_data_change=True).")
    return ds


def compute_medoid_embeddings(model, discovery, *, eval_dataset: Any = None, region_mode: str | None = None,
                              batch_size: int = 128, allow_data_change: bool = False) -> np.ndarray:
    """Recompute the ``[K, D]`` unit-norm medoid embeddings of a discovery result.

    The medoids are regions of the split discovery examined; they are embedded again with
    ``model`` (which must be the audited model) and the discovery's region mode.

    Args:
        model: The audited :class:`~ravl.models.VisionLanguageModel`.
        discovery: A :class:`~ravl.discovery.DiscoveryResult`.
        eval_dataset: The dataset discovery ran on (a :class:`~ravl.data.RegionDataset` or a
            folder); default ``discovery.meta["data"]``. Its split ``discovery.meta["split"]``
            is used.
        region_mode: Region mode (default ``discovery.meta["region_mode"]``, else ``"masked"``).
        batch_size: Regions per forward pass.

    Raises:
        DatasetError: When the dataset cannot be found or no longer matches discovery.json.
    """
    mode = region_mode or discovery.meta.get("region_mode") or DEFAULT_REGION_MODE
    check_choice(mode, "region_mode", "compute_medoid_embeddings", REGION_MODES)
    if not discovery.medoid_indices:
        method = discovery.meta.get("method", discovery.scoring)
        raise InvalidParameterError(f"The discovery result ({method}) has no cluster medoids, so fine-tuning regions "
                                    "cannot be "
                                    "assigned to its features. Region labelling needs a clustering discovery: `ravl discover` "
                                    "with --method ravl or one of its ablations.")
    ds = discovery_dataset(discovery, eval_dataset, allow_data_change=allow_data_change)
    split = _discovery_split(discovery)
    eval_dataset = ds
    table = ds.region_table()
    if len(table) != discovery.n_regions:
        raise DatasetError(f"Split {split!r} of {eval_dataset.root} has {len(table)} regions but discovery saw "
                           f"{discovery.n_regions}; the folder changed since discovery. Rerun `ravl discover`.")
    medoids = np.asarray(discovery.medoid_indices, dtype=np.int64)
    if medoids.min() < 0 or medoids.max() >= len(table):
        raise DatasetError(f"discovery.json has medoid region indices outside [0, {len(table)}).")
    # Check every medoid whose file name and box discovery.json records.
    for f in discovery.features:
        for r in f.regions:
            if r.region_index != f.medoid_region_index:
                continue
            i = int(table.image_index[r.region_index])
            name, box = ds.records[i].file_name, table.boxes[r.region_index]
            if (r.file_name is not None and r.file_name != name) or \
                    (r.box is not None and not np.allclose(r.box, box, atol=1e-3)):
                raise DatasetError(f"Medoid region {r.region_index} of feature #{f.rank} is {r.file_name} {r.box} in "
                                   f"discovery.json but {name} {box.tolist()} in {eval_dataset.root}; the folder "
                                   "changed since discovery. Rerun `ravl discover` or pass the original folder.")
    images = [ds.load_image(int(table.image_index[k])) for k in medoids]
    boxes = [[table.boxes[k].tolist()] for k in medoids]
    return embed_regions(model, images, boxes=boxes, mode=mode, batch_size=batch_size, progress=False)


def assign_to_medoids(region_embeddings: np.ndarray, medoids: np.ndarray, *, block_size: int = 8192
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Nearest medoid by cosine similarity: ``(cluster [M] int64, similarity [M] float32)``."""
    e = np.asarray(region_embeddings, dtype=np.float32)
    m = np.asarray(medoids, dtype=np.float32)
    if e.ndim != 2 or m.ndim != 2 or (e.shape[0] and e.shape[1] != m.shape[1]) or m.shape[0] == 0:
        raise InvalidParameterError(f"assign_to_medoids needs [M, D] regions and [K, D] medoids with the same D; got "
                                    f"{e.shape} and {m.shape}.")
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    m = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
    cl = np.empty(e.shape[0], dtype=np.int64)
    sim = np.empty(e.shape[0], dtype=np.float32)
    for s in range(0, e.shape[0], block_size):
        p = e[s:s + block_size] @ m.T
        cl[s:s + block_size] = p.argmax(1)
        sim[s:s + block_size] = p.max(1)
    return cl, sim


#: A spurious cluster gets a similarity threshold only when discovery.json lists at least this
#: many of its members (fewer make the quantile meaningless); otherwise nearest medoid only.
MIN_MEMBERS_FOR_THRESHOLD = 10


def spurious_assignment(clusters: np.ndarray, similarities: np.ndarray, features: Sequence[Any],
                        quantile: float | None = DEFAULT_ASSIGNMENT_QUANTILE
                        ) -> tuple[np.ndarray, dict[int, float] | None, int]:
    """Which regions are spurious, given their nearest medoid and the chosen features.

    A region is spurious when its nearest medoid (``clusters``) is a chosen feature's cluster
    and, with ``quantile`` set, its similarity to it is at least the ``quantile`` of the
    similarities of that feature's member regions in discovery (``feature.regions``), less
    1e-3 of slack for re-embedding noise. Features listing fewer than
    :data:`MIN_MEMBERS_FOR_THRESHOLD` members get no threshold.

    Args:
        clusters: ``[M]`` nearest medoid (cluster id) of every region.
        similarities: ``[M]`` cosine similarity to it.
        features: The chosen :class:`~ravl.discovery.DiscoveredFeature` objects.
        quantile: In [0, 1], or ``None`` for the nearest medoid only (the paper's rule).

    Returns:
        ``(spurious [M] bool, thresholds {cluster: similarity} or None, n_outside)``, where
        ``n_outside`` counts regions nearest to a chosen cluster but below its threshold.
    """
    clusters = np.asarray(clusters, dtype=np.int64)
    sims = np.asarray(similarities, dtype=np.float64)
    spurious = np.isin(clusters, sorted({int(f.cluster) for f in features}))
    if quantile is None:
        return spurious, None, 0
    quantile = check_float(quantile, "assignment_quantile", "label_regions", low=0, high=1)
    thresholds: dict[int, float] = {}
    for f in features:
        member = np.array([r.similarity for r in f.regions], dtype=np.float64)
        if member.size >= MIN_MEMBERS_FOR_THRESHOLD:
            thr = float(np.quantile(member, quantile)) - 1e-3
            thresholds[int(f.cluster)] = min(thr, thresholds.get(int(f.cluster), thr))
    need = np.array([thresholds.get(int(c), -np.inf) for c in clusters], dtype=np.float64) if len(clusters) \
        else np.zeros(0)
    far = spurious & (sims < need)
    return spurious & ~far, thresholds, int(far.sum())


def _truth_metrics(table, records, spurious: np.ndarray, present: np.ndarray, classes: Sequence[str],
                   truth: str | None) -> dict[str, Any] | None:
    if table.attributes is None:
        return None
    attrs = np.asarray(table.attributes, dtype=object)
    if truth is None:
        truth = infer_spurious_feature(list(attrs), classes)
    if truth is None:
        return None
    true_r = attrs == truth
    true_i = np.array([truth in r.region_attributes for r in records], dtype=bool)

    def pr(pred: np.ndarray, gold: np.ndarray) -> tuple[float | None, float | None]:
        tp = int((pred & gold).sum())
        return (tp / int(pred.sum()) if pred.any() else None, tp / int(gold.sum()) if gold.any() else None)

    rp, rr = pr(spurious, true_r)
    ip, ir = pr(present, true_i)
    return {"attribute": truth, "region_precision": rp, "region_recall": rr, "image_precision": ip,
            "image_recall": ir, "n_true_regions": int(true_r.sum())}


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------

def _training_regions(model, ds, table, spurious: np.ndarray) -> tuple[RegionLabels, np.ndarray]:
    """The labelled regions as the model's input sees them (boxes through its resize and crop),
    and the ``[R]`` mask of the table rows kept.

    A region the model's centre crop removes entirely is left out: training cannot show it to
    the model (the image's feature-present flag still counts it).
    """
    image_index = np.asarray(table.image_index, dtype=np.int64)
    size = np.array([[r.width, r.height, r.width, r.height] for r in ds.records], dtype=np.float64).reshape(-1, 4)
    px = np.clip(np.asarray(table.boxes, dtype=np.float64).reshape(-1, 4), 0.0, size[image_index])
    if getattr(model, "map_boxes", None) is None:  # the model squashes whole images into its input
        boxes = px / size[image_index] if len(table) else np.zeros((0, 4))
        status = np.full(len(table), "inside", dtype="<U7")
    else:
        boxes = np.zeros((len(table), 4), dtype=np.float64)
        status = np.full(len(table), "inside", dtype="<U7")
        order = np.argsort(image_index, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(image_index[order]) != 0]) if len(order) else []
        for rows in np.split(order, starts[1:]) if len(order) else []:
            rec = ds.records[int(image_index[rows[0]])]
            boxes[rows], status[rows] = map_boxes(model, px[rows], (rec.width, rec.height))
    keep = (status != "outside") & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if not keep.all():
        logger.info("%d of %d labelled regions lie outside %s's centre crop and are left out of training.",
                    int((~keep).sum()), len(keep), getattr(model, "name", type(model).__name__))
    return RegionLabels(image_index[keep], boxes[keep], np.asarray(spurious, dtype=bool)[keep]), keep


def label_regions(model, dataset, discovery, *, features: Any = "class", region_mode: str | None = None,
                  split: str | None = "train", medoid_embeddings: np.ndarray | None = None,
                  eval_dataset: Any = None, truth: str | None = None, batch_size: int = 128,
                  min_gap_ratio: float = DEFAULT_MIN_GAP_RATIO,
                  assignment_quantile: float | None = DEFAULT_ASSIGNMENT_QUANTILE,
                  allow_data_change: bool = False, progress: bool = True, sharding: Sharding | None = None
                  ) -> RegionLabelling:
    """Label every region of the fine-tuning split as spurious or candidate core (docs/algorithm.md §4).

    Args:
        model: The model discovery audited (the fine-tuned checkpoint), used to embed regions.
        dataset: The fine-tuning :class:`~ravl.data.RegionDataset` (a ``label`` on every row of
            ``split``).
        discovery: A :class:`~ravl.discovery.DiscoveryResult` or the path of ``discovery.json``.
        features: Which discovered features are spurious: ``"class"`` (default: every feature
            tied to the top-ranked feature's class), ``"top"`` / ``None`` (the top-ranked one),
            ``"all"`` or a list of ranks (see :func:`select_features`).
        region_mode: Region embedding mode (default: the discovery's, else ``"masked"``).
        split: The split to label; it must be the split fine-tuning trains on (positions in
            ``dataset.subset(split)`` are the ``batch["indices"]`` of the training loop).
            ``None``: every row.
        medoid_embeddings: ``[K, D]`` medoid embeddings, if known; default: recomputed from the
            discovery's dataset (see the module docstring).
        eval_dataset: The dataset discovery ran on, when it moved (default ``meta["data"]``).
        truth: Ground-truth region attribute of the planted feature, for the report-only
            precision/recall (default: inferred from ``region_attributes`` when unambiguous).
        batch_size: Regions per forward pass.
        min_gap_ratio: See :func:`select_features` (``features="class"`` only).
        assignment_quantile: A region whose nearest medoid is a spurious cluster's is labelled
            spurious only when its similarity to that medoid is at least this quantile of the
            similarities of the cluster's own members in discovery (``discovery.json`` lists
            them), so that outliers far from every medoid are not claimed by the feature.
            ``None``: nearest medoid only (the paper's rule). The thresholds used are in
            ``summary()["assignment_thresholds"]``.
        allow_data_change: Accept a discovery split whose content changed since discovery (see
            :func:`discovery_dataset`).
        progress: Show progress bars.
        sharding: Spread the region embedding over a Ray cluster
            (:class:`~ravl.models.sharded.Sharding`); the labels are the serial run's.

    Returns:
        A :class:`RegionLabelling`.

    Raises:
        ValueError: When discovery found no feature.
        DatasetError: When the split is empty or has unlabelled rows, or the discovery dataset
            no longer matches.
    """
    if isinstance(discovery, (str, os.PathLike)):
        discovery = DiscoveryResult.from_json(discovery)
    chosen = select_features(discovery, features, min_gap_ratio=min_gap_ratio)
    if assignment_quantile is not None:
        check_float(assignment_quantile, "assignment_quantile", "label_regions", low=0, high=1)
    mode = region_mode or discovery.meta.get("region_mode") or DEFAULT_REGION_MODE
    check_choice(mode, "region_mode", "label_regions", REGION_MODES)
    check_model(model, "label_regions")
    ds = check_dataset(dataset, "label_regions").labelled_split(
        split, purpose="region labelling (groups are class x discovered feature)")
    labels = ds.label_indices
    if tuple(discovery.classes) and set(discovery.classes) != set(ds.classes):
        only_d = sorted(set(discovery.classes) - set(ds.classes))
        only_t = sorted(set(ds.classes) - set(discovery.classes))
        raise DatasetError(
            f"The discovery's classes do not fit the data: {only_d or 'none'} only in discovery.json, "
            f"{only_t or 'none'} "
            f"only in {ds.root}. Discovery must have judged the same classes the data is labelled with; rerun "
            "`ravl discover` on data with these classes (or pass --classes so both use the same list).")

    if medoid_embeddings is None:
        medoids = compute_medoid_embeddings(model, discovery, eval_dataset=eval_dataset, region_mode=mode,
                                            allow_data_change=allow_data_change,
                                            batch_size=batch_size)
    else:
        medoids = np.asarray(medoid_embeddings, dtype=np.float32)
        k = len(discovery.medoid_indices)
        if medoids.ndim != 2 or (k and medoids.shape[0] != k):
            raise InvalidParameterError(f"The 'medoid_embeddings' parameter of label_regions must be [K={k}, D] (one "
                                        f"row per discovery cluster). Got shape {medoids.shape}.")
    spurious_clusters = tuple(sorted({int(f.cluster) for f in chosen}))
    if max(spurious_clusters) >= medoids.shape[0]:
        raise InvalidParameterError(f"Feature cluster {max(spurious_clusters)} has no medoid (K = {medoids.shape[0]}).")

    table = ds.region_table()
    emb = embed_regions_sharded(model, ds, mode=mode, sharding=sharding, batch_size=batch_size, progress=progress)
    clusters, sims = assign_to_medoids(emb, medoids)
    spurious, thresholds, n_outside = spurious_assignment(clusters, sims, chosen, assignment_quantile)
    region_labels, kept = _training_regions(model, ds, table, spurious)
    present = np.zeros(len(ds), dtype=bool)
    present[table.image_index[spurious]] = True
    groups, n_groups = class_feature_groups(labels, present, n_classes=len(ds.classes))
    if truth is None and getattr(ds, "root", None) is not None:
        truth = planted_feature(ds.root)              # a synthetic setting's folder records it
    truth_d = _truth_metrics(table, ds.records, spurious, present, ds.classes, truth)
    result = RegionLabelling(classes=tuple(ds.classes), split=split, region_mode=mode,
                             spurious_clusters=spurious_clusters, feature_ranks=tuple(f.rank for f in chosen),
                             feature_classes=tuple(f.class_name for f in chosen), region_labels=region_labels,
                             region_clusters=clusters[kept], region_similarity=sims[kept], labels=labels,
                             feature_present=present, groups=groups, n_groups=n_groups, truth=truth_d,
                             assignment_thresholds=thresholds, n_outside_threshold=n_outside)
    logger.info("Labelled %d regions of %d images: %d spurious (clusters %s) in %d images.", len(region_labels),
                len(ds), region_labels.n_spurious, list(spurious_clusters), int(present.sum()))
    return result
