"""`train` on a CUDA device, every placement (runs only where a GPU is present: the device machine)."""

import pytest
import torch

from contrastkit.training import TrainConfig, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("placement", ["auto", "host"])
def test_digits_train_on_cuda(tmp_path, placement):
    cfg = TrainConfig(
        epochs=3,
        batch_size=128,
        device="cuda",
        data_placement=placement,
        progress=False,
        out=str(tmp_path / placement),
    )
    result = train(cfg)
    assert result.metrics["device"].startswith("cuda") and result.metrics["steps"] == 3 * (1347 // 128)
    assert result.metrics["knn_top1"] > result.metrics["knn_top1_random_init"] - 0.05
    where = result.metrics["knn_protocol"]["data_placement"]
    assert where == ("device memory" if placement == "auto" else "pinned host memory")


def test_cuda_placements_give_the_same_batches(tmp_path):
    """Device and pinned-host placement feed the same images in the same order: the first losses agree."""
    runs = {
        p: train(TrainConfig(epochs=1, batch_size=128, device="cuda", data_placement=p, precision="fp32",
                             deterministic=True, progress=False, out=str(tmp_path / p)))
        for p in ("device", "host")
    }  # fmt: skip
    a, b = ([r["loss"] for r in runs[p].history] for p in ("device", "host"))
    assert a == pytest.approx(b, rel=1e-4)
