import itertools
import math

import pytest
import torch
from torch import nn

from contrastkit.training.optim import LARS, build_optimizer, param_groups, warmup_cosine


def test_lars_step_matches_formula():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    w0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    opt = LARS(param_groups(lin, weight_decay=0.1), lr=0.5, momentum=0.9, trust_coefficient=0.01)
    x = torch.randn(8, 4)
    for step in range(2):
        opt.zero_grad()
        lin(x).pow(2).sum().backward()
        gw, gb = lin.weight.grad.clone(), lin.bias.grad.clone()
        if step == 0:
            wprev, bprev = w0, b0
        d = gw + 0.1 * wprev
        ratio = 0.01 * wprev.norm() / d.norm()
        if step == 0:
            vw, vb = ratio * d, gb
        else:
            vw, vb = 0.9 * vw + ratio * d, 0.9 * vb + gb
        expected_w, expected_b = wprev - 0.5 * vw, bprev - 0.5 * vb
        opt.step()
        torch.testing.assert_close(lin.weight.detach(), expected_w)
        torch.testing.assert_close(lin.bias.detach(), expected_b)  # bias: excluded, plain momentum SGD
        wprev, bprev = expected_w, expected_b


def test_build_optimizer_kinds_and_groups():
    m = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    for name, cls in [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW), ("lars", LARS)]:
        opt = build_optimizer(name, m, lr=0.1, weight_decay=1e-4)
        assert isinstance(opt, cls)
        assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]
        assert len(opt.param_groups[0]["params"]) == 1  # only the Linear weight is decayed
    with pytest.raises(ValueError, match="lars"):
        build_optimizer("rmsprop", m, lr=0.1, weight_decay=0)


def test_warmup_cosine_shape():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=14)
    lrs = []
    for _ in range(14):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert lrs[4] == pytest.approx(2.0)
    assert lrs[9] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 5 / 10)))
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:]))
