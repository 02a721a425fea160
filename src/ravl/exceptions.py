"""Exceptions and warnings raised by ravl.

Every exception derives from :class:`RavlError` and also from the builtin that matches
its meaning, so ``except ValueError`` keeps working for callers who do not know ravl.
"""

from __future__ import annotations

__all__ = [
    "RavlError",
    "DatasetError",
    "DatasetValidationError",
    "ModelNotFoundError",
    "MissingDependencyError",
    "CheckpointError",
    "RavlWarning",
]


class RavlError(Exception):
    """Base class of every error raised by ravl."""


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


class ModelNotFoundError(RavlError, KeyError):
    """An unknown model name was passed to :func:`ravl.load_model`."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class MissingDependencyError(RavlError, ImportError):
    """An optional backend was requested but its extra is not installed."""


class CheckpointError(RavlError, OSError):
    """A checkpoint folder is missing, incomplete or incompatible."""


class RavlWarning(UserWarning):
    """Base class of warnings emitted by ravl."""
