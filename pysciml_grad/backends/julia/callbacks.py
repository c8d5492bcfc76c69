"""The Python half of ``PySciMLGrad.PyRHS``: a torch right-hand side called from Julia.

Julia's solver calls two functions, always with buffers that Julia owns (solver
caches, reused between calls, so nothing here may keep a reference after returning):

``f(du, u, t)``
    du <- func(t, u). Forward solves and the adjoint's reconstruction of y(t).
``vjp(vu, vp, u, t, v)``
    vu <- v^T df/du,  vp <- v^T df/dtheta (all parameters, flattened and concatenated).
    Called by the ``ChainRulesCore.rrule`` of ``PyRHS`` whenever SciMLSensitivity's
    ``ZygoteVJP`` differentiates f, i.e. inside every continuous adjoint:
    da/dt = -a^T df/dy and dL/dtheta = -integral a^T df/dtheta dt.

Arrays arrive as juliacall wrappers of column-major Julia arrays (CPU) or as torch
tensors shared through DLPack (CUDA); either way ``bridge.from_julia`` gives a torch
view with the user's (row-major) shape, so results are written straight into Julia's
memory. The parameter values in Julia's ``p`` vector are not read: ``func`` uses its
own (unchanged since the forward pass) tensors, and only their gradient slots matter.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple

import torch

from ... import bridge


class TorchRHSCallbacks:
    """Wraps ``func(t, y)`` and its parameters into the two callbacks ``PyRHS`` calls.

    ``nfe`` counts forward evaluations, ``nvjp`` vector-Jacobian products (each costs
    one evaluation plus its backward). The first exception raised inside a callback is
    kept in ``error`` so the executor can re-raise it unchanged after Julia unwinds.
    """

    def __init__(
        self,
        func: Callable,
        params: Sequence[torch.Tensor],
        state_shape: Sequence[int],
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.func = func
        self.params: Tuple[torch.Tensor, ...] = tuple(params)
        self.state_shape = tuple(state_shape)
        self.dtype = dtype
        self.device = device
        self.nfe = 0
        self.nvjp = 0
        self.error: Optional[BaseException] = None

    def _time(self, t: Any) -> torch.Tensor:
        # torchdiffeq's convention: t is a 0-d tensor of the state's dtype and device.
        return torch.as_tensor(float(t), dtype=self.dtype, device=self.device)

    def _sync(self) -> None:
        # CUDA: torch wrote into Julia's memory on torch's stream; CUDA.jl reads it on
        # its own, so finish torch's work before returning control to Julia.
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _check(self, out: Any) -> torch.Tensor:
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != self.state_shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise RuntimeError(
                f"func(t, y) returned {got} during the Julia solve, but the state has shape {self.state_shape}"
            )
        return out

    def f(self, du: Any, u: Any, t: Any) -> None:
        try:
            y = bridge.from_julia(u, self.state_shape)
            with torch.no_grad():
                out = self._check(self.func(self._time(t), y))
                bridge.from_julia(du, self.state_shape).copy_(out)
            self._sync()
            self.nfe += 1
        except BaseException as exc:  # noqa: BLE001 - must reach Julia as an exception, and be kept
            self.error = self.error or exc
            raise

    def vjp(self, vu: Any, vp: Any, u: Any, t: Any, v: Any) -> None:
        try:
            # A fresh leaf that aliases Julia's buffer: autograd needs a leaf to take
            # d/dy, and the buffer is only read during this call.
            y = bridge.from_julia(u, self.state_shape).detach().requires_grad_(True)
            cot = bridge.from_julia(v, self.state_shape)
            wanted = [p for p in self.params if p.requires_grad]
            with torch.enable_grad():
                out = self._check(self.func(self._time(t), y))
                grads = torch.autograd.grad(out, [y, *wanted], grad_outputs=cot, allow_unused=True)
            gu, gps = grads[0], iter(grads[1:])
            with torch.no_grad():
                target_u = bridge.from_julia(vu, self.state_shape)
                target_u.copy_(gu) if gu is not None else target_u.zero_()
                target_p = bridge.from_julia(vp).reshape(-1)
                total = sum(p.numel() for p in self.params)
                if total == 0 and target_p.numel() == 1:
                    target_p.zero_()  # the placeholder parameter of a parameter-free f
                elif total != target_p.numel():
                    raise RuntimeError(
                        f"Julia's parameter vector has {target_p.numel()} entries but the parameters have {total}"
                    )
                offset = 0
                for p in self.params:
                    n = p.numel()
                    g = next(gps) if p.requires_grad else None
                    chunk = target_p[offset:offset + n]
                    chunk.copy_(g.reshape(-1)) if g is not None else chunk.zero_()
                    offset += n
            self._sync()
            self.nfe += 1
            self.nvjp += 1
        except BaseException as exc:  # noqa: BLE001
            self.error = self.error or exc
            raise


def time_reversed(func: Callable) -> Callable:
    """g(s, y) = -func(-s, y): the right-hand side in the time s = -t.

    If y(t) solves dy/dt = f(t, y) then v(s) = y(-s) solves dv/ds = -f(-s, v), so a
    decreasing ``t`` becomes the increasing ``s = -t`` with the same states (see
    ``translate.julia_save_times``). torch.autograd differentiates through the two
    negations, so the vector-Jacobian products ``vjp`` returns are those of g.
    """

    def g(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -func(-s, y)

    return g


def flat_parameters(params: Sequence[torch.Tensor], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """All parameters flattened (row-major) and concatenated: Julia's ``p``.

    A single zero when there are none, because SciMLSensitivity's adjoints expect a
    non-empty parameter array; its gradient is then discarded.
    """
    if not params:
        return torch.zeros(1, dtype=dtype, device=device)
    return torch.cat([p.detach().reshape(-1).to(dtype) for p in params])


def split_parameter_gradient(flat: torch.Tensor, params: Sequence[torch.Tensor]) -> Tuple[Optional[torch.Tensor], ...]:
    """Inverse of :func:`flat_parameters` for a gradient: one tensor per parameter
    (None for those that do not require a gradient)."""
    out = []
    offset = 0
    for p in params:
        n = p.numel()
        chunk = flat[offset:offset + n].reshape(p.shape).to(p.dtype)
        out.append(chunk if p.requires_grad else None)
        offset += n
    return tuple(out)
