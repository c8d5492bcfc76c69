"""Terminal-event search of the torch engine: step until a scalar event function
changes sign, then locate its root on the dense output of that step.

The search runs without a graph; it only has to *find* t*. The differentiable
solution up to t* and the gradient of t* (implicit function theorem) are built on top
of it by :mod:`pysciml_grad.events`.

Within the accepted step [t_n, t_n + h] where G(t, y) = min_k s_k g_k(t, y) first
becomes <= 0, G(theta) = G(t_n + theta h, y_dense(theta)) is bracketed by G(0) > 0 >= G(1)
and the root is found by bisection on theta until the bracket is a few ulps of t wide
(at most 200 halvings): each halving costs one dense-output evaluation (no call of
``func`` for tables with a continuous extension) and one of the event function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch

from ...errors import MaxStepsExceededError, MissingStepSizeError, UnsupportedSensitivityError
from ...problem import ODEProblem
from .control import SolverOptions
from .forward import LEAPFROG, lookup_method, parse
from .adams import integrate_adams
from .callbacks import NONE as NO_CALLBACKS
from .integrate import AcceptedStep, CountingRHS, Counters, integrate_adaptive
from .stepping import dense_eval, rk_step

#: G(t, y) -> float: the combined event function, > 0 before the event.
Combined = Callable[[float, torch.Tensor], float]


@dataclass
class EventFound:
    """t* (float), the state there from the dense output, and for fixed-step methods the
    grid up to the end of the step holding t* and theta = (t* - t_n) / h in it (``None``
    for adaptive methods); the search's work counters."""

    t: float
    y: torch.Tensor
    grid: Optional[List[float]]
    nfe: int
    n_steps: int
    theta: float = 1.0


def _root(G: Combined, t_n: float, h: float, dense: Callable[[float], torch.Tensor]) -> float:
    lo, hi = 0.0, 1.0
    width = 4 * math.ulp(max(abs(t_n), abs(t_n + h), 1e-300))
    for _ in range(200):
        if (hi - lo) * abs(h) <= width:
            break
        mid = 0.5 * (lo + hi)
        if G(t_n + mid * h, dense(mid)) > 0:
            lo = mid
        else:
            hi = mid
    return hi  # G(hi) <= 0: the first point at or past the crossing


def find_event(problem: ODEProblem, G: Combined, direction: float) -> EventFound:
    """Integrate ``problem`` from t[0] in ``direction`` until G changes sign."""
    method, opts = parse_for_events(problem)
    y0 = problem.y0.detach()
    t0 = float(problem.t[0].detach())
    rhs = CountingRHS(problem.func, y0.dtype, y0.device)
    rhs.callbacks = NO_CALLBACKS  # step callbacks fire once, in the differentiable solve
    found: List[EventFound] = []

    def check(step: AcceptedStep, t_next, y_next, f_next) -> bool:
        t_n, h = float(step.t), float(step.h)
        g_next = G(t_n + h, y_next)
        if g_next > 0:
            arm = getattr(G, "arm", None)
            if arm is not None:
                arm(t_n + h, y_next)
            return False
        if g_next == 0:
            found.append(EventFound(t_n + h, y_next, None, 0, 0, 1.0))
            return True

        def dense(theta: float) -> torch.Tensor:
            return dense_eval(method.tableau, theta, h, step.y, y_next, step.ks, f_next)

        theta = _root(G, t_n, h, dense)
        found.append(EventFound(t_n + theta * h, dense(theta), None, 0, 0, theta))
        return True

    counters = Counters()
    with torch.no_grad():
        f0 = rhs(t0, y0)
        if method.adaptive:
            try:
                integrate_adaptive(rhs, method.tableau, [t0, direction * math.inf], y0, f0, problem.rtol_y,
                                   problem.atol_y, opts, False, counters, until=check)
            except MaxStepsExceededError as err:
                raise _no_event(opts.max_num_steps, err) from err
        elif method.adams is not None:
            h = direction * opts.step_size
            n = opts.max_num_steps
            integrate_adams(rhs, method.adams, [t0, t0 + n * h], y0, f0, opts, problem.rtol, problem.atol,
                            counters, until=check)
            if not found:
                raise _no_event(n, None)
            found[0].grid = [t0 + i * h for i in range(counters.n_steps + 1)]
        else:
            _fixed_search(rhs, method.tableau, t0, y0, f0, direction * opts.step_size, opts.max_num_steps,
                          check, found, counters)
    event = found[0]
    event.nfe, event.n_steps = rhs.nfe, counters.n_steps
    return event


def _fixed_search(rhs, tab, t0, y0, f0, h, max_steps, check, found, counters) -> None:
    y, k0 = y0, f0
    for j in range(max_steps):
        t_n = t0 + j * h
        t_next = t0 + (j + 1) * h  # from t0, so the grid does not drift by rounding
        y_next, ks, _ = rk_step(rhs, tab, t_n, y, t_next - t_n, k0)
        cache: List[torch.Tensor] = []

        def f_next(t_next=t_next, y_next=y_next, cache=cache) -> torch.Tensor:
            if not cache:
                cache.append(rhs(t_next, y_next))
            return cache[0]

        counters.n_steps += 1
        if check(AcceptedStep(t_n, t_next - t_n, y, ks=ks), t_next, y_next, f_next):
            found[0].grid = [t0 + i * h for i in range(j + 2)]
            return
        y, k0 = y_next, (cache[0] if cache else None)
    raise _no_event(max_steps, None)


def _no_event(max_steps: int, err) -> MaxStepsExceededError:
    return MaxStepsExceededError(
        f"odeint_event: event_fn did not change sign within max_num_steps={max_steps} steps"
        + (f" ({err})" if err is not None else "")
        + ". Check that the event is reachable (its sign at t0, the direction: reverse_time), or raise "
        "options['max_num_steps']."
    )


def parse_for_events(problem: ODEProblem):
    method = lookup_method(problem.method)
    if method.name == LEAPFROG:
        raise UnsupportedSensitivityError(
            "odeint_event does not support leapfrog (a two-step method on a uniform grid cannot stop "
            "at an arbitrary event time); use 'rk4' or an adaptive method such as 'dopri5'"
        )
    if not method.adaptive and SolverOptions.from_user(problem.options).step_size is None:
        raise MissingStepSizeError(
            f"odeint_event with the fixed-step method {method.name!r} needs options={{'step_size': h}} "
            "(the event time, hence the grid, is unknown in advance)"
        )
    return parse(problem)
