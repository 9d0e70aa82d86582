"""Checkpoints: written atomically (temporary file + rename), read with a clear error when unusable.

A kill at any moment leaves either the previous checkpoint or the new one under the checkpoint's name,
never a partial file: the bytes go to a temporary file in the same folder, are flushed to disk
(``fsync``), and the temporary file is renamed over the old one (``os.replace``, atomic on POSIX). A kill
mid-write leaves the temporary file behind; :func:`remove_stale_temporaries` clears it on resume.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch

from contrastkit.errors import ContrastkitError

FORMAT = "contrastkit-checkpoint"
VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


def _reason(exc: OSError) -> str:
    """The reason of an ``OSError`` in words (``Read-only file system``), without the errno and path."""
    if exc.errno is not None:
        return os.strerror(exc.errno)
    return str(exc) or exc.__class__.__name__


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def cannot_write(path: str | Path, exc: OSError) -> ContrastkitError:
    """The error for an output file that the file system refused (read-only, no permission, disk full)."""
    return ContrastkitError(
        f"cannot write {str(path)!r} ({_reason(exc)}): choose another location or check its permissions "
        "and free space"
    )


IN_RUN_FOLDER = "check its permissions, or copy the run folder somewhere writable and give the copy"
"""What to do when a file that is written into its run folder (report.html, metrics.json) cannot be."""


def check_output_folder(
    path: str | Path, *, advice: str = "choose another location or check its permissions"
) -> Path:
    """Check, before any work, that the folder of output file ``path`` exists, is a folder and is writable;
    raise a :class:`ContrastkitError` naming the folder and what to do otherwise (``advice`` when it is not
    writable: :data:`IN_RUN_FOLDER` for outputs that have no other place). Returns ``path``."""
    target = Path(path)
    folder = target.parent
    if not folder.exists():
        missing = folder
        while not missing.parent.exists() and missing.parent != missing:
            missing = missing.parent
        if missing.parent.exists() and not missing.parent.is_dir():
            raise ContrastkitError(
                f"{str(missing.parent)!r} is a file, not a folder, so {str(target)!r} cannot be written "
                "inside it; choose another location"
            )
        raise ContrastkitError(f"folder {str(folder)!r} does not exist; create it first")
    if not folder.is_dir():
        raise ContrastkitError(
            f"{str(folder)!r} is a file, not a folder, so {str(target)!r} cannot be written inside it; "
            "choose another location"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ContrastkitError(
            f"folder {str(folder)!r} is not writable, so {str(target)!r} cannot be written: {advice}"
        )
    return target


def write_atomic(path: str | Path, write: Callable[[IO[Any]], None], *, binary: bool = True) -> Path:
    """Write a file atomically: ``write(f)`` fills a temporary file beside ``path``, which is flushed to disk
    and renamed over ``path``; a crash or kill mid-write leaves the previous file intact.

    The file gets the permissions of a newly created file (``0o666`` less the umask), not ``mkstemp``'s
    ``0o600``. When the file system refuses (read-only, no permission, disk full) the temporary file is
    removed and a :class:`ContrastkitError` names the path and the reason.

    In the main thread, a SIGINT or SIGTERM that arrives while the file is written and renamed is handed to
    its handler only after the file is complete: a second Ctrl-C or SIGTERM (whose
    :class:`~contrastkit.training.resume.StopSignals` handler raises) would otherwise be raised inside
    ``torch.save``, whose zip writer turns it into a ``RuntimeError``. The handlers are swapped for a
    recorder during the write, not masked: with other threads running (data loaders, the pinned-memory
    thread), the kernel may deliver a process signal to a thread whose mask does not block it, and Python
    then runs the handler in the main thread anyway.
    """
    with _signals_deferred():
        return _write_atomic(Path(path), write, binary=binary)


_DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM recorded during the block (main thread) and handed, in order, to the handlers
    that were installed before it once it ends: a Python handler is called, the default action of SIGTERM
    (``SIG_DFL``) is taken by raising the signal again, an ignored signal stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: arrived.append(signum)) for s in _DEFERRED_SIGNALS}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        for signum in arrived:
            handler = old[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


def _write_atomic(path: Path, write: Callable[[IO[Any]], None], *, binary: bool) -> Path:
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_current_umask())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise cannot_write(path, exc) from exc
    except RuntimeError as exc:
        # torch.save's zip writer reports a failed write (ENOSPC) as a RuntimeError ("unexpected pos")
        if tmp is None or ("inline_container" not in str(exc) and "PytorchStreamWriter" not in str(exc)):
            raise
        free = _free_bytes(path.parent)
        reason = "the write failed" + ("" if free is None else f"; {free / 2**20:.1f} MiB free there")
        raise ContrastkitError(
            f"cannot write {str(path)!r} ({reason}; torch.save: {str(exc).splitlines()[0]}): free some space "
            "or choose another location; the previous file, if any, is unchanged"
        ) from exc
    return path


def _free_bytes(folder: Path) -> int | None:
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: a crash mid-write leaves the previous file intact."""
    payload = {"format": FORMAT, "version": VERSION, **state}
    return write_atomic(path, lambda f: torch.save(payload, f))


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete the temporary files that a kill during :func:`save_checkpoint` left beside ``path``."""
    path = Path(path)
    stale = sorted(path.parent.glob(path.name + ".*.tmp"))
    for tmp in stale:
        try:
            tmp.unlink(missing_ok=True)
        except OSError as exc:  # a read-only folder: the resume's first write says so, clearly
            warnings.warn(
                f"could not remove the stale temporary file {str(tmp)!r} ({_reason(exc)})", stacklevel=2
            )
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


class ForeignRunError(ContrastkitError):
    """A run folder or checkpoint that another contrastkit command wrote (text-train, audio-train, sela).

    ``eval``, ``export``, ``embed`` and ``train --resume`` read image runs (those of ``contrastkit train``);
    :meth:`message_for` words the refusal for one command (the command line uses it).
    """

    def __init__(self, path: str | Path, kind: str, *, resumable: bool | None = None) -> None:
        self.path = Path(path)
        self.kind = kind
        # False: a checkpoint written before its command could resume (no format mark); None: not known
        self.resumable = resumable
        super().__init__(self.message_for(None))

    def message_for(self, command: str | None) -> str:
        writer, results, weights = FOREIGN_RUNS[self.kind]
        article = "an" if self.kind == "audio" else "a"
        head = f"{str(self.path)!r} is {article} {self.kind} run (written by contrastkit {writer})"
        if command is not None and command.endswith(" --resume"):
            resumer = command[: -len(" --resume")]
            runs = "image runs (train's runs)" if resumer == "train" else f"{resumer} runs"
            folder = self.path if self.path.is_dir() else self.path.parent
            if resumer == "train" and foreign_run_finished(folder, self.kind):
                return finished_foreign_run_message(folder, self.kind)
            if self.resumable is False:
                return (
                    f"{head}; `contrastkit {command}` continues {runs} only, and this run was written by a "
                    f"contrastkit whose {writer} could not resume: no command can continue it; start a new run"
                )
            return (
                f"{head}; `contrastkit {command}` continues {runs} only: continue it with "
                f"contrastkit {writer} --resume {self.path}"
            )
        if command is None:
            what = "contrastkit eval, export, embed and train --resume support"
        else:
            what = f"`contrastkit {command}` supports"
        folder = self.path if self.path.is_dir() else self.path.parent
        if not foreign_run_finished(folder, self.kind) and self.resumable is not False:
            # stopped before its results: there is no metrics.json to point to, but a resume to give
            return (
                f"{head}; {what} image runs (train's runs). {writer} evaluates its encoder itself, when it "
                f"finishes, and this run is unfinished: continue it with contrastkit {writer} --resume "
                f"{self.path}; {results} are then in the run's metrics.json"
            )
        return (
            f"{head}; {what} image runs (train's runs). {writer} evaluates its encoder itself: {results} "
            f"are in the run's metrics.json; {weights}"
        )


def read_run_metrics(folder: Path) -> dict[str, Any] | None:
    """The run folder's metrics.json as a dict; None when it is missing, unreadable or not a JSON object."""
    import json

    try:
        metrics = json.loads((Path(folder) / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) else None


def foreign_run_finished(folder: Path, kind: str) -> bool:
    """Whether the run of ``kind`` (``text``, ``audio`` or ``sela``; another command's, or for its own
    ``--resume`` one whose checkpoint is gone) in ``folder`` finished, judged cheaply from its metrics.json:
    audio-train and sela write it only at the end, text-train marks it ``finished: true`` at the end."""
    metrics = read_run_metrics(folder)
    if metrics is None:
        return False
    return kind in ("audio", "sela") or metrics.get("finished") is True


def finished_foreign_run_message(folder: Path, kind: str) -> str:
    """The refusal of another command's finished run (``kind``: ``image``, ``text``, ``audio`` or ``sela``)
    given to ``--resume``: resuming it with its own command would only say it finished, so say that."""
    writer = "train" if kind == "image" else FOREIGN_RUNS[kind][0] if kind in FOREIGN_RUNS else kind
    return (
        f"{str(folder)!r} is a finished {writer} run: nothing to resume; its results are in "
        f"{folder / 'metrics.json'}"
    )


# kind: (the command that writes it, what its metrics.json holds, where the trained weights are)
FOREIGN_RUNS = {
    "text": (
        "text-train",
        "the STS-B Spearman before and after training",
        "with --save-model its checkpoint.pt holds the encoder's state_dict and tokenizer for your own code "
        "(torch.load); no contrastkit command evaluates, exports or embeds with it",
    ),
    "audio": (
        "audio-train",
        "the kNN and linear-probe top-1 on the FSDD test takes",
        "its checkpoint.pt holds the AudioCNN's state_dict under 'model' for your own code (torch.load); no "
        "contrastkit command evaluates, exports or embeds with it",
    ),
    "sela": (
        "sela",
        "the clusters' NMI/ARI and the features' kNN and linear-probe top-1",
        "its checkpoint.pt holds the model's state_dict under 'model' for your own code (torch.load); no "
        "contrastkit command evaluates, exports or embeds with it",
    ),
}


def state_kind(state: Any) -> str | None:
    """Which command wrote a loaded checkpoint: ``image`` (train), ``text``, ``audio``, ``sela`` or None."""
    if not isinstance(state, dict):
        return None
    if "data_info" in state:
        return "image"
    config = state.get("config")
    keys = set(config) if isinstance(config, dict) else set()
    if "tokenizer" in state or {"sentences", "sts", "eval_split"} & keys:
        return "text"
    if {"clip_seconds", "n_mels"} & keys or "views" in state:
        return "audio"
    if {"lam", "cross_view", "marginal_std"} & keys:
        return "sela"
    return None


def detect_run_kind(run: str | Path) -> str | None:
    """Which command wrote run folder ``run`` (or the folder of the file ``run``), from its metrics.json and
    config.yaml: ``image`` (train), ``text`` (text-train), ``audio`` (audio-train), ``sela``, or None."""
    p = Path(run)
    folder = p if p.is_dir() else p.parent
    metrics = read_run_metrics(folder)
    if metrics is not None:
        if "sts_spearman_after" in metrics or "sts_spearman_before" in metrics:
            return "text"
        if "heads_test" in metrics or "pseudo_labels_train" in metrics:
            return "sela"
        if "mfcc" in metrics:
            return "audio"
        if "knn_top1" in metrics:
            return "image"
        kind = state_kind(metrics)  # audio and sela keep their config in metrics.json
        if kind is not None:
            return kind
    try:
        import yaml

        config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    except Exception:  # missing, unreadable or not YAML: nothing to tell from it
        config = None
    if isinstance(config, dict):
        if {"sentences", "sts", "eval_split"} & set(config):
            return "text"
        if {"encoder", "views", "negatives"} <= set(config):
            return "image"
    return None


def refuse_foreign_run(run: str | Path) -> None:
    """Raise :class:`ForeignRunError` when ``run`` is a folder (or a file in one) of another command's run."""
    kind = detect_run_kind(run)
    if kind in FOREIGN_RUNS:
        p = Path(run)
        raise ForeignRunError(p if p.is_dir() else p.parent, kind)


def find_checkpoint(run_or_checkpoint: str | Path) -> Path:
    """Accept a run folder (uses its checkpoint.pt) or a checkpoint file."""
    p = Path(run_or_checkpoint)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
        if not p.is_file():
            refuse_foreign_run(p.parent)
            raise ContrastkitError(
                f"run folder {str(p.parent)!r} has no {CHECKPOINT_NAME}; did the run finish?"
            )
    elif not p.is_file():
        raise ContrastkitError(f"{str(p)!r} does not exist; give a run folder or a checkpoint file")
    return p


def _short_reason(exc: BaseException) -> str:
    """``Class: first line`` of an exception, without torch's weights-only boilerplate, at most ~100 chars."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if len(first) > 100:
        first = first[:97] + "..."
    return f"{exc.__class__.__name__}: {first}" if first else exc.__class__.__name__


def _unreadable(p: Path, what: str) -> ContrastkitError:
    return ContrastkitError(
        f"{str(p)!r} is not a readable contrastkit checkpoint ({what}); it cannot be read: give the run folder "
        f"or its {CHECKPOINT_NAME}, or restore it from a copy"
    )


def _damaged(p: Path, reason: str) -> ContrastkitError:
    """The error for a torch file that cannot be read whole (cut off, bytes changed), whatever run it is of."""
    return ContrastkitError(
        f"checkpoint {str(p)!r} is truncated or damaged ({reason}): restore it from a copy, or give another "
        "checkpoint (or start a new run)"
    )


def _read(p: Path, map_location: str | torch.device) -> Any:
    """``torch.load`` (tensors and plain containers only), with an error that says why a file is unusable.

    A torch zip file is also checked against its members' CRC-32s (``torch.load`` does not check them, so
    a flipped bit would load silently). Measured on a 44.8 MB ResNet-18 checkpoint (CPU, page cache warm):
    0.015 s for the check (~0.03 s per 100 MB) against 0.03 s for ``torch.load`` itself.
    """
    try:
        with open(p, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise ContrastkitError(
            f"checkpoint {str(p)!r} cannot be opened ({exc.strerror or exc.__class__.__name__}); check that it "
            "is readable"
        ) from None
    if not head:
        raise _unreadable(p, "the file is empty") from None
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:
        if head.startswith(b"PK") or head.startswith(b"\x80"):  # torch's zip format; the legacy pickle one
            if "Weights only load failed" in str(exc) and _whole_zip(p):
                what = (
                    "a torch file holding Python objects besides tensors and plain containers, which "
                    "contrastkit does not load: it was not written by contrastkit"
                )
            else:
                raise _damaged(p, _short_reason(exc)) from None  # whatever run its folder is of
        else:
            what = "not a torch file: it holds text" if _looks_like_text(head) else "not a torch file"
        kind = detect_run_kind(p)  # e.g. the config.yaml of a text-train run: say what the run is
        if kind in FOREIGN_RUNS and p.name != CHECKPOINT_NAME:
            raise ForeignRunError(p.parent, kind) from None
        raise _unreadable(p, what) from None
    if head.startswith(b"PK"):
        bad = _bad_zip_member(p)
        if bad is not None:
            raise _damaged(p, bad) from None
    return state


def _looks_like_text(head: bytes) -> bool:
    """Whether the first bytes of a file are printable UTF-8 text (a config, metrics or log file)."""
    import codecs

    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a cut-off last character
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\t\r\n" for c in text)


def _bad_zip_member(p: Path) -> str | None:
    """Why the zip file ``p`` is not whole (its first member whose CRC-32 does not match), or None."""
    import zipfile

    try:
        with zipfile.ZipFile(p) as z:
            bad = z.testzip()
    except Exception as exc:  # a damaged central directory or member header
        return _short_reason(exc)
    return None if bad is None else f"the CRC-32 of {bad} does not match its bytes"


def _whole_zip(p: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(p) as z:
            return z.testzip() is None
    except Exception:
        return False


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", *, image_run: bool = True
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    With ``image_run`` (the default: what eval, export, embed and resume need) a checkpoint of another
    command's run (text-train with --save-model, audio-train, sela) raises :class:`ForeignRunError`.
    """
    p = find_checkpoint(path)
    state = _read(p, map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        kind = state_kind(state) or detect_run_kind(p)
        if kind in FOREIGN_RUNS:  # no format mark: written before its command could resume
            raise ForeignRunError(p, kind, resumable=False)
        raise ContrastkitError(
            f"{str(p)!r} is a torch file but not a contrastkit checkpoint (it has no contrastkit format mark); "
            f"give the folder of a contrastkit train run or its {CHECKPOINT_NAME}"
        )
    if state.get("version", 0) > VERSION:
        raise ContrastkitError(
            f"checkpoint {str(p)!r} has format version {state['version']}; this contrastkit reads up to "
            f"{VERSION}: upgrade contrastkit"
        )
    if image_run:
        kind = state_kind(state)
        if kind in FOREIGN_RUNS:
            raise ForeignRunError(p, kind)
    return state


def nonfinite_tensors(state: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of a ``state_dict`` that hold NaN or infinite values."""
    return [
        name
        for name, t in state.items()
        if isinstance(t, torch.Tensor)
        and (t.is_floating_point() or t.is_complex())
        and not bool(torch.isfinite(t).all())
    ]


def nonfinite_state_tensors(state: dict[str, Any]) -> list[str]:
    """Dotted names (``model.0.weight``, ``optimizer.state.3.exp_avg``) of the floating-point tensors
    anywhere in a nested checkpoint payload (dicts, lists, tuples) that hold NaN or infinite values."""
    return nonfinite_tensors(dict(named_tensors(state)))


def named_tensors(value: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """``(dotted name, tensor)`` of every tensor in a nested payload (dicts, lists, tuples)."""
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from named_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from named_tensors(v, f"{prefix}.{i}" if prefix else str(i))


def refuse_nonfinite_model(model: torch.nn.Module, checkpoint: str | Path) -> None:
    """Raise when a model's parameters or buffers hold NaN or infinite values, naming the tensors."""
    bad = nonfinite_tensors(model.state_dict())
    if bad:
        more = f" (and {len(bad) - 1} more tensor{'s' if len(bad) > 2 else ''})" if len(bad) > 1 else ""
        raise ContrastkitError(
            f"the checkpoint's model ({str(checkpoint)!r}) has non-finite values in {bad[0]}{more}: training "
            "diverged; resume from an earlier checkpoint or retrain with a lower --lr"
        )
