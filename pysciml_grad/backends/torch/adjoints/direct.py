"""DirectAD: backpropagate through every operation of the solve.

The "naive" method of Zhuang et al. (2020, ACA): the graph holds every trial step,
the error estimates and the step-size controller, so the gradient is the exact
derivative of the computed output *including* the dependence of the step sizes on
the state. Memory grows with the number of trial steps.
"""

from __future__ import annotations

import torch

from ....problem import ODEProblem, SolveStats
from ..forward import forward_solve, parse


def solve(problem: ODEProblem, stats: SolveStats) -> torch.Tensor:
    method, opts = parse(problem)
    return forward_solve(problem, method, opts, differentiate_control=True, stats=stats)
