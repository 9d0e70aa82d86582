"""``contrastkit text-train --resume``: a stopped, crashed or killed run continues exactly where it was.

The heart of it: on CPU a run interrupted at step k and resumed ends with the bitwise same model, loss curve
and STS score as the uninterrupted run, with in-batch negatives and with a queue and a momentum key
encoder (both restored). Then the refusals: a finished run, a changed option, another command's run, a
non-finite state (never written over the last good checkpoint).
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

import contrastkit.training.text as text_module
from contrastkit.cli import build_parser, main
from contrastkit.errors import ConfigError, DivergedError, TrainingError
from contrastkit.training.checkpoint import load_checkpoint, save_checkpoint
from contrastkit.training.resume import TrainingInterrupted
from contrastkit.training.text import ResumeRequest, TextTrainConfig, config_from_args, train_text

from ..conftest import AUDIO_TINY
from .conftest import at_steps, sentences

# 48 sentences, batch 8: 6 steps an epoch, 10 steps in all (the resumes below cross the epoch boundary);
# the loss is logged every 3 steps, so an interruption at step 4 or 7 leaves unlogged losses behind.
TINY = dict(
    encoder="scratch", dim=16, depth=1, heads=2, min_freq=1, batch_size=8, steps=10, max_length=12,
    eval_max_length=12, log_every=3, progress=False, device="cpu", limit=48, save_model=True,
)  # fmt: skip
VARIANTS = {
    # in-batch negatives (SimCSE) with every text view, so the views' generator matters too
    "in-batch": dict(crop_p=0.5, delete_p=0.5, shuffle_p=0.5),
    # MoCo: a queue of negatives and a momentum key encoder, both part of the state to restore
    "queue": dict(negatives="queue", queue_size=24, key_momentum=0.99, head="mlp"),
}

pytestmark = pytest.mark.usefixtures("one_thread", "restore_signal_handlers")


def ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def curve(metrics: dict[str, Any]) -> list[tuple[int, float]]:
    """The loss curve without its wall-clock column."""
    return [(row["step"], row["loss"]) for row in metrics["loss_curve"]]


def assert_same_end(ref: Any, run: Any) -> None:
    """Bitwise the same trained model (with head), loss curve and STS score as the uninterrupted run."""
    a, b = ref.model.state_dict(), run.model.state_dict()
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert torch.equal(v, b[k]), k
    saved = load_checkpoint(run.run_dir / "checkpoint.pt", image_run=False)
    assert saved["finished"] is True
    for k, v in a.items():
        assert torch.equal(v, saved["model"][k]), k
    assert run.metrics["sts_spearman_after"] == ref.metrics["sts_spearman_after"]
    assert run.metrics["sts_spearman_before"] == ref.metrics["sts_spearman_before"]
    assert run.metrics["final_loss"] == ref.metrics["final_loss"]
    assert curve(run.metrics) == curve(ref.metrics)
    on_disk = json.loads((run.run_dir / "metrics.json").read_text())
    assert on_disk["finished"] is True and "interrupted" not in on_disk


def capture_checkpoints(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Copies of every state text-train saves, in order."""
    states: list[dict[str, Any]] = []
    real = text_module.save_checkpoint

    def spy(state: dict[str, Any], path: Path) -> Path:
        states.append(copy.deepcopy(state))
        return real(state, path)

    monkeypatch.setattr(text_module, "save_checkpoint", spy)
    return states


def assert_same_state(a: Any, b: Any, where: str = "state") -> None:
    """Nested dicts / lists of tensors and numbers, tensors equal bitwise (wall-clock entries skipped)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        keys = {k for k in a if k not in ("seconds", "train_seconds", "elapsed_seconds", "eval_seconds")}
        assert keys <= set(b), where
        for k in keys:
            assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, where


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_interrupted_and_resumed_ends_bitwise_like_the_uninterrupted_run(
    tmp_path: Path,
    text_data: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variant: str,
) -> None:
    kw = {**TINY, **VARIANTS[variant], **text_data}
    states = capture_checkpoints(monkeypatch)
    ref = train_text(TextTrainConfig(**kw, checkpoint_every=4, out=str(tmp_path / "ref")))
    ref_at_4 = states[0]  # the uninterrupted run's state after step 4 (its periodic checkpoint)
    assert ref_at_4["step"] == 4 and states[1]["step"] == 8 and states[-1]["finished"] is True

    run = tmp_path / "run"
    cfg = TextTrainConfig(**kw, checkpoint_every=0, out=str(run))  # checkpoints only on a stop signal
    at_steps(monkeypatch, {4: ctrl_c, 4 + 3: ctrl_c})  # Ctrl-C in step 4, then in step 7 (of the resume)
    with pytest.raises(TrainingInterrupted) as info:
        train_text(cfg)
    assert info.value.step == 4 and info.value.checkpoint == run / "checkpoint.pt"
    assert f"continue with: contrastkit text-train --resume {run}" in str(info.value)
    stopped = load_checkpoint(run / "checkpoint.pt", image_run=False)
    # the checkpoint holds the loop's state exactly as the uninterrupted run had it after step 4
    for key in ("model", "key_encoder", "negatives", "optimizer", "scheduler", "generator", "rng"):
        assert_same_state(ref_at_4[key], stopped[key], key)
    for key in ("order", "pending_losses", "loss_curve", "sts_spearman_before", "sts_spearman_tfidf"):
        assert_same_state(ref_at_4[key], stopped[key], key)
    assert stopped["progress"] == {"done": 4, "total": 10, "unit": "step"} and stopped["finished"] is False
    assert stopped["device"] == "cpu" and stopped["tokenizer"]["kind"] == "words"
    assert [row["step"] for row in stopped["loss_curve"]] == [3] and stopped["pending_losses"].shape == (1,)
    if variant == "queue":
        assert int(stopped["negatives"]["queue.filled"]) == 24  # 4 steps x 2 x 8 keys, wrapped around
        assert int(stopped["negatives"]["queue.ptr"]) == (4 * 16) % 24
        assert stopped["key_encoder"] is not None and any(
            k.startswith("model.") for k in stopped["key_encoder"]
        )
        assert not torch.equal(
            stopped["key_encoder"]["model.head.linear.weight"], stopped["model"]["head.linear.weight"]
        )
    else:
        assert stopped["key_encoder"] is None
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["interrupted"] == "SIGINT" and metrics["resumable"] is True and metrics["steps"] == 4
    capsys.readouterr()

    with pytest.raises(TrainingInterrupted) as info:  # resumed, and stopped again after the epoch boundary
        train_text(cfg, resume=run)
    assert info.value.step == 7
    assert "resumed at step 4 of 10" in capsys.readouterr().out

    result = train_text(cfg, resume=str(run / "checkpoint.pt"))
    assert "resumed at step 7 of 10" in capsys.readouterr().out
    assert_same_end(ref, result)
    assert result.metrics["resumed_at_steps"] == [4, 7] and ref.metrics["resumed_at_steps"] == []


def test_a_crash_after_a_periodic_checkpoint_resumes_from_it(
    tmp_path: Path, text_data: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    kw = {**TINY, **text_data, "checkpoint_every": 3}
    ref = train_text(TextTrainConfig(**kw, out=str(tmp_path / "ref")))

    def crash() -> None:
        raise TrainingError("the disk caught fire")

    at_steps(monkeypatch, {5: crash})
    run = tmp_path / "run"
    cfg = TextTrainConfig(**kw, out=str(run))
    with pytest.raises(TrainingError) as info:
        train_text(cfg)
    message = str(info.value)
    assert message.startswith("the disk caught fire; ")
    assert (
        "keeps the resumable checkpoint of step 3 of 10: continue from it with: "
        f"contrastkit text-train --resume {run}" in message
    )
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "config.yaml", "metrics.json"]
    assert load_checkpoint(run / "checkpoint.pt", image_run=False)["step"] == 3  # kept, not undone
    assert_progress_metrics(run, step=3, curve_steps=[3])
    assert_same_end(ref, train_text(cfg, resume=run))


def test_kill_9_after_a_periodic_checkpoint_loses_nothing(tmp_path: Path, text_data: dict[str, str]) -> None:
    """A real SIGKILL (no handler runs) in step 6 of a run that checkpoints every 4 steps, then the resume
    through the command line."""
    kw = {**TINY, **text_data, "checkpoint_every": 4}
    ref = train_text(TextTrainConfig(**kw, out=str(tmp_path / "ref")))
    run = tmp_path / "killed"
    script = textwrap.dedent(
        f"""
        import os, signal
        import contrastkit.training.text as t
        real, calls = t.trim_padding, [0]
        def trim(*a, **k):
            calls[0] += 1
            if calls[0] == 6:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)
        t.trim_padding = trim
        t.train_text(t.TextTrainConfig(**{dict(kw, out=str(run))!r}))
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert load_checkpoint(run / "checkpoint.pt", image_run=False)["step"] == 4
    assert_progress_metrics(run, step=4, curve_steps=[3, 4])  # the progress is visible after the kill
    (run / "checkpoint.pt.x1y2z3.tmp").write_bytes(b"torn")  # what a kill during a write leaves: removed
    assert main(["text-train", "--resume", str(run), "--no-progress"]) == 0
    assert not list(run.glob("*.tmp"))
    saved = load_checkpoint(run / "checkpoint.pt", image_run=False)
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, saved["model"][k]), k
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["sts_spearman_after"] == ref.metrics["sts_spearman_after"]
    assert curve(metrics) == curve(ref.metrics) and metrics["resumed_at_steps"] == [4]


def assert_progress_metrics(run: Path, *, step: int, curve_steps: list[int]) -> dict[str, Any]:
    """The run folder's metrics.json is the one of the periodic checkpoint of ``step``: unfinished,
    resumable, not evaluated after training, its loss curve up to that step, the resume named."""
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["finished"] is False and metrics["resumable"] is True, metrics
    assert metrics["steps"] == step and metrics["total_steps"] == 10
    assert metrics["sts_spearman_after"] is None and "interrupted" not in metrics
    assert [row["step"] for row in metrics["loss_curve"]] == curve_steps
    assert metrics["final_loss"] == metrics["loss_curve"][-1]["loss"]
    assert f"holds step {step} of 10" in metrics["note"]
    assert f"continue with: contrastkit text-train --resume {run}" in metrics["note"]
    return metrics


# timing entries of metrics.json (and "seconds" of each loss-curve row): differ from run to run
TIMING = ("train_seconds", "eval_seconds", "sentences_per_second", "total_seconds")
FINISHED_KEYS = {
    "sts_split", "sts_pairs", "sts_spearman_before", "sts_spearman_after", "sts_spearman_tfidf", "before_is",
    "encoder", "train_sentences", "finished", "steps", "total_steps", "final_loss", *TIMING, "device",
    "resumed_at_steps", "loss_curve",
}  # fmt: skip


def test_periodic_checkpoints_rewrite_metrics_json_and_the_finished_one_is_unchanged(
    tmp_path: Path, text_data: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    kw = {**TINY, **text_data, "save_model": False}
    plain = train_text(TextTrainConfig(**kw, checkpoint_every=0, out=str(tmp_path / "plain")))
    written: list[dict[str, Any]] = []
    real = text_module.write_metrics

    def spy(path: Path, metrics: dict[str, Any]) -> Path:
        written.append(json.loads(json.dumps(metrics)))  # as written, not the object (the run goes on)
        return real(path, metrics)

    monkeypatch.setattr(text_module, "write_metrics", spy)
    run = tmp_path / "run"
    result = train_text(TextTrainConfig(**kw, checkpoint_every=4, out=str(run)))
    # the periodic ones, the last step's (before the final evaluation), the finished one
    assert [m["steps"] for m in written] == [4, 8, 10, 10] and written[-1]["finished"] is True
    for m, curve_steps in zip(written[:3], ([3, 4], [3, 6, 8], [3, 6, 9, 10])):
        assert m["finished"] is False and m["resumable"] is True and m["sts_spearman_after"] is None
        assert [row["step"] for row in m["loss_curve"]] == curve_steps
    # the losses of steps 7 and 8 (logged at 9 with step 9's) only as the checkpoint's row, not in the end
    assert curve(written[1])[:2] == curve(plain.metrics)[:2]
    # the finished metrics.json: the keys and values it had without periodic ones (timing aside)
    on_disk = json.loads((run / "metrics.json").read_text())
    reference = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    assert set(on_disk) == set(reference) == FINISHED_KEYS

    def untimed(m: dict[str, Any]) -> dict[str, Any]:
        rows = [{k: v for k, v in row.items() if k != "seconds"} for row in m["loss_curve"]]
        return {**{k: v for k, v in m.items() if k not in TIMING}, "loss_curve": rows}

    assert untimed(on_disk) == untimed(reference) == untimed(json.loads(json.dumps(result.metrics)))
    assert on_disk["finished"] is True and [row["step"] for row in on_disk["loss_curve"]] == [3, 6, 9, 10]


def test_a_resumed_run_replaces_the_stale_interrupted_metrics_at_its_next_checkpoint(
    tmp_path: Path, text_data: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = interrupted_run(tmp_path, text_data, monkeypatch, checkpoint_every=0)
    assert json.loads((run / "metrics.json").read_text())["interrupted"] == "SIGINT"

    def crash() -> None:
        raise TrainingError("out of memory")

    at_steps(monkeypatch, {4: crash})  # step 8 of the run: after the resume's checkpoint of step 6
    with pytest.raises(TrainingError, match="keeps the resumable checkpoint of step 6 of 10"):
        train_text(TextTrainConfig(**TINY, **text_data, checkpoint_every=3), resume=run)
    metrics = assert_progress_metrics(run, step=6, curve_steps=[3, 6])
    assert metrics["resumed_at_steps"] == [4]


def test_the_last_steps_checkpoint_rewrites_metrics_json_before_the_final_evaluation(
    tmp_path: Path, text_data: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As at a periodic checkpoint: a kill -9 during the final evaluation leaves a current metrics.json
    (step 10 of 10, resumable), not the one of the last periodic checkpoint (step 8) or none."""
    real = text_module.embeddings_spearman
    seen: list[dict[str, Any]] = []
    run = tmp_path

    def spearman(*args: Any, **kwargs: Any) -> float:  # what a kill -9 during an evaluation would leave
        if (run / "checkpoint.pt").is_file():
            seen.append(json.loads((run / "metrics.json").read_text()))
        return real(*args, **kwargs)

    monkeypatch.setattr(text_module, "embeddings_spearman", spearman)
    for every in (4, 0):  # a periodic checkpoint at steps 4 and 8; none
        seen.clear()
        run = tmp_path / f"every-{every}"
        train_text(TextTrainConfig(**{**TINY, **text_data, "checkpoint_every": every}, out=str(run)))
        assert len(seen) == 1  # the final evaluation (none before training: no checkpoint yet)
        metrics = seen[0]
        assert metrics["finished"] is False and metrics["resumable"] is True, metrics
        assert metrics["steps"] == 10 and metrics["sts_spearman_after"] is None
        assert [row["step"] for row in metrics["loss_curve"]] == [3, 6, 9, 10]
        assert "holds step 10 of 10, all of them: the final evaluation runs" in metrics["note"]
        assert f"continue with: contrastkit text-train --resume {run}" in metrics["note"]
        assert json.loads((run / "metrics.json").read_text())["finished"] is True  # then replaced


def interrupted_run(
    tmp_path: Path, text_data: dict[str, str], monkeypatch: pytest.MonkeyPatch, **kw: Any
) -> Path:
    """A run stopped by Ctrl-C in step 4 of 10 (its handlers put back, trim_padding the real one again)."""
    run = tmp_path / "run"
    real = text_module.trim_padding
    at_steps(monkeypatch, {4: ctrl_c})
    with pytest.raises(TrainingInterrupted):
        train_text(TextTrainConfig(**{**TINY, **text_data, **kw}, out=str(run)))
    monkeypatch.setattr(text_module, "trim_padding", real)
    return run


def test_resume_of_a_finished_run_is_refused(tmp_path: Path, text_data: dict[str, str]) -> None:
    kept = tmp_path / "kept"
    train_text(TextTrainConfig(**TINY, **text_data, out=str(kept)))  # --save-model: the finished checkpoint
    with pytest.raises(ConfigError, match=r"finished \(10 of 10 steps?\); nothing to resume"):
        train_text(TextTrainConfig(**TINY, **text_data), resume=kept)
    plain = tmp_path / "plain"
    train_text(
        TextTrainConfig(**{**TINY, "save_model": False}, **text_data, checkpoint_every=3, out=str(plain))
    )
    assert not (plain / "checkpoint.pt").exists()  # removed at the end: the model was not to be kept
    with pytest.raises(
        ConfigError,
        match=r"finished \(10 of 10 steps\); its checkpoint\.pt was removed at the end \(without "
        r"--save-model\): nothing to resume: its results are in .*metrics\.json, or start a new run",
    ):
        train_text(TextTrainConfig(**TINY, **text_data), resume=plain)


def test_resume_with_a_changed_option_is_refused_naming_it(
    tmp_path: Path,
    text_data: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = interrupted_run(tmp_path, text_data, monkeypatch)
    capsys.readouterr()
    assert main(["text-train", "--resume", str(run), "--temperature", "0.1", "--steps", "12"]) == 2
    err = capsys.readouterr().err
    assert "--temperature: run has 0.05, now 0.1" in err and "--steps: run has 10, now 12" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert "--checkpoint-every, --device, --log-every, --progress, --save-model" in err  # what may change
    with pytest.raises(ConfigError, match="--head: run has 'none', now 'mlp'"):
        train_text(TextTrainConfig(**{**TINY, "head": "mlp"}, **text_data), resume=run)
    assert main(["text-train", "--resume", str(run), "--out", str(tmp_path / "elsewhere")]) == 2
    assert "continues the run in its own folder" in capsys.readouterr().err
    other = tmp_path / "other.txt"
    other.write_text("\n".join(sentences(48, seed=5)) + "\n", encoding="utf-8")
    assert main(["text-train", "--resume", str(run), "--sentences", str(other)]) == 2
    assert "the training sentences" in capsys.readouterr().err
    # device (same type), progress, log and checkpoint intervals may change; options given again must match
    again = ["--device", "cpu", "--no-progress", "--log-every", "2", "--checkpoint-every", "1", "--dim", "16"]
    assert main(["text-train", "--resume", str(run), *again]) == 0
    out = capsys.readouterr().out
    assert "resumed at step 4 of 10" in out
    assert json.loads((run / "metrics.json").read_text())["finished"] is True


def test_resume_compares_the_precision_resolved_on_the_runs_device(
    tmp_path: Path,
    text_data: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = interrupted_run(tmp_path, text_data, monkeypatch)  # precision auto, on the CPU: fp32
    capsys.readouterr()
    assert main(["text-train", "--resume", str(run), "--precision", "bf16"]) == 2
    assert "--precision: run has 'auto', now 'bf16'" in capsys.readouterr().err
    assert main(["text-train", "--resume", str(run), "--precision", "fp32"]) == 0  # auto is fp32 here
    assert "resumed at step 4 of 10" in capsys.readouterr().out
    assert load_checkpoint(run / "checkpoint.pt", image_run=False)["config"]["precision"] == "auto"


def test_resume_from_another_folder_and_with_the_data_moved(
    tmp_path: Path, text_data: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # the run is started with relative paths
    (work / "s.txt").write_text(Path(text_data["sentences"]).read_text(), encoding="utf-8")
    run = interrupted_run(
        tmp_path, {"sentences": "s.txt", "sts": os.path.relpath(text_data["sts"])}, monkeypatch
    )
    saved = load_checkpoint(run / "checkpoint.pt", image_run=False)["config"]
    assert os.path.isabs(saved["sentences"]) and os.path.samefile(saved["sentences"], work / "s.txt")
    assert os.path.isabs(saved["sts"])
    monkeypatch.chdir(tmp_path)
    (work / "s.txt").rename(tmp_path / "moved.txt")  # the same sentences, elsewhere: may be given again
    with pytest.raises(
        ConfigError, match=r"does not exist now: give the data's new place with: .*--sentences"
    ):
        train_text(TextTrainConfig(**TINY), resume=run)
    result = train_text(TextTrainConfig(**TINY, sentences="moved.txt"), resume=run)
    assert result.metrics["finished"] is True and result.metrics["resumed_at_steps"] == [4]


def test_a_run_of_another_device_type_is_refused(
    tmp_path: Path, text_data: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = interrupted_run(tmp_path, text_data, monkeypatch)
    state = load_checkpoint(run / "checkpoint.pt", image_run=False)
    state["device"] = "cuda:0"
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "version")}, run / "checkpoint.pt")
    with pytest.raises(ConfigError, match=r"on cpu: it ran on cuda.*--device cuda"):
        train_text(TextTrainConfig(**TINY, **text_data), resume=run)
    if not torch.cuda.is_available():  # the run's own --device (cuda) is not told to use --device cpu
        state["options" if "options" in state else "config"]["device"] = "cuda"
        state["config"]["device"] = "cuda"
        save_checkpoint(
            {k: v for k, v in state.items() if k not in ("format", "version")}, run / "checkpoint.pt"
        )
        with pytest.raises(ConfigError, match=r"resume it on a machine with a GPU"):
            train_text(TextTrainConfig(**TINY, **text_data), resume=run)


def test_text_train_resume_refuses_an_image_run_and_an_audio_run(
    fsdd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "image"
    flags = ["--limit", "40", "--epochs", "1", "--batch-size", "16", "--knn-every", "0", "--no-progress"]
    assert main(["train", *flags, "--device", "cpu", "--out", str(image)]) == 0
    audio = tmp_path / "audio"
    assert main(["audio-train", "--data", str(fsdd), *AUDIO_TINY, "--out", str(audio)]) == 0
    capsys.readouterr()
    assert main(["text-train", "--resume", str(image)]) == 2
    err = capsys.readouterr().err
    # both finished: said so (resuming them with their own command would only say that)
    assert f"{str(image)!r} is a finished train run: nothing to resume" in err and "Traceback" not in err
    for target in (audio, audio / "checkpoint.pt"):
        assert main(["text-train", "--resume", str(target)]) == 2
        err = capsys.readouterr().err
        assert f"{str(audio)!r} is a finished audio-train run: nothing to resume" in err, err
        assert "Traceback" not in err and err.count("\n") == 1 and "contrastkit train --resume" not in err


def built_encoders(monkeypatch: pytest.MonkeyPatch) -> list[torch.nn.Module]:
    """The text encoders that text-train builds from now on, in order (to change their weights mid-run)."""
    built: list[torch.nn.Module] = []
    real_build = text_module.build_text_encoder

    def build(*args: Any, **kwargs: Any) -> Any:
        encoder, tokenizer = real_build(*args, **kwargs)
        built.append(encoder)
        return encoder, tokenizer

    monkeypatch.setattr(text_module, "build_text_encoder", build)
    return built


def test_a_nonfinite_state_is_refused_before_it_is_written(
    tmp_path: Path, text_data: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    built = built_encoders(monkeypatch)

    def poison() -> None:  # in step 3, after the checkpoint of step 2: the weights diverge
        with torch.no_grad():
            next(built[0].parameters()).fill_(float("nan"))

    at_steps(monkeypatch, {3: poison})
    run = tmp_path / "run"
    cfg = TextTrainConfig(**{**TINY, "log_every": 100}, **text_data, checkpoint_every=2, out=str(run))
    with pytest.raises(
        TrainingError, match=r"training state at step 4 has non-finite values in model\."
    ) as info:
        train_text(cfg)
    assert f"{run / 'checkpoint.pt'} still holds step 2" in str(info.value)
    state = load_checkpoint(run / "checkpoint.pt", image_run=False)  # the previous checkpoint, intact
    assert state["step"] == 2 and all(
        torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point()
    )


def test_a_run_whose_embeddings_overflow_stops_as_diverged_and_so_does_its_resume(
    tmp_path: Path,
    text_data: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    built = built_encoders(monkeypatch)
    real_save = text_module.save_checkpoint

    def save(state: dict[str, Any], path: Any) -> Any:  # the last step's: weights huge but finite, saved so
        if state["step"] == state["total_steps"]:
            with torch.no_grad():
                for p in built[0].parameters():
                    p.mul_(1e15)  # in place: the state's tensors are the model's
        return real_save(state, path)

    monkeypatch.setattr(text_module, "save_checkpoint", save)
    run = tmp_path / "run"
    cfg = TextTrainConfig(**{**TINY, "log_every": 100, "save_model": False}, **text_data, out=str(run))
    with pytest.raises(DivergedError) as info:
        train_text(cfg)
    message = str(info.value)
    assert f"the run diverged: after all {cfg.steps} steps the encoder's features are NaN" in message
    assert "sentences" in message and "no results were written to metrics.json" in message
    assert "--resume" not in message  # a resume evaluates the same model: the advice is a new run
    state = load_checkpoint(run / "checkpoint.pt", image_run=False)
    assert state["step"] == cfg.steps and state["finished"] is False
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["finished"] is False and metrics["resumable"] is False
    assert metrics["note"].startswith("diverged: the run diverged") and "--resume" not in metrics["note"]
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["text-train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"the run diverged: after all {cfg.steps} steps" in err and "--resume" not in err


def test_resume_flag_passes_only_the_options_given(tmp_path: Path) -> None:
    args = build_parser().parse_args(["text-train", "--resume", "runs/x", "--dim", "30", "--no-progress"])
    cfg = config_from_args(args)  # dim 30 with the default 4 heads: checked against the run's heads later
    assert getattr(cfg, text_module._RESUME_ATTR) == ResumeRequest("runs/x", {"dim": 30, "progress": False})
    path = tmp_path / "text.toml"
    path.write_text("dim = 'many'\n", encoding="utf-8")
    args = build_parser().parse_args(["text-train", "--resume", "runs/x", "--config", str(path)])
    with pytest.raises(ConfigError, match="option dim has the wrong type"):
        config_from_args(args)


def test_a_run_saved_with_a_null_option_still_resumes(
    tmp_path: Path, text_data: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run whose config file had ``progress:`` (null: accepted before nulls were refused, and falsy) keeps
    that null in its checkpoint; its resume takes it as the run's (it was refused as 'command line: option
    progress is empty'), while a null given on resume is still refused."""
    run = interrupted_run(tmp_path, text_data, monkeypatch)
    state = load_checkpoint(run / "checkpoint.pt", image_run=False)
    state["config"]["progress"] = None
    save_checkpoint(state, run / "checkpoint.pt")
    assert main(["text-train", "--resume", str(run)]) == 0  # the command line gives no --progress
    assert json.loads((run / "metrics.json").read_text())["resumed_at_steps"] == [4]
    with pytest.raises(ConfigError, match=r"option save_model \(--save-model\) is empty \(null\)"):
        TextTrainConfig.from_dict({"save_model": None}, nulls_from_run={"progress"})
