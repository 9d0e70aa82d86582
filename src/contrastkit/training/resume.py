"""Picking a run up again: which options may change on resume, and stopping cleanly on Ctrl-C / SIGTERM.

A run folder's ``checkpoint.pt`` is resumable while ``state["finished"]`` is false: it then holds, besides
the model, optimizer, scheduler, negative source and key encoder, the loop's position (epoch, next batch,
that epoch's shuffled order), the random generators' states, the kNN curve and the clock
(:func:`contrastkit.training.trainer.train` writes and reads it). Options that only change how the run is
watched or where it runs may differ on resume (``--data-placement`` among auto, device and host: the same
batches either way, but not to or from ``stream``, whose kNN monitor and normalisation use a subset); any other difference is refused, naming each option with
its old and new value, because the saved state could not continue it (another architecture, objective,
data set or schedule).
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from contrastkit.errors import ConfigError, TrainingError
from contrastkit.training.checkpoint import CHECKPOINT_NAME, find_checkpoint, load_checkpoint
from contrastkit.training.config import TrainConfig

# Options that may differ between a run and its resume: none of them changes the state being continued.
RESUMABLE_OPTIONS = frozenset(
    {
        "device",
        "precision",
        "compile",
        "progress",
        "knn_every",
        "checkpoint_every",
        "skip_nonfinite",
        "deterministic",
        "tensorboard",
        "workers",
        "out",
    }
)


class TrainingInterrupted(TrainingError):
    """Training stopped on a signal after writing a resumable checkpoint."""

    def __init__(self, message: str, *, signum: int, checkpoint: Path, step: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.checkpoint = checkpoint
        self.step = step

    @property
    def exit_status(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number (130 for Ctrl-C)."""
        return 128 + self.signum


def resume_config(
    run: str | Path, overrides: dict[str, Any] | None = None
) -> tuple[TrainConfig, dict[str, Any]]:
    """The configuration to resume ``run`` with, and its checkpoint's state.

    ``overrides`` are options given again on resume (the command line's flags); those outside
    :data:`RESUMABLE_OPTIONS` must equal the saved ones. The run folder is the checkpoint's folder.
    """
    folder = Path(run)
    if folder.is_dir() and not (folder / CHECKPOINT_NAME).is_file():
        raise ConfigError(
            f"run folder {str(folder)!r} has no {CHECKPOINT_NAME}: the run stopped before its first checkpoint "
            "(after its first epoch, or --checkpoint-every steps), so there is nothing to resume; start it again "
            "with another --out (or remove the folder first)"
        )
    path = find_checkpoint(run)
    state = load_checkpoint(path)
    if "progress" not in state:
        raise ConfigError(
            f"checkpoint {str(path)!r} was written by a contrastkit without resume support; start a new run"
        )
    if state.get("finished"):
        raise ConfigError(
            f"run {str(path.parent)!r} finished (step {state['step']} of {state['progress']['total_steps']}); "
            "nothing to resume: evaluate it with contrastkit eval, or start a new run"
        )
    saved = TrainConfig.from_dict(state["config"], source=str(path))
    overrides = {k.replace("-", "_"): v for k, v in (overrides or {}).items()}
    data = _resume_data(saved.data, overrides.get("data"), state, path.parent)
    if data is not None:  # the run's data, found: not a change
        overrides["data"] = saved.data
    wanted = TrainConfig.from_dict({**saved.to_dict(), **overrides}, source="command line")
    changed = [
        (name, getattr(saved, name), getattr(wanted, name))
        for name in saved.to_dict()
        if name not in RESUMABLE_OPTIONS
        and getattr(saved, name) != getattr(wanted, name)
        and not (name == "data_placement" and "stream" not in (saved.data_placement, wanted.data_placement))
    ]
    if changed:
        diff = "; ".join(f"--{n.replace('_', '-')}: run has {a!r}, now {b!r}" for n, a, b in changed)
        raise ConfigError(
            f"cannot resume {str(path.parent)!r} with a changed configuration ({diff}). The saved state cannot "
            f"continue another setting: drop these flags, or start a new run. Options that may change on "
            f"resume: {', '.join('--' + n.replace('_', '-') for n in sorted(RESUMABLE_OPTIONS - {'out'}))}, and "
            "--data-placement among auto, device and host"
        )
    if data is not None:
        wanted = wanted.replace(data=data)
    return wanted.replace(out=str(path.parent)), state


def _same_path(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _resume_data(saved: str, given: Any, state: dict[str, Any], run_dir: Path) -> str | None:
    """The run's data for a resume from the current folder, as an absolute path, when it is found: the
    saved path itself, or a ``--data`` given again that is the same file or folder; for a run started with
    a relative path from another folder, a ``--data`` with the same name (or any, when the checkpoint keeps
    the data's fingerprint, which the trainer then checks). None: nothing to resolve (a data set name such
    as digits, a ``--data`` that is another data set: the comparison of the options refuses it). A saved
    relative path that does not exist from here, and no ``--data``, is a ConfigError saying what to give."""
    from contrastkit.data import KNOWN_DATASETS

    if saved in KNOWN_DATASETS:
        return None
    relative_missing = not os.path.isabs(saved) and not os.path.exists(saved)
    if given is None or str(given) == saved:
        if relative_missing:
            raise ConfigError(
                f"run {str(run_dir)!r} was started with --data {saved!r}, a path relative to the folder it "
                f"was started from, which does not exist from here ({os.getcwd()}): resume it from that folder, "
                f"or give the data's absolute path: --resume {run_dir} --data /absolute/path/to/"
                f"{os.path.basename(os.path.normpath(saved))}"
            )
        return os.path.abspath(saved) if os.path.exists(saved) else None
    given = str(given)
    if not os.path.exists(given):
        return None
    if _same_path(saved, given):
        return os.path.abspath(given)
    if relative_missing and (
        os.path.basename(os.path.normpath(given)) == os.path.basename(os.path.normpath(saved))
        or isinstance(state.get("data_fingerprint"), dict)  # compared with the data's when it is loaded
    ):
        return os.path.abspath(given)
    return None


class StopSignals:
    """Turn the first SIGINT (Ctrl-C) or SIGTERM into a request to stop at the next step boundary.

    Inside the ``with`` block ``requested`` holds the first signal's number (None before); a second signal
    stops at once (``KeyboardInterrupt`` for SIGINT, exit status 143 for SIGTERM). Outside the main thread (where Python cannot install handlers)
    it does nothing and the default behaviour stays.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:  # the second signal: stop now, with the shell's status for it
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self.requested = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()


# --- the other training commands (text-train, audio-train, sela): the same contract, shared checks ---

# The options of text-train, audio-train and sela that may differ on resume (how the run is watched or
# where it runs, not what it computes). ``device`` only within one device type: the random generators'
# states of one type do not transfer to another (checked by :func:`check_resume_device`).
COMMAND_RESUMABLE_OPTIONS = frozenset({"device", "progress", "out"})

_WRITERS = {"image": "train", "text": "text-train", "audio": "audio-train", "sela": "sela"}


def open_command_resume(run: str | Path, *, kind: str, command: str) -> tuple[Path, dict[str, Any]]:
    """The checkpoint of run ``run`` (its folder or ``checkpoint.pt``) and its loaded state, for
    ``contrastkit <command> --resume``; raises :class:`ConfigError` naming the problem when the run cannot
    be continued: no checkpoint yet, another command's run (``kind`` is the one ``command`` writes:
    ``text``, ``audio`` or ``sela``), a checkpoint without the loop's state (written before this command
    could resume), or a finished run. The folder is locked for this process (a second resume started at
    the same time is refused) and a kill's stale temporary files beside the checkpoint are removed."""
    from contrastkit.training.checkpoint import _state_kind, remove_stale_temporaries
    from contrastkit.training.run_folder import lock_run_dir

    folder = Path(run)
    if folder.is_dir() and not (folder / CHECKPOINT_NAME).is_file():
        raise ConfigError(
            f"run folder {str(folder)!r} has no {CHECKPOINT_NAME}: the run stopped before its first checkpoint, "
            f"so there is nothing to resume; start contrastkit {command} again with another --out (or remove "
            "the folder first)"
        )
    path = find_checkpoint(run)
    state = load_checkpoint(path, image_run=False)
    found = _state_kind(state)
    if found != kind:
        writer = _WRITERS.get(found or "", "another program")
        raise ConfigError(
            f"{str(path)!r} was written by contrastkit {writer}, not {command}: "
            + (
                f"resume it with contrastkit {writer} --resume {path.parent}"
                if found in _WRITERS
                else f"give the folder of a {command} run"
            )
        )
    if not isinstance(state.get("progress"), dict):
        raise ConfigError(
            f"checkpoint {str(path)!r} holds no training state to continue (written by a contrastkit whose "
            f"{command} could not resume, or saved only for its weights); start a new run"
        )
    if state.get("finished"):
        p = state["progress"]
        raise ConfigError(
            f"run {str(path.parent)!r} finished ({p.get('done', '?')} of {p.get('total', '?')} "
            f"{p.get('unit', 'step')}s); nothing to resume: its results are in {path.parent / 'metrics.json'}, "
            "or start a new run"
        )
    lock_run_dir(path.parent)
    remove_stale_temporaries(path)
    return path, state


def refuse_changed_options(
    saved: dict[str, Any],
    wanted: dict[str, Any],
    *,
    run_dir: str | Path,
    command: str,
    resumable: frozenset[str] = COMMAND_RESUMABLE_OPTIONS,
) -> None:
    """Raise :class:`ConfigError` when ``wanted`` (the saved options with the flags given again on resume)
    differs from ``saved`` in an option outside ``resumable``, naming each with its old and new value."""
    changed = [
        (name, saved.get(name), wanted.get(name))
        for name in sorted(set(saved) | set(wanted))
        if name not in resumable and saved.get(name) != wanted.get(name)
    ]
    if changed:
        diff = "; ".join(f"--{n.replace('_', '-')}: run has {a!r}, now {b!r}" for n, a, b in changed)
        may = ", ".join("--" + n.replace("_", "-") for n in sorted(resumable - {"out"}))
        raise ConfigError(
            f"cannot resume {str(run_dir)!r} with a changed configuration ({diff}). The saved state cannot "
            f"continue another setting: drop these flags, or start a new contrastkit {command} run. Options "
            f"that may change on resume: {may}"
        )


def check_resume_device(state: dict[str, Any], device: Any, run_dir: str | Path) -> None:
    """Refuse to resume on another device type than the run's (its saved random generators' states, CPU or
    CUDA, do not transfer); another CUDA device is fine."""
    saved = str(state.get("device", "cpu")).split(":")[0]
    now = str(getattr(device, "type", device)).split(":")[0]
    if saved != now:
        raise ConfigError(
            f"cannot resume {str(run_dir)!r} on {now}: it ran on {saved}, whose random generators' states do "
            f"not transfer; resume it with --device {saved}"
        )


def interrupted_message(signum: int, *, command: str, run_dir: Path, done: int, total: int, unit: str) -> str:
    """What a command prints when a stop signal ended it after writing a resumable checkpoint."""
    sig = signal.Signals(signum).name
    return (
        f"{sig} received: stopped after {unit} {done} of {total} and wrote {run_dir / CHECKPOINT_NAME} "
        f"(resumable); continue with: contrastkit {command} --resume {run_dir}"
    )
