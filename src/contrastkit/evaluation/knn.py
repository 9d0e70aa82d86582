"""Weighted k-nearest-neighbour classification of embeddings.

Wu, Xiong, Yu, Lin 2018, "Unsupervised Feature Learning via Non-Parametric Instance Discrimination",
Sec. 3.4 ("weighted kNN"): with L2-normalised features, the k training samples most similar to a test
feature vote for their class with weight ``exp(s_i / τ)``; defaults k = 200, τ = 0.1. Runs on the
features' device in batches of test samples, so the full (test × train) similarity is never held.

The class votes are a ``scatter_add_``, which CUDA computes with atomic additions in no fixed order; under
``torch.use_deterministic_algorithms`` (``contrastkit train --deterministic``) on CUDA they are a one-hot
weighted sum instead, in a fixed order, with the batch shrunk so the one-hot block stays under
:data:`ONE_HOT_ELEMENTS`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

ONE_HOT_ELEMENTS = 2**25  # test rows x k x classes of one deterministic vote block (128 MB in float32)


def class_votes(
    neighbour_labels: Tensor, weights: Tensor, num_classes: int, *, deterministic: bool
) -> Tensor:
    """Sum of each row's ``weights`` (B, k) per class of ``neighbour_labels`` (B, k): votes (B, C).

    ``deterministic`` sums a one-hot block in a fixed order; otherwise ``scatter_add_`` (atomic on CUDA).
    """
    if deterministic:
        one_hot = F.one_hot(neighbour_labels, num_classes).to(weights.dtype)  # (B, k, C)
        return (one_hot * weights.unsqueeze(-1)).sum(dim=1)  # a reduction: fixed order on CUDA too
    votes = torch.zeros(weights.shape[0], num_classes, device=weights.device, dtype=weights.dtype)
    return votes.scatter_add_(1, neighbour_labels, weights)


@torch.no_grad()
def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    *,
    num_classes: int | None = None,
    k: int = 200,
    temperature: float = 0.1,
    batch_size: int = 1024,
) -> Tensor:
    """Predicted class of each test feature by weighted kNN over cosine similarity, shape (N_test,)."""
    if (
        train_features.ndim != 2
        or test_features.ndim != 2
        or train_features.shape[1] != test_features.shape[1]
    ):
        raise ValueError(
            f"features must be (N, D) with equal D; got train {tuple(train_features.shape)} and "
            f"test {tuple(test_features.shape)}"
        )
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(
            f"train_labels must have shape ({train_features.shape[0]},), got {tuple(train_labels.shape)}"
        )
    if num_classes is None:
        num_classes = int(train_labels.max()) + 1
    k = min(k, train_features.shape[0])
    train = F.normalize(train_features.float(), dim=1)
    labels = train_labels.to(train.device)
    deterministic = train.is_cuda and torch.are_deterministic_algorithms_enabled()
    if deterministic:
        batch_size = max(1, min(batch_size, ONE_HOT_ELEMENTS // (k * num_classes)))
    preds = []
    for start in range(0, test_features.shape[0], batch_size):
        query = F.normalize(test_features[start : start + batch_size].float().to(train.device), dim=1)
        sims, idx = (query @ train.T).topk(k, dim=1)
        weights = (sims / temperature).exp()
        votes = class_votes(labels[idx], weights, num_classes, deterministic=deterministic)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    k: int = 200,
    temperature: float = 0.1,
    batch_size: int = 1024,
) -> float:
    """Top-1 accuracy of :func:`knn_predict` on labelled test features."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    preds = knn_predict(
        train_features,
        train_labels,
        test_features,
        num_classes=num_classes,
        k=k,
        temperature=temperature,
        batch_size=batch_size,
    )
    return (preds.cpu() == test_labels.cpu()).float().mean().item()
