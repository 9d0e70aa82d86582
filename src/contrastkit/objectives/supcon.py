"""Supervised contrastive loss.

Khosla, Teterwak, Wang, Sarna, Tian, Isola, Maschinot, Liu, Krishnan 2020, "Supervised Contrastive
Learning" (NeurIPS 2020, arXiv 2004.11362), Sec. 3.2.2, Eq. 2: L^sup_out, the average over positives
outside the log, the form the paper recommends and its official code computes. (Eq. 3, L^sup_in, the
average inside the log, is not implemented; Eq. 1 is the self-supervised loss, i.e. InfoNCE.) The
numbers were read in a text copy of the version that defines both L^sup_out and L^sup_in; an earlier
arXiv version may number them differently:

    L_i = -1/|P(i)| Σ_{p ∈ P(i)} log  e^{s_ip/t} / Σ_{a ∈ A(i)} e^{s_ia/t}
        = logsumexp_{a ∈ A(i)}(s_ia / t)  -  1/|P(i)| Σ_{p ∈ P(i)} s_ip / t

In the contract's terms, for anchor i:

* P(i) = {its positive} ∪ {columns j of ``neg`` with ``pos_mask[i, j]``} (same-class samples),
* A(i) = {its positive} ∪ {columns j not in ``neg_mask``} (everything but the anchor itself).

Masked columns are excluded everywhere: a column in both masks is not a positive either. Without
``pos_mask``, P(i) is the positive alone and the loss is InfoNCE. The paper sums L_i over anchors; like
its official code (and pytorch-metric-learning's ``SupConLoss``) this returns the mean (and has no
``temperature / base_temperature`` factor, i.e. base_temperature = temperature).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from contrastkit.objectives._common import check_positive
from contrastkit.objectives.base import Objective


class SupervisedContrastive(Objective):
    """Supervised contrastive loss (Khosla et al. 2020, L^sup_out, Eq. 2) with temperature ``t``:
    ``L_i = logsumexp_{a ∈ A(i)}(s_ia/t) - mean_{p ∈ P(i)} s_ip/t``, P(i) the positive and the columns
    marked by ``pos_mask`` (same class), A(i) every unmasked column and the positive (module docstring).

    ``loss = obj(pos (B,), neg (B, N), neg_mask=None, pos_mask=None)``; no ``pos_mask`` is InfoNCE."""

    needs_labels: ClassVar[bool] = True

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)

    def per_anchor(
        self, pos: Tensor, neg: Tensor, neg_mask: Tensor | None, pos_mask: Tensor | None = None
    ) -> Tensor:
        t = self.temperature
        p, x = pos / t, neg / t
        contrast = x if neg_mask is None else x.masked_fill(neg_mask, float("-inf"))
        log_denominator = torch.logsumexp(torch.cat([p.unsqueeze(1), contrast], dim=1), dim=1)
        if pos_mask is None:
            return log_denominator - p
        extra = pos_mask if neg_mask is None else pos_mask & ~neg_mask
        positives = 1 + extra.sum(dim=1)
        total = p + torch.where(extra, x, torch.zeros_like(x)).sum(dim=1)
        return log_denominator - total / positives

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
