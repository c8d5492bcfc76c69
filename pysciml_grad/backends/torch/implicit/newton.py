"""Simplified Newton iteration for the stage equations of an implicit Runge-Kutta step.

For G(K) = K - F(K) = 0 (F: f at the stage values) the iteration is

    M dK_k = -G(K_k),   K_{k+1} = K_k + dK_k,

with M = dG/dK evaluated at some earlier point (simplified Newton: one LU serves every
iteration, stage and step until it is refreshed). Convergence test (Hairer & Wanner,
*Solving ODEs II*, IV.8, eq. 8.10-8.12): with the scaled norm ||x|| = RMS of
h x / (atol + rtol |y_n|) (the change of the stage values, in units of the tolerance) and
the observed contraction rate theta_k = ||dK_k|| / ||dK_{k-1}||, the iteration has
converged when

    eta_k ||dK_k|| <= kappa,   eta_k = theta_k / (1 - theta_k)

(an estimate of the remaining error ||K_{k+1} - K*||), and it is declared divergent when
theta_k >= 1 or when ``max_iters`` iterations did not suffice. The stage solver then
evaluates J afresh and retries, and as a last resort runs full Newton (J at every iterate). The first iteration has no
rate yet: it is accepted only when ||dK_1|| <= kappa / 100 (for a linear f and a fresh
Jacobian dK_2 is at rounding level, so this costs one iteration at most); the same
bound ends any iteration whose increment is that small, where theta is rounding noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch

#: Remaining Newton error allowed, as a fraction of the tolerance (Hairer's kappa * Tol).
KAPPA = 1e-2
#: rtol used by the scaled norm is at least this many units of roundoff, so that an
#: iterate at rounding level counts as converged whatever rtol the user asked for.
ROUNDOFF_UNITS = 1e3
#: An increment within this many units of roundoff of the iterate (max norms) is noise.
STAGNATION_UNITS = 16
#: theta above this on a converged solve: the Jacobian is refreshed before the next step.
SLOW_RATE = 0.5


@dataclass
class NewtonResult:
    K: torch.Tensor
    converged: bool
    iterations: int
    rate: float  # the largest contraction rate seen (0 for a one-iteration solve)


def scaled_norm(dK: torch.Tensor, h: float, scale: torch.Tensor) -> float:
    return float((dK * abs(h) / scale).square().mean().sqrt())


def error_scale(y: torch.Tensor, rtol: float, atol: float) -> torch.Tensor:
    rt = max(rtol, ROUNDOFF_UNITS * torch.finfo(y.dtype).eps)
    return y.detach().abs() * rt + atol


def iterate(residual: Callable[[torch.Tensor], torch.Tensor], solve: Callable[[torch.Tensor], torch.Tensor],
            K0: torch.Tensor, h: float, scale: torch.Tensor, max_iters: int,
            solver_at: Optional[Callable[[torch.Tensor], Callable]] = None) -> NewtonResult:
    """Simplified Newton from ``K0``: ``residual(K) = G(K)``, ``solve(r) = M^{-1} r``.

    ``solver_at(K)``: full Newton instead, M refactorised at every iterate (the last resort
    of the stage solver, far from the solution, where a contraction rate above 1 in early
    iterations is no sign of divergence: only ``max_iters`` ends it)."""
    K = K0
    prev: Optional[float] = None
    worst = 0.0
    for k in range(1, max_iters + 1):
        if solver_at is not None:
            solve = solver_at(K)
        dK = solve(-residual(K))
        K = K + dK
        norm = scaled_norm(dK, h, scale)
        if not math.isfinite(norm):
            return NewtonResult(K, False, k, math.inf)
        if norm <= KAPPA * 1e-2:  # also ends a run at rounding level, where theta is noise
            return NewtonResult(K, True, k, worst)
        if float(dK.abs().max()) <= STAGNATION_UNITS * torch.finfo(K.dtype).eps * float(K.abs().max()):
            # The increment is rounding noise of the iterate itself (float32, or an entry whose
            # tolerance scale atol is far below its stage derivative's rounding): nothing to gain.
            return NewtonResult(K, True, k, worst)
        if prev is not None:
            theta = norm / prev if prev > 0 else 0.0
            worst = max(worst, theta)
            if theta >= 1.0 and solver_at is None:
                return NewtonResult(K, False, k, theta)
            if theta >= 1.0:
                prev = norm
                continue
            if norm == 0.0 or theta / (1 - theta) * norm <= KAPPA:
                return NewtonResult(K, True, k, worst)
        prev = norm
    return NewtonResult(K, False, max_iters, worst)
