"""Optimisers and the learning-rate schedule.

- SGD with momentum and AdamW come from ``torch.optim`` (fused/foreach kernels where available).
- LARS (You, Gitman, Ginsburg 2017, "Large Batch Training of Convolutional Networks", Alg. 1), as used
  by SimCLR: a layer-wise trust ratio ``η ‖w‖ / ‖∇w + λ w‖`` scales each parameter's step. PyTorch has no
  LARS, so it is written here; biases and normalisation parameters are excluded from weight decay and
  from the adaptation, as in SimCLR.
- Cosine decay with linear warm-up (Loshchilov & Hutter 2017; Goyal et al. 2017), stepped per iteration.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from contrastkit.errors import ConfigError

BASE_LR = {"sgd": 0.06, "lars": 0.3, "adamw": 1e-3}
WEIGHT_DECAY = {"sgd": 5e-4, "lars": 1e-6, "adamw": 0.05}


class LARS(Optimizer):
    """LARS: SGD with momentum whose per-parameter step is scaled by a trust ratio.

    For a parameter ``w`` with gradient ``g``: ``d = g + λ w``; ``r = η ‖w‖ / ‖d‖`` if both norms are
    positive, else 1; ``v ← μ v + r d``; ``w ← w - lr v``. Groups with ``lars_exclude=True`` use ``r = 1``
    and no weight decay.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 1e-6,
        trust_coefficient: float = 1e-3,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            lars_exclude=False,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if not group["lars_exclude"]:
                    if group["weight_decay"]:
                        d = d.add(p, alpha=group["weight_decay"])
                    w_norm = torch.linalg.vector_norm(p)
                    d_norm = torch.linalg.vector_norm(d)
                    ratio = torch.where(
                        (w_norm > 0) & (d_norm > 0),
                        group["trust_coefficient"] * w_norm / d_norm,
                        torch.ones_like(w_norm),
                    )
                    d = d.mul(ratio)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = d.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(d)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split parameters: weights get weight decay; biases and 1-D (normalisation) parameters do not."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]


def build_optimizer(
    name: str, model: nn.Module, *, lr: float, weight_decay: float, momentum: float = 0.9
) -> Optimizer:
    """Make ``sgd``, ``lars`` or ``adamw`` over ``model``'s parameters."""
    groups = param_groups(model, weight_decay)
    fused = all(p.is_cuda for g in groups for p in g["params"]) or None
    if name == "sgd":
        for g in groups:
            g.pop("lars_exclude", None)
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=False, fused=fused)
    if name == "adamw":
        for g in groups:
            g.pop("lars_exclude", None)
        return torch.optim.AdamW(groups, lr=lr, fused=fused)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer {name!r}; choose one of: sgd, lars, adamw")


def warmup_cosine(
    optimizer: Optimizer, *, warmup_steps: int, total_steps: int, final_factor: float = 0.0
) -> LambdaLR:
    """Linear warm-up from 0 to the peak over ``warmup_steps``, then cosine decay to ``final_factor``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(progress, 1.0)
        return final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
