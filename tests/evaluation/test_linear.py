"""Linear probe against scikit-learn's LogisticRegression on the same standardised features."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from contrastkit.errors import ConfigError, DataError
from contrastkit.evaluation import linear_probe
from contrastkit.evaluation.linear import (
    fit_logistic_regression,
    heldout_split,
    logistic_objective,
    standardisation,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def mixture(n, d=24, k=4, seed=0, spread=0.35):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g) * spread
    y = torch.randint(0, k, (n,), generator=g)
    x = (centers[y] + torch.randn(n, d, generator=g)) * 3.0 + 5.0  # not standardised on purpose
    return x, y


def sklearn_fit(x, y, wd):
    """sklearn's objective is C * sum CE + ||W||^2 / 2; C = 1 / (wd * n) gives ours times C * n."""
    return LogisticRegression(C=1.0 / (wd * x.shape[0]), tol=1e-10, max_iter=20_000).fit(
        x.double().numpy(), y.numpy()
    )


@pytest.mark.parametrize("wd", [1e-3, 3e-2, 0.3])
def test_fit_reaches_sklearns_optimum(wd):
    x, y = mixture(800)
    mean, std = standardisation(x)
    z = (x - mean) / std
    w, b, _ = fit_logistic_regression(z, y, 4, wd)
    clf = sklearn_fit(z, y, wd)
    zd = z.double()
    ours = logistic_objective(w.double(), b.double(), zd, y, wd).item()
    theirs = logistic_objective(
        torch.from_numpy(clf.coef_), torch.from_numpy(clf.intercept_), zd, y, wd
    ).item()
    assert ours == pytest.approx(theirs, rel=1e-5)
    assert ours <= theirs * (1 + 1e-5)
    agree = ((z @ w.T + b).argmax(1).numpy() == clf.predict(zd.numpy())).mean()
    assert agree >= 0.995
    np.testing.assert_allclose(w.double().numpy(), clf.coef_, atol=2e-3 * max(1.0, np.abs(clf.coef_).max()))


def test_probe_matches_sklearn_selection_and_refit():
    x, y = mixture(900, seed=1)
    xt, yt = mixture(1200, seed=1)  # same class centres, other draws
    xt, yt = xt[900:], yt[900:]
    grid = (1e-4, 1e-2, 1.0)
    res = linear_probe(x, y, xt, yt, weight_decays=grid, heldout_fraction=0.25, seed=3)
    assert set(res.grid) == set(grid)
    assert res.weight_decay == max(grid, key=lambda v: (res.grid[v], v))
    # the same protocol with scikit-learn: train statistics, the same held-out split, then refit on all train
    mean, std = x.double().mean(0), x.double().std(0, unbiased=False)
    z, zt = (x.double() - mean) / std, (xt.double() - mean) / std
    fit_idx, val_idx = heldout_split(y, 0.25, 3)
    for wd in grid:
        clf = sklearn_fit(z[fit_idx], y[fit_idx], wd)
        assert res.grid[wd] == pytest.approx(clf.score(z[val_idx].numpy(), y[val_idx].numpy()), abs=0.01)
    clf = sklearn_fit(z, y, res.weight_decay)
    assert res.top1 == pytest.approx(clf.score(zt.numpy(), yt.numpy()), abs=0.01)
    assert res.protocol["train_size"] == 900 and res.protocol["test_size"] == 300
    assert res.protocol["fit_size"] + res.protocol["heldout_size"] == 900
    assert (res.predict(xt).cpu() == yt).float().mean().item() == pytest.approx(res.top1)
    d = res.to_dict()
    assert d["top1"] == res.top1 and d["protocol"]["weight_decay_grid"] == sorted(grid)


def test_standardisation_uses_train_statistics_and_survives_constant_dims():
    x, y = mixture(300)
    x[:, 3] = 7.0  # a dead unit
    xt, yt = mixture(100, seed=5)
    res = linear_probe(x, y, xt, yt, weight_decays=(1e-2,))
    torch.testing.assert_close(res.mean, x.mean(0), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(
        res.std[torch.arange(24) != 3], x.std(0, unbiased=False)[torch.arange(24) != 3], rtol=1e-4, atol=1e-4
    )
    assert res.std[3] == 1.0 and torch.isfinite(res.weight).all()


def test_heldout_split_is_stratified_and_seeded():
    y = torch.arange(1000) % 5
    a_fit, a_val = heldout_split(y, 0.2, 0)
    _, b_val = heldout_split(y, 0.2, 0)
    _, c_val = heldout_split(y, 0.2, 1)
    assert torch.equal(a_val, b_val) and not torch.equal(a_val, c_val)
    assert torch.bincount(y[a_val]).tolist() == [40] * 5
    assert len(set(a_fit.tolist()) & set(a_val.tolist())) == 0 and len(a_fit) + len(a_val) == 1000


def test_bad_inputs():
    x, y = mixture(50)
    with pytest.raises(DataError, match="dimension"):
        linear_probe(x, y, x[:, :5], y)
    with pytest.raises(DataError, match="unknown"):
        linear_probe(x, torch.full_like(y, -1), x, y)
    with pytest.raises(ConfigError, match="weight_decays"):
        linear_probe(x, y, x, y, weight_decays=(-1.0,))
    with pytest.raises(ConfigError, match="heldout_fraction"):
        linear_probe(x, y, x, y, heldout_fraction=1.5)
    with pytest.raises(DataError, match="train features must be a torch tensor, got ndarray"):
        linear_probe(x.numpy(), y.numpy(), x.numpy(), y.numpy())
    with pytest.raises(DataError, match="test labels must be a torch tensor, got list"):
        linear_probe(x, y, x, y.tolist())


def test_heldout_split_of_tiny_data_falls_back_to_a_plain_split():
    y = torch.arange(20) % 10  # 20 items, 10 classes: 4 held out cannot hold one of each class
    fit_idx, val_idx = heldout_split(y, 0.2, 0)
    assert len(val_idx) == 4 and len(fit_idx) == 16
    assert sorted(torch.cat([fit_idx, val_idx]).tolist()) == list(range(20))
    again = heldout_split(y, 0.2, 0)
    assert torch.equal(again[0], fit_idx) and torch.equal(again[1], val_idx)  # still seeded


def test_heldout_split_needs_two_items():
    from contrastkit.errors import ConfigError

    with pytest.raises(ConfigError, match="at least 2 training items"):
        heldout_split(torch.tensor([3]), 0.2, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool])
@pytest.mark.parametrize("split", ["train", "test"])
def test_non_integer_labels_are_refused_naming_the_dtype(split, dtype):
    x, y = mixture(60)
    bad = y.to(dtype)
    args = (x, bad, x, y) if split == "train" else (x, y, x, bad)
    with pytest.raises(
        DataError, match=rf"{split} labels must be an integer tensor.*got dtype {dtype}"
    ) as err:
        linear_probe(*args, weight_decays=(1e-2,))
    assert "unknown" not in str(err.value) and "-1" not in str(err.value)


def test_labels_of_any_integer_dtype_give_the_same_probe():
    x, y = mixture(120)
    xt, yt = mixture(60, seed=1)
    expected = linear_probe(x, y, xt, yt, weight_decays=(1e-2, 1e-1))
    for dtype in (torch.uint8, torch.int8, torch.int16, torch.int32):
        got = linear_probe(x, y.to(dtype), xt, yt.to(dtype), weight_decays=(1e-2, 1e-1))
        assert got.top1 == expected.top1 and got.weight_decay == expected.weight_decay
        torch.testing.assert_close(got.weight, expected.weight)


def test_negative_labels_still_say_unknown():
    x, y = mixture(50)
    y = y.clone()
    y[3] = -1
    with pytest.raises(DataError, match=r"train labels must be non-negative.*got -1.*unknown labels, -1"):
        linear_probe(x, y, x, y.clamp_min(0))


def test_a_held_out_share_of_every_item_names_the_fraction():
    from contrastkit.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"holding out 0\.9 of 3 training items rounds up to all 3.*at most 0\.666 here"
    ):
        heldout_split(torch.tensor([0, 1, 0]), 0.9, 0)


def test_seed_must_be_an_integer_so_the_split_is_reproducible():
    from contrastkit.errors import ConfigError

    x, y = mixture(60)
    with pytest.raises(ConfigError, match=r"seed must be an integer.*got None"):
        linear_probe(x, y, x, y, seed=None)


def test_sparse_class_ids_are_refused_before_allocating_a_weight_per_id():
    """Labels {0, 10**8} made a (10**8, D) weight matrix: the process was killed for memory."""
    x, y = mixture(60)
    with pytest.raises(DataError, match=r"largest is 300000000 for 120 labelled items.*return_inverse"):
        linear_probe(x, y * 10**8, x, y * 10**8)
