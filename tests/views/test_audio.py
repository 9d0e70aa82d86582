"""Audio views: mel/MFCC maths against librosa and scipy, the SNR and gain definitions, SpecAugment's
mask parameters, and determinism under a seed."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import scipy.fft
import torch

from contrastkit.errors import ConfigError
from contrastkit.views.audio import (
    AudioViews,
    LogMel,
    add_noise,
    apply_gain,
    mask_along,
    max_mel_bands,
    mel_filterbank,
    mfcc,
    sample_masks,
    shift,
    time_stretch,
)


def speechlike(b: int = 3, t: int = 4000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = torch.arange(t) / 8000
    f = 200 + 600 * torch.rand(b, 1, 1, generator=g)
    return 0.3 * torch.sin(2 * math.pi * f * n) + 0.05 * torch.randn(b, 1, t, generator=g)


@pytest.mark.parametrize("htk", [False, True])
def test_mel_filterbank_matches_librosa(htk: bool) -> None:
    librosa = pytest.importorskip("librosa")
    ours = mel_filterbank(8000, 256, 40, f_min=20.0, f_max=3800.0, htk=htk).numpy()
    ref = librosa.filters.mel(sr=8000, n_fft=256, n_mels=40, fmin=20.0, fmax=3800.0, htk=htk, norm="slaney")
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("sample_rate", "n_fft"), [(8000, 256), (16000, 512), (8000, 64)])
def test_max_mel_bands_is_where_filters_start_to_be_empty(sample_rate: int, n_fft: int) -> None:
    """Brute force: every filter of up to ``max_mel_bands`` bands covers a bin; from one more band on some
    filter covers none (and LogMel refuses it, naming the bands that fit)."""
    fits = max_mel_bands(sample_rate, n_fft)

    def empty(n: int) -> int:
        return int((mel_filterbank(sample_rate, n_fft, n).sum(1) == 0).sum())

    assert all(empty(n) == 0 for n in range(1, fits + 1))
    assert all(empty(n) > 0 for n in range(fits + 1, fits + 20))
    win = min(200, n_fft)
    assert LogMel(sample_rate, n_fft=n_fft, win_length=win, n_mels=fits).fb.shape == (fits, n_fft // 2 + 1)
    with pytest.raises(
        ConfigError, match=rf"{fits + 1} mel bands are too many .* use at most {fits} mel bands"
    ):
        LogMel(sample_rate, n_fft=n_fft, win_length=win, n_mels=fits + 1)


def test_empty_filters_agree_with_librosa() -> None:
    librosa = pytest.importorskip("librosa")
    import warnings

    for n in (149, 150, 200):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa warns of the empty filters it returns
            ref = librosa.filters.mel(sr=8000, n_fft=256, n_mels=n, norm="slaney")
        ours = mel_filterbank(8000, 256, n).numpy()
        assert int((ref.sum(1) == 0).sum()) == int((ours.sum(1) == 0).sum())
    assert max_mel_bands(8000, 256) == 149


def test_mfcc_refuses_more_coefficients_than_mel_bands() -> None:
    log_mel = torch.randn(2, 1, 12, 30)
    assert mfcc(log_mel, 12).shape == (2, 1, 12, 30)
    with pytest.raises(ConfigError, match="n_mfcc 20 is more than the 12 mel bands"):
        mfcc(log_mel, 20)


def test_log_mel_and_mfcc_match_librosa() -> None:
    librosa = pytest.importorskip("librosa")
    x = speechlike(b=2)
    lm = LogMel(sample_rate=8000, n_fft=256, win_length=200, hop_length=80, n_mels=40)
    ours = lm.power_mel(x)[:, 0].numpy()
    for i in range(2):
        ref = librosa.feature.melspectrogram(
            y=x[i, 0].numpy().astype(np.float64),
            sr=8000,
            n_fft=256,
            hop_length=80,
            win_length=200,
            window="hann",
            center=True,
            pad_mode="constant",
            power=2.0,
            n_mels=40,
        )
        np.testing.assert_allclose(ours[i], ref, rtol=1e-3, atol=1e-6 * ref.max())
        log_mel = np.log(ref + 1e-6)
        ref_mfcc = librosa.feature.mfcc(S=log_mel, n_mfcc=13, dct_type=2, norm="ortho")
        np.testing.assert_allclose(
            mfcc(torch.from_numpy(log_mel).float(), 13).numpy(), ref_mfcc, rtol=1e-4, atol=1e-3
        )
    assert lm(x).shape == (2, 1, 40, lm.frames(4000))


def test_mfcc_is_scipy_orthonormal_dct() -> None:
    s = torch.randn(2, 1, 40, 7)
    ref = scipy.fft.dct(s.numpy().astype(np.float64), type=2, norm="ortho", axis=-2)[..., :20, :]
    np.testing.assert_allclose(mfcc(s, 20).numpy(), ref, rtol=1e-4, atol=1e-5)


def test_noise_hits_the_requested_snr() -> None:
    x = speechlike(b=4)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    snr = torch.tensor([0.0, 5.0, 17.5, 40.0])
    y = add_noise(x, noise, snr)
    realised = 10 * torch.log10(
        x.double().square().mean(dim=(1, 2)) / (y - x).double().square().mean(dim=(1, 2))
    )
    torch.testing.assert_close(realised, snr.double(), atol=1e-4, rtol=0)
    silent = torch.zeros(1, 1, 100)
    assert torch.equal(add_noise(silent, torch.randn(1, 1, 100), torch.tensor([10.0])), silent)


def test_gain_in_decibels() -> None:
    x = speechlike(b=2)
    y = apply_gain(x, torch.tensor([6.0, -12.0]))
    ratio_db = 20 * torch.log10(y.norm(dim=(1, 2)) / x.norm(dim=(1, 2)))
    torch.testing.assert_close(ratio_db, torch.tensor([6.0, -12.0]), atol=1e-4, rtol=0)


def test_shift_is_a_zero_filled_roll() -> None:
    x = torch.arange(1, 11, dtype=torch.float32).view(1, 1, 10).repeat(3, 1, 1)
    y = shift(x, torch.tensor([0, 3, -2]))
    expected = np.stack([np.arange(1, 11), np.r_[0, 0, 0, 1:8], np.r_[3:11, 0, 0]]).astype(np.float32)
    np.testing.assert_array_equal(y[:, 0].numpy(), expected)


def test_time_stretch_resamples_about_the_centre() -> None:
    x = speechlike(b=2, t=801)
    torch.testing.assert_close(time_stretch(x, torch.ones(2)), x)
    ramp = torch.arange(9, dtype=torch.float32).view(1, 1, 9)  # centre 4
    y = time_stretch(ramp, torch.tensor([0.5]))[0, 0]
    torch.testing.assert_close(y, 4 + (torch.arange(9.0) - 4) * 0.5)
    y = time_stretch(ramp, torch.tensor([2.0]))[0, 0]
    torch.testing.assert_close(y, torch.tensor([0, 0, 0, 2, 4, 6, 8, 0, 0.0]))
    # a 300 Hz tone stretched by 1.2 becomes a 360 Hz tone (speed perturbation changes pitch)
    t = torch.arange(8001) / 8000
    tone = torch.sin(2 * math.pi * 300 * (t - 0.5)).view(1, 1, -1)
    y = time_stretch(tone, torch.tensor([1.2]))[0, 0, 2000:6000]
    omega = 2 * math.pi * 300 / 8000  # radians per source sample; linear interpolation errs by <= omega²/8
    expected = torch.sin(2 * math.pi * 360 * (t[2000:6000] - 0.5))
    torch.testing.assert_close(y, expected, atol=omega**2 / 8 + 1e-5, rtol=0)


def test_specaugment_mask_parameters() -> None:
    g = torch.Generator().manual_seed(0)
    w, s = sample_masks(500, 40, 8, 2, g, torch.device("cpu"))
    assert int(w.min()) == 0 and int(w.max()) == 8 and bool(((s >= 0) & (s + w <= 40)).all())
    w, s = sample_masks(500, 101, 50, 1, g, torch.device("cpu"), max_fraction=0.2)
    assert int(w.max()) == 20  # t <= p * tau bounds the width
    spec = torch.randn(3, 1, 6, 5)
    width, start = torch.tensor([[2, 0], [1, 1], [0, 0]]), torch.tensor([[1, 4], [0, 4], [2, 3]])
    out = mask_along(spec, width, start, dim=-2, value=0.0)
    rows = {0: [1, 2], 1: [0, 4], 2: []}
    for b, masked in rows.items():
        for r in range(6):
            if r in masked:
                assert bool((out[b, 0, r] == 0).all())
            else:
                assert torch.equal(out[b, 0, r], spec[b, 0, r])


@pytest.mark.parametrize("features", ["logmel", "waveform"])
def test_views_deterministic_shapes_dtypes(features: str) -> None:
    x = speechlike(b=5, t=8000)
    views = AudioViews(features=features, noise_p=1.0, stretch_p=1.0, mean=-10.0, std=3.0)
    a = views(x, torch.Generator().manual_seed(3))
    b = views(x, torch.Generator().manual_seed(3))
    c = views(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.float32 and torch.isfinite(a).all()
    assert a.shape == ((5, 1, 40, 101) if features == "logmel" else (5, 1, 8000))
    assert views.eval_view(x).shape == a.shape
    first = views(x[:1], torch.Generator().manual_seed(3))
    assert not torch.equal(first[0], views(x[1:2], torch.Generator().manual_seed(3))[0])


def test_view_input_errors() -> None:
    views = AudioViews()
    with pytest.raises(ConfigError, match=r"\(B, 1, T\)"):
        views(torch.zeros(2, 8000))
    with pytest.raises(ConfigError, match="stretch"):
        AudioViews(stretch=(1.2, 0.8))
    with pytest.raises(ConfigError, match="noise_p"):
        AudioViews(noise_p=2)
    with pytest.raises(ConfigError, match="features"):
        AudioViews(features="mfcc")


@pytest.mark.parametrize("shape", [(0, 1, 4000), (2, 1, 0)])
def test_empty_waveform_batch_names_the_shape(shape):
    x = torch.zeros(shape)
    for fn in (AudioViews(), AudioViews().eval_view, LogMel()):
        with pytest.raises(ConfigError, match=r"non-empty.*" + re.escape(str(shape))):
            fn(x)


@pytest.mark.parametrize("dtype, hint", [(torch.int16, "/ 32768"), (torch.int32, "/ 2147483648")])
def test_integer_waveforms_name_the_dtype(dtype, hint):
    x = torch.zeros(2, 1, 4000, dtype=dtype)
    name = str(dtype).removeprefix("torch.")
    for fn in (AudioViews(), LogMel()):
        with pytest.raises(ConfigError) as err:
            fn(x)
        msg = str(err.value)
        assert f"got {name}" in msg and "x.float()" in msg and hint in msg and "(2, 1, 4000)" not in msg
