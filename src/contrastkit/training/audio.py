"""Contrastive training on spoken digits (FSDD) through the shared spine, and its evaluation.

``contrastkit audio-train`` = :func:`train_audio` (:class:`AudioTrainConfig`): waveforms ``(B, 1, T)`` ->
:class:`~contrastkit.views.audio.AudioViews` (two random views, log-mel) -> :class:`AudioCNN` + SimCLR
projection head -> :class:`~contrastkit.training.learner.ContrastiveLearner` with any negative source,
score and objective. Evaluation on the conventional split (takes 0-4 are the test set): weighted kNN
(Wu et al. 2018) and a linear probe (:func:`contrastkit.evaluation.linear.linear_probe`) on the backbone's
features, next to two references: the same encoder at random initialisation and plain MFCCs (20
coefficients of the log-mel, mean and standard deviation over time: 40 numbers per clip, standardised per
dimension with the training split's statistics).

Interrupted runs lose nothing: ``checkpoint.pt`` is written, resumable, before the first step and at every
epoch end; a first Ctrl-C / SIGTERM stops after the current step and writes it; ``contrastkit audio-train
--resume RUN`` (:func:`resume_audio`) continues bitwise as the run would have gone on. The helpers of that
(the resumed configuration, the data's fingerprint, the refusal of a non-finite state), shared with
``sela``, are in :mod:`contrastkit.training.resume`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from contrastkit.data.audio import FSDD_SAMPLE_RATE, AudioSplits, load_fsdd
from contrastkit.encoders import ContrastiveModel, ProjectionHead
from contrastkit.encoders.audio import AudioCNN
from contrastkit.errors import ConfigError, TrainingError
from contrastkit.evaluation import extract_features, knn_accuracy
from contrastkit.negatives import build_negatives, from_the_batch
from contrastkit.objectives import build_objective
from contrastkit.scores import build_score
from contrastkit.training.checkpoint import restore_rng_state, rng_state
from contrastkit.training.learner import ContrastiveLearner, refuse_unit_score_objective
from contrastkit.training.optim import BASE_LR, WEIGHT_DECAY, build_optimizer, warmup_cosine
from contrastkit.training.options import (
    batch_larger_than_data,
    check_lr_and_weight_decay,
    check_option,
    check_seed,
    flag_help,
    given_flags,
    is_integer,
    is_number,
    is_positive,
    objective_unused,
    unused_option_warnings,
)
from contrastkit.training.resume import (  # the resume helpers audio-train shares with sela
    StopSignals,
    absolute_data,
    check_fingerprint,
    crash_note,
    data_fingerprint,
    describe_kept,
    epoch_run_interrupted,
    final_evaluation,
    open_resumed_run,
    refuse_diverged_features,
    refuse_misfit_checkpoint,
    save_epoch_checkpoint,
    unfinished_run_hint,
    write_finished_run,
)
from contrastkit.training.run_folder import new_run_folder
from contrastkit.views.audio import LOG_MEL_N_FFT, AudioViews, LogMel, max_mel_bands, mfcc

__all__ = [
    "AUDIO_NEGATIVES",
    "AudioTrainConfig",
    "add_config_flags",
    "config_from_flags",
    "default_fsdd_path",
    "evaluate_features",
    "linear_probe_top1",
    "mfcc_baseline",
    "mfcc_coefficients",
    "mfcc_features",
    "resume_audio",
    "standardise",
    "train_audio",
]


# the MFCC baseline: this many coefficients of the log-mel (fewer with fewer mel bands), mean and std over time
MFCC_COEFFICIENTS = 20


def default_fsdd_path() -> str:
    """``$CONTRASTKIT_SHARED_DATA/audio/fsdd.zip``, the shared data beside the repository by default."""
    root = os.environ.get("CONTRASTKIT_SHARED_DATA")
    if root is None:
        root = str(Path(__file__).resolve().parents[3].parent / "shared" / "data")
    return str(Path(root) / "audio" / "fsdd.zip")


MAX_CLIP_SECONDS = 10.0  # --clip-seconds' upper bound: 3,000 clips x 80,000 samples x 4 B = 0.96 GB


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class AudioTrainConfig:
    """Everything that defines an ``audio-train`` run (the CLI flags come from these fields)."""

    data: str = _opt("", "path to fsdd.zip (default: $CONTRASTKIT_SHARED_DATA/audio/fsdd.zip)")
    clip_seconds: float = _opt(
        1.0, "clip length: shorter clips are zero-padded centred, longer centre-cropped"
    )
    resample: bool = _opt(
        False, "resample WAVs at another rate to 8 kHz (linear interpolation) instead of failing"
    )
    limit: int | None = _opt(None, "use at most this many clips per split (quick runs; default: all)")
    width: int = _opt(16, "AudioCNN width (feature_dim = 4 x width)")
    n_mels: int = _opt(40, "mel bands of the log-mel spectrogram")
    proj_hidden_dim: int = _opt(512, "hidden width of the projection head")
    proj_dim: int = _opt(128, "output dimension of the projection head")
    objective: str = _opt("infonce", "objective (as in 'contrastkit train')")
    temperature: float = _opt(0.2, "temperature of the objective")
    negatives: str = _opt("in-batch", "negative source: in-batch | queue | ...")
    score: str = _opt("cosine", "similarity score: cosine | dot")
    max_shift: float = _opt(0.1, "random shift of the clip, seconds either way")
    noise_p: float = _opt(0.5, "probability of additive white noise (SNR uniform in 10-40 dB)")
    stretch_p: float = _opt(0.5, "probability of a time stretch (rate uniform in 0.85-1.15)")
    freq_mask: int = _opt(8, "SpecAugment F (widest frequency mask, mel bands)")
    time_mask: int = _opt(20, "SpecAugment T (widest time mask, frames of 10 ms)")
    epochs: int = _opt(30, "training epochs")
    batch_size: int = _opt(256, "clips per batch (each gives two views)")
    optimizer: str = _opt("adamw", "sgd | lars | adamw")
    lr: float | None = _opt(None, "peak learning rate (default: the optimizer's base rate x batch/256)")
    weight_decay: float | None = _opt(None, "weight decay (default: the optimizer's)")
    seed: int = _opt(0, "random seed")
    device: str = _opt("auto", "auto | cpu | cuda | cuda:N")
    linear_probe: bool = _opt(True, "also fit linear probes (the slow part of the evaluation)")
    knn_k: int = _opt(200, "k of the weighted kNN evaluation")
    knn_temperature: float = _opt(0.1, "temperature of the weighted kNN evaluation")
    out: str | None = _opt(None, "run folder (default runs/fsdd-<objective>-<time>)")

    def __post_init__(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid value (the option and what it must be)."""
        for name in ("width", "n_mels", "proj_hidden_dim", "proj_dim", "epochs", "batch_size", "knn_k"):
            check_option(is_integer(getattr(self, name), 1), name, "a positive integer", getattr(self, name))
        check_option(
            self.limit is None or is_integer(self.limit, 1), "limit", "a positive integer", self.limit
        )
        check_seed("seed", self.seed)
        for name in ("clip_seconds", "temperature", "knn_temperature"):
            check_option(is_positive(getattr(self, name)), name, "a positive number", getattr(self, name))
        check_option(  # every clip is held padded in memory: 1000 s was ~96 GB for FSDD's 3,000 clips
            self.clip_seconds <= MAX_CLIP_SECONDS,
            "clip_seconds",
            f"at most {MAX_CLIP_SECONDS:g} (FSDD's clips last 0.1-2.3 s; a longer clip is only zero padding, "
            "held in memory for every clip)",
            self.clip_seconds,
        )
        check_option(
            is_number(self.max_shift) and self.max_shift >= 0, "max_shift", "a number >= 0", self.max_shift
        )
        if is_positive(self.clip_seconds) and self.max_shift > self.clip_seconds:
            raise ConfigError(
                f"option max_shift (--max-shift) {self.max_shift:g} s is longer than the clip "
                f"(--clip-seconds {self.clip_seconds:g}): a shift that long moves every clip wholly out of "
                f"its window, leaving silent views; use at most {self.clip_seconds:g} (default 0.1; a "
                "shorter clip goes silent from a smaller shift, which audio-train warns about)"
            )
        fits = max_mel_bands(FSDD_SAMPLE_RATE, LOG_MEL_N_FFT)  # the log-mel's FFT at 8 kHz (cached)
        if is_integer(self.n_mels, 1) and self.n_mels > fits:
            raise ConfigError(
                f"option n_mels (--n-mels) {self.n_mels} is more mel bands than the {LOG_MEL_N_FFT}-point "
                f"FFT's bins can fill (some triangular filters would cover no bin); use at most {fits} "
                "(default 40)"
            )
        for name in ("noise_p", "stretch_p"):
            v = getattr(self, name)
            check_option(is_number(v) and 0 <= v <= 1, name, "a probability in [0, 1]", v)
        check_lr_and_weight_decay(self.lr, self.weight_decay)
        check_option(self.optimizer in BASE_LR, "optimizer", "one of: " + ", ".join(BASE_LR), self.optimizer)
        # SpecAugment: a mask's width is drawn from 0..F, capped at the mel bands, so an F wider than the
        # bands would be capped silently (and masks every band at times); refused instead. T is capped by
        # the clip too (and by 20% of its frames, SpecAugment's p), as in Park et al.: not refused.
        check_option(is_integer(self.freq_mask, 0), "freq_mask", "an integer >= 0", self.freq_mask)
        if self.freq_mask > self.n_mels:
            raise ConfigError(
                f"option freq_mask (--freq-mask) {self.freq_mask} is wider than the {self.n_mels} mel bands "
                f"(--n-mels): lower --freq-mask to at most {self.n_mels} (default 8), or raise --n-mels"
            )
        check_option(is_integer(self.time_mask, 0), "time_mask", "an integer >= 0", self.time_mask)
        if self.negatives in ("gather", "mined", "in-batch+mined", "mined+mochi"):
            why = (
                "gathers negatives across torchrun processes, but audio-train runs on one process"
                if self.negatives == "gather"
                else "mines from an index of the whole training set, which audio-train does not build"
            )
            raise ConfigError(
                f"--negatives {self.negatives} {why}; audio-train supports --negatives "
                f"{' | '.join(AUDIO_NEGATIVES)} (contrastkit train supports the others)"
            )
        check_option(
            self.negatives in AUDIO_NEGATIVES,
            "negatives",
            "one of: " + ", ".join(AUDIO_NEGATIVES),
            self.negatives,
        )
        if self.batch_size < 2 and from_the_batch(self.negatives):
            raise ConfigError(
                f"option batch_size (--batch-size) must be at least 2 with --negatives {self.negatives}: "
                "in-batch negatives need at least 2 items per batch (with 1 the loss is exactly 0 and "
                "nothing is learned)"
            )


AUDIO_NEGATIVES: tuple[str, ...] = ("in-batch", "cross-view", "queue", "in-batch+mochi", "queue+mochi")
"""The ``--negatives`` sources ``audio-train`` supports (one process, no index of the training set)."""


# ------------------------------------------------------------------------------ CLI flags from a dataclass
def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--flag`` per dataclass field (bools as ``--x/--no-x``), help text and default from the field."""
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        t = str(f.type)
        help_text = flag_help(f)
        if t.startswith("bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        kind: Any = int if t.startswith("int") else float if t.startswith("float") else str
        parser.add_argument(
            flag, type=kind, default=None, metavar={int: "N", float: "X", str: "S"}[kind], help=help_text
        )


def config_from_flags(cls: type, args: argparse.Namespace) -> Any:
    """The dataclass with the flags that were given (the others keep their defaults)."""
    return cls(**given_flags(cls, args))


# ------------------------------------------------------------------------------------------- evaluation
def linear_probe_top1(
    train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor, seed: int = 0
) -> float:
    """Linear-probe top-1 with :func:`contrastkit.evaluation.linear.linear_probe` (L-BFGS logistic
    regression on standardised features, weight decay chosen on held-out train data)."""
    from contrastkit.evaluation.linear import linear_probe

    return float(linear_probe(train_f, train_y, test_f, test_y, seed=seed).top1)


def evaluate_features(
    train_f: Tensor,
    train_y: Tensor,
    test_f: Tensor,
    test_y: Tensor,
    *,
    knn_k: int = 200,
    knn_temperature: float = 0.1,
    seed: int = 0,
    linear: bool = True,
) -> dict[str, float]:
    """kNN top-1 (Wu et al. 2018) and linear-probe top-1 (NaN when ``linear`` is off) of fixed features.

    Both run on ``train_f``'s device (the GPU for ``contrastkit sela`` on CUDA), in float32.
    """
    dev = train_f.device
    train_f, test_f = train_f.float(), test_f.float().to(dev)
    train_y, test_y = train_y.to(dev), test_y.to(dev)
    knn = knn_accuracy(train_f, train_y, test_f, test_y, k=knn_k, temperature=knn_temperature)
    lin = linear_probe_top1(train_f, train_y, test_f, test_y, seed=seed) if linear else float("nan")
    return {"knn_top1": knn, "linear_top1": lin}


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of ``model``'s state (parameters and buffers): recorded for the random initialisation, so
    a resume can tell whether rebuilding the model from the seed gave the run's initial weights back."""
    return data_fingerprint(*model.state_dict().values())["sha256"]


def lacks_linear_probe(*results: dict[str, Any]) -> bool:
    """Whether any of these evaluation results was made without its linear probe (``--no-linear-probe``)."""
    return any(not math.isfinite(float(r.get("linear_top1", math.nan))) for r in results)


def with_linear_probe(saved: dict[str, Any], fresh: dict[str, Any]) -> dict[str, Any]:
    """``saved`` (a reference's results from before training) with the linear probe of ``fresh``: the
    resume of a run started with ``--no-linear-probe`` keeps the saved kNN and adds the probe."""
    return {**saved, "linear_top1": fresh["linear_top1"]}


NO_RANDOM_INIT_PROBE = (
    "note: the random-init reference keeps no linear probe (null in metrics.json): the run started with "
    "--no-linear-probe, and its initial weights could not be rebuilt on resume (a checkpoint from an older "
    "contrastkit, or a PyTorch that initialises differently)"
)


def silent_shift_warning(max_shift: float, clip_seconds: float, train: Any) -> str | None:
    """Why ``max_shift`` can leave silent views, or None: a clip of L s centred in its C s window leaves the
    window wholly once the shift exceeds (C + L) / 2, so the shortest training clip sets the bound."""
    if len(train) == 0:
        return None
    shortest = min(float(train.lengths.min()) / train.sample_rate, clip_seconds)
    bound = (clip_seconds + shortest) / 2
    if max_shift <= bound:
        return None
    return (
        f"--max-shift {max_shift:g} s can move the shortest training clip ({shortest:.3g} s, centred in its "
        f"{clip_seconds:g} s window) wholly out of the window, leaving silent views; at most {bound:.3g} s "
        "keeps part of every clip in view"
    )


def mfcc_coefficients(n_mels: int) -> int:
    """The MFCC baseline's coefficients: :data:`MFCC_COEFFICIENTS`, or every one of fewer mel bands."""
    return min(MFCC_COEFFICIENTS, n_mels)


@torch.no_grad()
def mfcc_features(
    waves: Tensor, logmel: LogMel, n_mfcc: int = MFCC_COEFFICIENTS, batch_size: int = 512
) -> Tensor:
    """The MFCC baseline: ``n_mfcc`` MFCCs (DCT-II of the log-mel), mean and std over time: ``(N, 2 n_mfcc)``."""
    out = []
    for start in range(0, waves.shape[0], batch_size):
        m = mfcc(logmel(waves[start : start + batch_size]), n_mfcc)[:, 0]  # (B, n_mfcc, frames)
        out.append(torch.cat([m.mean(dim=-1), m.std(dim=-1)], dim=1))
    return torch.cat(out)


def standardise(train_f: Tensor, test_f: Tensor) -> tuple[Tensor, Tensor]:
    """Per-dimension z-scores of both splits with the training split's mean and standard deviation.

    Applied to the MFCC baseline before its kNN (cepstral mean and variance normalisation): raw, a few
    wide dimensions (the 0th coefficient, log energy, averages about -76 on FSDD against |c_k| ~ 1.3 for the
    others) dominate the cosine similarity of the kNN and the baseline reads far too low (FSDD kNN top-1
    0.54 raw vs 0.94 standardised). The linear probe and k-means standardise their inputs themselves.
    """
    train_f, test_f = train_f.float(), test_f.float()
    mean, std = train_f.mean(dim=0), train_f.std(dim=0).clamp_min(1e-8)
    return (train_f - mean) / std, (test_f - mean) / std


def mfcc_baseline(
    train_waves: Tensor, test_waves: Tensor, logmel: LogMel, n_mfcc: int = MFCC_COEFFICIENTS
) -> tuple[Tensor, Tensor]:
    """The MFCC reference features of both splits: :func:`mfcc_features`, then :func:`standardise`."""
    return standardise(mfcc_features(train_waves, logmel, n_mfcc), mfcc_features(test_waves, logmel, n_mfcc))


def encoder_features(fn: Any, waves: Tensor, views: AudioViews, device: torch.device) -> Tensor:
    """Features ``fn(views.eval_view(x))`` of every clip, in batches, on ``device``."""
    return extract_features(fn, waves, transform=views.eval_view, device=device, batch_size=256).cpu()


def logmel_stats(waves: Tensor, logmel: LogMel) -> tuple[float, float]:
    """Scalar mean and standard deviation of the training log-mels (for normalisation)."""
    with torch.no_grad():
        lm = torch.cat([logmel(waves[i : i + 512]) for i in range(0, waves.shape[0], 512)])
    return float(lm.mean()), float(lm.std())


def build_audio_views(
    config: AudioTrainConfig, splits: AudioSplits, stats: tuple[float, float] | None = None
) -> AudioViews:
    """The training views; ``stats``: a resumed run's saved log-mel mean and std (else computed)."""
    logmel = LogMel(sample_rate=splits.train.sample_rate, n_mels=config.n_mels)
    mean, std = stats if stats is not None else logmel_stats(splits.train.waveforms, logmel)
    return AudioViews(
        sample_rate=splits.train.sample_rate,
        max_shift_seconds=config.max_shift,
        noise_p=config.noise_p,
        stretch_p=config.stretch_p,
        freq_mask=config.freq_mask,
        time_mask=config.time_mask,
        mean=mean,
        std=std,
        logmel=logmel,
    )


# -------------------------------------------------------------------------------------------- training
def train_audio(config: AudioTrainConfig, *, out: Any = None) -> dict[str, Any]:
    """Train on FSDD train with the shared learner; evaluate; write ``metrics.json``; return the metrics.

    The run folder (``config.out``) is checked first, before the data are read: a path that is a file, a
    folder that already holds a run (an unfinished audio-train run: pointed to ``--resume``), or one that
    cannot be created is refused with :class:`ConfigError`, so no earlier run is overwritten. A run that
    fails before its first checkpoint removes the folder it created, if still empty. The resumable
    checkpoint and the stop signals: see :func:`_train_audio`.
    """
    from contrastkit.training.trainer import resolve_device

    out = out or sys.stdout
    t_start = time.perf_counter()
    device = resolve_device(config.device)
    run_dir = (
        Path(config.out)
        if config.out
        else Path("runs") / f"fsdd-{config.objective}-{datetime.now():%Y%m%d-%H%M%S}"
    )
    config = replace(config, data=absolute_data(config.data or default_fsdd_path()), out=str(run_dir))
    with new_run_folder(run_dir, unfinished_run_hint(run_dir, kind="audio", command="audio-train")):
        return _train_audio(config, run_dir, device, out, t_start)


def resume_audio(run: str | Path, given: dict[str, Any] | None = None, *, out: Any = None) -> dict[str, Any]:
    """Continue the interrupted ``audio-train`` run ``run`` (its folder or checkpoint.pt) to the end, in its
    folder, exactly as it would have gone on; ``given``: the options given again (only ``device``, within
    one device type, and ``linear_probe`` may differ; see :func:`~contrastkit.training.resume.resumed_config`). Returns the
    metrics."""
    out = out or sys.stdout
    t_start = time.perf_counter()
    config, run_dir, device, state = open_resumed_run(
        AudioTrainConfig, run, given, kind="audio", command="audio-train"
    )
    return _train_audio(config, run_dir, device, out, t_start, saved=state)


def _train_audio(
    config: AudioTrainConfig,
    run_dir: Path,
    device: torch.device,
    out: Any,
    t_start: float,
    saved: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The run (``saved``: the checkpoint of the run to resume).

    ``checkpoint.pt`` is written before the first step and at every epoch end, resumable
    (``finished: False``): model, learner (negatives' queue), optimizer, scheduler, the views' generator and
    the global random state, the position (epoch, step, the epoch's order and losses so far), the loss
    history and the results computed before training (random-init and MFCC references); the finished run
    overwrites it with the model, config and views (``finished: True``). A first SIGINT / SIGTERM stops
    after the current step (mid-epoch: the position inside the epoch is saved), writes the checkpoint and
    raises :class:`~contrastkit.training.resume.TrainingInterrupted`; the resume continues bitwise as the
    uninterrupted run would have.
    """
    data = config.data
    splits = load_fsdd(
        data, clip_seconds=config.clip_seconds, resample=config.resample, limit=config.limit, seed=config.seed
    )
    n = len(splits.train)
    if config.batch_size > n:
        raise batch_larger_than_data(config.batch_size, n, config.limit, "clips")
    fingerprint = data_fingerprint(splits.train.waveforms, splits.train.labels)
    if saved is not None:
        check_fingerprint(saved, fingerprint, run_dir, data)
    silent = silent_shift_warning(config.max_shift, config.clip_seconds, splits.train)
    if silent is not None:
        print(f"WARNING: {silent}", file=sys.stderr, flush=True)
    lr = config.lr if config.lr is not None else BASE_LR[config.optimizer] * config.batch_size / 256
    wd = config.weight_decay if config.weight_decay is not None else WEIGHT_DECAY[config.optimizer]
    resolved = asdict(config) | {"data": data, "lr": lr, "weight_decay": wd}

    torch.manual_seed(config.seed)
    stats = None if saved is None else (saved["views"]["mean"], saved["views"]["std"])
    views = build_audio_views(config, splits, stats=stats).to(device)
    backbone = AudioCNN(width=config.width)
    model = ContrastiveModel(
        backbone, ProjectionHead(backbone.feature_dim, config.proj_hidden_dim, config.proj_dim)
    ).to(device)
    score = build_score(config.score)
    if saved is None:  # a run saved with such a pair resumes (the learner warns)
        refuse_unit_score_objective(config.objective, config.score)
    learner = ContrastiveLearner(
        model,
        build_negatives(config.negatives, mix_normalize=score.unit_norm),
        score,
        build_objective(config.objective, temperature=config.temperature),
    ).to(device)
    if learner.uses_labels:
        raise ConfigError(f"objective {config.objective!r} needs labels; audio-train is unsupervised")
    steps_per_epoch = n // config.batch_size
    total = steps_per_epoch * config.epochs
    optimizer = build_optimizer(config.optimizer, learner, lr=lr, weight_decay=wd)
    scheduler = warmup_cosine(optimizer, warmup_steps=round(0.1 * total), total_steps=total)
    gen = torch.Generator(device=device)
    gen.manual_seed(config.seed + 1)

    train_w, test_w = splits.train.waveforms, splits.test.waveforms
    ytr, yte = splits.train.labels, splits.test.labels
    ev = dict(
        knn_k=config.knn_k,
        knn_temperature=config.knn_temperature,
        seed=config.seed,
        linear=config.linear_probe,
    )

    def evaluate_encoder(final: bool = False) -> dict[str, float]:
        """kNN and linear-probe top-1 of the backbone's features (the model as it is now); the ``final``
        evaluation refuses a diverged model (non-finite features) as such."""
        model.eval()
        train_f, test_f = (encoder_features(model.features, w, views, device) for w in (train_w, test_w))
        if final:
            refuse_diverged_features(
                {"train clips": train_f, "test clips": test_f},
                after=f"its {config.epochs} epochs",
                run_dir=run_dir,
                advice="a lower --lr or a higher --temperature",
            )
        return evaluate_features(train_f, ytr, test_f, yte, **ev)

    def mfcc_reference() -> dict[str, float]:
        """kNN and linear-probe top-1 of the MFCC baseline (it depends on the data alone)."""
        logmel_cpu = LogMel(sample_rate=splits.train.sample_rate, n_mels=config.n_mels)
        mfcc_tr, mfcc_te = mfcc_baseline(train_w, test_w, logmel_cpu, mfcc_coefficients(config.n_mels))
        return evaluate_features(mfcc_tr, ytr, mfcc_te, yte, **ev)

    pos = _Position()
    init_weights = weights_fingerprint(model)  # the random init's: the same seed rebuilds it on resume
    if saved is None:
        random_init = evaluate_encoder()
        mfcc_ref = mfcc_reference()
        elapsed_before, resumed_at = 0.0, []
    else:
        random_init, mfcc_ref = saved["references"]["random_init"], saved["references"]["mfcc"]
        if config.linear_probe and lacks_linear_probe(random_init, mfcc_ref):
            # started with --no-linear-probe, resumed with it: fit the references' probes now, the random
            # init's on the rebuilt initial weights (before the checkpoint's are loaded) if they are the run's
            mfcc_ref = with_linear_probe(mfcc_ref, mfcc_reference())
            if saved.get("init_weights") == init_weights:
                random_init = with_linear_probe(random_init, evaluate_encoder())
            else:
                print(NO_RANDOM_INIT_PROBE, file=sys.stderr, flush=True)
        init_weights = saved.get("init_weights")
        with refuse_misfit_checkpoint(run_dir):
            learner.load_state_dict(saved["learner"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            pos.load(saved, device)
            gen.set_state(saved["loop"]["generator"])
        elapsed_before = float(saved.get("elapsed_seconds", 0.0))
        resumed_at = [*saved.get("resumed_at_steps", []), pos.step(steps_per_epoch)]
    resumed = (
        f"\n  resumed at epoch {pos.epoch} of {config.epochs}"
        + (f", step {pos.step(steps_per_epoch)} of {total}" if pos.next_step else "")
        if saved is not None
        else ""
    )
    print(
        f"contrastkit audio-train: data={splits.name} ({n} train / {len(splits.test)} test clips, "
        f"{config.clip_seconds:g} s at {splits.train.sample_rate} Hz)\n"
        f"  encoder=AudioCNN(width={config.width}) on {config.n_mels}-mel log spectrograms, "
        f"objective={config.objective}(temperature={config.temperature}) negatives={config.negatives}\n"
        f"  {config.epochs} epochs x {steps_per_epoch} steps, batch {config.batch_size}, {config.optimizer} "
        f"lr={lr:g} wd={wd:g}, device={device}{resumed}",
        file=out,
        flush=True,
    )
    unused = objective_unused(config.objective, ("temperature",))  # triplet and margin take none
    if config.knn_k > n:
        unused.append(("knn_k", f"the kNN vote takes at most the {n} training clips"))
    for warning in unused_option_warnings(config, unused):
        print(f"WARNING: {warning}", file=out, flush=True)
    written: list[int | None] = [None if saved is None else saved["progress"]["done"]]

    def checkpoint() -> Path:
        """Write the resumable checkpoint of this position (refused when the state is not finite)."""
        state = {
            "model": model.state_dict(),
            "learner": learner.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "views": {"mean": views.mean, "std": views.std},
            "references": {"random_init": random_init, "mfcc": mfcc_ref},
            "init_weights": init_weights,
            "data_fingerprint": fingerprint,
            "rng": rng_state(),
            "loop": pos.state(gen),
            "history": list(pos.history),
            "train_seconds": pos.train_seconds,
            "elapsed_seconds": elapsed_before + time.perf_counter() - t_start,
            "resumed_at_steps": resumed_at,
            "step": pos.step(steps_per_epoch),
            "device": str(device),
            "config": resolved,
            "options": asdict(config),
            "progress": {"done": pos.epoch, "total": config.epochs, "unit": "epoch"},
            "finished": False,
        }
        path = save_epoch_checkpoint(
            state, run_dir=run_dir, total_steps=total, epochs=config.epochs, kept=written[0]
        )
        written[0] = pos.epoch
        return path

    def interrupt(signum: int) -> None:
        checkpoint()
        raise epoch_run_interrupted(
            signum,
            command="audio-train",
            run_dir=run_dir,
            step=pos.step(steps_per_epoch),
            total_steps=total,
            epoch=pos.epoch,
            epochs=config.epochs,
            mid_epoch=pos.next_step > 0,
        )

    # a crash (out of memory, ...), a second Ctrl-C or SIGTERM: say how to go on
    with crash_note(command="audio-train", run_dir=run_dir, epochs=config.epochs, kept=lambda: written[0]):
        if saved is None:
            checkpoint()  # the references are kept from the start: a resume never needs the random init
        waves_dev = train_w.to(device)
        learner.train()
        if saved is not None:
            restore_rng_state(saved["rng"])
        with StopSignals() as stop:  # a first Ctrl-C / SIGTERM stops after the current step
            while pos.epoch < config.epochs:
                t0 = time.perf_counter()
                if pos.order is None:
                    pos.order = torch.randperm(n, device=device, generator=gen)
                for i in range(pos.next_step, steps_per_epoch):
                    idx = pos.order[i * config.batch_size : (i + 1) * config.batch_size]
                    batch = waves_dev[idx]
                    # the indices: a queue (K = 4096 > FSDD's 2,700 clips) masks each clip's own keys
                    result = learner(views(batch, gen), views(batch, gen), indices=idx)
                    optimizer.zero_grad(set_to_none=True)
                    result.loss.backward()
                    optimizer.step()
                    scheduler.step()
                    pos.losses.append(result.loss.detach())
                    pos.next_step = i + 1
                    if stop.requested is not None and pos.next_step < steps_per_epoch:
                        pos.train_seconds += time.perf_counter() - t0
                        interrupt(stop.requested)
                loss = float(torch.stack(pos.losses).mean())
                if not math.isfinite(loss):
                    raise TrainingError(
                        f"the loss became {loss} at epoch {pos.epoch + 1}; lower --lr (the checkpoint was "
                        f"not written, {describe_kept(run_dir, written[0], config.epochs)})"
                    )
                pos.train_seconds += time.perf_counter() - t0
                pos.history.append({"epoch": pos.epoch + 1, "loss": loss})
                pos.end_epoch()
                print(
                    f"epoch {pos.epoch}/{config.epochs}  loss {loss:.4f}  ({pos.train_seconds:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
                checkpoint()
                if stop.requested is not None:
                    interrupt(stop.requested)
    train_seconds, history = pos.train_seconds, pos.history
    # a Ctrl-C / SIGTERM now: the checkpoint holds every epoch, the resume only evaluates
    with final_evaluation(command="audio-train", run_dir=run_dir, total_steps=total):
        learned = evaluate_encoder(final=True)
        metrics = {
            "learned": learned,
            "random_init": random_init,
            "mfcc": mfcc_ref,
            "protocol": {
                "train_clips": n,
                "test_clips": len(splits.test),
                "split": "FSDD takes 0-4 test, the rest train",
                "features": "AudioCNN backbone (before the projection head), centred clip, no augmentation",
                "mfcc": f"{mfcc_coefficients(config.n_mels)} MFCCs (orthonormal DCT-II of the "
                f"{config.n_mels}-band log-mel), mean and std over frames, standardised per dimension with "
                "the train split's mean and std",
                "knn": {"k": config.knn_k, "temperature": config.knn_temperature},
                "linear_probe": "contrastkit.evaluation.linear.linear_probe (L-BFGS logistic regression, standardised)",
            },
            "history": history,
            "train_seconds": train_seconds,
            "total_seconds": elapsed_before + time.perf_counter() - t_start,
            "resumed_at_steps": resumed_at,
            "device": str(device),
            "config": resolved,
        }
        final = {
            "model": model.state_dict(),
            "config": metrics["config"],
            "views": {"mean": views.mean, "std": views.std},
            "device": str(device),
        }
        write_finished_run(final, metrics, run_dir=run_dir, epochs=config.epochs, kept=written[0])
    rows = [("learned encoder", learned), ("same encoder, random", random_init), ("MFCC mean+std", mfcc_ref)]
    lines = [f"FSDD test ({len(splits.test)} clips)        kNN top-1   linear top-1"]
    lines += [f"  {name:<28} {m['knn_top1']:.4f}      {_fmt(m['linear_top1'])}" for name, m in rows]
    lines.append(f"time: {metrics['total_seconds']:.1f} s total, {train_seconds:.1f} s training on {device}")
    lines.append(f"wrote {run_dir / 'metrics.json'}, {run_dir / 'checkpoint.pt'}")
    print("\n".join(lines), file=out, flush=True)
    return metrics


@dataclass
class _Position:
    """Where the audio-train loop is: epochs done, steps done in the current epoch, its order and losses."""

    epoch: int = 0
    next_step: int = 0
    order: Tensor | None = None
    losses: list[Tensor] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0

    def step(self, steps_per_epoch: int) -> int:
        return self.epoch * steps_per_epoch + self.next_step

    def end_epoch(self) -> None:
        self.epoch, self.next_step, self.order, self.losses = self.epoch + 1, 0, None, []

    def state(self, gen: torch.Generator) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "next_step": self.next_step,
            "order": None if self.order is None else self.order.cpu(),
            "losses": torch.stack(self.losses).cpu() if self.losses else torch.zeros(0),
            "generator": gen.get_state(),
        }

    def load(self, saved: dict[str, Any], device: torch.device) -> None:
        loop = saved["loop"]
        self.epoch, self.next_step = int(loop["epoch"]), int(loop["next_step"])
        self.history, self.train_seconds = list(saved["history"]), float(saved["train_seconds"])
        self.order = None if loop["order"] is None else loop["order"].to(device)
        self.losses = list(loop["losses"].to(device).unbind())


def _fmt(v: float) -> str:
    """A score for the printed tables: 4 decimals, or ``-`` when it was not computed (NaN)."""
    return f"{v:.4f}" if math.isfinite(v) else "-"


# ------------------------------------------------------------------------------------------ CLI wiring
def add_parsers(sub: Any) -> None:
    """The ``audio-train`` and ``sela`` subcommands (flags from their config dataclasses, and ``--resume``)."""
    from contrastkit.clustering.run import SelaConfig

    audio = sub.add_parser(
        "audio-train",
        help="contrastive training on spoken digits (FSDD); kNN and linear probe vs random init and MFCCs",
        description="Train AudioCNN on log-mel views of FSDD (takes 5-49) with the contrastive spine; "
        "evaluate on takes 0-4 with kNN and a linear probe, next to the random-init encoder and MFCCs. "
        "Writes metrics.json and checkpoint.pt into the run folder (checkpoint.pt at every epoch end, "
        "resumable with --resume).",
    )
    add_config_flags(audio, AudioTrainConfig)
    sela = sub.add_parser(
        "sela",
        help="self-labelling by clustering (SeLa, Sinkhorn pseudo-labels; SeLaVi cross-view) on images or audio",
        description="Train an encoder with clustering heads on Sinkhorn-Knopp pseudo-labels (Asano et al. "
        "2020); --data digits | image folder/zip | FSDD zip of WAVs. Reports NMI/ARI of the clusters and "
        "kNN / linear probe of the features against references; writes metrics.json (and checkpoint.pt at "
        "every epoch end, resumable with --resume).",
    )
    add_config_flags(sela, SelaConfig)
    for parser in (audio, sela):
        parser.add_argument(
            "--resume",
            metavar="RUN",
            default=None,
            help="continue the interrupted run in folder RUN (or its checkpoint.pt) exactly where it stopped; "
            "options given again must match the run's (--device may change within CPU or CUDA, and "
            "--linear-probe / --no-linear-probe, which only changes the final evaluation)",
        )


def run_command(args: argparse.Namespace) -> None:
    """Run ``audio-train`` or ``sela`` from parsed flags (``--resume RUN``: continue that run)."""
    from contrastkit.clustering.run import SelaConfig, resume_sela, run_sela

    resume = getattr(args, "resume", None)
    if args.command == "audio-train":
        given = given_flags(AudioTrainConfig, args)
        if resume is not None:
            resume_audio(resume, given)
        else:
            train_audio(AudioTrainConfig(**given))
    else:
        given = given_flags(SelaConfig, args)
        if resume is not None:
            resume_sela(resume, given)
        else:
            run_sela(SelaConfig(**given))
