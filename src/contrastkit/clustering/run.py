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
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from contrastkit.clustering.sela import SelfLabelling, train_self_labelling
from contrastkit.errors import ConfigError
from contrastkit.training.precision import PRECISIONS, autocast_dtype

__all__ = ["SelaConfig", "cluster_scores", "run_sela"]


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class SelaConfig:
    """Everything that defines a ``contrastkit sela`` run (the CLI flags come from these fields)."""

    data: str = _opt("digits", "'digits', an image folder/.zip (train/<class>/*), or an FSDD .zip of WAVs")
    limit: int | None = _opt(None, "use at most this many items per split (class-balanced)")
    image_size: int | None = _opt(None, "resize images to this square size")
    clusters: int = _opt(0, "clusters K per head (0: the number of classes)")
    heads: int = _opt(3, "clustering heads (each its own Sinkhorn assignment)")
    lam: float = _opt(25.0, "SeLa's λ (inverse entropic regularisation of the transport problem)")
    marginal_std: float = _opt(0.0, "SeLaVi Gaussian cluster-size prior N(1, std²); 0: equipartition")
    refresh_every: int = _opt(1, "re-solve the pseudo-labels every this many epochs")
    cross_view: bool = _opt(True, "two views per item share one assignment (SeLaVi); off: one view (SeLa)")
    hidden_dim: int = _opt(0, "hidden width of MLP heads (0: linear heads)")
    width: int = _opt(16, "AudioCNN width (audio only)")
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
        for name in ("heads", "refresh_every", "epochs", "batch_size", "width"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.clusters, int) or self.clusters < 0 or self.clusters == 1:
            raise ConfigError(f"clusters must be 0 (number of classes) or at least 2, got {self.clusters!r}")
        if not (isinstance(self.lam, (int, float)) and self.lam > 0):
            raise ConfigError(f"lam must be positive, got {self.lam!r}")
        if not (isinstance(self.marginal_std, (int, float)) and self.marginal_std >= 0):
            raise ConfigError(f"marginal_std must be >= 0, got {self.marginal_std!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")


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


def _prepare(config: SelaConfig, device: torch.device) -> _Prepared:
    from contrastkit.data.audio import is_fsdd_zip

    if config.data != "digits" and is_fsdd_zip(config.data):
        from contrastkit.data.audio import load_fsdd
        from contrastkit.encoders.audio import AudioCNN
        from contrastkit.training.audio import AudioTrainConfig, build_audio_views, mfcc_baseline
        from contrastkit.views.audio import LogMel

        splits = load_fsdd(config.data, limit=config.limit, seed=config.seed)
        views = build_audio_views(AudioTrainConfig(data=config.data), splits).to(device)
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
        )
    from contrastkit.data import channel_stats
    from contrastkit.encoders import build_encoder
    from contrastkit.training.config import TrainConfig
    from contrastkit.training.trainer import DataInfo, build_views, load_splits
    from contrastkit.views import eval_transform

    tc = TrainConfig(data=config.data, image_size=config.image_size, limit=config.limit, seed=config.seed)
    isplits, _ = load_splits(tc)
    assert isplits.test is not None
    mean, std = channel_stats(isplits.train)
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
        num_classes=len(isplits.train.classes),
        views=image_views,
        eval_view=ev,
        encoder=build_encoder("small_cnn" if h < 32 else "resnet18", in_channels=c, image_size=h),
        reference_name="raw pixels",
        reference=lambda tr, te: (ev(tr).flatten(1), ev(te).flatten(1)),
    )


def run_sela(config: SelaConfig, *, out: Any = None) -> dict[str, Any]:
    """Train by self-labelling as ``config`` says, evaluate, write ``metrics.json``; return the metrics."""
    from contrastkit.evaluation import extract_features
    from contrastkit.training.audio import evaluate_features
    from contrastkit.training.optim import BASE_LR, WEIGHT_DECAY, build_optimizer, warmup_cosine
    from contrastkit.training.trainer import resolve_device

    out = out or sys.stdout
    t_start = time.perf_counter()
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    d = _prepare(config, device)
    if device.type == "cuda" and d.kind == "images":  # the images live on the GPU (CIFAR-10: 150 MB uint8)
        d.train, d.test = d.train.to(device), d.test.to(device)
    amp = autocast_dtype(config.precision, device)
    n = d.train.shape[0]
    if config.batch_size > n:
        raise ConfigError(f"batch size {config.batch_size} is larger than the training set ({n}); lower it")
    k = config.clusters or d.num_classes
    if k < 2:
        raise ConfigError("the data has a single class; pass --clusters K (K >= 2)")
    model = SelfLabelling(
        d.encoder,
        num_clusters=k,
        num_heads=config.heads,
        lam=config.lam,
        hidden_dim=config.hidden_dim or None,
        marginal_std=config.marginal_std,
    ).to(device)
    if device.type == "cuda" and d.kind == "images":
        model = model.to(memory_format=torch.channels_last)
    lr = config.lr if config.lr is not None else BASE_LR[config.optimizer] * config.batch_size / 256
    wd = config.weight_decay if config.weight_decay is not None else WEIGHT_DECAY[config.optimizer]
    steps = (n // config.batch_size) * config.epochs
    optimizer = build_optimizer(config.optimizer, model, lr=lr, weight_decay=wd)
    scheduler = warmup_cosine(optimizer, warmup_steps=round(0.1 * steps), total_steps=steps)

    def features(fn: Any, x: Tensor) -> Tensor:
        """Backbone features of ``x`` (float32, on ``device``: the kNN and linear probe run there)."""
        return extract_features(
            fn, x, transform=d.eval_view, device=device, batch_size=256, autocast_dtype=amp
        )

    ytr, yte = d.train_y, d.test_y
    model.eval()
    rnd_tr, rnd_te = features(d.encoder, d.train), features(d.encoder, d.test)
    ref_tr, ref_te = d.reference(d.train, d.test)
    references = {
        "random_init": evaluate_features(
            rnd_tr, ytr, rnd_te, yte, seed=config.seed, linear=config.linear_probe
        )
        | {"kmeans": _kmeans_scores(rnd_tr, rnd_te, yte, k, config.seed)},
        d.reference_name: evaluate_features(
            ref_tr, ytr, ref_te, yte, seed=config.seed, linear=config.linear_probe
        )
        | {"kmeans": _kmeans_scores(ref_tr, ref_te, yte, k, config.seed)},
    }
    print(
        f"contrastkit sela: data={d.name} ({n} train / {d.test.shape[0]} test, {d.num_classes} classes)\n"
        f"  encoder={type(d.encoder).__name__}, {config.heads} heads x {k} clusters, λ={config.lam:g}, "
        f"marginal={'gaussian sd ' + str(config.marginal_std) if config.marginal_std else 'equipartition'}, "
        f"{'cross-view (two views share the assignment)' if config.cross_view else 'single view'}\n"
        f"  {config.epochs} epochs, refresh every {config.refresh_every}, batch {config.batch_size}, "
        f"{config.optimizer} lr={lr:g} wd={wd:g}, device={device}, precision={'bf16' if amp else 'fp32'}",
        file=out,
        flush=True,
    )
    gen = torch.Generator(device=device)
    gen.manual_seed(config.seed + 1)
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
    )
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
        "total_seconds": time.perf_counter() - t_start,
        "device": str(device),
        "config": asdict(config) | {"clusters": k, "lr": lr, "weight_decay": wd},
    }
    data_name = "digits" if config.data == "digits" else Path(config.data).stem
    run_dir = (
        Path(config.out) if config.out else Path("runs") / f"{data_name}-sela-{datetime.now():%Y%m%d-%H%M%S}"
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    torch.save({"model": model.state_dict(), "config": metrics["config"]}, run_dir / "checkpoint.pt")
    hm = metrics["heads_test_mean"]
    lines = [
        f"test split ({d.test.shape[0]} items)           NMI     ARI     kNN top-1  linear top-1",
        f"  SeLa heads (mean of {config.heads})         {hm['nmi']:.4f}  {hm['ari']:.4f}",
        f"  learned encoder, k-means        {learned['kmeans']['nmi']:.4f}  {learned['kmeans']['ari']:.4f}  "
        f"{learned['knn_top1']:.4f}     {learned['linear_top1']:.4f}",
    ]
    for name, r in references.items():
        label = "same encoder, random" if name == "random_init" else name
        lines.append(
            f"  {label + ', k-means':<31} {r['kmeans']['nmi']:.4f}  {r['kmeans']['ari']:.4f}  "
            f"{r['knn_top1']:.4f}     {r['linear_top1']:.4f}"
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
