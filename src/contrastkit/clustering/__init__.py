"""Self-labelling by clustering: Sinkhorn-Knopp pseudo-labels (SeLa) and cross-view / cross-modal SeLaVi."""

from contrastkit.clustering.sela import (
    ClusteringHeads,
    SelaHistory,
    SelfLabelling,
    random_equipartition,
    train_self_labelling,
)
from contrastkit.clustering.sinkhorn import SinkhornResult, gaussian_marginal, sinkhorn

__all__ = [
    "ClusteringHeads",
    "SelaHistory",
    "SelfLabelling",
    "SinkhornResult",
    "gaussian_marginal",
    "random_equipartition",
    "sinkhorn",
    "train_self_labelling",
]
