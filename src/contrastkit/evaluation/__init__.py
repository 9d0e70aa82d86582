"""Evaluation: how good the learned embeddings are downstream.

kNN (:mod:`~contrastkit.evaluation.knn`), the linear probe (:mod:`~contrastkit.evaluation.linear`),
few-label fine-tuning (:mod:`~contrastkit.evaluation.finetune`) and the geometry of the embedding
(:mod:`~contrastkit.evaluation.geometry`: alignment, uniformity, k-means NMI/ARI).
"""

from contrastkit.evaluation.features import extract_features
from contrastkit.evaluation.finetune import (
    FinetuneResult,
    check_label_fractions,
    few_label_subset,
    finetune,
    finetune_few_labels,
)
from contrastkit.evaluation.geometry import alignment, cluster_scores, embedding_geometry, uniformity
from contrastkit.evaluation.knn import knn_accuracy, knn_predict, unseen_classes_warning
from contrastkit.evaluation.linear import LinearProbeResult, linear_probe

__all__ = [
    "FinetuneResult",
    "LinearProbeResult",
    "alignment",
    "check_label_fractions",
    "cluster_scores",
    "embedding_geometry",
    "extract_features",
    "few_label_subset",
    "finetune",
    "finetune_few_labels",
    "knn_accuracy",
    "knn_predict",
    "linear_probe",
    "uniformity",
    "unseen_classes_warning",
]
