"""CheckpointAdjoint for the Adams multistep methods: keep only y0, recompute the forward
solve with a graph during the backward pass, and backpropagate through it.

An Adams step depends on up to 11 earlier derivative values, so the one-step replay of
``checkpoint.py`` (state y_n -> y_{n+1}) does not apply. Recomputing the whole forward map
gives the same thing CheckpointAdjoint promises, the exact gradient of the discrete
forward map (a fixed grid has no step-size control to hold constant), at the price of
DirectAD's graph memory during the backward pass only (the forward pass stores nothing
but the output). Double backward works: the recomputed graph is built with
``create_graph`` when autograd asks for it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch

from ....problem import ODEProblem, SolveStats
from ..forward import forward_solve, parse, save_times
from .common import run

NAME = "CheckpointAdjoint"


class RecomputeStrategy:
    def __init__(self, problem: ODEProblem, stats: SolveStats):
        self.problem = problem
        self.stats = stats
        self.method, self.opts = parse(problem)
        self.discovery = None
        self.f0: Optional[torch.Tensor] = None

    def forward(self, y0: torch.Tensor) -> torch.Tensor:
        return forward_solve(self.problem, self.method, self.opts, differentiate_control=False,
                             t_save=save_times(self.problem, False), y0=y0, stats=self.stats, f0=self.f0)

    def free(self) -> None:
        self.f0 = None

    def backward(self, grad_ys, y0, t, params, needs, ys):
        create_graph = torch.is_grad_enabled()  # on inside backward only for create_graph=True
        wanted = [i for i, (p, n) in enumerate(zip(params, needs[2:])) if n and p.requires_grad]
        with torch.enable_grad():
            y0r = y0.detach().requires_grad_(True)
            tr = t.detach().requires_grad_(bool(needs[1]))
            problem = replace(self.problem, y0=y0r, t=tr)
            counted = SolveStats()
            ys2 = forward_solve(problem, self.method, self.opts, differentiate_control=bool(needs[1]),
                                t_save=save_times(problem, bool(needs[1])), y0=y0r, stats=counted)
            inputs = [y0r] + ([tr] if needs[1] else []) + [params[i] for i in wanted]
            grads = torch.autograd.grad(ys2, inputs, grad_ys, allow_unused=True, create_graph=create_graph)
        self.stats.nfe_backward += counted.nfe
        g_y0 = grads[0] if grads[0] is not None else torch.zeros_like(y0)
        g_t = (grads[1] if grads[1] is not None else torch.zeros_like(t)) if needs[1] else None
        g_params = [None] * len(params)
        for k, i in enumerate(wanted):
            g = grads[1 + int(bool(needs[1])) + k]
            g_params[i] = g if g is not None else torch.zeros_like(params[i])
        return g_y0, g_t, g_params


def solve(problem: ODEProblem, stats: SolveStats) -> torch.Tensor:
    return run(RecomputeStrategy(problem, stats), problem, NAME, replays_randomness=True)
