"""Scores: how similar two embeddings are, ``s(a, b)``.

A score prepares embeddings once (cosine similarity L2-normalises them) and then compares anchors with
their positives row by row, and with negatives either shared by all anchors, shape (N, D), or given per
anchor, shape (M, N, D). Scores are *not* divided by a temperature here: that belongs to the objective.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.errors import ConfigError, ShapeError


def score_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The floating dtype scores are computed in for inputs of ``dtypes``: at least float32.

    Lower-precision inputs (bf16, float16: autocast's outputs) are promoted to float32, since rounding every
    logit to 8 bits of mantissa costs up to ~0.02 at temperature 0.2; float64 stays float64, so that a
    float64 model (or ``torch.autograd.gradcheck``) is scored in float64.
    """
    out = torch.float32
    for dtype in dtypes:
        out = torch.promote_types(out, dtype)
    return out


def autocast_off(device_type: str) -> contextlib.AbstractContextManager[object]:
    """A region where autocast is off on ``device_type``; nothing to turn off where the device type has no
    autocast (``meta``: shape inference), on which ``torch.autocast`` itself would raise. While compiling
    the check is skipped: dynamo of torch 2.11 cannot trace ``is_autocast_available`` (a graph break per
    call), and compiled code runs on real devices."""
    if torch.compiler.is_compiling() or torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class Score(nn.Module):
    """Base class: a similarity between embeddings. Subclasses override :meth:`prepare`.

    ``unit_norm`` says whether :meth:`prepare` returns unit vectors (then points built from prepared
    embeddings, such as MoCHi's mixtures, are L2-normalised to stay on the same sphere).
    """

    unit_norm: bool = False

    def prepare(self, z: Tensor) -> Tensor:
        """Map raw embeddings to the space where a dot product is the score."""
        return z

    def pairs(self, a: Tensor, b: Tensor) -> Tensor:
        """Row-wise scores of prepared (M, D) and (M, D): shape (M,)."""
        return (a * b).sum(dim=-1)

    def against(self, a: Tensor, negatives: Tensor) -> Tensor:
        """Scores of prepared anchors (M, D) against shared (N, D) or per-anchor (M, N, D) negatives."""
        if negatives.ndim == 2:
            return a @ negatives.transpose(0, 1)
        if negatives.ndim == 3:
            return torch.einsum("md,mnd->mn", a, negatives)
        raise ShapeError(f"negatives must have shape (N, D) or (M, N, D), got {tuple(negatives.shape)}")

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """Row-wise score of raw embeddings ``a`` and ``b`` (both (M, D))."""
        return self.pairs(self.prepare(a), self.prepare(b))


class CosineSimilarity(Score):
    """``s(a, b) = a·b / (‖a‖ ‖b‖)`` (the SimCLR default)."""

    unit_norm = True

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def prepare(self, z: Tensor) -> Tensor:
        return F.normalize(z, dim=-1, eps=self.eps)


class DotProduct(Score):
    """``s(a, b) = a·b`` on unnormalised embeddings."""


SCORES: dict[str, type[Score]] = {"cosine": CosineSimilarity, "dot": DotProduct}


def build_score(name: str) -> Score:
    """Make a score by name (``cosine`` or ``dot``)."""
    try:
        return SCORES[name]()
    except KeyError:
        raise ConfigError(f"unknown score {name!r}; choose one of: {', '.join(SCORES)}") from None
