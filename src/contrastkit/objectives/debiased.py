"""Debiased contrastive loss.

Chuang, Robinson, Lin, Torralba, Jegelka 2020, "Debiased Contrastive Learning" (NeurIPS 2020, arXiv
2007.00224): the debiased objective L^{N,M}_Debiased with its estimator g, which replaces the sum over
negatives in the standard (biased) objective, the paper's Eq. (1) (checked in arXiv v3, SPIQA's copy).
The equation numbers of L^{N,M}_Debiased and g are not cited: the stored copies of the paper that could
be searched (ar5iv, arXiv-vanity, SPIQA v3) give only its opening pages, so they could not be read. The
formula below is checked against the authors' code instead (chingyaoc/DCL ``main.py``, ``train``).
Used here with M = 1: the one positive sample v_1 that estimates the τ+ term is the anchor's positive x+
itself, as in that code. With s+ = s(x, x+), s_j = s(x, x_j-), temperature t and class prior τ+ (the
probability that a "negative" drawn at random shares the anchor's class):

    g = max{ 1/(1 - τ+) · ( (1/N) Σ_j e^{s_j/t}  -  τ+ e^{s+/t} ),  e^{-1/t} }

    L = -log  e^{s+/t} / ( e^{s+/t} + N g )

N is the anchor's number of unmasked negatives. The paper's f(x)ᵀf(x') is written s/t here (the
temperature absorbed in f, as its e^{-1/t} floor implies): e^{-1/t} is the smallest value e^{s/t} can
take for cosine scores, and the max clamps g at that theoretical minimum; the official code computes N g directly as
(Σ_j e^{s_j/t} - τ+ N e^{s+/t}) / (1 - τ+) and clamps it at N e^{-1/t}, the same thing, with N = 2B - 2
there (the number of negatives). As there, no gradient flows through a clamped g. (The e^{-1/t} floor
assumes scores >= -1, i.e. cosine.)

Numerics. The official code evaluates this in exp space, which overflows float32 (and bf16) once s/t
exceeds ~88 (t < 0.0113 for s = 1; the sum of N terms overflows earlier). Here everything is in log space,
with a = log-mean-exp of the negatives and b = log τ+ + s+/t:

    log g = max( a + log(1 - e^{b - a}) - log(1 - τ+),  -1/t )      (first branch only when b < a)
    L     = logsumexp(s+/t, log N + log g) - s+/t

τ+ = 0 gives InfoNCE (van den Oord et al. 2018) whenever the clamp is inactive, which is always the case
for cosine scores in [-1, 1] (their mean e^{s/t} is at least e^{-1/t}). Not to be confused with the
*decoupled* contrastive loss of Yeh et al. 2021 (lightly's ``DCLLoss``): see :mod:`.decoupled`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from contrastkit.objectives._common import (
    check_positive,
    check_prior,
    log1mexp,
    masked_logsumexp,
    valid_negatives,
)
from contrastkit.objectives.base import Objective


class Debiased(Objective):
    """Debiased contrastive loss (Chuang et al. 2020, L^{N,M}_Debiased with M = 1) with temperature ``t``
    and class prior ``0 <= τ+ < 1``: ``L = -log e^{s+/t} / (e^{s+/t} + N g)`` with
    ``g = max{(mean_j e^{s_j/t} - τ+ e^{s+/t}) / (1 - τ+), e^{-1/t}}``, in log space (module docstring).

    ``loss = obj(pos (B,), neg (B, N), neg_mask=None)``; τ+ = 0 is InfoNCE."""

    assumes_unit_scores = True  # the floor e^{-1/t} is the minimum of e^{s/t} for scores s >= -1

    def __init__(self, temperature: float = 0.1, tau_plus: float = 0.1) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.tau_plus = check_prior("tau_plus", tau_plus)

    def log_negative_mean(self, logits: Tensor, valid: Tensor, count: Tensor) -> Tensor:
        """Log of the estimate of E_{x-}[e^{s(x, x-)/t}] from the unmasked negatives: log-mean-exp.

        Only rows with ``count > 0`` are used by the caller.
        """
        return masked_logsumexp(logits, valid) - torch.log(count.clamp_min(1))

    def log_negative_term(self, pos: Tensor, neg: Tensor, neg_mask: Tensor | None = None) -> Tensor:
        """``log(N g)`` per anchor, shape (B,), after the clamp; ``-inf`` for an anchor with no negative."""
        t = self.temperature
        p, x = pos / t, neg / t
        valid = valid_negatives(neg, neg_mask)
        count = valid.sum(dim=1).to(x.dtype)
        has = count > 0
        a = self.log_negative_mean(x, valid, count)
        a = torch.where(has, a, torch.zeros_like(a))
        floor = torch.full_like(a, -1.0 / t)
        # The clamp is written as "clamped where a comparison says so", never "kept where a comparison says
        # so": a NaN fails every comparison, so a NaN score (not masked out) stays NaN instead of being
        # replaced by the floor (a finite loss with NaN gradients that no non-finite-loss check would see).
        if self.tau_plus == 0:
            log_g = torch.where(a < floor, floor, a)
        else:
            log_scale = math.log1p(-self.tau_plus)
            diff = p + math.log(self.tau_plus) - a  # b - a: the difference is positive iff diff < 0
            with torch.no_grad():
                probe = torch.where(diff < 0, diff, torch.full_like(diff, -1.0))
                unclamped = a + log1mexp(probe) - log_scale
                clamped = ~has | (diff >= 0) | (unclamped <= floor)
            # Evaluate log(1 - e^diff) only where the clamp is off, so no inf reaches the gradient.
            safe = torch.where(clamped, torch.full_like(diff, -1.0), diff)
            log_g = torch.where(clamped, floor, a + log1mexp(safe) - log_scale)
        return torch.log(count) + log_g  # log 0 = -inf: no negatives, no negative term

    def per_anchor(self, pos: Tensor, neg: Tensor, neg_mask: Tensor | None) -> Tensor:
        p = pos / self.temperature
        log_ng = self.log_negative_term(pos, neg, neg_mask)
        return torch.logsumexp(torch.stack([p, log_ng], dim=1), dim=1) - p

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, tau_plus={self.tau_plus}"
