"""Linear probe: multinomial logistic regression on frozen, standardised features.

The linear-classifier protocol of Kornblith, Shlens, Le 2019 ("Do Better ImageNet Models Transfer
Better?"), which SimCLR (Chen et al. 2020) uses for its transfer experiments: features of the frozen backbone, extracted
once without augmentation, are standardised with the training split's mean and standard deviation; an
L2-regularised multinomial logistic regression is fitted with full-batch L-BFGS; its regularisation is
chosen on a held-out part of the training split; the classifier is then refitted on the whole training
split and scored on the test split. Kornblith et al. search 45 log-spaced values; the default grid here is
coarser (:data:`DEFAULT_WEIGHT_DECAYS`) so a CIFAR-10-size probe stays fast.

The objective minimised for a weight decay ``λ`` is (bias unpenalised)

    L(W, b) = (1/n) Σ_i -log softmax(W x_i + b)_{y_i} + (λ/2) ‖W‖²_F,

which is scikit-learn's ``LogisticRegression(C=1/(λ n))`` objective divided by ``C n`` (same minimiser).
Everything runs on the features' device in float32; the grid is solved from the strongest to the weakest
regularisation, each fit warm-started from the previous one (a regularisation path).
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from contrastkit.errors import ConfigError, DataError
from contrastkit.evaluation.features import check_integer_labels, check_tensor
from contrastkit.evaluation.knn import check_dense_labels

DEFAULT_WEIGHT_DECAYS: tuple[float, ...] = tuple(float(10.0**e) for e in np.arange(-6.0, 0.01, 0.5))
"""Weight decays searched by default: 1e-6 to 1 in half-decades (13 values)."""


@dataclass
class LinearProbeResult:
    """What :func:`linear_probe` returns: test top-1, the chosen weight decay, the grid and the protocol."""

    top1: float
    weight_decay: float
    grid: dict[float, float]
    protocol: dict[str, Any]
    weight: Tensor = field(repr=False)
    bias: Tensor = field(repr=False)
    mean: Tensor = field(repr=False)
    std: Tensor = field(repr=False)

    def predict(self, features: Tensor) -> Tensor:
        """Class predictions for raw (unstandardised) features, shape (N,)."""
        x = (features.to(self.mean.device, torch.float32) - self.mean) / self.std
        return (x @ self.weight.T + self.bias).argmax(dim=1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the number next to its protocol."""
        return {
            "top1": self.top1,
            "weight_decay": self.weight_decay,
            "heldout_top1_per_weight_decay": {f"{k:.3g}": v for k, v in self.grid.items()},
            "protocol": self.protocol,
        }


def logistic_objective(
    weight: Tensor, bias: Tensor, features: Tensor, labels: Tensor, weight_decay: float
) -> Tensor:
    """``mean_i CE(W x_i + b, y_i) + (λ/2) ‖W‖²`` (the bias is not penalised)."""
    logits = features @ weight.T + bias
    return F.cross_entropy(logits, labels) + 0.5 * weight_decay * weight.pow(2).sum()


def fit_logistic_regression(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    weight_decay: float,
    *,
    init: tuple[Tensor, Tensor] | None = None,
    max_iter: int = 1000,
    tolerance_grad: float = 1e-6,
    tolerance_change: float = 1e-10,
    history_size: int = 20,
) -> tuple[Tensor, Tensor, int]:
    """Minimise :func:`logistic_objective` with full-batch L-BFGS (strong-Wolfe line search).

    Returns ``(weight (K, D), bias (K,), iterations)``; ``init`` warm-starts from a previous solution.
    """
    d = features.shape[1]
    if init is None:
        w0 = torch.zeros(num_classes, d, device=features.device)
        b0 = torch.zeros(num_classes, device=features.device)
    else:
        w0, b0 = init
    w = w0.detach().clone().float().requires_grad_(True)
    b = b0.detach().clone().float().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        max_eval=int(max_iter * 1.25),
        tolerance_grad=tolerance_grad,
        tolerance_change=tolerance_change,
        history_size=history_size,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=False)
        loss = logistic_objective(w, b, features, labels, weight_decay)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    iters = int(opt.state[opt._params[0]].get("n_iter", 0))
    return w.detach(), b.detach(), iters


def standardisation(features: Tensor) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and standard deviation (float64 sums); constant dimensions get std 1."""
    x = features.double()
    mean = x.mean(dim=0)
    std = (x - mean).pow(2).mean(dim=0).sqrt()
    constant = std <= 1e-7 * mean.abs().clamp_min(1e-30)
    std = torch.where(constant | (std == 0), torch.ones_like(std), std)
    return mean.float(), std.float()


def heldout_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Stratified, seeded (fit, held-out) index split of the training labels (scikit-learn).

    Stratified when it can be: every class has 2 items and each side has at least one item per class;
    otherwise (tiny data: 20 items of 10 classes hold out 4) a plain seeded split. Fewer than 2 items, or
    a held-out share that rounds to no item, is a :class:`ConfigError`."""
    from sklearn.model_selection import train_test_split

    y = labels.cpu().numpy()
    n = len(y)
    n_heldout = math.ceil(fraction * n)  # what train_test_split holds out
    if n < 2:
        raise ConfigError(
            f"the linear probe needs at least 2 training items to hold {fraction:g} of them out for choosing "
            f"its weight decay, got {n}; use more data (a larger --limit)"
        )
    if n_heldout >= n:
        raise ConfigError(
            f"holding out {fraction:g} of {n} training items rounds up to all {n} of them, leaving none to fit "
            f"the probe on; use a smaller held-out fraction (at most {math.floor((n - 1) / n * 1000) / 1000:g} "
            "here) or more data"
        )
    counts = np.bincount(y)
    classes = int((counts > 0).sum())
    stratifiable = counts[counts > 0].min() >= 2 and min(n_heldout, n - n_heldout) >= classes
    stratify = y if stratifiable else None
    idx = np.arange(n)
    fit_idx, val_idx = train_test_split(idx, test_size=fraction, random_state=seed, stratify=stratify)
    return torch.as_tensor(np.sort(fit_idx)), torch.as_tensor(np.sort(val_idx))


def _accuracy(w: Tensor, b: Tensor, x: Tensor, y: Tensor) -> float:
    return (x @ w.T + b).argmax(dim=1).eq(y).float().mean().item()


def _check_inputs(
    train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor
) -> None:
    for name, f, y in (
        ("train", train_features, train_labels),
        ("test", test_features, test_labels),
    ):
        for what, t in (("features", f), ("labels", y)):
            check_tensor(f"{name} {what}", t)
        if f.ndim != 2 or y.ndim != 1 or f.shape[0] != y.shape[0]:
            raise DataError(
                f"{name} features must be (N, D) with one label each, got features {tuple(f.shape)} and "
                f"labels {tuple(y.shape)}"
            )
        if f.shape[0] == 0:
            raise DataError(f"the {name} split is empty; a linear probe needs labelled {name} images")
        check_integer_labels(f"{name} labels", y)
        lowest = int(y.min())
        if lowest < 0:
            raise DataError(
                f"{name} labels must be non-negative, got {lowest} (images with unknown labels, -1, cannot be "
                "used in a linear probe); remove them or give a labelled data set"
            )
        if not torch.isfinite(f).all():
            raise DataError(f"{name} features contain NaN or infinity; check the checkpoint")
    if train_features.shape[1] != test_features.shape[1]:
        raise DataError(
            f"train and test features differ in dimension: {train_features.shape[1]} vs {test_features.shape[1]}"
        )


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    *,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    heldout_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = 1000,
    tolerance_grad: float = 1e-6,
    device: torch.device | str | None = None,
) -> LinearProbeResult:
    """Linear-probe top-1 of frozen features (see the module docstring for the protocol).

    ``weight_decays`` is the grid for ``λ``; ``heldout_fraction`` of the training features (stratified by
    class, seeded with ``seed``) chooses it by held-out top-1 (ties go to the larger ``λ``); the final
    classifier is refitted on all training features, warm-started from the chosen held-out fit.
    """
    t0 = time.perf_counter()
    _check_inputs(train_features, train_labels, test_features, test_labels)
    grid = sorted({float(v) for v in weight_decays}, reverse=True)
    if not grid or any(not math.isfinite(v) or v < 0 for v in grid):
        raise ConfigError(
            f"weight_decays must be a non-empty list of numbers >= 0, got {list(weight_decays)!r}"
        )
    if not 0.0 < heldout_fraction < 1.0:
        raise ConfigError(f"heldout_fraction must lie in (0, 1), got {heldout_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ConfigError(f"seed must be an integer (it seeds the held-out split), got {seed!r}")
    dev = torch.device(device) if device is not None else train_features.device
    num_classes = check_dense_labels(
        int(max(train_labels.max(), test_labels.max())), train_labels.numel() + test_labels.numel()
    )

    x_train = train_features.to(dev, torch.float32)
    y_train = train_labels.to(dev, torch.int64)
    mean, std = standardisation(x_train)
    x_train = (x_train - mean) / std
    x_test = (test_features.to(dev, torch.float32) - mean) / std
    y_test = test_labels.to(dev, torch.int64)

    fit_idx, val_idx = heldout_split(y_train, heldout_fraction, seed)
    fit_idx, val_idx = fit_idx.to(dev), val_idx.to(dev)
    x_fit, y_fit = x_train[fit_idx], y_train[fit_idx]
    x_val, y_val = x_train[val_idx], y_train[val_idx]

    scores: dict[float, float] = {}
    solutions: dict[float, tuple[Tensor, Tensor]] = {}
    iterations: dict[float, int] = {}
    init = None
    for wd in grid:
        w, b, it = fit_logistic_regression(
            x_fit, y_fit, num_classes, wd, init=init, max_iter=max_iter, tolerance_grad=tolerance_grad
        )
        scores[wd] = _accuracy(w, b, x_val, y_val)
        solutions[wd], iterations[wd], init = (w, b), it, (w, b)
    best = max(grid, key=lambda v: (scores[v], v))
    t_select = time.perf_counter() - t0
    w, b, it = fit_logistic_regression(
        x_train,
        y_train,
        num_classes,
        best,
        init=solutions[best],
        max_iter=max_iter,
        tolerance_grad=tolerance_grad,
    )
    top1 = _accuracy(w, b, x_test, y_test)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    protocol = {
        "classifier": "multinomial logistic regression (softmax), bias unpenalised",
        "objective": "mean cross-entropy + weight_decay/2 * ||W||^2 (sklearn C = 1/(weight_decay * n))",
        "optimizer": f"full-batch L-BFGS, strong-Wolfe line search, max_iter={max_iter}, "
        f"tolerance_grad={tolerance_grad:g}, warm-started along the grid",
        "features": "frozen, no augmentation, standardised with the train split's mean/std",
        "feature_dim": int(x_train.shape[1]),
        "num_classes": num_classes,
        "selection": f"top-1 on a held-out {heldout_fraction:g} of train (stratified, seed {seed}), "
        "then refit on all of train",
        "weight_decay_grid": [float(v) for v in sorted(grid)],
        "train_size": int(x_train.shape[0]),
        "fit_size": int(fit_idx.numel()),
        "heldout_size": int(val_idx.numel()),
        "test_size": int(x_test.shape[0]),
        "seed": seed,
        "iterations_final_fit": it,
        "iterations_grid": int(sum(iterations.values())),
        "seconds_selection": t_select,
        "seconds": seconds,
        "device": str(dev),
    }
    return LinearProbeResult(
        top1=top1,
        weight_decay=best,
        grid={v: scores[v] for v in sorted(grid)},
        protocol=protocol,
        weight=w,
        bias=b,
        mean=mean,
        std=std,
    )
