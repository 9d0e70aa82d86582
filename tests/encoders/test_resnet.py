"""ResNet-18/50 backbones: torchvision parameter counts, shapes, gradients, memory format, init."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from contrastkit.encoders import ENCODERS, BasicBlock, Bottleneck, build_encoder, resnet18, resnet50
from contrastkit.errors import ConfigError


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# torchvision: resnet18 has 11,689,512 parameters, resnet50 25,557,032, each including its fc layer
# (512*1000 + 1000 = 513,000 and 2048*1000 + 1000 = 2,049,000). Without fc: 11,176,512 and 23,508,032.
def test_resnet18_imagenet_stem_matches_torchvision_without_fc():
    assert n_params(resnet18(stem="imagenet")) == 11_689_512 - 513_000 == 11_176_512


def test_resnet50_imagenet_stem_matches_torchvision_without_fc():
    assert n_params(resnet50(stem="imagenet")) == 25_557_032 - 2_049_000 == 23_508_032


def test_cifar_stem_swaps_the_7x7_conv_for_a_3x3():
    # conv1: 64*3*7*7 = 9,408 weights become 64*3*3*3 = 1,728; nothing else changes
    assert n_params(resnet18(stem="cifar")) == 11_176_512 - 9_408 + 1_728 == 11_168_832
    assert n_params(resnet50(stem="cifar")) == 23_508_032 - 9_408 + 1_728
    assert n_params(resnet18(stem="imagenet", in_channels=1)) == 11_176_512 - 64 * 2 * 49


def test_stems_structure():
    cifar, imagenet = resnet18(stem="cifar"), resnet18(stem="imagenet")
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, nn.Identity)
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    assert isinstance(imagenet.maxpool, nn.MaxPool2d) and imagenet.maxpool.stride == 2


def test_bottleneck_is_v1_5_stride_on_the_3x3():
    block = resnet50().layer2[0]
    assert isinstance(block, Bottleneck)
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    assert block.conv3.out_channels == 4 * block.conv1.out_channels == 512
    assert block.downsample[0].stride == (2, 2)


@pytest.mark.parametrize(("factory", "dim"), [(resnet18, 512), (resnet50, 2048)])
def test_cifar_stem_output_shape_32px(factory, dim):
    model = factory(stem="cifar").eval()
    assert model.feature_dim == dim
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, dim)


def test_imagenet_stem_output_shape_224px():
    model = resnet50(stem="imagenet").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 2048) and torch.isfinite(out).all()


def test_in_channels():
    model = resnet18(stem="cifar", in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 16, 16)).shape == (2, 512)


def test_gradients_reach_the_first_conv_with_zero_init():
    torch.manual_seed(0)
    model = resnet18(stem="cifar")
    model(torch.randn(4, 3, 16, 16)).pow(2).sum().backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0
    # the zero-initialised γ must still learn, or the residual branches would stay dead
    assert model.layer1[0].bn2.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("factory", [resnet18, resnet50])
def test_zero_init_residual_flag(factory):
    on, off = factory(), factory(zero_init_residual=False)
    for model, zero in ((on, True), (off, False)):
        blocks = [m for m in model.modules() if isinstance(m, BasicBlock | Bottleneck)]
        assert len(blocks) == (8 if factory is resnet18 else 16)
        for b in blocks:
            last = b.bn2 if isinstance(b, BasicBlock) else b.bn3
            assert torch.all(last.weight == 0) if zero else torch.all(last.weight == 1)
            assert torch.all(b.bn1.weight == 1)
    if factory is resnet18:
        # every branch zeroed: each block is relu(identity), so a non-negative input passes layer1 unchanged
        x = torch.rand(2, 64, 8, 8)
        with torch.no_grad():
            assert torch.allclose(on.eval().layer1(x), x)


def test_conv_init_is_kaiming_fan_out():
    torch.manual_seed(0)
    conv = resnet50().layer3[0].conv2  # 256 -> 256, 3x3: fan_out = 256*9
    expected = (2.0 / (256 * 9)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_channels_last_matches_contiguous(stem):
    torch.manual_seed(0)
    model = resnet18(stem=stem, zero_init_residual=False).eval()
    x = torch.randn(2, 3, *((32, 32) if stem == "cifar" else (64, 64)))
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == ref.shape and out.is_contiguous()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_bad_stem_raises_config_error_listing_choices():
    with pytest.raises(ConfigError, match=r"'cifar10'.*cifar, imagenet"):
        resnet18(stem="cifar10")
    with pytest.raises(ConfigError, match="in_channels"):
        resnet50(in_channels=0)


# build_encoder and ContrastiveModel live in the package __init__; they are tested here and in test_heads.py


@pytest.mark.parametrize(
    ("size", "stem", "expected"),
    [(32, "auto", "cifar"), (64, "auto", "cifar"), (96, "auto", "imagenet"), (224, "cifar", "cifar")],
)
def test_build_encoder_stem(size, stem, expected):
    model = build_encoder("resnet18", in_channels=3, image_size=size, stem=stem)
    assert model.stem == expected
    assert model.feature_dim == 512


def test_build_encoder_every_name():
    for name in ENCODERS:
        model = build_encoder(name, in_channels=1, image_size=8).eval()
        with torch.no_grad():
            out = model(torch.randn(2, 1, 8, 8))
        assert out.shape == (2, model.feature_dim), name


def test_build_encoder_errors_list_choices():
    with pytest.raises(ConfigError, match=r"'resnet34'.*resnet18, resnet50, small_cnn, mlp"):
        build_encoder("resnet34", in_channels=3, image_size=32)
    with pytest.raises(ConfigError, match=r"'big'.*cifar, imagenet, auto"):
        build_encoder("resnet18", in_channels=3, image_size=32, stem="big")
    with pytest.raises(
        ConfigError, match=r"'big'"
    ):  # checked for every encoder, so typos never pass silently
        build_encoder("small_cnn", in_channels=3, image_size=32, stem="big")
    with pytest.raises(ConfigError, match="image_size"):
        build_encoder("mlp", in_channels=3, image_size=0)
