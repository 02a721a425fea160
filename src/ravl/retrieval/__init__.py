"""Cross-modal retrieval: Recall@k and mAP of image->text and text->image retrieval, and ODmAP@k.

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
]
