"""FSDD loading from a zip: split, labels, pad/crop policy, and clear errors for bad files."""

from __future__ import annotations

import io
import os
import wave
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from contrastkit.data.audio import decode_wav, fix_length, is_fsdd_zip, load_fsdd, resample_linear
from contrastkit.errors import ConfigError, DataError


def wav_bytes(samples: np.ndarray, rate: int = 8000, channels: int = 1, width: int = 2) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples).astype("<i2" if width == 2 else "u1").tobytes())
    return buf.getvalue()


def tone(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-20000, 20000, n).astype(np.int16)


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def small_fsdd(path: Path, digits: int = 3, takes: int = 7, lengths: tuple[int, ...] = (400, 1000)) -> Path:
    files = {}
    for d in range(digits):
        for spk in ("ann", "bob"):
            for i in range(takes):
                n = lengths[(d + i) % len(lengths)]
                files[f"recordings/{d}_{spk}_{i}.wav"] = wav_bytes(tone(n, seed=100 * d + i))
    files["README.md"] = b"test data"
    return write_zip(path, files)


def test_split_labels_and_centred_padding(tmp_path: Path) -> None:
    z = small_fsdd(tmp_path / "fsdd.zip")
    splits = load_fsdd(z, clip_seconds=0.1)  # 800 samples
    assert len(splits.test) == 3 * 2 * 5 and len(splits.train) == 3 * 2 * 2
    assert splits.train.waveforms.shape == (12, 1, 800) and splits.train.waveforms.dtype == torch.float32
    for ds in (splits.train, splits.test):
        for j, name in enumerate(ds.names):
            d, spk, i = Path(name).stem.split("_")
            assert ds.labels[j] == int(d) and ds.speakers[j] == spk
            assert (int(i) < 5) == (ds is splits.test)
            raw = tone(ds.lengths[j].item(), seed=100 * int(d) + int(i)).astype(np.float32) / 32768
            n = raw.size
            expected = np.zeros(800, np.float32)
            if n <= 800:
                expected[(800 - n) // 2 : (800 - n) // 2 + n] = raw
            else:
                expected = raw[(n - 800) // 2 : (n - 800) // 2 + 800]
            np.testing.assert_array_equal(ds.waveforms[j, 0].numpy(), expected)
    longer = sum(int((ds.lengths > 800).sum()) for ds in (splits.train, splits.test))
    assert longer > 0 and f"({longer} clips longer than 0.1 s centre-cropped)" in splits.name
    assert is_fsdd_zip(z)


def test_limit_is_class_balanced(tmp_path: Path) -> None:
    splits = load_fsdd(small_fsdd(tmp_path / "f.zip"), clip_seconds=0.1, limit=6)
    assert torch.bincount(splits.test.labels).tolist() == [2, 2, 2]
    # the banner counts the cropped clips that were kept, not those of the whole zip
    kept = sum(int((ds.lengths > 800).sum()) for ds in (splits.train, splits.test))
    assert (f"({kept} clips longer" in splits.name) if kept else ("centre-cropped" not in splits.name)


def test_fix_length_extra_sample_goes_right() -> None:
    assert fix_length(np.ones(3, np.float32), 6).tolist() == [0, 1, 1, 1, 0, 0]
    assert fix_length(np.arange(6, dtype=np.float32), 3).tolist() == [1, 2, 3]


def test_wrong_rate_names_file_and_rate(tmp_path: Path) -> None:
    z = small_fsdd(tmp_path / "f.zip")
    with zipfile.ZipFile(z, "a") as zf:
        zf.writestr("recordings/1_carl_9.wav", wav_bytes(tone(800, 1), rate=16000))
    with pytest.raises(
        DataError, match=r"1_carl_9\.wav.*16000 Hz.*: --resample \(resample=True from Python\)$"
    ):
        load_fsdd(z, clip_seconds=0.1)
    splits = load_fsdd(z, clip_seconds=0.1, resample=True)
    j = splits.train.names.index("recordings/1_carl_9.wav")
    assert splits.train.lengths[j] == 400


def test_resample_keeps_a_sine() -> None:
    t16 = np.arange(1600) / 16000
    y = resample_linear(np.sin(2 * np.pi * 300 * t16), 16000, 8000)
    np.testing.assert_allclose(y, np.sin(2 * np.pi * 300 * np.arange(800) / 8000), atol=1e-6)


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (b"RIFF\x00\x00garbage", r"cannot read .*0_ann_0\.wav"),
        (wav_bytes(np.zeros((100, 2), np.int16), channels=2), r"0_ann_0\.wav.* has 2 channels"),
        (wav_bytes(np.zeros(100, np.uint8), width=1), r"0_ann_0\.wav.* has 8-bit"),
        (wav_bytes(np.zeros(0, np.int16)), r"0_ann_0\.wav.* holds no samples"),
    ],
)
def test_unreadable_files_are_named(tmp_path: Path, data: bytes, pattern: str) -> None:
    z = write_zip(
        tmp_path / "bad.zip",
        {"recordings/0_ann_0.wav": data, "recordings/0_ann_9.wav": wav_bytes(tone(50, 0))},
    )
    with pytest.raises(DataError, match=pattern):
        load_fsdd(z)


def test_empty_missing_and_misnamed(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no \.wav files"):
        load_fsdd(write_zip(tmp_path / "empty.zip", {"README.md": b"x"}))
    with pytest.raises(DataError, match="not found"):
        load_fsdd(tmp_path / "nope.zip")
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable zip"):
        load_fsdd(tmp_path / "junk.zip")
    with pytest.raises(DataError, match=r"hello\.wav.*not named"):
        load_fsdd(write_zip(tmp_path / "n.zip", {"recordings/hello.wav": wav_bytes(tone(10, 0))}))
    with pytest.raises(DataError, match="test split is empty"):
        load_fsdd(write_zip(tmp_path / "t.zip", {"recordings/0_ann_7.wav": wav_bytes(tone(10, 0))}))
    with pytest.raises(ConfigError, match="clip_seconds"):
        load_fsdd(tmp_path / "n.zip", clip_seconds=0)


def test_decode_wav_values() -> None:
    x = np.array([-32768, -1, 0, 1, 32767], np.int16)
    np.testing.assert_array_equal(decode_wav(wav_bytes(x), "x.wav"), x.astype(np.float32) / 32768)


def shared_fsdd() -> Path:
    root = Path(
        os.environ.get(
            "CONTRASTKIT_SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"
        )
    )
    path = root / "audio" / "fsdd.zip"
    if not path.is_file():
        pytest.skip(f"shared FSDD not found at {path} (set CONTRASTKIT_SHARED_DATA)")
    return path


def test_real_fsdd_split() -> None:
    splits = load_fsdd(shared_fsdd(), limit=40)
    assert splits.train.waveforms.shape == (40, 1, 8000) and len(splits.test) == 40
    assert sorted(set(splits.train.labels.tolist())) == list(range(10))
    assert all(int(Path(n).stem.split("_")[2]) < 5 for n in splits.test.names)
    assert all(int(Path(n).stem.split("_")[2]) >= 5 for n in splits.train.names)


def test_a_folder_given_as_the_zip_is_named_as_a_folder(tmp_path: Path) -> None:
    """An existing folder was reported as 'not found'."""
    with pytest.raises(DataError, match=r"is a folder; pass the path to fsdd.zip \(the zip itself\)"):
        load_fsdd(tmp_path)
    with pytest.raises(DataError, match=r"not found; pass the path to fsdd\.zip"):
        load_fsdd(tmp_path / "missing.zip")


def test_files_beside_the_recordings_that_are_not_wav_are_named(tmp_path: Path) -> None:
    """A .flac among the recordings was skipped without a word; FSDD's top-level README stays silent."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_fsdd(small_fsdd(tmp_path / "clean.zip"), clip_seconds=0.1)
    z = small_fsdd(tmp_path / "f.zip")
    with zipfile.ZipFile(z, "a") as zf:
        zf.writestr("recordings/2_ann_9.flac", b"fLaC")
        zf.writestr("recordings/notes.txt", b"x")
        zf.writestr("recordings/.DS_Store", b"x")
    with pytest.warns(
        UserWarning, match=r"2 file\(s\) beside the \.wav recordings are not WAV \(\.flac, \.txt;"
    ):
        splits = load_fsdd(z, clip_seconds=0.1)
    assert not any(n.endswith(".flac") for n in splits.train.names + splits.test.names)
