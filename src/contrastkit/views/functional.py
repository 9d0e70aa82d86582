"""Batched, per-sample image operations for building views.

Every function works on a float batch ``x`` of shape ``(B, C, H, W)`` with values in ``[0, 1]`` and takes
per-sample parameters as tensors of shape ``(B,)`` (a Python float is broadcast to the whole batch). All of
them are vectorised over the batch, run on any device, and contain no data-dependent Python control flow and
no host synchronisation, so they can be traced by ``torch.compile``.

The colour operations follow torchvision's tensor definitions (``torchvision.transforms.functional``):

* brightness  ``clamp(f * x)``
* contrast    ``clamp(f * x + (1 - f) * mean(gray(x)))`` (one mean per image)
* saturation  ``clamp(f * x + (1 - f) * gray(x))``
* hue         RGB -> HSV, ``h <- (h + f) mod 1``, HSV -> RGB, with ``f`` in turns (``[-0.5, 0.5]``)

For one-channel images saturation, hue and grayscale are the identity, as in torchvision. Grayscale uses the
ITU-R BT.601 weights ``(0.299, 0.587, 0.114)`` (PIL's and kornia's; torchvision's tensor path rounds the red
weight to ``0.2989``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit.errors import ConfigError

__all__ = [
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "color_jitter",
    "crop_flip_resize",
    "gaussian_blur",
    "rgb_to_grayscale",
    "sample_resized_crop",
    "solarize",
]

_GRAY_WEIGHTS = (0.299, 0.587, 0.114)

# Operation ids used by :func:`color_jitter`'s ``order`` (torchvision's ColorJitter numbering).
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3


def _per_sample(value: Tensor | float, x: Tensor) -> Tensor:
    """A ``(B,)`` tensor or a number as a ``(B, 1, 1, 1)`` tensor on ``x``'s device and dtype."""
    if isinstance(value, (int, float)):
        # a fill (torch.as_tensor(number, device=cuda) copies from the host and synchronises), in float32
        # for 16-bit images and cast: a number beyond their range becomes +-inf, as with as_tensor, where
        # torch.full of that dtype refuses it
        wide = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        return torch.full((x.shape[0], 1, 1, 1), float(value), dtype=wide, device=x.device).to(x.dtype)
    t = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    if t.dim() == 0:
        return t.expand(x.shape[0]).reshape(-1, 1, 1, 1)
    if t.dim() != 1 or t.shape[0] != x.shape[0]:
        raise ConfigError(
            f"per-sample parameters must be a number or a tensor of shape (B,) = ({x.shape[0]},), "
            f"got shape {tuple(t.shape)}; pass one value per image"
        )
    return t.reshape(-1, 1, 1, 1)


def _check_image(x: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ConfigError(f"{name} must be a (B, C, H, W) tensor, got {shape}; add a batch dimension")
    if not x.is_floating_point():
        raise ConfigError(
            f"{name} must be a floating-point image in [0, 1], got {x.dtype}; convert with x.float() / 255"
        )


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """Luma ``0.299 R + 0.587 G + 0.114 B`` as a ``(B, 1, H, W)`` image; one-channel input is returned as is.

    torchvision ``rgb_to_grayscale(img, num_output_channels=1)`` (PIL weights).
    """
    _check_image(x)
    if x.shape[1] == 1:
        return x
    if x.shape[1] != 3:
        raise ConfigError(f"rgb_to_grayscale needs 1 or 3 channels, got {x.shape[1]}")
    r, g, b = x.unbind(dim=1)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(1)


def adjust_brightness(x: Tensor, factor: Tensor | float) -> Tensor:
    """torchvision ``adjust_brightness``: ``clamp(f * x, 0, 1)``; ``f = 1`` is the identity, ``0`` black."""
    _check_image(x)
    return (_per_sample(factor, x) * x).clamp(0.0, 1.0)


def adjust_contrast(x: Tensor, factor: Tensor | float) -> Tensor:
    """torchvision ``adjust_contrast``: ``clamp(f x + (1-f) m)``, ``m`` the grayscale image's mean."""
    _check_image(x)
    f = _per_sample(factor, x)
    mean = rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return (f * x + (1.0 - f) * mean).clamp(0.0, 1.0)


def adjust_saturation(x: Tensor, factor: Tensor | float) -> Tensor:
    """torchvision ``adjust_saturation``: blend with the grayscale image, ``clamp(f x + (1-f) gray(x))``."""
    _check_image(x)
    if x.shape[1] == 1:
        return x
    f = _per_sample(factor, x)
    return (f * x + (1.0 - f) * rgb_to_grayscale(x)).clamp(0.0, 1.0)


def adjust_hue(x: Tensor, factor: Tensor | float) -> Tensor:
    """torchvision ``adjust_hue``: shift the HSV hue by ``factor`` turns (in ``[-0.5, 0.5]``).

    One-channel images are returned unchanged. Computed without materialising HSV: with ``v = max``,
    ``c = max - min`` and the hue in sextants ``h6`` (torchvision's ``_rgb2hsv``: the first maximal
    channel picks the sextant), channel ``n = 5, 3, 1`` (R, G, B) of the result is
    ``v - c clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + h6 + 6 factor) mod 6``, the branch-free form of
    torchvision's ``_hsv2rgb`` table.
    """
    _check_image(x)
    if x.shape[1] == 1:
        return x
    if x.shape[1] != 3:
        raise ConfigError(f"adjust_hue needs 1 or 3 channels, got {x.shape[1]}")
    r, g, b = x.unbind(dim=1)
    maxc = x.amax(dim=1, keepdim=True)
    chroma = maxc - x.amin(dim=1, keepdim=True)
    m, c = maxc.squeeze(1), chroma.squeeze(1)
    num = torch.where(m == r, g - b, torch.where(m == g, (b - r) + 2.0 * c, (r - g) + 4.0 * c)).unsqueeze(1)
    safe = torch.where(chroma == 0, torch.ones_like(chroma), chroma)
    # 5, 3, 1 made on the device: torch.tensor([...], device=cuda) would copy from the host and synchronise
    n = (5.0 - 2.0 * torch.arange(3, dtype=x.dtype, device=x.device)).view(1, 3, 1, 1)
    offset = 6.0 * _per_sample(factor, x) + n  # (B, 3, 1, 1)
    k = torch.addcdiv(offset, num, safe)
    k = k - 6.0 * torch.floor(k * (1.0 / 6.0))  # k mod 6 (torch.remainder is much slower on CPU)
    w = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return torch.addcmul(maxc, chroma, w, value=-1.0).clamp_(0.0, 1.0)


def solarize(x: Tensor, threshold: Tensor | float) -> Tensor:
    """torchvision ``solarize``: pixels ``>= threshold`` become ``1 - x``."""
    _check_image(x)
    return torch.where(x >= _per_sample(threshold, x), 1.0 - x, x)


def gaussian_blur(x: Tensor, sigma: Tensor | float, kernel_size: int) -> Tensor:
    """torchvision ``gaussian_blur`` with a per-sample isotropic ``sigma`` and reflect padding.

    The 1-D kernel is ``exp(-t^2 / (2 sigma^2))`` normalised to sum 1 at ``t = -k//2 .. k//2``; the two
    separable passes are grouped convolutions with one kernel per (sample, channel), so a batch with a
    different ``sigma`` for every image is one pair of convolutions (no loop over samples).
    """
    _check_image(x)
    if not isinstance(kernel_size, int) or kernel_size <= 0 or kernel_size % 2 == 0:
        raise ConfigError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
    b, c, height, width = x.shape
    half = kernel_size // 2
    if half >= height or half >= width:
        raise ConfigError(
            f"kernel_size {kernel_size} is too large for {height}x{width} images with reflect padding; "
            f"use an odd kernel_size of at most {2 * min(height, width) - 1}"
        )
    if b * c == 0:  # nothing to blur (grouped convolutions need at least one group)
        return x
    sig = _per_sample(sigma, x).view(-1, 1)
    t = torch.arange(kernel_size, dtype=x.dtype, device=x.device) - half
    kernel = torch.exp(-0.5 * (t / sig) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (B, k)
    kernel = kernel.repeat_interleave(c, dim=0)  # (B*C, k)
    y = F.pad(x.reshape(1, b * c, height, width), (half, half, half, half), mode="reflect")
    y = F.conv2d(y, kernel.view(b * c, 1, 1, kernel_size), groups=b * c)
    y = F.conv2d(y, kernel.view(b * c, 1, kernel_size, 1), groups=b * c)
    return y.view(b, c, height, width)


def color_jitter(
    x: Tensor,
    brightness: Tensor | float,
    contrast: Tensor | float,
    saturation: Tensor | float,
    hue: Tensor | float | None,
    order: Tensor,
    apply: Tensor | None = None,
) -> Tensor:
    """torchvision ``ColorJitter`` with per-sample factors and a per-sample order of the four operations.

    ``order`` is a ``(B, 4)`` permutation of ``0..3`` (brightness, contrast, saturation, hue), giving the
    operation applied at each position, as torchvision's ``fn_idx = torch.randperm(4)``. Samples whose
    ``apply`` is false are returned unchanged (``RandomApply``). ``hue=None`` leaves the hue alone.

    Brightness, contrast and saturation at one position are one fused blend
    ``clamp(a x + b gray(x) + c mean(gray(x)))`` (exactly the selected operation); hue is computed once,
    between the positions before it and those after it.
    """
    _check_image(x)
    bsz, channels = x.shape[0], x.shape[1]
    if channels not in (1, 3):
        raise ConfigError(f"color_jitter needs 1 or 3 channels, got {channels}")
    if order.shape != (bsz, 4):
        raise ConfigError(f"order must be a (B, 4) permutation of 0..3, got shape {tuple(order.shape)}")
    order = order.to(device=x.device, dtype=torch.long)
    factors = torch.cat(
        [_per_sample(f, x).view(-1, 1) for f in (brightness, contrast, saturation)], dim=1
    )  # (B, 3)
    active = (
        torch.ones(bsz, dtype=torch.bool, device=x.device)
        if apply is None
        else apply.to(device=x.device, dtype=torch.bool)
    )
    use_hue = hue is not None and channels == 3
    hue_pos = (order == HUE).to(torch.uint8).argmax(dim=1)  # (B,)

    def blend(y: Tensor, k: int, when: Tensor) -> Tensor:
        op = order[:, k]
        # saturation (like hue) is the identity on one-channel images
        on = when & active & (op != HUE)
        if channels == 1:
            on = on & (op != SATURATION)
        f = factors.gather(1, op.clamp(max=SATURATION).unsqueeze(1)).squeeze(1)
        a = torch.where(on, f, torch.ones_like(f))
        b = torch.where(on & (op == SATURATION), 1.0 - f, torch.zeros_like(f))
        c = torch.where(on & (op == CONTRAST), 1.0 - f, torch.zeros_like(f))
        gray = rgb_to_grayscale(y)
        mean = gray.mean(dim=(1, 2, 3), keepdim=True)
        view = (-1, 1, 1, 1)
        base = torch.addcmul(c.view(view) * mean, b.view(view), gray)  # one channel
        return torch.addcmul(base, a.view(view), y).clamp_(0.0, 1.0)

    if not use_hue:
        always = torch.ones_like(active)
        for k in range(4):
            x = blend(x, k, always)
        return x
    # Hue sits at position hue_pos: positions 0..2 may precede it, positions 1..3 may follow it.
    for k in range(3):
        x = blend(x, k, hue_pos > k)
    shifted = adjust_hue(x, hue)
    x = torch.where(active.view(-1, 1, 1, 1), shifted, x)
    for k in range(1, 4):
        x = blend(x, k, hue_pos < k)
    return x


def _validate_range(name: str, value: Sequence[float], low: float, high: float | None) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a pair (min, max) of numbers, got {value!r}") from None
    upper_ok = high is None or hi <= high
    if not (math.isfinite(lo) and math.isfinite(hi) and lo > low and lo <= hi and upper_ok):
        bound = f"in ({low}, {high}]" if high is not None else f"above {low}"
        raise ConfigError(f"{name} must be an ordered pair (min <= max) with values {bound}, got {value!r}")
    return lo, hi


def sample_resized_crop(
    batch: int,
    height: int,
    width: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Crop boxes ``(top, left, h, w)``, float tensors of shape ``(batch,)``, drawn as torchvision's
    ``RandomResizedCrop.get_params``, vectorised.

    Ten tries per sample of area ``U(scale) * H * W`` and aspect ratio ``exp(U(log ratio))``, with
    ``w = round(sqrt(area * r))`` and ``h = round(sqrt(area / r))``; the first try with ``0 < w <= W`` and
    ``0 < h <= H`` wins and is placed uniformly (``top ~ randint(0, H - h + 1)``). Samples with no
    valid try get torchvision's fallback: the centred largest crop with the ratio clamped to ``ratio``.
    """
    scale = _validate_range("scale", scale, 0.0, 1.0)
    ratio = _validate_range("ratio", ratio, 0.0, None)
    if height <= 0 or width <= 0:
        raise ConfigError(f"image size must be positive, got {height}x{width}")
    tries = 10
    area = float(height * width)
    u = torch.rand(batch, tries, 2, generator=generator, device=device)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(target_area * aspect))
    h = torch.round(torch.sqrt(target_area / aspect))
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)

    # torchvision's fallback depends only on the image size and ratio: a Python constant.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fh, fw = height, round(height * ratio[1])
    else:
        fw, fh = width, height
    ok = valid.any(dim=1)
    w = torch.where(ok, w, torch.full_like(w, fw))
    h = torch.where(ok, h, torch.full_like(h, fh))

    pos = torch.rand(batch, 2, generator=generator, device=device)
    top = torch.minimum(torch.floor(pos[:, 0] * (height - h + 1)), height - h)
    left = torch.minimum(torch.floor(pos[:, 1] * (width - w + 1)), width - w)
    top = torch.where(ok, top, torch.full_like(top, (height - fh) // 2))
    left = torch.where(ok, left, torch.full_like(left, (width - fw) // 2))
    return top, left, h, w


def crop_flip_resize(
    x: Tensor,
    boxes: Tensor | Sequence[Tensor],
    flip: Tensor | None,
    out_size: int | tuple[int, int],
) -> Tensor:
    """Crop each image to its box, resize it to ``out_size`` (bilinear) and mirror it where ``flip`` is true,
    in one ``grid_sample``.

    ``boxes`` is ``(top, left, h, w)`` in pixels, either four ``(B,)`` tensors (as from
    :func:`sample_resized_crop`) or a ``(B, 4)`` tensor. The result equals torchvision's
    ``resized_crop(x, top, left, h, w, out_size, antialias=False)`` followed by ``hflip``: output pixel
    ``o`` reads source position ``left + (o + 0.5) * w / out_w - 0.5`` (half-pixel centres,
    ``align_corners=False``), clamped to the box as resizing the cropped image clamps at its border. A
    full-image box at the input size therefore reads every pixel centre exactly. float16 and bfloat16
    images are resampled in float32 (the grid's positions need its precision) and returned in their dtype.
    """
    _check_image(x)
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ConfigError(f"boxes must be (B, 4) as (top, left, h, w), got shape {tuple(boxes.shape)}")
        top, left, bh, bw = boxes.unbind(dim=1)
    else:
        top, left, bh, bw = boxes
    if isinstance(out_size, int):
        out_h, out_w = out_size, out_size
    else:
        out_h, out_w = (int(s) for s in out_size)
    if out_h <= 0 or out_w <= 0:
        raise ConfigError(f"out_size must be positive, got {out_size!r}")
    bsz, _, in_h, in_w = x.shape
    out_dtype = x.dtype
    if x.dtype in (torch.float16, torch.bfloat16):  # resampled in float32, returned in the input's dtype:
        x = x.to(torch.float32)  # a half-precision grid misplaces pixels; CPU grid_sample crashes on them
    opts = {"dtype": x.dtype, "device": x.device}

    def axis(start: Tensor, length: Tensor, n_out: int, n_in: int, mirror: Tensor | None) -> Tensor:
        start = start.to(**opts).view(-1, 1)
        length = length.to(**opts).view(-1, 1)
        o = torch.arange(n_out, **opts).expand(bsz, n_out)
        if mirror is not None:
            o = torch.where(mirror.to(device=x.device, dtype=torch.bool).view(-1, 1), n_out - 1.0 - o, o)
        src = start + (o + 0.5) * (length / n_out) - 0.5
        src = torch.minimum(torch.maximum(src, start), start + length - 1.0)
        return (2.0 * src + 1.0) / n_in - 1.0  # grid_sample's normalised coordinate, align_corners=False

    gx = axis(left, bw, out_w, in_w, flip)  # (B, out_w)
    gy = axis(top, bh, out_h, in_h, None)  # (B, out_h)
    grid = torch.stack(
        (gx.unsqueeze(1).expand(bsz, out_h, out_w), gy.unsqueeze(2).expand(bsz, out_h, out_w)), dim=-1
    )
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.to(out_dtype)
