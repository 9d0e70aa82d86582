"""Tests for contrastkit.views.image: the batched SimCLR augmentation."""

from __future__ import annotations

import dataclasses
import math

import kornia
import pytest
import torch
import torch.nn.functional as F

from contrastkit.errors import ConfigError
from contrastkit.views import ImageViews, ViewParams, eval_transform, two_views

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
