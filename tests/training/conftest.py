"""Fixtures of the training tests: small image folders on disk, from the embedded digits."""

from pathlib import Path

import pytest


def digit_folder(root: Path, limit: int = 60, class_name: str | None = None) -> Path:
    """``limit`` digit images as PNG files under ``root/train/<class>/`` (no test/: 20% held out); all in
    one class folder ``class_name`` when given."""
    from PIL import Image

    from contrastkit.data import load_dataset

    digits = load_dataset("digits", limit=limit).train
    for i, (img, label) in enumerate(zip(digits.images, digits.labels.tolist(), strict=True)):
        (root / "train" / (class_name or str(label))).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0].numpy()).save(root / "train" / (class_name or str(label)) / f"{i:03d}.png")
    return root


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """60 digit images as PNG files under imgs/train/<class>/."""
    return digit_folder(tmp_path / "imgs")
