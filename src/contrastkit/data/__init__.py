"""Data sets as in-memory ``uint8`` image tensors: scikit-learn's digits, image folders and zips of them.

``load_dataset("digits")`` or ``load_dataset("path/to/folder-or.zip")`` returns :class:`DataSplits`
(train and optional test :class:`ImageDataset`); :func:`channel_stats` gives normalisation statistics.
"""

from __future__ import annotations

from contrastkit.data.dataset import (
    MIN_STD,
    DataSplits,
    ImageDataset,
    balanced_indices,
    channel_stats,
    resize_images,
)
from contrastkit.data.digits import load_digits_splits
from contrastkit.data.folder import IMAGE_EXTENSIONS, has_split_layout, load_image_files, load_image_folder
from contrastkit.errors import ConfigError

__all__ = [
    "IMAGE_EXTENSIONS",
    "KNOWN_DATASETS",
    "MIN_STD",
    "DataSplits",
    "ImageDataset",
    "balanced_indices",
    "channel_stats",
    "has_split_layout",
    "load_dataset",
    "load_digits_splits",
    "load_image_files",
    "load_image_folder",
    "resize_images",
]

KNOWN_DATASETS = ("digits",)
"""Data set names :func:`load_dataset` knows; anything else is taken as a folder or zip path."""


def load_dataset(
    spec: str, *, image_size: int | None = None, limit: int | None = None, seed: int = 0
) -> DataSplits:
    """Load ``"digits"`` or an image folder / ``.zip`` at path ``spec``.

    ``image_size`` resizes to ``image_size`` squared (bicubic); ``limit`` keeps at most that many images
    per split (seeded, class-balanced); ``seed`` also fixes the digits train/test split. ``contrastkit
    train`` passes its ``--split-seed`` (not ``--seed``), so runs of several seeds share one test set.
    """
    for opt, value in (("image_size", image_size), ("limit", limit)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ConfigError(f"{opt} must be a positive integer or None, got {value!r}")
    if str(spec) != "digits":
        return load_image_folder(spec, image_size=image_size, limit=limit, seed=seed)
    splits = load_digits_splits(seed=seed)
    parts = {"train": splits.train, "test": splits.test}
    for key, ds in parts.items():
        if ds is None:
            continue
        if limit is not None:
            ds = ds.subset(balanced_indices(ds.labels, limit, seed))
        if image_size is not None:
            ds = ImageDataset(resize_images(ds.images, image_size), ds.labels, ds.classes, ds.names)
        parts[key] = ds
    return DataSplits(train=parts["train"], test=parts["test"], name=splits.name)
