"""The contract every objective keeps: masks, shapes, precision and stability, for all of them at once."""

import numpy as np
import pytest
import torch

from contrastkit.errors import ConfigError
from contrastkit.negatives import InBatchNegatives, score_candidates
from contrastkit.objectives import (
    OBJECTIVES,
    Debiased,
    Decoupled,
    HardNegative,
    InfoNCE,
    Margin,
    Objective,
    ShapeError,
    SupervisedContrastive,
    Triplet,
    build_objective,
    check_scores,
)
from contrastkit.scores import CosineSimilarity

FACTORIES = {
    "infonce": lambda: InfoNCE(0.1),
    "triplet-all": lambda: Triplet(0.5, "all"),
    "triplet-all-nonzero": lambda: Triplet(0.5, "all", reduction="non-zero"),
    "triplet-hardest": lambda: Triplet(0.5, "hardest"),
    "triplet-semi-hard": lambda: Triplet(0.5, "semi-hard"),
    "margin": lambda: Margin(0.8),
    "debiased": lambda: Debiased(0.1, 0.1),
    "decoupled": lambda: Decoupled(0.1),
    "hard-negative": lambda: HardNegative(0.1, 0.1, 1.0),
    "supcon": lambda: SupervisedContrastive(0.1),
}
TEMPERED = {
    "infonce": InfoNCE,
    "debiased": lambda t: Debiased(t, 0.1),
    "decoupled": Decoupled,
    "hard-negative": lambda t: HardNegative(t, 0.1, 1.0),
    "hard-negative-beta-10": lambda t: HardNegative(t, 0.5, 10.0),
    "supcon": SupervisedContrastive,
}
objectives = pytest.mark.parametrize("make", list(FACTORIES.values()), ids=list(FACTORIES))


def scores(b=6, n=10, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(b, generator=g, dtype=torch.float64) * 2 - 1
    neg = torch.rand(b, n, generator=g, dtype=torch.float64) * 2 - 1
    return pos.to(dtype), neg.to(dtype)


def masked_k_per_row(b, n, k, seed):
    """A mask with exactly k True per row at random positions (so kept columns can be gathered)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.stack([torch.randperm(n, generator=g) for _ in range(b)])
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask.scatter_(1, order[:, :k], True)
    return mask


@objectives
def test_masked_columns_equal_dropped_columns(make):
    obj = make()
    pos, neg = scores(seed=1)
    mask = masked_k_per_row(6, 10, 3, seed=2)
    kept = neg[~mask].view(6, 7)
    torch.testing.assert_close(obj(pos, neg, mask), obj(pos, kept), rtol=1e-6, atol=1e-6)


@objectives
def test_masked_columns_get_zero_gradient(make):
    obj = make()
    pos, neg = scores(seed=3)
    pos.requires_grad_()
    neg.requires_grad_()
    mask = torch.rand(6, 10, generator=torch.Generator().manual_seed(4)) < 0.4
    obj(pos, neg, mask).backward()
    assert torch.isfinite(neg.grad).all() and torch.isfinite(pos.grad).all()
    assert (neg.grad[mask] == 0).all()
    assert neg.grad[~mask].abs().sum() > 0


@objectives
def test_row_with_every_negative_masked_is_finite(make):
    obj = make()
    pos, neg = scores(seed=5)
    pos.requires_grad_()
    neg.requires_grad_()
    mask = torch.zeros(6, 10, dtype=torch.bool)
    mask[2] = True
    loss = obj(pos, neg, mask)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(pos.grad).all() and torch.isfinite(neg.grad).all()
    assert (neg.grad[2] == 0).all()
    # and a batch where nothing is left at all
    everything = torch.ones(6, 10, dtype=torch.bool)
    assert torch.isfinite(obj(pos.detach(), neg.detach(), everything))


@pytest.mark.parametrize("make", list(TEMPERED.values()), ids=list(TEMPERED))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_temperature_all_scores_one(make, dtype):
    """Scores all 1.0 at t = 0.05 (e^{20} per term, e^{220} inside HCL at β = 10) stay finite."""
    obj = make(0.05)
    pos = torch.ones(4, dtype=dtype, requires_grad=True)
    neg = torch.ones(4, 7, dtype=dtype, requires_grad=True)
    loss = obj(pos, neg)
    loss.backward()
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss) and torch.isfinite(pos.grad).all() and torch.isfinite(neg.grad).all()


@pytest.mark.parametrize("make", list(TEMPERED.values()), ids=list(TEMPERED))
def test_low_temperature_scores_near_one(make):
    obj = make(0.05)
    g = torch.Generator().manual_seed(6)
    pos = (1 - 0.01 * torch.rand(8, generator=g)).requires_grad_()
    neg = (1 - 0.02 * torch.rand(8, 50, generator=g)).requires_grad_()
    loss = obj(pos, neg)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pos.grad).all() and torch.isfinite(neg.grad).all()
    # far apart at a very low temperature: no overflow either
    assert torch.isfinite(make(0.01)(torch.ones(2), -torch.ones(2, 3)))


@objectives
def test_bf16_autocast_computes_in_float32(make):
    g = torch.Generator().manual_seed(7)
    z1, z2 = torch.randn(32, 64, generator=g), torch.randn(32, 64, generator=g)
    labels = torch.arange(32) % 5
    score = CosineSimilarity()
    obj = make()

    def loss():
        cands = InBatchNegatives()(score.prepare(z1), score.prepare(z2), labels)
        c = score_candidates(cands, score)
        if obj.needs_labels:
            same = cands.anchor_labels[:, None] == cands.negative_labels[None, :]
            return obj(c.pos, c.neg, c.neg_mask, pos_mask=same & ~c.neg_mask)
        return obj(c.pos, c.neg, c.neg_mask)

    ref = loss()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss()
    assert low.dtype == torch.float32
    assert abs(low.item() - ref.item()) < 3e-2


@objectives
def test_float64_stays_float64(make):
    pos, neg = scores(seed=8, dtype=torch.float64)
    assert make()(pos, neg).dtype == torch.float64


@objectives
def test_shape_errors_name_both_shapes(make):
    obj = make()
    with pytest.raises(ShapeError, match=r"\(4,\).*\(5, 3\)"):
        obj(torch.zeros(4), torch.zeros(5, 3))
    with pytest.raises(ShapeError, match=r"neg_mask \(4, 2\).*neg \(4, 3\)"):
        obj(torch.zeros(4), torch.zeros(4, 3), torch.zeros(4, 2, dtype=torch.bool))


def test_pos_mask_is_validated():
    obj = SupervisedContrastive()
    with pytest.raises(ShapeError, match=r"pos_mask \(4, 2\).*neg \(4, 3\)"):
        obj(torch.zeros(4), torch.zeros(4, 3), pos_mask=torch.zeros(4, 2, dtype=torch.bool))
    with pytest.raises(ShapeError, match="pos_mask must be a bool"):
        obj(torch.zeros(4), torch.zeros(4, 3), pos_mask=torch.zeros(4, 3))
    pos, neg = torch.zeros(4), torch.zeros(4, 3)
    same = torch.zeros(4, 3, dtype=torch.bool)
    assert check_scores(pos, neg, None, same)[2] is None


@pytest.mark.parametrize("name", [k for k in FACTORIES if k != "supcon"])
def test_pos_mask_refused_by_objectives_without_labels(name):
    obj = FACTORIES[name]()
    assert obj.needs_labels is False
    with pytest.raises(ConfigError, match="pos_mask"):
        obj(torch.zeros(4), torch.zeros(4, 3), pos_mask=torch.zeros(4, 3, dtype=torch.bool))


def test_needs_labels_flags():
    assert Objective.needs_labels is False
    assert SupervisedContrastive.needs_labels is True
    assert InfoNCE._takes_pos_mask is False and SupervisedContrastive._takes_pos_mask is True


# --- non-finite scores, empty shapes, rows with every negative masked ----------------------------------


@objectives
@pytest.mark.parametrize("where", ["pos", "neg"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_unmasked_non_finite_score_gives_a_nan_loss(make, where, value):
    """A NaN (or ±inf) score that is not masked out never yields a finite loss: the trainers' non-finite-loss
    checks must see it (Debiased/HCL used to clamp a NaN to their floor; semi-hard Triplet skipped it)."""
    obj = make()
    pos, neg = scores(seed=9)
    mask = torch.zeros(6, 10, dtype=torch.bool)
    mask[:, 7] = True
    if where == "pos":
        pos[2] = value
    else:
        neg[2, 4] = value
    pos.requires_grad_()
    neg.requires_grad_()
    extra = {"pos_mask": torch.zeros(6, 10, dtype=torch.bool)} if obj.needs_labels else {}
    loss = obj(pos, neg, mask, **extra)
    assert torch.isnan(loss), loss
    loss.backward()  # still differentiable (the gradient may hold NaN: the loss says so)


@objectives
def test_nan_score_propagates_through_the_formula_itself(make):
    """NaN in -> NaN out already inside each objective's computation (``compute``), not only through the
    final check of ``forward``: no comparison or clamp turns a NaN into a finite value."""
    obj = make()
    for where in ("pos", "neg"):
        pos, neg = scores(seed=10)
        if where == "pos":
            pos[1] = float("nan")
        else:
            neg[1, 3] = float("nan")
        assert torch.isnan(obj.compute(pos, neg, None)), where


def test_debiased_nan_negative_gives_nan_loss_not_nan_gradient():
    """QA finding 4, as reported: the loss was 17.8 (finite) while the gradient was NaN."""
    pos = torch.rand(4, generator=torch.Generator().manual_seed(0))
    neg = torch.rand(4, 6, generator=torch.Generator().manual_seed(1))
    neg[0, 0] = float("nan")
    for obj in (Debiased(0.1, 0.1), Debiased(0.1, 0.0), HardNegative(0.1, 0.1, 1.0), HardNegative(0.1, 0, 0)):
        assert torch.isnan(obj(pos, neg)), obj
        assert torch.isnan(obj.log_negative_term(pos, neg)[0]), obj
        assert torch.isfinite(obj.log_negative_term(pos, neg)[1:]).all(), obj  # other rows unaffected


@objectives
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_masked_non_finite_scores_have_no_effect(make, value):
    obj = make()
    pos, neg = scores(seed=11)
    mask = torch.zeros(6, 10, dtype=torch.bool)
    mask[:, 3] = True
    mask[4] = True  # a row with every negative masked
    ref = obj(pos, neg, mask)
    poisoned = neg.clone()
    poisoned[mask] = value
    poisoned.requires_grad_()
    p = pos.clone().requires_grad_()
    loss = obj(p, poisoned, mask)
    torch.testing.assert_close(loss, ref, rtol=0, atol=0)
    loss.backward()
    assert torch.isfinite(p.grad).all() and torch.isfinite(poisoned.grad).all()
    assert (poisoned.grad[mask] == 0).all()


@objectives
def test_empty_batch_is_a_shape_error(make):
    with pytest.raises(ShapeError, match=r"batch is empty.*pos \(0,\) and neg \(0, 5\)"):
        make()(torch.empty(0), torch.empty(0, 5))


@objectives
def test_no_negatives_is_a_shape_error(make):
    """N = 0 used to give a silent 0 (InfoNCE & co.), the pull term only (Margin) or an IndexError from
    argmax (Triplet hardest / semi-hard)."""
    with pytest.raises(ShapeError, match=r"no negatives: neg has shape \(6, 0\)"):
        make()(torch.rand(6), torch.empty(6, 0))
    with pytest.raises(ShapeError, match="no negatives"):
        make()(torch.rand(6), torch.empty(6, 0), torch.empty(6, 0, dtype=torch.bool))


@objectives
def test_rows_with_every_negative_masked_have_the_formula_value(make):
    """An anchor with nothing to contrast with: 0 for the softmax-type objectives (its positive is the only
    candidate, -log 1), no triplet for Triplet, the pull term alone for Margin (documented in .base)."""
    obj = make()
    pos, neg = scores(seed=12, dtype=torch.float64)
    pull = 0.5 * (2 - 2 * pos).clamp_min(0)  # Margin's ½ d(x, x+)²
    expected = pull if isinstance(obj, Margin) else torch.zeros_like(pos)
    torch.testing.assert_close(obj(pos, neg, torch.ones(6, 10, dtype=torch.bool)), expected.mean())
    # one such row among others (per anchor; Triplet's mean is over triplets, so it simply has none)
    mask = torch.zeros(6, 10, dtype=torch.bool)
    mask[0] = True
    torch.testing.assert_close(obj.per_anchor(pos, neg, mask)[0], expected[0])


NUMPY_PARAMS = {
    "infonce": (lambda: InfoNCE(0.1), lambda: InfoNCE(np.float32(0.1))),
    "triplet": (lambda: Triplet(0.5, "all"), lambda: Triplet(np.float64(0.5), "all")),
    "margin": (lambda: Margin(0.8), lambda: Margin(np.float32(0.8))),
    "debiased": (lambda: Debiased(0.1, 0.1), lambda: Debiased(np.float32(0.1), np.float64(0.1))),
    "decoupled": (lambda: Decoupled(0.1), lambda: Decoupled(np.float64(0.1))),
    "hard-negative": (
        lambda: HardNegative(0.1, 0.1, 1.0),
        lambda: HardNegative(np.float32(0.1), np.float32(0.1), np.int64(1)),
    ),
    "supcon": (lambda: SupervisedContrastive(0.1), lambda: SupervisedContrastive(np.float32(0.1))),
}


@pytest.mark.parametrize("pair", list(NUMPY_PARAMS.values()), ids=list(NUMPY_PARAMS))
def test_numpy_scalar_parameters_are_accepted(pair):
    plain, numpy_made = (make() for make in pair)
    pos, neg = scores(dtype=torch.float64)
    pos_mask = torch.zeros_like(neg, dtype=torch.bool)
    pos_mask[:, 0] = True
    kw = {"pos_mask": pos_mask} if plain.needs_labels else {}
    torch.testing.assert_close(numpy_made(pos, neg, **kw), plain(pos, neg, **kw), rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "bad",
    [True, np.bool_(True), np.float32("nan"), np.float64("inf"), np.float32(0.0), np.float64(-0.1), "0.1"],
    ids=repr,
)
def test_bad_temperatures_are_still_refused(bad):
    with pytest.raises(ConfigError, match="must be a finite number > 0"):
        InfoNCE(bad)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objectives_infer_shapes_on_the_meta_device(name: str) -> None:
    """``torch.autocast`` refuses the meta device ('unsupported scalarType'): a shape dry run failed."""
    obj = build_objective(name)
    pos, neg = torch.rand(3, device="meta"), torch.rand(3, 5, device="meta")
    extra = {"pos_mask": torch.zeros(3, 5, dtype=torch.bool, device="meta")} if obj.needs_labels else {}
    loss = obj(pos, neg, **extra)
    assert loss.device.type == "meta" and loss.shape == () and loss.dtype == torch.float32
