"""Sensitivity algorithms ("sensealg"): how the gradient of a solve is computed.

Plain, frozen data. The names and meanings mirror SciMLSensitivity.jl so users moving
between ecosystems recognise them; each backend maps these objects to its own
implementation (``backends/torch/adjoints/`` one file each, ``backends/julia/`` a
translation table). Nothing here computes anything.

References
----------
* Chen, Rubanova, Bettencourt, Duvenaud (2018), Neural ordinary differential
  equations: the continuous adjoint, "backsolve".
* Gholami, Keutzer, Biros (2019), ANODE; Zhuang et al. (2020), ACA: checkpointed
  discretize-then-optimize gradients, exact for the discrete solver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


class SensitivityAlgorithm:
    """Base class of every sensealg."""

    #: True when the gradient is the exact derivative of the discrete forward map.
    discrete: bool = False


@dataclass(frozen=True)
class DirectAD(SensitivityAlgorithm):
    """Backpropagate through every operation of the solver, step-size search included.

    The "naive" method of the ACA paper (Zhuang et al. 2020): exact derivative of the
    computed solution, but memory grows with the number of *trial* steps and the
    gradient also flows through the step-size controller.
    """

    discrete = True


@dataclass(frozen=True)
class BacksolveAdjoint(SensitivityAlgorithm):
    """Continuous adjoint of Chen et al. (2018): re-integrate y backwards with the adjoint.

    O(1) memory in the number of steps; the reverse-time reconstruction of y can drift
    from the forward trajectory, so the gradient can be wrong (a
    ``GradientAccuracyWarning`` reports the measured drift). ``adjoint_rtol``,
    ``adjoint_atol`` and ``adjoint_method`` default to the forward solve's.
    """

    adjoint_rtol: Optional[float] = None
    adjoint_atol: Optional[float] = None
    adjoint_method: Optional[str] = None


@dataclass(frozen=True)
class InterpolatingAdjoint(SensitivityAlgorithm):
    """Continuous adjoint reading y(t) from the forward solution's dense output.

    ``checkpointing=True`` keeps states only at checkpoints and re-solves each segment
    forward during the backward pass (SciMLSensitivity semantics).
    """

    checkpointing: bool = False
    adjoint_rtol: Optional[float] = None
    adjoint_atol: Optional[float] = None
    adjoint_method: Optional[str] = None


@dataclass(frozen=True)
class QuadratureAdjoint(SensitivityAlgorithm):
    """Adjoint for y0 by a backward solve of a only; dL/dtheta by quadrature of a^T df/dtheta."""

    adjoint_rtol: Optional[float] = None
    adjoint_atol: Optional[float] = None


@dataclass(frozen=True)
class CheckpointAdjoint(SensitivityAlgorithm):
    """ACA / ANODE: record accepted steps, replay each with autograd in the backward pass.

    Exact gradient of the discrete forward map (accepted step sizes treated as
    constants); memory O(N_steps x state) plus one step's graph. ``max_checkpoints=k``
    stores at most k states and recomputes the rest (ANODE's memory/compute trade).
    """

    discrete = True
    max_checkpoints: Optional[int] = None


@dataclass(frozen=True)
class GaussAdjoint(SensitivityAlgorithm):
    """Continuous adjoint with the parameter gradient by Gauss-Legendre quadrature.

    The adjoint a(t) solves da/dt = -a^T df/dy backwards from the save-time jumps
    a(t_i) += dL/dy(t_i); the parameter gradient dL/dtheta = integral of a^T df/dtheta dt
    is accumulated interval by interval with Gauss quadrature during that backward
    solve (SciMLSensitivity's ``GaussAdjoint``, which its manual recommends among the
    continuous adjoints). y(t) comes from the forward dense output, or, with
    ``checkpointing=True``, from re-solving each interval between save times.
    Julia backend only.
    """

    checkpointing: bool = False


@dataclass(frozen=True)
class ReverseDiffAdjoint(SensitivityAlgorithm):
    """Discrete reverse-mode AD through every operation of the solver (ReverseDiff.jl tape).

    The exact derivative of the computed solution, step-size control included: the
    Julia counterpart of ``DirectAD``. Needs a right-hand side written in Julia
    (``JuliaRHS``) and CPU arrays. Julia backend only.
    """

    discrete = True


@dataclass(frozen=True)
class ForwardDiffSensitivity(SensitivityAlgorithm):
    """Forward-mode AD (dual numbers) through the solver: cost grows with the number of
    inputs (len(y0) + number of parameters), so it pays off for few parameters.

    Exact derivative of the computed solution. ``chunk_size`` dual partials are
    propagated per pass (0: automatic). Needs a ``JuliaRHS``. Julia backend only.
    """

    discrete = True
    chunk_size: int = 0


__all__ = [
    "SensitivityAlgorithm",
    "DirectAD",
    "BacksolveAdjoint",
    "InterpolatingAdjoint",
    "QuadratureAdjoint",
    "CheckpointAdjoint",
    "GaussAdjoint",
    "ReverseDiffAdjoint",
    "ForwardDiffSensitivity",
]
