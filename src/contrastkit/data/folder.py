"""Image folders and zip files laid out as ``train/<class>/*`` (and optionally ``test/<class>/*``).

A zip is read without unpacking: its members are read into memory and decoded with Pillow, in parallel
worker processes for large sets. A single top-level wrapper folder (``cifar10/train/...``) is accepted.
"""

from __future__ import annotations

import gc
import io
import math
import mmap
import multiprocessing
import os
import struct
import sys
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contrastkit.data.dataset import DataSplits, ImageDataset, balanced_indices
from contrastkit.errors import ConfigError, DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "PARALLEL_MIN_IMAGES",
    "ImageFolderListing",
    "has_split_layout",
    "list_image_folder",
    "load_image_files",
    "load_image_folder",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
PARALLEL_MIN_IMAGES = 2000
"""Fewer images than this are decoded in the calling process (starting workers would cost more)."""

_LAYOUT = (
    "expected train/<class>/<image> (and optionally test/<class>/<image>), at the top level or inside "
    "a single top-level folder"
)


@dataclass(frozen=True)
class _Source:
    """Where the images live: ``kind`` is ``"dir"`` or ``"zip"``; ``container`` the folder or zip path."""

    kind: str
    container: str

    def display(self, key: str) -> str:
        """How to name one image in messages: its path, or its path inside the zip."""
        return f"{key!r} in {self.container}" if self.kind == "zip" else repr(key)


@dataclass
class _Split:
    """The (not yet decoded) images of one split: read keys, names and labels, all in the same order."""

    keys: list[str]
    names: list[str]
    labels: list[int]


def _hidden(parts: Iterable[str]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _check_options(image_size: int | None, limit: int | None, workers: int | None) -> None:
    for opt, value in (("image_size", image_size), ("limit", limit)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ConfigError(f"{opt} must be a positive integer or None, got {value!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise ConfigError(f"workers must be an integer >= 0 or None, got {workers!r}")


@dataclass
class ImageFolderListing:
    """What :func:`list_image_folder` found: where the images are, the class names, and per split
    (``"train"``, ``"test"`` when present) the images' read keys, names and labels."""

    source: _Source
    classes: list[str]
    splits: dict[str, _Split]


# ---------------------------------------------------------------------------------------------- listing


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise DataError(
            f"{path} is not a valid zip file ({e}); re-create the zip or pass the unpacked folder instead"
        ) from e
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}; check the file and its permissions") from e


def _list_zip(path: Path) -> tuple[str, list[str]]:
    """The data root prefix inside the zip (``""`` or ``"wrapper/"``) and all visible member names."""
    with _open_zip(path) as zf:
        names = [n for n in zf.namelist() if not _hidden(n.split("/"))]
    if any(n.startswith("train/") for n in names):
        return "", names
    with_train = sorted({parts[0] for parts in (n.split("/", 2) for n in names) if parts[1:2] == ["train"]})
    with_train = [w for w in with_train if w and any(n.startswith(f"{w}/train/") for n in names)]
    if len(with_train) == 1:
        return with_train[0] + "/", names
    tops = sorted({n.split("/", 1)[0] + ("/" if "/" in n else "") for n in names})
    raise _no_train(path, tops, len(with_train))


def _no_train(path: Path, tops: Sequence[str], n_wrappers: int) -> DataError:
    if not tops:
        return DataError(f"{path} is empty; {_LAYOUT}")
    found = ", ".join(tops[:8]) + (", ..." if len(tops) > 8 else "")
    extra = ""
    if n_wrappers > 1:
        extra = f" ({n_wrappers} top-level folders contain a train/ folder; keep only one)"
    elif path.name == "train":
        extra = " (this looks like the train/ folder itself: pass the folder that contains it)"
    return DataError(f"no train/ folder in {path}{extra}; {_LAYOUT}; found: {found}")


def _dir_root(path: Path) -> str:
    """The data root prefix inside the folder: ``""`` or ``"wrapper/"``."""
    if (path / "train").is_dir():
        return ""
    try:
        entries = sorted(e for e in os.listdir(path) if not _hidden([e]))
    except OSError as e:
        raise DataError(f"cannot list {path}: {e}; check the folder and its permissions") from e
    with_train = [e for e in entries if (path / e / "train").is_dir()]
    if len(with_train) == 1:
        return with_train[0] + "/"
    tops = [e + "/" if (path / e).is_dir() else e for e in entries]
    raise _no_train(path, tops, len(with_train))


def _walk(folder: Path) -> Iterator[str]:
    """Relative POSIX paths of the visible files (and of folders, with a trailing slash) under ``folder``.

    Symbolic links to folders are followed; one that leads to a folder already read (a link loop such as
    ``up -> ..``, or two links to one folder) is a :class:`DataError`: ``os.walk`` would read its images
    again and again, about 40 levels deep for a loop."""
    seen = {os.path.realpath(folder)}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not _hidden([d]))
        for d in dirnames:
            real = os.path.realpath(os.path.join(dirpath, d))
            if real in seen:
                raise DataError(
                    f"{os.path.join(dirpath, d)!r} leads to {real!r}, a folder already read (a symbolic link "
                    "loop, or two links to one folder): its images would be read again; remove the link"
                )
            seen.add(real)
        rel = Path(dirpath).relative_to(folder).as_posix()
        prefix = "" if rel == "." else rel + "/"
        if prefix:
            yield prefix
        for f in filenames:
            if not _hidden([f]):
                yield prefix + f


def _split_members(
    source: _Source, root: str, split: str, zip_names: list[str] | None
) -> tuple[bool, list[str]]:
    """Whether ``split/`` exists, and the entries under it relative to it (folders end with a slash)."""
    if zip_names is not None:
        start = f"{root}{split}/"
        rel = [n[len(start) :] for n in zip_names if n.startswith(start)]
        return bool(rel), [r for r in rel if r]
    folder = Path(source.container) / root / split
    if not folder.is_dir():
        return False, []
    return True, list(_walk(folder))


def _group(entries: list[str]) -> tuple[dict[str, list[str]], list[str], set[str]]:
    """Images per class folder (sorted), images outside any class folder, and all class folder names."""
    by_class: dict[str, list[str]] = {}
    loose: list[str] = []
    folders: set[str] = set()
    for rel in entries:
        head, sep, _ = rel.partition("/")
        if sep:
            folders.add(head)
        if rel.endswith("/") or not _is_image(rel):
            continue
        if sep:
            by_class.setdefault(head, []).append(rel)
        else:
            loose.append(rel)
    return {c: sorted(v) for c, v in sorted(by_class.items())}, sorted(loose), folders


def _skipped_files_warning(
    path: Path,
    split: str,
    entries: list[str],
    grouped: tuple[dict[str, list[str]], list[str], set[str]],
) -> str | None:
    """What the listing of ``split/`` leaves out without an error, in words (None when nothing is): files
    that are not images by extension, images outside the class folders, class folders without images.
    Hidden files (``.*``, ``__MACOSX``) are left out silently. ``grouped`` is :func:`_group` of ``entries``."""
    by_class, loose, folders = grouped
    others = [e for e in entries if not e.endswith("/") and not _is_image(e)]
    empty = sorted(folders - set(by_class))
    parts = []
    if others:
        exts = sorted({Path(e).suffix.lower() or "(none)" for e in others})
        parts.append(
            f"{len(others)} file(s) that are not images by their extension ({', '.join(exts[:6])}"
            f"{', ...' if len(exts) > 6 else ''}; e.g. {others[0]!r}; read are {', '.join(IMAGE_EXTENSIONS)})"
        )
    if loose and by_class:
        parts.append(f"{len(loose)} image(s) outside the class folders (e.g. {loose[0]!r})")
    if empty:
        parts.append(f"{len(empty)} class folder(s) without images ({', '.join(empty[:5])})")
    if not parts:
        return None
    return f"{path}: {split}/ has " + "; ".join(parts) + ": they are not used"


def _no_images_error(
    path: Path, split: str, loose: list[str], folders: set[str], n_entries: int
) -> DataError:
    if loose:
        return DataError(
            f"{path}: {split}/ holds {len(loose)} image file(s) (e.g. {loose[0]!r}) but no class folders; "
            f"put them into {split}/<class>/ folders, one folder per class"
        )
    if folders:
        shown = ", ".join(sorted(folders)[:8]) + (", ..." if len(folders) > 8 else "")
        return DataError(
            f"{path}: {split}/ has class folders ({shown}) but no image files "
            f"({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}); add images to them"
        )
    what = "is empty" if n_entries == 0 else "has no class folders and no images"
    return DataError(
        f"{path}: {split}/ {what}; put images into {split}/<class>/ folders, one folder per class"
    )


def _build_split(
    source: _Source, root: str, split: str, by_class: dict[str, list[str]], classes: list[str]
) -> _Split:
    index = {c: i for i, c in enumerate(classes)}
    keys, names, labels = [], [], []
    for cls, rels in by_class.items():
        for rel in rels:
            inner = f"{root}{split}/{rel}"
            keys.append(inner if source.kind == "zip" else str(Path(source.container) / inner))
            names.append(f"{split}/{rel}")
            labels.append(index[cls])
    return _Split(keys, names, labels)


def _limit(split: _Split, limit: int | None, seed: int) -> _Split:
    if limit is None or limit >= len(split.keys):
        return split
    keep = balanced_indices(torch.tensor(split.labels, dtype=torch.int64), limit, seed).tolist()
    return _Split(
        [split.keys[i] for i in keep], [split.names[i] for i in keep], [split.labels[i] for i in keep]
    )


# --------------------------------------------------------------------------------------------- decoding


class _ZipReader:
    """Reads zip members; stored (uncompressed) members are sliced straight out of a memory map of the
    file, which is several times faster than ``ZipFile.read`` for many small images."""

    def __init__(self, container: str, signature: tuple[int, ...]) -> None:
        self.signature = signature  # the file it opened (see _zip_for)
        self.zf = zipfile.ZipFile(container)
        self._file = open(container, "rb")  # closed in close()
        self.mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)

    def read(self, key: str) -> bytes:
        info = self.zf.getinfo(key)
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:  # compressed or encrypted
            return self.zf.read(info)
        h = info.header_offset
        if self.mm[h : h + 4] != b"PK\x03\x04":
            raise zipfile.BadZipFile("bad local file header (the zip is damaged)")
        name_len, extra_len = struct.unpack_from("<HH", self.mm, h + 26)
        start = h + 30 + name_len + extra_len
        data = self.mm[start : start + info.compress_size]
        if len(data) != info.file_size or zlib.crc32(data) != info.CRC:
            raise zipfile.BadZipFile("bad CRC-32 or truncated data (the zip is damaged)")
        return data

    def close(self) -> None:
        self.mm.close()
        self._file.close()
        self.zf.close()


_ZIPS: dict[tuple[int, str], _ZipReader] = {}


def _zip_for(container: str) -> _ZipReader:
    """One open reader per process and zip (a file handle must not be shared with a forked process),
    opened again when the file was replaced or rewritten since (its inode, size or modification time
    differ: a stale central directory would misread every member, and a memory map of a file truncated
    since would crash the process with SIGBUS). One ``stat`` per read: 2.5 µs, against 71 µs to read and
    decode one 32x32 JPEG of the CIFAR-10 zip (measured on the 2-core CI machine)."""
    key = (os.getpid(), container)
    st = os.stat(container)
    signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    reader = _ZIPS.get(key)
    if reader is not None and reader.signature != signature:
        _ZIPS.pop(key).close()
        reader = None
    if reader is None:
        reader = _ZIPS[key] = _ZipReader(container, signature)
    return reader


def _close_zips() -> None:
    for key in [k for k in _ZIPS if k[0] == os.getpid()]:
        _ZIPS.pop(key).close()


def _to_array(img: Any, image_size: int | None) -> np.ndarray:
    """A decoded image as ``uint8`` ``(H, W, 1)`` (grayscale) or ``(H, W, 3)``, resized if asked."""
    from PIL import Image

    mode = img.mode
    if mode in ("1", "L", "LA", "La"):
        img = img if mode == "L" else img.convert("L")
    elif mode.startswith("I") or mode == "F":  # 16/32-bit integer or float grayscale
        # Integer modes are read as 16-bit (Pillow opens 16-bit PNGs as "I" or "I;16"), whatever the content:
        # a rule on the pixel values (max > 255) scaled two files of equal pixels differently. Float
        # images are taken as 0..255.
        a = np.asarray(img).astype(np.float64)
        if mode.startswith("I"):
            a = a * (255.0 / 65535.0)
        img = Image.fromarray(np.rint(a).clip(0, 255).astype(np.uint8))
    elif mode in ("P", "PA") and "transparency" in img.info:
        img = img.convert("RGBA").convert("RGB")
    elif mode != "RGB":
        img = img.convert("RGB")
    if image_size is not None and img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
    w, h = img.size
    return np.frombuffer(img.tobytes(), dtype=np.uint8).reshape(h, w, 1 if img.mode == "L" else 3)


def _reason(e: BaseException) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(e, UnidentifiedImageError):
        return "not a recognised image format (the file is corrupt or not an image)"
    return f"{type(e).__name__}: {e}"


def _decode_chunk(kind: str, container: str, keys: list[str], image_size: int | None) -> tuple[Any, ...]:
    """Decode ``keys``; returns ``("ok", (n, H, W, C) array, all_gray)``, ``("size", key_a, size_a, key_b,
    size_b)`` when two images differ in size, or ``("error", key, reason)`` for the first unreadable file."""
    from PIL import Image

    arrays: list[np.ndarray] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()  # the loop makes no reference cycles; collections would only cost time
    try:
        for key in keys:
            try:
                if kind == "zip":
                    data = _zip_for(container).read(key)
                else:
                    with open(key, "rb") as f:
                        data = f.read()
                img = Image.open(io.BytesIO(data))
                img.load()
                a = _to_array(img, image_size)
            except Exception as e:
                return ("error", key, _reason(e))
            if arrays and a.shape[:2] != arrays[0].shape[:2]:
                h0, w0 = arrays[0].shape[:2]
                h1, w1 = a.shape[:2]
                return ("size", keys[0], (w0, h0), key, (w1, h1))
            arrays.append(a)
    finally:
        if gc_was_enabled:
            gc.enable()
    if not arrays:
        return ("ok", np.zeros((0, 1, 1, 1), dtype=np.uint8), True)
    gray = all(a.shape[2] == 1 for a in arrays)
    h, w = arrays[0].shape[:2]
    out = np.empty((len(arrays), h, w, 1 if gray else 3), dtype=np.uint8)
    for i, a in enumerate(arrays):
        out[i] = a  # a grayscale image broadcasts to 3 channels
    return ("ok", out, gray)


def _cpu_count() -> int:
    """CPUs this process may run on (``os.cpu_count()`` where the affinity mask is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _chunks(keys: list[str], n_chunks: int) -> list[list[str]]:
    size = max(1, math.ceil(len(keys) / n_chunks))
    return [keys[i : i + size] for i in range(0, len(keys), size)]


def _run_chunks(source: _Source, keys: list[str], image_size: int | None, workers: int) -> Iterator[tuple]:
    if not keys:
        return
    if workers <= 1 or len(keys) < PARALLEL_MIN_IMAGES:
        try:
            result = _decode_chunk(source.kind, source.container, keys, image_size)
        finally:
            _close_zips()
        yield result
        return
    # on Linux, fork starts workers without re-importing torch; elsewhere the platform's default is used
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)
    chunks = _chunks(keys, workers * 4)
    pool = ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=ctx)
    try:
        n = len(chunks)
        yield from pool.map(
            _decode_chunk, [source.kind] * n, [source.container] * n, chunks, [image_size] * n
        )
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _decode(
    source: _Source, keys: list[str], sizes: Sequence[int], image_size: int | None, workers: int
) -> list[torch.Tensor]:
    """The images at ``keys`` as one ``uint8`` ``(n, C, H, W)`` tensor per consecutive group of ``sizes``
    images (C = 1 only if all images are grayscale)."""
    parts: list[tuple[int, np.ndarray, bool]] = []
    start = 0
    ref: tuple[str, tuple[int, int]] | None = None
    with closing(_run_chunks(source, keys, image_size, workers)) as results:
        for result in results:
            if result[0] == "error":
                _, key, reason = result
                raise DataError(
                    f"cannot decode image {source.display(key)}: {reason}; remove or replace this file"
                )
            if result[0] == "size":
                _, key_a, size_a, key_b, size_b = result
                raise _size_error(source, key_a, size_a, key_b, size_b)
            _, arr, gray = result
            size = (arr.shape[2], arr.shape[1])
            if ref is None:
                ref = (keys[start], size)
            elif size != ref[1]:
                raise _size_error(source, ref[0], ref[1], keys[start], size)
            parts.append((start, arr, gray))
            start += arr.shape[0]
    channels = 1 if all(gray for _, _, gray in parts) else 3
    h, w = parts[0][1].shape[1:3] if parts else (image_size or 1, image_size or 1)
    outputs, offset = [], 0
    for n in sizes:
        out = np.empty((n, channels, h, w), dtype=np.uint8)
        for begin, arr, _ in parts:  # copy the overlap of [begin, begin + len(arr)) and [offset, offset + n)
            lo, hi = max(begin, offset), min(begin + arr.shape[0], offset + n)
            if lo < hi:
                out[lo - offset : hi - offset] = arr[lo - begin : hi - begin].transpose(0, 3, 1, 2)
        outputs.append(torch.from_numpy(out))
        offset += n
    return outputs


def _size_error(
    source: _Source, key_a: str, size_a: tuple[int, int], key_b: str, size_b: tuple[int, int]
) -> DataError:
    return DataError(
        f"images in {source.container} differ in size: {source.display(key_a)} is {size_a[0]}x{size_a[1]} "
        f"but {source.display(key_b)} is {size_b[0]}x{size_b[1]}; pass --image-size N (image_size=N) to "
        f"resize all images to NxN"
    )


# ------------------------------------------------------------------------------------------------ public


def list_image_folder(
    path: str | os.PathLike[str], *, limit: int | None = None, seed: int = 0
) -> ImageFolderListing:
    """The images of a folder or ``.zip`` laid out as :func:`load_image_folder` expects, listed, not decoded.

    Same layout rules, classes, ``limit`` subsets and errors as :func:`load_image_folder` (which decodes
    this listing); the streaming loader (:mod:`contrastkit.data.stream`) reads the images one by one.
    """
    _check_options(None, limit, None)
    p = Path(path)
    if not p.exists():
        raise DataError(f"data path {str(p)!r} does not exist; pass 'digits' or an image folder or .zip file")
    zip_names: list[str] | None = None
    if p.is_dir():
        source = _Source("dir", str(p))
        root = _dir_root(p)
    elif p.is_file() and p.suffix.lower() == ".zip":
        source = _Source("zip", str(p))
        root, zip_names = _list_zip(p)
    else:
        raise DataError(
            f"data path {str(p)!r} is neither a folder nor a .zip file; pass an image folder or a zip of one "
            f"({_LAYOUT})"
        )

    _, train_entries = _split_members(source, root, "train", zip_names)
    grouped = _group(train_entries)
    by_class, loose, folders = grouped
    if not by_class:
        raise _no_images_error(p, f"{root}train", loose, folders, len(train_entries))
    skipped = [_skipped_files_warning(p, f"{root}train", train_entries, grouped)]
    classes = list(by_class)
    splits = {"train": _build_split(source, root, "train", by_class, classes)}

    has_test, test_entries = _split_members(source, root, "test", zip_names)
    if has_test:
        t_grouped = _group(test_entries)
        t_by_class, t_loose, t_folders = t_grouped
        if not t_by_class and t_loose:
            raise _no_images_error(p, f"{root}test", t_loose, t_folders, len(test_entries))
        t_skipped = _skipped_files_warning(p, f"{root}test", test_entries, t_grouped)
        if t_skipped is not None and not t_by_class:
            t_skipped += "; test/ holds no image, so it is ignored and a share of train is held out instead"
        skipped.append(t_skipped)
        extra = sorted(set(t_by_class) - set(classes))
        if extra:
            raise DataError(
                f"{p}: {root}test/ has class folders that {root}train/ lacks: {', '.join(extra)}; the test "
                f"classes must be among the train classes ({', '.join(classes)}): rename or remove them"
            )
        if t_by_class:
            splits["test"] = _build_split(source, root, "test", t_by_class, classes)

    said = [s for s in skipped if s is not None]
    if said:
        warnings.warn(". ".join(said), UserWarning, stacklevel=2)
    splits = {k: _limit(s, limit, seed) for k, s in splits.items()}
    return ImageFolderListing(source=source, classes=classes, splits=splits)


def load_image_folder(
    path: str | os.PathLike[str],
    *,
    image_size: int | None = None,
    limit: int | None = None,
    seed: int = 0,
    workers: int | None = None,
) -> DataSplits:
    """Load a folder or ``.zip`` laid out as ``train/<class>/*`` and optionally ``test/<class>/*``.

    Classes are the sorted names of train's class folders that hold images; test's classes must be
    among them. Images become RGB unless all are grayscale (then 1 channel). Without ``image_size``
    all images must have the same size; with it they are resized (bicubic) to ``image_size`` squared.
    ``limit`` keeps at most that many images per split, a seeded class-balanced random subset chosen
    before decoding. ``workers`` decoding processes (default: the usable CPUs; 0 or 1: serial; sets
    under :data:`PARALLEL_MIN_IMAGES` images are always decoded serially).
    Without a ``test/`` folder holding images, ``test`` is ``None``. Bad input raises :class:`DataError`.
    """
    _check_options(image_size, limit, workers)
    listing = list_image_folder(path, limit=limit, seed=seed)
    source, classes, splits = listing.source, listing.classes, listing.splits
    keys = [key for s in splits.values() for key in s.keys]
    n_workers = _cpu_count() if workers is None else workers
    images = _decode(source, keys, [len(s.keys) for s in splits.values()], image_size, n_workers)
    datasets = {
        name: ImageDataset(
            images=imgs,
            labels=torch.tensor(s.labels, dtype=torch.int64),
            classes=list(classes),
            names=s.names,
        )
        for (name, s), imgs in zip(splits.items(), images, strict=True)
    }
    return DataSplits(train=datasets["train"], test=datasets.get("test"), name=str(path))


def has_split_layout(path: str | os.PathLike[str]) -> bool:
    """Whether the folder or ``.zip`` at ``path`` has a ``train/`` folder (at the top or in one wrapper)."""
    p = Path(path)
    try:
        if p.is_dir():
            _dir_root(p)
        elif p.is_file() and p.suffix.lower() == ".zip":
            _list_zip(p)
        else:
            return False
    except DataError:
        return False
    return True


def load_image_files(
    path: str | os.PathLike[str], *, image_size: int | None = None, workers: int | None = None
) -> ImageDataset:
    """Every image file in a folder or ``.zip`` (any layout, searched recursively, hidden files skipped).

    ``names`` are the paths relative to the folder (or inside the zip), sorted; labels are -1 and there
    are no classes. ``image_size`` and ``workers`` as in :func:`load_image_folder`.
    """
    _check_options(image_size, None, workers)
    p = Path(path)
    if not p.exists():
        raise DataError(f"data path {str(p)!r} does not exist; pass an image folder or .zip file")
    if p.is_dir():
        source = _Source("dir", str(p))
        names = sorted(rel for rel in _walk(p) if not rel.endswith("/") and _is_image(rel))
        keys = [str(p / rel) for rel in names]
    elif p.is_file() and p.suffix.lower() == ".zip":
        source = _Source("zip", str(p))
        with _open_zip(p) as zf:
            names = sorted(
                n for n in zf.namelist() if not n.endswith("/") and _is_image(n) and not _hidden(n.split("/"))
            )
        keys = list(names)
    else:
        raise DataError(f"data path {str(p)!r} is neither a folder nor a .zip file; pass one of them")
    if not names:
        raise DataError(
            f"{p} holds no image files ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}); check the path"
        )
    n_workers = _cpu_count() if workers is None else workers
    (images,) = _decode(source, keys, [len(keys)], image_size, n_workers)
    return ImageDataset(
        images=images, labels=torch.full((len(names),), -1, dtype=torch.int64), classes=[], names=names
    )
