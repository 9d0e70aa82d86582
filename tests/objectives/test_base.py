"""The contract every objective keeps: masks, shapes, precision and stability, for all of them at once."""

import pytest
import torch

from contrastkit.negatives import InBatchNegatives, score_candidates
from contrastkit.objectives import (
    Debiased,
    Decoupled,
    HardNegative,
    InfoNCE,
    Margin,
    Objective,
    ShapeError,
    SupervisedContrastive,
    Triplet,
    check_scores,
)
from contrastkit.scores import CosineSimilarity

FACTORIES = {
    "infonce": lambda: InfoNCE(0.1),
    "triplet-all": lambda: Triplet(0.5, "all"),
    "triplet-all-nonzero": lambda: Triplet(0.5, "all", reduction="non-zero"),
    "triplet-hardest": lambda: Triplet(0.5, "hardest"),
    "triplet-semi-hard": lambda: Triplet(0.5, "semi-hard"),
    "margin": lambda: Margin(0.8),
    "debiased": lambda: Debiased(0.1, 0.1),
    "decoupled": lambda: Decoupled(0.1),
    "hard-negative": lambda: HardNegative(0.1, 0.1, 1.0),
    "supcon": lambda: SupervisedContrastive(0.1),
}
TEMPERED = {
    "infonce": InfoNCE,
    "debiased": lambda t: Debiased(t, 0.1),
    "decoupled": Decoupled,
    "hard-negative": lambda t: HardNegative(t, 0.1, 1.0),
    "hard-negative-beta-10": lambda t: HardNegative(t, 0.5, 10.0),
    "supcon": SupervisedContrastive,
}
objectives = pytest.mark.parametrize("make", list(FACTORIES.values()), ids=list(FACTORIES))


def scores(b=6, n=10, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(b, generator=g, dtype=torch.float64) * 2 - 1
    neg = torch.rand(b, n, generator=g, dtype=torch.float64) * 2 - 1
    return pos.to(dtype), neg.to(dtype)


def masked_k_per_row(b, n, k, seed):
    """A mask with exactly k True per row at random positions (so kept columns can be gathered)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(n, generator=g) for _ in range(b)])
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask.scatter_(1, order[:, :k], True)
    return mask


@objectives
def test_masked_columns_equal_dropped_columns(make):
    obj = make()
    pos, neg = scores(seed=1)
    mask = masked_k_per_row(6, 10, 3, seed=2)
    kept = neg[~mask].view(6, 7)
    torch.testing.assert_close(obj(pos, neg, mask), obj(pos, kept), rtol=1e-6, atol=1e-6)


@objectives
def test_masked_columns_get_zero_gradient(make):
    obj = make()
    pos, neg = scores(seed=3)
    pos.requires_grad_()
    neg.requires_grad_()
    mask = torch.rand(6, 10, generator=torch.Generator().manual_seed(4)) < 0.4
    obj(pos, neg, mask).backward()
    assert torch.isfinite(neg.grad).all() and torch.isfinite(pos.grad).all()
    assert (neg.grad[mask] == 0).all()
    assert neg.grad[~mask].abs().sum() > 0


@objectives
def test_row_with_every_negative_masked_is_finite(make):
    obj = make()
    pos, neg = scores(seed=5)
    pos.requires_grad_()
    neg.requires_grad_()
    mask = torch.zeros(6, 10, dtype=torch.bool)
    mask[2] = True
    loss = obj(pos, neg, mask)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(pos.grad).all() and torch.isfinite(neg.grad).all()
    assert (neg.grad[2] == 0).all()
    # and a batch where nothing is left at all
    everything = torch.ones(6, 10, dtype=torch.bool)
    assert torch.isfinite(obj(pos.detach(), neg.detach(), everything))


@pytest.mark.parametrize("make", list(TEMPERED.values()), ids=list(TEMPERED))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_temperature_all_scores_one(make, dtype):
    """Scores all 1.0 at t = 0.05 (e^{20} per term, e^{220} inside HCL at β = 10) stay finite."""
    obj = make(0.05)
    pos = torch.ones(4, dtype=dtype, requires_grad=True)
    neg = torch.ones(4, 7, dtype=dtype, requires_grad=True)
    loss = obj(pos, neg)
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss) and torch.isfinite(pos.grad).all() and torch.isfinite(neg.grad).all()


@pytest.mark.parametrize("make", list(TEMPERED.values()), ids=list(TEMPERED))
def test_low_temperature_scores_near_one(make):
    obj = make(0.05)
    g = torch.Generator().manual_seed(6)
    pos = (1 - 0.01 * torch.rand(8, generator=g)).requires_grad_()
    neg = (1 - 0.02 * torch.rand(8, 50, generator=g)).requires_grad_()
    loss = obj(pos, neg)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pos.grad).all() and torch.isfinite(neg.grad).all()
    # far apart at a very low temperature: no overflow either
    assert torch.isfinite(make(0.01)(torch.ones(2), -torch.ones(2, 3)))


@objectives
def test_bf16_autocast_computes_in_float32(make):
    g = torch.Generator().manual_seed(7)
    z1, z2 = torch.randn(32, 64, generator=g), torch.randn(32, 64, generator=g)
    labels = torch.arange(32) % 5
    score = CosineSimilarity()
    obj = make()

    def loss():
        cands = InBatchNegatives()(score.prepare(z1), score.prepare(z2), labels)
        c = score_candidates(cands, score)
        if obj.needs_labels:
            same = cands.anchor_labels[:, None] == cands.negative_labels[None, :]
            return obj(c.pos, c.neg, c.neg_mask, pos_mask=same & ~c.neg_mask)
        return obj(c.pos, c.neg, c.neg_mask)

    ref = loss()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss()
    assert low.dtype == torch.float32
    assert abs(low.item() - ref.item()) < 3e-2


@objectives
def test_float64_stays_float64(make):
    pos, neg = scores(seed=8, dtype=torch.float64)
    assert make()(pos, neg).dtype == torch.float64


@objectives
def test_shape_errors_name_both_shapes(make):
    obj = make()
    with pytest.raises(ShapeError, match=r"\(4,\).*\(5, 3\)"):
        obj(torch.zeros(4), torch.zeros(5, 3))
    with pytest.raises(ShapeError, match=r"neg_mask \(4, 2\).*neg \(4, 3\)"):
        obj(torch.zeros(4), torch.zeros(4, 3), torch.zeros(4, 2, dtype=torch.bool))


def test_pos_mask_is_validated():
    obj = SupervisedContrastive()
    with pytest.raises(ShapeError, match=r"pos_mask \(4, 2\).*neg \(4, 3\)"):
        obj(torch.zeros(4), torch.zeros(4, 3), pos_mask=torch.zeros(4, 2, dtype=torch.bool))
    with pytest.raises(ShapeError, match="pos_mask must be a bool"):
        obj(torch.zeros(4), torch.zeros(4, 3), pos_mask=torch.zeros(4, 3))
    pos, neg = torch.zeros(4), torch.zeros(4, 3)
    same = torch.zeros(4, 3, dtype=torch.bool)
    assert check_scores(pos, neg, None, same)[2] is None


@pytest.mark.parametrize("name", [k for k in FACTORIES if k != "supcon"])
def test_pos_mask_refused_by_objectives_without_labels(name):
    obj = FACTORIES[name]()
    assert obj.needs_labels is False
    with pytest.raises(TypeError, match="pos_mask"):
        obj(torch.zeros(4), torch.zeros(4, 3), pos_mask=torch.zeros(4, 3, dtype=torch.bool))


def test_needs_labels_flags():
    assert Objective.needs_labels is False
    assert SupervisedContrastive.needs_labels is True
    assert InfoNCE._takes_pos_mask is False and SupervisedContrastive._takes_pos_mask is True
