"""Zero-shot evaluation metrics: overall, per class, per (class x spurious feature) group.

Groups follow docs/algorithm.md §4: for every class y and for the feature present / absent, the accuracy
of the images with label y; worst-group accuracy is the lowest group accuracy (not the smallest
group's). Whole images and the *core region* (the region whose ground-truth attribute is the
image's label) are scored with the same zero-shot classifier.
"""

from __future__ import annotations

import difflib
import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ravl.data.attributes import EMPTY_ATTRIBUTE, infer_spurious_feature
from ravl.data.dataset import check_dataset
from ravl.data.synthetic import planted_feature
from ravl.exceptions import DatasetError, InvalidParameterError, RavlWarning
from ravl.mitigation.labelling import label_regions
from ravl.models.base import check_model
from ravl.models.regions import DEFAULT_REGION_MODE
from ravl.utils.validation import check_float
from ravl.zeroshot import default_templates, zero_shot_classify

__all__ = [
    "GroupAccuracy",
    "AccuracyReport",
    "EvaluationResult",
    "SUMMARY_METRICS",
    "SettingValidity",
    "group_accuracies",
    "accuracy_report",
    "evaluate",
    "check_setting_validity",
    "groups_from_discovery",
]

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class GroupAccuracy:
    """Accuracy of one (class, feature present/absent) group."""

    label: str
    feature_present: bool
    accuracy: float
    n: int


@dataclass(frozen=True)
class AccuracyReport:
    """Accuracy of one set of predictions (whole images or core regions).

    Attributes:
        overall: Accuracy over every scored item.
        n: Number of scored items.
        per_class: ``{class: {"accuracy", "n"}}``.
        groups: Per (class, feature present/absent) accuracies; empty without a feature.
        worst_group: The group with the lowest accuracy (ties: first in class order), or ``None``.
    """

    overall: float
    n: int
    per_class: dict[str, dict[str, float]]
    groups: tuple[GroupAccuracy, ...] = ()
    worst_group: GroupAccuracy | None = None

    def group(self, label: str, feature_present: bool) -> GroupAccuracy | None:
        """The group for ``label`` with/without the feature, if it has any items."""
        for g in self.groups:
            if g.label == label and g.feature_present == feature_present:
                return g
        return None


def group_accuracies(predictions: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                     feature_present: np.ndarray | None = None) -> AccuracyReport:
    """Overall, per-class and per-group accuracy.

    Args:
        predictions: ``[N]`` predicted class indices.
        labels: ``[N]`` true class indices; rows with ``-1`` are ignored.
        classes: C class names.
        feature_present: ``[N]`` booleans, or ``None`` to skip the group table.

    Returns:
        An :class:`AccuracyReport`. Empty groups are left out of ``groups``.

    Example:
        >>> r = group_accuracies(np.array([0, 1, 1, 1]), np.array([0, 0, 1, 1]), ["a", "b"],
        ...                      np.array([True, False, True, False]))
        >>> r.overall, r.worst_group.label, r.worst_group.feature_present, r.worst_group.accuracy
        (0.75, 'a', False, 0.0)
    """
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    keep = labels >= 0
    correct = predictions == labels
    per_class = {}
    for c, name in enumerate(classes):
        m = keep & (labels == c)
        if m.any():
            per_class[name] = {"accuracy": float(correct[m].mean()), "n": int(m.sum())}
    groups: list[GroupAccuracy] = []
    if feature_present is not None:
        feature_present = np.asarray(feature_present, dtype=bool)
        for c, name in enumerate(classes):
            for present in (True, False):
                m = keep & (labels == c) & (feature_present == present)
                if m.any():
                    groups.append(GroupAccuracy(name, present, float(correct[m].mean()), int(m.sum())))
    worst = min(groups, key=lambda g: g.accuracy) if groups else None
    overall = float(correct[keep].mean()) if keep.any() else float("nan")
    return AccuracyReport(overall, int(keep.sum()), per_class, tuple(groups), worst)


@dataclass(frozen=True)
class EvaluationResult:
    """Zero-shot metrics of a model on one split of a dataset.

    Attributes:
        split: The split evaluated (``None`` for all rows).
        classes: Class names.
        spurious_feature: The region attribute used for groups (``None`` without one).
        image: Whole-image accuracies.
        core_region: Core-region accuracies (``None`` without ``region_attributes``).
        n_images: Images scored.
        templates: The prompt templates used.
        region_mode: How core regions were embedded.
    """

    split: str | None
    classes: tuple[str, ...]
    spurious_feature: str | None
    image: AccuracyReport
    core_region: AccuracyReport | None
    n_images: int
    templates: tuple[str, ...]
    region_mode: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    def summary_metrics(self) -> dict[str, float | None]:
        """The four metrics of docs/algorithm.md §4 (the RaVL paper's Table 3), keyed by their names.

        ``Image Overall`` and ``Image Worst-Group`` score whole images; ``Region Overall`` and
        ``Region Worst-Group`` score the core region only. Worst-group is the lowest accuracy
        over the class x feature-present/absent groups. ``None`` where a metric is undefined
        (no spurious feature, or no core regions).

        Example:
            >>> res.summary_metrics()  # doctest: +SKIP
            {'Image Overall': 0.943, 'Image Worst-Group': 0.82, 'Region Overall': 0.964, 'Region Worst-Group': 0.88}
        """
        def wg(rep: AccuracyReport | None) -> float | None:
            return None if rep is None or rep.worst_group is None else rep.worst_group.accuracy

        return {"Image Overall": self.image.overall, "Image Worst-Group": wg(self.image),
                "Region Overall": self.core_region.overall if self.core_region is not None else None,
                "Region Worst-Group": wg(self.core_region)}


#: Names of :meth:`EvaluationResult.summary_metrics`, in table order.
SUMMARY_METRICS = ("Image Overall", "Image Worst-Group", "Region Overall", "Region Worst-Group")


def accuracy_report(zs, labels: np.ndarray, classes: Sequence[str],
                    feature_present: np.ndarray | None) -> AccuracyReport:
    """:func:`group_accuracies` on a :class:`~ravl.zeroshot.ZeroShotResult`."""
    return group_accuracies(zs.predictions, labels, classes, feature_present)


def evaluate(model, dataset, *, split: str | None = "test", classes: Sequence[str] | None = None,
             templates: Sequence[str] | None = None, spurious_feature: str | None = None,
             region_mode: str | None = None, regions: bool = True, batch_size: int = 128,
             feature_present: Sequence[bool] | np.ndarray | None = None, progress: bool = True) -> EvaluationResult:
    """Zero-shot accuracy of ``model`` on ``dataset`` overall, per class and per group.

    Args:
        model: A :class:`~ravl.models.VisionLanguageModel`.
        dataset: A :class:`~ravl.data.RegionDataset` with ``label`` on every row.
        split: Split to evaluate (``None``: every row).
        classes: Class names (default: the dataset's classes).
        templates: Prompt templates (default: :func:`ravl.zeroshot.default_templates`).
        spurious_feature: Region attribute that marks the spurious feature. Default: inferred
            when the ``region_attributes`` hold exactly one value that is neither a class name
            nor ``"empty"``, or, with several (distractor objects), from the ``setting.json``
            of a synthetic setting the dataset folder belongs to.
        region_mode: Region embedding mode for the core-region metrics.
        regions: Also score core regions when ``region_attributes`` are present.
        batch_size: Images per forward pass.
        feature_present: ``[N]`` bool, which images of the split carry the feature, when the
            groups come from elsewhere than ``region_attributes`` (e.g. the discovered feature,
            :func:`groups_from_discovery`); ``spurious_feature`` then names it in the tables.
        progress: Show progress bars.

    Returns:
        An :class:`EvaluationResult`; ``meta["groups_from"]`` says where the groups came from
        (``"region_attributes"``, ``"given"`` or ``None`` without groups).
    """
    check_model(model, "evaluate")
    ds = check_dataset(dataset, "evaluate").labelled_split(split, classes=classes or None, purpose="evaluation")
    classes = tuple(ds.classes)
    labels = ds.label_indices
    templates = tuple(templates or default_templates(model, classes))

    has_attr = all(r.region_attributes is not None for r in ds.records)
    present = None
    groups_from = None
    if feature_present is not None:
        present = np.asarray(feature_present)
        if present.shape != (len(ds),) or (present.size and present.dtype != np.bool_):
            raise InvalidParameterError(f"The 'feature_present' parameter of evaluate must be a bool array with one "
                                        f"entry per image of the split ({len(ds)}). Got shape {present.shape}, dtype "
                                        f"{present.dtype}.")
        spurious_feature = spurious_feature or "discovered feature"
        groups_from = "given"
    elif has_attr:
        attrs = sorted({a for r in ds.records for a in r.region_attributes})
        if spurious_feature is None:
            spurious_feature = infer_spurious_feature(attrs, classes)
            candidates = sorted(set(attrs) - set(classes) - {EMPTY_ATTRIBUTE})
            if spurious_feature is None and len(candidates) > 1 and getattr(dataset, "root", None) is not None:
                planted = planted_feature(dataset.root)    # a synthetic setting with distractors records it
                spurious_feature = planted if planted in candidates else None
            if spurious_feature is None and len(candidates) > 1:
                warnings.warn(f"No group metrics: several region attributes could be the spurious feature "
                              f"({', '.join(map(repr, candidates))}); name the one to group by with "
                              "spurious_feature= (--spurious-feature).", RavlWarning, stacklevel=2)
        elif spurious_feature not in {a for r in dataset.records if r.region_attributes for a in r.region_attributes}:
            close = difflib.get_close_matches(spurious_feature, attrs, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise InvalidParameterError(f"The spurious feature {spurious_feature!r} is not a region attribute of "
                                        f"{dataset.root}.{hint} The attributes are: {', '.join(attrs)}.")
        if spurious_feature is not None:
            present = np.array([spurious_feature in r.region_attributes for r in ds.records])
            groups_from = "region_attributes"
            if not present.any():
                warnings.warn(f"No region of split {split!r} carries the attribute {spurious_feature!r}; "
                              "group metrics are for 'absent' only.", RavlWarning, stacklevel=2)
    elif spurious_feature is not None:
        raise DatasetError(f"--spurious-feature {spurious_feature!r} needs 'region_attributes' on every row of "
                           f"{dataset.root}/metadata.jsonl; add them or drop the option.")
    elif any(r.region_attributes is not None for r in ds.records):
        n = sum(r.region_attributes is not None for r in ds.records)
        warnings.warn(f"No group metrics: only {n} of the {len(ds)} images of the split have region_attributes; "
                      "group metrics need them on every row. Add them to the others, or form the groups from a "
                      "discovered feature (feature_present=, `ravl evaluate --groups-from discovery.json`).",
                      RavlWarning, stacklevel=2)

    img = zero_shot_classify(model, ds, classes, templates=templates, batch_size=batch_size, progress=progress)
    image_report = accuracy_report(img, labels, classes, present)

    core_report = None
    mode = None
    if regions and has_attr:
        table = ds.region_table()
        core_rows = np.full(len(ds), -1)
        for k, (i, attr) in enumerate(zip(table.image_index, table.attributes)):
            if core_rows[i] < 0 and attr == classes[labels[i]]:
                core_rows[i] = k
        have = core_rows >= 0
        if have.any():
            mode = region_mode or DEFAULT_REGION_MODE
            reg = zero_shot_classify(model, ds, classes, templates=templates, level="region",
                                     region_mode=mode, batch_size=batch_size, progress=progress)
            core_pred = np.where(have, reg.predictions[np.maximum(core_rows, 0)], -1)
            core_labels = np.where(have, labels, -1)
            core_report = group_accuracies(core_pred, core_labels, classes, present)
    return EvaluationResult(split=split, classes=classes, spurious_feature=spurious_feature,
                            image=image_report, core_region=core_report, n_images=len(ds),
                            templates=templates, region_mode=mode, meta={"groups_from": groups_from})


def groups_from_discovery(model, dataset, discovery, *, split: str | None = "test", features: Any = "class",
                          region_mode: str | None = None, assignment_quantile: float | None = 0.05,
                          eval_dataset: Any = None, allow_data_change: bool = False, progress: bool = True
                          ) -> tuple[np.ndarray, str]:
    """Which images of a split carry the discovered feature: ``(feature_present [N], name)``.

    For data without ``region_attributes``: every region of the split is assigned to the
    discovery's medoids exactly as mitigation labels training regions
    (:func:`ravl.mitigation.labelling.label_regions`, with the model discovery audited); an image
    carries the feature when one of its regions joins a chosen feature's cluster. Pass the result
    to :func:`evaluate` as ``feature_present`` to get class x feature groups and worst-group
    accuracy without annotations.

    Args:
        model: The model discovery audited (it defines the clusters).
        dataset: The dataset to group (a ``label`` on every row of ``split``).
        discovery: A :class:`~ravl.discovery.DiscoveryResult` or the path of ``discovery.json``.
        split: The split to group.
        features: Which discovered features (see :func:`ravl.mitigation.labelling.select_features`).
        region_mode: Region embedding mode (default: the discovery's).
        assignment_quantile: Labelling threshold (see ``label_regions``).
        eval_dataset: The dataset discovery ran on, if it moved.
        allow_data_change: Accept a discovery split that changed since discovery.
        progress: Show progress bars.

    Returns:
        ``feature_present`` in the order of ``dataset.subset(split)``, and a name such as
        ``"discovered feature #1 ('nine')"``.
    """
    lab = label_regions(model, dataset, discovery, features=features, region_mode=region_mode, split=split,
                        eval_dataset=eval_dataset, assignment_quantile=assignment_quantile,
                        allow_data_change=allow_data_change, progress=progress)
    ranks = ", ".join(f"#{r}" for r in lab.feature_ranks)
    cls = sorted(set(lab.feature_classes))
    name = f"discovered feature {ranks} ({', '.join(map(repr, cls))})"
    return lab.feature_present.copy(), name


@dataclass(frozen=True)
class SettingValidity:
    """Did the fine-tuned model learn the planted correlation? (docs/algorithm.md §3)

    The rule: on the evaluation ``val`` split, where the feature is independent of the class,
    the spurious class's zero-shot image accuracy with the feature minus without it must be at
    least ``min_gap`` (default 0.1).
    """

    valid: bool
    spurious_class: str
    accuracy_with: float
    accuracy_without: float
    n_with: int
    n_without: int
    gap: float
    min_gap: float
    rule: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_setting_validity(result: EvaluationResult, spurious_class: str, *, min_gap: float = 0.1
                           ) -> SettingValidity:
    """Apply the validity rule to an :class:`EvaluationResult` (best on the ``val`` split).

    Args:
        result: From :func:`evaluate` with a spurious feature.
        spurious_class: The class the feature was correlated with during fine-tuning.
        min_gap: Smallest accuracy gap (with - without) that counts as a learned correlation.

    Raises:
        ValueError: When the result has no group for the spurious class with and without the
            feature.
    """
    min_gap = check_float(min_gap, "min_gap", "check_setting_validity", low=0, high=1)
    w = result.image.group(spurious_class, True)
    wo = result.image.group(spurious_class, False)
    if w is None or wo is None:
        raise InvalidParameterError(
            f"The validity rule needs images of class {spurious_class!r} both with and without the spurious "
            f"feature {result.spurious_feature!r}; split {result.split!r} has "
            f"{0 if w is None else w.n} with and {0 if wo is None else wo.n} without.")
    gap = w.accuracy - wo.accuracy
    rule = (f"accuracy({spurious_class!r} | {result.spurious_feature} present) - "
            f"accuracy({spurious_class!r} | absent) >= {min_gap} on split {result.split!r}")
    # A tolerance so that e.g. 0.6 - 0.4 counts as a gap of 0.2.
    return SettingValidity(bool(gap >= min_gap - 1e-9), spurious_class, w.accuracy, wo.accuracy, w.n, wo.n,
                           float(gap), min_gap, rule)
