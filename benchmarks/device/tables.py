"""Markdown tables from the suites' ``results.jsonl`` lines (``benchmarks/device/suite.py``).

    python3 benchmarks/device/tables.py docs/results/device/*.jsonl

Rows are grouped by suite and row name; seeds are listed and averaged. Smoke records (digits on the CPU)
and failed rows are reported as such, never mixed into a figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any


def load(paths: list[Path]) -> list[dict[str, Any]]:
    """Every record of the given JSON-lines files, in order."""
    records = []
    for path in paths:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError as e:
                    raise SystemExit(f"{path}:{n}: not a JSON line ({e})") from None
    return records


def _fmt(values: list[float], digits: int = 3) -> str:
    """``mean (a, b)`` of the seeds' values, or the single value."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    seeds = ", ".join(f"{v:.{digits}f}" for v in values)
    return f"{statistics.fmean(values):.{digits}f} ({seeds})"


def _num(record: dict[str, Any], key: str, spec: str) -> str:
    """``record[key]`` formatted, or ``-`` when it is missing."""
    v = record.get(key)
    return "-" if v is None else format(float(v), spec)


def _column(group: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r[key]) for r in group if r.get(key) is not None]


def table(records: list[dict[str, Any]], suite: str) -> str:
    """One suite's markdown table (one line per row name, in first-seen order)."""
    latest: dict[tuple[str, Any], dict[str, Any]] = {}  # a row and seed run again: its last record counts
    for r in records:
        if r.get("suite") == suite:
            latest.pop((r["row"], r.get("seed")), None)
            latest[(r["row"], r.get("seed"))] = r
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    failed: list[str] = []
    for r in sorted(latest.values(), key=lambda r: records.index(r)):
        if "error" in r:
            failed.append(f"{r['row']} seed {r.get('seed')}: {r['error']}")
            continue
        groups[r["row"]].append(r)
    lines: list[str] = []
    if suite == "resume":
        lines += [
            "| row | resumed at step | kNN whole / resumed | loss whole / resumed | max abs weight diff |",
            "|---|---|---|---|---|",
        ]
        for name, group in groups.items():
            for r in group:
                lines.append(
                    f"| {name} | {r.get('resumed_at_steps')} | {_num(r, 'knn_top1_whole', '.4f')} / "
                    f"{_num(r, 'knn_top1_resumed', '.4f')} | {_num(r, 'final_loss_whole', '.4f')} / "
                    f"{_num(r, 'final_loss_resumed', '.4f')} | {_num(r, 'max_abs_weight_diff', '.3g')} "
                    f"(of max {_num(r, 'max_abs_weight', '.3g')}) |"
                )
    elif suite == "sela":
        lines += [
            "| row | seeds | heads NMI | heads ARI | kNN | linear | train s |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, group in groups.items():
            lines.append(
                f"| {name} | {len(group)} | {_fmt(_column(group, 'heads_nmi'))} | "
                f"{_fmt(_column(group, 'heads_ari'))} | {_fmt(_column(group, 'knn_top1'))} | "
                f"{_fmt(_column(group, 'linear_top1'))} | {_fmt(_column(group, 'train_seconds'), 0)} |"
            )
    else:
        lines += [
            "| row | seeds | kNN top-1 | linear top-1 | images/s | images/s after the first step | train s |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, group in groups.items():
            lines.append(
                f"| {name} | {len(group)} | {_fmt(_column(group, 'knn_top1'))} | "
                f"{_fmt(_column(group, 'linear_top1'))} | {_fmt(_column(group, 'images_per_second'), 0)} | "
                f"{_fmt(_column(group, 'images_per_second_after_first_step'), 0)} | "
                f"{_fmt(_column(group, 'train_seconds'), 0)} |"
            )
    devices = sorted({str(r.get("device_name")) for g in groups.values() for r in g})
    smoke = any(r.get("smoke") for g in groups.values() for r in g)
    head = f"### {suite}" + (" (SMOKE: digits on the CPU, not a result)" if smoke else "")
    foot = [f"device: {', '.join(devices) or '-'}"] + [f"failed: {f}" for f in failed]
    return "\n".join([head, "", *lines, "", *foot])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", type=Path)
    a = p.parse_args(argv)
    records = load(a.files)
    suites = list(dict.fromkeys(r.get("suite") for r in records if r.get("suite")))
    if not suites:
        print("no records", file=sys.stderr)
        return 1
    print("\n\n".join(table(records, s) for s in suites))
    return 0


if __name__ == "__main__":
    sys.exit(main())
