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
