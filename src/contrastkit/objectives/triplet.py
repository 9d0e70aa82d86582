"""Triplet loss with FaceNet's negative selection.

Schroff, Kalenichenko, Philbin 2015, "FaceNet: A Unified Embedding for Face Recognition and Clustering"
(CVPR 2015, arXiv 1503.03832), Sec. 3.1 (the triplet constraint, Eq. (1), over all triplets, Eq. (2), and
the hinge loss summed over them, Eq. (3)) and Sec. 3.2 (triplet selection: the semi-hard inequality,
Eq. (4)); the numbers as printed, read in a text transcription of the paper kept in a public repository
("... (4) We call these negative exemplars semi-hard"). Written with similarity scores s:

    ℓ(x, x+, x-) = max(0, m - s(x, x+) + s(x, x-))

FaceNet states the loss with squared Euclidean distances and margin α. For unit vectors
‖a - b‖² = 2 - 2 s(a, b), so FaceNet's hinge equals 2 ℓ with m = α / 2: the margin here is in score units.

Negative selection (``mining``), per anchor, over its unmasked negatives:

* ``"all"``: every (anchor, positive, negative) triplet.
* ``"hardest"``: the negative with the highest score (FaceNet's argmin over negatives of the distance).
* ``"semi-hard"``: FaceNet's semi-hard negatives, further from the anchor than the positive (the strict
  inequality of Eq. 4) yet, as FaceNet describes them, inside the margin α:
  ``s(x, x+) - m < s(x, x-) < s(x, x+)``; the one with the highest score is used (the hardest
  semi-hard negative, as in the common per-anchor implementations). If an anchor has no semi-hard negative,
  it falls back to its hardest negative. (tf-addons' ``TripletSemiHardLoss`` differs here: it takes the
  closest negative further than the positive with no margin bound, and if there is none it falls back to
  the *easiest* negative; PML's ``BatchEasyHardMiner(neg_strategy="semihard")`` drops such anchors.)

Reduction (``reduction``): FaceNet minimises the *sum* of the hinge over the triplets, so the default
``"mean"`` divides that sum by the number of triplets used (all valid triplets for ``"all"``, one per anchor
that has a negative otherwise). ``"non-zero"`` divides by the number of triplets with a positive loss only
(Hermans et al. 2017's "batch all" averaging; pytorch-metric-learning's default ``AvgNonZeroReducer``). An
anchor whose negatives are all masked forms no triplet. With no triplet at all the loss is 0.

A NaN score that is not masked out makes the loss NaN for every mining mode (the hardest and semi-hard
selections pick it), as :mod:`.base` promises.
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastkit.objectives._common import check_choice, check_positive, valid_negatives
from contrastkit.objectives.base import Objective

MINING = ("all", "hardest", "semi-hard")
REDUCTIONS = ("mean", "non-zero")


class Triplet(Objective):
    """Triplet hinge (Schroff et al. 2015, FaceNet Eq. 3 in scores) ``max(0, m - s+ + s-)`` with the negative
    selection ``mining`` in ``all | hardest | semi-hard`` (FaceNet Eq. 4 within the margin) and
    ``reduction`` ``mean`` (over the triplets used) or ``non-zero`` (module docstring).

    ``loss = obj(pos (B,), neg (B, N), neg_mask=None)``."""

    def __init__(self, margin: float = 0.5, mining: str = "all", reduction: str = "mean") -> None:
        super().__init__()
        self.margin = check_positive("margin", margin)
        self.mining = check_choice("mining", mining, MINING)
        self.reduction = check_choice("reduction", reduction, REDUCTIONS)

    def triplets(self, pos: Tensor, neg: Tensor, neg_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Hinge losses (B, K) of the selected triplets and a bool (B, K) marking which triplets exist.

        K = N for ``"all"`` and 1 for the mining modes that pick one negative per anchor.
        """
        valid = valid_negatives(neg, neg_mask)
        hinge = torch.relu(self.margin - pos.unsqueeze(1) + neg)
        if self.mining == "all":
            return hinge, valid
        candidates = valid
        if self.mining == "semi-hard":
            p = pos.unsqueeze(1)
            # s+ - m < s- < s+, written with negated comparisons so that a NaN score counts as semi-hard
            # (it fails every comparison): it is then picked (argmax ranks NaN first) and the loss is NaN,
            # instead of the NaN column being silently skipped.
            semi = valid & ~(neg >= p) & ~(neg <= p - self.margin)
            candidates = torch.where(semi.any(dim=1, keepdim=True), semi, valid)
        pick = neg.masked_fill(~candidates, float("-inf")).argmax(dim=1, keepdim=True)  # NaN first
        return hinge.gather(1, pick), valid.any(dim=1, keepdim=True)

    def per_anchor(self, pos: Tensor, neg: Tensor, neg_mask: Tensor | None) -> Tensor:
        """Mean hinge over each anchor's triplets (0 for an anchor without negatives)."""
        losses, exists = self.triplets(pos, neg, neg_mask)
        losses = torch.where(exists, losses, torch.zeros_like(losses))
        return losses.sum(dim=1) / exists.sum(dim=1).clamp_min(1)

    def compute(self, pos: Tensor, neg: Tensor, neg_mask: Tensor | None, **extra: Tensor) -> Tensor:
        losses, exists = self.triplets(pos, neg, neg_mask)
        losses = torch.where(exists, losses, torch.zeros_like(losses))
        counted = exists if self.reduction == "mean" else exists & (losses > 0)
        return losses.sum() / counted.sum().clamp_min(1)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, mining={self.mining!r}, reduction={self.reduction!r}"
