"""Views: random augmentations that turn one input into the positive pairs of contrastive learning.

:class:`ImageViews` is SimCLR's image augmentation on batched ``uint8`` tensors (per-sample random
parameters, vectorised, CPU or GPU), with the Gaussian blur and solarisation of MoCo v2 and BYOL;
:func:`view_pair` builds the named recipes (``RECIPES``: simclr, simclr_imagenet, mocov2, byol) as a
``(views1, views2)`` pair. :mod:`contrastkit.views.functional` holds the batched operations.
"""

from contrastkit.views import functional
from contrastkit.views.image import RECIPES, ImageViews, ViewParams, eval_transform, two_views, view_pair

__all__ = ["RECIPES", "ImageViews", "ViewParams", "eval_transform", "functional", "two_views", "view_pair"]
