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
