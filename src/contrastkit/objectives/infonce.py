"""InfoNCE / NT-Xent.

van den Oord, Li, Vinyals 2018, "Representation Learning with Contrastive Predictive Coding", Eq. 4;
used symmetrically over two views as NT-Xent by Chen et al. 2020 (SimCLR), Eq. 1:

    L_i = -log  exp(s_i+ / τ) / ( exp(s_i+ / τ) + Σ_j exp(s_ij / τ) )
        = logsumexp([s_i+, s_i1, ..., s_iN] / τ) - s_i+ / τ

an (N+1)-way cross-entropy with the positive as the target. Masked negatives are left out of the sum.
``log(N + 1) - L`` lower-bounds the mutual information between the views (CPC, Sec. 2.3).
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastkit.objectives._common import check_positive
from contrastkit.objectives.base import Objective


class InfoNCE(Objective):
    """InfoNCE with temperature τ; ``loss = obj(pos, neg, neg_mask=None)``."""

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)

    def per_anchor(self, pos: Tensor, neg: Tensor, neg_mask: Tensor | None) -> Tensor:
        t = self.temperature
        neg = neg / t
        if neg_mask is not None:
            neg = neg.masked_fill(neg_mask, float("-inf"))
        logits = torch.cat([pos.unsqueeze(1) / t, neg], dim=1)
        return torch.logsumexp(logits, dim=1) - pos / t

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


def mutual_information_bound(loss: Tensor, num_negatives: Tensor | int) -> Tensor:
    """The InfoNCE bound ``I(x; x+) >= log(N + 1) - L`` (nats), averaged over anchors."""
    n = torch.as_tensor(num_negatives, dtype=torch.float32, device=loss.device)
    return (torch.log1p(n) - loss).mean()
