"""A run is never lost after its last step (a kill or stop signal during the final evaluation), a collapsed run
ends with a warning, a run resumes from another working directory, and a resume says when config.yaml was
edited by hand (and a config.yaml that cannot be written is a clear error)."""

import math
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml

import contrastkit.training.trainer as trainer_module
from contrastkit.errors import ConfigError, DataError
from contrastkit.training import TrainConfig, train
from contrastkit.training.checkpoint import load_checkpoint
from contrastkit.training.resume import resume_config


def config(tmp_path, name="run", **kw):
    base = dict(epochs=1, batch_size=32, limit=200, knn_every=0, progress=False, seed=0)
    return TrainConfig(**{**base, "out": str(tmp_path / name), **kw})


def resume(run, **overrides):
    cfg, _ = resume_config(run, overrides)
    return train(cfg, resume=run)


def unfinished(run_dir, **config_changes):
    """The run's checkpoint made resumable again (its loop is done: a resume finishes it at once)."""
    state = load_checkpoint(run_dir / "checkpoint.pt")
    state["finished"] = False
    state["config"] = {**state["config"], **config_changes}
    torch.save(state, run_dir / "checkpoint.pt")
    return state


class Killed(BaseException):
    """A simulated SIGKILL."""


# ----- a kill or a stop signal after the last step ------------------------------------------------------------


def test_a_kill_during_the_final_evaluation_leaves_a_run_that_a_resume_finishes(
    tmp_path, monkeypatch, one_thread
):
    knn = trainer_module._Loop._knn

    def killed(self, epoch):
        raise Killed

    monkeypatch.setattr(trainer_module._Loop, "_knn", killed)
    with pytest.raises(Killed):
        train(config(tmp_path))
    run = tmp_path / "run"
    state = load_checkpoint(run / "checkpoint.pt")  # the last step's, written before the final evaluation
    assert not state["finished"] and state["step"] == 6 and state["progress"]["knn_curve"] == []
    assert not (run / "metrics.json").exists()
    monkeypatch.setattr(trainer_module._Loop, "_knn", knn)
    result = resume(run)  # only the final evaluation and the metrics are left
    assert result.metrics["steps"] == 6 and result.metrics["resumed_at_steps"] == [6]
    assert [p["step"] for p in result.metrics["knn_curve"]] == [6]
    assert load_checkpoint(run / "checkpoint.pt")["finished"] and (run / "metrics.json").is_file()
    reference = train(config(tmp_path, "ref")).metrics
    assert result.metrics["knn_top1"] == reference["knn_top1"]


class Terminated(Exception):
    """What the default SIGTERM handler would do (end the process), outside StopSignals."""


@pytest.fixture
def sigterm_raises():
    def handler(signum, frame):
        raise Terminated

    old = signal.signal(signal.SIGTERM, handler)
    yield
    signal.signal(signal.SIGTERM, old)


def test_a_stop_signal_during_the_final_metrics_lets_the_run_finish(
    tmp_path, monkeypatch, one_thread, sigterm_raises, capsys
):
    final_metrics = trainer_module._final_metrics

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return final_metrics(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "_final_metrics", signalled)
    result = train(config(tmp_path))
    assert load_checkpoint(result.run_dir / "checkpoint.pt")["finished"]
    assert (result.run_dir / "metrics.json").is_file()
    assert "SIGTERM received after the last step: the run was finished first" in capsys.readouterr().out


def test_a_second_signal_during_the_final_write_leaves_a_resumable_run(
    tmp_path, monkeypatch, one_thread, sigterm_raises
):
    final_metrics = trainer_module._final_metrics

    def signalled_twice(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # asks for a stop
        os.kill(os.getpid(), signal.SIGTERM)  # stops at once (exit status 143)
        return final_metrics(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "_final_metrics", signalled_twice)
    with pytest.raises(SystemExit) as exc:
        train(config(tmp_path))
    assert exc.value.code == 143
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert not state["finished"] and state["step"] == 6
    monkeypatch.setattr(trainer_module, "_final_metrics", final_metrics)
    result = resume(tmp_path / "run")
    assert result.metrics["steps"] == 6 and load_checkpoint(result.run_dir / "checkpoint.pt")["finished"]


# ----- a collapsed representation -----------------------------------------------------------------------------


def test_a_collapsed_run_ends_with_a_warning(tmp_path, one_thread, capsys):
    result = train(config(tmp_path, lr=1e3))
    warnings = result.metrics["warnings"]
    assert len(warnings) == 1 and "likely collapsed" in warnings[0] and "a lower --lr" in warnings[0]
    assert "WARNING: the learned encoder's kNN top-1" in capsys.readouterr().out


def test_a_healthy_run_gives_no_collapse_warning(tmp_path, one_thread):
    assert "warnings" not in train(config(tmp_path)).metrics


def test_the_collapse_warning_compares_with_chance_and_the_untrained_encoder():
    warn = trainer_module._collapse_warning
    cfg = TrainConfig()
    assert "near chance level (at most 1.5 x 1/10 classes = 0.150" in warn(0.15, 0.14, 10, cfg)
    # near chance, but clearly above the untrained encoder: a short run that learns, not a collapse (it
    # warned "at or below chance" for 0.4667 against chance 0.333)
    assert warn(0.4667, 0.40, 3, cfg) is None
    assert "near chance" in warn(0.4667, 0.44, 3, cfg)
    assert warn(0.16, 0.14, 10, cfg) is None
    assert "well below the same encoder's at random initialisation" in warn(0.6, 0.81, 10, cfg)
    assert warn(0.75, 0.81, 10, cfg) is None  # less than 0.1 below
    assert warn(0.1, 0.1, 1, cfg) is None and warn(float("nan"), 0.8, 10, cfg) is None


# ----- a resume from another working directory ----------------------------------------------------------------


def test_a_new_run_keeps_its_data_path_absolute_and_resumes_from_anywhere(
    tmp_path, folder, monkeypatch, one_thread
):
    monkeypatch.chdir(tmp_path)
    run = train(config(tmp_path, data="imgs", limit=None, batch_size=16)).run_dir
    assert load_checkpoint(run / "checkpoint.pt")["config"]["data"] == str(folder)
    assert yaml.safe_load((run / "config.yaml").read_text())["data"] == str(folder)
    assert train(config(tmp_path, "d")).metrics  # a data set name stays a name
    assert load_checkpoint(tmp_path / "d" / "checkpoint.pt")["config"]["data"] == "digits"
    unfinished(run)
    monkeypatch.chdir("/")
    assert resume(run).metrics["steps"] == 3
    unfinished(run)
    monkeypatch.chdir(tmp_path / "imgs")
    assert resume(run, data=".").metrics["steps"] == 3  # the same folder, spelt another way: no change


def test_an_old_run_with_a_relative_data_path_resumes_with_its_absolute_path(
    tmp_path, folder, monkeypatch, one_thread
):
    run = train(config(tmp_path, data=str(folder), limit=None, batch_size=16)).run_dir
    state = unfinished(run, data="imgs")  # what a run started in tmp_path kept
    monkeypatch.chdir("/")
    with pytest.raises(ConfigError, match=r"--data 'imgs', a path relative .* --data /absolute/path/to/imgs"):
        resume_config(run)
    cfg, _ = resume_config(run, {"data": str(folder)})  # the same name
    assert cfg.data == str(folder)
    assert resume(run, data=str(folder)).metrics["steps"] == 3
    # another name: accepted when the checkpoint's fingerprint can tell it is the same data
    (tmp_path / "copy").symlink_to(folder)
    unfinished(run, data="imgs")
    assert resume(run, data=str(tmp_path / "copy")).metrics["steps"] == 3
    state.pop("data_fingerprint")
    torch.save(state, run / "checkpoint.pt")
    with pytest.raises(ConfigError, match=r"changed configuration \(--data: run has 'imgs'"):
        resume_config(run, {"data": str(tmp_path / "copy")})


# ----- config.yaml on resume ----------------------------------------------------------------------------------


def test_a_resume_warns_that_an_edited_config_yaml_is_not_used(tmp_path, one_thread, capsys):
    run = train(config(tmp_path)).run_dir
    unfinished(run)
    edited = {**yaml.safe_load((run / "config.yaml").read_text()), "lr": 0.5, "seed": 3}
    (run / "config.yaml").write_text(yaml.safe_dump(edited, sort_keys=False))
    lr = load_checkpoint(run / "checkpoint.pt")["config"]["lr"]
    capsys.readouterr()
    resume(run)
    out = capsys.readouterr().out
    assert "WARNING:" in out and "config.yaml differs from the checkpoint's configuration in lr, seed" in out
    assert yaml.safe_load((run / "config.yaml").read_text())["lr"] == lr != 0.5  # the checkpoint's


def test_an_unedited_config_yaml_gives_no_warning(tmp_path, one_thread, capsys):
    run = train(config(tmp_path)).run_dir
    unfinished(run)
    capsys.readouterr()
    resume(run)
    assert "differs from the checkpoint" not in capsys.readouterr().out


def test_a_config_yaml_that_is_a_folder_is_a_clear_error(tmp_path, one_thread):
    run = train(config(tmp_path)).run_dir
    unfinished(run)
    (run / "config.yaml").unlink()
    (run / "config.yaml").mkdir()
    with pytest.raises(ConfigError, match=rf"cannot write the run's configuration '{run / 'config.yaml'}'"):
        resume(run)
    assert not load_checkpoint(run / "checkpoint.pt")["finished"]  # nothing lost


def test_tiny_folder_without_test_split_holds_out_a_plain_split(tmp_path: Path) -> None:
    """20 images of 10 classes: the stratified 20% hold-out cannot hold one of each class (was scikit-learn's
    ValueError); a plain seeded split is used and training runs."""
    from contrastkit.training.trainer import load_splits

    from .conftest import digit_folder

    root = digit_folder(tmp_path / "imgs", limit=20)
    config = TrainConfig(data=str(root), epochs=1, batch_size=8, device="cpu")
    splits, note = load_splits(config)
    assert len(splits.train) == 16 and len(splits.test) == 4 and "held out 20%" in note
    one = digit_folder(tmp_path / "one", limit=1)
    with pytest.raises(DataError, match="no test split and 1 labelled item"):
        load_splits(TrainConfig(data=str(one), epochs=1, batch_size=1, device="cpu"))


def test_knn_monitor_of_a_diverged_model_is_nan_not_an_error() -> None:
    """knn_accuracy refuses non-finite features (DataError); the training monitor, which runs on rank 0
    alone, records NaN instead (an error there would leave the other ranks waiting), and a finite model still
    gets its accuracy."""
    from contrastkit.data import load_dataset
    from contrastkit.training.trainer import DataInfo, KnnEvaluator

    splits = load_dataset("digits", limit=100)
    info = DataInfo(channels=1, image_size=8, mean=(0.5,), std=(0.25,), classes=[str(i) for i in range(10)])
    ev = KnnEvaluator(splits, info, TrainConfig(knn_k=5), torch.device("cpu"))

    def flat(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def diverged(x: torch.Tensor) -> torch.Tensor:
        f = x.flatten(1).clone()
        f[0] = float("nan")
        return f

    assert 0.5 < ev.accuracy(flat) <= 1.0
    assert math.isnan(ev.accuracy(diverged))


@pytest.mark.parametrize("option", [{"oracle": True}, {"objective": "supcon"}])
def test_label_options_on_one_class_are_refused_before_the_run(tmp_path, option):
    """--oracle on one class masked every negative (loss exactly 0 at every step, exit 0); supcon had no
    negative at all. Both are refused before the run folder is made."""
    from PIL import Image

    folder = tmp_path / "one" / "train" / "cats"
    folder.mkdir(parents=True)
    rng = torch.Generator().manual_seed(0)
    for i in range(24):
        Image.fromarray(torch.randint(0, 256, (8, 8, 3), generator=rng, dtype=torch.uint8).numpy()).save(
            folder / f"{i}.png"
        )
    out = tmp_path / "run"
    config = TrainConfig(data=str(tmp_path / "one"), encoder="mlp", epochs=1, batch_size=8, progress=False,
                         out=str(out), **option)  # fmt: skip
    with pytest.raises(ConfigError, match=r"1 known class\(es\) \(cats\).*use data with class folders"):
        train(config)
    assert not out.exists()
