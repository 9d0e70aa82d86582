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

import hashlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import MISSING, fields
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import torch

from contrastkit.errors import ConfigError, ContrastkitError, DivergedError, TrainingError
from contrastkit.training.checkpoint import (
    CHECKPOINT_NAME,
    FOREIGN_RUNS,
    ForeignRunError,
    detect_run_kind,
    find_checkpoint,
    finished_foreign_run_message,
    foreign_run_finished,
    load_checkpoint,
    nonfinite_state_tensors,
    read_run_metrics,
    remove_stale_temporaries,
    save_checkpoint,
    state_kind,
)
from contrastkit.training.config import TrainConfig
from contrastkit.training.run_folder import DEFAULT_HINT, RUN_FILES, lock_run_dir, write_metrics

if TYPE_CHECKING:
    from torch import Tensor

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
    refuse_cuda_run_without_cuda((state.get("progress") or {}).get("device_type", "cpu"), path.parent)
    saved = TrainConfig.from_dict(state["config"], source=str(path), saved_run=True)
    overrides = {k.replace("-", "_"): v for k, v in (overrides or {}).items()}
    data = _resume_data(saved.data, overrides.get("data"), state, path.parent)
    if data is not None:  # the run's data, found: not a change
        overrides["data"] = saved.data
    run_nulls = {k for k, v in saved.to_dict().items() if v is None and k not in overrides}
    wanted = TrainConfig.from_dict(
        {**saved.to_dict(), **overrides}, source="command line", nulls_from_run=run_nulls
    )
    compared = wanted.to_dict()
    if "stream" not in (saved.data_placement, wanted.data_placement):
        compared["data_placement"] = saved.data_placement  # the same batches either way: no change
    if {saved.mined_index, wanted.mined_index} == {"flat", "torch"}:
        compared["mined_index"] = saved.mined_index  # both exact: the same neighbours (ties aside)
    _refuse_missing_faiss(wanted, path.parent)
    refuse_changed_options(
        saved.to_dict(),
        compared,
        run_dir=path.parent,
        command="train",
        resumable=RESUMABLE_OPTIONS,
        also=", and --data-placement among auto, device and host",
    )
    if data is not None:
        wanted = wanted.replace(data=data)
    return wanted.replace(out=str(path.parent)), state


def _refuse_missing_faiss(config: TrainConfig, run_dir: Path) -> None:
    """A mined run that searched with a faiss index (recorded, also when ``--mined-index auto`` chose it)
    resumes only where faiss is installed, or, for the exact ``flat``, with ``--mined-index torch``."""
    if "mined" not in config.negatives or config.mined_index in ("auto", "torch"):
        return
    from contrastkit.negatives.mined import import_faiss

    try:
        import_faiss()
    except ConfigError:
        other = (
            ", or resume it with --mined-index torch (the same exact neighbours; equal scores may come in "
            "another order)"
            if config.mined_index == "flat"
            else ""
        )
        raise ConfigError(
            f"run {str(run_dir)!r} searched its mined negatives with the faiss index {config.mined_index!r} "
            f"(recorded when it started, also when --mined-index auto chose it), and faiss is not installed "
            f"here: pip install faiss-cpu to resume it as it ran{other}"
        ) from None


def same_path(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name the same existing file or folder (False when either does not exist)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _resume_data(saved: str, given: Any, state: dict[str, Any], run_dir: Path) -> str | None:
    """The run's data for a resume from the current folder, as an absolute path, when it is found: the
    saved path itself, or a ``--data`` given again that is the same file or folder; for a run started with
    a relative path from another folder, a ``--data`` with the same name (or any, when the checkpoint keeps
    the data's fingerprint, which the trainer then checks); likewise for a saved absolute path that no
    longer exists (the data was moved). None: nothing to resolve (a data set name such
    as digits, a ``--data`` that is another data set: the comparison of the options refuses it). A saved
    relative path that does not exist from here, and no ``--data``, is a ConfigError saying what to give."""
    from contrastkit.data import KNOWN_DATASETS

    if saved in KNOWN_DATASETS:
        return None
    relative_missing = not os.path.isabs(saved) and not os.path.exists(saved)
    if given is None and os.path.isabs(saved) and not os.path.exists(saved):
        raise ConfigError(
            f"run {str(run_dir)!r} was trained on --data {saved!r}, which no longer exists: if the data was "
            f"moved, give its new place: --resume {run_dir} --data /new/path/to/"
            f"{os.path.basename(os.path.normpath(saved))}"
            + (
                " (checked against the data's fingerprint)"
                if isinstance(state.get("data_fingerprint"), dict)
                else " (this checkpoint keeps no fingerprint of the data: only the folder's name is compared)"
            )
        )
    moved = os.path.isabs(saved) and not os.path.exists(saved)
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
    if same_path(saved, given):
        return os.path.abspath(given)
    if (relative_missing or moved) and (
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
# where it runs, not what it computes): those all three have; text-train adds its own
# (``contrastkit.training.text.TEXT_RESUMABLE_OPTIONS``). ``device`` only within one device type: the random
# generators' states of one type do not transfer to another (checked by :func:`check_resume_device`);
# ``out`` only as the run's own folder (each command checks it).
COMMAND_RESUMABLE_OPTIONS = frozenset({"device", "out"})

_WRITERS = {"image": "train", "text": "text-train", "audio": "audio-train", "sela": "sela"}


def absolute_data(spec: str) -> str:
    """``--data`` as a run keeps it: an existing path made absolute (a resume from another folder finds
    it); a data set name (digits) as it is."""
    from contrastkit.data import KNOWN_DATASETS

    if spec in KNOWN_DATASETS or not os.path.exists(spec):
        return spec
    return os.path.abspath(spec)


def unfinished_run_hint(run_dir: str | Path, *, kind: str, command: str) -> str:
    """What the refusal of a new run's folder that already holds a run says to do
    (:func:`~contrastkit.training.run_folder.prepare_run_dir`'s ``hint``): an unfinished run of ``command``
    (whose checkpoints are of ``kind``: ``text``, ``audio`` or ``sela``) is pointed to ``--resume``; any
    other run folder gets :data:`~contrastkit.training.run_folder.DEFAULT_HINT`."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        return DEFAULT_HINT
    try:
        state = load_checkpoint(path, image_run=False)
    except ContrastkitError:
        return DEFAULT_HINT  # not readable as a resumable run: the folder is refused all the same
    progress = state.get("progress")
    if state_kind(state) == kind and isinstance(progress, dict) and not state.get("finished"):
        return (
            f"it stopped at {progress.get('unit', 'step')} {progress.get('done')} of {progress.get('total')}: "
            f"continue it with contrastkit {command} --resume {run_dir}, or choose another --out"
        )
    return DEFAULT_HINT


def open_command_resume(run: str | Path, *, kind: str, command: str) -> tuple[Path, dict[str, Any]]:
    """The checkpoint of run ``run`` (its folder or ``checkpoint.pt``) and its loaded state, for
    ``contrastkit <command> --resume``; raises :class:`ConfigError` naming the problem when the run cannot
    be continued: no checkpoint yet, another command's run (``kind`` is the one ``command`` writes:
    ``text``, ``audio`` or ``sela``), a checkpoint without the loop's state (written before this command
    could resume), or a finished run. The folder is locked for this process (a second resume started at
    the same time is refused) and a kill's stale temporary files beside the checkpoint are removed."""
    folder = Path(run)
    if folder.is_dir() and not (folder / CHECKPOINT_NAME).is_file():
        _refuse_folder_without_checkpoint(folder, kind=kind, command=command)
    path = find_checkpoint(run)
    state = load_checkpoint(path, image_run=False)
    found = state_kind(state)
    if found != kind and found in _WRITERS and state.get("finished"):
        raise ConfigError(finished_foreign_run_message(path.parent, found))
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


def _refuse_folder_without_checkpoint(folder: Path, *, kind: str, command: str) -> None:
    """Raise the reason why ``folder`` (no checkpoint.pt) cannot be resumed: another command's run, a
    finished run whose checkpoint was removed (judged from its metrics.json by
    :func:`~contrastkit.training.checkpoint.foreign_run_finished`: audio-train and sela write it only at the
    end, text-train marks it finished, and removes its checkpoint then without --save-model), a folder that
    holds no run at all, or a run that stopped before its first checkpoint."""
    from contrastkit.training.run_folder import existing_run_files

    found = detect_run_kind(folder)
    if found is not None and found != kind and found in FOREIGN_RUNS:
        if foreign_run_finished(folder, found):
            raise ConfigError(finished_foreign_run_message(folder, found))
        raise ForeignRunError(folder, found)
    files = existing_run_files(folder)
    temporaries = list(folder.glob(CHECKPOINT_NAME + ".*.tmp"))
    if found == kind and foreign_run_finished(folder, kind):
        raise ConfigError(_finished_without_checkpoint_message(folder, kind))
    if not files and not temporaries:
        if any(folder.iterdir()):
            raise ConfigError(
                f"{str(folder)!r} is not a run folder (it holds no {', '.join(RUN_FILES)}): give the folder of "
                f"a contrastkit {command} run"
            )
        raise ConfigError(
            f"{str(folder)!r} is empty: not a run folder, or a run that stopped before its first checkpoint; "
            f"nothing to resume: give the folder of a contrastkit {command} run, or start one"
        )
    raise ConfigError(
        f"run folder {str(folder)!r} has no {CHECKPOINT_NAME}: the run stopped before its first checkpoint, "
        f"so there is nothing to resume; start contrastkit {command} again with another --out (or remove "
        "the folder first)"
    )


def _finished_without_checkpoint_message(folder: Path, kind: str) -> str:
    """The refusal of a finished run of ``kind`` whose checkpoint is gone: its steps when its metrics.json
    names them (text-train's), and why it went (text-train removes it at the end without --save-model)."""
    metrics = read_run_metrics(folder) or {}
    done, total = metrics.get("steps"), metrics.get("total_steps")
    steps = f" ({done} of {total} steps)" if isinstance(done, int) and isinstance(total, int) else ""
    why = " at the end (without --save-model)" if kind == "text" else ""
    return (
        f"run {str(folder)!r} finished{steps}; its {CHECKPOINT_NAME} was removed{why}: nothing to resume: its "
        f"results are in {folder / 'metrics.json'}, or start a new run"
    )


# what a resumable checkpoint of audio-train and sela holds (their resume reads each of these)
REQUIRED_KEYS = {
    "audio": (
        "learner",
        "optimizer",
        "scheduler",
        "views",
        "references",
        "rng",
        "loop",
        "config",
        "progress",
    ),
    "sela": (
        "model",
        "optimizer",
        "scheduler",
        "normalisation",
        "references",
        "rng",
        "loop",
        "config",
        "progress",
    ),
}


def refuse_incomplete_checkpoint(path: Path, state: dict[str, Any], kind: str) -> None:
    """Raise :class:`ConfigError` naming the first key a resumable checkpoint of ``kind`` lacks."""
    for key in REQUIRED_KEYS.get(kind, ()):
        if key not in state:
            raise ConfigError(
                f"checkpoint {str(path)!r} lacks {key!r}: written by another version or damaged; restore it "
                "from a copy, or start a new run"
            )


def refuse_changed_options(
    saved: dict[str, Any],
    wanted: dict[str, Any],
    *,
    run_dir: str | Path,
    command: str,
    resumable: frozenset[str] = COMMAND_RESUMABLE_OPTIONS,
    also: str = "",
) -> None:
    """Raise :class:`ConfigError` when ``wanted`` (the saved options with the flags given again on resume)
    differs from ``saved`` in an option outside ``resumable``, naming each with its old and new value;
    ``also`` ends the list of the options that may change (train: its rule for ``--data-placement``)."""
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
            f"that may change on resume: {may}{also}"
        )


def other_device_message(run_dir: str | Path, saved: str, now: str, *, note: str = "") -> str:
    """The refusal of a resume on device type ``now`` of a run that ran on ``saved`` (its random generators'
    states do not transfer between types). A CUDA run on a machine without CUDA is told to resume on a
    machine with a GPU (asking for ``--device cuda`` here would only be refused); otherwise the run's device
    type is named, with ``note`` after it."""
    if _cuda_run_without_cuda(saved):
        return (
            f"cannot resume {str(run_dir)!r} on {now}: it ran on cuda; its random generators' states do not "
            "transfer to the CPU: resume it on a machine with a GPU (--device cuda there)"
        )
    return (
        f"cannot resume {str(run_dir)!r} on {now}: it ran on {saved}, whose random generators' states do "
        f"not transfer; resume it with --device {saved}{note}"
    )


def refuse_cuda_run_without_cuda(saved: str, run_dir: str | Path) -> None:
    """Before the device is resolved: a run that ran on CUDA, resumed where there is none, is refused as
    needing a GPU (not with the advice to ask for another ``--device``)."""
    if _cuda_run_without_cuda(saved):
        raise ConfigError(other_device_message(run_dir, "cuda", "cpu"))


def _cuda_run_without_cuda(saved: str) -> bool:
    """Whether a run on device (type) ``saved`` ran on CUDA and this machine has none."""
    return str(saved).split(":")[0] == "cuda" and not torch.cuda.is_available()


def check_resume_device(state: dict[str, Any], device: Any, run_dir: str | Path) -> None:
    """Refuse to resume on another device type than the run's (its saved random generators' states, CPU or
    CUDA, do not transfer); another CUDA device is fine."""
    saved = str(state.get("device", "cpu")).split(":")[0]
    now = str(getattr(device, "type", device)).split(":")[0]
    if saved != now:
        raise ConfigError(other_device_message(run_dir, saved, now))


@contextmanager
def refuse_misfit_checkpoint(run_dir: str | Path, advice: str = "start a new run") -> Iterator[None]:
    """Around loading a checkpoint's states into the pieces a configuration builds: a state that does not
    fit them (a tensor of another shape, a missing key) is a :class:`ConfigError` naming the first line of
    the error, then ``advice``."""
    try:
        yield
    except ContrastkitError:
        raise  # already says what is wrong (faiss missing for a mined index, ...); not a misfit
    except KeyError as exc:
        raise ConfigError(
            f"the checkpoint in {str(run_dir)!r} lacks {exc.args[0] if exc.args else '?'!r}: written by another "
            f"version or damaged; {advice}"
        ) from None
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"the checkpoint in {str(run_dir)!r} does not fit the model this configuration builds "
            f"({first_mismatch(exc)}); {advice}"
        ) from None


def first_mismatch(exc: BaseException) -> str:
    """The first mismatch that ``load_state_dict``'s error names (its first missing, unexpected or
    size-mismatched key), else the error's first line; at most ~200 characters."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    first = lines[0]
    if first.startswith("Error(s) in loading state_dict") and len(lines) > 1:
        first = lines[1]
        head, sep, keys = first.partition(": ")
        if sep and head.endswith(
            "key(s) in state_dict"
        ):  # Missing / Unexpected key(s) in state_dict: "a", "b".
            names = [k.strip().strip('".') for k in keys.split(", ")]
            more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
            first = f"{head}: {names[0]}{more}"
    return first if len(first) <= 200 else first[:197] + "..."


def interrupted_message(signum: int, *, command: str, run_dir: Path, done: int, total: int, unit: str) -> str:
    """What a command prints when a stop signal ended it after writing a resumable checkpoint."""
    sig = signal.Signals(signum).name
    return (
        f"{sig} received: stopped after {unit} {done} of {total} and wrote {run_dir / CHECKPOINT_NAME} "
        f"(resumable); continue with: contrastkit {command} --resume {run_dir}"
    )


# --- audio-train and sela: runs of whole epochs, their options a dataclass (the flags come from its fields)


def open_resume(run: str | Path, *, kind: str, command: str) -> tuple[Path, dict[str, Any]]:
    """:func:`open_command_resume`, with a checkpoint of an older contrastkit (written without the format
    mark) refused in this command's words."""
    try:
        path, state = open_command_resume(run, kind=kind, command=command)
        refuse_incomplete_checkpoint(path, state, kind)
        return path, state
    except ForeignRunError as exc:
        if exc.kind == kind:
            raise ConfigError(
                f"{str(exc.path)!r} holds no training state to continue (written by a contrastkit whose "
                f"{command} could not resume); start a new run"
            ) from None
        raise ConfigError(exc.message_for(f"{command} --resume")) from None


# audio-train's and sela's options that may differ on resume: those of every command, and --linear-probe,
# which only changes the final evaluation (the references evaluated before training keep the run's setting)
EPOCH_RUN_RESUMABLE_OPTIONS = COMMAND_RESUMABLE_OPTIONS | {"linear_probe"}


def _same_precision(a: Any, b: Any, device: str) -> bool:
    """Whether ``--precision`` ``a`` and ``b`` resolve to the same autocast dtype on the run's ``device``
    (``auto`` is fp32 on the CPU, bf16 on CUDA)."""
    from contrastkit.training.precision import autocast_dtype

    try:
        kind = torch.device(str(device).split(":")[0] or "cpu")
        return autocast_dtype(str(a), kind) == autocast_dtype(str(b), kind)
    except (ValueError, RuntimeError):  # not a precision or a device: compared as given
        return False


def resumed_config(
    cls: type,
    state: dict[str, Any],
    given: dict[str, Any],
    run_dir: Path,
    command: str,
    resumable: frozenset[str] = EPOCH_RUN_RESUMABLE_OPTIONS,
    *,
    paths: tuple[str, ...] = (),
) -> Any:
    """The configuration a resume continues with: the run's own (``state["options"]``, as given when it
    started), with the options of ``resumable`` (``--device``, ``--linear-probe``) as given again. Any
    other option given again must equal the run's, as given or as resolved (``--lr`` equal to the derived
    rate, ``--precision fp32`` for ``auto`` on the CPU, are no change); else :class:`ConfigError` names
    it. ``--data`` may be the same file by another path, or the data moved elsewhere (then checked
    against the run's fingerprint when loaded). ``paths`` (text-train: ``sentences``, ``sts``; each also
    in ``resumable``) are data the command checks by fingerprint: any path may be given again, and a run's
    path that no longer exists, not given again, is refused asking for the data's new place."""
    names = {f.name for f in fields(cls)}
    # an option the run's contrastkit did not have yet: the run had its default's behaviour
    defaults = {f.name: f.default for f in fields(cls) if f.default is not MISSING}
    options = defaults | {
        k: v for k, v in dict(state.get("options") or state["config"]).items() if k in names
    }
    resolved = defaults | {k: v for k, v in dict(state["config"]).items() if k in names}
    given = dict(given)
    out = given.pop("out", None)
    if out is not None and not same_path(out, run_dir):
        raise ConfigError(
            f"--resume continues the run in its own folder ({str(run_dir)!r}): drop --out {out}"
        )
    for name in paths:  # the run's data moved: say how to give its new place
        value = options.get(name)
        if value and name not in given and not os.path.exists(value):
            flag = "--" + name.replace("_", "-")
            raise ConfigError(
                f"run {str(run_dir)!r} was started with {flag} {value}, which does not exist now: give the "
                f"data's new place with: contrastkit {command} --resume {run_dir} {flag} NEW_PATH (the same "
                "data: its fingerprint is checked)"
            )
    data, saved_data = given.pop("data", None), str(options.get("data", ""))
    if data is not None and data != saved_data and not same_path(data, saved_data):
        if os.path.isabs(saved_data) and not os.path.exists(saved_data) and os.path.exists(data):
            options["data"] = os.path.abspath(data)  # the run's data, moved: checked by its fingerprint
        else:
            given["data"] = data  # other data: refused below
    wanted = dict(resolved)
    device = str(state.get("device", "cpu"))
    for name, value in given.items():
        if value == options.get(name):  # equal to the option as given, or to its resolved value: unchanged
            continue
        if name == "precision" and _same_precision(value, resolved.get(name), device):
            continue  # the same autocast dtype on the run's device: unchanged
        wanted[name] = value
    refuse_changed_options(resolved, wanted, run_dir=run_dir, command=command, resumable=resumable)
    again = {k: v for k, v in given.items() if k in resumable and k in names and k != "out"}
    return cls(**{**options, **again, "out": str(run_dir)})


def open_resumed_run(
    cls: type, run: str | Path, given: dict[str, Any] | None, *, kind: str, command: str
) -> tuple[Any, Path, Any, dict[str, Any]]:
    """``contrastkit <command> --resume RUN`` with the options ``given`` again: the run's checkpoint opened
    (:func:`open_resume`), the configuration to continue with (:func:`resumed_config`) and its device,
    refused when of another type than the run's (:func:`check_resume_device`). Returns the configuration,
    the run folder, the device and the checkpoint's state."""
    from contrastkit.training.trainer import resolve_device

    path, state = open_resume(run, kind=kind, command=command)
    config = resumed_config(cls, state, given or {}, path.parent, command)
    refuse_cuda_run_without_cuda(state.get("device", "cpu"), path.parent)
    device = resolve_device(config.device)
    check_resume_device(state, device, path.parent)
    return config, path.parent, device, state


def data_fingerprint(*tensors: Tensor) -> dict[str, Any]:
    """Items and a SHA-256 of the training data (``tensors``: e.g. waveforms and labels), so a resume on
    other data is refused."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return {"train_items": int(tensors[0].shape[0]), "sha256": h.hexdigest()}


def check_fingerprint(state: dict[str, Any], now: dict[str, Any], run_dir: Path, data: str) -> None:
    """Refuse to resume on training data other than the run's (the saved order indexes its items)."""
    old = state.get("data_fingerprint")
    if isinstance(old, dict) and (old.get("train_items"), old.get("sha256")) != (
        now["train_items"],
        now["sha256"],
    ):
        raise ConfigError(
            f"cannot resume {str(run_dir)!r}: its training data ({data}) changed since the run started "
            f"({old.get('train_items')} training items then, {now['train_items']} now"
            f"{'' if old.get('train_items') != now['train_items'] else ', other contents'}); give the run's "
            "data with --data, or start a new run"
        )


def refuse_nonfinite_state(state: dict[str, Any], *, where: str, kept: str) -> None:
    """Raise :class:`TrainingError` before a checkpoint is written when ``state`` holds a NaN or an
    infinity (model, optimizer, ...): the previous checkpoint (``kept`` describes it) stays as it is."""
    bad = nonfinite_state_tensors(state)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise TrainingError(
            f"the training state became non-finite {where} ({', '.join(bad[:3])}{more} hold NaN or inf): "
            f"the checkpoint was not written, {kept}. Resuming would repeat the same steps: start a new run "
            "with a lower --lr"
        )


def refuse_diverged_features(
    features: dict[str, Tensor], *, after: str, run_dir: Path, advice: str = "a lower --lr"
) -> None:
    """Raise :class:`TrainingError` when the final evaluation's features (named splits of ``(N, D)``) hold a
    NaN or an infinity although the state was finite (its checkpoint of the last epoch was written): the
    weights grew until the encoder's outputs overflow. Such a model cannot be evaluated, and a resume would
    evaluate the same one, so the advice is a new run with ``advice``; no results are written.
    ``after`` says how far the run got ("its 30 epochs", "all 500 steps")."""
    bad = torch.stack(
        [(~torch.isfinite(f.detach().float()).all(dim=1)).sum().cpu() for f in features.values()]
    ).tolist()  # one host synchronisation
    if not any(bad):
        return
    counts = ", ".join(
        f"{b} of {f.shape[0]} {name}" for b, (name, f) in zip(bad, features.items(), strict=True) if b
    )
    raise DivergedError(
        f"the run diverged: after {after} the encoder's features are NaN or infinite for "
        f"{counts} although its weights are finite (they grew until its outputs overflow); no results "
        f"were written to metrics.json. {run_dir / CHECKPOINT_NAME} holds this model, and its resume "
        f"would evaluate it again: start a new run with {advice}"
    )


def describe_kept(run_dir: Path, done: int | None, total: int) -> str:
    """What the run folder keeps after a refused checkpoint (for :func:`refuse_nonfinite_state`)."""
    if done is None:
        return "and the run has none yet"
    return f"{run_dir / CHECKPOINT_NAME} keeps the state after epoch {done} of {total}"


def save_epoch_checkpoint(
    state: dict[str, Any], *, run_dir: Path, total_steps: int, epochs: int, kept: int | None
) -> Path:
    """Write the resumable checkpoint ``state`` (its ``step`` and ``progress``: epochs done) into
    ``run_dir``; a state that is not finite is refused (:func:`refuse_nonfinite_state`) and the checkpoint
    of epoch ``kept`` (None: none yet) stays."""
    step = int(state["step"])
    per_epoch = max(total_steps // max(epochs, 1), 1)
    epoch = min(
        -(-step // per_epoch), epochs
    )  # the epoch of step ``step`` (1-based): step 36 of 6 a epoch: 6
    where = f"by step {step} of {total_steps} (epoch {epoch})" if step > 0 else "before the first step"
    refuse_nonfinite_state(state, where=where, kept=describe_kept(run_dir, kept, epochs))
    return save_checkpoint(state, run_dir / CHECKPOINT_NAME)


def write_finished_run(
    state: dict[str, Any], metrics: dict[str, Any], *, run_dir: Path, epochs: int, kept: int | None
) -> None:
    """The end of a run: ``metrics.json``, then the finished checkpoint (``state`` marked finished after
    ``epochs`` epochs; refused when not finite, the resumable one of epoch ``kept`` staying). Metrics first:
    a kill between the two leaves the resumable checkpoint, whose resume writes both."""
    final = {**state, "progress": {"done": epochs, "total": epochs, "unit": "epoch"}, "finished": True}
    refuse_nonfinite_state(final, where="after training", kept=describe_kept(run_dir, kept, epochs))
    write_metrics(run_dir / "metrics.json", metrics)  # strict JSON: a skipped linear probe is null
    save_checkpoint(final, run_dir / CHECKPOINT_NAME)


def epoch_run_interrupted(
    signum: int,
    *,
    command: str,
    run_dir: Path,
    step: int,
    total_steps: int,
    epoch: int,
    epochs: int,
    mid_epoch: bool,
) -> TrainingInterrupted:
    """The :class:`TrainingInterrupted` to raise when ``signum`` stopped the run after its checkpoint was
    written: its message names the step mid-epoch, else the epoch."""
    return TrainingInterrupted(
        interrupted_message(
            signum,
            command=command,
            run_dir=run_dir,
            done=step if mid_epoch else epoch,
            total=total_steps if mid_epoch else epochs,
            unit="step" if mid_epoch else "epoch",
        ),
        signum=signum,
        checkpoint=run_dir / CHECKPOINT_NAME,
        step=step,
    )


@contextmanager
def crash_note(*, command: str, run_dir: Path, epochs: int, kept: Callable[[], int | None]) -> Iterator[None]:
    """Around the training loop: a crash (out of memory, ..., a second Ctrl-C or SIGTERM; not a
    :class:`ContrastkitError`, which says itself what happened) first prints the epoch whose checkpoint the
    run folder keeps (``kept()``; None: none yet) and how to continue from it, then goes on."""
    try:
        yield
    except ContrastkitError:
        raise
    except BaseException:
        done = kept()
        if done is not None:
            print(
                f"contrastkit: {run_dir / CHECKPOINT_NAME} keeps epoch {done} of {epochs}; "
                f"continue with: contrastkit {command} --resume {run_dir}",
                file=sys.stderr,
                flush=True,
            )
        raise


@contextmanager
def final_evaluation(
    *, command: str, run_dir: Path, total_steps: int, on_stop: Callable[[int], str] | None = None
) -> Iterator[None]:
    """Around the final evaluation of a run (and the writing of its results), after the resumable
    checkpoint of its last step: a SIGINT or SIGTERM stops at once, as a :class:`TrainingInterrupted`
    saying that the run is kept and its resume only evaluates (exit status 130 / 143). ``on_stop``, when
    given, is called with the signal's number first, for a side effect (text-train writes its interrupted
    metrics.json), and returns the message; a further signal meanwhile is recorded, not raised."""
    received: list[int] = []
    stopping = False

    def handle(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        if not stopping:  # the first: stop the evaluation; later ones do not interrupt the stop
            raise KeyboardInterrupt

    old: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for s in StopSignals.SIGNALS:
            old[s] = signal.signal(s, handle)
    try:
        yield
    except KeyboardInterrupt:
        stopping = True
        signum = received[0] if received else signal.SIGINT
        message = (
            on_stop(signum)
            if on_stop is not None
            else f"{signal.Signals(signum).name} received: stopped during the final evaluation; the run is "
            f"kept ({run_dir / CHECKPOINT_NAME} holds every epoch, its resume only evaluates): continue with: "
            f"contrastkit {command} --resume {run_dir}"
        )
        raise TrainingInterrupted(
            message,
            signum=signum,
            checkpoint=run_dir / CHECKPOINT_NAME,
            step=total_steps,
        ) from None
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
