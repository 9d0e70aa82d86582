"""SimCLR projection head and the backbone + head model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from contrastkit.encoders import ContrastiveModel, ProjectionHead, SmallCNN, build_encoder
from contrastkit.errors import ConfigError


def kinds(head: nn.Module) -> list[str]:
    return [type(m).__name__ for m in head.net]


def test_default_head_is_simclr_v1():
    head = ProjectionHead(512)
    assert kinds(head) == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    first, last = head.net[0], head.net[3]
    assert (first.in_features, first.out_features, first.bias) == (512, 2048, None)
    assert (last.in_features, last.out_features) == (2048, 128) and last.bias is not None
    assert head(torch.randn(4, 512)).shape == (4, 128)


@pytest.mark.parametrize("num_layers", [1, 2, 3, 4])
def test_layer_counts(num_layers):
    head = ProjectionHead(16, hidden_dim=32, out_dim=8, num_layers=num_layers)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == num_layers
    assert sum(isinstance(m, nn.BatchNorm1d) for m in head.modules()) == num_layers - 1
    assert sum(isinstance(m, nn.ReLU) for m in head.modules()) == num_layers - 1
    assert linears[0].in_features == 16 and linears[-1].out_features == 8
    assert head(torch.randn(3, 16)).shape == (3, 8)


def test_no_batchnorm():
    head = ProjectionHead(16, hidden_dim=32, out_dim=8, num_layers=3, batchnorm=False)
    assert kinds(head) == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert all(m.bias is not None for m in head.net if isinstance(m, nn.Linear))


def test_simclr_v2_last_bn_has_scale_but_no_bias():
    head = ProjectionHead(16, hidden_dim=32, out_dim=8, num_layers=3, last_bn=True)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in head.modules()) == 3
    last_linear, last_bn = head.net[-2], head.net[-1]
    assert isinstance(last_linear, nn.Linear) and last_linear.bias is None
    assert isinstance(last_bn, nn.BatchNorm1d) and last_bn.bias is None and last_bn.weight.shape == (8,)
    assert "net.7.bias" not in dict(head.named_parameters())
    z = head(torch.randn(64, 16))
    # training-mode BN without β: every output dimension has batch mean 0 (and unit variance, γ = 1)
    torch.testing.assert_close(z.mean(0), torch.zeros(8), atol=1e-5, rtol=0)
    z.sum().backward()
    assert last_bn.weight.grad is not None
    last_bn.reset_parameters()  # must not trip over the missing bias


def test_bad_arguments():
    with pytest.raises(ConfigError, match="num_layers"):
        ProjectionHead(16, num_layers=0)
    with pytest.raises(ConfigError, match="out_dim"):
        ProjectionHead(16, out_dim=0)


def test_contrastive_model_features_and_projection():
    backbone = SmallCNN(in_channels=1, width=8)
    model = ContrastiveModel(backbone, ProjectionHead(backbone.feature_dim, hidden_dim=64, out_dim=16))
    assert model.feature_dim == 32
    x = torch.randn(6, 1, 8, 8)
    model.eval()
    h, z = model.features(x), model(x)
    assert h.shape == (6, 32) and z.shape == (6, 16)
    torch.testing.assert_close(model.head(h), z)
    assert {k.split(".")[0] for k in model.state_dict()} == {"backbone", "head"}


def test_contrastive_model_resnet_trains_end_to_end():
    backbone = build_encoder("resnet18", in_channels=3, image_size=16)
    model = ContrastiveModel(backbone, ProjectionHead(512, hidden_dim=128, out_dim=32))
    z = model(torch.randn(4, 3, 16, 16))
    assert z.shape == (4, 32)
    z.pow(2).sum().backward()
    assert model.backbone.conv1.weight.grad.abs().sum() > 0
    assert model.head.net[0].weight.grad.abs().sum() > 0
