import math

import pytest
import torch

from contrastkit.negatives import InBatchNegatives, score_candidates
from contrastkit.objectives import Decoupled, InfoNCE
from contrastkit.scores import CosineSimilarity


def reference_decoupled(pos, neg, mask, t):
    """Yeh et al. 2021 (the loss lightly cites as Eq. 6; unchecked): -log(e^{s+/t} / Σ_j e^{s_j/t}), positive left out of the denominator."""
    losses = []
    for i in range(pos.shape[0]):
        den = [math.exp(neg[i, j].item() / t) for j in range(neg.shape[1]) if mask is None or not mask[i, j]]
        losses.append(-math.log(math.exp(pos[i].item() / t) / sum(den)) if den else 0.0)
    return sum(losses) / len(losses)


@pytest.mark.parametrize("t", [0.5, 0.1])
def test_matches_equation(t):
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(7, generator=g) * 2 - 1
    neg = torch.rand(7, 10, generator=g) * 2 - 1
    mask = torch.rand(7, 10, generator=g) < 0.3
    mask[2] = True
    obj = Decoupled(t)
    assert obj(pos, neg).item() == pytest.approx(reference_decoupled(pos, neg, None, t), abs=1e-5)
    assert obj(pos, neg, mask).item() == pytest.approx(reference_decoupled(pos, neg, mask, t), abs=1e-5)


def test_relation_to_infonce():
    """InfoNCE - decoupled = log(1 + e^{s+/t} / Σ_j e^{s_j/t}) per anchor; the decoupled loss can be < 0."""
    g = torch.Generator().manual_seed(1)
    pos, neg = torch.rand(6, generator=g), torch.rand(6, 5, generator=g) - 1
    t = 0.2
    gap = InfoNCE(t).per_anchor(pos, neg, None) - Decoupled(t).per_anchor(pos, neg, None)
    expected = torch.nn.functional.softplus(pos / t - torch.logsumexp(neg / t, dim=1))
    torch.testing.assert_close(gap, expected)
    assert Decoupled(t)(pos, neg) < 0


def test_in_batch_equals_reference_from_embeddings():
    g = torch.Generator().manual_seed(2)
    b, t = 8, 0.1
    z1, z2 = torch.randn(b, 16, generator=g), torch.randn(b, 16, generator=g)
    score = CosineSimilarity()
    c = score_candidates(InBatchNegatives()(score.prepare(z1), score.prepare(z2)), score)
    z = torch.nn.functional.normalize(torch.cat([z1, z2]).double(), dim=1)
    total = 0.0
    for i in range(2 * b):
        partner = (i + b) % (2 * b)
        den = sum(math.exp(float(z[i] @ z[j]) / t) for j in range(2 * b) if j not in (i, partner))
        total += -float(z[i] @ z[partner]) / t + math.log(den)
    assert Decoupled(t)(c.pos, c.neg, c.neg_mask).item() == pytest.approx(total / (2 * b), abs=1e-5)


def test_gradcheck():
    g = torch.Generator().manual_seed(3)
    pos = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    neg = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[1, 1:4] = True
    obj = Decoupled(0.3)
    assert torch.autograd.gradcheck(lambda p, n: obj(p, n, mask), (pos, neg))
