"""The contract every objective keeps.

``loss = objective(pos, neg, neg_mask=None)`` where ``pos`` (B,) holds the score of each anchor with its
positive, ``neg`` (B, N) its scores with N negatives (similarity scores, *not* divided by a temperature),
and ``neg_mask`` (B, N), optional and boolean, marks negatives to ignore. The result is the mean loss over
anchors. Objectives compute in float32 (or float64 if given) even under bf16 autocast, in log space.

Masked negatives are excluded everywhere, including from counts: where an objective uses "N", it is the
number of *unmasked* negatives of that anchor.

Supervised objectives (``needs_labels = True``) also take ``pos_mask`` (B, N), boolean: True marks a
column of ``neg`` that is another positive of that anchor (same class). The training step builds it from
labels and passes it only to objectives that declare ``needs_labels``.

Shapes. B >= 1 and N >= 1 are required (a :class:`ShapeError` otherwise): an empty batch has no mean, and
N = 0 means the negative source gave no candidates at all (in-batch negatives of a batch of one are still
N = 2 columns, both masked). An anchor whose negatives are *all masked* (a queue's first step, the oracle on
a batch of one class) is valid and has nothing to contrast with: its loss is the value of the objective's
formula with an empty set of negatives, finite with finite gradients -- 0 for InfoNCE, Debiased, HCL,
Decoupled and SupCon (its positive is the only candidate), and no triplet for Triplet; Margin keeps its
pull term ½ d(x, x+)².

Non-finite scores. A score that is not finite and not masked out (NaN, ±inf: a poisoned queue, NaN
embeddings, an overflowed dot product) makes the loss NaN, in every objective: a NaN never turns into a
finite loss with NaN gradients (which the trainers' non-finite-loss checks would miss). The check is on the
device (no host synchronisation). Masked columns are ignored whatever they hold, NaN and ±inf included.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from contrastkit.errors import ConfigError, ShapeError
from contrastkit.scores import autocast_off


def _check_mask(name: str, mask: Tensor, neg: Tensor, meaning: str) -> None:
    if mask.shape != neg.shape:
        raise ShapeError(
            f"{name} must have the shape of neg; got {name} {tuple(mask.shape)} and neg {tuple(neg.shape)}"
        )
    if mask.dtype != torch.bool:
        raise ShapeError(f"{name} must be a bool tensor ({meaning}), got {mask.dtype}")


def check_scores(
    pos: Tensor, neg: Tensor, neg_mask: Tensor | None, pos_mask: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Validate shapes (and ``pos_mask`` if given) and upcast low-precision scores to float32."""
    if pos.ndim != 1:
        raise ShapeError(f"pos must have shape (B,), got {tuple(pos.shape)}")
    if neg.ndim != 2 or neg.shape[0] != pos.shape[0]:
        raise ShapeError(
            "neg must have shape (B, N) with B = len(pos); "
            f"got pos {tuple(pos.shape)} and neg {tuple(neg.shape)}"
        )
    if pos.shape[0] == 0:
        raise ShapeError(
            f"the batch is empty: pos {tuple(pos.shape)} and neg {tuple(neg.shape)} have B = 0 anchors; "
            "an objective needs at least one anchor"
        )
    if neg.shape[1] == 0:
        raise ShapeError(
            f"no negatives: neg has shape {tuple(neg.shape)} (N = 0 columns); every anchor needs at least "
            "one candidate negative (in-batch negatives need a batch of at least 2 items, a queue a size of "
            "at least 1; mask the columns that are not negatives instead of dropping them)"
        )
    if neg_mask is not None:
        _check_mask("neg_mask", neg_mask, neg, "True = ignore")
    if pos_mask is not None:
        _check_mask("pos_mask", pos_mask, neg, "True = an extra positive")
    if pos.dtype not in (torch.float32, torch.float64):
        pos = pos.float()
    if neg.dtype not in (torch.float32, torch.float64):
        neg = neg.float()
    return pos, neg, neg_mask


class Objective(nn.Module):
    """Base class: subclasses implement :meth:`per_anchor`, the loss of each anchor, shape (B,).

    An objective whose loss is not the plain mean over anchors (e.g. a mean over triplets) overrides
    :meth:`compute` instead. ``per_anchor`` may take a ``pos_mask`` keyword; only objectives whose
    ``per_anchor`` accepts it are given one.
    """

    #: Whether the training step must build ``pos_mask`` from class labels for this objective.
    needs_labels: ClassVar[bool] = False
    #: Whether the objective's formula holds only for cosine scores of unit vectors (in [-1, 1]): a
    #: distance on the sphere, or a bound such as Debiased's floor e^{-1/t}; the learner warns otherwise.
    assumes_unit_scores: ClassVar[bool] = False
    _takes_pos_mask: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._takes_pos_mask = "pos_mask" in inspect.signature(cls.per_anchor).parameters

    def per_anchor(self, pos: Tensor, neg: Tensor, neg_mask: Tensor | None) -> Tensor:
        raise NotImplementedError

    def compute(self, pos: Tensor, neg: Tensor, neg_mask: Tensor | None, **extra: Tensor) -> Tensor:
        """The scalar loss from validated float scores: by default the mean of :meth:`per_anchor`."""
        return self.per_anchor(pos, neg, neg_mask, **extra).mean()

    def forward(
        self, pos: Tensor, neg: Tensor, neg_mask: Tensor | None = None, pos_mask: Tensor | None = None
    ) -> Tensor:
        pos, neg, neg_mask = check_scores(pos, neg, neg_mask, pos_mask)
        extra: dict[str, Tensor] = {}
        if pos_mask is not None:
            if not self._takes_pos_mask:
                raise ConfigError(
                    f"{type(self).__name__} does not use pos_mask; only supervised objectives "
                    "(needs_labels = True) take extra positives"
                )
            extra["pos_mask"] = pos_mask
        with autocast_off(pos.device.type):
            loss = self.compute(pos, neg, neg_mask, **extra)
            return torch.where(_all_finite(pos, neg, neg_mask), loss, torch.full_like(loss, float("nan")))


def _all_finite(pos: Tensor, neg: Tensor, neg_mask: Tensor | None) -> Tensor:
    """0-d bool on the device: every score that is not masked out is finite."""
    kept = neg if neg_mask is None else neg.masked_fill(neg_mask, 0.0)
    return torch.isfinite(pos).all() & torch.isfinite(kept).all()
