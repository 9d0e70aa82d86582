"""text-train's run folder: checked before any work, never overwritten, strict JSON, and what a Ctrl-C keeps
(a resumable checkpoint; the resume itself is tested in test_text_resume.py)."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import pytest
import torch
import yaml

import contrastkit.training.text as text_module
from contrastkit.cli import main
from contrastkit.errors import ConfigError, DataError
from contrastkit.training.resume import TrainingInterrupted
from contrastkit.training.text import TextTrainConfig, train_text

from .conftest import at_steps

TINY = dict(
    encoder="scratch", dim=16, depth=2, heads=2, min_freq=1, batch_size=8, steps=4, max_length=12,
    eval_max_length=12, log_every=2, progress=False, device="cpu",
)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread", "restore_signal_handlers")


def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the encoder is ever built: the refusal must come before any work."""

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the encoder was built before the run folder was checked")

    monkeypatch.setattr(text_module, "build_text_encoder", boom)


def test_out_that_is_a_file_is_refused_before_training(
    tmp_path: Path, text_data: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    no_training(monkeypatch)
    target = tmp_path / "taken"
    target.write_text("not a folder")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        train_text(TextTrainConfig(**TINY, **text_data, out=str(target)))
    assert target.read_text() == "not a folder"


def test_uncreatable_out_is_refused_before_training(
    tmp_path: Path, text_data: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    no_training(monkeypatch)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="cannot create the run folder"):
        train_text(TextTrainConfig(**TINY, **text_data, out=str(tmp_path / "file" / "run")))


@pytest.mark.parametrize("held", ["checkpoint.pt", "config.yaml", "metrics.json"])
def test_existing_run_folder_is_never_overwritten(
    tmp_path: Path, text_data: dict[str, str], monkeypatch: pytest.MonkeyPatch, held: str
) -> None:
    no_training(monkeypatch)
    run = tmp_path / "run"
    run.mkdir()
    (run / held).write_text("keep me")
    with pytest.raises(ConfigError, match=rf"already holds a run \({held}\)"):
        train_text(TextTrainConfig(**TINY, **text_data, out=str(run)))
    assert (run / held).read_text() == "keep me"


def test_cli_bad_out_is_one_line_exit_2(
    tmp_path: Path, text_data: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "taken"
    target.write_text("x")
    flags = ["--encoder", "scratch", "--dim", "16", "--depth", "2", "--heads", "2", "--steps", "2"]
    flags += ["--batch-size", "8", "--no-progress", "--device", "cpu"]
    flags += ["--sentences", text_data["sentences"], "--sts", text_data["sts"], "--out", str(target)]
    assert main(["text-train", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("contrastkit: error:") and "is a file" in err and "\n" not in err


def test_metrics_json_is_strict_json_when_a_value_is_nan(
    tmp_path: Path, text_data: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(text_module, "embeddings_spearman", lambda *a, **k: float("nan"))
    train_text(TextTrainConfig(**TINY, **text_data, out=str(tmp_path / "run")))
    raw = (tmp_path / "run" / "metrics.json").read_text()
    assert "NaN" not in raw
    metrics = json.loads(raw, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert metrics["sts_spearman_after"] is None and metrics["sts_spearman_before"] is None
    assert metrics["finished"] is True and metrics["steps"] == metrics["total_steps"] == 4


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_saves_a_resumable_checkpoint_config_and_the_loss_curve(
    tmp_path: Path, text_data: dict[str, str], monkeypatch: pytest.MonkeyPatch, signum: int
) -> None:
    at_steps(monkeypatch, {3: lambda: signal.raise_signal(signum)})
    run = tmp_path / "run"
    cfg = TextTrainConfig(
        **{**TINY, "steps": 50, "log_every": 2}, **text_data, out=str(run)
    )  # no --save-model
    with pytest.raises(TrainingInterrupted) as info:
        train_text(cfg)
    exc = info.value
    name = signal.Signals(signum).name
    assert exc.step == 3 and exc.exit_status == 128 + signum and exc.checkpoint == run / "checkpoint.pt"
    message = str(exc)
    assert f"{name} received: stopped after step 3 of 50" in message
    assert str(run / "checkpoint.pt") in message and "(resumable)" in message
    assert f"continue with: contrastkit text-train --resume {run}" in message
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["finished"] is False and state["step"] == 3 and state["total_steps"] == 50
    assert state["progress"] == {"done": 3, "total": 50, "unit": "step"}
    assert "backbone.tokens.weight" in state["model"] and state["tokenizer"]["kind"] == "words"
    assert state["pending_losses"].shape == (1,)  # step 3, not logged yet: the resume logs it at step 4
    assert [row["step"] for row in state["loss_curve"]] == [2]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["finished"] is False and metrics["interrupted"] == name and metrics["resumable"] is True
    assert f"contrastkit text-train --resume {run}" in metrics["note"]
    assert metrics["steps"] == 3 and metrics["total_steps"] == 50
    assert [row["step"] for row in metrics["loss_curve"]] == [2, 3]  # the pending step 3 is logged too
    assert math.isfinite(metrics["final_loss"]) and metrics["sts_spearman_after"] is None
    assert yaml.safe_load((run / "config.yaml").read_text())["steps"] == 50
    # the interrupted folder is a run: a new one is not written over it, and the refusal says how to resume
    with pytest.raises(ConfigError, match="already holds a run") as refused:
        train_text(cfg)
    assert f"stopped at step 3 of 50: continue it with contrastkit text-train --resume {run}" in str(
        refused.value
    )


def test_cli_ctrl_c_exits_130_with_one_message_naming_the_files(
    tmp_path: Path,
    text_data: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    at_steps(monkeypatch, {2: lambda: signal.raise_signal(signal.SIGINT)})
    run = tmp_path / "tx40"
    flags = ["--encoder", "scratch", "--dim", "16", "--depth", "2", "--heads", "2", "--min-freq", "1"]
    flags += ["--batch-size", "8", "--steps", "5000", "--max-length", "12", "--eval-max-length", "12"]
    flags += ["--no-progress", "--device", "cpu", "--save-model"]
    flags += ["--sentences", text_data["sentences"], "--sts", text_data["sts"], "--out", str(run)]
    assert main(["text-train", *flags]) == 130
    err = capsys.readouterr().err
    assert "stopped after step 2 of 5000" in err and "interrupted\n" not in err and "Traceback" not in err
    assert f"contrastkit text-train --resume {run}" in err
    assert {p.name for p in run.iterdir()} >= {"checkpoint.pt", "metrics.json", "config.yaml"}


def test_finished_checkpoint_says_finished(tmp_path: Path, text_data: dict[str, str]) -> None:
    train_text(
        TextTrainConfig(**TINY, **text_data, save_model=True, checkpoint_every=2, out=str(tmp_path / "run"))
    )
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert state["finished"] is True and state["step"] == state["total_steps"] == 4
    assert state["progress"] == {"done": 4, "total": 4, "unit": "step"}
    assert {"config", "model", "tokenizer", "metrics"} <= set(state)
    assert "optimizer" not in state  # the finished checkpoint keeps the model, not the loop's state


def test_without_save_model_the_resumable_checkpoint_is_removed_at_the_end(
    tmp_path: Path, text_data: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[int] = []
    real = text_module.save_checkpoint

    def spy(state: dict, path: Path) -> Path:
        written.append(state["step"])
        return real(state, path)

    monkeypatch.setattr(text_module, "save_checkpoint", spy)
    run = tmp_path / "run"
    train_text(TextTrainConfig(**{**TINY, "steps": 5}, **text_data, checkpoint_every=2, out=str(run)))
    assert written == [2, 4, 5]  # every 2 steps, and after the last one (before the final evaluation)
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "metrics.json"]


def test_one_sentence_file_does_not_advise_batch_size_1(tmp_path: Path, text_data: dict[str, str]) -> None:
    one = tmp_path / "one.txt"
    one.write_text("a single sentence\n", encoding="utf-8")
    cfg = TextTrainConfig(**TINY, sts=text_data["sts"], sentences=str(one), out=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="holds 1 sentence; contrastive training needs at least 2") as info:
        train_text(cfg)
    assert "--batch-size 1" not in str(info.value)
    limited = TextTrainConfig(**{**TINY, "limit": 1}, **text_data, out=str(tmp_path / "run2"))
    with pytest.raises(ConfigError, match=r"--limit 1 keeps 1 sentence.*raise --limit"):
        train_text(limited)
    few = TextTrainConfig(**{**TINY, "limit": 5}, **text_data, out=str(tmp_path / "run3"))
    with pytest.raises(ConfigError, match=r"larger than the 5 training sentences.*--batch-size 5 or less"):
        train_text(few)


def test_sentences_that_are_a_folder_say_so(tmp_path: Path, text_data: dict[str, str]) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    cfg = TextTrainConfig(**TINY, sts=text_data["sts"], sentences=str(folder), out=str(tmp_path / "run"))
    with pytest.raises(DataError, match="is a folder; give a file") as info:
        train_text(cfg)
    assert "does not exist" not in str(info.value)


def test_a_failed_run_removes_what_it_wrote_so_the_folder_can_be_reused(
    tmp_path: Path, text_data: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from contrastkit.errors import TrainingError

    real = text_module.trim_padding

    def diverge(*args: object, **kwargs: object) -> None:
        raise TrainingError("the loss became non-finite by step 1; try a lower --lr")

    monkeypatch.setattr(text_module, "trim_padding", diverge)
    run = tmp_path / "new" / "run"
    with pytest.raises(TrainingError, match="non-finite"):
        train_text(TextTrainConfig(**TINY, **text_data, out=str(run)))
    assert not (tmp_path / "new").exists()  # the folders this run created are gone
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    with pytest.raises(TrainingError):
        train_text(TextTrainConfig(**TINY, **text_data, out=str(existing)))
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]  # config.yaml removed, nothing else
    monkeypatch.setattr(text_module, "trim_padding", real)
    train_text(TextTrainConfig(**TINY, **text_data, out=str(existing)))  # a rerun on the same --out works
    assert (existing / "metrics.json").is_file()


def test_a_failed_run_that_saved_something_says_what_the_folder_holds(
    tmp_path: Path, text_data: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from contrastkit.errors import ContrastkitError

    def refuse(path: object, metrics: object) -> None:
        raise ContrastkitError("cannot write 'metrics.json' (No space left on device)")

    monkeypatch.setattr(text_module, "write_metrics", refuse)
    run = tmp_path / "run"
    with pytest.raises(ContrastkitError) as info:
        train_text(TextTrainConfig(**TINY, **text_data, save_model=True, out=str(run)))
    assert "holds this failed run's config.yaml, checkpoint.pt" in str(info.value)
    assert (run / "checkpoint.pt").is_file()  # what was saved is kept


def test_cli_divergence_leaves_no_run_behind(
    tmp_path: Path, text_data: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "td"
    flags = ["--encoder", "scratch", "--dim", "16", "--depth", "2", "--heads", "2", "--min-freq", "1"]
    flags += ["--steps", "4", "--batch-size", "8", "--log-every", "1", "--lr", "1e6", "--device", "cpu"]
    flags += ["--sentences", text_data["sentences"], "--sts", text_data["sts"], "--no-progress"]
    rc = main(["text-train", *flags, "--out", str(run)])
    err = capsys.readouterr().err
    if rc == 0:
        pytest.skip("lr 1e6 did not diverge in 4 steps here")
    assert rc == 2 and "non-finite" in err
    assert not run.exists()
