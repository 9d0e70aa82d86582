"""Sinkhorn-Knopp in the log domain for the self-labelling transport problem.

SeLa (Asano, Rupprecht, Vedaldi 2020, "Self-labelling via simultaneous clustering and representation
learning", ICLR 2020, arXiv 1911.05371v3), the self-labelling method section: with the model's
posteriors ``P_yi = p(y | x_i) / N`` (K clusters x N items) and the label assignment ``Q`` constrained to
the transportation polytope

    U(r, c) = {Q ∈ R_+^{K x N} : Q 1 = r, Q^T 1 = c},   r = 1/K (equipartition), c = 1/N,

minimising the cross-entropy ``E(p, q) + log N = <Q, -log P>`` over ``U(r, c)`` is an optimal transport
problem. SeLa regularises it with the entropy term ``(1/λ) KL(Q || r c^T)``,

    min_{Q ∈ U(r, c)}  <Q, -log P> + (1/λ) KL(Q || r c^T),

whose solution is ``Q = diag(α) P^λ diag(β)``, the scaling vectors found by Sinkhorn-Knopp iterations
``α <- r / (P^λ β)``, ``β <- c / (α^T P^λ)`` ("a fast variant of the Sinkhorn-Knopp algorithm", the paper's abstract; the link to Cuturi 2013 is
not verified). Larger λ
is closer to the unregularised problem; the reference code (github.com/yukimasano/self-label) uses
λ = 25 (``main.py``, ImageNet) and 10 (``cifar.py``). Pseudo-labels are ``argmax_y Q_yi``.

Citation check (what was and was not verified). The update rule and its order were checked against the
authors' reference code, ``sinkhornknopp.py``/``cifar.py`` of yukimasano/self-label: with ``P^λ`` (K x N)
it computes ``r <- (1/K) / (P^λ c)`` (the per-cluster vector, α here) and *then* ``c <- (1/N) / (r^T P^λ)``
(the per-item vector, β here), and the plan ``diag(r) P^λ diag(c)`` -- the same order as below. The
paper's body text (arXiv 1911.05371v3; the SPIQA copy of its LaTeX and the ar5iv page) could only be read
as far as its opening in the reference store used for this check, so the equation and section numbers of
the objective and of the update are still *not* verified, and none are given: the equations are cited by
content (the "Sec. 3.1" cited here before was never read either and is dropped).

SeLaVi (Asano, Patrick, Rupprecht, Vedaldi 2020, "Labelling unlabelled videos from scratch with
multi-modal self-supervision", NeurIPS 2020, arXiv 2006.13662v3), method section (section number not
verified): the equipartition prior ``r`` can be replaced by any cluster marginal, e.g. one drawn from a
Gaussian and sorted against the current cluster sizes (:func:`gaussian_marginal`, which differs from the
reference code in one respect, see there), for data whose classes are not balanced.

Here the iterations run on the log scaling vectors, ``log α = log r - logsumexp(λ log P + log β)`` and its
counterpart, so ``P^λ`` is never formed and a large λ (ε = 1/λ = 0.01) neither underflows nor overflows.
This is the exp-form update taken in logs, term for term (``log(r / (P^λ β)) = log r - log Σ_i
exp(λ log P_ki + log β_i)``), so it has the same iterates and fixed point; the ε-scaling (``anneal``) only
changes the starting point of the final stage. The layout is items x clusters, ``(N, K)``, the transpose
of the paper's ``K x N``. The stopping rule differs from the reference code's (which stops when
``Σ |c / c_new - 1| < 0.1`` in ``sinkhornknopp.py``, 0.01 in ``cifar.py``; SeLaVi's ``sk_utils.py`` also
caps the iterations at 2000): here the column sums must match ``r``
to a relative ``tol``. A solve that does not reach ``tol`` within ``max_iter`` iterations still returns its
plan (``converged`` False) and emits a :class:`SinkhornConvergenceWarning`.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from contrastkit.errors import ConfigError

__all__ = ["SinkhornConvergenceWarning", "SinkhornResult", "gaussian_marginal", "sinkhorn"]


class SinkhornConvergenceWarning(RuntimeWarning):
    """:func:`sinkhorn` stopped at ``max_iter`` with the column marginals further than ``tol`` from ``r``."""


@dataclass
class SinkhornResult:
    """The transport plan ``plan`` (N, K) (rows sum to the item marginal, columns to the cluster marginal),
    its log, the iterations run (all stages), and the largest relative error of a column sum ``max_k |Σ_i Q_ik / r_k - 1|``
    (the rows are exact up to rounding: the last update scales them); ``converged``: that error is below
    ``tol`` (otherwise the solve stopped at ``max_iter``)."""

    plan: Tensor
    log_plan: Tensor
    iterations: int
    error: float
    converged: bool = True

    @property
    def labels(self) -> Tensor:
        """Hard pseudo-labels ``argmax_k Q_ik``, int64 (N,)."""
        return self.log_plan.argmax(dim=1)


def _positive_real(v: object) -> bool:
    return not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(v) and v > 0


def _marginal(name: str, m: Tensor | None, n: int, like: Tensor) -> Tensor:
    if m is None:
        return torch.full(
            (n,),
            -torch.log(torch.tensor(float(n), dtype=like.dtype)).item(),
            dtype=like.dtype,
            device=like.device,
        )
    m = torch.as_tensor(m).to(like.device, like.dtype).flatten()
    if m.numel() != n:
        raise ConfigError(f"{name} marginal has {m.numel()} entries, expected {n}")
    if not bool(torch.isfinite(m).all()) or bool((m <= 0).any()):
        raise ConfigError(f"{name} marginal must be positive and finite; got min {float(m.min()):g}")
    return torch.log(m / m.sum())


def sinkhorn(
    log_p: Tensor,
    lam: float = 25.0,
    *,
    cluster_marginal: Tensor | None = None,
    item_marginal: Tensor | None = None,
    max_iter: int = 10_000,
    tol: float = 1e-6,
    check_every: int = 10,
    anneal: bool = True,
    dtype: torch.dtype = torch.float64,
) -> SinkhornResult:
    """Solve ``min_{Q ∈ U(r, c)} <Q, -log P> + (1/λ) KL(Q || r c^T)`` (SeLa's regularised transport problem,
    module docstring) in the log domain.

    ``log_p`` is ``(N, K)``: log-posteriors ``log p(k | x_i)`` (any scores work: rows are only shifted by
    constants, which the scaling absorbs). ``cluster_marginal`` ``r`` (K,) defaults to equipartition
    ``1/K``; ``item_marginal`` ``c`` (N,) to ``1/N``; both are normalised to sum to 1. Iterates until every
    column sum is within a relative ``tol`` of ``r`` (checked every ``check_every`` iterations) or
    ``max_iter`` (then with a :class:`SinkhornConvergenceWarning`; the plan is returned all the same, with
    ``converged`` False); the rows match ``c`` after every iteration. ``anneal`` (default) reaches a large λ by
    ε-scaling: stages λ/4^j up from 1, each warm-started from the last (the fixed point is unchanged). Computes in
    ``dtype`` (float64 by default) on ``log_p``'s device.
    """
    if not isinstance(log_p, Tensor) or log_p.ndim != 2 or min(log_p.shape) < 1:
        raise ConfigError(f"log_p must be an (N, K) tensor, got {getattr(log_p, 'shape', type(log_p))}")
    if not _positive_real(lam):
        raise ConfigError(f"lam (λ, the inverse regularisation) must be a finite number > 0, got {lam!r}")
    for name, v in (("max_iter", max_iter), ("check_every", check_every)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    if not _positive_real(tol):
        raise ConfigError(
            f"tol (the relative column-marginal error to reach) must be a finite number > 0, got {tol!r}"
        )
    max_iter, check_every, tol = int(max_iter), int(check_every), float(tol)
    if not bool(torch.isfinite(log_p).all()):
        raise ConfigError(
            "log_p holds NaN or inf; check the model's outputs (use log_softmax, not log(softmax))"
        )
    n, k = log_p.shape
    if k > n:  # the paper writes P as K x N: a transposed input solves another problem, silently
        warnings.warn(
            f"log_p has more clusters (K = {k} columns) than items (N = {n} rows): sinkhorn takes the items x "
            "clusters layout (N, K), the transpose of the paper's K x N; if you passed P as K x N, pass "
            "log_p.T",
            UserWarning,
            stacklevel=2,
        )
    lp = log_p.to(dtype)
    log_r = _marginal("cluster", cluster_marginal, k, lp)
    log_c = _marginal("item", item_marginal, n, lp)
    r = log_r.exp()
    # ε-scaling (Schmitzer 2019): for λ > 1 solve first at λ_0 = 1, then λ x 4 per stage up to λ, warm-starting
    # the dual potentials u / λ; only the last stage runs to the tolerance. Same fixed point; the gain is at
    # large λ. Measured (2026-12-02, log_softmax of N(0, 1) logits, 300 x 10, seeds 0-2, iterations with /
    # without): λ = 1000 at tol 1e-3: 980-1620 / 4410-4700; at tol 1e-6 (the default) neither reaches the
    # tolerance within 20,000 iterations on 2 of the 3 (annealed: once, in 16,680). At SeLa's λ = 10-25 it
    # costs up to ~20% more (tol 1e-6: 90-340 / 80-340). λ <= 1 is one stage at λ itself.
    stages = [float(lam)]
    if anneal:
        while stages[-1] > 1.0:
            stages.append(max(stages[-1] / 4, 1.0))
        stages = stages[::-1]
    log_beta = torch.zeros(n, dtype=dtype, device=lp.device)  # per item (rows here)
    log_alpha = torch.zeros(k, dtype=dtype, device=lp.device)  # per cluster (columns here)
    prev = stages[0]
    error, it, total = float("inf"), 0, 0
    for stage, lam_s in enumerate(stages):
        log_alpha, log_beta = log_alpha * (lam_s / prev), log_beta * (lam_s / prev)
        prev = lam_s
        kernel = lam_s * lp  # log P^λ
        last = stage == len(stages) - 1
        budget = max_iter if last else max(1, min(max_iter, 200))
        for it in range(1, budget + 1):
            log_alpha = log_r - torch.logsumexp(kernel + log_beta.unsqueeze(1), dim=0)
            log_beta = log_c - torch.logsumexp(kernel + log_alpha.unsqueeze(0), dim=1)
            if it % check_every == 0 or it == budget:
                # the rows are exact after the β update; the columns carry the remaining error
                cols = (torch.logsumexp(kernel + log_beta.unsqueeze(1), dim=0) + log_alpha).exp()
                error = float(((cols - r).abs() / r).max())
                if error < (tol if last else max(tol, 1e-3)):
                    break
        total += it
    log_plan = kernel + log_beta.unsqueeze(1) + log_alpha.unsqueeze(0)
    plan = log_plan.exp()
    converged = error < tol
    if not converged:
        warnings.warn(
            f"Sinkhorn did not converge: after {it} iterations at λ = {float(lam):g}"
            + (f" ({total} with the annealing stages before it)" if total != it else "")
            + " the largest relative "
            f"column-marginal error is {error:.3g} (tol {tol:g}); the plan is returned as it is. Raise "
            f"max_iter (now {max_iter}) or lower lam (stronger regularisation converges faster)"
            + ("" if anneal else ", or keep anneal=True (ε-scaling)"),
            SinkhornConvergenceWarning,
            stacklevel=2,
        )
    return SinkhornResult(plan=plan, log_plan=log_plan, iterations=total, error=error, converged=converged)


def gaussian_marginal(
    num_clusters: int,
    std: float,
    *,
    current_sizes: Tensor | None = None,
    generator: torch.Generator | None = None,
    min_size: float = 1e-3,
    order: str = "matched",
) -> Tensor:
    """SeLaVi's non-uniform cluster prior: relative sizes ``s_k ~ N(1, std²)`` (floored at ``min_size``),
    normalised to sum to 1. With ``current_sizes`` (e.g. ``P.sum(0)``) the drawn sizes are sorted to follow
    them.

    ``order`` says which cluster gets which mass:

    - ``"matched"`` (default): the marginal is the sorted sizes themselves, so the currently largest cluster
      gets the largest mass (the least disruptive assignment of the drawn sizes);
    - ``"reference"``: what the SeLaVi reference code does (facebookresearch/selavi, ``src/sk_utils.py``,
      ``optimize_L_sk_gpu``, read for this): it draws sizes ``(N(0, 1) * gauss_sd + 1) * N / K``, clamps
      them at 1 item (here: ``min_size`` relative to a mean of 1), sorts them against ``PS.sum(0)`` the same
      way, and then uses ``r = 1 / sizes`` (normalised) as the column marginal of its Sinkhorn loop, so the
      currently *largest* cluster gets the *smallest* mass.

    The SeLaVi paper's text, which would say which of the two is meant, could not be read for this check;
    both are offered so that a comparison with the published code is possible."""
    if not isinstance(num_clusters, int) or num_clusters < 1:
        raise ConfigError(f"num_clusters must be a positive integer, got {num_clusters!r}")
    if not (isinstance(std, (int, float)) and std >= 0):
        raise ConfigError(f"std must be >= 0, got {std!r}")
    _check_order(order)
    s = (torch.randn(num_clusters, generator=generator, dtype=torch.float64) * std + 1).clamp_min(min_size)
    if current_sizes is None:
        return _oriented(s, order)
    return sorted_marginal(s / s.sum(), current_sizes, order)


MARGINAL_ORDERS = ("matched", "reference")


def _check_order(order: str) -> None:
    if order not in MARGINAL_ORDERS:
        raise ConfigError(f"order must be 'matched' or 'reference', got {order!r}")


def _oriented(sizes: Tensor, order: str) -> Tensor:
    """``sizes`` normalised as the marginal (``matched``) or inverted first (``reference``: r = 1/sizes)."""
    r = 1.0 / sizes if order == "reference" else sizes
    return r / r.sum()


def sorted_marginal(prior: Tensor, current_sizes: Tensor, order: str = "matched") -> Tensor:
    """The values of ``prior`` (K,) handed to the clusters in the order of ``current_sizes`` (K,): the largest
    value to the currently largest cluster; then, for ``order="reference"``, inverted (``r = 1/sizes``, the
    SeLaVi code's marginal, see :func:`gaussian_marginal`). Returned normalised, in float64."""
    _check_order(order)
    prior = torch.as_tensor(prior, dtype=torch.float64)
    sizes = torch.as_tensor(current_sizes).detach().cpu().to(torch.float64)
    if sizes.shape != prior.shape:
        raise ConfigError(
            f"current_sizes must have shape ({prior.shape[0]},), one size per cluster; got {tuple(sizes.shape)}"
        )
    out = torch.empty_like(prior)
    out[torch.argsort(sizes)] = torch.sort(prior).values
    return _oriented(out, order)
