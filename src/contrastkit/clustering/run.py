"""``contrastkit sela``: self-labelling (SeLa / SeLaVi-style cross-view) on images or FSDD audio, evaluated.

Data: ``digits``, an image folder or zip (``train/<class>/*``, as ``contrastkit train``), or an FSDD-style zip
of WAVs (detected by its ``.wav`` members). Images use the SimCLR views of ``contrastkit train`` and its
encoder choice (small CNN below 32 px, ResNet-18 above); audio uses :class:`AudioViews` and
:class:`AudioCNN`. Reported on the test split: NMI and ARI (scikit-learn) of each head's clusters
(``argmax`` of the head) against the labels, and of k-means (same K) on two reference features (raw pixels
or MFCCs; the encoder at random initialisation); and kNN / linear-probe top-1 of the backbone features,
learned and at random initialisation (the MFCCs standardised with the training split's statistics, see
:func:`contrastkit.training.audio.standardise`). Labels are used only for evaluation (and, by default, to set K to the
number of classes, the usual protocol for NMI/ARI).

Interrupted runs lose nothing: ``checkpoint.pt`` is written, resumable, once the pseudo-labels are
initialised and at every epoch end; a first Ctrl-C / SIGTERM stops after the current step and writes it;
``contrastkit sela --resume RUN`` (:func:`resume_sela`) continues bitwise as the run would have gone on.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from contrastkit.clustering.sela import SelfLabelling, train_self_labelling
from contrastkit.clustering.sinkhorn import MARGINAL_ORDERS
from contrastkit.errors import ConfigError
from contrastkit.training.options import (
    batch_larger_than_data,
    check_lr_and_weight_decay,
    check_seed,
    is_integer,
    is_number,
    is_positive,
)
from contrastkit.training.options import check_option as _check
from contrastkit.training.precision import PRECISIONS, autocast_dtype

__all__ = ["MAX_MARGINAL_STD", "SelaConfig", "cluster_scores", "resume_sela", "run_sela"]

MAX_MARGINAL_STD = 1.0
"""The largest ``--marginal-std`` accepted. SeLaVi's prior draws relative cluster sizes from N(1, std²) and
floors them at 1e-3: the share floored, P(N(1, std²) < 0) = Φ(-1/std), is 2% at std 0.5, 16% at 1, 31% at
2 and 42% at 5, and the remaining sizes spread as widely, so a few clusters take most of the items (a run
at 5 collapsed to a single cluster, NMI 0)."""


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class SelaConfig:
    """Everything that defines a ``contrastkit sela`` run (the CLI flags come from these fields)."""

    data: str = _opt("digits", "'digits', an image folder/.zip (train/<class>/*), or an FSDD .zip of WAVs")
    limit: int | None = _opt(None, "use at most this many items per split (class-balanced; default: all)")
    image_size: int | None = _opt(
        None, "resize images to this square size (default: keep; they must all match)"
    )
    clusters: int = _opt(0, "clusters K per head (0: the number of classes)")
    heads: int = _opt(3, "clustering heads (each its own Sinkhorn assignment)")
    lam: float = _opt(25.0, "SeLa's λ (inverse entropic regularisation of the transport problem)")
    marginal_std: float = _opt(0.0, "SeLaVi Gaussian cluster-size prior N(1, std²); 0: equipartition")
    marginal_order: str = _opt(
        "matched",
        "with --marginal-std: matched (the largest prior mass to the currently largest cluster) | reference "
        "(SeLaVi's published code: r = 1/sizes, the largest cluster gets the smallest mass)",
    )
    refresh_every: int = _opt(1, "re-solve the pseudo-labels every this many epochs")
    cross_view: bool = _opt(True, "two views per item share one assignment (SeLaVi); off: one view (SeLa)")
    hidden_dim: int = _opt(0, "hidden width of MLP heads (0: linear heads)")
    width: int = _opt(16, "AudioCNN width (audio only)")
    resample: bool = _opt(
        False, "resample WAVs at another rate to 8 kHz (linear interpolation) instead of failing (audio only)"
    )
    epochs: int = _opt(20, "training epochs")
    batch_size: int = _opt(256, "items per batch")
    optimizer: str = _opt("sgd", "sgd | lars | adamw")
    lr: float | None = _opt(None, "peak learning rate (default: the optimizer's base rate x batch/256)")
    weight_decay: float | None = _opt(None, "weight decay (default: the optimizer's)")
    linear_probe: bool = _opt(True, "also fit linear probes (the slow part of the evaluation)")
    seed: int = _opt(0, "random seed")
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N")
    precision: str = _opt("auto", "auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16")
    out: str | None = _opt(None, "run folder (default runs/<data>-sela-<time>)")

    def __post_init__(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid value (the option and what it must be)."""
        from contrastkit.training.optim import BASE_LR

        for name in ("heads", "refresh_every", "epochs", "batch_size", "width"):
            v = getattr(self, name)
            _check(is_integer(v, 1), name, "a positive integer", v)
        for name in ("limit", "image_size"):
            v = getattr(self, name)
            _check(v is None or is_integer(v, 1), name, "a positive integer", v)
        check_seed("seed", self.seed)
        _check(
            self.batch_size >= 2,
            "batch_size",
            "at least 2 (batch normalisation in the encoder and heads needs 2 items per batch)",
            self.batch_size,
        )
        _check(
            is_integer(self.clusters, 0) and self.clusters != 1,
            "clusters",
            "0 (the number of classes) or at least 2",
            self.clusters,
        )
        _check(
            is_integer(self.hidden_dim, 0), "hidden_dim", "an integer >= 0 (0: linear heads)", self.hidden_dim
        )
        _check(is_positive(self.lam), "lam", "a positive number", self.lam)
        if not (is_number(self.marginal_std) and 0 <= self.marginal_std <= MAX_MARGINAL_STD):
            raise ConfigError(
                f"option marginal_std (--marginal-std) must be a number in [0, {MAX_MARGINAL_STD:g}], got "
                f"{self.marginal_std!r}: the prior draws relative cluster sizes from N(1, std²) floored near 0, "
                f"so a larger std leaves many clusters almost empty and a few holding most items (at 5 the "
                f"clustering collapses to one cluster); use 0 (equipartition) or e.g. 0.1-0.5"
            )
        check_lr_and_weight_decay(self.lr, self.weight_decay)
        if self.marginal_order != "matched" and not self.marginal_std:
            raise ConfigError(
                f"--marginal-order {self.marginal_order} orders SeLaVi's Gaussian prior, which --marginal-std 0 "
                "(equipartition) does not use: give --marginal-std (e.g. 0.3), or drop --marginal-order"
            )
        _check(
            self.marginal_order in MARGINAL_ORDERS,
            "marginal_order",
            "one of: " + ", ".join(MARGINAL_ORDERS),
            self.marginal_order,
        )
        _check(self.optimizer in BASE_LR, "optimizer", "one of: " + ", ".join(BASE_LR), self.optimizer)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")


_AUDIO_ONLY = {"width": "sets the AudioCNN width", "resample": "resamples WAVs"}
_IMAGE_ONLY = {"image_size": "resizes images"}


def _check_data_options(config: SelaConfig, audio: bool) -> None:
    """Refuse an option of the other kind of data (set away from its default): it would be ignored.

    Skipped for a ``--data`` path that does not exist (its loader says so, naming the path)."""
    if config.data != "digits" and not Path(config.data).exists():
        return
    defaults = SelaConfig()
    kind, other = ("audio (an FSDD zip of WAVs)", _IMAGE_ONLY) if audio else ("images", _AUDIO_ONLY)
    for name, what in other.items():
        if getattr(config, name) != getattr(defaults, name):
            flag = "--" + name.replace("_", "-")
            raise ConfigError(
                f"{flag} {what}, but --data {config.data!r} is {kind}, so it would be ignored; drop {flag}"
            )


def cluster_scores(pred: Tensor | np.ndarray, labels: Tensor | np.ndarray) -> dict[str, float]:
    """NMI (arithmetic normalisation) and ARI of a clustering against labels (scikit-learn)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    p, y = np.asarray(pred).reshape(-1), np.asarray(labels).reshape(-1)
    return {"nmi": float(normalized_mutual_info_score(y, p)), "ari": float(adjusted_rand_score(y, p))}


def _kmeans_scores(train_f: Tensor, test_f: Tensor, test_y: Tensor, k: int, seed: int) -> dict[str, float]:
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import StandardScaler

    train_np, test_np = train_f.float().cpu().numpy(), test_f.float().cpu().numpy()
    scaler = StandardScaler().fit(train_np)
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(scaler.transform(train_np))
    return cluster_scores(km.predict(scaler.transform(test_np)), test_y.cpu())


@dataclass
class _Prepared:
    name: str
    kind: str
    train: Tensor
    test: Tensor
    train_y: Tensor
    test_y: Tensor
    num_classes: int
    views: Any
    eval_view: Any
    encoder: torch.nn.Module
    reference_name: str
    reference: Any  # callable: (train data, test data) -> (train features, test features)
    stats: dict[str, Any]  # the normalisation computed from the training split (kept for a resume)


def _is_audio(config: SelaConfig) -> bool:
    from contrastkit.data.audio import is_fsdd_zip

    return config.data != "digits" and is_fsdd_zip(config.data)


def _prepare(config: SelaConfig, device: torch.device, stats: dict[str, Any] | None = None) -> _Prepared:
    """The data, views, encoder and reference features of a run; ``stats``: a resumed run's saved
    normalisation (the log-mel's or the channels' mean and std) instead of computing it again."""
    if _is_audio(config):
        from contrastkit.data.audio import load_fsdd
        from contrastkit.encoders.audio import AudioCNN
        from contrastkit.training.audio import AudioTrainConfig, build_audio_views, mfcc_baseline
        from contrastkit.views.audio import LogMel

        splits = load_fsdd(config.data, resample=config.resample, limit=config.limit, seed=config.seed)
        saved = None if stats is None else (float(stats["mean"]), float(stats["std"]))
        views = build_audio_views(AudioTrainConfig(data=config.data), splits, stats=saved).to(device)
        logmel = LogMel(sample_rate=splits.train.sample_rate)
        return _Prepared(
            name=splits.name,
            kind="audio",
            train=splits.train.waveforms,
            test=splits.test.waveforms,
            train_y=splits.train.labels,
            test_y=splits.test.labels,
            num_classes=int(torch.unique(splits.train.labels).numel()),  # digits present (10 in FSDD)
            views=views,
            eval_view=views.eval_view,
            encoder=AudioCNN(width=config.width),
            reference_name="MFCC mean+std",
            reference=lambda tr, te: mfcc_baseline(tr, te, logmel),
            stats={"mean": views.mean, "std": views.std},
        )
    from contrastkit.data import channel_stats
    from contrastkit.encoders import build_encoder
    from contrastkit.training.config import TrainConfig
    from contrastkit.training.trainer import DataInfo, build_views, load_splits
    from contrastkit.views import eval_transform

    tc = TrainConfig(data=config.data, image_size=config.image_size, limit=config.limit, seed=config.seed)
    isplits, _ = load_splits(tc)
    assert isplits.test is not None
    mean, std = channel_stats(isplits.train) if stats is None else (tuple(stats["mean"]), tuple(stats["std"]))
    c, h, _ = isplits.train.image_shape
    info = DataInfo(
        channels=c, image_size=h, mean=tuple(mean), std=tuple(std), classes=list(isplits.train.classes)
    )
    image_views = build_views(tc, info).to(device)

    def ev(x: Tensor) -> Tensor:
        return eval_transform(x, mean, std)

    return _Prepared(
        name=isplits.name,
        kind="images",
        train=isplits.train.images,
        test=isplits.test.images,
        train_y=isplits.train.labels,
        test_y=isplits.test.labels,
        num_classes=int(torch.unique(isplits.train.labels).numel()),  # classes present, as for audio
        views=image_views,
        eval_view=ev,
        encoder=build_encoder("small_cnn" if h < 32 else "resnet18", in_channels=c, image_size=h),
        reference_name="raw pixels",
        reference=lambda tr, te: (ev(tr).flatten(1), ev(te).flatten(1)),
        stats={"mean": list(mean), "std": list(std)},
    )


def run_sela(config: SelaConfig, *, out: Any = None) -> dict[str, Any]:
    """Train by self-labelling as ``config`` says, evaluate, write ``metrics.json``; return the metrics.

    Checked before the data are read: options of the other kind of data (``--image-size`` with audio,
    ``--width``/``--resample`` with images) and the run folder (``config.out``: a file, a folder already
    holding a run (an unfinished sela run: pointed to ``--resume``), or one that cannot be created is
    refused, so no earlier run is overwritten). Once the data are read, before training: the batch size and
    ``--clusters`` against the training set. A run that fails before its first checkpoint removes the
    folder it created, if still empty. The resumable checkpoint and the stop signals: see :func:`_run_sela`.
    """
    from contrastkit.training.resume import absolute_data, unfinished_run_hint
    from contrastkit.training.run_folder import new_run_folder
    from contrastkit.training.trainer import resolve_device

    out = out or sys.stdout
    t_start = time.perf_counter()
    _check_data_options(config, _is_audio(config))
    device = resolve_device(config.device)
    data_name = "digits" if config.data == "digits" else Path(config.data).stem
    run_dir = (
        Path(config.out) if config.out else Path("runs") / f"{data_name}-sela-{datetime.now():%Y%m%d-%H%M%S}"
    )
    config = replace(config, data=absolute_data(config.data), out=str(run_dir))
    with new_run_folder(run_dir, unfinished_run_hint(run_dir, kind="sela", command="sela")):
        return _run_sela(config, run_dir, device, out, t_start)


def resume_sela(run: str | Path, given: dict[str, Any] | None = None, *, out: Any = None) -> dict[str, Any]:
    """Continue the interrupted ``sela`` run ``run`` (its folder or checkpoint.pt) to the end, in its folder,
    exactly as it would have gone on; ``given``: the options given again (only ``device``, within one device
    type, and ``linear_probe`` may differ; ``precision`` as resolved on the run's device). Returns the
    metrics."""
    from contrastkit.training.resume import open_resumed_run

    out = out or sys.stdout
    t_start = time.perf_counter()
    config, run_dir, device, state = open_resumed_run(SelaConfig, run, given, kind="sela", command="sela")
    return _run_sela(config, run_dir, device, out, t_start, saved=state)


def _run_sela(
    config: SelaConfig,
    run_dir: Path,
    device: torch.device,
    out: Any,
    t_start: float,
    saved: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The run (``saved``: the checkpoint of the run to resume).

    ``checkpoint.pt`` is written once the pseudo-labels are initialised and at every epoch end, resumable
    (``finished: False``): model (pseudo-labels included), optimizer, scheduler, the global random state,
    the loop's state (:func:`~contrastkit.clustering.sela.train_self_labelling`: position, the epoch's
    order, refreshes, prior, the views' generator), the normalisation and the references computed before
    training; the finished run overwrites it with the model and config (``finished: True``). A first
    SIGINT / SIGTERM stops after the current step (mid-epoch: the position inside the epoch is saved),
    writes the checkpoint and raises :class:`~contrastkit.training.resume.TrainingInterrupted`.
    """
    from contrastkit.evaluation import extract_features
    from contrastkit.training.audio import (
        NO_RANDOM_INIT_PROBE,
        evaluate_features,
        lacks_linear_probe,
        weights_fingerprint,
        with_linear_probe,
    )
    from contrastkit.training.checkpoint import restore_rng_state, rng_state
    from contrastkit.training.optim import BASE_LR, WEIGHT_DECAY, build_optimizer, warmup_cosine
    from contrastkit.training.resume import (
        StopSignals,
        check_fingerprint,
        crash_note,
        data_fingerprint,
        epoch_run_interrupted,
        final_evaluation,
        refuse_diverged_features,
        refuse_misfit_checkpoint,
        save_epoch_checkpoint,
        write_finished_run,
    )

    torch.manual_seed(config.seed)
    d = _prepare(config, device, stats=None if saved is None else saved["normalisation"])
    fingerprint = data_fingerprint(d.train, d.train_y)
    if saved is not None:
        check_fingerprint(saved, fingerprint, run_dir, config.data)
    if device.type == "cuda" and d.kind == "images":  # the images live on the GPU (CIFAR-10: 150 MB uint8)
        d.train, d.test = d.train.to(device), d.test.to(device)
    amp = autocast_dtype(config.precision, device)
    n = d.train.shape[0]
    if config.batch_size > n:
        raise batch_larger_than_data(config.batch_size, n, config.limit, "")
    k = config.clusters or d.num_classes
    if k < 2:
        raise ConfigError("the data has a single class; pass --clusters K (K >= 2)")
    if k > n:
        raise ConfigError(
            f"--clusters {k} is more than the {n} training items (each cluster needs at least one, and "
            f"k-means on the features needs n >= K); lower --clusters to at most {n}, or use more data "
            "(raise or drop --limit)"
        )
    model = SelfLabelling(
        d.encoder,
        num_clusters=k,
        num_heads=config.heads,
        lam=config.lam,
        hidden_dim=config.hidden_dim or None,
        marginal_std=config.marginal_std,
        marginal_order=config.marginal_order,
    ).to(device)
    if device.type == "cuda" and d.kind == "images":
        model = model.to(memory_format=torch.channels_last)
    lr = config.lr if config.lr is not None else BASE_LR[config.optimizer] * config.batch_size / 256
    wd = config.weight_decay if config.weight_decay is not None else WEIGHT_DECAY[config.optimizer]
    steps_per_epoch = n // config.batch_size
    steps = steps_per_epoch * config.epochs
    optimizer = build_optimizer(config.optimizer, model, lr=lr, weight_decay=wd)
    scheduler = warmup_cosine(optimizer, warmup_steps=round(0.1 * steps), total_steps=steps)
    resolved = asdict(config) | {"clusters": k, "lr": lr, "weight_decay": wd}

    def features(fn: Any, x: Tensor) -> Tensor:
        """Backbone features of ``x`` (float32, on ``device``: the kNN and linear probe run there)."""
        return extract_features(
            fn, x, transform=d.eval_view, device=device, batch_size=256, autocast_dtype=amp
        )

    ytr, yte = d.train_y, d.test_y

    def reference(name: str) -> dict[str, Any]:
        """kNN, linear probe and k-means of the random init (the model as built) or of the data reference."""
        model.eval()
        if name == "random_init":
            tr, te = features(d.encoder, d.train), features(d.encoder, d.test)
        else:
            tr, te = d.reference(d.train, d.test)
        return evaluate_features(tr, ytr, te, yte, seed=config.seed, linear=config.linear_probe) | {
            "kmeans": _kmeans_scores(tr, te, yte, k, config.seed)
        }

    init_weights = weights_fingerprint(model)  # the random init's: the same seed rebuilds it on resume
    if saved is None:
        references = {name: reference(name) for name in ("random_init", d.reference_name)}
        elapsed_before, resumed_at = 0.0, []
        resumed = ""
    else:
        references = dict(saved["references"])
        if config.linear_probe and lacks_linear_probe(*references.values()):
            # started with --no-linear-probe, resumed with it: fit the references' probes now, the random
            # init's on the rebuilt initial weights (before the checkpoint's are loaded) if they are the run's
            rebuilt = saved.get("init_weights") == init_weights
            for name in ("random_init", d.reference_name) if rebuilt else (d.reference_name,):
                references[name] = with_linear_probe(references[name], reference(name))
            if not rebuilt:
                print(NO_RANDOM_INIT_PROBE, file=sys.stderr, flush=True)
        init_weights = saved.get("init_weights")
        with refuse_misfit_checkpoint(run_dir):
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
        elapsed_before = float(saved.get("elapsed_seconds", 0.0))
        loop = saved["loop"]
        at = int(loop["epoch"]) * steps_per_epoch + int(loop["next_step"])
        resumed_at = [*saved.get("resumed_at_steps", []), at]
        resumed = f"\n  resumed at epoch {loop['epoch']} of {config.epochs}" + (
            f", step {at} of {steps}" if loop["next_step"] else ""
        )
    print(
        f"contrastkit sela: data={d.name} ({n} train / {d.test.shape[0]} test, {d.num_classes} classes)\n"
        f"  encoder={type(d.encoder).__name__}, {config.heads} heads x {k} clusters, λ={config.lam:g}, "
        f"marginal={f'gaussian sd {config.marginal_std} ({config.marginal_order})' if config.marginal_std else 'equipartition'}, "
        f"{'cross-view (two views share the assignment)' if config.cross_view else 'single view'}\n"
        f"  {config.epochs} epochs, refresh every {config.refresh_every}, batch {config.batch_size}, "
        f"{config.optimizer} lr={lr:g} wd={wd:g}, device={device}, precision={'bf16' if amp else 'fp32'}"
        f"{resumed}",
        file=out,
        flush=True,
    )
    gen = torch.Generator(device=device)
    gen.manual_seed(config.seed + 1)
    last: dict[str, Any] = {"done": None, "loop": {}, "step": 0}  # the latest checkpoint's position
    if saved is not None:
        last.update(done=int(saved["progress"]["done"]), loop=saved["loop"], step=int(saved["step"]))

    def checkpoint(loop: dict[str, Any]) -> None:
        """Write the resumable checkpoint of this position (refused when the state is not finite)."""
        step = int(loop["epoch"]) * steps_per_epoch + int(loop["next_step"])
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "loop": loop,
            "rng": rng_state(),
            "normalisation": d.stats,
            "references": references,
            "init_weights": init_weights,
            "data_fingerprint": fingerprint,
            "elapsed_seconds": elapsed_before + time.perf_counter() - t_start,
            "resumed_at_steps": resumed_at,
            "step": step,
            "device": str(device),
            "config": resolved,
            "options": asdict(config),
            "progress": {"done": int(loop["epoch"]), "total": config.epochs, "unit": "epoch"},
            "finished": False,
        }
        save_epoch_checkpoint(
            state, run_dir=run_dir, total_steps=steps, epochs=config.epochs, kept=last["done"]
        )
        last.update(done=int(loop["epoch"]), loop=loop, step=step)

    if saved is not None:
        restore_rng_state(saved["rng"])
    # a crash (out of memory, ...), a second Ctrl-C or SIGTERM: say how to go on
    with crash_note(command="sela", run_dir=run_dir, epochs=config.epochs, kept=lambda: last["done"]):
        with StopSignals() as signals:  # a first Ctrl-C / SIGTERM stops after the current step
            history = train_self_labelling(
                model,
                d.train,
                d.views,
                cross_view=config.cross_view,
                epochs=config.epochs,
                batch_size=config.batch_size,
                refresh_every=config.refresh_every,
                optimizer=optimizer,
                scheduler=scheduler,
                device=device,
                generator=gen,
                autocast_dtype=amp,
                resume=None if saved is None else saved["loop"],
                checkpoint=checkpoint,
                stop=lambda: signals.requested is not None,
            )
            if signals.requested is not None:  # mid-run, or after the last step (the resume evaluates)
                raise epoch_run_interrupted(
                    signals.requested,
                    command="sela",
                    run_dir=run_dir,
                    step=last["step"],
                    total_steps=steps,
                    epoch=int(last["done"]),
                    epochs=config.epochs,
                    mid_epoch=bool(last["loop"].get("next_step")),
                )
    # a Ctrl-C / SIGTERM now: the checkpoint holds every epoch, the resume only evaluates
    with final_evaluation(command="sela", run_dir=run_dir, total_steps=steps):
        model.eval()
        with torch.no_grad():
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                test_logits = torch.cat(
                    [
                        model.logits(d.eval_view(d.test[i : i + 256].to(device)), "a").float().cpu()
                        for i in range(0, d.test.shape[0], 256)
                    ],
                    dim=1,
                )
        heads = [cluster_scores(test_logits[h].argmax(1), yte.cpu()) for h in range(config.heads)]
        pseudo = [cluster_scores(model.labels[h].cpu(), ytr) for h in range(config.heads)]
        learned_tr, learned_te = features(d.encoder, d.train), features(d.encoder, d.test)
        refuse_diverged_features(
            {"train items": learned_tr, "test items": learned_te},
            after=f"its {config.epochs} epochs",
            run_dir=run_dir,
            advice="a lower --lr" + (" or --precision fp32" if amp is not None else ""),
        )
        learned = evaluate_features(
            learned_tr, ytr, learned_te, yte, seed=config.seed, linear=config.linear_probe
        )
        learned |= {"kmeans": _kmeans_scores(learned_tr, learned_te, yte, k, config.seed)}
        metrics = {
            "heads_test": heads,
            "heads_test_mean": {m: float(np.mean([h[m] for h in heads])) for m in ("nmi", "ari")},
            "pseudo_labels_train": pseudo,
            "learned": learned,
            "references": references,
            "history": {"losses": history.losses, "refreshes": history.refreshes},
            "train_seconds": history.train_seconds,
            "total_seconds": elapsed_before + time.perf_counter() - t_start,
            "resumed_at_steps": resumed_at,
            "device": str(device),
            "config": resolved,
        }
        final = {"model": model.state_dict(), "config": metrics["config"], "device": str(device)}
        write_finished_run(final, metrics, run_dir=run_dir, epochs=config.epochs, kept=last["done"])
    hm = metrics["heads_test_mean"]
    lines = [
        f"test split ({d.test.shape[0]} items)           NMI     ARI     kNN top-1  linear top-1",
        f"  SeLa heads (mean of {config.heads})         {hm['nmi']:.4f}  {hm['ari']:.4f}",
        f"  learned encoder, k-means        {learned['kmeans']['nmi']:.4f}  {learned['kmeans']['ari']:.4f}  "
        f"{learned['knn_top1']:.4f}     {_fmt(learned['linear_top1'])}",
    ]
    for name, r in references.items():
        label = "same encoder, random" if name == "random_init" else name
        lines.append(
            f"  {label + ', k-means':<31} {r['kmeans']['nmi']:.4f}  {r['kmeans']['ari']:.4f}  "
            f"{r['knn_top1']:.4f}     {_fmt(r['linear_top1'])}"
        )
    lines.append(
        f"train pseudo-labels vs labels (head 0): NMI {pseudo[0]['nmi']:.4f}  ARI {pseudo[0]['ari']:.4f}"
    )
    lines.append(
        f"time: {metrics['total_seconds']:.1f} s total, {history.train_seconds:.1f} s training on {device}"
    )
    lines.append(f"wrote {run_dir / 'metrics.json'}, {run_dir / 'checkpoint.pt'}")
    print("\n".join(lines), file=out, flush=True)
    return metrics


def _fmt(v: float) -> str:
    """A score for the printed table: 4 decimals, or ``-`` when it was not computed (NaN)."""
    return f"{v:.4f}" if math.isfinite(v) else "-"
