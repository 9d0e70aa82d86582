"""`contrastkit train` refuses bad input before any work, and never keeps a non-finite state.

The run folder (any command's run in it, a file, an uncreatable path); in-batch negatives without other images
in the batch; more mined negatives than the data has; a resume on changed data; and a run whose BatchNorm
statistics overflowed to inf while its loss stayed finite (checkpoint, final model and --skip-nonfinite)."""

import io
import json
import os
import subprocess
import sys

import pytest
import torch

from contrastkit.errors import ConfigError, TrainingError
from contrastkit.training import TrainConfig, train
from contrastkit.training.checkpoint import load_checkpoint
from contrastkit.training.learner import ContrastiveLearner
from contrastkit.training.resume import resume_config
from contrastkit.training.trainer import format_summary

from ..conftest import edit_checkpoint
from .conftest import digit_folder

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def config(tmp_path, name="run", **kw):
    base = dict(epochs=1, batch_size=32, limit=200, knn_every=0, progress=False, seed=0)
    return TrainConfig(**{**base, "out": str(tmp_path / name), **kw})


def cli(*args, cwd=None):
    cmd = [sys.executable, "-m", "contrastkit", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300)


def finite(tensors):
    return all(
        bool(torch.isfinite(v).all())
        for v in tensors.values()
        if torch.is_tensor(v) and v.is_floating_point()
    )


# ----- the run folder ----------------------------------------------------------------------------------------


def test_a_folder_holding_another_commands_run_is_refused_and_kept(tmp_path, one_thread):
    run = tmp_path / "text-run"  # what text-train leaves: no checkpoint.pt of the image trainer
    run.mkdir()
    files = {
        "metrics.json": '{"knn_top1": 0.5}',
        "config.yaml": "objective: infonce\n",
        "history.jsonl": "{}\n",
    }
    for name, text in files.items():
        (run / name).write_text(text)
    with pytest.raises(
        ConfigError, match=r"already holds a run \(metrics.json, config.yaml, history.jsonl\)"
    ):
        train(config(tmp_path, "text-run"))
    assert {p.name: p.read_text() for p in run.iterdir()} == files  # nothing overwritten or deleted


def test_an_unfinished_run_is_still_pointed_to_resume(tmp_path, one_thread):
    done = train(config(tmp_path, "r")).run_dir
    state = load_checkpoint(done / "checkpoint.pt")
    torch.save({**state, "finished": False}, done / "checkpoint.pt")
    with pytest.raises(ConfigError, match=rf"continue it with contrastkit train --resume {done}"):
        train(config(tmp_path, "r"))


def test_an_out_that_is_a_file_or_cannot_be_created_is_refused_without_a_traceback(tmp_path):
    (tmp_path / "afile").write_text("keep me")
    p = cli("train", "--epochs", "1", "--limit", "200", "--batch-size", "32", "--out", tmp_path / "afile")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "is a file, not a folder; choose another --out" in p.stderr
    assert (tmp_path / "afile").read_text() == "keep me"
    with pytest.raises(ConfigError, match="cannot create the run folder"):
        train(config(tmp_path, "afile/run"))  # a parent that is a file
    with pytest.raises(ConfigError, match="cannot create the run folder '/proc/contrastkit-qa'"):
        train(config(tmp_path).replace(out="/proc/contrastkit-qa"))


# ----- impossible sizes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("negatives", ["in-batch", "in-batch+mined"])
def test_in_batch_negatives_need_two_images_a_batch(tmp_path, negatives):
    with pytest.raises(ConfigError, match=r"a batch of 1 has none .*use --batch-size 2 or more"):
        train(config(tmp_path, batch_size=1, negatives=negatives, mined_negatives=4))
    assert not (tmp_path / "run").exists()  # refused before the folder was made


def test_more_mined_negatives_than_training_items_are_refused(tmp_path, one_thread):
    with pytest.raises(
        ConfigError, match=r"--mined-negatives 500 .* its 200 images .* at most 199 .* 199 or less"
    ):
        train(config(tmp_path, negatives="mined", mined_negatives=500))
    assert not (tmp_path / "run").exists()  # the folder this run made is removed again: it was empty
    result = train(
        config(tmp_path, "ok", negatives="in-batch+mined", mined_negatives=199, mined_index="torch")
    )
    assert result.metrics["steps"] == 6


# ----- a resume on changed data ---------------------------------------------------------------------------------


def unfinished(run_dir, drop_fingerprint=False):
    """The run's checkpoint made resumable again (its loop is done: a resume finishes it at once)."""
    state = load_checkpoint(run_dir / "checkpoint.pt")
    state["finished"] = False
    if drop_fingerprint:  # a checkpoint of a contrastkit that kept none
        state.pop("data_fingerprint", None)
    torch.save(state, run_dir / "checkpoint.pt")


def test_a_resume_on_changed_data_is_refused_naming_old_and_new(tmp_path, folder, one_thread):
    run = train(config(tmp_path, data=str(folder), limit=None, batch_size=16)).run_dir
    fingerprint = load_checkpoint(run / "checkpoint.pt")["data_fingerprint"]
    assert fingerprint["train_items"] == 48 and fingerprint["image_shape"] == [1, 8, 8]
    first = sorted(folder.rglob("*.png"))[0]
    first.rename(first.with_name("renamed.png"))  # as many images, other names
    unfinished(run)
    with pytest.raises(ConfigError, match=r"changed since the run started .*file names differ"):
        train(resume_config(run)[0], resume=run)
    sorted(folder.rglob("*.png"))[-1].unlink()  # one image fewer: 47 training images after the hold-out
    with pytest.raises(ConfigError, match="training images: run had 48, now 47"):
        train(resume_config(run)[0], resume=run)
    kept = load_checkpoint(run / "checkpoint.pt")
    assert not kept["finished"]  # the refused resumes wrote nothing


def test_a_checkpoint_without_a_fingerprint_still_resumes(tmp_path, one_thread):
    run = train(config(tmp_path)).run_dir
    unfinished(run, drop_fingerprint=True)
    result = train(resume_config(run)[0], resume=run)
    assert load_checkpoint(run / "checkpoint.pt")["finished"]
    assert result.metrics["resumed_at_steps"] == [6]


# ----- non-finite states -----------------------------------------------------------------------------------------

# lr 1e6 on 200 digits, batch 32 (6 steps an epoch): the weights blow up, the loss stays finite (BatchNorm
# normalises the huge activations with the batch's statistics) and the running variances overflow to inf
DIVERGING = dict(lr=1e6)


def test_nonfinite_batchnorm_statistics_are_never_checkpointed(tmp_path, one_thread):
    with pytest.raises(TrainingError) as caught:
        train(config(tmp_path, "a", epochs=3, **DIVERGING))
    message = str(caught.value)
    assert "the model's state became non-finite by step" in message and "running_var" in message, message
    assert "No checkpoint was written for this run yet" in message and "a lower --lr" in message
    assert not (tmp_path / "a" / "checkpoint.pt").exists()
    # with an earlier, finite checkpoint: it is kept and named, with the resume command
    with pytest.raises(TrainingError) as caught:
        train(config(tmp_path, "b", epochs=3, checkpoint_every=2, **DIVERGING))
    message = str(caught.value)
    kept = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert f"The latest checkpoint is {tmp_path / 'b' / 'checkpoint.pt'} (step {kept['step']})" in message
    assert f"contrastkit train --resume {tmp_path / 'b'} --skip-nonfinite" in message
    assert finite(kept["model"]) and not kept["finished"]


def test_a_nonfinite_final_state_writes_no_final_model_or_metrics(tmp_path, one_thread):
    with pytest.raises(
        TrainingError, match=r"non-finite by step 6 of 6 .*final model and metrics.json were not"
    ):
        train(config(tmp_path, **DIVERGING))
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_skip_nonfinite_skips_steps_that_leave_nonfinite_buffers_and_warns(tmp_path, one_thread):
    result = train(config(tmp_path, epochs=3, skip_nonfinite=True, **DIVERGING))
    state = load_checkpoint(result.run_dir / "checkpoint.pt")
    assert state["finished"] and finite(state["model"])  # the old code kept inf running variances here
    skipped = [r["step"] for r in result.history if r["skipped"]]
    assert len(skipped) == result.metrics["skipped_steps"] > 0.25 * 18
    (warning,) = result.metrics["warnings"]
    assert f"skipped {len(skipped)} of 18 steps" in warning
    assert f"WARNING: {warning}" in format_summary(result.metrics)
    text = (result.run_dir / "metrics.json").read_text()  # strict JSON: the last loss (NaN) is null
    on_disk = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in metrics.json"))
    assert on_disk["warnings"] == [warning]


def test_a_run_whose_features_overflow_stops_as_diverged(tmp_path, one_thread, monkeypatch):
    from ..conftest import at_step, blow_up_weights

    at_step(monkeypatch, 6, blow_up_weights, torch.optim.SGD)  # the last of 6 steps
    with pytest.raises(TrainingError) as caught:
        train(config(tmp_path, score="dot"))
    message = str(caught.value)
    assert "the run diverged: after epoch 1 (step 6 of 6)" in message, message
    assert "features of the kNN images are NaN or infinite although its weights are finite" in message
    assert "metrics.json was not written" in message and "It holds this diverged model" in message
    assert "a lower --lr or a higher --temperature (or --score cosine" in message
    assert "--precision fp32" not in message  # the run was in fp32 already
    run = tmp_path / "run"
    assert not (run / "metrics.json").exists()
    state = load_checkpoint(run / "checkpoint.pt")
    assert finite(state["model"]) and not state["finished"] and state["step"] == 6
    monkeypatch.undo()  # a resume only evaluates the diverged model: it stops the same way
    with pytest.raises(TrainingError, match="the run diverged: after epoch 1"):
        train(resume_config(run)[0], resume=run)


def _nan_weights(optimizer: torch.optim.Optimizer) -> None:
    with torch.no_grad():
        optimizer.param_groups[0]["params"][0].fill_(float("nan"))


def test_a_nonfinite_state_at_a_knn_point_is_named_as_such(tmp_path, one_thread, monkeypatch):
    """A kNN point between checkpoints (--knn-every 1) on a model whose weights are NaN: the error is the
    non-finite state's (with its resume advice), not the finite-weights divergence's."""
    from ..conftest import at_step

    at_step(monkeypatch, 6, _nan_weights, torch.optim.SGD)  # the last step of epoch 1 of 3
    with pytest.raises(TrainingError) as caught:
        train(config(tmp_path, epochs=3, knn_every=1))
    message = str(caught.value)
    assert "the model's state became non-finite by step" in message, message
    assert "although its weights are finite" not in message


def test_the_advice_after_a_divergence_names_fp32_only_to_a_reduced_precision_run():
    from contrastkit.training.step import nonfinite_advice

    assert nonfinite_advice(None) == "a lower --lr or a higher --temperature"
    assert nonfinite_advice(torch.bfloat16) == "a lower --lr, a higher --temperature or --precision fp32"


class _Blowup(torch.nn.Module):
    """A model whose BatchNorm running variance overflows on its second forward pass; its output is fine."""

    def __init__(self):
        super().__init__()
        self.bn = torch.nn.BatchNorm1d(4)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        out = self.bn(x)
        if self.calls == 2:
            self.bn.running_var.fill_(float("inf"))
        return out


def test_the_learner_refuses_a_step_that_leaves_nonfinite_buffers():
    from contrastkit.negatives import build_negatives
    from contrastkit.objectives import build_objective
    from contrastkit.scores import build_score
    from contrastkit.training.step import all_finite

    queue = build_negatives("queue", queue_size=32, queue_dim=4)
    learner = ContrastiveLearner(_Blowup(), queue, build_score("cosine"), build_objective("infonce"))
    learner.finite_check = all_finite
    x = torch.randn(8, 4)
    assert bool(torch.isfinite(learner(x, x + 0.1).loss))
    filled = int(queue.queue.filled)
    out = learner(x, x + 0.1)  # a finite loss, but inf running variance: refused
    assert torch.isnan(out.loss) and int(queue.queue.filled) == filled  # the queue was not updated
    learner.finite_check = None  # without --skip-nonfinite the learner does not look
    learner.model.calls = 1
    assert bool(torch.isfinite(learner(x, x + 0.1).loss))


def test_nonfinite_state_names_buffers_queue_and_optimizer_state():
    from contrastkit.training.trainer import nonfinite_state

    state = {
        "model": {
            "bn.running_var": torch.tensor([1.0, float("inf")]),
            "bn.num_batches_tracked": torch.tensor(3),
        },
        "negatives": {"queue.keys": torch.tensor([[float("nan")]]), "_extra_state": {"emb": torch.ones(2)}},
        "key_encoder": None,
        "optimizer": {"state": {0: {"momentum_buffer": torch.ones(3)}}, "param_groups": [{"lr": 0.1}]},
        "progress": {"order": torch.arange(3)},
    }
    assert nonfinite_state(state, torch.device("cpu")) == ["model.bn.running_var", "negatives.queue.keys"]
    state["optimizer"]["state"][0]["momentum_buffer"][1] = float("-inf")
    assert nonfinite_state(state, torch.device("cpu"))[-1] == "optimizer.state.0.momentum_buffer"


# ----- one class -----------------------------------------------------------------------------------------------


def test_one_class_data_trains_with_a_warning_that_knn_means_nothing(tmp_path, one_thread, capsys):
    one = digit_folder(tmp_path / "one", limit=80, class_name="seven")
    result = train(config(tmp_path, data=str(one), limit=None, batch_size=16))
    warnings = result.metrics["warnings"]
    assert len(warnings) == 1 and "1 class (seven)" in warnings[0] and "mean nothing" in warnings[0]
    assert json.loads((result.run_dir / "metrics.json").read_text())["warnings"] == warnings
    assert "WARNING: the data has 1 class" in capsys.readouterr().out


def test_several_classes_give_no_class_warning(tmp_path, one_thread):
    assert "warnings" not in train(config(tmp_path)).metrics


def test_eval_classes_without_training_images_are_warned_of(tmp_path, one_thread):
    """--limit 10 on 10 classes without a test/ split: the 2 held-out images are of classes the 8 kept for
    training lack; train and eval say the accuracies are capped, and how to fix it."""
    from contrastkit.training import evaluate_checkpoint

    data = digit_folder(tmp_path / "imgs")
    result = train(config(tmp_path, data=str(data), limit=10, batch_size=4))
    (warning,) = result.metrics["warnings"]
    assert "2 class(es) of the eval images have no training image" in warning
    assert "their 2 of 2 eval images can never be classified correctly" in warning
    assert "at most 0.0000" in warning and "start a new run with a larger --limit than 10" in warning
    assert "the eval images are 20% held out of the --limit images" in warning
    printed = io.StringIO()
    evaluate_checkpoint(result.run_dir, device="cpu", out=printed)
    assert "WARNING: 2 class(es) of the eval images have no training image" in printed.getvalue()
    assert "train again with a larger --limit than 10" in printed.getvalue()  # eval keeps the run's limit


def _ran_on(run, world: int, **config_changes) -> None:
    """Make the run's checkpoint look like one of a ``world``-process launch (with ``config_changes``)."""
    config = {**load_checkpoint(run / "checkpoint.pt")["config"], **config_changes}
    edit_checkpoint(run, finished=False, config=config, progress={"world_size": world})


def test_a_resume_on_another_process_count_names_the_count_first(tmp_path, one_thread):
    """A checkpoint of a 2-process launch resumed on one process: the refusal names the 2 processes and
    the torchrun command, not the option checks of this launch (--negatives gather needs torchrun; a batch
    not divisible by the processes), whose advice a resume could not follow."""
    train(config(tmp_path, "run"))
    run = tmp_path / "run"
    _ran_on(run, 2, negatives="gather")
    with pytest.raises(ConfigError) as caught:
        train(resume_config(run)[0], resume=run)
    message = str(caught.value)
    assert "on 1 process(es): it ran on 2" in message and "torchrun" in message, message
    assert "torch.distributed is not initialised" not in message
