"""``contrastkit embed``: every image's backbone embedding with its name, split and label."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contrastkit.cli import main
from contrastkit.data import has_split_layout, load_dataset, load_image_files
from contrastkit.embed import compute_embeddings, embed_run, write_embeddings
from contrastkit.encoders import ContrastiveModel, ProjectionHead, SmallCNN
from contrastkit.errors import ConfigError, ContrastkitError, DataError
from contrastkit.training import TrainConfig, train


def reference_features(run: Path, images: torch.Tensor) -> np.ndarray:
    """Features computed without contrastkit's loading code: the checkpoint's weights in a hand-built
    SmallCNN + head, images scaled to [0, 1] and standardised with the stored statistics."""
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    info, config = state["data_info"], state["config"]
    model = ContrastiveModel(
        SmallCNN(in_channels=info["channels"]),
        ProjectionHead(256, hidden_dim=config["proj_hidden_dim"], out_dim=config["proj_dim"]),
    )
    model.load_state_dict(state["model"])
    model.eval()
    mean = torch.tensor(info["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(info["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        return model.backbone((images.float() / 255 - mean) / std).numpy()


def write_pngs(root: Path, rels: list[str], seed: int = 0, mode: str = "L") -> None:
    rng = np.random.default_rng(seed)
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        shape = (8, 8) if mode == "L" else (8, 8, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(p)


@pytest.fixture(scope="module")
def npz(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("embed") / "digits.npz"
    embed_run(trained_run, out, device="cpu", out=io.StringIO())
    return out


def test_npz_holds_every_digit_with_its_name_split_label_and_true_features(
    npz: Path, trained_run: Path
) -> None:
    splits = load_dataset("digits")  # all images, not the 320-per-split limit of training
    with np.load(npz) as f:  # no pickle needed
        emb, names, split, labels = f["embeddings"], f["names"], f["splits"], f["labels"]
        assert f["classes"].tolist() == splits.train.classes
    assert emb.dtype == np.float32 and emb.shape == (1797, 256)
    assert names.tolist() == splits.train.names + splits.test.names
    assert split.tolist() == ["train"] * len(splits.train) + ["test"] * len(splits.test)
    np.testing.assert_array_equal(labels, torch.cat([splits.train.labels, splits.test.labels]).numpy())
    ref = reference_features(trained_run, torch.cat([splits.train.images, splits.test.images]))
    np.testing.assert_allclose(emb, ref, rtol=1e-4, atol=1e-5)


def test_parquet_and_npy_hold_the_same_rows(npz: Path, trained_run: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    emb = compute_embeddings(trained_run, device="cpu")
    assert write_embeddings(emb, tmp_path / "e.parquet") == [tmp_path / "e.parquet"]
    assert write_embeddings(emb, tmp_path / "e.npy") == [tmp_path / "e.npy", tmp_path / "e.npy.tsv"]
    with np.load(npz) as f:
        emb, names, labels, classes = f["embeddings"], f["names"].tolist(), f["labels"], f["classes"].tolist()
    table = pq.read_table(tmp_path / "e.parquet")
    assert table.column_names == ["name", "split", "label", "class", "embedding"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 256)
    assert table.column("name").to_pylist() == names
    assert table.column("class").to_pylist() == [classes[i] for i in labels]
    np.testing.assert_array_equal(np.stack(table.column("embedding").to_numpy(zero_copy_only=False)), emb)
    meta = json.loads(table.schema.metadata[b"contrastkit"])
    assert meta["architecture"] == "small_cnn" and meta["feature_dim"] == 256 and meta["classes"] == classes

    np.testing.assert_array_equal(np.load(tmp_path / "e.npy"), emb)
    with (tmp_path / "e.npy.tsv").open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [r["name"] for r in rows] == names
    assert [int(r["index"]) for r in rows] == list(range(len(names)))
    assert [int(r["label"]) for r in rows] == labels.tolist()


def test_plain_folder_and_zip_keep_relative_names(trained_run: Path, tmp_path: Path) -> None:
    rels = ["b.png", "a/x.png", "a/deeper/y.png", ".hidden/z.png"]
    write_pngs(tmp_path / "imgs", rels)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    assert not has_split_layout(tmp_path / "imgs")
    want = sorted(r for r in rels if not r.startswith("."))
    with zipfile.ZipFile(tmp_path / "imgs.zip", "w") as zf:
        for r in rels:
            zf.write(tmp_path / "imgs" / r, r)
    for src in (tmp_path / "imgs", tmp_path / "imgs.zip"):
        out = tmp_path / f"{src.suffix or 'dir'}.npz"
        embed_run(trained_run, out, data=str(src), device="cpu", normalize=True, out=io.StringIO())
        with np.load(out) as f:
            assert f["names"].tolist() == want
            assert f["splits"].tolist() == ["all"] * 3 and f["labels"].tolist() == [-1] * 3
            images = torch.stack(
                [torch.from_numpy(np.array(Image.open(tmp_path / "imgs" / r)))[None] for r in want]
            )
            ref = torch.nn.functional.normalize(
                torch.from_numpy(reference_features(trained_run, images)), dim=1
            )
            np.testing.assert_allclose(f["embeddings"], ref.numpy(), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(np.linalg.norm(f["embeddings"], axis=1), 1.0, atol=1e-5)


def test_split_layout_folder_gets_splits_and_labels(trained_run: Path, tmp_path: Path) -> None:
    write_pngs(tmp_path / "d", ["train/cat/1.png", "train/dog/2.png", "train/dog/3.png", "test/dog/4.png"])
    assert has_split_layout(tmp_path / "d")
    out = tmp_path / "d.npz"
    embed_run(trained_run, out, data=str(tmp_path / "d"), device="cpu", out=io.StringIO())
    with np.load(out) as f:
        assert f["names"].tolist() == [
            "train/cat/1.png",
            "train/dog/2.png",
            "train/dog/3.png",
            "test/dog/4.png",
        ]
        assert f["splits"].tolist() == ["train", "train", "train", "test"]
        assert f["labels"].tolist() == [0, 1, 1, 1] and f["classes"].tolist() == ["cat", "dog"]


def test_load_image_files_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_image_files(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no image files"):
        load_image_files(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot decode image"):
        load_image_files(tmp_path / "bad")


def test_cli_embed_and_its_errors(
    trained_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rgb = tmp_path / "rgb"
    write_pngs(rgb, ["a.png"], mode="RGB")
    assert main(["embed", str(trained_run), "--device", "cpu", "--out", str(tmp_path / "ok.npz")]) == 0
    assert "embedded 1797 images (train 1347, test 450)" in capsys.readouterr().out
    for args, words in (
        (["--out", str(tmp_path / "e.csv")], "end the file name in one of .npz, .npy, .parquet"),
        (["--out", str(tmp_path / "no" / "e.npz")], "does not exist; create it first"),
        (["--out", str(tmp_path / "e.npz"), "--data", str(tmp_path / "missing")], "does not exist"),
        (["--out", str(tmp_path / "e.npz"), "--data", str(rgb)], "takes 1-channel images (grayscale), but"),
    ):
        assert main(["embed", str(trained_run), "--device", "cpu", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("contrastkit: error:") and words in err and "\n" not in err
    assert not (tmp_path / "e.npz").exists()


def test_cli_embed_refuses_an_existing_file_before_the_work(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import contrastkit.reporting.run as run_module

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the output file was checked")

    monkeypatch.setattr(run_module, "load_trained_run", boom)
    for name, existing in (
        ("e.npz", "e.npz"),
        ("e.parquet", "e.parquet"),
        ("e.npy", "e.npy"),
        ("f.npy", "f.npy.tsv"),
    ):
        (tmp_path / existing).write_text("precious")
        assert main(["embed", str(trained_run), "--device", "cpu", "--out", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("contrastkit: error:") and "\n" not in err
        assert f"{str(tmp_path / existing)!r} already exists" in err
        assert "another --out" in err and "--overwrite" in err
        assert (tmp_path / existing).read_text() == "precious"
    assert not (tmp_path / "f.npy").exists()
    (tmp_path / "g.npy.tsv").mkdir()  # a folder where the index goes: refused, even with --overwrite
    with pytest.raises(ConfigError, match=r"g\.npy\.tsv' is a folder"):
        embed_run(trained_run, tmp_path / "g.npy", overwrite=True, out=io.StringIO())


def test_overwrite_replaces_the_embeddings_atomically(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import contrastkit.training.checkpoint as ckpt

    target, index = tmp_path / "e.npy", tmp_path / "e.npy.tsv"
    target.write_text("old")
    index.write_text("old")
    args = ["embed", str(trained_run), "--device", "cpu", "--out", str(target), "--overwrite"]

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:  # a write that fails half-way leaves the old file whole
        m.setattr(ckpt.os, "fsync", disk_full)
        assert main(args) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert target.read_text() == "old" and index.read_text() == "old" and not list(tmp_path.glob("*.tmp"))
    assert main(args) == 0
    assert "embedded 1797 images" in capsys.readouterr().out
    assert np.load(target).shape == (1797, 256) and index.read_text().startswith("index\tname")
    emb = compute_embeddings(trained_run, device="cpu")
    with pytest.raises(ContrastkitError, match="already exists"):  # the Python API refuses too
        write_embeddings(emb, target)
    assert write_embeddings(emb, target, overwrite=True) == [target, index]


def rgb_digit_folder(root: Path, limit: int = 60) -> Path:
    """``limit`` digits as RGB PNGs under ``root/train/<class>/`` (three different channels)."""
    digits = load_dataset("digits", limit=limit).train
    for i, (img, label) in enumerate(zip(digits.images, digits.labels.tolist(), strict=True)):
        g = img[0].numpy()
        rgb = np.stack([g, 255 - g, g // 2], axis=2)
        (root / "train" / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(root / "train" / str(label) / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-epoch run on 60 RGB 8x8 digits (an encoder that takes 3 channels)."""
    root = tmp_path_factory.mktemp("rgb")
    config = TrainConfig(
        data=str(rgb_digit_folder(root / "data")), epochs=1, batch_size=16, knn_every=0, progress=False,
        device="cpu", out=str(root / "run"),
    )  # fmt: skip
    return train(config, out=io.StringIO()).run_dir


def test_grayscale_images_for_an_rgb_encoder_are_repeated_with_a_note(rgb_run: Path, tmp_path: Path) -> None:
    rels = ["a.png", "b.png", "c.png"]
    write_pngs(tmp_path / "gray", rels, mode="L")
    for rel in rels:  # the same images with their channel written out three times
        (tmp_path / "gray3").mkdir(exist_ok=True)
        Image.open(tmp_path / "gray" / rel).convert("RGB").save(tmp_path / "gray3" / rel)
    printed = io.StringIO()
    gray = embed_run(rgb_run, tmp_path / "g.npz", data=str(tmp_path / "gray"), device="cpu", out=printed)
    lines = [line for line in printed.getvalue().splitlines() if line.startswith("NOTE:")]
    assert len(lines) == 1, printed.getvalue()
    assert "grayscale (1-channel) images" in lines[0] and "takes RGB (3-channel) images" in lines[0]
    assert "repeated to 3" in lines[0] and gray.meta["notes"] == [lines[0].removeprefix("NOTE: ")]
    rgb = compute_embeddings(rgb_run, str(tmp_path / "gray3"), device="cpu", out=io.StringIO())
    assert "notes" not in rgb.meta
    np.testing.assert_allclose(gray.embeddings, rgb.embeddings, rtol=1e-5, atol=1e-6)


def test_other_channel_mismatches_are_errors(rgb_run: Path, trained_run: Path) -> None:
    from contrastkit.reporting.run import backbone_features, load_trained_run

    rgb = load_trained_run(rgb_run)
    with pytest.raises(ConfigError, match="takes 3-channel images, but this batch has 2-channel"):
        backbone_features(rgb, torch.zeros(2, 2, 8, 8, dtype=torch.uint8))
    gray = load_trained_run(trained_run)
    with pytest.raises(ConfigError, match=r"takes 1-channel images \(grayscale\), but this batch has 3"):
        backbone_features(gray, torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
