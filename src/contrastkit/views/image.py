"""SimCLR / MoCo v2 / BYOL image views on batched ``uint8`` tensors.

Chen et al. 2020 (SimCLR, ICML 2020, arXiv 2002.05709), Appendix A (checked against the paper's text; see
the recipe sources below), as the torchvision pipeline

    RandomResizedCrop(size, scale, ratio) -> RandomHorizontalFlip(flip_p)
    -> RandomApply([ColorJitter(b, c, s, h)], p=jitter_p) -> RandomGrayscale(grayscale_p)
    -> RandomApply([GaussianBlur(blur_kernel_size, blur_sigma)], p=blur_p)
    -> RandomSolarize(solarize_threshold, p=solarize_p) -> Normalize

but on a whole batch at once, with independent random parameters per image, on any device and without a
Python loop over samples. Crop, resize and flip are a single ``grid_sample``; the colour operations are
vectorised (see :mod:`contrastkit.views.functional`). Differences from torchvision's PIL pipeline: the
images stay in float between the colour operations (no rounding to 8 bits after each one), and the resize
is bilinear without antialiasing.

:func:`view_pair` (and :meth:`ImageViews.recipe`) build the published recipes by name: ``"simclr"``,
``"simclr_imagenet"``, ``"mocov2"`` and ``"byol"`` (see :data:`RECIPES` and ``docs/views.md``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn

from contrastkit.errors import ConfigError
from contrastkit.views import functional as VF

__all__ = [
    "RECIPES",
    "ImageViews",
    "ViewParams",
    "default_blur_kernel_size",
    "eval_transform",
    "two_views",
    "view_pair",
]


@dataclass(frozen=True)
class ViewParams:
    """Per-sample random parameters of one :class:`ImageViews` call (all tensors of batch length).

    ``blur``, ``blur_sigma`` and ``solarize`` default to ``None`` (parameters made before they existed);
    :meth:`ImageViews.sample` always fills them.
    """

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
    blur: Tensor | None = None  # bool (B,): Gaussian blur applied
    blur_sigma: Tensor | None = None  # (B,) standard deviation of the blur, in output pixels
    solarize: Tensor | None = None  # bool (B,)


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


def _sigma_range(name: str, value: float | Sequence[float]) -> tuple[float, float]:
    """torchvision ``GaussianBlur``'s ``sigma``: a positive number (fixed) or a pair ``0 < min <= max``."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = (value, value)
    return VF._validate_range(name, value, 0.0, None)


def default_blur_kernel_size(size: int | tuple[int, int]) -> int:
    """10% of the smaller output side, made odd as SimCLR's code does: ``2 * ((side // 10) // 2) + 1``.

    23 at 224 pixels (BYOL's 23x23 kernel), 3 at 32, 1 (no blur) below 20.
    """
    side = min(size) if isinstance(size, tuple) else int(size)
    return 2 * ((side // 10) // 2) + 1


def _kernel_size(name: str, value: int | None, size: tuple[int, int]) -> int:
    if value is None:
        return default_blur_kernel_size(size)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0 or value % 2 == 0:
        raise ConfigError(
            f"{name} must be a positive odd integer (or None for 10% of the view size), got {value!r}; "
            "pass an odd number such as 3 or 23"
        )
    k, side = int(value), min(size)
    if k // 2 >= side:
        raise ConfigError(
            f"{name} {k} is too large for {size[0]}x{size[1]} views (reflect padding needs "
            f"{name} // 2 < the smaller side); use an odd {name} of at most {2 * side - 1}"
        )
    return k


def _threshold(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(
            f"{name} must be a number in [0, 1] (the images' [0, 1] float scale), got {value!r}; "
            "for a uint8 threshold t pass t / 255"
        )
    return float(value)


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
    """``uint8`` in ``[0, 255]`` -> float32 in ``[0, 1]`` (torchvision ``ToTensor``); float32 and float64 are
    kept, float16 and bfloat16 computed in float32: their 8 or 11 bits would misplace the crop's sampling
    grid by up to half a pixel at 100 px (bf16), and PyTorch's CPU ``grid_sample`` crashes on them at
    ImageNet sizes."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div(255.0)
    if images.dtype in (torch.float16, torch.bfloat16):
        return images.to(torch.float32)
    if images.is_floating_point():
        return images
    raise ConfigError(f"images must be uint8 (0..255) or float (0..1), got {images.dtype}; convert them")


#: How far above 1 (or below 0) a float image may go (rounding) before it is taken for a 0..255 (or an
#: already normalised) image.
_SCALE_TOLERANCE = 1e-3


def _check_unit_scale(images: Tensor) -> None:
    """Float images must be on the ``[0, 1]`` scale: a float tensor of 0..255 values (``x.float()`` of uint8
    images) would be clamped to white by the colour operations, and one already normalised with a mean and
    std (negative values) would be clamped at 0 by colour jitter, but only when jitter is on. One host
    synchronisation; uint8 images and empty batches are not looked at."""
    if not images.is_floating_point() or images.numel() == 0:
        return
    bottom, top = torch.stack(torch.aminmax(images.detach())).float().tolist()
    where = f"(shape {tuple(images.shape)}, {images.dtype})"
    if bottom < -_SCALE_TOLERANCE:
        raise ConfigError(
            f"float images must be on the [0, 1] scale, but the smallest value of this batch is "
            f"{bottom:.4g} {where}; pass the images before any normalisation (uint8 0..255 or float 0..1) "
            "and give the mean and std to mean/std, which are applied after the augmentation"
        )
    if top > 1.0 + _SCALE_TOLERANCE:
        raise ConfigError(
            f"float images must be on the [0, 1] scale, but the largest value of this batch is {top:.4g} "
            f"{where}; pass uint8 images (0..255) or divide float ones by 255, and leave the normalisation "
            "to mean/std"
        )


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
    """Evaluation transform: ``uint8`` -> float32 in ``[0, 1]``, then ``(x - mean) / std`` when given (float
    images in ``[0, 1]`` are kept, float16 and bfloat16 as float32).

    Float images must already be in ``[0, 1]``: in eager mode a float batch whose largest value is above 1
    (pass uint8 or divide by 255) or whose smallest is below 0 (already normalised: give mean/std here
    instead) is a ConfigError, at the cost of one host synchronisation per float batch.
    """
    _check_images(images)
    if not torch.compiler.is_compiling():
        _check_unit_scale(images)
    m, s = _stats("mean", mean), _stats("std", std)
    _check_std(s)
    return _normalize(_as_float(images), m, s)


class ImageViews(nn.Module):
    """SimCLR augmentation: RandomResizedCrop(size, scale, ratio) -> HorizontalFlip(p) ->
    RandomApply(ColorJitter(b, c, s, h) in random order, p=jitter_p) -> RandomGrayscale(p) ->
    RandomApply(GaussianBlur(blur_kernel_size, blur_sigma), p=blur_p) -> RandomSolarize(threshold, p) ->
    normalise.

    ``forward(images, generator=None)`` maps ``uint8`` ``(B, C, H, W)`` images (C = 1 or 3; float images in
    ``[0, 1]`` are accepted too, see below) to float32 ``(B, C, size, size)`` views, each with its own random
    draw. All random numbers come from ``generator`` (which must live on the images' device) or, when it is
    ``None``, from torch's default generator for that device. The jitter arguments follow torchvision's
    ``ColorJitter``: a number ``v`` means factors ``U[max(0, 1 - v), 1 + v]`` (hue: ``U[-v, v]`` turns), a
    pair gives the range itself; an operation whose range is the identity is skipped, as in torchvision.

    Blur and solarisation are off by default (``blur_p = solarize_p = 0``). The blur is torchvision's
    ``GaussianBlur(blur_kernel_size, sigma=blur_sigma)`` on the rendered view: a per-sample
    ``sigma ~ U[blur_sigma]`` (a number means a fixed sigma), a fixed odd kernel (default: 10% of the
    smaller output side, made odd, as SimCLR; see :func:`default_blur_kernel_size`) and reflect padding.
    Solarisation is torchvision's ``RandomSolarize``: pixels ``>= solarize_threshold`` (in ``[0, 1]``)
    become ``1 - x``. Their random numbers are drawn after all the others and only when ``blur_p`` or
    ``solarize_p`` is positive, so a module without them consumes the generator exactly as before.
    :meth:`recipe` and :func:`view_pair` build the SimCLR, MoCo v2 and BYOL recipes by name.

    ``forward`` is ``render(images, sample(images, generator))``: ``sample`` draws the per-sample
    :class:`ViewParams` (a few numbers per image), ``render`` does all the pixel work. Both are free of
    host synchronisation and data-dependent Python branches; dynamo cannot trace an explicit
    ``generator``, so with one compile ``render`` and call ``sample`` eagerly.

    Float images on the 0..255 scale (``x.float()`` of uint8 images) would be clamped to white: the first
    float batch a module sees, in ``sample`` or an eager ``render``, is checked once (its largest value must
    be at most 1; a ConfigError says to pass uint8 or divide by 255). That one check is the only host
    synchronisation, and it is skipped while compiling; uint8 images are never checked.
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
        blur_p: float = 0.0,
        blur_sigma: float | Sequence[float] = (0.1, 2.0),
        blur_kernel_size: int | None = None,
        solarize_p: float = 0.0,
        solarize_threshold: float = 0.5,
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
        self.blur_p = _probability("blur_p", blur_p)
        self.blur_sigma = _sigma_range("blur_sigma", blur_sigma)
        self.blur_kernel_size = _kernel_size("blur_kernel_size", blur_kernel_size, self.size)
        self.solarize_p = _probability("solarize_p", solarize_p)
        self.solarize_threshold = _threshold("solarize_threshold", solarize_threshold)
        inf = float("inf")
        self.brightness = _jitter_range("brightness", brightness, 1.0, (0.0, inf))
        self.contrast = _jitter_range("contrast", contrast, 1.0, (0.0, inf))
        self.saturation = _jitter_range("saturation", saturation, 1.0, (0.0, inf))
        self.hue = _jitter_range("hue", hue, 0.0, (-0.5, 0.5))
        mean_t, std_t = _stats("mean", mean), _stats("std", std)
        _check_std(std_t)
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)
        self._scale_checked = False  # a float batch has passed _check_unit_scale (see the class docstring)

    def _check_scale_once(self, images: Tensor) -> None:
        """Check the first float batch's scale (eager only: under dynamo this is a no-op, not a graph break)."""
        if (
            torch.compiler.is_compiling()
            or getattr(self, "_scale_checked", False)
            or not images.is_floating_point()
        ):
            return
        _check_unit_scale(images)
        self._scale_checked = True

    def sample(self, images: Tensor, generator: torch.Generator | None = None) -> ViewParams:
        """Draw the per-sample parameters for ``images`` (only its shape and device are used, and, once, the
        scale of float images)."""
        _check_images(images)
        self._check_scale_once(images)
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

        def between(col: int, lo_hi: tuple[float, float], v: Tensor = u) -> Tensor:
            return lo_hi[0] + (lo_hi[1] - lo_hi[0]) * v[:, col]

        blur = solarize = torch.zeros(bsz, dtype=torch.bool, device=dev)
        sigma = torch.full((bsz,), self.blur_sigma[0], dtype=torch.float32, device=dev)
        if self.blur_p > 0 or self.solarize_p > 0:
            # After the draws above, and only when used: modules without blur and solarisation draw the
            # same numbers as before these operations existed.
            extra = torch.rand(bsz, 3, generator=generator, device=dev)
            blur = extra[:, 0] < self.blur_p
            sigma = between(1, self.blur_sigma, extra)
            solarize = extra[:, 2] < self.solarize_p
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
            blur=blur,
            blur_sigma=sigma,
            solarize=solarize,
        )

    def render(self, images: Tensor, params: ViewParams) -> Tensor:
        """Render the views of ``images`` for the given parameters (deterministic)."""
        _check_images(images)
        self._check_scale_once(images)
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
        if self.blur_p > 0 and self.blur_kernel_size > 1:
            if params.blur is None or params.blur_sigma is None:
                raise ConfigError("params have no blur parameters; draw them with this module's sample()")
            blurred = VF.gaussian_blur(x, params.blur_sigma, self.blur_kernel_size)
            x = torch.where(params.blur.view(-1, 1, 1, 1), blurred, x)
        if self.solarize_p > 0:
            if params.solarize is None:
                raise ConfigError("params have no solarize flags; draw them with this module's sample()")
            solarized = VF.solarize(x, self.solarize_threshold)
            x = torch.where(params.solarize.view(-1, 1, 1, 1), solarized, x)
        return _normalize(x, self.mean, self.std)

    def _jitter_is_identity(self) -> bool:
        return (
            self.brightness == (1.0, 1.0)
            and self.contrast == (1.0, 1.0)
            and self.saturation == (1.0, 1.0)
            and self.hue == (0.0, 0.0)
        )

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``uint8`` ``(B, C, H, W)`` -> float32 ``(B, C, size, size)`` views, normalised if configured (float
        images in ``[0, 1]``: float64 stays float64, float16 and bfloat16 give float32)."""
        return self.render(images, self.sample(images, generator))

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, scale={self.scale}, ratio={self.ratio}, flip_p={self.flip_p}, "
            f"brightness={self.brightness}, contrast={self.contrast}, saturation={self.saturation}, "
            f"hue={self.hue}, jitter_p={self.jitter_p}, grayscale_p={self.grayscale_p}, "
            f"blur_p={self.blur_p}, blur_sigma={self.blur_sigma}, blur_kernel_size={self.blur_kernel_size}, "
            f"solarize_p={self.solarize_p}, solarize_threshold={self.solarize_threshold}"
        )

    @classmethod
    def recipe(
        cls,
        name: str,
        size: int | tuple[int, int],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        *,
        view: int = 1,
        **overrides: Any,
    ) -> ImageViews:
        """View ``view`` (1 or 2) of the named recipe in :data:`RECIPES`; ``overrides`` replace its values.

        Symmetric recipes have the same two views; for BYOL, view 1 and view 2 differ (see
        :func:`view_pair`, which builds both).
        """
        if view not in (1, 2) or isinstance(view, bool):
            raise ConfigError(f"view must be 1 or 2 (the first or second view of the recipe), got {view!r}")
        return cls(size=size, mean=mean, std=std, **_recipe_kwargs(name, overrides)[view - 1])


# Every recipe lists all its values (not just those that differ from ImageViews' defaults), as
# (view 1, view 2). The sources (see docs/views.md). Checked against the authors' code (the values) and the
# papers' texts (the values and the appendix, section and table numbers), 2026-12-02.
# - simclr: Chen et al. 2020, SimCLR (arXiv 2002.05709), Appendix B.9 (CIFAR-10), and the google-research/simclr
#   README's CIFAR command (--color_jitter_strength=0.5 --use_blur=False, checked): Appendix A's pipeline
#   with colour strength s = 0.5, i.e. ColorJitter(0.8 s, 0.8 s, 0.8 s, 0.2 s) (the formula of its
#   data_util.color_jitter, checked) = (0.4, 0.4, 0.4, 0.1), and no blur. ImageViews' defaults.
# - simclr_imagenet: SimCLR Appendix A (ImageNet): s = 1.0, blur with p 0.5, sigma U[0.1, 2.0], kernel 10% of
#   the side.
# - mocov2: Chen, Fan, Girshick, He 2020, "Improved Baselines with Momentum Contrastive Learning" (arXiv
#   2003.04297), Section 3 ("Augmentation") / Table 1 ("aug+"), as in facebookresearch/moco main_moco.py --aug-plus (checked):
#   crop scale (0.2, 1), jitter p 0.8 (0.4, 0.4, 0.4, 0.1), grayscale 0.2, blur p 0.5 sigma U[0.1, 2.0],
#   flip 0.5.
# - byol: Grill et al. 2020, BYOL (arXiv 2006.07733), Appendix B, Table 6, as in google-deepmind/
#   deepmind-research byol/utils/augmentations.py augment_config (checked): jitter p 0.8 with
#   (0.4, 0.4, 0.2, 0.1), grayscale 0.2, blur p 1.0 / 0.1 (kernel side / 10: 23x23 at 224 px, sigma
#   U[0.1, 2.0]), solarisation p 0.0 / 0.2 (threshold 0.5), flip 0.5.
_SIMCLR: dict[str, Any] = {
    "scale": (0.08, 1.0),
    "ratio": (3.0 / 4.0, 4.0 / 3.0),
    "flip_p": 0.5,
    "brightness": 0.4,
    "contrast": 0.4,
    "saturation": 0.4,
    "hue": 0.1,
    "jitter_p": 0.8,
    "grayscale_p": 0.2,
    "blur_p": 0.0,
    "blur_sigma": (0.1, 2.0),
    "solarize_p": 0.0,
    "solarize_threshold": 0.5,
}
_SIMCLR_IMAGENET = {
    **_SIMCLR,
    "brightness": 0.8,
    "contrast": 0.8,
    "saturation": 0.8,
    "hue": 0.2,
    "blur_p": 0.5,
}
_MOCOV2 = {**_SIMCLR, "scale": (0.2, 1.0), "blur_p": 0.5}
_BYOL = {**_SIMCLR, "saturation": 0.2}

RECIPES: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Any]]] = MappingProxyType(
    {
        name: (MappingProxyType(first), MappingProxyType(second))
        for name, (first, second) in {
            "simclr": (_SIMCLR, _SIMCLR),
            "simclr_imagenet": (_SIMCLR_IMAGENET, _SIMCLR_IMAGENET),
            "mocov2": (_MOCOV2, _MOCOV2),
            "byol": ({**_BYOL, "blur_p": 1.0}, {**_BYOL, "blur_p": 0.1, "solarize_p": 0.2}),
        }.items()
    }
)
"""Named recipes: ``name -> (view 1 arguments, view 2 arguments)`` of :class:`ImageViews` (without ``size``,
``mean`` and ``std``). The blur kernel is left to :func:`default_blur_kernel_size` (10% of the view side,
made odd: 23 at 224 px)."""

_OVERRIDABLE = frozenset(_SIMCLR) | {"blur_kernel_size"}


def _recipe_kwargs(name: str, overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    key = name.lower().replace("-", "_") if isinstance(name, str) else None
    if key not in RECIPES:
        raise ConfigError(f"unknown view recipe {name!r}; choose one of {', '.join(sorted(RECIPES))}")
    unknown = sorted(set(overrides) - _OVERRIDABLE)
    if unknown:
        raise ConfigError(
            f"unknown ImageViews argument(s) {', '.join(map(repr, unknown))} for recipe {name!r}; "
            f"valid ones are {', '.join(sorted(_OVERRIDABLE))} (size, mean and std are their own arguments)"
        )
    first, second = RECIPES[key]
    return {**first, **overrides}, {**second, **overrides}


def view_pair(
    name: str,
    size: int | tuple[int, int],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **overrides: Any,
) -> tuple[ImageViews, ImageViews]:
    """The two views modules of the named recipe: ``views1, views2 = view_pair("byol", 224, mean, std)``.

    Symmetric recipes (``simclr``, ``simclr_imagenet``, ``mocov2``) return the same module twice, so
    ``views1 is views2`` and :func:`two_views` renders both views in one pass; ``byol`` returns two modules
    (blur p 1.0 / 0.1, solarisation p 0.0 / 0.2). ``overrides`` (any :class:`ImageViews` argument but
    ``size``, ``mean`` and ``std``) apply to both views.
    """
    kw1, kw2 = _recipe_kwargs(name, overrides)
    first = ImageViews(size=size, mean=mean, std=std, **kw1)
    if kw1 == kw2:
        return first, first
    return first, ImageViews(size=size, mean=mean, std=std, **kw2)


def two_views(
    views: nn.Module | tuple[nn.Module, nn.Module], images: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Two independent views of every image, rendered as one batch of ``2B`` (one pass, better on GPUs).

    ``views`` may be a pair from :func:`view_pair`: the same module twice is rendered in one pass as above;
    two different modules (BYOL) render view 1 then view 2, each drawing from ``generator`` in turn.
    """
    if isinstance(views, tuple):
        first, second = views
        if first is not second:
            return first(images, generator), second(images, generator)
        views = first
    both = views(torch.cat([images, images], dim=0), generator)
    v1, v2 = both.chunk(2, dim=0)
    return v1, v2
