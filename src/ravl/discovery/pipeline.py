"""Discovery from a model and a dataset folder: compute the arrays, then :func:`ravl.discover`.

This is the convenience path behind ``ravl discover``: embed every region of the chosen split,
score images and regions zero-shot with the same prompt ensemble, and hand the arrays to the
array-level algorithm. The region metadata (file name, box) travels with the result so that
``discovery.json`` and the report can show the regions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ravl.data.dataset import check_dataset
from ravl.discovery.core import discover
from ravl.models.base import check_model
from ravl.models.regions import DEFAULT_REGION_MODE
from ravl.models.sharded import Sharding, embed_images_sharded, embed_regions_sharded
from ravl.utils.io import atomic_write
from ravl.zeroshot import default_templates, zero_shot_classify

__all__ = ["DiscoveryInputs", "discovery_inputs", "discover_from_model"]


@dataclass(frozen=True)
class DiscoveryInputs:
    """Everything a discovery method consumes, computed once per (model, dataset split).

    Attributes:
        classes: C class names.
        region_embeddings: ``[R, D]`` unit-norm region embeddings.
        region_image_index: ``[R]`` image of each region (0..N-1).
        region_probabilities: ``[R, C]`` zero-shot probabilities of each region.
        image_embeddings: ``[N, D]`` unit-norm image embeddings.
        image_labels: ``[N]`` true class indices.
        image_predictions: ``[N]`` zero-shot predicted class indices.
        image_probabilities: ``[N, C]``.
        region_file_names: ``[R]`` file name of each region's image.
        region_boxes: ``[R, 4]`` pixel boxes.
        region_index: ``[R]`` index of the box within its image.
        region_attributes: ``[R]`` ground-truth attributes (scoring only) or ``None``.
        region_mode: How region embeddings were computed.
        templates: The prompt templates of the zero-shot classifier that scored images and
            regions (resolved: never ``None`` when built by :func:`discovery_inputs`). Recorded
            in ``discovery.json`` so mitigation trains the classifier discovery judged.
    """

    classes: tuple[str, ...]
    region_embeddings: np.ndarray
    region_image_index: np.ndarray
    region_probabilities: np.ndarray
    image_embeddings: np.ndarray
    image_labels: np.ndarray
    image_predictions: np.ndarray
    image_probabilities: np.ndarray
    region_file_names: tuple[str, ...]
    region_boxes: np.ndarray
    region_index: np.ndarray
    region_attributes: tuple[str, ...] | None
    region_mode: str
    templates: tuple[str, ...] | None = None

    def save(self, path) -> None:
        """Save the arrays to a ``.npz`` file (cache for benchmarks)."""
        def w(tmp):
            with open(tmp, "wb") as fh:
                np.savez_compressed(
                    fh, classes=np.array(self.classes), region_embeddings=self.region_embeddings,
                    region_image_index=self.region_image_index, region_probabilities=self.region_probabilities,
                    image_embeddings=self.image_embeddings, image_labels=self.image_labels,
                    image_predictions=self.image_predictions, image_probabilities=self.image_probabilities,
                    region_file_names=np.array(self.region_file_names), region_boxes=self.region_boxes,
                    region_index=self.region_index,
                    region_attributes=np.array(self.region_attributes if self.region_attributes is not None else []),
                    has_attributes=np.array(self.region_attributes is not None), region_mode=np.array(self.region_mode),
                    templates=np.array(list(self.templates or ())), has_templates=np.array(self.templates is not None))

        atomic_write(path, w)

    @classmethod
    def load(cls, path) -> "DiscoveryInputs":
        """Inverse of :meth:`save`."""
        z = np.load(path, allow_pickle=False)
        attrs = tuple(str(a) for a in z["region_attributes"]) if bool(z["has_attributes"]) else None
        templates = None
        if "has_templates" in z.files and bool(z["has_templates"]):  # caches written before 0.1 lack them
            templates = tuple(str(t) for t in z["templates"])
        return cls(classes=tuple(str(c) for c in z["classes"]), region_embeddings=z["region_embeddings"],
                   region_image_index=z["region_image_index"], region_probabilities=z["region_probabilities"],
                   image_embeddings=z["image_embeddings"], image_labels=z["image_labels"],
                   image_predictions=z["image_predictions"], image_probabilities=z["image_probabilities"],
                   region_file_names=tuple(str(f) for f in z["region_file_names"]), region_boxes=z["region_boxes"],
                   region_index=z["region_index"], region_attributes=attrs, region_mode=str(z["region_mode"]),
                   templates=templates)


def discovery_inputs(model, dataset, *, split: str | None = "val", classes: Sequence[str] | None = None,
                     templates: Sequence[str] | None = None, region_mode: str | None = None,
                     batch_size: int = 128, progress: bool = True, sharding: Sharding | None = None
                     ) -> DiscoveryInputs:
    """Embed and score every image and region of ``dataset`` (one split) for discovery.

    Args:
        model: A :class:`~ravl.models.VisionLanguageModel` (the fine-tuned model to audit).
        dataset: A :class:`~ravl.data.RegionDataset` with a ``label`` on every row.
        split: The split to use (the evaluation ``val`` split by default; ``None`` for all).
        classes: Class names (default: the dataset's).
        templates: Prompt templates (default: :func:`ravl.zeroshot.default_templates`).
        region_mode: Region embedding mode (default :data:`ravl.models.regions.DEFAULT_REGION_MODE`).
        batch_size: Images per forward pass.
        progress: Show progress bars.
        sharding: Spread the embedding over processes or a Ray cluster
            (:class:`~ravl.models.sharded.Sharding`; the embeddings are the serial run's).
    """
    check_model(model, "discovery_inputs")
    ds = check_dataset(dataset, "discovery_inputs").labelled_split(split, classes=classes, purpose="discovery")
    classes = tuple(ds.classes)
    labels = ds.label_indices
    mode = region_mode or DEFAULT_REGION_MODE
    templates = tuple(default_templates(model, classes) if templates is None else templates)
    img_emb = embed_images_sharded(model, ds, sharding=sharding, batch_size=batch_size, progress=progress)
    reg_emb = embed_regions_sharded(model, ds, mode=mode, sharding=sharding, batch_size=batch_size,
                                    progress=progress)
    img = zero_shot_classify(model, img_emb, classes, templates=templates)
    reg = zero_shot_classify(model, reg_emb, classes, templates=templates)
    table = ds.region_table()
    return DiscoveryInputs(
        classes=classes, region_embeddings=reg_emb, region_image_index=table.image_index,
        region_probabilities=reg.probabilities, image_embeddings=img_emb, image_labels=labels,
        image_predictions=img.predictions, image_probabilities=img.probabilities,
        region_file_names=tuple(ds.records[i].file_name for i in table.image_index),
        region_boxes=np.asarray(table.boxes, dtype=float), region_index=table.region_index,
        region_attributes=tuple(table.attributes) if table.attributes is not None else None, region_mode=mode,
        templates=templates)


def discover_from_model(model, dataset, *, split: str | None = "val", classes: Sequence[str] | None = None,
                        templates: Sequence[str] | None = None, region_mode: str | None = None,
                        batch_size: int = 128, progress: bool = True, sharding: Sharding | None = None,
                        **discover_kwargs: Any):
    """Run RaVL discovery for ``model`` on a dataset split; returns a :class:`ravl.DiscoveryResult`.

    Keyword arguments beyond the ones listed in :func:`discovery_inputs` go to
    :func:`ravl.discover` (thresholds, K range, scoring ablation, ``random_state``...).
    """
    inputs = discovery_inputs(model, dataset, split=split, classes=classes, templates=templates,
                              region_mode=region_mode, batch_size=batch_size, progress=progress,
                              sharding=sharding)
    return discover_on_inputs(inputs, progress=progress, **discover_kwargs)


def discover_on_inputs(inputs: DiscoveryInputs, **discover_kwargs: Any):
    """:func:`ravl.discover` on precomputed :class:`DiscoveryInputs`.

    The result's ``meta`` records the inputs' ``region_mode`` and ``templates`` unless the
    caller's ``meta`` sets them (mitigation reads both from ``discovery.json``).
    """
    meta = {"region_mode": inputs.region_mode, **dict(discover_kwargs.pop("meta", None) or {})}
    if inputs.templates is not None:
        meta.setdefault("templates", list(inputs.templates))
    return discover(inputs.region_embeddings, inputs.region_image_index, inputs.image_labels,
                    inputs.image_predictions, inputs.region_probabilities, classes=inputs.classes,
                    image_probabilities=inputs.image_probabilities,
                    region_file_names=list(inputs.region_file_names), region_boxes=inputs.region_boxes,
                    meta=meta, **discover_kwargs)
