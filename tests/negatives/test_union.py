"""The union of two negative sources: in-batch plus per-anchor (mined) negatives, scored as one set."""

import pytest
import torch
import torch.nn.functional as F

from contrastkit.negatives import (
    InBatchNegatives,
    MinedNegatives,
    NegativeSource,
    oracle_mask,
    score_candidates,
)
from contrastkit.negatives.base import Candidates
from contrastkit.negatives.union import UnionNegatives
from contrastkit.objectives import InfoNCE
from contrastkit.scores import build_score


class PerAnchor(NegativeSource):
    """A stub per-anchor source: fixed (M, n, D) negatives for anchors cat([z1, z2])."""

    needs_indices = True

    def __init__(self, negatives: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        super().__init__()
        self.negs, self.labels = negatives, labels
        self.seen: list[torch.Tensor] = []

    def forward(self, z1, z2, labels=None, indices=None):
        self.seen.append(indices)
        mask = torch.zeros(self.negs.shape[:2], dtype=torch.bool)
        mask[0, -1] = True  # one padded slot
        both = None if labels is None else torch.cat([labels, labels])
        return Candidates(torch.cat([z1, z2]), torch.cat([z2, z1]), self.negs, mask, both, self.labels)


def test_union_scores_both_sets_and_infonce_matches_the_formula() -> None:
    g = torch.Generator().manual_seed(0)
    b, d, n, t = 6, 8, 5, 0.3
    z1, z2 = (F.normalize(torch.randn(b, d, generator=g), dim=1) for _ in range(2))
    z1.requires_grad_(True)
    mined = F.normalize(torch.randn(2 * b, n, d, generator=g), dim=-1)
    labels = torch.tensor([0, 1, 0, 2, 1, 2])
    stub = PerAnchor(mined, torch.randint(0, 3, (2 * b, n), generator=g))
    union = UnionNegatives(InBatchNegatives(), stub)
    assert union.needs_indices
    idx = torch.arange(b)
    cand = union(z1, z2, labels, indices=idx)
    assert stub.seen[0] is idx and cand.num_negatives == 2 * b + n
    # the shared in-batch block is not broadcast to every anchor: it is scored apart from the mined block
    assert cand.negatives.shape == (2 * b, d) and cand.extra_negatives.shape == (2 * b, n, d)
    contrast = score_candidates(cand, build_score("cosine"))
    loss = InfoNCE(t)(contrast.pos, contrast.neg, contrast.neg_mask)
    # independent: -log e^{s+/t} / (e^{s+/t} + sum over the 2B-2 other views + sum over the unmasked mined)
    views, partners = torch.cat([z1, z2]), torch.cat([z2, z1])
    terms = []
    for i in range(2 * b):
        pos = (views[i] @ partners[i]) / t
        others = [views[j] @ views[i] / t for j in range(2 * b) if j not in (i, (i + b) % (2 * b))]
        hard = [mined[i, j] @ views[i] / t for j in range(n) if not (i == 0 and j == n - 1)]
        terms.append(-(pos - torch.logsumexp(torch.stack([pos, *others, *hard]), 0)))
    torch.testing.assert_close(loss, torch.stack(terms).mean())
    loss.backward()
    assert z1.grad is not None and z1.grad.abs().sum() > 0
    # the oracle mask sees the in-batch labels and the mined items' labels
    same = oracle_mask(cand)
    assert same.shape == (2 * b, 2 * b + n)
    both = torch.cat([labels, labels])
    assert torch.equal(same[:, : 2 * b], both[:, None] == both[None, :])
    assert torch.equal(same[:, 2 * b :], stub.labels == both[:, None])


def test_a_block_without_labels_is_unknown_and_mismatched_anchors_are_refused() -> None:
    z1, z2 = torch.randn(4, 3), torch.randn(4, 3)
    union = UnionNegatives(InBatchNegatives(), PerAnchor(torch.randn(8, 2, 3)))
    cand = union(z1, z2, torch.arange(4), indices=torch.arange(4))
    assert (cand.negative_labels[:, 8:] == -1).all() and not oracle_mask(cand)[:, 8:].any()
    with pytest.raises(ValueError, match="indices"):
        union(z1, z2)

    class OneView(PerAnchor):
        def forward(self, z1, z2, labels=None, indices=None):
            return Candidates(z1, z2, self.negs)

    with pytest.raises(ValueError, match="different anchors"):
        UnionNegatives(InBatchNegatives(), OneView(torch.randn(4, 2, 3)))(z1, z2, indices=torch.arange(4))


def test_in_batch_plus_mined_excludes_own_items_and_reports_staleness() -> None:
    g = torch.Generator().manual_seed(3)
    data = F.normalize(torch.randn(40, 6, generator=g), dim=1)
    mined = MinedNegatives(lambda: data, num_negatives=3, refresh_every=5, both_views=True)
    union = UnionNegatives(InBatchNegatives(), mined)
    idx = torch.tensor([0, 7, 9])
    cand = union(data[idx], data[idx], indices=idx)
    assert cand.negatives.shape == (6, 6) and cand.extra_negatives.shape == (6, 3, 6)
    own = torch.cat([idx, idx])
    assert not (mined.last_indices == own[:, None]).any()
    torch.testing.assert_close(cand.extra_negatives, data[mined.last_indices])
    assert "mined_staleness" in union.last_stats
    union.update(data[idx], data[idx], indices=idx)
    keys = set(union.state_dict())
    assert any(k.startswith("second.") for k in keys)


def test_build_negatives_in_batch_plus_mined() -> None:
    from contrastkit.errors import ConfigError
    from contrastkit.negatives import NEGATIVES, build_negatives

    assert "in-batch+mined" in NEGATIVES
    data = F.normalize(torch.randn(30, 4), dim=1)
    source = build_negatives("in-batch+mined", embed_all=lambda: data, mined_negatives=2)
    assert isinstance(source, UnionNegatives) and isinstance(source.second, MinedNegatives)
    assert source.second.both_views and source.second.index_kind == "torch" and source.needs_indices
    with pytest.raises(ConfigError, match="mines from an index"):
        build_negatives("in-batch+mined")


def test_the_order_of_the_sources_does_not_change_the_loss_and_nested_unions_are_refused() -> None:
    g = torch.Generator().manual_seed(5)
    z1, z2 = (F.normalize(torch.randn(5, 4, generator=g), dim=1) for _ in range(2))
    stub = PerAnchor(F.normalize(torch.randn(10, 3, 4, generator=g), dim=-1))
    score, obj = build_score("cosine"), InfoNCE(0.2)
    losses = []
    for union in (UnionNegatives(InBatchNegatives(), stub), UnionNegatives(stub, InBatchNegatives())):
        cand = union(z1, z2, indices=torch.arange(5))
        assert cand.negatives.ndim == 2 and cand.extra_negatives is not None  # shared columns first
        c = score_candidates(cand, score)
        losses.append(obj(c.pos, c.neg, c.neg_mask))
    torch.testing.assert_close(losses[0], losses[1])
    # two shared blocks are one shared block
    both = UnionNegatives(InBatchNegatives(), InBatchNegatives())(z1, z2, torch.arange(5))
    assert (
        both.negatives.shape == (20, 4)
        and both.extra_negatives is None
        and both.negative_labels.shape == (20,)
    )
    nested = UnionNegatives(UnionNegatives(InBatchNegatives(), stub), InBatchNegatives())
    with pytest.raises(ValueError, match="union of unions"):
        nested(z1, z2, indices=torch.arange(5))
