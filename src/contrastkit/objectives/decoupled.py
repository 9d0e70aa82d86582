"""Decoupled contrastive loss.

Yeh, Hong, Hsu, Liu, Chen, LeCun 2021, "Decoupled Contrastive Learning" (ECCV 2022, arXiv 2110.06848):
InfoNCE with the positive removed from the denominator, which removes the negative-positive coupling of
its gradient:

    L_i = -log  e^{s+/t} / Σ_j e^{s_j/t}  =  -s+/t + logsumexp_j(s_j / t)

over the anchor's unmasked negatives, one logsumexp over all of them (in-batch: the 2B - 2 views other
than the anchor and its positive, from both augmentations). Unlike InfoNCE the loss is not bounded below by 0. An anchor whose negatives are all
masked contributes 0 (there is nothing to contrast with). The paper's weighted variant (DCLW) is not
implemented. Unrelated to the *debiased* loss of Chuang et al. 2020 (:mod:`.debiased`), despite the
shared acronym.

Equation number: the loss is cited as the paper's Eq. 6 by lightly's ``DCLLoss`` and by lightly PRs
#1826/#1827, for arXiv 2110.06848; that number could not be checked against the paper's own text (the
stored copies that could be searched, ar5iv and the project page, give only its opening pages), and the
ECCV version may number it differently. Note that lightly's ``DCLLoss`` (at the version read) adds two
separate logsumexp terms, one over the same-view and one over the other-view negatives, which is not
this formula; PR #1827 proposes the single logsumexp used here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastkit.objectives._common import check_positive, masked_logsumexp, valid_negatives
from contrastkit.objectives.base import Objective


class Decoupled(Objective):
    """Decoupled contrastive loss (Yeh et al. 2021) with temperature ``t``: InfoNCE without the positive in
    the denominator, ``L_i = -s+/t + logsumexp_j(s_j/t)`` over the unmasked negatives (module docstring).

    ``loss = obj(pos (B,), neg (B, N), neg_mask=None)``; it can be negative."""

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)

    def per_anchor(self, pos: Tensor, neg: Tensor, neg_mask: Tensor | None) -> Tensor:
        t = self.temperature
        valid = valid_negatives(neg, neg_mask)
        loss = masked_logsumexp(neg / t, valid) - pos / t
        return torch.where(valid.any(dim=1), loss, torch.zeros_like(loss))

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
