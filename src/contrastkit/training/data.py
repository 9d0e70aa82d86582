"""The training data as the loop sees it: batches of ``uint8`` images on the device, by dataset index.

``--data-placement`` chooses how batches are made (see :mod:`contrastkit.data.placement` and
:mod:`contrastkit.data.stream`):

- ``auto`` / ``device`` / ``host``: the data set is decoded once into memory; its images stay on the GPU
  (a batch is one index operation there) or, when they do not fit, in host memory (a batch is
  gathered on the host and copied asynchronously). ``auto`` decides by the device's free memory. In host
  memory on a GPU the kNN monitor uses a class-balanced subset (seeded by ``--split-seed``) of at most
  ``--knn-images`` images per split (its features are float32 on the device: four times the images' own
  size).
- ``stream``: images are read from the folder or zip one by one in ``DataLoader`` worker processes, for
  data sets larger than memory; batches are pinned and copied asynchronously, and the augmentation still
  runs on the device. The kNN monitor (and the normalisation statistics) then use a decoded,
  class-balanced subset (seeded by ``--split-seed``) of at most ``--knn-images`` train and test images.

Either way the loop draws one shuffled order per epoch and asks for the batches of that order from a given
batch on, so an interrupted run resumes with exactly the batches it would have seen.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from contrastkit.data import DataSplits, balanced_indices, channel_stats
from contrastkit.data.folder import _dir_root, _list_zip
from contrastkit.data.placement import ResidentImages
from contrastkit.data.stream import ImageFileDataset, batch_loader, default_workers, stream_image_folder
from contrastkit.errors import ConfigError, ContrastkitError
from contrastkit.training.checkpoint import write_atomic
from contrastkit.training.config import TrainConfig

HELD_OUT_FRACTION = 0.2


@dataclass
class TrainingData:
    """Batches for the loop (:meth:`epoch_batches`) and decoded images for the kNN monitor (``knn_splits``)."""

    knn_splits: DataSplits
    eval_note: str
    labels: Tensor  # (N_train,) int64, the labels of every training image (dataset index order)
    image_shape: tuple[int, int, int]
    stats: tuple[tuple[float, ...], tuple[float, ...]]  # per-channel mean and std of the training images
    resident: ResidentImages | None = None
    stream: ImageFileDataset | None = None
    workers: int | None = None
    names: list[str] | None = None  # the training images' names (file paths in the folder or zip), if known
    source: str | None = None  # the folder or .zip the names are in (None: the embedded digits)
    knn_images: int | None = None  # the --knn-images cap of the kNN monitor's subsets (None: every image)
    eval_names: list[str] | None = None  # every eval image's name (the whole split, not the kNN subset)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint keeps to tell whether a resume sees the same training data: the number of
        training items, their shape, (when the names are known) a SHA-256 of their sorted names and (for a
        folder or zip) a SHA-256 of their contents' records (:func:`contents_fingerprint`). The saved epoch
        order indexes the items, so a resume on other data would train on other batches.

        The records cost no read of the images: for a ``.zip`` each member's CRC-32 and size from the
        central directory (a replaced image is noticed whenever its bytes differ), for a folder each file's
        size (``stat``; a replacement of the same size in a folder is *not* noticed). The embedded digits
        are fixed and get no contents record. The eval images (the whole eval split) are counted and their
        names hashed too: the kNN points before a stop and the random-init and raw-pixel references were
        measured on them."""
        found: dict[str, Any] = {"train_items": len(self), "image_shape": [int(d) for d in self.image_shape]}
        if self.names is not None:
            digest = hashlib.sha256("\n".join(sorted(self.names)).encode("utf-8", "surrogateescape"))
            found["names_sha256"] = digest.hexdigest()
            if self.source is not None:
                found.update(contents_fingerprint(self.source, self.names))
        if self.eval_names is not None:  # the whole eval split, whichever subset the kNN monitor takes
            found["eval_items"] = len(self.eval_names)
            digest = hashlib.sha256("\n".join(sorted(self.eval_names)).encode("utf-8", "surrogateescape"))
            found["eval_names_sha256"] = digest.hexdigest()
        return found

    @property
    def where(self) -> str:
        if self.stream is not None:
            return f"streamed from {self.stream.source.container}"
        assert self.resident is not None
        return f"{self.resident.where} memory"

    def fetch(self, idx: Tensor) -> Tensor:
        """The training images at dataset indices ``idx`` (on the device), as ``uint8`` on the device."""
        if self.resident is None:
            raise ConfigError(
                "re-encoding training items needs the images in memory: use --data-placement auto"
            )
        return self.resident.batch(idx.to(self.resident.index_device))

    def epoch_batches(
        self, order: Tensor, start: int, batch_size: int, rows: slice, device: torch.device
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """``(indices on device, uint8 images on device)`` of batches ``start, start + 1, ...`` of ``order``
        (a permutation of the training set on ``device``); ``rows`` selects this process's shard."""
        if self.stream is not None:
            loader = batch_loader(
                self.stream,
                order.cpu(),
                batch_size,
                start_batch=start,
                rows=rows,
                workers=self.workers,
                pin_memory=device.type == "cuda",
            )
            for images, _, idx in loader:
                yield idx.to(device, non_blocking=True), images.to(device, non_blocking=True)
            return
        assert self.resident is not None
        source = order if self.resident.index_device == order.device else order.to(self.resident.index_device)
        for i in range(start, len(order) // batch_size):
            idx = order[i * batch_size : (i + 1) * batch_size][rows]
            yield idx, self.resident.batch(source[i * batch_size : (i + 1) * batch_size][rows])


def contents_records(source: str | os.PathLike[str], names: Iterable[str]) -> tuple[dict[str, str], str]:
    """One record line per image of ``names`` in ``source``, ``name, CRC-32, size`` (a ``.zip``: from its
    central directory) or ``name, size`` (a folder: one ``stat`` per file, no read), and which of the two
    it is. A file gone since it was listed gets size -1."""
    path = Path(source)
    records: dict[str, str] = {}
    if path.is_file() and path.suffix.lower() == ".zip":
        root, _ = _list_zip(path)
        with zipfile.ZipFile(path) as zf:
            infos = {info.filename: info for info in zf.infolist()}
        for name in names:
            info = infos.get(root + name)
            records[name] = f"{name}\t{info.CRC:08x}\t{info.file_size}" if info else f"{name}\t-\t-1"
        return records, "zip: name, CRC-32, size"
    root = _dir_root(path)
    for name in names:
        try:
            size = os.stat(path / (root + name)).st_size
        except OSError:
            size = -1
        records[name] = f"{name}\t{size}"
    return records, "folder: name, size (same-size replacements not detected)"


def contents_fingerprint(
    source: str | os.PathLike[str], names: list[str], *, as_recorded: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``contents_sha256``, a SHA-256 over the sorted records of :func:`contents_records` of the images
    ``names`` (relative to the data's root, as the loaders name them) in ``source``, and ``contents``, which
    kind of record it is. A same-size replacement in a folder is not detected. ``as_recorded`` gives some
    images' records as they were earlier (a resume after undecodable images were replaced: the hash the
    run started with, if nothing else changed)."""
    records, basis = contents_records(source, names)
    replaced = as_recorded or {}
    lines = [replaced.get(name, records[name]) for name in sorted(names)]  # one per listed name
    digest = hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape"))
    return {"contents_sha256": digest.hexdigest(), "contents": basis}


UNDECODABLE_NAME = "undecodable.json"


def record_undecodable(run_dir: Path, source: str, name: str, step: int, checkpoint_step: int | None) -> None:
    """Add the record of the streamed image ``name`` of ``source`` (which the run could not decode at step
    ``step``) to ``run_dir/undecodable.json``: its name, size (and CRC-32 in a zip) as the data fingerprint
    counts them, taken now, before it is replaced. A resume applies only the records made after its
    checkpoint (``step`` > the checkpoint's step), so a record already made since the run's latest checkpoint
    (``checkpoint_step``; the file was replaced by another unreadable one, and failed again) is kept: it is
    the one that checkpoint's fingerprint counted. Written atomically; a failed write or a source that cannot
    be listed any more is ignored (the resume then refuses the changed file, as it would without the record).
    Processes that record at once (torchrun ranks) take turns (:func:`_records_locked`): none loses another's
    record."""
    with _records_locked(run_dir / UNDECODABLE_NAME):
        records = undecodable_records(run_dir)
        earlier = records.get(name)
        if earlier is not None and checkpoint_step is not None and earlier["step"] > checkpoint_step:
            return
        try:
            record = contents_records(source, [name])[0][name]
        except (ContrastkitError, OSError):  # the folder or zip itself is gone
            return
        records[name] = {"record": record, "step": step}
        text = json.dumps(records, indent=1, sort_keys=True)
        try:
            write_atomic(run_dir / UNDECODABLE_NAME, lambda f: f.write(text), binary=False)
        except ContrastkitError:
            pass


@contextlib.contextmanager
def _records_locked(path: Path) -> Iterator[None]:
    """Hold the kernel's ``flock`` on the records file ``path`` (created empty when missing, and removed
    again when the block wrote nothing) for the read-modify-write of the block. The write
    renames a new file over ``path``, so a lock taken on the file it replaced is dropped and taken again on
    the current one: the lock always belongs to the file the path names, and no lock file is left beside it.
    Without ``fcntl`` (Windows), or when the file cannot be opened, the block runs unlocked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        yield
        return
    fd = None
    for _ in range(100):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            break
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break  # the file the path names now: locked
        except OSError:
            pass  # renamed away meanwhile
        os.close(fd)
        fd = None
    try:
        yield
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):  # created here and nothing written: not left behind
                if os.fstat(fd).st_size == 0 and os.fstat(fd).st_ino == os.stat(path).st_ino:
                    os.unlink(path)
            os.close(fd)


def undecodable_records(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The run's records of images it could not decode (:func:`record_undecodable`), by name; {} when none
    (or the file is unreadable)."""
    try:
        found = json.loads((run_dir / UNDECODABLE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(found, dict):
        return {}
    return {
        str(k): v
        for k, v in found.items()
        if isinstance(v, dict) and isinstance(v.get("record"), str) and isinstance(v.get("step"), int)
    }


def load_training_data(config: TrainConfig, device: torch.device) -> TrainingData:
    """Load (or list, for ``stream``) the data the config names, placed as ``--data-placement`` says."""
    from contrastkit.training.trainer import load_splits

    if config.data_placement != "stream":
        splits, note = load_splits(config)
        stats = channel_stats(splits.train)  # on the CPU, the same for every placement
        resident = ResidentImages(splits.train.images, device, config.data_placement)
        assert splits.test is not None
        if resident.where == "pinned host":  # too large for the device: the kNN monitor takes a subset
            knn = _knn_subsets(splits, config)
            note += f", kNN on at most {config.knn_images} images per split"
        else:  # one copy: the kNN monitor reads the training images where they are
            splits.train.images = resident.images
            splits.test.images = splits.test.images.to(device)
            knn = splits
        return TrainingData(
            knn_splits=knn,
            eval_note=note,
            labels=splits.train.labels,
            image_shape=splits.train.image_shape,
            stats=stats,
            resident=resident,
            names=list(splits.train.names),
            source=None if config.data == "digits" else config.data,
            knn_images=config.knn_images if knn is not splits else None,
            eval_names=list(splits.test.names),
        )
    streamed = stream_splits(config)
    return TrainingData(
        knn_splits=streamed.subsets,
        eval_note=streamed.split_note + f", kNN on at most {config.knn_images} decoded images per split",
        labels=streamed.train.labels,
        image_shape=streamed.train.image_shape,
        stats=channel_stats(streamed.subsets.train),  # from the decoded subset: no pass over the whole set
        stream=streamed.train,
        workers=streamed.workers,
        names=list(streamed.train.names),
        source=config.data,
        knn_images=config.knn_images,
        eval_names=list(streamed.test.names),
    )


@dataclass
class StreamedSplits:
    """A folder or zip read image by image: both splits, and decoded subsets of them."""

    train: ImageFileDataset
    test: ImageFileDataset
    subsets: DataSplits  # class-balanced (--split-seed), at most --knn-images images per split, decoded
    split_note: str  # "test split", or the held-out share of train
    workers: int  # decoding processes


def stream_splits(config: TrainConfig) -> StreamedSplits:
    """The splits of ``--data-placement stream`` (the hold-out of the in-memory path when there is no test
    split), with decoded ``--knn-images`` subsets for what needs images in memory."""
    if config.data == "digits":
        raise ConfigError(
            "--data-placement stream reads an image folder or zip image by image; the embedded digits are "
            "always in memory: use --data-placement auto"
        )
    if config.image_size is None:
        raise ConfigError(
            "--data-placement stream needs --image-size N: images are resized as they are read, without a "
            "first pass over the data to check their sizes"
        )
    train, test = stream_image_folder(
        config.data,
        image_size=config.image_size,
        limit=config.limit,
        seed=config.split_seed,
        hold_out=HELD_OUT_FRACTION,
    )
    assert test is not None
    has_test = "test" in {n.split("/", 1)[0] for n in test.names}
    note = "test split" if has_test else f"held out {HELD_OUT_FRACTION:.0%} of train (no test/ folder)"
    workers = default_workers() if config.workers is None else config.workers
    cap, seed = config.knn_images, config.split_seed
    subsets = DataSplits(
        train=train.decode(balanced_indices(train.labels, cap, seed), workers=workers),
        test=test.decode(balanced_indices(test.labels, cap, seed), workers=workers),
        name=config.data,
    )
    return StreamedSplits(train=train, test=test, subsets=subsets, split_note=note, workers=workers)


def _knn_subsets(splits: DataSplits, config: TrainConfig) -> DataSplits:
    """Class-balanced subsets of at most ``--knn-images`` images per split (copies), seeded by
    ``--split-seed``."""
    assert splits.test is not None
    cap, seed = config.knn_images, config.split_seed
    return DataSplits(
        train=splits.train.subset(balanced_indices(splits.train.labels, cap, seed)),
        test=splits.test.subset(balanced_indices(splits.test.labels, cap, seed)),
        name=splits.name,
    )
