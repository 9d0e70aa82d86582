"""What a negative source hands to a score: anchors, their positives, and candidate negatives.

A source answers "where do negatives come from, and how many": the batch, a queue, synthetic mixtures,
an index. It never computes a loss. Its output, :class:`Candidates`, holds *prepared* embeddings (see
:meth:`contrastkit.scores.Score.prepare`); :func:`score_candidates` turns them into the
``(pos, neg, neg_mask)`` triple every objective takes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from contrastkit.errors import ConfigError, ShapeError, is_integer_dtype
from contrastkit.scores import Score, autocast_off, score_dtype


@dataclass
class Candidates:
    """Anchors with one positive each and N candidate negatives.

    Attributes:
        anchors: (M, D) prepared anchor embeddings.
        positives: (M, D) prepared positive embeddings, row i is the positive of anchor i.
        negatives: (N, D) negatives shared by every anchor, or (M, N, D) negatives per anchor.
        neg_mask: optional bool (M, N); True marks a candidate that is *not* a negative of that anchor
            (for in-batch negatives: the anchor itself and its positive).
        anchor_labels: optional (M,) labels or instance ids of the anchors (for oracle / supervised masks).
        negative_labels: optional (N,) or (M, N) labels of the candidates, same meaning.
        extra_negatives: optional (M, n, D) per-anchor negatives scored after ``negatives`` (the union of a
            shared and a per-anchor source, :class:`~contrastkit.negatives.UnionNegatives`, without
            broadcasting the shared block to every anchor). ``neg_mask`` and ``negative_labels`` then cover
            all N + n columns, the shared ones first.
    """

    anchors: Tensor
    positives: Tensor
    negatives: Tensor
    neg_mask: Tensor | None = None
    anchor_labels: Tensor | None = None
    negative_labels: Tensor | None = None
    extra_negatives: Tensor | None = None

    def __post_init__(self) -> None:
        """Embedding and label shapes (shape checks only: no device synchronisation), for any source, a
        user's too: a (1, D) or (D,) positive was broadcast against every anchor, a silently wrong loss."""
        a, p, neg = self.anchors, self.positives, self.negatives
        if a.ndim != 2:
            raise ShapeError(f"anchors must have shape (M, D), got {tuple(a.shape)}")
        if tuple(p.shape) != tuple(a.shape):
            raise ShapeError(
                f"positives must have the anchors' shape {tuple(a.shape)}, one (D,) row per anchor; got "
                f"{tuple(p.shape)}"
            )
        m, d = a.shape
        if not (
            (neg.ndim == 2 and neg.shape[1] == d)
            or (neg.ndim == 3 and neg.shape[0] == m and neg.shape[2] == d)
        ):
            raise ShapeError(
                f"negatives must have shape (N, {d}) (shared) or ({m}, N, {d}) (per anchor) for anchors of "
                f"shape {tuple(a.shape)}; got {tuple(neg.shape)}"
            )
        extra = self.extra_negatives
        if extra is not None and not (extra.ndim == 3 and extra.shape[0] == m and extra.shape[2] == d):
            raise ShapeError(
                f"extra_negatives must have shape ({m}, n, {d}) for anchors of shape {tuple(a.shape)}; got "
                f"{tuple(extra.shape)}"
            )
        m, n = self.anchors.shape[0], self.num_negatives
        if self.anchor_labels is not None and tuple(self.anchor_labels.shape) != (m,):
            raise ShapeError(
                f"anchor_labels must have shape ({m},), one per anchor, got {tuple(self.anchor_labels.shape)}"
            )
        if self.negative_labels is not None and tuple(self.negative_labels.shape) not in ((n,), (m, n)):
            raise ShapeError(
                f"negative_labels must have shape ({n},) or ({m}, {n}), one per candidate column, got "
                f"{tuple(self.negative_labels.shape)}"
            )

    @property
    def num_negatives(self) -> int:
        """N (+ n), the number of candidate columns (masked ones included)."""
        extra = 0 if self.extra_negatives is None else self.extra_negatives.shape[-2]
        return self.negatives.shape[-2] + extra


@dataclass
class Contrast:
    """Scores ready for an objective: ``loss = objective(pos, neg, neg_mask)``."""

    pos: Tensor
    neg: Tensor
    neg_mask: Tensor | None = None

    def valid_negatives(self) -> Tensor:
        """Number of negatives each anchor really has, shape (M,)."""
        if self.neg_mask is None:
            return torch.full_like(self.pos, self.neg.shape[1], dtype=torch.long)
        return (~self.neg_mask).sum(dim=1)


def check_labels(labels: Tensor | None, z1: Tensor, source: nn.Module) -> None:
    """Refuse ``labels`` that are not one integer class index per embedding of the batch ``z1`` (B, D): a
    single label would otherwise broadcast over every anchor in the oracle and supervised masks."""
    if labels is None:
        return
    b = z1.shape[0]
    name = type(source).__name__
    if not isinstance(labels, Tensor) or tuple(labels.shape) != (b,):
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        flat = isinstance(labels, Tensor) and labels.numel() == b
        raise ShapeError(
            f"{name}: labels must have shape ({b},), one per embedding of the batch of {b}, got {shape}"
            + ("; flatten them" if flat else "")
        )
    if not is_integer_dtype(labels.dtype):
        raise ConfigError(
            f"{name}: labels must be integer class indices (-1: unknown), got dtype {labels.dtype}; "
            "convert them with labels.long()"
        )


def oracle_mask(candidates: Candidates) -> Tensor:
    """Mask of candidates that share the anchor's label: the false negatives (Chuang et al. 2020).

    With true class labels this gives the "unbiased" oracle of Debiased Contrastive Learning: same-class
    samples are removed from the negatives. Returns a bool (M, N) tensor.

    A label of ``-1`` means unknown (an unfilled queue slot, a synthetic MoCHi point): it never counts as
    same-class, even against an anchor whose label is also ``-1``.
    """
    if candidates.anchor_labels is None or candidates.negative_labels is None:
        if candidates.anchor_labels is None:
            raise ConfigError(
                "the oracle mask (and a supervised objective) needs the anchors' labels, but the step was "
                "given none: pass the batch's labels (labels=) to the learner or the source"
            )
        raise ConfigError(
            "the oracle mask (and a supervised objective) needs the negatives' labels, but the negative "
            "source gave none: build one that knows them (MinedNegatives: train_labels=, one per item of "
            "embed_all; a queue stores the labels given with each batch)"
        )
    neg_labels = candidates.negative_labels
    if neg_labels.ndim == 1:
        neg_labels = neg_labels.unsqueeze(0)
    anchors = candidates.anchor_labels.unsqueeze(1)
    return (anchors == neg_labels) & (anchors >= 0)


def score_candidates(candidates: Candidates, score: Score, *, oracle: bool = False) -> Contrast:
    """Score anchors against positives and negatives; merge the source's mask with the oracle mask.

    The scores are computed with autocast off, in float32, or in float64 when the embeddings are float64
    (:func:`~contrastkit.scores.score_dtype`). Under bf16 autocast the negatives' matmul would otherwise
    round every logit to bf16 (8 bits of mantissa: up to ~0.02 at temperature 0.2) while the positives'
    row-wise products stayed float32. The cost is one float32 (M, D) x (D, N) product.
    """
    tensors = [candidates.anchors, candidates.positives, candidates.negatives]
    if candidates.extra_negatives is not None:
        tensors.append(candidates.extra_negatives)
    dtype = score_dtype(*(t.dtype for t in tensors))
    with autocast_off(candidates.anchors.device.type):
        anchors = candidates.anchors.to(dtype)
        pos = score.pairs(anchors, candidates.positives.to(dtype))
        neg = score.against(anchors, candidates.negatives.to(dtype))
        if candidates.extra_negatives is not None:
            neg = torch.cat([neg, score.against(anchors, candidates.extra_negatives.to(dtype))], dim=1)
    mask = candidates.neg_mask
    if oracle:
        extra = oracle_mask(candidates)
        mask = extra if mask is None else mask | extra
    return Contrast(pos=pos, neg=neg, neg_mask=mask)


def source_kwargs(source: nn.Module, indices: Tensor | None, how: str = "indices=...") -> dict[str, Tensor]:
    """The keyword arguments ``source`` takes besides the embeddings: ``indices`` when it
    ``needs_indices`` (an error naming ``how`` to pass them when they are missing), or when it
    ``accepts_indices`` and they are given (the queue keeps them beside its keys); else none."""
    if not getattr(source, "needs_indices", False):
        return (
            {"indices": indices} if indices is not None and getattr(source, "accepts_indices", False) else {}
        )
    if indices is None:
        raise ConfigError(
            f"the negative source {type(source).__name__} needs the batch's dataset indices: pass {how}"
        )
    return {"indices": indices}


class NegativeSource(nn.Module):
    """Base class of negative sources.

    ``forward(anchors, positives, labels=None)`` receives prepared embeddings of two views, shape
    (B, D) each, and returns :class:`Candidates`. Stateful sources (queues, indexes) update their state in
    :meth:`update`, which the training step calls *after* the loss has been computed.

    ``needs_indices`` is True for sources that also need the batch's dataset indices (``indices=`` keyword
    of ``forward`` and ``update``, e.g. :class:`~contrastkit.negatives.MinedNegatives`, which must not
    mine an anchor's own item); the learner passes them only to such sources, and to those that
    ``accepts_indices`` (they take them when given: the queue stores them beside its keys).
    """

    needs_indices: bool = False
    accepts_indices: bool = False

    def forward(self, z1: Tensor, z2: Tensor, labels: Tensor | None = None) -> Candidates:
        raise NotImplementedError

    @torch.no_grad()
    def update(self, z1: Tensor, z2: Tensor, labels: Tensor | None = None) -> None:
        """Update internal state after the loss (no-op for stateless sources)."""
