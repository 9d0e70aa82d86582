"""Two CPU processes (gloo) with GatherNegatives reproduce one process over the union of their batches."""

import os
import subprocess
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from contrastkit.negatives import InBatchNegatives, QueueNegatives, score_candidates
from contrastkit.negatives.distributed import (
    GatherNegatives,
    all_gather_no_grad,
    all_gather_objects,
    broadcast_object,
    gather_with_grad,
    global_mean_weight,
    rank,
    world_size,
)
from contrastkit.objectives import InfoNCE
from contrastkit.scores import CosineSimilarity

WORLD = 2
BATCH = 6  # global batch, split 3 + 3 (and 2 + 4 for the unequal case)
UNEQUAL = (2, 4)


def make_model() -> nn.Module:
    torch.manual_seed(0)  # identical initialisation on every rank
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 4))


def make_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 5, generator=g), torch.randn(BATCH, 5, generator=g), torch.arange(BATCH) % 4


def step_loss(model: nn.Module, source, x1: torch.Tensor, x2: torch.Tensor, labels=None) -> torch.Tensor:
    """The learner's spine: encode both views, prepare, candidates, score, InfoNCE."""
    score = CosineSimilarity()
    b = x1.shape[0]
    z = score.prepare(model(torch.cat([x1, x2])))
    candidates = source(z[:b], z[b:], labels)
    contrast = score_candidates(candidates, score, oracle=labels is not None)
    return InfoNCE(temperature=0.3)(contrast.pos, contrast.neg, contrast.neg_mask)


def grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


def worker(r: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=r, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    try:
        x1, x2, labels = make_data()
        out: dict[str, object] = {"rank": rank(), "world": world_size()}

        # 1. equal halves, DDP averages the gradients
        half = slice(r * BATCH // WORLD, (r + 1) * BATCH // WORLD)
        model = DistributedDataParallel(make_model())
        loss = step_loss(model, GatherNegatives(), x1[half], x2[half])
        loss.backward()
        global_loss = loss.detach().clone()
        dist.all_reduce(global_loss)
        out["ddp_loss"] = global_loss / WORLD
        out["ddp_grads"] = grads(model.module)

        # 2. unequal parts with labels (oracle mask), gradients all-reduced by hand
        start = sum(UNEQUAL[:r])
        part = slice(start, start + UNEQUAL[r])
        model = make_model()
        loss = step_loss(model, GatherNegatives(), x1[part], x2[part], labels[part])
        (loss * global_mean_weight(UNEQUAL[r])).backward()
        for p in model.parameters():
            dist.all_reduce(p.grad)
            p.grad /= WORLD
        local_loss = loss.detach() * UNEQUAL[r] / BATCH
        dist.all_reduce(local_loss)
        out["unequal_loss"] = local_loss
        out["unequal_grads"] = grads(model)

        # 3. the raw gather: values, and a backward that sums every rank's gradient for these rows
        x = torch.full((UNEQUAL[r], 2), float(r), requires_grad=True)
        gathered = gather_with_grad(x)
        weights = torch.arange(BATCH * 2, dtype=torch.float32).reshape(BATCH, 2) * (r + 1)
        (gathered * weights).sum().backward()
        out["gathered"] = gathered.detach()
        out["gather_grad"] = x.grad
        out["labels"] = all_gather_no_grad(torch.tensor([r] * UNEQUAL[r]))

        # 4. a queue fed each rank's own keys holds every rank's keys, in rank order, on every rank (MoCo)
        queue = QueueNegatives(size=8)
        keys = torch.full((UNEQUAL[r], 3), float(r + 1))
        queue.update(keys, keys, torch.full((UNEQUAL[r],), r))
        out["queue"] = (queue.queue.keys.clone(), queue.queue.labels.clone(), int(queue.queue.filled))

        # 5. small Python values: rank 0's broadcast, everyone's gathered
        out["broadcast"] = broadcast_object({"from": r})
        out["objects"] = all_gather_objects(f"rank {r}")
        torch.save(out, os.path.join(out_dir, f"rank{r}.pt"))
        dist.barrier()  # no rank tears gloo down while the other still talks to it (an abort otherwise)
    finally:
        dist.destroy_process_group()


def test_helpers_without_process_group():
    assert rank() == 0 and world_size() == 1
    z1, z2 = torch.randn(4, 3), torch.randn(4, 3)
    labels = torch.tensor([0, 1, 0, 1])
    assert gather_with_grad(z1) is z1
    a, b = GatherNegatives()(z1, z2, labels), InBatchNegatives()(z1, z2, labels)
    for field in ("anchors", "positives", "negatives", "neg_mask", "anchor_labels", "negative_labels"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


# Each rank is a fresh interpreter that loads this file by path and runs ``worker`` (like
# torch.multiprocessing.spawn, but without pickling a function of a test module that the child could not
# import by name under pytest's importlib mode).
LAUNCH = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("contrastkit_test_distributed_worker", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module.worker(int(sys.argv[2]), sys.argv[3], sys.argv[4])
"""


def launch(tmp_path) -> None:
    init = str(tmp_path / "rendezvous")  # file:// rendezvous, no network port
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", LAUNCH, __file__, str(r), init, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(WORLD)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=120)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"rank {r} failed:\n{log}"


def test_two_processes_equal_one_process_over_the_union(tmp_path):
    launch(tmp_path)
    outs = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert [o["rank"] for o in outs] == [0, 1] and all(o["world"] == WORLD for o in outs)

    x1, x2, labels = make_data()
    model = make_model()
    loss = step_loss(model, InBatchNegatives(), x1, x2)
    loss.backward()
    reference = grads(model)
    model = make_model()
    oracle_loss = step_loss(model, InBatchNegatives(), x1, x2, labels)
    oracle_loss.backward()
    oracle_reference = grads(model)

    for o in outs:
        torch.testing.assert_close(o["ddp_loss"], loss.detach(), atol=1e-5, rtol=1e-5)
        for g, ref in zip(o["ddp_grads"], reference, strict=True):
            torch.testing.assert_close(g, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(o["unequal_loss"], oracle_loss.detach(), atol=1e-5, rtol=1e-5)
        for g, ref in zip(o["unequal_grads"], oracle_reference, strict=True):
            torch.testing.assert_close(g, ref, atol=1e-5, rtol=1e-5)
        expected_rows = torch.tensor([0.0] * UNEQUAL[0] + [1.0] * UNEQUAL[1]).unsqueeze(1).expand(BATCH, 2)
        assert torch.equal(o["gathered"], expected_rows)
        assert o["labels"].tolist() == [0] * UNEQUAL[0] + [1] * UNEQUAL[1]

    # d/dx_r of Σ_s (gathered · weights_s) = (1 + 2) * base weights at rank r's rows
    base = torch.arange(BATCH * 2, dtype=torch.float32).reshape(BATCH, 2)
    assert torch.equal(outs[0]["gather_grad"], 3 * base[: UNEQUAL[0]])
    assert torch.equal(outs[1]["gather_grad"], 3 * base[UNEQUAL[0] :])

    filled = sum(UNEQUAL)
    expected_keys = torch.cat([torch.full((n, 3), float(r + 1)) for r, n in enumerate(UNEQUAL)])
    for o in outs:
        keys, labels, n = o["queue"]
        assert n == filled and torch.equal(keys[:filled], expected_keys) and not keys[filled:].any()
        assert labels.tolist() == [0] * UNEQUAL[0] + [1] * UNEQUAL[1] + [-1] * (8 - filled)
        assert o["broadcast"] == {"from": 0} and o["objects"] == ["rank 0", "rank 1"]
