"""The contrastive spine assembled: views' embeddings -> negatives -> score -> objective.

:class:`ContrastiveLearner` is a plain ``nn.Module`` that wires the swappable pieces together; it holds
no training-loop state. The negative source's state (a queue, an index) is updated *after* the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from contrastkit.negatives import NegativeSource, oracle_mask, score_candidates
from contrastkit.objectives import Objective, mutual_information_bound
from contrastkit.scores import Score


@dataclass
class StepOutput:
    """Loss of one step and cheap statistics (tensors: reading them is left to the caller)."""

    loss: Tensor
    mi_bound: Tensor
    pos_score: Tensor
    neg_score: Tensor


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
    ) -> None:
        super().__init__()
        self.model = model
        self.negatives = negatives
        self.score = score
        self.objective = objective
        self.oracle = oracle

    @property
    def uses_labels(self) -> bool:
        """Whether a step needs class labels (the oracle mask, or a supervised objective)."""
        return self.oracle or getattr(self.objective, "needs_labels", False)

    def forward(self, view1: Tensor, view2: Tensor, labels: Tensor | None = None) -> StepOutput:
        if self.uses_labels and labels is None:
            raise ValueError("the oracle mask and supervised objectives need labels")
        b = view1.shape[0]
        z = self.model(torch.cat([view1, view2], dim=0))
        z = self.score.prepare(z.float())
        z1, z2 = z[:b], z[b:]
        candidates = self.negatives(z1, z2, labels if self.uses_labels else None)
        contrast = score_candidates(candidates, self.score, oracle=self.oracle)
        if getattr(self.objective, "needs_labels", False):
            same = oracle_mask(candidates)
            pos_mask = same if contrast.neg_mask is None else same & ~contrast.neg_mask
            loss = self.objective(contrast.pos, contrast.neg, contrast.neg_mask, pos_mask=pos_mask)
        else:
            loss = self.objective(contrast.pos, contrast.neg, contrast.neg_mask)
        self.negatives.update(z1.detach(), z2.detach(), labels)
        with torch.no_grad():
            neg = contrast.neg.float()
            valid = contrast.valid_negatives()
            mean_neg = (
                neg.mean()
                if contrast.neg_mask is None
                else neg.masked_fill(contrast.neg_mask, 0).sum() / valid.sum().clamp_min(1)
            )
            stats = StepOutput(
                loss=loss,
                mi_bound=mutual_information_bound(loss.detach(), valid),
                pos_score=contrast.pos.float().mean(),
                neg_score=mean_neg,
            )
        return stats
