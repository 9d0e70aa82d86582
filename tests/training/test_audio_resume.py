"""``contrastkit audio-train`` loses nothing when interrupted: a checkpoint before the first step and at
every epoch end, a stop signal (SIGINT, SIGTERM) mid-epoch or at an epoch end, a crash; ``--resume``
ends bitwise like the uninterrupted run. Refused: a finished run, a changed option, another command's
run, a non-finite state (the previous checkpoint is kept)."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from contrastkit.cli import main
from contrastkit.training.checkpoint import load_checkpoint, save_checkpoint

from ..conftest import AUDIO_TINY, at_step, blow_up_weights, send, tiny_fsdd

# the session's fsdd (tests/conftest.py): 24 training clips, batch 8: 3 steps an epoch, 9 in all
TINY = [*AUDIO_TINY, "--epochs", "3"]
STEPS = 9


@pytest.fixture(scope="module")
def refs(fsdd: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Uninterrupted runs, one per negative source (queue+mochi: a queue in the state, the global RNG)."""
    root = tmp_path_factory.mktemp("refs")
    out = {}
    for negatives in ("in-batch", "queue+mochi"):
        run = root / negatives
        assert main(_args(fsdd, run, negatives)) == 0
        out[negatives] = run
    return out


def _args(fsdd: Path, run: Path, negatives: str = "in-batch") -> list[str]:
    return ["audio-train", "--data", str(fsdd), *TINY, "--negatives", negatives, "--out", str(run)]


def assert_same_run(ref: Path, run: Path) -> dict[str, Any]:
    """Bitwise the same final model, and the same metrics and loss history."""
    a, b = load_checkpoint(ref, image_run=False), load_checkpoint(run, image_run=False)
    assert a["finished"] is True and b["finished"] is True
    assert a["model"].keys() == b["model"].keys()
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (ref, run))
    for key in ("learned", "random_init", "mfcc", "history", "protocol"):
        assert ma[key] == mb[key], key
    assert {k: v for k, v in ma["config"].items() if k != "out"} == {
        k: v for k, v in mb["config"].items() if k != "out"
    }
    return mb


@pytest.mark.parametrize("negatives", ["in-batch", "queue+mochi"])
def test_ctrl_c_mid_epoch_then_resume_is_bitwise_the_uninterrupted_run(
    fsdd: Path,
    refs: dict[str, Path],
    negatives: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    at_step(monkeypatch, 4, send(signal.SIGINT))  # epoch 2, its first step
    assert main(_args(fsdd, run, negatives)) == 130
    err = capsys.readouterr().err
    assert f"SIGINT received: stopped after step 4 of {STEPS}" in err
    assert f"continue with: contrastkit audio-train --resume {run}" in err and "Traceback" not in err
    state = load_checkpoint(run, image_run=False)
    assert state["finished"] is False and state["progress"] == {"done": 1, "total": 3, "unit": "epoch"}
    assert state["loop"]["next_step"] == 1 and state["step"] == 4 and len(state["history"]) == 1
    monkeypatch.undo()
    # the same options given again (the data by a relative path, from another folder) are no change
    monkeypatch.chdir(fsdd.parent)
    assert main(["audio-train", "--resume", str(run), "--data", fsdd.name, "--epochs", "3"]) == 0
    assert "resumed at epoch 1 of 3, step 4 of 9" in capsys.readouterr().out
    metrics = assert_same_run(refs[negatives], run)
    assert metrics["resumed_at_steps"] == [4]


def test_sigterm_at_an_epoch_end_exits_143_and_resumes_exactly(
    fsdd: Path,
    refs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    at_step(monkeypatch, 6, send(signal.SIGTERM))  # the last step of epoch 2
    assert main(_args(fsdd, run)) == 143
    assert "SIGTERM received: stopped after epoch 2 of 3" in capsys.readouterr().err
    state = load_checkpoint(run, image_run=False)
    assert (
        state["progress"]["done"] == 2 and state["loop"]["next_step"] == 0 and state["loop"]["order"] is None
    )
    monkeypatch.undo()
    assert main(["audio-train", "--resume", str(run)]) == 0
    assert "resumed at epoch 2 of 3\n" in capsys.readouterr().out
    assert_same_run(refs["in-batch"], run)


def test_a_stop_after_the_last_step_leaves_a_run_whose_resume_only_evaluates(
    fsdd: Path,
    refs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"
    at_step(monkeypatch, STEPS, send(signal.SIGINT))
    assert main(_args(fsdd, run)) == 130
    state = load_checkpoint(run, image_run=False)
    assert (
        state["finished"] is False and state["progress"]["done"] == 3 and not (run / "metrics.json").exists()
    )
    monkeypatch.undo()
    assert main(["audio-train", "--resume", str(run)]) == 0
    assert "resumed at epoch 3 of 3" in capsys.readouterr().out
    assert_same_run(refs["in-batch"], run)


def test_a_crash_in_epoch_2_keeps_the_checkpoint_of_epoch_1_which_resumes(
    fsdd: Path,
    refs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"

    def crash(_optimizer: Any) -> None:
        raise RuntimeError("simulated out of memory")

    at_step(monkeypatch, 5, crash)  # epoch 2, its second step
    with pytest.raises(RuntimeError, match="simulated"):
        main(_args(fsdd, run))
    err = capsys.readouterr().err
    assert f"keeps epoch 1 of 3; continue with: contrastkit audio-train --resume {run}" in err
    state = load_checkpoint(run, image_run=False)
    assert state["finished"] is False and state["progress"]["done"] == 1 and state["loop"]["next_step"] == 0
    monkeypatch.undo()
    assert main(["audio-train", "--resume", str(run)]) == 0
    assert_same_run(refs["in-batch"], run)


def test_the_checkpoint_before_the_first_step_keeps_the_references(
    fsdd: Path, refs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"

    def crash(_optimizer: Any) -> None:
        raise RuntimeError("killed in epoch 1")

    at_step(monkeypatch, 1, crash)
    with pytest.raises(RuntimeError):
        main(_args(fsdd, run))
    state = load_checkpoint(run, image_run=False)
    assert state["progress"]["done"] == 0 and set(state["references"]) == {"random_init", "mfcc"}
    monkeypatch.undo()
    assert main(["audio-train", "--resume", str(run)]) == 0
    assert_same_run(refs["in-batch"], run)


def test_the_final_checkpoint_keeps_its_keys_and_a_finished_run_is_refused(
    refs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    state = load_checkpoint(refs["in-batch"], image_run=False)
    assert {"model", "config", "views"} <= set(state) and state["finished"] is True
    assert state["format"] == "contrastkit-checkpoint"
    assert state["progress"] == {"done": 3, "total": 3, "unit": "epoch"}
    assert set(state["views"]) == {"mean", "std"} and os.path.isabs(state["config"]["data"])
    assert main(["audio-train", "--resume", str(refs["in-batch"])]) == 2
    err = capsys.readouterr().err
    assert "finished (3 of 3 epochs); nothing to resume" in err and "Traceback" not in err


def test_resume_refuses_changed_options_another_folder_and_another_commands_run(
    fsdd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    at_step(monkeypatch, 2, send(signal.SIGINT))
    assert main(_args(fsdd, run)) == 130
    monkeypatch.undo()
    before = (run / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert main(["audio-train", "--resume", str(run), "--lr", "0.5", "--epochs", "5"]) == 2
    err = capsys.readouterr().err
    assert "--lr: run has 3.125e-05, now 0.5" in err and "--epochs: run has 3, now 5" in err
    assert "Options that may change on resume: --device, --linear-probe\n" in err  # (neither has --progress)
    other = tiny_fsdd(tmp_path / "other.zip", digits=2)
    assert main(["audio-train", "--resume", str(run), "--data", str(other)]) == 2
    assert "--data: run has" in capsys.readouterr().err
    assert main(["audio-train", "--resume", str(run), "--out", str(tmp_path / "elsewhere")]) == 2
    assert "drop --out" in capsys.readouterr().err
    assert main(["sela", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "written by contrastkit audio-train, not sela" in err
    assert f"resume it with contrastkit audio-train --resume {run}" in err
    assert main(["train", "--resume", str(run)]) == 2
    assert f"continue it with contrastkit audio-train --resume {run}" in capsys.readouterr().err
    # a new run into its folder is pointed to --resume
    assert main(_args(fsdd, run)) == 2
    assert f"continue it with contrastkit audio-train --resume {run}" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["audio-train", "--resume", str(tmp_path / "empty")]) == 2
    assert "stopped before its first checkpoint" in capsys.readouterr().err
    assert (run / "checkpoint.pt").read_bytes() == before  # nothing was written by the refusals


def test_other_data_under_the_runs_path_is_refused_by_its_fingerprint(
    fsdd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "fsdd.zip"
    data.write_bytes(fsdd.read_bytes())
    run = tmp_path / "run"
    at_step(monkeypatch, 2, send(signal.SIGINT))
    assert main(_args(data, run)) == 130
    monkeypatch.undo()
    tiny_fsdd(data, digits=2)  # replaced in place
    assert main(["audio-train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"its training data ({data}) changed since the run started" in err, err
    assert "24 training items then, 16 now" in err


def test_the_runs_data_moved_elsewhere_is_found_with_data(
    fsdd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "fsdd.zip"
    data.write_bytes(fsdd.read_bytes())
    run = tmp_path / "run"
    at_step(monkeypatch, 2, send(signal.SIGINT))
    assert main(_args(data, run)) == 130
    monkeypatch.undo()
    moved = data.rename(tmp_path / "moved.zip")
    assert main(["audio-train", "--resume", str(run)]) == 2
    assert str(data) in capsys.readouterr().err  # the run's data, not found
    assert main(["audio-train", "--resume", str(run), "--data", str(moved)]) == 0
    assert json.loads((run / "metrics.json").read_text())["config"]["data"] == str(moved)


def test_a_non_finite_state_is_refused_before_writing_and_the_last_checkpoint_kept(
    fsdd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"

    def poison(optimizer: torch.optim.Optimizer) -> None:
        with torch.no_grad():
            optimizer.param_groups[0]["params"][0].fill_(math.nan)

    at_step(monkeypatch, 6, poison)  # the last step of epoch 2: its losses were finite
    assert main(_args(fsdd, run)) == 2
    err = capsys.readouterr().err
    assert "the training state became non-finite by step 6 of 9" in err, err
    assert "the checkpoint was not written" in err and "keeps the state after epoch 1 of 3" in err
    state = load_checkpoint(run, image_run=False)
    assert state["progress"]["done"] == 1 and state["finished"] is False
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert not (run / "metrics.json").exists()


def test_a_run_whose_features_overflow_stops_as_diverged_and_so_does_its_resume(
    fsdd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    at_step(monkeypatch, STEPS, blow_up_weights)  # after the last step: the state stays finite
    assert main(_args(fsdd, run)) == 2
    err = capsys.readouterr().err
    assert "the run diverged: after its 3 epochs the encoder's features are NaN or infinite for" in err, err
    assert (
        "train clips" in err and "no results were written to metrics.json" in err and "Traceback" not in err
    )
    assert "start a new run with a lower --lr or a higher --temperature" in err
    state = load_checkpoint(run, image_run=False)  # the last epoch's checkpoint, finite and resumable
    assert state["progress"]["done"] == 3 and state["finished"] is False
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert not (run / "metrics.json").exists()
    monkeypatch.undo()  # the resume only evaluates the same model: it stops the same way
    assert main(["audio-train", "--resume", str(run)]) == 2
    assert "the run diverged: after its 3 epochs" in capsys.readouterr().err


def test_a_second_ctrl_c_stops_at_once_and_the_last_checkpoint_resumes(
    fsdd: Path,
    refs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = tmp_path / "run"

    def twice(_optimizer: Any) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # the second: KeyboardInterrupt, here

    at_step(monkeypatch, 5, twice)
    assert main(_args(fsdd, run)) == 130
    err = capsys.readouterr().err
    assert f"keeps epoch 1 of 3; continue with: contrastkit audio-train --resume {run}" in err
    monkeypatch.undo()
    assert main(["audio-train", "--resume", str(run)]) == 0
    assert_same_run(refs["in-batch"], run)


def test_another_device_type_and_a_checkpoint_without_state_are_refused(
    fsdd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    at_step(monkeypatch, 2, send(signal.SIGINT))
    assert main(_args(fsdd, run)) == 130
    monkeypatch.undo()
    state = load_checkpoint(run, image_run=False)
    save_checkpoint({**state, "device": "cuda:0"}, run / "checkpoint.pt")
    capsys.readouterr()
    assert main(["audio-train", "--resume", str(run), "--device", "cpu"]) == 2
    assert "it ran on cuda" in capsys.readouterr().err
    # an audio-train checkpoint of a contrastkit that could not resume (plain torch.save, no format mark)
    torch.save({k: state[k] for k in ("model", "config", "views")}, run / "checkpoint.pt")
    assert main(["audio-train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "holds no training state to continue" in err and "Traceback" not in err


def test_the_linear_probe_may_change_on_resume(
    fsdd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--linear-probe only changes the evaluation: a run started without it and resumed with it ends as
    the uninterrupted run with it, the references' probes included (the random init is rebuilt from the
    seed, checked against the fingerprint of the run's initial weights)."""
    with_probe = tmp_path / "with-probe"
    assert main([*_args(fsdd, with_probe), "--linear-probe"]) == 0
    run = tmp_path / "run"
    at_step(monkeypatch, 4, send(signal.SIGINT))
    assert main(_args(fsdd, run)) == 130
    monkeypatch.undo()
    assert main(["audio-train", "--resume", str(run), "--linear-probe"]) == 0
    metrics = assert_same_run(with_probe, run)
    for key in ("learned", "random_init", "mfcc"):
        assert math.isfinite(metrics[key]["linear_top1"]), metrics[key]


def test_a_run_whose_initial_weights_cannot_be_rebuilt_keeps_a_null_random_init_probe(
    fsdd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint without the initial weights' fingerprint (an older contrastkit): the MFCC probe is
    fitted on resume, the random init's stays null and the resume says why."""
    run = tmp_path / "run"
    at_step(monkeypatch, 4, send(signal.SIGINT))
    assert main(_args(fsdd, run)) == 130
    monkeypatch.undo()
    state = load_checkpoint(run, image_run=False)
    del state["init_weights"]
    save_checkpoint(state, run / "checkpoint.pt")
    capsys.readouterr()
    assert main(["audio-train", "--resume", str(run), "--linear-probe"]) == 0
    assert "the random-init reference keeps no linear probe (null in metrics.json)" in capsys.readouterr().err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["random_init"]["linear_top1"] is None and math.isfinite(metrics["mfcc"]["linear_top1"])


def test_a_finished_run_given_to_another_command_is_said_to_be_finished(
    refs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not "resume it with audio-train", which would only say it finished."""
    done = refs["in-batch"]
    assert main(["sela", "--resume", str(done)]) == 2
    err = capsys.readouterr().err
    assert f"{str(done)!r} is a finished audio-train run: nothing to resume; its results are in " in err, err
    assert str(done / "metrics.json") in err and "--resume" not in err, err
    # its checkpoint removed: the folder is still a finished run
    gone = tmp_path / "gone"
    gone.mkdir()
    (gone / "metrics.json").write_bytes((done / "metrics.json").read_bytes())
    assert main(["sela", "--resume", str(gone)]) == 2
    err = capsys.readouterr().err
    assert f"{str(gone)!r} is a finished audio-train run: nothing to resume" in err, err


def test_a_cuda_run_on_a_machine_without_cuda_needs_a_gpu(
    fsdd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The default --device (the run's: cuda) is not told to use --device cpu, which would be refused."""
    run = tmp_path / "run"
    at_step(monkeypatch, 2, send(signal.SIGINT))
    assert main(_args(fsdd, run)) == 130
    monkeypatch.undo()
    state = load_checkpoint(run, image_run=False)
    state = {**state, "device": "cuda:0", "options": {**state["options"], "device": "cuda"}}
    save_checkpoint(state, run / "checkpoint.pt")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    capsys.readouterr()
    for flags in ([], ["--device", "cpu"], ["--device", "auto"]):
        assert main(["audio-train", "--resume", str(run), *flags]) == 2
        err = capsys.readouterr().err
        assert (
            "it ran on cuda; its random generators' states do not transfer to the CPU: resume it on a "
            "machine with a GPU" in err
        ), (flags, err)
        assert "use --device cpu" not in err, err
