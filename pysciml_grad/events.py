"""``odeint_event``: solve until a terminal event, differentiably in the event time.

Semantics follow torchdiffeq 0.2.5's ``odeint_event`` (rtqichen/torchdiffeq,
``torchdiffeq/_impl/odeint.py`` and ``event_handling.py`` at commit a88aac5): integrate
from ``t0`` (backwards with ``reverse_time=True``) until ``event_fn(t, y)`` changes sign,
return ``(event_t, ys)`` with ``ys = stack([y0, y(event_t)])``. A vector-valued
``event_fn`` stops at the first component to change sign (torchdiffeq's
``combine_event_functions``: G = min_k s_k g_k with s_k the sign of g_k at t0).
Departure from torchdiffeq, for restarts such as a bouncing ball: a component that is
exactly zero at t0 is not an event at t0; it is armed with the sign it has at the end of
the first accepted step where it is non-zero.

Location: the engine's step loop stops after the first accepted step whose end has
G <= 0, and the root is bisected on that step's dense output
(:mod:`pysciml_grad.backends.torch.events`).

Gradients. With Y(t) the solution, t* is defined by g(t*, Y(t*), phi) = 0, so by the
implicit function theorem, for any input p (y0, t0, func's parameters theta, event_fn's
parameters phi)

    dt*/dp = -(dg/dy . dY(t*)/dp + dg/dphi . dphi/dp) / (dg/dt),
    dg/dt  = partial g/partial t + partial g/partial y . f(t*, Y(t*)),

and dY(t*)/dp|total = dY/dp|_{t fixed} + f(t*, Y(t*)) dt*/dp. So a loss L(t*, Y(t*)) sees
Y(t*) at *fixed* t* (any sensealg differentiates that: a solve of ``psg.odeint`` on
[t0, t*]) plus the rerouting, in the backward pass,

    lambda      = dL/dt* + dL/dY* . f,
    dL/dY*     <- dL/dY* - (lambda / (dg/dt)) dg/dy,
    dL/dphi    += -(lambda / (dg/dt)) dg/dphi,

which is torchdiffeq's ``ImplicitFnGradientRerouting`` extended to the parameters of
``event_fn`` (an ``nn.Module``'s parameters, or tensors passed in ``params=``). See
also Chen, Amos & Nickel (2021), "Learning neural event functions for ordinary
differential equations", ICLR, section 3. diffrax's ``Event`` (patrick-kidger/diffrax,
``diffrax/_event.py``) is the richer model (several events, non-terminal ones); here
events are terminal.

Cost: the search is a solve without a graph, the differentiable solve on [t0, t*] a
second one with the chosen ``sensealg`` (it takes the same steps, the last one cut at
t*: for fixed-step methods the search's grid is passed as ``t``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, List, Mapping, Optional

import torch

from .errors import InvalidProblemError, InvalidTimeError, NonFiniteGradientError, RHSOutputError
from .finite import all_finite
from .problem import make_problem
from .pytree import StructuredFunc, is_structured, structure_of
from .sensealg import SensitivityAlgorithm


class _Combined:
    """G(t, y) = min over armed components k of s_k g_k(t, y); > 0 before the event."""

    def __init__(self, event_fn: Callable, t0: torch.Tensor, y0: torch.Tensor):
        self.event_fn = event_fn
        self.dtype, self.device = y0.dtype, y0.device
        with torch.no_grad():
            c0 = self._raw(t0.detach().to(y0.dtype), y0.detach(), check=True)
        self.signs = torch.sign(c0)

    def _raw(self, t: torch.Tensor, y: torch.Tensor, check: bool = False) -> torch.Tensor:
        c = self.event_fn(t, y)
        if check:
            if not isinstance(c, torch.Tensor) or not c.is_floating_point():
                raise RHSOutputError(
                    f"event_fn(t, y) must return a real floating tensor (one value or one per event), got "
                    f"{type(c).__name__ if not isinstance(c, torch.Tensor) else c.dtype}"
                )
            if c.numel() == 0 or not all_finite(c):
                raise RHSOutputError("event_fn(t0, y0) is empty or NaN/inf; it must return finite values")
        return c.reshape(-1).to(self.dtype)

    def _time(self, t) -> torch.Tensor:
        return torch.full((), t, dtype=self.dtype, device=self.device) if not isinstance(t, torch.Tensor) else t

    def tensor(self, t, y: torch.Tensor) -> torch.Tensor:
        c = self._raw(self._time(t), y)
        armed = self.signs != 0
        if not bool(armed.any()):
            return c.new_ones(())
        return (c * self.signs)[armed].min()

    def __call__(self, t: float, y: torch.Tensor) -> float:
        return float(self.tensor(t, y))

    def arm(self, t: float, y: torch.Tensor) -> None:
        """Components zero at t0 take their sign from the first step end where they are not."""
        if bool((self.signs == 0).any()):
            c = self._raw(self._time(t), y)
            self.signs = torch.where(self.signs == 0, torch.sign(c), self.signs)


class _ImplicitEventTime(torch.autograd.Function):
    """(t*, Y(t*) at fixed t*, params) -> (t*, Y(t*)) with the implicit-function-theorem
    backward of the module docstring."""

    @staticmethod
    def forward(ctx, func, G, t_star, y_star, *params):  # type: ignore[override]
        ctx.func, ctx.G = func, G
        ctx.save_for_backward(t_star, y_star, *params)
        return t_star.clone(), y_star.detach().clone()

    @staticmethod
    def backward(ctx, grad_t, grad_y):  # type: ignore[override]
        t_star, y_star, *params = ctx.saved_tensors
        wanted = [p for p in params if p.requires_grad]
        with torch.enable_grad():
            tt = t_star.detach().to(y_star.dtype).requires_grad_(True)
            yy = y_star.detach().requires_grad_(True)
            g = ctx.G.tensor(tt, yy)
            # retain_graph: event_fn may read a tensor carrying the caller's graph (a target
            # computed from t); freeing g's graph would free that shared part too, and the
            # caller's next backward through the event (retain_graph=True on theirs) fails.
            grads = torch.autograd.grad(g, [tt, yy, *wanted], allow_unused=True, retain_graph=True)
        with torch.no_grad():
            f = ctx.func(t_star.detach().to(y_star.dtype), y_star.detach())
        g_t = grads[0] if grads[0] is not None else torch.zeros((), dtype=yy.dtype, device=yy.device)
        g_y = grads[1] if grads[1] is not None else torch.zeros_like(yy)
        dgdt = g_t + (g_y * f).sum()
        if float(dgdt) == 0.0:
            raise NonFiniteGradientError(
                f"odeint_event: d event_fn/dt = 0 at the event t*={float(t_star):.6g} (the trajectory touches "
                "the event surface tangentially), so dt*/d(inputs) is infinite. Reformulate event_fn so that it "
                "crosses zero transversally."
            )
        if grad_t is None:
            grad_t = torch.zeros((), dtype=yy.dtype, device=yy.device)
        if grad_y is None:
            grad_y = torch.zeros_like(yy)
        lam = grad_t.to(yy.dtype) + (grad_y * f).sum()
        coef = -lam / dgdt
        by_id = {id(p): gp for p, gp in zip(wanted, grads[2:])}
        out_params = [None if by_id.get(id(p)) is None else coef * by_id[id(p)] for p in params]
        return (None, None, None, grad_y + coef * g_y, *out_params)


def odeint_event(
    func: Callable,
    y0: torch.Tensor,
    t0: Any,
    *,
    event_fn: Callable,
    reverse_time: bool = False,
    method: str = "dopri5",
    rtol: float = 1e-7,
    atol: float = 1e-9,
    sensealg: Optional[SensitivityAlgorithm] = None,
    options: Optional[Mapping[str, Any]] = None,
    params: Optional[Iterable[torch.Tensor]] = None,
):
    """Solve dy/dt = func(t, y), y(t0) = y0 until ``event_fn(t, y)`` changes sign.

    Parameters
    ----------
    func, y0, method, rtol, atol, sensealg, options, params : as in :func:`pysciml_grad.odeint`
        (torch engine); y0 may be a structured state (tuple/list/dict of tensors), which
        ``event_fn`` then receives too and ``ys`` returns (leaves of shape ``(2, *leaf.shape)``). Fixed-step methods need ``options={"step_size": h}``; leapfrog is
        not supported. ``max_num_steps`` bounds the search.
    t0 : the initial time, a 0-d (or 1-element) tensor or a number; may require grad.
    event_fn : ``event_fn(t, y) -> tensor``, one value or several; the solve stops where the
        first of them changes sign. Its gradient reaches its own parameters when it is an
        ``nn.Module``, when they are in ``params``, and when it closes over them (found by
        one evaluation at t0, as for ``func``).
    reverse_time : integrate towards decreasing t.

    Returns
    -------
    (event_t, ys): event_t a 0-d tensor (t0's dtype), ys of shape ``(2, *y0.shape)`` =
    [y0, y(event_t)]; both differentiable (implicit function theorem, module docstring).
    With ``options={"return_stats": True}``: ``(event_t, ys, stats)``, the search's work in
    ``stats.extra["event_search_nfe"]`` / ``["event_search_steps"]``.
    """
    from .backends.torch.discover import discover
    from .backends.torch.events import find_event
    from .backends.torch.stepping import hermite
    from .solve import default_sensealg, odeint

    if not callable(event_fn):
        raise InvalidProblemError(f"event_fn must be callable as event_fn(t, y) -> tensor, got {type(event_fn).__name__}")
    if is_structured(y0):
        # As psg.odeint: solve on the flat state; func and event_fn see the user's structure.
        if not callable(func):
            raise InvalidProblemError(f"func must be callable as func(t, y) -> dy/dt, got {type(func).__name__}")
        structure = structure_of(y0)
        own = list(event_fn.parameters()) if isinstance(event_fn, torch.nn.Module) else []
        extra = [] if params is None else ([params] if isinstance(params, torch.Tensor) else list(params))
        out = odeint_event(
            StructuredFunc(func, structure), structure.flatten(y0), t0,
            event_fn=lambda t, y: event_fn(t, structure.unflatten(y)), reverse_time=reverse_time, method=method,
            rtol=rtol, atol=atol, sensealg=sensealg, options=options, params=[*extra, *own] or None,
        )
        return (out[0], structure.unflatten(out[1], (2,)), *out[2:])
    if not isinstance(y0, torch.Tensor):
        raise InvalidProblemError(f"y0 must be a torch.Tensor, got {type(y0).__name__}")
    if not isinstance(t0, torch.Tensor):
        t0 = torch.as_tensor(t0, dtype=y0.dtype if y0.is_floating_point() else torch.float64, device=y0.device)
    if t0.numel() != 1 or not t0.is_floating_point():
        raise InvalidTimeError(
            f"t0 must be one floating-point time (a 0-d tensor), got shape {tuple(t0.shape)} dtype {t0.dtype}"
        )
    t0 = t0.reshape(())
    direction = -1.0 if reverse_time else 1.0
    if sensealg is None:
        sensealg = default_sensealg("torch")
    probe_t = torch.stack([t0, t0.detach() + direction]).to(torch.float64)
    problem = make_problem(func, y0, probe_t, method=method, rtol=rtol, atol=atol, options=options,
                           params=params, sensealg=sensealg, backend="torch")
    G = _Combined(event_fn, t0, problem.y0)
    found = find_event(problem, G, direction)

    # Adaptive: solve on [t0, t*] (the same steps, the last one cut at t*). Fixed step: solve on
    # the search's grid through the end of the step holding t*, then take the same cubic Hermite
    # dense output the root was found on, so that Y(t*) is the state the event was located in.
    rest: List[float] = [found.t] if found.grid is None else list(found.grid[1:])
    t_solve = torch.cat([t0.reshape(1).to(torch.float64), torch.tensor(rest, dtype=torch.float64, device=t0.device)])
    solve_options = dict(options or {})
    if found.grid is not None:
        solve_options.pop("step_size", None)  # the grid is t itself: the search's own steps
    return_stats = bool(solve_options.get("return_stats", False))
    out = odeint(func, y0, t_solve, method=method, rtol=rtol, atol=atol, sensealg=sensealg,
                 options=solve_options, params=params)
    ys_full, stats = out if return_stats else (out, None)
    if found.grid is not None and found.theta != 1.0:
        t_n, t_n1 = t_solve[-2].to(y0.dtype), t_solve[-1].to(y0.dtype)
        y_n, y_n1 = ys_full[-2], ys_full[-1]
        y_dense = hermite(found.theta, float((t_n1 - t_n).detach()), y_n, y_n1, problem.func(t_n, y_n), problem.func(t_n1, y_n1))
        ys_full = torch.stack([ys_full[0], y_dense])

    event_params = list(event_fn.parameters()) if isinstance(event_fn, torch.nn.Module) else []
    # Tensors event_fn closes over (a level c = 2 * s with s requiring grad) would get no
    # gradient unless they are inputs of the implicit-time Function: found as func's are.
    event_params += list(discover(event_fn, float(t0.detach()), problem.y0).tensors)
    seen, all_params = set(), []
    for p in [*problem.params, *event_params]:
        if id(p) not in seen:
            seen.add(id(p))
            all_params.append(p)
    t_star = torch.tensor(found.t, dtype=torch.float64, device=t0.device)
    y_star = ys_full[-1]
    if torch.is_grad_enabled() and (y_star.requires_grad or any(p.requires_grad for p in all_params)):
        event_t, y_star = _ImplicitEventTime.apply(problem.func, G, t_star, y_star, *all_params)
    else:
        event_t = t_star
    ys = torch.stack([ys_full[0], y_star])
    event_t = event_t.to(t0.dtype)
    if return_stats:
        stats.extra["event_search_nfe"] = found.nfe
        stats.extra["event_search_steps"] = found.n_steps
        return event_t, ys, stats
    return event_t, ys
