"""Discovery metrics: Precision@k of a ranked list of regions (docs/algorithm.md §3)."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence

from ravl.exceptions import InvalidParameterError
from ravl.utils.validation import check_int

__all__ = ["precision_at_k"]


def precision_at_k(ranked: Sequence[int] | Sequence[str], truth: str | Iterable[str], k: int = 10, *,
                   region_attributes: Sequence[str] | None = None) -> float:
    """Fraction of the top ``k`` ranked regions that show the ground-truth feature.

    The denominator is always ``k``: when fewer than ``k`` regions are ranked, the missing places
    count as misses (a method that returns 3 correct regions scores 0.3 at k = 10, not 1.0). This
    is the usual information-retrieval definition and never rewards returning less.

    Args:
        ranked: Region indices in rank order (then ``region_attributes`` is required), or the
            regions' attributes in rank order, e.g.
            ``[region_attributes[i] for i in result.ranked_regions()]``.
        truth: The ground-truth spurious attribute, or several (a region counts if its attribute
            is any of them).
        k: Cut-off (>= 1).
        region_attributes: ``[R]`` ground-truth attribute of every region (``RegionTable.attributes``).

    Returns:
        Precision in [0, 1].

    Raises:
        ValueError: ``k`` < 1, empty ``truth``, or ``ranked`` holding indices without
            ``region_attributes`` (or out of range).

    Example:
        >>> precision_at_k(["red_square", "nine", "red_square"], "red_square", k=4)
        0.5
        >>> precision_at_k([2, 0], "red_square", k=2, region_attributes=["red_square", "one", "red_square"])
        1.0
    """
    caller = "precision_at_k"
    k = check_int(k, "k", caller, low=1)
    positives = {truth} if isinstance(truth, str) else set(truth)
    if not positives or not all(isinstance(t, str) for t in positives):
        raise InvalidParameterError(f"The 'truth' parameter of {caller} must be an attribute name or a non-empty "
                                    f"collection of names. Got {truth!r} instead.")
    top = list(ranked)[:k]
    if region_attributes is not None:
        attrs = list(region_attributes)
        out = []
        for i in top:
            if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= int(i) < len(attrs):
                raise InvalidParameterError(f"The 'ranked' parameter of {caller} must hold region indices in "
                                            f"[0, {len(attrs)}) when region_attributes is given. Got {i!r}.")
            out.append(attrs[int(i)])
        top = out
    elif any(not isinstance(a, str) for a in top):
        raise InvalidParameterError(f"The 'ranked' parameter of {caller} holds region indices; pass region_attributes "
                                    "to look up their ground truth, or pass the attributes themselves.")
    return sum(a in positives for a in top) / k
