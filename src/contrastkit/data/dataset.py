"""In-memory image data sets: ``uint8`` tensors plus labels, class names and per-image names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from contrastkit.errors import DataError

__all__ = ["MIN_STD", "DataSplits", "ImageDataset", "balanced_indices", "channel_stats", "resize_images"]

MIN_STD = 1.0 / 255.0
"""Floor of :func:`channel_stats`' standard deviations (one grey level), so constant channels do not
divide by zero when normalised."""


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"a {type(x).__name__}"


@dataclass
class ImageDataset:
    """Images with labels: ``images`` ``uint8`` ``(N, C, H, W)``, C in {1, 3}; ``labels`` ``int64`` ``(N,)``,
    -1 when unknown; ``classes`` the class names (label ``i`` is ``classes[i]``); ``names`` a file name or
    identifier per image.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    names: list[str]

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
            raise DataError(f"images must be a uint8 tensor of shape (N, C, H, W), got {_describe(images)}")
        if images.shape[1] not in (1, 3):
            raise DataError(
                f"images must have 1 (grayscale) or 3 (RGB) channels, got {images.shape[1]} "
                f"(shape {tuple(images.shape)}); convert them to grayscale or RGB"
            )
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.ndim != 1:
            raise DataError(f"labels must be an int64 tensor of shape (N,), got {_describe(labels)}")
        self.classes = [str(c) for c in self.classes]
        self.names = [str(n) for n in self.names]
        n = images.shape[0]
        if labels.shape[0] != n or len(self.names) != n:
            raise DataError(
                f"a data set needs one label and one name per image: got {n} images, "
                f"{labels.shape[0]} labels and {len(self.names)} names"
            )
        if n and (int(labels.min()) < -1 or int(labels.max()) >= len(self.classes)):
            raise DataError(
                f"labels must lie in [-1, {len(self.classes) - 1}] for {len(self.classes)} classes, "
                f"got values from {int(labels.min())} to {int(labels.max())}"
            )
        if not images.is_contiguous():
            self.images = images.contiguous()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, idx: torch.Tensor | Sequence[int]) -> ImageDataset:
        """The images at ``idx`` (integer indices, or a boolean mask of length N), in that order."""
        index = torch.as_tensor(idx)
        if index.dtype == torch.bool:
            if index.shape != (len(self),):
                raise DataError(
                    f"a boolean mask must have length {len(self)}, got shape {tuple(index.shape)}"
                )
            index = index.nonzero().flatten()
        index = index.to(torch.int64).flatten()
        positions = index.tolist()
        return ImageDataset(
            images=self.images[index].contiguous(),
            labels=self.labels[index].clone(),
            classes=list(self.classes),
            names=[self.names[i] for i in positions],
        )


@dataclass
class DataSplits:
    """A training set, an optional test set with the same classes and image shape, and the data's name."""

    train: ImageDataset
    test: ImageDataset | None
    name: str

    def __post_init__(self) -> None:
        if self.test is None:
            return
        if self.test.classes != self.train.classes:
            raise DataError(
                f"{self.name}: the test split's classes {self.test.classes} differ from train's "
                f"{self.train.classes}; both splits must use the same class list"
            )
        if len(self.test) and len(self.train) and self.test.image_shape != self.train.image_shape:
            raise DataError(
                f"{self.name}: test images are {self.test.image_shape} (C, H, W) but train images are "
                f"{self.train.image_shape}; pass --image-size to give both the same size"
            )


def channel_stats(ds: ImageDataset, chunk_size: int = 1024) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of ``images / 255`` over the whole data set.

    Sums are accumulated in float64, ``chunk_size`` images at a time, so memory stays small. Standard
    deviations are floored at :data:`MIN_STD` so a constant channel can still be normalised.
    """
    if len(ds) == 0:
        raise DataError("cannot compute channel statistics of an empty data set; check the data and --limit")
    c = ds.images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, len(ds), chunk_size):
        x = ds.images[start : start + chunk_size].to(torch.float64)
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
    count = float(ds.images.numel() // c)
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0.0)
    std = var.sqrt()
    mean_01 = tuple(float(m) / 255.0 for m in mean)
    std_01 = tuple(max(float(s) / 255.0, MIN_STD) for s in std)
    return mean_01, std_01


def balanced_indices(labels: torch.Tensor | Sequence[int], limit: int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of at most ``limit`` items, drawn at random (seeded) and class-balanced.

    Every class gets ``limit // n_classes`` items where it has that many; what small classes cannot
    use goes to the others, and the last few places go to randomly chosen classes. Unknown labels (-1)
    count as one more class. With ``limit >= len(labels)`` all indices are returned.
    """
    y = np.asarray(torch.as_tensor(labels).cpu().numpy()).reshape(-1)
    n = y.shape[0]
    if limit >= n:
        return torch.arange(n, dtype=torch.int64)
    rng = np.random.default_rng(seed)
    _, groups = np.unique(y, return_inverse=True)
    groups = groups.reshape(-1)
    counts = np.bincount(groups)
    take = np.zeros_like(counts)
    remaining = int(limit)
    while remaining > 0:
        open_ = np.flatnonzero(take < counts)
        share = remaining // len(open_)
        if share == 0:
            chosen = rng.choice(open_, size=remaining, replace=False)
            take[chosen] += 1
            break
        add = np.minimum(share, counts[open_] - take[open_])
        take[open_] += add
        remaining -= int(add.sum())
    picked = [
        rng.choice(np.flatnonzero(groups == g), size=int(k), replace=False)
        for g, k in enumerate(take)
        if k > 0
    ]
    chosen_idx = np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)
    return torch.from_numpy(chosen_idx.astype(np.int64))


def held_out_indices(
    labels: np.ndarray | Sequence[int], fraction: float, seed: int, *, what: str = "the data"
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (kept, held-out) row indices holding out ``fraction`` of ``labels`` (scikit-learn's
    ``train_test_split``, in its order), for a data set without a test split.

    Stratified when it can be: every class has 2 items and both sides can hold one item of each class;
    otherwise (tiny data: 20 images of 10 classes hold out 4) a plain seeded split. Fewer than 2 items, or a
    share that would hold out every item, is a :class:`DataError` naming ``what``. ``contrastkit train``
    seeds it with ``--split-seed``."""
    import math

    from sklearn.model_selection import train_test_split

    y = np.asarray(labels)
    n = len(y)
    n_held = math.ceil(fraction * n)  # what train_test_split holds out
    if n < 2 or n_held >= n:
        raise DataError(
            f"{what} has no test split and {n} labelled item(s): holding out {fraction:.0%} for evaluation needs "
            "at least 2; add items (or a test/ folder), or raise --limit"
        )
    counts = np.bincount(y)
    counts = counts[counts > 0]
    stratifiable = counts.min() >= 2 and min(n_held, n - n_held) >= len(counts)
    keep, held = train_test_split(
        np.arange(n), test_size=fraction, random_state=seed, stratify=y if stratifiable else None
    )
    return keep, held


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``uint8`` ``(N, C, H, W)`` images to ``size`` x ``size`` with Pillow's bicubic filter."""
    from PIL import Image

    n, c, h, w = images.shape
    if (h, w) == (size, size):
        return images
    out = np.empty((n, size, size, c), dtype=np.uint8)
    src = images.permute(0, 2, 3, 1).numpy()
    for i in range(n):
        pic = Image.fromarray(np.ascontiguousarray(src[i, :, :, 0] if c == 1 else src[i]))
        arr = np.asarray(pic.resize((size, size), Image.Resampling.BICUBIC))
        out[i] = arr.reshape(size, size, c)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
