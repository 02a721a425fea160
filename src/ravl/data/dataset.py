"""Dataset folders: ``metadata.jsonl`` (Hugging Face ``imagefolder`` convention) plus images.

A dataset folder holds a ``metadata.jsonl`` file with one JSON object per image and, optionally, a
``classes.txt`` file that fixes the class names and their order. Each object names its image
(``file_name``, relative to the folder) and may carry a ``caption`` (for fine-tuning), a ``label``
(a class name, for zero-shot evaluation), a ``split`` (``train``, ``val`` or ``test``), pixel
``boxes`` (the image's regions; an equal grid when absent) and ``region_attributes`` (ground truth
for scoring only). See docs/dataset-format.md for the user-facing description.

:func:`load_dataset` validates the whole file, collects every problem and raises a single
:class:`~ravl.exceptions.DatasetValidationError` whose lines each name the file, the line, the
field, what is wrong and how to fix it.

Shape symbols: N images, R regions, C classes.

Example:
    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> Image.new("RGB", (56, 56)).save(root / "a.png")
    >>> _ = write_metadata(root, [{"file_name": "a.png", "caption": "a nine", "label": "nine",
    ...                            "split": "train"}])
    >>> ds = load_dataset(root)
    >>> len(ds), ds.classes, ds[0].boxes[1]
    (1, ('nine',), (28.0, 0.0, 56.0, 28.0))
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import math
import numbers
import os
import posixpath
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np
from PIL import Image

from ravl.exceptions import DatasetError, DatasetValidationError, InvalidParameterError, RavlWarning
from ravl.utils.io import atomic_write_text
from ravl.utils.progress import progress
from ravl.utils.validation import check_choice, check_int

__all__ = [
    "metadata_rows",
    "check_dataset",
    "to_rgb",
    "DEFAULT_GRID",
    "SPLITS",
    "METADATA_FILE",
    "CLASSES_FILE",
    "FIELDS",
    "BOX_TOLERANCE",
    "ImageRecord",
    "RegionTable",
    "RegionDataset",
    "load_dataset",
    "grid_boxes",
    "parse_grid",
    "write_metadata",
    "write_classes",
]

logger = logging.getLogger(__name__)

DEFAULT_GRID = (2, 2)
SPLITS = ("train", "val", "test")
_FINGERPRINT_BYTES = 64 * 1024
METADATA_FILE = "metadata.jsonl"
CLASSES_FILE = "classes.txt"
#: Fields ravl reads from a row (any other key is allowed and ignored).
FIELDS = ("file_name", "caption", "label", "split", "boxes", "region_attributes")
#: Fields ``require_fields`` may name (``file_name`` is always required).
OPTIONAL_FIELDS = ("caption", "label", "split", "boxes", "region_attributes")
#: How far (pixels) a box may stick out of its image before it is a problem; such boxes are clipped.
BOX_TOLERANCE = 1e-3

_FORMAT_DOC = "docs/dataset-format.md"
_EXAMPLE_ROW = '{"file_name": "images/0001.png", "caption": "a photo of a cat", "label": "cat", "split": "train"}'
_SPLIT_ALIASES = {"validation": "val", "valid": "val", "dev": "val", "eval": "val", "training": "train",
                  "testing": "test", "tst": "test", "trn": "train"}
# Keys people write for ravl's fields (row keys are otherwise ignored; these get a hint).
_KEY_ALIASES = {
    "file_name": ("filename", "file", "fname", "image", "img", "path", "image_path", "filepath", "file_path"),
    "caption": ("captions", "text", "texts", "description", "sentence"),
    "label": ("labels", "class", "class_name", "category", "target"),
    "split": ("splits", "subset", "partition"),
    "boxes": ("box", "bbox", "bboxes", "bounding_boxes", "regions"),
    "region_attributes": ("region_attribute", "attributes", "region_labels", "regions_attributes"),
}


# --------------------------------------------------------------------------------------------
# Records, region table, dataset
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset: a validated row of ``metadata.jsonl``.

    Attributes:
        index: Position of the image in its dataset (``dataset[index] is`` this record).
        file_name: The path as written in ``metadata.jsonl`` (relative to the dataset folder).
        path: Absolute path of the image file.
        caption: Caption used for fine-tuning, or None when the row has none.
        label: Class name used for zero-shot evaluation, or None when the row has none.
        split: ``"train"``, ``"val"``, ``"test"`` or None when the row has none.
        width: Width of the stored image in pixels.
        height: Height of the stored image in pixels.
        boxes: Regions as ``(x0, y0, x1, y1)`` pixel boxes: the row's ``boxes`` (clipped to the
            image) or, when the row has none, the dataset's grid.
        boxes_from_grid: Whether ``boxes`` came from the grid.
        region_attributes: One ground-truth string per box, used only for scoring, or None.
        line: 1-based line number of the row in ``metadata.jsonl``.
    """

    index: int
    file_name: str
    path: Path
    caption: str | None
    label: str | None
    split: str | None
    width: int
    height: int
    boxes: tuple[tuple[float, float, float, float], ...]
    boxes_from_grid: bool
    region_attributes: tuple[str, ...] | None
    line: int

    @property
    def n_regions(self) -> int:
        """Number of regions (boxes) of the image."""
        return len(self.boxes)


@dataclass(frozen=True, eq=False)
class RegionTable:
    """Flat view of every region of a dataset, image by image, box by box (R rows).

    Attributes:
        image_index: ``[R]`` int64 position of each region's image in the dataset.
        region_index: ``[R]`` int64 index of the box within its image.
        boxes: ``[R, 4]`` float64 ``(x0, y0, x1, y1)`` pixel boxes.
        attributes: ``[R]`` region attributes when every image has ``region_attributes``,
            else None. Ground truth for scoring only.
    """

    image_index: np.ndarray
    region_index: np.ndarray
    boxes: np.ndarray
    attributes: list[str] | None

    def __len__(self) -> int:
        return int(self.image_index.shape[0])


class RegionDataset:
    """An immutable, list-like collection of :class:`ImageRecord` with a fixed class list.

    Build it with :func:`load_dataset`. Indexing returns records; :meth:`subset` returns another
    dataset with the same classes, so label indices agree across splits.

    Args:
        root: The dataset folder.
        records: The images, in order. Their ``index`` is reset to their position.
        classes: Class names, in order; every record's label must be one of them.
        grid: ``(rows, cols)`` of the grid used for rows without ``boxes``.
        metadata_path: The metadata file the records came from (default ``root/metadata.jsonl``).

    Example:
        >>> ds = RegionDataset("data", [], ("cat", "dog"))
        >>> len(ds), ds.classes, ds.label_indices.shape
        (0, ('cat', 'dog'), (0,))
    """

    __slots__ = ("_root", "_records", "_classes", "_grid", "_metadata_path")

    def __init__(self, root: str | os.PathLike, records: Iterable[ImageRecord], classes: Sequence[str],
                 grid: tuple[int, int] = DEFAULT_GRID, *, metadata_path: str | os.PathLike | None = None):
        grid = _check_grid(grid, "RegionDataset")
        classes = _check_classes(classes, "RegionDataset")
        recs = []
        for i, r in enumerate(records):
            if not isinstance(r, ImageRecord):
                raise InvalidParameterError("RegionDataset records must be ImageRecord instances. Got "
                                            f"{type(r).__name__}.")
            recs.append(r if r.index == i else dataclasses.replace(r, index=i))
        known = set(classes)
        unknown = sorted({r.label for r in recs if r.label is not None and r.label not in known})
        if unknown:
            raise DatasetError(f"Labels {unknown} are not among the classes {list(classes)}; add them to the "
                               "class list or fix the labels.")
        self._root = Path(root)
        self._records = tuple(recs)
        self._classes = classes
        self._grid = grid
        self._metadata_path = Path(metadata_path) if metadata_path is not None else self._root / METADATA_FILE

    # -- immutable attributes ----------------------------------------------------------------
    @property
    def root(self) -> Path:
        """The dataset folder."""
        return self._root

    @property
    def metadata_path(self) -> Path:
        """The ``metadata.jsonl`` file the records came from."""
        return self._metadata_path

    @property
    def records(self) -> tuple[ImageRecord, ...]:
        """The images, in order."""
        return self._records

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names, in order (``label_indices`` index into them)."""
        return self._classes

    @property
    def grid(self) -> tuple[int, int]:
        """``(rows, cols)`` of the grid used for images without ``boxes``."""
        return self._grid

    # -- list-like ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, i: int | slice) -> ImageRecord | RegionDataset:
        if isinstance(i, slice):
            return self.subset(indices=range(len(self))[i])
        if not isinstance(i, numbers.Integral) or isinstance(i, bool):
            raise InvalidParameterError(f"RegionDataset indices must be integers or slices, not {type(i).__name__}.")
        return self._records[int(i)]

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self._records)

    def __repr__(self) -> str:
        splits = dict(Counter(r.split for r in self._records))
        return (f"RegionDataset(root={str(self._root)!r}, n_images={len(self)}, n_classes={len(self._classes)}, "
                f"splits={splits}, grid={self._grid})")

    # -- views -------------------------------------------------------------------------------
    def subset(self, split: str | Sequence[str] | None = None,
               indices: Iterable[int] | None = None) -> RegionDataset:
        """A dataset with some of the images and the same classes and grid.

        Args:
            split: Keep only images of this split (or of any of these splits). None keeps all.
            indices: Positions to keep, in the order given (applied before ``split``). None keeps all.

        Returns:
            A new :class:`RegionDataset`; its records are renumbered from 0. A split with no
            image gives an empty dataset.

        Raises:
            ValueError: For an unknown split name or an out-of-range index.
        """
        records: Sequence[ImageRecord] = self._records
        if indices is not None:
            idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices)
            if idx.dtype == bool:
                if idx.shape != (len(self),):
                    raise InvalidParameterError("The 'indices' parameter of RegionDataset.subset must be a boolean "
                                                f"mask of length {len(self)} or integer positions. Got a mask of shape "
                                                f"{idx.shape}.")
                idx = np.flatnonzero(idx)
            if idx.size and not np.issubdtype(idx.dtype, np.integer):
                raise InvalidParameterError("The 'indices' parameter of RegionDataset.subset must hold integer positions. "
                                            f"Got dtype {idx.dtype} instead.")
            idx = idx.astype(np.int64).ravel()
            bad = idx[(idx < -len(self)) | (idx >= len(self))]
            if bad.size:
                raise InvalidParameterError(f"The 'indices' parameter of RegionDataset.subset must hold positions in "
                                            f"[{-len(self)}, {len(self)}). Got {int(bad[0])} instead.")
            records = [self._records[int(k)] for k in idx]
        if split is not None:
            wanted = set(_check_split_arg(split, "RegionDataset.subset"))
            records = [r for r in records if r.split in wanted]
        return self._derive(records, self._classes)

    def with_classes(self, classes: Sequence[str]) -> RegionDataset:
        """The same images with ``classes`` as the class list (labels re-indexed; same regions).

        Raises:
            DatasetError: A label that is not among ``classes``.
        """
        return self if tuple(classes) == self._classes else self._derive(self._records, classes)

    def labelled_split(self, split: str | None, *, classes: Sequence[str] | None = None,
                       purpose: str = "this step") -> RegionDataset:
        """The images of ``split`` (``None``: all), re-indexed to ``classes`` when given, each with a label.

        The one way every stage that scores images against classes (discovery, evaluation, region
        labelling) takes its data.

        Args:
            split: The split to keep, or ``None`` for every image.
            classes: Class names to index the labels with (default: the dataset's).
            purpose: What needs the labels, for the messages (e.g. ``"discovery"``).

        Raises:
            DatasetError: The split is empty, a label is not among ``classes``, or a row has no label.
        """
        ds = self.subset(split) if split else self
        if len(ds) == 0:
            raise DatasetError(f"Split {split!r} of {self._root} has no image; {purpose} needs labelled images.")
        if classes is not None:
            ds = ds.with_classes(classes)
        labels = ds.label_indices
        if (labels < 0).any():
            r = ds.records[int(np.flatnonzero(labels < 0)[0])]
            raise DatasetError(f"{self._metadata_path.name} line {r.line} ({r.file_name}) has no 'label'; {purpose} "
                               "needs a class name on every row of the split it uses.")
        return ds

    def _derive(self, records: Sequence[ImageRecord], classes: Sequence[str]) -> RegionDataset:
        """A dataset like this one with other records or classes (subclasses keep their own state)."""
        return RegionDataset(self._root, records, classes, self._grid, metadata_path=self._metadata_path)

    def load_image(self, i: int) -> Image.Image:
        """The pixels of image ``i`` as an RGB :class:`PIL.Image.Image` (as stored; EXIF is not applied).

        Raises:
            DatasetError: When the file cannot be read any more.
        """
        r = self[i]
        try:
            with Image.open(r.path) as im:
                im.load()
                return to_rgb(im)
        except Image.DecompressionBombError as exc:
            raise DatasetError(f"Image {r.path} ({self._metadata_path.name} line {r.line}) {_bomb_text(exc)}") from None
        except Exception as exc:  # noqa: BLE001 - any decoder error is a data problem
            raise DatasetError(f"Cannot read image {r.path} ({self._metadata_path.name} line {r.line}): "
                               f"{_exc_text(exc)}. Re-export it as PNG or JPEG, or remove the row.") from None

    @property
    def labels(self) -> list[str | None]:
        """``[N]`` class name of each image (None when it has no label)."""
        return [r.label for r in self._records]

    @property
    def label_indices(self) -> np.ndarray:
        """``[N]`` int64 index of each image's label in :attr:`classes`, -1 when it has no label."""
        pos = {c: k for k, c in enumerate(self._classes)}
        return np.fromiter((pos[r.label] if r.label is not None else -1 for r in self._records),
                           dtype=np.int64, count=len(self._records))

    @property
    def regions_per_image(self) -> np.ndarray:
        """``[N]`` int64 number of regions of each image."""
        return np.fromiter((len(r.boxes) for r in self._records), dtype=np.int64, count=len(self._records))

    def fingerprint(self) -> str:
        """A content fingerprint of these images and their rows (hex), for resume and discovery checks.

        It covers every row's ``file_name``, ``caption``, ``label``, ``split``, regions and
        ``region_attributes`` and, per image, the file size and a BLAKE2b hash of its first and
        last 64 KiB [design]: a cheap stable proxy of the bytes (an edited caption, a relabelled
        row or a replaced image changes it; copying or touching the files does not), reading at
        most 128 KiB per image instead of whole files.

        Raises:
            DatasetError: An image file that cannot be read any more.
        """
        h = hashlib.blake2b(digest_size=16)
        for r in self._records:
            row = [r.file_name, r.caption, r.label, r.split, [list(b) for b in r.boxes],
                   list(r.region_attributes) if r.region_attributes is not None else None]
            h.update(json.dumps(row, separators=(",", ":")).encode("utf-8"))
            try:
                size = r.path.stat().st_size
                with open(r.path, "rb") as fh:
                    head = fh.read(_FINGERPRINT_BYTES)
                    if size > 2 * _FINGERPRINT_BYTES:
                        fh.seek(-_FINGERPRINT_BYTES, os.SEEK_END)
                    tail = fh.read(_FINGERPRINT_BYTES)
            except OSError as exc:
                raise DatasetError(f"Cannot read {r.path} ({exc.strerror or exc}); {self._metadata_path.name} line "
                                   f"{r.line} names it. Restore the file or remove the row.") from None
            h.update(size.to_bytes(8, "little"))
            h.update(hashlib.blake2b(head + b"|" + tail, digest_size=16).digest())
        return h.hexdigest()

    def region_table(self) -> RegionTable:
        """Every region of the dataset as flat arrays, image by image, box by box."""
        counts = self.regions_per_image
        n_regions = int(counts.sum())
        image_index = np.repeat(np.arange(len(self), dtype=np.int64), counts)
        starts = np.cumsum(counts) - counts
        region_index = np.arange(n_regions, dtype=np.int64) - np.repeat(starts, counts)
        boxes = np.array([b for r in self._records for b in r.boxes], dtype=np.float64).reshape(n_regions, 4)
        attributes = None
        if all(r.region_attributes is not None for r in self._records):
            attributes = [a for r in self._records for a in r.region_attributes]
        return RegionTable(image_index=image_index, region_index=region_index, boxes=boxes, attributes=attributes)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

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


def parse_grid(text: str | Sequence[int]) -> tuple[int, int]:
    """Parse a grid written ``"ROWSxCOLS"`` (e.g. ``"2x2"``, ``"3x3"``) or given as a pair.

    Example:
        >>> parse_grid("3x2")
        (3, 2)

    Raises:
        ValueError: When the text is not of that form or a number is below 1.
    """
    if isinstance(text, str):
        parts = text.lower().replace(" ", "").split("x")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise InvalidParameterError(f"The 'grid' parameter of parse_grid must be written 'ROWSxCOLS' like '2x2'. "
                                        f"Got {text!r} instead.")
        return _check_grid((int(parts[0]), int(parts[1])), "parse_grid")
    return _check_grid(text, "parse_grid")


def metadata_rows(ds: "RegionDataset") -> dict[int, dict]:
    """The JSON object of each record's line of ``metadata.jsonl`` (``{line: row}``), with every
    field as written, including those ravl does not parse (e.g. a ``captions`` list)."""
    wanted = {r.line for r in ds}
    out: dict[int, dict] = {}
    with open(ds.metadata_path, encoding="utf-8") as f:
        for n, text in enumerate(f, start=1):
            if n in wanted:
                out[n] = json.loads(text)
    return out


def write_metadata(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Atomically write ``rows`` as ``metadata.jsonl``.

    Args:
        path: A dataset folder (``metadata.jsonl`` is written inside it) or the file path itself.
        rows: One JSON-serialisable dict per image (numpy numbers and arrays are converted).

    Returns:
        Path of the written file.
    """
    path = Path(path)
    if path.suffix != ".jsonl":
        path = path / METADATA_FILE
    text = "".join(json.dumps(row, separators=(", ", ": "), default=_json_default) + "\n" for row in rows)
    return atomic_write_text(path, text)


def write_classes(path: str | os.PathLike, classes: Iterable[str]) -> Path:
    """Atomically write ``classes.txt`` (one class name per line) into a dataset folder.

    Args:
        path: A dataset folder (``classes.txt`` is written inside it) or the file path itself.
        classes: Class names, in the order label indices should follow.

    Returns:
        Path of the written file.
    """
    classes = _check_classes(list(classes), "write_classes")
    path = Path(path)
    if path.suffix != ".txt":
        path = path / CLASSES_FILE
    return atomic_write_text(path, "".join(c + "\n" for c in classes))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    raise InvalidParameterError(f"Object of type {type(o).__name__} is not JSON serializable")


def _check_grid(grid: Any, caller: str) -> tuple[int, int]:
    if isinstance(grid, (str, bytes)) or not isinstance(grid, Sequence) or len(grid) != 2:
        raise InvalidParameterError(f"The 'grid' parameter of {caller} must be a pair (rows, cols) of ints >= 1. "
                                    f"Got {grid!r} instead.")
    return (check_int(grid[0], "grid[0]", caller, low=1), check_int(grid[1], "grid[1]", caller, low=1))


def _confusable(names: Iterable[str]) -> list[list[str]]:
    """Groups of distinct names that are equal up to case and white space (sorted, one group per key)."""
    groups: dict[str, set[str]] = {}
    for n in names:
        if isinstance(n, str):
            groups.setdefault(" ".join(n.split()).casefold(), set()).add(n)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def _check_classes(classes: Any, caller: str) -> tuple[str, ...]:
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Iterable):
        raise InvalidParameterError(f"The 'classes' parameter of {caller} must be a list of class-name strings. "
                                    f"Got {classes!r} instead.")
    classes = tuple(classes)
    for c in classes:
        if not isinstance(c, str) or not c.strip():
            raise InvalidParameterError(f"The 'classes' parameter of {caller} must hold non-empty strings. Got {c!r} "
                                        "instead.")
    dup = [c for c, n in Counter(classes).items() if n > 1]
    if dup:
        raise InvalidParameterError(f"The 'classes' parameter of {caller} must not repeat a name. Got {dup[0]!r} "
                                    "twice.")
    same = _confusable(classes)
    if same:
        raise InvalidParameterError(f"The 'classes' parameter of {caller} holds names that differ only in case or "
                                    "white "
                                    f"space ({', '.join(repr(c) for c in same[0])}); the tokenizer cannot tell them "
                                    "apart. Use one spelling for each class.")
    return classes


def _check_split_arg(split: Any, caller: str) -> tuple[str, ...]:
    if not isinstance(split, (str, Iterable)):
        raise InvalidParameterError(f"The 'split' parameter of {caller} must be one of {SPLITS!r} or a list of them. "
                                    f"Got {split!r} instead.")
    splits = (split,) if isinstance(split, str) else tuple(split)
    if not splits:
        raise InvalidParameterError(f"The 'split' parameter of {caller} must be a split name or a non-empty list of "
                                    f"them. Got {split!r} instead.")
    for s in splits:
        check_choice(s, "split", caller, SPLITS)
    return splits


def _exc_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _q(value: Any) -> str:
    """Short JSON rendering of a value for messages."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _suggest(word: str, choices: Sequence[str]) -> list[str]:
    lower = {c.lower(): c for c in choices}
    if word.lower() in lower:
        return [lower[word.lower()]]
    if word.strip() in choices:
        return [word.strip()]
    return difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)


def _list_names(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(repr(c) for c in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _is_absolute(name: str) -> bool:
    return name.startswith(("/", "\\", "~")) or (":" in name[:3] and bool(PureWindowsPath(name).drive))


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------

class _Problems:
    """Collects problem lines in one format: ``FILE line N, field 'F': what is wrong; fix``."""

    def __init__(self, file_label: str):
        self.file = file_label
        self._items: list[tuple[tuple[int, ...], str]] = []

    def row(self, line: int, field: str | None, text: str) -> None:
        where = f"{self.file} line {line}" + (f", field {field}" if field else "")
        rank, sub = -1, -1
        if field:
            name, _, rest = field.strip("'").partition("'")
            rank = FIELDS.index(name) if name in FIELDS else len(FIELDS)
            sub = int(rest.strip("[]")) if rest.strip("[]").isdigit() else -1
        self._items.append(((1, line, rank, sub, len(self._items)), f"{where}: {text}"))

    def file_level(self, text: str, label: str | None = None, *, line: int = 0, first: bool = False) -> None:
        self._items.append(((0 if first else 2, line, 0, 0, len(self._items)), f"{label or self.file}: {text}"))

    @property
    def items(self) -> list[str]:
        """Problems sorted: other files first, then metadata rows by line, then whole-file problems."""
        return [text for _, text in sorted(self._items)]

    def __bool__(self) -> bool:
        return bool(self._items)


@dataclass
class _Row:
    line: int
    file_name: str
    path: Path
    caption: str | None = None
    label: str | None = None
    split: str | None = None
    boxes: list[tuple[float, float, float, float]] | None = None
    region_attributes: tuple[str, ...] | None = None
    present: frozenset = frozenset()
    blank: frozenset = frozenset()
    aliases: dict = dataclasses.field(default_factory=dict)
    width: int | None = None
    height: int | None = None


def check_dataset(dataset: Any, caller: str, param: str = "dataset") -> RegionDataset:
    """``dataset`` when it is a :class:`RegionDataset`, else a clear error (a folder path is not loaded
    silently: the caller decides how, e.g. which classes).

    Raises:
        InvalidParameterError: (a ``TypeError``) naming the parameter, what was given and the fix.
    """
    if isinstance(dataset, RegionDataset):
        return dataset
    hint = (f" Load the folder first: ravl.load_dataset({str(dataset)!r})." if isinstance(dataset, (str, os.PathLike))
            else "")
    raise InvalidParameterError(f"The '{param}' parameter of {caller} must be a RegionDataset (from "
                                f"ravl.load_dataset). Got {type(dataset).__name__} {str(dataset)[:60]!r}.{hint}")


def load_dataset(path: str | os.PathLike, *, split: str | Sequence[str] | None = None,
                 classes: Sequence[str] | None = None, grid: tuple[int, int] = DEFAULT_GRID,
                 require_fields: Sequence[str] = (), check_images: bool = True) -> RegionDataset:
    """Load and validate a dataset folder (``metadata.jsonl`` + images, optional ``classes.txt``).

    The whole ``metadata.jsonl`` is validated whatever ``split`` is asked for, and every problem
    found is reported at once. Each image's header is read for its size; with ``check_images``
    the image data is also verified (PIL ``verify``), which catches truncated or corrupt files.

    Args:
        path: The dataset folder, or its ``metadata.jsonl`` file.
        split: Keep only the rows of this split (or of any of these splits). None keeps all rows.
        classes: Class names in order. Default: ``classes.txt`` in the folder (one per line), else
            the sorted unique labels of the whole file.
        grid: ``(rows, cols)`` of the equal grid of regions used for rows without ``boxes``.
        require_fields: Fields every kept row must have, e.g. ``("caption",)`` for fine-tuning or
            ``("label",)`` for zero-shot evaluation. Any of ``caption``, ``label``, ``split``,
            ``boxes``, ``region_attributes``.
        check_images: Verify the image data as well as the header.

    Returns:
        A :class:`RegionDataset` of the kept rows, in file order.

    Raises:
        DatasetValidationError: With every problem found (``.problems``), one line each naming the
            file, line, field, what is wrong and the fix.
        ValueError: For an invalid parameter (unknown split name, bad grid, ...).
    """
    caller = "load_dataset"
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidParameterError(f"The 'path' parameter of {caller} must be a folder path. Got {path!r} instead.")
    grid = _check_grid(grid, caller)
    wanted_splits = _check_split_arg(split, caller) if split is not None else None
    explicit_classes = _check_classes(classes, caller) if classes is not None else None
    if isinstance(require_fields, str):
        require_fields = (require_fields,)
    require = tuple(require_fields)
    for f in require:
        check_choice(f, "require_fields", caller, OPTIONAL_FIELDS)
    if not isinstance(check_images, bool):
        raise InvalidParameterError(f"The 'check_images' parameter of {caller} must be a bool. Got {check_images!r} "
                                    "instead.")

    given = Path(path).expanduser()
    if given.suffix == ".jsonl" and not given.is_dir():
        meta_path = given.resolve()
        root = meta_path.parent
    else:
        root = given.resolve()
        meta_path = root / METADATA_FILE
    where = str(root)
    problems = _Problems(meta_path.name)

    if not root.exists():
        parent = root.parent
        hint = ""
        if parent.is_dir():
            close = difflib.get_close_matches(root.name, [p.name for p in parent.iterdir() if p.is_dir()], n=1)
            if close:
                hint = f" (did you mean {str(parent / close[0])!r}?)"
        problems.file_level(f"dataset folder does not exist{hint}; pass the folder that holds {METADATA_FILE} "
                            f"(see {_FORMAT_DOC})", label=str(given))
        raise DatasetValidationError(problems.items, where)
    if not root.is_dir():
        problems.file_level(f"is a file, not a dataset folder; pass the folder that holds {METADATA_FILE} "
                            f"and the images (see {_FORMAT_DOC})", label=str(given))
        raise DatasetValidationError(problems.items, where)
    if not meta_path.is_file():
        problems.file_level(_missing_metadata_text(root), label=str(meta_path))
        raise DatasetValidationError(problems.items, where)

    try:
        data = meta_path.read_bytes()
    except OSError as exc:
        problems.file_level(f"cannot be read ({_exc_text(exc)}); check its permissions")
        raise DatasetValidationError(problems.items, where) from None

    rows = _parse_rows(data, root, grid, problems)
    if not rows and not problems:
        problems.file_level(f"is empty; write one JSON object per image and per line, e.g. {_EXAMPLE_ROW} "
                            f"(see {_FORMAT_DOC})")
    if problems and not rows:
        raise DatasetValidationError(problems.items, where)

    # Class list: explicit > classes.txt > sorted unique labels.
    if explicit_classes is not None:
        class_list, class_source = explicit_classes, "the classes passed"
    elif (root / CLASSES_FILE).is_file():
        class_list = _read_classes_file(root / CLASSES_FILE, problems)
        class_source = CLASSES_FILE
    else:
        class_list = tuple(sorted({r.label for r in rows if r.label is not None}))
        class_source = None
    if class_source is not None and class_list:
        _check_labels(rows, class_list, class_source, problems)
    for group in _confusable(list(class_list) + [r.label for r in rows if r.label is not None]):
        problems.file_level(f"the class names {', '.join(repr(g) for g in group)} differ only in upper/lower case or "
                            "white space: the tokenizer reads them as the same word, so zero-shot scoring cannot "
                            "tell those classes apart; use one spelling for each class")

    # Images: existence, size from the header, integrity.
    _check_images(rows, root, verify=check_images, problems=problems)
    for r in rows:
        _finish_boxes(r, grid, problems)

    # The rows asked for.
    kept = rows
    if wanted_splits is not None:
        kept = [r for r in rows if r.split in wanted_splits]
        if not kept and rows:
            counts = Counter(r.split for r in rows)
            have = ", ".join(f"{s!r} ({counts[s]} rows)" for s in SPLITS if counts.get(s))
            none = counts.get(None, 0)
            if have:
                msg = (f"no row has split {_list_names(wanted_splits)} (asked for split={split!r}); the file has "
                       f"{have}{f' and {none} rows without a split' if none else ''}; ask for one of those "
                       "splits or set the 'split' field of the rows you want")
            else:
                msg = (f"no row has a 'split' field, so split={split!r} selects nothing; add \"split\": "
                       "\"train\", \"val\" or \"test\" to the rows, or load without a split")
            problems.file_level(msg)
    for f in require:
        for r in kept:
            if f in r.blank and f != "label":  # an empty label is reported on its own
                problems.row(r.line, f"'{f}'", _require_text(f, require).replace("missing", "empty", 1))
            elif f not in r.present and f not in r.blank:
                problems.row(r.line, f"'{f}'", _require_text(f, require) + _hint_key(r.aliases, f))
    ignored = Counter(f"{k!r} (as {f!r}?)" for r in rows for k, f in r.aliases.items()
                      if f not in require and f != "file_name")
    if ignored and not problems:
        warnings.warn(f"{meta_path.name} has keys ravl ignores that look like its fields: "
                      f"{', '.join(f'{k} on {n} rows' for k, n in ignored.items())}; rename them if they are meant "
                      f"as those fields (see {_FORMAT_DOC}).", RavlWarning, stacklevel=2)

    if problems:
        raise DatasetValidationError(problems.items, where)

    records = [ImageRecord(index=i, file_name=r.file_name, path=r.path, caption=r.caption, label=r.label,
                           split=r.split, width=r.width, height=r.height, boxes=tuple(r.boxes),
                           boxes_from_grid="boxes" not in r.present, region_attributes=r.region_attributes,
                           line=r.line)
               for i, r in enumerate(kept)]
    logger.debug("loaded %d of %d rows from %s", len(records), len(rows), meta_path)
    return RegionDataset(root, records, class_list, grid, metadata_path=meta_path)


def _missing_metadata_text(root: Path) -> str:
    text = (f"not found; create it with one JSON object per image and per line, e.g. {_EXAMPLE_ROW} "
            f"(fields and how to convert a plain image folder: {_FORMAT_DOC})")
    others = [p.name for p in root.iterdir() if p.name.startswith("metadata.") and p.is_file()] \
        if root.is_dir() else []
    if others:
        text += f"; found {', '.join(sorted(others))}: ravl reads only {METADATA_FILE} (JSON Lines)"
    return text


def _require_text(field: str, require: tuple[str, ...]) -> str:
    what = {"caption": "a \"caption\" string (fine-tuning trains on image-caption pairs)",
            "label": "a \"label\" (a class name; zero-shot evaluation needs one on every row)",
            "split": "a \"split\" (\"train\", \"val\" or \"test\")",
            "boxes": "\"boxes\" ([[x0, y0, x1, y1], ...] in pixels)",
            "region_attributes": "\"region_attributes\" (one string per region)"}[field]
    return f"missing, but required here (require_fields={require!r}); add {what} to this row"


def _parse_rows(data: bytes, root: Path, grid: tuple[int, int], problems: _Problems) -> list[_Row]:
    rows: list[_Row] = []
    seen: dict[str, int] = {}
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for line_no, raw in enumerate(data.split(b"\n"), 1):
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            problems.row(line_no, None, f"is not UTF-8 text ({exc.reason} at byte {exc.start}); save the file "
                                        "as UTF-8")
            continue
        if not text:
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            hint = ""
            if text in ("[", "]") or text.startswith("[{"):
                hint = " The file looks like a JSON array: write one object per line, without [ ] around them."
            elif text.endswith(","):
                hint = " Remove the trailing comma: lines are separate JSON objects."
            elif re.search(r",\s*[}\]]", text):
                hint = " Remove the comma before the closing bracket."
            elif "'" in text and '"' not in text:
                hint = " JSON needs double quotes (\"), not single quotes."
            problems.row(line_no, None, f"invalid JSON ({exc.msg} at column {exc.colno}); write one JSON object "
                                        f"per line, e.g. {_EXAMPLE_ROW}.{hint}")
            continue
        if not isinstance(obj, dict):
            problems.row(line_no, None, f"expected a JSON object {{...}}, got {_type_name(obj)} {_q(obj)}; write "
                                        f"one object per line, e.g. {_EXAMPLE_ROW}")
            continue
        row = _parse_row(obj, line_no, root, grid, problems)
        if row is None:
            continue
        key = posixpath.normpath(row.file_name)
        if key in seen:
            problems.row(line_no, "'file_name'", f"{_q(row.file_name)} is also on line {seen[key]}; each image "
                                                 "must appear once: merge the two rows or remove one")
            continue
        seen[key] = line_no
        rows.append(row)
    return rows


def _hint_key(aliases: dict[str, str], field: str) -> str:
    for k, f in aliases.items():
        if f == field:
            return f" (the row has {k!r}: rename it to {field!r})"
    return ""


def _alias_keys(obj: dict) -> dict[str, str]:
    """Keys of a row that look like a ravl field the row lacks: ``{key: field}``."""
    out = {}
    for field, aliases in _KEY_ALIASES.items():
        if obj.get(field) is None:
            for k in obj:
                if k in aliases or (k != field and k.lower() == field):
                    out[k] = field
    return out


def _parse_row(obj: dict, line: int, root: Path, grid: tuple[int, int], problems: _Problems) -> _Row | None:
    """Check the fields of one row that need no image; returns None when there is no usable file_name."""
    blank = {k for k in OPTIONAL_FIELDS if isinstance(obj.get(k), str) and not obj[k].strip()}
    present = {k for k in OPTIONAL_FIELDS if obj.get(k) is not None} - blank
    aliases = _alias_keys(obj)

    # file_name
    fn = obj.get("file_name")
    row: _Row | None = None
    if fn is None:
        problems.row(line, "'file_name'", f"missing{_hint_key(aliases, 'file_name')}; add the image path relative to "
                                          "the dataset folder, e.g. \"file_name\": \"images/0001.png\"")
    elif not isinstance(fn, str):
        problems.row(line, "'file_name'", f"must be a string, got {_type_name(fn)} {_q(fn)}; write the image path "
                                          "in quotes, e.g. \"images/0001.png\"")
    elif not fn.strip():
        problems.row(line, "'file_name'", "is empty; write the image path relative to the dataset folder")
    elif _is_absolute(fn):
        problems.row(line, "'file_name'", f"{_q(fn)} is an absolute path; file names must be relative to the "
                                          f"dataset folder {root} (move the image inside it and drop the leading "
                                          "part of the path)")
    elif posixpath.normpath(fn.replace("\\", "/")).split("/")[0] == "..":
        problems.row(line, "'file_name'", f"{_q(fn)} points outside the dataset folder; move the image inside "
                                          f"{root} and write its path relative to it")
    else:
        norm = posixpath.normpath(fn)
        row = _Row(line=line, file_name=fn, path=root.joinpath(*norm.split("/")))

    # caption
    cap = obj.get("caption")
    if cap is not None and not isinstance(cap, str):
        problems.row(line, "'caption'", f"must be a string, got {_type_name(cap)} {_q(cap)}; write the caption "
                                        "text in quotes")
        cap = None
    # label
    label = obj.get("label")
    if label is not None:
        if not isinstance(label, str):
            problems.row(line, "'label'", f"must be a class name string, got {_type_name(label)} {_q(label)}; write "
                                          "the class name in quotes, e.g. \"label\": \"cat\" (class indices are not "
                                          "accepted; list names in classes.txt to fix their order)")
            label = None
        elif not label.strip():
            problems.row(line, "'label'", "is an empty string; write the class name or drop the field")
            label = None
    # split
    split = obj.get("split")
    if split is not None:
        if not isinstance(split, str):
            problems.row(line, "'split'", f"must be a string, got {_type_name(split)} {_q(split)}; use one of "
                                          f"{_list_names(SPLITS)}")
            split = None
        elif split not in SPLITS:
            guess = _SPLIT_ALIASES.get(split.strip().lower()) or next(iter(_suggest(split, SPLITS)), None)
            hint = f" (did you mean {guess!r}?)" if guess else ""
            problems.row(line, "'split'", f"unknown split {_q(split)}{hint}; use one of {_list_names(SPLITS)}")
            split = None
    # boxes (structure only; the image size is checked later)
    boxes = None
    boxes_ok = True
    raw_boxes = obj.get("boxes")
    if raw_boxes is not None:
        boxes, boxes_ok = _parse_boxes(raw_boxes, line, problems)
    # region_attributes
    attrs = None
    raw_attrs = obj.get("region_attributes")
    if raw_attrs is not None:
        if not isinstance(raw_attrs, list) or any(not isinstance(a, str) for a in raw_attrs):
            bad = raw_attrs if not isinstance(raw_attrs, list) else next(a for a in raw_attrs if not isinstance(a, str))
            problems.row(line, "'region_attributes'", f"must be a list of strings (one per region), found "
                                                      f"{_type_name(bad)} {_q(bad)}; write e.g. "
                                                      "[\"nine\", \"empty\", \"red_square\", \"empty\"]")
        else:
            n_regions, what, grid_hint = None, "", ""
            if raw_boxes is None:
                n_regions = grid[0] * grid[1]
                what = f"the cells of the {grid[0]}x{grid[1]} grid, as the row has no 'boxes'"
                side = math.isqrt(len(raw_attrs))
                if len(raw_attrs) > 1 and side * side == len(raw_attrs):
                    grid_hint = (f", or, if the data was made for a {side}x{side} grid, load it with "
                                 f"grid=({side}, {side}) (ravl validate --grid {side}x{side})")
            elif isinstance(raw_boxes, list) and boxes_ok:
                n_regions, what = len(raw_boxes), "the row's boxes"
            if n_regions is not None and len(raw_attrs) != n_regions:
                plural = "value" if len(raw_attrs) == 1 else "values"
                problems.row(line, "'region_attributes'",
                             f"has {len(raw_attrs)} {plural} for {n_regions} regions ({what}); give exactly one "
                             f"string per region, in the same order{grid_hint}")
            else:
                attrs = tuple(raw_attrs)

    if row is None:
        return None
    row.caption, row.label, row.split, row.boxes, row.region_attributes = cap, label, split, boxes, attrs
    row.present = frozenset(present)
    row.blank = frozenset(blank)
    row.aliases = aliases
    return row


def _parse_boxes(raw: Any, line: int, problems: _Problems) -> tuple[list | None, bool]:
    """Check the structure of 'boxes'; returns the well-formed ``(k, box)`` pairs and whether all were."""
    example = "e.g. [[0, 0, 28, 28], [28, 0, 56, 28]]"
    if not isinstance(raw, list):
        problems.row(line, "'boxes'", f"must be a list of [x0, y0, x1, y1] pixel boxes, got {_type_name(raw)} "
                                      f"{_q(raw)}; write {example}, or drop the field to use the grid")
        return None, False
    if not raw:
        problems.row(line, "'boxes'", "is an empty list, so the image would have no region; give at least one "
                                      "[x0, y0, x1, y1] box, or drop the field to use the grid")
        return None, False
    if len(raw) == 4 and all(_is_number(v) for v in raw):
        problems.row(line, "'boxes'", f"{_q(raw)} is a single box, but 'boxes' is a list of boxes; wrap it: "
                                      f"[{_q(raw)}]")
        return None, False
    out: list[tuple[int, tuple[float, float, float, float]]] = []
    ok = True
    for k, box in enumerate(raw):
        field = f"'boxes'[{k}]"
        if not isinstance(box, list) or len(box) != 4:
            problems.row(line, field, f"expected [x0, y0, x1, y1] (a list of 4 numbers), got {_type_name(box)} "
                                      f"{_q(box)}; write {example}")
            ok = False
            continue
        bad = [v for v in box if not _is_number(v) or not math.isfinite(v)]
        if bad:
            problems.row(line, field, f"box {_q(box)} has {_q(bad[0])}, which is not a finite number; write four "
                                      "numbers (pixels, no quotes): [x0, y0, x1, y1]")
            ok = False
            continue
        out.append((k, tuple(float(v) for v in box)))
    return out, ok


def _read_classes_file(path: Path, problems: _Problems) -> tuple[str, ...]:
    out: list[str] = []
    first: dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        problems.file_level(f"cannot be read ({_exc_text(exc)}); save it as UTF-8 text, one class per line",
                            label=CLASSES_FILE, first=True)
        return ()
    for n, line in enumerate(text.splitlines(), 1):
        name = line.strip()
        if not name:
            continue
        if name in first:
            problems.file_level(f"{name!r} is also on line {first[name]}; list each class once",
                                label=f"{CLASSES_FILE} line {n}", line=n, first=True)
            continue
        first[name] = n
        out.append(name)
    if not out:
        problems.file_level("holds no class name; write one class per line, or delete it to use the sorted labels",
                            label=CLASSES_FILE, first=True)
    return tuple(out)


def _check_labels(rows: list[_Row], classes: tuple[str, ...], source: str, problems: _Problems) -> None:
    known = set(classes)
    fix = f"add it to {CLASSES_FILE}" if source == CLASSES_FILE else "add it to the classes you passed"
    for r in rows:
        if r.label is None or r.label in known:
            continue
        close = _suggest(r.label, classes)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        problems.row(r.line, "'label'", f"{_q(r.label)} is not one of the {len(classes)} classes from {source}: "
                                        f"{_list_names(classes)}{hint}; fix the label or {fix}")
        r.label = None


def to_rgb(im: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of a loaded PIL image, scaling high-bit-depth pixels instead of clipping them.

    16-bit greyscale (PNG ``I;16``) is divided by 257 and 32-bit integer or float images are
    scaled from their own range (``PIL.Image.convert("RGB")`` would clip them to 0/255, a binary
    image); palette images with transparency go through RGBA first.
    """
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(im, dtype=np.uint16).astype(np.float64) / 257.0
        return Image.fromarray(np.round(arr).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = (0.0, 65535.0) if im.mode == "I" and arr.min() >= 0 and arr.max() > 255 else (arr.min(), arr.max())
        if im.mode == "I" and arr.min() >= 0 and arr.max() <= 255:
            lo, hi = 0.0, 255.0
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(np.round(np.clip(scaled, 0, 255)).astype(np.uint8), "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")


def _bomb_text(exc: Exception) -> str:
    limit = Image.MAX_IMAGE_PIXELS
    return (f"is larger than Pillow's decompression-bomb limit ({exc}); Pillow refuses images above "
            f"{2 * limit:,} pixels as a protection against malicious files (limit: PIL.Image.MAX_IMAGE_PIXELS = "
            f"{limit:,}). If the image is genuine, downscale it, or raise the limit in Python "
            "(PIL.Image.MAX_IMAGE_PIXELS = None) before loading.")


def _check_images(rows: list[_Row], root: Path, *, verify: bool, problems: _Problems) -> None:
    listings: dict[Path, list[str] | None] = {}
    n_suggested = 0
    for r in progress(rows, desc="checking images" if verify else "reading image sizes", total=len(rows),
                      disable=None if len(rows) >= 2000 else True):
        p = r.path
        try:
            with Image.open(p) as im:
                size = im.size
                if verify:
                    im.verify()
        except FileNotFoundError:
            hint = ""
            if n_suggested < 20:
                n_suggested += 1
                hint = _missing_file_hint(p, root, listings)
            problems.row(r.line, "'file_name'", f"image file {_q(r.file_name)} not found in {root}{hint}; fix the "
                                                "path (relative to the dataset folder) or add the file")
            continue
        except PermissionError:
            problems.row(r.line, "'file_name'", f"image file {_q(r.file_name)} cannot be opened (permission denied); "
                                                "make it readable")
            continue
        except IsADirectoryError:
            problems.row(r.line, "'file_name'", f"{_q(r.file_name)} is a folder, not an image; point it at an image "
                                                "file")
            continue
        except Image.DecompressionBombError as exc:
            problems.row(r.line, "'file_name'", f"image {_q(r.file_name)} {_bomb_text(exc)[:-1]}")
            continue
        except Exception as exc:  # noqa: BLE001 - any decoder error is a data problem
            if p.is_dir():
                problems.row(r.line, "'file_name'", f"{_q(r.file_name)} is a folder, not an image; point it at an "
                                                    "image file")
            else:
                problems.row(r.line, "'file_name'", f"cannot read image {_q(r.file_name)} ({_exc_text(exc)}); the "
                                                    "file is corrupt or not an image: re-export it as PNG or JPEG, or "
                                                    "remove the row")
            continue
        r.width, r.height = int(size[0]), int(size[1])


def _missing_file_hint(p: Path, root: Path, listings: dict[Path, list[str] | None]) -> str:
    parent = p.parent
    if parent not in listings:
        try:
            listings[parent] = os.listdir(parent) if parent.is_dir() else None
        except OSError:
            listings[parent] = None
    names = listings[parent]
    if names is None:
        rel = parent.relative_to(root) if parent != root and parent.is_relative_to(root) else parent
        return f" (the folder {str(rel)!r} does not exist either)"
    # Only confident guesses: another letter case, or the same name with another extension.
    # (difflib would match every numbered file: 0009.png is "close" to 0004.png.)
    lower = p.name.lower()
    stem = p.stem.lower()
    close = [n for n in names if n.lower() == lower] or [n for n in names if n.lower().rsplit(".", 1)[0] == stem]
    if close:
        rel = (parent / close[0]).relative_to(root).as_posix()
        return f" (did you mean {rel!r}?)"
    return ""


def _finish_boxes(r: _Row, grid: tuple[int, int], problems: _Problems) -> None:
    """Check boxes against the image size, clip them, or fill in the grid."""
    if r.width is None:
        return  # image unreadable: already reported; the row is not kept
    w, h = r.width, r.height
    if "boxes" not in r.present:
        r.boxes = grid_boxes(w, h, grid)
        return
    if r.boxes is None:
        return
    tol = BOX_TOLERANCE
    clipped = []
    for k, (x0, y0, x1, y1) in r.boxes:
        reasons = []
        if x0 >= x1:
            reasons.append("x0 >= x1" + (" (zero width)" if x0 == x1 else ""))
        if y0 >= y1:
            reasons.append("y0 >= y1" + (" (zero height)" if y0 == y1 else ""))
        if x0 < -tol or y0 < -tol:
            reasons.append("a negative coordinate")
        if x1 > w + tol:
            reasons.append(f"x1 = {_num(x1)} past the right edge (width {w})")
        if y1 > h + tol:
            reasons.append(f"y1 = {_num(y1)} past the bottom edge (height {h})")
        if x0 > w + tol or y0 > h + tol:
            reasons.append("its top-left corner outside the image")
        if reasons:
            box = "[" + ", ".join(_num(v) for v in (x0, y0, x1, y1)) + "]"
            problems.row(r.line, f"'boxes'[{k}]", f"box {box} has {' and '.join(reasons)}; boxes are [x0, y0, x1, y1] "
                                                  f"with x0 < x1, y0 < y1 inside the {w}x{h} image (pixels, origin at "
                                                  "the top-left corner): fix or clip it")
            continue
        clipped.append((min(max(x0, 0.0), float(w)), min(max(y0, 0.0), float(h)),
                        min(max(x1, 0.0), float(w)), min(max(y1, 0.0), float(h))))
    r.boxes = clipped


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))
