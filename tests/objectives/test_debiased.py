import math

import pytest
import torch

from contrastkit.negatives import InBatchNegatives, score_candidates
from contrastkit.objectives import Debiased, InfoNCE
from contrastkit.scores import CosineSimilarity


def reference_debiased(pos, neg, mask, t, tau_plus):
    """Chuang et al. 2020, the debiased objective (estimator g) with M = 1, in exp space with Python floats (float64), row by row."""
    losses = []
    for i in range(pos.shape[0]):
        e_pos = math.exp(pos[i].item() / t)
        e_negs = [
            math.exp(neg[i, j].item() / t) for j in range(neg.shape[1]) if mask is None or not mask[i, j]
        ]
        n = len(e_negs)
        if n:
            g = max((sum(e_negs) / n - tau_plus * e_pos) / (1 - tau_plus), math.exp(-1 / t))
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


@pytest.mark.parametrize("t", [0.5, 0.2, 0.1])
@pytest.mark.parametrize("tau_plus", [0.0, 0.05, 0.3, 0.6])
def test_matches_equation(t, tau_plus):
    pos, neg, mask = random_scores(0)
    mask[3] = True
    obj = Debiased(t, tau_plus)
    for m in (None, mask):
        assert obj(pos, neg, m).item() == pytest.approx(
            reference_debiased(pos, neg, m, t, tau_plus), abs=1e-5
        )


def test_reference_covers_both_branches_of_the_clamp():
    """The random test above hits clamped and unclamped anchors (otherwise it would test half the max)."""
    pos, neg, _ = random_scores(0)
    obj = Debiased(0.2, 0.6)
    floor = math.log(12) - 1 / 0.2
    log_ng = obj.log_negative_term(pos, neg)
    clamped = torch.isclose(log_ng, torch.tensor(floor), atol=1e-6)
    assert clamped.any() and (~clamped).any()


@pytest.mark.parametrize("t", [0.5, 0.1, 0.05])
def test_tau_plus_zero_is_infonce_on_cosine_scores(t):
    pos, neg, mask = random_scores(1)
    for m in (None, mask):
        torch.testing.assert_close(
            Debiased(t, 0.0)(pos, neg, m), InfoNCE(t)(pos, neg, m), rtol=1e-6, atol=1e-6
        )


def test_clamp_is_active_and_equals_n_times_e_to_minus_one_over_t():
    t, n = 0.2, 6
    pos = torch.tensor([1.0, 0.9, 0.0], dtype=torch.float64, requires_grad=True)
    neg = torch.full((3, n), -1.0, dtype=torch.float64)
    neg[2] = torch.linspace(-0.5, 0.5, n, dtype=torch.float64)
    neg.requires_grad_()
    obj = Debiased(t, tau_plus=0.1)
    log_ng = obj.log_negative_term(pos, neg)
    # rows 0 and 1: mean e^{s/t} = e^{-1/t} < τ+ e^{s+/t}, the estimate is negative -> clamped at N e^{-1/t}
    torch.testing.assert_close(log_ng[:2], torch.full((2,), math.log(n) - 1 / t, dtype=torch.float64))
    assert log_ng[2] > math.log(n) - 1 / t + 1
    expected = [math.log1p(n * math.exp(-1 / t) / math.exp(s / t)) for s in (1.0, 0.9)]
    torch.testing.assert_close(
        obj.per_anchor(pos, neg, None)[:2], torch.tensor(expected, dtype=torch.float64)
    )
    obj(pos, neg).backward()
    # a clamped row's negatives get no gradient (the constant takes over), as in the official code
    assert (neg.grad[:2] == 0).all() and (neg.grad[2] != 0).all()


@pytest.mark.parametrize("t", [0.05, 0.01])
def test_low_temperature_matches_float64_reference(t):
    """At t = 0.01, e^{s/t} = e^{100} overflows float32: the exp-space formula cannot be evaluated there."""
    g = torch.Generator().manual_seed(2)
    pos = 1 - 0.05 * torch.rand(6, generator=g, dtype=torch.float64)
    neg = 1 - 0.3 * torch.rand(6, 20, generator=g, dtype=torch.float64)
    assert not torch.isfinite(torch.exp(pos.float() / 0.01)).all()
    ours = Debiased(t, 0.1)(pos.float(), neg.float())
    assert torch.isfinite(ours)
    expected = reference_debiased(pos, neg, None, t, 0.1)
    assert ours.item() == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_in_batch_equals_reference_from_embeddings():
    """SimCLR setting: 2B anchors, N = 2B - 2 negatives each, written from the embeddings."""
    g = torch.Generator().manual_seed(3)
    b, t, tau_plus = 8, 0.5, 0.1
    z1, z2 = torch.randn(b, 16, generator=g), torch.randn(b, 16, generator=g)
    score = CosineSimilarity()
    c = score_candidates(InBatchNegatives()(score.prepare(z1), score.prepare(z2)), score)
    ours = Debiased(t, tau_plus)(c.pos, c.neg, c.neg_mask)
    z = torch.nn.functional.normalize(torch.cat([z1, z2]).double(), dim=1)
    total, n = 0.0, 2 * b - 2
    for i in range(2 * b):
        partner = (i + b) % (2 * b)
        e_pos = math.exp(float(z[i] @ z[partner]) / t)
        e_neg = sum(math.exp(float(z[i] @ z[j]) / t) for j in range(2 * b) if j not in (i, partner))
        ng = max((e_neg - tau_plus * n * e_pos) / (1 - tau_plus), n * math.exp(-1 / t))
        total += -math.log(e_pos / (e_pos + ng))
    assert ours.item() == pytest.approx(total / (2 * b), abs=1e-5)


def test_gradcheck():
    t, tau_plus = 0.5, 0.3
    pos, neg, _ = random_scores(4, b=5, n=6, dtype=torch.float64)
    obj = Debiased(t, tau_plus)
    mask = torch.zeros(5, 6, dtype=torch.bool)
    mask[0, 2] = True
    # keep away from the kink of the max: every row clearly clamped or clearly not
    gap = obj.log_negative_term(pos, neg, mask) - (torch.log((~mask).sum(1).double()) - 1 / t)
    assert ((gap.abs() < 1e-12) | (gap > 1e-2)).all() and (gap > 1e-2).any()
    pos.requires_grad_()
    neg.requires_grad_()
    assert torch.autograd.gradcheck(lambda p, n: obj(p, n, mask), (pos, neg))
