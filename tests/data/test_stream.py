"""Streaming image folders and zips: the same images as the in-memory loader, the batches of a given
order from a given batch on, clear errors."""

import zipfile
from pathlib import Path

import pytest
import torch

from contrastkit.data import load_image_folder
from contrastkit.data.folder import list_image_folder
from contrastkit.data.stream import ImageFileDataset, batch_loader, stream_image_folder
from contrastkit.errors import ConfigError, DataError, UndecodableImageError

from .conftest import noise_image, write_tree, zip_tree

REPO_ROOT = Path(__file__).resolve().parents[2]
CIFAR_ZIP = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip"


def folder(root: Path, gray_extra: bool = False) -> Path:
    files = {}
    for c in ("cat", "dog", "eel"):
        for i in range(7):
            size = (12, 10) if i % 2 else (9, 9)  # mixed sizes: streaming resizes as it reads
            files[f"train/{c}/{i}.png"] = noise_image("RGB", size, seed=hash((c, i)) % 1000)
        files[f"test/{c}/t.png"] = noise_image("RGB", (9, 9), seed=7)
    if gray_extra:
        files["train/eel/gray.png"] = noise_image("L", (9, 9), seed=3)
    return write_tree(root, files)


@pytest.mark.parametrize("as_zip", [False, True])
def test_streamed_images_equal_the_in_memory_loader(tmp_path, as_zip):
    path = folder(tmp_path / "d", gray_extra=True)
    if as_zip:
        path = zip_tree(path, tmp_path / "d.zip")
    train, test = stream_image_folder(path, image_size=8)
    ref = load_image_folder(path, image_size=8, workers=0)
    assert train.names == ref.train.names and test.names == ref.test.names
    assert train.image_shape == ref.train.image_shape == (3, 8, 8)
    for i in range(len(train)):
        image, label = train[i]
        assert torch.equal(image, ref.train.images[i]) and int(label) == int(ref.train.labels[i])
    decoded = train.decode([5, 0, 3])
    assert torch.equal(decoded.images, ref.train.images[[5, 0, 3]]) and decoded.names == [
        ref.train.names[i] for i in (5, 0, 3)
    ]


@pytest.mark.parametrize("workers", [0, 2])
def test_batch_loader_yields_the_order_from_the_start_batch(tmp_path, workers):
    train, _ = stream_image_folder(folder(tmp_path / "d"), image_size=8)
    ref = load_image_folder(tmp_path / "d", image_size=8, workers=0).train
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    batches = list(batch_loader(train, order, 4, start_batch=2, workers=workers))
    assert len(batches) == len(train) // 4 - 2  # full batches only
    for b, (images, labels, idx) in enumerate(batches, start=2):
        expected = order[b * 4 : (b + 1) * 4]
        assert torch.equal(idx, expected)
        assert torch.equal(images, ref.images[expected]) and torch.equal(labels, ref.labels[expected])


def test_rows_take_one_shard_and_hold_out_splits_train(tmp_path):
    path = folder(tmp_path / "d")
    train, _ = stream_image_folder(path, image_size=8)
    order = torch.arange(len(train))
    shards = [list(batch_loader(train, order, 6, rows=slice(r * 3, (r + 1) * 3), workers=0)) for r in (0, 1)]
    for b in range(len(train) // 6):
        assert torch.equal(torch.cat([shards[0][b][2], shards[1][b][2]]), order[b * 6 : (b + 1) * 6])
    (path / "test").rename(tmp_path / "moved")  # no test/ split: hold out a stratified share of train
    kept, held = stream_image_folder(path, image_size=8, hold_out=0.3, seed=0)
    assert len(kept) == 14 and len(held) == 7
    assert sorted(torch.bincount(held.labels).tolist()) == [2, 2, 3]  # stratified
    assert not set(kept.names) & set(held.names) and held.classes == kept.classes


def test_grayscale_set_stays_one_channel(tmp_path):
    files = {f"train/{c}/{i}.png": noise_image("L", (9, 9), seed=i) for c in "ab" for i in range(3)}
    train, test = stream_image_folder(write_tree(tmp_path / "g", files), image_size=9)
    assert test is None and train.image_shape == (1, 9, 9) and train[0][0].shape == (1, 9, 9)


def test_a_colour_image_after_the_grayscale_probe_is_converted_with_a_warning(tmp_path, monkeypatch):
    from contrastkit.data import stream

    monkeypatch.setattr(stream, "PROBE_IMAGES", 2)
    files = {f"train/a/{i}.png": noise_image("L", (9, 9), seed=i) for i in range(2)}
    files["train/b/0.png"] = noise_image("RGB", (9, 9), seed=5)
    train, _ = stream_image_folder(write_tree(tmp_path / "g", files), image_size=9)
    with pytest.warns(UserWarning, match=r"0\.png.* is in colour, but the first 2 images were all grayscale"):
        image, _ = train[train.names.index("train/b/0.png")]
    assert image.shape == (1, 9, 9)


def test_the_colour_warning_comes_once_from_the_main_process_across_workers_and_epochs(tmp_path, monkeypatch):
    """Workers report converted images and the main process warns once per data set (a worker's own warning
    repeated in every worker of every epoch, and for every evaluation pass)."""
    import warnings

    from contrastkit.data import stream
    from contrastkit.data.stream import sequential_batches

    monkeypatch.setattr(stream, "PROBE_IMAGES", 2)
    files = {f"train/a/{i}.png": noise_image("L", (9, 9), seed=i) for i in range(2)}
    files.update({f"train/b/{i}.png": noise_image("RGB", (9, 9), seed=5 + i) for i in range(4)})
    train, _ = stream_image_folder(write_tree(tmp_path / "g", files), image_size=9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch in range(2):
            batches = list(
                batch_loader(
                    train, torch.randperm(6, generator=torch.Generator().manual_seed(epoch)), 2, workers=2
                )
            )
            assert all(images.shape == (2, 1, 9, 9) for images, _, _ in batches)
        assert [images.shape[1] for images, _ in sequential_batches(train, 3, workers=2)] == [1, 1]
    colour = [w for w in caught if "is in colour" in str(w.message)]
    assert len(colour) == 1 and "train/b/" in str(colour[0].message)


def test_errors_name_the_problem(tmp_path):
    path = folder(tmp_path / "d")
    listing = list_image_folder(path)
    with pytest.raises(ConfigError, match="needs a fixed size: pass --image-size N"):
        ImageFileDataset(listing, "train", None)
    train, _ = stream_image_folder(path, image_size=8)
    (path / "train" / "cat" / "3.png").write_bytes(b"not an image")  # corrupted after the listing
    bad = train.names.index("train/cat/3.png")
    with pytest.raises(DataError, match=r"cannot decode image .*3\.png.*replace this file .*or remove it"):
        train[bad]
    for workers in (0, 1):  # in this process, in a worker: one line, and which item it is
        with pytest.raises(
            UndecodableImageError, match=r"^cannot decode image .*3\.png.*or remove it\)$"
        ) as e:
            list(batch_loader(train, torch.arange(len(train)), 4, workers=workers))
        assert (e.value.index, e.value.name) == (bad, "train/cat/3.png")
        assert e.value.problem.startswith("cannot decode image") and "replace" not in e.value.problem
    with pytest.raises(ConfigError, match=r"batch size 99 must be in \[1, 21\]"):
        batch_loader(train, torch.arange(len(train)), 99)
    with pytest.raises(DataError, match=r"cannot decode image .*3\.png"):  # the first images are probed
        stream_image_folder(path, image_size=8)


@pytest.mark.skipif(not CIFAR_ZIP.is_file(), reason="needs ../shared/data/cifar10-jpeg.zip")
def test_cifar10_zip_streams_like_the_loader():
    train, test = stream_image_folder(CIFAR_ZIP, image_size=32, limit=40, seed=1)
    ref = load_image_folder(CIFAR_ZIP, image_size=32, limit=40, seed=1, workers=0)
    assert len(train) == len(test) == 40 and train.classes == ref.train.classes
    batch = next(iter(batch_loader(train, torch.arange(40), 20, workers=2)))
    assert torch.equal(batch[0], ref.train.images[:20])


def test_a_zip_rewritten_in_place_is_read_anew(tmp_path):
    """The process's open reader of a zip (kept between runs: workers=0 decodes in this process) notices
    that the file was rewritten and opens it again: its stale central directory misread the new members
    ('bad CRC-32 or truncated data'), and a memory map of a file truncated since could crash with SIGBUS."""
    src = folder(tmp_path / "a")
    data = zip_tree(src, tmp_path / "d.zip")
    before, _ = stream_image_folder(data, image_size=8)
    pixels = [before[i][0].clone() for i in range(len(before))]
    with zipfile.ZipFile(data, "w") as zf:  # the same images, each moved by a member written first
        zf.writestr("padding.bin", bytes(5000))
        for path in sorted(src.rglob("*.png")):
            zf.write(path, path.relative_to(src).as_posix())
    after, _ = stream_image_folder(data, image_size=8)
    assert after.names == before.names
    assert all(torch.equal(after[i][0], pixels[i]) for i in range(len(after)))
