"""Checkpoints: written atomically (temporary file + rename), read with a clear error when unusable.

A kill at any moment leaves either the previous checkpoint or the new one under the checkpoint's name,
never a partial file: the bytes go to a temporary file in the same folder, are flushed to disk
(``fsync``), and the temporary file is renamed over the old one (``os.replace``, atomic on POSIX). A kill
mid-write leaves the temporary file behind; :func:`remove_stale_temporaries` clears it on resume.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from contrastkit.errors import ContrastkitError

FORMAT = "contrastkit-checkpoint"
VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


def write_atomic(path: str | Path, write: Callable[[IO[Any]], None], *, binary: bool = True) -> Path:
    """Write a file atomically: ``write(f)`` fills a temporary file beside ``path``, which is flushed to disk
    and renamed over ``path``; a crash or kill mid-write leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: a crash mid-write leaves the previous file intact."""
    payload = {"format": FORMAT, "version": VERSION, **state}
    return write_atomic(path, lambda f: torch.save(payload, f))


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete the temporary files that a kill during :func:`save_checkpoint` left beside ``path``."""
    path = Path(path)
    stale = sorted(path.parent.glob(path.name + ".*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def rng_state() -> dict[str, Any]:
    """The global random generators' states (torch CPU, every CUDA device), for an exact resume."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`rng_state`: set the global generators back to the saved states."""
    torch.set_rng_state(state["torch"])
    cuda = list(state.get("cuda") or [])
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def find_checkpoint(run_or_checkpoint: str | Path) -> Path:
    """Accept a run folder (uses its checkpoint.pt) or a checkpoint file."""
    p = Path(run_or_checkpoint)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
        if not p.is_file():
            raise ContrastkitError(
                f"run folder {str(p.parent)!r} has no {CHECKPOINT_NAME}; did the run finish?"
            )
    elif not p.is_file():
        raise ContrastkitError(f"{str(p)!r} does not exist; give a run folder or a checkpoint file")
    return p


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`."""
    p = find_checkpoint(path)
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ContrastkitError(
            f"checkpoint {str(p)!r} cannot be read ({exc.__class__.__name__}: {exc})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ContrastkitError(f"{str(p)!r} is not a contrastkit checkpoint")
    if state.get("version", 0) > VERSION:
        raise ContrastkitError(
            f"checkpoint {str(p)!r} has format version {state['version']}; this contrastkit reads up to "
            f"{VERSION}: upgrade contrastkit"
        )
    return state
