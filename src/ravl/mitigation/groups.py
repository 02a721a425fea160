"""Groups and data orders of the group-aware baselines.

Groups are class × discovered-feature present/absent (``g = 2 * label + present``). Upsampling
is a data order, not a loss (:func:`group_balanced_indices`); VL-GDRO and Spurious-Aware draw
group-uniform samples (:func:`group_uniform_indices`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ravl.exceptions import InvalidParameterError
from ravl.mitigation.common import as_id_array
from ravl.utils.validation import check_int, check_random_state

__all__ = ["class_feature_groups", "group_balanced_indices", "group_uniform_weights", "group_uniform_indices"]


def _check_groups(groups: Any, caller: str) -> np.ndarray:
    arr = as_id_array(groups, "groups", caller)
    if arr.size == 0:
        raise InvalidParameterError(f"The 'groups' parameter of {caller} must hold at least one group id. Got an empty "
                                    "array.")
    return arr


def class_feature_groups(labels: Any, feature_present: Any, n_classes: int | None = None
                         ) -> tuple[np.ndarray, int]:
    """Class × feature-present/absent groups: ``g = 2 * label + present``.

    Args:
        labels: ``[N]`` class ids (>= 0).
        feature_present: ``[N]`` bool, whether the (discovered) spurious feature is in the image.
        n_classes: C (default ``max(labels) + 1``).

    Returns:
        ``(groups [N] int64, n_groups = 2 * C)``.
    """
    caller = "class_feature_groups"
    labels = as_id_array(labels, "labels", caller)
    present = np.asarray(feature_present)
    if present.shape != labels.shape or (present.size and present.dtype != np.bool_):
        raise InvalidParameterError(f"The 'feature_present' parameter of {caller} must be a bool array of shape "
                                    f"{labels.shape}. Got shape {present.shape}, dtype {present.dtype}.")
    c = int(labels.max()) + 1 if labels.size else 1
    if n_classes is not None:
        n_classes = check_int(n_classes, "n_classes", caller, low=max(c, 1))
        c = n_classes
    return labels * 2 + present.astype(np.int64), 2 * c


def group_balanced_indices(groups: Any, random_state: int | np.random.Generator | None = None) -> np.ndarray:
    """Upsampling: every group resampled up to the size of the largest group, then shuffled.

    Each group keeps all its members once and draws the missing ``n_max - n_g`` with
    replacement, so no image is dropped; groups with no member stay empty. The result has
    ``n_groups_present * n_max`` positions.

    Args:
        groups: ``[N]`` group id of every training image (e.g. :func:`class_feature_groups`).
        random_state: Seed or ``numpy.random.Generator`` (no global seeding).

    Returns:
        int64 positions into ``groups`` (an epoch's data order).
    """
    groups = _check_groups(groups, "group_balanced_indices")
    rng = check_random_state(random_state)
    ids, counts = np.unique(groups, return_counts=True)
    n_max = int(counts.max())
    parts = []
    for g, n in zip(ids, counts):
        members = np.flatnonzero(groups == g)
        parts.append(members)
        if n < n_max:
            parts.append(rng.choice(members, size=n_max - int(n), replace=True))
    out = np.concatenate(parts)
    return out[rng.permutation(len(out))].astype(np.int64)


def group_uniform_weights(groups: Any) -> np.ndarray:
    """Sampling probabilities that draw every present group equally often.

    ``w_i = 1 / (G_present * n_{g_i})``; they sum to 1. Usable with
    :class:`torch.utils.data.WeightedRandomSampler` or :func:`group_uniform_indices`.

    Returns:
        ``[N]`` float64 weights.
    """
    groups = _check_groups(groups, "group_uniform_weights")
    ids, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    return 1.0 / (len(ids) * counts[inverse].astype(np.float64))


def group_uniform_indices(groups: Any, n_samples: int | None = None,
                          random_state: int | np.random.Generator | None = None) -> np.ndarray:
    """Draw positions with replacement so that every group is equally likely (group-uniform sampling).

    Args:
        groups: ``[N]`` group ids.
        n_samples: How many positions to draw (default N, one epoch).
        random_state: Seed or ``numpy.random.Generator``.

    Returns:
        ``[n_samples]`` int64 positions.
    """
    weights = group_uniform_weights(groups)
    n = len(weights) if n_samples is None else check_int(n_samples, "n_samples", "group_uniform_indices", low=1)
    rng = check_random_state(random_state)
    return rng.choice(len(weights), size=n, replace=True, p=weights).astype(np.int64)
