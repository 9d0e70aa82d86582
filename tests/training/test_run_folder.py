"""The run folder of a new run is checked before any work: refused when it is a file, holds a run, or
cannot be created; metrics are written as strict JSON."""

import json
import math

import pytest

from contrastkit.errors import ConfigError
from contrastkit.training.run_folder import RUN_FILES, json_safe, prepare_run_dir, write_metrics


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
