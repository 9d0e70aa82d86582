"""No host synchronisation inside a CUDA training step, per negative source (runs only where a GPU is
present: the device machine's call 1).

The step must not wait for the GPU: the loss is read every ``log_every`` steps, outside the step. Each step
after the second (the first is timed apart; a mined source refreshes its index at the first) runs under
``torch.cuda.set_sync_debug_mode("warn")``, and every synchronising operation it makes is named by the
Python line that made it (a ``torch.tensor(x, device="cuda")`` copy, ``.item()``, ``bool(t)``, ``nonzero``).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from contrastkit.training import TrainConfig, train
from contrastkit.training.step import TrainStep

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize(
    ("negatives", "extra"),
    [
        ("in-batch", {}),
        ("in-batch", {"key_momentum": 0.99}),  # the momentum key encoder's EMA
        ("queue", {}),
        ("queue+mochi", {}),
        ("in-batch+mochi", {"mix_hardest": 128}),
        ("mined", {}),
        ("in-batch+mined", {"objective": "debiased"}),
        ("queue", {"precision": "fp32", "objective": "hcl"}),
        ("in-batch", {"objective": "triplet", "mining": "semi-hard", "oracle": True}),
        ("in-batch", {"objective": "supcon"}),
    ],
)
def test_cuda_step_makes_no_host_synchronisation(negatives, extra, tmp_path, monkeypatch) -> None:
    syncs: list[str] = []
    step = TrainStep.__call__

    def watched(self, idx, batch, number):  # type: ignore[no-untyped-def]
        if number <= 2:
            return step(self, idx, batch, number)
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                out = step(self, idx, batch, number)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        syncs.extend(
            f"step {number}: {w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)
        )
        return out

    monkeypatch.setattr(TrainStep, "__call__", watched)
    config = TrainConfig(
        epochs=1, batch_size=128, device="cuda", negatives=negatives, queue_size=512, mined_negatives=4,
        mix_start_epoch=0, progress=False, out=str(tmp_path / "r"), **extra,
    )  # fmt: skip
    assert train(config).metrics["steps"] == 1347 // 128
    assert not syncs, f"{len(syncs)} synchronisations: " + "; ".join(sorted(set(syncs)))
