"""Weighted k-nearest-neighbour classification of embeddings.

Wu, Xiong, Yu, Lin 2018, "Unsupervised Feature Learning via Non-Parametric Instance Discrimination",
Sec. 3.4 ("weighted kNN"): with L2-normalised features, the k training samples most similar to a test
feature vote for their class with weight ``exp(s_i / τ)``; defaults k = 200 (the paper's) and τ = 0.1 (the
paper chooses τ = 0.07, its training temperature; 0.1 is the usual value of kNN monitors of self-supervised
training, whose temperatures are not 0.07: pass ``temperature=0.07`` for the paper's). Runs on the features'
device in batches of test samples, so the full (test × train) similarity is never held.

The class votes are a ``scatter_add_``, which CUDA computes with atomic additions in no fixed order; under
``torch.use_deterministic_algorithms`` (``contrastkit train --deterministic``) on CUDA they are a one-hot
weighted sum instead, in a fixed order, with the batch shrunk so the one-hot block stays under
:data:`ONE_HOT_ELEMENTS`.

The weights are computed as ``exp((s_i - s_max) / τ)``, ``s_max`` the test row's largest similarity: the
same vote up to a positive factor per row (the same argmax), without the overflow of ``exp(s_i / τ)`` in
float32 below τ ≈ 0.011. The inputs are checked first (non-finite features, label shapes, dtypes and
values, ``k``, ``τ``) with one host synchronisation for all of them; the vote itself adds none.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit.errors import ConfigError, DataError
from contrastkit.evaluation.features import check_integer_labels

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


def _positive_int(name: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def _check_temperature(v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0:
        raise ConfigError(
            f"temperature (τ of the vote weights exp(s / τ)) must be a finite number > 0, got {v!r}"
        )
    return float(v)


def _check_features(train_features: Tensor, test_features: Tensor) -> None:
    for name, x in (("train_features", train_features), ("test_features", test_features)):
        if not isinstance(x, Tensor):
            raise DataError(f"{name} must be a tensor of shape (N, D), got {type(x).__name__}")
    if (
        train_features.ndim != 2
        or test_features.ndim != 2
        or train_features.shape[1] != test_features.shape[1]
    ):
        raise DataError(
            f"features must be (N, D) with equal D; got train {tuple(train_features.shape)} and "
            f"test {tuple(test_features.shape)}"
        )
    if train_features.shape[0] == 0:
        raise DataError("the train split is empty; kNN needs labelled training images to vote")


def _check_labels(name: str, labels: object, n: int) -> Tensor:
    if not isinstance(labels, Tensor):
        raise DataError(f"{name} must be a tensor of shape ({n},), got {type(labels).__name__}")
    if labels.shape != (n,):
        raise DataError(
            f"{name} must have shape ({n},), one label per feature row, got {tuple(labels.shape)}"
        )
    check_integer_labels(name, labels)
    return labels


MAX_SPARSE_CLASSES = 2**16
"""Class indices up to this many are taken as they are, whatever the number of labelled items."""


def check_dense_labels(largest: int, items: int) -> int:
    """The number of classes, ``largest + 1``, for labels that are class indices ``0 .. C-1``: refused when it
    exceeds both :data:`MAX_SPARSE_CLASSES` and the number of labelled ``items`` (train and test together),
    which only sparse ids (a dataset's own class codes) do. The votes and the probe's weights hold a row or
    column per class index, so ids such as {0, 10**8} would take gigabytes or more (a linear probe with
    them ran out of memory); below the limit that costs at most a few hundred MB."""
    if largest + 1 > max(items, MAX_SPARSE_CLASSES):
        raise DataError(
            f"labels must be class indices 0 .. C-1, but the largest is {largest} for {items} labelled items "
            "(sparse class ids: each index up to the largest gets its own votes / weights); remap them, e.g. "
            "torch.unique(labels, return_inverse=True)[1]"
        )
    return largest + 1


def _check_values(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor | None,
    num_classes: int | None,
) -> int:
    """Non-finite rows and label ranges, fetched in one host synchronisation; returns ``num_classes``."""
    dev = train_features.device

    def nonfinite_rows(x: Tensor) -> Tensor:
        if not (x.dtype.is_floating_point or x.dtype.is_complex):
            return torch.zeros((), dtype=torch.int64, device=dev)
        # NaN propagates through max/min and ±inf shows in one of them: no (N, D) temporary
        finite = torch.isfinite(x.amax(dim=1)) & torch.isfinite(x.amin(dim=1))
        return (~finite).sum().to(dev)

    stats = [nonfinite_rows(train_features), nonfinite_rows(test_features)]
    splits = [("train", train_labels)] + ([("test", test_labels)] if test_labels is not None else [])
    for _, y in splits:
        if y.numel():
            stats += [y.min().to(dev, torch.int64), y.max().to(dev, torch.int64)]
        else:
            stats += [torch.zeros((), dtype=torch.int64, device=dev)] * 2
    values = torch.stack(stats).tolist()  # the one host synchronisation of the checks
    for name, x, bad in (("train", train_features, values[0]), ("test", test_features, values[1])):
        if bad:
            raise DataError(
                f"{name} features contain NaN or infinity in {bad} of {x.shape[0]} rows; check the model "
                "that produced them (kNN would rank the NaN similarities first)"
            )
    top = -1
    for i, (name, _) in enumerate(splits):
        lo, hi = values[2 + 2 * i], values[3 + 2 * i]
        if lo < 0:
            raise DataError(
                f"{name} labels must be non-negative class indices, got {lo} (images with unknown labels, -1, "
                "cannot be used in kNN accuracy); remove them or give a labelled data set"
            )
        top = max(top, hi)
    if num_classes is None:
        items = train_labels.numel() + (0 if test_labels is None else test_labels.numel())
        return check_dense_labels(top, items)
    num_classes = _positive_int("num_classes", num_classes)
    if num_classes <= top:
        which = "train" if test_labels is None else "train/test"
        raise ConfigError(
            f"num_classes is {num_classes} but the {which} labels go up to {top}; num_classes must be at "
            f"least {top + 1} (the largest label + 1)"
        )
    return num_classes


def _knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    k: int,
    temperature: float,
    batch_size: int,
) -> Tensor:
    """The vote itself, on checked inputs: no host synchronisation."""
    k = min(k, train_features.shape[0])
    train = F.normalize(train_features.float(), dim=1)
    labels = train_labels.to(train.device, torch.int64)
    deterministic = train.is_cuda and torch.are_deterministic_algorithms_enabled()
    if deterministic:
        batch_size = max(1, min(batch_size, ONE_HOT_ELEMENTS // (k * num_classes)))
    preds = []
    for start in range(0, test_features.shape[0], batch_size):
        query = F.normalize(test_features[start : start + batch_size].float().to(train.device), dim=1)
        sims, idx = (query @ train.T).topk(k, dim=1)  # sorted: column 0 is each row's largest similarity
        weights = ((sims - sims[:, :1]) / temperature).exp()  # exp(s / τ) up to a per-row factor, <= 1
        votes = class_votes(labels[idx], weights, num_classes, deterministic=deterministic)
        preds.append(votes.argmax(dim=1))
    if not preds:
        return torch.empty(0, dtype=torch.int64, device=train.device)
    return torch.cat(preds)


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
    """Predicted class of each test feature by weighted kNN over cosine similarity, shape (N_test,).

    ``k`` above the number of training features is clamped to it (every training feature votes).
    ``num_classes`` defaults to the largest training label + 1. Non-finite features, labels that are not
    a non-negative integer ``(N_train,)`` tensor, and an empty training split are a :class:`DataError`;
    a bad ``k``, ``temperature``, ``batch_size`` or ``num_classes`` a :class:`ConfigError`.
    """
    k = _positive_int("k (the number of neighbours)", k)
    temperature = _check_temperature(temperature)
    batch_size = _positive_int("batch_size", batch_size)
    _check_features(train_features, test_features)
    train_labels = _check_labels("train_labels", train_labels, train_features.shape[0])
    num_classes = _check_values(train_features, train_labels, test_features, None, num_classes)
    return _knn_predict(train_features, train_labels, test_features, num_classes, k, temperature, batch_size)


@torch.no_grad()
def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    k: int = 200,
    temperature: float = 0.1,
    batch_size: int = 1024,
    num_classes: int | None = None,
) -> float:
    """Top-1 accuracy of :func:`knn_predict` on labelled test features (checked as the training ones; an
    empty test split is a :class:`DataError`). ``num_classes`` as in :func:`knn_predict` (given, it also
    admits more than :data:`MAX_SPARSE_CLASSES` classes on fewer labelled items)."""
    k = _positive_int("k (the number of neighbours)", k)
    temperature = _check_temperature(temperature)
    batch_size = _positive_int("batch_size", batch_size)
    _check_features(train_features, test_features)
    train_labels = _check_labels("train_labels", train_labels, train_features.shape[0])
    test_labels = _check_labels("test_labels", test_labels, test_features.shape[0])
    if test_features.shape[0] == 0:
        raise DataError("the test split is empty; kNN accuracy needs labelled test images")
    num_classes = _check_values(train_features, train_labels, test_features, test_labels, num_classes)
    preds = _knn_predict(train_features, train_labels, test_features, num_classes, k, temperature, batch_size)
    return (preds == test_labels.to(preds.device, torch.int64)).float().mean().item()


def unseen_classes_warning(
    train_labels: Tensor, test_labels: Tensor, class_names: list[str], advice: str
) -> str | None:
    """The warning for eval images whose class has no training image (a small ``--limit``, or a ``test/``
    class missing from ``train/``): no kNN vote, linear probe or fine-tuned head can name that class, so
    every accuracy is capped below 1 whatever the encoder. ``advice`` ends the message (what to change).
    None when every eval class has training images."""
    seen = {int(v) for v in train_labels.unique().tolist()}
    test = test_labels.cpu()
    unseen = sorted({int(v) for v in test.unique().tolist()} - seen)
    if not unseen:
        return None
    count = int(torch.isin(test, torch.tensor(unseen, dtype=test.dtype)).sum())
    names = [class_names[c] if 0 <= c < len(class_names) else str(c) for c in unseen]
    shown = ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (
        f"{len(unseen)} class(es) of the eval images have no training image ({shown}): their {count} of "
        f"{test.numel()} eval images can never be classified correctly, so the accuracies are at most "
        f"{1 - count / test.numel():.4f} whatever the encoder; {advice}"
    )
