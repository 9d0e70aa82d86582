"""Hard-negative contrastive loss (HCL).

Robinson, Chuang, Sra, Jegelka 2021, "Contrastive Learning with Hard Negative Samples" (ICLR 2021, arXiv
2010.04592v2), Sec. 3: negatives are drawn from q_β(x-) ∝ e^{β f(x)ᵀf(x-)} p(x-) conditioned on a
different class, and the expectation under q_β is estimated by importance sampling from the uniformly
drawn negatives (Sec. 3.1), then debiased as in Chuang et al. 2020 (see :mod:`.debiased`). With s+ = s(x, x+), s_j = s(x, x_j-),
temperature t, class prior τ+, concentration β >= 0 and N unmasked negatives:

    w_j = e^{β s_j / t}                                      (importance weights)
    ĝ   = Σ_j w_j e^{s_j/t} / Σ_j w_j                        (estimate of E_{x-~q_β}[e^{s/t}])
    g   = max{ 1/(1 - τ+) · ( ĝ - τ+ e^{s+/t} ),  e^{-1/t} }
    L   = -log  e^{s+/t} / ( e^{s+/t} + N g )

Weight e^{β s/t}, not e^{β s}: the paper's f(x)ᵀf(x-) is the tempered score s/t (the temperature
absorbed in f, as the e^{-1/t} clamp implies), and the official code (joshr17/HCL, ``image/main.py``,
``criterion``) computes the weights as ``(e^{s/t})^β``, i.e. e^{β s/t}; both agree. (Its appendix
pseudo-code has typos in the reweighting; the first author confirmed that the repository code and the
method of Sec. 3.1 are correct, joshr17/HCL issues #1 and #5.) Hence β here is the paper's β; a weight
e^{β' s} corresponds to β = β' t. Equation numbers are not cited: the stored copies of the paper that
could be searched (ar5iv, and text dumps of arXiv v2 and of the camera-ready PDF) give only its opening
pages, so its numbering could not be read. The formulas are checked against the official code.

Normalisation, as in that code: there the reweighted sum is divided by the *mean* weight,
Σ_j w_j e^{s_j/t} / ((1/N) Σ_j w_j) = N ĝ, and the debiasing subtracts τ+ N e^{s+/t}, with N the number
of negatives (2B - 2 there, the unmasked count here); so N multiplies the whole debiased estimate (N g
above) and the clamp is N e^{-1/t}. The τ+ term uses the positive's e^{s+/t} unweighted (M = 1: a
self-normalised importance weight over a single positive sample is 1). Gradients flow through the weights,
as there (they are not detached).

In log space: log ĝ = logsumexp((1+β) s/t) - logsumexp(β s/t) over the unmasked negatives, then the
debiasing and clamp of :class:`~contrastkit.objectives.debiased.Debiased`. β = 0 gives ``Debiased``
exactly; β = 0 and τ+ = 0 give InfoNCE (on cosine scores, where the clamp is never active).
"""

from __future__ import annotations

from torch import Tensor

from contrastkit.objectives._common import check_nonnegative, masked_logsumexp
from contrastkit.objectives.debiased import Debiased


class HardNegative(Debiased):
    """Hard-negative loss (Robinson et al. 2021, HCL) with temperature ``t``, class prior ``0 <= τ+ < 1``
    and hardness ``β >= 0``: :class:`Debiased` with the mean of e^{s_j/t} replaced by its importance-weighted
    estimate ``Σ_j w_j e^{s_j/t} / Σ_j w_j``, ``w_j = e^{β s_j/t}`` (module docstring).

    ``loss = obj(pos (B,), neg (B, N), neg_mask=None)``; β = 0 is Debiased, β = τ+ = 0 InfoNCE."""

    def __init__(self, temperature: float = 0.1, tau_plus: float = 0.1, beta: float = 1.0) -> None:
        super().__init__(temperature=temperature, tau_plus=tau_plus)
        self.beta = check_nonnegative("beta", beta)

    def log_negative_mean(self, logits: Tensor, valid: Tensor, count: Tensor) -> Tensor:
        """Log of the importance-weighted mean Σ_j w_j e^{s_j/t} / Σ_j w_j with w_j = e^{β s_j/t}."""
        if self.beta == 0:
            return super().log_negative_mean(logits, valid, count)
        weighted = masked_logsumexp((1 + self.beta) * logits, valid)
        normaliser = masked_logsumexp(self.beta * logits, valid)
        return weighted - normaliser.clamp_min(-1e30)  # rows without negatives: finite, unused

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, beta={self.beta}"
