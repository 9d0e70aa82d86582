import pytest
import torch

from contrastkit.training.precision import autocast_dtype


def test_autocast_dtype() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("auto", cuda) is torch.bfloat16
    assert autocast_dtype("bf16", cpu) is torch.bfloat16 and autocast_dtype("fp32", cuda) is None
    with pytest.raises(ValueError, match="auto, fp32, bf16"):
        autocast_dtype("fp16", cpu)
