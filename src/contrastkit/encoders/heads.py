"""The SimCLR projection head g(·) (Chen et al. 2020, "A Simple Framework for Contrastive Learning").

The loss is computed on ``z = g(h)``, while downstream tasks use the backbone features ``h``: SimCLR (sec.
4.2) finds that a nonlinear head improves the representation ``h`` by over 10% linear-eval accuracy.
"""

from __future__ import annotations

from torch import Tensor, nn

from contrastkit.errors import ConfigError


class _ScaleOnlyBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm with a learnable scale γ but no shift β (TF's ``center=False``), as SimCLR v2's last BN."""

    def __init__(self, num_features: int):
        super().__init__(num_features, affine=True)
        self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        nn.init.ones_(self.weight)


class ProjectionHead(nn.Module):
    """``(Linear-[BN]-ReLU) × (num_layers-1)`` then ``Linear``: SimCLR's nonlinear projection head.

    ``num_layers=2`` is SimCLR v1's head; ``num_layers=3, last_bn=True`` is SimCLR v2's (Chen et al. 2020b,
    "Big Self-Supervised Models are Strong Semi-Supervised Learners"), whose output goes through a BN with
    scale and no bias. ``num_layers=1`` is a linear projection. Linears followed by BN have no bias (BN's β
    subsumes it).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 2048,
        out_dim: int = 128,
        num_layers: int = 2,
        batchnorm: bool = True,
        last_bn: bool = False,
    ):
        super().__init__()
        for name, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"projection head {name} must be a positive integer, got {value!r}")
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ConfigError(f"projection head num_layers must be 1 or more, got {num_layers!r}")
        layers: list[nn.Module] = []
        prev = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(prev, hidden_dim, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            prev = hidden_dim
        layers.append(nn.Linear(prev, out_dim, bias=not last_bn))
        if last_bn:
            layers.append(_ScaleOnlyBatchNorm1d(out_dim))
        self.net = nn.Sequential(*layers)
        self.in_dim = in_dim
        self.out_dim = out_dim

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)
