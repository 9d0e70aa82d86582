"""``contrastkit audio-train``: bad input is refused up front with a clear error, and nothing is lost.

The run folder is checked before the data are read (an earlier run is never overwritten; a file or an
uncreatable path is refused at once, not after training); every option is checked when the config is
made (learning rate, weight decay, SpecAugment masks, negative sources, batch size); metrics.json is
strict JSON.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from contrastkit.cli import main
from contrastkit.errors import ConfigError
from contrastkit.training.audio import AUDIO_NEGATIVES, AudioTrainConfig

from ..conftest import AUDIO_TINY as TINY  # runs on the session's fsdd (tests/conftest.py)


def _strict_json(path: Path) -> dict:
    def refuse(name: str) -> None:
        raise AssertionError(f"{path} holds {name}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def _finished_run(run: Path) -> dict[str, bytes]:
    """A folder holding a finished run (an image run's files), and its bytes."""
    run.mkdir(parents=True)
    files = {
        "checkpoint.pt": b"the old checkpoint",
        "metrics.json": b'{"knn_top1": 0.9}',
        "config.yaml": b"data: digits\n",
        "notes.txt": b"keep me",
    }
    for name, data in files.items():
        (run / name).write_bytes(data)
    return files


# ----------------------------------------------------------------------------------- 1, 2: the run folder
def test_an_existing_run_is_refused_and_left_unchanged(
    tmp_path: Path, fsdd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "runs" / "base"
    files = _finished_run(run)
    assert main(["audio-train", "--data", str(fsdd), *TINY, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "choose another --out" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == files
    # refused before the data are read: a missing data set is not what is reported
    assert main(["audio-train", "--data", str(tmp_path / "missing.zip"), "--out", str(run)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_out_that_is_a_file_or_cannot_be_created_is_refused_before_training(
    tmp_path: Path, fsdd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    assert main(["audio-train", "--data", str(fsdd), *TINY, "--out", str(afile)]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "epoch 1/1" not in err
    assert afile.read_text() == "not a folder"
    assert main(["audio-train", "--data", str(fsdd), *TINY, "--out", str(afile / "run")]) == 2
    err = capsys.readouterr().err
    assert "cannot create the run folder" in err and "epoch 1/1" not in err


def test_a_run_that_fails_after_the_check_leaves_no_empty_folder(
    tmp_path: Path, fsdd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "runs" / "new-run"
    args = ["audio-train", "--data", str(fsdd), *TINY, "--batch-size", "500", "--out", str(run)]
    assert main(args) == 2  # the batch is larger than the 24 training clips
    assert "larger than the training set" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # neither the run folder nor the parent made for it
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "other.txt").write_text("keep")
    assert main(args) == 2
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["other.txt"]


# ----------------------------------------------------------------------------------- 3: strict JSON
def test_metrics_are_strict_json_without_the_linear_probe(tmp_path: Path, fsdd: Path) -> None:
    run = tmp_path / "run"
    assert main(["audio-train", "--data", str(fsdd), *TINY, "--out", str(run)]) == 0
    m = _strict_json(run / "metrics.json")
    for key in ("learned", "random_init", "mfcc"):
        assert m[key]["linear_top1"] is None and 0 <= m[key]["knn_top1"] <= 1
    assert (run / "checkpoint.pt").is_file()


# ---------------------------------------------------------------------------- 6: learning rate, weight decay
def test_lr_and_weight_decay_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    for flags, option in (
        (["--lr", "-1"], "option lr (--lr)"),
        (["--lr", "0"], "option lr (--lr)"),
        (["--weight-decay", "-1"], "option weight_decay (--weight-decay)"),
    ):
        assert main(["audio-train", *flags]) == 2
        err = capsys.readouterr().err
        assert option in err and "Traceback" not in err
    assert AudioTrainConfig(lr=0.01, weight_decay=0.0).weight_decay == 0.0


@pytest.mark.parametrize(
    "field", ["temperature", "knn_temperature", "clip_seconds", "max_shift", "noise_p", "stretch_p"]
)
def test_non_finite_numbers_are_refused(field: str) -> None:
    with pytest.raises(ConfigError, match=f"option {field} "):
        AudioTrainConfig(**{field: math.nan})


# ----------------------------------------------------------------------------------- 7, 8: negatives
def test_batch_size_one_with_in_batch_negatives_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    for negatives in ("in-batch", "in-batch+mochi"):
        with pytest.raises(ConfigError, match="in-batch negatives need at least 2 items per batch"):
            AudioTrainConfig(batch_size=1, negatives=negatives)
    assert AudioTrainConfig(batch_size=1, negatives="queue").batch_size == 1  # negatives from the queue
    assert main(["audio-train", "--batch-size", "1"]) == 2
    assert "in-batch negatives need at least 2 items per batch" in capsys.readouterr().err


def test_gather_and_mined_negatives_are_refused_naming_the_supported_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(ConfigError, match="gather gathers negatives across torchrun processes"):
        AudioTrainConfig(negatives="gather")
    for negatives in ("mined", "in-batch+mined", "mined+mochi"):
        with pytest.raises(ConfigError, match="mines from an index of the whole training set"):
            AudioTrainConfig(negatives=negatives)
    with pytest.raises(ConfigError, match="option negatives"):
        AudioTrainConfig(negatives="nonsense")
    for negatives in AUDIO_NEGATIVES:
        assert AudioTrainConfig(negatives=negatives).negatives == negatives
    assert main(["audio-train", "--negatives", "gather"]) == 2
    err = capsys.readouterr().err
    assert "audio-train supports --negatives in-batch | cross-view | queue" in err and "Traceback" not in err


# ----------------------------------------------------------------------------------- 11: SpecAugment masks
def test_spec_augment_masks_are_checked_against_the_mel_bands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"freq_mask.*100 is wider than the 40 mel bands"):
        AudioTrainConfig(freq_mask=100)
    with pytest.raises(ConfigError, match=r"freq_mask.*wider than the 4 mel bands"):
        AudioTrainConfig(n_mels=4)  # the default F = 8
    assert AudioTrainConfig(freq_mask=40).freq_mask == 40  # as wide as the bands: allowed
    assert AudioTrainConfig(n_mels=64, freq_mask=50).freq_mask == 50
    for name in ("freq_mask", "time_mask"):
        with pytest.raises(ConfigError, match=f"option {name} .* must be an integer >= 0"):
            AudioTrainConfig(**{name: -1})
    assert main(["audio-train", "--freq-mask", "100"]) == 2
    assert "wider than the 40 mel bands" in capsys.readouterr().err


# ------------------------------------------------------------- 12: a shift longer than the clip, too many bands
def test_a_shift_longer_than_the_clip_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"max_shift.*5 s is longer than the clip \(--clip-seconds 1\)"):
        AudioTrainConfig(max_shift=5.0)
    assert AudioTrainConfig(max_shift=1.0).max_shift == 1.0  # as long as the clip: allowed
    assert AudioTrainConfig(clip_seconds=0.1).max_shift == 0.1  # the default shift with a short clip
    assert main(["audio-train", "--max-shift", "1.5"]) == 2
    assert "longer than the clip" in capsys.readouterr().err


def test_a_shift_that_can_move_the_shortest_clip_out_of_view_is_warned_about(
    tmp_path: Path, fsdd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A clip of L s centred in a C s window leaves it wholly once the shift exceeds (C + L) / 2: the old
    message promised no silent view for any shift up to C."""
    import torch

    from contrastkit.data.audio import AudioDataset
    from contrastkit.training.audio import silent_shift_warning

    train = AudioDataset(
        waveforms=torch.zeros(2, 1, 8000), labels=torch.tensor([0, 1]), lengths=torch.tensor([1148, 9000]),
        speakers=["a", "b"], names=["x", "y"], classes=["0", "1"], sample_rate=8000,
    )  # fmt: skip
    bound = (1.0 + 1148 / 8000) / 2  # 0.57 s
    assert silent_shift_warning(bound, 1.0, train) is None
    warning = silent_shift_warning(0.6, 1.0, train)
    assert (
        warning is not None and "shortest training clip (0.143 s" in warning and "at most 0.572 s" in warning
    )
    run = tmp_path / "run"
    args = ["audio-train", "--data", str(fsdd), *TINY, "--max-shift", "0.1", "--out", str(run)]
    assert (
        main([*args, "--clip-seconds", "0.5"]) == 0
    )  # the shortest tiny clip is 300 samples: 0.1 <= (0.5 + 0.0375) / 2
    assert "WARNING: --max-shift" not in capsys.readouterr().err
    assert main([*args[:-1], str(tmp_path / "run2"), "--clip-seconds", "0.5", "--max-shift", "0.4"]) == 0
    assert "WARNING: --max-shift 0.4 s can move the shortest training clip" in capsys.readouterr().err


def test_more_mel_bands_than_the_fft_can_fill_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    # 8 kHz, 256-point FFT: 129 bins; from 150 bands on, some triangular filters cover no bin
    with pytest.raises(ConfigError, match=r"n_mels \(--n-mels\) 200 is more mel bands .* use at most 149"):
        AudioTrainConfig(n_mels=200)
    assert AudioTrainConfig(n_mels=149).n_mels == 149
    assert main(["audio-train", "--n-mels", "150"]) == 2
    assert "use at most 149" in capsys.readouterr().err


def test_a_limit_smaller_than_the_batch_says_to_raise_the_limit(
    fsdd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--limit 1: "lower the batch size" led to --batch-size 1, which in-batch negatives refuse."""
    assert (
        main(["audio-train", "--data", str(fsdd), *TINY, "--limit", "1", "--out", str(tmp_path / "r")]) == 2
    )
    err = capsys.readouterr().err
    assert "use --batch-size 2 or more with at least 2 clips, or a larger --limit (it is 1)" in err, err


def test_an_objective_that_assumes_cosine_scores_is_refused_with_the_dot_score(
    tmp_path: Path, fsdd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    args = ["audio-train", "--data", str(fsdd), *TINY, "--score", "dot", "--objective", "debiased"]
    assert main([*args, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "Debiased assumes cosine scores of unit vectors, but the score is --score dot" in err, err
    assert "use --score cosine, or another --objective" in err and not run.exists()
