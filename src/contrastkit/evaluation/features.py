"""Feature extraction for evaluation: a frozen network over a uint8 image tensor, in batches, on a device."""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from contrastkit.errors import ConfigError, DataError, is_integer_dtype


def check_batch_size(name: str, value: object) -> int:
    """``value`` is a positive integer (a batch or block size), as an int; otherwise a ConfigError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_tensor(name: str, value: object) -> None:
    """``value`` is a torch tensor; otherwise a DataError naming ``name`` and how to convert it."""
    if not isinstance(value, Tensor):
        raise DataError(
            f"{name} must be a torch tensor, got {type(value).__name__}; convert with torch.as_tensor(...)"
        )


def check_integer_labels(name: str, labels: Tensor, note: str = "") -> None:
    """``labels`` hold integer class indices (not float, complex or bool); ``note`` follows "indices"."""
    if not is_integer_dtype(labels.dtype):
        raise DataError(
            f"{name} must be an integer tensor of class indices{note}, got dtype {labels.dtype}; "
            "convert with labels.long()"
        )


def warn_if_training(fn: object) -> None:
    """Warn when ``fn`` is a module in training mode with BatchNorm or dropout: its features would use batch
    statistics (and move the running ones) or drop units, silently."""
    fn = getattr(fn, "__self__", fn)  # a bound method (model.features): its module
    if not isinstance(fn, nn.Module) or not fn.training:
        return
    kinds = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    layers = sorted({type(m).__name__ for m in fn.modules() if isinstance(m, kinds) and m.training})
    if layers:
        warnings.warn(
            f"the feature network is in training mode with {', '.join(layers)}: BatchNorm would use each batch's "
            "statistics and update its running ones, dropout would drop units; call .eval() on it first "
            "(and .train() after)",
            UserWarning,
            stacklevel=4,  # past extract_features and torch.no_grad's wrapper: the caller's line
        )


@torch.no_grad()
def extract_features(
    fn: Callable[[Tensor], Tensor],
    images: Tensor,
    *,
    transform: Callable[[Tensor], Tensor],
    device: torch.device | str = "cpu",
    batch_size: int = 512,
    autocast_dtype: torch.dtype | None = None,
) -> Tensor:
    """Apply ``fn(transform(batch))`` to ``images`` (N, C, H, W) uint8 in batches; returns float32 (N, D).

    The caller puts the network in eval mode (a module in training mode with BatchNorm or dropout is warned
    about); results stay on ``device``.
    """
    warn_if_training(fn)
    batch_size = check_batch_size("batch_size", batch_size)
    if images.shape[0] == 0:  # torch.cat of no batches: a raw error naming nothing
        raise ConfigError(
            f"no images to extract features from (shape {tuple(images.shape)}): the split is empty"
        )
    device = torch.device(device)
    out = []
    for start in range(0, images.shape[0], batch_size):
        batch = transform(images[start : start + batch_size].to(device, non_blocking=True))
        with torch.autocast(
            device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
        ):
            feats = fn(batch)
        out.append(feats.flatten(1).float())
    return torch.cat(out)


@torch.no_grad()
def extract_features_from_batches(
    fns: Sequence[Callable[[Tensor], Tensor]],
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    transform: Callable[[Tensor], Tensor],
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> tuple[list[Tensor], Tensor]:
    """Features of every ``fn`` over streamed ``(uint8 images, labels)`` batches, read once.

    Returns float32 ``(N, D_i)`` features per function and the ``(N,)`` labels, on ``device``. Only the
    features are kept, never the images: for data sets too large to decode into memory.
    """
    for fn in fns:
        warn_if_training(fn)
    device = torch.device(device)
    out: list[list[Tensor]] = [[] for _ in fns]
    labels = []
    for images, y in batches:
        batch = transform(images.to(device, non_blocking=True))
        with torch.autocast(
            device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
        ):
            for i, fn in enumerate(fns):
                out[i].append(fn(batch).flatten(1).float())
        labels.append(y.to(device))
    if not labels:
        raise ConfigError("no batches to extract features from: the data (or its loader) is empty")
    return [torch.cat(f) for f in out], torch.cat(labels)
