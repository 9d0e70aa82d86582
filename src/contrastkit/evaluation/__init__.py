"""Evaluation: how good the learned embeddings are downstream."""

from contrastkit.evaluation.features import extract_features
from contrastkit.evaluation.knn import knn_accuracy, knn_predict

__all__ = ["extract_features", "knn_accuracy", "knn_predict"]
