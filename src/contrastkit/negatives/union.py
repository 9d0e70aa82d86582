"""The union of two negative sources: every anchor is contrasted with both sets of candidates.

The common use is in-batch negatives *plus* mined hard negatives (``--negatives in-batch+mined``). Dense
retrieval trains this way: Karpukhin et al. 2020 (DPR, "Dense Passage Retrieval for Open-Domain Question
Answering", EMNLP 2020, arXiv 2004.04906) add BM25 hard negatives to the in-batch ones (no section or
equation is cited here; the paper's body was not re-read in this check), and the in-batch part keeps the
embedding spread out. In this project, mined snapshot negatives alone collapse
a randomly initialised encoder on digits (kNN 0.833 against 0.864 at random init, ``docs/negatives.md``).
The union needs no re-encoding of the mined items.

Both sources must describe the *same* anchors in the same order. In-batch with two views gives
``cat([z1, z2])`` as the anchors, and so does :class:`~contrastkit.negatives.MinedNegatives` with
``both_views=True``. The shapes are checked at every step; the values are not.

The candidates are concatenated along the negatives axis: N = N1 + N2 columns. Two shared blocks (N, D)
or two per-anchor blocks (M, n, D) are concatenated. A shared block and a per-anchor block are kept apart
(``Candidates.extra_negatives``) and scored separately, one matmul and one batched product, so the shared
block is never broadcast to every anchor. Broadcasting it would cost M x N x D memory: 1024 x 1022 x 128
in bf16, 0.27 GB, for a batch of 512. The shared columns come first. Masks and labels follow their blocks.
A block without labels gets the label -1 (unknown: never a same-class match of the oracle mask).
"""

from __future__ import annotations

import torch
from torch import Tensor

from contrastkit.errors import ConfigError
from contrastkit.negatives.base import Candidates, NegativeSource, source_kwargs


class UnionNegatives(NegativeSource):
    """Candidates of ``first`` followed by those of ``second``, for the same anchors (module docstring)."""

    def __init__(self, first: NegativeSource, second: NegativeSource) -> None:
        super().__init__()
        self.first = first
        self.second = second
        self.needs_indices = bool(first.needs_indices or second.needs_indices)
        self.accepts_indices = bool(first.accepts_indices or second.accepts_indices)

    @property
    def last_stats(self) -> dict[str, Tensor]:
        """The statistics both sources report (e.g. the mined index's staleness)."""
        return {**getattr(self.first, "last_stats", {}), **getattr(self.second, "last_stats", {})}

    def forward(
        self, z1: Tensor, z2: Tensor, labels: Tensor | None = None, indices: Tensor | None = None
    ) -> Candidates:
        a = self.first(z1, z2, labels, **source_kwargs(self.first, indices))
        b = self.second(z1, z2, labels, **source_kwargs(self.second, indices))
        if a.anchors.shape != b.anchors.shape or a.positives.shape != b.positives.shape:
            raise ConfigError(
                f"{type(self.first).__name__} and {type(self.second).__name__} give different anchors "
                f"({tuple(a.anchors.shape)} vs {tuple(b.anchors.shape)}); a union needs the same anchors in "
                "both (e.g. in-batch with a mined source that takes both views as anchors)"
            )
        m = a.anchors.shape[0]
        device = a.anchors.device
        if a.extra_negatives is not None or b.extra_negatives is not None:
            raise ConfigError("a union of unions is not supported: give UnionNegatives two plain sources")
        if a.negatives.ndim == 3 and b.negatives.ndim == 2:
            a, b = b, a  # the shared block's columns come first
        shared = a.negatives.ndim == 2 and b.negatives.ndim == 3
        dtype = torch.promote_types(a.negatives.dtype, b.negatives.dtype)
        if shared:  # scored separately: the shared block is never broadcast to every anchor
            negatives, extra = a.negatives.to(dtype), b.negatives.to(dtype)
        else:
            negatives, extra = torch.cat([a.negatives.to(dtype), b.negatives.to(dtype)], dim=-2), None
        n1, n2 = a.num_negatives, b.num_negatives
        neg_mask = None
        if a.neg_mask is not None or b.neg_mask is not None:
            neg_mask = torch.cat(
                [
                    c.neg_mask
                    if c.neg_mask is not None
                    else torch.zeros(m, n, dtype=torch.bool, device=device)
                    for c, n in ((a, n1), (b, n2))
                ],
                dim=1,
            )
        labels_ab = [a.negative_labels, b.negative_labels]
        negative_labels = None
        if all(lab is not None and lab.ndim == 1 for lab in labels_ab):
            negative_labels = torch.cat([lab.long() for lab in labels_ab if lab is not None])
        elif any(lab is not None for lab in labels_ab):
            parts = []
            for lab, n in zip(labels_ab, (n1, n2), strict=True):
                if lab is None:
                    lab = torch.full((m, n), -1, dtype=torch.long, device=device)
                elif lab.ndim == 1:
                    lab = lab.unsqueeze(0).expand(m, n)
                parts.append(lab.long())
            negative_labels = torch.cat(parts, dim=1)
        anchor_labels = a.anchor_labels if a.anchor_labels is not None else b.anchor_labels
        return Candidates(
            anchors=a.anchors,
            positives=a.positives,
            negatives=negatives,
            neg_mask=neg_mask,
            anchor_labels=anchor_labels,
            negative_labels=negative_labels,
            extra_negatives=extra,
        )

    @torch.no_grad()
    def update(
        self, z1: Tensor, z2: Tensor, labels: Tensor | None = None, indices: Tensor | None = None
    ) -> None:
        self.first.update(z1, z2, labels, **source_kwargs(self.first, indices))
        self.second.update(z1, z2, labels, **source_kwargs(self.second, indices))
