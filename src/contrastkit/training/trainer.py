"""The training loop: plain PyTorch, data resident on the device, augmentation on the device.

:func:`build_run` turns a :class:`TrainConfig` into the pieces of the spine; :func:`train` runs it,
monitors kNN accuracy, and writes ``metrics.json``, ``config.yaml`` and ``checkpoint.pt`` into the run
folder. The checkpoint holds the model (all ``contrastkit eval`` needs) and, to resume, the optimizer,
the scheduler, the negative source's state (``negatives``: queue buffers, MoCHi's step, the mined
negatives' snapshot embeddings and index), the momentum key encoder (``key_encoder``, None without
one) and the training data's fingerprint (``data_fingerprint``: a resume on other data is refused). No
checkpoint, final model or metrics.json is written from a state with a NaN or an infinity in it
(BatchNorm's running variance can overflow while the loss stays finite): the run stops with a
:class:`TrainingError` and the latest finite checkpoint is kept. The loop reads the loss (and the negative
source's statistics) from the device only every ``log_every`` steps, so it does not synchronise with the
GPU on every step. A checkpoint due at an epoch's end is written after that epoch's kNN point, and so
records it.

The pieces of a run: :func:`_open_run` (the run folder, the checkpoint to resume), :func:`_build` (model,
views, negatives, learner, optimizer, schedule), :func:`_fresh_progress` or :func:`_restore`, one
optimisation step (:class:`~contrastkit.training.step.TrainStep`), the loop over the epochs (:class:`_Loop`:
statistics, checkpoints, stop signals, kNN) and :func:`_final_metrics`.

Mined negatives (ANCE, :class:`~contrastkit.negatives.MinedNegatives`) get the batch's dataset indices and
an ``embed_all`` that embeds the whole training set, unaugmented, with the current model in eval mode
(:meth:`KnnEvaluator.embed_train`); ``--mined-reencode`` adds the item encoder that re-encodes the mined
items with gradient.

Data parallel. Launched by ``torchrun --nproc-per-node W -m contrastkit train ...`` the run starts the
process group from torchrun's environment (NCCL on CUDA, one GPU per process; gloo on CPU) and wraps the
model in ``DistributedDataParallel`` (on CUDA with ``SyncBatchNorm``, SimCLR's global BN; on CPU each
process normalises its own shard, as SyncBatchNorm exists only for GPUs). ``--batch-size`` is the *global*
batch: rank 0 draws one shuffled order per epoch and broadcasts it, and rank r takes rows
``[r B/W, (r+1) B/W)`` of each global batch, so the schedule, the learning-rate scaling (B/256) and the
number of steps are those of one process with batch B (the order of later epochs is drawn after rank 0's
own views, so from the second epoch on it differs from one process's). Rank r > 0 seeds its views'
generator and the global one with ``seed + 100003 r`` on top of rank 0's (rank 0 keeps the single-process
streams). The logged statistics are means over the ranks (the loss of the global batch), read at the same
steps everywhere; a stop signal is agreed on at those steps too. kNN evaluation runs on rank 0 and is
broadcast; only rank 0 prints and writes into the run folder. A checkpoint holds every rank's random
states, so a resume needs the same number of processes.
"""

from __future__ import annotations

import gc
import inspect
import io
import json
import math
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist
import yaml
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from contrastkit import __version__
from contrastkit.data import DataSplits, load_dataset
from contrastkit.data.stream import REPLACE_ADVICE
from contrastkit.encoders import ContrastiveModel, ProjectionHead, build_encoder
from contrastkit.errors import ConfigError, ContrastkitError, TrainingError, UndecodableImageError
from contrastkit.evaluation import extract_features, knn_accuracy, unseen_classes_warning
from contrastkit.negatives import MomentumEncoder, build_negatives, from_the_batch
from contrastkit.negatives.distributed import (
    all_gather_no_grad,
    all_gather_objects,
    broadcast_object,
    init_from_env,
    is_distributed,
    rank,
    world_size,
)
from contrastkit.negatives.mined import resolve_index_kind
from contrastkit.objectives import OBJECTIVES, build_objective
from contrastkit.scores import Score, build_score
from contrastkit.training.checkpoint import (
    CHECKPOINT_NAME,
    cannot_write,
    find_checkpoint,
    load_checkpoint,
    remove_stale_temporaries,
    restore_rng_state,
    rng_state,
    save_checkpoint,
    write_atomic,
)
from contrastkit.training.config import TrainConfig, check_option_combinations, unused_options
from contrastkit.training.data import (
    HELD_OUT_FRACTION,
    UNDECODABLE_NAME,
    TrainingData,
    contents_fingerprint,
    load_training_data,
    record_undecodable,
    undecodable_records,
)
from contrastkit.training.learner import ContrastiveLearner, refuse_unit_score_objective
from contrastkit.training.optim import BASE_LR, WEIGHT_DECAY, build_optimizer, warmup_cosine
from contrastkit.training.options import check_seed
from contrastkit.training.precision import autocast_dtype
from contrastkit.training.resume import (
    StopSignals,
    TrainingInterrupted,
    absolute_data,
    first_mismatch,
    other_device_message,
)
from contrastkit.training.run_folder import (
    json_safe,
    lock_run_dir,
    prepare_run_dir,
    remove_if_empty,
    write_metrics,
)
from contrastkit.training.step import (
    TrainStep,
    TwoViews,
    all_finite,
    compile_learner,
    compile_model_only,
    nonfinite_advice,
)
from contrastkit.views import ImageViews, eval_transform, view_pair

HISTORY_NAME = "history.jsonl"
RANK_SEED_STRIDE = 100_003  # rank r > 0 offsets its generators' seeds by r times this
# --mined-reencode's generator is seeded with the views' seed plus this (beyond the 32-bit seeds in use)
REENCODE_SEED_OFFSET = 2**32
# --skip-nonfinite: a run that skipped more than this share of its steps ends with a warning (printed and in
# metrics.json): its model trained on much less than it was asked to
SKIPPED_WARNING_SHARE = 0.25
# what to do about a run whose numbers became non-finite (there is no gradient clipping option)
# a run whose final kNN top-1 is at most this times chance (1 / classes), or more than COLLAPSE_BELOW_RANDOM
# below the untrained encoder's, ends with a warning that its representation likely collapsed
COLLAPSE_CHANCE_FACTOR = 1.5
COLLAPSE_BELOW_RANDOM = 0.1
# ... unless it beats the untrained encoder by more than this: near chance but learning (a tiny run)
COLLAPSE_IMPROVED = 0.05
# the options the trainer passes to build_objective: each objective takes those its constructor names
OBJECTIVE_OPTIONS = ("temperature", "tau_plus", "beta", "margin", "mining")


@dataclass
class DataInfo:
    """What a checkpoint must remember about its data to rebuild and evaluate the model."""

    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "classes": list(self.classes),
        }


@dataclass
class TrainResult:
    """What :func:`train` returns: the run folder, the metrics and the trained model."""

    run_dir: Path
    metrics: dict[str, Any]
    model: ContrastiveModel
    history: list[dict[str, float]] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was asked for, but no CUDA device is available; use --device cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(
            f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N (N a GPU index)"
        ) from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"--device {name} names GPU {device.index}, but this machine has {torch.cuda.device_count()} "
            f"(cuda:0 to cuda:{torch.cuda.device_count() - 1}); use one of those"
        )
    return device


def load_splits(config: TrainConfig) -> tuple[DataSplits, str]:
    """Load the data; without a test split, hold out a stratified part of train for evaluation. The split
    (the digits' test split, the held-out part, ``--limit``'s subsets) is seeded by ``--split-seed``, not by
    ``--seed``: runs of several seeds are evaluated on the same test set."""
    seed = config.split_seed
    splits = load_dataset(config.data, image_size=config.image_size, limit=config.limit, seed=seed)
    note = "test split"
    if splits.test is None or len(splits.test) == 0:
        splits = _hold_out(splits, HELD_OUT_FRACTION, seed)
        note = f"held out {HELD_OUT_FRACTION:.0%} of train (no test/ folder)"
    return splits, note


def _hold_out(splits: DataSplits, fraction: float, seed: int) -> DataSplits:
    from contrastkit.data.dataset import held_out_indices

    train_idx, test_idx = held_out_indices(splits.train.labels.numpy(), fraction, seed, what=splits.name)
    return DataSplits(
        train=splits.train.subset(torch.as_tensor(train_idx)),
        test=splits.train.subset(torch.as_tensor(test_idx)),
        name=splits.name,
    )


def _encoder_name(config: TrainConfig, image_size: int) -> str:
    if config.encoder != "auto":
        return config.encoder
    return "small_cnn" if image_size < 32 else "resnet18"


def build_model(config: TrainConfig, channels: int, image_size: int) -> ContrastiveModel:
    """Backbone + SimCLR projection head, chosen by the config (``--no-batchnorm``: both without BN)."""
    name = _encoder_name(config, image_size)
    backbone = build_encoder(
        name, in_channels=channels, image_size=image_size, stem=config.stem, batchnorm=config.batchnorm
    )
    head = ProjectionHead(
        backbone.feature_dim,
        hidden_dim=config.proj_hidden_dim,
        out_dim=config.proj_dim,
        batchnorm=config.batchnorm,
    )
    return ContrastiveModel(backbone, head)


def build_view_pair(config: TrainConfig, info: DataInfo) -> tuple[ImageViews, ImageViews]:
    """The two views modules of the config's recipe (``--views``; the same module twice unless BYOL).

    Options left unset take the recipe's values, except two small-data adaptations: images below 32 px
    crop no smaller than half their area (an 8x8 digit cannot lose 92% of itself), and the digits, which
    are not mirror-symmetric, are not flipped. ``--jitter J`` sets brightness, contrast and saturation to
    J and hue to J/4 (SimCLR's colour strength s = J / 0.8).
    """
    overrides: dict[str, Any] = {}
    if config.crop_min_scale is not None:
        overrides["scale"] = (config.crop_min_scale, 1.0)
    elif info.image_size < 32:
        overrides["scale"] = (0.5, 1.0)
    if config.flip_p is not None:
        overrides["flip_p"] = config.flip_p
    elif config.data == "digits":
        overrides["flip_p"] = 0.0
    if config.jitter is not None:
        j = config.jitter
        overrides.update(brightness=j, contrast=j, saturation=j, hue=min(j / 4, 0.5))
    if config.jitter_p is not None:
        overrides["jitter_p"] = config.jitter_p
    if config.grayscale_p is not None:
        overrides["grayscale_p"] = config.grayscale_p
    return view_pair(config.views, info.image_size, info.mean, info.std, **overrides)


def build_views(config: TrainConfig, info: DataInfo) -> ImageViews:
    """The first view of :func:`build_view_pair` (both views, for every recipe but BYOL)."""
    return build_view_pair(config, info)[0]


def resolve_hyperparameters(config: TrainConfig) -> TrainConfig:
    """Fill the defaults that depend on other options (lr scaled by batch/256, weight decay, warm-up, the key
    encoder's momentum: 0.99 with a queue source, else 0), so that the run folder records the values used."""
    lr = config.lr if config.lr is not None else BASE_LR[config.optimizer] * config.batch_size / 256
    wd = config.weight_decay if config.weight_decay is not None else WEIGHT_DECAY[config.optimizer]
    warmup = config.warmup_epochs if config.warmup_epochs is not None else round(0.1 * config.epochs, 2)
    return config.replace(
        lr=lr, weight_decay=wd, warmup_epochs=warmup, key_momentum=config.resolved_key_momentum()
    )


def default_run_dir(config: TrainConfig) -> Path:
    """``runs/<data>-<objective>-<time>``, with ``-<negatives>`` after the objective when the negatives are
    not the default in-batch ones."""
    data = "digits" if config.data == "digits" else Path(config.data).stem
    negatives = "" if config.negatives == "in-batch" else f"-{config.negatives}"
    return Path("runs") / f"{data}-{config.objective}{negatives}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


class KnnEvaluator:
    """kNN top-1 of a feature function on fixed (train, test) images, on the device."""

    def __init__(self, splits: DataSplits, info: DataInfo, config: TrainConfig, device: torch.device) -> None:
        self.train, self.test = splits.train, splits.test
        assert self.test is not None
        self.mean, self.std = info.mean, info.std
        self.k, self.t = config.knn_k, config.knn_temperature
        self.device = device
        # kept where they are (the training data on the device, or decoded subsets on the CPU for data
        # that lives elsewhere): the features are extracted a batch at a time, each batch moved to the device
        self.train_images = self.train.images
        self.test_images = self.test.images

    def transform(self, x: Tensor) -> Tensor:
        return eval_transform(x, self.mean, self.std)

    @torch.no_grad()
    def accuracy(self, fn: Any, autocast_dtype: torch.dtype | None = None) -> float:
        kw = dict(transform=self.transform, device=self.device, autocast_dtype=autocast_dtype)
        train_f = extract_features(fn, self.train_images, **kw)
        test_f = extract_features(fn, self.test_images, **kw)
        if not bool(torch.isfinite(train_f).all() and torch.isfinite(test_f).all()):
            # a diverged model: NaN, not knn_accuracy's DataError (raised on rank 0 alone, it would leave the
            # other ranks at the broadcast); the training loop stops on it (_Loop._refuse_diverged_features)
            return float("nan")
        return knn_accuracy(
            train_f,
            self.train.labels.to(self.device),
            test_f,
            self.test.labels.to(self.device),
            k=self.k,
            temperature=self.t,
            # the data set's class count: a subset (--limit, --knn-images) of many classes may have fewer
            # items than its largest class index, which the inferred count refuses -- on rank 0 alone
            num_classes=max(len(self.train.classes), 1),
        )

    def model_accuracy(self, model: ContrastiveModel, autocast_dtype: torch.dtype | None = None) -> float:
        was_training = model.training
        model.eval()
        try:
            return self.accuracy(model.features, autocast_dtype)
        finally:
            model.train(was_training)

    def raw_pixels(self) -> float:
        return self.accuracy(lambda x: x.flatten(1))

    def embed_train(
        self,
        model: ContrastiveModel,
        score: Score,
        autocast_dtype: torch.dtype | None = None,
        rows: slice = slice(None),
        images: Tensor | None = None,
    ) -> Tensor:
        """``score.prepare(g(f(x)))`` of the training images ``rows``, unaugmented (the kNN transform), in
        eval mode without gradient: row i is dataset index i (the mined negatives' ``embed_all``).

        ``images``: the whole training set (default: the kNN monitor's training images, which are only a
        subset when the data is not on the device).
        """
        was_training = model.training
        model.eval()
        try:
            return extract_features(
                lambda x: score.prepare(model(x).float()),
                (self.train_images if images is None else images)[rows],
                transform=self.transform,
                device=self.device,
                autocast_dtype=autocast_dtype,
            )
        finally:
            model.train(was_training)


def train(
    config: TrainConfig, *, log_every: int = 10, out: Any = None, resume: str | Path | None = None
) -> TrainResult:
    """Train a contrastive encoder as ``config`` says; see the module docstring for what is written.

    With ``resume`` (a run folder or its checkpoint, see :func:`~contrastkit.training.resume.resume_config`
    for the configuration to pass) the run continues from its latest checkpoint and ends exactly as the
    uninterrupted run would have (on CPU; on GPU with ``deterministic``). A first SIGINT or SIGTERM stops
    at the next step boundary after writing a checkpoint and raises
    :class:`~contrastkit.training.resume.TrainingInterrupted`.

    Started by ``torchrun`` (or with a process group already initialised) the run is data-parallel; see
    the module docstring. A process group this call started is destroyed when it returns.
    """
    device, owns_group = init_from_env(resolve_device(config.device))
    # --deterministic switches process-wide settings: put them back for the caller's later work
    kept = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    try:
        try:
            result = _train(config, device, log_every=log_every, out=out, resume=resume)
        except TrainingInterrupted:  # every rank stopped at the same step
            _barrier_before_teardown(owns_group)
            raise
        _barrier_before_teardown(owns_group)
        return result
    finally:
        torch.use_deterministic_algorithms(kept[0], warn_only=kept[1])
        torch.backends.cudnn.benchmark = kept[2]
        if owns_group and dist.is_initialized():
            # DistributedDataParallel's reducer sits in reference cycles that keep the process group and
            # gloo's pending work alive until the interpreter's finalisation, where freeing them aborts
            # the process ("terminate called without an active exception"): free them now.
            gc.collect()
            dist.destroy_process_group()
            gc.collect()


def _barrier_before_teardown(owns_group: bool) -> None:
    """No rank tears gloo down while another still talks to it (that aborts the process, SIGABRT)."""
    if owns_group and world_size() > 1:
        dist.barrier()


@dataclass
class _ItemViews:
    """``--mined-reencode``'s augmentation of the mined items: the first view's module and the generator
    its parameters are drawn from. That generator is the run's own (:data:`REENCODE_SEED_OFFSET`), not the
    views' one: each step draws for a data-dependent number of items, which would otherwise move the training
    views and the epochs' orders away from those of every other run of the seed. A run resumed from a
    checkpoint written before it had its own generator goes on sharing the views' one, as it did."""

    views: ImageViews
    generator: torch.Generator


@dataclass
class _Parts:
    """What :func:`_build` makes of a config and its data: the model and its views, the learner around
    them, the optimizer and its schedule, and the run's numbers of steps."""

    model: ContrastiveModel  # the bare model: checkpointed, evaluated, followed by the key encoder
    net: nn.Module  # what the learner calls: the model, in DistributedDataParallel with several processes
    views1: ImageViews
    views2: ImageViews
    key_encoder: MomentumEncoder | None
    key_momentum: float
    evaluator: KnnEvaluator
    gen: torch.Generator  # the views' random parameters and the epochs' shuffled orders
    item_views: _ItemViews | None  # --mined-reencode's augmentation, with its own generator
    learner: ContrastiveLearner
    optimizer: torch.optim.Optimizer
    scheduler: Any
    amp_dtype: torch.dtype | None  # bf16 autocast, or None: fp32
    mined: bool  # mined negatives (ANCE)
    refresh_every: int  # their index's refresh interval, in steps
    steps_per_epoch: int
    total_steps: int
    shard: int  # this process's part of each global batch


@dataclass
class _LatestCheckpoint:
    """Where the run's checkpoint is written and the step of the latest one (None: none yet)."""

    path: Path
    step: int | None

    def describe(self) -> str:
        return _last_good(self.path, self.step)


def _train(
    config: TrainConfig, device: torch.device, *, log_every: int, out: Any, resume: str | Path | None
) -> TrainResult:
    """The run, piece by piece: its folder, the data, the parts, the progress (fresh or restored from the
    checkpoint), the loop, the final metrics. A run folder this call created is removed again when the run
    fails before writing anything into it (bad data, an impossible option): no empty folder is left."""
    t_start = time.perf_counter()
    main = rank() == 0
    out = (out or sys.stdout) if main else io.StringIO()  # only rank 0 prints
    if resume is None and "mined" in config.negatives:
        # the index kind --mined-index auto takes here (faiss flat or torch: they may order equal scores
        # differently), recorded so that a resume, on a machine where faiss came or went, searches alike
        config = config.replace(mined_index=resolve_index_kind(config.mined_index, device))
    config, run_dir, saved, created = _open_run(resolve_hyperparameters(config), device, resume)
    try:
        return _run(config, device, run_dir, saved, log_every=log_every, out=out, t_start=t_start)
    except BaseException:
        if created and main:
            remove_if_empty([run_dir])  # only while empty: anything written into it stays
        raise


def _write_config(path: Path, config: TrainConfig) -> None:
    """``config.yaml`` of the run, written atomically; a path the file system refuses is a ConfigError."""
    if path.is_dir():
        raise ConfigError(
            f"cannot write the run's configuration {str(path)!r}: it is a folder; move it away (the "
            "checkpoint keeps the configuration) and run again"
        )
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    try:
        write_atomic(path, lambda f: f.write(text), binary=False)
    except ContrastkitError as exc:
        raise ConfigError(f"cannot write the run's configuration {str(path)!r}: {exc}") from None


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool | None):
        return float(a) == float(b) or (math.isnan(float(a)) and math.isnan(float(b)))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def edited_config_keys(path: Path, saved: dict[str, Any] | None) -> list[str]:
    """The keys in which the run folder's ``config.yaml`` differs from its checkpoint's configuration
    (``saved``): it was edited by hand. Empty when it is missing, unreadable or the same."""
    if not isinstance(saved, dict) or not path.is_file():
        return []
    try:
        on_disk = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    if not isinstance(on_disk, dict):
        return []
    on_disk = {str(k).replace("-", "_"): v for k, v in on_disk.items()}
    # out: the run's folder, set on every resume (a moved folder has another)
    keys = [k for k in saved if k in on_disk and k != "out" and not _same_value(on_disk[k], saved[k])]
    return keys + [k for k in on_disk if k not in saved]


def warn_edited_config(
    path: Path, saved: dict[str, Any] | None, out: Any, *, example: str = "--resume RUN --device ..."
) -> None:
    """A resume uses the checkpoint's configuration: say so when ``config.yaml`` was edited (``example``:
    how the command gives an option that may change on resume)."""
    keys = edited_config_keys(path, saved)
    if keys:
        print(
            f"WARNING: {path} differs from the checkpoint's configuration in {', '.join(keys)}: a resume "
            "continues with the checkpoint's values (and rewrites config.yaml with them); an option that "
            f"may change on resume is given as a flag ({example}), which is checked",
            file=out,
            flush=True,
        )


def _run(
    config: TrainConfig,
    device: torch.device,
    run_dir: Path,
    saved: dict[str, Any] | None,
    *,
    log_every: int,
    out: Any,
    t_start: float,
) -> TrainResult:
    """:func:`_train` once the run folder is open."""
    main = rank() == 0
    data = load_training_data(config, device)
    info = _data_info(config, data)
    fingerprint = data.fingerprint()
    replaced_note = None
    if saved is not None:
        replaced_note = _check_same_data(saved, fingerprint, config, run_dir, data)
    parts = _build(config, device, data, info)
    if saved is None:
        progress, step, history = _fresh_progress(parts, run_dir, device)
    else:
        progress, step, history = _restore(saved, run_dir, parts, device)
    if main:
        if saved is not None:
            warn_edited_config(run_dir / "config.yaml", saved.get("config"), out)
        _write_config(run_dir / "config.yaml", config)
    latest = _LatestCheckpoint(run_dir / CHECKPOINT_NAME, step if saved is not None else None)
    train_step = _train_step(config, device, data, parts, latest)
    print(
        _banner(config, device, data, parts, run_dir, step, resumed=saved is not None), file=out, flush=True
    )
    if main:
        if replaced_note is not None:
            print(f"NOTE: {replaced_note}", file=out, flush=True)
        for warning in unused_options(config):  # config.yaml records them as if they had been used
            print(f"WARNING: {warning}", file=out, flush=True)
    loop = _Loop(
        config=config,
        device=device,
        data=data,
        info=info,
        fingerprint=fingerprint,
        parts=parts,
        train_step=train_step,
        run_dir=run_dir,
        progress=progress,
        step=step,
        history=history,
        log_every=log_every,
        t_start=t_start,
        elapsed_base=progress.get("elapsed_seconds", 0.0),
        latest=latest,
        board=_board(config, run_dir, step) if main else _NoBoard(),
        clock=_Clock(progress["train_seconds"], device),
        bar=_progress(parts.total_steps, config.progress) if main else _QuietBar(),
    )
    # the stop signals are watched up to the final write: a first one during the final evaluation lets the
    # run finish (its last step's checkpoint was written before that evaluation, so a second one, which
    # stops at once, leaves it resumable: the resume only evaluates and finishes it)
    with StopSignals() as stop:
        loop.run(stop)
        metrics = _final_metrics(
            config,
            data,
            loop.progress,
            loop.history,
            steps=loop.step,
            train_seconds=loop.clock.seconds(),
            total_seconds=loop.elapsed_base + time.perf_counter() - t_start,
            device=device,
            mined=parts.mined,
            amp_dtype=parts.amp_dtype,
        )
        final = loop.final_state(metrics)  # refused when not finite, the latest checkpoint kept
        metrics["total_seconds"] = loop.elapsed_base + time.perf_counter() - t_start
        if main:  # strict JSON: a metric that could not be computed (NaN) is null
            # metrics first: a kill between the two leaves the resumable checkpoint, whose resume writes both
            # (the other order left a finished checkpoint without metrics.json)
            write_metrics(run_dir / "metrics.json", metrics)
        loop.finish(final, metrics)
    if stop.requested is not None:
        print(
            f"{signal.Signals(stop.requested).name} received after the last step: the run was finished first",
            file=out,
            flush=True,
        )
    print(format_summary(metrics, run_dir), file=out, flush=True)
    return TrainResult(run_dir=run_dir, metrics=metrics, model=parts.model, history=loop.history)


def _refuse_other_world_size(saved: dict[str, Any], run_dir: Path) -> None:
    """A checkpoint resumes only on as many processes as it ran on: each process's random state and batch
    shard depend on that. Checked before the option combinations, whose advice for this launch (another
    --batch-size, or torchrun for --negatives gather) a resume could not follow."""
    progress = saved.get("progress")
    saved_world = int(progress.get("world_size", 1)) if isinstance(progress, dict) else 1
    world = world_size()
    if saved_world != world:
        raise ConfigError(
            f"cannot resume {str(run_dir)!r} on {world} process(es): it ran on {saved_world}, and each "
            f"process's random state and batch shard depend on that; resume it with "
            f"{resume_command(run_dir, saved_world)}"
        )


def _open_run(
    config: TrainConfig, device: torch.device, resume: str | Path | None
) -> tuple[TrainConfig, Path, dict[str, Any] | None, bool]:
    """The run folder and, to resume, its checkpoint; a new run never takes a folder that holds one.

    Returns the config with ``out`` set to the folder (checked for option combinations, before the folder is
    made), the loaded checkpoint (None for a new run) and whether this call created the folder.
    ``--deterministic`` is switched on here, before anything is built.
    """
    saved: dict[str, Any] | None = None
    created = False
    if resume is not None:
        ckpt_path = find_checkpoint(resume)
        run_dir = ckpt_path.parent
        if rank() == 0:
            lock_run_dir(run_dir)  # a second resume of this run, started at the same time, is refused
        saved = load_checkpoint(ckpt_path)
        _refuse_other_world_size(saved, run_dir)
        check_combinations(config, new_run=False)
        if rank() == 0:
            remove_stale_temporaries(ckpt_path)
    else:
        check_seed("seed", config.seed)  # new runs only: see TrainConfig.validate
        check_combinations(config)
        config = config.replace(data=absolute_data(config.data))  # a resume from another folder finds it
        run_dir = Path(broadcast_object(str(Path(config.out) if config.out else default_run_dir(config))))
        created = not run_dir.exists()  # (rank 0's answer is the one used: it alone removes the folder)
        # every rank checks; a refusal on any of them is raised on all (none is left at the barrier)
        refusals = [r for r in all_gather_objects(_run_dir_refusal(run_dir)) if r]
        if refusals:
            raise ConfigError(refusals[0])
    if world_size() > 1:
        dist.barrier()  # every rank has checked the run folder before rank 0 writes into it
    config = config.replace(out=str(run_dir))
    if config.deterministic:
        _make_deterministic(device)
    return config, run_dir, saved, created


def _data_info(config: TrainConfig, data: TrainingData) -> DataInfo:
    """The data's description for the checkpoint; a batch larger than the data, or non-square images,
    are refused."""
    splits = data.knn_splits  # decoded images for the kNN monitor
    assert splits.test is not None
    n_train = len(data)
    if config.batch_size > n_train:
        raise ConfigError(
            f"batch size {config.batch_size} is larger than the training set ({n_train} images); "
            f"use --batch-size {n_train} or less"
        )
    if "mined" in config.negatives and config.mined_negatives > n_train - 1:
        most = n_train - 1
        raise ConfigError(
            f"--mined-negatives {config.mined_negatives} asks for more negatives per anchor than the training "
            f"set has: its {n_train} images give each anchor at most {most} other items (its own is never "
            "its negative); "
            + (f"use --mined-negatives {most} or less" if most >= 1 else "mining needs at least 2 images")
            + (", or more training images (a larger --limit)" if config.limit is not None else "")
        )
    if config.oracle or config.objective == "supcon":
        known = data.labels[data.labels >= 0].unique()
        if known.numel() < 2:
            use = (
                "--oracle masks same-class negatives"
                if config.oracle
                else "--objective supcon contrasts classes"
            )
            raise ConfigError(
                f"{use}, but the training images hold {known.numel()} known class(es) "
                f"({', '.join(map(str, splits.train.classes[:3])) or 'no labels'}): "
                + (
                    "every negative would be masked and the loss exactly 0, so nothing would be learnt"
                    if config.oracle
                    else "every other image would be a positive and none a negative"
                )
                + "; use data with class folders (two or more), or drop the option"
            )
    mean, std = data.stats
    c, h, w = data.image_shape
    if h != w:
        raise ConfigError(f"images are {h}x{w}; square images are expected: pass --image-size to resize them")
    return DataInfo(
        channels=c, image_size=h, mean=tuple(mean), std=tuple(std), classes=list(splits.train.classes)
    )


def _build(config: TrainConfig, device: torch.device, data: TrainingData, info: DataInfo) -> _Parts:
    """Model, views, key encoder, negative source, learner, optimizer and schedule, as the config says.

    The order is that of the random streams: the global generator is seeded (``seed``) before the model's
    initialisation; with several processes rank r > 0 reseeds it after wrapping the model in DDP (rank 0
    keeps the single-process streams: MoCHi, shuffling BN); the views' generator gets ``seed + 1``,
    ``--mined-reencode``'s its own (:class:`_ItemViews`) ``seed + 1 + REENCODE_SEED_OFFSET``, on the device.
    """
    rank_, world = rank(), world_size()
    torch.manual_seed(config.seed)
    model = build_model(config, info.channels, info.image_size).to(device)
    amp_dtype = autocast_dtype(config.precision, device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    views1, views2 = (v.to(device) for v in build_view_pair(config, info))
    steps_per_epoch = len(data) // config.batch_size
    shard = config.batch_size // world  # this process's part of each global batch
    key_momentum = config.resolved_key_momentum()
    key_encoder = (
        MomentumEncoder(model, key_momentum, shuffle_groups=min(config.shuffle_bn_groups, shard))
        if key_momentum > 0
        else None
    )
    net: nn.Module = model
    if world > 1:
        if device.type == "cuda":  # SimCLR's global BN; the key encoder keeps per-GPU BN (MoCo)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if rank_ > 0:  # rank 0 keeps the single-process random streams (MoCHi, shuffling BN)
            torch.manual_seed(config.seed + RANK_SEED_STRIDE * rank_)
    score = build_score(config.score)
    evaluator = KnnEvaluator(data.knn_splits, info, config, device)
    gen = torch.Generator(device=device)  # the views' random parameters
    gen.manual_seed(config.seed + 1 + RANK_SEED_STRIDE * rank_)
    mined = "mined" in config.negatives
    refresh_every = config.mined_refresh_every or steps_per_epoch
    item_views = None
    if mined and config.mined_reencode:
        item_gen = torch.Generator(device=device)
        item_gen.manual_seed(config.seed + 1 + RANK_SEED_STRIDE * rank_ + REENCODE_SEED_OFFSET)
        item_views = _ItemViews(views1, item_gen)
    negatives = build_negatives(
        config.negatives,
        queue_size=config.queue_size,
        queue_dim=config.proj_dim,  # the projection head's output (build_model)
        mix_start_step=round(config.mix_start_epoch * steps_per_epoch),
        mix_hardest=config.mix_hardest,
        mix_synthetic=config.mix_synthetic,
        mix_query=config.mix_query,
        mix_normalize=score.unit_norm,
        embed_all=_train_set_embedder(model, evaluator, score, amp_dtype, data.resident.images)
        if mined and data.resident is not None
        else None,
        mined_negatives=config.mined_negatives,
        refresh_every=refresh_every,
        index=resolve_index_kind(config.mined_index, device),
        train_labels=data.labels,
        encode_items=_item_encoder(model, data.fetch, item_views, score) if item_views is not None else None,
        both_views=key_encoder is None,
    )
    learner = ContrastiveLearner(
        net,
        negatives,
        score,
        build_objective(config.objective, **{name: getattr(config, name) for name in OBJECTIVE_OPTIONS}),
        oracle=config.oracle,
        key_encoder=key_encoder,
    ).to(device)
    if config.skip_nonfinite:
        learner.finite_check = all_finite
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    optimizer = build_optimizer(
        config.optimizer, learner, lr=config.lr, weight_decay=config.weight_decay, momentum=config.momentum
    )
    scheduler = warmup_cosine(optimizer, warmup_steps=warmup_steps, total_steps=total_steps)
    return _Parts(
        model=model,
        net=net,
        views1=views1,
        views2=views2,
        key_encoder=key_encoder,
        key_momentum=key_momentum,
        evaluator=evaluator,
        gen=gen,
        item_views=item_views,
        learner=learner,
        optimizer=optimizer,
        scheduler=scheduler,
        amp_dtype=amp_dtype,
        mined=mined,
        refresh_every=refresh_every,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        shard=shard,
    )


def _fresh_progress(
    parts: _Parts, run_dir: Path, device: torch.device
) -> tuple[dict[str, Any], int, list[dict[str, float]]]:
    """A new run's progress (with the kNN of the untrained model and of raw pixels), step 0, no history."""
    model, evaluator = parts.model, parts.evaluator
    progress: dict[str, Any] = {
        "epoch": 0,  # the epoch in progress (0-based)
        "next_batch": 0,  # its next batch
        "order": None,  # its shuffled order, once drawn
        "total_steps": parts.total_steps,
        "world_size": world_size(),
        "device_type": device.type,  # the generators' states are of this kind of device
        "elapsed_seconds": 0.0,  # wall-clock of earlier sessions of the run
        "train_seconds": 0.0,
        "knn_curve": [],
        "knn_top1_random_init": _on_rank0(lambda: evaluator.model_accuracy(model, parts.amp_dtype)),
        "knn_top1_raw_pixels": _on_rank0(evaluator.raw_pixels),
        "last_loss": float("nan"),
        "skipped_steps": 0,
        "resumed_at_steps": [],
        "session_environments": [{"from_step": 0, **_environment(device)}],
    }
    # the run folder was checked by _open_run: it holds no history.jsonl of another run to lose
    return progress, 0, []


def _restore(
    saved: dict[str, Any], run_dir: Path, parts: _Parts, device: torch.device
) -> tuple[dict[str, Any], int, list[dict[str, float]]]:
    """A checkpoint's progress, step and history (truncated to its step), its states loaded into ``parts``
    and its random states into the generators; a checkpoint this run cannot continue is refused."""
    rank_, world = rank(), world_size()
    progress = dict(saved["progress"])
    step = int(saved["step"])
    saved_type = progress.get("device_type", device.type)
    if saved_type != device.type:
        raise ConfigError(
            other_device_message(
                run_dir, saved_type, device.type, note=f" (another {saved_type} index is fine)"
            )
        )
    if progress["total_steps"] != parts.total_steps:
        raise ConfigError(
            f"cannot resume {str(run_dir)!r}: it has {progress['total_steps']} steps in all, this data and "
            f"config give {parts.total_steps}; was the data set changed?"
        )
    progress["world_size"] = world  # as many processes as it ran on: _open_run checked it
    _load_states(saved, run_dir, parts)
    view_rng, global_rng = progress.pop("view_rng"), progress.pop("global_rng")
    if world > 1:  # one state per rank
        view_rng, global_rng = view_rng[rank_], global_rng[rank_]
    parts.gen.set_state(view_rng)  # a CPU byte tensor, for CPU and CUDA generators alike
    restore_rng_state(global_rng)
    item_rng = progress.pop("reencode_rng", None)
    if parts.item_views is not None:
        if item_rng is None:  # written before --mined-reencode had its own generator: it shared the views'
            parts.item_views.generator = parts.gen
        else:
            parts.item_views.generator.set_state(item_rng[rank_] if world > 1 else item_rng)
    progress["resumed_at_steps"] = [*progress["resumed_at_steps"], step]
    progress["session_environments"] = [  # none from a checkpoint written before they were recorded
        *progress.get("session_environments", []),
        {"from_step": step, **_environment(device)},
    ]
    _refuse_foreign_history(run_dir / HISTORY_NAME, progress.get("history_last_row"), run_dir)
    history = _truncate_history(run_dir / HISTORY_NAME, step, write=rank_ == 0)
    return progress, step, history


def _refuse_foreign_history(path: Path, last: dict[str, Any] | None, run_dir: Path) -> None:
    """Refuse a resume whose ``history.jsonl`` is another run's: its row at the checkpoint's last logged step
    must hold the loss the checkpoint recorded (a checkpoint copied in from another run kept the folder's
    rows, which then passed for the resumed run's). Checkpoints written before the record are not checked."""
    if not last:
        return
    want = last.get("loss")
    for row in _history_rows(path):
        if row.get("step") != last["step"]:
            continue
        got = row.get("loss")
        same = (
            got == want
            or (
                isinstance(got, (int, float))
                and isinstance(want, float)
                and math.isclose(got, want, rel_tol=1e-6)
            )
            or (got is None and isinstance(want, float) and not math.isfinite(want))  # null: NaN or ±inf
        )
        if same:
            return
        raise ConfigError(
            f"cannot resume {str(run_dir)!r}: its {HISTORY_NAME} is not this checkpoint's run (the loss at step "
            f"{last['step']} is {got} there, {want} in the checkpoint): was the checkpoint copied from another "
            "run? Put back the folder's own checkpoint, or copy the other run's whole folder"
        )
    # no row at that step: the history was cut (a torn file), and the rows kept are earlier ones


def _train_step(
    config: TrainConfig, device: torch.device, data: TrainingData, parts: _Parts, latest: _LatestCheckpoint
) -> TrainStep:
    """The step of this run: the learner compiled first, then the views' rendering (``--compile``)."""
    forward = compile_learner(
        parts.learner,
        parts.net,
        compile=config.compile,
        model_only=compile_model_only(config.negatives),
    )
    views = TwoViews.create(
        parts.views1, parts.views2, parts.gen, compile=config.compile, channels_last=device.type == "cuda"
    )
    return TrainStep(
        learner=parts.learner,
        forward=forward,
        model=parts.model,
        key_encoder=parts.key_encoder,
        optimizer=parts.optimizer,
        scheduler=parts.scheduler,
        views=views,
        labels=data.labels.to(device),
        device=device,
        amp_dtype=parts.amp_dtype,
        skip_nonfinite=config.skip_nonfinite,
        last_good=latest.describe,
    )


def _banner(
    config: TrainConfig,
    device: torch.device,
    data: TrainingData,
    parts: _Parts,
    run_dir: Path,
    step: int,
    *,
    resumed: bool,
) -> str:
    """The lines ``contrastkit train`` prints before the first step: data, model, schedule, run folder."""
    world = world_size()
    splits = data.knn_splits
    assert splits.test is not None
    c, h, w = data.image_shape
    objective_params = ", ".join(f"{name}={value}" for name, value in objective_options(config).items())
    parallel = ""
    if world > 1:
        parallel = f" = {world} processes x {parts.shard} ({dist.get_backend()})" + (
            "; in-batch negatives per process (--negatives gather: the global batch)"
            if from_the_batch(config.negatives) and config.negatives != "gather"
            else ""
        )
    return (
        f"contrastkit train: data={splits.name} ({len(data)} train / {len(splits.test)} eval "
        f"[{data.eval_note}], {c}x{h}x{w}, {len(splits.train.classes)} classes, {data.where})\n"
        f"  encoder={_encoder_name(config, h)} objective={config.objective}({objective_params}) "
        f"negatives={config.negatives}{'+oracle' if config.oracle else ''} score={config.score}"
        f"{_negatives_note(config, parts.key_momentum, parts.refresh_every, device)}\n"
        f"  {config.epochs} epochs x {parts.steps_per_epoch} steps, batch {config.batch_size}{parallel}, "
        f"{config.optimizer} lr={config.lr:g} wd={config.weight_decay:g}, device={device}, "
        f"precision={_precision_name(parts.amp_dtype)}, seed={config.seed} split_seed={config.split_seed}"
        f"\n  run folder: {run_dir}"
        + (f"\n  resumed at step {step} of {parts.total_steps}" if resumed else "")
    )


def objective_options(config: TrainConfig) -> dict[str, Any]:
    """The options of :data:`OBJECTIVE_OPTIONS` that ``config``'s objective takes (the parameters of its
    class in the registry :data:`~contrastkit.objectives.OBJECTIVES`), with their values, in that order."""
    takes = inspect.signature(OBJECTIVES[config.objective]).parameters
    return {name: getattr(config, name) for name in OBJECTIVE_OPTIONS if name in takes}


def _precision_name(amp_dtype: torch.dtype | None) -> str:
    """``bf16`` for bf16 autocast, ``fp32`` without autocast."""
    return "fp32" if amp_dtype is None else str(amp_dtype).removeprefix("torch.").replace("bfloat", "bf")


@dataclass
class _Loop:
    """The epochs of a run, from where ``progress`` says: the batches through the step, the statistics read
    at the logging steps, the checkpoints, the stop signals and the kNN points at the epochs' ends.

    ``progress`` is what the checkpoint keeps of the loop (see :func:`_fresh_progress`): ``epoch`` and
    ``next_batch`` say where the run is. An epoch ends at ``next_batch == steps_per_epoch``; its end (the
    kNN point, when due) then moves ``progress`` on to the next epoch at batch 0. A checkpoint at an epoch's
    end is written after that, so it records the epoch's kNN; only a stop signal on an epoch's last step
    checkpoints before (at ``next_batch == steps_per_epoch``, the kNN still to do), so as not to keep the
    stop waiting.
    """

    config: TrainConfig
    device: torch.device
    data: TrainingData
    info: DataInfo
    fingerprint: dict[str, Any]  # the training data's, kept in every checkpoint
    parts: _Parts
    train_step: TrainStep
    run_dir: Path
    progress: dict[str, Any]
    step: int  # steps done
    history: list[dict[str, float]]
    log_every: int
    t_start: float  # this session's start (perf_counter)
    elapsed_base: float  # wall-clock of earlier sessions
    latest: _LatestCheckpoint
    board: _NoBoard
    clock: _Clock
    bar: Any
    pending: list[tuple[int, dict[str, Tensor]]] = field(default_factory=list)  # stats not read yet
    _stepped: bool = False  # this session has made a step (its first holds the compilation)

    @property
    def main(self) -> bool:
        return rank() == 0

    def run(self, stop: StopSignals) -> None:
        """Train to the end of the last epoch (a stop signal, caught by ``stop``, which the caller holds
        open, raises TrainingInterrupted at the next step boundary, after a checkpoint)."""
        self.bar.update(self.step)
        self.parts.learner.train()
        self.clock.start()
        while self.progress["epoch"] < self.config.epochs:
            epoch = self.progress["epoch"]
            try:
                for idx, batch in self._batches():
                    self._step(idx, batch, epoch, stop)
            except UndecodableImageError as exc:
                self._undecodable(exc, epoch)
            self._end_epoch(epoch)
        self.clock.stop()
        self.bar.close()

    def _batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """This rank's shard of each global batch of the epoch, from its next batch on; the epoch's order is
        drawn first if it was not yet (on rank 0, from the views' generator, and broadcast)."""
        progress, parts = self.progress, self.parts
        world, rank_ = world_size(), rank()
        if progress["order"] is None:
            n_train = len(self.data)
            if rank_ == 0:
                order = torch.randperm(n_train, device=self.device, generator=parts.gen)
            else:
                order = torch.empty(n_train, dtype=torch.long, device=self.device)
            if world > 1:
                dist.broadcast(order, src=0)  # one order of global batches for every rank
            progress["order"] = order
        return self.data.epoch_batches(
            progress["order"].to(self.device),
            progress["next_batch"],
            self.config.batch_size,
            slice(rank_ * parts.shard, (rank_ + 1) * parts.shard),
            self.device,
        )

    def _step(self, idx: Tensor, batch: Tensor, epoch: int, stop: StopSignals) -> None:
        """One step, then what comes at its boundary: reading the statistics, a stop, a checkpoint."""
        progress = self.progress
        first = not self._stepped
        before = self.clock.seconds()
        stats, skipped = self.train_step(idx, batch, self.step + 1)
        if first:  # this session's first step holds torch.compile's compilation: timed apart (a sync)
            self._stepped = True
            self.clock.stop()
            self.clock.start()
            progress["first_step_seconds"] = [
                *progress.get("first_step_seconds", []),
                self.clock.seconds() - before,
            ]
        if skipped:
            progress["skipped_steps"] += 1
        self.step += 1
        progress["next_batch"] += 1
        self.pending.append((self.step, stats))
        epoch_done = progress["next_batch"] == self.parts.steps_per_epoch
        at_sync = self.step % self.log_every == 0 or epoch_done
        if at_sync:
            self.drain()
        self.bar.update(1)
        # with several processes they agree on a stop at the logging steps (a signal may reach them at
        # different steps; they must checkpoint at the same one)
        requested = (
            stop.requested if world_size() == 1 else _agreed_signal(stop.requested, self.device, at_sync)
        )
        if requested is not None:
            self._stop(requested, epoch)
        every = self.config.checkpoint_every
        # one due on an epoch's last step (the run's last included) waits for the epoch's end (_end_epoch)
        if every and self.step % every == 0 and not epoch_done:
            self.checkpoint()

    def _stop(self, signum: int, epoch: int) -> NoReturn:
        self.checkpoint()
        self.bar.close()
        path, world = self.latest.path, world_size()
        raise TrainingInterrupted(
            f"{signal.Signals(signum).name} received: stopped at step {self.step} of {self.parts.total_steps} "
            f"(epoch {epoch + 1}) and wrote {path}; continue with: {resume_command(self.run_dir, world)}",
            signum=signum,
            checkpoint=path,
            step=self.step,
        )

    def _undecodable(self, exc: UndecodableImageError, epoch: int) -> NoReturn:
        """A streamed training image cannot be decoded: its record (name, size, CRC-32) is added to the run
        folder's ``undecodable.json``, so that a resume accepts that this file, and nothing else, changed;
        the steps done since the last checkpoint are checkpointed (one process: with several, the others are
        in the step's collectives); the run stops naming the file and how to go on."""
        self.bar.close()
        world, total = world_size(), self.parts.total_steps
        where = f"at step {self.step + 1} of {total} (epoch {epoch + 1})"
        problem = f"{exc.problem} {where}"
        if exc.name is None or self.data.source is None:
            raise UndecodableImageError(f"{problem}; {REPLACE_ADVICE}", problem=problem) from None
        record_undecodable(self.run_dir, self.data.source, exc.name, self.step + 1, self.latest.step)
        if world == 1 and self.step > 0 and self.latest.step != self.step:
            self.checkpoint()
        if self.latest.step is not None and not Path(self.data.source).exists():  # the data itself is gone
            then = (
                f"{self.latest.path} holds the state after step {self.latest.step}: put the data back and "
                f"continue with: {resume_command(self.run_dir, world)} (or, if it was moved, add --data NEW_PATH)"
            )
        elif self.latest.step is None:
            then = (
                "no checkpoint was written before it: once the file is fixed, start the run again with "
                f"another --out (or remove {self.run_dir} first)"
            )
        else:
            then = (
                f"{self.latest.path} holds the state after step {self.latest.step}: replace the file with "
                "a readable copy under the same name and continue with: "
                f"{resume_command(self.run_dir, world)} (the resume accepts that this file changed, listed in "
                f"{self.run_dir / UNDECODABLE_NAME}; removing or renaming a file changes the data set, which "
                "needs a new run)"
            )
        raise UndecodableImageError(
            f"{problem}; {then}", problem=problem, index=exc.index, name=exc.name
        ) from None

    def _end_epoch(self, epoch: int) -> None:
        """The epoch's kNN point when due (every ``--knn-every`` epochs, and after the last), then on to the
        next epoch, with a checkpoint when one is due: every epoch without ``--checkpoint-every``, else when
        the epoch's last step was a multiple of it, or when the latest checkpoint is at this very step (a stop
        there, before the kNN: written again, so that a later resume does not evaluate the epoch again)."""
        config = self.config
        is_last = epoch == config.epochs - 1
        if is_last and self.latest.step != self.step:
            # the last step's checkpoint (not finished, its kNN still to do) before the final evaluation: a
            # kill or a second signal from here on leaves a run that a resume just evaluates and finishes
            self.checkpoint(final=True)
        self.clock.stop()
        if is_last or (config.knn_every and (epoch + 1) % config.knn_every == 0):
            self._knn(epoch)
        self.progress.update(epoch=epoch + 1, next_batch=0, order=None)
        self.clock.start()
        every = config.checkpoint_every
        if not is_last and (not every or self.step % every == 0 or self.latest.step == self.step):
            self.checkpoint()

    def _knn(self, epoch: int) -> None:
        """kNN top-1 of the model after ``epoch`` (0-based): into the curve, TensorBoard and the log."""
        parts = self.parts
        acc = _on_rank0(lambda: parts.evaluator.model_accuracy(parts.model, parts.amp_dtype))
        if not math.isfinite(acc):  # non-finite features (KnnEvaluator.accuracy): the model diverged
            self._refuse_diverged_features(epoch)
        self.progress["knn_curve"].append(
            {"epoch": epoch + 1, "step": self.step, "train_seconds": self.clock.seconds(), "knn_top1": acc}
        )
        self.board.scalar("knn/top1", acc, self.step)
        self.bar.write(
            f"epoch {epoch + 1}/{self.config.epochs}  loss {self.progress['last_loss']:.4f}  kNN top-1 {acc:.4f}",
            file=sys.stderr,
        )

    def _refuse_diverged_features(self, epoch: int) -> None:
        """Raise :class:`TrainingError` for a model whose features are not finite although its state is: the
        weights grew until the encoder's outputs overflow (a loss still finite, if huge). Such a model cannot
        be evaluated, embedded or trained on; metrics.json is not written, and no resume can help. A state
        that is not finite either (a kNN point between checkpoints) gets :meth:`_refuse_nonfinite`'s error."""
        self._refuse_nonfinite(self._state(), final=epoch == self.config.epochs - 1)
        latest = self.latest
        last = "" if latest.step is None or latest.step != self.step else " It holds this diverged model."
        # unnormalised embeddings under a dot-product score can grow without bound
        score = " (or --score cosine, which bounds the scores)" if self.config.score == "dot" else ""
        raise TrainingError(
            f"the run diverged: after epoch {epoch + 1} (step {self.step} of {self.parts.total_steps}) the "
            f"encoder's features of the kNN images are NaN or infinite although its weights are finite (they "
            f"grew until its outputs overflow; the last loss read was {self.progress['last_loss']:.6g}); "
            f"metrics.json was not written. {latest.describe()}{last} Start a new run with "
            f"{nonfinite_advice(self.parts.amp_dtype)}{score}."
        )

    def drain(self) -> None:
        """Read the queued statistics (one synchronisation), stop on a non-finite loss, log them."""
        if self.pending and self.clock.device.type == "cuda":
            # the drain's synchronisation, made before the clock is read: the rows' seconds (and images/s)
            # then hold the GPU work still queued; the read below has nothing left to wait for
            torch.cuda.synchronize(self.clock.device)
        seconds = self.clock.seconds()
        rows = _drain(
            self.pending,
            self.history,
            self.progress["epoch"],
            self.run_dir,
            seconds,
            allow_nonfinite=self.config.skip_nonfinite,
            last_good=self.latest.describe(),
            resumable=self.latest.step is not None,
            write=self.main,
            amp_dtype=self.parts.amp_dtype,
        )
        if rows:
            self.progress["last_loss"] = rows[-1]["loss"]
            images_per_second = self.step * self.config.batch_size / max(seconds, 1e-9)
            self.bar.set_postfix(loss=f"{self.progress['last_loss']:.3f}", img_s=f"{images_per_second:.0f}")
            self.board.rows(rows, images_per_second)

    def _state(self) -> dict[str, Any]:
        return _state(self.config, self.info, self.parts, self.step, self.progress, self.fingerprint)

    def _refuse_nonfinite(self, state: dict[str, Any], *, final: bool) -> None:
        """Raise :class:`TrainingError` when ``state`` (a checkpoint payload) holds a non-finite tensor: the
        latest checkpoint, finite, is left as it is, and the message names the step, the tensors and what to
        do. BatchNorm's running variance overflows to inf while the loss stays finite (the batch's own
        statistics normalise it), so the parameters and the loss alone do not tell."""
        bad = nonfinite_state(state, self.device)
        if not bad:
            return
        latest = self.latest
        if final:
            what = "the final model and metrics.json were not written"
        else:
            what = "the checkpoint was not written" if latest.step is None else "it was not saved"
        if latest.step is not None:
            then = (
                f"Resume from it with {resume_command(self.run_dir, world_size())} --skip-nonfinite (steps "
                f"that make the state non-finite are then skipped), or start a new run with {nonfinite_advice(self.parts.amp_dtype)}."
            )
        else:
            then = (
                "Start a new run (another --out, or remove this folder) with "
                f"{nonfinite_advice(self.parts.amp_dtype)}."
            )
        raise TrainingError(
            f"the model's state became non-finite by step {self.step} of {self.parts.total_steps} "
            f"(epoch {max(self.step - 1, 0) // self.parts.steps_per_epoch + 1}): {_name_some(bad)} "
            f"({len(bad)} tensor{'s' if len(bad) != 1 else ''} with NaN or inf; the loss may stay finite while "
            f"BatchNorm's running statistics overflow); {what}. "
            f"{latest.describe()} {then}"
        )

    def checkpoint(self, *, final: bool = False) -> None:
        """Write the checkpoint of this step (after reading the statistics, with the clock stopped); never
        over a good one with a non-finite state (parameters, buffers, key encoder, queue, optimizer).
        ``final``: the last step's, before the final evaluation (a refusal says no final model is written)."""
        self.drain()
        self.clock.stop()
        self.progress["train_seconds"] = self.clock.seconds()
        self.progress["elapsed_seconds"] = self.elapsed_base + time.perf_counter() - self.t_start
        if self.history:  # the resume checks that history.jsonl is this run's (not a copied checkpoint's)
            last = self.history[-1]
            self.progress["history_last_row"] = {"step": last["step"], "loss": last.get("loss")}
        state = self._state()
        self._refuse_nonfinite(state, final=final)
        self.board.flush()  # the points up to this step are on disk first: a resume writes only later ones
        if self.main:
            save_checkpoint(state, self.latest.path)
        self.latest.step = self.step
        self.clock.start()

    def final_state(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """The state of the last checkpoint; a non-finite one is refused (:meth:`_refuse_nonfinite`), the
        latest checkpoint kept."""
        self.progress["train_seconds"] = metrics["train_seconds"]
        state = self._state()
        self._refuse_nonfinite(state, final=True)
        return state

    def finish(self, state: dict[str, Any], metrics: dict[str, Any]) -> None:
        """The last checkpoint (``state`` from :meth:`final_state`), marked finished, with the metrics (but
        the kNN curve, in its progress)."""
        if self.main:
            save_checkpoint(
                {
                    **state,
                    "finished": True,
                    "metrics": {k: v for k, v in metrics.items() if k != "knn_curve"},
                },
                self.latest.path,
            )
        self.board.close()


def _final_metrics(
    config: TrainConfig,
    data: TrainingData,
    progress: dict[str, Any],
    history: list[dict[str, float]],
    *,
    steps: int,
    train_seconds: float,
    total_seconds: float,
    device: torch.device,
    mined: bool,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """``metrics.json``: the last kNN point against the untrained model and raw pixels, and the run's
    numbers. ``knn_protocol`` records how the kNN monitor measured (features under the run's autocast
    ``precision``, on ``images`` train + eval images, subsets of at most ``knn_images`` per split or null for
    every image, the split of ``split_seed``); ``environment`` what the numbers depend on beyond the
    configuration (:func:`_environment`; ``session_environments``: each session's, for a resumed run);
    ``config`` the resolved configuration, as in ``config.yaml``."""
    train_set, test_set = data.knn_splits.train, data.knn_splits.test
    assert test_set is not None
    knn_curve = progress["knn_curve"]
    firsts = list(progress.get("first_step_seconds", []))
    metrics = {
        "knn_top1": knn_curve[-1]["knn_top1"],
        "knn_top1_random_init": progress["knn_top1_random_init"],
        "knn_top1_raw_pixels": progress["knn_top1_raw_pixels"],
        "knn_protocol": {
            "k": min(config.knn_k, len(train_set)),
            "temperature": config.knn_temperature,
            "features": "backbone, L2-normalised",
            "train_images": len(train_set),
            "eval_images": len(test_set),
            "data_placement": data.where,
            "eval_split": data.eval_note,
            "split_seed": config.split_seed,
            # the learned and the random-init encoder's features (raw pixels: fp32), as trained
            "precision": _precision_name(amp_dtype),
            "images": len(train_set) + len(test_set),
            "knn_images": data.knn_images,  # the --knn-images cap applied to each split (null: none)
        },
        "final_loss": progress["last_loss"],
        # InfoNCE's bound log(N + 1) - L; null for the other objectives (their loss bounds nothing)
        "final_mi_bound_nats": history[-1].get("mi_bound", float("nan")) if history else float("nan"),
        "epochs": config.epochs,
        "steps": steps,
        "skipped_steps": progress["skipped_steps"],
        "resumed_at_steps": progress["resumed_at_steps"],
        "train_seconds": train_seconds,
        "total_seconds": total_seconds,
        "images_per_second": steps * config.batch_size / max(train_seconds, 1e-9),
        # each session's first step (compilation under --compile) left out: the steady throughput
        "first_step_seconds": firsts,
        "images_per_second_after_first_step": (
            (steps - len(firsts)) * config.batch_size / max(train_seconds - sum(firsts), 1e-9)
            if steps > len(firsts)
            else float("nan")  # no step but first ones
        ),
        "device": str(device),
        "processes": world_size(),
        **_environments(progress, device),
        "config": config.to_dict(),  # resolved, as in config.yaml (key_momentum, split_seed, ...)
        "knn_curve": knn_curve,
    }
    if mined:
        metrics["mined_index_refresh_seconds"] = sum(r.get("mined_refresh_seconds", 0.0) for r in history)
    warnings = []
    skipped = progress["skipped_steps"]
    if steps and skipped > SKIPPED_WARNING_SHARE * steps:
        warnings.append(
            f"--skip-nonfinite skipped {skipped} of {steps} steps ({skipped / steps:.0%}): the model was "
            f"updated in only {steps - skipped} of them, so this is not the run that was asked for. Start a "
            f"new run with {nonfinite_advice(amp_dtype)}"
        )
    if len(train_set.classes) < 2:
        warnings.append(
            f"the data has {len(train_set.classes)} class ({', '.join(train_set.classes) or 'none'}): the kNN "
            "accuracies are 1.0 by construction and mean nothing; give labelled data of several classes "
            "(one sub-folder per class) to monitor the encoder"
        )
    unseen = unseen_classes_warning(
        train_set.labels,
        test_set.labels,
        list(train_set.classes),
        unseen_classes_advice(config.limit, data.eval_note),
    )
    if unseen is not None:
        warnings.append(unseen)
    # (a run that skipped most of its steps has its warning already, with the same advice)
    collapse = _collapse_warning(
        metrics["knn_top1"], metrics["knn_top1_random_init"], len(train_set.classes), config
    )
    if collapse and not warnings:
        warnings.append(collapse)
    if warnings:
        metrics["warnings"] = warnings
    return metrics


def unseen_classes_advice(limit: int | None, eval_split: str, *, retrain: bool = False) -> str:
    """What to do about eval classes without training images (:func:`unseen_classes_warning`): a larger
    ``--limit`` (for ``eval``, ``retrain``: a new run, since eval keeps the run's limit on held-out data),
    or training images of every class. ``eval_split`` is the data's note (``"held out ..."`` without a
    ``test/`` split: the eval images are a fifth of the ``--limit`` images)."""
    if limit is None:
        return "give every class of the eval images some training images"
    if eval_split.startswith("held out"):
        where = (
            f"the eval images are {HELD_OUT_FRACTION:.0%} held out of the --limit images, so every class "
            "needs several of them"
        )
    else:
        where = "each split needs images of every class"
    start = "train again with" if retrain else "start a new run with"
    return f"{start} a larger --limit than {limit} (images per split, class-balanced: {where}), or none"


def _environment(device: torch.device) -> dict[str, Any]:
    """What a run's numbers depend on beyond its configuration: the versions of contrastkit, torch and Python,
    torch's CPU threads (1 and 2 threads train other weights on the CPU), the device and its name, and whether
    deterministic algorithms are on."""
    return {
        "contrastkit": __version__,
        "torch": str(torch.__version__),  # a str subclass, which the checkpoint would not load
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cuda": str(torch.version.cuda) if device.type == "cuda" else None,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
    }


def _cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what :mod:`platform` knows of it."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _environments(progress: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """metrics.json's ``environment`` (this session's, :func:`_environment`) and, for a resumed run,
    ``session_environments``: every session's, with the step it started from (a session of a checkpoint
    written before they were recorded is missing)."""
    found: dict[str, Any] = {"environment": _environment(device)}
    if progress.get("resumed_at_steps"):
        found["session_environments"] = list(progress.get("session_environments", []))
    return found


def _collapse_warning(learned: Any, random_init: Any, classes: int, config: TrainConfig) -> str | None:
    """The warning for a run whose final kNN top-1 is near chance (at most ``COLLAPSE_CHANCE_FACTOR`` times
    1 / classes, and not more than ``COLLAPSE_IMPROVED`` above the untrained encoder's) or well below the
    untrained encoder's (by more than ``COLLAPSE_BELOW_RANDOM``): its representation most likely collapsed.
    None for a healthy run, for one class, and for a NaN."""
    if classes < 2 or not isinstance(learned, (int, float)) or not math.isfinite(learned):
        return None
    chance = 1.0 / classes
    known = isinstance(random_init, (int, float)) and math.isfinite(random_init)
    reasons = []
    if learned <= COLLAPSE_CHANCE_FACTOR * chance and not (
        known and learned > random_init + COLLAPSE_IMPROVED
    ):
        reasons.append(
            f"near chance level (at most {COLLAPSE_CHANCE_FACTOR:g} x 1/{classes} classes = "
            f"{COLLAPSE_CHANCE_FACTOR * chance:.3f}"
            + (
                f", and at most {COLLAPSE_IMPROVED:g} above the untrained encoder's {random_init:.4f})"
                if known
                else ")"
            )
        )
    if known and learned < random_init - COLLAPSE_BELOW_RANDOM:
        reasons.append(f"well below the same encoder's at random initialisation ({random_init:.4f})")
    if not reasons:
        return None
    lr = f" (this run had {config.lr:g})" if isinstance(config.lr, (int, float)) else ""
    temperature = f" (this run had {config.temperature:g})" if isinstance(config.temperature, float) else ""
    return (
        f"the learned encoder's kNN top-1 {learned:.4f} is {' and '.join(reasons)}: the representation "
        f"likely collapsed. Start a new run with a lower --lr{lr} or another --temperature{temperature}"
    )


def _train_set_embedder(
    model: ContrastiveModel,
    evaluator: KnnEvaluator,
    score: Score,
    autocast_dtype: torch.dtype | None,
    images: Tensor,
) -> Any:
    """The mined negatives' ``embed_all``: every training image (``images``, dataset index order) by the
    current model (eval mode, no grad).

    With several processes each embeds a contiguous shard and the shards are all-gathered, so every rank
    builds the same index from the same (N_train, D) embeddings.
    """

    def embed_all() -> Tensor:
        world = world_size()
        if world == 1:
            return evaluator.embed_train(model, score, autocast_dtype, images=images)
        n = images.shape[0]
        per = -(-n // world)
        lo = min(rank() * per, n)
        part = evaluator.embed_train(model, score, autocast_dtype, slice(lo, min(lo + per, n)), images=images)
        return all_gather_no_grad(part)

    return embed_all


def _item_encoder(
    model: ContrastiveModel, fetch: Callable[[Tensor], Tensor], item_views: _ItemViews, score: Score
) -> Any:
    """``--mined-reencode`` (ANCE): prepared projections of training items by the model being trained, with
    gradient. Each item is rendered as a fresh training view (the first view's augmentation, drawn from
    ``item_views``' generator, read at each call), like the positives: clean images among augmented ones
    would be a shortcut (on digits the loss fell to 0 by telling the unaugmented negatives apart, and kNN
    collapsed). The model stays in training mode; it is called directly, not through DDP: its gradient joins
    the same backward pass."""

    def encode_items(ids: Tensor) -> Tensor:
        batch = fetch(ids)
        views = item_views.views
        with torch.autocast(batch.device.type, enabled=False):  # float32, as the training views (TrainStep)
            x = views.render(batch, views.sample(batch, generator=item_views.generator))
        if x.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return score.prepare(model(x).float())

    return encode_items


def _on_rank0(fn: Any) -> Any:
    """``fn()`` computed on rank 0 and broadcast to every rank (kNN evaluation)."""
    return broadcast_object(fn() if rank() == 0 else None)


def _agreed_signal(requested: int | None, device: torch.device, at_sync: bool) -> int | None:
    """With several processes: the stop signal any rank has received, agreed at a logging step."""
    if not at_sync:
        return None
    flag = torch.tensor([requested or 0], dtype=torch.long, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) or None


def resume_command(run_dir: Path, world: int) -> str:
    """The command that resumes ``run_dir`` (under torchrun for a run of several processes)."""
    if world > 1:
        return f"torchrun --standalone --nproc-per-node {world} -m contrastkit train --resume {run_dir}"
    return f"contrastkit train --resume {run_dir}"


def _refuse_existing_run(run_dir: Path) -> None:
    """A new run's folder, checked and created before any work (:func:`prepare_run_dir`): a path that is a
    file, a folder that cannot be created or written, and a folder holding any run's files (a checkpoint,
    metrics.json, config.yaml, history.jsonl, of any command) are refused, and nothing in them is touched;
    an unfinished image run is pointed to --resume."""
    hint = "choose another --out or remove it"
    path = run_dir / CHECKPOINT_NAME
    if path.is_file():
        try:
            state = load_checkpoint(path)
            if "progress" in state and not state.get("finished"):
                hint = (
                    f"it stopped at step {state['step']} of {state['progress']['total_steps']}: continue it "
                    f"with {resume_command(run_dir, int(state['progress'].get('world_size', 1)))}, or choose "
                    "another --out"
                )
        except ContrastkitError:
            pass
    prepare_run_dir(run_dir, hint=hint, lock=rank() == 0)  # one process of a launch holds the folder


def _run_dir_refusal(run_dir: Path) -> str | None:
    """:func:`_refuse_existing_run`'s refusal as a message (None: the folder is ready)."""
    try:
        _refuse_existing_run(run_dir)
    except ConfigError as exc:
        return str(exc)
    return None


def _make_deterministic(device: torch.device) -> None:
    """Deterministic kernels (CUDA's cuBLAS needs its workspace setting before its first use)."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def _state(
    config: TrainConfig,
    info: DataInfo,
    parts: _Parts,
    step: int,
    progress: dict[str, Any],
    fingerprint: dict[str, Any],
) -> dict[str, Any]:
    """Everything a resume needs, as a checkpoint payload (tensors, numbers, strings, lists, dicts).

    ``fingerprint`` is the training data's (:meth:`TrainingData.fingerprint`): a resume on other data is
    refused (:func:`_check_same_data`). With several processes the random states are lists, one per rank (a
    collective: every rank calls this).
    """
    order = progress["order"]
    view_rng: Any = parts.gen.get_state()
    global_rng: Any = rng_state()
    item = parts.item_views
    # --mined-reencode's own generator (none when it shares the views': a run from an older checkpoint)
    own: dict[str, Any] = {}
    if item is not None and item.generator is not parts.gen:
        own["reencode_rng"] = item.generator.get_state()
    if world_size() > 1:
        view_rng, global_rng = all_gather_objects(view_rng), all_gather_objects(global_rng)
        own = {k: all_gather_objects(v) for k, v in own.items()}
    return {
        "config": config.to_dict(),
        "data_info": info.to_dict(),
        "data_fingerprint": dict(fingerprint),
        "model": parts.model.state_dict(),
        "negatives": parts.learner.negatives.state_dict(),
        "key_encoder": None if parts.key_encoder is None else parts.key_encoder.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "epoch": progress["epoch"],
        "step": step,
        "finished": False,
        "progress": {
            **progress,
            "order": None if order is None else order.cpu(),
            "view_rng": view_rng,
            "global_rng": global_rng,
            **own,
        },
    }


def _check_same_data(
    saved: dict[str, Any], fingerprint: dict[str, Any], config: TrainConfig, run_dir: Path, data: TrainingData
) -> str | None:
    """Refuse to resume on training data other than the run's (the saved epoch order, the mined negatives'
    index and the step count all index its items), naming what differs, old against new. A checkpoint
    written before fingerprints were kept has none and is not checked; only what both sides hold is
    compared (a checkpoint from before ``contents_sha256`` was kept resumes without the contents check).
    Images the run could not decode (``undecodable.json``) may have been replaced: when the contents
    differ, they are compared with those images' records as they were; a match is accepted, and the note
    naming them is returned."""
    old = saved.get("data_fingerprint")
    if not isinstance(old, dict):
        return None
    note = None
    changed = []
    if "train_items" in old and old["train_items"] != fingerprint["train_items"]:
        changed.append(f"training images: run had {old['train_items']}, now {fingerprint['train_items']}")
    if "image_shape" in old and list(old["image_shape"]) != list(fingerprint["image_shape"]):
        shape = "x".join(map(str, old["image_shape"])), "x".join(map(str, fingerprint["image_shape"]))
        changed.append(f"image shape: run had {shape[0]}, now {shape[1]}")
    if (
        old.get("names_sha256") is not None
        and fingerprint.get("names_sha256") is not None
        and old["names_sha256"] != fingerprint["names_sha256"]
    ):
        changed.append(
            "the training images' file names differ (files added, removed or renamed; names hash "
            f"{old['names_sha256'][:12]} then, {fingerprint['names_sha256'][:12]} now)"
        )
    elif (
        old.get("contents_sha256") is not None
        and fingerprint.get("contents_sha256") is not None
        and old.get("contents", fingerprint.get("contents")) == fingerprint.get("contents")
        and old["contents_sha256"] != fingerprint["contents_sha256"]
    ):  # the same names (else said above), other contents: an image was replaced by another
        # only the records made after this checkpoint: an earlier one's file was counted, replaced, by it
        after = int(saved.get("step", 0))
        replaced = {n: r for n, r in undecodable_records(run_dir).items() if r["step"] > after}
        as_recorded = {name: r["record"] for name, r in replaced.items()}
        if (
            replaced
            and data.source is not None
            and data.names is not None
            and contents_fingerprint(data.source, data.names, as_recorded=as_recorded)["contents_sha256"]
            == old["contents_sha256"]
        ):
            shown = ", ".join(repr(n) for n in sorted(replaced)[:3]) + (
                f" and {len(replaced) - 3} more" if len(replaced) > 3 else ""
            )
            note = (
                f"resuming with {len(replaced)} image(s) the run could not decode, replaced since: {shown} "
                f"(listed in {run_dir / UNDECODABLE_NAME}); every other training image is as it was"
            )
        else:
            besides = (
                f", besides the image(s) listed in {run_dir / UNDECODABLE_NAME} as undecodable"
                if replaced
                else ""
            )
            changed.append(
                "the training images' contents differ under the same file names (an image was replaced by "
                f"another{besides}; {fingerprint.get('contents', 'contents')} hash "
                f"{old['contents_sha256'][:12]} then, {fingerprint['contents_sha256'][:12]} now)"
            )
    if "eval_items" in old and old["eval_items"] != fingerprint.get("eval_items"):
        changed.append(f"eval images: run had {old['eval_items']}, now {fingerprint.get('eval_items', 0)}")
    elif old.get("eval_names_sha256") not in (
        None,
        fingerprint.get("eval_names_sha256", old.get("eval_names_sha256")),
    ):
        changed.append(
            "the eval images' file names differ (files added, removed or renamed in the test split)"
        )
    if changed:
        raise ConfigError(
            f"cannot resume {str(run_dir)!r}: its training data ({config.data}) changed since the run started "
            f"({'; '.join(changed)}). The saved epoch order and state index the old images: put the data back "
            "as it was, or start a new run (another --out)"
        )
    return note


def _load_states(saved: dict[str, Any], run_dir: Path, parts: _Parts) -> None:
    """Load a checkpoint's states into freshly built pieces; a mismatch is a clear error."""
    try:
        parts.model.load_state_dict(saved["model"])
        parts.learner.negatives.load_state_dict(saved["negatives"])
        if parts.key_encoder is not None:
            parts.key_encoder.load_state_dict(saved["key_encoder"])
        parts.optimizer.load_state_dict(saved["optimizer"])
        parts.scheduler.load_state_dict(saved["scheduler"])
    except ContrastkitError:
        raise  # already says what is wrong (faiss missing for a mined index, ...); not a misfit
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        first = first_mismatch(exc)  # the first missing, unexpected or size-mismatched key
        raise ConfigError(
            f"the checkpoint in {str(run_dir)!r} does not fit the model this configuration builds ({first}); "
            "it was written by another version of contrastkit or for another setting: start a new run"
        ) from None


def _truncate_history(path: Path, step: int, *, write: bool = True) -> list[dict[str, float]]:
    """The history up to ``step`` (the checkpoint's); later rows, and a torn last line, are dropped (from
    the file too, with ``write``)."""
    rows = [
        {k: float("nan") if v is None else v for k, v in row.items()}  # null: NaN
        for row in _history_rows(path)
        if row.get("step", step + 1) <= step
    ]
    if not write:
        return rows
    text = "".join(json.dumps(json_safe(r), allow_nan=False) + "\n" for r in rows)
    write_atomic(path, lambda f: f.write(text), binary=False)
    return rows


def _history_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of ``history.jsonl`` as written (``null`` kept); torn or foreign lines are skipped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _last_good(path: Path, step: int | None) -> str:
    if step is None:
        return "No checkpoint was written for this run yet."
    return f"The latest checkpoint is {path} (step {step})."


def _floating_tensors(value: Any, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
    """``(dotted name, tensor)`` of every non-empty floating tensor in a (nested) checkpoint payload."""
    from contrastkit.training.checkpoint import named_tensors

    return ((n, t) for n, t in named_tensors(value, prefix) if t.is_floating_point() and t.numel())


def nonfinite_state(state: dict[str, Any], device: torch.device) -> list[str]:
    """The names of the floating tensors of a checkpoint payload (:func:`_state`: the model's parameters and
    buffers, the key encoder's, the negative source's queue or index embeddings, the optimizer's state) that
    hold a NaN or an infinity; empty when all are finite. One synchronisation; with several processes the
    ranks agree (a tensor is named when it is non-finite on any of them)."""
    named = [(n, t) for key, v in state.items() if key != "progress" for n, t in _floating_tensors(v, key)]
    if not named:
        return []
    flags = torch.stack([torch.isfinite(t.detach()).all().to(device) for _, t in named]).float()
    if world_size() > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MIN)
    return [name for (name, _), ok in zip(named, flags.tolist(), strict=True) if not ok]


def _name_some(names: list[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


class _Clock:
    """Training wall-clock: accumulates only while running (kNN evaluation and checkpoints excluded)."""

    def __init__(self, seconds: float, device: torch.device) -> None:
        self.base = float(seconds)
        self.since: float | None = None
        self.device = device

    def start(self) -> None:
        self.since = time.perf_counter()

    def stop(self) -> None:
        if self.since is not None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.base += time.perf_counter() - self.since
            self.since = None

    def seconds(self) -> float:
        return self.base + (time.perf_counter() - self.since if self.since is not None else 0.0)


class _NoBoard:
    def rows(self, rows: list[dict[str, float]], images_per_second: float) -> None: ...
    def scalar(self, tag: str, value: float, step: int) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class _Board(_NoBoard):
    """Scalars for TensorBoard in RUN/tensorboard: every history column under train/, kNN under knn/."""

    def __init__(self, log_dir: Path, purge_step: int | None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "--tensorboard needs the tensorboard package: pip install 'contrastkit[tensorboard]' "
                "(or pip install tensorboard)"
            ) from None
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def rows(self, rows: list[dict[str, float]], images_per_second: float) -> None:
        for row in rows:
            for key, value in row.items():
                if key not in ("step", "epoch", "seconds") and math.isfinite(value):
                    self.writer.add_scalar(f"train/{key}", value, row["step"])
        self.writer.add_scalar("train/images_per_second", images_per_second, rows[-1]["step"])

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _board(config: TrainConfig, run_dir: Path, step: int) -> _NoBoard:
    if not config.tensorboard:
        return _NoBoard()
    return _Board(run_dir / "tensorboard", purge_step=step + 1 if step else None)


def _drain(
    pending: list[tuple[int, dict[str, Tensor]]],
    history: list[dict[str, float]],
    epoch: int,
    run_dir: Path,
    seconds: float,
    *,
    allow_nonfinite: bool = False,
    last_good: str = "",
    resumable: bool = False,
    write: bool = True,
    amp_dtype: torch.dtype | None = None,
) -> list[dict[str, float]]:
    """Read the queued step statistics from the device (one synchronisation); stop on a non-finite loss.

    Each pending entry maps names to 0-d tensors: ``loss``, ``mi_bound``, ``lr``, ``skipped`` and any
    statistics of the negative source (MoCHi's proxy accuracy, mined negatives' index staleness, ...); all
    of them go into ``history`` and, with ``write``, are appended to ``history.jsonl`` in the run folder,
    one JSON object per step, with ``seconds`` (training wall-clock so far, the same for every step of one
    drain). With several processes every value is the mean over the ranks (one all-reduce), so every rank
    logs, and stops on, the same numbers. Returns the new rows.
    """
    if not pending:
        return []
    flat = torch.stack([t.detach().float().reshape(()) for _, stats in pending for t in stats.values()])
    if world_size() > 1:
        dist.all_reduce(flat)
        flat = flat / world_size()
    values = iter(flat.cpu().tolist())
    rows = []
    for step, stats in pending:
        row = {name: next(values) for name in stats}
        if not math.isfinite(row["loss"]) and not allow_nonfinite:
            then = (
                f"Resume it with: {resume_command(run_dir, world_size())} --skip-nonfinite, or start a new run"
                if resumable
                else "Start a new run"
            )
            raise TrainingError(
                f"the loss became {row['loss']} at step {step} (epoch {epoch + 1}). {last_good} {then} with "
                f"{nonfinite_advice(amp_dtype)}."
            )
        rows.append({"step": step, "epoch": epoch + 1, "seconds": seconds, **row})
    history.extend(rows)
    pending.clear()
    if write:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(run_dir / HISTORY_NAME, "a", encoding="utf-8") as f:
                for row in rows:  # strict JSON: a skipped step's NaN loss is null (read back as NaN)
                    f.write(json.dumps(json_safe(row), allow_nan=False) + "\n")
        except OSError as exc:  # a full disk: the checkpoint kept is older than these rows
            raise cannot_write(run_dir / HISTORY_NAME, exc) from exc
    return rows


def check_combinations(config: TrainConfig, *, new_run: bool = True) -> None:
    """Refuse option combinations that cannot work, naming the options (the config checks single values).
    ``new_run`` False (a resume): checks added after a run may have started are skipped, so that such a run
    resumes as it ran."""
    check_option_combinations(config)
    if config.negatives == "gather" and not is_distributed():
        raise ConfigError(
            "--negatives gather gathers negatives across processes, but torch.distributed is not initialised: "
            "launch with torchrun (e.g. torchrun --standalone --nproc-per-node 2 -m contrastkit train ...), "
            "or use --negatives in-batch on one process"
        )
    if config.data_placement == "stream" and "mined" in config.negatives:
        raise ConfigError(
            f"--negatives {config.negatives} indexes the whole training set in memory, which "
            "--data-placement stream does not hold: use --data-placement auto (or host), or another --negatives"
        )
    world = world_size()
    if world > 1 and config.batch_size % world:
        raise ConfigError(
            f"--batch-size {config.batch_size} is the global batch, split evenly over the {world} processes: "
            f"use a multiple of {world} (e.g. --batch-size {max(config.batch_size // world, 1) * world})"
        )
    # in-batch negatives are the other images of the (per-process) batch; gather's, of the global batch
    batch = config.batch_size if config.negatives == "gather" else config.batch_size // world
    if from_the_batch(config.negatives) and batch < 2:
        where = f" on each of the {world} processes" if world > 1 and config.negatives != "gather" else ""
        least = 2 * world if where else 2
        raise ConfigError(
            f"--negatives {config.negatives} takes each image's negatives from the other images of its batch, "
            f"but a batch of {batch}{where} has none (the loss would be exactly 0 and nothing learnt): use "
            f"--batch-size {least} or more, or --negatives queue (or mined), whose negatives do not come "
            "from the batch"
        )
    in_batch = 2 * batch - 2  # each query's in-batch negatives on its process
    if new_run:
        refuse_unit_score_objective(config.objective, config.score)
    # (new runs only: a run started before this check took what there was, and resumes doing so)
    if new_run and world > 1 and config.negatives == "in-batch+mochi" and config.mix_hardest > in_batch:
        raise ConfigError(
            f"--mix-hardest {config.mix_hardest} asks MoCHi for the {config.mix_hardest} hardest negatives of "
            f"each query, but in-batch negatives come from each process's share of the batch: --batch-size "
            f"{config.batch_size} over {world} processes gives each query only 2 x {batch} - 2 = {in_batch}: "
            f"use --mix-hardest {max(in_batch, 1)} or less, or a larger --batch-size"
        )


def _negatives_note(
    config: TrainConfig, key_momentum: float, refresh_every: int, device: torch.device
) -> str:
    parts = []
    if "mined" in config.negatives:
        parts.append(
            f"mined_negatives={config.mined_negatives} refresh_every={refresh_every} "
            f"index={resolve_index_kind(config.mined_index, device)} "
            f"reencode={'on' if config.mined_reencode else 'off'}"
        )
    if "queue" in config.negatives:
        parts.append(f"queue_size={config.queue_size}")
    if key_momentum > 0:
        parts.append(f"key_momentum={key_momentum:g} shuffle_bn_groups={config.shuffle_bn_groups}")
    elif "queue" in config.negatives:
        parts.append("key_momentum=0 (key encoder off)")
    if config.negatives.endswith("+mochi"):
        n, capped = config.mix_hardest, ""
        if config.negatives == "mined+mochi" and n > config.mined_negatives:  # MoCHi takes what there is
            n, capped = config.mined_negatives, f" (N: --mix-hardest {n} capped at the mined negatives)"
        parts.append(
            f"mix_start_epoch={config.mix_start_epoch:g} mix (N, s, s')=({n}, "
            f"{config.mix_synthetic}, {config.mix_query}){capped}"
        )
    return (" " + " ".join(parts)) if parts else ""


class _NoBar:
    def update(self, n: int) -> None: ...
    def set_postfix(self, **kw: Any) -> None: ...
    def close(self) -> None: ...
    def write(self, s: str, file: Any = None) -> None:
        print(s, file=file or sys.stderr, flush=True)


class _QuietBar(_NoBar):
    """The bar of ranks > 0: prints nothing."""

    def write(self, s: str, file: Any = None) -> None: ...


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr, desc="train")


def format_summary(metrics: dict[str, Any], run_dir: Path | None = None) -> str:
    """The final summary printed by ``contrastkit train`` and ``contrastkit eval``."""
    p = metrics["knn_protocol"]
    lines = [
        f"kNN top-1 (k={p['k']}, t={p['temperature']}, {p['eval_images']} eval images):",
        f"  learned encoder      {metrics['knn_top1']:.4f}",
        f"  same encoder, random {metrics['knn_top1_random_init']:.4f}",
        f"  raw pixels           {metrics['knn_top1_raw_pixels']:.4f}",
    ]
    if "train_seconds" in metrics:
        lines.append(
            f"time: {metrics['total_seconds']:.1f} s total, {metrics['train_seconds']:.1f} s training, "
            f"{metrics['images_per_second']:.0f} images/s on {metrics['device']}"
            + (
                f" ({metrics['images_per_second_after_first_step']:.0f} after the first step, "
                f"{sum(metrics['first_step_seconds']):.1f} s)"
                if metrics.get("first_step_seconds")
                and math.isfinite(metrics.get("images_per_second_after_first_step", float("nan")))
                else ""
            )
        )
    if metrics.get("skipped_steps"):
        lines.append(
            f"skipped {metrics['skipped_steps']} of {metrics['steps']} steps: their loss, gradient or "
            "BatchNorm statistics were not finite"
        )
    lines.extend(f"WARNING: {w}" for w in metrics.get("warnings", []))
    if metrics.get("resumed_at_steps"):
        lines.append(f"resumed at step(s) {', '.join(map(str, metrics['resumed_at_steps']))}")
    if run_dir is not None:
        lines.append(
            f"wrote {run_dir / 'metrics.json'}, {run_dir / 'config.yaml'}, {run_dir / CHECKPOINT_NAME}"
        )
    return "\n".join(lines)
