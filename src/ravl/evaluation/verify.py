"""Did mitigation remove the shortcut discovery found? One check on the split discovery examined.

For every feature of the original discovery, the images of that split that carry it are the
images with a region in its cluster (``discovery.region_clusters``: exactly the regions discovery
saw, no re-embedding). The audited model (before) and the mitigated model (after) classify the
split zero-shot with the same prompts, and the feature's table is recomputed for both: per class,
accuracy with and without the feature and the weighted gap ``Δ = w·(acc_with − acc_without)``
(docs/algorithm.md §2.3), and ``G = Σ_y |Δ_y|``. Optionally discovery runs again on the mitigated
model, and each new feature is matched to the original ones by the overlap of their regions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ravl.discovery.pipeline import discover_from_model
from ravl.discovery.result import DiscoveryResult
from ravl.exceptions import InvalidParameterError
from ravl.mitigation.labelling import discovery_dataset
from ravl.zeroshot import default_templates, zero_shot_classify

__all__ = ["feature_presence", "feature_table", "verify_mitigation"]


def feature_presence(discovery: DiscoveryResult, image_index: np.ndarray, n_images: int) -> dict[int, np.ndarray]:
    """``{rank: [N] bool}``: which images have a region in each discovered feature's cluster.

    Args:
        discovery: The discovery result (``region_clusters`` holds every region's cluster).
        image_index: ``[R]`` image of every region, in discovery's region order.
        n_images: N, the images of the split.
    """
    clusters = np.asarray(discovery.region_clusters)
    if clusters.shape != (len(image_index),):
        raise InvalidParameterError(f"The discovery has {clusters.shape[0]} region clusters but the split has "
                                    f"{len(image_index)} regions; it is not the split discovery examined.")
    out = {}
    for f in discovery.features:
        present = np.zeros(n_images, dtype=bool)
        present[np.asarray(image_index)[clusters == f.cluster]] = True
        out[f.rank] = present
    return out


def feature_table(predictions: np.ndarray, labels: np.ndarray, present: np.ndarray,
                  classes: Sequence[str]) -> dict[str, Any]:
    """Per class: accuracy with / without the feature, their counts and the weighted gap; and ``G``.

    ``w = 2·min(n_with, n_without) / (n_with + n_without)``, ``Δ = w·(acc_with − acc_without)``;
    classes missing from either side are left out (as in discovery).
    """
    rows = []
    for c, name in enumerate(classes):
        m_in, m_out = (labels == c) & present, (labels == c) & ~present
        n_in, n_out = int(m_in.sum()), int(m_out.sum())
        if not n_in or not n_out:
            continue
        acc_in = float((predictions[m_in] == c).mean())
        acc_out = float((predictions[m_out] == c).mean())
        w = 2 * min(n_in, n_out) / (n_in + n_out)
        rows.append({"class": name, "acc_with": acc_in, "n_with": n_in, "acc_without": acc_out, "n_without": n_out,
                     "gap": w * (acc_in - acc_out)})
    return {"table": rows, "G": float(sum(abs(r["gap"]) for r in rows))}


def verify_mitigation(before_model, after_model, discovery: DiscoveryResult | str, *, eval_dataset: Any = None,
                      templates: Sequence[str] | None = None, max_features: int = 5, rediscover: bool = True,
                      random_state: int = 0, allow_data_change: bool = False, progress: bool = True
                      ) -> dict[str, Any]:
    """Each discovered feature's tables before and after mitigation, and what discovery finds after.

    Args:
        before_model: The audited model (discovery's).
        after_model: The mitigated model.
        discovery: The original discovery (result or ``discovery.json``).
        eval_dataset: The dataset discovery ran on, if it moved from ``meta["data"]``.
        templates: Prompt templates (default: the ones discovery recorded, else the defaults).
        max_features: Original features checked, in rank order.
        rediscover: Also run RaVL discovery on the mitigated model (same split, region mode,
            prompts and seed).
        random_state: Seed of the rediscovery.
        allow_data_change: Accept a split that changed since discovery.
        progress: Show progress bars.

    Returns:
        A JSON-ready dict: ``split``, ``data``, ``templates``, ``features`` (per original feature:
        ``rank``, ``class``, ``n_images_with``, ``before`` / ``after`` tables from
        :func:`feature_table`, and ``class_before`` / ``class_after``, the row of the feature's
        own class), and ``rediscovery`` (``None`` or the new features with the original feature
        each overlaps most).
    """
    if not isinstance(discovery, DiscoveryResult):
        discovery = DiscoveryResult.from_json(discovery)
    ds = discovery_dataset(discovery, eval_dataset, allow_data_change=allow_data_change).labelled_split(None, classes=list(discovery.classes) or None,
                                                                   purpose="the verify step")
    table = ds.region_table()
    presence = feature_presence(discovery, table.image_index, len(ds))
    labels = ds.label_indices
    classes = list(ds.classes)
    templates = tuple(templates or discovery.meta.get("templates") or default_templates(before_model, classes))
    preds = {which: zero_shot_classify(m, ds, classes, templates=templates, progress=progress).predictions
             for which, m in (("before", before_model), ("after", after_model))}
    feats = []
    for f in discovery.features[:max_features]:
        present = presence[f.rank]
        entry: dict[str, Any] = {"rank": f.rank, "class": f.class_name, "cluster": f.cluster,
                                 "n_images_with": int(present.sum())}
        for which in ("before", "after"):
            t = feature_table(preds[which], labels, present, classes)
            entry[which] = t
            entry[f"class_{which}"] = next((r for r in t["table"] if r["class"] == f.class_name), None)
        feats.append(entry)
    redo = None
    if rediscover:
        new = discover_from_model(after_model, ds, split=None, classes=classes, templates=templates,
                                  region_mode=discovery.meta.get("region_mode"), random_state=random_state,
                                  progress=progress, meta={"verify_of": discovery.meta.get("checkpoint")})
        old_sets = {f.rank: set(np.flatnonzero(np.asarray(discovery.region_clusters) == f.cluster).tolist())
                    for f in discovery.features}
        new_feats = []
        for g in new.features[:max_features]:
            members = set(np.flatnonzero(np.asarray(new.region_clusters) == g.cluster).tolist())
            best, best_j = None, 0.0
            for rank, s in old_sets.items():
                j = len(members & s) / max(1, len(members | s))
                if j > best_j:
                    best, best_j = rank, j
            new_feats.append({"rank": g.rank, "class": g.class_name, "gap": g.gap, "n_regions": len(members),
                              "matches_original": best, "jaccard": best_j})
        redo = {"status": new.status, "message": new.message, "n_features": len(new.features),
                "features": new_feats}
    return {"split": discovery.meta.get("split"), "data": discovery.meta.get("data"), "templates": list(templates),
            "region_source": discovery.meta.get("region_source", "boxes"), "features": feats, "rediscovery": redo}
