"""``benchmarks/train_step.py`` runs its three measurements on the CPU and reports them consistently (the
GPU figures of docs/performance.md come from this script)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("train_step_bench", ROOT / "benchmarks" / "train_step.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_step_bench"] = module
    spec.loader.exec_module(module)
    return module


def test_three_measurements_and_their_ratio(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--device", "cpu", "--encoder", "small_cnn", "--image-size", "8", "--batch-size", "16"]
    assert _bench().main([*args, "--steps", "2", "--warmup-steps", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    r = result["results"]
    assert set(r) == {"compute", "augment", "full"} and all(v["images_per_s"] > 0 for v in r.values())
    assert result["full_over_compute"] == pytest.approx(
        r["full"]["images_per_s"] / r["compute"]["images_per_s"]
    )
    assert math.isfinite(result["final_loss"])


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        _bench().main(["--skip", "everything"])
