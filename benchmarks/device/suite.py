"""Run the owed GPU measurements as one budgeted call: rows of ``contrastkit`` runs, one JSON line each.

The device machine is lent for minutes at a time (one command runs at most 10 minutes), so every
measurement an issue asks for is a *suite* of named rows that can be run a few at a time and resumed in
a later session: each finished row appends one JSON line to ``OUT/results.jsonl`` (the command, the
device, torch's version, the git commit, the metrics), which is copied into ``docs/results/device/`` and
turned into the tables of ``docs/results.md`` by ``benchmarks/device/tables.py``.

    python3 benchmarks/device/suite.py objectives --rows infonce,oracle --seeds 0,1 --budget 540
    python3 benchmarks/device/suite.py negatives --rows in-batch,queue-4096,queue-16384 --budget 540  # README: call 6
    python3 benchmarks/device/suite.py sela --budget 300
    python3 benchmarks/device/suite.py resume --budget 300
    python3 benchmarks/device/suite.py objectives --smoke          # the same rows on digits, on the CPU

A row starts only when the budget left covers its estimated time (its ``Row.estimate_s``, else the suite's,
or ``--estimate``; scaled by how this call's finished rows compared with their estimates) and is killed at the budget's end, so the call returns inside the device's limit with
every finished row on disk. ``--smoke`` runs each row for one epoch on the embedded digits on the CPU:
the test suite uses it, so a typo cannot waste a GPU session.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CIFAR = ".carry/cifar10-jpeg.zip"


@dataclass(frozen=True)
class Row:
    """One named configuration of a suite: extra flags over the suite's common ones."""

    name: str
    args: tuple[str, ...]
    estimate_s: float | None = None  # its expected seconds on the H200, where they differ from the suite's


@dataclass(frozen=True)
class Suite:
    """A table an issue asks for: its command, the flags every row shares, and the rows."""

    name: str
    issue: int
    command: str  # contrastkit sub-command
    common: tuple[str, ...]
    rows: tuple[Row, ...]
    smoke: tuple[str, ...]  # replaces ``common`` with --smoke (digits, CPU, one epoch)
    seeds: tuple[int, ...] = (0,)
    linear_probe: bool = False  # contrastkit eval --linear-probe after each train row
    estimate_s: float = 150.0  # a row's expected seconds on the H200 before any has finished
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


_TRAIN_SMOKE = ("--data", "digits", "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--no-progress")


def _cifar_train(epochs: int, temperature: float) -> tuple[str, ...]:
    """The flags every CIFAR-10 row of a training suite shares: same budget, recipe and logging."""
    return (
        "--data", CIFAR, "--epochs", str(epochs), "--batch-size", "512", "--compile",
        "--temperature", str(temperature), "--crop-min-scale", "0.2", "--lr", "0.3", "--knn-every", "10",
        # only the final checkpoint: ~0.5 s of writing per epoch is not these tables' business
        "--checkpoint-every", "1000000", "--no-progress",
    )  # fmt: skip


# Issue 3. The papers' CIFAR-10 setting is temperature 0.5 (Chuang et al. 2020 and Robinson et al. 2021
# both train SimCLR with t = 0.5); the batch is 512 (theirs: 256) to keep the H200 busy. Same budget per row.
OBJECTIVES = Suite(
    name="objectives",
    issue=3,
    command="train",
    common=_cifar_train(epochs=50, temperature=0.5),
    rows=(
        Row("infonce", ("--objective", "infonce")),
        Row("debiased-0.05", ("--objective", "debiased", "--tau-plus", "0.05")),
        Row("debiased-0.1", ("--objective", "debiased", "--tau-plus", "0.1")),
        Row("hcl-0.5", ("--objective", "hard-negative", "--tau-plus", "0.1", "--beta", "0.5")),
        Row("hcl-1.0", ("--objective", "hard-negative", "--tau-plus", "0.1", "--beta", "1.0")),
        Row("oracle", ("--objective", "infonce", "--oracle")),
    ),
    smoke=_TRAIN_SMOKE,
    seeds=(0, 1),
    linear_probe=True,
    estimate_s=170.0,
)

# Issue 4. MoCo v2's temperature 0.2 for every row; the same 30 epochs for every row. The issue's rows come
# first, so a cut-short call measures them first; then the controls that make each comparison differ in one
# piece only:
# - a queue row also turns on a momentum key encoder (MoCo: m = 0.99, shuffled BN): `in-batch+momentum` is
#   in-batch with the same key encoder, so queue vs in-batch+momentum isolates the negatives' source;
# - `mined+debiased` also changes the objective: `mined` (InfoNCE) is its control;
# - `--mined-reencode` runs one more forward and backward of the distinct mined items, up to 2 x 512 x n a step:
#   at n = 16 that is up to 16k images a step (up to 17x a snapshot step's compute, ~100 GB of saved
#   activations), which no 10-minute call holds for 30 epochs; so the re-encoding row and its snapshot
#   control use n = 4 (up to 4096 items: at most 5x).
# Estimates on the H200 (README's sizing: 30 epochs are 1.5M images, ~60 s at 25k images/s, + ~40 s to
# compile + ~10 s of decoding and kNN = 110 s): a key encoder adds its forward of both views (~1/3 of a
# step) and its compilation, ~140 s; a mined row adds 30 refreshes (50k images embedded each, and the
# search), ~140 s; re-encoding at n = 4: up to 5 x 60 s + refreshes + compiling the varying item batches,
# ~410 s. So four calls of 540 s hold the ten rows (benchmarks/device/README.md). At 50 epochs a row takes
# ~150-200 s: two or three a call, five sessions for the other nine, and the re-encoding row (up to 5 x 100 s of
# steps) would not fit one 10-minute call.
_MINED_4 = ("--negatives", "mined", "--mined-negatives", "4")
_DEBIASED = ("--objective", "debiased", "--tau-plus", "0.1")
NEGATIVES = Suite(
    name="negatives",
    issue=4,
    command="train",
    common=_cifar_train(epochs=30, temperature=0.2),
    rows=(
        # the issue's rows
        Row("in-batch", ("--negatives", "in-batch")),
        Row("queue-4096", ("--negatives", "queue", "--queue-size", "4096"), 140),
        Row("queue-16384", ("--negatives", "queue", "--queue-size", "16384"), 140),
        Row(
            "queue-16384+mochi",
            # MoCHi (N, s, s') = (1024, 1024, 128) with K = 16k, recalled (not checked against the paper's
            # table) as one of its ImageNet-100 settings; the warm-up scaled to 10% of the epochs
            (
                "--negatives",
                "queue+mochi",
                "--queue-size",
                "16384",
                "--mix-start-epoch",
                "3",
                "--mix-hardest",
                "1024",
                "--mix-synthetic",
                "1024",
                "--mix-query",
                "128",
            ),
            150,
        ),
        Row("mined+debiased", ("--negatives", "mined", *_DEBIASED), 140),
        # controls: each differs from an issue row in one piece
        Row("in-batch+momentum", ("--negatives", "in-batch", "--key-momentum", "0.99"), 140),  # vs queue-*
        Row("mined", ("--negatives", "mined", "--objective", "infonce"), 140),  # vs mined+debiased
        Row("in-batch+mined+debiased", ("--negatives", "in-batch+mined", *_DEBIASED), 140),
        Row("mined-n4+debiased", (*_MINED_4, *_DEBIASED), 140),  # the snapshot control of the next row
        Row("mined-reencode+debiased", (*_MINED_4, "--mined-reencode", *_DEBIASED), 410),
    ),
    smoke=_TRAIN_SMOKE,
    estimate_s=110.0,  # in-batch
)

# Issue 7. SeLa on CIFAR-10: 10 clusters per head (NMI against the 10 classes), equipartition, cross-view.
SELA = Suite(
    name="sela",
    issue=7,
    command="sela",
    common=("--data", CIFAR, "--epochs", "30", "--batch-size", "512", "--heads", "3"),  # the default lr
    rows=(Row("sela-10x3", ("--clusters", "10")),),
    smoke=("--data", "digits", "--epochs", "1", "--batch-size", "64", "--device", "cpu", "--no-linear-probe"),
    estimate_s=300.0,
)

# Issue 6. Resume on the GPU: an uninterrupted run against one stopped by SIGTERM after its first
# checkpoint and resumed, with and without --deterministic; the tolerance is what this measures.
RESUME = Suite(
    name="resume",
    issue=6,
    command="train",
    common=(
        "--data",
        CIFAR,
        "--limit",
        "10000",
        "--epochs",
        "3",
        "--batch-size",
        "512",
        "--knn-every",
        "1",
        "--checkpoint-every",
        "10",
        "--no-progress",
    ),
    rows=(Row("resume", ()), Row("resume-deterministic", ("--deterministic",))),
    smoke=(
        "--data",
        "digits",
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--device",
        "cpu",
        "--no-progress",
        "--checkpoint-every",
        "5",
    ),
    estimate_s=120.0,
)

SUITES = {s.name: s for s in (OBJECTIVES, NEGATIVES, SELA, RESUME)}


# --smoke runs one epoch: a row's flag that only makes sense in a longer run takes this value instead
SMOKE_OVERRIDES = {"--mix-start-epoch": "0"}  # MoCHi's warm-up: mix from the start, so the smoke run mixes


def _smoke_args(args: tuple[str, ...]) -> list[str]:
    out = list(args)
    for i, arg in enumerate(out[:-1]):
        if arg in SMOKE_OVERRIDES:
            out[i + 1] = SMOKE_OVERRIDES[arg]
    return out


def row_command(suite: Suite, row: Row, seed: int, run_dir: Path, smoke: bool) -> list[str]:
    """The ``contrastkit`` command line of one row and seed (smoke: the digits/CPU common flags, and
    :data:`SMOKE_OVERRIDES`)."""
    common = suite.smoke if smoke else suite.common
    args = _smoke_args(row.args) if smoke else list(row.args)
    return [
        sys.executable,
        "-m",
        "contrastkit",
        suite.command,
        *common,
        *args,
        "--seed",
        str(seed),
        "--out",
        str(run_dir),
    ]


def _device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:
        pass
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _git_commit() -> str:
    """This checkout's commit: from git, else from ``.carry/COMMIT`` (the device copy has no ``.git``;
    write it with ``git rev-parse --short HEAD > .carry/COMMIT`` before the call)."""
    try:
        found = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except Exception:
        found = ""
    if not found and (ROOT / ".carry" / "COMMIT").is_file():
        found = (ROOT / ".carry" / "COMMIT").read_text().strip()
    return found or "unknown"


def _env() -> dict[str, str]:
    """The children's environment: unbuffered output, and this checkout's ``src`` importable (the device
    machine has no installed contrastkit)."""
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}


def _run(cmd: list[str], log: Path, timeout: float) -> tuple[int, float]:
    """Run ``cmd`` with its output in ``log``; kill its process group at ``timeout``. (rc, seconds)."""
    t0 = time.perf_counter()
    env = _env()
    with log.open("a") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = -9
    return rc, time.perf_counter() - t0


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _train_record(run_dir: Path) -> dict[str, Any]:
    m = _read_json(run_dir / "metrics.json")
    keep = (
        "knn_top1",
        "knn_top1_random_init",
        "knn_top1_raw_pixels",
        "final_loss",
        "final_mi_bound_nats",
        "epochs",
        "steps",
        "train_seconds",
        "total_seconds",
        "images_per_second",
        "images_per_second_after_first_step",
        "first_step_seconds",
        "device",
        "knn_curve",
        "mined_index_refresh_seconds",
        "skipped_steps",
    )
    record = {k: m[k] for k in keep if k in m}
    probe = m.get("evaluation", {}).get("linear_probe")
    if probe:
        record["linear_top1"] = probe.get("top1")
        record["linear_probe_seconds"] = probe.get("seconds")
    return record | _history_record(run_dir)


def _history_record(run_dir: Path) -> dict[str, Any]:
    """What ``history.jsonl`` adds to a record: the mean number of mined items re-encoded a step
    (``--mined-reencode``), and the last logged step, which is all a row killed at the budget's end leaves
    (``history_last``: step, epoch, training seconds; enough to size the row for a later call)."""
    rows = []
    try:
        with (run_dir / "history.jsonl").open() as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except ValueError:  # a line cut short by the kill
                    pass
    except OSError:
        return {}
    if not rows:
        return {}
    out: dict[str, Any] = {
        "history_last": {k: rows[-1].get(k) for k in ("step", "epoch", "seconds") if k in rows[-1]}
    }
    reencoded = [float(r["mined_reencoded"]) for r in rows if r.get("mined_reencoded") is not None]
    if reencoded:
        out["mined_reencoded_mean"] = sum(reencoded) / len(reencoded)
    return out


def _sela_record(run_dir: Path) -> dict[str, Any]:
    m = _read_json(run_dir / "metrics.json")
    if not m:
        return {}
    learned = m.get("learned", {})
    return {
        "heads_nmi": m["heads_test_mean"]["nmi"],
        "heads_ari": m["heads_test_mean"]["ari"],
        "knn_top1": learned.get("knn_top1"),
        "linear_top1": learned.get("linear_top1"),
        "kmeans_nmi": learned.get("kmeans", {}).get("nmi"),
        "references": {
            k: {
                "knn_top1": v.get("knn_top1"),
                "linear_top1": v.get("linear_top1"),
                "kmeans_nmi": v.get("kmeans", {}).get("nmi"),
            }
            for k, v in m["references"].items()
        },
        "train_seconds": m.get("train_seconds"),
        "total_seconds": m.get("total_seconds"),
        "device": m.get("device"),
    }


def _wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen[bytes], deadline: float) -> bool:
    """Poll until ``run_dir/checkpoint.pt`` exists (the first checkpoint), the run ends, or the deadline."""
    while time.perf_counter() < deadline and proc.poll() is None:
        if (run_dir / "checkpoint.pt").exists():
            return True
        time.sleep(0.2)
    return False


def _resume_row(cmd: list[str], run_dir: Path, log: Path, deadline: float) -> dict[str, Any]:
    """Uninterrupted run vs. a run stopped by SIGTERM after its first checkpoint and resumed."""
    import torch

    whole = run_dir.with_name(run_dir.name + "-whole")
    cmd_whole = [*cmd[:-1], str(whole)]
    rc, _ = _run(cmd_whole, log, deadline - time.perf_counter())
    if rc != 0:
        return {"error": f"uninterrupted run exited {rc}"}
    env = _env()
    with log.open("a") as f:
        f.write("$ " + shlex.join(cmd) + "   # SIGTERM after the first checkpoint\n")
        f.flush()
        proc = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True
        )
        stopped = _wait_for_checkpoint(run_dir, proc, deadline)
        if stopped:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            rc1 = proc.wait(timeout=max(deadline - time.perf_counter(), 1.0))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return {"error": "the interrupted run did not stop in time"}
    if rc1 != 143:
        return {"error": f"the interrupted run exited {rc1}, not 143 (SIGTERM): no checkpoint in time?"}
    resume = [sys.executable, "-m", "contrastkit", "train", "--resume", str(run_dir), "--no-progress"]
    rc2, _ = _run(resume, log, deadline - time.perf_counter())
    if rc2 != 0:
        return {"error": f"the resumed run exited {rc2}"}
    a, b = _read_json(whole / "metrics.json"), _read_json(run_dir / "metrics.json")
    sa = torch.load(whole / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]
    sb = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]
    diffs = [float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].is_floating_point()]
    scale = max(float(sa[k].double().abs().max()) for k in sa if sa[k].is_floating_point())
    return {
        "resumed_at_steps": b.get("resumed_at_steps"),
        "knn_top1_whole": a.get("knn_top1"),
        "knn_top1_resumed": b.get("knn_top1"),
        "final_loss_whole": a.get("final_loss"),
        "final_loss_resumed": b.get("final_loss"),
        "max_abs_weight_diff": max(diffs),
        "max_abs_weight": scale,
        "weights_equal": max(diffs) == 0.0,
        "device": b.get("device"),
        "train_seconds": b.get("train_seconds"),
    }


def run_suite(
    suite: Suite,
    rows: list[Row],
    seeds: list[int],
    out: Path,
    budget: float,
    smoke: bool,
    estimate: float | None,
    linear_probe: bool,
) -> list[dict[str, Any]]:
    """Run every (row, seed) that fits the budget; append each record to ``out/results.jsonl``."""
    out.mkdir(parents=True, exist_ok=True)
    # The device returns at most 8 files from $OUT: the run folders (checkpoints of ~90 MB) stay outside it,
    # and every row's output goes into one log; the records hold what the tables need.
    runs = Path(os.environ.get("SUITE_RUNS", "/tmp/suite-runs")) if not smoke else out / "runs"
    start = time.perf_counter()
    deadline = start + budget
    done: list[tuple[float, float]] = []  # finished rows: (seconds, estimated seconds)

    def expected(row: Row) -> float:
        return estimate or row.estimate_s or suite.estimate_s

    records = []
    meta = {
        "suite": suite.name,
        "issue": suite.issue,
        "device_name": _device_name(),
        "git": _git_commit(),
        "python": platform.python_version(),
        "smoke": smoke,
    }
    try:
        import torch

        meta["torch"] = torch.__version__
    except ImportError:
        pass
    for seed in seeds:  # every row of seed 0 first: a cut-short call still has one full column
        for row in rows:
            left = deadline - time.perf_counter()
            # the row's estimate, scaled by how the finished rows' times compared with theirs
            scale = sum(w for w, _ in done) / sum(e for _, e in done) if done else 1.0
            need = expected(row) * scale
            if not smoke and left < need:
                print(
                    f"[suite] skip {row.name} seed {seed}: {left:.0f} s left, a row takes ~{need:.0f} s",
                    flush=True,
                )
                continue
            run_dir = (
                runs / f"{suite.name}-{row.name}-s{seed}-{time.strftime('%H%M%S')}"
            )  # a rerun: a new folder
            log = out / f"{suite.name}.log"
            start_of_row = log.stat().st_size if log.exists() else 0
            cmd = row_command(suite, row, seed, run_dir, smoke)
            print(f"[suite] {row.name} seed {seed}: {shlex.join(cmd[1:])}", flush=True)
            t0 = time.perf_counter()
            record: dict[str, Any] = {
                **meta,
                "row": row.name,
                "seed": seed,
                "command": shlex.join(cmd[1:]),
                # the row's own flags: the rest of the command (less --seed, --out) is what the rows share,
                # which tables.py compares across rows
                "row_args": shlex.join(_smoke_args(row.args) if smoke else row.args),
            }
            if suite.name == "resume":
                record |= _resume_row(cmd, run_dir, log, deadline)
            else:
                rc, _ = _run(cmd, log, deadline - time.perf_counter())
                record["rc"] = rc
                if rc == 0 and suite.command == "train" and linear_probe:
                    ev = [sys.executable, "-m", "contrastkit", "eval", str(run_dir), "--linear-probe"]
                    record["eval_command"] = shlex.join(ev[1:])
                    record["eval_rc"], _ = _run(ev, log, deadline - time.perf_counter())
                    if record["eval_rc"] != 0:  # the kNN stands; the table names the missing probe
                        record["probe_error"] = (
                            "killed at the budget's end"
                            if record["eval_rc"] == -9
                            else f"exited {record['eval_rc']}"
                        )
                        record["probe_log_tail"] = log.read_text()[start_of_row:][-2000:]
                record |= _train_record(run_dir) if suite.command == "train" else _sela_record(run_dir)
                if rc != 0:
                    record["error"] = "killed at the budget's end" if rc == -9 else f"exited {rc}"
                    record["log_tail"] = log.read_text()[start_of_row:][-2000:]
            record["wall_seconds"] = time.perf_counter() - t0
            if "error" not in record:
                done.append((record["wall_seconds"], expected(row)))
            records.append(record)
            with (out / "results.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
            summary = {
                k: record.get(k)
                for k in (
                    "knn_top1",
                    "linear_top1",
                    "heads_nmi",
                    "images_per_second",
                    "max_abs_weight_diff",
                    "error",
                )
            }
            print(
                f"[suite] {row.name} seed {seed}: {json.dumps(summary)} ({record['wall_seconds']:.0f} s)",
                flush=True,
            )
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("suite", choices=sorted(SUITES))
    p.add_argument("--rows", help="comma-separated row names (default: all); see --list")
    p.add_argument("--seeds", help="comma-separated seeds (default: the suite's)")
    p.add_argument("--budget", type=float, default=540.0, help="seconds this call may take (default 540)")
    p.add_argument(
        "--estimate", type=float, help="seconds every row takes, before one has finished (default: the rows')"
    )
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"), help="results folder (default $OUT)")
    p.add_argument("--smoke", action="store_true", help="digits, CPU, one epoch: check the commands run")
    p.add_argument("--no-linear-probe", action="store_true", help="skip contrastkit eval --linear-probe")
    p.add_argument("--list", action="store_true", help="print the rows' commands and exit")
    a = p.parse_args(argv)
    suite = SUITES[a.suite]
    names = a.rows.split(",") if a.rows else [r.name for r in suite.rows]
    unknown = [n for n in names if n not in {r.name for r in suite.rows}]
    if unknown:
        p.error(
            f"unknown row(s) {', '.join(unknown)} of suite {suite.name}; rows: "
            + ", ".join(r.name for r in suite.rows)
        )
    rows = [r for r in suite.rows if r.name in names]
    seeds = [int(s) for s in a.seeds.split(",")] if a.seeds else list(suite.seeds)
    if a.list:
        for seed in seeds:
            for row in rows:
                print(
                    shlex.join(row_command(suite, row, seed, Path(f"runs/{row.name}-s{seed}"), a.smoke)[1:])
                )
        return 0
    records = run_suite(
        suite,
        rows,
        seeds,
        Path(a.out),
        a.budget,
        a.smoke,
        a.estimate,
        suite.linear_probe and not a.no_linear_probe,
    )
    return 0 if records and all("error" not in r for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
