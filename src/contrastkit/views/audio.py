"""Audio views: batched, per-sample-random augmentation of waveforms and log-mel spectrograms.

Everything works on a whole batch ``(B, 1, T)`` of float waveforms at once, on the batch's device, with
every random number drawn from one ``torch.Generator`` (so a seed fixes the views). The pipeline of
:class:`AudioViews`::

    random shift (a random crop of the zero-padded clip) -> time stretch -> gain -> additive noise at a
    random SNR -> log-mel spectrogram (torch.stft) -> normalise -> SpecAugment frequency and time masks

- **time stretch** is speed perturbation (Ko et al. 2015): the clip is resampled by linear interpolation
  about its centre, ``y(t) = x(c + (t - c) * rate)``, which changes duration *and* pitch (no phase vocoder);
  the length ``T`` is kept (zero outside the source). Linear interpolation is not band-limited: it damps
  high frequencies (at 8 kHz and rate 1.1 a 2 kHz tone keeps 0.82 of its amplitude, a 3 kHz one 0.65; the
  top mel band of white noise loses 2-4 dB) and a faster rate aliases tones above ``fs / (2 rate)``.
- **noise** is white Gaussian noise scaled so that ``10 log10(P_signal / P_noise) = snr_db`` exactly, with
  ``P`` the mean square over the clip's ``T`` samples (padding included); a silent clip gets no noise.
- **log-mel**: ``log(mel_fb @ |STFT|^2 + eps)`` with a Hann window, ``center=True`` and zero padding (as
  librosa ≥ 0.10); the mel filterbank is :func:`mel_filterbank` (Slaney's scale and area normalisation by
  default, librosa's ``filters.mel``; or the HTK formula).
- **SpecAugment** (Park et al. 2019, Interspeech 2019, arXiv 1904.08779, Sec. 2 "Augmentation Policy"):
  frequency masking: ``f ~ U{0..F}``, ``f0 ~ U{0..ν - f - 1}``, channels ``[f0, f0 + f)`` masked, ``m_F``
  times; time masking: ``t ~ U{0..T}`` with ``t <= p * τ``, ``t0 ~ U{0..τ - t - 1}``, frames
  ``[t0, t0 + t)`` masked, ``m_T`` times. As in the paper the masked value is 0 on the normalised
  spectrogram: the data mean when ``mean`` and ``std`` are the data's log-mel statistics (audio-train passes
  them; the defaults 0 and 1 leave the log-mel unnormalised, so the masks are log-power 0). (Time warping is not implemented.) Checked: the paper's wording of the
  frequency mask ("f is first chosen from a uniform distribution from 0 to the frequency mask parameter F,
  and f0 is chosen from [0, ν − f)"), as quoted in the nlpaug documentation; "from 0 to F" is read here as
  inclusive of F. Not re-read (only the paper's opening was readable in this check): the section number,
  the time-mask bound ``p`` and the zero-mean remark, which are as previously cited.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from contrastkit.errors import ConfigError

__all__ = [
    "LOG_MEL_N_FFT",
    "AudioViews",
    "LogMel",
    "add_noise",
    "apply_gain",
    "dct_ii_matrix",
    "hz_to_mel",
    "mask_along",
    "max_mel_bands",
    "mel_filterbank",
    "mel_to_hz",
    "mfcc",
    "sample_masks",
    "shift",
    "time_stretch",
]


LOG_MEL_N_FFT = 256
"""The FFT size of :class:`LogMel` by default (129 frequency bins; 32 ms at 8 kHz, its 25 ms window in it)."""


# ----------------------------------------------------------------------------------------------- mel maths
def hz_to_mel(f: Tensor, htk: bool = False) -> Tensor:
    """Hz -> mel. HTK: ``2595 log10(1 + f/700)``; Slaney (Auditory Toolbox): linear ``3f/200`` below
    1 kHz, logarithmic above (``15 + 27 ln(f/1000) / ln 6.4``)."""
    f = torch.as_tensor(f, dtype=torch.float64)
    if htk:
        return 2595.0 * torch.log10(1.0 + f / 700.0)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    return torch.where(
        f >= min_log_hz, min_log_mel + torch.log(f.clamp_min(1e-10) / min_log_hz) / logstep, f / f_sp
    )


def mel_to_hz(m: Tensor, htk: bool = False) -> Tensor:
    """Inverse of :func:`hz_to_mel`."""
    m = torch.as_tensor(m, dtype=torch.float64)
    if htk:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    f_min: float = 0.0,
    f_max: float | None = None,
    htk: bool = False,
    norm: str | None = "slaney",
) -> Tensor:
    """Triangular mel filters, float32 ``(n_mels, n_fft // 2 + 1)``: ``n_mels + 2`` points equally spaced on
    the mel scale between ``f_min`` and ``f_max`` (default Nyquist); filter ``m`` rises from point ``m`` to
    ``m + 1`` and falls to ``m + 2`` (linear in Hz). ``norm="slaney"`` divides each by half its bandwidth
    (``2 / (f_{m+2} - f_m)``) so filters have equal area. Same definition as ``librosa.filters.mel``.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    if not (0 <= f_min < f_max <= sample_rate / 2):
        raise ConfigError(f"need 0 <= f_min < f_max <= sample_rate/2, got f_min={f_min}, f_max={f_max}")
    if norm not in (None, "slaney"):
        raise ConfigError(f"norm must be None or 'slaney', got {norm!r}")
    fft_freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mels = torch.linspace(
        float(hz_to_mel(torch.tensor(f_min), htk)),
        float(hz_to_mel(torch.tensor(f_max), htk)),
        n_mels + 2,
        dtype=torch.float64,
    )
    hz = mel_to_hz(mels, htk)
    fdiff = hz[1:] - hz[:-1]
    ramps = hz.unsqueeze(1) - fft_freqs.unsqueeze(0)  # (n_mels + 2, n_freqs)
    lower = -ramps[:-2] / fdiff[:-1].unsqueeze(1)
    upper = ramps[2:] / fdiff[1:].unsqueeze(1)
    weights = torch.clamp(torch.minimum(lower, upper), min=0.0)
    if norm == "slaney":
        weights = weights * (2.0 / (hz[2:] - hz[:-2])).unsqueeze(1)
    return weights.to(torch.float32)


@functools.lru_cache(maxsize=64)
def max_mel_bands(sample_rate: int, n_fft: int, f_min: float = 0.0, f_max: float | None = None) -> int:
    """The most mel bands whose triangular filters (:func:`mel_filterbank`) all cover at least one FFT bin:
    more bands than this leave some filters empty (librosa warns "Empty filters detected")."""

    def fits(n: int) -> bool:
        return not bool((mel_filterbank(sample_rate, n_fft, n, f_min, f_max).sum(1) == 0).any())

    n = 1  # the filters narrow as bands are added, so the bands that fit are 1..answer: search upwards
    while n < 8 * (n_fft // 2 + 1) and fits(n + 1):
        n += 1
    return n


def dct_ii_matrix(n_in: int, n_out: int) -> Tensor:
    """Orthonormal DCT-II as an ``(n_out, n_in)`` matrix: ``X_k = s_k Σ_n x_n cos(π k (2n + 1) / (2N))``,
    ``s_0 = sqrt(1/N)``, ``s_k = sqrt(2/N)`` (scipy's ``dct(type=2, norm='ortho')``)."""
    n = torch.arange(n_in, dtype=torch.float64)
    k = torch.arange(n_out, dtype=torch.float64).unsqueeze(1)
    m = torch.cos(math.pi * k * (2 * n + 1) / (2 * n_in)) * math.sqrt(2.0 / n_in)
    m[0] /= math.sqrt(2.0)
    return m.to(torch.float32)


def mfcc(log_mel: Tensor, n_mfcc: int = 20) -> Tensor:
    """MFCCs: the orthonormal DCT-II of a log-mel spectrogram ``(..., n_mels, frames)`` along the mel axis,
    first ``n_mfcc`` coefficients, shape ``(..., n_mfcc, frames)`` (librosa's ``feature.mfcc`` given ``S``).
    ``n_mfcc`` is at most ``n_mels``: the DCT of ``n_mels`` values has no more coefficients."""
    if n_mfcc > log_mel.shape[-2]:
        raise ConfigError(
            f"n_mfcc {n_mfcc} is more than the {log_mel.shape[-2]} mel bands: the DCT of n_mels values has "
            "n_mels coefficients; ask for at most that many (or use more mel bands)"
        )
    d = dct_ii_matrix(log_mel.shape[-2], n_mfcc).to(log_mel.device, log_mel.dtype)
    return torch.matmul(d, log_mel)


class LogMel(nn.Module):
    """Batched log-mel spectrogram: ``(B, 1, T)`` waveforms -> ``(B, 1, n_mels, frames)``.

    ``log(mel_fb @ |STFT(x)|^2 + eps)``; STFT with a periodic Hann window of ``win_length`` (centred in
    ``n_fft``), ``hop_length``, ``center=True`` with zero padding; ``frames = 1 + T // hop_length``.
    Defaults for 8 kHz speech: 25 ms windows, 10 ms hop, 40 mel bands up to 4 kHz.
    """

    def __init__(
        self,
        sample_rate: int = 8000,
        n_fft: int = LOG_MEL_N_FFT,
        win_length: int = 200,
        hop_length: int = 80,
        n_mels: int = 40,
        f_min: float = 0.0,
        f_max: float | None = None,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        for name, v in (
            ("n_fft", n_fft),
            ("win_length", win_length),
            ("hop_length", hop_length),
            ("n_mels", n_mels),
        ):
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if win_length > n_fft:
            raise ConfigError(f"win_length ({win_length}) must not exceed n_fft ({n_fft})")
        self.sample_rate, self.n_fft, self.win_length, self.hop_length = (
            sample_rate,
            n_fft,
            win_length,
            hop_length,
        )
        self.n_mels, self.eps = n_mels, eps
        self.register_buffer("window", torch.hann_window(win_length, periodic=True), persistent=False)
        fb = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max)
        empty = int((fb.sum(1) == 0).sum())
        if empty:
            fits = max_mel_bands(sample_rate, n_fft, f_min, f_max)
            raise ConfigError(
                f"{n_mels} mel bands are too many for a {n_fft}-point FFT ({n_fft // 2 + 1} frequency bins): "
                f"{empty} of the triangular filters would cover no bin and give a constant band; use at most "
                f"{fits} mel bands (--n-mels) at {sample_rate} Hz"
            )
        self.register_buffer("fb", fb, persistent=False)

    def power_mel(self, x: Tensor) -> Tensor:
        """Mel power spectrogram ``(B, 1, n_mels, frames)`` (before the log)."""
        _check_waves(x)
        b, _, t = x.shape
        spec = torch.stft(
            x.reshape(b, t).float(),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()  # (B, n_freqs, frames)
        return torch.matmul(self.fb, power).unsqueeze(1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.log(self.power_mel(x) + self.eps)

    def frames(self, num_samples: int) -> int:
        return 1 + num_samples // self.hop_length


# ------------------------------------------------------------------------------------- waveform operations
def _check_waves(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[1] != 1:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ConfigError(f"waveforms must be a float (B, 1, T) tensor, got {shape}; add batch/channel dims")
    if not x.is_floating_point():
        dtype = str(x.dtype).removeprefix("torch.")
        hint = f" / {2 ** (torch.iinfo(x.dtype).bits - 1)}" if x.dtype.is_signed else ""
        raise ConfigError(
            f"waveforms must be a floating tensor in [-1, 1], got {dtype}; convert with x.float(){hint}"
        )
    if x.shape[0] == 0 or x.shape[2] == 0:
        raise ConfigError(
            f"waveforms must be a non-empty (B, 1, T) batch (B >= 1, T >= 1), got {tuple(x.shape)}"
        )


def shift(x: Tensor, shifts: Tensor) -> Tensor:
    """``y[b, t] = x[b, t - shifts[b]]`` with zeros shifted in (a random crop of the zero-padded clip)."""
    t = torch.arange(x.shape[-1], device=x.device)
    src = t.unsqueeze(0) - shifts.to(x.device, torch.long).unsqueeze(1)  # (B, T)
    valid = (src >= 0) & (src < x.shape[-1])
    out = torch.gather(x[:, 0], 1, src.clamp(0, x.shape[-1] - 1))
    return (out * valid).unsqueeze(1)


def time_stretch(x: Tensor, rates: Tensor) -> Tensor:
    """Speed perturbation by linear interpolation about the centre ``c = (T - 1) / 2``:
    ``y(t) = x(c + (t - c) * rate)`` (rate > 1: faster and higher), zero outside ``[0, T - 1]``."""
    n = x.shape[-1]
    t = torch.arange(n, device=x.device, dtype=torch.float64)
    c = (n - 1) / 2
    pos = c + (t.unsqueeze(0) - c) * rates.to(x.device, torch.float64).unsqueeze(1)  # (B, T)
    valid = (pos >= 0) & (pos <= n - 1)
    lo = pos.floor().clamp(0, n - 1).long()
    hi = (lo + 1).clamp(max=n - 1)
    w = (pos - lo).to(x.dtype)
    xs = x[:, 0]
    out = torch.gather(xs, 1, lo) * (1 - w) + torch.gather(xs, 1, hi) * w
    return (out * valid).unsqueeze(1)


def apply_gain(x: Tensor, gain_db: Tensor) -> Tensor:
    """Amplitude gain: ``y = x * 10^(gain_db / 20)``."""
    return x * torch.pow(10.0, gain_db.to(x.device, x.dtype) / 20.0).view(-1, 1, 1)


def add_noise(x: Tensor, noise: Tensor, snr_db: Tensor) -> Tensor:
    """``x + a * noise`` with ``a`` chosen so that ``10 log10(mean(x²) / mean((a·noise)²)) = snr_db`` per
    clip (means over the clip's samples); silent clips are returned unchanged."""
    p_signal = x.square().mean(dim=(1, 2))
    p_noise = noise.square().mean(dim=(1, 2)).clamp_min(torch.finfo(x.dtype).tiny)
    target = p_signal / torch.pow(10.0, snr_db.to(x.device, x.dtype) / 10.0)
    a = torch.sqrt(target / p_noise)
    return x + a.view(-1, 1, 1) * noise


# ------------------------------------------------------------------------------------------- SpecAugment
def sample_masks(
    batch: int,
    size: int,
    max_width: int,
    count: int,
    generator: torch.Generator | None,
    device: torch.device,
    max_fraction: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """SpecAugment mask parameters along an axis of ``size`` (Park et al. 2019, arXiv 1904.08779, Sec. 2): widths
    ``w ~ U{0..min(max_width, floor(max_fraction * size))}`` and starts ``w0 ~ U{0..size - w - 1}``
    (``w0 = 0`` when ``w = size``), ``count`` masks per sample: two ``(batch, count)`` int64 tensors."""
    bound = min(max_width, math.floor(max_fraction * size), size)
    u = torch.rand(batch, count, 2, generator=generator, device=device)
    width = torch.floor(u[..., 0] * (bound + 1)).long().clamp(max=bound)
    room = (size - width).clamp_min(1)
    start = torch.floor(u[..., 1] * room).long().minimum(room - 1)
    return width, start


def mask_along(spec: Tensor, width: Tensor, start: Tensor, dim: int, value: float = 0.0) -> Tensor:
    """Set ``[start, start + width)`` along ``dim`` (-2: frequency, -1: time) of ``spec (B, 1, F, T)`` to
    ``value``, for each of the ``count`` masks per sample."""
    n = spec.shape[dim]
    idx = torch.arange(n, device=spec.device).view(1, 1, n)
    hit = ((idx >= start.unsqueeze(-1)) & (idx < (start + width).unsqueeze(-1))).any(dim=1)  # (B, n)
    shape = (spec.shape[0], 1, n, 1) if dim in (-2, 2) else (spec.shape[0], 1, 1, n)
    return spec.masked_fill(hit.view(shape), value)


# --------------------------------------------------------------------------------------------- the views
def _range(name: str, value: Sequence[float], lo: float | None = None) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a (min, max) pair of numbers, got {value!r}") from None
    if not (math.isfinite(a) and math.isfinite(b) and a <= b and (lo is None or a > lo)):
        raise ConfigError(
            f"{name} must be an ordered finite (min, max) pair{'' if lo is None else f' above {lo}'}, got {value!r}"
        )
    return a, b


def _prob(name: str, p: float) -> float:
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p <= 1:
        raise ConfigError(f"{name} must be a probability in [0, 1], got {p!r}")
    return float(p)


class AudioViews(nn.Module):
    """Random views of ``(B, 1, T)`` float waveforms: waveforms (``features="waveform"``) or normalised
    log-mel spectrograms ``(B, 1, n_mels, frames)`` (``features="logmel"``); see the module docstring.

    Each operation has a probability per sample (``*_p``); ``freq_mask``/``time_mask`` are Park et al.'s
    ``F``/``T``, ``num_freq_masks``/``num_time_masks`` their ``m_F``/``m_T``, ``time_mask_fraction`` their
    ``p``. ``mean``/``std`` normalise the log-mel (scalars, e.g. from the training set); :meth:`eval_view` is
    the deterministic transform for evaluation (no augmentation).
    """

    def __init__(
        self,
        sample_rate: int = 8000,
        features: str = "logmel",
        max_shift_seconds: float = 0.1,
        stretch: Sequence[float] = (0.85, 1.15),
        stretch_p: float = 0.5,
        gain_db: Sequence[float] = (-6.0, 6.0),
        gain_p: float = 1.0,
        snr_db: Sequence[float] = (10.0, 40.0),
        noise_p: float = 0.5,
        freq_mask: int = 8,
        num_freq_masks: int = 2,
        time_mask: int = 20,
        num_time_masks: int = 2,
        time_mask_fraction: float = 0.2,
        mean: float = 0.0,
        std: float = 1.0,
        logmel: LogMel | None = None,
    ) -> None:
        super().__init__()
        if features not in ("logmel", "waveform"):
            raise ConfigError(f"features must be 'logmel' or 'waveform', got {features!r}")
        if not (isinstance(max_shift_seconds, (int, float)) and max_shift_seconds >= 0):
            raise ConfigError(f"max_shift_seconds must be >= 0, got {max_shift_seconds!r}")
        for name, v in (
            ("freq_mask", freq_mask),
            ("num_freq_masks", num_freq_masks),
            ("time_mask", time_mask),
            ("num_time_masks", num_time_masks),
        ):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {v!r}")
        if not (isinstance(std, (int, float)) and std > 0):
            raise ConfigError(f"std must be positive, got {std!r}")
        self.features = features
        self.max_shift = round(max_shift_seconds * sample_rate)
        self.stretch = _range("stretch", stretch, lo=0.0)
        self.gain_db = _range("gain_db", gain_db)
        self.snr_db = _range("snr_db", snr_db)
        self.stretch_p, self.gain_p, self.noise_p = (
            _prob("stretch_p", stretch_p),
            _prob("gain_p", gain_p),
            _prob("noise_p", noise_p),
        )
        self.freq_mask, self.num_freq_masks = freq_mask, num_freq_masks
        self.time_mask, self.num_time_masks = time_mask, num_time_masks
        self.time_mask_fraction = _prob("time_mask_fraction", time_mask_fraction)
        self.mean, self.std = float(mean), float(std)
        self.logmel = logmel if logmel is not None else LogMel(sample_rate=sample_rate)

    def eval_view(self, x: Tensor) -> Tensor:
        """Deterministic evaluation transform: the normalised log-mel (or the waveform itself)."""
        _check_waves(x)
        if self.features == "waveform":
            return x.float()
        return (self.logmel(x) - self.mean) / self.std

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check_waves(x)
        dev = x.device
        if generator is not None and generator.device.type != dev.type:
            raise ConfigError(f"the generator is on {generator.device} but the waveforms are on {dev}")
        b = x.shape[0]
        x = x.float()
        u = torch.rand(b, 7, generator=generator, device=dev)
        noise = torch.randn(x.shape, generator=generator, device=dev)
        shifts = (
            torch.floor(u[:, 0] * (2 * self.max_shift + 1)).long().clamp(max=2 * self.max_shift)
            - self.max_shift
        )
        x = shift(x, shifts)
        lo, hi = self.stretch
        rates = torch.where(u[:, 2] < self.stretch_p, lo + (hi - lo) * u[:, 1], torch.ones_like(u[:, 1]))
        x = time_stretch(x, rates)
        lo, hi = self.gain_db
        gains = torch.where(u[:, 4] < self.gain_p, lo + (hi - lo) * u[:, 3], torch.zeros_like(u[:, 3]))
        x = apply_gain(x, gains)
        lo, hi = self.snr_db
        snr = lo + (hi - lo) * u[:, 5]
        x = torch.where((u[:, 6] < self.noise_p).view(-1, 1, 1), add_noise(x, noise, snr), x)
        if self.features == "waveform":
            return x
        spec = (self.logmel(x) - self.mean) / self.std
        _, _, n_f, n_t = spec.shape
        if self.num_freq_masks and self.freq_mask:
            w, s = sample_masks(b, n_f, self.freq_mask, self.num_freq_masks, generator, dev)
            spec = mask_along(spec, w, s, dim=-2)
        if self.num_time_masks and self.time_mask:
            w, s = sample_masks(
                b, n_t, self.time_mask, self.num_time_masks, generator, dev, self.time_mask_fraction
            )
            spec = mask_along(spec, w, s, dim=-1)
        return spec

    def extra_repr(self) -> str:
        return (
            f"features={self.features}, max_shift={self.max_shift}, stretch={self.stretch} (p={self.stretch_p}), "
            f"gain_db={self.gain_db} (p={self.gain_p}), snr_db={self.snr_db} (p={self.noise_p}), "
            f"F={self.freq_mask}, mF={self.num_freq_masks}, T={self.time_mask}, mT={self.num_time_masks}, "
            f"p={self.time_mask_fraction}"
        )
