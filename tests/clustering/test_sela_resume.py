"""``contrastkit sela`` loses nothing when interrupted: a checkpoint once the pseudo-labels are initialised
and at every epoch end, a stop signal mid-epoch or at an epoch end, a crash; ``--resume`` ends bitwise
like the uninterrupted run (pseudo-labels, refreshes and the Gaussian prior included). Refused: a
finished run, a changed option, another command's run, a non-finite state (the last checkpoint kept)."""

from __future__ import annotations

import functools
import json
import math
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from contrastkit.cli import main
from contrastkit.clustering import SelfLabelling, train_self_labelling
from contrastkit.encoders import SmallCNN
from contrastkit.training.checkpoint import load_checkpoint
from contrastkit.views import ImageViews

from ..conftest import at_step as at_optimizer_step
from ..conftest import blow_up_weights, send

at_step = functools.partial(at_optimizer_step, optimizer=torch.optim.SGD)  # sela's default optimizer

# 80 digits, batch 32: 2 steps an epoch, 8 in all; refreshes at epochs 0 and 2; SeLaVi's Gaussian prior
DIGITS = [
    "sela", "--data", "digits", "--limit", "80", "--epochs", "4", "--batch-size", "32", "--heads", "2",
    "--refresh-every", "2", "--marginal-std", "0.3", "--no-linear-probe", "--device", "cpu",
]  # fmt: skip
STEPS = 8


def audio_args(fsdd: Path) -> list[str]:
    """The session's fsdd (tests/conftest.py): 24 clips, batch 8: 3 steps an epoch, 6 in all."""
    return ["sela", "--data", str(fsdd), "--epochs", "2", "--batch-size", "8", "--heads", "1", "--width", "4"]


@pytest.fixture(scope="module")
def ref(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("ref") / "digits"
    assert main([*DIGITS, "--out", str(run)]) == 0
    return run


def assert_same_run(ref: Path, run: Path) -> dict[str, Any]:
    """Bitwise the same final model (pseudo-labels included) and the same metrics and history."""
    a, b = load_checkpoint(ref, image_run=False), load_checkpoint(run, image_run=False)
    assert a["finished"] is True and b["finished"] is True and a["model"].keys() == b["model"].keys()
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (ref, run))
    for key in ("heads_test", "pseudo_labels_train", "learned", "references"):
        assert ma[key] == mb[key], key
    assert ma["history"]["losses"] == mb["history"]["losses"]
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(ma["history"]["refreshes"]) == drop(mb["history"]["refreshes"])
    assert {k: v for k, v in ma["config"].items() if k != "out"} == {
        k: v for k, v in mb["config"].items() if k != "out"
    }
    return mb


@pytest.mark.parametrize(("step", "done", "next_step"), [(3, 1, 1), (4, 2, 0)])
def test_ctrl_c_then_resume_is_bitwise_the_uninterrupted_run(
    ref: Path,
    step: int,
    done: int,
    next_step: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Mid-epoch (step 3: epoch 2's first) and at an epoch end (step 4, before the refresh of epoch 3)."""
    run = tmp_path / "run"
    at_step(monkeypatch, step, send(signal.SIGINT))
    assert main([*DIGITS, "--out", str(run)]) == 130
    err = capsys.readouterr().err
    said = f"step {step} of {STEPS}" if next_step else f"epoch {done} of 4"
    assert f"SIGINT received: stopped after {said}" in err and "Traceback" not in err
    assert f"continue with: contrastkit sela --resume {run}" in err
    state = load_checkpoint(run, image_run=False)
    assert state["finished"] is False and state["progress"] == {"done": done, "total": 4, "unit": "epoch"}
    assert state["loop"]["next_step"] == next_step and state["step"] == step
    assert state["loop"]["prior"] is not None and state["model"]["labels"].shape == (2, 80)
    monkeypatch.undo()
    assert main(["sela", "--resume", str(run), "--data", "digits", "--epochs", "4"]) == 0
    assert f"resumed at epoch {done} of 4" in capsys.readouterr().out
    assert assert_same_run(ref, run)["resumed_at_steps"] == [step]


def test_sigterm_on_fsdd_audio_resumes_exactly(
    fsdd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*audio_args(fsdd), "--no-linear-probe", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "ref")]) == 0
    at_step(monkeypatch, 2, send(signal.SIGTERM))
    assert main([*args, "--out", str(tmp_path / "run")]) == 143
    assert "SIGTERM received: stopped after step 2 of 6" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["sela", "--resume", str(tmp_path / "run")]) == 0
    assert_same_run(tmp_path / "ref", tmp_path / "run")


def test_a_crash_in_epoch_2_keeps_the_checkpoint_of_epoch_1_which_resumes(
    ref: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"

    def crash(_optimizer: Any) -> None:
        raise RuntimeError("simulated crash")

    at_step(monkeypatch, 4, crash)  # epoch 2, its last step
    with pytest.raises(RuntimeError, match="simulated"):
        main([*DIGITS, "--out", str(run)])
    assert f"keeps epoch 1 of 4; continue with: contrastkit sela --resume {run}" in capsys.readouterr().err
    state = load_checkpoint(run, image_run=False)
    assert state["progress"]["done"] == 1 and state["loop"]["next_step"] == 0
    assert set(state["references"]) == {"random_init", "raw pixels"}
    monkeypatch.undo()
    assert main(["sela", "--resume", str(run)]) == 0
    assert_same_run(ref, run)


def test_a_stop_after_the_last_step_leaves_a_run_whose_resume_only_evaluates(
    ref: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    at_step(monkeypatch, STEPS, send(signal.SIGINT))
    assert main([*DIGITS, "--out", str(run)]) == 130
    assert "stopped after epoch 4 of 4" in capsys.readouterr().err
    assert load_checkpoint(run, image_run=False)["progress"]["done"] == 4
    monkeypatch.undo()
    assert main(["sela", "--resume", str(run)]) == 0
    assert_same_run(ref, run)


def test_finished_changed_and_foreign_runs_are_refused(
    ref: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    state = load_checkpoint(ref, image_run=False)
    assert {"model", "config", "finished", "progress"} <= set(state) and state["finished"] is True
    assert main(["sela", "--resume", str(ref)]) == 2
    assert "finished (4 of 4 epochs); nothing to resume" in capsys.readouterr().err
    run = tmp_path / "run"
    at_step(monkeypatch, 3, send(signal.SIGINT))
    assert main([*DIGITS, "--out", str(run)]) == 130
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["sela", "--resume", str(run), "--lam", "10", "--heads", "3"]) == 2
    err = capsys.readouterr().err
    assert "--heads: run has 2, now 3" in err and "--lam: run has 25.0, now 10.0" in err, err
    assert main(["audio-train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "written by contrastkit sela, not audio-train" in err and "sela --resume" in err
    assert (
        main(["sela", "--resume", str(run), "--clusters", "0", "--lr", "0.0075"]) == 0
    )  # as given / resolved
    assert main(["audio-train", "--resume", str(ref)]) == 2  # finished: not pointed to sela --resume
    err = capsys.readouterr().err
    assert f"{str(ref)!r} is a finished sela run: nothing to resume; its results are in " in err, err
    assert "--resume" not in err, err


def test_equivalent_precision_and_the_linear_probe_may_be_given_on_resume(
    ref: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On the CPU --precision auto is fp32: no change; --linear-probe only changes the final evaluation.
    bf16 is another computation: refused, naming what may change."""
    run = tmp_path / "run"
    at_step(monkeypatch, 3, send(signal.SIGINT))
    assert main([*DIGITS, "--out", str(run)]) == 130
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["sela", "--resume", str(run), "--precision", "bf16"]) == 2
    err = capsys.readouterr().err
    assert "--precision: run has 'auto', now 'bf16'" in err, err
    assert "Options that may change on resume: --device, --linear-probe" in err, err
    assert main(["sela", "--resume", str(run), "--precision", "fp32", "--linear-probe"]) == 0
    # as the uninterrupted run with the probe, the references' probes included (the random init rebuilt)
    with_probe = tmp_path / "with-probe"
    assert main([*DIGITS, "--linear-probe", "--out", str(with_probe)]) == 0
    metrics = assert_same_run(with_probe, run)
    assert metrics["config"]["precision"] == "auto" and metrics["config"]["linear_probe"] is True
    for result in (metrics["learned"], *metrics["references"].values()):
        assert math.isfinite(result["linear_top1"]), result


def test_a_non_finite_state_is_refused_before_writing_and_the_last_checkpoint_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"

    def poison(optimizer: torch.optim.Optimizer) -> None:
        with torch.no_grad():
            optimizer.param_groups[0]["params"][0].fill_(math.inf)

    at_step(monkeypatch, 4, poison)  # the last step of epoch 2: its losses were finite
    assert main([*DIGITS, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "the training state became non-finite by step 4 of 8" in err, err
    assert "keeps the state after epoch 1 of 4" in err
    state = load_checkpoint(run, image_run=False)
    assert state["progress"]["done"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_a_run_whose_features_overflow_stops_as_diverged_and_so_does_its_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    at_step(monkeypatch, STEPS, blow_up_weights)  # after the last step: the state stays finite
    assert main([*DIGITS, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "the run diverged: after its 4 epochs the encoder's features are NaN or infinite for" in err, err
    assert "no results were written to metrics.json" in err and "start a new run with a lower --lr" in err
    assert "Traceback" not in err
    state = load_checkpoint(run, image_run=False)
    assert state["progress"]["done"] == 4 and state["finished"] is False
    assert not (run / "metrics.json").exists()
    monkeypatch.undo()
    assert main(["sela", "--resume", str(run)]) == 2
    assert "the run diverged: after its 4 epochs" in capsys.readouterr().err


def test_the_loop_resumed_from_its_state_matches_the_uninterrupted_loop() -> None:
    """train_self_labelling alone: stop() mid-epoch, then a fresh model, optimizer and generator resumed."""
    images = torch.randint(
        0, 256, (48, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )

    def build() -> tuple[SelfLabelling, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = SelfLabelling(SmallCNN(in_channels=1, width=4), num_clusters=4, num_heads=2, marginal_std=0.2)
        return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    kw: dict[str, Any] = dict(epochs=3, batch_size=16, log=lambda s: None)
    model, opt = build()
    ref = train_self_labelling(
        model, images, ImageViews(size=8), optimizer=opt, generator=torch.Generator().manual_seed(1), **kw
    )
    saved: list[dict[str, Any]] = []
    calls = [0]

    def stop() -> bool:
        calls[0] += 1
        return calls[0] == 5  # epoch 2, its second step

    model2, opt2 = build()
    gen = torch.Generator().manual_seed(1)
    hist = train_self_labelling(
        model2,
        images,
        ImageViews(size=8),
        optimizer=opt2,
        generator=gen,
        checkpoint=saved.append,
        stop=stop,
        **kw,
    )
    assert hist.stopped and saved[-1]["epoch"] == 1 and saved[-1]["next_step"] == 2
    states = (model2.state_dict(), opt2.state_dict())
    model3, opt3 = build()
    model3.load_state_dict(states[0])
    opt3.load_state_dict(states[1])
    rest = train_self_labelling(
        model3,
        images,
        ImageViews(size=8),
        optimizer=opt3,
        generator=torch.Generator(),
        resume=saved[-1],
        **kw,
    )
    assert not rest.stopped and rest.losses == ref.losses
    for name, t in model.state_dict().items():
        assert torch.equal(t, model3.state_dict()[name]), name


def test_a_run_saved_before_an_option_existed_resumes_with_its_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint whose config lacks an option added later (here --marginal-order) had that option's
    default behaviour: it resumes, also with the default given again, and a different value is refused."""
    from contrastkit.training.checkpoint import save_checkpoint

    run = tmp_path / "run"
    at_step(monkeypatch, 3, send(signal.SIGINT))
    assert main([*DIGITS, "--out", str(run)]) == 130
    monkeypatch.undo()
    state = load_checkpoint(run, image_run=False)
    for key in ("config", "options"):
        state[key].pop("marginal_order", None)
    save_checkpoint({k: v for k, v in state.items() if k not in ("format", "version")}, run / "checkpoint.pt")
    capsys.readouterr()
    assert main(["sela", "--resume", str(run), "--marginal-order", "reference"]) == 2
    assert "--marginal-order: run has 'matched', now 'reference'" in capsys.readouterr().err
    assert main(["sela", "--resume", str(run), "--marginal-order", "matched"]) == 0
