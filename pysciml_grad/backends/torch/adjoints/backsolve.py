"""BacksolveAdjoint: the continuous adjoint of Chen et al. (2018) with reverse-time
reconstruction of the state.

After the forward solve only the outputs are kept. The backward pass solves the stacked
system, backwards in time from t_N,

    d/dt [y, a, g] = [f(t, y), -a^T df/dy, -a^T df/dtheta],
    y(t_N) = y_N,  a(t_N) = dL/dy_N,  g(t_N) = 0,

save interval by save interval: at each earlier save time t_i, a jumps by dL/dy(t_i)
and, as in torchdiffeq's ``odeint_adjoint``, y is reset to the forward value y(t_i)
(which the output holds anyway). dL/dy0 = a(t_0), dL/dtheta = g(t_0).

O(1) memory in the number of steps, but the reverse-time solve of y is a different
computation from the forward one: on dissipative or contracting dynamics it is
unstable, the reconstructed y(t) drifts from the forward trajectory and the gradient
is wrong with no error raised by the solver (measured: the peers' backsolve parameter
gradients are 4-70x off on a stable linear problem at rtol=1e-3). The drift is
measurable: at every save time the forward state is known, so the scaled mismatch

    e_i = RMS((y_reconstructed(t_i) - y_forward(t_i)) / (atol + rtol max(|y|, |y_rec|)))

is computed, and a :class:`~pysciml_grad.errors.GradientAccuracyWarning` reports the
largest one when it exceeds ``WARN_FACTOR`` (i.e. the reconstruction is off by more than
``WARN_FACTOR`` times the requested tolerance; rtol/atol are the larger of the forward
and adjoint ones).
"""

from __future__ import annotations

import warnings

import torch

from ....errors import GradientAccuracyWarning
from ....problem import ODEProblem, SolveStats
from ..forward import forward_solve, parse, save_times
from .common import check_incoming, reject_double_backward, run, scatter, trainable
from .continuous import AdjointRHS, BackwardSolver, adjoint_settings, block_sizes, seminorm, split_flat

NAME = "BacksolveAdjoint"

#: Reconstruction mismatch, in units of the tolerance, above which the warning fires.
WARN_FACTOR = 100.0


class BacksolveStrategy:
    needs_output = True

    def __init__(self, problem: ODEProblem, stats: SolveStats):
        self.problem = problem
        self.stats = stats
        self.method, self.opts = parse(problem)
        sa = problem.sensealg
        adj_method, self.rtol, self.atol = adjoint_settings(problem, sa.adjoint_method, sa.adjoint_rtol, sa.adjoint_atol)
        forward_grid = not self.method.adaptive and self.opts.step_size is None
        self.solver = BackwardSolver(
            NAME, adj_method, self.opts, self.rtol, self.atol, forward_grid,
            hint="The reverse-time reconstruction of y is unstable for this problem (it diverges from "
            "the forward trajectory); use sensealg=psg.CheckpointAdjoint() or psg.InterpolatingAdjoint(). ",
        )
        self.ts = save_times(problem, False)
        self.seminorm = seminorm(sa)
        self.discovery = None
        self.f0 = None

    def forward(self, y0: torch.Tensor) -> torch.Tensor:
        return forward_solve(self.problem, self.method, self.opts, differentiate_control=False,
                             t_save=self.ts, y0=y0, stats=self.stats, f0=self.f0)

    def free(self) -> None:
        """Nothing beyond the output (an autograd saved tensor) is kept."""
        self.f0 = None

    def record_nbytes(self) -> int:
        return 0

    def backward(self, grad_ys, y0, t, params, needs, ys):
        reject_double_backward(NAME)
        check_incoming(grad_ys, self.ts, NAME)
        idx = trainable(params, needs[2:])
        ps = [params[i] for i in idx]
        rhs = AdjointRHS(self.problem.func, y0, ps, known=params, name=NAME)
        n = y0.numel()
        blocks = block_sizes([n, n, sum(p.numel() for p in ps)])
        if self.seminorm:
            blocks = blocks[:2]  # Kidger et al. 2021: dL/dtheta's error does not steer the steps
        y, a = ys[-1].reshape(-1), grad_ys[-1].reshape(-1)
        g = y0.new_zeros(sum(p.numel() for p in ps))
        rtol, atol = max(self.rtol, self.problem.rtol), max(self.atol, self.problem.atol)
        worst, worst_at, worst_abs = 0.0, self.ts[0], 0.0
        for i in range(len(self.ts) - 1, 0, -1):
            s = self.solver.integrate(rhs, torch.cat([y, a, g]), self.ts[i], self.ts[i - 1], blocks)
            y_rec, a, g = s[:n], s[n : 2 * n], s[2 * n :]
            y_fwd = ys[i - 1].reshape(-1)
            diff = y_rec - y_fwd
            scale = torch.maximum(y_fwd.abs(), y_rec.abs()) * rtol + atol
            mismatch = float((diff / scale).square().mean().sqrt())
            if mismatch > worst:
                worst, worst_at, worst_abs = mismatch, self.ts[i - 1], float(diff.abs().max())
            y = y_fwd  # restart from the forward state (what torchdiffeq does too)
            a = a + grad_ys[i - 1].reshape(-1)
        self.stats.nfe_backward += rhs.nfe
        self.stats.extra["backsolve_reconstruction_error"] = worst
        if worst > WARN_FACTOR:
            warnings.warn(self._drift_message(worst, worst_at, worst_abs, rtol, atol), GradientAccuracyWarning, stacklevel=3)
        return a.view_as(y0), None, scatter(len(params), idx, split_flat(g, ps))


    def _drift_message(self, worst: float, worst_at: float, worst_abs: float, rtol: float, atol: float) -> str:
        head = (f"BacksolveAdjoint: the reverse-time solve reconstructed y(t={worst_at:.6g}) with error "
                f"{worst_abs:.3g} (max abs)")
        tail = ("the state the adjoint was computed along is not the forward trajectory, so the gradient "
                "may be wrong by a similar relative amount. Use sensealg=psg.CheckpointAdjoint() (exact for "
                "the discrete solve) or psg.InterpolatingAdjoint()")
        method = self.solver.method
        if method.adaptive:
            return (f"{head}, {worst:.3g} times the tolerance (rtol={rtol:g}, atol={atol:g}); {tail}, or tighten "
                    "adjoint_rtol/adjoint_atol.")
        # A fixed-step reverse solve ignores rtol/atol: the only knob is the step.
        step = (f"options['step_size']={self.opts.step_size:g}" if self.opts.step_size is not None
                else "the grid t (one step per save interval)")
        return (f"{head} with the fixed-step method {method.name!r} on {step}; {tail}, or use a smaller "
                "step_size (rtol/atol are not used by a fixed-step method).")


def solve(problem: ODEProblem, stats: SolveStats) -> torch.Tensor:
    return run(BacksolveStrategy(problem, stats), problem, NAME, replays_randomness=False)
