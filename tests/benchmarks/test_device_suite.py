"""The GPU suites of ``benchmarks/device/suite.py``: every row's command is a valid ``contrastkit`` command
line, and the runner and the table maker work end to end on the CPU (``--smoke``), so a typo cannot cost
a device session."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from contrastkit.cli import build_parser, config_from_args
from contrastkit.training.trainer import check_combinations

ROOT = Path(__file__).parents[2]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "device" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


suite = _load("suite")
tables = _load("tables")


@pytest.mark.parametrize("smoke", [False, True])
@pytest.mark.parametrize("name", sorted(suite.SUITES))
def test_every_row_is_a_valid_command(name: str, smoke: bool, tmp_path: Path) -> None:
    s = suite.SUITES[name]
    assert s.rows and len({r.name for r in s.rows}) == len(s.rows)
    for row in s.rows:
        for seed in s.seeds:
            cmd = suite.row_command(s, row, seed, tmp_path / row.name, smoke)
            assert cmd[1:4] == ["-m", "contrastkit", s.command]
            args = build_parser().parse_args(cmd[3:])
            if s.command == "train":
                config = config_from_args(args)
                check_combinations(config)
                assert config.seed == seed and config.out == str(tmp_path / row.name)
                if not smoke:  # the measurement runs on CIFAR-10, compiled, the same epochs for every row
                    assert config.data == suite.CIFAR and config.epochs == int(
                        s.common[s.common.index("--epochs") + 1]
                    )
            else:
                from contrastkit.clustering.run import SelaConfig
                from contrastkit.training.audio import config_from_flags

                assert config_from_flags(SelaConfig, args).seed == seed


def test_objectives_rows_are_the_issues_rows() -> None:
    rows = {r.name: r.args for r in suite.OBJECTIVES.rows}
    assert set(rows) == {"infonce", "debiased-0.05", "debiased-0.1", "hcl-0.5", "hcl-1.0", "oracle"}
    assert suite.OBJECTIVES.seeds == (0, 1) and int(suite.OBJECTIVES.common[3]) >= 50


def test_smoke_runs_write_records_and_tables(tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = ROOT / "benchmarks" / "device" / "suite.py"
    for args in (["objectives", "--rows", "oracle", "--seeds", "0"], ["resume", "--rows", "resume"]):
        done = subprocess.run(
            [sys.executable, str(script), *args, "--smoke", "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    oracle, resume = records
    assert oracle["row"] == "oracle" and oracle["smoke"] and "--oracle" in oracle["command"]
    assert 0 < oracle["knn_top1"] <= 1 and 0 < oracle["linear_top1"] <= 1 and oracle["images_per_second"] > 0
    # SIGTERM after the first checkpoint, then --resume: on the CPU the resumed run is exact
    assert resume["resumed_at_steps"] and resume["weights_equal"], resume
    assert resume["knn_top1_whole"] == resume["knn_top1_resumed"]
    text = tables.table(records, "objectives")
    assert "SMOKE" in text and f"| oracle | 1 | {oracle['knn_top1']:.3f} |" in text
    assert "| resume | [" in tables.table(records, "resume")


def test_budget_skips_rows_that_do_not_fit(tmp_path: Path) -> None:
    records = suite.run_suite(
        suite.OBJECTIVES,
        list(suite.OBJECTIVES.rows[:2]),
        [0],
        tmp_path,
        budget=5,
        smoke=False,
        estimate=60,
        linear_probe=False,
    )
    assert records == []  # nothing started: 5 s left, a row is estimated at 60 s


def test_tables_report_failures_apart(tmp_path: Path) -> None:
    recs = [
        {"suite": "negatives", "row": "in-batch", "seed": 0, "knn_top1": 0.8, "images_per_second": 100.0},
        {"suite": "negatives", "row": "queue-4096", "seed": 0, "error": "exited 2"},
    ]
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    text = tables.table(tables.load([path]), "negatives")
    assert "| in-batch | 1 | 0.800 |" in text and "failed: queue-4096 seed 0: exited 2" in text
    assert "queue-4096 |" not in text


def test_tables_take_the_last_record_of_a_rerun_and_missing_values(tmp_path: Path) -> None:
    recs = [
        {"suite": "objectives", "row": "infonce", "seed": 0, "knn_top1": 0.5},
        {"suite": "objectives", "row": "infonce", "seed": 0, "knn_top1": 0.7},  # the same seed again
        {"suite": "objectives", "row": "infonce", "seed": 1, "knn_top1": 0.8},
        {"suite": "resume", "row": "resume", "seed": 0, "resumed_at_steps": [7]},  # metrics unreadable
    ]
    text = tables.table(recs, "objectives")
    assert "| infonce | 2 | 0.750 (0.700, 0.800) |" in text
    assert "| resume | [7] | - / - |" in tables.table(recs, "resume")
