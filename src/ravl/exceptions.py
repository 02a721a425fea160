"""Exceptions and warnings raised by ravl.

Every exception derives from :class:`RavlError` and also from the builtin that matches
its meaning, so ``except ValueError`` keeps working for callers who do not know ravl.
"""

from __future__ import annotations

__all__ = [
    "RavlError",
    "InvalidParameterError",
    "UnknownNameError",
    "DatasetError",
    "DatasetValidationError",
    "ModelNotFoundError",
    "MissingDependencyError",
    "CheckpointError",
    "RegionPoolingNotSupportedError",
    "RavlWarning",
]


class RavlError(Exception):
    """Base class of every error raised by ravl."""


class InvalidParameterError(RavlError, ValueError, TypeError):
    """A function or command got a parameter value it cannot use.

    Raised by :mod:`ravl.utils.validation` in one message style ("The 'k' parameter of discover
    must be an int in [1, inf). Got 0 instead."). It is both a ``ValueError`` and a
    ``TypeError``, so callers can catch whichever matches the mistake they expect.
    """


class UnknownNameError(RavlError, KeyError, ValueError):
    """A name was looked up in a registry (models, discovery or mitigation methods, features)
    that does not hold it; the message lists what exists and suggests close matches.

    A ``KeyError`` (a failed lookup) and a ``ValueError`` (a bad parameter value) at once.
    """

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class DatasetError(RavlError, ValueError):
    """A dataset folder or its ``metadata.jsonl`` cannot be used as given."""


class DatasetValidationError(DatasetError):
    """One or more rows of a dataset failed validation.

    Attributes:
        problems: Every problem found, each a human-readable line naming the file, line,
            field and the fix. The loader collects all of them before raising.
    """

    def __init__(self, problems: list[str], path: str | None = None):
        self.problems = list(problems)
        self.path = path
        head = f"{len(self.problems)} problem(s) in dataset {path}:" if path else (
            f"{len(self.problems)} problem(s) in dataset:")
        shown = self.problems[:50]
        more = len(self.problems) - len(shown)
        lines = [head, *("  - " + p for p in shown)]
        if more > 0:
            lines.append(f"  ... and {more} more")
        super().__init__("\n".join(lines))


class ModelNotFoundError(UnknownNameError):
    """An unknown model name was passed to :func:`ravl.load_model`."""


class MissingDependencyError(RavlError, ImportError):
    """An optional backend was requested but its extra is not installed."""


class CheckpointError(RavlError, OSError):
    """A checkpoint folder is missing, incomplete or incompatible."""


class RegionPoolingNotSupportedError(RavlError, NotImplementedError):
    """The model cannot pool regions from one backbone pass (region mode ``roi``); ``masked`` and
    ``crop`` work for every model."""


class RavlWarning(UserWarning):
    """Base class of warnings emitted by ravl."""
