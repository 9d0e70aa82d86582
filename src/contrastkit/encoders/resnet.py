"""ResNet-18 and ResNet-50 backbones (He et al. 2016, "Deep Residual Learning for Image Recognition").

The architecture follows torchvision's ``resnet18``/``resnet50`` (v1.5: in a Bottleneck the stride sits on
the 3×3 convolution) and module names match torchvision's, so a torchvision state dict without ``fc.*``
loads. There is no classifier: ``forward`` returns global-average-pooled features ``(B, feature_dim)``.

Two stems: ``"imagenet"`` (7×7 conv stride 2 + 3×3 max-pool stride 2, for ≥ 96 px images) and ``"cifar"``
(3×3 conv stride 1, no max-pool, as in SimCLR's CIFAR-10 experiments, Chen et al. 2020, appendix B.9).
"""

from __future__ import annotations

from torch import Tensor, nn

from contrastkit.errors import ConfigError

STEMS = ("cifar", "imagenet")


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with an identity (or 1×1 projection) shortcut (He et al. 2016, fig. 2)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The BN closing the residual branch (zero-initialised when ``zero_init_residual``)."""
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided, torchvision v1.5), 1×1 expand by 4 (He et al. 2016, fig. 5)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The BN closing the residual branch (zero-initialised when ``zero_init_residual``)."""
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A ResNet trunk without the classifier; ``forward`` gives pooled features ``(B, feature_dim)``.

    ``zero_init_residual`` sets the last BN's γ of every residual block to 0, so each block starts as the
    identity (Goyal et al. 2017, "Accurate, Large Minibatch SGD"; used by SimCLR). Convolutions use
    Kaiming-normal init with ``fan_out`` (He et al. 2015), BN starts at γ=1, β=0, as in torchvision.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: list[int] | tuple[int, ...],
        *,
        stem: str = "cifar",
        in_channels: int = 3,
        zero_init_residual: bool = True,
        widths: tuple[int, int, int, int] = (64, 128, 256, 512),
    ):
        super().__init__()
        if stem not in STEMS:
            raise ConfigError(f"unknown ResNet stem {stem!r}; choose one of: {', '.join(STEMS)}")
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ConfigError(f"in_channels must be a positive integer, got {in_channels!r}")
        if len(layers) != 4 or any(n < 1 for n in layers):
            raise ConfigError(f"layers must be four positive block counts, got {list(layers)}")
        self.stem = stem
        self.inplanes = widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = _conv3x3(in_channels, self.inplanes)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.feature_dim: int = widths[3] * block.expansion

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock | Bottleneck):
                    nn.init.zeros_(m.last_bn.weight)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)


def resnet18(stem: str = "cifar", in_channels: int = 3, *, zero_init_residual: bool = True) -> ResNet:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]); ``feature_dim`` 512 (He et al. 2016, table 1)."""
    return ResNet(
        BasicBlock, [2, 2, 2, 2], stem=stem, in_channels=in_channels, zero_init_residual=zero_init_residual
    )


def resnet50(stem: str = "cifar", in_channels: int = 3, *, zero_init_residual: bool = True) -> ResNet:
    """ResNet-50 (Bottleneck, [3, 4, 6, 3]); ``feature_dim`` 2048 (He et al. 2016, table 1)."""
    return ResNet(
        Bottleneck, [3, 4, 6, 3], stem=stem, in_channels=in_channels, zero_init_residual=zero_init_residual
    )
