import pytest
import torch

from contrastkit.errors import ConfigError
from contrastkit.negatives import InBatchNegatives, build_negatives, oracle_mask, score_candidates
from contrastkit.scores import CosineSimilarity, DotProduct


def test_simclr_structure_2b_minus_2_negatives():
    b = 5
    z1, z2 = torch.randn(b, 3), torch.randn(b, 3)
    c = InBatchNegatives()(z1, z2)
    assert c.anchors.shape == (2 * b, 3) and c.negatives.shape == (2 * b, 3)
    assert torch.equal(c.positives[:b], z2) and torch.equal(c.positives[b:], z1)
    assert (~c.neg_mask).sum(1).tolist() == [2 * b - 2] * (2 * b)
    for i in range(2 * b):
        assert c.neg_mask[i, i] and c.neg_mask[i, (i + b) % (2 * b)]
    contrast = score_candidates(c, DotProduct())
    torch.testing.assert_close(contrast.neg, c.anchors @ c.anchors.T)
    torch.testing.assert_close(contrast.pos, (c.anchors * c.positives).sum(1))
    assert contrast.valid_negatives().tolist() == [2 * b - 2] * (2 * b)


def test_oracle_mask_removes_same_class():
    z1, z2 = torch.randn(4, 3), torch.randn(4, 3)
    labels = torch.tensor([0, 1, 0, 2])
    c = InBatchNegatives()(z1, z2, labels)
    m = oracle_mask(c)
    full = torch.cat([labels, labels])
    assert torch.equal(m, full[:, None] == full[None, :])
    contrast = score_candidates(c, CosineSimilarity(), oracle=True)
    # anchor 0 (label 0): self, partner and both views of sample 2 are excluded -> 8 - 4 = 4 negatives
    assert contrast.valid_negatives()[0].item() == 4
    assert contrast.valid_negatives()[1].item() == 6


def test_oracle_needs_labels_and_bad_shapes():
    c = InBatchNegatives()(torch.randn(2, 3), torch.randn(2, 3))
    with pytest.raises(ValueError, match="labels"):
        oracle_mask(c)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 3\)"):
        InBatchNegatives()(torch.randn(2, 3), torch.randn(3, 3))
    with pytest.raises(ConfigError, match="in-batch"):
        build_negatives("bank")


def test_oracle_mask_never_matches_unknown_labels():
    from contrastkit.negatives import Candidates

    z = torch.randn(3, 4)
    c = Candidates(
        anchors=z,
        positives=z,
        negatives=torch.randn(4, 4),
        anchor_labels=torch.tensor([0, -1, 1]),
        negative_labels=torch.tensor([0, -1, -1, 1]),
    )
    m = oracle_mask(c)
    expected = torch.tensor(
        [[True, False, False, False], [False, False, False, False], [False, False, False, True]]
    )
    assert torch.equal(m, expected)
    # per-anchor labels (M, N), e.g. MoCHi's synthetic points labelled -1
    c.negative_labels = torch.tensor([[0, -1, 0, -1], [-1, -1, -1, -1], [1, 1, -1, 0]])
    assert oracle_mask(c).sum(1).tolist() == [2, 0, 2]


def test_scores_are_float32_under_bf16_autocast() -> None:
    """The negatives' scores are not rounded to bf16 by autocast (they match the float32 scores to 1e-6)."""
    import torch.nn.functional as F

    from contrastkit.negatives import score_candidates
    from contrastkit.scores import build_score

    g = torch.Generator().manual_seed(0)
    z1, z2 = (F.normalize(torch.randn(16, 32, generator=g), dim=1) for _ in range(2))
    cand = InBatchNegatives()(z1, z2)
    ref = score_candidates(cand, build_score("cosine"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = score_candidates(cand, build_score("cosine"))
    assert got.neg.dtype == torch.float32 and got.pos.dtype == torch.float32
    torch.testing.assert_close(got.neg, ref.neg, atol=1e-6, rtol=0)


def _infonce_through_source(source, z1, z2, t=0.1, labels=None, oracle=False):
    from contrastkit.objectives import InfoNCE

    c = score_candidates(source(z1, z2, labels), CosineSimilarity(), oracle=oracle)
    return InfoNCE(temperature=t)(c.pos, c.neg, c.neg_mask), c


def test_cross_view_is_simcse_eq4_and_the_mixed_cases_match_their_formulas() -> None:
    """SimCSE Eq. 4 is a B-way cross-entropy of cos(h1_i, h2_j)/t with j = i the target; the symmetric
    cross-view loss averages it over both directions; same_view with one direction is SimCLR's first half."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(3)
    b, t = 7, 0.1
    z1, z2 = (
        torch.randn(b, 5, generator=g, dtype=torch.float64),
        torch.randn(b, 5, generator=g, dtype=torch.float64),
    )
    u1, u2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    target = torch.arange(b)
    simcse = F.cross_entropy(u1 @ u2.T / t, target)
    got, c = _infonce_through_source(build_negatives("cross-view"), u1, u2, t)
    torch.testing.assert_close(got, simcse, rtol=1e-12, atol=1e-12)
    assert c.neg.shape == (b, b) and c.valid_negatives().tolist() == [b - 1] * b
    clip = (F.cross_entropy(u1 @ u2.T / t, target) + F.cross_entropy(u2 @ u1.T / t, target)) / 2
    got, c = _infonce_through_source(InBatchNegatives(same_view=False), u1, u2, t)
    torch.testing.assert_close(got, clip, rtol=1e-12, atol=1e-12)
    assert c.valid_negatives().tolist() == [b - 1] * (2 * b)
    views = torch.cat([u1, u2])
    logits = (views @ views.T / t).masked_fill(torch.eye(2 * b, dtype=torch.bool), float("-inf"))
    nt_xent_rows = F.cross_entropy(logits, torch.cat([target + b, target]), reduction="none")
    got, _ = _infonce_through_source(InBatchNegatives(symmetric=False), u1, u2, t)
    torch.testing.assert_close(got, nt_xent_rows[:b].mean(), rtol=1e-12, atol=1e-12)
    got, _ = _infonce_through_source(InBatchNegatives(), u1, u2, t)
    torch.testing.assert_close(got, nt_xent_rows.mean(), rtol=1e-12, atol=1e-12)


def test_cross_view_oracle_masks_same_class_second_views() -> None:
    labels = torch.tensor([0, 1, 0, 2])
    z1, z2 = torch.randn(4, 3), torch.randn(4, 3)
    c = score_candidates(build_negatives("cross-view")(z1, z2, labels), CosineSimilarity(), oracle=True)
    assert c.valid_negatives().tolist() == [2, 3, 2, 3]  # anchors 0 and 2 lose each other's second view
    c = score_candidates(InBatchNegatives(same_view=False)(z1, z2, labels), CosineSimilarity(), oracle=True)
    assert c.valid_negatives().tolist() == [2, 3, 2, 3] * 2
    with pytest.raises(ConfigError, match="same_view and symmetric must be True or False"):
        InBatchNegatives(same_view=0)


@pytest.mark.parametrize(
    "positives, negatives, pattern",
    [
        ((1, 8), (5, 8), r"positives must have the anchors' shape \(4, 8\).*got \(1, 8\)"),
        ((8,), (5, 8), r"positives must have the anchors' shape \(4, 8\).*got \(8,\)"),
        ((4, 1), (5, 8), r"positives must have the anchors' shape"),
        ((4, 8), (5,), r"negatives must have shape \(N, 8\) \(shared\) or \(4, N, 8\).*got \(5,\)"),
        ((4, 8), (5, 7), r"negatives must have shape \(N, 8\)"),
        ((4, 8), (3, 5, 8), r"\(4, N, 8\) \(per anchor\)"),
    ],
)
def test_candidates_refuse_embeddings_that_would_broadcast(positives, negatives, pattern) -> None:
    """A (1, D) positive was broadcast against all 4 anchors and gave a finite, wrong loss; 1-D or
    mismatched negatives failed deep in a matmul or einsum."""
    from contrastkit.errors import ShapeError
    from contrastkit.negatives import Candidates

    with pytest.raises(ShapeError, match=pattern):
        Candidates(torch.randn(4, 8), torch.randn(*positives), torch.randn(*negatives))
