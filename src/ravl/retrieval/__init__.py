"""Cross-modal retrieval: Recall@k and mAP of image->text and text->image retrieval, and ODmAP@k
(:mod:`ravl.retrieval.odmap`, reconstructed).

See docs/retrieval.md. Submodules: :mod:`ravl.retrieval.metrics` (ranking metrics over score
matrices), :mod:`ravl.retrieval.evaluate` (a model over a dataset folder's captions).
"""

from ravl.retrieval.evaluate import DEFAULT_KS, RetrievalResult, evaluate_retrieval, image_captions, retrieval_scores
from ravl.retrieval.metrics import (
    average_precision,
    average_precision_at_k,
    mean_average_precision,
    rank_relevance,
    recall_at_k,
    relevant_ranks,
)
from ravl.retrieval.odmap import (
    RELEVANCE_RULES,
    ODmAPResult,
    evaluate_odmap,
    mentions,
    odmap_at_k,
    odmap_relevance,
    rankings_from_scores,
)

__all__ = [
    "DEFAULT_KS",
    "RetrievalResult",
    "evaluate_retrieval",
    "image_captions",
    "retrieval_scores",
    "average_precision",
    "average_precision_at_k",
    "mean_average_precision",
    "rank_relevance",
    "recall_at_k",
    "relevant_ranks",
    "RELEVANCE_RULES",
    "ODmAPResult",
    "evaluate_odmap",
    "mentions",
    "odmap_at_k",
    "odmap_relevance",
    "rankings_from_scores",
]
