"""The learner with a momentum key encoder and a queue (MoCo), MoCHi statistics, and checkpoints."""

import copy
import math

import pytest
import torch
from torch import nn

from contrastkit.negatives import (
    HardNegativeMixing,
    InBatchNegatives,
    MomentumEncoder,
    QueueNegatives,
    build_negatives,
)
from contrastkit.objectives import InfoNCE, SupervisedContrastive
from contrastkit.scores import CosineSimilarity
from contrastkit.training.checkpoint import load_checkpoint, save_checkpoint
from contrastkit.training.learner import ContrastiveLearner

B, D = 16, 8


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, D))


def views(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 12, generator=g), torch.randn(B, 12, generator=g)


def moco_learner(negatives, momentum=0.9, shuffle_groups=2, objective=None):
    model = small_model()
    key = MomentumEncoder(model, momentum, shuffle_groups=shuffle_groups)
    learner = ContrastiveLearner(
        model, negatives, CosineSimilarity(), objective or InfoNCE(temperature=0.2), key_encoder=key
    )
    return learner.train(), model, key


def test_queue_key_encoder_step_fills_queue_and_trains():
    learner, model, key = moco_learner(QueueNegatives(size=40), shuffle_groups=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    v1, v2 = views()
    with torch.no_grad():  # the key encoder's keys, on a copy (BN in training mode, batch statistics)
        k = nn.functional.normalize(copy.deepcopy(key.model).train()(torch.cat([v1, v2])), dim=1)
    first = learner(v1, v2)
    assert torch.isfinite(first.loss) and first.loss.item() == 0.0  # empty queue: every negative masked
    q = learner.negatives.queue
    assert int(q.filled) == 2 * B and int(q.ptr) == 2 * B  # both key sets, enqueued once after both losses
    torch.testing.assert_close(q.keys[: 2 * B], torch.cat([k[B:], k[:B]]))  # (q1, k2) then (q2, k1)

    out = learner(*views(2))
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    assert math.isfinite(out.mi_bound.item()) and -1 <= out.neg_score.item() <= 1
    assert int(q.filled) == 40 and int(q.ptr) == (4 * B) % 40  # wrapped around
    before = {n: p.detach().clone() for n, p in key.model.named_parameters()}
    opt.zero_grad()
    out.loss.backward()  # the queue was written after the loss: backward still works
    assert all(p.grad is None for p in key.model.parameters())
    assert model[1].weight.grad is not None and model[1].weight.grad.abs().sum() > 0
    opt.step()
    key.update(model)  # what the trainer does after optimizer.step()
    for name, p in model.named_parameters():
        expected = 0.9 * before[name] + 0.1 * p.detach()
        torch.testing.assert_close(dict(key.model.named_parameters())[name], expected)
    assert not torch.equal(key.model[1].weight, before["1.weight"])


def test_without_key_encoder_the_in_batch_path_is_unchanged():
    model = small_model()
    learner = ContrastiveLearner(model, InBatchNegatives(), CosineSimilarity(), InfoNCE(temperature=0.2))
    out = learner(*views())
    assert torch.isfinite(out.loss) and out.extra == {}
    assert learner.key_encoder is None


def test_mochi_statistics_in_step_output_and_labels_with_supcon():
    src = build_negatives("queue+mochi", queue_size=64, mix_start_step=1)
    src.num_hardest, src.num_mixed, src.num_query_mixed = 8, 8, 2
    learner, _, _ = moco_learner(src, objective=SupervisedContrastive(temperature=0.2))
    labels = torch.arange(B) % 3
    out = learner(*views(), labels)
    assert set(out.extra) >= {"mixing", "proxy_accuracy", "synthetic_share_topk"}
    assert out.extra["mixing"].item() == 0.0  # warm-up: one update before mixing
    out = learner(*views(2), labels)
    assert out.extra["mixing"].item() == 1.0 and 0 <= out.extra["proxy_accuracy"].item() <= 1
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert src.step == 2 and int(src.source.queue.filled) == 4 * B
    assert torch.equal(src.source.queue.labels[: 2 * B], torch.cat([labels, labels]))


def test_checkpoint_round_trip_restores_queue_and_mochi_step(tmp_path):
    src = HardNegativeMixing(QueueNegatives(size=24), num_hardest=4, num_mixed=4, num_query_mixed=1)
    learner, model, key = moco_learner(src)
    for s in range(3):
        learner(*views(s))
    path = save_checkpoint(
        {"model": model.state_dict(), "negatives": src.state_dict(), "key_encoder": key.state_dict()},
        tmp_path / "checkpoint.pt",
    )
    state = load_checkpoint(path)
    fresh = build_negatives("queue+mochi", queue_size=24)
    fresh.load_state_dict(state["negatives"])
    for name in ("keys", "labels", "ptr", "filled"):
        assert torch.equal(getattr(fresh.source.queue, name), getattr(src.source.queue, name)), name
    assert fresh.step == 3 and int(fresh.source.queue.filled) == 24
    key2 = MomentumEncoder(small_model())
    key2.load_state_dict(state["key_encoder"])
    for a, b in zip(key2.parameters(), key.parameters()):
        assert torch.equal(a, b)


def test_needs_labels_error():
    learner, _, _ = moco_learner(QueueNegatives(size=8), objective=SupervisedContrastive())
    with pytest.raises(ValueError, match="labels"):
        learner(*views())
