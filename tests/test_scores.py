import pytest
import torch
import torch.nn.functional as F

from contrastkit.errors import ConfigError
from contrastkit.scores import CosineSimilarity, DotProduct, build_score


def test_cosine_matches_torch():
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    torch.testing.assert_close(CosineSimilarity()(a, b), F.cosine_similarity(a, b, dim=1))
    s = CosineSimilarity()
    pa, pn = s.prepare(a), s.prepare(torch.randn(9, 4))
    expected = F.cosine_similarity(a[:, None, :], pn[None, :, :], dim=2)
    torch.testing.assert_close(s.against(pa, pn), expected)


def test_per_anchor_negatives_equal_shared_when_repeated():
    s = DotProduct()
    a, n = torch.randn(3, 5), torch.randn(7, 5)
    torch.testing.assert_close(s.against(a, n.expand(3, 7, 5)), s.against(a, n))
    with pytest.raises(ValueError, match=r"\(M, N, D\)"):
        s.against(a, torch.randn(5))


def test_build_score():
    assert isinstance(build_score("dot"), DotProduct)
    with pytest.raises(ConfigError, match="cosine"):
        build_score("euclid")


def test_score_dtype_promotes_low_precision_and_keeps_float64():
    from contrastkit.scores import score_dtype

    assert score_dtype(torch.bfloat16) == torch.float32
    assert score_dtype(torch.float16) == torch.float32
    assert score_dtype(torch.float32) == torch.float32
    assert score_dtype(torch.float64) == torch.float64
    assert score_dtype(torch.bfloat16, torch.float64) == torch.float64
    assert score_dtype() == torch.float32


def _objectives():
    from contrastkit.objectives import (
        Debiased,
        Decoupled,
        HardNegative,
        InfoNCE,
        Margin,
        SupervisedContrastive,
        Triplet,
    )

    return [
        InfoNCE(0.2),
        Debiased(0.2, 0.1),
        HardNegative(0.2, 0.1, 1.0),
        Decoupled(0.2),
        Triplet(0.5, "all"),
        Margin(1.2),
        SupervisedContrastive(0.2),
    ]


@pytest.mark.parametrize("objective", _objectives(), ids=lambda o: type(o).__name__)
def test_gradcheck_through_score_and_objective_in_float64(objective):
    """score.prepare / pairs / against and every objective keep float64, so gradcheck holds end to end."""
    from contrastkit.negatives import InBatchNegatives

    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(4, 6, dtype=torch.float64, generator=g, requires_grad=True)
    z2 = torch.randn(4, 6, dtype=torch.float64, generator=g)
    labels = torch.tensor([0, 1, 0, 2])
    score = CosineSimilarity()

    def loss(a: torch.Tensor) -> torch.Tensor:
        c = InBatchNegatives()(score.prepare(a), score.prepare(z2), labels)
        pos = score.pairs(c.anchors, c.positives)
        neg = score.against(c.anchors, c.negatives)
        if objective.needs_labels:
            same = (c.anchor_labels[:, None] == c.negative_labels[None, :]) & ~c.neg_mask
            return objective(pos, neg, c.neg_mask, pos_mask=same)
        return objective(pos, neg, c.neg_mask)

    assert loss(z1).dtype == torch.float64
    assert torch.autograd.gradcheck(loss, (z1,))


def test_gradcheck_through_score_candidates_in_float64():
    from contrastkit.negatives import InBatchNegatives, score_candidates
    from contrastkit.objectives import InfoNCE

    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(4, 8, dtype=torch.float64, generator=g, requires_grad=True)
    z2 = torch.randn(4, 8, dtype=torch.float64, generator=g)
    score = CosineSimilarity()

    def loss(a: torch.Tensor) -> torch.Tensor:
        c = score_candidates(InBatchNegatives()(score.prepare(a), score.prepare(z2)), score)
        return InfoNCE(0.1)(c.pos, c.neg, c.neg_mask)

    assert loss(z1).dtype == torch.float64
    assert torch.autograd.gradcheck(loss, (z1,))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # low precision is still scored in float32
        c = score_candidates(InBatchNegatives()(z1.bfloat16(), z2.bfloat16()), score)
    assert c.pos.dtype == c.neg.dtype == torch.float32
