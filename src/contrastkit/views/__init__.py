"""Views: random augmentations that turn one input into the positive pairs of contrastive learning.

:class:`ImageViews` is SimCLR's image augmentation on batched ``uint8`` tensors (per-sample random
parameters, vectorised, CPU or GPU); :mod:`contrastkit.views.functional` holds the batched operations it
is built from.
"""

from contrastkit.views import functional
from contrastkit.views.image import ImageViews, ViewParams, eval_transform, two_views

__all__ = ["ImageViews", "ViewParams", "eval_transform", "functional", "two_views"]
