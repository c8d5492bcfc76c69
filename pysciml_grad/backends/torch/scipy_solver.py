"""``method="scipy_solver"``: SciPy's ``solve_ivp`` as a forward-only method.

torchdiffeq's ``scipy_solver``: the state is handed to ``scipy.integrate.solve_ivp``
(``options["solver"]``: RK45, RK23, DOP853, Radau, BDF or LSODA; default LSODA) as a
float64 NumPy vector, ``func`` is evaluated under ``no_grad``, and the result carries no
graph. Useful for stiff problems and as a reference; a gradient through it needs a
continuous adjoint whose backward solve is itself forward-only (the torchdiffeq compat
layer's ``odeint_adjoint``), so asking autograd for one here is refused.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ...errors import InvalidProblemError, SolverError, UnsupportedSensitivityError
from ...problem import ODEProblem, SolveStats, check_rhs_output
from .adjoints.common import needs_gradient
from .control import SolverOptions

NAME = "scipy_solver"
SOLVERS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")


def solve(problem: ODEProblem, stats: SolveStats) -> torch.Tensor:
    from scipy.integrate import solve_ivp

    opts = SolverOptions.from_user(problem.options)
    solver = opts.solver or "LSODA"
    if solver not in SOLVERS:
        raise InvalidProblemError(f"options['solver'] must be one of {list(SOLVERS)} for method='scipy_solver', got {solver!r}")
    if needs_gradient(problem):
        raise UnsupportedSensitivityError(
            "method='scipy_solver' runs SciPy's solve_ivp, which autograd cannot see through: pass "
            "inputs without requires_grad (or use torch.no_grad()), or pick a torch method such as "
            "'dopri5' for gradients"
        )
    y0, shape = problem.y0, problem.y0.shape
    ts = problem.t.detach().double().cpu().numpy()
    f0 = problem.func(problem.t[0].detach().to(y0.dtype), y0)
    check_rhs_output(f0, y0, float(ts[0]))
    nfe = [1]

    def f_np(t, y):
        nfe[0] += 1
        with torch.no_grad():
            tt = torch.tensor(t, dtype=y0.dtype, device=y0.device)
            yy = torch.as_tensor(y, device=y0.device).to(y0.dtype).reshape(shape)
            return problem.func(tt, yy).detach().cpu().double().numpy().reshape(-1)

    step_kwargs = {"max_step": opts.max_step if math.isfinite(opts.max_step) else np.inf}
    if opts.min_step > 0:  # only LSODA reads it; the others warn when given one
        step_kwargs["min_step"] = opts.min_step
    sol = solve_ivp(
        f_np, (ts[0], ts[-1]), y0.detach().cpu().double().numpy().reshape(-1), t_eval=ts, method=solver,
        rtol=problem.rtol, atol=problem.atol, **step_kwargs,
    )
    if sol.status != 0 or sol.y.shape[1] != len(ts):
        raise SolverError(f"scipy solve_ivp({solver}) failed: {sol.message}")
    stats.nfe += nfe[0]
    return torch.as_tensor(sol.y.T.copy(), device=y0.device).to(y0.dtype).reshape(len(ts), *shape)
