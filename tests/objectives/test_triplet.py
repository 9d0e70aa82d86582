import pytest
import torch
from pytorch_metric_learning import distances, losses, miners, reducers

from contrastkit.negatives import InBatchNegatives, score_candidates
from contrastkit.objectives import Triplet
from contrastkit.scores import CosineSimilarity


def reference_triplet(pos, neg, mask, margin, mining, reduction="mean"):
    """FaceNet's hinge max(0, m - s+ + s-) over the selected triplets, row by row in Python floats."""
    triplets = []
    for i in range(pos.shape[0]):
        sp = pos[i].item()
        negs = [neg[i, j].item() for j in range(neg.shape[1]) if mask is None or not mask[i, j]]
        if not negs:
            continue
        if mining == "all":
            chosen = negs
        elif mining == "hardest":
            chosen = [max(negs)]
        else:
            semi = [s for s in negs if sp - margin < s < sp]
            chosen = [max(semi)] if semi else [max(negs)]
        triplets += [max(0.0, margin - sp + s) for s in chosen]
    counted = triplets if reduction == "mean" else [x for x in triplets if x > 0]
    return sum(triplets) / len(counted) if counted else 0.0


def random_scores(seed, b=7, n=11, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(b, generator=g, dtype=torch.float64) * 2 - 1
    neg = torch.rand(b, n, generator=g, dtype=torch.float64) * 2 - 1
    mask = torch.rand(b, n, generator=g) < 0.3
    return pos.to(dtype), neg.to(dtype), mask


@pytest.mark.parametrize("mining", ["all", "hardest", "semi-hard"])
@pytest.mark.parametrize("reduction", ["mean", "non-zero"])
@pytest.mark.parametrize("margin", [0.2, 0.5])
def test_matches_equation(mining, reduction, margin):
    for seed in range(3):
        pos, neg, mask = random_scores(seed)
        obj = Triplet(margin, mining, reduction)
        for m in (None, mask):
            expected = reference_triplet(pos, neg, m, margin, mining, reduction)
            assert obj(pos, neg, m).item() == pytest.approx(expected, abs=1e-5)


def test_semi_hard_selection_and_fallback():
    obj = Triplet(margin=0.2, mining="semi-hard")
    pos = torch.tensor([0.5, 0.5, 0.5])
    neg = torch.tensor(
        [
            [0.9, 0.4, 0.35, -0.5],  # semi-hard {0.4, 0.35}: the hardest of them, 0.4
            [0.9, 0.8, -0.5, -0.6],  # no semi-hard negative: falls back to the hardest, 0.9
            [0.1, -0.5, 0.0, 0.2],  # no semi-hard, nothing violates the margin: loss 0
        ]
    )
    expected = torch.tensor([0.2 - 0.5 + 0.4, 0.2 - 0.5 + 0.9, 0.0])
    torch.testing.assert_close(obj.per_anchor(pos, neg, None), expected)
    # a negative exactly as close as the positive is not semi-hard (FaceNet Eq. 4 is strict)
    assert obj.per_anchor(torch.tensor([0.5]), torch.tensor([[0.5, -0.9]]), None).item() == pytest.approx(0.2)


def test_hardest_and_all_on_a_small_case():
    pos = torch.tensor([0.6])
    neg = torch.tensor([[0.7, 0.5, -0.2]])
    hinge = [0.3 - 0.6 + 0.7, 0.3 - 0.6 + 0.5, 0.0]
    assert Triplet(0.3, "hardest")(pos, neg).item() == pytest.approx(hinge[0])
    assert Triplet(0.3, "all")(pos, neg).item() == pytest.approx(sum(hinge) / 3)
    assert Triplet(0.3, "all", reduction="non-zero")(pos, neg).item() == pytest.approx(sum(hinge) / 2)


def test_mean_is_over_triplets_not_anchors():
    """With ragged masks, "all" divides the hinge sum by the number of valid triplets."""
    pos = torch.tensor([0.0, 0.0])
    neg = torch.tensor([[0.1, 0.1, 0.1], [0.3, 0.0, 0.0]])
    mask = torch.tensor([[False, False, False], [False, True, True]])
    obj = Triplet(0.5, "all")
    assert obj(pos, neg, mask).item() == pytest.approx((3 * 0.6 + 0.8) / 4)
    torch.testing.assert_close(obj.per_anchor(pos, neg, mask), torch.tensor([0.6, 0.8]))


def test_no_triplet_gives_zero_with_a_gradient_path():
    pos = torch.zeros(3, requires_grad=True)
    neg = torch.zeros(3, 4, requires_grad=True)
    loss = Triplet(0.5, "semi-hard")(pos, neg, torch.ones(3, 4, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and (pos.grad == 0).all() and (neg.grad == 0).all()
    easy = Triplet(0.1, "all", reduction="non-zero")(torch.ones(2), -torch.ones(2, 3))
    assert easy.item() == 0.0


def in_batch(seed, b=16, d=32, pull=0.0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(b, d, generator=g)
    z2 = pull * z1 + torch.randn(b, d, generator=g)
    score = CosineSimilarity()
    c = score_candidates(InBatchNegatives()(score.prepare(z1), score.prepare(z2)), score)
    return torch.cat([z1, z2]), torch.arange(b).repeat(2), c


@pytest.mark.parametrize("margin", [0.1, 0.5])
def test_all_triplets_equal_pml_with_mean_and_nonzero_reducers(margin):
    emb, labels, c = in_batch(0)
    cos = distances.CosineSimilarity()
    theirs = losses.TripletMarginLoss(margin=margin, distance=cos, reducer=reducers.MeanReducer())
    ours = Triplet(margin, "all")(c.pos, c.neg, c.neg_mask)
    assert ours.item() == pytest.approx(theirs(emb, labels).item(), abs=1e-5)
    theirs_nonzero = losses.TripletMarginLoss(margin=margin, distance=cos)  # AvgNonZeroReducer
    ours_nonzero = Triplet(margin, "all", reduction="non-zero")(c.pos, c.neg, c.neg_mask)
    assert ours_nonzero.item() == pytest.approx(theirs_nonzero(emb, labels).item(), abs=1e-5)


def test_hardest_equals_pml_batch_hard_miner():
    emb, labels, c = in_batch(1)
    cos = distances.CosineSimilarity()
    miner = miners.BatchHardMiner(distance=cos)
    loss = losses.TripletMarginLoss(margin=0.3, distance=cos, reducer=reducers.MeanReducer())
    theirs = loss(emb, labels, miner(emb, labels))
    ours = Triplet(0.3, "hardest")(c.pos, c.neg, c.neg_mask)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)


def test_semi_hard_equals_pml_when_every_anchor_has_a_semi_hard_negative():
    """PML's semi-hard miner takes the hardest negative scoring below the positive and drops anchors
    without one; with a semi-hard negative inside the margin for every anchor, the two selections agree."""
    margin = 0.5
    emb, labels, c = in_batch(2, pull=0.3)
    valid = ~c.neg_mask
    below = valid & (c.neg < c.pos[:, None])
    inside = below & (c.neg > c.pos[:, None] - margin)
    assert inside.any(dim=1).all()  # the precondition of the comparison
    assert (valid & (c.neg >= c.pos[:, None])).any()  # and semi-hard differs from hardest here
    cos = distances.CosineSimilarity()
    miner = miners.BatchEasyHardMiner(pos_strategy="easy", neg_strategy="semihard", distance=cos)
    loss = losses.TripletMarginLoss(margin=margin, distance=cos, reducer=reducers.MeanReducer())
    theirs = loss(emb, labels, miner(emb, labels))
    ours = Triplet(margin, "semi-hard")(c.pos, c.neg, c.neg_mask)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)
    assert ours.item() != pytest.approx(Triplet(margin, "hardest")(c.pos, c.neg, c.neg_mask).item())


def away_from_kinks(pos, neg, margin, gap=1e-3):
    """Hinge and selection are piecewise linear: check inputs sit at least ``gap`` from every kink."""
    p = pos[:, None]
    ok = ((margin - p + neg).abs() > gap).all() and ((neg - p).abs() > gap).all()
    ok = ok and ((neg - (p - margin)).abs() > gap).all()
    sorted_neg = neg.sort(dim=1).values
    return bool(ok and (sorted_neg.diff(dim=1) > gap).all())


@pytest.mark.parametrize("mining", ["all", "hardest", "semi-hard"])
def test_gradcheck(mining):
    margin = 0.4
    for seed in range(50):
        pos, neg, _ = random_scores(seed, b=4, n=6, dtype=torch.float64)
        if away_from_kinks(pos, neg, margin):
            break
    else:
        pytest.fail("no kink-free input found")
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[0, 1] = True
    obj = Triplet(margin, mining)
    pos.requires_grad_()
    neg.requires_grad_()
    assert torch.autograd.gradcheck(lambda p, n: obj(p, n, mask), (pos, neg))


@pytest.mark.parametrize("mining", ["all", "hardest", "semi-hard"])
def test_a_nan_negative_is_not_skipped(mining):
    """QA finding 4: semi-hard mining skipped a NaN column (it fails both comparisons), so the loss was a
    finite 0.189; now the NaN is selected and the loss is NaN, for every mining mode."""
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.rand(4, generator=g), torch.rand(4, 6, generator=g)
    neg[0, 0] = float("nan")
    obj = Triplet(0.3, mining)
    assert torch.isnan(obj(pos, neg))
    losses, exists = obj.triplets(pos, neg, None)
    assert torch.isnan(losses[0]).any() and torch.isfinite(losses[1:]).all() and bool(exists.all())
