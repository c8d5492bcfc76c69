"""Validate and normalise user input into an :class:`ODEProblem`.

Everything a solve can know to be wrong before the first step is checked here and
raised as a specific class from :mod:`pysciml_grad.errors` whose message says what to
change. Backend-specific names (methods, options) are validated by the backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

import torch

from .errors import (
    DeviceMismatchError,
    DTypeMismatchError,
    InvalidProblemError,
    InvalidStateError,
    InvalidTimeError,
    NonFiniteStateError,
    RHSOutputError,
)
from .sensealg import SensitivityAlgorithm


@dataclass(frozen=True)
class ODEProblem:
    """A validated initial-value problem plus how to solve and differentiate it.

    ``params`` holds every tensor the gradient must reach besides ``y0``: the
    parameters of ``func`` when it is an ``nn.Module`` and the user's ``params=``,
    deduplicated, in that order.
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
    if not callable(func):
        raise InvalidProblemError(f"func must be callable as func(t, y) -> dy/dt, got {type(func).__name__}")
    y0 = _check_y0(y0)
    t = _check_t(t, y0)
    _check_tolerances(rtol, atol)
    if not isinstance(sensealg, SensitivityAlgorithm):
        raise InvalidProblemError(
            f"sensealg must be a sensitivity-algorithm object such as psg.CheckpointAdjoint(), got {sensealg!r}"
        )
    if options is not None and not isinstance(options, Mapping):
        raise InvalidProblemError(f"options must be a dict such as {{'step_size': 0.01}}, got {type(options).__name__}")
    all_params = _collect_params(func, params, y0)
    return ODEProblem(
        func=func,
        y0=y0,
        t=t,
        method=method,
        rtol=float(rtol),
        atol=float(atol),
        options=dict(options or {}),
        params=all_params,
        sensealg=sensealg,
        backend=backend,
    )


def _check_y0(y0: Any) -> torch.Tensor:
    if not isinstance(y0, torch.Tensor):
        raise InvalidStateError(f"y0 must be a torch.Tensor, got {type(y0).__name__}; wrap it with torch.as_tensor(y0, dtype=torch.float64)")
    if not y0.is_floating_point():
        raise InvalidStateError(
            f"y0 has dtype {y0.dtype}; it must be a floating dtype (float32 or float64), e.g. y0.double()"
        )
    if y0.numel() == 0:
        raise InvalidStateError("y0 is empty; it needs at least one element")
    if not bool(torch.isfinite(y0).all()):
        bad = (~torch.isfinite(y0)).nonzero()[0].tolist()
        raise InvalidStateError(f"y0 contains NaN or inf (first at index {tuple(bad)}); fix the initial state")
    return y0


def _check_t(t: Any, y0: torch.Tensor) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise InvalidTimeError(f"t must be a 1-D torch.Tensor of save times, got {type(t).__name__}")
    if t.dim() != 1:
        raise InvalidTimeError(f"t must be 1-D (the save times), got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise InvalidTimeError(
            f"t has dtype {t.dtype}; save times must be floating point, e.g. torch.linspace(0., 1., 11) or t.double()"
        )
    if t.numel() < 2:
        raise InvalidTimeError(f"t needs at least 2 points (start and end), got {t.numel()}")
    if not bool(torch.isfinite(t).all()):
        raise InvalidTimeError("t contains NaN or inf; save times must be finite")
    if t.device != y0.device:
        t = t.to(y0.device)
    dt = (t[1:] - t[:-1]).detach()
    if bool((dt == 0).any()):
        k = int((dt == 0).nonzero()[0])
        raise InvalidTimeError(
            f"t is not strictly monotonic: t[{k}] == t[{k + 1}] == {float(t[k]):g} (duplicate save time); remove duplicates"
        )
    if not (bool((dt > 0).all()) or bool((dt < 0).all())):
        k = int(((dt > 0) != (dt[0] > 0)).nonzero()[0])
        raise InvalidTimeError(
            f"t must be strictly increasing or strictly decreasing, but it changes direction at "
            f"t[{k}]={float(t[k]):g}, t[{k + 1}]={float(t[k + 1]):g}; sort it (torch.sort) or split the solve"
        )
    return t


def _check_tolerances(rtol: Any, atol: Any) -> None:
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not isinstance(value, (int, float)) or not value > 0 or value != value:
            raise InvalidProblemError(f"{name} must be a positive number, got {value!r}")


def _collect_params(func: Callable, params: Optional[Iterable[torch.Tensor]], y0: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    found = list(func.parameters()) if isinstance(func, torch.nn.Module) else []
    if params is not None:
        if isinstance(params, torch.Tensor):
            params = [params]
        for p in params:
            if not isinstance(p, torch.Tensor):
                raise InvalidProblemError(f"params must be tensors, got {type(p).__name__}")
            found.append(p)
    unique, seen = [], set()
    for p in found:
        if id(p) not in seen:
            seen.add(id(p))
            unique.append(p)
    for p in unique:
        if p.is_floating_point() and p.dtype != y0.dtype:
            raise DTypeMismatchError(
                f"a parameter of func has dtype {p.dtype} but y0 has {y0.dtype}; use one dtype, "
                f"e.g. func.to({y0.dtype}) or y0.to({p.dtype})"
            )
        if p.device != y0.device:
            raise DeviceMismatchError(
                f"a parameter of func is on {p.device} but y0 is on {y0.device}; move them together, "
                f"e.g. func.to('{y0.device}')"
            )
    return tuple(unique)


def check_rhs_output(out: Any, y0: torch.Tensor, t0: float) -> None:
    """Check the first ``func(t0, y0)``: a tensor with y0's shape, dtype and device, finite."""
    if not isinstance(out, torch.Tensor):
        raise RHSOutputError(f"func(t, y) must return a torch.Tensor shaped like y, got {type(out).__name__}")
    if out.shape != y0.shape:
        raise RHSOutputError(
            f"func(t, y) returned shape {tuple(out.shape)} but y0 has shape {tuple(y0.shape)}; "
            "dy/dt must have exactly the shape of y"
        )
    if out.dtype != y0.dtype:
        raise DTypeMismatchError(
            f"func(t, y) returned dtype {out.dtype} but y0 has dtype {y0.dtype}; make func's "
            "parameters and constants the same dtype as y0"
        )
    if out.device != y0.device:
        raise DeviceMismatchError(f"func(t, y) returned a tensor on {out.device} but y0 is on {y0.device}")
    if not bool(torch.isfinite(out).all()):
        raise NonFiniteStateError(f"func(t, y0) is NaN/inf at the initial time t={t0:g}: check func and its parameters")
