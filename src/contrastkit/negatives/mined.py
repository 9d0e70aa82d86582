"""Negatives mined from an approximate-nearest-neighbour index of the whole training set (ANCE).

Xiong, Xiong, Li, Tang, Liu, Bennett, Ahmed, Overwijk 2021 (arXiv 2020), "Approximate Nearest Neighbor
Negative Contrastive Learning for Dense Text Retrieval", the ANCE method section (Sec. 3 of the 2020
arXiv version, Sec. 4 of the ICLR 2021 version): the training negatives of a query are its top-ranked
items retrieved by an ANN index over the *whole corpus*, minus its positives, and the index is refreshed
asynchronously ("Asynchronous Index Refresh"): an inferencer re-encodes the corpus with a recent
checkpoint of the model every few training steps and rebuilds the index, so the negatives are found with
a slightly stale model.

:class:`MinedNegatives` keeps that state here, synchronously: ``embed_all()`` (given by the caller)
returns prepared embeddings (N_train, D) of the whole training set, computed with the current model (a
snapshot: the embeddings are then kept unchanged), and a faiss index over them, rebuilt every
``refresh_every`` steps. :attr:`refresh_seconds` is how long the last refresh took and
:attr:`steps_since_refresh` the staleness of the index, in training steps.

For self-supervised instance discrimination the only positive of an anchor is its own item, so mining
excludes the anchor's own dataset index. The source therefore needs the batch's dataset indices: pass
``indices=`` to ``forward`` or call :meth:`MinedNegatives.set_batch` before it (consumed by the next
forward, so a forgotten call raises instead of silently reusing stale indices).

Difference from ANCE: ANCE only takes the mined item *ids* from the index and encodes those items with
the current (trained) model, so their gradients flow. Here the negatives are the stored snapshot
embeddings, detached: no extra forward pass, but stale by up to ``refresh_every`` steps and without
negative-side gradient. The mined dataset indices are in :attr:`MinedNegatives.last_indices` (M, n) for
a learner that wants to re-encode them itself.

faiss is imported lazily, at construction; without it a :class:`~contrastkit.errors.ConfigError` says to
``pip install faiss-cpu``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from contrastkit.errors import ConfigError
from contrastkit.negatives.base import Candidates, NegativeSource

INDEX_KINDS = ("flat", "hnsw", "ivf")


def import_faiss() -> Any:
    """Import faiss, or raise a :class:`ConfigError` that says how to install it."""
    try:
        import faiss
    except ImportError as exc:
        raise ConfigError(
            "mined negatives need the faiss library for nearest-neighbour search: pip install faiss-cpu "
            "(or faiss-gpu)"
        ) from exc
    return faiss


class MinedNegatives(NegativeSource):
    """ANCE-style hard negatives: each anchor's nearest training items in a periodically rebuilt index.

    Args:
        embed_all: callable returning prepared embeddings (N_train, D) of the whole training set, row i =
            dataset index i. It runs inside ``forward`` when a refresh is due, so it should switch the model
            to eval mode, run under ``torch.no_grad()`` and restore the mode itself. May be set later
            (attribute ``embed_all``) or replaced by calling :meth:`refresh` with embeddings.
        num_negatives: n, mined negatives per anchor.
        refresh_every: R, rebuild the index once R :meth:`update` calls have passed since the last build.
        index: "flat" (exact inner product, ``IndexFlatIP``), "hnsw" (``IndexHNSWFlat``) or "ivf"
            (``IndexIVFFlat``); approximate kinds trade recall for speed on large sets.
        train_labels: optional (N_train,) labels; they become ``negative_labels`` (for the oracle mask).
        hnsw_m, hnsw_ef_search: HNSW graph degree and search breadth.
        ivf_lists, ivf_probe: IVF lists (default ``sqrt(N_train)``, at most N_train / 39) and lists probed.

    The similarity is the inner product of prepared embeddings (the cosine score once L2-normalised, or the
    dot score). ``forward`` returns anchors ``z1``, positives ``z2`` and per-anchor negatives (M, n, D),
    with ``neg_mask`` only where fewer than n items could be found. The index and the embeddings are not in
    ``state_dict``: after loading a checkpoint the first forward rebuilds them.
    """

    def __init__(
        self,
        embed_all: Callable[[], Tensor] | None = None,
        num_negatives: int = 16,
        refresh_every: int = 1000,
        index: str = "flat",
        *,
        train_labels: Tensor | None = None,
        hnsw_m: int = 32,
        hnsw_ef_search: int = 128,
        ivf_lists: int | None = None,
        ivf_probe: int = 8,
    ) -> None:
        super().__init__()
        if index not in INDEX_KINDS:
            raise ConfigError(f"unknown index kind {index!r}; choose one of: {', '.join(INDEX_KINDS)}")
        for name, v in (("num_negatives", num_negatives), ("refresh_every", refresh_every)):
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        import_faiss()  # fail at construction, not at the first refresh mid-training
        self.embed_all = embed_all
        self.num_negatives = num_negatives
        self.refresh_every = refresh_every
        self.index_kind = index
        self.train_labels = None if train_labels is None else torch.as_tensor(train_labels).long().cpu()
        self.hnsw_m = hnsw_m
        self.hnsw_ef_search = hnsw_ef_search
        self.ivf_lists = ivf_lists
        self.ivf_probe = ivf_probe
        self._index: Any = None
        self._keep: list[Any] = []
        self.embeddings: Tensor | None = None
        self.refresh_seconds = float("nan")
        self.steps_since_refresh = 0
        self.num_refreshes = 0
        self.step = 0
        self.last_indices: Tensor | None = None
        self._batch_indices: Tensor | None = None

    # ----- the index -------------------------------------------------------------------------------

    @property
    def staleness(self) -> int:
        """Training steps since the index was built (its embeddings come from that model)."""
        return self.steps_since_refresh

    @property
    def needs_refresh(self) -> bool:
        return self._index is None or self.steps_since_refresh >= self.refresh_every

    @property
    def embed_all(self) -> Callable[[], Tensor] | None:
        return self.__dict__["_embed_all"]

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "embed_all":
            # kept out of nn.Module's registry: a module passed as the callable must not become a submodule
            # (its parameters would join this source's state_dict and the optimizer)
            self.__dict__["_embed_all"] = value
        else:
            super().__setattr__(name, value)

    def _build(self, x: np.ndarray) -> Any:
        faiss = import_faiss()
        n, d = x.shape
        self._keep = []
        if self.index_kind == "flat":
            return faiss.IndexFlatIP(d)
        if self.index_kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = self.hnsw_ef_search
            return index
        lists = self.ivf_lists or round(math.sqrt(n))
        lists = max(1, min(lists, n // 39))
        quantizer = faiss.IndexFlatIP(d)
        self._keep = [quantizer]  # the IVF index only borrows its quantizer
        index = faiss.IndexIVFFlat(quantizer, d, lists, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.nprobe = min(self.ivf_probe, lists)
        return index

    @torch.no_grad()
    def refresh(self, embeddings: Tensor | None = None) -> None:
        """Re-embed the training set (``embed_all()``, unless ``embeddings`` are given) and rebuild."""
        start = time.perf_counter()
        if embeddings is None:
            if self.embed_all is None:
                raise ConfigError("MinedNegatives needs embed_all (a callable embedding the training set)")
            embeddings = self.embed_all()
        emb = torch.as_tensor(embeddings).detach().float().cpu().contiguous()
        if emb.ndim != 2 or emb.shape[0] < 2:
            raise ValueError(
                f"embed_all must return (N_train, D) embeddings with N_train >= 2, got {tuple(emb.shape)}"
            )
        if self.train_labels is not None and self.train_labels.shape[0] != emb.shape[0]:
            raise ValueError(
                f"train_labels has {self.train_labels.shape[0]} entries but embed_all returned "
                f"{emb.shape[0]} rows"
            )
        x = emb.numpy()
        index = self._build(x)
        index.add(x)
        self._index = index
        self.embeddings = emb
        self.steps_since_refresh = 0
        self.num_refreshes += 1
        self.refresh_seconds = time.perf_counter() - start

    def maybe_refresh(self) -> bool:
        """Refresh if the index is missing or ``refresh_every`` steps old; returns whether it did."""
        if self.needs_refresh:
            self.refresh()
            return True
        return False

    @torch.no_grad()
    def neighbours(self, query_emb: Tensor, query_indices: Tensor | None, n: int) -> Tensor:
        """Dataset indices (M, n) of the n items nearest each query, best first, excluding its own index.

        Searches n + 1 items and widens the search while a row has fewer than n usable results (after
        dropping the query's own index, faiss's -1 fillers and repeated ids). Rows that still fall short
        (n >= N_train) are padded with -1. ``query_indices`` None excludes nothing.
        """
        if self._index is None:
            raise RuntimeError("the index has not been built; call refresh() first")
        total = self._index.ntotal
        q = np.ascontiguousarray(query_emb.detach().float().cpu().numpy())
        own = None if query_indices is None else query_indices.detach().long().cpu().numpy()
        if own is not None and own.shape != (q.shape[0],):
            raise ValueError(f"query_indices must have shape ({q.shape[0]},), got {tuple(own.shape)}")
        k = min(n + 1, total)
        while True:
            _, found = self._index.search(q, k)
            rows = []
            for r, ids in enumerate(found):
                skip = -1 if own is None else own[r]
                kept = [int(i) for i in dict.fromkeys(ids.tolist()) if i >= 0 and i != skip]
                rows.append(kept[:n])
            if k >= total or all(len(row) == n for row in rows):
                break
            k = min(2 * k, total)
        out = torch.full((q.shape[0], n), -1, dtype=torch.long)
        for r, row in enumerate(rows):
            out[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out.to(query_emb.device)

    # ----- the negative source ---------------------------------------------------------------------

    def set_batch(self, indices: Tensor) -> None:
        """Dataset indices (B,) of the next forward's batch (alternative to ``forward(..., indices=)``)."""
        self._batch_indices = indices

    def forward(
        self, z1: Tensor, z2: Tensor, labels: Tensor | None = None, indices: Tensor | None = None
    ) -> Candidates:
        if z1.ndim != 2 or z1.shape != z2.shape:
            raise ValueError(
                f"the two views' embeddings must both have shape (B, D); got {tuple(z1.shape)} "
                f"and {tuple(z2.shape)}"
            )
        if indices is None:
            indices, self._batch_indices = self._batch_indices, None
        if indices is None:
            raise ValueError(
                "MinedNegatives needs the batch's dataset indices to exclude each anchor's own item: pass "
                "forward(..., indices=...) or call set_batch(indices) before each forward"
            )
        self.maybe_refresh()
        assert self.embeddings is not None
        if self.embeddings.shape[1] != z1.shape[1]:
            raise ValueError(f"the index holds dimension {self.embeddings.shape[1]}, the batch {z1.shape[1]}")
        mined = self.neighbours(z1, indices, self.num_negatives)
        self.last_indices = mined
        cpu = mined.cpu()
        found = cpu >= 0
        safe = cpu.clamp(min=0)
        negatives = self.embeddings[safe].to(device=z1.device, dtype=z1.dtype)
        neg_mask = None if bool(found.all()) else (~found).to(z1.device)
        negative_labels = None
        if self.train_labels is not None:
            negative_labels = self.train_labels[safe].masked_fill(~found, -1).to(z1.device)
        return Candidates(
            anchors=z1,
            positives=z2,
            negatives=negatives,
            neg_mask=neg_mask,
            anchor_labels=labels,
            negative_labels=negative_labels,
        )

    @torch.no_grad()
    def update(
        self, z1: Tensor, z2: Tensor, labels: Tensor | None = None, indices: Tensor | None = None
    ) -> None:
        """Count a training step (the index gets one step staler)."""
        self.step += 1
        self.steps_since_refresh += 1

    def extra_repr(self) -> str:
        return (
            f"num_negatives={self.num_negatives}, refresh_every={self.refresh_every}, "
            f"index={self.index_kind!r}"
        )
