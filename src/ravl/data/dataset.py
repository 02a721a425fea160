"""Dataset folders: ``metadata.jsonl`` (Hugging Face ``imagefolder`` convention) plus images.

See docs/dataset-format.md for the user-facing description.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from ravl.utils.io import atomic_write_text

DEFAULT_GRID = (2, 2)
SPLITS = ("train", "val", "test")
METADATA_FILE = "metadata.jsonl"


def grid_boxes(width: int, height: int, grid: tuple[int, int] = DEFAULT_GRID
               ) -> list[tuple[float, float, float, float]]:
    """Equal grid of ``rows x cols`` boxes covering a ``width x height`` image, row-major.

    Example:
        >>> grid_boxes(56, 56, (2, 2))[1]
        (28.0, 0.0, 56.0, 28.0)
    """
    rows, cols = grid
    out = []
    for r in range(rows):
        for c in range(cols):
            out.append((width * c / cols, height * r / rows, width * (c + 1) / cols, height * (r + 1) / rows))
    return out


def write_metadata(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Atomically write ``rows`` as ``metadata.jsonl``.

    Args:
        path: A dataset folder (``metadata.jsonl`` is written inside it) or the file path itself.
        rows: One JSON-serialisable dict per image.

    Returns:
        Path of the written file.
    """
    path = Path(path)
    if path.suffix != ".jsonl":
        path = path / METADATA_FILE
    text = "".join(json.dumps(row, separators=(", ", ": ")) + "\n" for row in rows)
    return atomic_write_text(path, text)
