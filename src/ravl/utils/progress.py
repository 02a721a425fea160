"""Progress bars for every long step (tqdm), silenced with ``RAVL_PROGRESS=0`` or ``disable=True``."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

__all__ = ["progress", "progress_enabled"]


def progress_enabled() -> bool:
    """Whether progress bars are on (``RAVL_PROGRESS=0`` turns them off)."""
    return os.environ.get("RAVL_PROGRESS", "1") not in ("0", "false", "no")


def progress(iterable: Iterable[T] | None = None, *, desc: str = "", total: int | None = None,
             disable: bool | None = None, leave: bool = False, **kwargs: Any):
    """Wrap ``iterable`` in a tqdm progress bar written to stderr.

    ``RAVL_PROGRESS=0`` turns every bar off, whatever ``disable`` says (``ravl --quiet`` sets it).
    """
    disable = bool(disable) or not progress_enabled()
    return tqdm(iterable, desc=desc, total=total, disable=disable, leave=leave,
                dynamic_ncols=True, **kwargs)
