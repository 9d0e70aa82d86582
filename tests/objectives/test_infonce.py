import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import NTXentLoss

from contrastkit.negatives import InBatchNegatives, score_candidates
from contrastkit.objectives import InfoNCE, ShapeError, build_objective, mutual_information_bound
from contrastkit.scores import CosineSimilarity


def reference_infonce(pos, neg, mask, t):
    """Straight from the equation: -log(e^{s+/t} / (e^{s+/t} + sum_j e^{s_j/t})), row by row, float64."""
    losses = []
    for i in range(pos.shape[0]):
        num = math.exp(pos[i].item() / t)
        den = num + sum(
            math.exp(neg[i, j].item() / t) for j in range(neg.shape[1]) if mask is None or not mask[i, j]
        )
        losses.append(-math.log(num / den))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("t", [0.5, 0.1])
def test_matches_equation_with_and_without_mask(t):
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(7, generator=g) * 2 - 1
    neg = torch.rand(7, 11, generator=g) * 2 - 1
    mask = torch.rand(7, 11, generator=g) < 0.3
    obj = InfoNCE(temperature=t)
    assert obj(pos, neg).item() == pytest.approx(reference_infonce(pos, neg, None, t), abs=1e-5)
    assert obj(pos, neg, mask).item() == pytest.approx(reference_infonce(pos, neg, mask, t), abs=1e-5)


def test_masked_equals_removed_columns():
    g = torch.Generator().manual_seed(1)
    pos, neg = torch.randn(5, generator=g), torch.randn(5, 8, generator=g)
    mask = torch.zeros(5, 8, dtype=torch.bool)
    mask[:, 2:4] = True
    obj = InfoNCE(0.2)
    kept = torch.cat([neg[:, :2], neg[:, 4:]], dim=1)
    torch.testing.assert_close(obj(pos, neg, mask), obj(pos, kept))


@pytest.mark.parametrize("t", [0.07, 0.1, 0.5])
def test_in_batch_infonce_equals_pml_ntxent(t):
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
    score = CosineSimilarity()
    cands = InBatchNegatives()(score.prepare(z1), score.prepare(z2))
    c = score_candidates(cands, score)
    ours = InfoNCE(t)(c.pos, c.neg, c.neg_mask)
    labels = torch.arange(16).repeat(2)
    theirs = NTXentLoss(temperature=t)(torch.cat([z1, z2]), labels)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)


def test_gradients_flow_and_gradcheck():
    g = torch.Generator().manual_seed(3)
    pos = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    neg = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[0, 1] = True
    obj = InfoNCE(0.3)
    assert torch.autograd.gradcheck(lambda p, n: obj(p, n, mask), (pos, neg))
    obj(pos, neg, mask).backward()
    assert pos.grad.abs().sum() > 0 and neg.grad[0, 1] == 0 and neg.grad[1, 1] != 0


def test_bf16_autocast_matches_fp32():
    g = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(64, 128, generator=g), torch.randn(64, 128, generator=g)
    score = CosineSimilarity()

    def loss():
        cands = InBatchNegatives()(score.prepare(z1), score.prepare(z2))
        c = score_candidates(cands, score)
        return InfoNCE(0.1)(c.pos, c.neg, c.neg_mask)

    ref = loss()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss()
    assert low.dtype == torch.float32
    assert abs(low.item() - ref.item()) < 1e-2


def test_stable_at_low_temperature():
    pos = torch.full((3,), 1.0)
    neg = torch.full((3, 5), 0.99)
    for dtype in (torch.float32, torch.bfloat16):
        out = InfoNCE(0.05)(pos.to(dtype), neg.to(dtype))
        assert torch.isfinite(out)
    # scores far apart: no overflow, loss ~ 0
    assert InfoNCE(0.01)(torch.ones(2), -torch.ones(2, 3)).item() == pytest.approx(0.0, abs=1e-6)


def test_shape_errors_name_both_shapes():
    obj = InfoNCE()
    with pytest.raises(ShapeError, match=r"\(4,\).*\(5, 3\)"):
        obj(torch.zeros(4), torch.zeros(5, 3))
    with pytest.raises(ShapeError, match=r"\(4, 2\)"):
        obj(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ShapeError, match="neg_mask"):
        obj(torch.zeros(4), torch.zeros(4, 3), torch.zeros(4, 2, dtype=torch.bool))
    with pytest.raises(ShapeError, match="bool"):
        obj(torch.zeros(4), torch.zeros(4, 3), torch.zeros(4, 3))


def test_bad_temperature_and_unknown_objective():
    from contrastkit.errors import ConfigError

    with pytest.raises(ConfigError, match="temperature"):
        InfoNCE(0)
    with pytest.raises(ConfigError, match="infonce"):
        build_objective("nope")
    assert build_objective("infonce", temperature=0.3).temperature == 0.3


def test_mutual_information_bound_is_log_n_plus_1_minus_loss():
    loss = torch.tensor([1.0, 2.0])
    assert mutual_information_bound(loss, torch.tensor([9, 9])).item() == pytest.approx(math.log(10) - 1.5)
    # a perfect encoder approaches log(N+1)
    pos, neg = torch.ones(8), -torch.ones(8, 63)
    per = InfoNCE(0.05).per_anchor(pos, neg, None)
    assert mutual_information_bound(per, 63).item() == pytest.approx(math.log(64), abs=1e-4)


def test_cross_entropy_equivalence():
    g = torch.Generator().manual_seed(5)
    pos, neg = torch.randn(6, generator=g), torch.randn(6, 9, generator=g)
    logits = torch.cat([pos[:, None], neg], 1) / 0.2
    expected = F.cross_entropy(logits, torch.zeros(6, dtype=torch.long))
    torch.testing.assert_close(InfoNCE(0.2)(pos, neg), expected)


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_oracle_mask_equals_dropping_same_class_negatives(t):
    """DCL's "unbiased" oracle: InfoNCE with the oracle mask on in-batch candidates, against a loop over the
    2B views that simply leaves out the anchor, its partner and every view of the anchor's class."""
    g = torch.Generator().manual_seed(6)
    b = 12
    z1, z2 = torch.randn(b, 16, generator=g), torch.randn(b, 16, generator=g)
    labels = torch.randint(0, 3, (b,), generator=g)
    score = CosineSimilarity()
    cands = InBatchNegatives()(score.prepare(z1), score.prepare(z2), labels)
    c = score_candidates(cands, score, oracle=True)
    ours = InfoNCE(t)(c.pos, c.neg, c.neg_mask)

    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    y = torch.cat([labels, labels]).tolist()
    total = 0.0
    for i in range(2 * b):
        partner = (i + b) % (2 * b)
        e_pos = math.exp(float(z[i] @ z[partner]) / t)
        kept = [j for j in range(2 * b) if j not in (i, partner) and y[j] != y[i]]
        total += -math.log(e_pos / (e_pos + sum(math.exp(float(z[i] @ z[j]) / t) for j in kept)))
    assert ours.item() == pytest.approx(total / (2 * b), abs=1e-5)
    # the oracle really removed something
    assert c.neg_mask.sum() > cands.neg_mask.sum()
