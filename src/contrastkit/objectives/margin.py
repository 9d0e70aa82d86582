"""The margin ("contrastive") loss of Hadsell, Chopra, LeCun 2006.

Hadsell, Chopra, LeCun 2006, "Dimensionality Reduction by Learning an Invariant Mapping" (CVPR 2006),
the exact form of its contrastive loss, commonly cited as Eq. 4 (the number could not be checked against
the paper's own text: the stored copies that could be searched give only its opening pages):

    L(W, Y, X1, X2) = (1 - Y) ½ D_W²  +  Y ½ max(0, m - D_W)²

with Y = 0 for a similar pair and Y = 1 for a dissimilar one: positives are pulled together by their
squared distance, negatives are pushed until they are at least ``m`` apart.

Distances from scores. The contract hands objectives similarity scores, so this objective assumes cosine
scores of unit vectors, for which the Euclidean distance on the sphere is

    d(a, b) = ‖a - b‖ = sqrt(max(2 - 2 s(a, b), 0))          (in [0, 2])

and ``margin`` is in those distance units (d = √2 for orthogonal vectors). With other scores (e.g. an
unnormalised dot product) the "distance" is not a metric and the margin loses its meaning.

Weighting. Each anchor contributes one similar pair and its N unmasked negatives (N per anchor):

    L_i = ½ d(x_i, x_i+)²  +  ½ (1/N) Σ_j max(0, m - d(x_i, x_j-))²

so the two terms of the loss above get equal weight per anchor (the negatives' term is averaged, not summed, and
does not grow with N). An anchor with no unmasked negative has only the first term. The loss is the mean
of L_i over anchors. At d = 0 exactly (a negative identical to the anchor) the push term's gradient is
taken as 0 (the derivative of the square root is unbounded there).
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastkit.objectives._common import check_positive, valid_negatives
from contrastkit.objectives.base import Objective


def sphere_distance(scores: Tensor) -> Tensor:
    """Euclidean distance of unit vectors from their cosine similarity, ``sqrt(max(2 - 2s, 0))``."""
    squared = (2 - 2 * scores).clamp_min(torch.finfo(scores.dtype).tiny)
    return squared.sqrt()


class Margin(Objective):
    """Hadsell, Chopra, LeCun 2006's two-term contrastive loss with margin ``m`` (a distance on the unit
    sphere, cosine scores assumed): ``L_i = ½ d(x, x+)² + ½ mean_j max(0, m - d(x, x_j-))²`` with
    ``d = sqrt(2 - 2s)`` (module docstring).

    ``loss = obj(pos (B,), neg (B, N), neg_mask=None)``."""

    assumes_unit_scores = True  # d = sqrt(2 - 2s) is a distance on the unit sphere only

    def __init__(self, margin: float = 0.5) -> None:
        super().__init__()
        self.margin = check_positive("margin", margin)

    def per_anchor(self, pos: Tensor, neg: Tensor, neg_mask: Tensor | None) -> Tensor:
        pull = (2 - 2 * pos).clamp_min(0)  # d(x, x+)², smooth in the score
        push = torch.relu(self.margin - sphere_distance(neg)).square()
        valid = valid_negatives(neg, neg_mask)
        push = torch.where(valid, push, torch.zeros_like(push))
        mean_push = push.sum(dim=1) / valid.sum(dim=1).clamp_min(1)
        return 0.5 * pull + 0.5 * mean_push

    def extra_repr(self) -> str:
        return f"margin={self.margin}"
