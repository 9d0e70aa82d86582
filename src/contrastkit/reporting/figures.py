"""The report's figures, drawn with matplotlib's object API (``Figure`` + the Agg canvas; pyplot and its
global state are never used), and the numbers behind them: the 2-D embedding map and nearest neighbours.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from contrastkit.errors import ContrastkitError

__all__ = [
    "embedding_map",
    "figure_png",
    "nearest_neighbours",
    "plot_embedding",
    "plot_knn",
    "plot_loss",
    "plot_retrieval",
    "plot_scalars",
]

DPI = 110
CORRECT = "#2e7d32"
WRONG = "#d32f2f"
QUERY = "#1565c0"
TIME_KEYS = ("seconds", "train_seconds")
NOT_SCALARS = ("step", "epoch", "loss", *TIME_KEYS)


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def figure_png(fig: Any) -> bytes:
    """The figure as PNG bytes (rendered by the Agg canvas)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return buf.getvalue()


def _unavailable(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=10, color="#555555")
    ax.set_xticks([])
    ax.set_yticks([])


def _column(rows: Sequence[dict[str, float]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(step, value) of the rows that have a finite ``key``."""
    pairs = [(r["step"], r[key]) for r in rows if key in r and math.isfinite(r[key])]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    a = np.asarray(pairs, dtype=np.float64)
    return a[:, 0], a[:, 1]


def loss_by_time(rows: Sequence[dict[str, float]]) -> list[tuple[float, float]]:
    """``(seconds, mean loss)`` per read-out of the history: the trainer reads the steps' statistics every
    few steps and stamps all of them with that moment's training wall-clock, so plotting each step would
    draw vertical lines; the mean of the finite losses of one timestamp, in time order, does not."""
    groups: dict[float, list[float]] = {}
    for r in rows:
        t, v = r.get("seconds"), r.get("loss")
        if isinstance(t, (int, float)) and isinstance(v, (int, float)) and math.isfinite(v):
            groups.setdefault(float(t), []).append(float(v))
    return [(t, sum(vs) / len(vs)) for t, vs in sorted(groups.items())]


def plot_loss(history: Sequence[dict[str, float]] | None, reason: str = "") -> Any:
    """Training loss against optimiser steps and against training wall-clock (``seconds``)."""
    fig = _figure(11, 3.6)
    ax_step, ax_time = fig.subplots(1, 2)
    rows = [r for r in history or [] if "loss" in r]
    if not rows:
        why = reason or "the run logged no loss values"
        for ax in (ax_step, ax_time):
            _unavailable(ax, f"loss history unavailable:\n{why}")
        return fig
    steps, loss = _column(rows, "loss")
    ax_step.plot(steps, loss, color=QUERY, lw=1.2)
    ax_step.set_xlabel("step")
    ax_step.set_ylabel("loss")
    ax_step.set_title("loss against steps")
    timed = loss_by_time(rows)
    if timed:
        # the steps read from the device together share one timestamp: one point each, their mean loss
        ax_time.plot([t for t, _ in timed], [v for _, v in timed], ".-", color=QUERY, lw=0.8, ms=4)
        ax_time.set_xlabel("training wall-clock (s)")
        ax_time.set_ylabel("loss")
        ax_time.set_title("loss against wall-clock")
    else:
        _unavailable(ax_time, "no wall-clock ('seconds') in the history")
    for ax in (ax_step, ax_time):
        ax.grid(alpha=0.3)
    return fig


def plot_knn(curve: Sequence[dict[str, Any]] | None, references: dict[str, float] | None = None) -> Any:
    """kNN top-1 (the training-time monitor) against steps and against training wall-clock, with the
    reference accuracies (random init, raw pixels) as dashed lines."""
    fig = _figure(11, 3.6)
    ax_step, ax_time = fig.subplots(1, 2)
    points = [p for p in curve or [] if isinstance(p, dict) and "knn_top1" in p]
    if not points:
        for ax in (ax_step, ax_time):
            _unavailable(ax, "kNN curve unavailable:\nmetrics.json has no knn_curve")
        return fig
    for ax, key, label in (
        (ax_step, "step", "step"),
        (ax_time, "train_seconds", "training wall-clock (s)"),
    ):
        pts = [p for p in points if key in p]
        if not pts:
            _unavailable(ax, f"the kNN curve has no {key!r}")
            continue
        ax.plot(
            [p[key] for p in pts], [p["knn_top1"] for p in pts], "o-", color=QUERY, label="learned encoder"
        )
        for (name, value), style in zip((references or {}).items(), ("--", ":", "-.")):
            ax.axhline(value, ls=style, color="#777777", lw=1, label=name)
        ax.set_xlabel(label)
        ax.set_ylabel("kNN top-1")
        ax.set_title(f"kNN top-1 against {'steps' if key == 'step' else 'wall-clock'}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    return fig


def scalar_names(history: Sequence[dict[str, float]] | None) -> list[str]:
    """Logged scalars other than step, epoch, loss and time, in first-seen order."""
    names: dict[str, None] = {}
    for row in history or []:
        for k in row:
            if k not in NOT_SCALARS:
                names.setdefault(k, None)
    return [n for n in names if _column(history or [], n)[0].size]


def plot_scalars(history: Sequence[dict[str, float]], names: Sequence[str]) -> Any:
    """One small panel per scalar in ``names`` (learning rate, the InfoNCE MI bound, the negative source's
    statistics, ...) against steps."""
    cols = min(3, len(names))
    nrows = math.ceil(len(names) / cols)
    fig = _figure(11, 2.8 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, cols)).reshape(-1)
    for ax, name in zip(axes, names):
        steps, values = _column(history, name)
        ax.plot(steps, values, color=QUERY, lw=1.1)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    return fig


def embedding_map(features: Tensor, seed: int = 0, pca_dims: int = 50) -> np.ndarray:
    """2-D map of ``features`` ``(N, D)``: L2-normalised (the kNN's geometry), PCA to at most ``pca_dims``
    dimensions, then t-SNE (van der Maaten & Hinton 2008) from scikit-learn, seeded and single-threaded; ``(N, 2)`` float64.

    With fewer than 10 points t-SNE is not meaningful and the first two principal components are returned.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = torch.nn.functional.normalize(features.double(), dim=1).numpy()
    n, d = x.shape
    if n < 3:
        raise ContrastkitError(f"an embedding map needs at least 3 images, got {n}")
    dims = min(pca_dims, d, n)
    reduced = PCA(n_components=dims, random_state=seed).fit_transform(x) if dims < d else x
    if n < 10:
        out = reduced[:, :2] if reduced.shape[1] >= 2 else np.pad(reduced, ((0, 0), (0, 1)))
        return np.asarray(out, dtype=np.float64)
    tsne = TSNE(
        n_components=2,
        perplexity=min(30.0, (n - 1) / 3.0),
        init="pca",
        learning_rate="auto",
        random_state=seed,
    )
    # one thread: the same map on every machine (no thread-dependent summation order), and no OpenMP
    # spin-waiting, which makes Barnes-Hut t-SNE ~100x slower on a busy machine
    with threadpool_limits(1):
        return np.asarray(tsne.fit_transform(reduced), dtype=np.float64)


def _class_colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["turbo"](i / max(n - 1, 1)) for i in range(n)]


def plot_embedding(coords: np.ndarray, labels: np.ndarray, classes: Sequence[str], title: str) -> Any:
    """Scatter of the 2-D ``coords`` coloured by class (unknown labels, -1, in grey)."""
    fig = _figure(8.5, 7)
    ax = fig.subplots()
    colours = _class_colours(len(classes))
    unknown = labels < 0
    if unknown.any():
        ax.scatter(*coords[unknown].T, s=8, color="#9e9e9e", label="unlabelled", alpha=0.7)
    for c, name in enumerate(classes):
        sel = labels == c
        if sel.any():
            ax.scatter(*coords[sel].T, s=9, color=colours[c], label=name, alpha=0.8, linewidths=0)
    if len(classes) <= 20:
        ax.legend(fontsize=8, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_title(title, fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


def nearest_neighbours(query: Tensor, keys: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Indices and cosine similarities of the ``k`` keys most similar to each query, most similar first.

    ``query`` ``(Q, D)``, ``keys`` ``(N, D)``; returns two ``(Q, min(k, N))`` tensors.
    """
    q = torch.nn.functional.normalize(query.float(), dim=1)
    x = torch.nn.functional.normalize(keys.float(), dim=1)
    sims, idx = (q @ x.T).topk(min(k, x.shape[0]), dim=1)
    return idx, sims


def _show(ax: Any, image: Tensor, colour: str, width: float) -> None:
    img = image.detach().cpu()
    if img.shape[0] == 1:
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)


def plot_retrieval(
    queries: Tensor,
    query_labels: Sequence[int],
    neighbours: Tensor,
    neighbour_labels: Sequence[Sequence[int]],
    similarities: Tensor,
    classes: Sequence[str],
) -> Any:
    """One row per query: the query image (blue border) then its nearest neighbours, each with a green
    border when its class is the query's and a thick red border when it is not.

    ``queries`` ``(Q, C, H, W)`` and ``neighbours`` ``(Q, K, C, H, W)`` ``uint8``.
    """
    nq, k = neighbours.shape[:2]
    fig = _figure(1.15 * (k + 1) + 0.6, 1.3 * nq + 0.4)
    axes = np.asarray(fig.subplots(nq, k + 1, squeeze=False))

    def name(label: int) -> str:
        return classes[label] if 0 <= label < len(classes) else "?"

    for r in range(nq):
        _show(axes[r, 0], queries[r], QUERY, 3.0)
        axes[r, 0].set_title(f"query: {name(int(query_labels[r]))}", fontsize=8, color=QUERY)
        for j in range(k):
            lab = int(neighbour_labels[r][j])
            same = lab == int(query_labels[r])
            ax = axes[r, j + 1]
            _show(ax, neighbours[r, j], CORRECT if same else WRONG, 1.5 if same else 4.0)
            ax.set_title(
                f"{name(lab)} {float(similarities[r, j]):.2f}", fontsize=7, color="black" if same else WRONG
            )
    return fig
