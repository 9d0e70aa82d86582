"""The run folder of a new run is checked before any work: refused when it is a file, holds a run, or
cannot be created; metrics are written as strict JSON."""

import json
import math

import pytest

from contrastkit.errors import ConfigError
from contrastkit.training.run_folder import (
    RUN_FILES,
    json_safe,
    lock_run_dir,
    prepare_run_dir,
    unlock_run_dir,
    write_metrics,
)


def test_new_and_empty_folders_are_accepted(tmp_path):
    assert prepare_run_dir(tmp_path / "a" / "b").is_dir()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")  # other files are not a run
    assert prepare_run_dir(tmp_path / "empty") == tmp_path / "empty"


@pytest.mark.parametrize("name", RUN_FILES)
def test_a_folder_holding_any_run_file_is_refused_and_kept(tmp_path, name):
    (tmp_path / name).write_text("old run")
    with pytest.raises(ConfigError, match=rf"already holds a run \({name}\); choose another --out"):
        prepare_run_dir(tmp_path)
    assert (tmp_path / name).read_text() == "old run"


def test_a_file_and_an_uncreatable_path_are_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        prepare_run_dir(tmp_path / "afile")
    with pytest.raises(ConfigError, match="cannot create the run folder"):
        prepare_run_dir(tmp_path / "afile" / "run")  # a parent that is a file


def test_hint_is_used(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match="continue it with --resume"):
        prepare_run_dir(tmp_path, hint="continue it with --resume")


def test_metrics_are_strict_json_with_null_for_non_finite(tmp_path):
    metrics = {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -math.inf, "e": 2}, "f": "x"}
    assert json_safe(metrics) == {"a": None, "b": [1.0, None], "c": {"d": None, "e": 2}, "f": "x"}
    path = write_metrics(tmp_path / "metrics.json", metrics)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["c"] == {"d": None, "e": 2}


LOCKER = """
import sys, time
from contrastkit.training.run_folder import prepare_run_dir
prepare_run_dir(sys.argv[1])
print("locked", flush=True)
time.sleep(30)
"""


def test_a_folder_in_use_by_another_process_is_refused(tmp_path):
    import subprocess
    import sys

    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", LOCKER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match="in use by another contrastkit process"):
            prepare_run_dir(run)
        with pytest.raises(ConfigError, match="in use by another contrastkit process"):
            lock_run_dir(run)  # what a resume takes
    finally:
        holder.kill()
        holder.wait()
    prepare_run_dir(run)  # the lock went with the process
    unlock_run_dir(run)


def test_run_files_written_between_the_check_and_the_lock_are_seen(tmp_path, monkeypatch):
    import contrastkit.training.run_folder as rf

    real = rf.lock_run_dir

    def lock_after_another_run_wrote(path):
        (tmp_path / "config.yaml").write_text("written by a run that held the folder first")
        real(path)

    monkeypatch.setattr(rf, "lock_run_dir", lock_after_another_run_wrote)
    with pytest.raises(ConfigError, match=r"already holds a run \(config.yaml\)"):
        rf.prepare_run_dir(tmp_path)


FORK_THEN_DIE = """
import os, signal, sys, time
from contrastkit.training.run_folder import prepare_run_dir
prepare_run_dir(sys.argv[1])
child = os.fork()  # as a DataLoader worker is forked
if child == 0:
    time.sleep(30)
    os._exit(0)
print(child, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # the run is killed; its worker lives on
"""


def test_a_forked_worker_outliving_its_killed_parent_does_not_hold_the_lock(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    run = tmp_path / "run"
    parent = subprocess.Popen(
        [sys.executable, "-c", FORK_THEN_DIE, str(run)], stdout=subprocess.PIPE, text=True
    )
    child = int(parent.stdout.readline())
    parent.wait()
    try:
        os.kill(child, 0)  # the orphan is still running
        lock_run_dir(run)  # what an immediate --resume takes: refused while the orphan held the lock
        unlock_run_dir(run)
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_history_row_on_a_full_disk_is_a_clear_error(tmp_path):
    """/dev/full refuses every write with ENOSPC, as a full disk does."""
    import torch

    from contrastkit.errors import ContrastkitError
    from contrastkit.training.trainer import _drain

    (tmp_path / "history.jsonl").symlink_to("/dev/full")
    pending = [(1, {"loss": torch.tensor(1.0), "lr": torch.tensor(0.1)})]
    with pytest.raises(
        ContrastkitError, match=r"cannot write .*history\.jsonl.* \(No space left on device\)"
    ):
        _drain(pending, [], 0, tmp_path, 1.0)
