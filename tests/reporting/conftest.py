"""A tiny trained run on the embedded digits, trained once per test session and shared (read-only)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from contrastkit.training import TrainConfig, train


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run folder of 2 epochs of SimCLR on 320 + 320 digits (kNN every epoch, so the curve has 2 points).

    Tests that change files copy it first (:func:`run_copy`). When the trainer writes no ``history.jsonl``,
    one is written from the returned history so the report's curves have data.
    """
    run = tmp_path_factory.mktemp("reporting") / "run"
    config = TrainConfig(
        epochs=2, batch_size=64, limit=320, knn_every=1, knn_k=20, progress=False, device="cpu", out=str(run)
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy 2-core machine, OpenMP threads spin-waiting make this ~3x slower
    try:
        result = train(config, log_every=2, out=io.StringIO())
    finally:
        torch.set_num_threads(threads)
    history = run / "history.jsonl"
    if not history.exists():
        seconds = result.metrics["train_seconds"]
        n = max(len(result.history), 1)
        with history.open("w") as f:
            for i, row in enumerate(result.history):
                f.write(json.dumps({"seconds": seconds * (i + 1) / n, "lr": 0.01, **row}) + "\n")
    return run


@pytest.fixture
def run_copy(trained_run: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`trained_run` that a test may change."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


@pytest.fixture(scope="module", autouse=True)
def _one_thread_per_module():
    """One intra-op thread while a module of this folder runs (restored after it): on a busy 2-core machine
    two OpenMP threads spin-wait on each other and feature extraction runs several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
