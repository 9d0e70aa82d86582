"""In-batch negatives: SimCLR's 2B - 2 (the default) and SimCSE's cross-view B - 1.

* SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations", ICML
  2020, arXiv 2002.05709, Sec. 2.1, NT-Xent loss Eq. (1)): each of the 2B views is an anchor; its partner
  view is the positive and the other 2B - 2 views are the negatives. The candidate set is all 2B views, with
  the anchor itself and its partner masked out, so the score matrix is one (2B, 2B) matmul.
* Unsupervised SimCSE (Gao, Yao, Chen 2021, "SimCSE: Simple Contrastive Learning of Sentence Embeddings",
  EMNLP 2021, arXiv 2104.08821, Sec. 3, Eq. (4)): only the first views ``h_i^{z_i}`` are anchors, and
  their candidates are the second views ``h_j^{z'_j}`` of the batch: the positive ``j = i`` and B - 1
  negatives, one (B, B) matmul (``same_view=False, symmetric=False``).

The two switches also give the mixed cases: ``same_view=False`` with ``symmetric=True`` contrasts both
views against the other view's B - 1 items (the symmetrised cross-view loss of CLIP-style training), and
``same_view=True`` with ``symmetric=False`` keeps SimCLR's 2B - 2 negatives for the first views only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastkit.errors import ConfigError, ShapeError
from contrastkit.negatives.base import Candidates, NegativeSource, check_labels


class InBatchNegatives(NegativeSource):
    """In-batch negatives for two views ``z1``, ``z2`` of shape (B, D).

    Args:
        same_view: also take the other items' views of the anchor's own view as negatives (SimCLR, the
            default: 2B - 2 negatives an anchor); False: only the other view's B - 1 items (SimCSE).
        symmetric: both views are anchors (2B anchors, the default); False: only ``z1``'s B rows are
            anchors (SimCSE's Eq. 4 is one-directional).
    """

    def __init__(self, *, same_view: bool = True, symmetric: bool = True) -> None:
        super().__init__()
        if not (isinstance(same_view, bool) and isinstance(symmetric, bool)):
            raise ConfigError(
                f"same_view and symmetric must be True or False, got {same_view!r} and {symmetric!r}"
            )
        self.same_view = same_view
        self.symmetric = symmetric

    def extra_repr(self) -> str:
        return f"same_view={self.same_view}, symmetric={self.symmetric}"

    def forward(self, z1: Tensor, z2: Tensor, labels: Tensor | None = None) -> Candidates:
        if z1.shape != z2.shape or z1.ndim != 2:
            raise ShapeError(
                f"the two views' embeddings must both have shape (B, D); got {tuple(z1.shape)} "
                f"and {tuple(z2.shape)}"
            )
        check_labels(labels, z1, self)
        b = z1.shape[0]
        if not (self.same_view or self.symmetric):  # SimCSE: (B, B), the positive on the diagonal
            return Candidates(
                anchors=z1,
                positives=z2,
                negatives=z2,
                neg_mask=torch.eye(b, dtype=torch.bool, device=z1.device),
                anchor_labels=labels,
                negative_labels=labels,
            )
        views = torch.cat([z1, z2], dim=0)
        m = 2 * b if self.symmetric else b
        rows = torch.arange(m, device=z1.device)
        cols = torch.arange(2 * b, device=z1.device)
        # a candidate is not a negative when it is the anchor itself or its partner, and, without same_view,
        # when it is a view of the anchor's own side (the first b columns are z1's, the last b z2's)
        mask = (cols[None, :] == rows[:, None]) | (cols[None, :] == ((rows + b) % (2 * b))[:, None])
        if not self.same_view:
            mask |= (cols[None, :] < b) == (rows[:, None] < b)
        both = None if labels is None else torch.cat([labels, labels], dim=0)
        return Candidates(
            anchors=views[:m],
            positives=torch.cat([z2, z1], dim=0)[:m],
            negatives=views,
            neg_mask=mask,
            anchor_labels=None if both is None else both[:m],
            negative_labels=both,
        )
