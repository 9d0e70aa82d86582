import math

import pytest
import torch
from torch import nn

from contrastkit.errors import ConfigError
from contrastkit.negatives.momentum import (
    MomentumEncoder,
    cosine_momentum,
    grouped_forward,
    shuffle_batch,
    shuffle_bn_forward,
    unshuffle_batch,
)


def test_ema_arithmetic_exact():
    online = nn.Linear(2, 2)
    with torch.no_grad():
        online.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        online.bias.copy_(torch.tensor([0.5, -0.5]))
    key = MomentumEncoder(online, momentum=0.75)
    assert torch.equal(key.model.weight, online.weight) and key.model.weight is not online.weight
    with torch.no_grad():
        online.weight.copy_(torch.tensor([[5.0, 6.0], [-1.0, 0.0]]))
        online.bias.copy_(torch.tensor([2.5, 1.5]))
    key.update(online)
    # θ_k ← m θ_k + (1 − m) θ_q with m = 3/4; all numbers are exact in binary floating point
    assert torch.equal(key.model.weight, torch.tensor([[2.0, 3.0], [2.0, 3.0]]))
    assert torch.equal(key.model.bias, torch.tensor([1.0, 0.0]))
    key.update(online, momentum=0.5)  # per-call override
    assert torch.equal(key.model.weight, torch.tensor([[3.5, 4.5], [0.5, 1.5]]))
    assert torch.equal(key.model.bias, torch.tensor([1.75, 0.75]))


def test_ema_matches_hand_computation_random():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    key = MomentumEncoder(online, momentum=0.99)
    before = [p.clone() for p in key.model.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    key.update(online)
    for k, b, q in zip(key.model.parameters(), before, online.parameters(), strict=True):
        torch.testing.assert_close(k, 0.99 * b + 0.01 * q)


def test_key_model_is_frozen_and_produces_no_graph():
    online = nn.Linear(3, 2)
    key = MomentumEncoder(online)
    assert all(not p.requires_grad for p in key.parameters())
    assert all(p.requires_grad for p in online.parameters())
    out = key(torch.randn(4, 3, requires_grad=True))
    assert not out.requires_grad and out.grad_fn is None
    assert "model.weight" in key.state_dict()


def test_buffers_copied_or_kept():
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    online(torch.randn(8, 3))  # moves the online running statistics
    copied = MomentumEncoder(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)))
    kept = MomentumEncoder(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), copy_buffers=False)
    copied.update(online)
    kept.update(online)
    assert torch.equal(copied.model[1].running_mean, online[1].running_mean)
    assert int(copied.model[1].num_batches_tracked) == 1
    assert torch.equal(kept.model[1].running_mean, torch.zeros(4))
    with pytest.raises(ValueError, match="parameters"):
        copied.update(nn.Linear(3, 4))


def test_cosine_momentum_schedule():
    assert cosine_momentum(0, 100) == pytest.approx(0.996)
    assert cosine_momentum(50, 100) == pytest.approx(0.998)
    assert cosine_momentum(100, 100) == pytest.approx(1.0)
    assert cosine_momentum(500, 100) == pytest.approx(1.0)
    k = 30
    assert cosine_momentum(k, 100, base=0.99) == pytest.approx(
        1 - 0.01 * (math.cos(math.pi * k / 100) + 1) / 2
    )
    values = [cosine_momentum(s, 10) for s in range(11)]
    assert values == sorted(values)


def test_shuffle_unshuffle_round_trip():
    x = torch.arange(10.0).unsqueeze(1)
    xs, perm = shuffle_batch(x, torch.Generator().manual_seed(0))
    assert torch.equal(xs, x[perm]) and not torch.equal(xs, x)
    assert torch.equal(unshuffle_batch(xs, perm), x)


def test_shuffle_bn_rows_return_to_their_inputs_without_bn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(12, 4)
    out = shuffle_bn_forward(model, x, groups=3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, model(x))


def test_shuffle_bn_uses_per_group_statistics_and_unshuffles():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    x = torch.randn(12, 4)
    out = shuffle_bn_forward(model, x, groups=3, generator=torch.Generator().manual_seed(5))
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(5))
    expected = torch.empty(12, 3)
    for group in perm.tensor_split(3):  # BN statistics over each group of shuffled rows
        expected[group] = model(x[group])
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, model(x), atol=1e-4)  # whole-batch statistics would differ
    model.eval()  # no batch statistics: row i depends on x[i] alone
    out = shuffle_bn_forward(model, x, groups=3, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(out, model(x))


def test_momentum_encoder_shuffles_in_training_mode_only():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6))
    key = MomentumEncoder(online, shuffle_groups=2, generator=torch.Generator().manual_seed(3))
    x = torch.randn(8, 4)
    out = key(x)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    expected = torch.empty(8, 6)
    ref = MomentumEncoder(online).model
    with torch.no_grad():
        for group in perm.tensor_split(2):
            expected[group] = ref(x[group])
    torch.testing.assert_close(out, expected)
    key.eval()
    torch.testing.assert_close(key(x), key.model(x))
    with pytest.raises(ValueError, match="groups"):
        grouped_forward(online, x, 9)


def test_update_from_a_model_of_other_shapes_names_the_parameter():
    key = MomentumEncoder(nn.Linear(2, 3), momentum=0.9)
    before = key.model.weight.clone()
    with pytest.raises(ConfigError, match=r"'weight' has shape \(4, 2\), the momentum encoder's \(3, 2\)"):
        key.update(nn.Linear(2, 4))
    assert torch.equal(key.model.weight, before)  # nothing half-updated
