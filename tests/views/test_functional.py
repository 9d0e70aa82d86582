"""Tests for contrastkit.views.functional against kornia and independent reference implementations."""

from __future__ import annotations

import colorsys
import math
import random

import kornia
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from contrastkit.errors import ConfigError
from contrastkit.views import functional as VF


def _images(b: int = 24, c: int = 3, h: int = 13, w: int = 17, seed: int = 0) -> torch.Tensor:
    """Random images in [0, 1] with the awkward cases: gray pixels, ties, saturated and black regions."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, h, w, generator=g)
    x[0] = x[0, :1].expand(c, -1, -1)  # gray image (all channels equal)
    x[1, :, :3] = 1.0
    x[2, :, :3] = 0.0
    x[3] = (x[3] * 4).round() / 4  # many exact ties between channels
    return x


def _factors(b: int, lo: float, hi: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(b, generator=g)


# --- colour operations ---------------------------------------------------------------------------------


def test_brightness_matches_kornia_multiplicative() -> None:
    # kornia.enhance.adjust_brightness is *additive* (x + f); torchvision's brightness is multiplicative
    # (_blend with black: clamp(f * x)), which is kornia's adjust_brightness_accumulative.
    x = _images()
    f = _factors(x.shape[0], 0.0, 2.0)
    out = VF.adjust_brightness(x, f)
    torch.testing.assert_close(out, kornia.enhance.adjust_brightness_accumulative(x, f), atol=1e-5, rtol=0)
    assert not torch.allclose(out, kornia.enhance.adjust_brightness(x, f))


@pytest.mark.parametrize("channels", [1, 3])
def test_contrast_matches_kornia(channels: int) -> None:
    x = _images(c=channels)
    f = _factors(x.shape[0], 0.0, 2.0)
    expected = kornia.enhance.adjust_contrast_with_mean_subtraction(x, f)
    torch.testing.assert_close(VF.adjust_contrast(x, f), expected, atol=1e-5, rtol=0)


def test_saturation_matches_kornia() -> None:
    x = _images()
    f = _factors(x.shape[0], 0.0, 2.0)
    expected = kornia.enhance.adjust_saturation_with_gray_subtraction(x, f)
    torch.testing.assert_close(VF.adjust_saturation(x, f), expected, atol=1e-5, rtol=0)


def test_hue_matches_kornia_in_radians() -> None:
    x = _images()
    h = _factors(x.shape[0], -0.5, 0.5)
    h[:3] = torch.tensor([0.5, -0.5, 0.0])
    # torchvision's hue factor is in turns; kornia's adjust_hue takes radians.
    expected = kornia.enhance.adjust_hue(x, h * 2 * math.pi)
    torch.testing.assert_close(VF.adjust_hue(x, h), expected, atol=1e-5, rtol=0)


def test_hue_matches_colorsys() -> None:
    # Python's colorsys uses the same HSV definition as torchvision (hue in turns).
    g = torch.Generator().manual_seed(3)
    x = torch.rand(8, 3, 4, 5, generator=g)
    h = torch.rand(8, generator=g) - 0.5
    out = VF.adjust_hue(x, h)
    for b in range(8):
        for i in range(4):
            for j in range(5):
                hh, ss, vv = colorsys.rgb_to_hsv(*x[b, :, i, j].tolist())
                expected = colorsys.hsv_to_rgb((hh + h[b].item()) % 1.0, ss, vv)
                assert out[b, :, i, j].tolist() == pytest.approx(expected, abs=1e-5)


def test_grayscale_matches_kornia() -> None:
    x = _images()
    out = VF.rgb_to_grayscale(x)
    assert out.shape == (x.shape[0], 1, *x.shape[2:])
    torch.testing.assert_close(out, kornia.color.rgb_to_grayscale(x), atol=1e-6, rtol=0)


def test_one_channel_saturation_hue_grayscale_are_identity() -> None:
    x = _images(c=1)
    f = _factors(x.shape[0], 0.0, 2.0)
    assert torch.equal(VF.adjust_saturation(x, f), x)
    assert torch.equal(VF.adjust_hue(x, f - 1.0), x)
    assert torch.equal(VF.rgb_to_grayscale(x), x)


def test_identity_factors_leave_images_unchanged() -> None:
    x = _images()
    assert torch.equal(VF.adjust_brightness(x, 1.0), x)
    assert torch.equal(VF.adjust_contrast(x, 1.0), x)
    assert torch.equal(VF.adjust_saturation(x, 1.0), x)
    torch.testing.assert_close(VF.adjust_hue(x, 0.0), x, atol=1e-6, rtol=0)


def test_solarize_matches_kornia() -> None:
    x = _images()
    t = _factors(x.shape[0], 0.0, 1.0)
    torch.testing.assert_close(VF.solarize(x, t), kornia.enhance.solarize(x, t), atol=0, rtol=0)


@pytest.mark.parametrize("kernel_size", [3, 9])
def test_gaussian_blur_matches_kornia_per_sample(kernel_size: int) -> None:
    x = _images(h=16, w=20)
    sigma = _factors(x.shape[0], 0.1, 2.0)
    out = VF.gaussian_blur(x, sigma, kernel_size)
    expected = kornia.filters.gaussian_blur2d(
        x, (kernel_size, kernel_size), torch.stack([sigma, sigma], dim=1), border_type="reflect"
    )
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_solarize_matches_the_formula_with_a_threshold_per_sample() -> None:
    x = _images()
    t = _factors(x.shape[0], 0.0, 1.0)
    t[:2] = torch.tensor([0.0, 1.0])
    expected = torch.where(x >= t.view(-1, 1, 1, 1), 1.0 - x, x)
    assert torch.equal(VF.solarize(x, t), expected)
    assert torch.equal(VF.solarize(x, 0.5), torch.where(x >= 0.5, 1.0 - x, x))


def test_gaussian_blur_kernel_is_torchvisions() -> None:
    # torchvision's _get_gaussian_kernel1d: exp(-t^2 / (2 sigma^2)) at t = -(k-1)/2 .. (k-1)/2, summing to 1;
    # a delta image reproduces the separable 2-D kernel, away from the border.
    x = torch.zeros(3, 1, 11, 11)
    x[:, :, 5, 5] = 1.0
    sigma = torch.tensor([0.3, 1.0, 2.0])
    out = VF.gaussian_blur(x, sigma, 5)
    t = torch.arange(-2.0, 3.0)
    for b in range(3):
        k1 = torch.exp(-(t**2) / (2 * sigma[b] ** 2))
        k1 = k1 / k1.sum()
        torch.testing.assert_close(out[b, 0, 3:8, 3:8], torch.outer(k1, k1), atol=1e-7, rtol=0)


def test_gaussian_blur_rejects_bad_kernel() -> None:
    x = _images(h=8, w=8)
    for bad in (4, 0, -3, 2.0):
        with pytest.raises(ConfigError, match="kernel_size must be a positive odd integer"):
            VF.gaussian_blur(x, 1.0, bad)
    with pytest.raises(ConfigError, match=r"too large.*at most 15"):
        VF.gaussian_blur(x, 1.0, 17)
    assert VF.gaussian_blur(x, 1.0, 15).shape == x.shape


def test_gaussian_blur_of_an_empty_batch() -> None:
    x = torch.zeros(0, 3, 8, 8)
    assert VF.gaussian_blur(x, torch.ones(0), 3).shape == (0, 3, 8, 8)


def test_per_sample_factor_shape_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"shape \(B,\)"):
        VF.adjust_brightness(_images(b=4), torch.ones(3))


def _jitter_reference(x, factors, order, apply):
    """One image at a time, the four kornia operations in the sample's order (torchvision ColorJitter)."""
    ops = [
        kornia.enhance.adjust_brightness_accumulative,
        kornia.enhance.adjust_contrast_with_mean_subtraction,
        kornia.enhance.adjust_saturation_with_gray_subtraction,
        lambda img, f: kornia.enhance.adjust_hue(img, f * 2 * math.pi) if img.shape[1] == 3 else img,
    ]
    out = []
    for b in range(x.shape[0]):
        img = x[b : b + 1]
        if apply[b]:
            for op in order[b].tolist():
                img = ops[op](img, factors[op][b : b + 1])
        out.append(img)
    return torch.cat(out)


@pytest.mark.parametrize("channels", [1, 3])
def test_color_jitter_applies_ops_in_per_sample_order(channels: int) -> None:
    b = 48
    x = _images(b=b, c=channels)
    g = torch.Generator().manual_seed(5)
    factors = [_factors(b, 0.6, 1.4, 7), _factors(b, 0.6, 1.4, 8), _factors(b, 0.6, 1.4, 9)]
    factors.append(_factors(b, -0.1, 0.1, 10))
    order = torch.argsort(torch.rand(b, 4, generator=g), dim=1)
    apply = torch.rand(b, generator=g) < 0.8
    out = VF.color_jitter(x, *factors, order=order, apply=apply)
    torch.testing.assert_close(out, _jitter_reference(x, factors, order, apply), atol=1e-5, rtol=0)
    assert torch.equal(out[~apply], x[~apply])
    # the order matters: the same factors in a fixed order give a different result
    fixed = torch.arange(4).expand(b, 4)
    assert not torch.allclose(VF.color_jitter(x, *factors, order=fixed, apply=apply), out, atol=1e-4)


def test_color_jitter_without_hue() -> None:
    b = 16
    x = _images(b=b)
    factors = [_factors(b, 0.5, 1.5, s) for s in (1, 2, 3)]
    order = torch.argsort(torch.rand(b, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    out = VF.color_jitter(x, *factors, hue=None, order=order)
    expected = _jitter_reference(x, [*factors, torch.zeros(b)], order, torch.ones(b, dtype=torch.bool))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


# --- random resized crop -------------------------------------------------------------------------------


def _reference_get_params(rng: random.Random, height: int, width: int, scale, ratio):
    """torchvision RandomResizedCrop.get_params, scalar, with Python's random."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect_ratio = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect_ratio))
        h = round(math.sqrt(target_area / aspect_ratio))
        if 0 < w <= width and 0 < h <= height:
            i = rng.randint(0, height - h)
            j = rng.randint(0, width - w)
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = round(w / min(ratio))
    elif in_ratio > max(ratio):
        h = height
        w = round(h * max(ratio))
    else:
        w = width
        h = height
    return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize(
    ("height", "width", "scale", "ratio"),
    [
        (32, 32, (0.08, 1.0), (3 / 4, 4 / 3)),  # SimCLR defaults
        (24, 40, (0.6, 1.0), (0.5, 1.5)),  # a wide image where ~18% of samples take the fallback
    ],
)
def test_sample_resized_crop_matches_torchvision_distribution(height, width, scale, ratio) -> None:
    n = 20_000
    gen = torch.Generator().manual_seed(0)
    top, left, h, w = VF.sample_resized_crop(n, height, width, scale, ratio, generator=gen)
    top, left, h, w = (t.double() for t in (top, left, h, w))  # integers: compare the same atoms exactly
    rng = random.Random(0)
    ref = torch.tensor([_reference_get_params(rng, height, width, scale, ratio) for _ in range(n)]).double()
    rt, rl, rh, rw = ref.unbind(dim=1)

    def check(ours: torch.Tensor, theirs: torch.Tensor) -> None:
        assert stats.ks_2samp(ours.numpy(), theirs.numpy()).pvalue > 1e-3

    check(h * w / (height * width), rh * rw / (height * width))
    check(torch.log(w / h), torch.log(rw / rh))
    check((top + h / 2) / height, (rt + rh / 2) / height)
    check((left + w / 2) / width, (rl + rw / 2) / width)
    # how often the centred fallback is taken must agree too
    fallback_box = torch.tensor(_reference_get_params(random.Random(0), height, width, (2.0, 2.0), ratio))
    ours_fb = (torch.stack([top, left, h, w], 1) == fallback_box).all(1).double().mean()
    ref_fb = (ref == fallback_box).all(1).double().mean()
    assert abs(ours_fb - ref_fb) < 0.01
    if width != height:
        assert ref_fb > 0.1  # the fallback path is really exercised here


@pytest.mark.parametrize(
    ("height", "width", "scale", "ratio"),
    [
        (32, 32, (0.08, 1.0), (3 / 4, 4 / 3)),
        (7, 50, (0.01, 1.0), (0.1, 10.0)),
        (50, 3, (0.3, 0.9), (1.0, 1.0)),
    ],
)
def test_sample_resized_crop_boxes_inside_image(height, width, scale, ratio) -> None:
    gen = torch.Generator().manual_seed(1)
    top, left, h, w = VF.sample_resized_crop(5000, height, width, scale, ratio, generator=gen)
    for t in (top, left, h, w):
        assert t.dtype == torch.float32 and t.shape == (5000,)
        assert torch.equal(t, t.round())
    assert (h >= 1).all() and (w >= 1).all()
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()


def test_sample_resized_crop_fallback_is_torchvisions_centre_crop() -> None:
    # every try is too wide (w >= sqrt(0.9 * 1024 * 3) > 32): torchvision falls back to a centred crop with
    # the ratio clamped to its minimum, w = 32, h = round(32 / 3) = 11.
    top, left, h, w = VF.sample_resized_crop(64, 32, 32, (0.9, 1.0), (3.0, 4.0))
    box = torch.stack([top, left, h, w], dim=1)
    assert torch.equal(box, torch.tensor([[10.0, 0.0, 11.0, 32.0]]).expand(64, 4))
    # ratio range below the image's: full height, w = round(32 * 0.25) = 8
    top, left, h, w = VF.sample_resized_crop(64, 32, 32, (0.9, 1.0), (0.2, 0.25))
    box = torch.stack([top, left, h, w], dim=1)
    assert torch.equal(box, torch.tensor([[0.0, 12.0, 32.0, 8.0]]).expand(64, 4))


def test_sample_resized_crop_is_deterministic_with_generator() -> None:
    a = VF.sample_resized_crop(100, 32, 32, generator=torch.Generator().manual_seed(3))
    b = VF.sample_resized_crop(100, 32, 32, generator=torch.Generator().manual_seed(3))
    c = VF.sample_resized_crop(100, 32, 32, generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize(
    ("scale", "ratio"),
    [((0.0, 1.0), (0.75, 1.33)), ((0.5, 0.2), (0.75, 1.33)), ((0.1, 1.5), (1, 1)), ((0.1, 1), (2, 1))],
)
def test_sample_resized_crop_rejects_bad_ranges(scale, ratio) -> None:
    with pytest.raises(ConfigError):
        VF.sample_resized_crop(4, 32, 32, scale, ratio)


# --- crop, flip and resize -----------------------------------------------------------------------------


def _uint8_images(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, h, w), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize(("h", "w"), [(32, 32), (8, 8), (13, 29), (224, 160)])
def test_crop_flip_resize_full_box_is_identity(h: int, w: int) -> None:
    xu = _uint8_images(4, 3, h, w)
    x = xu.float() / 255
    boxes = torch.tensor([[0.0, 0.0, h, w]]).expand(4, 4)
    out = VF.crop_flip_resize(x, boxes, None, (h, w))
    # grid_sample's float32 normalised coordinates are off by up to ~3e-8 * size pixels; nothing more
    atol = 1e-6 + 5e-8 * max(h, w)
    torch.testing.assert_close(out, x, atol=atol, rtol=0)
    assert torch.equal((out * 255).round().to(torch.uint8), xu)
    flipped = VF.crop_flip_resize(x, boxes, torch.ones(4, dtype=torch.bool), (h, w))
    torch.testing.assert_close(flipped, torch.flip(x, dims=[-1]), atol=atol, rtol=0)


def test_crop_flip_resize_integer_window_is_exact_slice() -> None:
    x = _uint8_images(6, 3, 40, 30).float() / 255
    g = torch.Generator().manual_seed(2)
    top = torch.randint(0, 40 - 17 + 1, (6,), generator=g).float()
    left = torch.randint(0, 30 - 11 + 1, (6,), generator=g).float()
    h, w = torch.full((6,), 17.0), torch.full((6,), 11.0)
    flip = torch.tensor([False, True, False, True, True, False])
    out = VF.crop_flip_resize(x, (top, left, h, w), flip, (17, 11))
    for b in range(6):
        t, s = int(top[b]), int(left[b])
        ref = x[b, :, t : t + 17, s : s + 11]
        ref = ref.flip(-1) if flip[b] else ref
        torch.testing.assert_close(out[b], ref, atol=2e-6, rtol=0)


@pytest.mark.parametrize("out_size", [(24, 24), (9, 14)])
def test_crop_flip_resize_matches_resize_of_slice(out_size) -> None:
    # torchvision's tensor resized_crop(..., antialias=False) is crop then F.interpolate(bilinear,
    # align_corners=False); reproduce it per sample, boxes both smaller and larger than the output.
    b = 16
    x = torch.rand(b, 3, 31, 37, generator=torch.Generator().manual_seed(0))
    top, left, h, w = VF.sample_resized_crop(b, 31, 37, generator=torch.Generator().manual_seed(1))
    flip = torch.arange(b) % 2 == 0
    out = VF.crop_flip_resize(x, torch.stack([top, left, h, w], 1), flip, out_size)
    for i in range(b):
        t, s, hh, ww = (int(v[i]) for v in (top, left, h, w))
        ref = F.interpolate(
            x[i : i + 1, :, t : t + hh, s : s + ww], size=out_size, mode="bilinear", align_corners=False
        )[0]
        ref = ref.flip(-1) if flip[i] else ref
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)


def test_crop_flip_resize_rejects_bad_boxes() -> None:
    with pytest.raises(ConfigError, match="boxes"):
        VF.crop_flip_resize(torch.rand(2, 3, 8, 8), torch.zeros(2, 3), None, 8)
    with pytest.raises(ConfigError, match="floating-point"):
        VF.crop_flip_resize(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2, 4), None, 8)


def test_a_number_beyond_a_16_bit_range_works_as_before_the_fill() -> None:
    """Numbers are filled, not copied from the host (a copy synchronises on CUDA); a value beyond float16's
    range becomes inf as torch.as_tensor made it (torch.full of float16 refused it)."""
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)).half()
    assert torch.equal(VF.solarize(x, 7e4), x)  # nothing reaches an infinite threshold
    assert torch.equal(VF.adjust_brightness(x, 1e5), VF.adjust_brightness(x, torch.tensor(1e5).half()))
    assert torch.equal(VF.adjust_brightness(x, 0.5), VF.adjust_brightness(x, torch.full((2,), 0.5)))
