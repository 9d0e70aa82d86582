"""Negative sources: where negatives come from and how many there are.

Every source returns :class:`Candidates`; a :class:`~contrastkit.scores.Score` turns them into the
``(pos, neg, neg_mask)`` an objective takes, so objectives never know where negatives came from.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from contrastkit.errors import ConfigError
from contrastkit.negatives.base import (
    Candidates,
    Contrast,
    NegativeSource,
    check_labels,
    oracle_mask,
    score_candidates,
    source_kwargs,
)
from contrastkit.negatives.distributed import GatherNegatives, gather_with_grad
from contrastkit.negatives.in_batch import InBatchNegatives
from contrastkit.negatives.mined import MinedNegatives
from contrastkit.negatives.mixing import HardNegativeMixing
from contrastkit.negatives.momentum import MomentumEncoder, cosine_momentum
from contrastkit.negatives.queue import KeyQueue, QueueNegatives
from contrastkit.negatives.union import UnionNegatives

NEGATIVES: tuple[str, ...] = (
    "in-batch",
    "cross-view",
    "queue",
    "gather",
    "mined",
    "queue+mochi",
    "in-batch+mochi",
    "mined+mochi",
    "in-batch+mined",
)
"""Source names for ``--negatives``; ``cross-view`` is SimCSE's one-directional B - 1 in-batch negatives
(:class:`InBatchNegatives` with ``same_view=False, symmetric=False``), ``+mochi`` wraps the base source in
:class:`HardNegativeMixing`, and ``in-batch+mined`` is the :class:`UnionNegatives` of in-batch and mined
negatives."""


def from_the_batch(name: str) -> bool:
    """Whether source ``name`` takes (some of) its negatives from the other items of the batch, so that a
    batch of one item has none."""
    return name.startswith("in-batch") or name in ("cross-view", "gather")


def build_negatives(
    name: str,
    *,
    queue_size: int = 4096,
    queue_dim: int | None = None,
    mix_start_step: int = 0,
    mix_hardest: int = 256,
    mix_synthetic: int = 256,
    mix_query: int = 32,
    mix_normalize: bool = True,
    embed_all: Callable[[], Tensor] | None = None,
    mined_negatives: int = 16,
    refresh_every: int = 1000,
    index: str = "torch",
    train_labels: Tensor | None = None,
    encode_items: Callable[[Tensor], Tensor] | None = None,
    both_views: bool = False,
) -> NegativeSource:
    """Make a negative source by name (see :data:`NEGATIVES`).

    ``mined`` (and ``in-batch+mined``) needs ``embed_all`` (see :class:`MinedNegatives`, which also takes
    the other mined options; the union takes both views as anchors, as in-batch does).
    ``mix_normalize`` is :class:`HardNegativeMixing`'s ``normalize``: pass the score's ``unit_norm`` (False for
    the dot score, whose embeddings are not unit vectors: normalised mixtures would be far from the real
    negatives' scale, the easiest negatives rather than the hardest).
    """
    if name not in NEGATIVES:
        raise ConfigError(f"unknown negatives source {name!r}; choose one of: {', '.join(NEGATIVES)}")
    base, _, mixing = name.partition("+")
    source: NegativeSource
    if base == "queue":
        # the key buffer allocated now when D is known: a lazily allocated one changes shape at the first
        # step, which made a compiled learner compile twice
        source = QueueNegatives(size=queue_size, dim=queue_dim)
    elif base == "gather":
        source = GatherNegatives()
    elif base == "mined" or mixing == "mined":
        if embed_all is None:
            raise ConfigError(
                f"--negatives {name} mines from an index of the whole training set, which this training loop "
                "does not provide: use it with contrastkit train, or another --negatives"
            )
        source = MinedNegatives(
            embed_all,
            num_negatives=mined_negatives,
            refresh_every=refresh_every,
            index=index,
            train_labels=train_labels,
            encode_items=encode_items,
            both_views=both_views or mixing == "mined",
        )
        if mixing == "mined":
            source = UnionNegatives(InBatchNegatives(), source)
    elif base == "cross-view":
        source = InBatchNegatives(same_view=False, symmetric=False)
    else:
        source = InBatchNegatives()
    if mixing != "mochi":
        return source
    return HardNegativeMixing(
        source,
        num_hardest=mix_hardest,
        num_mixed=mix_synthetic,
        num_query_mixed=mix_query,
        start_step=mix_start_step,
        normalize=mix_normalize,
    )


__all__ = [
    "NEGATIVES",
    "Candidates",
    "Contrast",
    "GatherNegatives",
    "HardNegativeMixing",
    "InBatchNegatives",
    "KeyQueue",
    "MinedNegatives",
    "MomentumEncoder",
    "NegativeSource",
    "QueueNegatives",
    "UnionNegatives",
    "build_negatives",
    "check_labels",
    "cosine_momentum",
    "from_the_batch",
    "gather_with_grad",
    "oracle_mask",
    "score_candidates",
    "source_kwargs",
]
