"""`torchrun --nproc-per-node 2 -m contrastkit train` on CPU (gloo), for real: it trains, writes one run
folder, two processes with gathered negatives take the same steps as one process over the union of their
shards, and a stopped two-process run resumes exactly."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from contrastkit.training import TrainConfig
from contrastkit.training.checkpoint import load_checkpoint
from contrastkit.training.trainer import build_model

# 256 digits, global batch 64 (2 x 32): 4 steps. No BatchNorm (each process would normalise its own shard, one
# process the whole batch) and no augmentation (each process draws its own views), so both runs see the same
# pixels and the same statistics; what is left to differ is the data-parallel path itself.
ARGS = (
    "--epochs", "1", "--limit", "256", "--batch-size", "64", "--encoder", "mlp", "--no-batchnorm",
    "--crop-min-scale", "1", "--flip-p", "0", "--jitter-p", "0", "--grayscale-p", "0",
    "--knn-every", "0", "--no-progress",
)  # fmt: skip
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")
CONTRASTKIT = ("-m", "contrastkit", "train")
RUN_FILES = {"checkpoint.pt", "config.yaml", "history.jsonl", "metrics.json"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every run at once, each in its own working folder (nothing may appear outside --out)."""
    root = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    commands = {
        "gather": (*TORCHRUN, *CONTRASTKIT, *ARGS, "--negatives", "gather"),
        "local": (*TORCHRUN, *CONTRASTKIT, *ARGS, "--negatives", "in-batch"),
        "one": (sys.executable, *CONTRASTKIT, *ARGS, "--negatives", "in-batch"),
        "odd": (*TORCHRUN, *CONTRASTKIT, *ARGS, "--negatives", "gather", "--batch-size", "63"),
    }
    procs = {}
    for name, cmd in commands.items():
        (root / name).mkdir()
        procs[name] = subprocess.Popen(
            [*cmd, "--out", "run"],
            cwd=root / name,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
    results = {}
    for name, p in procs.items():
        out, err = p.communicate(timeout=240)
        results[name] = (p.returncode, out, err, root / name)
    return results


def history(run):
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def test_two_processes_train_and_write_one_run_folder(runs):
    rc, out, err, cwd = runs["gather"]
    assert rc == 0, err
    assert sorted(p.name for p in cwd.iterdir()) == ["run"]
    assert {p.name for p in (cwd / "run").iterdir()} == RUN_FILES
    assert out.count("contrastkit train: data=") == 1 and out.count("kNN top-1 (k=") == 1  # rank 0 only
    assert "batch 64 = 2 processes x 32 (gloo)" in out
    metrics = json.loads((cwd / "run" / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == 4 and 0 <= metrics["knn_top1"] <= 1
    rows = history(cwd / "run")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # each step once: rank 1 writes nothing
    assert all(r["loss"] == r["loss"] for r in rows)
    state = load_checkpoint(cwd / "run" / "checkpoint.pt")
    assert state["finished"] and state["progress"]["world_size"] == 2
    assert len(state["progress"]["view_rng"]) == 2  # one generator state per rank
    assert not torch.equal(state["progress"]["view_rng"][0], state["progress"]["view_rng"][1])


def test_gathered_negatives_step_exactly_like_one_process_over_the_union(runs):
    for name in ("gather", "one"):
        assert runs[name][0] == 0, runs[name][2]
    ddp, one = runs["gather"][3] / "run", runs["one"][3] / "run"
    ddp_loss = [r["loss"] for r in history(ddp)]
    one_loss = [r["loss"] for r in history(one)]
    assert ddp_loss == pytest.approx(one_loss, rel=1e-5, abs=1e-6)
    config = TrainConfig(**{k: v for k, v in load_checkpoint(one / "checkpoint.pt")["config"].items()})
    torch.manual_seed(config.seed)
    initial = build_model(config, 1, 8).state_dict()  # the trainer's initialisation
    final_ddp = load_checkpoint(ddp / "checkpoint.pt")["model"]
    final_one = load_checkpoint(one / "checkpoint.pt")["model"]
    for key, start in initial.items():
        update_one = final_one[key] - start
        assert update_one.abs().max() > 0, key  # the parameter moved
        torch.testing.assert_close(final_ddp[key] - start, update_one, rtol=1e-4, atol=1e-6)


def test_in_batch_negatives_stay_per_process(runs):
    """Without --negatives gather each process contrasts its own 32 images: another loss (so the shards are
    really split, and the equality above is the gather's doing)."""
    rc, out, err, cwd = runs["local"]
    assert rc == 0, err
    assert "in-batch negatives per process" in out
    local, one = history(cwd / "run")[0]["loss"], history(runs["one"][3] / "run")[0]["loss"]
    assert local < one - 0.3  # log of 62 negatives instead of 126, roughly


def test_a_batch_that_does_not_split_evenly_is_refused(runs):
    rc, _, err, cwd = runs["odd"]
    assert rc != 0
    assert "--batch-size 63 is the global batch, split evenly over the 2 processes" in err
    assert "use a multiple of 2 (e.g. --batch-size 62)" in err
    assert not (cwd / "run" / "checkpoint.pt").exists()


def test_stopped_two_process_run_resumes_exactly(tmp_path):
    """SIGINT to torchrun (which passes SIGTERM on to its workers): both ranks agree on a logging step, rank 0
    checkpoints every rank's random state, and `torchrun ... train --resume` ends like the uninterrupted run
    (queue, momentum encoder, BatchNorm and augmentation on)."""
    args = (
        "--epochs", "20", "--limit", "320", "--batch-size", "64", "--encoder", "mlp", "--knn-every", "10",
        "--checkpoint-every", "7", "--no-progress", "--negatives", "queue", "--queue-size", "128",
    )  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def torchrun(*extra):
        cmd = [*TORCHRUN, *CONTRASTKIT, *extra]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    ref = torchrun(*args, "--out", str(tmp_path / "ref"))
    run = tmp_path / "stopped"
    stopped = torchrun(*args, "--out", str(run))
    deadline = time.monotonic() + 120
    while not (run / "checkpoint.pt").exists():
        assert stopped.poll() is None, stopped.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    stopped.send_signal(signal.SIGINT)
    stopped.communicate(timeout=120)
    state = load_checkpoint(run / "checkpoint.pt")
    assert not state["finished"] and state["step"] % 10 == 0 and state["step"] < 100, state["step"]
    resumed = torchrun("--resume", str(run), "--no-progress")
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert f"resumed at step {state['step']} of 100" in out
    ref_err = ref.communicate(timeout=120)[1]
    assert ref.returncode == 0, ref_err

    def rows(path):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in history(path)]

    assert rows(run) == rows(tmp_path / "ref") and len(rows(run)) == 100
    final, reference = (load_checkpoint(p / "checkpoint.pt") for p in (run, tmp_path / "ref"))
    for key, value in reference["model"].items():
        assert torch.equal(final["model"][key], value), key
    assert final["metrics"]["knn_top1"] == reference["metrics"]["knn_top1"]
