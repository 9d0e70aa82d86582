"""Helpers shared by the objectives: constructor checks and masked reductions in log space.

Every reduction here ignores masked negatives and stays finite (with finite, NaN-free gradients) for rows
whose negatives are all masked.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from contrastkit.errors import ConfigError


def _number(name: str, value: object, rule: str) -> float:
    # numbers.Real covers Python and numpy real scalars (np.float32, np.int64, ...); bools are refused.
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number {rule}, got {value!r}")
    return float(value)


def check_positive(name: str, value: object) -> float:
    """``value > 0``, as a float; otherwise a ConfigError naming the parameter and its range."""
    out = _number(name, value, "> 0")
    if out <= 0:
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    return out


def check_nonnegative(name: str, value: object) -> float:
    """``value >= 0``, as a float."""
    out = _number(name, value, ">= 0")
    if out < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    return out


def check_prior(name: str, value: object) -> float:
    """``0 <= value < 1``, as a float."""
    out = _number(name, value, "in [0, 1)")
    if not 0 <= out < 1:
        raise ConfigError(f"{name} must be a finite number in [0, 1), got {value!r}")
    return out


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return str(value)


def valid_negatives(neg: Tensor, neg_mask: Tensor | None) -> Tensor:
    """Bool (B, N): True where a column is a negative of that anchor (the complement of ``neg_mask``)."""
    if neg_mask is None:
        return torch.ones_like(neg, dtype=torch.bool)
    return ~neg_mask


def masked_logsumexp(x: Tensor, valid: Tensor) -> Tensor:
    """``log Σ_{j valid} exp(x_ij)`` per row, ``-inf`` for a row with nothing valid (zero gradient there)."""
    has = valid.any(dim=1)
    filled = x.masked_fill(~valid, float("-inf"))
    # An all -inf row would give NaN gradients in logsumexp; feed it a finite dummy and discard the result.
    filled = torch.where(has.unsqueeze(1), filled, torch.zeros_like(x))
    out = torch.logsumexp(filled, dim=1)
    return torch.where(has, out, torch.full_like(out, float("-inf")))


def log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate for x near 0 and for very negative x (Mächler 2012)."""
    near = x > -math.log(2.0)
    # Evaluate each branch only on inputs where it is finite, so neither leaks NaN into the gradient.
    x_near = torch.where(near, x, torch.full_like(x, -1.0))
    x_far = torch.where(near, torch.full_like(x, -1.0), x)
    return torch.where(near, torch.log(-torch.expm1(x_near)), torch.log1p(-torch.exp(x_far)))
