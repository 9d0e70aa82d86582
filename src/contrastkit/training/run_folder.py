"""A new run's output folder, checked before any work starts: no run is overwritten, no result is lost.

Every training command (``train``, ``text-train``, ``audio-train``, ``sela``) calls
:func:`prepare_run_dir` on its ``--out`` before it loads data or trains, so a folder that already holds a
run, a path that is a file, or a folder that cannot be created or written is refused at once, not after
the training whose results it was to hold.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from contrastkit.errors import ConfigError
from contrastkit.training.checkpoint import write_atomic

# The files a contrastkit run writes into its folder (any command); one of them marks the folder as a run.
RUN_FILES = ("checkpoint.pt", "metrics.json", "config.yaml", "history.jsonl")

# What to do about a folder that already holds a run, unless a command knows better (an unfinished run of
# its own: resume it, see :func:`contrastkit.training.resume.unfinished_run_hint`).
DEFAULT_HINT = "choose another --out or remove it"


def existing_run_files(run_dir: Path) -> list[str]:
    """The run files already in ``run_dir`` (empty when it is a new or empty folder)."""
    return [name for name in RUN_FILES if (run_dir / name).exists()]


_LOCKS: dict[str, int] = {}  # run folder -> the open descriptor whose lock this process holds until it exits


def _drop_inherited_locks() -> None:
    """In a forked child (a DataLoader worker): close the inherited lock descriptors. An ``flock`` belongs
    to the open file, which a fork shares, so a worker left running after its parent was killed (SIGKILL)
    kept the folder locked, and an immediate ``--resume`` was refused for seconds. Closing the child's copy
    leaves the parent's lock as it is."""
    for fd in _LOCKS.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


def lock_run_dir(run_dir: str | Path) -> None:
    """Hold an exclusive lock on the folder ``run_dir`` for the rest of this process, or raise
    :class:`ConfigError` when another process holds it: two runs (or two resumes) never write into one
    folder at once. The lock is the kernel's ``flock`` on the folder itself (no lock file is left behind;
    it goes when the process ends, however it ends; forked children such as DataLoader workers close their
    inherited copy at once, so a worker outliving a killed parent does not hold it). Where ``fcntl`` does not exist (Windows) nothing is
    locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        return
    key = str(Path(run_dir).resolve())
    if key in _LOCKS:
        return
    fd = os.open(key, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ConfigError(
            f"run folder {str(run_dir)!r} is in use by another contrastkit process (a run or a resume started "
            "at the same time); wait for it to end, or choose another --out"
        ) from None
    _LOCKS[key] = fd


def unlock_run_dir(run_dir: str | Path) -> None:
    """Release :func:`lock_run_dir`'s lock before the process ends (tests; a run that removed its folder)."""
    fd = _LOCKS.pop(str(Path(run_dir).resolve()), None)
    if fd is not None:
        os.close(fd)


def prepare_run_dir(run_dir: str | Path, hint: str = DEFAULT_HINT, *, lock: bool = True) -> Path:
    """Create ``run_dir`` for a new run, or raise :class:`ConfigError` naming why it cannot be used.

    Refused: a path that is a file; a folder holding any of :data:`RUN_FILES` (``hint`` says what to do:
    the image trainer points an unfinished run to ``--resume``); a folder that cannot be created or is
    not writable; a folder another process has locked (``lock``: this process then holds the lock, see
    :func:`lock_run_dir`, and the run files are checked again under it, so of two runs started at once on
    one folder exactly one goes ahead). An existing empty folder, or one holding other files, is accepted.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {str(run_dir)!r} is a file, not a folder; choose another --out")
    held = existing_run_files(run_dir) if run_dir.is_dir() else []
    if held:
        raise ConfigError(f"run folder {str(run_dir)!r} already holds a run ({', '.join(held)}); {hint}")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ConfigError(
            f"cannot create the run folder {str(run_dir)!r} ({reason}); choose another --out"
        ) from e
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"the run folder {str(run_dir)!r} is not writable; choose another --out")
    if lock:
        lock_run_dir(run_dir)
        held = existing_run_files(run_dir)  # written by a run that held the folder between the checks
        if held:
            unlock_run_dir(run_dir)
            raise ConfigError(f"run folder {str(run_dir)!r} already holds a run ({', '.join(held)}); {hint}")
    remove_stale_temporaries(run_dir)
    return run_dir


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporary files (``checkpoint.pt.*.tmp``, ...) that a kill during the write of a run file
    left in ``run_dir``: a new run that takes the folder would otherwise keep them forever."""
    stale = sorted(p for name in RUN_FILES for p in run_dir.glob(name + ".*.tmp") if p.is_file())
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf) replaced by ``None``, recursively: strict JSON
    has no NaN, and a metric that could not be computed is written as ``null``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> Path:
    """Write ``metrics`` as strict JSON (non-finite numbers as ``null``), atomically."""
    text = json.dumps(json_safe(metrics), indent=2, allow_nan=False)
    return write_atomic(path, lambda f: f.write(text), binary=False)


def new_folders(run_dir: Path) -> list[Path]:
    """The folders that creating ``run_dir`` would make: it and its missing parents, innermost first."""
    out: list[Path] = []
    p = Path(run_dir).absolute()
    while not p.exists() and p != p.parent:
        out.append(p)
        p = p.parent
    return out


def remove_if_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (innermost first) while they are empty: undo a failed run's new run folder
    without ever removing a file."""
    for p in folders:
        try:
            p.rmdir()
        except OSError:
            return


@contextmanager
def new_run_folder(run_dir: Path, hint: str = DEFAULT_HINT) -> Iterator[Path]:
    """:func:`prepare_run_dir` for a command's new run (``hint``: what its refusal of a folder that holds a
    run says to do), and, when the run fails (any exception, Ctrl-C too), the folders it created removed
    again while they are empty: a failed run leaves no empty folder."""
    created = new_folders(run_dir)
    prepare_run_dir(run_dir, hint)
    try:
        yield run_dir
    except BaseException:
        remove_if_empty(created)
        raise
