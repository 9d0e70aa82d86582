"""Fixtures that write small image folders and zips with Pillow."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".gif": "GIF", ".webp": "WEBP"}


def noise_image(mode: str = "RGB", size: tuple[int, int] = (8, 6), seed: int = 0) -> Image.Image:
    """A deterministic random image of ``size`` (width, height)."""
    rng = np.random.default_rng(seed)
    w, h = size
    shape = (h, w) if mode == "L" else (h, w, 3)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))


def write_tree(root: Path, files: dict[str, Image.Image | bytes]) -> Path:
    """Write ``{relative path: image or raw bytes}`` under ``root``; images in the format of the suffix."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            content.save(path, FORMATS.get(path.suffix.lower(), "PNG"))
    return root


def zip_tree(src: Path, dest: Path, prefix: str = "", extra: dict[str, bytes] | None = None) -> Path:
    """Zip every file under ``src`` (with folder entries, in sorted order), optionally under ``prefix``."""
    with zipfile.ZipFile(dest, "w") as zf:
        for path in sorted(src.rglob("*")):
            rel = prefix + path.relative_to(src).as_posix()
            if path.is_dir():
                zf.writestr(rel + "/", b"")
            else:
                zf.write(path, rel)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return dest


@pytest.fixture
def tree(tmp_path: Path) -> Callable[..., Path]:
    """``tree(files, name="data")`` writes an image folder under ``tmp_path`` and returns its path."""

    def make(files: dict[str, Image.Image | bytes], name: str = "data") -> Path:
        return write_tree(tmp_path / name, files)

    return make


@pytest.fixture
def zipped(tmp_path: Path) -> Callable[..., Path]:
    """``zipped(folder, prefix="", extra=None, name="data.zip")`` zips a folder under ``tmp_path``."""

    def make(
        src: Path, prefix: str = "", extra: dict[str, bytes] | None = None, name: str = "data.zip"
    ) -> Path:
        return zip_tree(src, tmp_path / name, prefix, extra)

    return make


@pytest.fixture
def small_files() -> dict[str, Image.Image | bytes]:
    """Three classes of 8x6 images in PNG and JPEG, a test split with two of them."""
    files: dict[str, Image.Image | bytes] = {}
    for i in range(3):
        files[f"train/cat/{i}.png"] = noise_image(seed=i)
    for i in range(2):
        files[f"train/dog/{i}.jpg"] = noise_image(seed=10 + i)
    for i in range(2):
        files[f"train/eel/{i}.PNG"] = noise_image(seed=20 + i)
    files["test/cat/t0.png"] = noise_image(seed=30)
    files["test/eel/t1.jpeg"] = noise_image(seed=31)
    return files


@pytest.fixture
def noise() -> Callable[..., Image.Image]:
    """``noise(mode="RGB", size=(8, 6), seed=0)``: see :func:`noise_image`."""
    return noise_image
