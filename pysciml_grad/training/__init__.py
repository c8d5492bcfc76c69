"""Training helpers for neural and universal differential equations.

* :func:`multiple_shoot` / :func:`group_ranges`: a multiple-shooting loss (DiffEqFlux's
  ``multiple_shoot``), which turns one long, badly conditioned fit into many short ones.
* :func:`fit_lbfgs`: the LBFGS polish step (strong-Wolfe line search) that takes an
  Adam-warmed model down to the noise floor.
* :mod:`.sindy`: sequentially thresholded least squares over a polynomial library, to
  read the missing terms out of a trained network.
"""

from .lbfgs import fit_lbfgs
from .shooting import group_ranges, multiple_shoot, shooting_initial_states
from .sindy import PolynomialLibrary, SparseModel, stlsq

__all__ = [
    "multiple_shoot", "group_ranges", "shooting_initial_states", "fit_lbfgs",
    "PolynomialLibrary", "SparseModel", "stlsq",
]
