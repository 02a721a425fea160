"""Region-attribute vocabulary shared by every dataset builder and metric.

``region_attributes`` (docs/dataset-format.md) names what each region of an image shows. It is
ground truth, read only to score discovery (Precision@k) and the group metrics. Builders use the
class word for the object of the image's class, the spurious feature's name (or COCO category) for
the feature, and :data:`EMPTY_ATTRIBUTE` for a region that shows neither.

Example:
    >>> from ravl.data.attributes import EMPTY_ATTRIBUTE
    >>> EMPTY_ATTRIBUTE
    'empty'
"""

from __future__ import annotations

__all__ = ["EMPTY_ATTRIBUTE"]

#: Region attribute of a region that shows nothing of interest (no class object, no feature).
EMPTY_ATTRIBUTE = "empty"
