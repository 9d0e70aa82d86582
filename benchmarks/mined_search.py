"""Milliseconds per search of the mined negatives' index (``MinedNegatives.neighbours``), per index kind.

The setting of one training step with ``--negatives mined``: N_train = 50,000 snapshot embeddings of
dimension D = 128 (random, L2-normalised), M = 1,024 anchors (a batch of 512, both views) each searching
its n = 16 nearest items, its own dataset index excluded. Timed kinds:

- ``torch`` on the CPU, and on CUDA when a GPU is visible (the default kind: exact, on the anchors' device);
- faiss ``flat`` and ``hnsw`` when faiss is importable, through ``neighbours`` (queries copied to the host,
  searched, post-processed vectorised), and ``flat`` with the former per-row Python post-processing
  (``dict.fromkeys`` and list building per row) for comparison.

Each kind: one untimed warm-up search, then the median of ``--repeats`` timed searches
(``torch.cuda.synchronize`` around each on CUDA). Also printed: the index build (refresh) seconds, and the
recall@n of each kind against the exact torch search on the CPU.

Examples::

    OMP_NUM_THREADS=1 python benchmarks/mined_search.py
    python benchmarks/mined_search.py --repeats 20 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

try:
    import contrastkit  # noqa: F401
except ModuleNotFoundError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from contrastkit.negatives.mined import MinedNegatives


def per_row_loop(mined: MinedNegatives, q: torch.Tensor, own: torch.Tensor, n: int) -> torch.Tensor:
    """The former faiss post-processing: one Python pass per row (kept here only to time it)."""
    index = mined._index
    total = index.ntotal
    x = np.ascontiguousarray(q.detach().float().cpu().numpy())
    skip_ids = own.cpu().numpy()
    k = min(n + 1, total)
    while True:
        _, found = index.search(x, k)
        rows = []
        for r, ids in enumerate(found):
            kept = [int(i) for i in dict.fromkeys(ids.tolist()) if i >= 0 and i != skip_ids[r]]
            rows.append(kept[:n])
        if k >= total or all(len(row) == n for row in rows):
            break
        k = min(2 * k, total)
    out = torch.full((x.shape[0], n), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        out[r, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out.to(q.device)


def time_ms(fn: Any, device: torch.device, repeats: int) -> tuple[float, torch.Tensor]:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    result = fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), result


def recall(found: torch.Tensor, truth: torch.Tensor) -> float:
    f, t = found.cpu().tolist(), truth.cpu().tolist()
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(f, t, strict=True)]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=50_000, help="N_train")
    parser.add_argument("--dim", type=int, default=128, help="D")
    parser.add_argument("--queries", type=int, default=1024, help="M, anchors per search")
    parser.add_argument("--negatives", type=int, default=16, help="n, neighbours per anchor")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-faiss", action="store_true", help="time only the torch kind")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    gen = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(args.items, args.dim, generator=gen), dim=-1)
    own = torch.randint(0, args.items, (args.queries,), generator=gen)
    queries = F.normalize(emb[own] + 0.5 * torch.randn(args.queries, args.dim, generator=gen), dim=-1)
    n = args.negatives

    faiss: Any = None
    if not args.no_faiss:
        try:
            import faiss
        except ImportError:
            faiss = None
    print(
        f"N={args.items} D={args.dim} M={args.queries} n={n}; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), faiss {getattr(faiss, '__version__', 'not installed')}, "
        f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )
    if torch.cuda.is_available():
        print(f"CUDA: {torch.cuda.get_device_name()}")

    cases: list[tuple[str, str, torch.device, bool]] = [("torch", "torch", torch.device("cpu"), False)]
    if torch.cuda.is_available():
        cases.append(("torch", "torch", torch.device("cuda"), False))
    if faiss is not None:
        cases += [
            ("flat", "flat", torch.device("cpu"), False),
            ("flat (per-row loop)", "flat", torch.device("cpu"), True),
            ("hnsw", "hnsw", torch.device("cpu"), False),
        ]
    results = []
    truth = None
    built: dict[str, MinedNegatives] = {}
    for label, kind, device, loop in cases:
        mined = built.get(kind) if kind != "torch" else None
        build_s = float("nan")
        if mined is None:
            mined = MinedNegatives(num_negatives=n, index=kind)
            start = time.perf_counter()
            mined.refresh(emb.to(device))
            build_s = time.perf_counter() - start
            if kind != "torch":
                built[kind] = mined
        q, o = queries.to(device), own.to(device)
        if loop:
            ms, found = time_ms(lambda m=mined, q=q, o=o: per_row_loop(m, q, o, n), device, args.repeats)
        else:
            ms, found = time_ms(lambda m=mined, q=q, o=o: m.neighbours(q, o, n), device, args.repeats)
        assert found.shape == (args.queries, n) and not (found.cpu() == own[:, None]).any()
        if truth is None:
            truth = found.cpu()
        row = {
            "kind": label,
            "device": str(device),
            "ms_per_search": round(ms, 2),
            "build_s": None if build_s != build_s else round(build_s, 3),
            "recall_vs_exact": round(recall(found, truth), 4),
        }
        results.append(row)
        build = "" if row["build_s"] is None else f"  (build {row['build_s']:.2f} s)"
        print(
            f"{label:<22} {device!s:<6} {ms:9.2f} ms/search  recall@{n} {row['recall_vs_exact']:.4f}{build}",
            flush=True,
        )
    if args.json:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results})
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
