"""Wall-clock time of the linear probe (:func:`contrastkit.evaluation.linear_probe`) at CIFAR-10 sizes.

For each ``--sizes`` value N it draws N training and N/5 test points of 512-d synthetic features: a
10-class Gaussian mixture, ReLU'd like backbone features, whose classes overlap so the problem is not
separable and L-BFGS has work to do (``--spread`` sets how far apart the class centres are). It runs the
whole probe (standardise, choose the weight decay on a held-out 20% over the default grid, refit on all of
train, score the test split) and prints the time, the L-BFGS iterations, the chosen weight decay and the
top-1. ``--features FILE`` instead probes real features saved with
``torch.save({"train": (N, D), "train_labels": (N,), "test": ..., "test_labels": ...})``.

Examples::

    python benchmarks/linear_probe.py                        # 10k, 25k, 50k points on the best device
    python benchmarks/linear_probe.py --device cpu --sizes 10000 50000 --json out.json
    python benchmarks/linear_probe.py --device cpu --threads 1 --sizes 50000 --spread 0.6
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

try:
    import contrastkit  # noqa: F401
except ModuleNotFoundError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from contrastkit.evaluation import linear_probe


def synthetic(
    n_train: int, n_test: int, dim: int, classes: int, seed: int, spread: float = 0.15
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * spread
    y = torch.randint(0, classes, (n_train + n_test,), generator=g)
    x = (centers[y] + torch.randn(n_train + n_test, dim, generator=g)).relu()
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = torch.device(
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    cases: list[tuple[str, tuple[torch.Tensor, ...]]] = []
    if args.features:
        d = torch.load(args.features, map_location="cpu", weights_only=True)
        cases.append((Path(args.features).name, (d["train"], d["train_labels"], d["test"], d["test_labels"])))
    else:
        for n in args.sizes:
            cases.append(
                (
                    f"synthetic {n}x{args.dim} s={args.spread:g}",
                    synthetic(n, n // 5, args.dim, args.classes, args.seed, args.spread),
                )
            )
    rows = []
    for name, (xtr, ytr, xte, yte) in cases:
        xtr, ytr, xte, yte = (t.to(device) for t in (xtr, ytr, xte, yte))
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = linear_probe(xtr, ytr, xte, yte, seed=args.seed)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        row = {
            "case": name,
            "train": int(xtr.shape[0]),
            "test": int(xte.shape[0]),
            "dim": int(xtr.shape[1]),
            "seconds": seconds,
            "seconds_selection": res.protocol["seconds_selection"],
            "lbfgs_iterations": res.protocol["iterations_grid"] + res.protocol["iterations_final_fit"],
            "grid_size": len(res.grid),
            "weight_decay": res.weight_decay,
            "top1": res.top1,
            "device": str(device),
        }
        rows.append(row)
        print(
            f"{name:>24}  train {row['train']:>6}  {seconds:7.2f} s  ({row['seconds_selection']:.2f} s selecting "
            f"over {row['grid_size']} weight decays, {row['lbfgs_iterations']} L-BFGS iterations)  "
            f"wd={row['weight_decay']:.3g}  top-1 {row['top1']:.4f}",
            flush=True,
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 25_000, 50_000], help="training points")
    p.add_argument("--dim", type=int, default=512, help="feature dimension (default 512, ResNet-18)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument(
        "--spread",
        type=float,
        default=0.15,
        help="scale of the class centres (larger: better separated, smaller chosen weight decay, more iterations)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--features", help="a torch.save'd dict of real features instead of synthetic ones")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"linear probe benchmark: torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} CPU threads"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
    )
    rows = run(args)
    print(json.dumps(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
