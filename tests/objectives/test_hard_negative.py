import itertools
import math

import pytest
import torch

from contrastkit.negatives import InBatchNegatives, score_candidates
from contrastkit.objectives import Debiased, HardNegative, InfoNCE
from contrastkit.scores import CosineSimilarity


def reference_hcl(pos, neg, mask, t, tau_plus, beta, weight_scale=None):
    """Robinson et al. 2021 Sec. 3 with Python floats: importance weights w_j = e^{β s_j / t} on the uniform
    negatives, debiasing and the e^{-1/t} clamp of Chuang et al. 2020. ``weight_scale`` replaces the 1/t in
    the weights (to check the e^{β s} reading differs)."""
    scale = 1 / t if weight_scale is None else weight_scale
    losses = []
    for i in range(pos.shape[0]):
        e_pos = math.exp(pos[i].item() / t)
        kept = [neg[i, j].item() for j in range(neg.shape[1]) if mask is None or not mask[i, j]]
        n = len(kept)
        if n:
            w = [math.exp(beta * s * scale) for s in kept]
            weighted_mean = sum(wj * math.exp(s / t) for wj, s in zip(w, kept, strict=True)) / sum(w)
            g = max((weighted_mean - tau_plus * e_pos) / (1 - tau_plus), math.exp(-1 / t))
        else:
            g = 0.0
        losses.append(-math.log(e_pos / (e_pos + n * g)))
    return sum(losses) / len(losses)


def random_scores(seed, b=8, n=12, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(b, generator=g, dtype=torch.float64) * 2 - 1
    neg = torch.rand(b, n, generator=g, dtype=torch.float64) * 2 - 1
    mask = torch.rand(b, n, generator=g) < 0.3
    return pos.to(dtype), neg.to(dtype), mask


@pytest.mark.parametrize("t", [0.5, 0.2])
@pytest.mark.parametrize("tau_plus", [0.0, 0.1, 0.4])
@pytest.mark.parametrize("beta", [0.5, 1.0, 3.0])
def test_matches_equation(t, tau_plus, beta):
    pos, neg, mask = random_scores(0)
    mask[5] = True
    obj = HardNegative(t, tau_plus, beta)
    for m in (None, mask):
        expected = reference_hcl(pos, neg, m, t, tau_plus, beta)
        assert obj(pos, neg, m).item() == pytest.approx(expected, abs=1e-5)


def test_weights_use_the_tempered_score():
    """e^{β s/t} (paper and official code), not e^{β s}: the two differ for t != 1."""
    pos, neg, _ = random_scores(1)
    t, tau_plus, beta = 0.2, 0.1, 1.0
    ours = HardNegative(t, tau_plus, beta)(pos, neg).item()
    assert ours == pytest.approx(reference_hcl(pos, neg, None, t, tau_plus, beta), abs=1e-5)
    untempered = reference_hcl(pos, neg, None, t, tau_plus, beta, weight_scale=1.0)
    assert abs(ours - untempered) > 1e-2
    # e^{β' s} is the same estimator with β = β' t
    assert untempered == pytest.approx(HardNegative(t, tau_plus, beta * t)(pos, neg).item(), abs=1e-5)


@pytest.mark.parametrize("tau_plus", [0.0, 0.1, 0.5])
def test_beta_zero_is_debiased(tau_plus):
    pos, neg, mask = random_scores(2)
    for m in (None, mask):
        assert torch.equal(
            HardNegative(0.3, tau_plus, 0.0)(pos, neg, m), Debiased(0.3, tau_plus)(pos, neg, m)
        )


@pytest.mark.parametrize("t", [0.5, 0.1, 0.05])
def test_beta_zero_tau_zero_is_infonce_on_cosine_scores(t):
    pos, neg, mask = random_scores(3)
    for m in (None, mask):
        torch.testing.assert_close(
            HardNegative(t, 0.0, 0.0)(pos, neg, m), InfoNCE(t)(pos, neg, m), rtol=1e-6, atol=1e-6
        )


def test_harder_weighting_never_lowers_the_loss():
    """Weights increasing in the score put more mass on large e^{s/t}: the weighted mean (hence N g and the
    loss) grows with β (Chebyshev's sum inequality)."""
    pos, neg, mask = random_scores(4)
    values = [HardNegative(0.2, 0.1, beta).per_anchor(pos, neg, mask) for beta in (0.0, 0.5, 1.0, 2.0, 5.0)]
    for lower, higher in itertools.pairwise(values):
        assert (higher >= lower - 1e-6).all()


def test_large_beta_low_temperature_matches_float64_reference():
    g = torch.Generator().manual_seed(5)
    pos = 1 - 0.05 * torch.rand(6, generator=g, dtype=torch.float64)
    neg = 1 - 0.4 * torch.rand(6, 30, generator=g, dtype=torch.float64)
    t, tau_plus, beta = 0.05, 0.1, 5.0
    ours = HardNegative(t, tau_plus, beta)(pos.float(), neg.float())
    expected = reference_hcl(pos, neg, None, t, tau_plus, beta)
    assert ours.item() == pytest.approx(expected, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize(("t", "tau_plus", "beta"), [(0.5, 0.1, 1.0), (0.2, 0.05, 0.5), (0.5, 0.3, 2.0)])
def test_in_batch_equals_official_normalisation_from_embeddings(t, tau_plus, beta):
    """SimCLR setting, written from the embeddings in the normalisation of the authors' code: the weighted
    sum over the *mean* weight, Σ_j w_j e^{s_j/t} / ((1/N) Σ_j w_j) = N ĝ, with w_j = (e^{s_j/t})^β, the τ+ term
    τ+ N e^{s+/t} and the clamp N e^{-1/t}, N = 2B - 2 (so N multiplies the whole debiased estimate)."""
    g = torch.Generator().manual_seed(7)
    b = 8
    z1, z2 = torch.randn(b, 16, generator=g), torch.randn(b, 16, generator=g)
    score = CosineSimilarity()
    c = score_candidates(InBatchNegatives()(score.prepare(z1), score.prepare(z2)), score)
    ours = HardNegative(t, tau_plus, beta)(c.pos, c.neg, c.neg_mask)
    z = torch.nn.functional.normalize(torch.cat([z1, z2]).double(), dim=1)
    total, n = 0.0, 2 * b - 2
    for i in range(2 * b):
        partner = (i + b) % (2 * b)
        e_pos = math.exp(float(z[i] @ z[partner]) / t)
        e_neg = [math.exp(float(z[i] @ z[j]) / t) for j in range(2 * b) if j not in (i, partner)]
        w = [e**beta for e in e_neg]
        reweighted = sum(wj * e for wj, e in zip(w, e_neg, strict=True)) / (sum(w) / n)
        ng = max((reweighted - tau_plus * n * e_pos) / (1 - tau_plus), n * math.exp(-1 / t))
        total += -math.log(e_pos / (e_pos + ng))
    assert ours.item() == pytest.approx(total / (2 * b), abs=1e-5)


def test_gradcheck():
    t, tau_plus, beta = 0.5, 0.2, 1.5
    pos, neg, _ = random_scores(6, b=5, n=6, dtype=torch.float64)
    obj = HardNegative(t, tau_plus, beta)
    mask = torch.zeros(5, 6, dtype=torch.bool)
    mask[3, 0] = True
    gap = obj.log_negative_term(pos, neg, mask) - (torch.log((~mask).sum(1).double()) - 1 / t)
    assert ((gap.abs() < 1e-12) | (gap > 1e-2)).all() and (gap > 1e-2).any()
    pos.requires_grad_()
    neg.requires_grad_()
    assert torch.autograd.gradcheck(lambda p, n: obj(p, n, mask), (pos, neg))
