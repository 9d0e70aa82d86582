import math

import pytest
import torch
from pytorch_metric_learning.losses import SupConLoss

from contrastkit.negatives import InBatchNegatives, oracle_mask, score_candidates
from contrastkit.objectives import InfoNCE, SupervisedContrastive
from contrastkit.scores import CosineSimilarity


def reference_supcon(pos, neg, neg_mask, pos_mask, t):
    """Khosla et al. 2020, Eq. 2 (L_out), with P(i) = {positive} ∪ {pos_mask columns} and
    A(i) = {positive} ∪ {unmasked columns}, row by row in Python floats."""
    losses = []
    for i in range(pos.shape[0]):
        kept = [j for j in range(neg.shape[1]) if neg_mask is None or not neg_mask[i, j]]
        scores_a = [pos[i].item()] + [neg[i, j].item() for j in kept]
        scores_p = [pos[i].item()] + [
            neg[i, j].item() for j in kept if pos_mask is not None and pos_mask[i, j]
        ]
        log_den = math.log(sum(math.exp(s / t) for s in scores_a))
        losses.append(-sum(s / t - log_den for s in scores_p) / len(scores_p))
    return sum(losses) / len(losses)


def random_case(seed, b=7, n=12, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    pos = (torch.rand(b, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    neg = (torch.rand(b, n, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    neg_mask = torch.rand(b, n, generator=g) < 0.2
    pos_mask = torch.rand(b, n, generator=g) < 0.3
    return pos, neg, neg_mask, pos_mask


@pytest.mark.parametrize("t", [0.5, 0.1])
def test_matches_equation(t):
    pos, neg, neg_mask, pos_mask = random_case(0)
    obj = SupervisedContrastive(t)
    clean = pos_mask & ~neg_mask
    expected = reference_supcon(pos, neg, neg_mask, clean, t)
    assert obj(pos, neg, neg_mask, pos_mask=clean).item() == pytest.approx(expected, abs=1e-5)
    expected = reference_supcon(pos, neg, None, pos_mask, t)
    assert obj(pos, neg, pos_mask=pos_mask).item() == pytest.approx(expected, abs=1e-5)


def test_masked_columns_are_not_positives_either():
    pos, neg, neg_mask, pos_mask = random_case(1)
    assert (pos_mask & neg_mask).any()
    obj = SupervisedContrastive(0.2)
    torch.testing.assert_close(
        obj(pos, neg, neg_mask, pos_mask=pos_mask), obj(pos, neg, neg_mask, pos_mask=pos_mask & ~neg_mask)
    )


def test_without_extra_positives_is_infonce():
    pos, neg, neg_mask, _ = random_case(2)
    obj = SupervisedContrastive(0.1)
    for m in (None, neg_mask):
        assert torch.equal(obj(pos, neg, m), InfoNCE(0.1)(pos, neg, m))
        nothing = torch.zeros_like(neg, dtype=torch.bool)
        torch.testing.assert_close(obj(pos, neg, m, pos_mask=nothing), InfoNCE(0.1)(pos, neg, m))


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_in_batch_equals_pml_supcon(t):
    """Two views of 16 samples from 4 classes: every other view of the same class is a positive."""
    g = torch.Generator().manual_seed(3)
    b = 16
    z1, z2 = torch.randn(b, 32, generator=g), torch.randn(b, 32, generator=g)
    labels = torch.randint(0, 4, (b,), generator=g)
    score = CosineSimilarity()
    cands = InBatchNegatives()(score.prepare(z1), score.prepare(z2), labels)
    c = score_candidates(cands, score)
    pos_mask = oracle_mask(cands) & ~c.neg_mask  # what the training step builds
    ours = SupervisedContrastive(t)(c.pos, c.neg, c.neg_mask, pos_mask=pos_mask)
    theirs = SupConLoss(temperature=t)(torch.cat([z1, z2]), torch.cat([labels, labels]))
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)


def test_gradcheck_and_masked_columns_get_no_gradient():
    pos, neg, neg_mask, pos_mask = random_case(4, b=4, n=6, dtype=torch.float64)
    pos.requires_grad_()
    neg.requires_grad_()
    obj = SupervisedContrastive(0.3)
    assert torch.autograd.gradcheck(lambda p, n: obj(p, n, neg_mask, pos_mask=pos_mask), (pos, neg))
    obj(pos, neg, neg_mask, pos_mask=pos_mask).backward()
    assert (neg.grad[neg_mask] == 0).all()
