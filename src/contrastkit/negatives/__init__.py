"""Negative sources: where negatives come from and how many there are.

Every source returns :class:`Candidates`; a :class:`~contrastkit.scores.Score` turns them into the
``(pos, neg, neg_mask)`` an objective takes, so objectives never know where negatives came from.
"""

from __future__ import annotations

from collections.abc import Callable

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


def _mochi(inner: Callable[[], NegativeSource]) -> Callable[..., NegativeSource]:
    def make(*, queue_size: int = 4096, mix_start_step: int = 0) -> NegativeSource:
        src = inner() if inner is InBatchNegatives else QueueNegatives(size=queue_size)
        return HardNegativeMixing(src, start_step=mix_start_step)

    return make


NEGATIVES: dict[str, Callable[..., NegativeSource]] = {
    "in-batch": InBatchNegatives,
    "queue": QueueNegatives,
    "gather": GatherNegatives,
    "queue+mochi": _mochi(QueueNegatives),
    "in-batch+mochi": _mochi(InBatchNegatives),
}


def build_negatives(name: str, *, queue_size: int = 4096, mix_start_step: int = 0) -> NegativeSource:
    """Make a negative source by name (see :data:`NEGATIVES`)."""
    if name not in NEGATIVES:
        raise ConfigError(f"unknown negatives source {name!r}; choose one of: {', '.join(NEGATIVES)}")
    if name == "queue":
        return QueueNegatives(size=queue_size)
    if name.endswith("+mochi"):
        return NEGATIVES[name](queue_size=queue_size, mix_start_step=mix_start_step)
    return NEGATIVES[name]()


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
