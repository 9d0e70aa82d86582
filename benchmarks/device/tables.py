"""Markdown tables from the suites' ``results.jsonl`` lines (``benchmarks/device/suite.py``).

    python3 benchmarks/device/tables.py docs/results/device/*.jsonl
    python3 benchmarks/device/tables.py --with-smoke /tmp/out/results.jsonl   # also the smoke tables

What may be averaged: the seeds of one row run with the same settings. A table line is one row name *and*
one set of settings: the row's command (less ``--seed`` and ``--out``), the epochs, the device and torch's
version. Records of the same row that differ in any of these are separate lines, each named with what
differs (``in-batch (epochs 50)``), never one mean. Across rows, the settings the rows share (the common
flags, epochs, device, torch) get a letter in the ``settings`` column, explained under the table; lines
with different letters are not comparable, and the table says so. The git commit does not split a line:
a plan's calls run in different device sessions, hence at different commits; the table names every
commit of its records, per line when there are several, so ``git diff A B -- src`` can show whether the
computation changed between them.

Smoke records (``--smoke``: digits on the CPU, one epoch) are never in the same table as real ones: a suite
with real records shows only those (and says how many smoke records it left out; ``--with-smoke`` adds
them as a separate SMOKE table); a suite with only smoke records shows a table headed SMOKE. Failed rows are
listed under the table, never in a figure. A row and seed run again with the same settings: its last record
counts.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import string
import sys
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


def _references(group: list[dict[str, Any]]) -> str:
    """The SeLa rows' reference encoders (random init, raw pixels): kNN / k-means NMI, seeds averaged."""
    names = sorted({k for r in group for k in (r.get("references") or {})})
    parts = []
    for name in names:
        refs = [r["references"][name] for r in group if name in (r.get("references") or {})]
        knn, nmi = _column(refs, "knn_top1"), _column(refs, "kmeans_nmi")
        knn_s = f"{statistics.fmean(knn):.3f}" if knn else "-"
        nmi_s = f"{statistics.fmean(nmi):.3f}" if nmi else "-"
        parts.append(f"{name.replace('_', ' ')} {knn_s} / {nmi_s}")
    return "; ".join(parts) or "-"


def _flags(record: dict[str, Any]) -> tuple[str, ...]:
    """The record's command less ``--seed N`` and ``--out DIR`` (what a rerun of another seed shares)."""
    tokens = shlex.split(record.get("command") or "")
    out: list[str] = []
    skip = False
    for t in tokens:
        if skip:
            skip = False
        elif t in ("--seed", "--out"):
            skip = True
        else:
            out.append(t)
    return tuple(out)


def _epochs(record: dict[str, Any]) -> Any:
    """The epochs: the command's ``--epochs`` (also there for a failed row), else ``metrics.json``'s."""
    flags = _flags(record)
    value = flags[flags.index("--epochs") + 1] if "--epochs" in flags[:-1] else record.get("epochs")
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def _common(record: dict[str, Any]) -> str | None:
    """The flags every row of the call shared: the command less the row's own (``row_args``), ``--seed``
    and ``--out``; ``None`` for a record that does not say which flags were the row's."""
    if "row_args" not in record:
        return None
    flags, own = _flags(record), tuple(shlex.split(record["row_args"]))
    if own and flags[-len(own) :] != own:
        return None
    return shlex.join(flags[: len(flags) - len(own)])


_LINE_FIELDS = ("flags", "epochs", "device", "torch")


def _run_settings(record: dict[str, Any]) -> tuple[Any, ...]:
    """Epochs, device and torch: what both keys below hold besides flags (not the commit: see the top)."""
    return (_epochs(record), record.get("device_name"), record.get("torch"))


def _line_key(record: dict[str, Any]) -> tuple[Any, ...]:
    """What records must share to be averaged as seeds of one line (order: :data:`_LINE_FIELDS`)."""
    return (_flags(record), *_run_settings(record))


def _settings_key(record: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two rows' lines comparable: the shared flags, epochs, device and torch."""
    return (_common(record), *_run_settings(record))


def _describe_settings(key: tuple[Any, ...]) -> str:
    common, epochs, device, torch = key
    flags = "unknown (the records do not name the row's own flags)" if common is None else f"`{common}`"
    return f"{epochs if epochs is not None else '?'} epochs, {device or '?'}, torch {torch or '?'}; common flags {flags}"


def _items(flags: tuple[str, ...]) -> list[str]:
    """``--option value`` items of a flag list (``-m contrastkit train`` and bare flags are items too)."""
    items: list[str] = []
    for t in flags:
        if t.startswith("-") or not items:
            items.append(t)
        else:
            items[-1] += " " + t
    return items


def _line_names(lines: list[tuple[str, tuple[Any, ...]]]) -> dict[tuple[str, tuple[Any, ...]], str]:
    """Each line's label: the row name, plus what sets it apart where one row name has several lines."""
    names: dict[tuple[str, tuple[Any, ...]], str] = {}
    for row, key in lines:
        siblings = [k for r, k in lines if r == row]
        if len(siblings) == 1:
            names[(row, key)] = row
            continue
        parts = []
        for i, field in enumerate(_LINE_FIELDS):
            if len({s[i] for s in siblings}) <= 1:
                continue
            if field == "flags":  # what this line's flags have that another line's lack (epochs: below)
                mine = {t for t in _items(key[0]) if not t.startswith("--epochs ")}
                others = [{t for t in _items(s[0]) if not t.startswith("--epochs ")} for s in siblings]
                own = [t for t in _items(key[0]) if t in mine and any(t not in o for o in others)]
                if own:
                    parts.append(f"flags {' '.join(own)}")
                elif any(o != mine for o in others):
                    parts.append("fewer flags")
            else:
                parts.append(f"{field} {key[i]}")
        names[(row, key)] = f"{row} ({', '.join(parts) or 'other flags'})"
    return names


def _latest(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last record of each (row, seed, settings), in the order those last records came."""
    latest: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in records:
        key = (r["row"], r.get("seed"), _line_key(r))
        latest.pop(key, None)
        latest[key] = r
    return list(latest.values())


def _failure(r: dict[str, Any]) -> str:
    text = f"{r['row']} seed {r.get('seed')}: {r['error']}"
    last = r.get("history_last")
    if last:
        text += f" (last logged: step {last.get('step')}, epoch {last.get('epoch')}, {last.get('seconds', 0):.0f} s)"
    return text


def table(records: list[dict[str, Any]], suite: str, smoke: bool | None = None) -> str:
    """One suite's markdown table: one line per row name and settings, in first-seen order.

    ``smoke``: ``True`` or ``False`` takes only the smoke or only the real records; ``None`` (the default)
    takes the real ones when there are any, else the smoke ones."""
    mine = [r for r in records if r.get("suite") == suite]
    real = [r for r in mine if not r.get("smoke")]
    if smoke is None:
        smoke = not real
    chosen = [r for r in mine if bool(r.get("smoke")) == smoke]
    left_out = len(mine) - len(chosen)
    groups: dict[tuple[str, tuple[Any, ...]], list[dict[str, Any]]] = {}
    failed: list[str] = []
    for r in _latest(chosen):
        if "error" in r:
            failed.append(_failure(r))
            continue
        groups.setdefault((r["row"], _line_key(r)), []).append(r)
    names = _line_names(list(groups))
    settings = list(dict.fromkeys(_settings_key(g[0]) for g in groups.values()))
    letters = {
        k: string.ascii_uppercase[i % 26] + ("" if i < 26 else str(i // 26)) for i, k in enumerate(settings)
    }
    several = len(settings) > 1

    def tail(group: list[dict[str, Any]]) -> str:
        return f" {letters[_settings_key(group[0])]} |" if several else ""

    lines: list[str] = []
    extra_head = " settings |" if several else ""
    extra_rule = "---|" if several else ""
    if suite == "resume":
        lines += [
            "| row | resumed at step | kNN whole / resumed | loss whole / resumed | max abs weight diff |"
            + extra_head,
            "|---|---|---|---|---|" + extra_rule,
        ]
        for line, group in groups.items():
            for r in group:
                lines.append(
                    f"| {names[line]} | {r.get('resumed_at_steps')} | {_num(r, 'knn_top1_whole', '.4f')} / "
                    f"{_num(r, 'knn_top1_resumed', '.4f')} | {_num(r, 'final_loss_whole', '.4f')} / "
                    f"{_num(r, 'final_loss_resumed', '.4f')} | {_num(r, 'max_abs_weight_diff', '.3g')} "
                    f"(of max {_num(r, 'max_abs_weight', '.3g')}) |" + tail(group)
                )
    elif suite == "sela":
        lines += [
            "| row | seeds | heads NMI | heads ARI | k-means NMI | kNN | linear | references: kNN / k-means NMI |"
            " train s |" + extra_head,
            "|---|---|---|---|---|---|---|---|---|" + extra_rule,
        ]
        for line, group in groups.items():
            lines.append(
                f"| {names[line]} | {len(group)} | {_fmt(_column(group, 'heads_nmi'))} | "
                f"{_fmt(_column(group, 'heads_ari'))} | {_fmt(_column(group, 'kmeans_nmi'))} | "
                f"{_fmt(_column(group, 'knn_top1'))} | {_fmt(_column(group, 'linear_top1'))} | "
                f"{_references(group)} | {_fmt(_column(group, 'train_seconds'), 0)} |" + tail(group)
            )
    else:
        everything = [r for g in groups.values() for r in g]
        mined = any(r.get("mined_index_refresh_seconds") is not None for r in everything)
        reencoded = any(r.get("mined_reencoded_mean") is not None for r in everything)
        probed = any(r.get("linear_probe_seconds") is not None for r in everything)
        head = "| row | seeds | kNN top-1 | linear top-1 | images/s ¹ | images/s after the first step ¹ | train s |"
        rule = "|---|---|---|---|---|---|---|"
        if mined:
            head += " index refresh s ² |"
            rule += "---|"
        if reencoded:
            head += " re-encoded items a step ² |"
            rule += "---|"
        if probed:
            head += " linear probe s |"
            rule += "---|"
        lines += [head + extra_head, rule + extra_rule]
        for line, group in groups.items():
            text = (
                f"| {names[line]} | {len(group)} | {_fmt(_column(group, 'knn_top1'))} | "
                f"{_fmt(_column(group, 'linear_top1'))} | {_fmt(_column(group, 'images_per_second'), 0)} | "
                f"{_fmt(_column(group, 'images_per_second_after_first_step'), 0)} | "
                f"{_fmt(_column(group, 'train_seconds'), 0)} |"
            )
            if mined:
                text += f" {_fmt(_column(group, 'mined_index_refresh_seconds'), 1)} |"
            if reencoded:
                text += f" {_fmt(_column(group, 'mined_reencoded_mean'), 0)} |"
            if probed:
                text += f" {_fmt(_column(group, 'linear_probe_seconds'), 1)} |"
            lines.append(text + tail(group))
        lines += [
            "",
            "¹ training images a second: steps × batch / train s. Only the training batch's images are counted;"
            " the time also holds a mined row's index refreshes and, with `--mined-reencode`, the extra forward"
            " and backward of the re-encoded mined items.",
        ]
        if mined or reencoded:
            lines.append("")
            lines.append(
                "² mined rows: `mined_index_refresh_seconds` (re-embedding the training set and rebuilding the"
                " index, summed over the run; part of train s) and the mean distinct mined items re-encoded a"
                " step (`--mined-reencode`)."
            )
    head = f"### {suite}" + (" (SMOKE: digits on the CPU, one epoch; not a result)" if smoke else "")
    foot: list[str] = []
    if several:
        foot.append(
            "**Not all lines are comparable**: their settings differ (the settings column); compare lines of"
            " one letter only."
        )
        foot += [f"settings {letters[k]}: {_describe_settings(k)}" for k in settings]
    elif settings:
        foot.append(f"settings (every line): {_describe_settings(settings[0])}")
    commits = list(dict.fromkeys(str(r.get("git") or "?") for g in groups.values() for r in g))
    if len(commits) > 1:
        per_line = "; ".join(
            f"{names[line]}: {', '.join(dict.fromkeys(str(r.get('git') or '?') for r in g))}"
            for line, g in groups.items()
        )
        foot.append(
            f"records from {len(commits)} commits ({', '.join(commits)}); by line: {per_line}. "
            f"`git diff {commits[0]} {commits[-1]} -- src` shows whether the computation changed"
        )
    elif commits:
        foot.append(f"commit (every record): {commits[0]}")
    if left_out:
        kind = "real" if smoke else "smoke"
        foot.append(f"{left_out} {kind} record(s) of this suite left out (never mixed with these)")
    foot += [f"failed: {f}" for f in failed]
    foot += [
        f"linear probe failed: {r['row']} seed {r.get('seed')}: {r['probe_error']} (its kNN stands)"
        for g in groups.values()
        for r in g
        if r.get("probe_error")
    ]
    # the notes under the table: one paragraph each (consecutive markdown lines would run into one)
    return "\n".join([head, "", *lines, "", "\n\n".join(foot)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument(
        "--with-smoke", action="store_true", help="also a separate SMOKE table where a suite has real records"
    )
    a = p.parse_args(argv)
    records = load(a.files)
    suites = list(dict.fromkeys(r.get("suite") for r in records if r.get("suite")))
    if not suites:
        print("no records", file=sys.stderr)
        return 1
    out = []
    for s in suites:
        out.append(table(records, s))
        mine = [r for r in records if r.get("suite") == s]
        if a.with_smoke and any(r.get("smoke") for r in mine) and any(not r.get("smoke") for r in mine):
            out.append(table(records, s, smoke=True))
    print("\n\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
