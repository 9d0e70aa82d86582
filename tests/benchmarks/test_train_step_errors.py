"""``benchmarks/train_step.py`` refuses bad input with one line and exit status 2, before the run."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
BASE = ["--device", "cpu", "--encoder", "small_cnn", "--image-size", "8", "--batch-size", "4"]
BASE += ["--steps", "1", "--warmup-steps", "0", "--num-images", "8"]


def _bench():
    spec = importlib.util.spec_from_file_location(
        "train_step_bench_errors", ROOT / "benchmarks" / "train_step.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_step_bench_errors"] = module
    spec.loader.exec_module(module)
    return module


def _status(argv: list[str]) -> int:
    try:
        return _bench().main(argv)
    except SystemExit as exc:  # argparse's refusals
        return int(exc.code or 0)


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--channels", "2"], "--channels must be 1 or 3"),
        (["--temperature", "0"], "temperature"),
        (["--encoder", "bogus"], "unknown encoder 'bogus'"),
        (["--skip", "compute,augment,full"], "skips every measurement"),
        (["--batch-size", "1"], "--batch-size must be at least 2"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    flags: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _status([*BASE, *flags]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_unwritable_json_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "afile").write_text("x")
    assert _status([*BASE, "--json", str(tmp_path / "afile" / "out.json")]) == 2
    captured = capsys.readouterr()
    assert "is a file, not a folder" in captured.err and "images/s" not in captured.out
    assert _status([*BASE, "--json", str(tmp_path / "missing" / "out.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_json_folder_not_writable_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from contrastkit.training import checkpoint as ckpt

    monkeypatch.setattr(ckpt.os, "access", lambda *a, **k: False)
    assert _status([*BASE, "--json", str(tmp_path / "out.json")]) == 2
    assert "not writable" in capsys.readouterr().err
    monkeypatch.undo()
    old = os.umask(0o022)
    try:
        assert _status([*BASE, "--json", str(tmp_path / "out.json")]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "out.json").stat().st_mode & 0o777 == 0o644
