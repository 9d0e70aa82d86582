import io

import pytest
import torch

from contrastkit.errors import ConfigError
from contrastkit.negatives import oracle_mask, score_candidates
from contrastkit.negatives.queue import KeyQueue, QueueNegatives
from contrastkit.objectives import InfoNCE
from contrastkit.scores import CosineSimilarity, DotProduct


def rows(start: int, n: int, d: int = 2) -> torch.Tensor:
    """Keys whose first coordinate is their insertion number."""
    return torch.arange(start, start + n, dtype=torch.float32).unsqueeze(1).repeat(1, d)


def test_fifo_order_and_fill_count():
    q = KeyQueue(5, 2)
    assert q.valid_mask().tolist() == [False] * 5
    q.enqueue(rows(0, 2), labels=torch.tensor([10, 11]), indices=torch.tensor([100, 101]))
    assert int(q.ptr) == 2 and int(q.filled) == 2 and not q.is_full
    assert q.valid_mask().tolist() == [True, True, False, False, False]
    q.enqueue(rows(2, 2))
    keys, labels, indices = q.ordered()
    assert keys[:, 0].tolist() == [0, 1, 2, 3]
    assert labels.tolist() == [10, 11, -1, -1] and indices.tolist() == [100, 101, -1, -1]


def test_wrap_around_overwrites_oldest_and_keeps_labels_beside_keys():
    q = KeyQueue(5, 2)
    q.enqueue(rows(0, 3), labels=torch.arange(3), indices=torch.arange(3) + 100)
    q.enqueue(rows(3, 4), labels=torch.arange(3, 7), indices=torch.arange(3, 7) + 100)  # slots 3, 4, 0, 1
    assert int(q.ptr) == 2 and int(q.filled) == 5 and q.is_full
    assert q.keys[:, 0].tolist() == [5, 6, 2, 3, 4]
    keys, labels, indices = q.ordered()
    assert keys[:, 0].tolist() == [2, 3, 4, 5, 6]
    assert labels.tolist() == [2, 3, 4, 5, 6] and indices.tolist() == [102, 103, 104, 105, 106]
    assert torch.equal(q.labels, q.keys[:, 0].long()) and torch.equal(q.indices, q.keys[:, 0].long() + 100)


def test_batch_larger_than_queue_keeps_newest():
    q = KeyQueue(5, 2)
    q.enqueue(rows(0, 2))
    q.enqueue(rows(2, 8), labels=torch.arange(2, 10))
    keys, labels, _ = q.ordered()
    assert keys[:, 0].tolist() == [5, 6, 7, 8, 9] and labels.tolist() == [5, 6, 7, 8, 9]
    assert int(q.filled) == 5
    q.enqueue(rows(10, 1))
    assert q.ordered()[0][:, 0].tolist() == [6, 7, 8, 9, 10]


def test_keys_stored_detached_in_float32_under_autocast():
    lin = torch.nn.Linear(4, 3)
    q = KeyQueue(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        k = lin(torch.randn(2, 4))
        assert k.dtype == torch.bfloat16 and k.requires_grad
        q.enqueue(k)
    assert q.keys.dtype == torch.float32 and not q.keys.requires_grad
    assert q.dim == 3
    torch.testing.assert_close(q.keys[:2], k.detach().float(), rtol=0, atol=0)


def test_bad_shapes():
    q = KeyQueue(4, 3)
    with pytest.raises(ValueError, match="dimension 3"):
        q.enqueue(torch.randn(2, 5))
    with pytest.raises(ValueError, match="labels"):
        q.enqueue(torch.randn(2, 3), labels=torch.zeros(3))
    with pytest.raises(ValueError):
        KeyQueue(0)


def test_state_dict_round_trip_into_lazy_queue():
    src = QueueNegatives(size=6)
    src.update(torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 3]), indices=torch.arange(4))
    src.update(torch.randn(4, 3), torch.randn(4, 3), torch.tensor([4, 5, 6, 7]), indices=torch.arange(4, 8))
    state = src.state_dict()
    assert set(state) == {"queue.keys", "queue.labels", "queue.indices", "queue.ptr", "queue.filled"}
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    dst = QueueNegatives(size=6)  # lazy: dim unknown until loaded
    dst.load_state_dict(torch.load(buf, weights_only=True))
    for name, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[name], value), name
    new = torch.randn(3, 3)
    src.update(new, new)
    dst.update(new, new)
    for a, b in zip(src.queue.ordered(), dst.queue.ordered(), strict=True):
        assert torch.equal(a, b)


def test_queue_negatives_masks_unfilled_and_enqueues_keys_after_loss():
    torch.manual_seed(0)
    src = QueueNegatives(size=8)
    score = CosineSimilarity()
    q1 = score.prepare(torch.randn(3, 4)).requires_grad_()
    k1 = score.prepare(torch.randn(3, 4))
    c = src(q1, k1)
    assert c.negatives.shape == (8, 4) and c.neg_mask.shape == (3, 8) and bool(c.neg_mask.all())
    contrast = score_candidates(c, score)
    loss = InfoNCE(0.1)(contrast.pos, contrast.neg, contrast.neg_mask)
    loss.backward()  # empty queue: no negatives, loss 0 and a finite gradient
    assert loss.item() == 0 and torch.isfinite(q1.grad).all()
    src.update(q1.detach(), k1)
    q2, k2 = score.prepare(torch.randn(3, 4)), score.prepare(torch.randn(3, 4))
    c = src(q2, k2)
    assert (~c.neg_mask).sum(1).tolist() == [3, 3, 3]
    torch.testing.assert_close(c.negatives[:3], k1)  # the previous keys, not the current ones
    contrast = score_candidates(c, DotProduct())
    torch.testing.assert_close(contrast.neg[:, :3], q2 @ k1.T)
    torch.testing.assert_close(contrast.pos, (q2 * k2).sum(1))


def test_queue_labels_feed_the_oracle_mask():
    src = QueueNegatives(size=4, dim=2)
    src.update(torch.randn(3, 2), torch.randn(3, 2), torch.tensor([0, 1, 0]))
    c = src(torch.randn(2, 2), torch.randn(2, 2), torch.tensor([0, 1]))
    same = oracle_mask(c)
    assert same.tolist() == [[True, False, True, False], [False, True, False, False]]
    contrast = score_candidates(c, DotProduct(), oracle=True)
    assert contrast.valid_negatives().tolist() == [1, 2]
    with pytest.raises(ValueError, match="dimension 2"):
        src(torch.randn(2, 5), torch.randn(2, 5))


def test_build_negatives_allocates_the_queue_when_its_dim_is_given() -> None:
    from contrastkit.negatives import build_negatives

    eager = build_negatives("queue", queue_size=8, queue_dim=5)
    assert eager.queue.keys.shape == (8, 5)
    assert build_negatives("queue", queue_size=8).queue.dim is None  # lazy without it


def test_update_before_backward_works():
    """QA finding 10: the candidates held the live key buffer, so ``update`` before ``backward`` failed with
    an autograd in-place error. They now hold a snapshot: the loss and its gradient are those of the keys
    the loss was computed with."""
    torch.manual_seed(0)
    src, score = QueueNegatives(16, 8), CosineSimilarity()
    src.update(None, torch.nn.functional.normalize(torch.randn(10, 8), dim=1))
    w = torch.randn(8, 8, requires_grad=True)
    x = torch.randn(4, 8)
    k = score.prepare(torch.randn(4, 8))

    def loss_of(update_first: bool) -> tuple[torch.Tensor, torch.Tensor]:
        queue = QueueNegatives(16, 8)
        queue.load_state_dict(src.state_dict())
        q = score.prepare(x @ w)
        c = score_candidates(queue(q, k), score)
        loss = InfoNCE(0.2)(c.pos, c.neg, c.neg_mask)
        if update_first:
            queue.update(q.detach(), torch.nn.functional.normalize(torch.randn(4, 8), dim=1))
        (grad,) = torch.autograd.grad(loss, w)
        return loss.detach(), grad

    loss_after, grad_after = loss_of(update_first=False)
    loss_before, grad_before = loss_of(update_first=True)  # raised RuntimeError (inplace) before the fix
    torch.testing.assert_close(loss_before, loss_after, rtol=0, atol=0)
    torch.testing.assert_close(grad_before, grad_after, rtol=0, atol=0)


def test_candidates_are_a_snapshot_of_keys_and_labels():
    src = QueueNegatives(size=4, dim=2)
    src.update(None, torch.ones(3, 2), torch.tensor([0, 1, 0]))
    c = src(torch.randn(2, 2), torch.randn(2, 2), torch.tensor([0, 1]))
    keys, labels = c.negatives.clone(), c.negative_labels.clone()
    assert c.negatives.data_ptr() != src.queue.keys.data_ptr()
    src.update(None, torch.full((4, 2), 7.0), torch.tensor([5, 5, 5, 5]))  # overwrites every slot
    assert torch.equal(c.negatives, keys) and torch.equal(c.negative_labels, labels)
    assert oracle_mask(c).tolist() == [[True, False, True, False], [False, True, False, False]]


@pytest.mark.parametrize("objective", ["infonce", "debiased", "hard-negative", "triplet", "margin"])
def test_nan_keys_in_the_queue_make_the_next_loss_nan(objective):
    """Enqueueing NaN keys is not refused (that would be a host sync per step) but cannot pass silently:
    while a NaN key is queued (and unmasked), every loss over the queue is NaN, which the trainers' checks
    see; finite keys around it and unwritten slots change nothing."""
    from contrastkit.objectives import build_objective

    torch.manual_seed(0)
    score = CosineSimilarity()
    obj = build_objective(objective, temperature=0.2)
    src = QueueNegatives(size=8, dim=4)
    good = score.prepare(torch.randn(3, 4))
    src.update(None, good)

    def loss() -> torch.Tensor:
        q, k = score.prepare(torch.randn(2, 4)), score.prepare(torch.randn(2, 4))
        c = score_candidates(src(q, k), score)
        return obj(c.pos, c.neg, c.neg_mask)

    assert torch.isfinite(loss())  # 3 keys, 5 unwritten (masked) slots
    bad = good.clone()
    bad[1] = float("nan")
    src.update(None, bad)
    assert int(src.queue.filled) == 6 and torch.isnan(src.queue.keys[4]).all()
    assert torch.isnan(loss())
    src.update(None, score.prepare(torch.randn(8, 4)))  # the NaN key leaves the queue
    assert torch.isfinite(loss())


def test_queued_keys_of_the_anchors_own_image_are_masked():
    """A queue spanning more than an epoch holds keys of the query's own image: false negatives (the
    hardest), masked per anchor when the batch's indices are given; other anchors still see them."""
    src = QueueNegatives(size=6, dim=2)
    src.update(None, torch.randn(5, 2), indices=torch.tensor([3, 7, 3, 9, -1]))
    q, k = torch.randn(3, 2), torch.randn(3, 2)
    c = src(q, k, indices=torch.tensor([3, 9, -1]))
    unwritten = [False] * 5 + [True]
    assert c.neg_mask.tolist() == [
        [True, False, True, False, False, True],  # image 3: both of its queued keys
        [False, False, False, True, False, True],  # image 9
        unwritten,  # an unknown index (-1) masks nothing, not even unknown keys
    ]
    assert src(q, k).neg_mask.tolist() == [unwritten] * 3  # without indices: unwritten slots only
    keep = QueueNegatives(size=6, dim=2, exclude_own=False)  # MoCo's own behaviour
    keep.load_state_dict(src.state_dict())
    assert keep(q, k, indices=torch.tensor([3, 9, -1])).neg_mask.tolist() == [unwritten] * 3


def test_with_labels_an_own_key_of_the_anchors_known_label_is_left_to_the_label_masks():
    """The oracle masks such a key as same-class and SupCon takes it as a positive; an own key whose label
    is unknown on either side stays masked (nothing else would keep it out of the negatives)."""
    src = QueueNegatives(size=4, dim=2)
    src.update(None, torch.randn(4, 2), torch.tensor([1, -1, 2, 1]), indices=torch.tensor([3, 3, 5, 8]))
    q, k = torch.randn(3, 2), torch.randn(3, 2)
    idx = torch.tensor([3, 5, 8])
    c = src(q, k, torch.tensor([1, -1, 0]), indices=idx)
    assert c.neg_mask.tolist() == [
        [False, True, False, False],  # image 3, label 1: its labelled key left, its unlabelled one masked
        [False, False, True, False],  # image 5, label unknown: its key masked
        [False, False, False, True],  # image 8, label 0, its key stored as 1 (labels disagree): masked
    ]
    assert src(q, k, indices=idx).neg_mask.tolist() == [  # no labels: every own key masked
        [True, True, False, False],
        [False, False, True, False],
        [False, False, False, True],
    ]


def test_own_key_masked_loss_equals_the_loss_without_that_key():
    """The masked column drops out of InfoNCE exactly: the loss equals the paper's formula over the other
    queued keys (independent logsumexp)."""
    torch.manual_seed(0)
    score, t = CosineSimilarity(), 0.5
    src = QueueNegatives(size=4, dim=3)
    keys = score.prepare(torch.randn(4, 3))
    src.update(None, keys, indices=torch.tensor([0, 5, 6, 7]))
    q, k = score.prepare(torch.randn(2, 3)), score.prepare(torch.randn(2, 3))
    c = score_candidates(src(q, k, indices=torch.tensor([0, 1])), score)
    pos = (q * k).sum(1) / t
    logits0 = torch.cat([pos[:1], q[0] @ keys[1:].T / t])  # anchor 0 is image 0: key 0 removed
    logits1 = torch.cat([pos[1:], q[1] @ keys.T / t])
    want = torch.stack([logits0.logsumexp(0) - pos[0], logits1.logsumexp(0) - pos[1]]).mean()
    torch.testing.assert_close(InfoNCE(temperature=t)(c.pos, c.neg, c.neg_mask), want)


def test_float_indices_and_labels_are_refused_not_truncated():
    src = QueueNegatives(size=4, dim=2)
    with pytest.raises(ConfigError, match=r"indices must be integers.*\.long\(\)"):
        src.update(None, torch.randn(2, 2), indices=torch.tensor([0.7, 1.2]))
    with pytest.raises(ConfigError, match=r"labels must be integers"):
        src.update(None, torch.randn(2, 2), torch.tensor([0.5, 1.0]))
    with pytest.raises(ConfigError, match=r"indices must be integers"):
        src(torch.randn(2, 2), torch.randn(2, 2), indices=torch.tensor([0.0, 1.0]))
    assert int(src.queue.filled) == 0  # nothing was written
    src.update(None, torch.ones(4, 2), indices=torch.arange(4))  # full
    keys, indices = src.queue.keys.clone(), src.queue.indices.clone()
    with pytest.raises(ConfigError, match=r"indices must be integers"):
        src.update(None, torch.full((2, 2), 7.0), indices=torch.tensor([0.5, 1.5]))
    assert torch.equal(src.queue.keys, keys) and torch.equal(src.queue.indices, indices)  # no key written
    with pytest.raises(ConfigError, match="positive integer, got True"):
        QueueNegatives(size=True)
