"""The Julia engine: DifferentialEquations.jl solves, SciMLSensitivity.jl gradients.

Public entry points (none of them imports juliacall at import time):

* ``solve(problem) -> (ys, stats)``: what ``psg.odeint(..., backend="julia")`` calls;
* ``JuliaRHS("(u, p, t) -> ...")``: a right-hand side written in Julia;
* ``availability() -> (bool, reason)``: can the engine start now, without downloads;
* ``install(progress=True, cuda=False)``: one-time install of Julia + packages.

Modules, one job each: ``translate`` (pure Python: our names -> SciML objects),
``runtime`` (find/install/start Julia, never hang), ``callbacks`` (a torch f called
from Julia), ``execute`` (the autograd.Function), ``rhs`` (``JuliaRHS``); the arrays
cross over through ``pysciml_grad.bridge``; the Julia side is ``julia/PySciMLGrad``.
"""

from .execute import solve
from .rhs import JuliaRHS
from .runtime import availability, install

__all__ = ["solve", "JuliaRHS", "availability", "install"]
