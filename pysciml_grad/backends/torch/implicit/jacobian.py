"""J = df/dy at (t, y), as a batch of square blocks: three strategies, chosen by type.

Every strategy returns ``J`` of shape ``(B, n, n)`` with ``B * n = y.numel()``: the
Jacobian of the flattened state is block diagonal with these blocks along its diagonal
(``B = 1, n = y.numel()`` is the dense case). The linear algebra (``linalg.py``) reads
its layout from that shape alone, so a strategy is free to choose it.

* :class:`DenseJacobian` (default): ``torch.func.jacrev`` of y -> f(t, y) over the
  flattened state, one vmapped reverse pass; falls back to a row-by-row loop of
  ``torch.autograd.functional.jacobian`` when func cannot run under ``vmap`` (``.item()``,
  data-dependent control flow).
* :class:`BlockDiagonalJacobian`: the samples along y's first dimension are independent
  (func treats each row of the batch on its own, as an MLP applied per sample does);
  ``vmap(jacrev)`` over that dimension gives B blocks of size n = y[0].numel(), never the
  dense (B n)^2 matrix.
* :class:`UserJacobian` (``options={"jac": jac}``): ``jac(t, y)`` returns the dense
  ``(N, N)`` matrix, a ``y.shape + y.shape`` tensor, or ``(B, n, n)`` blocks for a batch.
"""

from __future__ import annotations

from typing import Callable

import torch

from ....errors import InvalidProblemError, RHSOutputError


class JacobianStrategy:
    """How J = df/dy is obtained; ``strategy(f, t, y) -> (B, n, n)`` (no graph).

    ``strategy.with_graph(f, t, y)``: the same blocks, carrying autograd's graph to y, t and
    func's parameters when grad is enabled (a Rosenbrock step differentiates through J)."""

    def __call__(self, f: Callable, t, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def with_graph(self, f: Callable, t, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"psg.{type(self).__name__}()"


def _t(t, y: torch.Tensor) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t.detach().to(y.dtype)
    return torch.full((), float(t), dtype=y.dtype, device=y.device)


def _t_graph(t, y: torch.Tensor) -> torch.Tensor:
    """t as a 0-d tensor in y's dtype, keeping its graph when grad is enabled."""
    if isinstance(t, torch.Tensor):
        return t.to(y.dtype) if torch.is_grad_enabled() else t.detach().to(y.dtype)
    return torch.full((), float(t), dtype=y.dtype, device=y.device)


class DenseJacobian(JacobianStrategy):
    """The full N x N Jacobian of the flattened state by one vmapped ``torch.func.jacrev``
    (returned as one block, shape ``(1, N, N)``)."""

    def __call__(self, f: Callable, t, y: torch.Tensor) -> torch.Tensor:
        tt = _t(t, y)
        shape = y.shape
        y = y.detach()

        def flat(v: torch.Tensor) -> torch.Tensor:
            return f(tt, v.view(shape)).reshape(-1)

        try:
            with torch.enable_grad():
                J = torch.func.jacrev(flat)(y.reshape(-1))
        except (RuntimeError, NotImplementedError, TypeError, ValueError):
            # func cannot run under vmap (e.g. .item(), in-place writes into a captured
            # tensor): one reverse pass per row instead.
            with torch.enable_grad():
                J = torch.autograd.functional.jacobian(flat, y.reshape(-1), vectorize=False)
        return J.detach().unsqueeze(0)

    def with_graph(self, f: Callable, t, y: torch.Tensor) -> torch.Tensor:
        tt, shape = _t_graph(t, y), y.shape
        if not torch.is_grad_enabled():
            return self(f, t, y)
        J = torch.func.jacrev(lambda v: f(tt, v.view(shape)).reshape(-1))(y.reshape(-1))
        return J.unsqueeze(0)


class BlockDiagonalJacobian(JacobianStrategy):
    """Per-sample blocks df_b/dy_b, b over y's first dimension, by ``vmap(jacrev)``.

    Declares that sample b of f depends on sample b of y only. Cost and memory are
    B n^2 instead of (B n)^2. For a 1-D state (no batch dimension) it is the dense Jacobian.
    """

    def __call__(self, f: Callable, t, y: torch.Tensor) -> torch.Tensor:
        if y.dim() < 2:
            return DenseJacobian()(f, t, y)
        tt = _t(t, y)
        B, rest = y.shape[0], y.shape[1:]
        n = y[0].numel()

        def one(v: torch.Tensor) -> torch.Tensor:
            # f sees a batch of one sample, so its own batch handling is untouched.
            return f(tt, v.view(1, *rest)).reshape(-1)

        with torch.enable_grad():
            J = torch.func.vmap(torch.func.jacrev(one))(y.detach().reshape(B, n))
        return J.detach()

    def with_graph(self, f: Callable, t, y: torch.Tensor) -> torch.Tensor:
        if y.dim() < 2:
            return DenseJacobian().with_graph(f, t, y)
        if not torch.is_grad_enabled():
            return self(f, t, y)
        tt, rest, B, n = _t_graph(t, y), y.shape[1:], y.shape[0], y[0].numel()

        def one(v: torch.Tensor) -> torch.Tensor:
            return f(tt, v.view(1, *rest)).reshape(-1)

        # torch.func transforms compose with autograd: J stays connected to y, t and theta.
        return torch.func.vmap(torch.func.jacrev(one))(y.reshape(B, n))


class UserJacobian(JacobianStrategy):
    """``jac(t, y)`` supplied by the user (``options={"jac": jac}``).

    Accepted shapes: ``(N, N)`` or ``y.shape + y.shape`` (dense, N = y.numel()), or
    ``(B, n, n)`` with B = y.shape[0] and n = y[0].numel() (independent samples).
    """

    def __init__(self, jac: Callable):
        if not callable(jac):
            raise InvalidProblemError(
                f"options['jac'] must be a function jac(t, y) -> df/dy, got {type(jac).__name__}"
            )
        self.jac = jac

    def __repr__(self) -> str:
        return f"psg.UserJacobian({getattr(self.jac, '__name__', self.jac)!r})"

    def __call__(self, f: Callable, t, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._checked(self.jac(_t(t, y), y.detach()), y)

    def with_graph(self, f: Callable, t, y: torch.Tensor) -> torch.Tensor:
        """``jac(t, y)`` called on the graph-carrying y (and t): its derivative is autograd's of
        the user's code, exact when jac is the exact Jacobian written in torch operations."""
        if not torch.is_grad_enabled():
            return self(f, t, y)
        return self._checked(self.jac(_t_graph(t, y), y), y)

    def _checked(self, J, y: torch.Tensor) -> torch.Tensor:
        N = y.numel()
        if not isinstance(J, torch.Tensor):
            raise RHSOutputError(f"options['jac'](t, y) must return a tensor, got {type(J).__name__}")
        if J.dtype != y.dtype or J.device != y.device:
            raise RHSOutputError(
                f"options['jac'](t, y) returned dtype {J.dtype} on {J.device}; it must match y "
                f"({y.dtype} on {y.device})"
            )
        if tuple(J.shape) == (N, N) or tuple(J.shape) == tuple(y.shape) * 2:
            return J.reshape(1, N, N)
        if y.dim() >= 2 and tuple(J.shape) == (y.shape[0], y[0].numel(), y[0].numel()):
            return J
        blocks = f" or per-sample blocks {(y.shape[0], y[0].numel(), y[0].numel())}" if y.dim() >= 2 else ""
        raise RHSOutputError(
            f"options['jac'](t, y) returned shape {tuple(J.shape)} for y of shape {tuple(y.shape)}: return "
            f"df/dy as an {(N, N)} matrix over the flattened state, shape {tuple(y.shape) * 2}{blocks}"
        )


def strategy_from_options(jac, jacobian) -> JacobianStrategy:
    """The strategy named by ``options['jac']`` / ``options['jacobian']`` (both checked)."""
    if jac is not None and jacobian is not None:
        raise InvalidProblemError(
            "options['jac'] and options['jacobian'] both say how to get df/dy: give one of them "
            "(jac=callable is the same as jacobian=psg.UserJacobian(callable))"
        )
    if jac is not None:
        return UserJacobian(jac)
    return DenseJacobian() if jacobian is None else jacobian


def check_strategy(name: str, value) -> JacobianStrategy:
    if not isinstance(value, JacobianStrategy):
        raise InvalidProblemError(
            f"{name} must be psg.DenseJacobian(), psg.BlockDiagonalJacobian() or psg.UserJacobian(jac), "
            f"got {value!r}"
        )
    return value


def check_jac(name: str, value) -> Callable:
    if not callable(value):
        raise InvalidProblemError(f"{name} must be a function jac(t, y) -> df/dy, got {type(value).__name__}")
    return value
