"""Semantic textual similarity: STS Benchmark Spearman correlation ×100 of cosine similarity vs gold.

The protocol of Cer et al. 2017 ("SemEval-2017 Task 1") as used by Sentence-BERT (Reimers & Gurevych
2019, Sec. 4.1) and SimCSE (Gao et al. 2021, Sec. 6.1, Appendix B): embed both sentences of every pair,
score the pair by the cosine of the embeddings, and report Spearman's rank correlation ρ between these
scores and the gold scores over the whole file (``sts-test.csv``), ×100.

:func:`tfidf_spearman` is the bag-of-words reference: cosine of TF-IDF vectors (scikit-learn's
``TfidfVectorizer``, words from :func:`~contrastkit.encoders.text.split_words`).

A rank correlation with a constant sequence is undefined (a collapsed encoder gives every pair the same
cosine): :func:`spearman` and :func:`sts_spearman` then return NaN (``null`` in a run's metrics.json) and
emit a ``RuntimeWarning`` that names the cause; so do non-finite scores (a diverged encoder).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.data.text import StsPairs
from contrastkit.encoders.text import TextTokenizer, split_words
from contrastkit.errors import ShapeError
from contrastkit.evaluation.features import check_batch_size


def _undefined(name: str, v: np.ndarray) -> str | None:
    """Why Spearman's ρ with ``v`` is undefined (non-finite or constant values), or None."""
    bad = int((~np.isfinite(v)).sum())
    if bad:
        return f"{name} holds {bad} NaN or infinite value{'s' if bad > 1 else ''} (of {v.size})"
    if v.min() == v.max():
        return f"{name} is constant (all {v.size} values equal {v[0]:.6g})"
    return None


def spearman(x: Tensor | Sequence[float], y: Tensor | Sequence[float]) -> float:
    """Spearman's ρ × 100 (ties get average ranks), via ``scipy.stats.spearmanr``.

    NaN, with a ``RuntimeWarning`` naming the cause, when ``x`` or ``y`` is constant or not finite (ρ is
    undefined there)."""
    from scipy.stats import spearmanr

    a = torch.as_tensor(x, dtype=torch.float64).flatten().cpu().numpy()
    b = torch.as_tensor(y, dtype=torch.float64).flatten().cpu().numpy()
    if a.shape != b.shape or a.size < 2:
        raise ShapeError(f"spearman needs two equally long sequences of 2+ values, got {a.size} and {b.size}")
    reason = _undefined("x", a) or _undefined("y", b)
    if reason is not None:
        warnings.warn(
            f"Spearman's rank correlation is undefined: {reason}; returning NaN",
            RuntimeWarning,
            stacklevel=2,
        )
        return math.nan
    return float(spearmanr(a, b).statistic) * 100


def cosine_scores(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine similarity of (N, D) and (N, D), in float32 or wider."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-8)


@torch.no_grad()
def embed_sentences(
    encoder: Callable[[Tensor], Tensor],
    tokenizer: TextTokenizer,
    sentences: Sequence[str],
    *,
    batch_size: int = 128,
    max_length: int = 128,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Embeddings ``(N, D)`` of ``sentences`` in their order, batched by length (less padding).

    ``encoder`` maps padded ids ``(B, L)`` to ``(B, D)``; an ``nn.Module`` is put in eval mode for the call
    (dropout off) and restored afterwards.
    """
    batch_size = check_batch_size("batch_size", batch_size)
    module = encoder if isinstance(encoder, nn.Module) else getattr(encoder, "__self__", None)
    was_training = module.training if isinstance(module, nn.Module) else None
    if isinstance(module, nn.Module):
        module.eval()
    try:
        order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
        chunks: list[Tensor] = []
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids = tokenizer.encode([sentences[i] for i in idx], max_length).to(device)
            chunks.append(encoder(ids).float().cpu())
        out = torch.cat(chunks)
        result = torch.empty_like(out)
        result[torch.tensor(order)] = out
        return result
    finally:
        if isinstance(module, nn.Module) and was_training is not None:
            module.train(was_training)


def sts_spearman(
    encoder: Callable[[Tensor], Tensor],
    tokenizer: TextTokenizer,
    pairs: StsPairs,
    *,
    batch_size: int = 128,
    max_length: int = 128,
    device: torch.device | str = "cpu",
) -> float:
    """STS Spearman ×100 of the cosine of ``encoder``'s sentence embeddings against the gold scores."""
    kw = dict(batch_size=batch_size, max_length=max_length, device=device)
    e1 = embed_sentences(encoder, tokenizer, pairs.sentences1, **kw)
    e2 = embed_sentences(encoder, tokenizer, pairs.sentences2, **kw)
    return embeddings_spearman(e1, e2, pairs)


def embeddings_spearman(e1: Tensor, e2: Tensor, pairs: StsPairs) -> float:
    """STS Spearman ×100 of the cosine of the pairs' embeddings ``e1``, ``e2`` (``(N, D)`` each, in the
    pairs' order) against the gold scores; NaN, with a ``RuntimeWarning`` naming the cause, when the
    embeddings are not finite or the encoder has collapsed."""
    if e1.shape != e2.shape or e1.ndim != 2 or e1.shape[0] != len(pairs.scores):
        raise ShapeError(
            f"embeddings_spearman needs two (N, D) embeddings of the {len(pairs.scores)} pairs, got "
            f"{tuple(e1.shape)} and {tuple(e2.shape)}"
        )
    scores = cosine_scores(e1, e2).double().cpu().numpy()
    bad = int((~np.isfinite(scores)).sum())
    if bad or (scores.size > 1 and scores.min() == scores.max()):
        cause = (
            f"{bad} of {scores.size} cosine similarities are NaN or infinite: the encoder's embeddings are "
            "not finite (the training diverged?)"
            if bad
            else f"all {scores.size} cosine similarities are equal ({scores[0]:.6g}): the encoder has "
            "collapsed (it gives every sentence the same direction)"
        )
        warnings.warn(
            f"STS Spearman is undefined: {cause}; returning NaN (null in metrics.json)",
            RuntimeWarning,
            stacklevel=2,
        )
        return math.nan
    return spearman(scores, pairs.scores)


def tfidf_spearman(pairs: StsPairs, fit_sentences: Sequence[str] | None = None) -> float:
    """STS Spearman ×100 of TF-IDF cosine; IDF from ``fit_sentences`` (default: the pairs' sentences)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(tokenizer=split_words, lowercase=False, token_pattern=None)
    vec.fit(list(fit_sentences) if fit_sentences is not None else pairs.sentences1 + pairs.sentences2)
    a = vec.transform(pairs.sentences1)
    b = vec.transform(pairs.sentences2)
    cos = torch.as_tensor(a.multiply(b).sum(axis=1).A1)  # rows are L2-normalised: dot product = cosine
    return spearman(cos, pairs.scores)


__all__ = [
    "cosine_scores",
    "embed_sentences",
    "embeddings_spearman",
    "spearman",
    "sts_spearman",
    "tfidf_spearman",
]
