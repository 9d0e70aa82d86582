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


def test_a_failed_linear_probe_is_recorded_and_named_under_the_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The training went through (its kNN stands) but ``eval --linear-probe`` failed: the record says so and
    the table names it (it showed a silent '-')."""

    def fake_run(cmd: list[str], log: Path, timeout: float) -> tuple[int, float]:
        with log.open("a") as f:
            f.write("$ " + " ".join(cmd) + "\n")
        if "eval" in cmd:
            return 3, 0.0
        run_dir = Path(cmd[cmd.index("--out") + 1])
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.json").write_text(json.dumps({"knn_top1": 0.81, "train_seconds": 9.0}))
        return 0, 0.0

    monkeypatch.setattr(suite, "_run", fake_run)
    (record,) = suite.run_suite(
        suite.OBJECTIVES, [suite.OBJECTIVES.rows[0]], [0], tmp_path, budget=600, smoke=False, estimate=1,
        linear_probe=True,
    )  # fmt: skip
    assert record["eval_rc"] == 3 and record["probe_error"] == "exited 3" and "error" not in record
    text = tables.table([{**record, "suite": "objectives"}], "objectives")
    row = suite.OBJECTIVES.rows[0].name
    assert f"| {row} | 1 | 0.810 |" in text
    assert f"linear probe failed: {row} seed 0: exited 3 (its kNN stands)" in text


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


def _config(s: object, name: str) -> dict[str, object]:
    """A row's training config as a dict (the key encoder's momentum resolved), for comparing rows."""
    row = next(r for r in s.rows if r.name == name)  # type: ignore[attr-defined]
    cmd = suite.row_command(s, row, 0, Path("runs/x"), False)
    config = config_from_args(build_parser().parse_args(cmd[3:]))
    return config.to_dict() | {"key_momentum": config.resolved_key_momentum()}


def _differ(a: dict[str, object], b: dict[str, object]) -> set[str]:
    return {k for k in a if a[k] != b[k]}


def test_negatives_controls_differ_from_their_rows_in_one_piece() -> None:
    n = suite.NEGATIVES
    names = [r.name for r in n.rows]
    # the issue's rows first: a cut-short call measures them first
    issue = ["in-batch", "queue-4096", "queue-16384", "queue-16384+mochi", "mined+debiased"]
    assert names[: len(issue)] == issue
    c = {name: _config(n, name) for name in names}
    # a queue turns on MoCo's key encoder: in-batch+momentum has the same one, so the source is the difference
    assert c["queue-4096"]["key_momentum"] == 0.99 and c["in-batch"]["key_momentum"] == 0.0
    assert _differ(c["in-batch"], c["in-batch+momentum"]) == {"key_momentum"}
    assert _differ(c["queue-4096"], c["in-batch+momentum"]) == {"negatives"}  # 4096: the default queue size
    assert _differ(c["queue-16384"], c["in-batch+momentum"]) == {"negatives", "queue_size"}
    assert c["in-batch+momentum"]["shuffle_bn_groups"] == c["queue-4096"]["shuffle_bn_groups"]
    # debiased vs InfoNCE on the same mined negatives, and snapshot vs re-encoded mined negatives
    assert _differ(c["mined"], c["mined+debiased"]) == {"objective"}  # tau_plus 0.1: the default
    assert c["mined"]["objective"] == "infonce"
    assert _differ(c["mined-n4+debiased"], c["mined-reencode+debiased"]) == {"mined_reencode"}
    assert _differ(c["mined+debiased"], c["mined-n4+debiased"]) == {"mined_negatives"}
    assert (
        c["mined-reencode+debiased"]["mined_reencode"]
        and c["mined-reencode+debiased"]["objective"] == "debiased"
    )
    # every row: the same epochs, batch, temperature, data
    for name in names:
        for key in ("epochs", "batch_size", "temperature", "data", "lr", "seed"):
            assert c[name][key] == c["in-batch"][key], (name, key)


def test_readme_plans_every_suite_row_in_calls_that_fit() -> None:
    """benchmarks/device/README.md's suite calls: every row of the negatives, sela and resume suites in one
    call, none twice; each call's budget under the 10-minute limit and its rows' estimates within it (a
    resume row at 170 s next to sela could never have started)."""
    import re

    text = (ROOT / "benchmarks" / "device" / "README.md").read_text()
    for s in (suite.NEGATIVES, suite.SELA, suite.RESUME):
        calls = re.findall(rf"\.\.\. {s.name} (?:--rows ([\w+,.-]+) )?--budget (\d+)", text)
        assert calls, f"no {s.name} calls in the README"
        by_name = {r.name: r for r in s.rows}
        planned = [row for rows, _ in calls for row in (rows.split(",") if rows else by_name)]
        assert sorted(planned) == sorted(by_name), s.name
        for rows, budget in calls:
            assert int(budget) <= 540
            names = rows.split(",") if rows else list(by_name)
            estimate = sum(by_name[row].estimate_s or s.estimate_s for row in names)
            assert estimate <= int(budget), (s.name, rows, estimate, budget)


def _rec(row: str, seed: int, knn: float, **kw: object) -> dict[str, object]:
    base = {
        "suite": "negatives",
        "row": row,
        "seed": seed,
        "git": "aaaaaaa",
        "device_name": "NVIDIA H200",
        "torch": "2.11.0",
        "smoke": False,
        "epochs": 30,
        "command": f"-m contrastkit train --epochs 30 --negatives {row} --seed {seed} --out runs/{row}-{seed}",
        "row_args": f"--negatives {row}",
        "knn_top1": knn,
        "images_per_second": 1000.0,
    }
    return base | kw


def test_tables_never_mix_smoke_and_real_records(tmp_path: Path) -> None:
    recs = [
        _rec("in-batch", 0, 0.85),
        _rec("in-batch", 1, 0.20, smoke=True, device_name="cpu", epochs=1),
    ]
    text = tables.table(recs, "negatives")
    assert "| in-batch | 1 | 0.850 |" in text
    assert "0.525" not in text and "0.200" not in text and "SMOKE" not in text
    assert "1 smoke record(s) of this suite left out" in text
    smoke = tables.table(recs, "negatives", smoke=True)
    assert "SMOKE" in smoke and "| in-batch | 1 | 0.200 |" in smoke and "0.850" not in smoke
    # only smoke records: a SMOKE table; --with-smoke prints both, apart
    assert "SMOKE" in tables.table(recs[1:], "negatives")
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "device" / "tables.py"), "--with-smoke", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.count("### negatives") == 2 and "0.525" not in done.stdout


def test_tables_average_seeds_across_commits_but_name_the_commits() -> None:
    """A plan's calls run in different sessions, at different commits: the seeds of a row are still one
    line, and the commits are named (per line), so the code's diff between them can be checked."""
    recs = [
        _rec("queue-4096", 0, 0.80),
        _rec("queue-4096", 1, 0.70, git="bbbbbbb"),  # seed 1 from a later call
        _rec("in-batch", 0, 0.60),
        _rec("in-batch", 1, 0.64),
    ]
    text = tables.table(recs, "negatives")
    assert "| queue-4096 | 2 | 0.750 (0.800, 0.700) |" in text
    assert "| in-batch | 2 | 0.620 (0.600, 0.640) |" in text
    assert "Not all lines are comparable" not in text
    assert (
        "records from 2 commits (aaaaaaa, bbbbbbb); by line: queue-4096: aaaaaaa, bbbbbbb; in-batch: aaaaaaa"
        in text
    )
    assert "git diff aaaaaaa bbbbbbb -- src" in text
    assert "commit (every record): aaaaaaa" in tables.table(recs[2:], "negatives")


def test_tables_do_not_average_other_epochs() -> None:
    # a row of 30 epochs beside rows of 50: flagged, its letter differs
    fifty = [
        _rec(r, 0, 0.9, epochs=50, command=f"-m contrastkit train --epochs 50 --negatives {r} --seed 0")
        for r in ("in-batch", "queue-16384")
    ]
    text = tables.table([*fifty, _rec("queue-4096", 0, 0.8)], "negatives")
    assert "| queue-4096 | 1 | 0.800 | - | 1000 | - | - | B |" in text
    assert "| in-batch | 1 | 0.900 | - | 1000 | - | - | A |" in text
    assert "settings A: 50 epochs" in text and "settings B: 30 epochs" in text
    # the same row with 30 and 50 epochs: two lines, named by their epochs
    text = tables.table([fifty[0], _rec("in-batch", 1, 0.5)], "negatives")
    assert "| in-batch (epochs 50) | 1 | 0.900 |" in text and "| in-batch (epochs 30) | 1 | 0.500 |" in text
    # the same row with other flags of its own: two lines, named by the flags
    other = _rec("in-batch", 1, 0.4, command="-m contrastkit train --epochs 30 --negatives in-batch --oracle")
    text = tables.table([_rec("in-batch", 0, 0.5), other], "negatives")
    assert (
        "| in-batch (flags --oracle) | 1 | 0.400 |" in text
        and "| in-batch (fewer flags) | 1 | 0.500 |" in text
    )
    # shared flags that differ between rows: flagged too, and named under the table
    wide = _rec(
        "mined",
        0,
        0.3,
        command="-m contrastkit train --epochs 30 --lr 0.1 --negatives mined",
        row_args="--negatives mined",
    )
    text = tables.table([_rec("in-batch", 0, 0.5), wide], "negatives")
    assert "Not all lines are comparable" in text
    assert "common flags `-m contrastkit train --epochs 30 --lr 0.1`" in text


def test_tables_show_mined_refresh_seconds_and_what_images_per_second_counts() -> None:
    recs = [
        _rec("in-batch", 0, 0.6, train_seconds=60.0),
        _rec("mined", 0, 0.5, train_seconds=90.0, mined_index_refresh_seconds=12.5),
        _rec("mined-reencode", 0, 0.55, mined_index_refresh_seconds=13.0, mined_reencoded_mean=2500.0),
    ]
    text = tables.table(recs, "negatives")
    assert "index refresh s" in text and "re-encoded items a step" in text
    assert "| mined | 1 | 0.500 | - | 1000 | - | 90 | 12.5 | - |" in text
    assert "| in-batch | 1 | 0.600 | - | 1000 | - | 60 | - | - |" in text
    assert "| mined-reencode | 1 | 0.550 | - | 1000 | - | - | 13.0 | 2500 |" in text
    assert "Only the training batch's images are counted" in text and "index refreshes" in text


def test_killed_rows_keep_their_last_logged_step(tmp_path: Path) -> None:
    (tmp_path / "history.jsonl").write_text(
        '{"step": 10, "epoch": 1, "seconds": 4.0, "mined_reencoded": 300.0}\n'
        '{"step": 20, "epoch": 2, "seconds": 8.5, "mined_reencoded": 500.0}\n{"step": 3'  # cut by the kill
    )
    record = suite._train_record(tmp_path)  # no metrics.json: the run was killed
    assert record == {"history_last": {"step": 20, "epoch": 2, "seconds": 8.5}, "mined_reencoded_mean": 400.0}
    failed = {**_rec("mined", 0, 0.0), "error": "killed at the budget's end", **record}
    del failed["knn_top1"]
    assert "failed: mined seed 0: killed at the budget's end (last logged: step 20, epoch 2, 8 s)" in (
        tables.table([failed], "negatives")
    )


def test_budget_uses_each_rows_own_estimate(tmp_path: Path) -> None:
    reencode = next(r for r in suite.NEGATIVES.rows if r.name == "mined-reencode+debiased")
    assert reencode.estimate_s and reencode.estimate_s > suite.NEGATIVES.estimate_s
    # 300 s cover the suite's 110 s but not this row's own estimate: it must not start
    records = suite.run_suite(
        suite.NEGATIVES, [reencode], [0], tmp_path, budget=300, smoke=False, estimate=None, linear_probe=False
    )
    assert records == []


def test_tables_a_rerun_replaces_a_failure_of_the_same_settings() -> None:
    failed = {**_rec("queue-4096", 0, 0.0), "error": "killed at the budget's end"}
    del failed["knn_top1"], failed["epochs"]  # a killed row has no metrics: its epochs come from the command
    text = tables.table([failed, _rec("queue-4096", 0, 0.8)], "negatives")
    assert "| queue-4096 | 1 | 0.800 |" in text and "failed" not in text


def test_sela_and_probe_columns_show_what_the_records_hold() -> None:
    """The SeLa table dropped the k-means NMI and the random-init / raw-pixel references it records, and the
    linear probe's seconds (issue 6's target) were shown nowhere."""
    refs = {"random_init": {"knn_top1": 0.21, "kmeans_nmi": 0.05}, "raw_pixels": {"knn_top1": 0.3}}
    sela = [
        _rec("sela", s, 0.6 + s / 10, suite="sela", heads_nmi=0.4, heads_ari=0.2, kmeans_nmi=0.35 + s / 10,
             references=refs, train_seconds=100.0)
        for s in (0, 1)
    ]  # fmt: skip
    text = tables.table(sela, "sela")
    assert "| k-means NMI |" in text and "0.400 (0.350, 0.450)" in text
    assert "random init 0.210 / 0.050; raw pixels 0.300 / -" in text
    probed = tables.table([_rec("in-batch", 0, 0.6, linear_probe_seconds=41.26)], "negatives")
    assert "linear probe s |" in probed and "| 41.3 |" in probed
