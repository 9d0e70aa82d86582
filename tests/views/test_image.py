"""Tests for contrastkit.views.image: the batched SimCLR / MoCo v2 / BYOL augmentation."""

from __future__ import annotations

import dataclasses
import math

import kornia
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from contrastkit.errors import ConfigError
from contrastkit.views import RECIPES, ImageViews, ViewParams, eval_transform, two_views, view_pair
from contrastkit.views import functional as VF
from contrastkit.views.image import default_blur_kernel_size

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _images(b: int, c: int, h: int, w: int | None = None, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, h, w or h), generator=g, dtype=torch.uint8)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


IDENTITY = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0), "flip_p": 0.0, "jitter_p": 0.0, "grayscale_p": 0.0}


@pytest.mark.parametrize(("c", "h", "size"), [(3, 32, 32), (1, 8, 8), (3, 32, 24), (1, 8, 12)])
def test_output_shape_dtype_device(c: int, h: int, size: int) -> None:
    views = ImageViews(size, mean=[0.5] * c, std=[0.25] * c)
    out = views(_images(10, c, h))
    assert out.shape == (10, c, size, size)
    assert out.dtype == torch.float32
    assert out.device == torch.device("cpu")
    assert torch.isfinite(out).all()
    # normalised from [0, 1]: within [(0 - 0.5) / 0.25, (1 - 0.5) / 0.25]
    assert out.min() >= -2.0 - 1e-5 and out.max() <= 2.0 + 1e-5


def test_unnormalised_output_is_in_unit_range_and_batch_of_zero_works() -> None:
    views = ImageViews(16)
    out = views(_images(20, 3, 20))
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert views(_images(0, 3, 20)).shape == (0, 3, 16, 16)


def test_non_square_size_and_input() -> None:
    out = ImageViews((12, 20))(_images(4, 3, 30, 17))
    assert out.shape == (4, 3, 12, 20)


def test_seeded_generator_is_deterministic() -> None:
    views = ImageViews(32)
    x = _images(16, 3, 32)
    a, b, c = views(x, _gen(7)), views(x, _gen(7)), views(x, _gen(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize(("c", "h"), [(3, 32), (1, 8)])
def test_identity_settings_reproduce_eval_transform(c: int, h: int) -> None:
    x = _images(32, c, h)
    mean, std = CIFAR_MEAN[:c], CIFAR_STD[:c]
    views = ImageViews(h, **IDENTITY, mean=mean, std=std)
    out = views(x, _gen(0))
    expected = eval_transform(x, mean, std)
    # equal up to grid_sample's float32 coordinate rounding (~1e-6 of a pixel)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    raw = ImageViews(h, **IDENTITY)(x)
    assert torch.equal((raw * 255).round().to(torch.uint8), x)


def test_eval_transform() -> None:
    x = _images(4, 3, 8)
    assert torch.equal(eval_transform(x), x.float() / 255)
    out = eval_transform(x, CIFAR_MEAN, CIFAR_STD)
    expected = (x.float() / 255 - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(out, expected)
    with pytest.raises(ConfigError, match="channels"):
        eval_transform(x, (0.5,), (0.5,))


def test_float_input_equals_uint8_input() -> None:
    x = _images(8, 3, 16)
    views = ImageViews(12)
    torch.testing.assert_close(views(x, _gen(1)), views(x.float() / 255, _gen(1)), atol=1e-6, rtol=0)


def test_grayscale_p_one_gives_equal_channels_of_the_luma() -> None:
    x = _images(16, 3, 32)
    views = ImageViews(32, grayscale_p=1.0)
    params = views.sample(x, _gen(0))
    assert params.grayscale.all()
    out = views.render(x, params)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])
    colour = views.render(x, dataclasses.replace(params, grayscale=torch.zeros(16, dtype=torch.bool)))
    torch.testing.assert_close(out, kornia.color.rgb_to_grayscale(colour).expand(-1, 3, -1, -1))


def _count_flipped(out: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ref = x.float() / 255
    same = (out - ref).abs().amax(dim=(1, 2, 3)) < 1e-5
    flipped = (out - ref.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-5
    return same, flipped


def _close_to(share: float, p: float, n: int) -> bool:
    return abs(share - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_share_of_flipped_samples() -> None:
    n, p = 4000, 0.3
    x = _images(n, 3, 6)
    views = ImageViews(6, **{**IDENTITY, "flip_p": p})
    params = views.sample(x, _gen(0))
    same, flipped = _count_flipped(views.render(x, params), x)
    assert torch.equal(flipped, params.flip) and torch.equal(same, ~params.flip)
    assert _close_to(flipped.double().mean().item(), p, n)


def test_share_of_jittered_samples() -> None:
    n, p = 4000, 0.6
    x = _images(n, 3, 6)
    views = ImageViews(6, **{**IDENTITY, "jitter_p": p})
    params = views.sample(x, _gen(1))
    changed = (views.render(x, params) - x.float() / 255).abs().amax(dim=(1, 2, 3)) > 1e-4
    assert torch.equal(changed, params.jitter)
    assert _close_to(changed.double().mean().item(), p, n)


def test_share_of_grayscale_samples() -> None:
    n, p = 4000, 0.25
    x = _images(n, 3, 6)
    views = ImageViews(6, **{**IDENTITY, "grayscale_p": p})
    out = views(x, _gen(2))
    gray = (out[:, 0] == out[:, 1]).all(dim=(1, 2)) & (out[:, 1] == out[:, 2]).all(dim=(1, 2))
    assert _close_to(gray.double().mean().item(), p, n)


def test_sampled_parameters_follow_torchvision_ranges() -> None:
    n = 4000
    views = ImageViews(8, brightness=0.4, contrast=0.8, saturation=(0.5, 0.7), hue=0.1)
    p = views.sample(_images(n, 3, 8), _gen(3))
    for name, lo, hi in [("brightness", 0.6, 1.4), ("contrast", 0.2, 1.8), ("saturation", 0.5, 0.7)]:
        v = getattr(p, name)
        assert v.min() >= lo and v.max() <= hi and v.min() < lo + 0.01 and v.max() > hi - 0.01, name
    assert p.hue.min() >= -0.1 and p.hue.max() <= 0.1 and p.hue.min() < -0.099
    assert ImageViews(8, contrast=2.0).contrast == (0.0, 3.0)  # torchvision clips the lower end at 0
    # each row of the order is a permutation; every operation is equally likely at every position
    assert torch.equal(p.order.sort(dim=1).values, torch.arange(4).expand(n, 4))
    counts = F.one_hot(p.order, 4).double().mean(dim=0)
    assert (counts - 0.25).abs().max() < 0.04


def _reference_view(x: torch.Tensor, p: ViewParams, size: int, mean, std) -> torch.Tensor:
    """One image at a time: crop + bilinear resize of the slice, flip, kornia colour ops, normalise."""
    ops = [
        kornia.enhance.adjust_brightness_accumulative,
        kornia.enhance.adjust_contrast_with_mean_subtraction,
        kornia.enhance.adjust_saturation_with_gray_subtraction,
        lambda img, f: kornia.enhance.adjust_hue(img, f * 2 * math.pi),
    ]
    factors = [p.brightness, p.contrast, p.saturation, p.hue]
    out = []
    for b in range(x.shape[0]):
        t, s, h, w = (int(v[b]) for v in (p.top, p.left, p.height, p.width))
        img = x[b : b + 1, :, t : t + h, s : s + w].float() / 255
        img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)
        if p.flip[b]:
            img = img.flip(-1)
        if p.jitter[b]:
            for op in p.order[b].tolist():
                img = ops[op](img, factors[op][b : b + 1])
        if p.grayscale[b]:
            img = kornia.color.rgb_to_grayscale(img).expand(-1, 3, -1, -1)
        out.append(kornia.enhance.normalize(img, torch.tensor(mean), torch.tensor(std)))
    return torch.cat(out)


def test_views_match_a_per_sample_reference_pipeline() -> None:
    x = _images(64, 3, 32, 28)
    views = ImageViews(20, grayscale_p=0.3, mean=CIFAR_MEAN, std=CIFAR_STD)
    params = views.sample(x, _gen(4))
    assert params.flip.any() and params.jitter.any() and params.grayscale.any() and (~params.jitter).any()
    out = views.render(x, params)
    torch.testing.assert_close(out, _reference_view(x, params, 20, CIFAR_MEAN, CIFAR_STD), atol=1e-4, rtol=0)
    assert torch.equal(views(x, _gen(4)), out)


def test_two_views() -> None:
    x = _images(8, 3, 16)
    views = ImageViews(16)
    v1, v2 = two_views(views, x, _gen(0))
    assert v1.shape == v2.shape == (8, 3, 16, 16)
    assert not torch.allclose(v1, v2)
    w1, w2 = two_views(views, x, _gen(0))
    assert torch.equal(v1, w1) and torch.equal(v2, w2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": 0},
        {"size": -3},
        {"size": 2.5},
        {"scale": (0.0, 1.0)},
        {"scale": (0.5, 0.2)},
        {"scale": (0.1, 1.5)},
        {"ratio": (0.0, 1.0)},
        {"ratio": (2.0, 1.0)},
        {"ratio": (1.0,)},
        {"flip_p": 1.5},
        {"jitter_p": -0.1},
        {"grayscale_p": 2},
        {"brightness": -0.1},
        {"contrast": (1.5, 0.5)},
        {"hue": 0.6},
        {"hue": (-0.7, 0.1)},
        {"std": (0.2, 0.0, 0.2)},
        {"mean": ("a", 0.1, 0.1)},
    ],
)
def test_bad_arguments_raise_config_error(kwargs) -> None:
    kwargs = {"size": 8, **kwargs}
    with pytest.raises(ConfigError):
        ImageViews(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"blur_p": 1.5}, r"blur_p must be a probability in \[0, 1\]"),
        ({"blur_p": -0.1}, "blur_p must be a probability"),
        ({"blur_p": True}, "blur_p must be a probability"),
        ({"solarize_p": 2}, "solarize_p must be a probability"),
        ({"solarize_p": float("nan")}, "solarize_p must be a probability"),
        (
            {"blur_sigma": (0.0, 2.0)},
            r"blur_sigma must be an ordered pair \(min <= max\) with values above 0",
        ),
        (
            {"blur_sigma": (2.0, 0.1)},
            r"blur_sigma must be an ordered pair \(min <= max\) with values above 0",
        ),
        ({"blur_sigma": -1.0}, r"blur_sigma must be an ordered pair \(min <= max\) with values above 0"),
        (
            {"blur_sigma": (0.1, float("inf"))},
            r"blur_sigma must be an ordered pair \(min <= max\) with values above 0",
        ),
        ({"blur_sigma": (0.1,)}, r"blur_sigma must be a pair \(min, max\) of numbers"),
        ({"blur_sigma": "wide"}, r"blur_sigma must be a pair \(min, max\) of numbers"),
        ({"blur_kernel_size": 4}, "blur_kernel_size must be a positive odd integer.*pass an odd number"),
        ({"blur_kernel_size": 0}, "blur_kernel_size must be a positive odd integer"),
        ({"blur_kernel_size": -3}, "blur_kernel_size must be a positive odd integer"),
        ({"blur_kernel_size": 3.0}, "blur_kernel_size must be a positive odd integer"),
        ({"blur_kernel_size": True}, "blur_kernel_size must be a positive odd integer"),
        ({"blur_kernel_size": 17}, "blur_kernel_size 17 is too large for 8x8 views.*at most 15"),
        ({"solarize_threshold": 1.5}, r"solarize_threshold must be a number in \[0, 1\].*t / 255"),
        ({"solarize_threshold": 128}, r"solarize_threshold must be a number in \[0, 1\]"),
    ],
)
def test_bad_blur_and_solarize_arguments_name_the_argument_and_the_fix(kwargs, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ImageViews(8, **kwargs)
    ImageViews(8, blur_kernel_size=15)  # the largest kernel reflect padding allows at 8 px


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.zeros(3, 8, 8, dtype=torch.uint8), r"\(B, C, H, W\)"),
        (torch.zeros(2, 8, 8, 3, dtype=torch.uint8), "channels"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.int32), "uint8"),
    ],
)
def test_bad_images_raise_config_error(images: torch.Tensor, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ImageViews(8)(images)


def test_mean_std_length_checked_at_forward() -> None:
    views = ImageViews(8, mean=CIFAR_MEAN, std=CIFAR_STD)
    views(_images(2, 3, 8))
    with pytest.raises(ConfigError, match="channels"):
        views(_images(2, 1, 8))


def test_torch_compile_fullgraph() -> None:
    # sampling with an explicit generator cannot be traced by dynamo, so compile `render` (all the work);
    # without a generator the whole forward compiles.
    x = _images(8, 3, 16)
    views = ImageViews(12, mean=CIFAR_MEAN, std=CIFAR_STD)
    params = views.sample(x, _gen(0))
    compiled_render = torch.compile(views.render, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled_render(x, params), views.render(x, params), atol=0, rtol=0)
    compiled = torch.compile(views, backend="eager", fullgraph=True)
    assert compiled(x).shape == (8, 3, 12, 12)


def test_torch_compile_fullgraph_with_blur_and_solarize() -> None:
    x = _images(8, 3, 16)
    views = ImageViews(12, blur_p=0.5, blur_kernel_size=5, solarize_p=0.5, mean=CIFAR_MEAN, std=CIFAR_STD)
    params = views.sample(x, _gen(0))
    assert params.blur.any() and (~params.blur).any() and params.solarize.any() and (~params.solarize).any()
    compiled_render = torch.compile(views.render, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled_render(x, params), views.render(x, params), atol=0, rtol=0)
    compiled = torch.compile(views, backend="eager", fullgraph=True)
    assert compiled(x).shape == (8, 3, 12, 12)
    byol1, byol2 = view_pair("byol", 12)
    for module in (byol1, byol2):
        p = module.sample(x, _gen(1))
        out = torch.compile(module.render, backend="eager", fullgraph=True)(x, p)
        torch.testing.assert_close(out, module.render(x, p), atol=0, rtol=0)


# --- Gaussian blur and solarisation ----------------------------------------------------------------------


def _blur_reference(x: torch.Tensor, sigma: torch.Tensor, k: int) -> torch.Tensor:
    """kornia's Gaussian blur with one sigma per sample and reflect border (torchvision's padding)."""
    return kornia.filters.gaussian_blur2d(
        x, (k, k), torch.stack([sigma, sigma], dim=1), border_type="reflect"
    )


@pytest.mark.parametrize(("c", "k"), [(3, 5), (1, 7), (3, 3)])
def test_blur_matches_kornia_with_a_sigma_per_sample(c: int, k: int) -> None:
    x = _images(48, c, 16)
    views = ImageViews(16, **IDENTITY, blur_p=1.0, blur_kernel_size=k)
    params = views.sample(x, _gen(5))
    assert params.blur.all()
    assert (
        params.blur_sigma.unique().numel() == 48 and params.blur_sigma.max() - params.blur_sigma.min() > 1.5
    )
    out = views.render(x, params)
    torch.testing.assert_close(out, _blur_reference(x.float() / 255, params.blur_sigma, k), atol=1e-5, rtol=0)


def test_blur_applies_only_where_flagged_and_after_the_colour_operations() -> None:
    x = _images(64, 3, 20, 18)
    views = ImageViews(20, grayscale_p=0.3, blur_p=0.5, mean=CIFAR_MEAN, std=CIFAR_STD)
    assert views.blur_kernel_size == 3  # 10% of 20 px, made odd
    params = views.sample(x, _gen(6))
    assert params.blur.any() and (~params.blur).any() and params.jitter.any() and params.grayscale.any()
    plain = ImageViews(20, grayscale_p=0.3)
    expected = _reference_view(x, params, 20, (0.0,) * 3, (1.0,) * 3)  # crop, flip, jitter, grayscale
    torch.testing.assert_close(plain.render(x, params), expected, atol=1e-4, rtol=0)
    expected = torch.where(
        params.blur.view(-1, 1, 1, 1), _blur_reference(expected, params.blur_sigma, 3), expected
    )
    expected = kornia.enhance.normalize(expected, torch.tensor(CIFAR_MEAN), torch.tensor(CIFAR_STD))
    torch.testing.assert_close(views.render(x, params), expected, atol=1e-4, rtol=0)


def test_solarize_matches_the_formula() -> None:
    x = _images(64, 3, 10)
    views = ImageViews(10, **IDENTITY, solarize_p=0.5)
    params = views.sample(x, _gen(7))
    assert params.solarize.any() and (~params.solarize).any()
    ref = x.float() / 255
    formula = torch.where(params.solarize.view(-1, 1, 1, 1) & (ref >= 0.5), 1.0 - ref, ref)
    torch.testing.assert_close(views.render(x, params), formula, atol=1e-6, rtol=0)
    # another threshold, and exactly at the threshold a pixel is inverted (torchvision's >=)
    at = torch.full((2, 1, 4, 4), 0.25)
    always = ImageViews(4, **IDENTITY, solarize_p=1.0, solarize_threshold=0.25)
    assert torch.equal(always(at, _gen(0)), torch.full_like(at, 0.75))
    below = ImageViews(4, **IDENTITY, solarize_p=1.0, solarize_threshold=0.26)
    assert torch.equal(below(at, _gen(0)), at)


def test_blur_sigma_is_uniform_and_application_rates_match_p() -> None:
    n = 4000
    x = _images(n, 3, 4)
    views = ImageViews(4, blur_p=0.3, blur_sigma=(0.1, 2.0), solarize_p=0.2)
    params = views.sample(x, _gen(8))
    sigma = params.blur_sigma.double().numpy()
    assert stats.kstest(sigma, "uniform", args=(0.1, 1.9)).pvalue > 1e-3
    assert not stats.kstest(sigma, "uniform", args=(0.1, 2.9)).pvalue > 1e-3  # the test has power
    assert sigma.min() >= 0.1 and sigma.max() <= 2.0
    assert _close_to(params.blur.double().mean().item(), 0.3, n)
    assert _close_to(params.solarize.double().mean().item(), 0.2, n)
    # the flags are independent of each other
    assert _close_to((params.blur & params.solarize).double().mean().item(), 0.06, n)
    # a fixed sigma
    assert torch.all(ImageViews(4, blur_p=1.0, blur_sigma=0.7).sample(x[:10], _gen(0)).blur_sigma == 0.7)


def test_solarized_samples_are_exactly_the_flagged_ones() -> None:
    n, p = 2000, 0.2
    x = _images(n, 3, 6)
    views = ImageViews(6, **IDENTITY, solarize_p=p)
    params = views.sample(x, _gen(9))
    changed = (views.render(x, params) - x.float() / 255).abs().amax(dim=(1, 2, 3)) > 1e-4
    assert torch.equal(changed, params.solarize)
    assert _close_to(changed.double().mean().item(), p, n)


def test_blur_and_solarize_off_draw_the_same_numbers_as_before() -> None:
    # The trainer keeps one generator across steps: without blur and solarisation `sample` must draw exactly
    # the crop (2 draws), the 7 uniforms and the 4 order keys, nothing more.
    x = _images(16, 3, 12)
    g = _gen(10)
    ImageViews(10).sample(x, g)
    ref = _gen(10)
    VF.sample_resized_crop(16, 12, 12, generator=ref)
    torch.rand(16, 7, generator=ref)
    torch.rand(16, 4, generator=ref)
    assert torch.equal(g.get_state(), ref.get_state())
    # with them on, the extra numbers come after: every other parameter is unchanged
    off, on = (
        ImageViews(10).sample(x, _gen(11)),
        ImageViews(10, blur_p=0.5, solarize_p=0.5).sample(x, _gen(11)),
    )
    for field in dataclasses.fields(ViewParams):
        if field.name not in ("blur", "blur_sigma", "solarize"):
            assert torch.equal(getattr(off, field.name), getattr(on, field.name)), field.name
    assert not off.blur.any() and not off.solarize.any()
    # and the rendered views of the default module are those of a module without the new arguments
    assert torch.equal(ImageViews(10)(x, _gen(12)), ImageViews(10, blur_p=0.0, solarize_p=0.0)(x, _gen(12)))


def test_blur_and_solarize_are_deterministic_under_a_seed() -> None:
    x = _images(16, 3, 32)
    views = ImageViews(32, blur_p=0.5, solarize_p=0.5)
    a, b, c = views(x, _gen(13)), views(x, _gen(13)), views(x, _gen(14))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_params_without_blur_fields_are_rejected_by_a_blurring_module() -> None:
    x = _images(4, 3, 8)
    params = ImageViews(8).sample(x, _gen(0))
    old = dataclasses.replace(params, blur=None, blur_sigma=None, solarize=None)
    torch.testing.assert_close(ImageViews(8).render(x, old), ImageViews(8).render(x, params))
    with pytest.raises(ConfigError, match="sample"):
        ImageViews(8, blur_p=0.5, blur_kernel_size=3).render(x, old)
    with pytest.raises(ConfigError, match="sample"):
        ImageViews(8, solarize_p=0.5).render(x, old)


def test_empty_batch_with_blur_and_solarize() -> None:
    views = ImageViews(16, blur_p=1.0, solarize_p=1.0)
    assert views(_images(0, 3, 20)).shape == (0, 3, 16, 16)


# --- recipes ---------------------------------------------------------------------------------------------


def test_default_blur_kernel_is_ten_percent_of_the_side_made_odd() -> None:
    assert [default_blur_kernel_size(s) for s in (224, 96, 64, 32, 28, 19)] == [23, 9, 7, 3, 3, 1]
    assert default_blur_kernel_size((224, 160)) == 17  # the smaller side
    assert ImageViews(224).blur_kernel_size == 23


def test_simclr_recipe_is_the_constructor_defaults_and_symmetric() -> None:
    x = _images(16, 3, 20)
    views1, views2 = view_pair("simclr", 16, CIFAR_MEAN, CIFAR_STD)
    assert views1 is views2
    assert views1.blur_p == 0.0 and views1.solarize_p == 0.0
    expected = ImageViews(16, mean=CIFAR_MEAN, std=CIFAR_STD)(x, _gen(0))
    assert torch.equal(views1(x, _gen(0)), expected)
    assert torch.equal(ImageViews.recipe("simclr", 16, CIFAR_MEAN, CIFAR_STD)(x, _gen(0)), expected)


def _settings(v: ImageViews) -> dict:
    names = ("scale", "ratio", "flip_p", "brightness", "contrast", "saturation", "hue", "jitter_p")
    names += ("grayscale_p", "blur_p", "blur_sigma", "blur_kernel_size", "solarize_p", "solarize_threshold")

    def rounded(value):  # 1 - 0.8 is 0.19999999999999996
        return tuple(round(x, 12) for x in value) if isinstance(value, tuple) else value

    return {n: rounded(getattr(v, n)) for n in names}


_RATIO = (0.75, round(4.0 / 3.0, 12))
_COMMON = {"ratio": _RATIO, "flip_p": 0.5, "jitter_p": 0.8, "grayscale_p": 0.2, "blur_sigma": (0.1, 2.0)}
_COMMON |= {"blur_kernel_size": 23, "solarize_threshold": 0.5}


def test_recipe_parameter_values() -> None:
    simclr_in = view_pair("simclr_imagenet", 224)
    assert simclr_in[0] is simclr_in[1]
    assert _settings(simclr_in[0]) == {
        **_COMMON,
        "scale": (0.08, 1.0),
        "brightness": (0.2, 1.8),  # strength s = 1: 0.8 s
        "contrast": (0.2, 1.8),
        "saturation": (0.2, 1.8),
        "hue": (-0.2, 0.2),  # 0.2 s
        "blur_p": 0.5,
        "solarize_p": 0.0,
    }
    mocov2 = view_pair("mocov2", 224)
    assert mocov2[0] is mocov2[1]
    assert _settings(mocov2[0]) == {
        **_COMMON,
        "scale": (0.2, 1.0),
        "brightness": (0.6, 1.4),
        "contrast": (0.6, 1.4),
        "saturation": (0.6, 1.4),
        "hue": (-0.1, 0.1),
        "blur_p": 0.5,
        "solarize_p": 0.0,
    }
    byol1, byol2 = view_pair("byol", 224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    assert byol1 is not byol2
    byol = {
        **_COMMON,
        "scale": (0.08, 1.0),
        "brightness": (0.6, 1.4),
        "contrast": (0.6, 1.4),
        "saturation": (0.8, 1.2),
        "hue": (-0.1, 0.1),
    }
    assert _settings(byol1) == {**byol, "blur_p": 1.0, "solarize_p": 0.0}
    assert _settings(byol2) == {**byol, "blur_p": 0.1, "solarize_p": 0.2}
    assert torch.equal(byol2.std, torch.tensor((0.229, 0.224, 0.225)))
    assert _settings(ImageViews.recipe("byol", 224, view=2)) == _settings(byol2)
    assert set(RECIPES) == {"simclr", "simclr_imagenet", "mocov2", "byol"}


def test_recipe_overrides_and_name_spelling() -> None:
    v1, v2 = view_pair("BYOL", 32, blur_kernel_size=5, flip_p=0.0)
    assert (v1.blur_kernel_size, v2.blur_kernel_size, v1.flip_p, v2.flip_p) == (5, 5, 0.0, 0.0)
    assert (v1.blur_p, v2.blur_p) == (1.0, 0.1)  # the asymmetry stays
    a, b = view_pair("simclr-imagenet", 32, blur_p=0.0)
    assert a is b and a.blur_p == 0.0 and a.blur_kernel_size == 3
    assert ImageViews.recipe("mocov2", 32, scale=(0.5, 1.0)).scale == (0.5, 1.0)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: view_pair("swav", 32), "unknown view recipe 'swav'; choose one of byol, mocov2, simclr"),
        (lambda: view_pair("byol", 32, blur=0.5), "unknown ImageViews argument.*'blur'.*valid ones are"),
        (lambda: ImageViews.recipe("byol", 32, gray=0.1), "unknown ImageViews argument.*'gray'"),
        (lambda: ImageViews.recipe("byol", 32, view=3), "view must be 1 or 2"),
        (lambda: view_pair("mocov2", 32, blur_p=1.5), "blur_p must be a probability"),
    ],
)
def test_bad_recipe_arguments_raise_config_error(call, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        call()


def test_two_views_of_a_pair() -> None:
    x = _images(8, 3, 16)
    simclr = view_pair("simclr", 16)
    v1, v2 = two_views(simclr, x, _gen(0))
    w1, w2 = two_views(simclr[0], x, _gen(0))
    assert torch.equal(v1, w1) and torch.equal(v2, w2)  # the same module twice: one pass of 2B
    byol = view_pair("byol", 16)
    b1, b2 = two_views(byol, x, _gen(1))
    g = _gen(1)
    assert torch.equal(b1, byol[0](x, g)) and torch.equal(b2, byol[1](x, g))


# --- float images on the 0..255 scale (QA finding 9) ---------------------------------------------------

_SCALE = r"float images must be on the \[0, 1\] scale, but the largest value of this batch is 25\d(\.\d+)?.*pass uint8 images \(0\.\.255\) or divide float ones by 255"


def test_float_images_on_the_255_scale_are_refused() -> None:
    """``x.float()`` of uint8 images used to give a mix of white (clamped) and 0..255 views, silently."""
    x = _images(4, 3, 16).float()
    for call in (
        lambda: ImageViews(16)(x),
        lambda: ImageViews(16).sample(x),
        lambda: two_views(ImageViews(16), x),
        lambda: eval_transform(x),
        lambda: eval_transform(x, CIFAR_MEAN, CIFAR_STD),
    ):
        with pytest.raises(ConfigError, match=_SCALE):
            call()
    views = ImageViews(16)
    params = views.sample(_images(4, 3, 16))  # uint8: never looked at
    with pytest.raises(ConfigError, match=_SCALE):
        views.render(x, params)  # an eager render checks too


def test_float_images_in_the_unit_range_pass_and_are_checked_once() -> None:
    x = _images(4, 3, 16).float() / 255
    views = ImageViews(12)
    assert views(x, _gen(0)).shape == (4, 3, 12, 12)
    assert views._scale_checked  # the first float batch was checked ...
    # ... and later ones are not (no host sync per step): documented, the mistake shows on the first batch
    assert views((x * 255), _gen(0)).shape == (4, 3, 12, 12)
    assert eval_transform(x.clamp(max=1.0 + 5e-4)).shape == x.shape  # rounding above 1 is tolerated
    assert eval_transform(torch.zeros(0, 3, 8, 8)).shape == (0, 3, 8, 8)
    fresh = ImageViews(12)
    fresh(_images(4, 3, 16))
    assert not fresh._scale_checked  # uint8 batches do not count
    with pytest.raises(ConfigError, match=_SCALE):
        fresh(x * 255)


def test_the_scale_check_does_not_break_a_fullgraph_compile() -> None:
    """Under dynamo the check is skipped (no graph break, no host sync); the eager ``sample`` still runs it."""
    views = ImageViews(12, mean=CIFAR_MEAN, std=CIFAR_STD)
    x = _images(8, 3, 16).float() / 255
    params = views.sample(x, _gen(0))
    compiled_render = torch.compile(views.render, backend="eager", fullgraph=True)
    fresh = ImageViews(12, mean=CIFAR_MEAN, std=CIFAR_STD)  # never checked: the compiled path skips it
    torch.testing.assert_close(
        torch.compile(fresh.render, backend="eager", fullgraph=True)(x, params), views.render(x, params)
    )
    assert not fresh._scale_checked
    torch.testing.assert_close(compiled_render(x, params), views.render(x, params), atol=0, rtol=0)
    assert torch.compile(ImageViews(12), backend="eager", fullgraph=True)(x).shape == (8, 3, 12, 12)
    compiled_eval = torch.compile(eval_transform, backend="eager", fullgraph=True)
    assert compiled_eval(x).shape == x.shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_images_are_augmented_in_float32(dtype: torch.dtype) -> None:
    """The crop's sampling grid was built in the images' dtype: bf16 misplaced pixels by up to half a pixel
    at 100 px (errors up to 0.4), and PyTorch's CPU grid_sample crashes on half inputs at ImageNet sizes."""
    x = (_images(16, 3, 100).float() / 255).to(dtype)
    views = ImageViews(64)
    out = views(x, _gen(2))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, views(x.float(), _gen(2)), atol=0, rtol=0)  # the same float32 work
    params = views.sample(x, _gen(2))
    boxes = (params.top, params.left, params.height, params.width)
    crop = VF.crop_flip_resize(x, boxes, params.flip, 64)  # the functional keeps the input's dtype
    assert crop.dtype == dtype
    reference = VF.crop_flip_resize(x.float(), boxes, params.flip, 64)
    assert (crop.float() - reference).abs().max() <= 2**-7  # rounding of the output only


def test_float_images_already_normalised_are_refused() -> None:
    """Images normalised before the views (negative values) were clamped at 0 by colour jitter, but only
    when jitter was on: an unjittered view kept them (review of 2026-12-02)."""
    x = (_images(4, 3, 16).float() / 255 - 0.5) / 0.25
    negative = r"float images must be on the \[0, 1\] scale, but the smallest value of this batch is -2.*before any normalisation"
    for call in (
        lambda: ImageViews(16, jitter_p=0, grayscale_p=0)(x),
        lambda: ImageViews(16)(x, _gen(0)),
        lambda: eval_transform(x, CIFAR_MEAN, CIFAR_STD),
    ):
        with pytest.raises(ConfigError, match=negative):
            call()
    assert eval_transform(torch.zeros(2, 3, 8, 8) - 5e-4).shape == (
        2,
        3,
        8,
        8,
    )  # rounding below 0 is tolerated
