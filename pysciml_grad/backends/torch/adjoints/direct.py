"""DirectAD: backpropagate through every operation of the forward solve.

Default: the accepted step sizes are constants (Python floats) and the error
estimates and rejected trials carry no graph, so the graph holds exactly the accepted
steps y_{n+1} = Phi(t_n, h_n, y_n; theta) and the gradient is that of the discrete map,
the same as CheckpointAdjoint's (torchdiffeq's ``odeint`` and diffrax do the same).
With ``t.requires_grad`` the times are tensors t_n = t_0 + (float offset) and the last
step h = t_end - t_n, so dL/dt is that map's too.

``through_controller=True``: the "naive" method of Zhuang et al. (2020, ACA): the graph
also holds the initial-step guess, every error estimate and the step-size controller,
so the gradient includes the dependence of the step sizes on the state and parameters.
Memory grows with the number of trial steps.
"""

from __future__ import annotations

import torch

from ....problem import ODEProblem, SolveStats
from ..forward import forward_solve, parse


def solve(problem: ODEProblem, stats: SolveStats) -> torch.Tensor:
    method, opts = parse(problem)
    return forward_solve(problem, method, opts, differentiate_control=problem.sensealg.through_controller,
                         differentiable_times=True, stats=stats)
