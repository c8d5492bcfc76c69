"""What every adjoint of the torch engine shares: the ``torch.autograd.Function`` that
wraps a strategy, vector-Jacobian products of ``func``, and the non-finite checks.

A strategy (one per sensealg, in its own module) has two methods:

* ``forward(y0) -> ys`` runs the forward solve under ``no_grad`` (step sizes are Python
  floats, i.e. constants) and keeps whatever its backward pass needs;
* ``backward(grad_ys, y0, t, params, needs, ys) -> (dL/dy0, dL/dt, [dL/dparam])``,
  where ``ys`` is the output when the strategy sets ``needs_output = True`` (else None).

``params`` are ``problem.params`` (the module's parameters and the user's ``params=``),
passed to the Function as inputs so that autograd routes their gradients.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from ....errors import NonFiniteGradientError, UnsupportedSensitivityError
from ....problem import ODEProblem


class _AdjointFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, strategy, y0, t, *params):  # type: ignore[override]
        ys = strategy.forward(y0)
        ctx.strategy = strategy
        # Outputs go through save_for_backward (never onto ctx: a reference cycle).
        keep = ys if getattr(strategy, "needs_output", False) else None
        ctx.save_for_backward(y0, t, keep, *params)
        return ys

    @staticmethod
    def backward(ctx, grad_ys):  # type: ignore[override]
        y0, t, ys, *params = ctx.saved_tensors
        needs = ctx.needs_input_grad[1:]
        g_y0, g_t, g_params = ctx.strategy.backward(grad_ys, y0, t, tuple(params), needs, ys)
        return (None, g_y0 if needs[0] else None, g_t if needs[1] else None, *g_params)


def needs_gradient(problem: ODEProblem) -> bool:
    """True when autograd will ask for a gradient of this solve."""
    if not torch.is_grad_enabled():
        return False
    return problem.y0.requires_grad or problem.t.requires_grad or any(p.requires_grad for p in problem.params)


def apply(strategy, problem: ODEProblem) -> torch.Tensor:
    return _AdjointFunction.apply(strategy, problem.y0, problem.t, *problem.params)


def reject_time_gradient(problem: ODEProblem, name: str) -> None:
    """Continuous adjoints here give no dL/dt: say so before anything is integrated."""
    if problem.t.requires_grad and torch.is_grad_enabled():
        raise UnsupportedSensitivityError(
            f"{name} does not compute gradients with respect to the save times t, but t "
            "requires grad. Use sensealg=psg.CheckpointAdjoint() (exact dL/dt of the discrete "
            "solve) or psg.DirectAD(), or pass t.detach()."
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
    grads = torch.autograd.grad(
        list(outputs), list(inputs), list(grad_outputs), allow_unused=True, create_graph=create_graph
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
    finite = torch.isfinite(grad_ys).flatten(1).all(dim=1)
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
