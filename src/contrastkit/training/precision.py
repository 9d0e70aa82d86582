"""``--precision``: the autocast dtype of a run (bf16 on CUDA by default, float32 on the CPU)."""

from __future__ import annotations

import torch

from contrastkit.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 for ``bf16``, and for ``auto`` on CUDA; None (float32, no autocast) otherwise."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return torch.bfloat16 if precision == "bf16" or (precision == "auto" and device.type == "cuda") else None
