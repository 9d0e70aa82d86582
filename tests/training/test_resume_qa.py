"""The QA findings on resume (audio-train, sela and the shared pieces): a second signal during a checkpoint
write, damaged or bit-flipped checkpoints, another command's old run, a checkpoint lacking a key, folders
without a checkpoint, stale temporaries, a stop during the final evaluation, the non-finite message."""

from __future__ import annotations

import json
import os
import signal
import struct
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from contrastkit.cli import main
from contrastkit.errors import ConfigError, ContrastkitError, TrainingError
from contrastkit.training.checkpoint import load_checkpoint, save_checkpoint, write_atomic
from contrastkit.training.resume import (
    StopSignals,
    TrainingInterrupted,
    final_evaluation,
    first_mismatch,
    refuse_misfit_checkpoint,
    save_epoch_checkpoint,
)
from contrastkit.training.run_folder import prepare_run_dir, unlock_run_dir

from ..conftest import AUDIO_TINY, at_step, send

TINY = [*AUDIO_TINY, "--epochs", "3"]  # 3 steps an epoch on the session's fsdd, 9 in all
SELA = [
    "sela",
    "--limit",
    "60",
    "--epochs",
    "2",
    "--batch-size",
    "16",
    "--no-linear-probe",
    "--device",
    "cpu",
]


def _audio(fsdd: Path, run: Path) -> list[str]:
    return ["audio-train", "--data", str(fsdd), *TINY, "--out", str(run)]


@pytest.fixture
def interrupted_audio(fsdd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None) -> Path:
    """An audio-train run stopped by a Ctrl-C after step 4 (its checkpoint: mid-epoch 2)."""
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        at_step(m, 4, send(signal.SIGINT))
        assert main(_audio(fsdd, run)) == 130
    return run


# ------------------------------------------------------------------ 1. a second signal during a write


class _SignalMidWrite:
    """A file proxy that sends ``signum`` to this process on its second ``write`` (torch.save mid-file)."""

    def __init__(self, f: Any, signum: int) -> None:
        self._f, self._signum, self._writes = f, signum, 0

    def write(self, b: Any) -> int:
        self._writes += 1
        if self._writes == 2:
            os.kill(os.getpid(), self._signum)
        return self._f.write(b)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


@pytest.mark.parametrize("other_thread", [False, True])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_during_a_write_is_raised_after_the_file_is_complete(
    tmp_path: Path, signum: int, other_thread: bool
) -> None:
    """Also with another thread alive (data loaders, pinned-memory threads): a signal mask on the main thread
    alone did not defer the handler there (the kernel hands the signal to the other thread, and Python runs
    the handler in the main thread all the same): the full suite failed so."""
    import threading

    path = tmp_path / "checkpoint.pt"
    payload = {"w": torch.arange(200_000, dtype=torch.float32)}
    expected = KeyboardInterrupt if signum == signal.SIGINT else SystemExit
    done = threading.Event()
    worker = threading.Thread(target=done.wait, daemon=True)
    if other_thread:
        worker.start()
    try:
        with StopSignals() as stop:
            stop.requested = signum  # the first signal came; the next one stops at once
            with pytest.raises(expected) as info:
                write_atomic(path, lambda f: torch.save(payload, _SignalMidWrite(f, signum)))
            assert signal.getsignal(signum) == stop._handle  # the handlers are back
    finally:
        done.set()
    if signum == signal.SIGTERM:
        assert info.value.code == 143
    assert torch.equal(torch.load(path, weights_only=True)["w"], payload["w"])  # written whole
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cli_second_signal_during_the_checkpoint_write_exits_130_or_143(
    fsdd: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    one_thread: None,
    signum: int,
) -> None:
    run = tmp_path / "run"
    original = torch.save

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:  # the second signal arrives mid-write
        return original(obj, _SignalMidWrite(f, signum) if saves.append(1) or len(saves) == 1 else f)

    saves: list[int] = []
    at_step(
        monkeypatch, 4, lambda _o: (os.kill(os.getpid(), signum), monkeypatch.setattr(torch, "save", save))
    )
    if signum == signal.SIGINT:
        assert main(_audio(fsdd, run)) == 130
    else:
        with pytest.raises(SystemExit) as info:
            main(_audio(fsdd, run))
        assert info.value.code == 143
    err = capsys.readouterr().err
    assert "Traceback" not in err and "RuntimeError" not in err and "enforce fail" not in err, err
    assert "continue with: contrastkit audio-train --resume" in err, err
    monkeypatch.undo()
    state = load_checkpoint(run, image_run=False)  # complete: the mid-epoch checkpoint of step 4
    assert state["step"] == 4 and state["finished"] is False


# ------------------------------------------------------------------- 2, 3. damaged and bit-flipped files


def test_a_truncated_checkpoint_in_a_recognised_run_folder_is_called_damaged(
    interrupted_audio: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = interrupted_audio
    (run / "metrics.json").write_text(json.dumps({"mfcc": {"knn_top1": 0.5}}))  # recognised: audio
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    assert main(["audio-train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {str(run / 'checkpoint.pt')!r} is truncated or damaged (" in err, err
    assert "restore it from a copy" in err and "holds no training state" not in err, err
    # a text-train run's folder (recognised from its config.yaml)
    text = tmp_path / "text"
    text.mkdir()
    (text / "config.yaml").write_text("sentences: s.txt\nsts: sts\n")
    (text / "checkpoint.pt").write_bytes(data[:20000])
    with pytest.raises(ContrastkitError) as info:
        load_checkpoint(text, image_run=False)
    msg = str(info.value)
    assert "is truncated or damaged (" in msg and "not a text-train checkpoint" not in msg, msg
    assert "is a text run" not in msg, msg


def _flip_a_bit(path: Path) -> None:
    """Flip one bit in the middle of the largest tensor record of the zip ``path``."""
    with zipfile.ZipFile(path) as z:
        big = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    b = bytearray(path.read_bytes())
    o = big.header_offset
    n, e = struct.unpack("<HH", b[o + 26 : o + 30])
    b[o + 30 + n + e + big.file_size // 2] ^= 0x40
    path.write_bytes(bytes(b))


def test_a_bit_flipped_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"model": {"w": torch.randn(1000)}}, path)
    assert torch.equal(load_checkpoint(path, image_run=False)["model"]["w"].isnan(), torch.zeros(1000).bool())
    _flip_a_bit(path)
    torch.load(path, weights_only=True)  # torch itself loads it silently
    with pytest.raises(ContrastkitError, match=r"is truncated or damaged \(the CRC-32 of .* does not match"):
        load_checkpoint(path, image_run=False)


# --------------------------------------------------------------------- 4. another command's old runs


def test_resume_of_another_commands_old_run_or_file_names_the_right_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old_audio = tmp_path / "old_audio"  # written before audio-train could resume: no format mark
    old_audio.mkdir()
    torch.save({"model": {}, "config": {"clip_seconds": 1.0, "n_mels": 40}}, old_audio / "checkpoint.pt")
    text = tmp_path / "text"
    text.mkdir()
    (text / "metrics.json").write_text(json.dumps({"sts_spearman_before": 1.0}))
    (text / "config.yaml").write_text("sentences: s.txt\nsts: sts\n")
    for argv, needles in [
        (
            ["sela", "--resume", str(old_audio)],
            ["`contrastkit sela --resume` continues sela runs only", "no command can continue it"],
        ),
        (
            ["audio-train", "--resume", str(text / "metrics.json")],
            [
                "`contrastkit audio-train --resume` continues audio-train runs only",
                f"continue it with contrastkit text-train --resume {text}",
            ],
        ),
        (
            ["sela", "--resume", str(text)],  # a text run's folder without checkpoint.pt
            ["`contrastkit sela --resume` continues sela runs only", "text-train --resume"],
        ),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "image runs" not in err, (argv, err)
        for needle in needles:
            assert needle in err, (argv, err)


# --------------------------------------------------------------- 5. a missing key; the misfit message


@pytest.mark.parametrize("key", ["loop", "references"])
def test_an_audio_checkpoint_lacking_a_key_is_a_clear_error(
    interrupted_audio: Path, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    path = interrupted_audio / "checkpoint.pt"
    state = load_checkpoint(path, image_run=False)
    del state[key]
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "version")}, path)
    assert main(["audio-train", "--resume", str(interrupted_audio)]) == 2
    err = capsys.readouterr().err
    assert f"lacks {key!r}: written by another version or damaged" in err and "Traceback" not in err, err


def test_a_sela_checkpoint_lacking_its_loop_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        at_step(m, 2, send(signal.SIGINT), torch.optim.SGD)
        assert main([*SELA, "--out", str(run)]) == 130
    path = run / "checkpoint.pt"
    state = load_checkpoint(path, image_run=False)
    del state["loop"]
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "version")}, path)
    capsys.readouterr()
    assert main(["sela", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "lacks 'loop': written by another version or damaged" in err and "KeyError" not in err, err


def test_the_misfit_message_names_the_first_mismatch(tmp_path: Path) -> None:
    small, big = torch.nn.Linear(2, 3), torch.nn.Sequential(torch.nn.Linear(2, 4))
    with pytest.raises(ConfigError) as info, refuse_misfit_checkpoint(tmp_path):
        small.load_state_dict(torch.nn.Linear(2, 4).state_dict())
    assert "size mismatch for weight" in str(info.value), str(info.value)
    with pytest.raises(ConfigError) as info, refuse_misfit_checkpoint(tmp_path):
        big.load_state_dict(small.state_dict())
    msg = str(info.value)
    assert "Missing key(s) in state_dict: 0.weight (and 1 more)" in msg, msg
    with pytest.raises(ConfigError, match="lacks 'loop': written by another version or damaged"):
        with refuse_misfit_checkpoint(tmp_path):
            {}["loop"]
    assert first_mismatch(RuntimeError("")) == "RuntimeError"
    # the library's own errors (also ValueErrors now) keep their message: they are not a misfit
    with pytest.raises(ConfigError, match=r"^faiss is not installed$"), refuse_misfit_checkpoint(tmp_path):
        raise ConfigError("faiss is not installed")


# ------------------------------------------------------ 6. folders without a checkpoint; stale temporaries


def test_folders_without_a_checkpoint_say_what_they_are(
    fsdd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None
) -> None:
    run = tmp_path / "done"
    assert main(_audio(fsdd, run)) == 0
    (run / "checkpoint.pt").unlink()
    capsys.readouterr()
    assert main(["audio-train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "finished; its checkpoint.pt was removed" in err and "before its first checkpoint" not in err, err
    data = tmp_path / "data"
    data.mkdir()
    (data / "images.npz").write_bytes(b"x")
    for command in ("sela", "audio-train"):
        assert main([command, "--resume", str(data)]) == 2
        err = capsys.readouterr().err
        assert f"{str(data)!r} is not a run folder" in err and "before its first checkpoint" not in err, err
    stray = tmp_path / "stray"  # a kill during the first write
    stray.mkdir()
    (stray / "checkpoint.pt.abc123.tmp").write_bytes(b"PK")
    assert main(["audio-train", "--resume", str(stray)]) == 2
    assert "stopped before its first checkpoint" in capsys.readouterr().err


def test_a_new_run_removes_the_stale_temporaries_of_its_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for name in ("checkpoint.pt.abc123.tmp", "metrics.json.x1.tmp"):
        (run / name).write_bytes(b"PK")
    (run / "notes.txt").write_text("mine")
    prepare_run_dir(run)
    unlock_run_dir(run)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


# -------------------------------------------------------------------- 7. a stop in the final evaluation


def _stop_in_final_evaluation(monkeypatch: pytest.MonkeyPatch, signum: int) -> None:
    """Send ``signum`` at the third evaluate_features call (after the two references: the final one)."""
    import contrastkit.training.audio as audio

    original, calls = audio.evaluate_features, [0]

    def patched(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 3:
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(audio, "evaluate_features", patched)


def _sigterm_raises(signum: int, frame: Any) -> None:
    """SIGTERM's default would kill the test process: raise while no contrastkit handler is set."""
    raise SystemExit(99)


@pytest.mark.parametrize("command", ["audio-train", "sela"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_during_the_final_evaluation_says_the_run_is_kept(
    fsdd: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    one_thread: None,
    command: str,
    signum: int,
) -> None:
    run = tmp_path / "run"
    argv = _audio(fsdd, run) if command == "audio-train" else [*SELA, "--out", str(run)]
    old = signal.getsignal(signal.SIGTERM)
    try:
        if signum == signal.SIGTERM:
            signal.signal(signal.SIGTERM, _sigterm_raises)
        with monkeypatch.context() as m:
            _stop_in_final_evaluation(m, signum)
            assert main(argv) == 128 + signum
    finally:
        signal.signal(signal.SIGTERM, old)
    err = capsys.readouterr().err
    assert "stopped during the final evaluation; the run is kept" in err, err
    assert f"continue with: contrastkit {command} --resume {run}" in err, err
    assert main([command, "--resume", str(run)]) == 0  # the resume only evaluates
    assert load_checkpoint(run, image_run=False)["finished"] is True


@pytest.mark.usefixtures("restore_signal_handlers")
def test_final_evaluations_on_stop_writes_says_and_is_not_interrupted_by_a_second_signal(
    tmp_path: Path,
) -> None:
    """text-train's use: ``on_stop`` runs once with the first signal (its interrupted metrics.json), its
    message is the TrainingInterrupted's; a second signal meanwhile is recorded, not raised."""
    calls: list[int] = []

    def on_stop(signum: int) -> str:
        calls.append(signum)
        signal.raise_signal(signal.SIGINT)  # while the stop is handled: no KeyboardInterrupt out of here
        return "stopped; said by on_stop"

    signal.signal(signal.SIGINT, signal.default_int_handler)
    with pytest.raises(TrainingInterrupted) as info:
        with final_evaluation(command="text-train", run_dir=tmp_path, total_steps=10, on_stop=on_stop):
            signal.raise_signal(signal.SIGTERM)  # stops at once
            pytest.fail("the evaluation went on after the signal")
    assert calls == [signal.SIGTERM] and str(info.value) == "stopped; said by on_stop"
    assert info.value.exit_status == 143 and info.value.step == 10
    assert info.value.checkpoint == tmp_path / "checkpoint.pt"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


# ------------------------------------------------------------------------ 8. the non-finite message


def test_the_non_finite_message_names_the_epoch_of_the_step(tmp_path: Path) -> None:
    for step, epoch in ((36, 6), (37, 7), (6, 1)):
        state = {
            "step": step,
            "progress": {"done": 6, "total": 12, "unit": "epoch"},
            "w": torch.tensor(float("nan")),
        }
        with pytest.raises(TrainingError) as info:
            save_epoch_checkpoint(state, run_dir=tmp_path, total_steps=72, epochs=12, kept=5)
        assert f"non-finite by step {step} of 72 (epoch {epoch})" in str(info.value), str(info.value)
    assert not (tmp_path / "checkpoint.pt").exists()
