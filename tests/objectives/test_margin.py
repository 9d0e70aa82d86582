import math

import pytest
import torch
from pytorch_metric_learning import distances, losses, reducers

from contrastkit.negatives import InBatchNegatives, score_candidates
from contrastkit.objectives import Margin
from contrastkit.objectives.margin import sphere_distance
from contrastkit.scores import CosineSimilarity


def reference_margin(pos, neg, mask, m):
    """Hadsell et al. 2006 (commonly cited as Eq. 4), d = ‖a - b‖ of unit vectors; per anchor ½ d+² + ½ mean_j max(0, m - d_j)²."""
    losses_ = []
    for i in range(pos.shape[0]):
        d_pos = math.sqrt(max(2 - 2 * pos[i].item(), 0.0))
        pushes = [
            max(0.0, m - math.sqrt(max(2 - 2 * neg[i, j].item(), 0.0))) ** 2
            for j in range(neg.shape[1])
            if mask is None or not mask[i, j]
        ]
        push = sum(pushes) / len(pushes) if pushes else 0.0
        losses_.append(0.5 * d_pos**2 + 0.5 * push)
    return sum(losses_) / len(losses_)


@pytest.mark.parametrize("m", [0.5, 1.0, 1.5])
def test_matches_equation(m):
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(9, generator=g) * 2 - 1
    neg = torch.rand(9, 13, generator=g) * 2 - 1
    mask = torch.rand(9, 13, generator=g) < 0.3
    mask[4] = True
    obj = Margin(m)
    assert obj(pos, neg).item() == pytest.approx(reference_margin(pos, neg, None, m), abs=1e-5)
    assert obj(pos, neg, mask).item() == pytest.approx(reference_margin(pos, neg, mask, m), abs=1e-5)


def test_distance_is_euclidean_on_the_sphere():
    g = torch.Generator().manual_seed(1)
    a = torch.nn.functional.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=1)
    b = torch.nn.functional.normalize(torch.randn(5, 8, generator=g, dtype=torch.float64), dim=1)
    torch.testing.assert_close(sphere_distance((a * b).sum(1)), (a - b).norm(dim=1))
    assert sphere_distance(torch.tensor([1.0, -1.0, 0.0])).tolist() == pytest.approx([0.0, 2.0, math.sqrt(2)])


@pytest.mark.parametrize("m", [0.5, 1.2])
def test_equals_pml_contrastive_loss_terms(m):
    """PML's ContrastiveLoss gives per-pair d (positives) and max(0, m - d) (negatives) with an L2 distance
    on normalised embeddings; Eq. 4 squares and halves them. In-batch, every anchor has 2B - 2 negatives,
    so the mean over anchors of our per-anchor average equals the mean over all negative pairs."""
    g = torch.Generator().manual_seed(2)
    b = 16
    z1, z2 = torch.randn(b, 32, generator=g), torch.randn(b, 32, generator=g)
    score = CosineSimilarity()
    c = score_candidates(InBatchNegatives()(score.prepare(z1), score.prepare(z2)), score)
    ours = Margin(m)(c.pos, c.neg, c.neg_mask)
    pml = losses.ContrastiveLoss(
        pos_margin=0, neg_margin=m, distance=distances.LpDistance(p=2), reducer=reducers.DoNothingReducer()
    )
    out = pml(torch.cat([z1, z2]), torch.arange(b).repeat(2))
    pos_terms, neg_terms = out["pos_loss"]["losses"], out["neg_loss"]["losses"]
    assert pos_terms.numel() == 2 * b and neg_terms.numel() == 2 * b * (2 * b - 2)
    theirs = 0.5 * pos_terms.square().mean() + 0.5 * neg_terms.square().mean()
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)


def test_identical_negative_is_finite_and_pushed_by_full_margin():
    pos = torch.tensor([1.0], requires_grad=True)
    neg = torch.tensor([[1.0, 0.0]], requires_grad=True)
    loss = Margin(0.5)(pos, neg)
    loss.backward()
    # d+ = 0, d(identical) = 0 -> ½ · ½ (0.5² + max(0, 0.5 - √2)²) = 0.0625
    assert loss.item() == pytest.approx(0.0625)
    assert torch.isfinite(pos.grad).all() and torch.isfinite(neg.grad).all()


def test_gradcheck_away_from_the_hinge():
    g = torch.Generator().manual_seed(3)
    m = 1.0
    pos = (torch.rand(5, generator=g, dtype=torch.float64) * 1.8 - 0.9).requires_grad_()
    neg = (torch.rand(5, 7, generator=g, dtype=torch.float64) * 1.8 - 0.9).requires_grad_()
    assert ((m - sphere_distance(neg.detach())).abs() > 1e-3).all()
    mask = torch.zeros(5, 7, dtype=torch.bool)
    mask[1, :3] = True
    obj = Margin(m)
    assert torch.autograd.gradcheck(lambda p, n: obj(p, n, mask), (pos, neg))
