"""Re-evaluate a trained run or checkpoint on a data set (``contrastkit eval``).

Always the weighted kNN of the skeleton (with its random-init and raw-pixel references); on request the
linear probe, few-label fine-tuning and the embedding's geometry (see :mod:`contrastkit.evaluation`).
Backbone features are extracted once (no augmentation) and shared by the kNN and the linear probe.
Every result, with its protocol parameters and the data it was measured on, is merged into the run
folder's ``metrics.json`` under ``"evaluation"`` (written atomically); a later ``eval`` replaces only the
results it recomputes. Results on the data the run was trained on sit directly under ``"evaluation"`` (as
before); results on other data (``--data``) under ``"evaluation"["other_data"][<data name>]``, in the same
layout, so one table never mixes data sets. Every entry records how far the checkpoint's run got
(``finished``, ``trained_steps``, ``total_steps``): an interrupted run is evaluated, and said to be one.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from contrastkit.data import DataSplits
from contrastkit.errors import ConfigError, ContrastkitError
from contrastkit.evaluation import (
    check_label_fractions,
    embedding_geometry,
    extract_features,
    finetune_few_labels,
    knn_accuracy,
    unseen_classes_warning,
)
from contrastkit.evaluation import linear_probe as run_linear_probe
from contrastkit.evaluation.features import extract_features_from_batches
from contrastkit.training.checkpoint import (
    IN_RUN_FOLDER,
    check_output_folder,
    find_checkpoint,
    load_checkpoint,
    refuse_nonfinite_model,
)
from contrastkit.training.config import TrainConfig
from contrastkit.training.data import StreamedSplits, stream_splits
from contrastkit.training.precision import autocast_dtype
from contrastkit.training.run_folder import write_metrics
from contrastkit.training.trainer import (
    DataInfo,
    KnnEvaluator,
    build_model,
    build_views,
    format_summary,
    load_splits,
    resolve_device,
    resume_command,
    unseen_classes_advice,
)

DEFAULT_FEW_LABEL_FRACTIONS = (0.01, 0.1)
METRICS_NAME = "metrics.json"
OTHER_DATA = "other_data"
"""Key under ``"evaluation"`` of the results on data other than the run's own, by data name."""


def training_progress(state: dict[str, Any]) -> dict[str, Any]:
    """How far a checkpoint's run got: ``finished`` (None: unknown, an older checkpoint), ``trained_steps``
    and ``total_steps`` (None where the checkpoint does not say)."""
    progress = state.get("progress")
    progress = progress if isinstance(progress, dict) else {}
    finished = state.get("finished")
    step, total = state.get("step"), progress.get("total_steps", state.get("total_steps"))
    return {
        "finished": bool(finished) if finished is not None else None,
        "trained_steps": int(step) if isinstance(step, int) else None,
        "total_steps": int(total) if isinstance(total, int) else None,
    }


def unfinished_note(progress: dict[str, Any]) -> str | None:
    """``"unfinished: step 73 of 630"`` for a checkpoint of a run that did not finish, else None."""
    if progress.get("finished") is not False:
        return None
    step, total = progress.get("trained_steps"), progress.get("total_steps")
    where = f"step {step} of {total}" if total is not None else f"step {step}"
    return f"unfinished: {where}"


def interrupted_run_warning(state: dict[str, Any], path: Path, then: str) -> str | None:
    """The warning for a checkpoint of an interrupted run (``eval``, ``embed``, ``export``): its step, that it
    is not the trained model, and the command that continues it, then ``then`` (``"evaluate again"``). None
    for a finished run, and for an older checkpoint that does not say."""
    unfinished = unfinished_note(training_progress(state))
    if unfinished is None:
        return None
    return (
        f"{unfinished}: this checkpoint is of an interrupted run, not of the trained model; continue it with "
        f"{resume_command(path.parent, run_world_size(state))} and {then}"
    )


def match_channels(
    images: torch.Tensor, channels: int, *, encoder: str, data: str
) -> tuple[torch.Tensor, str | None]:
    """``uint8 (N, C, H, W)`` images fitted to an encoder that takes ``channels`` channels, and a note (None
    when nothing was changed). The one rule of ``contrastkit eval``, ``embed`` and ``report``:

    - as many channels as the encoder takes: unchanged;
    - grayscale (1 channel) for an RGB (3-channel) encoder: the channel is repeated to three (a view, no
      copy), and the note says so (the commands print it as a ``NOTE:`` line; eval records it);
    - RGB (3 channels) for a grayscale encoder, or any other mismatch: a :class:`ConfigError` naming both
      channel counts and what to do.

    ``encoder`` names the encoder in messages (``"the encoder of 'runs/x/checkpoint.pt'"``), ``data`` the
    images (``"'photos/'"``).
    """
    c = int(images.shape[1])
    if c == channels:
        return images, None
    if c == 1 and channels == 3:
        note = (
            f"{data} has grayscale (1-channel) images and {encoder} takes RGB (3-channel) images: each image's "
            "channel is repeated to 3"
        )
        return images.expand(-1, 3, -1, -1), note
    if c == 3 and channels == 1:
        raise ConfigError(
            f"{encoder} takes 1-channel images (grayscale), but {data} has 3-channel images (RGB); convert them "
            "to grayscale first (e.g. Pillow's Image.convert('L')), or use a run trained on RGB images"
        )
    raise ConfigError(
        f"{encoder} takes {channels}-channel images, but {data} has {c}-channel images; give images like those "
        "it was trained on (1-channel grayscale or 3-channel RGB)"
    )


def parse_fractions(text: str | Sequence[float]) -> tuple[float, ...]:
    """``"0.01,0.1"`` (or a sequence) -> ``(0.01, 0.1)``; each must lie in (0, 1]."""
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        values = tuple(float(v) for v in items if str(v).strip())
    except ValueError:
        values = ()
    if not values or any(not (0 < v <= 1) or not math.isfinite(v) for v in values):
        raise ConfigError(
            f"--few-label takes comma-separated label fractions in (0, 1], e.g. 0.01,0.1; got {text!r}"
        )
    return values


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as strict JSON (NaN/inf as null) via a temporary file and a rename."""
    write_metrics(path, payload)


def _merge_into(evaluation: dict[str, Any], results: dict[str, Any]) -> None:
    for key, value in results.items():
        if key == "few_label" and isinstance(evaluation.get(key), dict):
            evaluation[key] = {**evaluation[key], **value}
        else:
            evaluation[key] = value


def _entry_data(entry: Any) -> str | None:
    return entry.get("data") if isinstance(entry, dict) and isinstance(entry.get("data"), str) else None


def _move_other_data(evaluation: dict[str, Any], others: dict[str, Any], elsewhere: Any) -> None:
    """Move the top-level entries whose data ``elsewhere(name)`` says is not the run's own into ``others``
    (older versions wrote every evaluation at the top level, whatever its data); newer ones there win."""
    for key in [k for k in evaluation if k != OTHER_DATA]:
        value = evaluation[key]
        if key == "few_label" and isinstance(value, dict):
            for fraction in [f for f, e in value.items() if elsewhere(_entry_data(e))]:
                entry = value.pop(fraction)
                target = others.setdefault(_entry_data(entry), {}).setdefault("few_label", {})
                target.setdefault(fraction, entry)
            if not value:
                del evaluation[key]
        elif elsewhere(_entry_data(value)):
            others.setdefault(_entry_data(value), {}).setdefault(key, evaluation.pop(key))


def merge_evaluation(run_dir: Path, results: dict[str, Any], *, data_key: str | None = None) -> Path:
    """Merge ``results`` into ``run_dir/metrics.json`` under ``"evaluation"`` (few-label per fraction).

    ``data_key`` None: the results are on the run's own data and go directly under ``"evaluation"``;
    otherwise under ``"evaluation"["other_data"][data_key]``. Entries an older version left at the top level
    for other data are moved under ``"other_data"`` too, so no table mixes data sets.
    """
    target = run_dir / METRICS_NAME
    metrics: dict[str, Any] = {}
    if target.is_file():
        try:
            metrics = json.loads(target.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ContrastkitError(
                f"{str(target)!r} cannot be read as JSON ({exc}); move it away and run eval again"
            ) from None
        if not isinstance(metrics, dict):
            raise ContrastkitError(
                f"{str(target)!r} does not hold a JSON object; move it away and run eval again"
            )
    evaluation = metrics.get("evaluation")
    evaluation = dict(evaluation) if isinstance(evaluation, dict) else {}
    others = evaluation.get(OTHER_DATA)
    others = (
        {k: dict(v) for k, v in others.items() if isinstance(v, dict)} if isinstance(others, dict) else {}
    )
    if data_key is None:
        own = {_entry_data(v) for v in results.values()} - {None}
        if own:  # first, so that an old entry of other data is moved, not replaced
            _move_other_data(evaluation, others, lambda name: name is not None and name not in own)
        _merge_into(evaluation, results)
    else:
        _move_other_data(evaluation, others, lambda name: name == data_key)
        entry = others.get(data_key, {})
        _merge_into(entry, results)
        others[data_key] = entry
    if others:
        evaluation[OTHER_DATA] = others
    metrics["evaluation"] = evaluation
    write_metrics(target, metrics)
    return target


@dataclass
class _Streamed:
    """A streamed run's splits: read image by image for the features, decoded subsets for the rest."""

    splits: StreamedSplits
    note: str

    @property
    def subsets(self) -> DataSplits:
        return self.splits.subsets

    @property
    def sizes(self) -> tuple[int, int]:
        return len(self.splits.train), len(self.splits.test)

    def features(
        self, fns: list[Any], split: str, kw: dict[str, Any]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        from contrastkit.data.stream import sequential_batches

        dataset = self.splits.train if split == "train" else self.splits.test
        batches = sequential_batches(
            dataset, workers=self.splits.workers, pin_memory=torch.device(kw["device"]).type == "cuda"
        )
        return extract_features_from_batches(fns, batches, **kw)


def _streamed_splits(config: TrainConfig, few_label: bool) -> _Streamed | None:
    """For a run trained with ``--data-placement stream``: its splits for streaming (None: decode them).

    Few-label fine-tuning holds images in memory, so it decodes the data: with ``--limit`` only.
    """
    if config.data_placement != "stream" or config.data == "digits":
        return None
    if few_label:
        if config.limit is None:
            raise ConfigError(
                "few-label fine-tuning holds the images in memory, and this run streams its data: pass "
                "--limit N (images per split, class-balanced) to fine-tune on a decoded subset"
            )
        return None
    splits = stream_splits(config)
    note = splits.split_note + (
        f"; streamed: kNN and probe on every image, raw pixels and geometry on at most {config.knn_images} "
        "decoded images per split"
    )
    return _Streamed(splits=splits, note=note)


def evaluate_checkpoint(
    run_or_checkpoint: str | Path,
    *,
    data: str | None = None,
    limit: int | None = None,
    device: str = "auto",
    knn_k: int | None = None,
    knn_temperature: float | None = None,
    linear_probe: bool = False,
    few_label: Sequence[float] | None = None,
    geometry: bool = False,
    out: Any = None,
    write: bool = True,
) -> dict[str, Any]:
    """Evaluate the checkpoint's encoder on ``data`` (default: the data it was trained on).

    kNN top-1 always; ``linear_probe``, ``few_label`` (label fractions, e.g. ``(0.01, 0.1)``) and
    ``geometry`` on request. Images are resized to the size the encoder was trained at and normalised with
    its training statistics. Results are printed and, with ``write``, merged into ``metrics.json`` beside
    the checkpoint (key ``"evaluation"``; results on other data than the run's under
    ``"evaluation"["other_data"][<data name>]``, see :func:`merge_evaluation`). Returns the kNN figures at
    the top level (as ``train`` reports them), how far the run got (``finished``, ``trained_steps``,
    ``total_steps``), ``warnings`` when there are any (an unfinished run, a single class) and every result
    under ``"evaluation"``. Grayscale images for an RGB encoder are repeated to three channels
    (:func:`match_channels`), with a ``NOTE:`` line and the note under ``notes`` of the result and of every
    entry; RGB images for a grayscale encoder are refused. A ``knn_k`` larger than the training set is
    clamped to it, and the k used is recorded (``k``, with ``k_requested``); the kNN's protocol records
    ``precision`` (``"fp32"``) and ``images`` (train + eval images it used: every image of both splits). Label
    fractions too small to fine-tune on (fewer labelled images than classes, or than 2) are refused before
    any work.
    """
    out = out or sys.stdout
    t0 = time.perf_counter()
    fractions = parse_fractions(few_label) if few_label is not None else None
    path = find_checkpoint(run_or_checkpoint)
    if write:  # before any work: results that cannot be merged into metrics.json would be lost
        check_output_folder(path.parent / METRICS_NAME, advice=IN_RUN_FOLDER)
    state = load_checkpoint(path)
    config = TrainConfig.from_dict(state["config"], source=str(path), saved_run=True)
    run_progress = training_progress(state)
    info = DataInfo(**{k: tuple(v) if k in ("mean", "std") else v for k, v in state["data_info"].items()})
    changes: dict[str, Any] = {"device": device, "image_size": info.image_size, "limit": limit}
    if data is not None:
        changes["data"] = data
    if knn_k is not None:
        changes["knn_k"] = knn_k
    if knn_temperature is not None:
        changes["knn_temperature"] = knn_temperature
    trained_limit, same_data = config.limit, _same_data(data, config.data)
    config = config.replace(**changes)
    dev = resolve_device(config.device)

    def load(config: TrainConfig) -> tuple[DataSplits, str, _Streamed | None]:
        streamed = _streamed_splits(config, fractions is not None)
        if streamed is None:
            return (*load_splits(config), None)
        # decoded subsets for the raw-pixel reference and the geometry; features come from the stream
        return streamed.subsets, streamed.note, streamed

    splits, note, streamed = load(config)
    if same_data and note.startswith("held out") and config.limit != trained_limit:
        # Without a test/ split the eval images are a share held out of the listing that --limit chose: with
        # another limit they would include images the run trained on.
        if limit is not None:
            raise ConfigError(
                f"this data has no test/ split: the run held out its eval images from --limit {trained_limit}, so "
                f"--limit {limit} would evaluate on images it trained on; drop --limit (or give {trained_limit})"
            )
        config = config.replace(limit=trained_limit)
        splits, note, streamed = load(config)
        note += f" (with the run's --limit {trained_limit})"
    assert splits.test is not None
    if fractions is not None:  # before any work: a fraction too small to fine-tune on is refused
        check_label_fractions(splits.train.labels, fractions)
    notes: list[str] = []
    if same_data and trained_limit is not None and config.limit is None:
        notes.append(
            f"the run trained with --limit {trained_limit} (images per split); eval takes every image of the "
            f"data unless told: pass --limit {trained_limit} to evaluate on the images the run was monitored on"
        )
    channel_note = _fit_channels(splits, streamed, info.channels, path, config.data)
    if channel_note is not None:
        notes.append(channel_note)
    model = build_model(config, info.channels, info.image_size)
    model.load_state_dict(state["model"])
    refuse_nonfinite_model(model, path)  # a diverged run's kNN would be chance, and merged into metrics.json
    model.to(dev).eval()
    evaluator = KnnEvaluator(splits, info, config, dev)
    torch.manual_seed(config.seed)
    fresh = build_model(config, info.channels, info.image_size).to(dev)
    amp = autocast_dtype(config.precision, dev)
    n_train, n_test = (len(splits.train), len(splits.test)) if streamed is None else streamed.sizes
    warnings: list[str] = []
    interrupted = interrupted_run_warning(state, path, "evaluate again")
    if interrupted is not None:
        warnings.append(interrupted)
    unfinished = unfinished_note(run_progress)
    context = {
        "checkpoint": str(path),
        "data": splits.name,
        "limit": config.limit,
        "train_images": n_train,
        "eval_images": n_test,
        "eval_split": note,
        "device": str(dev),
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **run_progress,
    }
    if notes:  # in every result entry, so a reader of metrics.json knows how the images were fed
        context["notes"] = list(notes)
    limited = f", --limit {config.limit}" if config.limit is not None else ""
    print(
        f"contrastkit eval: {path} on {splits.name} ({n_train} train / {n_test} eval images [{note}]{limited})"
        + (f" ({unfinished})" if unfinished else ""),
        file=out,
        flush=True,
    )
    for line in notes:  # (not ``note``: that is the eval split, recorded below)
        print(f"NOTE: {line}", file=out, flush=True)
    for warning in warnings:
        print(f"WARNING: {warning}", file=out, flush=True)

    # kNN on backbone features extracted once (no augmentation), shared with the linear probe
    t = time.perf_counter()
    with torch.no_grad():
        kw: dict[str, Any] = dict(transform=evaluator.transform, device=dev)
        if streamed is None:
            train_f = extract_features(model.features, evaluator.train_images, **kw)
            test_f = extract_features(model.features, evaluator.test_images, **kw)
            train_y, test_y = splits.train.labels.to(dev), splits.test.labels.to(dev)
        else:  # one pass over each split for the trained and the random-init encoder
            fresh.eval()
            (train_f, fresh_train), train_y = streamed.features([model.features, fresh.features], "train", kw)
            (test_f, fresh_test), test_y = streamed.features([model.features, fresh.features], "test", kw)
    k = min(config.knn_k, n_train)  # what the kNN uses: at most every training image
    classes = sorted({int(v) for v in train_y.unique().tolist() if v >= 0})
    if len(classes) < 2:
        names = splits.train.classes
        name = names[classes[0]] if classes and classes[0] < len(names) else "no labels"
        warning = (
            f"{splits.name!r} has a single class ({name!r}) among its training images: kNN top-1 is 1.0 "
            "whatever the encoder, and so are the linear probe, fine-tuning and the geometry's k-means "
            "NMI/ARI; these scores are meaningless: evaluate on data with at least 2 classes"
        )
        warnings.append(warning)
        print(f"WARNING: {warning}", file=out, flush=True)
    unseen = unseen_classes_warning(
        train_y, test_y, list(splits.train.classes), unseen_classes_advice(config.limit, note, retrain=True)
    )
    if unseen is not None:
        warnings.append(unseen)
        print(f"WARNING: {unseen}", file=out, flush=True)
    if warnings:
        context["warnings"] = list(warnings)
    knn_protocol = {
        "k": k,
        **({"k_requested": config.knn_k} if k != config.knn_k else {}),
        "temperature": config.knn_temperature,
        "features": "backbone, L2-normalised",
        "train_images": n_train,
        "eval_images": n_test,
        "eval_split": note,
        # unlike the training-time monitor (which may use autocast and at most --knn-images per split):
        # fp32 features of every image of both splits
        "precision": "fp32",
        "images": n_train + n_test,
    }

    def knn(train_features: torch.Tensor, test_features: torch.Tensor) -> float:
        return knn_accuracy(
            train_features, train_y, test_features, test_y, k=k, temperature=config.knn_temperature
        )

    metrics: dict[str, Any] = {
        "checkpoint": str(path),
        "data": splits.name,
        "knn_top1": knn(train_f, test_f),
        "knn_top1_random_init": evaluator.model_accuracy(fresh)
        if streamed is None
        else knn(fresh_train, fresh_test),
        "knn_top1_raw_pixels": evaluator.raw_pixels(),
        "knn_protocol": knn_protocol,
        **run_progress,
    }
    results: dict[str, Any] = {
        "knn": {
            "top1": metrics["knn_top1"],
            "top1_random_init": metrics["knn_top1_random_init"],
            "top1_raw_pixels": metrics["knn_top1_raw_pixels"],
            "protocol": {"method": "weighted kNN (Wu et al. 2018, Sec. 3.4)", **knn_protocol},
            **context,
            "seconds": time.perf_counter() - t,
        }
    }
    print(format_summary(metrics), file=out, flush=True)
    if k != config.knn_k:
        print(
            f"  (k={k}: --knn-k {config.knn_k} clamped to the {n_train} training images)",
            file=out,
            flush=True,
        )

    if linear_probe:
        # the held-out part that chooses λ: the run's split seed, so runs of several seeds choose alike
        probe = run_linear_probe(train_f, train_y, test_f, test_y, seed=config.split_seed)
        results["linear_probe"] = {**probe.to_dict(), **context, "seconds": probe.protocol["seconds"]}
        print(
            f"linear probe top-1 {probe.top1:.4f} (weight decay {probe.weight_decay:.3g} chosen on "
            f"{probe.protocol['heldout_size']} held-out train images from {len(probe.grid)} values; "
            f"{probe.protocol['seconds']:.1f} s)",
            file=out,
            flush=True,
        )
    del train_f, test_f

    if fractions is not None:
        views = build_views(config, info)
        tuned = finetune_few_labels(
            model.backbone,
            splits.train.images,
            splits.train.labels,
            splits.test.images,
            splits.test.labels,
            fractions=fractions,
            num_classes=len(splits.train.classes),  # the evaluated data's (--data may name other data)
            crop_scale=views.scale,
            flip_p=views.flip_p,
            mean=info.mean,
            std=info.std,
            seed=config.seed,
            subset_seed=config.split_seed,  # the labelled images: the same for runs of several seeds
            device=dev,
            autocast_dtype=amp,
        )
        results["few_label"] = {
            f"{r.fraction:g}": {**r.to_dict(), **context, "seconds": r.protocol["seconds"]} for r in tuned
        }
        for r in tuned:
            p = r.protocol
            print(
                f"few-label fine-tuning top-1 {r.top1:.4f} with {r.fraction * 100:.3g}% of the labels "
                f"({p['labelled_images']} images, {p['epochs']} epochs, {p['optimizer'].split()[0]} lr {p['lr']:.3g}, "
                f"batch {p['batch_size']}; {p['seconds']:.1f} s)",
                file=out,
                flush=True,
            )

    if geometry:
        t = time.perf_counter()
        geo = embedding_geometry(
            model,
            splits.test.images,
            splits.test.labels,
            views=build_views(config, info).to(dev),
            transform=evaluator.transform,
            device=dev,
            seed=config.seed,
        )
        results["geometry"] = {
            **geo,
            **context,
            "eval_images": len(splits.test),
            "seconds": time.perf_counter() - t,
        }
        print(
            f"geometry on {len(splits.test)} eval images: alignment {geo['alignment']:.4f} (alpha=2), "
            f"uniformity {geo['uniformity']:.4f} (t=2), k-means NMI {geo['kmeans_nmi']:.4f} "
            f"ARI {geo['kmeans_ari']:.4f}",
            file=out,
            flush=True,
        )

    metrics["seconds"] = time.perf_counter() - t0
    if warnings:
        metrics["warnings"] = warnings
    if notes:
        metrics["notes"] = notes
    metrics["evaluation"] = results
    if write:
        data_key = None if same_data else splits.name
        target = merge_evaluation(path.parent, results, data_key=data_key)
        where = '"evaluation"' + (f' > "{OTHER_DATA}" > "{data_key}"' if data_key is not None else "")
        print(f"wrote {target} ({where}: {', '.join(results)})", file=out, flush=True)
    for warning in warnings:  # again at the end, where they are read
        print(f"WARNING: {warning}", file=out, flush=True)
    return metrics


def _fit_channels(
    splits: DataSplits, streamed: _Streamed | None, channels: int, path: Path, data: str
) -> str | None:
    """Fit the loaded images (and a streamed run's image readers) to the encoder's channels, in place, by
    :func:`match_channels`; returns its note."""
    assert splits.test is not None
    encoder, where = f"the encoder of {str(path)!r}", repr(data)
    note = None
    for ds in (splits.train, splits.test):
        ds.images, note = match_channels(ds.images, channels, encoder=encoder, data=where)
    if streamed is not None:  # the readers repeat a grayscale image to the channels they are set to
        for reader in (streamed.splits.train, streamed.splits.test):
            if reader.channels != channels:
                match_channels(torch.empty(0, reader.channels, 1, 1), channels, encoder=encoder, data=where)
                reader.channels = channels
    return note


def run_world_size(state: dict[str, Any]) -> int:
    """The number of processes a checkpoint's run trained on (1 when it does not say)."""
    progress = state.get("progress")
    world = progress.get("world_size", 1) if isinstance(progress, dict) else 1
    return world if isinstance(world, int) and world > 0 else 1


def _same_data(data: str | None, trained: str) -> bool:
    """Whether ``--data`` names the data the run was trained on (the same name, or the same path)."""
    if data is None or data == trained:
        return True
    try:
        return Path(data).exists() and Path(data).resolve() == Path(trained).resolve()
    except OSError:
        return False
