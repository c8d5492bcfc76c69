"""Sensitivity algorithms ("sensealg"): how the gradient of a solve is computed.

Plain, frozen data. The names and meanings mirror SciMLSensitivity.jl so users moving
between ecosystems recognise them; each backend maps these objects to its own
implementation (``backends/torch/adjoints/`` one file each, ``backends/julia/`` a
translation table). Nothing here computes anything; ``checked()`` (called by ``odeint``
before anything is integrated) validates the fields: a flag must be a ``bool``
(``checkpointing="no"`` would otherwise be truthy and turn checkpointing *on*), a
tolerance a positive finite number (0-d tensors and NumPy scalars are converted).

References
----------
* Chen, Rubanova, Bettencourt, Duvenaud (2018), Neural ordinary differential
  equations: the continuous adjoint, "backsolve".
* Gholami, Keutzer, Biros (2019), ANODE; Zhuang et al. (2020), ACA: checkpointed
  discretize-then-optimize gradients, exact for the discrete solver.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Dict, Optional

from . import validate
from .errors import InvalidProblemError


def _method_name(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidProblemError(f"{name} must be a method name such as 'dopri5', got {type(value).__name__} {value!r}")
    return value


def _nonnegative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidProblemError(f"{name} must be an integer >= 0 (0: automatic), got {value!r}")
    return value


#: How each field of a sensealg is checked (``None`` is allowed where the default is ``None``).
_FIELD_CHECKS: Dict[str, Callable[[str, Any], Any]] = {
    "through_controller": validate.flag,
    "checkpointing": validate.flag,
    "adjoint_rtol": validate.positive_finite,
    "adjoint_atol": validate.positive_finite,
    "adjoint_method": _method_name,
    "max_checkpoints": validate.positive_int,
    "chunk_size": _nonnegative_int,
}


class SensitivityAlgorithm:
    """Base class of every sensealg."""

    #: True when the gradient is the exact derivative of the discrete forward map.
    discrete: bool = False

    def checked(self) -> "SensitivityAlgorithm":
        """A copy with every field validated and normalised (InvalidProblemError if one is bad)."""
        changes = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            check = _FIELD_CHECKS.get(f.name)
            if check is None or value is None:
                continue
            label = f"{type(self).__name__}({f.name}={value!r}): {f.name}"
            normalised = check(label, value)
            if normalised is not value:
                changes[f.name] = normalised
        return replace(self, **changes) if changes else self  # type: ignore[type-var]


@dataclass(frozen=True)
class DirectAD(SensitivityAlgorithm):
    """Backpropagate through every operation of the forward solve.

    Default (``through_controller=False``): the accepted step sizes are constants for
    the gradient, as in torchdiffeq's ``odeint`` and diffrax, so the result is the exact
    derivative of the discrete map y_{n+1} = Phi(t_n, h_n, y_n; theta) with the h_n the
    controller chose -- the same gradient as ``CheckpointAdjoint``, which differs only
    in memory (DirectAD keeps every accepted step's graph) and speed. Rejected trial
    steps and the error estimates carry no graph.

    ``through_controller=True``: the "naive" method of the ACA paper (Zhuang et al.
    2020, "Adaptive checkpoint adjoint method for gradient estimation in neural ODE",
    ICML): the initial-step guess, every error estimate and the PI controller stay in
    the graph, so dh_n/dy0 and dh_n/dtheta enter the gradient. That term is the
    derivative of the step-size *heuristic*, not of the solution (measured on
    y' = 2y/t + sin 5t, t in [1, 8], rtol = atol = 1e-9: dL/dy0 = 64 is missed by 5.2e-7
    with it, by 2.5e-8 without). Kept for reproducing that paper.
    """

    discrete = True
    through_controller: bool = False


@dataclass(frozen=True)
class BacksolveAdjoint(SensitivityAlgorithm):
    """Continuous adjoint of Chen et al. (2018): re-integrate y backwards with the adjoint.

    O(1) memory in the number of steps; the reverse-time reconstruction of y can drift
    from the forward trajectory, so the gradient can be wrong (a
    ``GradientAccuracyWarning`` reports the measured drift). ``adjoint_rtol``,
    ``adjoint_atol`` and ``adjoint_method`` default to the forward solve's.

    ``seminorm=True``: the backward solve's step-size control ignores the error of the
    parameter-gradient block dL/dtheta (Kidger, Chen & Lyons 2021, "'Hey, that's not an
    ODE': faster ODE adjoints via seminorms", ICML): dL/dtheta = integral of a^T f_theta
    is a quadrature that feeds back into nothing, so its error need not steer the steps.
    Fewer backward steps; torchdiffeq's ``adjoint_options={"norm": "seminorm"}``.
    """

    adjoint_rtol: Optional[float] = None
    adjoint_atol: Optional[float] = None
    adjoint_method: Optional[str] = None
    seminorm: bool = False


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
    #: As BacksolveAdjoint(seminorm=True): backward step control ignores the dL/dtheta block.
    seminorm: bool = False


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
