import pytest
import torch
import torch.nn.functional as F

from contrastkit.negatives import Candidates, InBatchNegatives, NegativeSource, oracle_mask, score_candidates
from contrastkit.negatives.mixing import HardNegativeMixing
from contrastkit.negatives.queue import QueueNegatives
from contrastkit.objectives import InfoNCE
from contrastkit.scores import CosineSimilarity


class Fixed(NegativeSource):
    """Shared negatives given in advance, with an optional mask and labels."""

    def __init__(self, negatives, mask=None, labels=None):
        super().__init__()
        self.negatives, self.mask, self.labels = negatives, mask, labels
        self.updates = 0

    def forward(self, z1, z2, labels=None):
        mask = None if self.mask is None else self.mask[: z1.shape[0]]
        return Candidates(z1, z2, self.negatives, mask, labels, None if labels is None else self.labels)

    def update(self, z1, z2, labels=None):
        self.updates += 1


def unit(*shape):
    return F.normalize(torch.randn(*shape), dim=-1)


def mixer(source, **kw):
    kw.setdefault("generator", torch.Generator().manual_seed(0))
    return HardNegativeMixing(source, **kw)


def test_synthetic_points_are_normalised_convex_mixtures_with_right_counts():
    torch.manual_seed(0)
    m, n, d = 4, 40, 8
    q, k, negs = unit(m, d), unit(m, d), unit(n, d)
    mix = mixer(Fixed(negs), num_hardest=10, num_mixed=6, num_query_mixed=3, layout="per-anchor")
    c = mix(q, k)
    assert c.negatives.shape == (m, n + 9, d) and c.neg_mask.shape == (m, n + 9)
    assert torch.equal(c.negatives[:, :n], negs.expand(m, n, d))
    r = mix.last_mix
    syn = c.negatives[:, n:]
    assert not r.synthetic.requires_grad
    torch.testing.assert_close(syn.norm(dim=-1), torch.ones(m, 9))
    alpha, beta = r.alpha.unsqueeze(-1), r.beta.unsqueeze(-1)
    torch.testing.assert_close(
        syn[:, :6], F.normalize(alpha * negs[r.mix_i] + (1 - alpha) * negs[r.mix_j], dim=-1)
    )
    torch.testing.assert_close(
        syn[:, 6:], F.normalize(beta * q.unsqueeze(1) + (1 - beta) * negs[r.query_j], dim=-1)
    )
    assert r.alpha.shape == (m, 6) and bool(((r.alpha >= 0) & (r.alpha < 1)).all())
    assert r.beta.shape == (m, 3) and bool(((r.beta >= 0) & (r.beta < 0.5)).all())
    assert r.beta.max() > 0.25  # uses the whole (0, 0.5) range, not a constant
    assert not c.neg_mask.any()


def test_hardest_are_the_top_scoring_valid_negatives_and_masked_ones_are_never_chosen():
    torch.manual_seed(1)
    m, n, d = 5, 30, 6
    q, k, negs = unit(m, d), unit(m, d), unit(n, d)
    sim = q @ negs.T
    mask = torch.zeros(m, n, dtype=torch.bool)
    top3 = sim.topk(3, dim=1).indices
    mask.scatter_(1, top3, True)  # hide each anchor's three hardest
    mask[4] = True  # anchor 4 has no valid negative at all
    mix = mixer(Fixed(negs, mask), num_hardest=7, num_mixed=20, num_query_mixed=20, layout="per-anchor")
    c = mix(q, k)
    r = mix.last_mix
    assert r.num_hardest.tolist() == [7, 7, 7, 7, 0]
    for a in range(4):
        valid = (~mask[a]).nonzero().squeeze(1)
        expected = valid[sim[a, valid].topk(7).indices]
        assert r.hardest[a, :7].tolist() == expected.tolist()
        chosen = torch.cat([r.mix_i[a], r.mix_j[a], r.query_j[a]])
        assert set(chosen.tolist()) <= set(expected.tolist())
        assert not mask[a, chosen].any()
    assert c.neg_mask[4].all()  # nothing to mix for anchor 4: its synthetic points are masked too
    assert not c.neg_mask[:4, n:].any()
    assert torch.equal(c.neg_mask[:, :n], mask)


def test_same_label_candidates_are_not_mixed_and_synthetics_get_label_minus_one():
    torch.manual_seed(2)
    m, n, d = 3, 12, 4
    q, k, negs = unit(m, d), unit(m, d), unit(n, d)
    neg_labels = torch.arange(n) % 3
    labels = torch.tensor([0, 1, 2])
    mix = mixer(
        Fixed(negs, labels=neg_labels), num_hardest=4, num_mixed=10, num_query_mixed=10, layout="per-anchor"
    )
    c = mix(q, k, labels)
    r = mix.last_mix
    for a in range(m):
        chosen = torch.cat([r.mix_i[a], r.mix_j[a], r.query_j[a]])
        assert not (neg_labels[chosen] == labels[a]).any()
    assert c.negative_labels.shape == (m, n + 20)
    assert (c.negative_labels[:, n:] == -1).all() and torch.equal(c.negative_labels[0, :n], neg_labels)
    same = oracle_mask(c)
    assert not same[:, n:].any()


def test_warm_up_and_step_counter():
    torch.manual_seed(3)
    negs = unit(10, 4)
    src = Fixed(negs)
    mix = mixer(src, num_hardest=4, num_mixed=2, num_query_mixed=1, start_step=2)
    q, k = unit(3, 4), unit(3, 4)
    for _ in range(2):
        assert not mix.mixing
        c = mix(q, k)
        assert c.negatives is negs and mix.last_mix is None
        assert mix.last_stats["mixing"].item() == 0 and mix.last_stats["synthetic_share_topk"].item() == 0
        mix.update(q, k)
    assert mix.step == 2 and src.updates == 2 and mix.mixing
    c = mix(q, k)
    assert (~c.neg_mask).sum(1).tolist() == [10 + 3] * 3 and mix.last_stats["mixing"].item() == 1
    state = mix.state_dict()
    resumed = mixer(Fixed(negs), start_step=2)
    resumed.load_state_dict(state)
    assert resumed.step == 2 and resumed.mixing


def test_state_dict_carries_the_generator_so_the_next_mixture_is_the_same():
    torch.manual_seed(4)
    q, k = unit(4, 6), unit(4, 6)
    score, loss = CosineSimilarity(), InfoNCE(0.2)
    kw = dict(num_hardest=4, num_mixed=3, num_query_mixed=2)
    mix = mixer(QueueNegatives(16), **kw)
    for _ in range(3):  # the picks draw from mix.generator
        mix(q, k)
        mix.update(q, k)
    resumed = mixer(QueueNegatives(16), **kw)  # a fresh generator, seeded as the first was
    resumed.load_state_dict(mix.state_dict())
    expected = loss(*vars(score_candidates(mix(q, k), score)).values())
    assert torch.equal(loss(*vars(score_candidates(resumed(q, k), score)).values()), expected)
    old = mixer(QueueNegatives(16), **kw)  # a state saved before the generator was kept: step only
    old.load_state_dict({**mix.state_dict(), "_extra_state": {"step": 3}})
    assert old.step == 3


def test_block_layout_equals_per_anchor_layout():
    torch.manual_seed(4)
    m, n, d = 6, 50, 8
    k, negs = unit(m, d), unit(n, d)
    q0 = unit(m, d)
    mask = torch.rand(m, n) < 0.2
    results = []
    for layout in ("per-anchor", "block"):
        q = q0.clone().requires_grad_()
        mix = mixer(Fixed(negs, mask), num_hardest=8, num_mixed=5, num_query_mixed=2, layout=layout)
        c = mix(q, k)
        if layout == "block":
            assert c.negatives.shape == (n + m * 7, d) and c.neg_mask.shape == (m, n + m * 7)
            assert (~c.neg_mask[:, n:]).sum(1).tolist() == [7] * m
        contrast = score_candidates(c, CosineSimilarity())
        loss = InfoNCE(0.2)(contrast.pos, contrast.neg, contrast.neg_mask)
        loss.backward()
        results.append((loss.detach(), q.grad, contrast.valid_negatives()))
    (l1, g1, v1), (l2, g2, v2) = results
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(g1, g2)
    assert torch.equal(v1, v2)
    auto = mixer(Fixed(negs), num_hardest=8, num_mixed=5, num_query_mixed=2)
    assert auto._choose_layout(256, 4096, 288, 128, shared=True) == "block"
    assert auto._choose_layout(512, 512, 288, 128, shared=True) == "per-anchor"


def test_wraps_in_batch_and_queue_sources():
    torch.manual_seed(5)
    b, d = 5, 4
    z1, z2 = unit(b, d).requires_grad_(), unit(b, d).requires_grad_()
    mix = mixer(InBatchNegatives(), num_hardest=3, num_mixed=4, num_query_mixed=2)
    c = mix(z1, z2)
    assert c.anchors.shape == (2 * b, d) and c.num_negatives == 2 * b + 6
    r = mix.last_mix
    idx = torch.arange(2 * b)
    for chosen in (r.mix_i, r.mix_j, r.query_j):  # never the anchor itself nor its partner
        assert not (chosen == idx[:, None]).any() and not (chosen == ((idx + b) % (2 * b))[:, None]).any()
    contrast = score_candidates(c, CosineSimilarity())
    InfoNCE()(contrast.pos, contrast.neg, contrast.neg_mask).backward()
    assert z1.grad is not None and z2.grad is not None  # in-batch negatives still carry their gradient

    queue = QueueNegatives(size=8)
    mix = mixer(queue, num_hardest=4, num_mixed=3, num_query_mixed=1)
    q, k = unit(3, d), unit(3, d)
    mix(q, k)
    assert mix.last_mix.num_hardest.tolist() == [0, 0, 0]  # empty queue: nothing to mix
    mix.update(q, k)
    c = mix(unit(3, d), unit(3, d))
    assert mix.last_mix.num_hardest.tolist() == [3, 3, 3]
    assert (~c.neg_mask).sum(1).tolist() == [3 + 4] * 3


def test_proxy_accuracy_and_synthetic_share_statistics():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # anchor 0: positive is perfect; anchor 1: orthogonal
    negs = F.normalize(torch.tensor([[0.6, 0.8], [0.8, -0.6], [-1.0, 0.0]]), dim=-1)
    mix = mixer(Fixed(negs), num_hardest=2, num_mixed=2, num_query_mixed=2, stats_top_k=3)
    mix(q, k)
    s = mix.last_stats
    assert s["proxy_accuracy"].item() == pytest.approx(0.5)
    assert s["proxy_accuracy_mixed"].item() == pytest.approx(0.5)
    assert 0 < s["synthetic_share_topk"].item() <= 1
    # the query-mixed points lie between q and a negative: for anchor 0 they beat some real negatives
    syn_scores = torch.einsum("d,sd->s", q[0], mix.last_mix.synthetic[0, 2:])
    assert (syn_scores > (q[0] @ negs.T).min()).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="layout"):
        HardNegativeMixing(InBatchNegatives(), layout="rows")
    with pytest.raises(ValueError, match="num_hardest"):
        HardNegativeMixing(InBatchNegatives(), num_hardest=0)


def test_per_anchor_source_negatives():
    torch.manual_seed(6)
    m, n, d = 3, 9, 5
    q, k, negs = unit(m, d), unit(m, d), unit(m, n, d)  # e.g. mined negatives, one set per anchor
    mask = torch.zeros(m, n, dtype=torch.bool)
    mask[:, 0] = True
    src = Fixed(negs, mask)
    mix = mixer(src, num_hardest=3, num_mixed=4, num_query_mixed=2, layout="block")  # block needs shared
    c = mix(q, k)
    assert c.negatives.shape == (m, n + 6, d) and torch.equal(c.negatives[:, :n], negs)
    r = mix.last_mix
    rows = torch.arange(m)[:, None]
    expected = F.normalize(
        r.alpha[..., None] * negs[rows, r.mix_i] + (1 - r.alpha[..., None]) * negs[rows, r.mix_j], dim=-1
    )
    torch.testing.assert_close(c.negatives[:, n : n + 4], expected)
    assert not (r.mix_i == 0).any() and not (r.query_j == 0).any()
    hardest = (q.unsqueeze(1) * negs).sum(-1).masked_fill(mask, float("-inf")).topk(3).indices
    assert torch.equal(r.hardest, hardest)


def test_build_negatives_passes_the_mochi_sizes() -> None:
    from contrastkit.negatives import build_negatives

    source = build_negatives("queue+mochi", mix_hardest=8, mix_synthetic=4, mix_query=2, mix_start_step=5)
    assert (source.num_hardest, source.num_mixed, source.num_query_mixed, source.start_step) == (8, 4, 2, 5)
    assert source.normalize
    assert not build_negatives("in-batch+mochi", mix_normalize=False).normalize


@pytest.mark.parametrize("score", ["cosine", "dot"])
def test_the_trainer_mixes_on_the_scores_sphere_or_not(score, tmp_path, monkeypatch) -> None:
    """Normalised mixtures only for the cosine score: with the dot score (embeddings of norm >> 1) unit-norm
    synthetic points would score far below the real negatives they were mixed from."""
    from contrastkit.training import trainer as trainer_module
    from contrastkit.training.config import TrainConfig

    built = []

    def build_and_stop(*args, **kwargs):
        built.append(trainer_module_build(*args, **kwargs))
        raise KeyboardInterrupt  # the learner is built: no need to train

    trainer_module_build = trainer_module._build
    monkeypatch.setattr(trainer_module, "_build", build_and_stop)
    config = TrainConfig(
        negatives="queue+mochi", score=score, epochs=1, limit=64, batch_size=32, out=str(tmp_path / "run")
    )
    with pytest.raises(KeyboardInterrupt):
        trainer_module.train(config)
    mix = built[0].learner.negatives
    assert isinstance(mix, HardNegativeMixing) and mix.normalize == (score == "cosine")


def test_hardness_is_ranked_in_float32_under_bf16_autocast() -> None:
    """Under the training step's bf16 autocast the hardest set is still float32's exact top-N (a plain
    product under autocast ranks in bf16 and picks a different set in most rows)."""
    torch.manual_seed(0)
    m, k, d, n = 32, 2048, 64, 128
    q, negs = unit(m, d), unit(k, d)
    want = (q @ negs.T).topk(n, dim=1).indices.sort(dim=1).values
    mix = mixer(Fixed(negs), num_hardest=n, num_mixed=8, num_query_mixed=2, layout="per-anchor")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mix(q, unit(m, d))
    assert torch.equal(mix.last_mix.hardest.sort(dim=1).values, want)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the test can fail: bf16 ranking picks other sets
        bf16 = (q @ negs.T).topk(n, dim=1).indices.sort(dim=1).values
    assert not torch.equal(bf16, want)


def test_pairs_mix_two_different_hardest_negatives_uniformly() -> None:
    """n_i and n_j of Eq. (4) are two different negatives of the N hardest (i = j gave a copy of a real
    negative); n_j is uniform over the other N - 1, and a query with one usable negative mixes it alone."""
    torch.manual_seed(1)
    m, n, d, n_hard, s = 3, 30, 8, 4, 4000
    q, k, negs = unit(m, d), unit(m, d), unit(n, d)
    mix = mixer(Fixed(negs), num_hardest=n_hard, num_mixed=s, num_query_mixed=0, layout="per-anchor")
    mix(q, k)
    r = mix.last_mix
    assert not (r.mix_i == r.mix_j).any()
    hardest = (q @ negs.T).topk(n_hard, dim=1).indices
    for row in range(m):
        assert set(r.mix_i[row].tolist()) == set(r.mix_j[row].tolist()) == set(hardest[row].tolist())
        for i in hardest[row].tolist():  # given n_i, each of the 3 others about 1/3 of the time
            js = r.mix_j[row][r.mix_i[row] == i]
            shares = torch.stack([(js == j).float().mean() for j in hardest[row].tolist() if j != i])
            assert (shares - 1 / 3).abs().max() < 0.06, shares
    one = torch.ones(m, n, dtype=torch.bool)
    one[:, 7] = False  # only negative 7 is usable
    mix = mixer(
        Fixed(negs, mask=one), num_hardest=n_hard, num_mixed=5, num_query_mixed=0, layout="per-anchor"
    )
    mix(q, k)
    assert (mix.last_mix.mix_i == 7).all() and (mix.last_mix.mix_j == 7).all()
