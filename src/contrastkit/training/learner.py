"""The contrastive spine assembled: views' embeddings -> negatives -> score -> objective.

:class:`ContrastiveLearner` is a plain ``nn.Module`` that wires the swappable pieces together; it holds
no training-loop state. The negative source's state (a queue, an index, MoCHi's warm-up counter) is updated
*after* the loss, and only in training mode (``learner.train()``, the default): a forward pass in ``eval()``
mode, e.g. a validation loss, leaves it as it was (no validation keys in the queue, no step counted), with or
without ``torch.no_grad()``. The update happens inside ``forward``, i.e. *before* the caller's ``backward``;
so a source must not hand out its state tensors themselves as candidates (the built-in sources give copies,
e.g. :class:`~contrastkit.negatives.QueueNegatives` a snapshot of its keys), or ``backward`` would find them
modified in place.

Scores are computed in float32 for low-precision (bf16, float16) embeddings and in float64 for float64 ones
(:func:`~contrastkit.scores.score_dtype`). ``labels`` and ``indices`` must have shape (B,), one per image
of the batch (checked before anything is computed); an ``oracle`` cannot be combined with a supervised
objective (``needs_labels``), which already makes same-class samples positives.

With a ``key_encoder`` (a :class:`~contrastkit.negatives.MomentumEncoder`, MoCo) the step is symmetrised
as in MoCo v2's common practice: queries ``q1, q2`` come from the model, keys ``k1, k2`` from the key
encoder (no gradient), the loss is the mean of ``L(q1, k2)`` and ``L(q2, k1)``, and both key sets are
enqueued once, after both losses, so neither half sees the current batch's keys as negatives. The
caller updates the key encoder (``key_encoder.update(model)``) after the optimizer step.

Sources that need the batch's dataset indices (``needs_indices``: mined negatives, which must not mine an
anchor's own item) get ``indices`` in ``forward`` and ``update``, and so do those that take them when given
(``accepts_indices``: the queue stores them beside its keys); with a key encoder both halves of the
symmetrised step use the same indices.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from contrastkit.errors import ConfigError, is_integer_dtype
from contrastkit.negatives import (
    Contrast,
    MomentumEncoder,
    NegativeSource,
    oracle_mask,
    score_candidates,
    source_kwargs,
)
from contrastkit.objectives import OBJECTIVES, InfoNCE, Objective, ShapeError, mutual_information_bound
from contrastkit.scores import Score, score_dtype


@dataclass
class StepOutput:
    """Loss of one step and cheap statistics (tensors: reading them is left to the caller).

    ``extra`` holds the negative source's own statistics when it has any (MoCHi's ``last_stats``:
    proxy-task accuracy, share of synthetic points among the hardest; mined negatives' index staleness and
    refresh seconds), as 0-d tensors.
    """

    loss: Tensor
    # the InfoNCE bound log(N + 1) - L (nats); None for other objectives, whose loss bounds nothing (the
    # decoupled loss, without the positive in its denominator, even goes below 0)
    mi_bound: Tensor | None
    pos_score: Tensor
    neg_score: Tensor
    extra: dict[str, Tensor] = field(default_factory=dict)


def unit_score_problem(objective: type | Objective | None, score_name: str) -> str | None:
    """Why ``objective`` (a class or an instance) needs cosine scores, when the score is not one (None when
    it is, or the objective works on any scores, or is None: unknown)."""
    if objective is None or not getattr(objective, "assumes_unit_scores", False):
        return None
    name = objective.__name__ if isinstance(objective, type) else type(objective).__name__
    why = (
        "its distance sqrt(2 - 2s) is a distance on the unit sphere only (scores above 1 stop the pull)"
        if name == "Margin"
        else "its estimator is clamped at e^{-1/t}, the minimum for scores >= -1 only (lower dot scores "
        "give a loss of 0 and no gradient)"
    )
    return f"the objective {name} assumes cosine scores of unit vectors, but the score is {score_name}: {why}"


def refuse_unit_score_objective(objective: str, score: str) -> None:
    """The command lines' check of a new run (``--objective``, ``--score`` names): an objective that assumes
    cosine scores is refused with another score. An unknown objective passes here: the config's own check
    refuses it, naming the valid ones. (Runs saved with such a pair still resume: the learner warns.)"""
    problem = unit_score_problem(OBJECTIVES.get(objective), f"--score {score}")
    if score != "cosine" and problem is not None:
        raise ConfigError(f"{problem}; use --score cosine, or another --objective")


def _check_pieces(negatives: NegativeSource, score: Score, objective: Objective) -> None:
    """Refuse pieces that run together but compute the wrong thing, naming the fix (the source is never
    changed behind the caller's back: it may be shared with another learner); warn about an objective that
    assumes cosine scores under another score (a warning: runs saved with one still resume)."""
    from contrastkit.negatives.mixing import HardNegativeMixing

    problem = None if score.unit_norm else unit_score_problem(objective, type(score).__name__)
    if problem is not None:
        warnings.warn(f"{problem}; use CosineSimilarity()", UserWarning, stacklevel=3)

    for module in negatives.modules():
        if isinstance(module, HardNegativeMixing) and module.normalize != score.unit_norm:
            what = (
                "normalises its mixtures to unit vectors, but the score's embeddings are not unit vectors: "
                "the synthetic points would score like the easiest negatives, not the hardest"
                if module.normalize
                else "keeps its mixtures unnormalised, but the score's embeddings are unit vectors: a mixture "
                "of two is shorter, so it would score lower than the negatives it mixes"
            )
            raise ConfigError(
                f"HardNegativeMixing(normalize={module.normalize}) {what}; pass "
                f"normalize={score.unit_norm} (the score's unit_norm) for {type(score).__name__}"
            )


class ContrastiveLearner(nn.Module):
    """``model`` maps a batch of views to embeddings; the rest turns two views into a loss."""

    def __init__(
        self,
        model: nn.Module,
        negatives: NegativeSource,
        score: Score,
        objective: Objective,
        *,
        oracle: bool = False,
        key_encoder: MomentumEncoder | None = None,
    ) -> None:
        super().__init__()
        if oracle and getattr(objective, "needs_labels", False):
            # the wording of TrainConfig's check of --oracle with --objective supcon
            raise ConfigError(
                f"oracle=True and the supervised objective {type(objective).__name__} cannot be combined: "
                f"{type(objective).__name__} already makes same-class samples positives, and the oracle would "
                "remove them; drop oracle=True"
            )
        _check_pieces(negatives, score, objective)
        self.model = model
        self.negatives = negatives
        self.score = score
        self.objective = objective
        self.oracle = oracle
        self.key_encoder = key_encoder
        # Set by a trainer that skips non-finite steps: a predicate on a tensor (True: finite everywhere),
        # asked about the loss and the model's (and key encoder's) floating buffers after the forward pass;
        # when it says no, the negative source is not updated, so a skipped step leaves its state as it was,
        # and the step's loss is returned as NaN, so that the trainer skips the step (see ``forward``).
        self.finite_check: Callable[[Tensor], bool] | None = None

    @property
    def uses_labels(self) -> bool:
        """Whether a step needs class labels (the oracle mask, or a supervised objective)."""
        return self.oracle or getattr(self.objective, "needs_labels", False)

    def _loss(
        self, anchors: Tensor, positives: Tensor, labels: Tensor | None, kwargs: dict[str, Tensor]
    ) -> tuple[Tensor, Contrast]:
        # No copy of the candidates here: ``update`` (below, before the caller's ``backward``) writes the source's
        # state in place, and the sources hand out copies of it (the queue a snapshot of its keys).
        candidates = self.negatives(anchors, positives, labels if self.uses_labels else None, **kwargs)
        contrast = score_candidates(candidates, self.score, oracle=self.oracle)
        if getattr(self.objective, "needs_labels", False):
            same = oracle_mask(candidates)
            pos_mask = same if contrast.neg_mask is None else same & ~contrast.neg_mask
            loss = self.objective(contrast.pos, contrast.neg, contrast.neg_mask, pos_mask=pos_mask)
        else:
            loss = self.objective(contrast.pos, contrast.neg, contrast.neg_mask)
        return loss, contrast

    def _source_stats(self) -> dict[str, Tensor]:
        stats = getattr(self.negatives, "last_stats", None)
        return {k: v.detach() for k, v in stats.items()} if stats else {}

    def _state_buffers(self) -> list[Tensor]:
        """The model's and key encoder's floating buffers (BatchNorm statistics), not the negative source's."""
        return [
            b
            for name, b in self.named_buffers()
            if not name.startswith("negatives.") and b.is_floating_point() and b.numel()
        ]

    def _may_update(self, loss: Tensor) -> bool:
        """Whether the step's results may be kept: with ``finite_check``, the loss and every buffer the
        forward pass moved (BatchNorm running statistics) must be finite (one check, one synchronisation)."""
        if self.finite_check is None:
            return True
        values = [
            loss.detach().float().reshape(()),
            *(b.detach().float().abs().amax() for b in self._state_buffers()),
        ]
        return self.finite_check(torch.stack(values))

    def _update_source(
        self, loss: Tensor, z1: Tensor, z2: Tensor, labels: Tensor | None, kwargs: dict[str, Tensor]
    ) -> Tensor:
        """Update the negative source after the loss, in training mode only; the loss to return."""
        if not self.training:
            return loss
        if not self._may_update(loss):
            return self._refused(loss)
        self.negatives.update(z1, z2, labels, **kwargs)
        return loss

    def _check_batch(
        self, view1: Tensor, view2: Tensor, labels: Tensor | None, indices: Tensor | None
    ) -> None:
        """Shapes and dtypes only (no device synchronisation): two views of B images, integer labels and
        indices (B,)."""
        b = view1.shape[0]
        if view2.shape[0] != b:
            raise ShapeError(
                f"the two views must hold the same number of images, got {tuple(view1.shape)} and "
                f"{tuple(view2.shape)}"
            )
        for name, t in (("labels", labels), ("indices", indices)):
            if t is not None and tuple(t.shape) != (b,):
                raise ShapeError(
                    f"{name} must have shape ({b},), one per image of the batch of {b}, got "
                    f"{tuple(t.shape)}" + ("; flatten them" if t.numel() == b else "")
                )
            if t is not None and not is_integer_dtype(t.dtype):  # before the loss: the queue stores them
                raise ConfigError(
                    f"{name} must be integers ({'class indices' if name == 'labels' else 'dataset indices'}, "
                    f"-1: unknown), got dtype {t.dtype}; convert them with {name}.long()"
                )

    @staticmethod
    def _refused(loss: Tensor) -> Tensor:
        """The loss of a step ``_may_update`` refused: NaN (it is already when the loss itself was not finite),
        so that the trainer skips the step and puts the buffers back. A finite loss whose forward pass left
        non-finite BatchNorm statistics (huge activations: their variance overflows) cannot be kept either:
        the next evaluation, and the checkpoint, would carry them."""
        return loss + float("nan")

    def forward(
        self, view1: Tensor, view2: Tensor, labels: Tensor | None = None, indices: Tensor | None = None
    ) -> StepOutput:
        """One step's loss for two views (B, ...) of B images; ``labels`` (B,) are their class labels (for the
        oracle and supervised objectives), ``indices`` (B,) their dataset indices. The negative source is
        updated only in training mode (see the module docstring)."""
        if self.uses_labels and labels is None:
            raise ConfigError("the oracle mask and supervised objectives need labels")
        self._check_batch(view1, view2, labels, indices)
        kwargs = source_kwargs(self.negatives, indices, "learner(view1, view2, labels, indices=...)")
        if self.key_encoder is not None:
            return self._forward_momentum(view1, view2, labels, kwargs)
        b = view1.shape[0]
        z = self.model(torch.cat([view1, view2], dim=0))
        z = self.score.prepare(z.to(score_dtype(z.dtype)))
        z1, z2 = z[:b], z[b:]
        loss, contrast = self._loss(z1, z2, labels, kwargs)
        extra = self._source_stats()
        loss = self._update_source(loss, z1.detach(), z2.detach(), labels, kwargs)
        with torch.no_grad():
            return _step_output(loss, [contrast], extra, isinstance(self.objective, InfoNCE))

    def _forward_momentum(
        self, view1: Tensor, view2: Tensor, labels: Tensor | None, kwargs: dict[str, Tensor]
    ) -> StepOutput:
        assert self.key_encoder is not None
        b = view1.shape[0]
        both = torch.cat([view1, view2], dim=0)
        q = self.model(both)
        q = self.score.prepare(q.to(score_dtype(q.dtype)))
        with torch.no_grad():
            k = self.key_encoder(both)
            k = self.score.prepare(k.to(score_dtype(k.dtype)))
        q1, q2 = q[:b], q[b:]
        k1, k2 = k[:b], k[b:]
        loss_a, contrast_a = self._loss(q1, k2, labels, kwargs)
        stats_a = self._source_stats()
        loss_b, contrast_b = self._loss(q2, k1, labels, kwargs)
        stats_b = self._source_stats()
        loss = (loss_a + loss_b) / 2
        extra = {key: (v + stats_b[key]) / 2 for key, v in stats_a.items() if key in stats_b}
        both_kwargs = {key: torch.cat([v, v]) for key, v in kwargs.items()}
        loss = self._update_source(
            loss,
            torch.cat([q1, q2]).detach(),
            torch.cat([k2, k1]),
            None if labels is None else torch.cat([labels, labels]),
            both_kwargs,
        )
        with torch.no_grad():
            return _step_output(loss, [contrast_a, contrast_b], extra, isinstance(self.objective, InfoNCE))


def _step_output(
    loss: Tensor, contrasts: list[Contrast], extra: dict[str, Tensor], infonce: bool
) -> StepOutput:
    """Statistics of a step from the contrasts it scored (averaged over them; call under no_grad); the
    mutual-information bound only for an ``infonce`` objective."""
    pos, neg, valid = [], [], []
    for contrast in contrasts:
        n = contrast.neg.float()
        v = contrast.valid_negatives()
        neg.append(
            n.mean()
            if contrast.neg_mask is None
            else n.masked_fill(contrast.neg_mask, 0).sum() / v.sum().clamp_min(1)
        )
        pos.append(contrast.pos.float().mean())
        valid.append(v)
    return StepOutput(
        loss=loss,
        mi_bound=mutual_information_bound(loss.detach(), torch.cat(valid)) if infonce else None,
        pos_score=torch.stack(pos).mean(),
        neg_score=torch.stack(neg).mean(),
        extra=extra,
    )
