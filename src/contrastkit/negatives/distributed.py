"""Negatives across processes: all-gather embeddings with a correct gradient.

With data parallelism each process (rank) encodes B_r samples. Contrasting its anchors against the
*global* batch (SimCLR, Chen et al. 2020, ICML 2020, arXiv 2002.05709, Sec. 2.2 "Training with large
batch size": negatives are aggregated over all devices; section as previously cited, not re-read in this
check) needs the embeddings of every rank, and the gradient must flow back to the
rank that produced each embedding.

Gradient of :func:`gather_with_grad`
------------------------------------
Let rank r hold embeddings x_r = f_θ(batch_r), gather X = [x_1; ...; x_W] and compute its *local* loss
L_r(X) -- the mean over its own anchors, contrasted with all of X (what an objective returns). The loss
of the single-process run over the union of the batches (equal B_r) is the global mean

    L = (1/W) Σ_r L_r,     dL/dθ = (1/W) Σ_r Σ_s (∂L_r/∂x_s) (∂x_s/∂θ).

Rank s can only back-propagate through its own x_s = f_θ(batch_s). So the backward of the gather on rank
s receives ∂L_s/∂X, **all-reduces it with a sum** over ranks -- giving Σ_r ∂L_r/∂X -- and returns its
slice Σ_r ∂L_r/∂x_s. Rank s's parameter gradient is then g_s = Σ_r (∂L_r/∂x_s)(∂x_s/∂θ), and DDP's
gradient *averaging* gives (1/W) Σ_s g_s = dL/dθ exactly: the gradient of the global mean loss. So:
keep each rank's loss the plain local mean, and let DDP average (or all-reduce the gradients with a sum
and divide by W by hand). Returning the slice without the all-reduce drops the terms ∂L_r/∂x_s for
r ≠ s (the other ranks' anchors pushing on this rank's embeddings as negatives), which under-weights the
negative-side gradient; all-reducing *and* dividing by W shrinks those same terms by W.

With unequal batch sizes the global mean is Σ_r (B_r / B) L_r; to keep the gradient exact under DDP's
averaging, scale rank r's local loss by ``W * B_r / B`` (:func:`global_mean_weight`).

Process group. :func:`init_from_env` starts the default group from the environment ``torchrun`` sets
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, ``LOCAL_RANK``): NCCL on CUDA (one GPU per
process, ``cuda:LOCAL_RANK``), gloo on CPU. :func:`broadcast_object` and :func:`all_gather_objects` move
small Python values (a run folder's name, a kNN accuracy, random generator states) between ranks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from contrastkit.errors import ConfigError, ShapeError
from contrastkit.negatives.base import Candidates, NegativeSource, check_labels

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def is_distributed() -> bool:
    """Whether ``torch.distributed`` is available and a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank(group: dist.ProcessGroup | None = None) -> int:
    """This process's rank, 0 when not distributed."""
    return dist.get_rank(group) if is_distributed() else 0


def world_size(group: dist.ProcessGroup | None = None) -> int:
    """Number of processes, 1 when not distributed."""
    return dist.get_world_size(group) if is_distributed() else 1


def launched_by_torchrun() -> bool:
    """Whether this process was started by torchrun (its rendezvous variables are all set)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def local_device(device: torch.device) -> torch.device:
    """Under torchrun a CUDA device becomes ``cuda:LOCAL_RANK`` (one GPU per process); others unchanged.

    An explicit ``cuda:N`` is kept with one process and refused with several unless N is the local rank.
    """
    if device.type != "cuda" or not launched_by_torchrun():
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.index is not None:
        if int(os.environ["WORLD_SIZE"]) == 1 or device.index == local:
            return device
        raise ConfigError(
            f"--device {device} puts every process on one GPU, but under torchrun each process uses its own "
            f"(this one cuda:{local}, its LOCAL_RANK): pass --device cuda or --device auto"
        )
    return torch.device("cuda", local)


def init_from_env(device: torch.device) -> tuple[torch.device, bool]:
    """Start the default process group from torchrun's environment: NCCL on CUDA, gloo on CPU.

    Returns this process's device (see :func:`local_device`) and whether this call created the group (the
    caller then destroys it with ``dist.destroy_process_group()``). Without torchrun, or with a group
    already initialised, nothing is started.
    """
    device = local_device(device)
    if is_distributed() and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # a group the caller started
    if is_distributed() or not launched_by_torchrun():
        return device, False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://")
    return device, True


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (a picklable value); ``obj`` itself when not distributed."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a picklable value); ``[obj]`` when not distributed."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_sizes(n: int, device: torch.device | str, group: dist.ProcessGroup | None = None) -> list[int]:
    """The first-dimension sizes of every rank (one small all-gather); ``[n]`` when not distributed."""
    if world_size(group) == 1:
        return [n]
    mine = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(mine) for _ in range(world_size(group))]
    dist.all_gather(sizes, mine, group=group)
    return [int(s) for s in sizes]


def global_mean_weight(
    local_size: int, device: torch.device | str = "cpu", group: dist.ProcessGroup | None = None
) -> float:
    """Factor ``W * B_r / B`` that makes DDP's averaged gradient the global mean with unequal batches.

    ``device`` is where the size exchange runs: "cpu" for gloo, this rank's CUDA device for NCCL.
    """
    sizes = gather_sizes(local_size, device, group)
    return len(sizes) * local_size / max(sum(sizes), 1)


def _all_gather(x: Tensor, sizes: Sequence[int], group: dist.ProcessGroup | None) -> Tensor:
    """Concatenate every rank's ``x`` along dim 0; unequal sizes are padded for the collective."""
    x = x.contiguous()
    top = max(sizes)
    if x.shape[0] < top:
        pad = x.new_zeros((top - x.shape[0], *x.shape[1:]))
        x = torch.cat([x, pad], dim=0)
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x, group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)], dim=0)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, sizes: tuple[int, ...], group: dist.ProcessGroup | None) -> Tensor:
        ctx.sizes = sizes
        ctx.group = group
        ctx.rank = rank(group)
        return _all_gather(x, sizes, group)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        grad = grad.contiguous().clone()  # all_reduce works in place; never modify autograd's buffer
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def gather_with_grad(
    x: Tensor, group: dist.ProcessGroup | None = None, sizes: Sequence[int] | None = None
) -> Tensor:
    """All-gather ``x`` (B_r, ...) from every rank into (Σ B_r, ...), rank order, differentiably.

    Backward all-reduces (sums) the incoming gradient over ranks and returns this rank's rows; see the
    module docstring for why this is the gradient of the global-mean loss once DDP averages. Ranks may hold
    different B_r (padded for the collective); pass ``sizes`` (from :func:`gather_sizes`) to skip the size
    exchange. Returns ``x`` itself when not distributed.
    """
    if world_size(group) == 1:
        return x
    if sizes is None:
        sizes = gather_sizes(x.shape[0], x.device, group)
    return _GatherWithGrad.apply(x, tuple(sizes), group)


@torch.no_grad()
def all_gather_no_grad(
    x: Tensor, group: dist.ProcessGroup | None = None, sizes: Sequence[int] | None = None
) -> Tensor:
    """All-gather without gradient (MoCo's ``concat_all_gather`` for queue keys, labels, indices)."""
    if world_size(group) == 1:
        return x
    if sizes is None:
        sizes = gather_sizes(x.shape[0], x.device, group)
    return _all_gather(x.detach(), sizes, group)


class GatherNegatives(NegativeSource):
    """SimCLR in-batch negatives over the *global* batch of all ranks.

    Every rank's anchors are its local 2B_r views (``cat([z1, z2])``, positives ``cat([z2, z1])``); the
    candidates are all 2B views of the global batch, ordered ``[z1 of rank 0, z1 of rank 1, ...,
    z2 of rank 0, z2 of rank 1, ...]`` (gathered with :func:`gather_with_grad`, one collective for both
    views). ``neg_mask`` marks, at the global offsets of this rank, each anchor itself and its partner, so
    every anchor has 2B - 2 negatives. With one process this is exactly
    :class:`~contrastkit.negatives.InBatchNegatives`. Labels, if given, are gathered too.

    The loss each rank computes is the mean over its local anchors; with DDP's gradient averaging the
    gradient equals the single-process gradient over the union of the batches (module docstring).
    """

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        super().__init__()
        self.group = group

    def forward(self, z1: Tensor, z2: Tensor, labels: Tensor | None = None) -> Candidates:
        if z1.shape != z2.shape or z1.ndim != 2:
            raise ShapeError(
                f"the two views' embeddings must both have shape (B, D); got {tuple(z1.shape)} "
                f"and {tuple(z2.shape)}"
            )
        check_labels(labels, z1, self)
        b, d = z1.shape
        sizes = gather_sizes(b, z1.device, self.group)
        both = gather_with_grad(torch.cat([z1, z2], dim=1), self.group, sizes)
        n = both.shape[0]
        views = torch.cat([both[:, :d], both[:, d:]], dim=0)
        offset = sum(sizes[: rank(self.group)])
        local = torch.arange(b, device=z1.device) + offset
        rows = torch.arange(2 * b, device=z1.device)
        self_col = torch.cat([local, local + n])
        partner_col = torch.cat([local + n, local])
        mask = torch.zeros(2 * b, 2 * n, dtype=torch.bool, device=z1.device)
        mask[rows, self_col] = True
        mask[rows, partner_col] = True
        anchor_labels = negative_labels = None
        if labels is not None:
            anchor_labels = torch.cat([labels, labels])
            every = all_gather_no_grad(labels, self.group, sizes)
            negative_labels = torch.cat([every, every])
        return Candidates(
            anchors=torch.cat([z1, z2], dim=0),
            positives=torch.cat([z2, z1], dim=0),
            negatives=views,
            neg_mask=mask,
            anchor_labels=anchor_labels,
            negative_labels=negative_labels,
        )
