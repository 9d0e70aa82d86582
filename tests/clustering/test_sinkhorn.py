"""Log-domain Sinkhorn-Knopp: marginals to 1e-4 (uniform and not), agreement with POT and with a plain
float64 reference, stability at ε = 1/λ = 0.01, and the limit λ -> ∞ (the assignment problem)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from contrastkit.clustering.sinkhorn import gaussian_marginal, sinkhorn
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


def test_bad_input() -> None:
    with pytest.raises(ConfigError, match="NaN or inf"):
        sinkhorn(torch.tensor([[0.0, -float("inf")]]), 10.0)
    with pytest.raises(ConfigError, match="3 entries, expected 2"):
        sinkhorn(torch.zeros(4, 2), 10.0, cluster_marginal=torch.ones(3))
    with pytest.raises(ConfigError, match="positive"):
        sinkhorn(torch.zeros(4, 2), 10.0, cluster_marginal=torch.tensor([1.0, 0.0]))
    with pytest.raises(ConfigError, match="lam"):
        sinkhorn(torch.zeros(4, 2), 0.0)
