"""QuadratureAdjoint: adjoint a(t) alone, parameter gradient by Gauss-Legendre quadrature.

As InterpolatingAdjoint, y(t) comes from the forward dense output, but the backward
solve carries only the adjoint,

    da/dt = -a^T df/dy (t, y(t)),   a(t_N) = dL/dy_N,   a += dL/dy(t_i) at save times,

so its step-size control sees only a (not the possibly huge parameter vector), and

    dL/dtheta = int_{t_0}^{t_N} a(t)^T df/dtheta (t, y(t)) dt

is computed by m-point Gauss-Legendre quadrature on every accepted backward step, with
a(t) from that step's dense output and y(t) from the forward's (SciMLSensitivity's
``QuadratureAdjoint``, which uses adaptive Gauss-Kronrod on the two interpolants; here
the backward steps, already adapted to a, are the panels). m = max(2, ceil((p+1)/2))
for an adjoint method of order p makes the rule exact for polynomials of degree < 2m,
beyond the order of the interpolants, so the quadrature adds no error of lower order.
Each step is processed as soon as the next one is accepted (one step of lag), so no
backward stage is stored beyond that. The m vector-Jacobian products of a step go
through one ``autograd.grad`` call.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from ....finite import all_finite
from ....problem import ODEProblem, SolveStats
from ..integrate import AcceptedStep
from .common import nonfinite_adjoint, run, scatter, time_tensor, vjp
from .. import compiled
from .continuous import AdjointRHS, block_sizes, gauss_legendre
from .interpolating import InterpolatingStrategy
from .replay import interpolate

NAME = "QuadratureAdjoint"


class QuadratureStrategy(InterpolatingStrategy):
    name = NAME

    def backward(self, grad_ys, y0, t, params, needs, ys=None):
        idx, ps = self.begin_backward(grad_ys, params, needs)
        traj = self.trajectory
        nfe0 = traj.rhs.nfe
        rhs = AdjointRHS(self.problem.func, y0, ps, trajectory=traj, with_params=False, known=params, name=self.name)
        adj_tab = self.solver.method.tableau
        nodes, weights = gauss_legendre(self.solver.method.order)
        shape = y0.shape
        g_ps = [torch.zeros_like(p) for p in ps]
        quad_nfe = [0]

        compiled_panel = [None]  # chosen at the first panel, when the backward solve has chosen

        def panel(st: AcceptedStep, a_next: torch.Tensor, f_next) -> None:
            """g += int over the step of a^T df/dtheta (h < 0 when going back in time)."""
            if not ps:
                return
            if compiled_panel[0] is None:
                compiled_panel[0] = False
                if self.solver._compiled(rhs):  # the backward steps are compiled: the panels too
                    compiled_panel[0] = compiled.compiled_panel(self.problem.func, shape, adj_tab, nodes, weights, ps,
                                                                st.y, traj.dense_table(), self.solver.opts)
            if compiled_panel[0]:
                out = compiled_panel[0](float(st.t), float(st.h), st.y, a_next, st.ks, f_next, g_ps, ps)
                if out is not None:
                    g_ps[:] = out
                    quad_nfe[0] += len(nodes)
                    return
            outs, gouts = [], []
            with torch.enable_grad():
                for x, w in zip(nodes, weights):
                    tq = float(st.t) + x * float(st.h)
                    with torch.no_grad():
                        a_q = interpolate(adj_tab, x, float(st.h), st.y, a_next, st.ks, f_next)
                    y_q = traj(tq).detach()
                    outs.append(self.problem.func(time_tensor(tq, y_q), y_q))
                    gouts.append(a_q.view(shape) * (-float(st.h) * w))
                quad_nfe[0] += len(nodes)
                grads = vjp(outs, ps, gouts)
            for k, gk in enumerate(grads):
                g_ps[k] = g_ps[k] + gk

        n = y0.numel()
        a = grad_ys[-1].reshape(-1)
        for i in range(len(self.ts) - 1, 0, -1):
            pending: List[Optional[AcceptedStep]] = [None]

            def record(st: AcceptedStep) -> None:
                prev = pending[0]
                if prev is not None:
                    panel(prev, st.y, lambda: st.ks[0])
                pending[0] = st

            a_end = self.solver.integrate(rhs, a, self.ts[i], self.ts[i - 1], block_sizes([n]), record)
            last = pending[0]
            if last is not None:
                fsal = adj_tab is not None and adj_tab.fsal
                panel(last, a_end, (lambda: last.ks[-1]) if fsal else (lambda: rhs(self.ts[i - 1], a_end)))
            a = a_end + grad_ys[i - 1].reshape(-1)
        if not all(all_finite(g) for g in g_ps):
            raise nonfinite_adjoint(self.name, "in the parameter quadrature")
        self.stats.nfe_backward += rhs.nfe + quad_nfe[0] + traj.rhs.nfe - nfe0
        self.stats.extra["quadrature_nodes_per_step"] = len(nodes)
        return a.view_as(y0), None, scatter(len(params), idx, g_ps)


def solve(problem: ODEProblem, stats: SolveStats) -> torch.Tensor:
    sa = problem.sensealg
    strategy = QuadratureStrategy(problem, stats, None, sa.adjoint_rtol, sa.adjoint_atol, False)
    return run(strategy, problem, NAME, replays_randomness=False)
