import importlib.util
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contrastkit.errors import ConfigError
from contrastkit.negatives import oracle_mask
from contrastkit.negatives.mined import MinedNegatives

needs_faiss = pytest.mark.skipif(importlib.util.find_spec("faiss") is None, reason="faiss is not installed")


def corpus(n=200, d=16, seed=0):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def brute_force(x: torch.Tensor, queries: torch.Tensor, own: torch.Tensor, n: int) -> np.ndarray:
    sims = queries.numpy() @ x.numpy().T
    sims[np.arange(len(own)), own.numpy()] = -np.inf
    return np.argsort(-sims, axis=1, kind="stable")[:, :n]


@needs_faiss
def test_exact_neighbours_match_brute_force_and_exclude_self():
    x = corpus()
    mined = MinedNegatives(lambda: x, num_negatives=5, index="flat")
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


@needs_faiss
def test_duplicates_and_short_rows():
    x = corpus(20, 4)
    x[7] = x[3]  # an exact duplicate of item 3
    mined = MinedNegatives(num_negatives=3)
    mined.refresh(x)
    found = mined.neighbours(x[[3]], torch.tensor([3]), 3)
    assert found[0, 0].item() == 7 and 3 not in found[0].tolist()
    assert len(set(found[0].tolist())) == 3
    everything = mined.neighbours(x[:2], torch.tensor([0, 1]), 25)  # more than N_train - 1 exist
    assert (everything[:, :19] >= 0).all() and (everything[:, 19:] == -1).all()
    assert sorted(everything[0, :19].tolist()) == list(range(1, 20))


@needs_faiss
def test_forward_returns_stored_embeddings_of_mined_items():
    x = corpus(50, 8)
    labels = torch.arange(50) % 5
    mined = MinedNegatives(lambda: x, num_negatives=4, train_labels=labels)
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


@needs_faiss
def test_padding_is_masked():
    x = corpus(4, 3)
    mined = MinedNegatives(lambda: x, num_negatives=5)
    c = mined(x[:2], x[:2], indices=torch.tensor([0, 1]))
    assert c.neg_mask.tolist() == [[False] * 3 + [True] * 2] * 2


@needs_faiss
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


@needs_faiss
def test_errors():
    with pytest.raises(ConfigError, match="index kind"):
        MinedNegatives(index="lsh")
    with pytest.raises(ConfigError, match="embed_all"):
        MinedNegatives()(torch.zeros(1, 2), torch.zeros(1, 2), indices=torch.tensor([0]))


def test_missing_faiss_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if faiss were not installed
    with pytest.raises(ConfigError, match="pip install faiss-cpu"):
        MinedNegatives()
