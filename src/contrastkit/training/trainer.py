"""The training loop: plain PyTorch, data resident on the device, augmentation on the device.

:func:`build_run` turns a :class:`TrainConfig` into the pieces of the spine; :func:`train` runs it,
monitors kNN accuracy, and writes ``metrics.json``, ``config.yaml`` and ``checkpoint.pt`` into the run
folder. The checkpoint holds the model (all ``contrastkit eval`` needs) and, to resume, the optimizer,
the scheduler, the negative source's state (``negatives``: queue buffers, MoCHi's step) and the momentum
key encoder (``key_encoder``, None without one). The loop reads the loss (and the negative source's
statistics) from the device only every ``log_every`` steps, so it does not synchronise with the GPU on
every step.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from contrastkit.data import DataSplits, channel_stats, load_dataset
from contrastkit.encoders import ContrastiveModel, ProjectionHead, build_encoder
from contrastkit.errors import ConfigError, TrainingError
from contrastkit.evaluation import extract_features, knn_accuracy
from contrastkit.negatives import MomentumEncoder, build_negatives
from contrastkit.negatives.distributed import is_distributed
from contrastkit.objectives import build_objective
from contrastkit.scores import build_score
from contrastkit.training.checkpoint import CHECKPOINT_NAME, save_checkpoint
from contrastkit.training.config import TrainConfig
from contrastkit.training.learner import ContrastiveLearner
from contrastkit.training.optim import BASE_LR, WEIGHT_DECAY, build_optimizer, warmup_cosine
from contrastkit.views import ImageViews, eval_transform

HELD_OUT_FRACTION = 0.2
HISTORY_NAME = "history.jsonl"


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
    return torch.device(name)


def load_splits(config: TrainConfig) -> tuple[DataSplits, str]:
    """Load the data; without a test split, hold out a stratified part of train for evaluation."""
    splits = load_dataset(config.data, image_size=config.image_size, limit=config.limit, seed=config.seed)
    note = "test split"
    if splits.test is None or len(splits.test) == 0:
        splits = _hold_out(splits, HELD_OUT_FRACTION, config.seed)
        note = f"held out {HELD_OUT_FRACTION:.0%} of train (no test/ folder)"
    return splits, note


def _hold_out(splits: DataSplits, fraction: float, seed: int) -> DataSplits:
    from sklearn.model_selection import train_test_split

    labels = splits.train.labels.numpy()
    idx = torch.arange(len(splits.train)).numpy()
    counts = torch.bincount(splits.train.labels).tolist()
    stratify = labels if min(c for c in counts if c > 0) >= 2 else None
    train_idx, test_idx = train_test_split(idx, test_size=fraction, random_state=seed, stratify=stratify)
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
    """Backbone + SimCLR projection head, chosen by the config."""
    name = _encoder_name(config, image_size)
    backbone = build_encoder(name, in_channels=channels, image_size=image_size, stem=config.stem)
    head = ProjectionHead(backbone.feature_dim, hidden_dim=config.proj_hidden_dim, out_dim=config.proj_dim)
    return ContrastiveModel(backbone, head)


def build_views(config: TrainConfig, info: DataInfo) -> ImageViews:
    """The SimCLR augmentation of the config, for images of the data's size."""
    min_scale = config.crop_min_scale
    if min_scale is None:
        min_scale = 0.08 if info.image_size >= 32 else 0.5
    flip_p = config.flip_p
    if flip_p is None:
        flip_p = 0.0 if config.data == "digits" else 0.5
    j = config.jitter
    return ImageViews(
        size=info.image_size,
        scale=(min_scale, 1.0),
        flip_p=flip_p,
        brightness=j,
        contrast=j,
        saturation=j,
        hue=min(j / 4, 0.5),
        jitter_p=config.jitter_p,
        grayscale_p=config.grayscale_p,
        mean=info.mean,
        std=info.std,
    )


def resolve_hyperparameters(config: TrainConfig) -> TrainConfig:
    """Fill the defaults that depend on other options (lr scaled by batch/256, weight decay, warm-up)."""
    lr = config.lr if config.lr is not None else BASE_LR[config.optimizer] * config.batch_size / 256
    wd = config.weight_decay if config.weight_decay is not None else WEIGHT_DECAY[config.optimizer]
    warmup = config.warmup_epochs if config.warmup_epochs is not None else round(0.1 * config.epochs, 2)
    return config.replace(lr=lr, weight_decay=wd, warmup_epochs=warmup)


def default_run_dir(config: TrainConfig) -> Path:
    data = "digits" if config.data == "digits" else Path(config.data).stem
    return Path("runs") / f"{data}-{config.objective}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


class KnnEvaluator:
    """kNN top-1 of a feature function on fixed (train, test) images, on the device."""

    def __init__(self, splits: DataSplits, info: DataInfo, config: TrainConfig, device: torch.device) -> None:
        self.train, self.test = splits.train, splits.test
        assert self.test is not None
        self.mean, self.std = info.mean, info.std
        self.k, self.t = config.knn_k, config.knn_temperature
        self.device = device
        self.train_images = self.train.images.to(device)
        self.test_images = self.test.images.to(device)

    def transform(self, x: Tensor) -> Tensor:
        return eval_transform(x, self.mean, self.std)

    @torch.no_grad()
    def accuracy(self, fn: Any, autocast_dtype: torch.dtype | None = None) -> float:
        kw = dict(transform=self.transform, device=self.device, autocast_dtype=autocast_dtype)
        train_f = extract_features(fn, self.train_images, **kw)
        test_f = extract_features(fn, self.test_images, **kw)
        return knn_accuracy(
            train_f,
            self.train.labels.to(self.device),
            test_f,
            self.test.labels.to(self.device),
            k=self.k,
            temperature=self.t,
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


def train(config: TrainConfig, *, log_every: int = 10, out: Any = None) -> TrainResult:
    """Train a contrastive encoder as ``config`` says; see the module docstring for what is written."""
    out = out or sys.stdout
    t_start = time.perf_counter()
    config = resolve_hyperparameters(config)
    device = resolve_device(config.device)
    run_dir = Path(config.out) if config.out else default_run_dir(config)
    if (run_dir / CHECKPOINT_NAME).exists():
        raise ConfigError(
            f"run folder {str(run_dir)!r} already holds a run ({CHECKPOINT_NAME}); choose another --out or remove it"
        )
    config = config.replace(out=str(run_dir))
    check_combinations(config)
    (run_dir / HISTORY_NAME).unlink(missing_ok=True)  # left by a run that stopped before its checkpoint

    splits, eval_note = load_splits(config)
    train_set, test_set = splits.train, splits.test
    assert test_set is not None
    if config.batch_size > len(train_set):
        raise ConfigError(
            f"batch size {config.batch_size} is larger than the training set ({len(train_set)} images); "
            f"use --batch-size {len(train_set)} or less"
        )
    n_classes = len(splits.train.classes)
    mean, std = channel_stats(train_set)
    c, h, w = train_set.image_shape
    if h != w:
        raise ConfigError(f"images are {h}x{w}; square images are expected: pass --image-size to resize them")
    info = DataInfo(
        channels=c, image_size=h, mean=tuple(mean), std=tuple(std), classes=list(splits.train.classes)
    )

    torch.manual_seed(config.seed)
    model = build_model(config, c, h).to(device)
    use_bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    amp_dtype = torch.bfloat16 if use_bf16 else None
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    views = build_views(config, info).to(device)
    steps_per_epoch = len(train_set) // config.batch_size
    key_momentum = config.resolved_key_momentum()
    key_encoder = (
        MomentumEncoder(model, key_momentum, shuffle_groups=min(config.shuffle_bn_groups, config.batch_size))
        if key_momentum > 0
        else None
    )
    learner = ContrastiveLearner(
        model,
        build_negatives(
            config.negatives,
            queue_size=config.queue_size,
            mix_start_step=round(config.mix_start_epoch * steps_per_epoch),
        ),
        build_score(config.score),
        build_objective(
            config.objective,
            temperature=config.temperature,
            tau_plus=config.tau_plus,
            beta=config.beta,
            margin=config.margin,
            mining=config.mining,
        ),
        oracle=config.oracle,
        key_encoder=key_encoder,
    ).to(device)
    step_fn = torch.compile(learner) if config.compile else learner
    # Sampling the views' random parameters stays eager (dynamo cannot trace an explicit generator); the
    # pixel work is compiled with the learner when --compile is on.
    render = torch.compile(views.render) if config.compile else views.render

    def make_views(batch: Tensor) -> tuple[Tensor, Tensor]:
        """Two views of every image, sampled and rendered as one batch of 2B."""
        both = torch.cat([batch, batch], dim=0)
        v = render(both, views.sample(both, generator=gen))
        if device.type == "cuda":
            v = v.contiguous(memory_format=torch.channels_last)
        v1, v2 = v.chunk(2, dim=0)
        return v1, v2

    total_steps = steps_per_epoch * config.epochs
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    optimizer = build_optimizer(
        config.optimizer, learner, lr=config.lr, weight_decay=config.weight_decay, momentum=config.momentum
    )
    scheduler = warmup_cosine(optimizer, warmup_steps=warmup_steps, total_steps=total_steps)

    evaluator = KnnEvaluator(splits, info, config, device)
    random_init_knn = evaluator.model_accuracy(model, amp_dtype)
    raw_knn = evaluator.raw_pixels()

    print(
        f"contrastkit train: data={splits.name} ({len(train_set)} train / {len(test_set)} eval [{eval_note}], "
        f"{c}x{h}x{w}, {n_classes} classes)\n"
        f"  encoder={_encoder_name(config, h)} objective={config.objective}(temperature={config.temperature}) "
        f"negatives={config.negatives}{'+oracle' if config.oracle else ''} score={config.score}"
        f"{_negatives_note(config, key_momentum)}\n"
        f"  {config.epochs} epochs x {steps_per_epoch} steps, batch {config.batch_size}, {config.optimizer} "
        f"lr={config.lr:g} wd={config.weight_decay:g}, device={device}, precision={'bf16' if use_bf16 else 'fp32'}"
        f"\n  run folder: {run_dir}",
        file=out,
        flush=True,
    )

    images = train_set.images.to(device)
    labels_all = train_set.labels.to(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(config.seed + 1)
    history: list[dict[str, float]] = []
    knn_curve: list[dict[str, float]] = []
    step = 0
    train_seconds = 0.0
    last_loss = float("nan")
    bar = _progress(total_steps, config.progress)
    learner.train()
    for epoch in range(config.epochs):
        t_epoch = time.perf_counter()
        order = torch.randperm(len(train_set), device=device, generator=gen)
        pending: list[tuple[int, dict[str, Tensor]]] = []
        for i in range(steps_per_epoch):
            idx = order[i * config.batch_size : (i + 1) * config.batch_size]
            batch = images[idx]
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=use_bf16):
                v1, v2 = make_views(batch)
                result = step_fn(v1, v2, labels_all[idx] if learner.uses_labels else None)
            optimizer.zero_grad(set_to_none=True)
            result.loss.backward()
            lr_used = optimizer.param_groups[0]["lr"]
            optimizer.step()
            if key_encoder is not None:
                key_encoder.update(model)
            scheduler.step()
            step += 1
            pending.append(
                (
                    step,
                    {
                        "loss": result.loss.detach(),
                        "mi_bound": result.mi_bound,
                        "lr": torch.full((), lr_used, device=device),
                        **result.extra,
                    },
                )
            )
            if step % log_every == 0 or i == steps_per_epoch - 1:
                seconds = train_seconds + time.perf_counter() - t_epoch
                last_loss = _drain(pending, history, epoch, run_dir, seconds)
                bar.set_postfix(
                    loss=f"{last_loss:.3f}",
                    img_s=f"{step * config.batch_size / max(train_seconds + time.perf_counter() - t_epoch, 1e-9):.0f}",
                )
            bar.update(1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds += time.perf_counter() - t_epoch
        is_last = epoch == config.epochs - 1
        if is_last or (config.knn_every and (epoch + 1) % config.knn_every == 0):
            acc = evaluator.model_accuracy(model, amp_dtype)
            knn_curve.append(
                {"epoch": epoch + 1, "step": step, "train_seconds": train_seconds, "knn_top1": acc}
            )
            bar.write(
                f"epoch {epoch + 1}/{config.epochs}  loss {last_loss:.4f}  kNN top-1 {acc:.4f}",
                file=sys.stderr,
            )
    bar.close()

    images_per_s = step * config.batch_size / max(train_seconds, 1e-9)
    metrics = {
        "knn_top1": knn_curve[-1]["knn_top1"],
        "knn_top1_random_init": random_init_knn,
        "knn_top1_raw_pixels": raw_knn,
        "knn_protocol": {
            "k": config.knn_k,
            "temperature": config.knn_temperature,
            "features": "backbone, L2-normalised",
            "train_images": len(train_set),
            "eval_images": len(test_set),
            "eval_split": eval_note,
        },
        "final_loss": last_loss,
        "final_mi_bound_nats": history[-1]["mi_bound"] if history else float("nan"),
        "epochs": config.epochs,
        "steps": step,
        "train_seconds": train_seconds,
        "total_seconds": time.perf_counter() - t_start,
        "images_per_second": images_per_s,
        "device": str(device),
        "knn_curve": knn_curve,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    save_checkpoint(
        {
            "config": config.to_dict(),
            "data_info": info.to_dict(),
            "model": model.state_dict(),
            "negatives": learner.negatives.state_dict(),
            "key_encoder": None if key_encoder is None else key_encoder.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": config.epochs,
            "step": step,
            "metrics": {k: v for k, v in metrics.items() if k != "knn_curve"},
        },
        run_dir / CHECKPOINT_NAME,
    )
    metrics["total_seconds"] = time.perf_counter() - t_start
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(format_summary(metrics, run_dir), file=out, flush=True)
    return TrainResult(run_dir=run_dir, metrics=metrics, model=model, history=history)


def _drain(
    pending: list[tuple[int, dict[str, Tensor]]],
    history: list[dict[str, float]],
    epoch: int,
    run_dir: Path,
    seconds: float,
) -> float:
    """Read the queued step statistics from the device (one synchronisation); stop on a non-finite loss.

    Each pending entry maps names to 0-d tensors: ``loss``, ``mi_bound``, ``lr`` and any statistics of
    the negative source (MoCHi's proxy accuracy, ...); all of them go into ``history`` and are appended to
    ``history.jsonl`` in the run folder, one JSON object per step, with ``seconds`` (training wall-clock
    so far, the same for every step of one drain).
    """
    flat = torch.stack([t.detach().float().reshape(()) for _, stats in pending for t in stats.values()])
    values = iter(flat.cpu().tolist())
    loss = float("nan")
    for step, stats in pending:
        row = {name: next(values) for name in stats}
        loss = row["loss"]
        if not math.isfinite(loss):
            raise TrainingError(
                f"the loss became {loss} at step {step} (epoch {epoch + 1}); no checkpoint was written for this "
                f"run ({run_dir}). Try a lower --lr, a higher --temperature or --precision fp32."
            )
        history.append({"step": step, "epoch": epoch + 1, "seconds": seconds, **row})
    if pending:
        run_dir.mkdir(parents=True, exist_ok=True)
        rows = history[-len(pending) :]
        with open(run_dir / HISTORY_NAME, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    pending.clear()
    return loss


def check_combinations(config: TrainConfig) -> None:
    """Refuse option combinations that cannot work, naming the options (the config checks single values)."""
    if config.negatives == "gather" and not is_distributed():
        raise ConfigError(
            "--negatives gather gathers negatives across processes, but torch.distributed is not initialised: "
            "launch with torchrun (e.g. torchrun --nproc-per-node 2 -m contrastkit train ...), or use "
            "--negatives in-batch on one process"
        )


def _negatives_note(config: TrainConfig, key_momentum: float) -> str:
    parts = []
    if "queue" in config.negatives:
        parts.append(f"queue_size={config.queue_size}")
    if key_momentum > 0:
        parts.append(f"key_momentum={key_momentum:g} shuffle_bn_groups={config.shuffle_bn_groups}")
    if config.negatives.endswith("+mochi"):
        parts.append(f"mix_start_epoch={config.mix_start_epoch:g}")
    return (" " + " ".join(parts)) if parts else ""


class _NoBar:
    def update(self, n: int) -> None: ...
    def set_postfix(self, **kw: Any) -> None: ...
    def close(self) -> None: ...
    def write(self, s: str, file: Any = None) -> None:
        print(s, file=file or sys.stderr, flush=True)


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
        )
    if run_dir is not None:
        lines.append(
            f"wrote {run_dir / 'metrics.json'}, {run_dir / 'config.yaml'}, {run_dir / CHECKPOINT_NAME}"
        )
    return "\n".join(lines)
