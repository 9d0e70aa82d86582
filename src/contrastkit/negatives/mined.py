"""Negatives mined from a nearest-neighbour index of the whole training set (ANCE).

Xiong, Xiong, Li, Tang, Liu, Bennett, Ahmed, Overwijk 2021 (ICLR 2021; arXiv 2007.00808), "Approximate
Nearest Neighbor Negative Contrastive Learning for Dense Text Retrieval", Sec. 4 ("Approximate Nearest
Neighbor Noise Contrastive Estimation"), Eq. (13), ``θ* = argmin_θ Σ_q Σ_{d+ ∈ D+} Σ_{d- ∈ D-_ANCE}
l(f(q, d+), f(q, d-))`` with ``D-_ANCE = ANN_{f(q,d)} minus D+`` (the numbering read in a full translation of
arXiv v2 that keeps the original's, 2026-12-02): the training negatives of a query are its top-ranked items
retrieved by an ANN index over the *whole corpus*, minus its positives, and the index is refreshed
asynchronously ("Asynchronous Index Refresh"): an inferencer re-encodes the corpus with a recent
checkpoint of the model every few training steps and rebuilds the index, so the negatives are found with
a slightly stale model.

:class:`MinedNegatives` keeps that state here, synchronously: ``embed_all()`` (given by the caller)
returns prepared embeddings (N_train, D) of the whole training set, computed with the current model (a
snapshot: the embeddings are then kept unchanged), and an index over them, rebuilt every
``refresh_every`` steps. :attr:`refresh_seconds` is how long the last refresh took and
:attr:`steps_since_refresh` the staleness of the index, in training steps; both are in
:attr:`MinedNegatives.last_stats` (``mined_staleness``, ``mined_refresh_seconds``: the seconds of a
refresh made in the current step, else 0), which the learner reports with each step.

For self-supervised instance discrimination the only positive of an anchor is its own item, so mining
excludes the anchor's own dataset index. The source therefore needs the batch's dataset indices: pass
``indices=`` to ``forward`` or call :meth:`MinedNegatives.set_batch` before it (consumed by the next
forward, so a forgotten call raises instead of silently reusing stale indices).

Negatives with or without gradient. By default the negatives are the stored snapshot embeddings,
detached: no extra forward pass, but stale by up to ``refresh_every`` steps and without negative-side
gradient. ANCE instead takes only the mined item *ids* from the index and encodes those items with the
current model, so their gradients flow; pass ``encode_items`` (dataset ids (K,) -> prepared embeddings
(K, D), computed by the model being trained, with gradient) to do the same: each distinct mined item of
the step is encoded once. The mined dataset indices are in :attr:`MinedNegatives.last_indices` (M, n).
Two further differences from ANCE remain either way: the query of the search is the anchor's *current*
embedding (ANCE searches with the stale checkpoint's query embedding), and the negatives are the n
nearest items (ANCE samples its negatives among the top-ranked ones: Sec. 5, one negative sampled
uniformly from the ANN top 200 per positive; the official code, microsoft/ANCE
``drivers/run_ann_data_gen.py``, samples 5 from the top 500).

Index kinds. ``"torch"`` (the default) is an exact inner-product search written in torch: the snapshot
embeddings stay on the anchors' device (the GPU when training there), each step scores the anchors
against all of them in chunks (``q @ E.T``), masks each anchor's own item and takes ``torch.topk``: no
host round trip and no per-row Python work. The faiss kinds (``"flat"`` exact, ``"hnsw"`` and ``"ivf"``
approximate) search on the CPU, one device-to-host copy of the anchors per step; they are for sets whose
embeddings do not fit on the device, or are too large for an exact search every step. Exact searches
(torch, flat) agree on the neighbours but may order equal scores differently (and an fp32 matmul on the
GPU rounds differently from faiss's CPU kernel, so near-equal scores may swap too).

State. The snapshot embeddings, the counters and, for the approximate kinds, the serialised faiss index
are the module's extra state (``state_dict()["_extra_state"]``), so a checkpoint restores the exact index
(an HNSW graph built with several threads is not reproducible by rebuilding it): a resumed run mines
exactly the negatives the uninterrupted run mines. The saved embeddings are a CPU copy (a checkpoint loads
anywhere); the torch kind moves them back to the anchors' device at its first search after loading. This
costs N_train x D x 4 bytes per checkpoint (twice that for hnsw and ivf): 25.6 MB for 50,000 items of
dimension 128.

faiss is imported lazily, at construction, and only for the faiss kinds; without it a
:class:`~contrastkit.errors.ConfigError` says to ``pip install faiss-cpu``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from contrastkit.errors import ConfigError, DivergedError, ShapeError, is_integer_dtype
from contrastkit.negatives.base import Candidates, NegativeSource, check_labels

INDEX_KINDS = ("torch", "flat", "hnsw", "ivf")
"""Values of ``index``: ``torch`` (exact, on the anchors' device; the Python default) and the faiss kinds."""
FAISS_KINDS = ("flat", "hnsw", "ivf")
INDEX_CHOICES = ("auto", *INDEX_KINDS)
"""What ``--mined-index`` takes: an index kind, or ``auto`` (:func:`resolve_index_kind`)."""


def resolve_index_kind(kind: str, device: torch.device) -> str:
    """``auto``: ``torch`` on a GPU (the search stays on the device, and faiss-cpu would copy every query
    to the host), faiss ``flat`` on the CPU when faiss is installed (1.2-1.45x faster than the torch search
    there, :data:`TORCH_CHUNK_SCORES`), else ``torch``. Any other kind is returned as it is."""
    if kind != "auto":
        return kind
    if device.type != "cpu":
        return "torch"
    try:
        import_faiss()
    except ConfigError:
        return "torch"
    return "flat"


TORCH_CHUNK_SCORES = 1 << 26
"""The torch kind scores at most this many (query, item) pairs at once on a GPU (64M fp32 scores: 256 MiB),
on the CPU at most :data:`TORCH_CPU_CHUNK_SCORES` (16 MiB; on the 2-core CPU below a (1024, 50000) product
took 157 ms into a fresh buffer against 78 ms into an existing one, page faults, and whole searches with
chunks of 2^22, 2^23, 2^24, 2^26 scores 140-154, 144-161, 181-195, 241-247 ms). One buffer serves all
chunks of a search.

Measured (the reason for a hand-written search, and its limits): ``OMP_NUM_THREADS=1 python
benchmarks/mined_search.py`` (N_train = 50,000, D = 128, M = 1,024 queries, n = 16, ms per
``neighbours`` call, median of 10, two runs) on a 2-core CPU (Intel Xeon, shared): torch 148 / 150 ms,
faiss flat 106 / 102 ms (113 / 110 ms with the former per-row Python post-processing), faiss hnsw
276 / 243 ms (recall@16 0.66 on these random embeddings). With 2 threads: torch 73, flat 60 (68), hnsw
249 ms. So on the CPU faiss flat is 1.2-1.45x faster than torch; the torch kind is the default for the
GPU, where faiss is not installed and the faiss kinds pay a host round trip and the CPU search every
step. Not measured on a GPU yet (no device in the session that wrote this): run the benchmark there.
"""
TORCH_CPU_CHUNK_SCORES = 1 << 22


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
        refresh_every: R, rebuild the index once R :meth:`update` calls have passed since the last build
            (steps are counted by :meth:`update` only, as for every source: a hand-written loop that never
            calls it never refreshes the index, and reports it fresh; :class:`ContrastiveLearner` calls it).
        index: "torch" (exact inner product in torch on the anchors' device, the default), or a faiss
            index on the CPU: "flat" (exact, ``IndexFlatIP``), "hnsw" (``IndexHNSWFlat``) or "ivf"
            (``IndexIVFFlat``); the approximate kinds trade recall for speed on large sets.
        train_labels: optional (N_train,) labels; they become ``negative_labels`` (for the oracle mask).
        encode_items: optional callable, dataset ids (K,) on the anchors' device -> prepared embeddings
            (K, D) by the current model, with gradient (ANCE; module docstring). None: snapshot embeddings.
        both_views: every view is an anchor once (anchors ``cat([z1, z2])``, positives ``cat([z2, z1])``,
            as SimCLR uses both views); False: only ``z1`` (a learner that symmetrises itself, MoCo).
        hnsw_m, hnsw_ef_search: HNSW graph degree and search breadth.
        ivf_lists, ivf_probe: IVF lists (default ``sqrt(N_train)``, at most N_train / 39) and lists probed.

    The similarity is the inner product of prepared embeddings (the cosine score once L2-normalised, or the
    dot score). ``forward`` returns the anchors, their positives and per-anchor negatives (M, n, D), with
    ``neg_mask`` only where fewer than n items could be found. The torch kind searches on the anchors'
    device (the embeddings are moved there at the first search); the faiss kinds search on the CPU
    (faiss-cpu), one device-to-host copy of the anchors per step.
    """

    needs_indices = True
    accepts_indices = True

    def __init__(
        self,
        embed_all: Callable[[], Tensor] | None = None,
        num_negatives: int = 16,
        refresh_every: int = 1000,
        index: str = "torch",
        *,
        train_labels: Tensor | None = None,
        encode_items: Callable[[Tensor], Tensor] | None = None,
        both_views: bool = False,
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
        if index in FAISS_KINDS:
            import_faiss()  # fail at construction, not at the first refresh mid-training
        self.embed_all = embed_all
        self.encode_items = encode_items
        self.num_negatives = num_negatives
        self.refresh_every = refresh_every
        self.index_kind = index
        self.both_views = both_views
        self.train_labels = None if train_labels is None else torch.as_tensor(train_labels).long().cpu()
        self.hnsw_m = hnsw_m
        self.hnsw_ef_search = hnsw_ef_search
        self.ivf_lists = ivf_lists
        self.ivf_probe = ivf_probe
        self._index: Any = None
        self._keep: list[Any] = []
        self._labels_on: Tensor | None = None  # train_labels on the embeddings' device (torch kind)
        self.embeddings: Tensor | None = None
        self.refresh_seconds = float("nan")
        self.steps_since_refresh = 0
        self.num_refreshes = 0
        self.step = 0
        self.refreshed_at_step = -1
        self.last_indices: Tensor | None = None
        self.last_stats: dict[str, Tensor] = {}
        self._batch_indices: Tensor | None = None

    # ----- the index -------------------------------------------------------------------------------

    @property
    def staleness(self) -> int:
        """Training steps since the index was built (its embeddings come from that model)."""
        return self.steps_since_refresh

    @property
    def needs_refresh(self) -> bool:
        return self.embeddings is None or self.steps_since_refresh >= self.refresh_every

    @property
    def embed_all(self) -> Callable[[], Tensor] | None:
        return self.__dict__["_embed_all"]

    @property
    def encode_items(self) -> Callable[[Tensor], Tensor] | None:
        return self.__dict__["_encode_items"]

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("embed_all", "encode_items"):
            # kept out of nn.Module's registry: a module passed as the callable must not become a submodule
            # (its parameters would join this source's state_dict and the optimizer)
            self.__dict__["_" + name] = value
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
        """Re-embed the training set (``embed_all()``, unless ``embeddings`` are given) and rebuild.

        The torch kind keeps the embeddings where they are (``embed_all`` returns them on the training
        device) and only checks them; the faiss kinds copy them to the CPU and build the faiss index.
        """
        start = time.perf_counter()
        if embeddings is None:
            if self.embed_all is None:
                raise ConfigError("MinedNegatives needs embed_all (a callable embedding the training set)")
            embeddings = self.embed_all()
        emb = torch.as_tensor(embeddings).detach().float()
        if self.index_kind in FAISS_KINDS:
            emb = emb.cpu()
        emb = emb.contiguous()
        if emb.ndim != 2 or emb.shape[0] < 2:
            raise ShapeError(
                f"embed_all must return (N_train, D) embeddings with N_train >= 2, got {tuple(emb.shape)}"
            )
        if self.train_labels is not None and self.train_labels.shape[0] != emb.shape[0]:
            raise ShapeError(
                f"train_labels has {self.train_labels.shape[0]} entries but embed_all returned "
                f"{emb.shape[0]} rows"
            )
        # one host synchronisation a refresh: NaN rows would rank as every anchor's nearest neighbours (topk
        # takes NaN as the largest score) and make every mined negative NaN
        bad = ~torch.isfinite(emb).all(dim=1)
        n_bad = int(bad.sum())
        if n_bad:
            first = int(bad.nonzero()[0, 0])
            raise DivergedError(
                f"the embeddings of the training set for the mined index are NaN or infinite in {n_bad} of "
                f"{emb.shape[0]} rows (the first: item {first}), so no index was built: the encoder's "
                "outputs diverged (weights grown until they overflow, or non-finite inputs); start again with "
                "a lower learning rate or fp32 precision, or check those items"
            )
        if self.index_kind in FAISS_KINDS:
            x = emb.numpy()
            index = self._build(x)
            index.add(x)
            self._index = index
        elif emb.is_cuda:
            torch.cuda.synchronize(emb.device)  # refresh_seconds then includes the embedding's kernels
        self.embeddings = emb
        self.steps_since_refresh = 0
        self.num_refreshes += 1
        self.refreshed_at_step = self.step
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

        Rows that cannot be filled (n > N_train - 1 with the own index excluded, or an approximate index
        that finds fewer) are padded with -1 at the end; a row never repeats an item. ``query_indices``
        None excludes nothing (an index outside [0, N_train) excludes nothing either; ``forward`` refuses
        such indices when they are on the CPU). The result is on the queries' device.

        torch kind: exact scores ``q @ E.T`` (fp32, autocast off) on the queries' device, in chunks of at
        most :data:`TORCH_CHUNK_SCORES` scores, the own item's score set to -inf, ``torch.topk``. Equal
        scores may come in another order than faiss gives them. faiss kinds: searches n + 1 items and
        widens the search while a row has fewer than n usable results (after dropping the query's own
        index, faiss's -1 fillers and repeated ids).
        """
        if self.embeddings is None or (self.index_kind in FAISS_KINDS and self._index is None):
            raise RuntimeError("the index has not been built; call refresh() first")
        m = query_emb.shape[0]
        if query_indices is not None and tuple(query_indices.shape) != (m,):
            raise ShapeError(f"query_indices must have shape ({m},), got {tuple(query_indices.shape)}")
        if self.index_kind == "torch":
            return self._search_torch(query_emb, query_indices, n)
        return self._search_faiss(query_emb, query_indices, n)

    def _search_embeddings(self, device: torch.device) -> Tensor:
        """The snapshot embeddings on ``device``, moved there once (after a refresh or a load elsewhere)."""
        assert self.embeddings is not None
        if self.embeddings.device != device:
            self.embeddings = self.embeddings.to(device).contiguous()
        return self.embeddings

    def _search_torch(self, query_emb: Tensor, query_indices: Tensor | None, n: int) -> Tensor:
        device = query_emb.device
        emb = self._search_embeddings(device)
        total = emb.shape[0]
        m = query_emb.shape[0]
        k = min(n, total)
        out = torch.full((m, n), -1, dtype=torch.long, device=device)
        if m == 0 or k == 0:
            return out
        own = None if query_indices is None else query_indices.detach().to(device=device, dtype=torch.long)
        chunk = TORCH_CPU_CHUNK_SCORES if device.type == "cpu" else TORCH_CHUNK_SCORES
        rows = max(1, chunk // total)
        neg_inf = torch.full((), float("-inf"), device=device)  # a fill, not a synchronising copy
        # one score buffer for all chunks (a fresh one per chunk costs page faults on the CPU)
        buffer = torch.empty(min(rows, m), total, device=device)
        with torch.autocast(device.type, enabled=False):
            q = query_emb.detach().float()
            for lo in range(0, m, rows):
                scores = torch.mm(q[lo : lo + rows], emb.T, out=buffer[: min(rows, m - lo)])
                if own is not None:
                    o = own[lo : lo + rows]
                    col = o.clamp(0, total - 1).unsqueeze(1)
                    inside = ((o >= 0) & (o < total)).unsqueeze(1)
                    scores.scatter_(1, col, torch.where(inside, neg_inf, scores.gather(1, col)))
                out[lo : lo + rows, :k] = scores.topk(k, dim=1).indices
        if own is not None and k == total:
            # every item was taken, the excluded one last (its -inf is the lowest score): a filler
            out[:, :k].masked_fill_(out[:, :k] == own.unsqueeze(1), -1)
        return out

    def _search_faiss(self, query_emb: Tensor, query_indices: Tensor | None, n: int) -> Tensor:
        total = self._index.ntotal
        q = np.ascontiguousarray(query_emb.detach().float().cpu().numpy())
        own = None if query_indices is None else query_indices.detach().long().cpu()
        k = min(n + 1, total)
        while True:
            _, found = self._index.search(q, k)
            out, counts = _first_usable(torch.from_numpy(found).long(), own, n)
            if k >= total or bool((counts >= n).all()):
                break
            k = min(2 * k, total)
        return out.to(query_emb.device)

    # ----- the negative source ---------------------------------------------------------------------

    def set_batch(self, indices: Tensor) -> None:
        """Dataset indices (B,) of the next forward's batch (alternative to ``forward(..., indices=)``)."""
        self._batch_indices = indices

    def forward(
        self, z1: Tensor, z2: Tensor, labels: Tensor | None = None, indices: Tensor | None = None
    ) -> Candidates:
        if z1.ndim != 2 or z1.shape != z2.shape:
            raise ShapeError(
                f"the two views' embeddings must both have shape (B, D); got {tuple(z1.shape)} "
                f"and {tuple(z2.shape)}"
            )
        check_labels(labels, z1, self)
        if indices is None:
            indices, self._batch_indices = self._batch_indices, None
        if indices is None:
            raise ConfigError(
                "MinedNegatives needs the batch's dataset indices to exclude each anchor's own item: pass "
                "forward(..., indices=...) or call set_batch(indices) before each forward"
            )
        if tuple(indices.shape) != (z1.shape[0],):
            raise ShapeError(f"indices must have shape ({z1.shape[0]},), got {tuple(indices.shape)}")
        if not is_integer_dtype(indices.dtype):
            raise ConfigError(f"indices must be integer dataset indices, got dtype {indices.dtype}")
        self.maybe_refresh()
        assert self.embeddings is not None
        if self.embeddings.shape[1] != z1.shape[1]:
            raise ShapeError(f"the index holds dimension {self.embeddings.shape[1]}, the batch {z1.shape[1]}")
        n_items = self.embeddings.shape[0]
        # checked where it costs no device sync (CPU indices); the trainers' indices come from the data set
        if indices.device.type == "cpu" and indices.numel():
            low, high = int(indices.min()), int(indices.max())
            if low < 0 or high >= n_items:
                raise ConfigError(
                    f"indices must be dataset indices in [0, {n_items}) (the index holds {n_items} items), "
                    f"got values from {low} to {high}: pass each item's position in the training set"
                )
        anchors, positives, anchor_labels = z1, z2, labels
        if self.both_views:
            anchors, positives = torch.cat([z1, z2]), torch.cat([z2, z1])
            indices = torch.cat([indices, indices])
            anchor_labels = None if labels is None else torch.cat([labels, labels])
        mined = self.neighbours(anchors, indices, self.num_negatives)
        self.last_indices = mined
        store = self.embeddings.device  # the anchors' device for the torch kind, the CPU for faiss
        ids = mined.to(store)
        found = ids >= 0
        safe = ids.clamp(min=0)
        device = anchors.device
        # torch.full is a fill kernel; torch.tensor(x, device=cuda) would copy from the host and synchronise
        stats = {
            "mined_staleness": torch.full((), float(self.steps_since_refresh), device=device),
            "mined_refresh_seconds": torch.full(
                (), self.refresh_seconds if self.refreshed_at_step == self.step else 0.0, device=device
            ),
        }
        if self.encode_items is None:
            negatives = self.embeddings[safe].to(device=device, dtype=anchors.dtype)
        else:
            unique, inverse = torch.unique(safe, return_inverse=True)
            encoded = self.encode_items(unique.to(device))
            if tuple(encoded.shape) != (unique.numel(), anchors.shape[1]):
                raise ShapeError(
                    f"encode_items must return ({unique.numel()}, {anchors.shape[1]}) embeddings for "
                    f"{unique.numel()} ids, got {tuple(encoded.shape)}"
                )
            negatives = encoded.to(anchors.dtype)[inverse.to(device)]
            stats["mined_reencoded"] = torch.full((), float(unique.numel()), device=device)
        self.last_stats = stats
        # an exact search fills every row when n < N_train: no need to look (a device sync on the GPU)
        full = self.index_kind == "torch" and self.num_negatives < self.embeddings.shape[0]
        neg_mask = None if full or bool(found.all()) else (~found).to(device)
        negative_labels = None
        if self.train_labels is not None:
            if self._labels_on is None or self._labels_on.device != store:
                self._labels_on = self.train_labels.to(store)
            negative_labels = self._labels_on[safe].masked_fill(~found, -1).to(device)
        return Candidates(
            anchors=anchors,
            positives=positives,
            negatives=negatives,
            neg_mask=neg_mask,
            anchor_labels=anchor_labels,
            negative_labels=negative_labels,
        )

    @torch.no_grad()
    def update(
        self, z1: Tensor, z2: Tensor, labels: Tensor | None = None, indices: Tensor | None = None
    ) -> None:
        """Count a training step (the index gets one step staler)."""
        self.step += 1
        self.steps_since_refresh += 1

    # ----- checkpoints -----------------------------------------------------------------------------

    def get_extra_state(self) -> dict[str, Any]:
        """Counters, snapshot embeddings (a CPU copy), (hnsw, ivf) the serialised index: an exact resume."""
        index = None
        if self._index is not None and self.index_kind in ("hnsw", "ivf"):
            index = torch.from_numpy(import_faiss().serialize_index(self._index).copy())
        return {
            "step": self.step,
            "steps_since_refresh": self.steps_since_refresh,
            "num_refreshes": self.num_refreshes,
            "refreshed_at_step": self.refreshed_at_step,
            "refresh_seconds": self.refresh_seconds,
            "embeddings": None if self.embeddings is None else self.embeddings.cpu(),
            "index": index,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.steps_since_refresh = int(state["steps_since_refresh"])
        self.num_refreshes = int(state["num_refreshes"])
        self.refreshed_at_step = int(state["refreshed_at_step"])
        self.refresh_seconds = float(state["refresh_seconds"])
        emb = state["embeddings"]
        # the faiss kinds search on the CPU; the torch kind puts the embeddings back on the device its
        # searches ran on if it had embeddings before, else the first search moves them to the anchors'
        where = torch.device("cpu")
        if self.index_kind == "torch" and emb is not None:
            where = emb.device if self.embeddings is None else self.embeddings.device
        self.embeddings = None if emb is None else emb.detach().to(where, torch.float32).contiguous()
        self._index, self._keep = None, []
        if self.embeddings is None or self.index_kind == "torch":
            return
        if state["index"] is not None and self.index_kind in ("hnsw", "ivf"):
            faiss = import_faiss()
            self._index = faiss.deserialize_index(state["index"].cpu().numpy())
            if self.index_kind == "hnsw":
                self._index.hnsw.efSearch = self.hnsw_ef_search
        else:
            x = self.embeddings.numpy()
            self._index = self._build(x)
            self._index.add(x)

    def extra_repr(self) -> str:
        return (
            f"num_negatives={self.num_negatives}, refresh_every={self.refresh_every}, "
            f"index={self.index_kind!r}, both_views={self.both_views}, "
            f"reencode={self.encode_items is not None}"
        )


def _first_usable(found: Tensor, own: Tensor | None, n: int) -> tuple[Tensor, Tensor]:
    """faiss results (M, k) -> the first n usable ids of each row, in order, -1 padded; and their counts.

    Usable: not a -1 filler, not the row's ``own`` index, not a repeat of an earlier id of the row.
    Vectorised: repeats are found in each row's stably sorted ids (the first occurrence sorts first).
    """
    m, k = found.shape
    bad = found < 0
    if own is not None:
        bad |= found == own.unsqueeze(1)
    if k > 1:
        ordered, perm = torch.sort(found, dim=1, stable=True)
        repeat = torch.zeros_like(bad)
        repeat[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
        bad |= torch.zeros_like(bad).scatter_(1, perm, repeat)
    counts = (~bad).sum(1)
    kept_first = torch.sort(bad.to(torch.uint8), dim=1, stable=True).indices  # usable ids first, in order
    compact = found.gather(1, kept_first)
    compact.masked_fill_(torch.arange(k).unsqueeze(0) >= counts.unsqueeze(1), -1)
    out = torch.full((m, n), -1, dtype=torch.long)
    width = min(n, k)
    out[:, :width] = compact[:, :width]
    return out, counts
