"""Validate and normalise user input into an :class:`ODEProblem`.

Everything a solve can know to be wrong before the first step is checked here and
raised as a specific class from :mod:`pysciml_grad.errors` whose message says what to
change. Backend-specific names (methods, options) are validated by the backend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from . import validate

from .errors import (
    DeviceMismatchError,
    DTypeMismatchError,
    InvalidProblemError,
    InvalidStateError,
    InvalidTimeError,
    NonFiniteStateError,
    RHSOutputError,
    UnsupportedSensitivityError,
)
from .finite import all_finite
from .sensealg import SensitivityAlgorithm


@dataclass(frozen=True)
class ODEProblem:
    """A validated initial-value problem plus how to solve and differentiate it.

    ``params`` holds every tensor the gradient must reach besides ``y0``: the
    parameters of ``func`` when it is an ``nn.Module`` and the user's ``params=``,
    deduplicated, in that order.

    ``rtol``/``atol`` are floats. Per-component tolerances (tensors broadcastable to
    y0, as torchdiffeq accepts) live in ``rtol_y``/``atol_y`` (detached, y0's dtype and
    device) and weight the forward error norm; ``rtol``/``atol`` are then their
    tightest component, used where one number is needed (the continuous adjoints'
    backward solves over [y, a, dL/dtheta], the Julia engine).
    """

    func: Callable
    y0: torch.Tensor
    t: torch.Tensor
    method: str
    rtol: float
    atol: float
    options: Mapping[str, Any]
    params: Tuple[torch.Tensor, ...]
    sensealg: SensitivityAlgorithm
    backend: str
    rtol_y: Union[float, torch.Tensor] = 0.0
    atol_y: Union[float, torch.Tensor] = 0.0

    @property
    def direction(self) -> float:
        return 1.0 if float(self.t[-1]) > float(self.t[0]) else -1.0


@dataclass
class SolveStats:
    """Work counters of one solve. ``nfe``: right-hand-side evaluations of the forward
    pass; ``nfe_backward``: those of the backward pass (filled in by ``.backward()``);
    ``n_steps`` accepted and ``n_rejected`` rejected steps of the forward pass."""

    nfe: int = 0
    nfe_backward: int = 0
    n_steps: int = 0
    n_rejected: int = 0
    extra: Dict[str, Any] = field(default_factory=dict)


def make_problem(
    func: Callable,
    y0: Any,
    t: Any,
    *,
    method: str,
    rtol: float,
    atol: float,
    options: Optional[Mapping[str, Any]],
    params: Optional[Iterable[torch.Tensor]],
    sensealg: SensitivityAlgorithm,
    backend: str,
) -> ODEProblem:
    reject_vmap()
    if not callable(func):
        raise InvalidProblemError(f"func must be callable as func(t, y) -> dy/dt, got {type(func).__name__}")
    y0 = _check_y0(y0)
    t = _check_t(t, y0)
    rtol_y = _check_tolerance("rtol", rtol, y0)
    atol_y = _check_tolerance("atol", atol, y0)
    if not isinstance(sensealg, SensitivityAlgorithm):
        raise InvalidProblemError(
            f"sensealg must be a sensitivity-algorithm object such as psg.CheckpointAdjoint(), got {sensealg!r}"
        )
    sensealg = sensealg.checked()
    if options is not None and not isinstance(options, Mapping):
        raise InvalidProblemError(f"options must be a dict such as {{'step_size': 0.01}}, got {type(options).__name__}")
    options = {k: _plain(v) for k, v in (options or {}).items()}
    if "return_stats" in options:
        options["return_stats"] = validate.flag("options['return_stats']", options["return_stats"])
    all_params = _collect_params(func, params, y0)
    return ODEProblem(
        func=func,
        y0=y0,
        t=t,
        method=method,
        rtol=_tightest(rtol_y),
        atol=_tightest(atol_y),
        options=options,
        params=all_params,
        sensealg=sensealg,
        backend=backend,
        rtol_y=rtol_y,
        atol_y=atol_y,
    )


def functorch_transforms() -> List[str]:
    """Names of the torch.func transforms active around this call, outermost first."""
    stack = torch._C._functorch.get_interpreter_stack()
    return [i.key().name for i in stack] if stack else []


def reject_vmap() -> None:
    """No sensealg runs under vmap: the step-size control and the finite checks branch on
    tensor values, which vmap cannot batch."""
    if "Vmap" in functorch_transforms():
        raise UnsupportedSensitivityError(
            "odeint cannot run under torch.func.vmap (nor jacrev/jacfwd, which use it): the solver "
            "branches on tensor values (step acceptance, finite checks). Batch instead: give y0 a "
            "leading batch dimension (func must accept it), or loop. torch.func.grad and "
            "torch.func.vjp work with sensealg=psg.DirectAD()."
        )


#: Half-precision states are refused, not solved: see ``_check_y0``.
HALF_DTYPES = (torch.float16, torch.bfloat16)


def _check_y0(y0: Any) -> torch.Tensor:
    if not isinstance(y0, torch.Tensor):
        raise InvalidStateError(f"y0 must be a torch.Tensor, got {type(y0).__name__}; wrap it with torch.as_tensor(y0, dtype=torch.float64)")
    if not y0.is_floating_point():
        raise InvalidStateError(
            f"y0 has dtype {y0.dtype}; it must be a floating dtype (float32 or float64), e.g. y0.double()"
        )
    if y0.dtype in HALF_DTYPES:
        # Refused rather than solved: an ODE step adds h*f to y, and in a 16-bit state
        # every increment below half an ulp of y (bfloat16: 0.4 % of |y|, float16: 0.05 %)
        # rounds away, so small steps make no progress (measured: bfloat16 returned
        # y(1) == y0 after 44 079 steps). Doing only t, h and the error norm in float32
        # does not fix that; the state itself needs the precision.
        raise InvalidStateError(
            f"y0 has dtype {y0.dtype}: half-precision states are not supported, because an ODE step "
            "y + h*f loses every increment smaller than half an ulp of y (bfloat16 keeps 8 bits, "
            "float16 11) and the solve silently stalls. Solve in float32 (y0.float(), func.float()) "
            "and cast the result; for speed run func's layers under torch.autocast inside func"
        )
    if y0.numel() == 0:
        raise InvalidStateError("y0 is empty; it needs at least one element")
    if not all_finite(y0):
        bad = (~torch.isfinite(y0)).nonzero()[0].tolist()
        raise InvalidStateError(f"y0 contains NaN or inf (first at index {tuple(bad)}); fix the initial state")
    return y0


def _check_t(t: Any, y0: torch.Tensor) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise InvalidTimeError(f"t must be a 1-D torch.Tensor of save times, got {type(t).__name__}")
    if t.dim() != 1:
        raise InvalidTimeError(
            f"t must be 1-D (the save times) or 2-D (B, T) (per-sample save times), got shape {tuple(t.shape)}"
        )
    if not t.is_floating_point():
        raise InvalidTimeError(
            f"t has dtype {t.dtype}; save times must be floating point, e.g. torch.linspace(0., 1., 11) or t.double()"
        )
    if t.numel() < 2:
        raise InvalidTimeError(f"t needs at least 2 points (start and end), got {t.numel()}")
    if t.numel() <= HOST_CHECKED_TIMES:
        _check_times_on_host(t.detach().tolist())
    else:
        _check_times_as_tensor(t.detach())
    return t if t.device == y0.device else t.to(y0.device)


#: Save times up to this many are checked as one host list (one read of t) rather than by
#: a handful of tensor reductions, each a dispatch and a host read (~40 us for 2 times on
#: CPU; ~5 us read once). Longer t keeps the tensor checks, whose cost does not grow with it.
HOST_CHECKED_TIMES = 1024


def _check_times_on_host(ts: List[float]) -> None:
    """:func:`_check_t`'s value checks on the times read to the host, same messages. The
    differences of two floats of t's dtype are exact in double in sign and in being zero."""
    if not all(map(math.isfinite, ts)):
        raise _nonfinite_time()
    rising = ts[1] > ts[0]
    for k in range(len(ts) - 1):
        if ts[k + 1] == ts[k]:
            raise _duplicate_time(k, ts[k])
    for k in range(len(ts) - 1):
        if (ts[k + 1] > ts[k]) != rising:
            raise _direction_change(k, ts[k], ts[k + 1])


def _nonfinite_time() -> InvalidTimeError:
    return InvalidTimeError("t contains NaN or inf; save times must be finite")


def _duplicate_time(k: int, value: float) -> InvalidTimeError:
    return InvalidTimeError(
        f"t is not strictly monotonic: t[{k}] == t[{k + 1}] == {value:g} (duplicate save time); remove duplicates"
    )


def _direction_change(k: int, before: float, after: float) -> InvalidTimeError:
    return InvalidTimeError(
        f"t must be strictly increasing or strictly decreasing, but it changes direction at "
        f"t[{k}]={before:g}, t[{k + 1}]={after:g}; sort it (torch.sort) or split the solve"
    )


def _check_times_as_tensor(t: torch.Tensor) -> None:
    """:func:`_check_times_on_host` by tensor reductions, for long t."""
    if not bool(torch.isfinite(t).all()):
        raise _nonfinite_time()
    dt = t[1:] - t[:-1]
    if bool((dt == 0).any()):
        k = int((dt == 0).nonzero()[0])
        raise _duplicate_time(k, float(t[k]))
    if not (bool((dt > 0).all()) or bool((dt < 0).all())):
        k = int(((dt > 0) != (dt[0] > 0)).nonzero()[0])
        raise _direction_change(k, float(t[k]), float(t[k + 1]))


def _check_tolerance(name: str, value: Any, y0: torch.Tensor) -> Union[float, torch.Tensor]:
    """A positive finite number, or a tensor of them broadcastable to y0 (per component).

    Python numbers, NumPy scalars and 0-d tensors become floats; a NumPy array or a
    tensor with dimensions stays a tensor (detached, y0's dtype and device).
    """
    if isinstance(value, np.ndarray) and value.ndim > 0:
        value = torch.as_tensor(value)
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        if value.dtype == torch.bool or value.is_complex():
            raise InvalidProblemError(f"{name} must hold real numbers, got a tensor of dtype {value.dtype}")
        try:
            ok = torch.broadcast_shapes(value.shape, y0.shape) == y0.shape
        except RuntimeError:
            ok = False
        if not ok:
            raise InvalidProblemError(
                f"a per-component {name} must broadcast to y0's shape {tuple(y0.shape)}, got shape {tuple(value.shape)}"
            )
        v = value.detach().to(dtype=y0.dtype, device=y0.device)
        if not bool(((v > 0) & torch.isfinite(v)).all()):
            raise InvalidProblemError(f"every component of {name} must be a positive finite number, got {value!r}")
        return v
    return validate.positive_finite(name, value)


def _plain(value: Any) -> Any:
    """A 0-d tensor or NumPy scalar option value as the Python number it holds (both
    engines then see plain numbers); bools and everything else pass unchanged."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and value.dtype != torch.bool and not value.is_complex():
        return value.item()
    if isinstance(value, np.generic) and not isinstance(value, np.bool_):
        return value.item()
    return value


def _tightest(tol: Union[float, torch.Tensor]) -> float:
    return float(tol.min()) if isinstance(tol, torch.Tensor) else tol


def _collect_params(func: Callable, params: Optional[Iterable[torch.Tensor]], y0: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """func's module parameters, then ``params=`` materialised once (a generator is read
    here and never again), deduplicated. Tensors func merely closes over need not be
    listed: the torch engine's adjoints find them from the first evaluation."""
    found = list(func.parameters()) if isinstance(func, torch.nn.Module) else []
    n_module = len(found)
    if params is not None:
        if isinstance(params, torch.nn.Module):
            raise InvalidProblemError(
                f"params must be tensors, got the module {type(params).__name__}; pass its parameters: "
                "params=net.parameters() (or list(net.parameters()))"
            )
        if isinstance(params, torch.Tensor):
            params = [params]
        elif not isinstance(params, Iterable):
            raise InvalidProblemError(f"params must be an iterable of tensors, got {type(params).__name__}")
        for k, p in enumerate(params):
            if not isinstance(p, torch.Tensor):
                hint = "; pass its parameters: params=m.parameters()" if isinstance(p, torch.nn.Module) else ""
                raise InvalidProblemError(f"params[{k}] must be a tensor, got {type(p).__name__}{hint}")
            found.append(p)
    first: Dict[int, int] = {}
    for k, p in enumerate(found):
        first.setdefault(id(p), k)
    unique = [found[k] for k in first.values()]
    for k in first.values():
        p = found[k]
        where = "a parameter of func" if k < n_module else f"params[{k - n_module}] (shape {tuple(p.shape)})"
        fix = f"func.to({y0.dtype})" if k < n_module else f"create that tensor with dtype={y0.dtype}"
        if p.is_floating_point() and p.dtype != y0.dtype:
            raise DTypeMismatchError(
                f"{where} has dtype {p.dtype} but y0 has {y0.dtype}; use one dtype, "
                f"e.g. {fix} or y0.to({p.dtype})"
            )
        if p.device != y0.device:
            move = f"func.to('{y0.device}')" if k < n_module else f"create that tensor on device='{y0.device}'"
            raise DeviceMismatchError(
                f"{where} is on {p.device} but y0 is on {y0.device}; move them together, e.g. {move}"
            )
    return tuple(unique)


def _time_text(t: Any) -> str:
    try:
        return f"{float(t.detach() if isinstance(t, torch.Tensor) else t):.6g}"
    except (TypeError, ValueError, RuntimeError):
        return repr(t)


def check_rhs_meta(out: Any, y: torch.Tensor, t: Any) -> None:
    """Check one ``func(t, y)`` output by metadata only (type, shape, dtype, device: no
    host-device sync, about a microsecond), at every evaluation of a solve.

    Without it a wrong shape that broadcasts (a (3, 1) output for a (3, 2) state) is
    silently spread over the state, and a float32 output on a float64 state is
    silently promoted, from whatever time ``func`` starts misbehaving.
    """
    if not isinstance(out, torch.Tensor):
        raise RHSOutputError(
            f"func(t, y) must return a torch.Tensor shaped like y, got {type(out).__name__} at t={_time_text(t)}"
        )
    if out.shape != y.shape:
        raise RHSOutputError(
            f"func(t, y) returned shape {tuple(out.shape)} at t={_time_text(t)}, but the state has shape "
            f"{tuple(y.shape)}; dy/dt must have exactly the shape of y"
        )
    if out.dtype != y.dtype:
        raise DTypeMismatchError(
            f"func(t, y) returned dtype {out.dtype} at t={_time_text(t)}, but the state has dtype {y.dtype}; "
            "make func's parameters and constants the same dtype as y0"
        )
    if out.device != y.device:
        raise DeviceMismatchError(
            f"func(t, y) returned a tensor on {out.device} at t={_time_text(t)}, but the state is on {y.device}"
        )


def check_rhs_output(out: Any, y0: torch.Tensor, t0: float) -> None:
    """Check the first ``func(t0, y0)``: a tensor with y0's shape, dtype and device, finite."""
    check_rhs_meta(out, y0, t0)
    if not all_finite(out):
        raise NonFiniteStateError(f"func(t, y0) is NaN/inf at the initial time t={t0:g}: check func and its parameters")
