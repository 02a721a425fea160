"""Ranking metrics of cross-modal retrieval: Recall@k, mAP and AP@k over a score matrix.

Shape symbols: Q queries, G gallery items (captions for image->text, images for text->image).

Every function ranks a query's gallery by descending score; equal scores keep gallery order (the
lower index ranks first), so results are deterministic. Ranks are 1-based.

Definitions (per query q with relevant set Rel_q, R_q = |Rel_q|):

* Recall@k: 1 when at least one relevant item ranks in the top k, else 0 (the usual cross-modal
  retrieval "R@k": COCO / Flickr30k image-text retrieval); averaged over queries.
* AP (full ranking): (1/R_q) * sum over relevant items of (relevant items ranked at or above it) /
  (its rank); mAP is its mean over queries. With one relevant item AP is 1/rank (MRR).
* AP@k: (1/min(k, R_q)) * sum_{r<=k} P_q(r) * rel_q(r), P_q(r) the precision of the top r.

Queries without any relevant item are left out of every mean and counted apart.

Example:
    >>> import numpy as np
    >>> scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8]])
    >>> ranks = relevant_ranks(scores, [[2], [1, 2]])
    >>> [r.tolist() for r in ranks]
    [[2], [1, 2]]
    >>> recall_at_k(ranks, 1), mean_average_precision(ranks)
    (0.5, 0.75)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ravl.exceptions import InvalidParameterError
from ravl.utils.validation import check_int

__all__ = [
    "relevant_ranks",
    "recall_at_k",
    "average_precision",
    "mean_average_precision",
    "average_precision_at_k",
    "rank_relevance",
]


def _relevant_lists(relevant, n_queries: int, n_gallery: int, caller: str) -> list[np.ndarray]:
    """``relevant`` as one sorted int64 array of gallery indices per query."""
    if isinstance(relevant, (np.ndarray, torch.Tensor)) and np.asarray(relevant).dtype == bool:
        rel = np.asarray(relevant)
        if rel.shape != (n_queries, n_gallery):
            raise InvalidParameterError(f"The 'relevant' parameter of {caller} must be a boolean [Q, G] = "
                                        f"[{n_queries}, {n_gallery}] matrix or one list of gallery indices per "
                                        f"query. Got a matrix of shape {rel.shape}.")
        return [np.flatnonzero(row) for row in rel]
    if len(relevant) != n_queries:
        raise InvalidParameterError(f"The 'relevant' parameter of {caller} must hold one list of gallery indices "
                                    f"per query ({n_queries}). Got {len(relevant)} lists instead.")
    out = []
    for q, idx in enumerate(relevant):
        a = np.unique(np.asarray(list(idx), dtype=np.int64))
        if a.size and (a[0] < 0 or a[-1] >= n_gallery):
            raise InvalidParameterError(f"The 'relevant' parameter of {caller}: query {q} names gallery index "
                                        f"{int(a[0] if a[0] < 0 else a[-1])}, outside [0, {n_gallery}).")
        out.append(a)
    return out


def relevant_ranks(scores, relevant, *, chunk_size: int = 256) -> list[np.ndarray]:
    """The 1-based rank of every relevant gallery item, per query, sorted ascending.

    Computed without sorting whole rows (a relevant item's rank is one plus the number of items
    scored above it, ties broken by gallery index), in chunks of queries, on the scores' device.

    Args:
        scores: ``[Q, G]`` similarity scores (numpy array or tensor; higher ranks first).
        relevant: One list of relevant gallery indices per query, or a boolean ``[Q, G]`` matrix.
        chunk_size: Queries compared at once (memory ~ chunk_size x max R_q x G).

    Returns:
        Q int64 arrays; an empty array for a query without relevant items.

    Raises:
        InvalidParameterError: For scores that are not 2-D, a relevance of the wrong shape, or an
            index outside the gallery.
    """
    caller = "relevant_ranks"
    s = scores if isinstance(scores, torch.Tensor) else torch.as_tensor(np.asarray(scores, dtype=np.float64))
    if s.dim() != 2:
        raise InvalidParameterError(f"The 'scores' parameter of {caller} must be a [Q, G] matrix. Got shape "
                                    f"{tuple(s.shape)}.")
    chunk_size = check_int(chunk_size, "chunk_size", caller, low=1)
    n_q, n_g = s.shape
    rel = _relevant_lists(relevant, n_q, n_g, caller)
    out: list[np.ndarray] = []
    gallery = torch.arange(n_g, device=s.device)
    for start in range(0, n_q, chunk_size):
        block = rel[start:start + chunk_size]
        width = max((len(r) for r in block), default=0)
        if width == 0:
            out.extend(np.zeros(0, dtype=np.int64) for _ in block)
            continue
        idx = torch.zeros(len(block), width, dtype=torch.long)
        mask = torch.zeros(len(block), width, dtype=torch.bool)
        for i, r in enumerate(block):
            idx[i, :len(r)] = torch.as_tensor(r)
            mask[i, :len(r)] = True
        idx, mask = idx.to(s.device), mask.to(s.device)
        rows = s[start:start + len(block)]
        target = rows.gather(1, idx)  # [b, width]
        above = (rows[:, None, :] > target[:, :, None]).sum(-1)
        tied_before = ((rows[:, None, :] == target[:, :, None]) & (gallery[None, None, :] < idx[:, :, None])).sum(-1)
        ranks = (above + tied_before + 1).cpu().numpy()
        m = mask.cpu().numpy()
        out.extend(np.sort(ranks[i][m[i]]).astype(np.int64) for i in range(len(block)))
    return out


def _with_relevant(ranks: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(r) for r in ranks if len(r)]


def recall_at_k(ranks: Sequence[np.ndarray], k: int) -> float:
    """Fraction of queries (with a relevant item) whose best relevant item ranks in the top ``k``.

    Args:
        ranks: Per query, the ranks of its relevant items (from :func:`relevant_ranks`).
        k: The cut-off.

    Returns:
        A value in [0, 1], or NaN when no query has a relevant item.
    """
    k = check_int(k, "k", "recall_at_k", low=1)
    kept = _with_relevant(ranks)
    return float(np.mean([r.min() <= k for r in kept])) if kept else float("nan")


def average_precision(ranks: np.ndarray) -> float:
    """AP over the full ranking of one query from the sorted ranks of its relevant items."""
    r = np.sort(np.asarray(ranks, dtype=np.float64))
    if r.size == 0:
        return float("nan")
    return float(np.mean(np.arange(1, r.size + 1) / r))


def mean_average_precision(ranks: Sequence[np.ndarray]) -> float:
    """mAP: the mean of :func:`average_precision` over queries with a relevant item (NaN if none)."""
    kept = _with_relevant(ranks)
    return float(np.mean([average_precision(r) for r in kept])) if kept else float("nan")


def rank_relevance(ranking: Sequence[int], relevant: Sequence[int] | np.ndarray) -> np.ndarray:
    """``rel(r)`` for r = 1..len(ranking): whether the item at each rank is relevant (bool array)."""
    rel = set(int(i) for i in np.asarray(relevant).ravel().tolist())
    return np.array([int(i) in rel for i in ranking], dtype=bool)


def average_precision_at_k(rel: Sequence[bool] | np.ndarray, k: int, n_relevant: int) -> float:
    """AP@k = (1/min(k, R)) * sum_{r<=k} P(r) * rel(r) of one query.

    Args:
        rel: ``rel(r)`` for the ranks 1, 2, ... (at least the top ``k``, or the whole ranking when
            it is shorter).
        k: The cut-off.
        n_relevant: R, how many gallery items are relevant to the query (not only those ranked).

    Returns:
        A value in [0, 1]; NaN when ``n_relevant`` is 0.
    """
    k = check_int(k, "k", "average_precision_at_k", low=1)
    n_relevant = check_int(n_relevant, "n_relevant", "average_precision_at_k", low=0)
    if n_relevant == 0:
        return float("nan")
    hits = np.asarray(rel, dtype=bool)[:k]
    if hits.sum() > n_relevant:
        raise InvalidParameterError(f"average_precision_at_k: the top {k} hold {int(hits.sum())} relevant items, "
                                    f"more than n_relevant={n_relevant}.")
    precision = np.cumsum(hits) / np.arange(1, hits.size + 1)
    return float((precision * hits).sum() / min(k, n_relevant))
