"""A queue of past keys as negatives: MoCo's dictionary.

He, Fan, Wu, Xie, Girshick 2020, "Momentum Contrast for Unsupervised Visual Representation Learning"
(CVPR 2020, arXiv 1911.05722), Sec. 3.2 ("Dictionary as a queue"), with the InfoNCE loss of Eq. (1) (Sec. 3.1) over
the positive key and the K queued keys: the keys of the current mini-batch are enqueued and the oldest
are dequeued, so the number of negatives K is decoupled from the batch size; MoCo v2 (Chen, Fan,
Girshick, He 2020, "Improved Baselines with Momentum Contrastive Learning", arXiv 2003.04297) uses MoCo's
hyper-parameters and codebase unless noted, so its queue stays K = 65536 (MoCo Sec. 4.1, "We set
K = 65536 and m = 0.999", and the official default; the v2 note does not restate K). Keys come from a
slowly evolving momentum encoder (:class:`contrastkit.negatives.momentum.MomentumEncoder`) so that the
queue stays consistent.

Citation check: the behaviour was verified against the official code (facebookresearch/moco
``moco/builder.py``: ``K = 65536`` default; logits ``[q·k+, q·queue]`` with the queue detached; keys
all-gathered over GPUs, then written over the oldest slots *after* the logits are formed). "Eqn.(1)" is
the paper's own label in its Algorithm 1 as quoted; Eq. (1) sits in Sec. 3.1 and the queue in Sec. 3.2, as
read in text transcriptions of the paper kept in public repositories.

:class:`KeyQueue` is the state: a FIFO ring buffer held in persistent buffers, so it is saved with the
module's ``state_dict`` (and in checkpoints that store it). Beside each key it keeps the key's label and
dataset index (``-1`` = unknown), so oracle / supervised masks also work on queued negatives, and so that
an anchor's own image is never one of its negatives. Slots that have never been written are reported by
:meth:`KeyQueue.valid_mask` and masked out, never used as zero vectors.

Own keys: MoCo never masks them, because its queue (65,536 keys) is much smaller than its data set (1.28M
images), so a key of the query's own image is never queued. A queue that spans more than an epoch (a small
data set, or K close to the data set's size) holds keys of the query's own image, which are false
negatives -- the hardest of all, so MoCHi would mix them first. Given the batch's dataset indices,
:class:`QueueNegatives` masks them (``exclude_own=True``, the default; measured on the digits data set at
its defaults, 1,347 images, batch 256, K = 4096: at the first step of the second epoch 239 of 256 anchors
had their own image among the queued keys, 1.9 keys each). When the step's labels are given (the oracle
mask, a supervised objective) a key stored with the anchor's own known label is left to the label masks:
the oracle masks it as same-class, and a supervised objective (SupCon) takes it as a positive, which
masking it would undo; an own key of unknown label (-1, either side) stays masked.

:class:`QueueNegatives` is the negative source: each anchor (query) is contrasted with its positive (its
key) and with every key in the queue; :meth:`QueueNegatives.update` enqueues the current keys *after* the
loss (MoCo Algorithm 1 and ``builder.py``: the current keys are not negatives of the current step).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contrastkit.errors import ConfigError, ShapeError, is_integer_dtype
from contrastkit.negatives.base import Candidates, NegativeSource, check_labels
from contrastkit.negatives.distributed import all_gather_no_grad, world_size


class KeyQueue(nn.Module):
    """FIFO ring buffer of the ``size`` most recent keys, with their labels and dataset indices.

    Buffers (all persistent, so they are in ``state_dict``):

    * ``keys`` (K, D), float32 by default; written detached and cast to this dtype, so bf16 keys produced
      under autocast are stored in float32.
    * ``labels`` (K,) int64 and ``indices`` (K,) int64, ``-1`` when unknown or not yet written.
    * ``ptr`` (), int64: the slot the next key is written to (when full, the oldest key).
    * ``filled`` (), int64: how many slots hold a key (at most K).

    ``dim=None`` allocates ``keys`` lazily from the first batch (``keys`` has shape (K, 0) until then).
    Loading a ``state_dict`` into a queue that is still unallocated allocates it with the saved shape, so
    a lazily built queue can be restored before it has seen a batch. Moving the module (``.to(device)``)
    moves the buffers; a lazily allocated queue is created on the device of the first batch.
    """

    keys: Tensor
    labels: Tensor
    indices: Tensor
    ptr: Tensor
    filled: Tensor

    def __init__(self, size: int, dim: int | None = None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise ConfigError(f"queue size must be a positive integer, got {size!r}")
        if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0):
            raise ConfigError(f"queue dim must be a positive integer or None (lazy), got {dim!r}")
        self.size = size
        self.register_buffer("keys", torch.zeros(size, dim or 0, dtype=dtype))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("indices", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @property
    def dim(self) -> int | None:
        """D, or None while a lazily built queue has not been allocated."""
        return self.keys.shape[1] or None

    @property
    def is_full(self) -> bool:
        return int(self.filled) >= self.size

    def allocate(self, dim: int, device: torch.device | str | None = None) -> None:
        """Allocate the (K, D) key buffer of a lazily built queue (no-op if it already has dim D)."""
        if self.dim == dim:
            return
        if self.dim is not None:
            raise ShapeError(f"the queue holds keys of dimension {self.dim}; got keys of dimension {dim}")
        device = self.keys.device if device is None else torch.device(device)
        self.keys = torch.zeros(self.size, dim, dtype=self.keys.dtype, device=device)
        self.labels = self.labels.to(device)
        self.indices = self.indices.to(device)
        self.ptr = self.ptr.to(device)
        self.filled = self.filled.to(device)

    def valid_mask(self) -> Tensor:
        """Bool (K,): True for slots that hold a key.

        The queue fills slots 0, 1, 2, ... in order from empty (``ptr == filled`` until it is full), so the
        written slots are exactly the first ``filled``.
        """
        return torch.arange(self.size, device=self.keys.device) < self.filled

    @torch.no_grad()
    def enqueue(self, keys: Tensor, labels: Tensor | None = None, indices: Tensor | None = None) -> None:
        """Write a batch of keys (B, D) over the oldest ones.

        Any B works (no ``K % B == 0`` requirement): a batch that crosses the end of the buffer wraps around
        to the start, and a batch larger than K keeps only its newest (last) K rows.

        Keys are stored as given, non-finite ones included: checking them here would need a host
        synchronisation per step, which the training step avoids. A NaN (or infinite) key is not lost
        silently, though: it is a negative of every anchor while it is queued, and an objective given a
        non-finite score that is not masked out returns a NaN loss (:mod:`contrastkit.objectives.base`), so
        the next loss computed over the queue is NaN and the trainer's non-finite-loss check stops (or, with
        ``--skip-nonfinite``, skips) that step. Such keys usually come with a NaN loss already: the learner
        enqueues the keys of a step whose loss it refused (``finite_check``) not at all.
        """
        if keys.ndim != 2:
            raise ShapeError(f"keys must have shape (B, D), got {tuple(keys.shape)}")
        b = keys.shape[0]
        for name, t in (("labels", labels), ("indices", indices)):
            if t is not None and tuple(t.shape) != (b,):
                raise ShapeError(f"{name} must have shape ({b},) to match the keys, got {tuple(t.shape)}")
            if t is not None:  # before any write: a refused batch leaves the queue as it was
                _check_integer(name, t)
        if b == 0:
            return
        self.allocate(keys.shape[1], keys.device if self.dim is None else None)
        if b > self.size:
            keys = keys[-self.size :]
            labels = None if labels is None else labels[-self.size :]
            indices = None if indices is None else indices[-self.size :]
            b = self.size
        device = self.keys.device
        slots = (self.ptr + torch.arange(b, device=device)) % self.size
        self.keys[slots] = keys.detach().to(device=device, dtype=self.keys.dtype)
        self.labels[slots] = -1 if labels is None else labels.detach().to(device=device, dtype=torch.long)
        self.indices[slots] = -1 if indices is None else indices.detach().to(device=device, dtype=torch.long)
        self.ptr.copy_((self.ptr + b) % self.size)
        self.filled.copy_(torch.clamp(self.filled + b, max=self.size))

    def ordered(self) -> tuple[Tensor, Tensor, Tensor]:
        """The stored ``(keys, labels, indices)``, oldest first (only written slots)."""
        n = int(self.filled)
        start = int(self.ptr) if n == self.size else 0
        order = (torch.arange(n, device=self.keys.device) + start) % self.size
        return self.keys[order], self.labels[order], self.indices[order]

    def reset(self) -> None:
        """Empty the queue (keeps the allocation)."""
        self.keys.zero_()
        self.labels.fill_(-1)
        self.indices.fill_(-1)
        self.ptr.zero_()
        self.filled.zero_()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, *args, **kwargs
    ):
        saved = state_dict.get(prefix + "keys")
        if saved is not None and self.dim is None and saved.ndim == 2 and saved.shape[1] > 0:
            self.allocate(saved.shape[1])
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, *args, **kwargs
        )

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"


class QueueNegatives(NegativeSource):
    """MoCo negatives: anchors ``z1`` (queries), positives ``z2`` (keys), negatives = the queued keys.

    ``forward(z1, z2, labels=None)`` returns shared negatives, a snapshot (copy) of ``queue.keys`` (K, D),
    with ``neg_mask`` (an expanded (M, K) view) marking the slots not yet written -- always given, so that
    reading the fill count never syncs a GPU -- and, when labels are given, a snapshot of the queue's labels
    as ``negative_labels``. ``update(z1, z2, labels=None, indices=None)`` enqueues ``z2``, the keys, after the loss; it may be called
    before or after ``backward`` (the candidates hold a copy of the keys, which ``update``'s in-place writes do
    not touch; the copy is K x D, one per ``forward``, and the learner makes no other). Keys should
    come from a momentum encoder (MoCo) and be prepared like the queries; they are stored detached. Using
    the two views symmetrically is the learner's job: call ``forward`` for (q1, k2) and for (q2, k1), then
    ``update`` once with both keys (``update(torch.cat([q1, q2]), torch.cat([k2, k1]), ...)``), so that
    neither half sees the current batch's keys as negatives.

    ``forward(..., indices=...)`` with the batch's dataset indices (the learner passes them when it has them)
    also masks, per anchor, the queued keys of the anchor's own image (``exclude_own=True``; the module
    docstring says when that happens), but for keys stored with the anchor's own known label when the
    step's ``labels`` are given: those are left to the label masks (same-class for the oracle, positives
    for SupCon). Without indices, or with ``exclude_own=False`` (MoCo's own behaviour), the mask is the
    shared (M, K) view of the unwritten slots.

    ``dim=None`` (the default) takes D from the first batch; see :class:`KeyQueue` for checkpoints. On the
    very first step the queue is empty, every negative is masked, and InfoNCE's loss is 0 for that step.

    When ``torch.distributed`` is initialised with several processes, :meth:`update` all-gathers the keys
    (and labels, indices) of every rank before enqueueing, as MoCo does, so that all ranks hold the same
    queue (this also keeps DDP's buffer broadcast from rank 0 harmless).
    """

    accepts_indices = True  # given the batch's dataset indices, the queue stores them beside the keys

    def __init__(self, size: int = 4096, dim: int | None = None, *, exclude_own: bool = True) -> None:
        super().__init__()
        self.queue = KeyQueue(size, dim)
        self.exclude_own = bool(exclude_own)

    def forward(
        self, z1: Tensor, z2: Tensor, labels: Tensor | None = None, indices: Tensor | None = None
    ) -> Candidates:
        if z1.ndim != 2 or z1.shape != z2.shape:
            raise ShapeError(
                f"queries and keys must both have shape (B, D); got {tuple(z1.shape)} and {tuple(z2.shape)}"
            )
        check_labels(labels, z1, self)
        q = self.queue
        if q.dim is None:
            q.allocate(z1.shape[1], z1.device)
        elif q.dim != z1.shape[1]:
            raise ShapeError(
                f"the queue holds keys of dimension {q.dim}; got embeddings of dimension {z1.shape[1]}"
            )
        neg_mask = (~q.valid_mask()).unsqueeze(0).expand(z1.shape[0], q.size)
        if indices is not None:
            if tuple(indices.shape) != (z1.shape[0],):
                raise ShapeError(
                    f"indices must have shape ({z1.shape[0]},), one dataset index per query, got "
                    f"{tuple(indices.shape)}"
                )
            _check_integer("indices", indices)
            if self.exclude_own:
                own = indices.to(device=q.indices.device, dtype=torch.long).unsqueeze(1)
                same_image = (q.indices.unsqueeze(0) == own) & (own >= 0)
                if labels is not None:  # a key of the anchor's known label is left to the label masks
                    known = labels.to(device=q.labels.device, dtype=torch.long).unsqueeze(1)
                    same_image = same_image & ~((q.labels.unsqueeze(0) == known) & (known >= 0))
                neg_mask = neg_mask | same_image
        return Candidates(
            anchors=z1,
            positives=z2,
            # a snapshot: ``update`` writes the buffer in place, and ``backward`` reads the negatives
            negatives=q.keys.clone(),
            neg_mask=neg_mask,
            anchor_labels=labels,
            negative_labels=None if labels is None else q.labels.clone(),  # a snapshot, as the keys
        )

    @torch.no_grad()
    def update(
        self, z1: Tensor, z2: Tensor, labels: Tensor | None = None, indices: Tensor | None = None
    ) -> None:
        keys = z2.detach()
        if world_size() > 1:
            keys = all_gather_no_grad(keys)
            labels = None if labels is None else all_gather_no_grad(labels)
            indices = None if indices is None else all_gather_no_grad(indices)
        self.queue.enqueue(keys, labels, indices)

    def extra_repr(self) -> str:
        return f"size={self.queue.size}, exclude_own={self.exclude_own}"


def _check_integer(name: str, t: Tensor) -> None:
    """Refuse float, complex or bool labels / indices: casting them to int64 would silently truncate."""
    if not is_integer_dtype(t.dtype):
        raise ConfigError(
            f"the queue's {name} must be integers (-1: unknown), got dtype {t.dtype}; convert them with .long()"
        )
