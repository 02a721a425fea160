"""Region attributes: the ground-truth strings of ``region_attributes`` (used only to score).

A region's attribute names what it shows: a class name (the *core* region of an image of that
class), a spurious feature's name, or :data:`EMPTY_ATTRIBUTE` for a region showing nothing of
interest.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["EMPTY_ATTRIBUTE", "infer_spurious_feature"]

#: The attribute of a region that shows nothing of interest (the synthetic settings' black quadrants).
EMPTY_ATTRIBUTE = "empty"


def infer_spurious_feature(attributes: Iterable[str], classes: Sequence[str]) -> str | None:
    """The one region attribute that is neither a class name nor :data:`EMPTY_ATTRIBUTE`, if exactly one.

    Example:
        >>> infer_spurious_feature(["nine", "empty", "red_square", "one"], ["one", "nine"])
        'red_square'
        >>> infer_spurious_feature(["nine", "empty"], ["one", "nine"]) is None
        True
    """
    cand = sorted(set(attributes) - set(classes) - {EMPTY_ATTRIBUTE})
    return cand[0] if len(cand) == 1 else None
