"""Spoken-digit audio: the Free Spoken Digit Dataset (FSDD) read from its zip, without unpacking.

Layout: ``recordings/{digit}_{speaker}_{index}.wav`` (8 kHz, mono, 16-bit PCM). The conventional split puts
takes ``index`` 0-4 in the test set and the rest in train. WAV files are decoded with the standard library's
:mod:`wave` module (no audio library needed).

Pad/crop policy: every clip becomes exactly ``clip_samples`` samples (default 8,000 = 1.0 s at 8 kHz,
which holds 99% of FSDD whole; the longest clip is 2.28 s). A shorter clip is zero-padded on both sides so
that it sits in the centre; a longer one is centre-cropped (the loader reports how many). The views then
shift/crop at random in training (:class:`contrastkit.views.AudioViews`); evaluation uses the centred clip.
"""

from __future__ import annotations

import io
import posixpath
import re
import warnings
import wave
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from contrastkit.data.dataset import balanced_indices
from contrastkit.errors import ConfigError, DataError

__all__ = [
    "FSDD_SAMPLE_RATE",
    "AudioDataset",
    "AudioSplits",
    "decode_wav",
    "fix_length",
    "is_fsdd_zip",
    "load_fsdd",
    "resample_linear",
]

FSDD_SAMPLE_RATE = 8000
_NAME = re.compile(r"(?:^|/)(\d)_([A-Za-z]+)_(\d+)\.wav$")


@dataclass
class AudioDataset:
    """Fixed-length clips: ``waveforms`` float32 ``(N, 1, T)`` in ``[-1, 1]``; ``labels`` int64 ``(N,)``
    (the spoken digit); ``speakers`` and ``names`` one per clip; ``lengths`` int64 ``(N,)`` the original
    length in samples (before padding/cropping)."""

    waveforms: Tensor
    labels: Tensor
    lengths: Tensor
    speakers: list[str]
    names: list[str]
    classes: list[str]
    sample_rate: int

    def __len__(self) -> int:
        return int(self.waveforms.shape[0])

    def subset(self, idx: Tensor) -> AudioDataset:
        index = torch.as_tensor(idx, dtype=torch.int64).flatten()
        pos = index.tolist()
        return AudioDataset(
            waveforms=self.waveforms[index].contiguous(),
            labels=self.labels[index].clone(),
            lengths=self.lengths[index].clone(),
            speakers=[self.speakers[i] for i in pos],
            names=[self.names[i] for i in pos],
            classes=list(self.classes),
            sample_rate=self.sample_rate,
        )


@dataclass
class AudioSplits:
    """Train and test :class:`AudioDataset` and a name for messages."""

    train: AudioDataset
    test: AudioDataset
    name: str


def resample_linear(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample a 1-D signal by linear interpolation between samples (no anti-aliasing filter).

    Output sample ``j`` is the input read at time ``j / rate_out`` seconds. Downsampling this way aliases
    content above ``rate_out / 2``; it is a convenience for near-matching rates, not a studio resampler.
    """
    if rate_in == rate_out or x.size == 0:
        return x.astype(np.float32, copy=False)
    n_out = max(1, round(x.size * rate_out / rate_in))
    t = np.arange(n_out, dtype=np.float64) * (rate_in / rate_out)
    return np.interp(t, np.arange(x.size, dtype=np.float64), x.astype(np.float64)).astype(np.float32)


def decode_wav(
    data: bytes, name: str, *, sample_rate: int = FSDD_SAMPLE_RATE, resample: bool = False
) -> np.ndarray:
    """Decode a mono 16-bit PCM WAV to float32 samples in ``[-1, 1)``; ``name`` is used in error messages.

    A file at another rate raises :class:`DataError` unless ``resample`` is true, in which case it is
    resampled to ``sample_rate`` with :func:`resample_linear` (linear interpolation).
    """
    try:
        with wave.open(io.BytesIO(data), "rb") as w:
            channels, width, rate, frames = (
                w.getnchannels(),
                w.getsampwidth(),
                w.getframerate(),
                w.getnframes(),
            )
            raw = w.readframes(frames)
    except (wave.Error, EOFError, ValueError) as exc:
        raise DataError(f"cannot read {name} as a WAV file ({exc}); replace or remove the file") from None
    if channels != 1:
        raise DataError(f"{name} has {channels} channels; expected mono (1 channel): mix it down first")
    if width != 2:
        raise DataError(f"{name} has {8 * width}-bit samples; expected 16-bit PCM: convert it first")
    if len(raw) < 2 * frames:
        raise DataError(f"{name} is truncated ({len(raw)} bytes of sample data for {frames} frames)")
    x = np.frombuffer(raw[: 2 * frames], dtype="<i2").astype(np.float32) / 32768.0
    if rate != sample_rate:
        if not resample:
            raise DataError(
                f"{name} is sampled at {rate} Hz, expected {sample_rate} Hz; convert it, or resample it by "
                "linear interpolation: --resample (resample=True from Python)"
            )
        x = resample_linear(x, rate, sample_rate)
    if x.size == 0:
        raise DataError(f"{name} holds no samples; remove it")
    return x


def fix_length(x: np.ndarray, length: int) -> np.ndarray:
    """Zero-pad ``x`` centred to ``length`` samples, or centre-crop it when longer (extra sample: right)."""
    n = x.size
    if n >= length:
        start = (n - length) // 2
        return x[start : start + length]
    out = np.zeros(length, dtype=np.float32)
    left = (length - n) // 2
    out[left : left + n] = x
    return out


def is_fsdd_zip(path: str | Path) -> bool:
    """Whether ``path`` is a zip holding ``.wav`` files (taken as FSDD-style audio)."""
    p = Path(path)
    if p.suffix.lower() != ".zip" or not p.is_file():
        return False
    try:
        with zipfile.ZipFile(p) as zf:
            return any(n.lower().endswith(".wav") for n in zf.namelist())
    except zipfile.BadZipFile:
        return False


def _warn_other_files(path: Path, names: list[str], members: list[str]) -> None:
    """Warn about the files beside the recordings (in a folder holding .wav files) that are not WAV: other
    audio formats are not read (a README at the zip's top, as FSDD's, is not beside them)."""
    folders = {posixpath.dirname(n) for n in members}
    wav = set(members)
    others = [n for n in names if not n.endswith("/") and n not in wav and posixpath.dirname(n) in folders]
    if others:
        exts = sorted({posixpath.splitext(n)[1].lower() or "(none)" for n in others})
        warnings.warn(
            f"{path}: {len(others)} file(s) beside the .wav recordings are not WAV ({', '.join(exts[:6])}"
            f"{', ...' if len(exts) > 6 else ''}; e.g. {others[0]!r}): they are not used; convert them to "
            "16-bit PCM mono WAV to use them",
            UserWarning,
            stacklevel=3,
        )


def load_fsdd(
    path: str | Path,
    *,
    clip_seconds: float = 1.0,
    sample_rate: int = FSDD_SAMPLE_RATE,
    resample: bool = False,
    test_indices: range = range(5),
    limit: int | None = None,
    seed: int = 0,
) -> AudioSplits:
    """Read FSDD from ``path`` (the zip); takes whose index is in ``test_indices`` form the test split.

    ``limit`` keeps at most ``limit`` clips per split, class-balanced and seeded by ``seed`` (quick runs).
    """
    if not (isinstance(clip_seconds, (int, float)) and clip_seconds > 0):
        raise ConfigError(f"clip_seconds must be a positive number, got {clip_seconds!r}")
    if limit is not None and (not isinstance(limit, int) or limit <= 0):
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}")
    p = Path(path)
    if p.is_dir():
        raise DataError(f"audio data {str(p)!r} is a folder; pass the path to fsdd.zip (the zip itself)")
    if not p.is_file():
        raise DataError(f"audio data {str(p)!r} not found; pass the path to fsdd.zip")
    try:
        zf = zipfile.ZipFile(p)
    except zipfile.BadZipFile:
        raise DataError(f"{p} is not a readable zip file; check the download") from None
    clip = round(clip_seconds * sample_rate)
    parts: dict[str, list[tuple[str, int, str, np.ndarray, int]]] = {"train": [], "test": []}
    with zf:
        names = [n for n in zf.namelist() if "__MACOSX" not in n and not Path(n).name.startswith(".")]
        members = sorted(n for n in names if n.lower().endswith(".wav"))
        if not members:
            raise DataError(
                f"{p} holds no .wav files; expected recordings/{{digit}}_{{speaker}}_{{index}}.wav"
            )
        _warn_other_files(p, names, members)
        for n in members:
            m = _NAME.search(n)
            if m is None:
                raise DataError(
                    f"{n!r} in {p} is not named {{digit}}_{{speaker}}_{{index}}.wav; rename or remove it"
                )
            digit, speaker, index = int(m.group(1)), m.group(2), int(m.group(3))
            try:
                data = zf.read(n)
            except (zipfile.BadZipFile, OSError, ValueError) as exc:
                raise DataError(f"cannot read {n!r} from {p} ({exc}); the zip is damaged") from None
            x = decode_wav(data, f"{n!r} in {p}", sample_rate=sample_rate, resample=resample)
            split = "test" if index in test_indices else "train"
            parts[split].append((n, digit, speaker, fix_length(x, clip), x.size))
    out = {}
    for split, items in parts.items():
        if limit is not None:
            keep = balanced_indices([it[1] for it in items], limit, seed).tolist()
            items = [items[i] for i in keep]
        if not items:
            raise DataError(
                f"{p}: the {split} split is empty (test takes are indices {test_indices.start}-"
                f"{test_indices.stop - 1}); the zip needs recordings of both kinds"
            )
        out[split] = AudioDataset(
            waveforms=torch.from_numpy(np.stack([it[3] for it in items])).unsqueeze(1),
            labels=torch.tensor([it[1] for it in items], dtype=torch.int64),
            lengths=torch.tensor([it[4] for it in items], dtype=torch.int64),
            speakers=[it[2] for it in items],
            names=[it[0] for it in items],
            classes=[str(d) for d in range(10)],
            sample_rate=sample_rate,
        )
    # the clips kept (after --limit) that were longer than the window
    cropped = sum(int((split.lengths > clip).sum()) for split in out.values())
    name = f"{p.name} ({cropped} clips longer than {clip_seconds:g} s centre-cropped)" if cropped else p.name
    return AudioSplits(train=out["train"], test=out["test"], name=name)
