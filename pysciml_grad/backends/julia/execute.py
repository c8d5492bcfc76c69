"""Run a translated problem in Julia and make the result differentiable in torch.

``solve(problem)`` translates (pure Python, so user errors surface without Julia),
starts the engine (``runtime.ensure_ready``), then either solves once, or, when a
gradient is wanted, solves through ``_JuliaSolve``, a ``torch.autograd.Function``:

    forward:   ys, pullback = PySciMLGrad.solve_with_pullback(...)     (one Julia call)
    backward:  (dL/dy0, dL/dtheta) = PySciMLGrad.apply_pullback(pullback, dL/dys)

so ``loss.backward()`` reaches ``y0`` and every parameter through whichever
SciMLSensitivity method the sensealg selected. The pullback object lives in Julia and
is kept alive by the autograd graph (``ctx``) until the graph is freed.
"""

from __future__ import annotations

import threading
from typing import Any, Optional, Sequence, Tuple

import numpy as np
import torch

from ... import bridge
from ...errors import BackendUnavailableError, SolverError, UnsupportedSensitivityError
from . import runtime, translate
from .callbacks import TorchRHSCallbacks, flat_parameters, split_parameter_gradient, time_reversed


class JuliaRunner:
    """One problem bound to the running engine: the right-hand side handle, the arrays
    in Julia's layout, and the calls with error translation."""

    def __init__(self, session: runtime.Session, problem: Any, plan: translate.Plan, stats: Any) -> None:
        self.session = session
        self.problem = problem
        self.plan = plan
        self.stats = stats
        self.callbacks: Optional[TorchRHSCallbacks] = None
        y0 = problem.y0
        self.out_shape = (len(plan.save_times), *plan.state_shape)
        self.p_flat = flat_parameters(problem.params, y0.dtype, y0.device)
        self.ts = np.asarray(plan.save_times, dtype=np.float64)
        self.rhs = self._rhs_handle()

    # -- right-hand side -------------------------------------------------------------
    def _rhs_handle(self) -> Any:
        func, jl = self.problem.func, self.session.jl
        if not self.plan.python_rhs:
            key = id(self.session)
            if key not in func._compiled:
                # Its own Julia call: what `compile_rhs` defines can only be called from a
                # later top-level call (Julia's world age).
                func._compiled[key] = self._call(jl.compile_rhs, func.source, where="compilation of the JuliaRHS")
            compiled = func._compiled[key]
            # Decreasing t: Julia integrates du/ds = -f(u, p, -s) (translate.julia_save_times).
            return jl.reverse_time(compiled) if self.plan.time_reversed else compiled
        y0 = self.problem.y0
        shape = self.plan.state_shape if self.plan.state_shape else (1,)
        if not self.plan.state_shape:
            func = _reshaping(func, self.plan.state_shape)
        if self.plan.time_reversed:
            func = time_reversed(func)
        self.callbacks = TorchRHSCallbacks(
            func,
            self.problem.params,
            shape,
            y0.dtype,
            y0.device,
        )
        return jl.PyRHS(self.callbacks.f, self.callbacks.vjp)

    # -- calls -----------------------------------------------------------------------
    def _call(self, fn: Any, *args: Any, where: str) -> Any:
        jl = self.session.jl
        foreign_thread = threading.get_ident() != self.session.thread
        try:
            if foreign_thread:
                # torch runs CUDA backward passes on worker threads; see call_without_gc.
                return jl.call_without_gc(fn, *args)
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - translated below
            if self.callbacks is not None and self.callbacks.error is not None:
                original, self.callbacks.error = self.callbacks.error, None
                raise original  # the user's own exception from inside func
            raise self._translate_error(exc, where) from exc

    def _translate_error(self, exc: Exception, where: str) -> Exception:
        JuliaError = getattr(self.session.juliacall, "JuliaError", ())
        if JuliaError and isinstance(exc, JuliaError):
            jexc = exc.exception
            try:
                if bool(self.session.jl.is_psg_error(jexc)):
                    kind = str(self.session.jl.error_kind(jexc))
                    message = str(self.session.jl.error_message(jexc))
                    err = translate.error_for_julia(kind, message, where)
                    if isinstance(err, BackendUnavailableError):
                        err = BackendUnavailableError(f"{err} {runtime.CUDA_HINT}")
                    return err
            except Exception:  # noqa: BLE001 - fall through to the generic message
                pass
        text = "\n".join(str(exc).strip().splitlines()[:12])
        return SolverError(f"Julia raised an error during the {where}:\n{text}")

    def _args(self, y0: torch.Tensor) -> Tuple[Any, ...]:
        return (self.rhs, bridge.to_julia(y0), bridge.to_julia(self.p_flat), self.ts)

    def _record_forward(self, jl_stats: Sequence[int]) -> None:
        nf, naccept, nreject = (int(x) for x in jl_stats)
        self.stats.nfe += self.callbacks.nfe if self.callbacks is not None else max(nf, 0)
        self.stats.n_steps += max(naccept, 0)
        self.stats.n_rejected += max(nreject, 0)

    # -- forward / backward ----------------------------------------------------------
    def forward(self, y0: torch.Tensor) -> torch.Tensor:
        plan, jl = self.plan, self.session.jl
        ys_jl, jl_stats = self._call(
            jl.solve_forward,
            *self._args(y0),
            plan.algorithm.render(),
            plan.solve_options.render(),
            plan.solve_options.grid,
            where="forward solve",
        )
        self._record_forward(jl_stats)
        return self._as_output(ys_jl)

    def forward_with_pullback(self, y0: torch.Tensor) -> Tuple[torch.Tensor, Any]:
        plan, jl = self.plan, self.session.jl
        ys_jl, jl_stats, handle = self._call(
            jl.solve_with_pullback,
            *self._args(y0),
            plan.algorithm.render(),
            plan.sensealg.render(),
            plan.solve_options.render(),
            plan.solve_options.grid,
            where="forward solve",
        )
        self._record_forward(jl_stats)
        return self._as_output(ys_jl), handle

    def pullback(self, handle: Any, grad_ys: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        y0 = self.problem.y0
        before = self.callbacks.nfe if self.callbacks is not None else 0
        g = grad_ys.to(dtype=y0.dtype).reshape(len(self.plan.save_times), *self.plan.julia_shape[::-1])
        du0_jl, dp_jl = self._call(self.session.jl.apply_pullback, handle, bridge.to_julia(g), where="backward (adjoint) solve")
        if self.callbacks is not None:
            self.stats.nfe_backward += self.callbacks.nfe - before
            self.stats.extra["vjp_calls"] = self.stats.extra.get("vjp_calls", 0) + self.callbacks.nvjp
        grad_y0 = bridge.from_julia(du0_jl).to(device=y0.device, dtype=y0.dtype).reshape(y0.shape)
        grad_p = bridge.from_julia(dp_jl).to(device=y0.device, dtype=y0.dtype).reshape(-1)
        return grad_y0, grad_p

    def _as_output(self, ys_jl: Any) -> torch.Tensor:
        ys = bridge.from_julia(ys_jl)  # (T, *julia shape reversed), no copy
        y0 = self.problem.y0
        if ys.device != y0.device or ys.dtype != y0.dtype:
            ys = ys.to(device=y0.device, dtype=y0.dtype)  # a copy, only if Julia changed them
        return ys.reshape(self.out_shape)


def _reshaping(func: Any, shape: Tuple[int, ...]) -> Any:
    """A 0-d state travels as a 1-vector; give ``func`` its 0-d view and flatten the result."""

    def wrapped(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return func(t, y.reshape(shape)).reshape(1)

    return wrapped


class _JuliaSolve(torch.autograd.Function):
    """ys = ODESolve(y0, theta) computed in Julia; backward = SciMLSensitivity's VJP."""

    @staticmethod
    def forward(ctx: Any, runner: JuliaRunner, y0: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ys, handle = runner.forward_with_pullback(y0)
        ctx.runner = runner
        ctx.handle = handle
        return ys

    @staticmethod
    def backward(ctx: Any, grad_ys: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        runner: JuliaRunner = ctx.runner
        grad_y0, grad_p = runner.pullback(ctx.handle, grad_ys)
        grads = split_parameter_gradient(grad_p, runner.problem.params)
        return (None, grad_y0 if ctx.needs_input_grad[1] else None, *grads)


def _check_python_rhs(problem: Any) -> None:
    """Evaluate ``func(t0, y0)`` once in Python, so a wrong shape/dtype/device is reported
    as the same clear error the torch engine gives, before Julia is even started."""
    from ...problem import check_rhs_output

    t0 = problem.t[0].detach().to(problem.y0.dtype)
    with torch.no_grad():
        out = problem.func(t0, problem.y0.detach())
    check_rhs_output(out, problem.y0, float(t0))


def solve(problem: Any) -> Tuple[torch.Tensor, Any]:
    """Solve ``problem`` (a ``pysciml_grad.problem.ODEProblem``) with DifferentialEquations.jl.

    Returns ``ys`` of shape ``(len(t), *y0.shape)``, differentiable w.r.t. ``y0`` and
    ``problem.params`` when gradients are enabled, and a ``SolveStats``.
    """
    from ...problem import SolveStats

    grad_on = torch.is_grad_enabled()
    if grad_on and problem.t.requires_grad:
        raise UnsupportedSensitivityError(
            "the Julia engine does not differentiate with respect to the save times t; "
            "pass t.detach(), or use backend='torch'"
        )
    need_grad = grad_on and (problem.y0.requires_grad or any(p.requires_grad for p in problem.params))
    plan = translate.make_plan(problem, need_grad)
    if plan.python_rhs:
        _check_python_rhs(problem)
    session = runtime.ensure_ready(cuda=plan.device == "cuda")
    stats = SolveStats()
    stats.extra.update(
        backend="julia",
        algorithm=plan.algorithm.render(),
        sensealg=plan.sensealg.render() if plan.sensealg is not None else None,
        rhs="python" if plan.python_rhs else "julia",
    )
    if not plan.python_rhs:
        stats.extra["nfe_backward"] = "not reported by SciMLSensitivity for a JuliaRHS"
    runner = JuliaRunner(session, problem, plan, stats)
    if need_grad:
        ys = _JuliaSolve.apply(runner, problem.y0, *problem.params)
    else:
        ys = runner.forward(problem.y0)
    return ys, stats
