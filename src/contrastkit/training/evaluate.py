"""Re-evaluate a trained run or checkpoint on a data set (``contrastkit eval``)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from contrastkit.errors import ConfigError
from contrastkit.training.checkpoint import find_checkpoint, load_checkpoint
from contrastkit.training.config import TrainConfig
from contrastkit.training.trainer import (
    DataInfo,
    KnnEvaluator,
    build_model,
    format_summary,
    load_splits,
    resolve_device,
)


def evaluate_checkpoint(
    run_or_checkpoint: str | Path,
    *,
    data: str | None = None,
    limit: int | None = None,
    device: str = "auto",
    knn_k: int | None = None,
    knn_temperature: float | None = None,
    out: Any = None,
    write: bool = True,
) -> dict[str, Any]:
    """kNN top-1 of the checkpoint's encoder on ``data`` (default: the data it was trained on).

    Images are resized to the size the encoder was trained at and normalised with its training statistics.
    Results are printed and, with ``write``, saved as ``eval.json`` beside the checkpoint.
    """
    out = out or sys.stdout
    t0 = time.perf_counter()
    path = find_checkpoint(run_or_checkpoint)
    state = load_checkpoint(path)
    config = TrainConfig.from_dict(state["config"], source=str(path))
    info = DataInfo(**{k: tuple(v) if k in ("mean", "std") else v for k, v in state["data_info"].items()})
    changes: dict[str, Any] = {"device": device, "image_size": info.image_size, "limit": limit}
    if data is not None:
        changes["data"] = data
    if knn_k is not None:
        changes["knn_k"] = knn_k
    if knn_temperature is not None:
        changes["knn_temperature"] = knn_temperature
    config = config.replace(**changes)
    dev = resolve_device(config.device)
    splits, note = load_splits(config)
    c = splits.train.image_shape[0]
    if c != info.channels:
        raise ConfigError(
            f"the encoder in {str(path)!r} takes {info.channels}-channel images, but {config.data!r} has {c} channels"
        )
    model = build_model(config, info.channels, info.image_size)
    model.load_state_dict(state["model"])
    model.to(dev)
    evaluator = KnnEvaluator(splits, info, config, dev)
    torch.manual_seed(config.seed)
    fresh = build_model(config, info.channels, info.image_size).to(dev)
    metrics = {
        "checkpoint": str(path),
        "data": splits.name,
        "knn_top1": evaluator.model_accuracy(model),
        "knn_top1_random_init": evaluator.model_accuracy(fresh),
        "knn_top1_raw_pixels": evaluator.raw_pixels(),
        "knn_protocol": {
            "k": config.knn_k,
            "temperature": config.knn_temperature,
            "features": "backbone, L2-normalised",
            "train_images": len(splits.train),
            "eval_images": len(splits.test or []),
            "eval_split": note,
        },
        "seconds": time.perf_counter() - t0,
    }
    print(f"contrastkit eval: {path} on {splits.name}", file=out)
    print(format_summary(metrics), file=out, flush=True)
    if write:
        target = path.parent / "eval.json"
        target.write_text(json.dumps(metrics, indent=2))
        print(f"wrote {target}", file=out)
    return metrics
