"""Image-text retrieval evaluation of any model adapter: Recall@1/5/10 and mAP, both directions.

The gallery of a dataset (or one split of it) is every image and every caption of those images.
An image's captions are its ``caption`` and, when the row has them, the strings of its
``captions`` list (or ``coco_captions``, which ``ravl convert coco`` writes), without repeats.

* image -> text: each image queries all captions; its relevant items are its own captions.
* text -> image: each caption queries all images; its one relevant item is its image.

Shape symbols: N images, M captions, D embedding dimension.

Example:
    >>> import ravl
    >>> from ravl.retrieval import evaluate_retrieval
    >>> res = evaluate_retrieval(ravl.load_model("tiny"), ravl.load_dataset("data"), split="test")  # doctest: +SKIP
    >>> res.image_to_text["recall@1"]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ravl.data.dataset import RegionDataset, check_dataset, metadata_rows
from ravl.exceptions import DatasetError, InvalidParameterError
from ravl.models.base import check_model
from ravl.models.regions import embed_images, embed_texts
from ravl.retrieval.metrics import mean_average_precision, recall_at_k, relevant_ranks
from ravl.utils.progress import progress as _progress
from ravl.utils.validation import check_int

__all__ = ["RetrievalResult", "evaluate_retrieval", "image_captions", "retrieval_scores", "DEFAULT_KS",
           "EXTRA_CAPTION_KEYS"]

#: Recall cut-offs reported by default.
DEFAULT_KS = (1, 5, 10)
#: Row keys holding more captions of an image (lists of strings), read in this order.
EXTRA_CAPTION_KEYS = ("captions", "coco_captions")


@dataclass(frozen=True)
class RetrievalResult:
    """Retrieval metrics of one model on one gallery.

    Attributes:
        split: The split evaluated (``None``: every row).
        n_images: N, images in the gallery (and image queries).
        n_captions: M, captions in the gallery (and text queries).
        ks: The recall cut-offs.
        image_to_text: ``{"recall@K": ..., "map": ...}`` of the image queries.
        text_to_image: The same for the caption queries.
        meta: What ran (model name, batch size, device).
    """

    split: str | None
    n_images: int
    n_captions: int
    ks: tuple[int, ...]
    image_to_text: dict[str, float]
    text_to_image: dict[str, float]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def rsum(self) -> float:
        """Sum of every Recall@k of both directions (the usual single-number summary)."""
        return float(sum(v for d in (self.image_to_text, self.text_to_image)
                         for k, v in d.items() if k.startswith("recall@")))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ks"] = list(self.ks)
        d["rsum"] = self.rsum
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RetrievalResult:
        return cls(split=d["split"], n_images=int(d["n_images"]), n_captions=int(d["n_captions"]),
                   ks=tuple(d["ks"]), image_to_text=dict(d["image_to_text"]),
                   text_to_image=dict(d["text_to_image"]), meta=dict(d.get("meta", {})))




def image_captions(dataset: RegionDataset, *, required: bool = True) -> list[list[str]]:
    """Every caption of each image of ``dataset``: its ``caption``, then its ``captions`` /
    ``coco_captions`` strings, stripped, without repeats (in that order).

    Args:
        dataset: A :class:`~ravl.data.RegionDataset`.
        required: Whether every image must have a caption (else an image may get an empty list).

    Raises:
        DatasetError: An image with no caption (when ``required``), or a ``captions`` value that is
            not a list of strings.
    """
    ds = check_dataset(dataset, "image_captions")
    rows = metadata_rows(ds) if len(ds) else {}
    out = []
    for r in ds:
        caps = [r.caption] if r.caption else []
        row = rows.get(r.line, {})
        for key in EXTRA_CAPTION_KEYS:
            extra = row.get(key)
            if extra is None:
                continue
            if not isinstance(extra, list) or not all(isinstance(c, str) for c in extra):
                raise DatasetError(f"{ds.metadata_path.name} line {r.line} ({r.file_name}): {key!r} must be a list "
                                   f"of caption strings; got {str(extra)[:60]!r}.")
            caps.extend(extra)
        seen, kept = set(), []
        for c in (c.strip() for c in caps):
            if c and c not in seen:
                seen.add(c)
                kept.append(c)
        if not kept and required:
            raise DatasetError(f"{ds.metadata_path.name} line {r.line} ({r.file_name}) has no caption; retrieval "
                               "needs a 'caption' (or a 'captions' list) on every row of the split it uses.")
        out.append(kept)
    return out


def retrieval_scores(model, dataset: RegionDataset, captions: Sequence[Sequence[str]] | None = None, *,
                     batch_size: int = 128, progress: bool = True) -> tuple[torch.Tensor, np.ndarray]:
    """Cosine similarities ``[N, M]`` of every image with every caption, and ``caption_image [M]``
    (the image index of each caption), captions flattened image by image.

    The similarity matrix is computed on the model's device and returned there.
    """
    caps = image_captions(dataset) if captions is None else [list(c) for c in captions]
    if len(caps) != len(dataset):
        raise InvalidParameterError(f"The 'captions' parameter of retrieval_scores must hold one list of captions "
                                    f"per image ({len(dataset)}). Got {len(caps)} lists instead.")
    flat = [c for cs in caps for c in cs]
    owner = np.repeat(np.arange(len(caps)), [len(cs) for cs in caps]).astype(np.int64)
    img = torch.as_tensor(embed_images(model, dataset, batch_size=batch_size, progress=progress))
    chunks = []
    bar = _progress(total=len(flat), desc="embedding captions", disable=None if progress else True)
    for start in range(0, len(flat), batch_size):
        chunks.append(embed_texts(model, flat[start:start + batch_size], batch_size=batch_size))
        bar.update(min(batch_size, len(flat) - start))
    bar.close()
    txt = torch.cat(chunks) if chunks else torch.zeros(0, model.embed_dim)
    dev = model.device
    return img.to(dev) @ txt.to(dev).T, owner


def _summary(ranks: list[np.ndarray], ks: Sequence[int]) -> dict[str, float]:
    out = {f"recall@{k}": recall_at_k(ranks, k) for k in ks}
    out["map"] = mean_average_precision(ranks)
    return out


def evaluate_retrieval(model, dataset: RegionDataset, *, split: str | None = None,
                       ks: Sequence[int] = DEFAULT_KS, batch_size: int = 128, same_text: bool = False,
                       progress: bool = True) -> RetrievalResult:
    """Image->text and text->image Recall@k and mAP of ``model`` over ``dataset``'s captions.

    Args:
        model: A :class:`~ravl.models.VisionLanguageModel` (on CPU or GPU; scores are computed on
            its device).
        dataset: A :class:`~ravl.data.RegionDataset` with a caption on every row used.
        split: Evaluate only this split (``None``: every row).
        ks: Recall cut-offs.
        batch_size: Images or captions per forward pass.
        same_text: Also count as relevant a caption of another image with the same text as one of the
            query image's captions (case and white space aside), and, text->image, every image that
            has a caption with the query's text. Off by default (the usual protocol: only the
            image's own captions); useful where captions repeat (synthetic settings), since
            identical captions score the same and only ties would decide.
        progress: Show progress bars (``RAVL_PROGRESS=0`` turns them off).

    Returns:
        A :class:`RetrievalResult`.

    Raises:
        InvalidParameterError: A bad parameter.
        DatasetError: An empty split, or an image without a caption.
    """
    caller = "evaluate_retrieval"
    model = check_model(model, caller)
    ds = check_dataset(dataset, caller)
    if isinstance(ks, int):
        ks = (ks,)
    ks = tuple(sorted({check_int(k, "ks", caller, low=1) for k in ks}))
    if not ks:
        raise InvalidParameterError(f"The 'ks' parameter of {caller} must hold at least one cut-off. Got ().")
    batch_size = check_int(batch_size, "batch_size", caller, low=1)
    if split is not None:
        ds = ds.subset(split)
    if len(ds) == 0:
        raise DatasetError(f"{'Split ' + repr(split) + ' of ' if split else ''}{ds.root} has no image to evaluate "
                           "retrieval on.")
    caps = image_captions(ds)
    sim, owner = retrieval_scores(model, ds, caps, batch_size=batch_size, progress=progress)
    per_image = [np.flatnonzero(owner == i) for i in range(len(ds))]
    per_caption = [[int(i)] for i in owner]
    if same_text:
        norm = [" ".join(c.lower().split()) for cs in caps for c in cs]
        captions_of: dict[str, list[int]] = {}
        images_of: dict[str, set[int]] = {}
        for j, t in enumerate(norm):
            captions_of.setdefault(t, []).append(j)
            images_of.setdefault(t, set()).add(int(owner[j]))
        per_image = [sorted({j for t in {norm[c] for c in own} for j in captions_of[t]}) for own in per_image]
        per_caption = [sorted(images_of[t]) for t in norm]
    i2t = relevant_ranks(sim, per_image)
    t2i = relevant_ranks(sim.T, per_caption)
    meta = {"model": getattr(model, "name", type(model).__name__), "batch_size": batch_size, "same_text": same_text,
            "device": str(model.device), "captions_per_image": {
                "min": min(map(len, caps)), "max": max(map(len, caps)),
                "mean": round(float(np.mean([len(c) for c in caps])), 4)}}
    return RetrievalResult(split=split, n_images=len(ds), n_captions=len(owner), ks=ks,
                           image_to_text=_summary(i2t, ks), text_to_image=_summary(t2i, ks), meta=meta)
