"""Reading a run folder: its metrics, step history and config, and the trained model in its checkpoint.

Shared by ``contrastkit report``, ``contrastkit embed`` and ``contrastkit export``. Only imports the
training code; the files it reads are written by :func:`contrastkit.training.train`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from contrastkit.encoders import ContrastiveModel, resolve_stem
from contrastkit.errors import ContrastkitError
from contrastkit.evaluation import extract_features
from contrastkit.training.checkpoint import find_checkpoint, load_checkpoint
from contrastkit.training.config import TrainConfig
from contrastkit.training.evaluate import interrupted_run_warning, match_channels, training_progress
from contrastkit.training.trainer import DataInfo, build_model, resolve_device
from contrastkit.views import eval_transform

__all__ = [
    "HISTORY_NAME",
    "TrainedRun",
    "backbone_features",
    "fit_channels",
    "load_trained_run",
    "read_config_text",
    "read_history",
    "read_metrics",
    "run_folder",
]

HISTORY_NAME = "history.jsonl"


def run_folder(run: str | Path) -> Path:
    """The run folder ``run`` names (a folder, or a file inside one such as its checkpoint)."""
    p = Path(run)
    if p.is_dir():
        return p
    if p.is_file():
        return p.parent
    raise ContrastkitError(f"run folder {str(p)!r} does not exist; give the folder a training run wrote")


def read_metrics(folder: Path) -> dict[str, Any] | None:
    """``metrics.json`` of the run, or None when it has none."""
    path = folder / "metrics.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ContrastkitError(f"{path} cannot be read as JSON ({exc}); was it truncated?") from None
    if not isinstance(data, dict):
        raise ContrastkitError(f"{path} should hold a JSON object, found {type(data).__name__}")
    return data


def read_history(folder: Path) -> list[dict[str, float]] | None:
    """The per-step scalars of ``history.jsonl`` (one JSON object a line), or None when there is none.

    Lines that are not JSON objects (a line cut off by a killed run) are skipped; non-numeric values are
    dropped, so every row maps names to floats.
    """
    path = folder / HISTORY_NAME
    if not path.is_file():
        return None
    rows: list[dict[str, float]] = []
    for line in path.read_text().splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        row = {k: float(v) for k, v in obj.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if "step" in row:
            rows.append(row)
    return rows


def read_config_text(folder: Path, fallback: dict[str, Any] | None = None) -> str | None:
    """The resolved ``config.yaml`` of the run as text (or ``fallback`` dumped as YAML; None if neither)."""
    path = folder / "config.yaml"
    if path.is_file():
        return path.read_text()
    if fallback is not None:
        return yaml.safe_dump(fallback, sort_keys=False)
    return None


@dataclass
class TrainedRun:
    """A checkpoint's model in eval mode with what is needed to feed it images.

    ``encoder`` and ``stem`` are the resolved backbone name and ResNet stem (never ``"auto"``).
    """

    checkpoint: Path
    config: TrainConfig
    info: DataInfo
    model: ContrastiveModel
    encoder: str
    stem: str
    device: torch.device
    # the checkpoint's entries that say how far it trained, and on how many processes
    state: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def progress(self) -> dict[str, Any]:
        """How far training got: finished, trained_steps, total_steps (``training_progress``)."""
        return training_progress(self.state)

    def interrupted_warning(self, then: str) -> str | None:
        """``interrupted_run_warning`` of this checkpoint, ending with ``then`` (``"embed again"``)."""
        return interrupted_run_warning(self.state, self.checkpoint, then)


def load_trained_run(run: str | Path, device: str = "cpu") -> TrainedRun:
    """Load the model of a run folder (or checkpoint file) onto ``device`` (``auto``, ``cpu``, ``cuda``...)."""
    path = find_checkpoint(run)
    state = load_checkpoint(path)
    for key in ("config", "data_info", "model"):
        if key not in state:
            raise ContrastkitError(f"checkpoint {str(path)!r} has no {key!r} entry; it is not a finished run")
    config = TrainConfig.from_dict(state["config"], source=str(path), saved_run=True)
    info = DataInfo(**{k: tuple(v) if k in ("mean", "std") else v for k, v in state["data_info"].items()})
    model = build_model(config, info.channels, info.image_size)
    model.load_state_dict(state["model"])
    dev = resolve_device(device)
    model.to(dev).eval()
    encoder = config.encoder
    if encoder == "auto":  # what build_model chose; checked against the model by contrastkit.export
        encoder = "small_cnn" if info.image_size < 32 else "resnet18"
    return TrainedRun(
        checkpoint=path,
        config=config,
        info=info,
        model=model,
        encoder=encoder,
        stem=resolve_stem(config.stem, info.image_size),
        device=dev,
        state=_progress_entries(state),
    )


def _progress_entries(state: dict[str, Any]) -> dict[str, Any]:
    """The entries of a checkpoint that say how far its run got and on how many processes (not its RNG
    states, history or model)."""
    kept = {k: state[k] for k in ("finished", "step", "total_steps") if k in state}
    progress = state.get("progress")
    if isinstance(progress, dict):
        kept["progress"] = {k: progress[k] for k in ("total_steps", "world_size") if k in progress}
    return kept


def fit_channels(trained: TrainedRun, images: Tensor, data: str) -> tuple[Tensor, str | None]:
    """``images`` fitted to the channels of ``trained``'s encoder, and the note to print (None: unchanged):
    :func:`contrastkit.training.evaluate.match_channels`, the rule ``eval``, ``embed`` and ``report`` share
    (grayscale for an RGB encoder repeated to three channels; RGB for a grayscale encoder an error)."""
    return match_channels(
        images, trained.info.channels, encoder=f"the encoder of {str(trained.checkpoint)!r}", data=data
    )


def backbone_features(trained: TrainedRun, images: Tensor, batch_size: int = 256) -> Tensor:
    """Backbone features ``h = f(x)`` of ``uint8`` ``(N, C, H, W)`` images, float32 ``(N, D)`` on the CPU.

    Images are normalised with the training statistics, exactly as the kNN evaluation does. Channels are
    fitted by :func:`fit_channels` (grayscale repeated to three for an RGB encoder, other mismatches an
    error); the commands call it first themselves, to print its note once.
    """
    images, _ = fit_channels(trained, images, "this batch")
    size = trained.info.image_size
    if tuple(images.shape[2:]) != (size, size):
        raise ContrastkitError(
            f"images are {images.shape[3]}x{images.shape[2]} but the encoder was trained at {size}x{size}; "
            "resize them first"
        )
    mean, std = trained.info.mean, trained.info.std
    with torch.no_grad():
        feats = extract_features(
            trained.model.features,
            images,
            transform=lambda x: eval_transform(x, mean, std),
            device=trained.device,
            batch_size=batch_size,
        )
    out = feats.cpu()
    if not bool(torch.isfinite(out).all()):
        bad = int((~torch.isfinite(out)).any(dim=1).sum())
        raise ContrastkitError(
            f"the encoder of {str(trained.checkpoint)!r} gives non-finite features for {bad} images; "
            "the checkpoint is damaged or the run diverged"
        )
    return out


def finite(x: Any) -> bool:
    """Whether ``x`` is a finite real number (not a bool)."""
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
