"""SmallCNN and MLP backbones for tiny images."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from contrastkit.encoders import MLP, SmallCNN, build_encoder
from contrastkit.errors import ConfigError


@pytest.mark.parametrize(("channels", "size"), [(1, 8), (1, 28), (3, 32), (3, 9)])
def test_small_cnn_shapes(channels, size):
    model = SmallCNN(in_channels=channels, width=16)
    assert model.feature_dim == 64
    out = model(torch.randn(3, channels, size, size))
    assert out.shape == (3, 64)


def test_small_cnn_default_width_and_structure():
    model = SmallCNN()
    assert model.feature_dim == 256
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 6 and all(c.kernel_size == (3, 3) for c in convs)
    assert [c.stride[0] for c in convs] == [1, 1, 2, 1, 2, 1]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 6


def test_small_cnn_gradients_reach_the_first_conv():
    model = SmallCNN(width=8)
    model(torch.randn(4, 1, 8, 8)).sum().backward()
    first = model.features[0]
    assert isinstance(first, nn.Conv2d) and first.weight.grad.abs().sum() > 0


def test_small_cnn_channels_last_matches_contiguous():
    torch.manual_seed(0)
    model = SmallCNN(in_channels=1).eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_small_cnn_bad_arguments():
    with pytest.raises(ConfigError, match="width"):
        SmallCNN(width=0)
    with pytest.raises(ConfigError, match="in_channels"):
        SmallCNN(in_channels=-1)


def test_mlp_flattens_and_counts_layers():
    model = MLP(1 * 8 * 8, hidden=(32, 16), out_features=10)
    assert model.feature_dim == 10
    assert model(torch.randn(5, 1, 8, 8)).shape == (5, 10)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 32), (32, 16), (16, 10)]
    assert [m.bias is not None for m in linears] == [False, False, True]  # BN makes hidden biases redundant
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == 2


def test_mlp_without_batchnorm_or_output_layer():
    model = MLP(12, hidden=(20,), batchnorm=False)
    assert model.feature_dim == 20
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Linear))
    assert model(torch.randn(2, 3, 2, 2)).shape == (2, 20)
    assert (model(torch.randn(2, 12)) >= 0).all()  # ends in ReLU when there is no output layer


def test_mlp_rejects_wrong_input_size():
    model = MLP(64)
    with pytest.raises(ValueError, match="64 values"):
        model(torch.randn(2, 3, 8, 8))
    with pytest.raises(ConfigError):
        MLP(0)


def test_build_encoder_mlp_in_features():
    model = build_encoder("mlp", in_channels=3, image_size=10)
    assert model.in_features == 300 and model.feature_dim == 512
    # channels_last input flattens in logical (C, H, W) order, so the result does not change
    model.eval()
    x = torch.randn(2, 3, 10, 10)
    torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), model(x))


def test_build_encoder_small_cnn():
    model = build_encoder("small_cnn", in_channels=1, image_size=8)
    assert isinstance(model, SmallCNN) and model.feature_dim == 256
