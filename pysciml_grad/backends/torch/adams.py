"""Fixed-grid Adams-Bashforth (explicit) and Adams-Bashforth-Moulton (implicit) stepping,
variable order as torchdiffeq 0.2.5 does it.

Semantics read from torchdiffeq 0.2.5 (rtqichen/torchdiffeq, ``torchdiffeq/_impl/fixed_adams.py``,
commit a88aac5), written anew here:

* the history holds f_n, f_{n-1}, ... (at most ``max_order - 1`` values, default
  ``max_order = 12``); with k values in it the step is

      predictor (Adams-Bashforth, order k):  y_{n+1} = y_n + h sum_{j<k} beta^k_j f_{n-j}

  and, for ``implicit_adams``, the Adams-Moulton corrector of order k+1,

      y_{n+1} = y_n + h (mu_0 f(t_{n+1}, y_{n+1}) + sum_{j<k} mu_{j+1} f_{n-j}),

  solved by fixed-point iteration from the predictor, at most ``max_iters`` (4) times, until
  max |dy_new - dy_old| / (atol + rtol max(|dy_old|, |dy_new|)) < 1 (torchdiffeq measures the
  increments dy, with the solve's rtol/atol). If it does not converge a
  ``SolverAccuracyWarning`` is issued and the oldest history value is dropped (the order
  falls by one);
* while the history has fewer than 3 values the step is classical RK4 in its 3/8-rule form
  (torchdiffeq's ``rk4_alt_step_func``), so the order climbs 3, 4, ..., max_order - 1;
* f(t_n, y_n) is evaluated afresh at every step (one call of func per step for the
  explicit method, up to 1 + max_iters for the implicit one); the coefficients assume
  equal steps (torchdiffeq uses them unchanged on a non-uniform grid too).

The coefficients are computed exactly here (rational arithmetic): for nodes s_m (in units of
h from t_n) the weight of node m is the integral over s in [0, 1] of its Lagrange basis
polynomial; Adams-Bashforth uses s = 0, -1, ..., -(k-1), Adams-Moulton s = 1, 0, ..., -(k-1)
(Hairer, Norsett & Wanner I, III.1). ``tests/test_adams.py`` checks them against the
classical tables and measures the orders.

Save times between grid points come from the cubic Hermite interpolant through
(y_n, f_n), (y_{n+1}, f_{n+1}), like the other fixed-step methods of this engine.
"""

from __future__ import annotations

import warnings
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Deque, List, Optional, Sequence, Tuple

import torch

from ...errors import InvalidProblemError, MaxStepsExceededError, SolverAccuracyWarning
from . import callbacks
from .integrate import AcceptedStep, CountingRHS, Counters, LazyRHS, Record, Scalar, Until, _saves_in_step, as_float, fixed_grid
from .stepping import hermite, in_dtype_of, nudge, rk_step
from .tableaus import TABLEAUS

#: The highest order offered (torchdiffeq's ``_MAX_ORDER``); below 4 the method is RK4 only.
MAX_ORDER = 12
MIN_ORDER = 4
MAX_ITERS = 4


@dataclass(frozen=True)
class AdamsSpec:
    """Which Adams method: ``implicit`` adds the Adams-Moulton corrector."""

    implicit: bool


ADAMS_METHODS = {"explicit_adams": AdamsSpec(False), "implicit_adams": AdamsSpec(True), "fixed_adams": AdamsSpec(True)}


def _poly_mul(p: List[Fraction], q: List[Fraction]) -> List[Fraction]:
    out = [Fraction(0)] * (len(p) + len(q) - 1)
    for i, a in enumerate(p):
        for j, b in enumerate(q):
            out[i + j] += a * b
    return out


@lru_cache(maxsize=None)
def quadrature_weights(nodes: Tuple[int, ...]) -> Tuple[Fraction, ...]:
    """w_m = integral_0^1 prod_{l != m} (s - s_l) / (s_m - s_l) ds, exactly."""
    weights = []
    for m, s_m in enumerate(nodes):
        poly = [Fraction(1)]
        for l, s_l in enumerate(nodes):
            if l != m:
                poly = _poly_mul(poly, [Fraction(-s_l, s_m - s_l), Fraction(1, s_m - s_l)])
        weights.append(sum(c / (p + 1) for p, c in enumerate(poly)))
    return tuple(weights)


def bashforth(k: int) -> Tuple[Fraction, ...]:
    """Adams-Bashforth weights of f_n, f_{n-1}, ..., f_{n-k+1} (order k)."""
    return quadrature_weights(tuple(-j for j in range(k)))


def moulton(k: int) -> Tuple[Fraction, ...]:
    """Adams-Moulton weights of f_{n+1}, f_n, ..., f_{n-k+2} (k values, order k)."""
    return quadrature_weights((1,) + tuple(-j for j in range(k - 1)))


def check_adams_options(max_order: Optional[int], max_iters: Optional[int], name: str) -> Tuple[int, int]:
    order = MAX_ORDER if max_order is None else max_order
    iters = MAX_ITERS if max_iters is None else max_iters
    if not isinstance(order, int) or isinstance(order, bool) or not 1 <= order <= MAX_ORDER:
        raise InvalidProblemError(f"options['max_order'] for {name!r} must be an integer in 1..{MAX_ORDER}, got {order!r}")
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 1:
        raise InvalidProblemError(f"options['max_iters'] for {name!r} must be a positive integer, got {iters!r}")
    if order < MIN_ORDER:
        warnings.warn(f"{name}: max_order={order} is below {MIN_ORDER}, so the method reduces to RK4 (3/8 rule)",
                      SolverAccuracyWarning, stacklevel=4)
    return order, iters


def _dot(h: Scalar, coeffs: Sequence[Fraction], fs: Sequence[torch.Tensor]) -> torch.Tensor:
    acc = fs[0] * float(coeffs[0])
    for c, f in zip(coeffs[1:], fs[1:]):
        acc = acc + float(c) * f
    return acc * in_dtype_of(h, acc)


def integrate_adams(
    rhs: CountingRHS,
    spec: AdamsSpec,
    t_save: Sequence[Scalar],
    y0: torch.Tensor,
    f0: torch.Tensor,
    opts,
    rtol: float,
    atol: float,
    counters: Counters,
    record: Record = None,
    until: Until = None,
) -> List[torch.Tensor]:
    """The Adams loop on the grid ``t_save`` (or equal steps of ``opts.step_size``);
    ``until`` as in ``integrate.integrate_adaptive``."""
    max_order, max_iters = check_adams_options(opts.max_order, opts.max_iters, "implicit_adams" if spec.implicit else "explicit_adams")
    ts = [as_float(x) for x in t_save]
    n = fixed_grid(ts, opts.step_size)
    if n is None:
        grid: List[Scalar] = list(t_save)
    else:
        if n > opts.max_num_steps:
            raise MaxStepsExceededError(
                f"step_size={opts.step_size:g} needs {n} steps over [{ts[0]:g}, {ts[-1]:g}], more than "
                f"max_num_steps={opts.max_num_steps}: raise options['max_num_steps'] or the step size."
            )
        grid = [t_save[0] + (t_save[-1] - t_save[0]) * (j / n) for j in range(n)] + [t_save[-1]]
    grid_f = [as_float(x) for x in grid]
    direction = 1.0 if ts[-1] > ts[0] else -1.0
    start = TABLEAUS["rk38"]
    perturb = bool(getattr(opts, "perturb", False))
    history: Deque[torch.Tensor] = deque(maxlen=max(max_order - 1, 1))
    ys: List[Optional[torch.Tensor]] = [y0] + [None] * (len(ts) - 1)
    i = 1
    y, f_n = y0, f0
    cb = callbacks.of(rhs)
    for j in range(len(grid) - 1):
        t, t_next = grid[j], grid[j + 1]
        h = t_next - t
        if cb.step is not None:
            cb.step(t, y, h)
        if f_n is None or perturb:
            # perturb (torchdiffeq fixed_adams.py): f at t_n from one ulp after the grid point.
            f_n = rhs(nudge(t, t_next, y), y) if perturb else rhs(t, y)
        history.appendleft(f_n)
        order = min(len(history), max_order - 1)
        if order < MIN_ORDER - 1:
            y_next, _, _ = rk_step(rhs, start, t, y, h, f_n, perturb_start=perturb, perturb_end=perturb)
        else:
            dy = _dot(h, bashforth(order), list(history)[:order])
            if spec.implicit:
                mu = moulton(order + 1)
                delta = _dot(h, mu[1:], list(history)[:order])
                converged = False
                for _ in range(max_iters):
                    dy_old = dy
                    t_corr = nudge(t_next, t, y) if perturb else t_next  # one ulp before t_{n+1}
                    dy = (in_dtype_of(h, y) * float(mu[0])) * rhs(t_corr, y + dy) + delta
                    with torch.no_grad():
                        tol = atol + rtol * torch.maximum(dy_old.abs(), dy.abs())
                        converged = bool(((dy_old - dy).abs() / tol).max() < 1)
                    if converged:
                        break
                if not converged:
                    warnings.warn(
                        f"implicit_adams: the corrector's fixed-point iteration did not converge in "
                        f"max_iters={max_iters} iterations at t={as_float(t):.6g}; the solution may be "
                        "inaccurate. Reduce the step size or raise options['max_iters'].",
                        SolverAccuracyWarning, stacklevel=4,
                    )
                    history.pop()
            y_next = y + dy
        saves, i = _saves_in_step(t_save, ts, i, t, h, grid_f[j + 1], direction, True)
        f_next = LazyRHS(rhs, t_next, y_next)

        for index, theta in saves:
            ys[index] = y_next if (isinstance(theta, float) and theta == 1.0) else hermite(theta, h, y, y_next, f_n, f_next())
        step = AcceptedStep(t, h, y, saves, ks=[f_n])
        if record is not None:
            record(step)
        counters.n_steps += 1
        if until is not None and until(step, t_next, y_next, f_next):
            break
        y = y_next
        f_n = f_next.value
    return ys  # type: ignore[return-value]
