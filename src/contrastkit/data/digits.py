"""The 1,797 8x8 handwritten digits that ship with scikit-learn (no download needed)."""

from __future__ import annotations

import numpy as np
import torch

from contrastkit.data.dataset import DataSplits, ImageDataset
from contrastkit.errors import ConfigError

__all__ = ["load_digits_splits"]

DIGITS_CLASSES = [str(d) for d in range(10)]


def load_digits_splits(test_fraction: float = 0.25, seed: int = 0) -> DataSplits:
    """scikit-learn's digits as ``uint8`` ``(N, 1, 8, 8)`` images (0..16 scaled to 0..255), split into
    train and test stratified by label (``train_test_split(stratify=labels, random_state=seed)``).

    ``test_fraction=0`` gives all images as train and no test split.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0 <= test_fraction < 1:
        raise ConfigError(f"test_fraction must be in [0, 1), got {test_fraction}")
    bunch = load_digits()
    values = np.asarray(bunch.images, dtype=np.float64)  # (N, 8, 8), 0..16
    images = np.round(values * 255.0 / 16.0).clip(0, 255).astype(np.uint8)[:, None]
    labels = np.asarray(bunch.target, dtype=np.int64)
    names = [f"digits/{i:04d}" for i in range(len(labels))]
    full = ImageDataset(
        images=torch.from_numpy(np.ascontiguousarray(images)),
        labels=torch.from_numpy(labels),
        classes=list(DIGITS_CLASSES),
        names=names,
    )
    if test_fraction == 0:
        return DataSplits(train=full, test=None, name="digits")
    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)
    return DataSplits(
        train=full.subset(torch.from_numpy(np.sort(train_idx))),
        test=full.subset(torch.from_numpy(np.sort(test_idx))),
        name="digits",
    )
