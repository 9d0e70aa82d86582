import importlib.util
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contrastkit.errors import ConfigError
from contrastkit.negatives import mined as mined_module
from contrastkit.negatives import oracle_mask
from contrastkit.negatives.mined import INDEX_KINDS, MinedNegatives

needs_faiss = pytest.mark.skipif(importlib.util.find_spec("faiss") is None, reason="faiss is not installed")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
EXACT = ["torch", pytest.param("flat", marks=needs_faiss)]  # the exact kinds: the same neighbours


def corpus(n=200, d=16, seed=0):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def brute_force(x: torch.Tensor, queries: torch.Tensor, own: torch.Tensor, n: int) -> np.ndarray:
    sims = queries.numpy() @ x.numpy().T
    sims[np.arange(len(own)), own.numpy()] = -np.inf
    return np.argsort(-sims, axis=1, kind="stable")[:, :n]


@pytest.mark.parametrize("kind", EXACT)
def test_exact_neighbours_match_brute_force_and_exclude_self(kind):
    x = corpus()
    mined = MinedNegatives(lambda: x, num_negatives=5, index=kind)
    mined.refresh()
    own = torch.tensor([0, 17, 42, 199])
    queries = F.normalize(
        x[own] + 0.05 * torch.randn(4, 16, generator=torch.Generator().manual_seed(1)), dim=-1
    )
    found = mined.neighbours(queries, own, 5)
    assert found.shape == (4, 5) and found.dtype == torch.long
    assert found.tolist() == brute_force(x, queries, own, 5).tolist()
    assert not (found == own[:, None]).any()
    # queried exactly at their own embedding, items would find themselves first without the exclusion
    assert mined.neighbours(x[own], None, 1)[:, 0].tolist() == own.tolist()
    assert not (mined.neighbours(x[own], own, 5) == own[:, None]).any()


@pytest.mark.parametrize("kind", EXACT)
def test_duplicates_and_short_rows(kind):
    x = corpus(20, 4)
    x[7] = x[3]  # an exact duplicate of item 3
    mined = MinedNegatives(num_negatives=3, index=kind)
    mined.refresh(x)
    found = mined.neighbours(x[[3]], torch.tensor([3]), 3)
    assert found[0, 0].item() == 7 and 3 not in found[0].tolist()
    assert len(set(found[0].tolist())) == 3
    everything = mined.neighbours(x[:2], torch.tensor([0, 1]), 25)  # more than N_train - 1 exist
    assert (everything[:, :19] >= 0).all() and (everything[:, 19:] == -1).all()
    assert sorted(everything[0, :19].tolist()) == list(range(1, 20))


@pytest.mark.parametrize("kind", EXACT)
def test_forward_returns_stored_embeddings_of_mined_items(kind):
    x = corpus(50, 8)
    labels = torch.arange(50) % 5
    mined = MinedNegatives(lambda: x, num_negatives=4, train_labels=labels, index=kind)
    idx = torch.tensor([3, 9, 30])
    z1, z2 = x[idx], x[idx]
    c = mined(z1, z2, labels[idx], indices=idx)
    assert c.negatives.shape == (3, 4, 8) and c.neg_mask is None
    assert torch.equal(c.negatives, x[mined.last_indices])
    assert torch.equal(mined.last_indices, mined.neighbours(z1, idx, 4))
    assert torch.equal(c.negative_labels, labels[mined.last_indices])
    assert oracle_mask(c).shape == (3, 4)
    mined.set_batch(idx)
    assert torch.equal(mined(z1, z2).negatives, c.negatives)
    with pytest.raises(ValueError, match="indices"):
        mined(z1, z2)  # set_batch is consumed by one forward


@pytest.mark.parametrize("kind", EXACT)
def test_padding_is_masked(kind):
    x = corpus(4, 3)
    mined = MinedNegatives(lambda: x, num_negatives=5, index=kind, train_labels=torch.arange(4))
    c = mined(x[:2], x[:2], indices=torch.tensor([0, 1]))
    assert c.neg_mask.tolist() == [[False] * 3 + [True] * 2] * 2
    assert (c.negative_labels[:, 3:] == -1).all() and (c.negative_labels[:, :3] >= 0).all()
    full = MinedNegatives(lambda: x, num_negatives=3, index=kind)(x[:2], x[:2], indices=torch.tensor([0, 1]))
    assert full.neg_mask is None  # n = N_train - 1: every row is filled


def test_refresh_schedule_and_staleness():
    x = corpus(30, 4)
    calls = []

    def embed_all():
        calls.append(1)
        return x

    mined = MinedNegatives(embed_all, num_negatives=2, refresh_every=3)
    idx = torch.tensor([0, 1])
    seen = []
    for _ in range(7):
        mined(x[idx], x[idx], indices=idx)
        seen.append((len(calls), mined.staleness))
        mined.update(x[idx], x[idx])
    assert seen == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (3, 0)]
    assert mined.num_refreshes == 3 and mined.step == 7 and mined.staleness == 1
    assert np.isfinite(mined.refresh_seconds) and mined.refresh_seconds >= 0
    assert not mined.maybe_refresh()


@needs_faiss
@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes(kind):
    x = corpus(800, 16)
    mined = MinedNegatives(lambda: x, num_negatives=10, index=kind, ivf_probe=20)
    mined.refresh()
    own = torch.arange(0, 800, 40)
    found = mined.neighbours(x[own], own, 10)
    assert found.shape == (20, 10) and not (found == own[:, None]).any() and (found >= 0).all()
    truth = brute_force(x, x[own], own, 10)
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found.tolist(), truth.tolist(), strict=True)])
    assert recall >= 0.8


def test_errors():
    with pytest.raises(ConfigError, match="index kind 'lsh'; choose one of: torch, flat, hnsw, ivf"):
        MinedNegatives(index="lsh")
    with pytest.raises(RuntimeError, match="refresh"):
        MinedNegatives().neighbours(torch.zeros(1, 2), None, 1)
    mined = MinedNegatives(num_negatives=2)
    mined.refresh(corpus(10, 4))
    with pytest.raises(ValueError, match=r"query_indices must have shape \(3,\)"):
        mined.neighbours(corpus(3, 4), torch.tensor([0, 1]), 2)
    with pytest.raises(ConfigError, match="embed_all"):
        MinedNegatives()(torch.zeros(1, 2), torch.zeros(1, 2), indices=torch.tensor([0]))


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_missing_faiss_is_a_config_error_for_the_faiss_kinds(monkeypatch, kind):
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if faiss were not installed
    with pytest.raises(ConfigError, match="pip install faiss-cpu"):
        MinedNegatives(index=kind)


def test_the_default_torch_kind_needs_no_faiss(monkeypatch):
    def no_faiss():
        raise AssertionError("the torch kind must not import faiss")

    monkeypatch.setattr(mined_module, "import_faiss", no_faiss)
    monkeypatch.setitem(sys.modules, "faiss", None)
    assert INDEX_KINDS[0] == "torch"
    x = corpus(60, 8)
    mined = MinedNegatives(lambda: x, num_negatives=4, refresh_every=2)
    assert mined.index_kind == "torch"
    idx = torch.tensor([1, 2, 3])
    c = mined(x[idx], x[idx], indices=idx)
    assert c.negatives.shape == (3, 4, 8) and c.neg_mask is None
    assert mined.last_indices.tolist() == brute_force(x, x[idx], idx, 4).tolist()
    mined.update(x[idx], x[idx])
    state = mined.state_dict()
    assert state["_extra_state"]["index"] is None
    fresh = MinedNegatives(num_negatives=4, refresh_every=2)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.neighbours(x[idx], idx, 4), mined.last_indices)


def test_both_views_are_anchors_and_stats_report_staleness_and_refresh():
    x = corpus(40, 8)
    mined = MinedNegatives(lambda: x, num_negatives=3, refresh_every=2, both_views=True)
    idx = torch.tensor([1, 5])
    z1, z2 = x[idx], x[idx + 10]
    c = mined(z1, z2, torch.tensor([0, 1]), indices=idx)
    assert torch.equal(c.anchors, torch.cat([z1, z2])) and torch.equal(c.positives, torch.cat([z2, z1]))
    assert c.anchor_labels.tolist() == [0, 1, 0, 1]
    assert torch.equal(mined.last_indices, mined.neighbours(c.anchors, torch.cat([idx, idx]), 3))
    assert not (mined.last_indices == torch.cat([idx, idx])[:, None]).any()
    assert mined.last_stats["mined_staleness"].item() == 0
    assert mined.last_stats["mined_refresh_seconds"].item() == pytest.approx(mined.refresh_seconds)
    mined.update(z1, z2)
    mined(z1, z2, indices=idx)
    assert mined.last_stats["mined_staleness"].item() == 1
    assert mined.last_stats["mined_refresh_seconds"].item() == 0  # no refresh in this step
    with pytest.raises(ValueError, match=r"indices must have shape \(2,\)"):
        mined(z1, z2, indices=torch.tensor([1, 2, 3]))


def test_reencoded_negatives_carry_the_current_models_gradient():
    """ANCE: mined ids come from the index, the negatives from the model being trained (each item once)."""
    x = corpus(30, 6)
    encoder = torch.nn.Linear(6, 6)
    calls = []

    def encode_items(ids):
        calls.append(ids.clone())
        return F.normalize(encoder(x[ids]), dim=-1)

    mined = MinedNegatives(lambda: x, num_negatives=4, encode_items=encode_items)
    idx = torch.tensor([0, 1, 2])
    c = mined(x[idx], x[idx], indices=idx)
    ids = mined.last_indices
    assert len(calls) == 1 and calls[0].tolist() == sorted(set(ids.flatten().tolist()))  # unique, once each
    with torch.no_grad():
        expected = F.normalize(encoder(x[ids]), dim=-1)
    torch.testing.assert_close(c.negatives, expected)
    assert c.negatives.requires_grad
    c.negatives.sum().backward()
    assert encoder.weight.grad is not None and encoder.weight.grad.abs().sum() > 0
    assert mined.last_stats["mined_reencoded"].item() == len(calls[0])
    assert "encode_items" not in dict(mined.named_modules()) and not list(mined.parameters())


@pytest.mark.parametrize(
    "kind", ["torch", *(pytest.param(k, marks=needs_faiss) for k in ("flat", "hnsw", "ivf"))]
)
def test_state_dict_restores_the_exact_index_and_counters(kind):
    x = corpus(800, 16)
    mined = MinedNegatives(lambda: x, num_negatives=6, refresh_every=5, index=kind)
    idx = torch.arange(0, 800, 100)
    queries = F.normalize(
        x[idx] + 0.3 * torch.randn(8, 16, generator=torch.Generator().manual_seed(2)), dim=-1
    )
    mined(queries, queries, indices=idx)
    for _ in range(3):
        mined.update(queries, queries)
    state = mined.state_dict()
    assert torch.equal(state["_extra_state"]["embeddings"], x)
    assert (state["_extra_state"]["index"] is None) == (kind in ("torch", "flat"))

    def moved(_):
        raise AssertionError("a restored index must not be re-embedded")

    fresh = MinedNegatives(moved, num_negatives=6, refresh_every=5, index=kind)
    fresh.load_state_dict(state)
    assert (fresh.step, fresh.staleness, fresh.num_refreshes) == (3, 3, 1) and not fresh.needs_refresh
    assert torch.equal(fresh.neighbours(queries, idx, 6), mined.neighbours(queries, idx, 6))
    assert torch.equal(
        fresh(queries, queries, indices=idx).negatives, mined(queries, queries, indices=idx).negatives
    )
    empty = MinedNegatives(moved, index=kind)
    empty.load_state_dict(MinedNegatives(index=kind).state_dict())  # saved before any refresh
    assert empty.embeddings is None and empty.needs_refresh


def test_mochi_over_mined_needs_indices_and_keeps_the_mined_statistics():
    from contrastkit.negatives import HardNegativeMixing, build_negatives

    x = corpus(40, 8)
    source = build_negatives(
        "mined+mochi", embed_all=lambda: x, mined_negatives=5, refresh_every=3, index="torch"
    )  # build_negatives's own default index is still "flat" (faiss)
    assert isinstance(source, HardNegativeMixing) and source.needs_indices
    idx = torch.tensor([2, 3])
    c = source(x[idx], x[idx], indices=idx)
    assert c.negatives.shape[:2] == (2, 5 + 256 + 32)  # per-anchor: n mined, then MoCHi's s + s'
    assert {"mined_staleness", "mined_refresh_seconds", "proxy_accuracy"} <= set(source.last_stats)
    source.update(x[idx], x[idx], indices=idx)
    assert source.source.step == 1 and source.step == 1
    with pytest.raises(ConfigError, match="--negatives mined"):
        build_negatives("mined")  # no training loop to embed the data set


def test_learner_passes_the_batch_indices_and_refuses_without_them():
    from contrastkit.negatives import build_negatives
    from contrastkit.objectives import Debiased
    from contrastkit.scores import CosineSimilarity
    from contrastkit.training.learner import ContrastiveLearner

    torch.manual_seed(0)
    images = torch.randn(20, 5)
    labels = torch.arange(20) % 4
    model = torch.nn.Linear(5, 8)
    score = CosineSimilarity()
    source = build_negatives(
        "mined",
        embed_all=lambda: score.prepare(model(images)).detach(),
        mined_negatives=4,
        index="torch",
        train_labels=labels,
        both_views=True,
    )
    learner = ContrastiveLearner(model, source, score, Debiased(temperature=0.5, tau_plus=0.1), oracle=True)
    idx = torch.tensor([0, 3, 7])
    out = learner(images[idx], images[idx] + 0.01, labels[idx], indices=idx)
    assert torch.isfinite(out.loss) and set(out.extra) == {"mined_staleness", "mined_refresh_seconds"}
    # the same loss by hand: both views as anchors, the stored embeddings of the mined items as negatives,
    # and the oracle mask removing the mined items of the anchor's class
    with torch.no_grad():
        z = score.prepare(model(torch.cat([images[idx], images[idx] + 0.01])))
        anchors, positives = z, torch.cat([z[3:], z[:3]])
        mined = source.last_indices
        negs = score.prepare(model(images))[mined]
        same = labels[mined] == torch.cat([labels[idx], labels[idx]])[:, None]
        assert same.any() and not same.all()  # the mask matters here
        expected = Debiased(temperature=0.5, tau_plus=0.1)(
            (anchors * positives).sum(-1), torch.einsum("md,mnd->mn", anchors, negs), same
        )
    torch.testing.assert_close(out.loss.detach(), expected)
    out.loss.backward()
    assert model.weight.grad is not None and source.step == 1
    with pytest.raises(ValueError, match="dataset indices"):
        learner(images[idx], images[idx], labels[idx])


def reference_rows(found: np.ndarray, own: np.ndarray | None, n: int) -> list[list[int]]:
    """The former per-row post-processing of faiss results (dict.fromkeys), the reference for the vectorised
    one."""
    rows = []
    for r, ids in enumerate(found):
        skip = -1 if own is None else own[r]
        kept = [int(i) for i in dict.fromkeys(ids.tolist()) if i >= 0 and i != skip][:n]
        rows.append(kept + [-1] * (n - len(kept)))
    return rows


def test_vectorised_faiss_post_processing_matches_the_per_row_loop():
    from contrastkit.negatives.mined import _first_usable

    found = torch.tensor(
        [[5, 3, 5, 7, -1, -1], [2, 9, 4, 9, 2, 1], [-1, -1, -1, -1, -1, -1], [0, 1, 2, 3, 4, 5]]
    )
    own = torch.tensor([3, 4, 0, 9])
    for n in (1, 3, 4, 6, 8):
        for o in (own, None):
            out, counts = _first_usable(found, o, n)
            expected = reference_rows(found.numpy(), None if o is None else o.numpy(), n)
            assert out.tolist() == expected
            assert counts.tolist() == [
                sum(i >= 0 for i in row) for row in reference_rows(found.numpy(), o, 99)
            ]
    gen = torch.Generator().manual_seed(3)
    many = torch.randint(-1, 12, (200, 10), generator=gen)  # many repeats and fillers
    own = torch.randint(0, 12, (200,), generator=gen)
    assert _first_usable(many, own, 7)[0].tolist() == reference_rows(many.numpy(), own.numpy(), 7)


def test_torch_kind_is_exact_in_chunks_with_own_exclusion_and_padding(monkeypatch):
    x = corpus(37, 5, seed=4)
    queries = F.normalize(torch.randn(11, 5, generator=torch.Generator().manual_seed(5)), dim=-1)
    own = torch.tensor([0, 36, 5, 5, 12, 1, 2, 3, 30, 20, 10])
    mined = MinedNegatives(num_negatives=4)
    mined.refresh(x)
    one_chunk = mined.neighbours(queries, own, 6)
    monkeypatch.setattr(mined_module, "TORCH_CPU_CHUNK_SCORES", 3 * 37)  # chunks of 3 queries, 2 left over
    chunked = mined.neighbours(queries, own, 6)
    assert torch.equal(chunked, one_chunk)
    assert chunked.tolist() == brute_force(x, queries, own, 6).tolist()
    # n >= N_train - 1: every other item once, then -1 beyond N_train - 1; without exclusion every item
    for n in (36, 37, 40):
        found = mined.neighbours(queries, own, n)
        assert found.shape == (11, n) and (found[:, :36] >= 0).all() and (found[:, 36:] == -1).all()
        for row, o in zip(found.tolist(), own.tolist(), strict=True):
            assert sorted(row[:36]) == [i for i in range(37) if i != o]
        assert found[:, :36].tolist() == brute_force(x, queries, own, 36).tolist()
    everything = mined.neighbours(queries, None, 40)
    assert (everything[:, 37:] == -1).all() and all(
        sorted(r[:37]) == list(range(37)) for r in everything.tolist()
    )
    # an index outside the set excludes nothing, like None
    outside = torch.tensor([-1, 37, 100, -5, 37, 37, 37, 37, 37, 37, 37])
    assert torch.equal(mined.neighbours(queries, outside, 6), mined.neighbours(queries, None, 6))
    assert mined.neighbours(queries[:0], own[:0], 6).shape == (0, 6)


def test_torch_kind_searches_in_float32_under_autocast():
    x = corpus(300, 16, seed=6)
    queries = F.normalize(
        x[:20] + 0.2 * torch.randn(20, 16, generator=torch.Generator().manual_seed(7)), dim=-1
    )
    own = torch.arange(20)
    mined = MinedNegatives(num_negatives=8)
    mined.refresh(x)
    expected = brute_force(x, queries, own, 8).tolist()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert mined.neighbours(queries, own, 8).tolist() == expected
        assert mined.neighbours(queries.bfloat16(), own, 8).shape == (20, 8)  # bf16 anchors are accepted


@needs_faiss
def test_torch_kind_agrees_with_faiss_flat_on_random_data():
    x = corpus(1000, 32, seed=8)
    queries = corpus(100, 32, seed=9)
    own = torch.randint(0, 1000, (100,), generator=torch.Generator().manual_seed(10))
    sims = (queries.double() @ x.double().T).numpy()
    sims[np.arange(100), own.numpy()] = -np.inf
    top = -np.sort(-sims, axis=1)[:, :13]
    assert np.diff(-top, axis=1).min() > 1e-5  # no (near) ties among the ranks compared (fp32 error ~1e-7)
    exact, flat = MinedNegatives(index="torch"), MinedNegatives(index="flat")
    exact.refresh(x)
    flat.refresh(x)
    assert torch.equal(exact.neighbours(queries, own, 12), flat.neighbours(queries, own, 12))
    assert exact.neighbours(queries, own, 12).tolist() == brute_force(x, queries, own, 12).tolist()


@needs_cuda
def test_torch_kind_on_cuda():
    x = corpus(500, 16, seed=11)
    labels = torch.arange(500) % 7
    idx = torch.arange(0, 500, 25)
    queries = F.normalize(
        x[idx] + 0.3 * torch.randn(20, 16, generator=torch.Generator().manual_seed(12)), dim=-1
    )
    truth = brute_force(x, queries, idx, 6).tolist()
    mined = MinedNegatives(lambda: x.cuda(), num_negatives=6, train_labels=labels)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        c = mined(queries.cuda(), queries.cuda(), indices=idx.cuda())
    assert mined.embeddings.is_cuda and mined.last_indices.is_cuda and c.negatives.is_cuda
    assert mined.last_indices.tolist() == truth and c.neg_mask is None
    assert torch.equal(c.negatives.cpu(), x[mined.last_indices.cpu()])
    assert torch.equal(c.negative_labels.cpu(), labels[mined.last_indices.cpu()])
    # embeddings refreshed on the CPU move to the queries' device at the first search
    cpu_built = MinedNegatives(num_negatives=6)
    cpu_built.refresh(x)
    assert (
        cpu_built.neighbours(queries.cuda(), idx.cuda(), 6).tolist() == truth and cpu_built.embeddings.is_cuda
    )
    # the state is saved on the CPU; a module that searched on CUDA loads it back onto CUDA
    state = mined.state_dict()
    assert state["_extra_state"]["embeddings"].device.type == "cpu"
    cpu_built.load_state_dict(state)
    assert cpu_built.embeddings.is_cuda
    assert torch.equal(cpu_built.neighbours(queries.cuda(), idx.cuda(), 6), mined.last_indices)
    fresh = MinedNegatives(num_negatives=6)  # never searched: loads on the CPU, moves at its first search
    fresh.load_state_dict(state)
    assert torch.equal(fresh.neighbours(queries.cuda(), idx.cuda(), 6), mined.last_indices)
    # a short row (n > N_train - 1) is padded on the GPU too
    small = MinedNegatives(num_negatives=5)
    small.refresh(x[:4].cuda())
    found = small.neighbours(x[:2].cuda(), torch.tensor([0, 1], device="cuda"), 5)
    assert (found[:, :3] >= 0).all() and (found[:, 3:] == -1).all()


@pytest.mark.parametrize(
    ("indices", "match"),
    [
        (torch.tensor([0, 50]), r"in \[0, 50\).*from 0 to 50"),  # one past the end: would exclude nothing
        (torch.tensor([-1, 3]), r"in \[0, 50\).*from -1 to 3"),
        (torch.tensor([0.0, 3.0]), "integer dataset indices, got dtype torch.float32"),
        (torch.tensor([True, False]), "integer dataset indices, got dtype torch.bool"),
    ],
)
def test_forward_refuses_indices_that_are_not_dataset_positions(indices, match):
    """An index outside the training set cannot exclude the anchor's own item: refused, not ignored."""
    x = corpus(50, 8)
    mined = MinedNegatives(lambda: x, num_negatives=4)
    with pytest.raises(ValueError, match=match):
        mined(x[:2], x[:2], indices=indices)
    assert mined(x[:2], x[:2], indices=torch.tensor([0, 49])).negatives.shape == (2, 4, 8)


@pytest.mark.parametrize("kind", ["torch", pytest.param("flat", marks=needs_faiss)])
def test_a_non_finite_snapshot_is_refused_naming_the_rows(kind):
    """NaN rows ranked as every anchor's nearest (topk takes NaN as largest) and made the mined negatives
    NaN; the refresh now stops with the count and the first item, keeping the previous index."""
    from contrastkit.errors import DivergedError

    x = corpus(30, 4)
    mined = MinedNegatives(lambda: x, num_negatives=2, refresh_every=1, index=kind)
    mined.refresh()
    good = mined.neighbours(x[:3], torch.arange(3), 2)
    bad = x.clone()
    bad[7, 1] = float("nan")
    bad[12] = float("inf")
    with pytest.raises(DivergedError, match=r"NaN or infinite in 2 of 30 rows \(the first: item 7\)"):
        mined.refresh(bad)
    assert mined.num_refreshes == 1 and torch.equal(mined.neighbours(x[:3], torch.arange(3), 2), good)


def test_labels_without_train_labels_say_to_pass_them():
    """The oracle (or SupCon) through MinedNegatives built without train_labels failed in the mask with 'the
    oracle mask needs anchor_labels and negative_labels on the candidates', which names nothing to do."""
    x = corpus(20, 4)
    idx = torch.tensor([1, 2])
    mined = MinedNegatives(lambda: x, num_negatives=3)
    c = mined(x[idx], x[idx], torch.tensor([0, 1]), indices=idx)
    with pytest.raises(ConfigError, match=r"needs the negatives' labels.*MinedNegatives: train_labels="):
        oracle_mask(c)
    with pytest.raises(ConfigError, match=r"needs the anchors' labels, but the step was given none: pass"):
        oracle_mask(mined(x[idx], x[idx], indices=idx))
