"""What every adjoint of the torch engine shares: the ``torch.autograd.Function`` that
wraps a strategy, vector-Jacobian products of ``func``, and the non-finite checks.

A strategy (one per sensealg, in its own module) has two methods:

* ``forward(y0) -> ys`` runs the forward solve under ``no_grad`` (step sizes are Python
  floats, i.e. constants) and keeps whatever its backward pass needs;
* ``backward(grad_ys, y0, t, params, needs, ys) -> (dL/dy0, dL/dt, [dL/dparam])``,
  where ``ys`` is the output when the strategy sets ``needs_output = True`` (else None).

``params`` are ``problem.params`` (the module's parameters and the user's ``params=``)
plus every other tensor requiring grad that the first evaluation of ``func`` reads
(``discover.py``: closures, bound methods, ``functools.partial``, ``W = base * 2``),
passed to the Function as inputs so that autograd routes their gradients.

A strategy also has ``free()`` (drop the forward record; called once autograd has
released the Function's saved tensors) and the attributes ``discovery`` and ``f0``
(set by :func:`run`).
"""

from __future__ import annotations

import weakref
from dataclasses import replace
from typing import List, Optional, Sequence, Tuple

import torch

from ....errors import NonFiniteGradientError, UnsupportedSensitivityError
from ....problem import ODEProblem, functorch_transforms
from .. import progress
from ..discover import Discovery, discover
from ..forward import forward_solve


class _AdjointFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, strategy, y0, t, *params):  # type: ignore[override]
        ys = strategy.forward(y0)
        ctx.strategy = strategy
        # Outputs go through save_for_backward (never onto ctx: a reference cycle); dL/dt needs them too.
        keep = ys if getattr(strategy, "needs_output", False) or t.requires_grad else None
        # The forward record (checkpoints, stored stages) lives on the strategy. autograd
        # frees saved tensors after a backward without retain_graph=True, so a token saved
        # here dies then, and with it the record: a loss kept alive afterwards
        # (history.append(loss)) no longer keeps the record alive.
        token = torch.empty(0)
        weakref.finalize(token, strategy.free)
        ctx.save_for_backward(y0, t, keep, token, *params)
        return ys

    @staticmethod
    def backward(ctx, grad_ys):  # type: ignore[override]
        y0, t, ys, _token, *params = ctx.saved_tensors
        needs = ctx.needs_input_grad[1:]
        strategy = ctx.strategy
        found = strategy.discovery
        # Replays run func again: BatchNorm-style buffers it updates in place must end as
        # the forward left them, and the user's random stream must not move.
        saved = [b.detach().clone() for b in found.mutated] if found is not None else []
        # options["progress"]: one meter for the whole backward pass, from t[-1] back to t[0]
        shown = bool(getattr(getattr(strategy, "opts", None), "progress", False))
        span = (float(t[-1]), float(t[0])) if shown else (0.0, 0.0)
        try:
            with progress.showing(shown, "backward", *span):
                if found is not None and found.random:
                    with torch.random.fork_rng(devices=found.devices):
                        out = _backward_with_time(strategy, grad_ys, y0, t, tuple(params), needs, ys)
                else:
                    out = _backward_with_time(strategy, grad_ys, y0, t, tuple(params), needs, ys)
        finally:
            with torch.no_grad():
                for b, v in zip(found.mutated if found is not None else (), saved):
                    b.copy_(v)
        g_y0, g_t, g_params = out
        return (None, g_y0 if needs[0] else None, g_t if needs[1] else None, *g_params)


def _backward_with_time(strategy, grad_ys, y0, t, params, needs, ys):
    g_y0, g_t, g_params = strategy.backward(grad_ys, y0, t, params, needs, ys)
    if needs[1] and g_t is None:
        # Asked for only now (needs_input_grad at backward time), never refused up front.
        g_t = continuous_time_gradient(strategy, t, ys, grad_ys, g_y0)
    return g_y0, g_t, g_params


def continuous_time_gradient(strategy, t: torch.Tensor, ys: torch.Tensor, grad_ys: torch.Tensor,
                             a0: torch.Tensor) -> torch.Tensor:
    """dL/dt of the continuous adjoints from the adjoint they already computed.

    A save time t_i, i >= 1, only says where y is observed: dL/dt_i = dL/dy(t_i) . f(t_i, y_i).
    Moving t_0 moves the start of the trajectory: dL/dt_0 = -a(t_0+) . f(t_0, y_0), with
    a(t_0+) = dL/dy0 - dL/dy(t_0) the adjoint just after t_0. (torchdiffeq's
    ``odeint_adjoint`` integrates -a^T df/dt alongside the adjoint instead; the two agree
    because d(a . f)/dt = a . df/dt along the trajectory.) Costs len(t) calls of func.
    """
    func = strategy.problem.func
    out = torch.empty(len(t), dtype=ys.dtype, device=ys.device)
    with torch.no_grad():
        for i in range(len(t)):
            f_i = func(t[i].detach().to(ys.dtype), ys[i])
            if i == 0:
                out[0] = -((a0 - grad_ys[0]) * f_i).sum()
            else:
                out[i] = (grad_ys[i] * f_i).sum()
    stats = getattr(strategy, "stats", None)
    if stats is not None:
        stats.nfe_backward += len(t)
    return out.to(t.dtype)


def needs_gradient(problem: ODEProblem) -> bool:
    """True when autograd will ask for a gradient of this solve."""
    if not torch.is_grad_enabled():
        return False
    return problem.y0.requires_grad or problem.t.requires_grad or any(p.requires_grad for p in problem.params)


def with_discovered_inputs(problem: ODEProblem) -> Tuple[ODEProblem, Optional[Discovery]]:
    """``problem`` with every tensor func reads that requires grad among its params
    (``discover.py``), and the discovery; unchanged (and None) when grad is off."""
    if not torch.is_grad_enabled():
        return problem, None
    found = discover(problem.func, float(problem.t[0].detach()), problem.y0)
    known = {id(p) for p in problem.params}
    extra = tuple(x for x in found.tensors if id(x) not in known and x is not problem.y0 and x is not problem.t)
    return (replace(problem, params=problem.params + extra) if extra else problem), found


def run(strategy, problem: ODEProblem, name: str, replays_randomness: bool) -> torch.Tensor:
    """Discover func's inputs, then solve with ``strategy`` inside the adjoint Function
    (or without a graph when nothing needs a gradient). The first evaluation is made
    once, by the discovery, and handed to the forward solve."""
    reject_functorch(name)
    problem, found = with_discovered_inputs(problem)
    strategy.discovery = found
    f0 = None if found is None else found.f0
    if not needs_gradient(problem):
        with torch.no_grad():
            return forward_solve(problem, strategy.method, strategy.opts, differentiate_control=False,
                                 stats=strategy.stats, f0=f0)
    if found.random and not replays_randomness:
        raise UnsupportedSensitivityError(
            f"{name}: func draws random numbers (e.g. dropout in train() mode), and a continuous "
            "adjoint evaluates func at times the forward solve never visited, so its gradient would "
            "mix different random masks. Use sensealg=psg.CheckpointAdjoint() or psg.DirectAD() "
            "(both reproduce the forward's random numbers), or call model.eval() to switch dropout off."
        )
    strategy.f0 = f0
    return _AdjointFunction.apply(strategy, problem.y0, problem.t, *problem.params)


def reject_functorch(name: str) -> None:
    """The adjoint Functions keep a Python record between forward and backward, which
    torch.func's transforms cannot trace; say so instead of torch's generic error."""
    active = functorch_transforms()
    if active:
        raise UnsupportedSensitivityError(
            f"{name} cannot run under torch.func transforms (here: {', '.join(active)}): its backward "
            "pass replays a record kept outside autograd. Use sensealg=psg.DirectAD(), which is plain "
            "autograd and works under torch.func.grad and torch.func.vjp (not vmap, nor jacrev/jacfwd, "
            "which use vmap: batch the state in y0 instead), or call loss.backward() / torch.autograd.grad."
        )


def reject_double_backward(name: str) -> None:
    """Inside ``backward``, grad mode is on only for ``create_graph=True``: the continuous
    adjoints' backward solves build no graph, so a second derivative would be silently
    wrong. Refuse it instead."""
    if torch.is_grad_enabled():
        raise UnsupportedSensitivityError(
            f"{name} does not support double backward (create_graph=True, e.g. Hessian-vector "
            "products or gradient penalties): its backward solve is not itself differentiable. "
            "Use sensealg=psg.CheckpointAdjoint() or psg.DirectAD()."
        )


def time_tensor(t: float, like: torch.Tensor) -> torch.Tensor:
    """A 0-d time with ``like``'s dtype and device (a fill, not a host-device sync)."""
    return torch.full((), t, dtype=like.dtype, device=like.device)


def vjp(
    outputs: Sequence[torch.Tensor],
    inputs: Sequence[torch.Tensor],
    grad_outputs: Sequence[torch.Tensor],
    create_graph: bool = False,
) -> List[torch.Tensor]:
    """Vector-Jacobian products sum_k g_k^T d out_k / d in_j, zeros where unused."""
    if not inputs:
        return []
    # An output with no grad_fn (f = g(t) with no t-gradient wanted, or a constant f)
    # contributes nothing; autograd.grad would refuse it rather than return zeros.
    connected = [(o, g) for o, g in zip(outputs, grad_outputs) if o.requires_grad]
    if not connected:
        return [torch.zeros_like(x) for x in inputs]
    grads = torch.autograd.grad(
        [o for o, _ in connected], list(inputs), [g for _, g in connected], allow_unused=True,
        create_graph=create_graph,
    )
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]


def trainable(params: Sequence[torch.Tensor], needs: Sequence[bool]) -> List[int]:
    """Indices of the parameters autograd wants a gradient for."""
    return [i for i, (p, n) in enumerate(zip(params, needs)) if n and p.requires_grad]


def scatter(n_params: int, indices: Sequence[int], grads: Sequence[torch.Tensor]) -> List[Optional[torch.Tensor]]:
    out: List[Optional[torch.Tensor]] = [None] * n_params
    for i, g in zip(indices, grads):
        out[i] = g
    return out


def check_incoming(grad_ys: torch.Tensor, ts: Sequence[float], name: str) -> None:
    """The gradient arriving from the loss must be finite (one host sync)."""
    finite = torch.isfinite(grad_ys).reshape(len(grad_ys), -1).all(dim=1)  # 0-d states too
    if not bool(finite.all()):
        k = int((~finite).nonzero()[0])
        raise NonFiniteGradientError(
            f"{name}: the incoming gradient dL/dy(t) is NaN/inf at save index {k} (t={ts[k]:.6g}), "
            "before any adjoint step: the loss has a non-finite derivative there (e.g. sqrt or "
            "log at 0, division by zero). Fix the loss."
        )


def nonfinite_adjoint(name: str, where: str) -> NonFiniteGradientError:
    return NonFiniteGradientError(
        f"{name}: the adjoint state (dL/dy or dL/dtheta) became NaN/inf {where} during the "
        "backward pass: func's vector-Jacobian product overflows or is undefined there (e.g. "
        "sqrt or log at 0, a huge Jacobian), or the gradient grows without bound. Check func "
        "near that time, shorten the interval, or use float64."
    )
