"""Log-domain Sinkhorn-Knopp: marginals to 1e-4 (uniform and not), agreement with POT and with a plain
float64 reference, stability at ε = 1/λ = 0.01, and the limit λ -> ∞ (the assignment problem)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from contrastkit.clustering.sinkhorn import SinkhornConvergenceWarning, gaussian_marginal, sinkhorn
from contrastkit.errors import ConfigError


def log_posteriors(n: int, k: int, scale: float = 3.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(scale * torch.randn(n, k, generator=g, dtype=torch.float64), dim=1)


def plain_sinkhorn(p: np.ndarray, lam: float, r: np.ndarray, c: np.ndarray, iters: int = 5000) -> np.ndarray:
    """SeLa's update in the plain domain (as the reference code, K x N): α = r / (P^λ β), β = c / (α^T P^λ)."""
    k_mat = p.T**lam  # K x N
    beta = np.ones(p.shape[0])
    for _ in range(iters):
        alpha = r / (k_mat @ beta)
        beta = c / (alpha @ k_mat)
    return (alpha[:, None] * k_mat * beta[None, :]).T


def check_marginals(plan: torch.Tensor, r: torch.Tensor, c: torch.Tensor, rel: float = 1e-4) -> None:
    assert torch.isfinite(plan).all() and bool((plan >= 0).all())
    assert float(((plan.sum(0) - r).abs() / r).max()) < rel
    assert float(((plan.sum(1) - c).abs() / c).max()) < rel


@pytest.mark.parametrize("lam", [1.0, 10.0, 25.0])
def test_equipartition_marginals(lam: float) -> None:
    n, k = 120, 6
    res = sinkhorn(log_posteriors(n, k), lam)
    check_marginals(
        res.plan, torch.full((k,), 1 / k, dtype=torch.float64), torch.full((n,), 1 / n, dtype=torch.float64)
    )
    assert res.labels.shape == (n,) and res.error < 1e-6


def test_non_uniform_marginals() -> None:
    n, k = 90, 5
    r = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05], dtype=torch.float64)
    c = torch.rand(n, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 0.5
    res = sinkhorn(
        log_posteriors(n, k, seed=3), 10.0, cluster_marginal=r * 7, item_marginal=c
    )  # unnormalised on purpose
    check_marginals(res.plan, r, c / c.sum())
    counts = torch.bincount(res.labels, minlength=k).double() / n
    assert counts[0] > counts[-1]  # the prior shapes the hard labels too


def test_matches_plain_domain_reference() -> None:
    n, k, lam = 40, 4, 3.0
    lp = log_posteriors(n, k, scale=1.0, seed=5)
    r, c = np.array([0.1, 0.2, 0.3, 0.4]), np.full(n, 1 / n)
    ref = plain_sinkhorn(lp.exp().numpy(), lam, r, c)
    res = sinkhorn(lp, lam, cluster_marginal=torch.from_numpy(r), tol=1e-12, max_iter=50_000)
    np.testing.assert_allclose(res.plan.numpy(), ref, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("lam", [0.05, 0.5, 1.0])
def test_lambda_at_most_one_is_solved_as_given(lam: float) -> None:
    """λ <= 1 (strong regularisation) needs no annealing: the plan is that of λ itself, not of λ = 1 (the
    annealing's first stage), with and without ``anneal``, and it matches the plain-domain reference."""
    n, k = 40, 4
    lp = log_posteriors(n, k, scale=2.0, seed=8)
    r, c = np.array([0.1, 0.2, 0.3, 0.4]), np.full(n, 1 / n)
    ref = plain_sinkhorn(lp.exp().numpy(), lam, r, c)
    kw = dict(cluster_marginal=torch.from_numpy(r), tol=1e-12, max_iter=50_000)
    annealed, plain = sinkhorn(lp, lam, **kw), sinkhorn(lp, lam, anneal=False, **kw)
    np.testing.assert_allclose(annealed.plan.numpy(), ref, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(plain.plan.numpy(), ref, rtol=1e-6, atol=1e-12)
    if lam < 1:  # the plans of λ and of λ = 1 differ: the check above can tell them apart
        at_one = sinkhorn(lp, 1.0, **kw).plan.numpy()
        assert np.abs(at_one - ref).max() > 1e-4


def test_matches_pot() -> None:
    ot = pytest.importorskip("ot")
    n, k, lam = 50, 5, 5.0
    lp = log_posteriors(n, k, scale=1.5, seed=6)
    r = np.array([0.3, 0.25, 0.2, 0.15, 0.1])
    c = np.full(n, 1 / n)
    # min <Q, -log P> + (1/λ) KL(Q || r c^T) has the minimiser of POT's <Q, M> + reg Σ Q log Q on U(c, r)
    ref = ot.sinkhorn(c, r, -lp.numpy(), reg=1 / lam, numItermax=100_000, stopThr=1e-13)
    res = sinkhorn(lp, lam, cluster_marginal=torch.from_numpy(r), tol=1e-12, max_iter=100_000)
    np.testing.assert_allclose(res.plan.numpy(), ref, rtol=1e-5, atol=1e-10)


def test_stable_at_small_regularisation_and_tends_to_the_assignment() -> None:
    n = k = 12
    lp = log_posteriors(n, k, scale=4.0, seed=7)
    res = sinkhorn(lp, 100.0)  # ε = 0.01: P^λ underflows float64 (exp(-100 * 30)), the log domain does not
    assert (lp.exp() ** 100).min() == 0
    uniform = torch.full((k,), 1 / k, dtype=torch.float64)
    check_marginals(res.plan, uniform, uniform)
    rows, cols = linear_sum_assignment(-lp.numpy())  # the unregularised problem: a permutation
    assert res.labels.tolist() == cols[np.argsort(rows)].tolist()


def test_gaussian_marginal_follows_current_sizes() -> None:
    g = torch.Generator().manual_seed(0)
    sizes = torch.tensor([5.0, 1.0, 3.0, 2.0, 4.0])
    m = gaussian_marginal(5, 0.3, current_sizes=sizes, generator=g)
    assert abs(float(m.sum()) - 1) < 1e-12 and bool((m > 0).all())
    assert torch.argsort(m).tolist() == torch.argsort(sizes).tolist()
    assert torch.allclose(gaussian_marginal(4, 0.0), torch.full((4,), 0.25, dtype=torch.float64))


def _reference_selavi_marginal(ps: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """The column marginal SeLaVi's published code (src/sk_utils.py, optimize_L_sk_gpu) reaches, written
    out from its steps: Gaussian sizes in items, clamped at one item, sorted against PS.sum(0), r = 1/sizes;
    its Sinkhorn loop (alpha = r / (beta^T PS)^T, beta = c / (PS alpha)) then gives columns summing to r."""
    n, k = ps.shape
    dist = (torch.randn(k, generator=generator, dtype=torch.float64) * std + 1) * n / k
    dist = torch.clamp(dist, min=1)
    dist[torch.argsort(ps.sum(0))] = torch.sort(dist)[0]
    r = 1.0 / dist
    r = r / r.sum()
    beta = torch.ones(n, 1, dtype=torch.float64) / n
    for _ in range(2000):
        alpha = r[:, None] / (beta.t() @ ps).t()
        beta = (1.0 / n) / (ps @ alpha)
    q = beta * ps * alpha.t()
    return q.sum(0) / q.sum()


def test_gaussian_marginal_reference_order_matches_selavi_code() -> None:
    n, k, std = 200, 6, 0.3
    ps = torch.softmax(torch.randn(n, k, generator=torch.Generator().manual_seed(1), dtype=torch.float64), 1)
    expected = _reference_selavi_marginal(ps, std, torch.Generator().manual_seed(7))
    got = gaussian_marginal(
        k,
        std,
        current_sizes=ps.sum(0),
        generator=torch.Generator().manual_seed(7),
        min_size=k / n,  # the reference clamps at one item: 1 / (N / K) relative to a mean of 1
        order="reference",
    )
    assert torch.allclose(got, expected, atol=1e-8), (got, expected)
    # the reference gives the currently largest cluster the smallest mass; "matched" the largest
    assert int(got.argmin()) == int(ps.sum(0).argmax())
    matched = gaussian_marginal(k, std, current_sizes=ps.sum(0), generator=torch.Generator().manual_seed(7))
    assert int(matched.argmax()) == int(ps.sum(0).argmax())
    # and our solver reaches that marginal
    res = sinkhorn(ps.log(), 10.0, cluster_marginal=got)
    assert torch.allclose(res.plan.sum(0) / res.plan.sum(), got, atol=1e-4)


def test_gaussian_marginal_bad_order_and_sizes() -> None:
    with pytest.raises(ConfigError, match="order must be 'matched' or 'reference'"):
        gaussian_marginal(3, 0.1, order="largest")
    with pytest.raises(ConfigError, match=r"current_sizes must have shape \(3,\)"):
        gaussian_marginal(3, 0.1, current_sizes=torch.ones(4))


def test_bad_input() -> None:
    with pytest.raises(ConfigError, match="NaN or inf"):
        sinkhorn(torch.tensor([[0.0, -float("inf")]]), 10.0)
    with pytest.raises(ConfigError, match="3 entries, expected 2"):
        sinkhorn(torch.zeros(4, 2), 10.0, cluster_marginal=torch.ones(3))
    with pytest.raises(ConfigError, match="positive"):
        sinkhorn(torch.zeros(4, 2), 10.0, cluster_marginal=torch.tensor([1.0, 0.0]))
    with pytest.raises(ConfigError, match="lam"):
        sinkhorn(torch.zeros(4, 2), 0.0)


def hard_problem(n: int = 200, k: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Peaked posteriors with non-uniform marginals: slow to converge at a large λ (QA report, item 6)."""
    g = torch.Generator().manual_seed(0)
    lp = torch.log_softmax(4 * torch.randn(n, k, generator=g, dtype=torch.float64), dim=1)
    r = torch.rand(k, generator=g, dtype=torch.float64) + 0.1
    c = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    return lp, r, c


def test_an_unconverged_solve_warns_and_still_returns_the_plan() -> None:
    lp, r, c = hard_problem()
    kw = dict(cluster_marginal=r, item_marginal=c, max_iter=30, anneal=False)
    with pytest.warns(
        RuntimeWarning, match=r"did not converge.*30 iterations.*λ = 1000.*Raise max_iter.*lower lam"
    ) as rec:
        res = sinkhorn(lp, 1000.0, **kw)
    assert len(rec) == 1 and issubclass(rec[0].category, SinkhornConvergenceWarning)
    assert res.error > 1e-6 and not res.converged
    assert f"{res.error:.3g}" in str(rec[0].message)  # the reached error is named
    # the error it reports is the plan's own column error, and the rows are exact
    rn, cn = r / r.sum(), c / c.sum()
    assert res.error == pytest.approx(float(((res.plan.sum(0) - rn).abs() / rn).max()), rel=1e-9)
    assert float(((res.plan.sum(1) - cn).abs() / cn).max()) < 1e-10
    # the warning changes nothing: the same iterations and plan as a run with warnings silenced
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = sinkhorn(lp, 1000.0, **kw)
    assert torch.equal(again.plan, res.plan) and again.iterations == res.iterations == 30


def test_the_warning_counts_the_last_stage_and_all_iterations() -> None:
    lp, r, c = hard_problem()
    with pytest.warns(SinkhornConvergenceWarning) as rec:
        res = sinkhorn(lp, 1000.0, cluster_marginal=r, item_marginal=c, max_iter=30)
    assert res.iterations > 30  # the annealing stages ran before the last one's 30
    assert f"after 30 iterations at λ = 1000 ({res.iterations} with the annealing stages" in str(
        rec[0].message
    )


def test_the_warning_without_annealing_suggests_it() -> None:
    lp, r, c = hard_problem()
    with pytest.warns(SinkhornConvergenceWarning, match="anneal=True"):
        sinkhorn(lp, 1000.0, cluster_marginal=r, item_marginal=c, max_iter=30, anneal=False)


@pytest.mark.parametrize("lam", [1.0, 10.0, 25.0])
def test_converged_solves_emit_no_warning(lam: float) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = sinkhorn(log_posteriors(120, 6), lam)
    assert res.converged and res.error < 1e-6


def test_converged_numbers_are_unchanged() -> None:
    """The plan of a converged solve equals the update rule run here by hand (anneal off, same checks)."""
    lp, r, c = hard_problem(60, 4)
    res = sinkhorn(lp, 5.0, cluster_marginal=r, item_marginal=c, anneal=False, check_every=7)
    log_r, log_c = torch.log(r / r.sum()), torch.log(c / c.sum())
    kernel = 5.0 * lp
    la, lb = torch.zeros(4, dtype=torch.float64), torch.zeros(60, dtype=torch.float64)
    for it in range(1, 10_001):
        la = log_r - torch.logsumexp(kernel + lb.unsqueeze(1), dim=0)
        lb = log_c - torch.logsumexp(kernel + la.unsqueeze(0), dim=1)
        if it % 7 == 0:
            cols = (torch.logsumexp(kernel + lb.unsqueeze(1), dim=0) + la).exp()
            if float(((cols - r / r.sum()).abs() / (r / r.sum())).max()) < 1e-6:
                break
    assert res.iterations == it and res.converged
    assert torch.equal(res.log_plan, kernel + lb.unsqueeze(1) + la.unsqueeze(0))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(check_every=0), r"check_every must be a positive integer, got 0"),
        (dict(check_every=-3), r"check_every must be a positive integer, got -3"),
        (dict(check_every=2.5), r"check_every must be a positive integer, got 2\.5"),
        (dict(check_every=True), r"check_every must be a positive integer, got True"),
        (dict(max_iter=0), r"max_iter must be a positive integer, got 0"),
        (dict(max_iter=-1), r"max_iter must be a positive integer, got -1"),
        (dict(tol=0.0), r"tol .*must be a finite number > 0, got 0\.0"),
        (dict(tol=-1e-6), r"tol .*must be a finite number > 0"),
        (dict(tol=math.nan), r"tol .*must be a finite number > 0, got nan"),
        (dict(lam=True), r"lam .*must be a finite number > 0, got True"),
        (dict(lam=math.inf), r"lam .*must be a finite number > 0, got inf"),
        (dict(lam=math.nan), r"lam .*must be a finite number > 0, got nan"),
    ],
)
def test_bad_solver_options(kw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        sinkhorn(log_posteriors(10, 3), **{"lam": 10.0, **kw})


def test_numpy_scalars_are_accepted() -> None:
    lp = log_posteriors(30, 3)
    ref = sinkhorn(lp, 10.0, max_iter=500, check_every=5, tol=1e-8)
    got = sinkhorn(
        lp, np.float64(10.0), max_iter=np.int64(500), check_every=np.int32(5), tol=np.float32(1e-8)
    )
    assert torch.equal(got.plan, ref.plan) and got.iterations == ref.iterations


def test_the_papers_k_by_n_layout_is_warned_about() -> None:
    """sinkhorn takes (N items, K clusters); the paper's K x N passed as is solved another problem silently."""
    log_p = torch.log_softmax(torch.randn(300, 10, generator=torch.Generator().manual_seed(0)), dim=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        sinkhorn(log_p, lam=10.0, tol=1e-3)  # (N, K): no warning
    with pytest.warns(
        UserWarning, match=r"more clusters \(K = 300 columns\) than items \(N = 10 rows\).*log_p\.T"
    ):
        sinkhorn(log_p.T, lam=10.0, tol=1e-3, max_iter=50)
