"""Image folders and zips too large to decode into memory: read image by image through a ``DataLoader``.

:func:`load_image_folder` decodes a whole data set into one ``uint8`` tensor, which is the fast path while
it fits (in device memory, or in pinned host memory: :mod:`contrastkit.data.placement`). For larger sets,
:class:`ImageFileDataset` decodes one image per item, in ``DataLoader`` worker processes, and
:func:`batch_loader` yields the batches of a given shuffled order from a given batch on (so a resumed run
reads exactly the batches it would have read), pinned for an asynchronous copy to the GPU, where the
augmentation runs as on the in-memory path.

Streaming needs a fixed ``image_size`` (images are resized as they are read; there is no pass over the
data to check that they agree). The channel count is decided from the first images: grayscale (1) when
all of the first :data:`PROBE_IMAGES` are grayscale, else RGB (3); a later image of the other kind is
converted (RGB to Pillow's ``L`` luma, or grayscale repeated over 3 channels).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from contrastkit.data.dataset import ImageDataset
from contrastkit.data.folder import ImageFolderListing, _close_zips, _decode_chunk, _Split, list_image_folder
from contrastkit.errors import ConfigError, DataError, UndecodableImageError

PROBE_IMAGES = 32
REPLACE_ADVICE = "replace this file with a readable image (or remove it)"


class ImageFileDataset(Dataset):
    """One split of an image folder or zip; item ``i`` is ``(uint8 (C, S, S) image, int64 label)``."""

    def __init__(self, listing: ImageFolderListing, split: str, image_size: int) -> None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
            raise ConfigError(
                f"streaming images from {listing.source.container} needs a fixed size: pass --image-size N "
                f"(image_size=N, a positive integer), got {image_size!r}"
            )
        if split not in listing.splits:
            raise DataError(f"{listing.source.container} has no {split}/ split with images")
        self.source = listing.source
        self.classes = list(listing.classes)
        part = listing.splits[split]
        self.keys, self.names = list(part.keys), list(part.names)
        self.labels = torch.tensor(part.labels, dtype=torch.int64)
        self.image_size = image_size
        probe = [self._decode(k) for k in self.keys[:PROBE_IMAGES]]
        self.channels = 1 if probe and all(a.shape[2] == 1 for a in probe) else 3
        self._warned_colour = False
        _close_zips()  # worker processes open their own readers

    def _decode(self, key: str) -> np.ndarray:
        result = _decode_chunk(self.source.kind, self.source.container, [key], self.image_size)
        if result[0] == "error":
            _, bad, reason = result
            problem = f"cannot decode image {self.source.display(bad)}: {reason}"
            raise UndecodableImageError(f"{problem}; {REPLACE_ADVICE}", problem=problem)
        return result[1][0]  # (S, S, C)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        image, label, converted = self.load(i)
        if converted:
            self.warn_colour(i)
        return image, label

    def load(self, i: int) -> tuple[Tensor, Tensor, bool]:
        """Image ``i`` as (C, S, S) uint8, its label, and whether a colour image was made grayscale (the
        loaders' workers report it, and the main process warns once: a worker's warning would repeat in
        every worker of every epoch)."""
        a = self._decode(self.keys[i])
        converted = False
        if a.shape[2] != self.channels:
            if self.channels == 3:
                a = np.repeat(a, 3, axis=2)
            else:
                from PIL import Image

                a = np.array(Image.fromarray(a).convert("L"))[:, :, None]  # a writable copy
                converted = True
        return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))), self.labels[i], converted

    def warn_colour(self, i: int) -> None:
        """Warn, once per data set, that colour image ``i`` was converted to the set's grayscale."""
        if self._warned_colour:  # in memory every image is looked at: there it stays RGB
            return
        self._warned_colour = True
        warnings.warn(
            f"image {self.source.display(self.keys[i])} is in colour, but the first {PROBE_IMAGES} images "
            "were all grayscale, so the streamed set is 1-channel: colour images are converted to grayscale "
            "(L); decode in memory (--data-placement auto) to keep RGB",
            UserWarning,
            stacklevel=3,
        )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.channels, self.image_size, self.image_size

    def decode(self, indices: Sequence[int] | Tensor, workers: int = 0) -> ImageDataset:
        """The images at ``indices`` decoded into memory (for the kNN monitor and normalisation statistics)."""
        idx = [int(i) for i in torch.as_tensor(indices).flatten().tolist()]
        if not idx:
            raise DataError("no images to decode: the index list is empty")
        batches = [idx[i : i + 256] for i in range(0, len(idx), 256)]
        loader = _loader(_Indexed(self), batches, _collate_indexed, workers)
        images, labels, _ = zip(*_clean_errors(loader, self), strict=True)
        return ImageDataset(
            images=torch.cat(images),
            labels=torch.cat(labels),
            classes=self.classes,
            names=[self.names[i] for i in idx],
        )


def _context() -> multiprocessing.context.BaseContext:
    # on Linux, fork starts workers without re-importing torch; elsewhere the platform's default is used
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)


def default_workers() -> int:
    """Decoding worker processes: the usable CPUs, minus one for the training loop, at most 16; under
    torchrun the CPUs are shared by the processes of the machine (``LOCAL_WORLD_SIZE``)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    n //= max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(16, n - 1))


def batch_loader(
    dataset: ImageFileDataset,
    order: Tensor,
    batch_size: int,
    *,
    start_batch: int = 0,
    rows: slice = slice(None),
    workers: int | None = None,
    pin_memory: bool = False,
) -> _Batches:
    """Batches ``order[i*B:(i+1)*B][rows]`` for ``i = start_batch, ...`` (full batches only; ``rows``: one
    process's shard of each global batch) as ``(uint8 images, labels, indices)``; decoded by ``workers``
    processes, pinned when asked."""
    if batch_size <= 0 or batch_size > len(dataset):
        raise ConfigError(f"batch size {batch_size} must be in [1, {len(dataset)}] (the images in the split)")
    order = torch.as_tensor(order).cpu()
    n_batches = order.numel() // batch_size
    batches = [
        order[i * batch_size : (i + 1) * batch_size][rows].tolist() for i in range(start_batch, n_batches)
    ]
    workers = default_workers() if workers is None else workers
    return _Batches(_loader(_Indexed(dataset), batches, _collate_indexed, workers, pin_memory), dataset)


def sequential_batches(
    dataset: ImageFileDataset, batch_size: int = 512, *, workers: int | None = None, pin_memory: bool = False
) -> Iterator[tuple[Tensor, Tensor]]:
    """Every image of ``dataset`` in order, as ``(uint8 images, labels)`` batches (the last one may be
    short), decoded by ``workers`` processes: for evaluating a set that is not held in memory."""
    if batch_size <= 0:
        raise ConfigError(f"batch size must be positive, got {batch_size}")
    workers = default_workers() if workers is None else workers
    n = len(dataset)
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    loader = _loader(_Indexed(dataset), batches, _collate_indexed, workers, pin_memory)
    return ((images, labels) for images, labels, _ in _clean_errors(loader, dataset))


def _loader(
    dataset: Dataset, batches: list[list[int]], collate: Any, workers: int, pin_memory: bool = False
) -> DataLoader:
    """A ``DataLoader`` of the given batches of item indices, decoded by ``workers`` processes."""
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers else None,
        multiprocessing_context=_context() if workers else None,
    )


class _Batches:
    """A ``DataLoader`` whose decoding errors keep their own one-line message (not the worker's traceback)."""

    def __init__(self, loader: DataLoader, dataset: ImageFileDataset) -> None:
        self.loader, self.dataset = loader, dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        return _clean_errors(self.loader, self.dataset)


def _clean_errors(
    loader: Iterable[tuple[Tensor, Tensor, Tensor, int]], dataset: ImageFileDataset
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """The batches ``(images, labels, indices)``, decoding errors with their own one-line message, and the
    colour-converted warning given here, in the main process, once per data set."""
    it = iter(loader)
    while True:
        try:
            images, labels, idx, converted = next(it)
        except StopIteration:
            return
        except DataError as exc:  # re-raised by the DataLoader with the worker's traceback in the message
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            raise DataError(lines[-1].removeprefix(f"{DataError.__module__}.DataError: ")) from None
        if isinstance(images, str):  # an undecodable item (see _collate_indexed): its index is ``converted``
            raise UndecodableImageError(
                f"{images}; {REPLACE_ADVICE}", problem=images, index=converted, name=dataset.names[converted]
            )
        if converted >= 0:
            dataset.warn_colour(converted)
        yield images, labels, idx


class _Indexed(Dataset):
    """Items of ``dataset`` with their index, so a batch knows which images it holds."""

    def __init__(self, dataset: ImageFileDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Tensor | str, Tensor | None, int, bool]:
        try:
            image, label, converted = self.dataset.load(i)
        except UndecodableImageError as exc:  # passed on as data: a worker's exception loses its fields
            return exc.problem, None, i, False
        return image, label, i, converted


def _collate_indexed(
    items: list[tuple[Tensor | str, Tensor | None, int, bool]],
) -> tuple[Tensor | str, Tensor | None, Tensor, int]:
    """A batch, its indices, and the first colour-converted item's index (-1: none); for a batch with an
    undecodable item, ``(message, None, indices, that item's index)`` instead."""
    bad = next((item for item in items if isinstance(item[0], str)), None)
    if bad is not None:
        return bad[0], None, torch.tensor([item[2] for item in items], dtype=torch.int64), bad[2]
    images, labels, idx, converted = zip(*items, strict=True)
    first = next((i for i, c in zip(idx, converted, strict=True) if c), -1)
    return torch.stack(images), torch.stack(labels), torch.tensor(idx, dtype=torch.int64), first


def stream_image_folder(
    path: str | os.PathLike[str],
    *,
    image_size: int,
    limit: int | None = None,
    seed: int = 0,
    hold_out: float = 0.0,
) -> tuple[ImageFileDataset, ImageFileDataset | None]:
    """The train split (and the test split, when there is one) of a folder or zip, for streaming.

    Without a ``test/`` split and with ``hold_out > 0``, a stratified, seeded share ``hold_out`` of train
    becomes the test split (as the in-memory trainer holds out part of train for its kNN evaluation).
    """
    listing = list_image_folder(path, limit=limit, seed=seed)
    if "test" not in listing.splits and hold_out > 0:
        listing = _hold_out(listing, hold_out, seed)
    train = ImageFileDataset(listing, "train", image_size)
    test = ImageFileDataset(listing, "test", image_size) if "test" in listing.splits else None
    if test is not None and test.channels != train.channels:
        test.channels = train.channels
    return train, test


def _hold_out(listing: ImageFolderListing, fraction: float, seed: int) -> ImageFolderListing:
    from contrastkit.data.dataset import held_out_indices

    part = listing.splits["train"]
    keep, held = held_out_indices(part.labels, fraction, seed, what=listing.source.container)

    def take(rows: np.ndarray) -> _Split:
        rows = np.sort(rows)
        return _Split(
            [part.keys[i] for i in rows], [part.names[i] for i in rows], [part.labels[i] for i in rows]
        )

    return ImageFolderListing(listing.source, listing.classes, {"train": take(keep), "test": take(held)})
