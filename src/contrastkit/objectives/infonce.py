"""InfoNCE / NT-Xent.

van den Oord, Li, Vinyals 2018, "Representation Learning with Contrastive Predictive Coding" (arXiv
1807.03748), the InfoNCE loss L_N; used symmetrically over two views as NT-Xent by Chen et al.
2020 (SimCLR, arXiv 2002.05709), whose per-pair loss ℓ_{i,j} has the positive inside the denominator's
sum over k ≠ i. Here, per anchor:

    L_i = -log  exp(s_i+ / τ) / ( exp(s_i+ / τ) + Σ_j exp(s_ij / τ) )
        = logsumexp([s_i+, s_i1, ..., s_iN] / τ) - s_i+ / τ

an (N+1)-way cross-entropy with the positive as the target (CPC's f_k = exp(s/τ)). Masked negatives are
left out of the sum. SimCLR's loss covers both directions (i, j) and (j, i): with in-batch negatives
every one of the 2B views is an anchor (:mod:`contrastkit.negatives.in_batch`), and the mean is over them.

Equation numbers, as printed: CPC's L_N is its Eq. (4), Sec. 2.3; NT-Xent is SimCLR's Eq. (1), Sec. 2.1
(read in text transcriptions of the two papers kept in public repositories: "The loss in Equation 4 is
the categorical cross-entropy of classifying the positive sample correctly", CPC p. 4).

Mutual information. CPC's bound, the unnumbered display at the end of its Sec. 2.3 (derived in its
Appendix A.1, Eqs. (6)-(11)), is I(x; c) >= log(N) - L_N with N the size of the candidate set, i.e. one
positive and N - 1 negatives. With N here counting negatives only, that is ``log(N + 1) - L``
(:func:`mutual_information_bound`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastkit.objectives._common import check_positive
from contrastkit.objectives.base import Objective


class InfoNCE(Objective):
    """InfoNCE (van den Oord et al. 2018, CPC Eq. 4; NT-Xent, Chen et al. 2020, SimCLR Eq. 1) with
    temperature τ: per anchor ``L = -log e^{s+/τ} / (e^{s+/τ} + Σ_j e^{s_j/τ})``, computed as
    ``logsumexp([s+, s_1..s_N] / τ) - s+/τ`` over the unmasked negatives (details: the module docstring).

    ``loss = obj(pos (B,), neg (B, N), neg_mask=None)``, the mean over anchors."""

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
