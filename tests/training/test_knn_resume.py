"""Each epoch's kNN point is evaluated and recorded exactly once (``knn_curve`` in metrics.json, ``knn/top1``
in TensorBoard) however a run is stopped around an epoch's end and resumed.

The kills are simulated in-process, deterministically: a hook raises :class:`Killed` (a ``BaseException``,
which the trainer does not catch) at the chosen moment. TensorBoard writes its events from a queue, flushed
every two minutes: :func:`kill` flushes every writer first, as for a kill that came long enough after the
last point for it to be on disk; :func:`kill_at_once` does not, so only what the trainer flushed itself is.

320 digits, batch 64: 5 steps an epoch, 3 epochs, kNN after each (steps 5, 10, 15); ``--checkpoint-every 5``
falls on every epoch's last step, where a checkpoint and the epoch's kNN meet.
"""

import json
import os
import signal
import time

import pytest
import torch

pytest.importorskip("tensorboard", reason="the test extra's tensorboard is not installed")
import torch.utils.tensorboard as tb

from contrastkit.training import TrainConfig, train
from contrastkit.training import trainer as trainer_module
from contrastkit.training.checkpoint import load_checkpoint
from contrastkit.training.data import TrainingData
from contrastkit.training.resume import TrainingInterrupted, resume_config

STEPS_PER_EPOCH = 5
KNN_STEPS = [5, 10, 15]
EPOCH_BATCHES = TrainingData.epoch_batches
SAVE = trainer_module.save_checkpoint


class Killed(BaseException):
    """A simulated SIGKILL."""


def config(root, name):
    return TrainConfig(
        epochs=3, batch_size=64, limit=320, knn_every=1, checkpoint_every=STEPS_PER_EPOCH,
        tensorboard=True, progress=False, seed=0, out=str(root / name),
    )  # fmt: skip


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield train(config(tmp_path_factory.mktemp("knn-ref"), "ref"), log_every=1)
    torch.set_num_threads(threads)


@pytest.fixture
def writers(monkeypatch, one_thread):
    """Every SummaryWriter the trainer opens (to flush before a simulated kill, and to close after)."""
    made = []

    class Recording(tb.SummaryWriter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(tb, "SummaryWriter", Recording)
    yield made
    for w in made:
        w.close()


def kill(writers):
    for w in writers:
        w.flush()  # the points written so far are on disk, as they are a while after they were written
    raise Killed


def kill_at_once(writers):
    raise Killed


def in_epoch(monkeypatch, writers, epoch, before_batch, action):
    """``action(writers)`` runs just before the ``epoch``-th epoch (1-based, counting the epochs this session
    starts) yields its batch ``before_batch`` (0-based, from the batch the epoch starts at)."""
    calls = []

    def hooked(self, *args, **kwargs):
        calls.append(1)
        for n, item in enumerate(EPOCH_BATCHES(self, *args, **kwargs)):
            if len(calls) == epoch and n == before_batch:
                action(writers)
            yield item

    monkeypatch.setattr(TrainingData, "epoch_batches", hooked)


def resume(run):
    # TensorBoard reads a folder's event files in the order of their names, which begin with the second
    # they were opened in and end with a per-process counter (9 sorts after 10): one session a second
    time.sleep(1.01 - time.time() % 1)
    cfg, _ = resume_config(run)
    return train(cfg, resume=run, log_every=1)


def board_points(run, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def knn_epochs(run):
    return [c["epoch"] for c in load_checkpoint(run / "checkpoint.pt")["progress"]["knn_curve"]]


def assert_recorded_once(result, reference):
    """One kNN point an epoch in metrics.json and in TensorBoard, every step once, the reference's run."""
    run = result.run_dir
    curve = json.loads((run / "metrics.json").read_text())["knn_curve"]
    assert [(c["epoch"], c["step"]) for c in curve] == [(1, 5), (2, 10), (3, 15)]
    assert [c["knn_top1"] for c in curve] == [c["knn_top1"] for c in reference.metrics["knn_curve"]]
    knn = board_points(run, "knn/top1")
    assert [s for s, _ in knn] == KNN_STEPS, knn
    assert [v for _, v in knn] == pytest.approx([c["knn_top1"] for c in curve], rel=1e-6)
    assert [s for s, _ in board_points(run, "train/loss")] == list(range(1, 16))
    assert [r["loss"] for r in result.history] == [r["loss"] for r in reference.history]
    final, ref = (load_checkpoint(r.run_dir / "checkpoint.pt") for r in (result, reference))
    for key, value in ref["model"].items():
        assert torch.equal(final["model"][key], value), key


def test_killed_mid_epoch_after_a_checkpoint_on_the_previous_epochs_last_step(
    tmp_path, monkeypatch, writers, reference
):
    """The checkpoint due at step 10 (epoch 2's last) is written after epoch 2's kNN and records it: the
    resume does not evaluate epoch 2 again (that put a second knn/top1 point at step 10)."""
    in_epoch(monkeypatch, writers, epoch=3, before_batch=1, action=kill)  # after step 11
    with pytest.raises(Killed):
        train(config(tmp_path, "run"), log_every=1)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == 10
    assert (state["progress"]["epoch"], state["progress"]["next_batch"]) == (2, 0)  # epoch 2 has ended
    assert knn_epochs(tmp_path / "run") == [1, 2]
    monkeypatch.setattr(TrainingData, "epoch_batches", EPOCH_BATCHES)
    assert_recorded_once(resume(tmp_path / "run"), reference)


def test_killed_between_an_epochs_knn_and_its_checkpoint(tmp_path, monkeypatch, writers, reference):
    """Killed right after epoch 2's kNN point reached the disk: the resume goes back to step 5, evaluates
    epoch 2 again, and that point replaces the first (TensorBoard drops the points after step 5)."""
    recording = tb.SummaryWriter

    class KillOnKnn(recording):
        def add_scalar(self, tag, value, step, *args, **kwargs):
            super().add_scalar(tag, value, step, *args, **kwargs)
            if tag == "knn/top1" and step == 10:
                kill(writers)

    monkeypatch.setattr(tb, "SummaryWriter", KillOnKnn)
    with pytest.raises(Killed):
        train(config(tmp_path, "run"), log_every=1)
    monkeypatch.setattr(tb, "SummaryWriter", recording)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 5
    assert_recorded_once(resume(tmp_path / "run"), reference)


def test_killed_right_after_the_checkpoint_on_an_epochs_last_step(tmp_path, monkeypatch, writers, reference):
    """Killed at once after the checkpoint at step 10: it holds epoch 2's kNN, and every TensorBoard point up
    to step 10 was on disk before it was written (the resume writes only the later ones)."""

    def save_then_die(state, path):
        SAVE(state, path)
        if state["step"] == 10:
            kill_at_once(writers)

    monkeypatch.setattr(trainer_module, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train(config(tmp_path, "run"), log_every=1)
    monkeypatch.setattr(trainer_module, "save_checkpoint", SAVE)
    assert knn_epochs(tmp_path / "run") == [1, 2]
    assert_recorded_once(resume(tmp_path / "run"), reference)


def test_stopped_on_an_epochs_last_step_then_killed_after_the_resume(
    tmp_path, monkeypatch, writers, reference
):
    """A stop signal on epoch 2's last step checkpoints at once, before epoch 2's kNN; the resume evaluates
    it and checkpoints again at once, so a second resume (after a kill in epoch 3) does not evaluate it
    a second time."""

    def request_stop(_):
        os.kill(os.getpid(), signal.SIGINT)  # a first signal asks for a stop after the step

    in_epoch(monkeypatch, writers, epoch=2, before_batch=STEPS_PER_EPOCH - 1, action=request_stop)
    with pytest.raises(TrainingInterrupted):
        train(config(tmp_path, "run"), log_every=1)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == 10 and state["progress"]["next_batch"] == STEPS_PER_EPOCH  # its kNN still due
    assert knn_epochs(tmp_path / "run") == [1]
    # the resume: epoch 2's (empty) rest and its kNN, then epoch 3, killed after its first step
    in_epoch(monkeypatch, writers, epoch=2, before_batch=1, action=kill)
    with pytest.raises(Killed):
        resume(tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == 10 and knn_epochs(tmp_path / "run") == [1, 2]
    monkeypatch.setattr(TrainingData, "epoch_batches", EPOCH_BATCHES)
    result = resume(tmp_path / "run")
    assert_recorded_once(result, reference)
    assert result.metrics["resumed_at_steps"] == [10, 10]
