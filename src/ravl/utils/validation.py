"""Parameter validation with one message style (scikit-learn's).

Example message: "The 'n_clusters' parameter of discover must be an int in [1, inf). Got 0 instead."
Every check raises :class:`~ravl.exceptions.InvalidParameterError` (a ``ValueError`` and a
``TypeError``), which the command line reports as one ``error:`` line.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np

from ravl.exceptions import InvalidParameterError

__all__ = ["InvalidParameterError", "check_int", "check_float", "check_choice", "check_random_state"]


def _fmt_interval(low: float | None, high: float | None, closed: str) -> str:
    left = "[" if closed in ("both", "left") else "("
    right = "]" if closed in ("both", "right") else ")"
    lo = "-inf" if low is None else repr(low)
    hi = "inf" if high is None else repr(high)
    if low is None:
        left = "("
    if high is None:
        right = ")"
    return f"{left}{lo}, {hi}{right}"


def check_int(value: Any, name: str, caller: str, *, low: int | None = None,
              high: int | None = None, closed: str = "both") -> int:
    """Return ``value`` as an int or raise :class:`InvalidParameterError` in the house message style."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok:
        v = int(value)
        ok = (low is None or (v >= low if closed in ("both", "left") else v > low)) and (
            high is None or (v <= high if closed in ("both", "right") else v < high))
    if not ok:
        raise InvalidParameterError(
            f"The '{name}' parameter of {caller} must be an int in "
            f"{_fmt_interval(low, high, closed)}. Got {value!r} instead.")
    return int(value)


def check_float(value: Any, name: str, caller: str, *, low: float | None = None,
                high: float | None = None, closed: str = "both") -> float:
    """Return ``value`` as a float or raise :class:`InvalidParameterError` in the house message style."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = not math.isnan(v) and (
            low is None or (v >= low if closed in ("both", "left") else v > low)) and (
            high is None or (v <= high if closed in ("both", "right") else v < high))
    if not ok:
        raise InvalidParameterError(
            f"The '{name}' parameter of {caller} must be a float in "
            f"{_fmt_interval(low, high, closed)}. Got {value!r} instead.")
    return float(value)


def check_choice(value: Any, name: str, caller: str, choices: Iterable[Any]) -> Any:
    """Check that ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        opts = ", ".join(repr(c) for c in choices)
        raise InvalidParameterError(
            f"The '{name}' parameter of {caller} must be one of {{{opts}}}. Got {value!r} instead.")
    return value


def check_random_state(seed: Any):
    """Turn ``seed`` (None, int or Generator) into a ``numpy.random.Generator``.

    Library code never seeds global state; it draws from the generator returned here.
    """
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or isinstance(seed, numbers.Integral):
        return np.random.default_rng(seed)
    raise InvalidParameterError(
        f"The 'random_state' parameter must be None, an int or a numpy Generator. Got {seed!r} instead.")
