"""RaVL Stage 1: discover image features a fine-tuned VLM ties to a class (docs/algorithm.md §2).

Arrays in, :class:`DiscoveryResult` out::

    from ravl.discovery import discover, precision_at_k
    res = discover(region_emb, region_image, labels, preds, region_probs, classes=names)
    res.to_json("runs/nine/discovery.json")
    precision_at_k(res.ranked_regions(), "red_square", k=10, region_attributes=table.attributes)

The clustering functions (fast K-Medoids and exact silhouettes on the clipped cosine distance,
without the n x n matrix) are public too. See ``docs/discovery.md``.
"""

from ravl.discovery.clustering import (
    ClusterSweep,
    KMedoidsFit,
    clipped_cosine_distances,
    cluster_regions,
    kmedoids,
    kmedoids_objective,
    kmedoids_sweep,
    normalize_embeddings,
    silhouette_score,
    silhouette_scores,
)
from ravl.discovery.core import (
    ClusterStats,
    DiscoveryWarning,
    NoFeatureWarning,
    WeakClusteringWarning,
    discover,
    rank_clusters,
    score_clusters,
)
from ravl.discovery.metrics import precision_at_k
from ravl.discovery.result import (
    SCHEMA,
    SCORINGS,
    STATUSES,
    ClassGap,
    ClusterScore,
    DiscoveredFeature,
    DiscoveryConfig,
    DiscoveryResult,
    KSweepEntry,
    RankedRegion,
)

__all__ = [
    "discover",
    "DiscoveryConfig",
    "DiscoveryResult",
    "DiscoveredFeature",
    "ClassGap",
    "RankedRegion",
    "ClusterScore",
    "KSweepEntry",
    "SCHEMA",
    "SCORINGS",
    "STATUSES",
    "precision_at_k",
    "score_clusters",
    "rank_clusters",
    "ClusterStats",
    "DiscoveryWarning",
    "NoFeatureWarning",
    "WeakClusteringWarning",
    "cluster_regions",
    "ClusterSweep",
    "kmedoids",
    "kmedoids_sweep",
    "KMedoidsFit",
    "kmedoids_objective",
    "silhouette_score",
    "silhouette_scores",
    "clipped_cosine_distances",
    "normalize_embeddings",
]
