"""Small encoders for tiny images and flat vectors: a plain CNN for 8×8 to 28×28 images and an MLP.

These are the cheap backbones for quick experiments (e.g. the 8×8 ``digits`` set); the building blocks are
the conv-BN-ReLU units of He et al. 2016 without shortcuts, and BN after every hidden linear layer as in
SimCLR's projection head (Chen et al. 2020).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from contrastkit.errors import ConfigError, ShapeError


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]


class SmallCNN(nn.Module):
    """Three stages of two conv3×3-BN-ReLU, the last two starting with stride 2, then global average pooling.

    Widths are ``width``, ``2*width``, ``4*width``; an 8×8 input ends at 2×2, a 28×28 one at 7×7. Any input
    size works (padding 1 keeps every map at least 1×1); ``feature_dim`` is ``4*width``.
    """

    def __init__(self, in_channels: int = 1, width: int = 64):
        super().__init__()
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ConfigError(f"in_channels must be a positive integer, got {in_channels!r}")
        if not isinstance(width, int) or width < 1:
            raise ConfigError(f"width must be a positive integer, got {width!r}")
        w1, w2, w3 = width, 2 * width, 4 * width
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, w1),
            *_conv_bn_relu(w1, w1),
            *_conv_bn_relu(w1, w2, stride=2),
            *_conv_bn_relu(w2, w2),
            *_conv_bn_relu(w2, w3, stride=2),
            *_conv_bn_relu(w3, w3),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.feature_dim: int = w3
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.avgpool(self.features(x)).flatten(1)


class MLP(nn.Module):
    """Flatten, then ``Linear-[BN]-ReLU`` per hidden width, then an optional final ``Linear``.

    ``feature_dim`` is ``out_features`` if given, else the last hidden width (``in_features`` if there is
    no layer at all). Hidden linears drop their bias when followed by BN, which would cancel it.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (512, 512),
        out_features: int | None = None,
        batchnorm: bool = True,
    ):
        super().__init__()
        sizes = [in_features, *hidden] + ([] if out_features is None else [out_features])
        if any(not isinstance(s, int) or s < 1 for s in sizes):
            raise ConfigError(
                f"MLP sizes must be positive integers; got in_features={in_features!r}, "
                f"hidden={tuple(hidden)!r}, out_features={out_features!r}"
            )
        self.in_features = in_features
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_features
        for h in hidden:
            layers.append(nn.Linear(prev, h, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(nn.ReLU(inplace=True))
            prev = h
        if out_features is not None:
            layers.append(nn.Linear(prev, out_features))
            prev = out_features
        self.net = nn.Sequential(*layers)
        self.feature_dim: int = prev

    def forward(self, x: Tensor) -> Tensor:
        n = math.prod(x.shape[1:]) if x.ndim > 1 else 0
        if n != self.in_features:
            raise ShapeError(
                f"MLP expects inputs of {self.in_features} values per example (after flattening), "
                f"got shape {tuple(x.shape)}"
            )
        return self.net(x)
