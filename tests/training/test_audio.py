"""``contrastkit audio-train`` end to end on a tiny synthetic FSDD zip, and the MFCC baseline features."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from contrastkit.cli import main
from contrastkit.errors import ConfigError
from contrastkit.training.audio import AudioTrainConfig, mfcc_features
from contrastkit.views.audio import LogMel, dct_ii_matrix

_spec = importlib.util.spec_from_file_location(
    "audio_data_helpers", Path(__file__).parents[1] / "data" / "test_audio.py"
)
assert _spec is not None and _spec.loader is not None
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)


def test_audio_train_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    z = helpers.small_fsdd(tmp_path / "fsdd.zip", digits=3, takes=9, lengths=(300, 700))
    rc = main(
        [
            "audio-train",
            "--data",
            str(z),
            "--clip-seconds",
            "0.1",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--width",
            "4",
            "--proj-hidden-dim",
            "16",
            "--proj-dim",
            "8",
            "--knn-k",
            "5",
            "--no-linear-probe",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert rc == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("learned", "random_init", "mfcc"):
        assert 0 <= m[key]["knn_top1"] <= 1
    assert m["protocol"]["train_clips"] == 3 * 2 * 4 and m["protocol"]["test_clips"] == 3 * 2 * 5
    assert (tmp_path / "run" / "checkpoint.pt").is_file() and "kNN top-1" in capsys.readouterr().out
    assert main(["audio-train", "--data", str(tmp_path / "missing.zip")]) == 2


def test_mfcc_features_are_mean_and_std_of_dct() -> None:
    waves = torch.randn(3, 1, 1600)
    lm = LogMel()
    feats = mfcc_features(waves, lm, n_mfcc=13)
    log_mel = lm(waves)[:, 0].double().numpy()  # (3, 40, frames)
    coeffs = np.einsum("km,bmt->bkt", dct_ii_matrix(40, 13).double().numpy(), log_mel)
    expected = np.concatenate([coeffs.mean(-1), coeffs.std(-1, ddof=1)], axis=1)
    np.testing.assert_allclose(feats.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_config_checks() -> None:
    with pytest.raises(ConfigError, match="noise_p"):
        AudioTrainConfig(noise_p=1.5)
    with pytest.raises(ConfigError, match="optimizer"):
        AudioTrainConfig(optimizer="adam")
