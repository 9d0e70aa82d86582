"""``contrastkit audio-train`` end to end on a tiny synthetic FSDD zip, and the MFCC baseline features."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from contrastkit.cli import main
from contrastkit.errors import ConfigError
from contrastkit.evaluation import knn_accuracy
from contrastkit.training.audio import (
    AudioTrainConfig,
    add_config_flags,
    mfcc_baseline,
    mfcc_features,
    standardise,
)
from contrastkit.views.audio import LogMel, dct_ii_matrix

from ..conftest import AUDIO_TINY


def test_audio_train_command(fsdd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["audio-train", "--data", str(fsdd), *AUDIO_TINY, "--out", str(tmp_path / "run")])
    assert rc == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("learned", "random_init", "mfcc"):
        assert 0 <= m[key]["knn_top1"] <= 1
    assert m["protocol"]["train_clips"] == 3 * 2 * 4 and m["protocol"]["test_clips"] == 3 * 2 * 5
    assert (tmp_path / "run" / "checkpoint.pt").is_file() and "kNN top-1" in capsys.readouterr().out
    assert main(["audio-train", "--data", str(tmp_path / "missing.zip")]) == 2


def test_fewer_mel_bands_than_mfccs_use_every_band(fsdd: Path, tmp_path: Path) -> None:
    """--n-mels 12: the MFCC baseline takes the 12 coefficients there are (not 20), and says so."""
    run = tmp_path / "run"
    args = ["audio-train", "--data", str(fsdd), *AUDIO_TINY, "--n-mels", "12", "--freq-mask", "4"]
    assert main([*args, "--out", str(run)]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["protocol"]["mfcc"].startswith("12 MFCCs (orthonormal DCT-II of the 12-band log-mel)")
    assert 0 <= m["mfcc"]["knn_top1"] <= 1


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
    # every clip is held padded in memory: --clip-seconds 1000 allocated for minutes (~96 GB for FSDD)
    with pytest.raises(ConfigError, match=r"clip_seconds \(--clip-seconds\) must be at most 10 "):
        AudioTrainConfig(clip_seconds=1000)
    assert AudioTrainConfig(clip_seconds=10).clip_seconds == 10


def test_mfcc_baseline_is_standardised_with_train_statistics() -> None:
    g = torch.Generator().manual_seed(0)
    train_w, test_w = torch.randn(12, 1, 1600, generator=g), 0.5 * torch.randn(5, 1, 1600, generator=g)
    lm = LogMel()
    tr, te = mfcc_baseline(train_w, test_w, lm, n_mfcc=13)
    raw_tr, raw_te = mfcc_features(train_w, lm, n_mfcc=13), mfcc_features(test_w, lm, n_mfcc=13)
    mean, std = raw_tr.mean(0), raw_tr.std(0)
    torch.testing.assert_close(tr, (raw_tr - mean) / std)
    torch.testing.assert_close(te, (raw_te - mean) / std)  # the test split uses the train statistics
    torch.testing.assert_close(tr.mean(0), torch.zeros(26), atol=1e-5, rtol=0)
    torch.testing.assert_close(tr.std(0), torch.ones(26), atol=1e-5, rtol=0)


def test_standardise_stops_large_scale_dimensions_from_dominating_the_knn() -> None:
    # like raw MFCCs: c0 (log energy) near -76 and other wide, uninformative dimensions; the class lives in
    # a dimension of scale 1, which the cosine similarity of the kNN barely sees until each is standardised
    g = torch.Generator().manual_seed(0)
    y = torch.arange(400) % 2
    f = torch.randn(400, 4, generator=g)
    f[:, 0] = -76.0 + 5.0 * f[:, 0]
    f[:, 1] = 10.0 + 8.0 * f[:, 1]
    f[:, 2] = 8.0 * f[:, 2]
    f[:, 3] = (2.0 * y - 1.0) + 0.3 * f[:, 3]
    tr, te, ytr, yte = f[:300], f[300:], y[:300], y[300:]
    raw = knn_accuracy(tr, ytr, te, yte, k=200, temperature=0.1)
    std_tr, std_te = standardise(tr, te)
    assert knn_accuracy(std_tr, ytr, std_te, yte, k=200, temperature=0.1) > 0.95 > raw + 0.3


def test_help_states_each_default_once() -> None:
    parser = argparse.ArgumentParser()
    add_config_flags(parser, AudioTrainConfig)
    helps = {a.dest: a.help or "" for a in parser._actions if a.dest != "help"}
    assert all(h.count("default") == 1 for h in helps.values()), helps
    assert helps["lr"].endswith("(default: the optimizer's base rate x batch/256)")
    assert helps["epochs"].endswith("(default: 30)")


def test_audio_queue_gets_each_batchs_clip_indices(fsdd: Path, tmp_path: Path, learner_indices: list) -> None:
    """audio-train passes each batch's indices, so the queue (K = 4096 > FSDD's clips) masks own keys."""
    seen = learner_indices
    out = str(tmp_path / "r")
    assert main(["audio-train", "--data", str(fsdd), *AUDIO_TINY, "--negatives", "queue", "--out", out]) == 0
    assert len(seen) == 3 and all(t is not None for t in seen)
    assert sorted(torch.cat(seen).tolist()) == list(range(3 * 2 * 4))  # one epoch: every train clip once


def test_audio_train_names_the_options_it_does_not_use(
    fsdd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--objective margin takes no temperature (the header printed margin(temperature=5.0) as if used); a
    --knn-k above the training clips votes with them all."""
    argv = ["audio-train", "--data", str(fsdd), *AUDIO_TINY, "--objective", "margin", "--temperature", "5",
            "--knn-k", "500", "--out", str(tmp_path / "r")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "WARNING: --temperature 5.0 has no effect in this run: --objective margin does not use it" in out
    assert "WARNING: --knn-k 500 has no effect in this run: the kNN vote takes at most the 24 training" in out
