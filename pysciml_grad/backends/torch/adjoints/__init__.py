"""Gradient methods of the torch engine, one module per sensealg class.

``IMPLEMENTATIONS`` maps a sensealg class to ``solve(problem, stats) -> ys``; the
strategy is chosen by the *type* of the object the user passed, never by a string.

* ``direct``        DirectAD: backprop through everything, step-size search included.
* ``checkpoint``    CheckpointAdjoint (ACA/ANODE): replay accepted steps, exact discrete gradient.
* ``backsolve``     BacksolveAdjoint (Chen et al. 2018): reverse-time solve of [y, a, dL/dtheta].
* ``interpolating`` InterpolatingAdjoint: y(t) from the forward dense output (optionally checkpointed).
* ``quadrature``    QuadratureAdjoint: adjoint a(t) alone, dL/dtheta by Gauss-Legendre quadrature.
"""

from __future__ import annotations

from typing import Callable, Dict, Type

from ....sensealg import (
    BacksolveAdjoint,
    CheckpointAdjoint,
    DirectAD,
    InterpolatingAdjoint,
    QuadratureAdjoint,
    SensitivityAlgorithm,
)
from . import backsolve, checkpoint, direct, interpolating, quadrature

IMPLEMENTATIONS: Dict[Type[SensitivityAlgorithm], Callable] = {
    DirectAD: direct.solve,
    CheckpointAdjoint: checkpoint.solve,
    BacksolveAdjoint: backsolve.solve,
    InterpolatingAdjoint: interpolating.solve,
    QuadratureAdjoint: quadrature.solve,
}
