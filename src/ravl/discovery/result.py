"""Configuration and result types of RaVL discovery; both round-trip to JSON.

``DiscoveryResult.to_json(path)`` writes ``discovery.json`` (schema ``ravl.discovery/1``,
documented in ``docs/discovery.md``). Non-finite numbers are written as ``null``: an influence of
``-inf`` (no misclassified image to score) and an undefined silhouette; reading maps them back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ravl.exceptions import DatasetError, InvalidParameterError
from ravl.utils.io import atomic_write_json
from ravl.utils.validation import check_choice, check_float, check_int

__all__ = [
    "SCHEMA",
    "DiscoveryFileError",
    "validate_discovery_dict",
    "SCORINGS",
    "STATUSES",
    "DiscoveryConfig",
    "ClassGap",
    "RankedRegion",
    "DiscoveredFeature",
    "ClusterScore",
    "KSweepEntry",
    "DiscoveryResult",
]

SCHEMA = "ravl.discovery/1"

#: Scoring variants: full RaVL and the three ablations of the paper's Table 2.
SCORINGS = ("ravl", "gap_only", "influence_only", "unweighted")

#: ``ok``: at least one feature; ``no_feature``: clustering done, no cluster passed the filters;
#: ``no_clusters``: no K could be scored (too few regions or every silhouette undefined).
STATUSES = ("ok", "no_feature", "no_clusters")


def _num(x: float | None) -> float | None:
    """JSON-safe float: NaN and infinities become ``None``."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class DiscoveryConfig:
    """Every knob of :func:`ravl.discovery.discover` (docs/algorithm.md §2).

    Attributes:
        k_min: Smallest K tried (default ``2 * C``, the reference's).
        k_max: Largest K tried, inclusive (default ``5 * C - 1``, the reference's).
        scoring: ``"ravl"`` (filter S_c and H_c >= ``min_influence``, rank by the weighted gap
            G_c), ``"gap_only"`` (filter S_c, rank by G_c, no influence), ``"influence_only"``
            (filter H_c >= ``min_influence``, rank by H_c, no gap) or ``"unweighted"`` (as
            ``"ravl"`` with every class weight w = 1).
        min_influence: Influence threshold (reference 0.25).
        require_spurious_pattern: Keep only clusters with a positive and a negative class gap
            (S_c). ``None``: as the scoring implies (all but ``"influence_only"``).
        max_iter: Maximum K-Medoids iterations per K (scikit-learn-extra's default 300).
        n_local_trials: k-medoids++ candidates per step (default ``2 + int(log K)``).
        max_exact: Above this many regions the K sweep runs on a sample (``None``: never).
        sample_size: Regions clustered in that bounded-memory path.
        block_size: Rows per block of the blockwise similarity products.
        max_negative_pairs: Negative-similarity pairs kept in memory for exact clipping.
        blas_threads: BLAS threads during clustering (``None``: leave as configured).
    """

    k_min: int | None = None
    k_max: int | None = None
    scoring: str = "ravl"
    min_influence: float = 0.25
    require_spurious_pattern: bool | None = None
    max_iter: int = 300
    n_local_trials: int | None = None
    max_exact: int | None = 20_000
    sample_size: int = 10_000
    block_size: int = 2048
    max_negative_pairs: int = 10_000_000
    blas_threads: int | None = 1

    def __post_init__(self) -> None:
        c = "DiscoveryConfig"
        if self.k_min is not None:
            check_int(self.k_min, "k_min", c, low=2)
        if self.k_max is not None:
            check_int(self.k_max, "k_max", c, low=2)
        if self.k_min is not None and self.k_max is not None and self.k_max < self.k_min:
            raise InvalidParameterError(f"The 'k_max' parameter of {c} must be >= k_min ({self.k_min}). "
                                        f"Got {self.k_max!r} instead.")
        check_choice(self.scoring, "scoring", c, SCORINGS)
        check_float(self.min_influence, "min_influence", c)
        if self.require_spurious_pattern not in (None, True, False):
            raise InvalidParameterError(f"The 'require_spurious_pattern' parameter of {c} must be None, True or False. "
                                        f"Got {self.require_spurious_pattern!r} instead.")
        check_int(self.max_iter, "max_iter", c, low=0)
        if self.n_local_trials is not None:
            check_int(self.n_local_trials, "n_local_trials", c, low=1)
        if self.max_exact is not None:
            check_int(self.max_exact, "max_exact", c, low=3)
        check_int(self.sample_size, "sample_size", c, low=3)
        check_int(self.block_size, "block_size", c, low=1)
        check_int(self.max_negative_pairs, "max_negative_pairs", c, low=0)
        if self.blas_threads is not None:
            check_int(self.blas_threads, "blas_threads", c, low=1)

    def k_range(self, n_classes: int) -> tuple[int, int]:
        """``(k_min, k_max)`` (inclusive) for ``n_classes`` classes."""
        lo = self.k_min if self.k_min is not None else 2 * n_classes
        hi = self.k_max if self.k_max is not None else 5 * n_classes - 1
        lo = max(lo, 2)
        if hi < lo:
            raise InvalidParameterError(f"The K range of discover is empty: k_min = {lo} > k_max = {hi}. Set k_min and "
                                        "k_max (inclusive) in DiscoveryConfig.")
        return lo, hi

    @property
    def spurious_filter(self) -> bool:
        """Whether the S_c filter applies."""
        if self.require_spurious_pattern is not None:
            return bool(self.require_spurious_pattern)
        return self.scoring != "influence_only"

    @property
    def influence_filter(self) -> bool:
        """Whether the H_c >= ``min_influence`` filter applies (all scorings but ``"gap_only"``)."""
        return self.scoring != "gap_only"

    @property
    def weighted(self) -> bool:
        """Whether class gaps carry the balance weight w (all scorings but ``"unweighted"``)."""
        return self.scoring != "unweighted"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DiscoveryConfig:
        """Inverse of :meth:`to_dict` (unknown keys are ignored, for forward compatibility)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class ClassGap:
    """One row of a cluster's table: accuracy of class-y images with vs without the feature.

    Attributes:
        class_name: The class y.
        acc_present: Zero-shot accuracy of class-y images with a region in the cluster.
        n_present: Number of those images.
        acc_absent: Accuracy of class-y images with no region in the cluster.
        n_absent: Number of those images.
        weight: w = 2 min(n_present, n_absent) / (n_present + n_absent) (1 when unweighted).
        gap: The weighted gap Δ = w (acc_present - acc_absent).
    """

    class_name: str
    acc_present: float
    n_present: int
    acc_absent: float
    n_absent: int
    weight: float
    gap: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the class is stored under ``"class"``)."""
        return {"class": self.class_name, "acc_present": self.acc_present, "n_present": self.n_present,
                "acc_absent": self.acc_absent, "n_absent": self.n_absent, "weight": self.weight,
                "gap": self.gap}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClassGap:
        """Inverse of :meth:`to_dict`."""
        return cls(str(d["class"]), float(d["acc_present"]), int(d["n_present"]), float(d["acc_absent"]),
                   int(d["n_absent"]), float(d["weight"]), float(d["gap"]))


@dataclass(frozen=True)
class RankedRegion:
    """A region of a discovered feature, in rank order.

    Attributes:
        region_index: Row in the region arrays given to ``discover`` (``RegionTable`` order).
        image_index: The image it belongs to.
        similarity: Cosine similarity to the cluster's medoid.
        file_name: The image's file name, when region metadata was given.
        box: ``[x0, y0, x1, y1]`` pixels, when region metadata was given.
    """

    region_index: int
    image_index: int
    similarity: float
    file_name: str | None = None
    box: tuple[float, float, float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``file_name`` and ``box`` only when known)."""
        d: dict[str, Any] = {"region_index": self.region_index, "image_index": self.image_index,
                             "similarity": self.similarity}
        if self.file_name is not None:
            d["file_name"] = self.file_name
        if self.box is not None:
            d["box"] = list(self.box)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RankedRegion:
        """Inverse of :meth:`to_dict`."""
        box = d.get("box")
        return cls(int(d["region_index"]), int(d["image_index"]), float(d["similarity"]), d.get("file_name"),
                   None if box is None else tuple(float(v) for v in box))


@dataclass(frozen=True)
class DiscoveredFeature:
    """A cluster of regions that passed the filters, with its evidence.

    Attributes:
        rank: 1 for the most spurious-looking feature.
        cluster: Cluster id (index into ``DiscoveryResult.medoid_indices``).
        class_name: The discovered textual attribute: the class with the largest positive
            present - absent accuracy gap (unweighted), ``None`` if no class gains.
        gap: Cluster performance gap G_c = sum over classes of |Δ|.
        influence: Cluster influence H_c (``-inf`` when no misclassified image could be scored).
        spurious_pattern: S_c (some Δ > 0 and some Δ < 0).
        n_regions: Regions in the cluster.
        n_images: Images with at least one region in the cluster (A_c).
        medoid_region_index: The medoid's region index.
        table: One :class:`ClassGap` per class seen both inside and outside A_c.
        regions: The cluster's regions by similarity to the medoid, descending.
    """

    rank: int
    cluster: int
    class_name: str | None
    gap: float
    influence: float
    spurious_pattern: bool
    n_regions: int
    n_images: int
    medoid_region_index: int
    table: tuple[ClassGap, ...]
    regions: tuple[RankedRegion, ...]

    @property
    def region_indices(self) -> list[int]:
        """Region indices in rank order."""
        return [r.region_index for r in self.regions]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"rank": self.rank, "cluster": self.cluster, "class": self.class_name, "gap": self.gap,
                "influence": _num(self.influence), "spurious_pattern": self.spurious_pattern,
                "n_regions": self.n_regions, "n_images": self.n_images,
                "medoid_region_index": self.medoid_region_index,
                "table": [t.to_dict() for t in self.table], "regions": [r.to_dict() for r in self.regions]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DiscoveredFeature:
        """Inverse of :meth:`to_dict`."""
        infl = d.get("influence")
        return cls(int(d["rank"]), int(d["cluster"]), d.get("class"), float(d["gap"]),
                   -math.inf if infl is None else float(infl), bool(d["spurious_pattern"]), int(d["n_regions"]),
                   int(d["n_images"]), int(d["medoid_region_index"]),
                   tuple(ClassGap.from_dict(t) for t in d["table"]),
                   tuple(RankedRegion.from_dict(r) for r in d["regions"]))


@dataclass(frozen=True)
class ClusterScore:
    """Scores of every non-empty cluster, kept or not (for ablations and reports)."""

    cluster: int
    n_regions: int
    n_images: int
    medoid_region_index: int
    gap: float
    influence: float
    spurious_pattern: bool
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["influence"] = _num(self.influence)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClusterScore:
        """Inverse of :meth:`to_dict`."""
        infl = d.get("influence")
        return cls(int(d["cluster"]), int(d["n_regions"]), int(d["n_images"]), int(d["medoid_region_index"]),
                   float(d["gap"]), -math.inf if infl is None else float(infl), bool(d["spurious_pattern"]),
                   bool(d["passed"]))


@dataclass(frozen=True)
class KSweepEntry:
    """One K of the sweep: silhouette (``None`` if undefined) and K-Medoids objective."""

    k: int
    silhouette: float | None
    inertia: float
    n_iter: int
    converged: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"k": self.k, "silhouette": _num(self.silhouette), "inertia": self.inertia,
                "n_iter": self.n_iter, "converged": self.converged}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> KSweepEntry:
        """Inverse of :meth:`to_dict`."""
        s = d.get("silhouette")
        return cls(int(d["k"]), None if s is None else float(s), float(d["inertia"]), int(d["n_iter"]),
                   bool(d["converged"]))


@dataclass(frozen=True)
class DiscoveryResult:
    """Everything RaVL discovery found, and how.

    Attributes:
        status: One of :data:`STATUSES`.
        message: Plain-language explanation (what was found, or why nothing was).
        classes: Class names (C).
        scoring: The scoring variant used.
        config: The full configuration.
        random_state: The integer seed used.
        n_regions: R.
        n_images: N.
        n_clusters: The chosen K (``None`` when no K could be scored).
        silhouette: Silhouette of the chosen K.
        silhouette_positive: Whether it is > 0 (the reference requires it; ravl warns instead).
        inertia: K-Medoids objective of the chosen clustering over all regions.
        k_sweep: One entry per K tried (silhouette-vs-K chart).
        bounded_memory: Whether the sweep ran on a sample of ``sample_size`` regions.
        sample_size: Regions clustered in that case, else ``None``.
        negative_similarity: How clipped negative similarities were handled (``"none"``,
            ``"sparse"``, ``"dense"``).
        timings: Seconds per step.
        medoid_indices: Region index of every cluster's medoid (K).
        region_clusters: Cluster of every region (R), for labelling new regions.
        clusters: Scores of every non-empty cluster, by cluster id.
        features: Kept clusters in rank order.
        meta: Free-form provenance the caller passed (model, region mode, dataset...).
        ravl_version: Version that produced the result.
        schema: JSON schema id.
    """

    status: str
    message: str
    classes: tuple[str, ...]
    scoring: str
    config: DiscoveryConfig
    random_state: int
    n_regions: int
    n_images: int
    n_clusters: int | None
    silhouette: float | None
    silhouette_positive: bool
    inertia: float | None
    k_sweep: tuple[KSweepEntry, ...]
    bounded_memory: bool
    sample_size: int | None
    negative_similarity: str
    timings: dict[str, float]
    medoid_indices: tuple[int, ...]
    region_clusters: tuple[int, ...]
    clusters: tuple[ClusterScore, ...]
    features: tuple[DiscoveredFeature, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    ravl_version: str = ""
    schema: str = SCHEMA

    @property
    def top(self) -> DiscoveredFeature | None:
        """The top-ranked feature, or ``None``."""
        return self.features[0] if self.features else None

    def ranked_regions(self, all_features: bool = False) -> list[int]:
        """Region indices in rank order.

        Args:
            all_features: ``False`` (default): the top feature's regions only, as the reference
                returns them and as Precision@k is computed in the paper. ``True``: every
                feature's regions, feature after feature.
        """
        feats = self.features if all_features else self.features[:1]
        return [r.region_index for f in feats for r in f.regions]

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [f"RaVL discovery ({self.scoring}): {self.message}"]
        for f in self.features[:5]:
            infl = "n/a" if not math.isfinite(f.influence) else f"{f.influence:.2f}"
            lines.append(f"  #{f.rank} cluster {f.cluster} -> {f.class_name!r}: gap {f.gap:.3f}, influence {infl}, "
                         f"{f.n_regions} regions in {f.n_images} images")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (schema in ``docs/discovery.md``)."""
        return {
            "schema": self.schema, "ravl_version": self.ravl_version, "status": self.status,
            "message": self.message, "scoring": self.scoring, "classes": list(self.classes),
            "config": self.config.to_dict(), "random_state": self.random_state, "n_regions": self.n_regions,
            "n_images": self.n_images, "n_clusters": self.n_clusters, "silhouette": _num(self.silhouette),
            "silhouette_positive": self.silhouette_positive, "inertia": _num(self.inertia),
            "k_sweep": [e.to_dict() for e in self.k_sweep], "bounded_memory": self.bounded_memory,
            "sample_size": self.sample_size, "negative_similarity": self.negative_similarity,
            "timings": dict(self.timings), "medoid_indices": list(self.medoid_indices),
            "region_clusters": list(self.region_clusters), "clusters": [c.to_dict() for c in self.clusters],
            "features": [f.to_dict() for f in self.features], "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "the discovery result") -> DiscoveryResult:
        """Inverse of :meth:`to_dict`; the dict is validated first (:func:`validate_discovery_dict`).

        Raises:
            DiscoveryFileError: The dict does not follow the schema; the message names ``source``
                and every key that is wrong.
        """
        validate_discovery_dict(d, source)
        schema = d.get("schema", SCHEMA)
        sil = d.get("silhouette")
        inertia = d.get("inertia")
        return cls(
            status=str(d["status"]), message=str(d["message"]), classes=tuple(d["classes"]),
            scoring=str(d["scoring"]), config=DiscoveryConfig.from_dict(d["config"]),
            random_state=int(d["random_state"]), n_regions=int(d["n_regions"]), n_images=int(d["n_images"]),
            n_clusters=None if d.get("n_clusters") is None else int(d["n_clusters"]),
            silhouette=None if sil is None else float(sil), silhouette_positive=bool(d["silhouette_positive"]),
            inertia=None if inertia is None else float(inertia),
            k_sweep=tuple(KSweepEntry.from_dict(e) for e in d["k_sweep"]),
            bounded_memory=bool(d["bounded_memory"]), sample_size=d.get("sample_size"),
            negative_similarity=str(d["negative_similarity"]), timings=dict(d.get("timings", {})),
            medoid_indices=tuple(int(i) for i in d["medoid_indices"]),
            region_clusters=tuple(int(i) for i in d["region_clusters"]),
            clusters=tuple(ClusterScore.from_dict(c) for c in d["clusters"]),
            features=tuple(DiscoveredFeature.from_dict(f) for f in d["features"]),
            meta=dict(d.get("meta", {})), ravl_version=str(d.get("ravl_version", "")), schema=str(schema),
        )

    def to_json(self, path: str | Path, *, timings: bool = False) -> Path:
        """Write ``discovery.json`` atomically; returns the path.

        Args:
            path: The file.
            timings: Keep the wall-clock ``timings`` (left out by default, so the same run gives a
                byte-identical file).
        """
        d = self.to_dict()
        if not timings:
            d["timings"] = {}
        return atomic_write_json(path, d)

    @classmethod
    def from_json(cls, path: str | Path) -> DiscoveryResult:
        """Read a result written by :meth:`to_json`.

        Raises:
            DiscoveryFileError: The file is missing, empty, not JSON (e.g. truncated), of another
                schema version, or edited so that a key is missing or of the wrong kind; the
                message names the file and the key.
        """
        p = Path(path)
        if p.is_dir() and (p / "discovery.json").is_file():
            p = p / "discovery.json"
        if not p.is_file():
            raise DiscoveryFileError(f"{p} does not exist" + (" (it is a folder)" if p.is_dir() else "")
                                     + "; give the discovery.json written by `ravl discover --out DIR` (DIR/discovery.json).")
        text = p.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            raise DiscoveryFileError(f"{p} is empty; rerun `ravl discover` to write it again.")
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DiscoveryFileError(f"{p} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}): "
                                     "the file is truncated or was edited by hand. Rerun `ravl discover`.") from None
        return cls.from_dict(d, source=str(p))


# ---------------------------------------------------------------------------------------------
# Validation of discovery.json
# ---------------------------------------------------------------------------------------------

class DiscoveryFileError(DatasetError):
    """A discovery.json (or dict) that cannot be used: missing, truncated, another schema, edited."""


_NUM = (int, float)
_GAP = {"class": str, "acc_present": _NUM, "n_present": int, "acc_absent": _NUM, "n_absent": int, "weight": _NUM,
        "gap": _NUM}
_REGION = {"region_index": int, "image_index": int, "similarity": _NUM, "file_name?": (str, None),
           "box?": ([_NUM], None)}
_FEATURE = {"rank": int, "cluster": int, "class?": (str, None), "gap": _NUM, "influence?": (_NUM, None),
            "spurious_pattern": bool, "n_regions": int, "n_images": int, "medoid_region_index": int,
            "table": [_GAP], "regions": [_REGION]}
_CLUSTER = {"cluster": int, "n_regions": int, "n_images": int, "medoid_region_index": int, "gap": _NUM,
            "influence?": (_NUM, None), "spurious_pattern": bool, "passed": bool}
_SWEEP = {"k": int, "silhouette?": (_NUM, None), "inertia": _NUM, "n_iter": int, "converged": bool}
_RESULT = {"schema?": str, "status": str, "message": str, "classes": [str], "scoring": str, "config": dict,
           "random_state": (int, None), "n_regions": int, "n_images": int, "n_clusters?": (int, None),
           "silhouette?": (_NUM, None), "silhouette_positive": bool, "inertia?": (_NUM, None), "k_sweep": [_SWEEP],
           "bounded_memory": bool, "negative_similarity": str, "medoid_indices": [int], "region_clusters": [int],
           "clusters": [_CLUSTER], "features": [_FEATURE], "meta?": dict}


def _kind_ok(value: Any, kind: Any) -> bool:
    if kind is None:
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _NUM:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind) if isinstance(kind, type) else False


def _check(value: Any, spec: Any, path: str, problems: list[str]) -> None:
    if len(problems) >= 20:
        return
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            problems.append(f"{path or 'the top level'} must be an object, not {type(value).__name__}")
            return
        for key, sub in spec.items():
            optional = key.endswith("?")
            key = key.rstrip("?")
            if key not in value:
                if not optional:
                    problems.append(f"key '{path + '.' if path else ''}{key}' is missing")
                continue
            _check(value[key], sub, f"{path + '.' if path else ''}{key}", problems)
    elif isinstance(spec, list):
        if not isinstance(value, list):
            problems.append(f"'{path}' must be a list, not {type(value).__name__}")
            return
        for i, item in enumerate(value):
            _check(item, spec[0], f"{path}[{i}]", problems)
    elif isinstance(spec, tuple) and spec != _NUM:
        if not any(_check_one(value, alt) for alt in spec):
            problems.append(f"'{path}' has {value!r}, which is not {' or '.join(_name(a) for a in spec)}")
    elif not _kind_ok(value, spec):
        problems.append(f"'{path}' has {value!r}, which is not {_name(spec)}")


def _check_one(value: Any, alt: Any) -> bool:
    if isinstance(alt, list):
        return isinstance(value, list) and all(_kind_ok(v, alt[0]) for v in value)
    return _kind_ok(value, alt)


def _name(kind: Any) -> str:
    if kind is None:
        return "null"
    if isinstance(kind, list):
        return f"a list of {_name(kind[0])}s"
    if kind == _NUM:
        return "a number"
    return {str: "a string", int: "an integer", bool: "true/false", dict: "an object"}.get(kind, str(kind))


def validate_discovery_dict(d: Any, source: str = "the discovery result") -> None:
    """Check a discovery.json dict against the schema and its own consistency.

    Raises:
        DiscoveryFileError: Naming ``source``, the schema version when it is not this ravl's, or up
            to 20 problems, each with its key path (e.g. ``features[0].cluster``).
    """
    if not isinstance(d, Mapping):
        raise DiscoveryFileError(f"{source} is not a discovery result: it holds {type(d).__name__}, not a JSON "
                                 "object. Give the discovery.json written by `ravl discover`.")
    schema = d.get("schema", SCHEMA)
    if not isinstance(schema, str) or not schema.startswith("ravl.discovery/"):
        raise DiscoveryFileError(f"{source} is not a ravl discovery result: schema {schema!r} (expected {SCHEMA!r}).")
    if schema != SCHEMA:
        raise DiscoveryFileError(f"{source} has schema {schema!r}, which this ravl ({SCHEMA!r}) cannot read: it was "
                                 "written by another version of ravl. Rerun `ravl discover` with this version, or "
                                 "use the version that wrote it.")
    problems: list[str] = []
    _check(dict(d), _RESULT, "", problems)
    if not problems:
        n, k = d["n_regions"], len(d["medoid_indices"])
        clustered = k > 0  # the baselines rank regions without clustering: no medoids, no region clusters
        if clustered and len(d["region_clusters"]) != n:
            problems.append(f"'region_clusters' has {len(d['region_clusters'])} entries but 'n_regions' is {n}")
        if any(not 0 <= i < n for i in d["medoid_indices"]):
            problems.append(f"'medoid_indices' must be region indices in [0, {n})")
        if clustered and any(not 0 <= c < k for c in d["region_clusters"]):
            problems.append(f"'region_clusters' must hold cluster ids in [0, {k})")
        classes = list(d["classes"])
        if len(set(classes)) != len(classes):
            problems.append("'classes' repeats a name")
        for i, f in enumerate(d["features"]):
            if f["rank"] != i + 1:
                problems.append(f"'features[{i}].rank' is {f['rank']}, expected {i + 1} (ranks are 1, 2, ...)")
            if clustered and not 0 <= f["cluster"] < k:
                problems.append(f"'features[{i}].cluster' is {f['cluster']}, not a cluster id in [0, {k})")
            if f.get("class") is not None and f["class"] not in classes:
                problems.append(f"'features[{i}].class' is {f['class']!r}, which is not among 'classes'")
            for j, r in enumerate(f["regions"]):
                if not 0 <= r["region_index"] < n:
                    problems.append(f"'features[{i}].regions[{j}].region_index' is {r['region_index']}, outside "
                                    f"[0, {n})")
                    break
    if problems:
        shown = "; ".join(problems[:20])
        raise DiscoveryFileError(f"{source} does not follow the discovery.json schema ({SCHEMA}): {shown}. It was "
                                 "edited by hand or written by something else; rerun `ravl discover`.")
