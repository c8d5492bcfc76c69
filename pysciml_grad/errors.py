"""Exceptions and warnings raised by pysciml_grad.

Every error subclasses the built-in it resembles, so ``except ValueError`` in user
code keeps working, and every message says what was wrong *and* what to change.

Hierarchy::

    PySciMLGradError
    ├── InvalidProblemError(ValueError)      bad input, detected before any step
    │   ├── InvalidTimeError                 t not 1-D / not float / not monotonic / < 2 points
    │   ├── InvalidStateError                y0 not a floating tensor, NaN/inf in y0
    │   ├── RHSOutputError                   func(t, y) does not return a tensor shaped like y
    │   ├── DTypeMismatchError(TypeError)    y0 / func output / parameters disagree on dtype
    │   ├── DeviceMismatchError              y0 / func output / parameters disagree on device
    │   ├── UnknownMethodError               method name not offered by the backend
    │   ├── UnknownOptionError               option name not understood
    │   ├── MissingStepSizeError             fixed-step method and t cannot serve as grid
    │   └── UnsupportedSensitivityError      sensealg cannot do what was asked (e.g. dL/dt)
    ├── SolverError(RuntimeError)            the solve itself failed
    │   ├── NonFiniteStateError              NaN/inf appeared in the state or in func(t, y)
    │   ├── NonFiniteGradientError           NaN/inf appeared in an adjoint state
    │   ├── StepSizeUnderflowError           adaptive step shrank below min_step
    │   ├── MaxStepsExceededError            more than max_num_steps steps
    │   └── NewtonConvergenceError           an implicit method's stage equations did not converge
    └── BackendUnavailableError(ImportError) the Julia engine cannot be started

    GradientAccuracyWarning(UserWarning)     a measured gradient-accuracy problem
    SolverAccuracyWarning(UserWarning)       the solve went on, but a measured check says it may be inaccurate
    UnsupportedCallbackWarning(UserWarning)  a step callback on func that the method never calls
    CompileFallbackWarning(UserWarning)      options['compile'] was asked for, the solve ran eagerly
"""

from __future__ import annotations


class PySciMLGradError(Exception):
    """Base class of every exception raised on purpose by pysciml_grad."""


class InvalidProblemError(PySciMLGradError, ValueError):
    """The problem as given cannot be solved; nothing was integrated."""


class InvalidTimeError(InvalidProblemError):
    """The save times ``t`` are unusable."""


class InvalidStateError(InvalidProblemError):
    """The initial state ``y0`` is unusable."""


class RHSOutputError(InvalidProblemError):
    """``func(t, y)`` returned something that cannot be a derivative of ``y``."""


class DTypeMismatchError(InvalidProblemError, TypeError):
    """Tensors that must share a dtype (y0, func's output, parameters) do not."""


class DeviceMismatchError(InvalidProblemError):
    """Tensors that must share a device (y0, func's output, parameters) do not."""


class UnknownMethodError(InvalidProblemError):
    """The solver name is not offered by the selected backend."""


class UnknownOptionError(InvalidProblemError):
    """An entry of ``options`` (or a keyword) is not understood."""


class MissingStepSizeError(InvalidProblemError):
    """A fixed-step method needs ``options={"step_size": h}``."""


class UnsupportedSensitivityError(InvalidProblemError, NotImplementedError):
    """The chosen sensealg cannot compute the requested derivative."""


class SolverError(PySciMLGradError, RuntimeError):
    """The integration started but could not finish."""


class NonFiniteStateError(SolverError):
    """NaN or inf appeared in the state or in ``func``'s output."""


class NonFiniteGradientError(SolverError):
    """NaN or inf appeared in an adjoint (backward) state."""


class StepSizeUnderflowError(SolverError):
    """The adaptive step size fell below ``min_step``."""


class MaxStepsExceededError(SolverError):
    """The solve needed more than ``max_num_steps`` steps."""


class NewtonConvergenceError(SolverError):
    """Newton's method for an implicit method's stage equations diverged or did not converge
    within ``max_iters`` iterations, even with a Jacobian evaluated at that step."""


class BackendUnavailableError(PySciMLGradError, ImportError):
    """The requested backend cannot be used on this machine."""


class GradientAccuracyWarning(UserWarning):
    """A gradient was computed, but a measured check says it may be inaccurate."""


class UnsupportedCallbackWarning(UserWarning):
    """``func`` defines a step callback (torchdiffeq's names) that the chosen method never calls."""


class SolverAccuracyWarning(UserWarning):
    """The solve finished, but a measured check (e.g. an implicit corrector that did not
    converge) says the solution may be inaccurate."""


class CompileFallbackWarning(UserWarning):
    """``options={"compile": True}`` was given, but the solve ran on the eager loop: func
    could not be captured in one graph, or the method / sensealg / option has no compiled
    path. The result is the eager solve's; the message says why."""


__all__ = [
    "PySciMLGradError",
    "InvalidProblemError",
    "InvalidTimeError",
    "InvalidStateError",
    "RHSOutputError",
    "DTypeMismatchError",
    "DeviceMismatchError",
    "UnknownMethodError",
    "UnknownOptionError",
    "MissingStepSizeError",
    "UnsupportedSensitivityError",
    "SolverError",
    "NonFiniteStateError",
    "NonFiniteGradientError",
    "StepSizeUnderflowError",
    "MaxStepsExceededError",
    "NewtonConvergenceError",
    "BackendUnavailableError",
    "GradientAccuracyWarning",
    "SolverAccuracyWarning",
    "UnsupportedCallbackWarning",
    "CompileFallbackWarning",
]
