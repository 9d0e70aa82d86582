"""``contrastkit export RUN``: the trained backbone as a safetensors file, loadable into a plain ``nn.Module``.

The file holds the backbone's ``state_dict`` (the encoder ``f``, without the projection head) and, in its
safetensors metadata, how to rebuild the module and feed it images: the architecture name and the
arguments of :func:`contrastkit.encoders.build_encoder`, the feature size, and the normalisation
statistics. The same metadata is written as a JSON sidecar (``FILE.json``) for readers without Python.
To load it by hand::

    import json
    from safetensors import safe_open
    from safetensors.torch import load_file
    from contrastkit.encoders import build_encoder

    meta = json.loads(safe_open(path, "pt").metadata()["contrastkit"])
    backbone = build_encoder(meta["architecture"], **meta["constructor"])
    backbone.load_state_dict(load_file(path), strict=True)
    backbone.eval()   # input: float (B, C, H, W), (x / 255 - mean) / std; output: (B, feature_dim)

or simply ``contrastkit.export.load_backbone(path)``.

An existing export file (or its ``.json``) is refused before any work unless ``--overwrite``
(``overwrite=True``) is given; then both are replaced atomically.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from contrastkit import __version__
from contrastkit.encoders import build_encoder
from contrastkit.errors import ConfigError, ContrastkitError
from contrastkit.training.checkpoint import (
    check_output_folder,
    find_checkpoint,
    refuse_nonfinite_model,
    write_atomic,
)

__all__ = ["FORMAT", "export_backbone", "load_backbone", "read_export_metadata"]

FORMAT = "contrastkit-backbone"
VERSION = 2
"""The newest export format this version reads and writes: 2 adds ``"batchnorm": false`` to the constructor
(an mlp without BatchNorm), which only such exports carry; the others are still written as version 1, so
older contrastkit reads them, and says "upgrade" for a version 2 file instead of a TypeError."""
META_KEY = "contrastkit"
DEFAULT_NAME = "backbone.safetensors"
"""The export's file name in the run folder when no ``--out`` is given."""


def _metadata(trained: Any) -> dict[str, Any]:
    info = trained.info
    return {
        "format": FORMAT,
        "version": 1 if trained.config.batchnorm else 2,
        "architecture": trained.encoder,
        "constructor": {
            "in_channels": info.channels,
            "image_size": info.image_size,
            "stem": trained.stem,
            # only with --no-batchnorm (an mlp without BatchNorm), so older readers still read the others
            **({} if trained.config.batchnorm else {"batchnorm": False}),
        },
        "feature_dim": int(trained.model.feature_dim),
        "input": {
            "channels": info.channels,
            "image_size": info.image_size,
            "mean": list(info.mean),
            "std": list(info.std),
            "transform": "x = uint8 image / 255; (x - mean) / std per channel",
        },
        "classes": list(info.classes),
        "source_checkpoint": str(trained.checkpoint),
        "training": trained.progress,  # finished, trained_steps, total_steps of the checkpoint
        "contrastkit_version": __version__,
    }


def export_backbone(
    run: str | Path, out_path: str | Path | None = None, *, overwrite: bool = False, out: Any = None
) -> Path:
    """Write the backbone of run folder (or checkpoint) ``run`` to ``out_path`` (default:
    ``RUN/backbone.safetensors``) and its metadata to ``out_path`` + ``.json``; returns ``out_path``.

    The file name is checked before the run is loaded: a name not ending in ``.safetensors``, a folder, a
    folder that is missing or not writable, or an existing file (or ``.json`` beside it) is refused with a
    :class:`ContrastkitError`, unless ``overwrite`` (``--overwrite``) allows replacing existing files; they
    are replaced atomically (a temporary file renamed over them), so a failure leaves the old ones whole.
    The written file is read back and loaded (``strict=True``) into a freshly built encoder before this
    returns, so an export that could not be loaded is never reported as a success.
    """
    from safetensors.torch import load, save

    from contrastkit.reporting.run import load_trained_run

    out = out or sys.stdout
    if out_path is not None:
        target = Path(out_path)
    else:  # the checkpoint's folder, found without loading it
        target = find_checkpoint(run).parent / DEFAULT_NAME
    _check_target(target, overwrite=overwrite)  # before loading the run: refused before any work
    trained = load_trained_run(run, device="cpu")
    refuse_nonfinite_model(trained.model, trained.checkpoint)  # a diverged run exports nothing
    interrupted = trained.interrupted_warning("export again")
    if interrupted is not None:
        print(f"WARNING: {interrupted}", file=out, flush=True)
    meta = _metadata(trained)
    if interrupted is not None:
        meta["warnings"] = [interrupted]
    tensors = {
        k: v.detach().cpu().contiguous().clone() for k, v in trained.model.backbone.state_dict().items()
    }
    payload = save(tensors, metadata={META_KEY: json.dumps(meta)})
    _load_export(load(payload), meta, str(target))  # before writing: a file that would not load is never left
    write_atomic(target, lambda f: f.write(payload))
    sidecar = target.with_name(target.name + ".json")
    sidecar_text = json.dumps(meta, indent=2)
    write_atomic(sidecar, lambda f: f.write(sidecar_text), binary=False)
    load_backbone(target)  # proves the file on disk loads into a plain module
    print(
        f"wrote {target} ({meta['architecture']}, {len(tensors)} tensors, feature_dim {meta['feature_dim']}) "
        f"and {sidecar}",
        file=out,
    )
    return target


def _check_target(target: Path, *, overwrite: bool = False) -> None:
    """Refuse an export file name that is not ``.safetensors``, is a folder, whose folder is missing, not a
    folder or not writable, or (unless ``overwrite``) that exists or has its ``.json`` sidecar beside it."""
    if target.suffix != ".safetensors":
        raise ContrastkitError(f"the export file must end in .safetensors, got {str(target)!r}")
    if target.is_dir():
        raise ContrastkitError(f"{str(target)!r} is a folder; give a file name ending in .safetensors")
    check_output_folder(target)
    sidecar = target.with_name(target.name + ".json")
    if sidecar.is_dir():
        raise ContrastkitError(
            f"{str(sidecar)!r} is a folder, so the metadata of {str(target)!r} cannot be written beside it; "
            "give another --out"
        )
    if not overwrite:
        for path in (target, sidecar):
            if path.exists():
                raise ConfigError(
                    f"{str(path)!r} already exists; give another --out, or pass --overwrite to replace it"
                )


def read_export_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata :func:`export_backbone` stored in a safetensors file (architecture, input statistics...)."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise ContrastkitError(f"{str(p)!r} does not exist; give a file written by contrastkit export")
    try:
        with safe_open(str(p), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except Exception as exc:  # safetensors raises its own error types for damaged headers
        raise ContrastkitError(
            f"{str(p)!r} is not a readable safetensors file ({exc.__class__.__name__}: {exc})"
        ) from None
    if raw is None:
        raise ContrastkitError(
            f"{str(p)!r} has no contrastkit metadata; it was not written by contrastkit export"
        )
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ContrastkitError(f"the contrastkit metadata of {str(p)!r} is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ContrastkitError(f"{str(p)!r} is not a contrastkit backbone export")
    if int(meta.get("version", 0)) > VERSION:
        raise ContrastkitError(
            f"{str(p)!r} has export format version {meta['version']}; this contrastkit reads up to {VERSION}: "
            "upgrade contrastkit"
        )
    return meta


def load_backbone(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """The backbone exported to ``path`` as a plain ``nn.Module`` in eval mode (weights loaded strictly).

    Its input is a float ``(B, C, H, W)`` batch normalised as ``read_export_metadata(path)["input"]`` says;
    its output the ``(B, feature_dim)`` features.
    """
    from safetensors.torch import load_file

    meta = read_export_metadata(path)
    state = load_file(str(path), device=str(map_location))
    return _load_export(state, meta, str(path)).to(map_location).eval()


def _load_export(state: dict[str, torch.Tensor], meta: dict[str, Any], where: str) -> nn.Module:
    """A freshly built encoder of the export's metadata with ``state`` loaded strictly."""
    module = build_encoder(meta["architecture"], **meta["constructor"])
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ContrastkitError(
            f"the weights in {where!r} do not fit a {meta['architecture']} built with "
            f"{meta['constructor']}: {' '.join(str(exc).split())[:400]}"
        ) from None
    return module
