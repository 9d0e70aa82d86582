"""Where the decoded ``uint8`` training images live while training: on the device, or in host memory.

Contrastive training is bound by its input pipeline unless the images are already where the model runs:
CIFAR-10 is 150 MB of ``uint8``, so it is held on the GPU and a batch is one index operation there, with
no host work and no transfer (``where == "device"``). A data set too large for the device memory that is
free stays in host memory: a batch is gathered on the host into one of two *pinned* (page-locked) staging
buffers and copied asynchronously (``non_blocking``) to the device, where the augmentation runs;
the two buffers alternate, and a CUDA event guards each against being overwritten while its copy is still
in flight, so the host never waits for the GPU except when it is two batches ahead. The data set itself is not pinned:
pinning would need a second full copy while it is made and PyTorch's pinned allocator rounds it up to a
power of two (70 GB would lock 128 GB); only the staging buffers need it.

``placement="auto"`` puts the images on a CUDA device when they take at most :data:`DEVICE_FRACTION` of its
free memory (the rest is left to the model, its activations and the optimizer), else in host memory;
on the CPU there is only one memory. ``"device"`` and ``"host"`` force a choice.
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastkit.errors import ConfigError

PLACEMENTS = ("auto", "device", "host")
DEVICE_FRACTION = 0.5
"""``auto`` keeps the images on a CUDA device when they take at most this share of its free memory."""


def _free_bytes(device: torch.device) -> int:
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


class ResidentImages:
    """``uint8`` ``(N, C, H, W)`` images placed for training; :meth:`batch` returns a batch on ``device``.

    ``where`` is ``"device"``, ``"pinned host"`` (host memory, batches staged through pinned buffers) or
    ``"host"`` (CPU training: host memory is the device's).

    ``index_device`` is where the batch indices must be (the device itself, or the CPU for host
    placement, so that drawing a batch never synchronises with the GPU).
    """

    def __init__(self, images: Tensor, device: torch.device | str, placement: str = "auto") -> None:
        if placement not in PLACEMENTS:
            raise ConfigError(
                f"data placement {placement!r} is unknown; choose one of: {', '.join(PLACEMENTS)}"
            )
        if not isinstance(images, Tensor) or images.dim() != 4 or images.dtype != torch.uint8:
            what = (
                f"{images.dtype} {tuple(images.shape)}"
                if isinstance(images, Tensor)
                else type(images).__name__
            )
            raise ConfigError(f"images must be a uint8 (N, C, H, W) tensor, got {what}")
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        if placement == "auto":
            placement = (
                "device"
                if not cuda or images.nbytes <= DEVICE_FRACTION * _free_bytes(self.device)
                else "host"
            )
        self.pinned = cuda and placement == "host"
        if placement == "device" or not cuda:
            self.where = "device" if cuda else "host"  # on the CPU, host memory is the device's memory
            self.images = images.to(self.device)
            self.index_device = self.device
        else:
            self.where = "pinned host"  # pinned staging buffers; the set itself stays pageable
            self.images = images.cpu()
            self.index_device = torch.device("cpu")
        self._buffers: list[Tensor] = []
        self._events: list[torch.cuda.Event | None] = [None, None]
        self._next = 0

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def nbytes(self) -> int:
        return self.images.nbytes

    def batch(self, idx: Tensor) -> Tensor:
        """``images[idx]`` on the device; ``idx`` (int64) on :attr:`index_device`."""
        if not self.pinned:
            return self.images[idx]
        n = idx.shape[0]
        if not self._buffers or self._buffers[0].shape[0] < n:
            shape = (n, *self.images.shape[1:])
            self._buffers = [torch.empty(shape, dtype=torch.uint8).pin_memory() for _ in range(2)]
            self._events = [None, None]
        k = self._next
        self._next ^= 1
        event = self._events[k]
        if event is not None:
            event.synchronize()  # this buffer's previous copy has finished
        staged = self._buffers[k][:n]
        torch.index_select(self.images, 0, idx, out=staged)
        with torch.cuda.device(self.device):  # the copy and its event on the target device's stream
            out = staged.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
        self._events[k] = event
        return out

    def describe(self) -> str:
        return f"{len(self)} images, {self.nbytes / 2**20:.0f} MiB, in {self.where} memory"
