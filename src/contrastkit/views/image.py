"""SimCLR image views on batched ``uint8`` tensors.

Chen et al. 2020 (SimCLR), Appendix A, as the torchvision pipeline

    RandomResizedCrop(size, scale, ratio) -> RandomHorizontalFlip(flip_p)
    -> RandomApply([ColorJitter(b, c, s, h)], p=jitter_p) -> RandomGrayscale(grayscale_p) -> Normalize

but on a whole batch at once, with independent random parameters per image, on any device and without a
Python loop over samples. Crop, resize and flip are a single ``grid_sample``; the colour operations are
vectorised (see :mod:`contrastkit.views.functional`). Differences from torchvision's PIL pipeline: the
images stay in float between the colour operations (no rounding to 8 bits after each one), and the resize
is bilinear without antialiasing.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from contrastkit.errors import ConfigError
from contrastkit.views import functional as VF

__all__ = ["ImageViews", "ViewParams", "eval_transform", "two_views"]


@dataclass(frozen=True)
class ViewParams:
    """Per-sample random parameters of one :class:`ImageViews` call (all tensors of batch length)."""

    top: Tensor
    left: Tensor
    height: Tensor
    width: Tensor
    flip: Tensor  # bool (B,)
    jitter: Tensor  # bool (B,): colour jitter applied
    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    hue: Tensor
    order: Tensor  # (B, 4) permutation of brightness, contrast, saturation, hue
    grayscale: Tensor  # bool (B,)


def _probability(name: str, p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= float(p) <= 1.0:
        raise ConfigError(f"{name} must be a probability in [0, 1], got {p!r}")
    return float(p)


def _jitter_range(
    name: str, value: float | Sequence[float], center: float, bound: tuple[float, float]
) -> tuple[float, float]:
    """torchvision ``ColorJitter._check_input``: ``v`` -> ``[max(center - v, lo), center + v]``, or a pair."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        v = float(value)
        if not math.isfinite(v) or v < 0:
            raise ConfigError(f"{name} must be a non-negative number or a (min, max) pair, got {value!r}")
        lo, hi = center - v, center + v
        lo = max(lo, 0.0) if center == 1.0 else lo
    else:
        try:
            lo, hi = (float(x) for x in value)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise ConfigError(
                f"{name} must be a non-negative number or a (min, max) pair, got {value!r}"
            ) from None
    if not (bound[0] <= lo <= hi <= bound[1]):
        raise ConfigError(
            f"{name} range ({lo}, {hi}) must be ordered and within [{bound[0]}, {bound[1]}]; "
            f"for {name} pass a value that keeps it there"
        )
    return lo, hi


def _stats(name: str, values: Sequence[float] | None) -> Tensor | None:
    if values is None:
        return None
    try:
        t = torch.tensor([float(v) for v in values], dtype=torch.float32)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a sequence of numbers (one per channel), got {values!r}") from None
    if t.numel() == 0 or not torch.isfinite(t).all():
        raise ConfigError(f"{name} must be a non-empty sequence of finite numbers, got {values!r}")
    return t


def _as_float(images: Tensor) -> Tensor:
    """``uint8`` in ``[0, 255]`` -> float32 in ``[0, 1]`` (torchvision ``ToTensor``); floats are kept."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div(255.0)
    if images.is_floating_point():
        return images
    raise ConfigError(f"images must be uint8 (0..255) or float (0..1), got {images.dtype}; convert them")


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ConfigError(f"images must be a (B, C, H, W) tensor, got {shape}; add the batch dimension")
    if images.shape[1] not in (1, 3):
        raise ConfigError(
            f"images must have 1 or 3 channels in dimension 1, got shape {tuple(images.shape)}; "
            "pass (B, C, H, W) images, not (B, H, W, C)"
        )


def _normalize(x: Tensor, mean: Tensor | None, std: Tensor | None) -> Tensor:
    """torchvision ``Normalize``: ``(x - mean) / std`` per channel."""
    channels = x.shape[1]
    for name, t in (("mean", mean), ("std", std)):
        if t is not None and t.numel() != channels:
            raise ConfigError(
                f"{name} has {t.numel()} values but the images have {channels} channels; give one per channel"
            )
    if mean is not None:
        x = x - mean.to(device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    if std is not None:
        x = x / std.to(device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return x


def _check_std(std: Tensor | None) -> None:
    if std is not None and not bool((std > 0).all()):
        raise ConfigError(f"std must be positive, got {std.tolist()}")


def eval_transform(
    images: Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> Tensor:
    """Evaluation transform: ``uint8`` -> float32 in ``[0, 1]``, then ``(x - mean) / std`` when given."""
    _check_images(images)
    m, s = _stats("mean", mean), _stats("std", std)
    _check_std(s)
    return _normalize(_as_float(images), m, s)


class ImageViews(nn.Module):
    """SimCLR augmentation: RandomResizedCrop(size, scale, ratio) -> HorizontalFlip(p) ->
    RandomApply(ColorJitter(b, c, s, h) in random order, p=jitter_p) -> RandomGrayscale(p) -> normalise.

    ``forward(images, generator=None)`` maps ``uint8`` ``(B, C, H, W)`` images (C = 1 or 3; float images in
    ``[0, 1]`` are accepted too) to float32 ``(B, C, size, size)`` views, each with its own random draw. All
    random numbers come from ``generator`` (which must live on the images' device) or, when it is ``None``,
    from torch's default generator for that device. The jitter arguments follow torchvision's
    ``ColorJitter``: a number ``v`` means factors ``U[max(0, 1 - v), 1 + v]`` (hue: ``U[-v, v]`` turns), a
    pair gives the range itself; an operation whose range is the identity is skipped, as in torchvision.

    ``forward`` is ``render(images, sample(images, generator))``: ``sample`` draws the per-sample
    :class:`ViewParams` (a few numbers per image), ``render`` does all the pixel work. Both are free of
    host synchronisation and data-dependent Python branches; dynamo cannot trace an explicit
    ``generator``, so with one compile ``render`` and call ``sample`` eagerly.
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
        flip_p: float = 0.5,
        brightness: float | Sequence[float] = 0.4,
        contrast: float | Sequence[float] = 0.4,
        saturation: float | Sequence[float] = 0.4,
        hue: float | Sequence[float] = 0.1,
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(size, numbers.Integral) and not isinstance(size, bool):
            self.size = (int(size), int(size))
        elif isinstance(size, Sequence) and len(size) == 2 and all(isinstance(n, int) for n in size):
            self.size = (int(size[0]), int(size[1]))
        else:
            raise ConfigError(f"size must be a positive integer or an (height, width) pair, got {size!r}")
        if min(self.size) <= 0:
            raise ConfigError(f"size must be positive, got {size!r}")
        self.scale = VF._validate_range("scale", scale, 0.0, 1.0)
        self.ratio = VF._validate_range("ratio", ratio, 0.0, None)
        self.flip_p = _probability("flip_p", flip_p)
        self.jitter_p = _probability("jitter_p", jitter_p)
        self.grayscale_p = _probability("grayscale_p", grayscale_p)
        inf = float("inf")
        self.brightness = _jitter_range("brightness", brightness, 1.0, (0.0, inf))
        self.contrast = _jitter_range("contrast", contrast, 1.0, (0.0, inf))
        self.saturation = _jitter_range("saturation", saturation, 1.0, (0.0, inf))
        self.hue = _jitter_range("hue", hue, 0.0, (-0.5, 0.5))
        mean_t, std_t = _stats("mean", mean), _stats("std", std)
        _check_std(std_t)
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)

    def sample(self, images: Tensor, generator: torch.Generator | None = None) -> ViewParams:
        """Draw the per-sample parameters for ``images`` (only its shape and device are used)."""
        _check_images(images)
        bsz, _, in_h, in_w = images.shape
        dev = images.device
        if generator is not None and generator.device.type != dev.type:
            raise ConfigError(
                f"the generator is on {generator.device} but the images are on {dev}; "
                f"create it with torch.Generator(device={str(dev)!r})"
            )
        top, left, h, w = VF.sample_resized_crop(bsz, in_h, in_w, self.scale, self.ratio, generator, dev)
        u = torch.rand(bsz, 7, generator=generator, device=dev)
        order = torch.argsort(torch.rand(bsz, 4, generator=generator, device=dev), dim=1)

        def between(col: int, lo_hi: tuple[float, float]) -> Tensor:
            return lo_hi[0] + (lo_hi[1] - lo_hi[0]) * u[:, col]

        return ViewParams(
            top=top,
            left=left,
            height=h,
            width=w,
            flip=u[:, 0] < self.flip_p,
            jitter=u[:, 1] < self.jitter_p,
            brightness=between(2, self.brightness),
            contrast=between(3, self.contrast),
            saturation=between(4, self.saturation),
            hue=between(5, self.hue),
            order=order,
            grayscale=u[:, 6] < self.grayscale_p,
        )

    def render(self, images: Tensor, params: ViewParams) -> Tensor:
        """Render the views of ``images`` for the given parameters (deterministic)."""
        _check_images(images)
        channels = images.shape[1]
        boxes = (params.top, params.left, params.height, params.width)
        if images.dtype == torch.uint8:
            # Resample the integer values and scale afterwards (resampling is linear): fewer pixels to scale
            # when the output is smaller than the input.
            x = VF.crop_flip_resize(images.to(torch.float32), boxes, params.flip, self.size).div(255.0)
        else:
            x = VF.crop_flip_resize(_as_float(images), boxes, params.flip, self.size)
        if self.jitter_p > 0 and not self._jitter_is_identity():
            x = VF.color_jitter(
                x,
                params.brightness,
                params.contrast,
                params.saturation,
                None if self.hue == (0.0, 0.0) else params.hue,
                params.order,
                params.jitter,
            )
        if self.grayscale_p > 0 and channels == 3:
            gray = VF.rgb_to_grayscale(x).expand_as(x)
            x = torch.where(params.grayscale.view(-1, 1, 1, 1), gray, x)
        return _normalize(x, self.mean, self.std)

    def _jitter_is_identity(self) -> bool:
        return (
            self.brightness == (1.0, 1.0)
            and self.contrast == (1.0, 1.0)
            and self.saturation == (1.0, 1.0)
            and self.hue == (0.0, 0.0)
        )

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``uint8`` ``(B, C, H, W)`` -> float32 ``(B, C, size, size)`` views, normalised if configured."""
        return self.render(images, self.sample(images, generator))

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, scale={self.scale}, ratio={self.ratio}, flip_p={self.flip_p}, "
            f"brightness={self.brightness}, contrast={self.contrast}, saturation={self.saturation}, "
            f"hue={self.hue}, jitter_p={self.jitter_p}, grayscale_p={self.grayscale_p}"
        )


def two_views(
    views: nn.Module, images: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Two independent views of every image, rendered as one batch of ``2B`` (one pass, better on GPUs)."""
    both = views(torch.cat([images, images], dim=0), generator)
    v1, v2 = both.chunk(2, dim=0)
    return v1, v2
