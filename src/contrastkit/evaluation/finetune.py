"""Few-label fine-tuning: the pretrained backbone plus a new linear head, trained on 1% / 10% of the labels.

The semi-supervised protocol of Chen et al. 2020b, "Big Self-Supervised Models are Strong Semi-Supervised
Learners" (SimCLRv2), Sec. 4 (settings), which follows SimCLR (Chen et al. 2020a, Appendix B.5):

- a class-balanced, seeded subset holding ``fraction`` of the training images keeps its labels;
- the whole network is fine-tuned with LARS, learning rate ``0.005 × sqrt(batch)``, batch 1024 (or the
  subset, when smaller), no weight decay and no warm-up (cosine decay per step), for 60 epochs on 1% of
  the labels and 30 epochs on 10%;
- the only augmentation is a random resized crop with a horizontal flip (no colour operations);
- biases, normalisation parameters and the new head are excluded from LARS' adaptation (SimCLR's
  ``exclude_from_layer_adaptation``); the head starts at zero (the reference code's
  ``zero_init_logits_layer``).

SimCLRv2 fine-tunes from the first layer of its 3-layer projection head; here the new head sits on the
backbone features ``h`` (SimCLR v1's choice), so any backbone can be fine-tuned. ``optimizer="sgd"`` gives
SimCLR v1's Nesterov momentum with ``lr = 0.05 × batch / 256``. The model passed in is never modified:
a deep copy is fine-tuned.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.data import balanced_indices
from contrastkit.errors import ConfigError, DataError, TrainingError
from contrastkit.evaluation.features import check_integer_labels, check_tensor
from contrastkit.evaluation.knn import check_dense_labels
from contrastkit.views import ImageViews, eval_transform

__all__ = [
    "FINETUNE_EPOCHS",
    "FinetuneResult",
    "FinetunedClassifier",
    "check_label_fractions",
    "few_label_subset",
    "finetune_few_labels",
]

FINETUNE_EPOCHS = {0.01: 60, 0.1: 30}
"""Epochs per label fraction (SimCLRv2 Sec. 4); other fractions use 30."""


class FinetunedClassifier(nn.Module):
    """A backbone ``f`` and a linear head: ``forward(x) = head(f(x))`` (class logits)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


@dataclass
class FinetuneResult:
    """Test top-1 after fine-tuning on ``fraction`` of the labels, its protocol and the fine-tuned model."""

    fraction: float
    top1: float
    protocol: dict[str, Any]
    model: FinetunedClassifier = field(repr=False)
    subset: Tensor = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"fraction": self.fraction, "top1": self.top1, "protocol": self.protocol}


def few_label_subset(labels: Tensor, fraction: float, seed: int = 0) -> Tensor:
    """Sorted indices of ``round(fraction × N)`` labelled images (at least one), class-balanced and seeded.

    Uses :func:`contrastkit.data.balanced_indices` over the images with known labels (label >= 0).
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ConfigError(f"a label fraction must lie in (0, 1], got {fraction!r} (e.g. 0.01 for 1%)")
    y = torch.as_tensor(labels).cpu()
    known = (y >= 0).nonzero().flatten()
    if known.numel() == 0:
        raise DataError(
            "few-label fine-tuning needs labelled training images, but every label is unknown (-1)"
        )
    size = max(1, round(fraction * known.numel()))
    return known[balanced_indices(y[known], size, seed)]


MIN_FINETUNE_IMAGES = 2
"""Fine-tuning trains BatchNorm layers, which need at least 2 images in a batch."""


def _minimum_fraction(images: int, known: int) -> float:
    """The smallest fraction of 3 significant digits whose subset of ``known`` labelled images holds
    ``images`` images (as :func:`few_label_subset` sizes it: ``round(fraction × known)``)."""
    scale = 10 ** (2 - math.floor(math.log10((images - 0.5) / known)))
    m = math.floor((images - 0.5) / known * scale)
    while m < scale and round(m / scale * known) < images:
        m += 1
    return min(m / scale, 1.0)


def check_label_fractions(labels: Tensor, fractions: Sequence[float]) -> None:
    """Refuse a label fraction whose class-balanced subset is too small to fine-tune on.

    The subset must hold one image per class (fewer cannot learn the missing classes, so the top-1 would
    say little) and at least :data:`MIN_FINETUNE_IMAGES` images in all (BatchNorm); one
    :class:`ConfigError` names the count, the rule it breaks and the smallest fraction that meets both.
    """
    y = torch.as_tensor(labels).cpu()
    known = y[y >= 0]
    if known.numel() == 0:
        return  # few_label_subset says so
    classes = int(torch.unique(known).numel())
    n_known = int(known.numel())
    needed = max(classes, MIN_FINETUNE_IMAGES)
    for fraction in fractions:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            continue  # few_label_subset says so
        size = max(1, round(fraction * n_known))
        if size >= needed:
            continue
        why = []
        if size < classes:
            why.append("fewer than one per class: fine-tuning on it cannot learn every class")
        if size < MIN_FINETUNE_IMAGES:
            why.append(f"fine-tuning needs at least {MIN_FINETUNE_IMAGES} images (BatchNorm)")
        head = (
            f"label fraction {fraction:g} of the {n_known} labelled training images is {size} image(s) for "
            f"{classes} class{'es' if classes != 1 else ''}, {'; '.join(why)}. "
        )
        if needed > n_known:
            raise ConfigError(
                head + f"Even all of them is too few: give data with at least {needed} labelled images"
            )
        least = _minimum_fraction(needed, n_known)
        raise ConfigError(
            head
            + f"Use a fraction of at least {least:g} ({needed} images), e.g. --few-label {least:g} (with "
            "--all too: --few-label replaces its default 0.01,0.1), or more data"
        )


def _feature_dim(backbone: nn.Module, sample: Tensor) -> int:
    dim = getattr(backbone, "feature_dim", None)
    if isinstance(dim, int):
        return dim
    was = backbone.training
    backbone.eval()
    with torch.no_grad():
        out = backbone(sample[:1])
    backbone.train(was)
    return int(out.flatten(1).shape[1])


def _optimizer(model: FinetunedClassifier, name: str, lr: float, momentum: float, weight_decay: float) -> Any:
    adapt = [p for p in model.backbone.parameters() if p.ndim > 1]
    rest = [p for p in model.backbone.parameters() if p.ndim <= 1]
    head = list(model.head.parameters())
    if name == "lars":
        from contrastkit.training.optim import LARS

        return LARS(
            [
                {"params": adapt, "weight_decay": weight_decay},
                {"params": rest + head, "weight_decay": 0.0, "lars_exclude": True},
            ],
            lr=lr,
            momentum=momentum,
        )
    if name == "sgd":
        return torch.optim.SGD(
            [{"params": adapt, "weight_decay": weight_decay}, {"params": rest + head, "weight_decay": 0.0}],
            lr=lr,
            momentum=momentum,
            nesterov=True,
        )
    raise ConfigError(f"unknown fine-tuning optimizer {name!r}; choose lars or sgd")


@torch.no_grad()
def _top1(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    transform: Any,
    device: torch.device,
    batch_size: int,
    autocast_dtype: torch.dtype | None,
) -> float:
    model.eval()
    correct = 0
    for start in range(0, images.shape[0], batch_size):
        x = transform(images[start : start + batch_size].to(device))
        with torch.autocast(
            device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
        ):
            pred = model(x).argmax(dim=1)
        correct += int((pred.cpu() == labels[start : start + batch_size].cpu()).sum())
    return correct / max(1, images.shape[0])


def finetune(
    backbone: nn.Module,
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    *,
    fraction: float,
    num_classes: int | None = None,
    epochs: int | None = None,
    batch_size: int = 1024,
    optimizer: str = "lars",
    lr: float | None = None,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    flip_p: float = 0.5,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int = 0,
    subset_seed: int | None = None,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    eval_batch_size: int = 512,
) -> FinetuneResult:
    """Fine-tune a copy of ``backbone`` + a zero-initialised linear head on ``fraction`` of the labels.

    ``train_images``/``test_images`` are ``uint8`` (N, C, H, W); ``mean``/``std`` normalise them as in
    pretraining. See the module docstring for the protocol and its defaults; ``epochs`` defaults to
    :data:`FINETUNE_EPOCHS`, ``lr`` to ``0.005 sqrt(batch)`` (lars) or ``0.05 batch / 256`` (sgd).
    ``seed`` seeds the fine-tuning (augmentation, batches); ``subset_seed`` (default ``seed``) the choice
    of the labelled images, so that runs of several seeds can be fine-tuned on the same labels.
    """
    subset_seed = seed if subset_seed is None else subset_seed
    t0 = time.perf_counter()
    device = torch.device(device)
    for name, imgs, y in (("train", train_images, train_labels), ("test", test_images, test_labels)):
        for what, t in (("images", imgs), ("labels", y)):
            check_tensor(f"{name} {what}", t)
        check_integer_labels(f"{name} labels", y)
        if imgs.dtype != torch.uint8 or imgs.ndim != 4 or y.shape != (imgs.shape[0],):
            raise DataError(
                f"{name} images must be uint8 (N, C, H, W) with one label each, got {imgs.dtype} "
                f"{tuple(imgs.shape)} and labels {tuple(y.shape)}"
            )
    if test_images.shape[0] == 0 or int(test_labels.min()) < 0:
        raise DataError(
            "few-label fine-tuning is scored on labelled test images; the test split has none or -1s"
        )
    for name, v in (
        ("batch_size", batch_size),
        ("eval_batch_size", eval_batch_size),
        ("epochs", epochs if epochs is not None else 1),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    subset = few_label_subset(train_labels, fraction, subset_seed)
    n = int(subset.numel())
    check_label_fractions(train_labels, [fraction])  # at least one image per class, and 2 (BatchNorm)
    largest = int(max(train_labels.max(), test_labels.max()))
    if num_classes is None:
        k = check_dense_labels(largest, train_labels.numel() + test_labels.numel())
    elif isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= largest:
        raise ConfigError(
            f"num_classes is {num_classes!r} but the train/test labels go up to {largest}; num_classes must be "
            f"an integer of at least {largest + 1} (the largest label + 1), or None to infer it"
        )
    else:
        k = num_classes
    epochs = epochs if epochs is not None else FINETUNE_EPOCHS.get(round(fraction, 6), 30)
    batch = min(batch_size, n)
    if lr is None:
        lr = 0.005 * math.sqrt(batch) if optimizer == "lars" else 0.05 * batch / 256
    steps_per_epoch = n // batch
    total_steps = steps_per_epoch * epochs

    images = train_images[subset].to(device)
    labels = train_labels[subset].to(device)
    size = int(images.shape[-1])
    views = ImageViews(
        size=(int(images.shape[-2]), size),
        scale=crop_scale,
        flip_p=flip_p,
        brightness=0.0,
        contrast=0.0,
        saturation=0.0,
        hue=0.0,
        jitter_p=0.0,
        grayscale_p=0.0,
        mean=mean,
        std=std,
    ).to(device)

    torch.manual_seed(seed)
    src = copy.deepcopy(backbone).to(device)
    model = FinetunedClassifier(src, _feature_dim(src, views(images[:1])), k).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = _optimizer(model, optimizer, lr, momentum, weight_decay)
    from contrastkit.training.optim import warmup_cosine

    sched = warmup_cosine(opt, warmup_steps=0, total_steps=total_steps)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    model.train()
    last_loss = float("nan")
    for _ in range(epochs):
        order = torch.randperm(n, device=device, generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * batch : (i + 1) * batch]
            with torch.autocast(
                device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
            ):
                x = views(images[idx], generator=gen)
                logits = model(x)
            loss = F.cross_entropy(logits.float(), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        last_loss = float(loss.detach())
    if not math.isfinite(last_loss):
        raise TrainingError(
            f"fine-tuning on {fraction:g} of the labels diverged (loss {last_loss}); pass a lower lr"
        )

    def transform(x: Tensor) -> Tensor:
        return eval_transform(x, mean, std)

    top1 = _top1(model, test_images, test_labels, transform, device, eval_batch_size, autocast_dtype)
    per_class = torch.bincount(train_labels[subset].cpu(), minlength=k)
    protocol = {
        "paper": "Chen et al. 2020b (SimCLRv2) Sec. 4 / SimCLR Appendix B.5: fine-tune backbone + new linear head",
        "labelled_images": n,
        "labels_per_class": [int(c) for c in per_class],
        "subset": f"class-balanced, seed {subset_seed}, of {int((train_labels >= 0).sum())} labelled train "
        "images",
        "epochs": epochs,
        "steps": total_steps,
        "batch_size": batch,
        "optimizer": optimizer
        + (" (head, biases and norms excluded from adaptation)" if optimizer == "lars" else " (Nesterov)"),
        "lr": lr,
        "lr_schedule": "cosine decay per step, no warm-up",
        "momentum": momentum,
        "weight_decay": weight_decay,
        "augmentation": f"random resized crop scale={tuple(crop_scale)} + horizontal flip p={flip_p}, no colour",
        "head": "linear on backbone features, zero-initialised",
        "final_train_loss": last_loss,
        "test_images": int(test_images.shape[0]),
        "precision": "bf16 autocast" if autocast_dtype == torch.bfloat16 else "fp32",
        "device": str(device),
        "seconds": time.perf_counter() - t0,
    }
    return FinetuneResult(fraction=float(fraction), top1=top1, protocol=protocol, model=model, subset=subset)


def finetune_few_labels(
    backbone: nn.Module,
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    *,
    fractions: Sequence[float] = (0.01, 0.1),
    **kwargs: Any,
) -> list[FinetuneResult]:
    """:func:`finetune` once per label fraction (default 1% and 10%), each from the same pretrained copy."""
    if not fractions:
        raise ConfigError("give at least one label fraction, e.g. 0.01,0.1")
    check_label_fractions(train_labels, fractions)  # every fraction before the first fine-tuning
    return [
        finetune(backbone, train_images, train_labels, test_images, test_labels, fraction=f, **kwargs)
        for f in fractions
    ]
