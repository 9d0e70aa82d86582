"""The learner with a momentum key encoder and a queue (MoCo), MoCHi statistics, and checkpoints."""

import contextlib
import copy
import math

import pytest
import torch
from torch import nn

from contrastkit.errors import ConfigError
from contrastkit.negatives import (
    HardNegativeMixing,
    InBatchNegatives,
    MomentumEncoder,
    QueueNegatives,
    build_negatives,
)
from contrastkit.objectives import InfoNCE, SupervisedContrastive
from contrastkit.scores import CosineSimilarity, DotProduct
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


# --- eval mode leaves the negative source alone (QA finding 5) -----------------------------------------


def mined_learner():
    from contrastkit.negatives import MinedNegatives

    model = small_model()
    items = torch.nn.functional.normalize(
        torch.randn(50, D, generator=torch.Generator().manual_seed(3)), dim=1
    )
    mined = MinedNegatives(lambda: items, num_negatives=4, refresh_every=100)
    return ContrastiveLearner(model, mined, CosineSimilarity(), InfoNCE(temperature=0.2)).train(), mined


def source_state(learner):
    src = learner.negatives
    if isinstance(src, HardNegativeMixing):
        return (src.step, int(src.source.queue.filled), src.source.queue.keys.clone())
    if isinstance(src, QueueNegatives):
        return (int(src.queue.filled), int(src.queue.ptr), src.queue.keys.clone())
    return (src.step, src.steps_since_refresh)


def same_state(a, b):
    return all(
        torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("kind", ["queue", "queue+mochi", "mined"])
@pytest.mark.parametrize("no_grad", [True, False])
def test_eval_mode_forward_does_not_update_the_negative_source(kind, no_grad):
    if kind == "mined":
        learner, _ = mined_learner()
    else:
        src = build_negatives(kind, queue_size=40, mix_start_step=1)
        learner, _, _ = moco_learner(src)
    idx = torch.arange(B)
    learner(*views(1), indices=idx)  # one training step: the state moves
    trained = source_state(learner)
    learner.eval()
    with torch.no_grad() if no_grad else contextlib.nullcontext():
        out = learner(*views(2), indices=idx)  # a validation loss
    assert torch.isfinite(out.loss)
    assert same_state(source_state(learner), trained)  # no validation keys enqueued, no step counted
    learner.train()
    learner(*views(3), indices=idx)
    assert not same_state(source_state(learner), trained)  # training mode updates again


def test_repeated_validation_losses_are_equal():
    learner, _, _ = moco_learner(QueueNegatives(size=40))
    learner(*views(1))
    learner.eval()
    with torch.no_grad():
        first = learner(*views(2)).loss
        second = learner(*views(2)).loss  # the same: the first did not enqueue its keys
    assert torch.equal(first, second)


def test_train_mode_under_no_grad_still_updates():
    """Only the mode counts (documented): torch.no_grad() in training mode, e.g. to prime a queue, updates."""
    learner, _, _ = moco_learner(QueueNegatives(size=40))
    with torch.no_grad():
        learner(*views(1))
    assert int(learner.negatives.queue.filled) == 2 * B


def test_the_learner_makes_no_copy_of_the_queue_beside_the_queues_snapshot():
    """The queue hands out a snapshot of its keys (finding 10); the learner no longer clones them again:
    one K x D copy per loss (two with a key encoder), as before the fix."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountClones(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.clone.default and tuple(args[0].shape) == (40, D):
                CountClones.n += 1
            return func(*args, **(kwargs or {}))

    learner, _, _ = moco_learner(QueueNegatives(size=40))
    learner(*views(1))
    with CountClones():
        out = learner(*views(2))
    out.loss.backward()
    assert CountClones.n == 2


# --- shapes of labels and indices, oracle with a supervised objective (QA finding 11) ---------------------


def in_batch_learner(objective=None, oracle=False):
    return ContrastiveLearner(
        small_model(), InBatchNegatives(), CosineSimilarity(), objective or SupervisedContrastive(0.2),
        oracle=oracle,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (
            torch.arange(B - 1),
            rf"labels must have shape \({B},\), one per image of the batch of {B}, got \({B - 1},\)$",
        ),
        (torch.arange(2 * B), rf"labels must have shape \({B},\).*got \({2 * B},\)$"),
        (torch.arange(B)[:, None], rf"labels must have shape \({B},\).*got \({B}, 1\); flatten them"),
        (torch.tensor(3), rf"labels must have shape \({B},\).*got \(\)"),
    ],
)
def test_labels_of_the_wrong_shape_are_a_clear_error(labels, match):
    """A wrong length used to fail deep in a broadcast (RuntimeError), (B, 1) labels with a misleading
    ``pos_mask (12, 12, 12)`` ShapeError."""
    from contrastkit.objectives import ShapeError

    for learner in (in_batch_learner(), in_batch_learner(InfoNCE(0.2), oracle=True)):
        with pytest.raises(ShapeError, match=match):
            learner(*views(), labels)
    moco, _, _ = moco_learner(QueueNegatives(size=8), objective=SupervisedContrastive())
    with pytest.raises(ShapeError, match=match):
        moco(*views(), labels)
    assert int(moco.negatives.queue.filled) == 0  # refused before anything was computed


def test_indices_and_view_batch_sizes_are_checked():
    from contrastkit.objectives import ShapeError

    learner = in_batch_learner(InfoNCE(0.2))
    v1, v2 = views()
    with pytest.raises(ShapeError, match=rf"indices must have shape \({B},\).*got \({B - 2},\)"):
        learner(v1, v2, indices=torch.arange(B - 2))
    with pytest.raises(ShapeError, match=rf"same number of images, got \({B}, 12\) and \({B - 1}, 12\)"):
        learner(v1, v2[1:])
    assert torch.isfinite(learner(v1, v2, torch.arange(B), indices=torch.arange(B)).loss)


def test_oracle_with_a_supervised_objective_is_refused():
    """It silently equalled InfoNCE + oracle (the oracle removes every extra positive); the CLI refuses it."""
    from contrastkit.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        in_batch_learner(SupervisedContrastive(0.2), oracle=True)
    assert str(err.value) == (
        "oracle=True and the supervised objective SupervisedContrastive cannot be combined: "
        "SupervisedContrastive already makes same-class samples positives, and the oracle would remove them; "
        "drop oracle=True"
    )
    assert in_batch_learner(InfoNCE(0.2), oracle=True).oracle  # the oracle alone is fine


# --- float64 end to end (QA finding 12) ----------------------------------------------------------------


class _Recording(InBatchNegatives):
    dtypes: list

    def forward(self, z1, z2, labels=None):
        self.dtypes = [*getattr(self, "dtypes", []), z1.dtype, z2.dtype]
        return super().forward(z1, z2, labels)


def test_float64_embeddings_reach_the_source_in_float64_and_low_precision_in_float32():
    src = _Recording()
    learner = ContrastiveLearner(small_model().double(), src, CosineSimilarity(), InfoNCE(0.2))
    v1, v2 = views()
    learner(v1.double(), v2.double())
    assert src.dtypes == [torch.float64, torch.float64]  # the learner used to cast them to float32
    src.dtypes = []
    learner = ContrastiveLearner(small_model(), src, CosineSimilarity(), InfoNCE(0.2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = learner(v1, v2)
    assert src.dtypes == [torch.float32, torch.float32] and out.loss.dtype == torch.float32


def test_float64_learner_loss_is_float64_and_passes_gradcheck():
    model = nn.Sequential(nn.Linear(12, D)).double()
    learner = ContrastiveLearner(model, InBatchNegatives(), CosineSimilarity(), InfoNCE(0.2))
    v1, v2 = (v.double() for v in views())
    assert learner(v1, v2).loss.dtype == torch.float64
    x = v1[:4].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a: learner(a, v2[:4]).loss, (x,))


def test_the_mutual_information_bound_is_reported_for_infonce_alone():
    """log(N + 1) - L bounds I(x; x+) for InfoNCE's loss only: the other objectives report none (the
    decoupled loss goes below 0, which would make the 'bound' exceed log(N + 1))."""
    from contrastkit.objectives import Debiased, Decoupled, HardNegative, Margin

    v1, v2 = views()
    out = ContrastiveLearner(small_model(), InBatchNegatives(), CosineSimilarity(), InfoNCE(0.2))(v1, v2)
    n = 2 * B - 2  # in-batch negatives of each anchor
    torch.testing.assert_close(out.mi_bound, math.log(n + 1) - out.loss.detach())
    for objective in (Debiased(0.2, 0.1), HardNegative(0.2, 0.1, 1.0), Decoupled(0.2), Margin(0.5)):
        learner = ContrastiveLearner(small_model(), InBatchNegatives(), CosineSimilarity(), objective)
        assert learner(v1, v2).mi_bound is None, type(objective).__name__


def test_a_run_of_another_objective_logs_no_bound(tmp_path, one_thread):
    from contrastkit.training import TrainConfig, train

    base = dict(epochs=1, batch_size=32, limit=96, knn_every=0, progress=False)
    result = train(TrainConfig(**base, objective="decoupled", out=str(tmp_path / "d")))
    assert all("mi_bound" not in row for row in result.history)
    assert math.isnan(result.metrics["final_mi_bound_nats"])
    result = train(TrainConfig(**base, out=str(tmp_path / "i")))
    assert all(math.isfinite(row["mi_bound"]) for row in result.history)
    assert result.metrics["final_mi_bound_nats"] == result.history[-1]["mi_bound"]


@pytest.mark.parametrize("mochi", [False, True])
def test_a_queue_keeps_the_dataset_indices_beside_its_keys(mochi):
    """Given the batch's dataset indices, the queue (also inside MoCHi) stores them beside the keys, in the
    keys' order (k2 then k1: the same indices twice); without them they stay -1 (unknown)."""
    from contrastkit.negatives import HardNegativeMixing

    source = QueueNegatives(size=40)
    negatives = HardNegativeMixing(source, num_hardest=8, num_mixed=4, num_query_mixed=2) if mochi else source
    learner, _, _ = moco_learner(negatives)
    idx = torch.arange(100, 100 + B)
    labels = torch.arange(B) % 3
    learner(*views(), labels=None, indices=idx)
    q = source.queue
    keys, stored_labels, stored = q.ordered()
    assert stored.tolist() == [*idx.tolist(), *idx.tolist()] and keys.shape[0] == 2 * B
    learner(*views(2), labels=labels)  # no indices given: unknown, as before
    _, stored_labels, stored = q.ordered()
    assert stored[-2 * B :].tolist() == [-1] * (2 * B)  # the newest keys (the queue wrapped around)
    assert stored_labels[-2 * B :].tolist() == [*labels.tolist(), *labels.tolist()]


def test_momentum_learner_masks_queued_keys_of_each_images_own_index():
    """Through the learner (both symmetrised halves): with the batch's indices, exactly the keys the queue
    holds for each anchor's own image (from an earlier step) are masked, and the loss differs from MoCo's
    unmasked one; without indices nothing but unwritten slots is masked."""
    learner, _, _ = moco_learner(QueueNegatives(size=2 * B))
    idx = torch.arange(B)
    learner(*views(), indices=idx)  # fills the queue with 2B keys of images 0..B-1
    queued = learner.negatives.queue.indices.clone()
    assert queued.tolist() == idx.tolist() * 2
    unmasked = copy.deepcopy(learner)
    unmasked.negatives.exclude_own = False
    seen = []
    forward = learner.negatives.forward
    learner.negatives.forward = lambda *a, **k: seen.append(forward(*a, **k)) or seen[-1]
    idx2 = torch.tensor([0, 3, *range(B, 2 * B - 2)])  # images 0 and 3 again, the rest new
    out = learner(*views(2), indices=idx2)
    assert len(seen) == 2
    for cand in seen:
        torch.testing.assert_close(cand.neg_mask, queued.unsqueeze(0) == idx2.unsqueeze(1), rtol=0, atol=0)
    assert int(seen[0].neg_mask.sum()) == 4
    assert out.loss.item() != unmasked(*views(2), indices=idx2).loss.item()


def test_a_supervised_learner_keeps_own_keys_as_positives():
    """Under SupCon the queued keys of an anchor's own image share its label: positives, not masked; the
    queue is not changed for it (building a SupCon learner turned its exclude_own off for good, so an
    InfoNCE learner sharing that queue then took the own keys as negatives)."""
    queue = QueueNegatives(size=2 * B)
    learner, _, _ = moco_learner(queue, objective=SupervisedContrastive())
    unsupervised, _, _ = moco_learner(queue)  # the same queue
    assert queue.exclude_own is True
    idx, labels = torch.arange(B), torch.arange(B) % 3
    learner(*views(), labels=labels, indices=idx)  # 2B labelled keys of images 0..B-1
    seen = []
    forward = queue.forward
    queue.forward = lambda *a, **k: seen.append(forward(*a, **k)) or seen[-1]
    learner(*views(2), labels=labels, indices=idx)
    assert len(seen) == 2 and not any(c.neg_mask.any() for c in seen)  # own keys kept: SupCon's positives
    seen.clear()
    unsupervised.eval()(*views(2), indices=idx)  # no labels: the own keys are masked
    own = queue.queue.indices.unsqueeze(0) == idx.unsqueeze(1)
    assert len(seen) == 2 and all(torch.equal(c.neg_mask, own) for c in seen) and int(own.sum()) == 2 * B


@pytest.mark.parametrize("negatives", ["in-batch", "queue"])
def test_float_labels_or_indices_are_refused_before_the_loss(negatives):
    """The same mistake gave a silent pass with in-batch negatives (the labels unused) and an error from the
    queue only after the loss was computed: now one error, from the learner, whatever the source."""
    source = InBatchNegatives() if negatives == "in-batch" else QueueNegatives(size=40)
    learner = ContrastiveLearner(small_model(), source, CosineSimilarity(), InfoNCE()).train()
    with pytest.raises(ConfigError, match=r"labels must be integers .*got dtype torch.float32; convert them"):
        learner(*views(), labels=torch.zeros(B))
    with pytest.raises(ConfigError, match=r"indices must be integers \(dataset indices"):
        learner(*views(), indices=torch.arange(B).float())
    learner(*views(), labels=torch.zeros(B, dtype=torch.long), indices=torch.arange(B))


@pytest.mark.parametrize("score", ["cosine", "dot"])
def test_mochi_whose_normalisation_does_not_fit_the_score_is_refused(score):
    """Normalised mixtures under the dot score scored like the easiest negatives (the hardest-8 real scores
    138, the synthetic ones 10: none among the hardest), silently; unnormalised ones under cosine are
    shorter than the negatives they mix."""
    s = CosineSimilarity() if score == "cosine" else DotProduct()
    for normalize in (True, False):
        mixing = HardNegativeMixing(QueueNegatives(size=40), num_hardest=8, num_mixed=4, normalize=normalize)
        if normalize == s.unit_norm:
            ContrastiveLearner(small_model(), mixing, s, InfoNCE())
        else:
            with pytest.raises(ConfigError, match=rf"normalize={normalize}\).*pass normalize={s.unit_norm}"):
                ContrastiveLearner(small_model(), mixing, s, InfoNCE())
