"""In-batch negatives, as in SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of
Visual Representations", ICML 2020, arXiv 2002.05709, Sec. 2.1 as previously cited, and its NT-Xent loss,
Eq. (1) as remembered; neither number was re-read: only the paper's opening was readable in this check).

Each of the 2B views is an anchor; its partner view is the positive and the other 2B - 2 views are the
negatives. The candidate set is all 2B views, with the anchor itself and its partner masked out, so the
score matrix is one (2B, 2B) matmul and nothing is gathered.
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastkit.errors import ShapeError
from contrastkit.negatives.base import Candidates, NegativeSource, check_labels


class InBatchNegatives(NegativeSource):
    """SimCLR's 2B - 2 in-batch negatives for two views ``z1``, ``z2`` of shape (B, D)."""

    def forward(self, z1: Tensor, z2: Tensor, labels: Tensor | None = None) -> Candidates:
        if z1.shape != z2.shape or z1.ndim != 2:
            raise ShapeError(
                f"the two views' embeddings must both have shape (B, D); got {tuple(z1.shape)} "
                f"and {tuple(z2.shape)}"
            )
        check_labels(labels, z1, self)
        b = z1.shape[0]
        views = torch.cat([z1, z2], dim=0)
        partners = torch.cat([z2, z1], dim=0)
        idx = torch.arange(2 * b, device=z1.device)
        partner_idx = (idx + b) % (2 * b)
        mask = torch.zeros(2 * b, 2 * b, dtype=torch.bool, device=z1.device)
        mask[idx, idx] = True
        mask[idx, partner_idx] = True
        both = None if labels is None else torch.cat([labels, labels], dim=0)
        return Candidates(
            anchors=views,
            positives=partners,
            negatives=views,
            neg_mask=mask,
            anchor_labels=both,
            negative_labels=both,
        )
