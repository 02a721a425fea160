"""Spurious features: painters that draw an RGB tile into one quadrant of a synthetic image.

A *feature* is what the synthetic benchmark (:func:`ravl.data.synthetic.make_spurious_benchmark`)
ties to one class: it is painted into a quadrant of the image next to the digit, and the region
holding it is labelled with the feature's name in ``region_attributes``. The built-in features
differ in nature so that discovery can be tested on more than one kind of shortcut:

============== ========= ================================================================
name           kind      what it looks like
============== ========= ================================================================
``red_square`` colour    the whole quadrant solid pure red (255, 0, 0), as in the reference
``ring``       shape     a yellow (255, 255, 0) circle outline on black
``stripes``    texture   cyan (0, 255, 255) diagonal stripes on black
============== ========= ================================================================

Register your own with :func:`register_feature`; a painter takes the tile side in pixels and
returns a ``[size, size, 3]`` uint8 array. Painters are deterministic: the same feature looks the
same in every image, like the reference's red square.

Example:
    >>> tile = get_feature("red_square").render(28)
    >>> tile.shape, tile[0, 0].tolist()
    ((28, 28, 3), [255, 0, 0])
    >>> {"red_square", "ring", "stripes"} <= set(list_features())
    True
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ravl.data.attributes import EMPTY_ATTRIBUTE
from ravl.data.digits import DIGIT_CLASSES
from ravl.exceptions import InvalidParameterError
from ravl.utils.registry import Registry
from ravl.utils.validation import check_int

__all__ = [
    "BUILTIN_FEATURES",
    "FEATURES",
    "FeaturePainter",
    "SpuriousFeature",
    "register_feature",
    "get_feature",
    "list_features",
    "render_feature",
]

#: A painter: ``painter(size) -> [size, size, 3]`` uint8 RGB array.
FeaturePainter = Callable[[int], np.ndarray]

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
#: Attribute words the synthetic images use for the other regions; a feature may not take them.
_RESERVED = frozenset({EMPTY_ATTRIBUTE, *DIGIT_CLASSES})


@dataclass(frozen=True)
class SpuriousFeature:
    """A registered spurious feature.

    Attributes:
        name: Registry name, also the region attribute of the quadrant that holds it.
        painter: Function ``painter(size) -> [size, size, 3]`` uint8 array.
        kind: Short description of its nature (``"colour"``, ``"shape"``, ``"texture"``, ...).
        description: One line saying what it looks like.
    """

    name: str
    painter: FeaturePainter = field(repr=False, compare=False)
    kind: str = ""
    description: str = ""

    def render(self, size: int = 28) -> np.ndarray:
        """Paint the feature as a ``[size, size, 3]`` uint8 RGB tile (a fresh, writable copy).

        Args:
            size: Side of the tile in pixels (the quadrant size: 28 for 56x56 images).

        Raises:
            ValueError: When ``size`` is not an int >= 4, or the painter returns a wrong array.
        """
        size = check_int(size, "size", "SpuriousFeature.render", low=4)
        return _render_cached(self.name, self.painter, size).copy()


#: Every registered spurious feature.
FEATURES: Registry[SpuriousFeature] = Registry(
    "spurious feature", hint="New features are added with ravl.data.features.register_feature.")


@functools.lru_cache(maxsize=64)
def _render_cached(name: str, painter: FeaturePainter, size: int) -> np.ndarray:
    tile = np.asarray(painter(size))
    if tile.shape != (size, size, 3):
        raise InvalidParameterError(f"The painter of feature {name!r} must return a [{size}, {size}, 3] array for "
                                    f"size={size}. Got shape {tuple(tile.shape)} instead.")
    if tile.dtype != np.uint8:
        if not np.issubdtype(tile.dtype, np.number) or tile.min() < 0 or tile.max() > 255:
            raise InvalidParameterError(f"The painter of feature {name!r} must return uint8 values in [0, 255]. "
                                        f"Got dtype {tile.dtype} instead.")
        tile = np.round(tile).astype(np.uint8)
    tile.setflags(write=False)
    return tile


def register_feature(name: str, painter: FeaturePainter | None = None, *, kind: str = "",
                     description: str = "", override: bool = False):
    """Register a spurious-feature painter under ``name`` (usable as a decorator).

    Args:
        name: Lower-case name (letters, digits, ``_`` and ``-``); it becomes the region attribute
            of the quadrant holding the feature, so it may not be ``"empty"`` or a digit word.
        painter: Function ``painter(size) -> [size, size, 3]`` uint8 array. Omit it to use
            ``register_feature`` as a decorator.
        kind: Nature of the feature (``"colour"``, ``"shape"``, ``"texture"``, ...).
        description: One line saying what it looks like.
        override: Replace an existing feature of the same name instead of raising.

    Returns:
        The painter (so the decorator leaves the function usable).

    Raises:
        InvalidParameterError: When the name is malformed, reserved, or taken and ``override``
            is False.

    Example:
        >>> @register_feature("blue_square", kind="colour", description="solid blue", override=True)
        ... def _blue(size):
        ...     tile = np.zeros((size, size, 3), np.uint8)
        ...     tile[..., 2] = 255
        ...     return tile
        >>> get_feature("blue_square").render(8)[3, 3].tolist()
        [0, 0, 255]
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidParameterError("The 'name' parameter of register_feature must be a lower-case string of letters, digits, "
                                    f"'_' and '-' starting with a letter or digit. Got {name!r} instead.")
    if name in _RESERVED:
        raise InvalidParameterError(f"The 'name' parameter of register_feature may not be {name!r}: the synthetic "
                                    "images use 'empty' and the digit words as region attributes. Choose another name.")

    def _register(fn: FeaturePainter) -> FeaturePainter:
        if not callable(fn):
            raise InvalidParameterError(f"The 'painter' parameter of register_feature must be callable. Got {fn!r} "
                                        "instead.")
        FEATURES.register(name, SpuriousFeature(name=name, painter=fn, kind=kind, description=description),
                          description=description, override=override)
        _render_cached.cache_clear()
        return fn

    if painter is None:
        return _register
    return _register(painter)


def list_features() -> list[str]:
    """Names of the registered spurious features, in registration order."""
    return FEATURES.list()


def get_feature(name: str) -> SpuriousFeature:
    """The registered feature called ``name``.

    Raises:
        UnknownNameError: When no feature has that name; the message lists the known features
            and suggests close matches (also a ``ValueError``).
    """
    return FEATURES.get(name)


def render_feature(name: str, size: int = 28) -> np.ndarray:
    """Paint the registered feature ``name`` as a ``[size, size, 3]`` uint8 tile."""
    return get_feature(name).render(size)


# --------------------------------------------------------------------------------------------
# Built-in features
# --------------------------------------------------------------------------------------------

def _red_square(size: int) -> np.ndarray:
    tile = np.zeros((size, size, 3), np.uint8)
    tile[..., 0] = 255
    return tile


def _ring(size: int) -> np.ndarray:
    # Circle outline centred in the tile: outer radius 0.4*size, thickness ~size/9 (3 px at 28).
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[0:size, 0:size]
    r = np.hypot(yy - c, xx - c)
    outer = 0.4 * size
    inner = outer - max(1.0, size / 9.0)
    on = (r <= outer) & (r >= inner)
    tile = np.zeros((size, size, 3), np.uint8)
    tile[on] = (255, 255, 0)
    return tile


def _stripes(size: int) -> np.ndarray:
    # Diagonal stripes (top-right to bottom-left), period size/4.67 (6 px at 28), half of it lit.
    period = max(2, round(size * 6 / 28))
    width = max(1, period // 2)
    yy, xx = np.mgrid[0:size, 0:size]
    on = ((xx + yy) % period) < width
    tile = np.zeros((size, size, 3), np.uint8)
    tile[on] = (0, 255, 255)
    return tile


register_feature("red_square", _red_square, kind="colour",
                 description="the whole quadrant solid pure red (255, 0, 0), as in the reference")
register_feature("ring", _ring, kind="shape", description="a yellow (255, 255, 0) circle outline on black")
register_feature("stripes", _stripes, kind="texture", description="cyan (0, 255, 255) diagonal stripes on black")

#: The features ravl registers itself, in registration order (others are the user's).
BUILTIN_FEATURES: tuple[str, ...] = ("red_square", "ring", "stripes")
