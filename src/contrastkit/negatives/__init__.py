"""Negative sources: where negatives come from and how many there are.

Every source returns :class:`Candidates`; a :class:`~contrastkit.scores.Score` turns them into the
``(pos, neg, neg_mask)`` an objective takes, so objectives never know where negatives came from.
"""

from __future__ import annotations

from contrastkit.errors import ConfigError
from contrastkit.negatives.base import (
    Candidates,
    Contrast,
    NegativeSource,
    oracle_mask,
    score_candidates,
)
from contrastkit.negatives.distributed import GatherNegatives, gather_with_grad
from contrastkit.negatives.in_batch import InBatchNegatives
from contrastkit.negatives.mined import MinedNegatives
from contrastkit.negatives.mixing import HardNegativeMixing
from contrastkit.negatives.momentum import MomentumEncoder, cosine_momentum
from contrastkit.negatives.queue import KeyQueue, QueueNegatives

NEGATIVES: tuple[str, ...] = ("in-batch", "queue", "gather", "queue+mochi", "in-batch+mochi")
"""Source names for ``--negatives``; ``+mochi`` wraps the base source in :class:`HardNegativeMixing`."""


def build_negatives(name: str, *, queue_size: int = 4096, mix_start_step: int = 0) -> NegativeSource:
    """Make a negative source by name (see :data:`NEGATIVES`)."""
    if name not in NEGATIVES:
        raise ConfigError(f"unknown negatives source {name!r}; choose one of: {', '.join(NEGATIVES)}")
    base, _, mixing = name.partition("+")
    source: NegativeSource
    if base == "queue":
        source = QueueNegatives(size=queue_size)
    elif base == "gather":
        source = GatherNegatives()
    else:
        source = InBatchNegatives()
    return HardNegativeMixing(source, start_step=mix_start_step) if mixing == "mochi" else source


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
    "build_negatives",
    "cosine_momentum",
    "gather_with_grad",
    "oracle_mask",
    "score_candidates",
]
