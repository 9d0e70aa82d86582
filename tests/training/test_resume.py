"""Checkpoints that survive a kill, for real: SIGKILL mid-epoch and resume, Ctrl-C (SIGINT), a kill while a
checkpoint is being written, non-finite losses, refused resumes, and the TensorBoard scalars."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from contrastkit.errors import ConfigError, TrainingError
from contrastkit.training import TrainConfig, train
from contrastkit.training import trainer as trainer_module
from contrastkit.training.checkpoint import load_checkpoint, remove_stale_temporaries
from contrastkit.training.resume import resume_config

# 320 digits, batch 64: 5 steps an epoch, 30 in all; checkpoints at steps 7, 14, 21, 28 (never an epoch end).
ARGS = (
    "--epochs", "6", "--batch-size", "64", "--limit", "320", "--knn-every", "2",
    "--checkpoint-every", "7", "--deterministic", "--no-progress",
)  # fmt: skip
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args):
    cmd = [sys.executable, "-m", "contrastkit", *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def wait_for(path, proc, timeout=120):
    """Poll until ``path`` exists; fail if the process ended first (it would have nothing left to kill)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended before {path.name} appeared: {proc.communicate()}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted reference run, one killed with SIGKILL after its first checkpoint, one stopped with
    SIGINT after its first logged steps; the last two are then resumed. All side by side."""
    root = tmp_path_factory.mktemp("resume")
    ref = cli("train", *ARGS, "--out", root / "ref")
    killed = cli("train", *ARGS, "--out", root / "killed")
    wait_for(root / "killed" / "checkpoint.pt", killed)
    killed.send_signal(signal.SIGKILL)
    killed_out = killed.communicate(timeout=60)
    interrupted = cli("train", *ARGS, "--out", root / "interrupted")
    wait_for(root / "interrupted" / "history.jsonl", interrupted)
    interrupted.send_signal(signal.SIGINT)
    int_out = interrupted.communicate(timeout=120)
    states = {
        "killed": load_checkpoint(root / "killed" / "checkpoint.pt"),
        "interrupted": load_checkpoint(root / "interrupted" / "checkpoint.pt"),
    }
    # a kill during a checkpoint write leaves a temporary file: resume clears it
    (root / "killed" / "checkpoint.pt.abc123.tmp").write_bytes(b"torn")
    resumed = {name: cli("train", "--resume", root / name, "--no-progress") for name in states}
    resumed_out = {name: (*p.communicate(timeout=300), p.returncode) for name, p in resumed.items()}
    ref_out = ref.communicate(timeout=300)
    assert ref.returncode == 0, ref_out[1]
    return {
        "root": root,
        "killed": (killed.returncode, *killed_out),
        "interrupted": (interrupted.returncode, *int_out),
        "states": states,
        "resumed": resumed_out,
    }


def history(run):
    """history.jsonl without the wall-clock column."""
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def assert_same_run(a, b):
    """Same final metrics, kNN curve, history and trained state (model, optimizer) — exactly."""
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (a, b))
    for key in ("knn_top1", "knn_top1_random_init", "final_loss", "final_mi_bound_nats", "steps"):
        assert ma[key] == mb[key], key
    assert [c["knn_top1"] for c in ma["knn_curve"]] == [c["knn_top1"] for c in mb["knn_curve"]]
    assert history(a) == history(b)
    sa, sb = (load_checkpoint(r / "checkpoint.pt") for r in (a, b))
    assert sa["finished"] and sb["finished"]
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), k
    for k, v in sa["optimizer"]["state"].items():
        assert torch.equal(v["momentum_buffer"], sb["optimizer"]["state"][k]["momentum_buffer"]), k
    return mb


def test_sigkill_mid_epoch_then_resume_ends_exactly_like_the_uninterrupted_run(runs):
    rc, _, _ = runs["killed"]
    assert rc == -signal.SIGKILL
    state = runs["states"]["killed"]
    assert not state["finished"] and state["step"] in (7, 14, 21, 28)
    assert state["progress"]["next_batch"] not in (0, 5)  # the kill and the resume are mid-epoch
    out, err, rc = runs["resumed"]["killed"]
    assert rc == 0, err
    assert f"resumed at step {state['step']} of 30" in out
    metrics = assert_same_run(runs["root"] / "ref", runs["root"] / "killed")
    assert metrics["resumed_at_steps"] == [state["step"]]
    assert not list((runs["root"] / "killed").glob("*.tmp"))


def test_ctrl_c_saves_a_checkpoint_exits_130_and_resumes_exactly(runs):
    rc, _, err = runs["interrupted"]
    state = runs["states"]["interrupted"]
    assert rc == 130, err
    assert "Traceback" not in err
    assert f"SIGINT received: stopped at step {state['step']} of 30" in err
    assert f"contrastkit train --resume {runs['root'] / 'interrupted'}" in err
    assert not state["finished"] and 0 < state["step"] < 30
    _, err, rc = runs["resumed"]["interrupted"]
    assert rc == 0, err
    assert_same_run(runs["root"] / "ref", runs["root"] / "interrupted")


def test_resume_with_a_changed_config_is_refused_naming_each_difference(runs, tmp_path):
    unfinished = tmp_path / "unfinished"
    (unfinished).mkdir()
    # the interrupted run's checkpoint, before its resume finished it
    torch.save(
        {"format": "contrastkit-checkpoint", "version": 1, **runs["states"]["interrupted"]},
        unfinished / "checkpoint.pt",
    )
    p = cli("train", "--resume", unfinished, "--objective", "debiased", "--epochs", "9", "--device", "cpu")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "Traceback" not in err, err
    assert "--objective: run has 'infonce', now 'debiased'" in err
    assert "--epochs: run has 6, now 9" in err and "--device" not in err.split("may change")[0]
    assert "drop these flags, or start a new contrastkit train run" in err  # what to do
    assert "--workers, and --data-placement among auto, device and host" in err  # what may change
    # --data-placement among auto, device and host is no change; to or from stream it is
    assert resume_config(unfinished, {"data_placement": "host"})[0].data_placement == "host"
    with pytest.raises(ConfigError, match=r"\(--data-placement: run has 'auto', now 'stream'\)"):
        resume_config(unfinished, {"data_placement": "stream"})
    p = cli("train", *ARGS, "--out", unfinished)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and f"continue it with contrastkit train --resume {unfinished}" in err, err
    p = cli("train", "--resume", unfinished, "--out", tmp_path / "elsewhere")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "drop --out" in err, err
    (tmp_path / "empty").mkdir()
    p = cli("train", "--resume", tmp_path / "empty")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "stopped before its first checkpoint" in err, err
    p = cli("train", "--resume", runs["root"] / "ref")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2 and "finished (step 30 of 30); nothing to resume" in err, err


WRITER = textwrap.dedent(
    """
    import sys, torch
    from contrastkit.training.checkpoint import save_checkpoint
    path = sys.argv[1]
    for n in range(1, 10**6):
        big = torch.full((4_000_000,), float(n))  # 16 MB: long enough to be killed mid-write
        save_checkpoint({"n": n, "big": big}, path)
        print(n, flush=True)
    """
)


def test_a_kill_while_a_checkpoint_is_written_never_leaves_an_unreadable_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    caught_mid_write = 0
    rng = random.Random(0)
    for _ in range(6):
        p = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=ENV
        )
        assert p.stdout.readline().strip() == "1" or path.exists()  # one checkpoint is complete
        time.sleep(rng.uniform(0.0, 0.3))
        p.send_signal(signal.SIGKILL)
        p.communicate()
        caught_mid_write += bool(list(tmp_path.glob("checkpoint.pt.*.tmp")))
        state = load_checkpoint(path)  # never raises: the file under the name is always whole
        assert state["big"].shape == (4_000_000,) and bool((state["big"] == state["n"]).all())
        remove_stale_temporaries(path)
        assert not list(tmp_path.glob("*.tmp"))
    assert caught_mid_write > 0  # the kills did land while a write was in progress


def small_config(tmp_path, name, **kw):
    base = dict(
        epochs=3, batch_size=64, limit=320, knn_every=0, progress=False, out=str(tmp_path / name), seed=0
    )
    return TrainConfig(**{**base, **kw})


def test_nonfinite_loss_names_the_step_and_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "diverged"
    # no kNN point before the last epoch: the weights of step 1 are finite but so large that the features
    # overflow, which a kNN point would stop on first (test_trainer_errors: stops as diverged)
    p = cli("train", *ARGS, "--lr", "1e20", "--checkpoint-every", "1", "--knn-every", "0", "--out", run)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "Traceback" not in err, err
    assert "the loss became nan at step 2 (epoch 1)" in err
    assert f"The latest checkpoint is {run / 'checkpoint.pt'} (step 1)" in err
    assert f"contrastkit train --resume {run} --skip-nonfinite" in err
    good = load_checkpoint(run / "checkpoint.pt")
    assert good["step"] == 1
    # resuming with --skip-nonfinite skips the steps, but gives up once they come 20 in a row
    p = cli("train", "--resume", run, "--skip-nonfinite", "--no-progress")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "not finite for 20 steps in a row (up to step 21)" in err, err
    last = load_checkpoint(run / "checkpoint.pt")  # written at skipped steps: still the good weights
    assert last["progress"]["skipped_steps"] == last["step"] - 1
    assert all(torch.equal(v, last["model"][k]) for k, v in good["model"].items())


@pytest.mark.parametrize("negatives", ["in-batch", "queue"])
def test_skip_nonfinite_skips_exactly_the_bad_steps(tmp_path, monkeypatch, one_thread, negatives):
    build = trainer_module.build_objective
    bad_steps = [1, 3, 8]  # step 1 too: the queue allocates its keys lazily on its first update
    calls_per_step = 2 if negatives == "queue" else 1  # MoCo's symmetric loss scores two halves a step

    def nan_on_some_calls(*args, **kwargs):
        objective = build(*args, **kwargs)
        calls = []

        class Wrapped(torch.nn.Module):
            def forward(self, *a, **k):
                calls.append(1)
                loss = objective(*a, **k)
                step = (len(calls) - 1) // calls_per_step + 1
                return loss * float("nan") if step in bad_steps else loss

        return Wrapped()

    monkeypatch.setattr(trainer_module, "build_objective", nan_on_some_calls)
    result = train(small_config(tmp_path, "skip", skip_nonfinite=True, negatives=negatives))
    rows = result.history
    assert [r["step"] for r in rows if r["skipped"]] == bad_steps
    assert all(r["loss"] == r["loss"] for r in rows if not r["skipped"])
    assert result.metrics["skipped_steps"] == 3 and result.metrics["steps"] == 15

    # history.jsonl is strict JSON: the skipped steps' NaN losses are null
    def no_constants(c):
        raise AssertionError(f"{c} in history.jsonl")

    lines = (result.run_dir / "history.jsonl").read_text().splitlines()
    written = [json.loads(line, parse_constant=no_constants) for line in lines]
    assert [r["step"] for r in written if r["loss"] is None] == bad_steps
    if negatives == "queue":  # the skipped steps enqueued nothing: 12 steps x 2 x 64 keys
        state = load_checkpoint(result.run_dir / "checkpoint.pt")["negatives"]
        assert int(state["queue.filled"]) == 12 * 2 * 64
    with pytest.raises(TrainingError, match="the loss became nan at step 1"):
        train(small_config(tmp_path, f"stop-{negatives}", negatives=negatives))


def test_tensorboard_scalars_match_the_history(tmp_path, one_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(small_config(tmp_path, "tb", tensorboard=True, knn_every=1))
    events = EventAccumulator(str(result.run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/mi_bound", "train/images_per_second", "knn/top1"} <= tags
    loss = {e.step: e.value for e in events.Scalars("train/loss")}
    assert loss == pytest.approx({r["step"]: r["loss"] for r in result.history}, rel=1e-6)
    knn = [e.value for e in events.Scalars("knn/top1")]
    assert knn == pytest.approx([c["knn_top1"] for c in result.metrics["knn_curve"]], rel=1e-6)


@pytest.mark.parametrize(
    ("signum", "second"), [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, SystemExit)]
)
def test_a_second_signal_stops_at_once(signum, second):
    from contrastkit.training.resume import StopSignals

    before = signal.getsignal(signum)
    with pytest.raises(second) as caught, StopSignals() as stop:
        os.kill(os.getpid(), signum)
        time.sleep(0.05)  # the handler runs between bytecodes
        assert stop.requested == signum  # the first only asks for a stop at the next step
        os.kill(os.getpid(), signum)
        time.sleep(0.05)
    if second is SystemExit:
        assert caught.value.code == 143
    assert signal.getsignal(signum) is before  # the previous handler is back
