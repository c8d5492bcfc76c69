"""The native PyTorch engine (CPU and CUDA): tableaux, steps, control, loops, adjoints."""

from __future__ import annotations

from typing import Tuple

import torch

from ...errors import UnsupportedSensitivityError
from ...problem import ODEProblem, SolveStats
from ...sensealg import BacksolveAdjoint, CheckpointAdjoint, DirectAD
from .adams import ADAMS_METHODS
from . import scipy_solver
from .adjoints import IMPLEMENTATIONS

ADAMS_SENSEALGS = (DirectAD, CheckpointAdjoint, BacksolveAdjoint)
from .forward import ADAPTIVE_METHODS, FIXED_METHODS, METHODS


def solve(problem: ODEProblem) -> Tuple[torch.Tensor, SolveStats]:
    if problem.method == scipy_solver.NAME:
        stats = SolveStats()
        return scipy_solver.solve(problem, stats), stats
    implementation = IMPLEMENTATIONS.get(type(problem.sensealg))
    if implementation is None:
        available = ", ".join(f"psg.{cls.__name__}()" for cls in IMPLEMENTATIONS)
        raise UnsupportedSensitivityError(
            f"{type(problem.sensealg).__name__} is not available on the torch engine; use one of "
            f"{available}, or backend='julia' for SciMLSensitivity's methods"
        )
    if problem.method in ADAMS_METHODS and type(problem.sensealg) not in ADAMS_SENSEALGS:
        raise UnsupportedSensitivityError(
            f"{type(problem.sensealg).__name__} does not support the multistep method {problem.method!r} (its "
            "dense-output record assumes one-step methods); use psg.CheckpointAdjoint(), psg.DirectAD() or "
            "psg.BacksolveAdjoint(), or a one-step method such as 'rk4' or 'dopri5'"
        )
    stats = SolveStats()
    return implementation(problem, stats), stats


__all__ = ["solve", "METHODS", "FIXED_METHODS", "ADAPTIVE_METHODS"]
