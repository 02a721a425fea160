"""ODmAP@k, the object-decorrelation metric of image->text retrieval (reconstructed).

Queries are images from which an object that co-occurs with others was removed; a retrieved
caption that mentions the removed object is a false hit. For query q with relevant captions
Rel_q (R_q = |Rel_q|) and rel_q(r) = 1 when the caption at rank r is relevant,

    AP@k(q) = (1 / min(k, R_q)) * sum_{r<=k} P_q(r) * rel_q(r),     ODmAP@k = mean_q AP@k(q),

P_q(r) the precision of the top r. Queries with R_q = 0 are left out and counted.

What is and is not confirmed (results carry ``"reconstructed": true``):

* Confirmed from the paper's own abstract and Figure 1 (Kim, Koepke, Schmid, Akata, "Exposing and
  Mitigating Spurious Correlations for Cross-Modal Retrieval", CVPR-W 2023, arXiv 2304.03391):
  ODmAP@k is an object-decorrelation metric of image-to-text retrieval; its query images are made
  by removing an object; retrieved sentences that mention the removed object count as wrong.
* Not confirmed: which captions count as relevant (the paper's exact rule was not available to
  us), the normalisation (min(k, R_q) here, the usual AP@k), how a mention is detected, and the
  value of k. The relevance rule is therefore a parameter:

  - ``"own"`` (default): the captions of the query's source image that do not mention the removed
    object (and, with ``same_text``, captions of other images with the very same text).
  - ``"any"``: every gallery caption that does not mention the removed object.

A mention is a whole-word, case-insensitive match of the object's name or of one of its given
synonyms, with an optional plural ``s`` / ``es`` (``"frisbee"`` matches "Frisbees").

Shape symbols: Q queries, G gallery captions.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ravl.data.dataset import check_dataset, metadata_rows
from ravl.data.manipulation import MANIPULATION_KEY
from ravl.exceptions import DatasetError, InvalidParameterError
from ravl.models.base import check_model
from ravl.models.regions import embed_images, embed_texts
from ravl.retrieval.evaluate import image_captions
from ravl.retrieval.metrics import average_precision_at_k
from ravl.utils.validation import check_choice, check_int

__all__ = ["RELEVANCE_RULES", "ODmAPResult", "mentions", "odmap_relevance", "rankings_from_scores", "odmap_at_k",
           "evaluate_odmap"]

#: How a caption becomes relevant to a query (see the module docstring).
RELEVANCE_RULES = ("own", "any")


@dataclass(frozen=True)
class ODmAPResult:
    """ODmAP@k of a set of object-removed queries.

    Attributes:
        k: The cut-off.
        value: ODmAP@k, the mean AP@k over the queries with a relevant caption (NaN if none).
        n_queries: Queries that counted.
        n_skipped: Queries left out because no gallery caption was relevant to them.
        relevance: The relevance rule (``"own"``, ``"any"`` or ``"given"`` for a hand-made matrix).
        false_hits_at_k: Mean fraction of each counted query's top k that mention its removed
            object (NaN when mentions were not given).
        per_query: AP@k of every query, in query order (NaN for a skipped one).
        reconstructed: Always True: the definition is reconstructed (module docstring).
        meta: How the gallery was formed (by :func:`evaluate_odmap`).
    """

    k: int
    value: float
    n_queries: int
    n_skipped: int
    relevance: str
    false_hits_at_k: float = float("nan")
    per_query: tuple[float, ...] = field(default=(), repr=False)
    reconstructed: bool = True
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["per_query"] = [None if v != v else v for v in self.per_query]
        for key in ("value", "false_hits_at_k"):
            d[key] = None if d[key] != d[key] else d[key]
        return d


def _pattern(words: str | Sequence[str]) -> re.Pattern:
    items = [words] if isinstance(words, str) else list(words)
    items = [w.strip() for w in items if isinstance(w, str) and w.strip()]
    if not items:
        raise InvalidParameterError(f"mentions needs at least one object name; got {words!r}.")
    alts = "|".join(r"\s+".join(map(re.escape, w.lower().split())) for w in sorted(items, key=len, reverse=True))
    return re.compile(rf"\b(?:{alts})(?:e?s)?\b", re.IGNORECASE)


def mentions(caption: str, words: str | Sequence[str]) -> bool:
    """Whether ``caption`` names the object ``words`` (a name or a list of name and synonyms).

    Example:
        >>> mentions("Two Frisbees in the air", "frisbee"), mentions("a dog on grass", ["frisbee", "disc"])
        (True, False)
    """
    return bool(_pattern(words).search(caption))


def odmap_relevance(query_source: Sequence[int], removed: Sequence[str | Sequence[str]],
                    gallery_captions: Sequence[str], gallery_image: Sequence[int], *,
                    rule: str = "own", same_text: bool = True) -> tuple[list[np.ndarray], np.ndarray]:
    """The relevant captions of each object-removed query, and which gallery captions mention its object.

    Args:
        query_source: For each query, the gallery image it was made from.
        removed: For each query, the removed object's name (or name and synonyms).
        gallery_captions: The G gallery captions.
        gallery_image: The image each gallery caption belongs to.
        rule: ``"own"`` or ``"any"`` (:data:`RELEVANCE_RULES`).
        same_text: Under ``"own"``, also count as relevant a caption of another image whose text is
            the same (case and white space aside) as a relevant caption of the source image; such
            a caption scores exactly the same, so without this ties decide (synthetic captions
            repeat a lot).

    Returns:
        ``(relevant, mention)``: per query the sorted indices of its relevant captions, and a
        boolean ``[Q, G]`` matrix of the captions that mention its removed object.
    """
    caller = "odmap_relevance"
    check_choice(rule, "rule", caller, RELEVANCE_RULES)
    if len(query_source) != len(removed):
        raise InvalidParameterError(f"The 'removed' parameter of {caller} must name one object per query "
                                    f"({len(query_source)}). Got {len(removed)}.")
    if len(gallery_captions) != len(gallery_image):
        raise InvalidParameterError(f"The 'gallery_image' parameter of {caller} must give the image of each gallery "
                                    f"caption ({len(gallery_captions)}). Got {len(gallery_image)}.")
    owner = np.asarray(gallery_image, dtype=np.int64)
    mention = np.zeros((len(removed), len(gallery_captions)), dtype=bool)
    cache: dict[Any, np.ndarray] = {}
    for q, obj in enumerate(removed):
        key = obj if isinstance(obj, str) else tuple(obj)
        if key not in cache:
            pat = _pattern(obj)
            cache[key] = np.array([bool(pat.search(c)) for c in gallery_captions], dtype=bool)
        mention[q] = cache[key]
    norm = np.array([" ".join(c.lower().split()) for c in gallery_captions], dtype=object)
    relevant = []
    for q, src in enumerate(query_source):
        ok = ~mention[q]
        if rule == "own":
            own = ok & (owner == int(src))
            if same_text and own.any():
                own |= ok & np.isin(norm, norm[own])
            ok = own
        relevant.append(np.flatnonzero(ok))
    return relevant, mention


def rankings_from_scores(scores, k: int, *, chunk_size: int = 1024) -> np.ndarray:
    """The top ``k`` gallery indices of each query, best first (equal scores keep gallery order).

    Args:
        scores: ``[Q, G]`` scores (numpy array or tensor).
        k: How many to keep (at most G).

    Returns:
        ``[Q, min(k, G)]`` int64.
    """
    s = scores.detach().float().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    if s.ndim != 2:
        raise InvalidParameterError(f"The 'scores' parameter of rankings_from_scores must be a [Q, G] matrix. Got "
                                    f"shape {s.shape}.")
    k = min(check_int(k, "k", "rankings_from_scores", low=1), s.shape[1])
    out = [np.argsort(-s[i:i + chunk_size], axis=1, kind="stable")[:, :k] for i in range(0, s.shape[0], chunk_size)]
    return np.concatenate(out).astype(np.int64) if out else np.zeros((0, k), dtype=np.int64)


def odmap_at_k(rankings, relevant, k: int, *, mention=None, relevance: str = "given") -> ODmAPResult:
    """ODmAP@k over rankings: the mean over queries of AP@k = (1/min(k, R_q)) sum_{r<=k} P_q(r) rel_q(r).

    Args:
        rankings: ``[Q, >=k]`` gallery indices in rank order (best first), e.g. from
            :func:`rankings_from_scores`; a shorter row counts only what it holds.
        relevant: Per query the relevant gallery indices (R_q is their number), or a boolean
            ``[Q, G]`` matrix; :func:`odmap_relevance` builds them.
        k: The cut-off.
        mention: Optional boolean ``[Q, G]``: the captions that mention each query's removed
            object, for ``false_hits_at_k``.
        relevance: The rule that made ``relevant`` (recorded in the result).

    Returns:
        An :class:`ODmAPResult` (``reconstructed=True``).
    """
    caller = "odmap_at_k"
    k = check_int(k, "k", caller, low=1)
    if len(rankings) != len(relevant):
        raise InvalidParameterError(f"The 'relevant' parameter of {caller} must hold one entry per ranking "
                                    f"({len(rankings)}). Got {len(relevant)}.")
    rel_arr = np.asarray(relevant) if isinstance(relevant, np.ndarray) and np.asarray(relevant).dtype == bool else None
    per_query, false_hits = [], []
    for q, ranking in enumerate(rankings):
        ranking = np.asarray(ranking, dtype=np.int64)[:k]
        rel_set = np.flatnonzero(rel_arr[q]) if rel_arr is not None else np.asarray(list(relevant[q]), dtype=np.int64)
        n_rel = len(np.unique(rel_set))
        if n_rel == 0:
            per_query.append(float("nan"))
            continue
        hits = np.isin(ranking, rel_set)
        per_query.append(average_precision_at_k(hits, k, n_rel))
        if mention is not None and len(ranking):
            false_hits.append(float(np.asarray(mention[q])[ranking].mean()))
    counted = [v for v in per_query if v == v]
    return ODmAPResult(k=k, value=float(np.mean(counted)) if counted else float("nan"), n_queries=len(counted),
                       n_skipped=len(per_query) - len(counted), relevance=relevance,
                       false_hits_at_k=float(np.mean(false_hits)) if false_hits else float("nan"),
                       per_query=tuple(per_query))


def evaluate_odmap(model, queries, gallery, *, k: int = 5, rule: str = "own", edited_captions: bool = True,
                   same_text: bool = True, batch_size: int = 128, progress: bool = True) -> ODmAPResult:
    """ODmAP@k of ``model``: object-removed query images against the captions of the original images.

    Args:
        model: A :class:`~ravl.models.VisionLanguageModel`.
        queries: A :class:`~ravl.data.RegionDataset` written by
            :func:`ravl.data.manipulation.manipulate_dataset` with ``operation="remove"``: each row's
            ``manipulation`` names the removed object and its ``source_file``.
        gallery: The dataset (or split) the queries were made from; its captions are the gallery
            (an image's ``caption`` plus its ``captions`` / ``coco_captions``).
        k: The cut-off.
        rule: The relevance rule, ``"own"`` or ``"any"`` (module docstring).
        edited_captions: Also put each query's edited captions (those not among its source
            image's captions) in the gallery, as captions of its source image: the text side of the manipulation, so that a source image whose every
            caption names the object (one synthetic caption per image) still has a relevant caption.
        same_text: See :func:`odmap_relevance`.
        batch_size: Images or captions per forward pass.
        progress: Show progress bars.

    Returns:
        An :class:`ODmAPResult` (``reconstructed=True``); queries whose source image is not in the
        gallery count as skipped under ``"own"``.

    Raises:
        DatasetError: Query rows without a ``remove`` manipulation record.
    """
    caller = "evaluate_odmap"
    model = check_model(model, caller)
    q_ds = check_dataset(queries, caller, "queries")
    g_ds = check_dataset(gallery, caller, "gallery")
    k = check_int(k, "k", caller, low=1)
    check_choice(rule, "rule", caller, RELEVANCE_RULES)
    if len(q_ds) == 0 or len(g_ds) == 0:
        raise DatasetError(f"{caller} needs query images and gallery images; got {len(q_ds)} and {len(g_ds)}.")
    rows = metadata_rows(q_ds)
    by_name = {r.file_name: r.index for r in g_ds}
    source, removed = [], []
    for r in q_ds:
        rec = rows[r.line].get(MANIPULATION_KEY)
        if not isinstance(rec, dict) or rec.get("op") != "remove":
            raise DatasetError(f"{q_ds.metadata_path.name} line {r.line} ({r.file_name}) has no 'remove' "
                               f"'{MANIPULATION_KEY}' record; make the queries with "
                               "ravl.data.manipulation.manipulate_dataset(..., operation='remove').")
        source.append(by_name.get(rec.get("source_file"), -1))
        removed.append(rec.get("words") or rec["object"].replace("_", " "))
    caps = image_captions(g_ds)
    flat = [c for cs in caps for c in cs]
    owner_list = [i for i, cs in enumerate(caps) for _ in cs]
    n_original = len(flat)
    if edited_captions:
        for src, cs in zip(source, image_captions(q_ds, required=False)):
            new = [c for c in cs if c not in caps[src]] if src >= 0 else []  # the edited ones only
            flat.extend(new)
            owner_list.extend([src] * len(new))
    owner = np.asarray(owner_list, dtype=np.int64)
    img = torch.as_tensor(embed_images(model, q_ds, batch_size=batch_size, progress=progress))
    txt = embed_texts(model, flat, batch_size=batch_size)
    scores = img.to(model.device) @ txt.to(model.device).T
    relevant, mention = odmap_relevance(source, removed, flat, owner, rule=rule, same_text=same_text)
    res = odmap_at_k(rankings_from_scores(scores, k), relevant, k, mention=mention, relevance=rule)
    meta = {"n_gallery_captions": len(flat), "n_original_captions": n_original, "edited_captions": edited_captions,
            "same_text": same_text,
            "n_query_sources_found": int(sum(s >= 0 for s in source))}
    return dataclasses.replace(res, meta=meta)
