"""pysciml_grad: accurate, memory-efficient gradients through ODE solvers for PyTorch.

    import pysciml_grad as psg
    ys = psg.odeint(func, y0, t, method="dopri5", sensealg=psg.CheckpointAdjoint())

Importing this package never imports juliacall; ``backend="julia"`` does, lazily.
"""

from . import errors, julia
from .problem import SolveStats
from .sensealg import *  # noqa: F401,F403  (the sensealg classes are public names)
from .sensealg import __all__ as _sensealg_names
from .dense import DenseSolution, odeint_dense
from .events import odeint_event
from .solve import odeint
from .norms import PerSampleNorm
from .backends.torch.implicit import BlockDiagonalJacobian, DenseJacobian, UserJacobian
from .batching import PerSampleSteps
from .gradaudit import AuditReport, audit
from .training import (
    PolynomialLibrary, SparseModel, fit_lbfgs, group_ranges, multiple_shoot, shooting_initial_states, stlsq,
)

__version__ = "0.1.0"

__all__ = [
    "odeint", "odeint_event", "odeint_dense", "DenseSolution", "PerSampleNorm", "PerSampleSteps", "DenseJacobian", "BlockDiagonalJacobian", "UserJacobian", "errors", "julia", "SolveStats", *_sensealg_names,
    "audit", "AuditReport", "multiple_shoot", "group_ranges", "shooting_initial_states", "fit_lbfgs",
    "PolynomialLibrary", "SparseModel", "stlsq",
]
