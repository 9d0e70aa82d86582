import io
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contrastkit.data import folder as folder_mod
from contrastkit.data import load_dataset, load_image_folder
from contrastkit.errors import ConfigError, DataError

REPO_ROOT = Path(__file__).resolve().parents[2]
CIFAR_ZIP = REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip"


def as_chw(img: Image.Image) -> torch.Tensor:
    a = np.asarray(img)
    a = a[:, :, None] if a.ndim == 2 else a
    return torch.from_numpy(a.copy()).permute(2, 0, 1)


def decoded(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def test_folder_shapes_labels_and_classes(tree, small_files):
    root = tree(small_files)
    s = load_image_folder(root)
    assert s.name == str(root)
    assert s.train.images.shape == (7, 3, 6, 8) and s.train.images.dtype == torch.uint8
    assert s.train.images.is_contiguous()
    assert s.train.classes == ["cat", "dog", "eel"]
    assert s.train.labels.tolist() == [0, 0, 0, 1, 1, 2, 2] and s.train.labels.dtype == torch.int64
    assert s.train.names == [
        "train/cat/0.png",
        "train/cat/1.png",
        "train/cat/2.png",
        "train/dog/0.jpg",
        "train/dog/1.jpg",
        "train/eel/0.PNG",
        "train/eel/1.PNG",
    ]
    assert s.test is not None and s.test.classes == s.train.classes
    assert s.test.labels.tolist() == [0, 2] and s.test.names == ["test/cat/t0.png", "test/eel/t1.jpeg"]
    # pixels are the decoded files, PNG exactly
    for i, name in enumerate(s.train.names):
        assert torch.equal(s.train.images[i], as_chw(decoded(root / name))), name


def test_without_test_folder_test_is_none(tree, noise):
    s = load_image_folder(tree({"train/a/0.png": noise(), "train/b/0.png": noise(seed=1)}))
    assert s.test is None and len(s.train) == 2


def test_empty_test_folder_and_empty_class_folders_are_ignored(tree, noise):
    root = tree({"train/a/0.png": noise(), "train/b/0.png": noise(seed=1), "test/a/notes.txt": b""})
    (root / "train" / "empty").mkdir()
    (root / "test" / "b").mkdir()
    with pytest.warns(UserWarning) as caught:
        s = load_image_folder(root)
    assert s.test is None and s.train.classes == ["a", "b"]
    (message,) = [str(w.message) for w in caught]
    assert "train/ has 1 class folder(s) without images (empty): they are not used" in message
    assert "test/ has 1 file(s) that are not images by their extension (.txt; e.g. 'a/notes.txt'" in message
    assert "test/ holds no image, so it is ignored and a share of train is held out instead" in message


@pytest.mark.parametrize("prefix", ["", "cifar-mini/"])
def test_zip_matches_folder(tree, zipped, small_files, prefix):
    root = tree(small_files)
    extra = {"__MACOSX/train/cat/._0.png": b"junk", f"{prefix}train/cat/.DS_Store": b"junk"}
    z = zipped(root, prefix=prefix, extra=extra)
    a, b = load_image_folder(root), load_image_folder(z)
    assert b.name == str(z)
    for x, y in ((a.train, b.train), (a.test, b.test)):
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
        assert x.names == y.names and x.classes == y.classes


def test_hidden_and_non_image_files_are_ignored(tree, noise):
    root = tree(
        {
            "train/a/0.png": noise(),
            "train/a/.DS_Store": b"\x00\x01",
            "train/a/._0.png": b"resource fork",
            "train/a/notes.txt": b"hello",
            "train/.hidden/0.png": noise(seed=1),
            "train/README.md": b"# data",
            "train/b/sub/1.png": noise(seed=2),
            "__MACOSX/train/a/._0.png": b"junk",
        }
    )
    with pytest.warns(UserWarning, match=r"train/ has 2 file\(s\) that are not images.*\(\.md, \.txt;") as w:
        s = load_image_folder(root)
    assert s.train.classes == ["a", "b"] and s.train.names == ["train/a/0.png", "train/b/sub/1.png"]
    assert len(w) == 1 and "DS_Store" not in str(w[0].message)  # hidden files: silently


def test_images_beside_the_class_folders_are_named_in_a_warning(tree, noise):
    root = tree({"train/a/0.png": noise(), "train/b/0.png": noise(seed=1), "train/stray.png": noise(seed=2)})
    with pytest.warns(UserWarning, match=r"1 image\(s\) outside the class folders \(e\.g\. 'stray\.png'\)"):
        s = load_image_folder(root)
    assert len(s.train) == 2


def test_a_clean_folder_gives_no_warning(tree, noise):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image_folder(tree({"train/a/0.png": noise(), "test/a/0.png": noise(seed=1)}))


def test_a_symlink_loop_is_refused_not_read_forty_times(tree, noise):
    root = tree({"train/a/0.png": noise(), "train/b/0.png": noise(seed=1)})
    (root / "train" / "a" / "up").symlink_to("..")
    with pytest.raises(
        DataError, match=r"up'.* a folder already read \(a symbolic link loop.*remove the link"
    ):
        load_image_folder(root)


def test_a_symlink_to_a_folder_elsewhere_is_followed(tree, noise, tmp_path):
    root = tree({"train/a/0.png": noise()})
    other = tree({"b/0.png": noise(seed=1)}, name="elsewhere")
    (root / "train" / "b").symlink_to(other / "b")
    assert load_image_folder(root).train.names == ["train/a/0.png", "train/b/0.png"]


def test_wrapper_folder_is_accepted_for_directories(tree, noise):
    root = tree({"inner/train/a/0.png": noise(), "inner/train/b/0.png": noise(seed=1), ".git/x": b""})
    s = load_image_folder(root)
    assert s.train.classes == ["a", "b"] and s.train.names == ["train/a/0.png", "train/b/0.png"]


def test_limit_is_class_balanced_deterministic_and_before_decoding(tree, noise, monkeypatch):
    files = {
        f"train/{c}/{i:02d}.png": noise(size=(4, 4), seed=k * 20 + i)
        for k, c in enumerate("abc")
        for i in range(12)
    }
    files.update({f"train/d/{i}.png": noise(size=(4, 4), seed=100 + i) for i in range(2)})
    files.update({f"test/{c}/{i}.png": noise(size=(4, 4), seed=200 + i) for c in "ab" for i in range(5)})
    root = tree(files)
    decoded_keys: list[str] = []
    real = folder_mod._decode_chunk

    def spy(kind, container, keys, image_size):
        decoded_keys.extend(keys)
        return real(kind, container, keys, image_size)

    monkeypatch.setattr(folder_mod, "_decode_chunk", spy)
    s = load_image_folder(root, limit=11, seed=3, workers=0)
    assert len(decoded_keys) == 11 + 10  # only the chosen train images (and all 10 test ones) are decoded
    assert torch.bincount(s.train.labels, minlength=4).tolist() == [3, 3, 3, 2]
    assert s.train.names == sorted(s.train.names)  # file order is kept
    assert len(s.test) == 10
    again = load_image_folder(root, limit=11, seed=3, workers=0)
    assert again.train.names == s.train.names and torch.equal(again.train.images, s.train.images)
    other = load_image_folder(root, limit=11, seed=4, workers=0)
    assert other.train.names != s.train.names
    t = load_image_folder(root, limit=4, seed=0, workers=0)
    assert torch.bincount(t.train.labels, minlength=4).tolist() == [1, 1, 1, 1]
    assert torch.bincount(t.test.labels).tolist() == [2, 2]


def test_grayscale_detection(tree, noise):
    gray = tree({"train/a/0.png": noise("L", seed=0), "train/b/0.png": noise("L", seed=1)}, name="gray")
    s = load_image_folder(gray)
    assert s.train.images.shape == (2, 1, 6, 8)
    assert torch.equal(s.train.images[0], as_chw(Image.open(gray / "train/a/0.png")))

    mixed = tree({"train/a/0.png": noise("L", seed=0), "train/b/0.png": noise("RGB", seed=1)}, name="mixed")
    m = load_image_folder(mixed)
    assert m.train.images.shape == (2, 3, 6, 8)
    g = m.train.images[0]
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])
    assert torch.equal(g[0], s.train.images[0, 0])


def test_palette_rgba_and_16_bit_images_are_converted(tree, noise):
    rgba = noise(seed=1).convert("RGBA")
    pal = noise(seed=2).convert("P")
    i16 = Image.fromarray((np.arange(48, dtype=np.uint16).reshape(6, 8) * 1365).astype(np.uint16))
    s = load_image_folder(tree({"train/a/0.png": rgba, "train/a/1.gif": pal, "train/b/2.png": i16}))
    assert s.train.images.shape == (3, 3, 6, 8)
    assert torch.equal(s.train.images[0], as_chw(noise(seed=1)))
    v = s.train.images[2, 0].flatten().tolist()
    assert v[0] == 0 and v[-1] == round(47 * 1365 * 255 / 65535)


def test_resize_to_image_size(tree, noise):
    root = tree({"train/a/0.png": noise(size=(10, 7), seed=0), "train/b/0.jpg": noise(size=(5, 5), seed=1)})
    s = load_image_folder(root, image_size=6)
    assert s.train.images.shape == (2, 3, 6, 6)
    expect = decoded(root / "train/a/0.png").resize((6, 6), Image.Resampling.BICUBIC)
    assert torch.equal(s.train.images[0], as_chw(expect))


def test_parallel_decoding_matches_serial(tree, zipped, noise, monkeypatch):
    files = {
        f"train/{c}/{i:02d}.png": noise(size=(4, 4), seed=k * 50 + i)
        for k, c in enumerate("ab")
        for i in range(20)
    }
    files["test/a/x.png"] = noise(size=(4, 4), seed=999)
    z = zipped(tree(files))
    serial = load_image_folder(z, workers=0)
    monkeypatch.setattr(folder_mod, "PARALLEL_MIN_IMAGES", 1)
    par = load_image_folder(z, workers=2)
    assert torch.equal(serial.train.images, par.train.images) and torch.equal(
        serial.test.images, par.test.images
    )
    assert par.train.names == serial.train.names


def test_parallel_decoding_reports_the_corrupt_file(tree, zipped, noise, monkeypatch):
    files = {f"train/a/{i:02d}.png": noise(size=(4, 4), seed=i) for i in range(20)}
    files["train/a/15.png"] = b"\x89PNG\r\n\x1a\n truncated"
    z = zipped(tree(files))
    monkeypatch.setattr(folder_mod, "PARALLEL_MIN_IMAGES", 1)
    with pytest.raises(DataError, match=r"'train/a/15\.png' in .*data\.zip"):
        load_image_folder(z, workers=2)


# --------------------------------------------------------------------------------------------- errors


def test_missing_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="does not exist") as e:
        load_image_folder(missing)
    assert str(missing) in str(e.value)


def test_neither_folder_nor_zip(tmp_path):
    f = tmp_path / "data.tar"
    f.write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"neither a folder nor a \.zip") as e:
        load_image_folder(f)
    assert str(f) in str(e.value)


def test_bad_zip(tmp_path):
    f = tmp_path / "broken.zip"
    f.write_bytes(os.urandom(200))
    with pytest.raises(DataError, match="not a valid zip") as e:
        load_image_folder(f)
    assert str(f) in str(e.value)


def test_no_train_folder(tree, zipped, noise):
    root = tree({"images/a/0.png": noise(), "val/a/0.png": noise()})
    with pytest.raises(
        DataError, match=r"no train/ folder.*train/<class>/<image>.*found: images/, val/"
    ) as e:
        load_image_folder(root)
    assert str(root) in str(e.value)
    z = zipped(root)
    with pytest.raises(DataError, match="no train/ folder") as e:
        load_image_folder(z)
    assert str(z) in str(e.value)


def test_passing_the_train_folder_itself_gets_a_hint(tree, noise):
    root = tree({"train/a/0.png": noise()})
    with pytest.raises(DataError, match="train/ folder itself"):
        load_image_folder(root / "train")


def test_empty_train_folder(tmp_path):
    (tmp_path / "d" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="train/ is empty") as e:
        load_image_folder(tmp_path / "d")
    assert str(tmp_path / "d") in str(e.value)


def test_class_folders_without_images(tree):
    root = tree({"train/a/readme.txt": b"x", "train/b/labels.csv": b"y"})
    with pytest.raises(DataError, match=r"class folders \(a, b\) but no image files"):
        load_image_folder(root)


def test_images_without_class_folders(tree, noise):
    root = tree({"train/0.png": noise(), "train/1.png": noise()})
    with pytest.raises(DataError, match=r"no class folders; put them into train/<class>/"):
        load_image_folder(root)


@pytest.mark.parametrize("as_zip", [False, True])
@pytest.mark.parametrize("content", [b"random bytes, not a JPEG", b"\xff\xd8\xff\xe0 truncated"])
def test_corrupt_image_is_named(tree, zipped, noise, as_zip, content):
    root = tree({"train/a/0.png": noise(), "train/a/bad.jpg": content, "train/b/0.png": noise()})
    path = zipped(root) if as_zip else root
    with pytest.raises(DataError, match="remove or replace this file") as e:
        load_image_folder(path)
    msg = str(e.value)
    assert "train/a/bad.jpg" in msg and str(path) in msg


def test_different_sizes_need_image_size(tree, noise):
    root = tree({"train/a/0.png": noise(size=(8, 6)), "train/b/1.png": noise(size=(9, 6))})
    with pytest.raises(DataError, match=r"--image-size") as e:
        load_image_folder(root)
    msg = str(e.value)
    assert "train/a/0.png" in msg and "train/b/1.png" in msg and "8x6" in msg and "9x6" in msg


def test_train_and_test_sizes_must_match(tree, noise):
    root = tree({"train/a/0.png": noise(size=(8, 6)), "test/a/1.png": noise(size=(4, 4))})
    with pytest.raises(DataError, match=r"test/a/1\.png"):
        load_image_folder(root)
    assert load_image_folder(root, image_size=4).test.image_shape == (3, 4, 4)


def test_test_classes_must_be_train_classes(tree, noise):
    root = tree({"train/a/0.png": noise(), "test/a/0.png": noise(), "test/zebra/0.png": noise()})
    with pytest.raises(DataError, match="zebra") as e:
        load_image_folder(root)
    assert str(root) in str(e.value)


def test_bad_options(tree, noise):
    root = tree({"train/a/0.png": noise()})
    for kw in ({"limit": 0}, {"image_size": -1}, {"workers": -2}, {"limit": 2.5}):
        with pytest.raises(ConfigError):
            load_image_folder(root, **kw)


def test_damaged_stored_member_is_reported(tree, zipped, noise):
    z = zipped(tree({"train/a/0.png": noise(), "train/a/1.png": noise(seed=1)}))
    data = bytearray(z.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.getinfo("train/a/1.png")
    pos = info.header_offset + 30 + len(info.filename) + 40  # inside the PNG data
    data[pos] ^= 0xFF
    z.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"'train/a/1\.png'.*CRC"):
        load_image_folder(z)


# --------------------------------------------------------------------------------------------- real data


def test_cifar10_zip_with_limit():
    if not CIFAR_ZIP.is_file():
        pytest.skip(f"{CIFAR_ZIP} is not available")
    t = time.perf_counter()
    s = load_dataset(str(CIFAR_ZIP), limit=200)
    assert time.perf_counter() - t < 10
    assert s.train.images.shape == (200, 3, 32, 32) and s.test.images.shape == (200, 3, 32, 32)
    assert len(s.train.classes) == 10 and s.train.classes[0] == "airplane"
    assert torch.bincount(s.train.labels).tolist() == [20] * 10
    assert 60 < s.train.images.float().mean() < 190


def test_integer_mode_images_scale_by_their_mode_not_their_content(tree):
    """Two 16-bit images of equal pixel value decode alike, whatever the rest of each file holds."""
    dark = Image.fromarray(np.full((6, 8), 200, dtype=np.int32), mode="I")
    bright = np.full((6, 8), 200, dtype=np.int32)
    bright[0, 0] = 65535
    root = tree({"train/b/0.png": Image.new("L", (8, 6))})
    (root / "train" / "a").mkdir()
    dark.save(root / "train" / "a" / "dark.tif", format="TIFF")
    Image.fromarray(bright, mode="I").save(root / "train" / "a" / "bright.tif", format="TIFF")
    s = load_image_folder(root)
    images = dict(zip(s.train.names, s.train.images, strict=True))
    assert int(images["train/a/dark.tif"][0, 1, 1]) == int(images["train/a/bright.tif"][0, 1, 1]) == 1
    assert int(images["train/a/bright.tif"][0, 0, 0]) == 255
