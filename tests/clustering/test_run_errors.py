"""``contrastkit sela``: bad input is refused up front with a clear error, and nothing is lost.

The run folder is checked before the data are read; options are checked when the config is made (heads'
hidden width, learning rate, weight decay, the Gaussian prior's std) or, where they need the data, before
training (``--clusters`` against the training items, options of the other kind of data); metrics.json is
strict JSON; a WAV at another rate can be resampled with ``sela --resample``, as the error says.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from contrastkit.cli import main
from contrastkit.clustering.run import MAX_MARGINAL_STD, SelaConfig, _prepare, run_sela
from contrastkit.clustering.sela import ClusteringHeads
from contrastkit.errors import ConfigError, DataError

from ..conftest import audio_helpers

DIGITS = ["sela", "--data", "digits", "--limit", "80", "--epochs", "1", "--batch-size", "32", "--heads", "1"]
DIGITS += ["--no-linear-probe", "--device", "cpu"]


def _finished_run(run: Path) -> dict[str, bytes]:
    run.mkdir(parents=True)
    files = {
        "checkpoint.pt": b"the old checkpoint",
        "metrics.json": b'{"knn_top1": 0.9}',
        "config.yaml": b"data: digits\n",
        "history.jsonl": b'{"epoch": 1}\n',
    }
    for name, data in files.items():
        (run / name).write_bytes(data)
    return files


# ----------------------------------------------------------------------------------- 1, 2: the run folder
def test_an_existing_run_is_refused_and_left_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "runs" / "image-run"
    files = _finished_run(run)
    assert main([*DIGITS, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == files
    # checked before the data are read
    assert main(["sela", "--data", str(tmp_path / "missing"), "--out", str(run)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_out_that_is_a_file_or_cannot_be_created_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    assert main([*DIGITS, "--out", str(afile)]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "Traceback" not in err
    assert main([*DIGITS, "--out", str(afile / "run")]) == 2
    assert "cannot create the run folder" in capsys.readouterr().err
    assert afile.read_text() == "not a folder"


# ----------------------------------------------------------------------------------- 3: strict JSON
def test_metrics_are_strict_json_without_the_linear_probe(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main([*DIGITS, "--out", str(run)]) == 0

    def refuse(name: str) -> None:
        raise AssertionError(f"metrics.json holds {name}, which is not JSON")

    m = json.loads((run / "metrics.json").read_text(), parse_constant=refuse)
    assert m["learned"]["linear_top1"] is None
    assert all(r["linear_top1"] is None for r in m["references"].values())


# ------------------------------------------------------------------------------ 4: clusters vs training set
def test_more_clusters_than_training_items_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    config = SelaConfig(
        data="digits",
        limit=20,
        clusters=1000,
        batch_size=8,
        epochs=1,
        linear_probe=False,
        device="cpu",
        out=str(run),
    )
    with pytest.raises(ConfigError, match="--clusters 1000 is more than the 20 training items"):
        run_sela(config)
    assert not run.exists()  # the folder it had made is removed again: it was empty
    assert main([*DIGITS, "--clusters", "1000", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "lower --clusters to at most 80" in err and "contrastkit sela:" not in err


def test_default_clusters_are_the_classes_present(tmp_path: Path) -> None:
    """K defaults to the classes present in the training items (as for audio), not to the class folders: 8
    digits drawn class-balanced hold 8 of the 10 classes, so K = 8 fits them (10 would be refused)."""
    config = SelaConfig(
        data="digits",
        limit=8,
        batch_size=4,
        epochs=1,
        linear_probe=False,
        device="cpu",
        out=str(tmp_path / "r"),
    )
    metrics = run_sela(config)
    assert metrics["config"]["clusters"] == 8


# ------------------------------------------------------------------------------ 5: hidden width of the heads
def test_negative_hidden_dim_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"option hidden_dim \(--hidden-dim\) must be an integer >= 0"):
        SelaConfig(hidden_dim=-1)
    with pytest.raises(ConfigError, match="hidden_dim"):
        ClusteringHeads(8, 3, hidden_dim=-1)
    assert SelaConfig(hidden_dim=0).hidden_dim == 0
    assert main(["sela", "--hidden-dim", "-1"]) == 2
    assert "hidden_dim" in capsys.readouterr().err


# ---------------------------------------------------------------------------- 6: learning rate, weight decay
def test_lr_and_weight_decay_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    for flags, option in (
        (["--lr", "-1"], "option lr (--lr)"),
        (["--weight-decay", "-1"], "option weight_decay (--weight-decay)"),
    ):
        assert main(["sela", *flags]) == 2
        err = capsys.readouterr().err
        assert option in err and "loss became" not in err and "Traceback" not in err


def test_other_numbers_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"option batch_size \(--batch-size\) must be at least 2"):
        SelaConfig(batch_size=1)  # was: a BatchNorm ValueError (MLP heads, one view) in the first step
    for field, value in (("lam", math.inf), ("lam", math.nan), ("optimizer", "adam"), ("limit", 0)):
        with pytest.raises(ConfigError, match=f"option {field} "):
            SelaConfig(**{field: value})


# --------------------------------------------------------------------------- 9: options of the other data
def test_options_of_the_other_kind_of_data_are_refused(
    fsdd: Path, capsys: pytest.CaptureFixture[str]
) -> None:  # the session's fsdd (tests/conftest.py)
    assert main(["sela", "--data", str(fsdd), "--image-size", "32"]) == 2
    err = capsys.readouterr().err
    assert "--image-size resizes images" in err and "is audio" in err and "drop --image-size" in err
    for flags in (["--width", "4"], ["--resample"]):
        assert main(["sela", "--data", "digits", *flags]) == 2
        err = capsys.readouterr().err
        assert f"is images, so it would be ignored; drop {flags[0]}" in err


# ----------------------------------------------------------------------------- 10: sela --resample
def test_wav_at_another_rate_points_to_sela_resample(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    helpers = audio_helpers()  # a smaller zip than the session's fsdd, with a 16 kHz WAV added to it
    z = helpers.small_fsdd(tmp_path / "fsdd.zip", digits=2, takes=7, lengths=(300, 700))
    with __import__("zipfile").ZipFile(z, "a") as zf:
        zf.writestr("recordings/1_carl_9.wav", helpers.wav_bytes(helpers.tone(1600, 1), rate=16000))
    assert main(["sela", "--data", str(z), "--device", "cpu", "--out", str(tmp_path / "run")]) == 2
    assert "--resample" in capsys.readouterr().err
    with pytest.raises(DataError, match="16000 Hz"):
        _prepare(SelaConfig(data=str(z)), torch.device("cpu"))
    d = _prepare(SelaConfig(data=str(z), resample=True), torch.device("cpu"))  # the flag the error names
    assert d.kind == "audio" and d.train.shape[0] == 2 * 2 * 2 + 1


# ------------------------------------------------------------------------ 12: the Gaussian prior's std
def test_a_very_wide_cluster_size_prior_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for std in (5.0, MAX_MARGINAL_STD + 0.01, math.inf, math.nan, -0.1):
        with pytest.raises(ConfigError, match=r"option marginal_std \(--marginal-std\) must be a number in"):
            SelaConfig(marginal_std=std)
    assert SelaConfig(marginal_std=MAX_MARGINAL_STD).marginal_std == MAX_MARGINAL_STD
    assert SelaConfig(marginal_std=0.3).marginal_std == 0.3
    assert main(["sela", "--marginal-std", "5"]) == 2
    assert "N(1, std²)" in capsys.readouterr().err
