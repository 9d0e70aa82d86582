"""text-train around its last step: the resumable checkpoint of the last step is written before the final
STS evaluation, a stop signal during that evaluation stops at once (130 / 143, naming the resume, which only
evaluates and ends bitwise like the uninterrupted run); a crash or a second signal says what the folder
keeps; a Ctrl-C during the start leaves no folder; ``--resume RUN --config RUN/config.yaml`` works and an
edited config.yaml is warned about."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

import contrastkit.training.text as text_module
from contrastkit.cli import main
from contrastkit.evaluation.sts import embeddings_spearman
from contrastkit.training.checkpoint import load_checkpoint
from contrastkit.training.resume import TrainingInterrupted
from contrastkit.training.run_folder import unlock_run_dir
from contrastkit.training.text import TextTrainConfig, train_text

from .conftest import at_steps
from .test_text_resume import TINY, assert_same_end, ctrl_c

pytestmark = pytest.mark.usefixtures("one_thread", "restore_signal_handlers")


def signal_in_final_evaluation(monkeypatch: pytest.MonkeyPatch, signum: int) -> dict[str, int]:
    """Raise ``signum`` inside the next run's final STS evaluation (its second); counts the evaluations
    and the training steps (fallback handlers: an unhandled signal fails the test, see :func:`at_steps`)."""
    calls = {"eval": 0, "steps": 0}
    real = text_module.embeddings_spearman

    def spearman(*args: Any, **kwargs: Any) -> float:
        calls["eval"] += 1
        if calls["eval"] == 2:
            signal.raise_signal(signum)
        return real(*args, **kwargs)

    def count() -> None:
        calls["steps"] += 1

    at_steps(monkeypatch, dict.fromkeys(range(1, 1000), count))
    monkeypatch.setattr(text_module, "embeddings_spearman", spearman)
    return calls


def cli_flags(text_data: dict[str, str], run: Path, *extra: str) -> list[str]:
    flags = ["--encoder", "scratch", "--dim", "16", "--depth", "1", "--heads", "2", "--min-freq", "1"]
    flags += ["--batch-size", "8", "--steps", "10", "--max-length", "12", "--eval-max-length", "12"]
    flags += ["--log-every", "3", "--limit", "48", "--no-progress", "--device", "cpu"]
    return [
        *flags,
        "--sentences",
        text_data["sentences"],
        "--sts",
        text_data["sts"],
        "--out",
        str(run),
        *extra,
    ]


@pytest.mark.parametrize("save_model", [True, False])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_in_the_final_evaluation_stops_and_the_resume_only_evaluates(
    tmp_path: Path,
    text_data: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    signum: int,
    save_model: bool,
) -> None:
    kw = {**TINY, **text_data, "save_model": save_model, "checkpoint_every": 0}  # no periodic checkpoint
    ref = train_text(TextTrainConfig(**kw, out=str(tmp_path / "ref")))
    run = tmp_path / "run"
    cfg = TextTrainConfig(**kw, out=str(run))
    calls = signal_in_final_evaluation(monkeypatch, signum)
    with pytest.raises(TrainingInterrupted) as info:
        train_text(cfg)
    exc = info.value
    assert exc.exit_status == 128 + signum and exc.step == 10 and calls["steps"] == 10
    message = str(exc)
    assert f"{signal.Signals(signum).name} received during the final evaluation" in message
    assert f"continue with: contrastkit text-train --resume {run}" in message
    state = load_checkpoint(run / "checkpoint.pt", image_run=False)
    assert state["finished"] is False and state["step"] == 10
    assert state["progress"] == {"done": 10, "total": 10, "unit": "step"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["finished"] is False and metrics["resumable"] is True and metrics["steps"] == 10
    assert metrics["sts_spearman_after"] is None and "final evaluation was stopped" in metrics["note"]
    capsys.readouterr()

    monkeypatch.setattr(text_module, "embeddings_spearman", embeddings_spearman)
    result = train_text(cfg, resume=run)
    assert calls["steps"] == 10  # the resume trains no step
    assert "resumed at step 10 of 10" in capsys.readouterr().out
    assert result.metrics["resumed_at_steps"] == [10]
    if save_model:
        assert_same_end(ref, result)
    else:  # the same results; the resumable checkpoint removed at the end
        assert result.metrics["sts_spearman_after"] == ref.metrics["sts_spearman_after"]
        assert result.metrics["loss_curve"] == [
            {**row, "seconds": result.metrics["loss_curve"][i]["seconds"]}
            for i, row in enumerate(ref.metrics["loss_curve"])
        ]
        assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "metrics.json"]


def test_the_last_steps_checkpoint_is_written_before_the_final_evaluation(
    tmp_path: Path, text_data: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill (or a crash) during the final evaluation loses no step: the checkpoint then holds them all."""
    real = text_module.embeddings_spearman
    seen: list[int] = []
    run = tmp_path / "run"

    def spearman(*args: Any, **kwargs: Any) -> float:
        if (run / "checkpoint.pt").is_file():
            seen.append(load_checkpoint(run / "checkpoint.pt", image_run=False)["step"])
        return real(*args, **kwargs)

    monkeypatch.setattr(text_module, "embeddings_spearman", spearman)
    train_text(TextTrainConfig(**{**TINY, **text_data, "checkpoint_every": 0}, out=str(run)))
    assert seen == [10]  # none before training; step 10's at the final evaluation


def test_cli_sigterm_in_the_final_evaluation_exits_143_naming_the_resume(
    tmp_path: Path,
    text_data: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    signal_in_final_evaluation(monkeypatch, signal.SIGTERM)
    assert main(["text-train", *cli_flags(text_data, run)]) == 143
    err = capsys.readouterr().err
    assert "SIGTERM received during the final evaluation" in err and "Traceback" not in err
    assert f"continue with: contrastkit text-train --resume {run}" in err
    monkeypatch.setattr(text_module, "embeddings_spearman", embeddings_spearman)
    assert main(["text-train", "--resume", str(run), "--no-progress"]) == 0
    assert json.loads((run / "metrics.json").read_text())["finished"] is True


@pytest.mark.parametrize("how", ["double-ctrl-c", "double-sigterm", "crash"])
def test_a_crash_or_a_second_signal_says_what_the_folder_keeps(
    tmp_path: Path,
    text_data: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    how: str,
) -> None:
    def twice(signum: int) -> None:
        signal.raise_signal(signum)  # the first: stop at the next step
        signal.raise_signal(signum)  # the second: at once

    def crash() -> None:
        raise RuntimeError("CUDA out of memory (simulated)")

    action = {
        "double-ctrl-c": lambda: twice(signal.SIGINT),
        "double-sigterm": lambda: twice(signal.SIGTERM),
        "crash": crash,
    }[how]
    at_steps(monkeypatch, {5: action})
    run = tmp_path / "run"
    args = ["text-train", *cli_flags(text_data, run, "--checkpoint-every", "2")]
    if how == "double-ctrl-c":
        assert main(args) == 130
    elif how == "double-sigterm":
        with pytest.raises(SystemExit) as info:
            main(args)
        assert info.value.code == 143
    else:
        with pytest.raises(RuntimeError, match="out of memory"):
            main(args)
    err = capsys.readouterr().err
    note = f"{run / 'checkpoint.pt'} keeps step 4 of 10; continue with: contrastkit text-train --resume {run}"
    assert note in err
    assert load_checkpoint(run / "checkpoint.pt", image_run=False)["step"] == 4


def test_ctrl_c_during_the_start_leaves_no_run_folder(
    tmp_path: Path,
    text_data: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def spearman(*args: Any, **kwargs: Any) -> float:  # the evaluation before training
        raise KeyboardInterrupt

    monkeypatch.setattr(text_module, "embeddings_spearman", spearman)
    run = tmp_path / "runs" / "new"
    assert main(["text-train", *cli_flags(text_data, run)]) == 130
    assert not (tmp_path / "runs").exists()
    assert "keeps step" not in capsys.readouterr().err


def test_resume_with_the_runs_own_config_file_and_an_edited_config_warned(
    tmp_path: Path,
    text_data: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    at_steps(monkeypatch, {4: ctrl_c})
    assert main(["text-train", *cli_flags(text_data, Path("tx"))]) == 130  # a relative --out
    assert yaml.safe_load((tmp_path / "tx" / "config.yaml").read_text())["out"] == "tx"
    unlock_run_dir(tmp_path / "tx")  # as when that process ended
    (tmp_path / "tx").rename(tmp_path / "moved")
    run = tmp_path / "moved"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    at_steps(monkeypatch, {3: ctrl_c})  # the resume's step 3 (step 7 of the run)
    capsys.readouterr()
    # the run's own config.yaml with --resume: its out ('tx', relative, the folder's first name) is no --out
    assert main(["text-train", "--resume", str(run), "--config", str(run / "config.yaml")]) == 130
    captured = capsys.readouterr()
    assert "drop --out" not in captured.err and "resumed at step 4 of 10" in captured.out
    assert "WARNING" not in captured.out
    # a command-line --out elsewhere is still refused
    assert main(["text-train", "--resume", str(run), "--out", str(tmp_path / "other")]) == 2
    assert "drop --out" in capsys.readouterr().err

    edited = yaml.safe_load((run / "config.yaml").read_text())
    edited.update(steps=1000, lr=0.001)
    (run / "config.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
    assert main(["text-train", "--resume", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"WARNING: {run / 'config.yaml'} differs from the checkpoint's configuration in steps, lr" in out
    assert json.loads((run / "metrics.json").read_text())["total_steps"] == 10  # the checkpoint's values
    assert yaml.safe_load((run / "config.yaml").read_text())["steps"] == 10  # rewritten
