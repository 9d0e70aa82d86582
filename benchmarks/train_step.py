"""Throughput of one contrastive training step, split into its parts.

Three measurements, each timed with ``time.perf_counter`` over ``--steps`` steps after ``--warmup-steps``
(with ``torch.cuda.synchronize`` around the timed region on CUDA):

(a) compute      model forward + InfoNCE over in-batch negatives + backward + SGD step, on two pre-made
                 float views (the ceiling: no augmentation, no indexing);
(b) augment      SimCLR ``ImageViews`` on ``uint8`` batches resident on the device (two views per image);
(c) full         what ``contrastkit train`` does per step, through its own
                 :class:`~contrastkit.training.step.TrainStep`: index a random batch of the ``uint8`` images
                 on the device -> two views -> learner -> backward -> optimizer (+ scheduler) step.

It then prints ``full / compute``, a small table and one JSON line. The step mirrors
:func:`contrastkit.training.trainer.train`: autocast (bf16 by default on CUDA), channels_last on CUDA,
fused SGD with the default lr/weight decay, the learner (not the augmentation) under ``torch.compile``.

Examples::

    python benchmarks/train_step.py                          # ResNet-18, CIFAR stem, 32 px, batch 512
    python benchmarks/train_step.py --compile --json out.json
    python benchmarks/train_step.py --device cpu --batch-size 32 --steps 3 --warmup-steps 1
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

try:
    import contrastkit  # noqa: F401
except ModuleNotFoundError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from contrastkit.data import channel_stats, load_dataset
from contrastkit.errors import ContrastkitError
from contrastkit.negatives import InBatchNegatives
from contrastkit.objectives import InfoNCE
from contrastkit.scores import CosineSimilarity
from contrastkit.training.checkpoint import check_output_folder, write_atomic
from contrastkit.training.config import TrainConfig
from contrastkit.training.learner import ContrastiveLearner
from contrastkit.training.optim import BASE_LR, WEIGHT_DECAY, build_optimizer, warmup_cosine
from contrastkit.training.step import TrainStep, TwoViews
from contrastkit.training.trainer import build_model
from contrastkit.views import ImageViews

MEASUREMENTS = ("compute", "augment", "full")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="images/s of a contrastive training step: compute ceiling, augmentation, full step",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available, else cpu)"
    )
    p.add_argument("--encoder", default="resnet18", help="resnet18 | resnet50 | small_cnn | mlp")
    p.add_argument("--stem", default="cifar", help="ResNet stem: cifar | imagenet | auto")
    p.add_argument("--image-size", type=int, default=32, help="square image size")
    p.add_argument("--batch-size", type=int, default=512, help="images per step (each gives two views)")
    p.add_argument("--steps", type=int, default=50, help="timed steps per measurement")
    p.add_argument("--warmup-steps", type=int, default=10, help="untimed steps before each measurement")
    p.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=False, help="torch.compile the learner"
    )
    p.add_argument(
        "--compile-views",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also torch.compile ImageViews.render (sampling stays eager), as the trainer does with --compile",
    )
    p.add_argument(
        "--precision", choices=("bf16", "fp32"), default=None, help="default: bf16 on CUDA, fp32 on CPU"
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels_last model and views (default: on for CUDA, off for CPU)",
    )
    p.add_argument(
        "--data", default=None, help="'digits' or an image folder/.zip (default: synthetic random uint8)"
    )
    p.add_argument("--limit", type=int, default=None, help="with --data: at most this many images")
    p.add_argument(
        "--num-images",
        type=int,
        default=50_000,
        help="synthetic data: number of images resident on the device",
    )
    p.add_argument("--channels", type=int, default=3, help="synthetic data: 1 or 3 channels")
    p.add_argument("--temperature", type=float, default=0.2, help="InfoNCE temperature")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip", default="", help="comma-separated measurements to skip: compute,augment,full")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the JSON result to FILE")
    args = p.parse_args(argv)
    for name in ("image_size", "batch_size", "steps", "num_images"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be a positive integer")
    if args.warmup_steps < 0:
        p.error("--warmup-steps must be >= 0")
    if args.channels not in (1, 3):
        p.error(f"--channels must be 1 or 3 (synthetic grey or colour images), got {args.channels}")
    if args.batch_size < 2:
        p.error(
            "--batch-size must be at least 2: with one image a step has no in-batch negatives and its loss is 0"
        )
    skipped = {s for s in args.skip.split(",") if s}
    unknown = skipped - set(MEASUREMENTS)
    if unknown:
        p.error(f"--skip: unknown measurement(s) {', '.join(sorted(unknown))}")
    if skipped >= set(MEASUREMENTS):
        p.error(
            f"--skip {args.skip}: that skips every measurement; keep at least one of {', '.join(MEASUREMENTS)}"
        )
    if args.json:  # before the run: a result that cannot be written would be lost
        json_path = Path(args.json)
        if json_path.is_dir():
            p.error(f"--json {args.json!r} is a folder; give a file name")
        try:
            check_output_folder(json_path)
        except ContrastkitError as exc:
            p.error(f"--json: {exc}")
    return args


def resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"--device {name}: no CUDA device is available; use --device cpu")
    return torch.device(name)


def load_images(args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, str, tuple, tuple]:
    """The uint8 (N, C, H, W) training images on ``device``, a description, and per-channel mean/std."""
    if args.data is None:
        gen = torch.Generator().manual_seed(args.seed)
        shape = (args.num_images, args.channels, args.image_size, args.image_size)
        images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
        mean = (0.5,) * args.channels
        std = (0.29,) * args.channels  # std of U{0..255}/255
        return images.to(device), f"synthetic uint8 ({args.num_images} images)", mean, std
    splits = load_dataset(args.data, image_size=args.image_size, limit=args.limit, seed=args.seed)
    train = splits.train
    _, h, w = train.image_shape
    if h != w:
        sys.exit(f"images are {h}x{w}; pass --image-size to make them square")
    mean, std = channel_stats(train)
    return train.images.to(device), f"{splits.name} ({len(train)} train images)", tuple(mean), tuple(std)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], Any], steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """(seconds for ``steps`` calls after ``warmup`` calls, seconds of the warm-up)."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    t1 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return time.perf_counter() - t1, t1 - t0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; bad input (an encoder, channel count or temperature contrastkit refuses, data that
    cannot be read, a --json file that cannot be written) prints ``train_step: error: ...`` and returns 2."""
    args = parse_args(argv)
    try:
        return _run(args)
    except ContrastkitError as exc:
        print(f"train_step: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    on_cuda = device.type == "cuda"
    precision = args.precision or ("bf16" if on_cuda else "fp32")
    use_bf16 = precision == "bf16"
    amp_dtype = torch.bfloat16 if use_bf16 else torch.float32
    channels_last = on_cuda if args.channels_last is None else args.channels_last
    skip = {s for s in args.skip.split(",") if s}
    torch.manual_seed(args.seed)

    images, data_desc, mean, std = load_images(args, device)
    n, c, h, _ = images.shape
    bs = args.batch_size

    config = TrainConfig(
        encoder=args.encoder,
        stem=args.stem,
        image_size=args.image_size,
        batch_size=bs,
        temperature=args.temperature,
        compile=args.compile,
        progress=False,
    )
    model = build_model(config, c, h).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    learner = ContrastiveLearner(
        model, InBatchNegatives(), CosineSimilarity(), InfoNCE(temperature=args.temperature)
    ).to(device)
    learner.train()
    step_fn = torch.compile(learner) if args.compile else learner
    optimizer = build_optimizer(
        "sgd", learner, lr=BASE_LR["sgd"] * bs / 256, weight_decay=WEIGHT_DECAY["sgd"], momentum=0.9
    )
    total = 2 * (args.warmup_steps + args.steps) + 1
    scheduler = warmup_cosine(optimizer, warmup_steps=max(1, total // 10), total_steps=total)

    # SimCLR defaults (trainer.build_views for >= 32 px, flip 0.5)
    views = ImageViews(
        size=h,
        scale=(0.08, 1.0),
        flip_p=0.5,
        brightness=0.4,
        contrast=0.4,
        saturation=0.4,
        hue=0.1,
        jitter_p=0.8,
        grayscale_p=0.2,
        mean=mean,
        std=std,
    ).to(device)
    render = torch.compile(views.render) if args.compile_views else views.render
    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed + 1)

    make_views = TwoViews(views, views, gen, render, render, channels_last)  # the trainer's two views

    def autocast() -> torch.autocast:
        return torch.autocast(device.type, dtype=amp_dtype, enabled=use_bf16)

    losses: list[torch.Tensor] = []

    def train_on(v1: torch.Tensor, v2: torch.Tensor, idx: torch.Tensor) -> None:
        with autocast():
            result = step_fn(v1, v2, None, indices=idx)  # as the full step calls it: one trace, not two
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(result.loss.detach())
        if len(losses) > 64:
            del losses[:-1]

    def random_indices() -> torch.Tensor:
        return torch.randint(0, n, (bs,), device=device, generator=gen)

    # (a) compute only: fixed pre-made float views, made exactly as the full step makes them (in float32,
    # outside autocast)
    fixed_idx = random_indices()
    pre1, pre2 = make_views(images[fixed_idx])

    def compute_step() -> None:
        train_on(pre1, pre2, fixed_idx)

    # (b) augmentation only: index a batch, make two views
    def augment_step() -> None:
        make_views(images[random_indices()])

    # (c) the full step: the trainer's own TrainStep (contrastkit.training.step), fed as its loop feeds it
    train_step = TrainStep(
        learner=learner,
        forward=step_fn,
        model=model,
        key_encoder=None,
        optimizer=optimizer,
        scheduler=scheduler,
        views=make_views,
        labels=torch.zeros(n, dtype=torch.long, device=device),
        device=device,
        amp_dtype=amp_dtype if use_bf16 else None,
        skip_nonfinite=False,
        last_good=lambda: "",
    )
    step_number = [0]

    def full_step() -> None:
        idx = torch.randint(0, n, (bs,), device=device, generator=gen)
        step_number[0] += 1
        stats, _ = train_step(idx, images[idx], step_number[0])
        losses.append(stats["loss"])
        if len(losses) > 64:
            del losses[:-1]

    device_name = torch.cuda.get_device_name(device) if on_cuda else (platform.processor() or "cpu")
    print(
        f"train_step benchmark: {device_name} ({device}), torch {torch.__version__}\n"
        f"  encoder={args.encoder} stem={args.stem} {c}x{h}x{h}, batch {bs} (x2 views), precision={precision}, "
        f"channels_last={channels_last}, compile={args.compile}, compile_views={args.compile_views}\n"
        f"  data: {data_desc}; {args.warmup_steps} warm-up + {args.steps} timed steps per measurement",
        flush=True,
    )

    results: dict[str, dict[str, float]] = {}
    for name, fn in (("compute", compute_step), ("augment", augment_step), ("full", full_step)):
        if name in skip:
            continue
        if on_cuda:
            torch.cuda.reset_peak_memory_stats(device)
        seconds, warm_seconds = timed(fn, args.steps, args.warmup_steps, device)
        ips = args.steps * bs / seconds
        results[name] = {
            "images_per_s": ips,
            "views_per_s": 2 * ips,
            "ms_per_step": 1000 * seconds / args.steps,
            "seconds": seconds,
            "warmup_seconds": warm_seconds,
        }
        if on_cuda:
            results[name]["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        print(f"  {name:8s} {ips:12.0f} images/s  ({1000 * seconds / args.steps:.2f} ms/step)", flush=True)

    final_loss = float(losses[-1].float().item()) if losses else float("nan")
    ratio = (
        results["full"]["images_per_s"] / results["compute"]["images_per_s"]
        if "full" in results and "compute" in results
        else float("nan")
    )

    rows = [
        ("(a) compute: fwd+bwd+SGD on pre-made views", "compute"),
        ("(b) augment: two SimCLR views (uint8 on device)", "augment"),
        ("(c) full step: index -> views -> learner -> SGD", "full"),
    ]
    print()
    print(f"{'measurement':50s} {'images/s':>10s} {'views/s':>10s} {'ms/step':>9s}")
    for label, key in rows:
        if key in results:
            r = results[key]
            print(f"{label:50s} {r['images_per_s']:10.0f} {r['views_per_s']:10.0f} {r['ms_per_step']:9.2f}")
    print(f"{'full / compute':50s} {ratio:10.3f}")
    if not math.isfinite(final_loss):
        print(f"warning: the last loss is {final_loss}", file=sys.stderr)

    record = {
        "benchmark": "train_step",
        "device": str(device),
        "device_name": device_name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "encoder": args.encoder,
        "stem": args.stem,
        "image_size": h,
        "channels": c,
        "batch_size": bs,
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "precision": precision,
        "channels_last": channels_last,
        "compile": args.compile,
        "compile_views": args.compile_views,
        "data": data_desc,
        "cpu_threads": torch.get_num_threads(),
        "results": results,
        "full_over_compute": ratio,
        "final_loss": final_loss,
    }
    line = json.dumps(record)
    print(line)
    if args.json:
        write_atomic(args.json, lambda f: f.write(line + "\n"), binary=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
