"""``odeint_dense``: the whole solution on [t0, t1] as a callable, from the solver's own
continuous extension (torch engine).

One adaptive (or fixed-step) solve from t0 to t1 records every accepted step: its start
``(t_n, y_n)``, its step ``h_n`` and its stage derivatives ``k_i``. ``sol(t)`` finds the
step holding t (binary search) and evaluates that step's interpolant

    y(t_n + theta h_n) = y_n + h_n sum_i b_i(theta) k_i

(dopri5's and tsit5's 4th-order, dopri8's degree-6 extension; cubic Hermite through
(y_n, f_n), (y_{n+1}, f_{n+1}) for tables without one): accuracy of the method at every t,
not only at save times chosen in advance. Built under the ambient grad mode, the
interpolant is differentiable with respect to y0 and func's parameters through the
recorded steps (step sizes are constants, as in CheckpointAdjoint).
"""

from __future__ import annotations

import bisect
from typing import Any, Iterable, List, Mapping, Optional

import torch

from .errors import InvalidProblemError, InvalidTimeError
from .problem import make_problem
from .sensealg import DirectAD


class DenseSolution:
    """Callable ``sol(t)`` for t in [t0, t1]: a 0-d time gives ``y(t)``, a 1-D tensor of
    times gives the stacked ``(len(t), *y0.shape)``. ``sol.ts`` are the step points."""

    def __init__(self, tab, steps, t_end: float, y_end: torch.Tensor, f_end):
        self._tab = tab
        self._steps = steps  # AcceptedStep records, in time order
        self._direction = 1.0 if steps[-1].h > 0 else -1.0
        self._starts = [self._direction * float(s.t) for s in steps]
        self.ts = [float(s.t) for s in steps] + [t_end]
        self._y_end = y_end
        self._f_end = f_end

    @property
    def t0(self) -> float:
        return self.ts[0]

    @property
    def t1(self) -> float:
        return self.ts[-1]

    def __call__(self, t: Any) -> torch.Tensor:
        tt = torch.as_tensor(t)
        if tt.dim() == 0:
            return self._at(float(tt))
        return torch.stack([self._at(float(x)) for x in tt.reshape(-1)])

    def _at(self, t: float) -> torch.Tensor:
        from .backends.torch.stepping import dense_eval

        lo, hi = sorted((self.t0, self.t1))
        if not (lo <= t <= hi):
            raise InvalidTimeError(f"odeint_dense: t={t:g} is outside the solved interval [{lo:g}, {hi:g}]")
        j = max(0, bisect.bisect_right(self._starts, self._direction * t) - 1)
        step = self._steps[j]
        y_next = self._steps[j + 1].y if j + 1 < len(self._steps) else self._y_end
        f_next = (lambda: self._steps[j + 1].ks[0]) if j + 1 < len(self._steps) else self._f_end
        theta = (t - float(step.t)) / float(step.h)
        return dense_eval(self._tab, theta, float(step.h), step.y, y_next, step.ks, f_next)


def odeint_dense(
    func,
    y0: torch.Tensor,
    t0: Any,
    t1: Any,
    *,
    method: str = "dopri5",
    rtol: float = 1e-7,
    atol: float = 1e-9,
    options: Optional[Mapping[str, Any]] = None,
    params: Optional[Iterable[torch.Tensor]] = None,
) -> DenseSolution:
    """Solve dy/dt = func(t, y), y(t0) = y0 on [t0, t1] and return ``sol`` with ``sol(t) = y(t)``.

    ``method`` is any Runge-Kutta method of the torch engine (not leapfrog); fixed-step
    methods need ``options={"step_size": h}``.
    """
    from .backends.torch.forward import forward_solve, parse
    from .backends.torch.integrate import CountingRHS

    t = torch.stack([torch.as_tensor(t0, dtype=torch.float64), torch.as_tensor(t1, dtype=torch.float64)])
    problem = make_problem(func, y0, t.to(y0.device), method=method, rtol=rtol, atol=atol, options=options,
                           params=params, sensealg=DirectAD(), backend="torch")
    method_, opts = parse(problem)
    if method_.tableau is None:
        raise InvalidProblemError("odeint_dense needs a Runge-Kutta method; leapfrog has no continuous extension")
    steps: List = []
    ys = forward_solve(problem, method_, opts, differentiate_control=False, record=steps.append)
    y_end = ys[-1]
    rhs = CountingRHS(problem.func, y0.dtype, y0.device)
    cache: List[torch.Tensor] = []

    def f_end() -> torch.Tensor:
        if not cache:
            cache.append(rhs(float(t[-1]), y_end))
        return cache[0]

    return DenseSolution(method_.tableau, steps, float(t[-1]), y_end, f_end)
