"""ravl.data: the dataset folder format (``metadata.jsonl`` + images) and its loader.

See docs/dataset-format.md for the format and :func:`load_dataset` for loading and validation.
"""

from ravl.data.dataset import (
    BOX_TOLERANCE,
    CLASSES_FILE,
    DEFAULT_GRID,
    FIELDS,
    METADATA_FILE,
    SPLITS,
    ImageRecord,
    RegionDataset,
    RegionTable,
    grid_boxes,
    load_dataset,
    parse_grid,
    write_classes,
    write_metadata,
)

__all__ = [
    "BOX_TOLERANCE",
    "CLASSES_FILE",
    "DEFAULT_GRID",
    "FIELDS",
    "METADATA_FILE",
    "SPLITS",
    "ImageRecord",
    "RegionDataset",
    "RegionTable",
    "grid_boxes",
    "load_dataset",
    "parse_grid",
    "write_classes",
    "write_metadata",
]
