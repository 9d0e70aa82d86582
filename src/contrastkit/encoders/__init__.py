"""Encoders: backbones ``f(·)`` that map an image to features ``h``, and projection heads ``g(·)``.

Training optimises the contrastive loss on ``z = g(f(x))``; evaluation uses ``h = f(x)`` (Chen et al.
2020). :func:`build_encoder` makes a backbone by name; :class:`ContrastiveModel` pairs it with a head.
"""

from __future__ import annotations

from torch import Tensor, nn

from contrastkit.encoders.heads import ProjectionHead
from contrastkit.encoders.resnet import STEMS, BasicBlock, Bottleneck, ResNet, resnet18, resnet50
from contrastkit.encoders.small import MLP, SmallCNN
from contrastkit.errors import ConfigError

ENCODERS = ("resnet18", "resnet50", "small_cnn", "mlp")
CIFAR_STEM_MAX_SIZE = 64  # stem="auto": the CIFAR stem up to this image size, the ImageNet stem above


def resolve_stem(stem: str, image_size: int) -> str:
    """``"auto"`` becomes ``"cifar"`` for images up to 64 px and ``"imagenet"`` above; others pass through."""
    if stem == "auto":
        return "cifar" if image_size <= CIFAR_STEM_MAX_SIZE else "imagenet"
    if stem not in STEMS:
        raise ConfigError(f"unknown ResNet stem {stem!r}; choose one of: {', '.join((*STEMS, 'auto'))}")
    return stem


def build_encoder(
    name: str, *, in_channels: int, image_size: int, stem: str = "auto", batchnorm: bool = True
) -> nn.Module:
    """A backbone by name (one of :data:`ENCODERS`) for ``in_channels`` × ``image_size`` × ``image_size``.

    The result has a ``feature_dim`` attribute and returns ``(B, feature_dim)``. ``stem`` only matters for
    the ResNets but is checked for every name; ``batchnorm=False`` (``--no-batchnorm``) only for the mlp,
    the only encoder that can drop its BatchNorm layers.
    """
    if name not in ENCODERS:
        raise ConfigError(f"unknown encoder {name!r}; choose one of: {', '.join(ENCODERS)}")
    for what, value in (("in_channels", in_channels), ("image_size", image_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    stem = resolve_stem(stem, image_size)
    if not batchnorm and name != "mlp":
        raise ConfigError(
            f"--no-batchnorm removes BatchNorm from the mlp encoder and the projection head, but the {name} "
            "encoder keeps its BatchNorm layers: use --encoder mlp, or drop --no-batchnorm"
        )
    if name == "resnet18":
        return resnet18(stem=stem, in_channels=in_channels)
    if name == "resnet50":
        return resnet50(stem=stem, in_channels=in_channels)
    if name == "small_cnn":
        return SmallCNN(in_channels=in_channels)
    return MLP(in_features=in_channels * image_size**2, batchnorm=batchnorm)


class ContrastiveModel(nn.Module):
    """A backbone ``f`` and a projection head ``g``: ``forward(x) = g(f(x))``, ``features(x) = f(x)``.

    Train on ``forward`` (the projection ``z``); evaluate on ``features`` (the representation ``h``), as in
    SimCLR (Chen et al. 2020).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    @property
    def feature_dim(self) -> int:
        """Size of ``features(x)``, i.e. of the backbone's output."""
        return int(self.backbone.feature_dim)

    def features(self, x: Tensor) -> Tensor:
        """The representation ``h = f(x)``, shape ``(B, feature_dim)``."""
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        """The projection ``z = g(f(x))`` the contrastive loss is computed on."""
        return self.head(self.backbone(x))


__all__ = [
    "CIFAR_STEM_MAX_SIZE",
    "ENCODERS",
    "MLP",
    "STEMS",
    "BasicBlock",
    "Bottleneck",
    "ContrastiveModel",
    "ProjectionHead",
    "ResNet",
    "SmallCNN",
    "build_encoder",
    "resnet18",
    "resnet50",
    "resolve_stem",
]
