"""``contrastkit report RUN``: a self-contained ``report.html`` (and its figures as PNG files) for a run.

The page shows the loss and kNN top-1 against steps and against training wall-clock, the other logged
scalars, a t-SNE map of the test embeddings coloured by class, a retrieval grid (test queries next to their
nearest training images in feature space, wrong-class neighbours marked red), every entry of
``metrics.json`` and the resolved ``config.yaml``. Curves need only the run folder's files; the map and the
grid need the checkpoint and the data (when those are missing, the page says so instead).

What the page could not show, and a run that did not finish (``unfinished: step 73 of 630``), are warnings:
in a box at the top of the page (and in its header), and printed on the terminal as ``WARNING:`` lines.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contrastkit.data import DataSplits, balanced_indices
from contrastkit.errors import ConfigError, ContrastkitError
from contrastkit.reporting import figures as F
from contrastkit.reporting.html import Figure, render_page
from contrastkit.reporting.run import (
    HISTORY_NAME,
    TrainedRun,
    backbone_features,
    finite,
    fit_channels,
    load_trained_run,
    read_config_text,
    read_history,
    read_metrics,
    run_folder,
)
from contrastkit.training.checkpoint import (
    CHECKPOINT_NAME,
    FOREIGN_RUNS,
    IN_RUN_FOLDER,
    ForeignRunError,
    check_output_folder,
    detect_run_kind,
    load_checkpoint,
    write_atomic,
)
from contrastkit.training.evaluate import run_world_size, training_progress, unfinished_note
from contrastkit.training.trainer import load_splits, resolve_device, resume_command

__all__ = ["REPORT_NAME", "ReportResult", "write_report"]

REPORT_NAME = "report.html"
FIGURE_FILES = {
    "fig-loss": "report_loss.png",
    "fig-knn": "report_knn.png",
    "fig-scalars": "report_scalars.png",
    "fig-embedding": "report_embedding.png",
    "fig-retrieval": "report_retrieval.png",
}
"""Element id of each figure in the page -> the PNG file written beside it."""


@dataclass
class ReportResult:
    """What :func:`write_report` wrote: the page, each figure's PNG (by element id), and notes (warnings)
    shown at the top of the page and printed: what could not be drawn, a run that did not finish."""

    html: Path
    figures: dict[str, Path]
    notes: list[str] = field(default_factory=list)


MAX_QUERIES = 64
"""Most rows of the retrieval grid (each row is a ~110 px strip of the PNG)."""
MAX_NEIGHBOURS = 32
"""Most neighbours per query in the retrieval grid (each one a ~110 px column of the PNG)."""
MAX_SEED = 2**32 - 2
"""Largest --seed: t-SNE (scikit-learn) takes seeds in [0, 2**32 - 1], and the grid's queries use seed + 1."""


def _positive(name: str, value: int, most: int | None = None) -> None:
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{flag} must be a positive integer, got {value!r}")
    if most is not None and value > most:
        raise ConfigError(
            f"{flag} {value} is too large: the retrieval grid draws one image per query and neighbour; give at "
            f"most {most}"
        )


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"--seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")


def _run_warnings(metrics: dict[str, Any] | None) -> list[str]:
    """The warnings the run itself recorded in its metrics.json (``warnings``: a string or a list of them)."""
    raw = (metrics or {}).get("warnings")
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        return []
    return [f"the run recorded: {w}" for w in dict.fromkeys(w for w in raw if isinstance(w, str) and w)]


def write_report(
    run: str | Path,
    *,
    data: str | None = None,
    device: str = "auto",
    limit: int | None = None,
    map_points: int = 2000,
    pool: int = 10000,
    queries: int = 8,
    neighbours: int = 8,
    seed: int = 0,
    out: Any = None,
) -> ReportResult:
    """Write ``report.html`` and the figures' PNGs into the run folder ``run``.

    ``data`` overrides the data the run was trained on (same image size and channels); ``limit`` keeps at
    most that many images per split (default: as trained). The map shows at most ``map_points`` test images
    (a seeded class-balanced subset); the grid shows ``queries`` test images and their ``neighbours``
    nearest neighbours (cosine similarity of backbone features, the kNN's geometry) among at most ``pool``
    training images (a seeded class-balanced subset).
    """
    out = out or sys.stdout
    for name, value, most in (
        ("map_points", map_points, None),
        ("pool", pool, None),
        ("queries", queries, MAX_QUERIES),
        ("neighbours", neighbours, MAX_NEIGHBOURS),
    ):
        _positive(name, value, most)
    if limit is not None:
        _positive("limit", limit)
    _check_seed(seed)
    resolve_device(device)  # --device cuda without CUDA: refused, as eval and embed refuse it
    t0 = time.perf_counter()
    folder = run_folder(run)
    kind = detect_run_kind(folder)
    if kind in FOREIGN_RUNS:  # before "no history.jsonl": their folders are not train's
        exc = ForeignRunError(folder, kind)
        exc.args = (exc.message_for("report"),)
        raise exc
    # before any work: a page that cannot be written is lost
    check_output_folder(folder / REPORT_NAME, advice=IN_RUN_FOLDER)
    notes: list[str] = []
    metrics = read_metrics(folder)
    history = read_history(folder)
    has_checkpoint = (folder / CHECKPOINT_NAME).is_file()
    if metrics is None and history is None and not has_checkpoint:
        raise ContrastkitError(
            f"{str(folder)!r} holds no metrics.json, {HISTORY_NAME} or {CHECKPOINT_NAME}; give a run folder "
            "written by contrastkit train"
        )
    ckpt_config: dict[str, Any] | None = None
    state: dict[str, Any] = {}
    if has_checkpoint:
        try:
            state = load_checkpoint(folder / CHECKPOINT_NAME)
        except ContrastkitError:  # unreadable: the curves can still be drawn; the note comes below
            state = {}
        ckpt_config = state.get("config")
        if metrics is None and isinstance(state.get("metrics"), dict):
            metrics = dict(state["metrics"])
            notes.append("metrics.json is missing; the metrics shown are those stored in the checkpoint")
    notes.extend(_run_warnings(metrics))  # e.g. --skip-nonfinite's skipped steps, a single class
    unfinished = unfinished_note(_progress_of(state, metrics))
    if unfinished is not None:
        resume = ""
        if state:  # a readable checkpoint continues it
            resume = f"; continue it with {resume_command(folder, run_world_size(state))} and report again"
        notes.append(
            f"{unfinished}: the run did not finish (it was interrupted); its curves, metrics and figures "
            f"are of the model at that step, not of the trained model{resume}"
        )

    figs: list[Figure] = []
    reason = f"this run folder has no {HISTORY_NAME} (runs from older contrastkit versions do not write one)"
    if history is not None and not history:
        reason = f"{HISTORY_NAME} holds no readable rows"
    n_loss = sum(1 for r in history or [] if "loss" in r)
    figs.append(
        Figure(
            "fig-loss",
            "Loss",
            F.figure_png(F.plot_loss(history, reason)),
            f"Training loss of {n_loss} logged steps ({HISTORY_NAME}) against optimiser steps (left) and "
            "training wall-clock in seconds, evaluation excluded (right: one point per read-out of the steps' "
            "statistics, which share one timestamp, at their mean loss)."
            if n_loss
            else f"Loss history unavailable: {reason}.",
        )
    )
    curve = (metrics or {}).get("knn_curve")
    refs = {
        label: float(metrics[key])
        for key, label in (
            ("knn_top1_random_init", "same encoder, random init"),
            ("knn_top1_raw_pixels", "raw pixels"),
        )
        if metrics and finite(metrics.get(key))
    }
    figs.append(
        Figure(
            "fig-knn",
            "kNN accuracy",
            F.figure_png(F.plot_knn(curve if isinstance(curve, list) else None, refs)),
            "Weighted kNN top-1 on the evaluation split during training (metrics.json knn_curve) against "
            "steps (left) and training wall-clock (right); dashed lines: the same encoder at random "
            "initialisation and raw pixels.",
        )
    )
    names = F.scalar_names(history)
    if history and names:
        figs.append(
            Figure(
                "fig-scalars",
                "Other logged scalars",
                F.figure_png(F.plot_scalars(history, names)),
                f"Every other scalar of {HISTORY_NAME} against steps: {', '.join(names)}.",
            )
        )

    try:
        trained, splits, channel_note = _load_model_and_data(folder, data, device, limit)
    except ContrastkitError as exc:
        if data is not None:
            raise  # the user asked for this data: tell them what is wrong with it
        notes.append(f"embedding map and retrieval grid not drawn: {exc}")
    else:
        if channel_note is not None:  # printed as a WARNING: line and shown at the top of the page
            notes.append(f"embedding map and retrieval grid: {channel_note}")
        figs.extend(_feature_figures(trained, splits, map_points, pool, queries, neighbours, seed, notes))

    drawn = {fig.id for fig in figs}
    stale = [
        name for fig_id, name in FIGURE_FILES.items() if fig_id not in drawn and (folder / name).is_file()
    ]
    if stale:  # kept (a failed draw may have left them the only copy), but named: they are not this page's
        text = (
            f"{', '.join(stale)} beside the page {'are' if len(stale) > 1 else 'is'} an earlier report's, "
            "not drawn this time: not this page's figures (delete them, or fix the cause and report again)"
        )
        why = [i for i, note in enumerate(notes) if "not drawn" in note]
        if why:  # one warning: what was not drawn, and what is left of it from before
            notes[why[-1]] = f"{notes[why[-1]]}; {text}"
        else:
            notes.append(text)
    figure_paths: dict[str, Path] = {}
    for fig in figs:
        path = folder / FIGURE_FILES[fig.id]
        png = fig.png
        write_atomic(path, lambda f, png=png: f.write(png))
        figure_paths[fig.id] = path
    subtitle = f"run folder {folder.resolve()}"
    progress_text = f" ({unfinished})" if unfinished is not None else ""
    if ckpt_config:
        subtitle = (
            f"data={ckpt_config.get('data')} encoder={ckpt_config.get('encoder')} "
            f"objective={ckpt_config.get('objective')} negatives={ckpt_config.get('negatives')} "
            f"epochs={ckpt_config.get('epochs')}{progress_text} batch={ckpt_config.get('batch_size')} - "
            + subtitle
        )
    elif unfinished is not None:
        subtitle = f"{unfinished} - {subtitle}"
    page = render_page(
        title=f"contrastkit report: {folder.resolve().name}",
        subtitle=subtitle,
        figures=figs,
        notes=notes,
        metrics=metrics,
        config_text=read_config_text(folder, ckpt_config),
    )
    html_path = folder / REPORT_NAME
    write_atomic(html_path, lambda f: f.write(page), binary=False)
    for note in notes:
        print(f"contrastkit report: WARNING: {note}", file=out)
    print(
        f"wrote {html_path} ({len(figs)} figures, {time.perf_counter() - t0:.1f} s) and "
        f"{', '.join(p.name for p in figure_paths.values())}"
        + (f"; {len(notes)} warning(s), shown above and at the top of the page" if notes else ""),
        file=out,
    )
    return ReportResult(html=html_path, figures=figure_paths, notes=notes)


def _progress_of(state: dict[str, Any], metrics: dict[str, Any] | None) -> dict[str, Any]:
    """How far the run got: from its checkpoint, else (no readable checkpoint) from its metrics.json."""
    progress = training_progress(state)
    if progress["finished"] is None and metrics and metrics.get("finished") is False:
        steps, total = metrics.get("steps"), metrics.get("total_steps")
        progress = {
            "finished": False,
            "trained_steps": steps if isinstance(steps, int) else None,
            "total_steps": total if isinstance(total, int) else None,
        }
    return progress


def _load_model_and_data(
    folder: Path, data: str | None, device: str, limit: int | None
) -> tuple[TrainedRun, DataSplits, str | None]:
    """The run's model, its data (fitted to the encoder's channels by :func:`fit_channels`) and the note of
    that fitting (None: the images were used as they are)."""
    trained = load_trained_run(folder, device)
    changes: dict[str, Any] = {"image_size": trained.info.image_size, "device": str(trained.device)}
    if data is not None:
        changes["data"] = data
    if limit is not None:
        changes["limit"] = limit
    config = trained.config.replace(**changes)
    splits, _ = load_splits(config)
    note = None
    for ds in (splits.train, splits.test):
        if ds is not None:
            ds.images, note = fit_channels(trained, ds.images, repr(config.data))
    return trained, splits, note


def _feature_figures(
    trained: TrainedRun,
    splits: DataSplits,
    map_points: int,
    pool: int,
    queries: int,
    neighbours: int,
    seed: int,
    notes: list[str],
) -> list[Figure]:
    train, test = splits.train, splits.test
    assert test is not None  # load_splits holds out part of train when there is no test split
    classes = list(train.classes)

    map_idx = balanced_indices(test.labels, map_points, seed)
    map_feats = backbone_features(trained, test.images[map_idx])
    coords = F.embedding_map(map_feats, seed=seed)
    method = "t-SNE" if len(map_idx) >= 10 else "PCA (too few points for t-SNE)"
    map_fig = Figure(
        "fig-embedding",
        "Embedding map",
        F.figure_png(
            F.plot_embedding(
                coords,
                test.labels[map_idx].numpy(),
                classes,
                f"{method} of {len(map_idx)} of {len(test)} test embeddings",
            )
        ),
        f"Backbone features of {len(map_idx)} of the {len(test)} test images (a seeded class-balanced "
        f"subset, at most {map_points}), L2-normalised, reduced with PCA to at most 50 dimensions, then "
        f"{method} (scikit-learn, random_state={seed}); colour = class.",
    )

    pool_idx = balanced_indices(train.labels, pool, seed)
    pool_feats = backbone_features(trained, train.images[pool_idx])
    q_idx = balanced_indices(test.labels, min(queries, len(test)), seed + 1)
    q_feats = backbone_features(trained, test.images[q_idx])
    nn_idx, sims = F.nearest_neighbours(q_feats, pool_feats, neighbours)
    if len(q_idx) < queries:
        notes.append(
            f"--queries {queries} is more than the {len(test)} test images: the retrieval grid shows "
            f"{len(q_idx)} queries"
        )
    if nn_idx.shape[1] < neighbours:
        notes.append(
            f"--neighbours {neighbours} is more than the {len(pool_idx)} training images searched: the "
            f"retrieval grid shows {nn_idx.shape[1]} neighbours per query"
        )
    train_idx = pool_idx[nn_idx]  # (Q, K) indices into the training split
    q_labels = test.labels[q_idx]
    nn_labels = train.labels[train_idx]
    same = (nn_labels == q_labels[:, None]).float()
    grid = F.plot_retrieval(
        test.images[q_idx],
        q_labels.tolist(),
        train.images[train_idx],
        nn_labels.tolist(),
        sims,
        classes,
    )
    retrieval_fig = Figure(
        "fig-retrieval",
        "Retrieval",
        F.figure_png(grid),
        f"{len(q_idx)} test queries (blue border, one row each) and their {nn_idx.shape[1]} nearest "
        f"training images by cosine similarity of backbone features (shown above each image) among "
        f"{len(pool_idx)} of {len(train)} training images; green border: same class as the query, thick "
        f"red border: a different class. {int(same.sum())} of {same.numel()} neighbours shown "
        f"({float(same.mean()):.1%}) share the query's class.",
    )
    return [map_fig, retrieval_fig]
