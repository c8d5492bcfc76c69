"""InterpolatingAdjoint: the continuous adjoint along the forward solution's dense output.

The backward pass solves, backwards in time from t_N, save interval by save interval,

    d/dt [a, g] = [-a^T df/dy, -a^T df/dtheta](t, y(t)),   a(t_N) = dL/dy_N,  g(t_N) = 0,

with a += dL/dy(t_i) at each earlier save time, dL/dy0 = a(t_0), dL/dtheta = g(t_0)
(Chen et al. 2018, eq. 4-5). Unlike BacksolveAdjoint, y(t) is not re-integrated
backwards but read from the forward solve's own continuous extension (the stages of
every accepted step are kept, :class:`~.continuous.Trajectory`), so the adjoint is
solved along the forward trajectory and converges to the true gradient as the
tolerances tighten, however unstable the reverse-time dynamics (SciMLSensitivity's
``InterpolatingAdjoint``; Rackauckas et al. 2020, "Universal differential equations
for scientific machine learning", section on adjoint methods).

``checkpointing=True`` stores only about sqrt(N) states (every s ~ sqrt(N) accepted
steps, chosen online) and rebuilds each segment's stages by replaying its recorded
steps when the backward solve reaches it: about one extra forward sweep of work for
O(sqrt(N)) instead of O(N x stages) memory. The replay reproduces the forward stages
bitwise, so both settings give identical gradients.
"""

from __future__ import annotations

import torch

from ....problem import ODEProblem, SolveStats
from ..forward import forward_solve, parse, save_times
from ..integrate import CountingRHS
from .common import check_incoming, reject_double_backward, run, scatter, trainable
from .continuous import seminorm
from .continuous import AdjointRHS, BackwardSolver, Trajectory, adjoint_settings, block_sizes, split_flat

NAME = "InterpolatingAdjoint"


class InterpolatingStrategy:
    name = NAME

    def __init__(self, problem: ODEProblem, stats: SolveStats, adjoint_method=None, adjoint_rtol=None, adjoint_atol=None,
                 checkpointing: bool = False):
        self.problem = problem
        self.stats = stats
        self.method, self.opts = parse(problem)
        adj_method, self.rtol, self.atol = adjoint_settings(problem, adjoint_method, adjoint_rtol, adjoint_atol)
        forward_grid = not self.method.adaptive and self.opts.step_size is None
        self.solver = BackwardSolver(self.name, adj_method, self.opts, self.rtol, self.atol, forward_grid)
        self.checkpointing = checkpointing
        self.seminorm = seminorm(problem.sensealg)
        self.ts = save_times(problem, False)
        self.trajectory = None
        self.discovery = None
        self.f0 = None

    def free(self) -> None:
        """Drop the stored states and stages (autograd has released this solve's graph)."""
        self.trajectory = None
        self.f0 = None

    def record_nbytes(self) -> int:
        return 0 if self.trajectory is None else self.trajectory.nbytes()

    def forward(self, y0: torch.Tensor) -> torch.Tensor:
        rhs = CountingRHS(self.problem.func, y0.dtype, y0.device)
        self.trajectory = Trajectory(self.method.tableau, rhs, self.problem.direction, self.checkpointing)
        ys = forward_solve(self.problem, self.method, self.opts, differentiate_control=False,
                           record=self.trajectory.record, t_save=self.ts, y0=y0, stats=self.stats, f0=self.f0)
        self.trajectory.close(self.ts[-1], ys[-1])
        self.stats.extra["interpolating_stored_states"] = self.trajectory.stored_states
        return ys

    def begin_backward(self, grad_ys, params, needs):
        """Checks shared by the dense-output adjoints; the indices and tensors of the
        parameters that need a gradient."""
        reject_double_backward(self.name)
        check_incoming(grad_ys, self.ts, self.name)
        idx = trainable(params, needs[2:])
        return idx, [params[i] for i in idx]

    def backward(self, grad_ys, y0, t, params, needs, ys=None):
        idx, ps = self.begin_backward(grad_ys, params, needs)
        traj = self.trajectory
        nfe0, replayed0 = traj.rhs.nfe, traj.replayed_steps
        rhs = AdjointRHS(self.problem.func, y0, ps, trajectory=traj, known=params, name=self.name)
        n, n_p = y0.numel(), sum(p.numel() for p in ps)
        blocks = block_sizes([n, n_p])
        if self.seminorm:
            blocks = blocks[:1]  # Kidger et al. 2021: dL/dtheta's error does not steer the steps
        s = torch.cat([grad_ys[-1].reshape(-1), y0.new_zeros(n_p)])
        for i in range(len(self.ts) - 1, 0, -1):
            s = self.solver.integrate(rhs, s, self.ts[i], self.ts[i - 1], blocks)
            s = torch.cat([s[:n] + grad_ys[i - 1].reshape(-1), s[n:]])
        self.stats.nfe_backward += rhs.nfe + traj.rhs.nfe - nfe0
        self.stats.extra["interpolating_replayed_steps"] = traj.replayed_steps - replayed0
        return s[:n].view_as(y0), None, scatter(len(params), idx, split_flat(s[n:], ps))


def solve(problem: ODEProblem, stats: SolveStats) -> torch.Tensor:
    sa = problem.sensealg
    strategy = InterpolatingStrategy(problem, stats, sa.adjoint_method, sa.adjoint_rtol, sa.adjoint_atol,
                                     bool(sa.checkpointing))
    return run(strategy, problem, NAME, replays_randomness=False)
