"""torchdiffeq's API on pysciml_grad's engine: ``import pysciml_grad.torchdiffeq as torchdiffeq``.

``odeint``, ``odeint_adjoint``, ``odeint_event`` and ``odeint_dense`` take torchdiffeq
0.2.5's arguments, defaults and habits, and translate them into calls of the strict core
(:func:`pysciml_grad.odeint`, :func:`pysciml_grad.odeint_event`,
:func:`pysciml_grad.odeint_dense`). Every default and behaviour copied here was read from
torchdiffeq's source, github.com/rtqichen/torchdiffeq at a88aac5 (the 0.2.5 release), and
is cited by file below; ``docs/from-torchdiffeq.md`` has the table and the differences.

Gradients
---------
* ``odeint``: backpropagation through the solver (torchdiffeq's behaviour), i.e.
  ``psg.DirectAD()``. Set the environment variable ``PYSCIML_GRAD_SENSEALG`` to
  ``checkpoint`` (``psg.CheckpointAdjoint()``: the same exact discrete gradient with one
  stored state per step instead of the whole graph), ``interpolating``, ``backsolve`` or
  ``quadrature`` to upgrade a script without touching it, or pass ``sensealg=`` (an
  extension of torchdiffeq's signature).
* ``odeint_adjoint``: torchdiffeq's continuous adjoint (Chen et al. 2018), solved interval
  by interval backwards with the augmented state ``(dL/dt, y, dL/dy, dL/dtheta)`` and
  torchdiffeq's adjoint norms (``adjoint_options={"norm": "seminorm"}``: Kidger, Chen,
  Lyons 2021), each backward solve a call of the core solver.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn

from . import sensealg as _sa
from .pytree import Structure, StructuredFunc, is_structured, structure_of, wrap_norm

__version__ = "0.2.5"  # the torchdiffeq API this module reproduces
__all__ = ["odeint", "odeint_adjoint", "odeint_event", "odeint_dense"]

# torchdiffeq method name -> our torch-engine method (torchdiffeq/_impl/odeint.py, SOLVERS).
# adaptive_heun is Heun with an embedded Euler estimate (our heun_euler, same tableau up to
# the sign of b - b_hat); heun2 is our heun; torchdiffeq's rk4 is Kutta's 3/8 rule
# (rk_common.py, rk4_alt_step_func), our rk38.
METHODS: Dict[str, str] = {
    "dopri8": "dopri8",
    "dopri5": "dopri5",
    "bosh3": "bosh3",
    "fehlberg2": "fehlberg2",
    "adaptive_heun": "heun_euler",
    "euler": "euler",
    "midpoint": "midpoint",
    "heun2": "heun",
    "heun3": "heun3",
    "rk4": "rk38",
    "explicit_adams": "explicit_adams",
    "implicit_adams": "implicit_adams",
    "fixed_adams": "implicit_adams",  # torchdiffeq: "Backward compatibility: use the same name as before"
    "scipy_solver": "scipy_solver",
    # Not in 0.2.5: torchdiffeq master (657943a, torchdiffeq/_impl/odeint.py SOLVERS,
    # 'tsit5': Tsit5Solver in tsit5.py) adds Tsitouras 5(4), which our core has as tsit5.
    "tsit5": "tsit5",
    # torchdiffeq master (657943a, odeint.py SOLVERS; fixed_grid_implicit.py): the nine
    # fixed-grid implicit Runge-Kutta methods, our core's methods of the same names.
    **{name: name for name in ("implicit_euler", "implicit_midpoint", "trapezoid", "radauIIA3", "gl4",
                               "radauIIA5", "gl6", "sdirk2", "trbdf2")},
}
IMPLICIT = ("implicit_euler", "implicit_midpoint", "trapezoid", "radauIIA3", "gl4", "radauIIA5", "gl6", "sdirk2",
            "trbdf2")
ADAPTIVE = ("dopri8", "dopri5", "bosh3", "fehlberg2", "adaptive_heun", "tsit5")
FIXED = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams", "fixed_adams", *IMPLICIT)

# Keyword arguments of each solver family and their torchdiffeq defaults
# (rk_common.py RKAdaptiveStepsizeODESolver.__init__, solvers.py FixedGridODESolver.__init__,
# scipy_wrapper.py ScipyWrapperODESolver.__init__). "norm" is everyone's (solvers.py /
# misc.py _check_inputs); unknown keys are warned about and ignored (misc.py
# _handle_unused_kwargs: "<Solver>: Unexpected arguments {...}").
ADAPTIVE_DEFAULTS = dict(min_step=0, max_step=math.inf, first_step=None, step_t=None, jump_t=None,
                         safety=0.9, ifactor=10.0, dfactor=0.2, max_num_steps=2**31 - 1, dtype=torch.float64)
FIXED_DEFAULTS = dict(step_size=None, grid_constructor=None, interp="linear", perturb=False)
# rk_common.py FixedGridFIRKODESolver.__init__ (master): max_iters=100 on top of the fixed-grid keys.
IMPLICIT_DEFAULTS = dict(FIXED_DEFAULTS, max_iters=100)
SCIPY_DEFAULTS = dict(min_step=0, max_step=math.inf, solver="LSODA")
_SOLVER_CLASS = {  # the class names torchdiffeq's warnings print
    "dopri8": "Dopri8Solver", "dopri5": "Dopri5Solver", "bosh3": "Bosh3Solver", "fehlberg2": "Fehlberg2",
    "adaptive_heun": "AdaptiveHeunSolver", "euler": "Euler", "midpoint": "Midpoint", "heun2": "Heun2",
    "heun3": "Heun3", "rk4": "RK4", "explicit_adams": "AdamsBashforth", "implicit_adams": "AdamsBashforthMoulton",
    "fixed_adams": "AdamsBashforthMoulton", "scipy_solver": "ScipyWrapperODESolver", "tsit5": "Tsit5Solver",
    "implicit_euler": "ImplicitEuler", "implicit_midpoint": "ImplicitMidpoint", "trapezoid": "Trapezoid",
    "radauIIA3": "RadauIIA3", "gl4": "GaussLegendre4", "radauIIA5": "RadauIIA5", "gl6": "GaussLegendre6",
    "sdirk2": "SDIRK2", "trbdf2": "TRBDF2",
}

SENSEALG_ENV = "PYSCIML_GRAD_SENSEALG"
_ENV_SENSEALGS = {
    "direct": _sa.DirectAD,
    "checkpoint": _sa.CheckpointAdjoint,
    "interpolating": _sa.InterpolatingAdjoint,
    "backsolve": _sa.BacksolveAdjoint,
    "quadrature": _sa.QuadratureAdjoint,
}


# --------------------------------------------------------------------------------------
# Norms (misc.py _rms_norm, _mixed_norm; adjoint.py handle_adjoint_norm_)
# --------------------------------------------------------------------------------------

def _rms_norm(tensor: torch.Tensor) -> torch.Tensor:
    # torchdiffeq's tensor.abs().pow(2).mean().sqrt(), clamped away from 0: odeint here
    # differentiates through the step-size control, where sqrt'(0) would give NaN.
    ms = tensor.abs().pow(2).mean()
    return ms.clamp_min(torch.finfo(ms.dtype).tiny).sqrt()


def _mixed_norm(tensor_tuple) -> Any:
    if len(tensor_tuple) == 0:
        return 0.0
    return max(_rms_norm(tensor) for tensor in tensor_tuple)


def _adjoint_norm(adjoint_options: dict, structure: Optional[Structure], state_norm: Callable) -> None:
    """Choose or wrap the backward pass's norm in place, as torchdiffeq 0.2.5 does."""

    def default_adjoint_norm(tensor_tuple):
        t, y, adj_y, *adj_params = tensor_tuple
        return max(t.abs(), state_norm(y), state_norm(adj_y), _mixed_norm(adj_params))

    user = adjoint_options.get("norm")
    if user is None:
        adjoint_options["norm"] = default_adjoint_norm
    elif user == "seminorm":
        # Kidger, Chen & Lyons (2021): the parameter-gradient block does not steer the step size.
        def adjoint_seminorm(tensor_tuple):
            t, y, adj_y, *adj_params = tensor_tuple
            return max(t.abs(), state_norm(y), state_norm(adj_y))

        adjoint_options["norm"] = adjoint_seminorm
    elif structure is not None:
        def structured_adjoint_norm(tensor_tuple):
            t, y, adj_y, *adj_params = tensor_tuple
            return user((t, *structure.unflatten(y), *structure.unflatten(adj_y), *adj_params))

        adjoint_options["norm"] = structured_adjoint_norm


# --------------------------------------------------------------------------------------
# Argument translation
# --------------------------------------------------------------------------------------

def _check_method(method: Optional[str]) -> str:
    method = "dopri5" if method is None else method
    if method not in METHODS:
        # torchdiffeq raises ValueError('Invalid method ...'); UnknownMethodError is one.
        from .errors import UnknownMethodError

        raise UnknownMethodError(
            'Invalid method "{}". Must be one of {}'.format(method, '{"' + '", "'.join(METHODS) + '"}.')
        )
    core = METHODS[method]
    from .backends.torch.forward import METHODS as CORE_METHODS

    if core not in CORE_METHODS and core != "scipy_solver":
        from .errors import UnknownMethodError

        raise UnknownMethodError(
            f"torchdiffeq's method {method!r} has no counterpart in this build of pysciml_grad's torch "
            f"engine yet; use a Runge-Kutta method ({', '.join(ADAPTIVE + FIXED[:5])})"
        )
    return method


def _fixed_grid_from_step_size(step_size: float) -> Callable:
    """torchdiffeq's grid for ``step_size`` (solvers.py, _grid_constructor_from_step_size):
    t0, t0 + h, ... and the last point replaced by t[-1] (a short last step), in t's direction."""

    def grid(func, y0, t):
        start, end = t[0], t[-1]
        span = (end - start).abs()
        n = int(torch.ceil(span / step_size + 1).item())
        sign = 1.0 if float(end) >= float(start) else -1.0
        inner = start + sign * step_size * torch.arange(0, n - 1, dtype=t.dtype, device=t.device)
        return torch.cat([inner, end.reshape(1)])

    return grid


def _core_options(method: str, options: Optional[dict], norm: Optional[Callable]) -> dict:
    """torchdiffeq options -> core options (unknown keys warned about and dropped)."""
    options = dict(options or {})
    options.pop("norm", None)
    if method == "scipy_solver":
        defaults = SCIPY_DEFAULTS
        for key in ("grid_points", "eps"):  # scipy_wrapper.py pops these silently
            options.pop(key, None)
    elif method in ADAPTIVE:
        defaults = ADAPTIVE_DEFAULTS
    elif method in IMPLICIT:
        defaults = IMPLICIT_DEFAULTS
    else:
        defaults = FIXED_DEFAULTS
    unused = {k: v for k, v in options.items() if k not in defaults}
    if unused:
        warnings.warn("{}: Unexpected arguments {}".format(_SOLVER_CLASS[method], unused))
    o = {**defaults, **{k: v for k, v in options.items() if k in defaults}}
    core: Dict[str, Any] = {}
    if method == "scipy_solver":
        core.update(solver=o["solver"], min_step=float(o["min_step"]), max_step=float(o["max_step"]))
        return core
    if method in ADAPTIVE:
        for key in ("max_step", "safety", "ifactor", "dfactor"):
            core[key] = float(o[key])
        core["max_num_steps"] = int(o["max_num_steps"])
        if o["first_step"] is not None:
            core["first_step"] = float(o["first_step"])
        if float(o["min_step"]) > 0:
            # misc/rk_common: dt.clamp(min_step, max_step); a step of min_step is always accepted.
            core.update(min_step=float(o["min_step"]), accept_min_step=True)
        for key in ("step_t", "jump_t"):
            if o[key] is not None:
                core[key] = o[key]
        if norm is not None:
            core["norm"] = norm
        return core
    # Fixed grid (solvers.py FixedGridODESolver).
    if o["step_size"] is not None and o["grid_constructor"] is not None:
        raise ValueError("step_size and grid_constructor are mutually exclusive arguments.")
    if o["step_size"] is not None and method in ("explicit_adams", "implicit_adams", "fixed_adams"):
        # The core's Adams loop takes equal steps of (about) step_size itself; it does not
        # read grid_constructor (adams.py).
        core["step_size"] = float(o["step_size"])
    elif o["step_size"] is not None:
        core["grid_constructor"] = _fixed_grid_from_step_size(float(o["step_size"]))
    elif o["grid_constructor"] is not None:
        core["grid_constructor"] = o["grid_constructor"]
    else:
        core["grid_constructor"] = lambda func, y0, t: t  # one step per interval of t
    if o["interp"] not in ("linear", "cubic"):
        raise ValueError(f"Unknown interpolation method {o['interp']}")
    core["interp"] = "linear" if o["interp"] == "linear" else "hermite"
    if o["perturb"]:
        core["perturb"] = True
    if method in IMPLICIT:
        core["max_iters"] = int(o["max_iters"])
    return core


def _tolerance(tol: Any) -> Any:
    if isinstance(tol, torch.Tensor):
        if tol.requires_grad:
            raise ValueError("rtol/atol cannot require gradient")  # misc.py _check_inputs asserts this
        if tol.numel() == 1:
            return float(tol)
    return tol


def _sensealg_from_env() -> _sa.SensitivityAlgorithm:
    name = os.environ.get(SENSEALG_ENV, "direct").strip().lower()
    if name not in _ENV_SENSEALGS:
        from .errors import InvalidProblemError

        raise InvalidProblemError(
            f"{SENSEALG_ENV}={name!r} is not a gradient method; choose one of {sorted(_ENV_SENSEALGS)}"
        )
    return _ENV_SENSEALGS[name]()


def _first_point(y0: Any):
    """torchdiffeq returns y0 itself as the whole solution for a 1-point t."""
    if is_structured(y0):
        return tuple(leaf[None] for leaf in y0)
    return y0[None]


def _state_norm(structure: Optional[Structure], norm: Optional[Callable]) -> Callable:
    """The forward norm on the flat state (misc.py _check_inputs)."""
    if structure is None:
        return norm if norm is not None else _rms_norm
    return wrap_norm(norm if norm is not None else _mixed_norm, structure)


def _solve(func, y0, t, method: str, rtol, atol, options: Optional[dict], norm: Optional[Callable],
           sensealg: _sa.SensitivityAlgorithm, params=None):
    """One core solve with torchdiffeq's options translated; y0 a tensor or a tuple."""
    from .solve import odeint as core_odeint

    if method == "scipy_solver":
        # misc.py _check_inputs: SciPy's solver calls no callbacks, so defining one warns.
        defined = {n for n in ("callback_step", "callback_accept_step", "callback_reject_step") if hasattr(func, n)}
        if defined:
            warnings.warn("Solver '{}' does not support callbacks {}".format(method, defined))

    core = _core_options(method, options, norm)
    state_dtype = (y0[0] if is_structured(y0) else y0).dtype
    t_solve = t.to(state_dtype) if t.is_floating_point() else t  # func sees t in the state's dtype
    if method == "scipy_solver":
        with torch.no_grad():
            return core_odeint(func, y0, t_solve.detach(), method="scipy_solver", rtol=_tolerance(rtol),
                               atol=_tolerance(atol), options=core, sensealg=_sa.DirectAD())
    return core_odeint(func, y0, t_solve, method=METHODS[method], rtol=_tolerance(rtol), atol=_tolerance(atol),
                       options=core, sensealg=sensealg, params=params)


# --------------------------------------------------------------------------------------
# odeint
# --------------------------------------------------------------------------------------

def odeint(func, y0, t, *, rtol=1e-7, atol=1e-9, method=None, options=None, event_fn=None, sensealg=None):
    """torchdiffeq.odeint: solve dy/dt = func(t, y), y(t[0]) = y0 at the times ``t``.

    Backpropagates through the solver (``psg.DirectAD``) unless ``sensealg=`` or the
    environment variable ``PYSCIML_GRAD_SENSEALG`` says otherwise. ``y0`` may be a tuple of
    tensors. With ``event_fn`` it returns ``(event_t, solution)`` (see :func:`odeint_event`).
    """
    method = _check_method(method)
    if options is not None and not isinstance(options, dict):
        raise TypeError("options must be a dict")
    if sensealg is None:
        sensealg = _sensealg_from_env()
    norm = (options or {}).get("norm")
    if event_fn is not None:
        return _odeint_with_event(func, y0, t, rtol, atol, method, options, event_fn, sensealg)
    if len(t) == 1:
        return _first_point(y0)
    if is_structured(y0):
        y0 = tuple(y0)
        norm = norm if norm is not None else _mixed_norm
    return _solve(func, y0, t, method, rtol, atol, options, norm, sensealg)


def _odeint_with_event(func, y0, t, rtol, atol, method, options, event_fn, sensealg, **extra):
    from .events import odeint_event as core_event

    if len(t) != 2:
        raise ValueError(f"We require len(t) == 2 when in event handling mode, but got len(t)={len(t)}.")
    reverse = bool(t[1] < t[0])
    options = dict(options or {})
    core = {}
    if method in FIXED:
        if options.get("step_size") is None:
            raise ValueError("Event handling for fixed step solvers currently requires `step_size` to be provided in options.")
        core["step_size"] = float(options["step_size"])
    elif method in ADAPTIVE:
        core = _core_options(method, options, options.get("norm"))
    else:
        raise ValueError(f"event handling is not available for method {method!r}")
    structure = structure_of(tuple(y0)) if is_structured(y0) else None
    f, g, y = func, event_fn, y0
    if structure is not None:
        f = StructuredFunc(func, structure)
        y = structure.flatten(tuple(y0))

        def g(t_, y_, _event_fn=event_fn):
            return _event_fn(t_, structure.unflatten(y_))
    t0 = t[0].to(y.dtype)
    event_t, ys = core_event(f, y, t0, event_fn=g, reverse_time=reverse, method=METHODS[method],
                             rtol=_tolerance(rtol), atol=_tolerance(atol), sensealg=sensealg, options=core, **extra)
    event_t = event_t.to(t)
    if structure is not None:
        ys = structure.unflatten(ys, (ys.shape[0],))
    return event_t, ys


# --------------------------------------------------------------------------------------
# odeint_adjoint
# --------------------------------------------------------------------------------------

class _Settings:
    __slots__ = ("func", "method", "rtol", "atol", "options", "norm", "adjoint_method", "adjoint_rtol",
                 "adjoint_atol", "t_requires_grad")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)


class OdeintAdjointMethod(torch.autograd.Function):
    """torchdiffeq's continuous adjoint (adjoint.py), on the core solver.

    Backwards from t[-1], interval by interval, the augmented state
    s = (dL/dt, y, a = dL/dy, dL/dtheta) solves
        ds/dt = (-a^T df/dt, f, -a^T df/dy, -a^T df/dtheta)
    (the sign convention of Chen et al. 2018 with torchdiffeq's ``-adj_y`` cotangent); at
    each save time y is reset to the forward value and a receives that time's dL/dy(t_i).
    ``ctx.adjoint_options`` is torchdiffeq's name: its ``norm`` is read when the backward
    pass runs, so it can be replaced after the forward solve (torchdiffeq's own tests do).
    """

    @staticmethod
    def forward(ctx, settings, adjoint_options, y0, t, *adjoint_params):  # type: ignore[override]
        ctx.settings = settings
        ctx.adjoint_options = adjoint_options
        with torch.no_grad():
            ys = _solve(settings.func, y0, t, settings.method, settings.rtol, settings.atol, settings.options,
                        settings.norm, _sa.DirectAD())
        ctx.save_for_backward(t, ys, *adjoint_params)
        return ys

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        with torch.no_grad():
            s = ctx.settings
            func = s.func
            t, y, *adjoint_params = ctx.saved_tensors
            adjoint_params = tuple(adjoint_params)
            adjoint_options = dict(ctx.adjoint_options)
            adjoint_norm = adjoint_options.pop("norm")
            t_requires_grad = s.t_requires_grad

            aug_state = [torch.zeros((), dtype=y.dtype, device=y.device), y[-1], grad_y[-1]]
            aug_state.extend(torch.zeros_like(p) for p in adjoint_params)

            def augmented_dynamics(t_, y_aug):
                y_, adj_y = y_aug[1], y_aug[2]
                with torch.enable_grad():
                    t_d = t_.detach().requires_grad_(True)
                    y_d = y_.detach().requires_grad_(True)
                    func_eval = func(t_d if t_requires_grad else t_.detach(), y_d)
                    if func_eval.requires_grad:
                        vjp_t, vjp_y, *vjp_params = torch.autograd.grad(
                            func_eval, (t_d, y_d) + adjoint_params, -adj_y, allow_unused=True, retain_graph=True
                        )
                    else:
                        # f depends on none of (t, y, params) that carry grad, e.g. f = g(t) with
                        # t_grad off: every vjp is zero (autograd.grad would refuse the output).
                        vjp_t, vjp_y, vjp_params = None, None, [None] * len(adjoint_params)
                vjp_t = torch.zeros_like(t_d) if vjp_t is None else vjp_t.to(y_.dtype)
                vjp_y = torch.zeros_like(y_d) if vjp_y is None else vjp_y
                vjp_params = [torch.zeros_like(p) if g is None else g for p, g in zip(adjoint_params, vjp_params)]
                return (vjp_t.reshape(()), func_eval, vjp_y, *vjp_params)

            for name in ("callback_step", "callback_accept_step", "callback_reject_step"):
                callback = getattr(func, name + "_adjoint", None)
                if callback is not None:
                    setattr(augmented_dynamics, name, callback)

            time_vjps = torch.empty(len(t), dtype=t.dtype, device=t.device) if t_requires_grad else None
            for i in range(len(t) - 1, 0, -1):
                if t_requires_grad:
                    func_eval = func(t[i].to(y.dtype), y[i])
                    dLd_cur_t = func_eval.reshape(-1).dot(grad_y[i].reshape(-1))
                    aug_state[0] = aug_state[0] - dLd_cur_t
                    time_vjps[i] = dLd_cur_t
                out = _solve(augmented_dynamics, tuple(aug_state), t[i - 1:i + 1].flip(0), s.adjoint_method,
                             s.adjoint_rtol, s.adjoint_atol, adjoint_options, adjoint_norm, _sa.DirectAD())
                aug_state = [a[1] for a in out]
                aug_state[1] = y[i - 1]
                aug_state[2] = aug_state[2] + grad_y[i - 1]
            if t_requires_grad:
                time_vjps[0] = aug_state[0]
            adj_y = aug_state[2]
            adj_params = aug_state[3:]
        return (None, None, adj_y, time_vjps, *adj_params)


def find_parameters(module: nn.Module):
    """The tensors the adjoint differentiates (adjoint.py find_parameters, DataParallel included)."""
    assert isinstance(module, nn.Module)
    if getattr(module, "_is_replica", False):
        def find_tensor_attributes(m):
            return [(k, v) for k, v in m.__dict__.items() if torch.is_tensor(v) and v.requires_grad]

        return [p for _, p in module._named_members(get_members_fn=find_tensor_attributes)]
    return list(module.parameters())


def odeint_adjoint(func, y0, t, *, rtol=1e-7, atol=1e-9, method=None, options=None, event_fn=None,
                   adjoint_rtol=None, adjoint_atol=None, adjoint_method=None, adjoint_options=None,
                   adjoint_params=None):
    """torchdiffeq.odeint_adjoint: the continuous adjoint, O(1) memory in the number of steps.

    ``func`` must be an ``nn.Module`` unless ``adjoint_params`` lists the tensors to
    differentiate (``()`` for none). ``adjoint_rtol/atol/method`` default to the forward
    ones; ``adjoint_options`` to ``options`` without ``norm``;
    ``adjoint_options={"norm": "seminorm"}`` drops the parameter block from the backward
    error norm.
    """
    # adjoint.py: the checks and defaults below, in its order.
    if adjoint_params is None and not isinstance(func, nn.Module):
        raise ValueError('func must be an instance of nn.Module to specify the adjoint parameters; alternatively they '
                         'can be specified explicitly via the `adjoint_params` argument. If there are no parameters '
                         'then it is allowable to set `adjoint_params=()`.')
    adjoint_rtol = rtol if adjoint_rtol is None else adjoint_rtol
    adjoint_atol = atol if adjoint_atol is None else adjoint_atol
    adjoint_method = method if adjoint_method is None else adjoint_method
    if adjoint_method != method and options is not None and adjoint_options is None:
        raise ValueError("If `adjoint_method != method` then we cannot infer `adjoint_options` from `options`. So as "
                         "`options` has been passed then `adjoint_options` must be passed as well.")
    if adjoint_options is None:
        adjoint_options = {k: v for k, v in options.items() if k != "norm"} if options is not None else {}
    else:
        adjoint_options = dict(adjoint_options)
    adjoint_params = tuple(find_parameters(func)) if adjoint_params is None else tuple(adjoint_params)
    n_before = len(adjoint_params)
    adjoint_params = tuple(p for p in adjoint_params if p.requires_grad)
    if len(adjoint_params) != n_before and callable(adjoint_options.get("norm")):
        warnings.warn("An adjoint parameter was passed without requiring gradient. For efficiency this will be "
                      "excluded from the adjoint pass, and will not appear as a tensor in the adjoint norm.")

    method = _check_method(method)
    adjoint_method = _check_method(adjoint_method)
    if event_fn is not None:
        sensealg = _sa.BacksolveAdjoint(adjoint_rtol=float(_tolerance(adjoint_rtol)),
                                        adjoint_atol=float(_tolerance(adjoint_atol)),
                                        adjoint_method=METHODS[adjoint_method])
        return _odeint_with_event(func, y0, t, rtol, atol, method, options, event_fn, sensealg,
                                  params=adjoint_params)
    if len(t) == 1:
        return _first_point(y0)

    structure = structure_of(tuple(y0)) if is_structured(y0) else None
    flat_func, flat_y0 = func, y0
    if structure is not None:
        flat_func = StructuredFunc(func, structure)
        flat_y0 = structure.flatten(tuple(y0))
    state_norm = _state_norm(structure, (options or {}).get("norm"))
    _adjoint_norm(adjoint_options, structure, state_norm)
    settings = _Settings(func=flat_func, method=method, rtol=rtol, atol=atol, options=options,
                         norm=state_norm if (structure is not None or (options or {}).get("norm")) else None,
                         adjoint_method=adjoint_method, adjoint_rtol=adjoint_rtol, adjoint_atol=adjoint_atol,
                         t_requires_grad=t.requires_grad)
    ys = OdeintAdjointMethod.apply(settings, adjoint_options, flat_y0, t, *adjoint_params)
    if structure is not None:
        return structure.unflatten(ys, (len(t),))
    return ys


# --------------------------------------------------------------------------------------
# odeint_event, odeint_dense
# --------------------------------------------------------------------------------------

def odeint_event(func, y0, t0, *, event_fn, reverse_time=False, odeint_interface=odeint, **kwargs):
    """torchdiffeq.odeint_event: solve from ``t0`` until ``event_fn(t, y)`` is zero.

    Returns ``(event_t, solution)`` with ``solution = [y0, y(event_t)]``; both carry
    gradients, the event time's by the implicit function theorem (core
    :func:`pysciml_grad.odeint_event`). ``odeint_interface`` is ``odeint`` or
    ``odeint_adjoint`` (the gradient method of the solve up to the event).
    """
    t0 = torch.as_tensor(t0)
    step = -1.0 if reverse_time else 1.0
    # odeint.py odeint_event: t = [t0, t0 + 1] (direction only; the event ends the solve).
    t = torch.cat([t0.reshape(-1), t0.reshape(-1).detach() + step])
    return odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)


def odeint_dense(func, y0, t0, t1, *, rtol=1e-7, atol=1e-9, method=None, options=None):
    """torchdiffeq.odeint_dense: a callable ``sol(t)`` for t in [t0, t1] (dopri5 only, as
    torchdiffeq asserts), built from the solver's continuous extension."""
    from .dense import odeint_dense as core_dense

    assert torch.is_tensor(y0)  # torchdiffeq: "TODO: handle tuple of tensors"
    method = _check_method(method)
    assert method == "dopri5"
    t = torch.stack([torch.as_tensor(t0), torch.as_tensor(t1)]).to(y0.dtype)
    return core_dense(func, y0, t[0], t[1], method="dopri5", rtol=_tolerance(rtol), atol=_tolerance(atol),
                      options=_core_options(method, options, (options or {}).get("norm")))
