"""One step of an implicit Runge-Kutta method, and its gradient by the implicit function theorem.

The step solves G(K) = 0 for the stacked stage derivatives K = (K_1, ..., K_s),

    G_i(K; y, t, h, theta) = K_i - f(t + c_i h, y + h sum_j a_ij K_j; theta),

then y_{n+1} = y + h sum_i b_i K_i (``ImplicitTableau``). Diagonally implicit tables are
solved stage by stage (Newton matrix I - h a_ii J), fully implicit ones all at once
(I - h A (x) J); both by the simplified Newton iteration of ``newton.py``, with J from the
solve's Jacobian strategy, kept across stages and steps and refreshed when Newton
converges slowly (rate > ``newton.SLOW_RATE``), fails, or h changes the matrix.

Gradient (never through the Newton iterations). By the implicit function theorem
dK/dp = -(dG/dK)^{-1} dG/dp for every input p (y, t, h, func's parameters, tensors func
closes over), so for an incoming gradient g = dL/dK

    lambda = (dG/dK)^{-T} g,     dL/dp = -lambda^T dG/dp = sum_i lambda_i^T df(t_i, Y_i)/dp,

one transposed solve with the exact dG/dK (per-stage Jacobians J_i at the converged stage
values: block (i, j) = delta_ij I - h a_ij J_i; ``linalg.CollocationMatrix``) and one
vector-Jacobian product of f at the stages. It is built as

    K = K* + (c - stop_gradient(c)),   c = -LinearSolve(G(K*; y, t, h, theta)),

where K* is Newton's solution (a constant), G is evaluated once with autograd at K* (so
autograd finds every parameter func reads, closures included) and ``LinearSolve`` is a
``torch.autograd.Function`` whose backward is the transposed solve. The value is K*
exactly and the derivative is the IFT's, so DirectAD, and CheckpointAdjoint (whose replay
runs the step under autograd), give the exact gradient of the discrete map y_n -> y_{n+1}
defined by the converged stages (to the Newton tolerance, which the user's rtol/atol set).

Adaptive ESDIRK tables (``tableaus.EmbeddedImplicitTableau``: kvaerno5, kencarp4) add the
embedded estimate err = h sum_i (b_i - b_hat_i) K_i (filtered by (I - gamma h J)^{-1}, with the
LU Newton already holds, where the table sets ``smooth_error``); a trial whose Newton iteration fails (after a fresh Jacobian,
and full Newton) raises ``stepping.StepRejected``, which the adaptive loop turns into a rejected step with a
smaller h. Bound with ``fixed=True`` (``options={'step_size': h}``) the same table is a
fixed-step method: no estimate, no FSAL, Newton failure an error as for the other tables.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple, Union

import torch

from ....errors import NewtonConvergenceError
from ..stepping import StepRejected, lincomb, nudge, weighted_sum
from ..tableaus import FixedStepImplicit, ImplicitTableau
from . import newton
from .jacobian import DenseJacobian, JacobianStrategy
from .linalg import CollocationMatrix, LeadingBlock, SingularMatrixError, StageMatrix

Scalar = Union[float, torch.Tensor]


def _f(x: Scalar) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


class LinearSolve(torch.autograd.Function):
    """x = M^{-1} r with a fixed factorisation; backward: M^{-T} g (the IFT adjoint)."""

    @staticmethod
    def forward(ctx, r, matrix):  # type: ignore[override]
        ctx.matrix = matrix
        return matrix.solve(r)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        return ctx.matrix.solve_transposed(g), None


class ImplicitRK(FixedStepImplicit):
    """An implicit RK method bound to a solve: its table, Jacobian strategy, Newton
    settings and the Jacobian / LU cache that simplified Newton reuses across steps.

    Exposes the attributes the loops read off a table (``c``, ``order``, ``fsal``,
    ``dense``, ``adaptive``, ...), so it stands where an explicit table stands;
    ``stepping.rk_step`` hands the step to :meth:`step`.
    """

    def __init__(self, table: ImplicitTableau, jacobian: Optional[JacobianStrategy] = None,
                 rtol: float = 1e-7, atol: float = 1e-9, max_iters: int = 10, fixed: bool = False):
        self.table = table
        #: run an embedded-pair table on a fixed grid (options step_size): estimate and FSAL off
        self.fixed = fixed
        self.name, self.order, self.c = table.name, table.order, table.c
        self.jacobian = DenseJacobian() if jacobian is None else jacobian
        self.rtol, self.atol, self.max_iters = rtol, atol, max_iters
        self._J: Optional[torch.Tensor] = None  # last Jacobian (blocks), reused while Newton converges fast
        self._n_state = -1                       # numel of the state _J belongs to
        self._fresh = False                      # _J was evaluated at the current step's start
        self._lu = {}                            # gamma*h (or h for collocation) -> factorisation of _J
        self.n_jac = 0
        self._perturb = (False, False)
        self.n_lu = 0

    @property
    def stages(self) -> int:
        return self.table.stages

    # What the loops read off a table: an embedded-pair table is adaptive unless bound fixed.
    @property
    def adaptive(self) -> bool:
        return bool(self.table.adaptive) and not self.fixed

    @property
    def b_err(self):
        return self.table.b_err if self.adaptive else None

    @property
    def error_order(self):
        return self.table.error_order if self.adaptive else None

    @property
    def fsal(self) -> bool:
        return bool(self.table.fsal) and self.adaptive

    @property
    def steps_to_saves(self) -> bool:
        return bool(getattr(self.table, "steps_to_saves", False)) and self.adaptive

    def fresh(self, rtol: float, atol: float) -> "ImplicitRK":
        """The same method with an empty cache and these tolerances (an adjoint's backward solve)."""
        return ImplicitRK(self.table, self.jacobian, rtol, atol, self.max_iters, self.fixed)

    def bound(self, jacobian: JacobianStrategy, rtol: float, atol: float, max_iters: int,
              fixed: Optional[bool] = None) -> "ImplicitRK":
        """The same table bound to a solve: its Jacobian strategy, Newton tolerances and cap."""
        return ImplicitRK(self.table, jacobian, rtol, atol, max_iters, self.fixed if fixed is None else fixed)

    # ------------------------------------------------------------ Jacobians
    def _jac(self, rhs: Callable, t: Scalar, y: torch.Tensor) -> torch.Tensor:
        self.n_jac += 1
        own = getattr(rhs, "newton_jacobian", None)  # the adjoint systems supply theirs
        with torch.no_grad():
            return own(t, y, self.jacobian) if own is not None else self.jacobian(rhs, t, y)

    def _refresh(self, rhs: Callable, t: Scalar, y: torch.Tensor) -> None:
        self._J = self._jac(rhs, t, y)
        self._n_state = y.numel()
        self._fresh = True
        self._lu = {}

    def _matrix(self, key: float, t: float):
        M = self._lu.get(key)
        if M is None:
            self.n_lu += 1
            M = self._lu[key] = self._factor(self._J, key, t)
        return M

    def _factor(self, J: torch.Tensor, key: float, t: float):
        """LU of I - key J (DIRK, key = h a_ii) or I - h A (x) J (key = h); J may be one
        Jacobian (B, n, n) or, for the collocation system, one per stage (s, B, n, n)."""
        if self.table.diagonally_implicit:
            M = StageMatrix(J, key, f"at t={t:.6g} (h a_ii = {key:.3g})")
        else:
            M = CollocationMatrix(J, key, self.table.a, f"at t={t:.6g} (h = {key:.3g})")
        m = J.shape[-3] * J.shape[-2]
        if m < self._n_state:  # a Jacobian of the leading entries only (adjoint systems)
            M = LeadingBlock(M, m)
        return M

    # ------------------------------------------------------------------ step
    def step(self, rhs: Callable, t: Scalar, y: torch.Tensor, h: Scalar, k0: Optional[torch.Tensor] = None,
             perturb_start: bool = False, perturb_end: bool = False, err_graph: bool = True,
             ) -> Tuple[torch.Tensor, List[torch.Tensor], Optional[torch.Tensor]]:
        """(y_{n+1}, [f(t, y), K_1, ..., K_s], err); see the module docstring. ``err`` is the
        filtered embedded estimate for an adaptive table, else None.
        ``perturb_start`` / ``perturb_end``: f is evaluated one ulp inside the step at
        stages with c = 0 / c = 1 (torchdiffeq's ``perturb``)."""
        self._perturb = (perturb_start, perturb_end)
        if k0 is None:
            k0 = rhs(nudge(t, t + h, y) if perturb_start else t, y)
        t_f, h_f = _f(t), _f(h)
        # J at the step's start, seen from inside the step when f may jump at t (perturb).
        t_jac = nudge(t, t + h, y) if perturb_start else t_f
        yd, k0d = y.detach(), k0.detach()
        scale = newton.error_scale(yd, self.rtol, self.atol)
        with torch.no_grad():
            if self._J is None or self._J.dtype != y.dtype or self._n_state != y.numel():
                self._refresh(rhs, t_jac, yd)
            else:
                self._fresh = False
            attempts = ("fresh", "full") if self._fresh else ("cached", "fresh", "full")
            for attempt in attempts:
                try:
                    K, worst = self._solve(rhs, t_f, yd, h_f, k0d, scale, full=attempt == "full")
                    break
                except SingularMatrixError as err:
                    if attempt == attempts[-1]:
                        if self.adaptive:
                            self._J = None
                            raise StepRejected(str(err)) from None
                        raise
                    self._refresh(rhs, t_jac, yd)
                except _Diverged as err:
                    if attempt == attempts[-1] and self.adaptive:
                        self._J = None
                        raise StepRejected(
                            f"Newton's method for the implicit stages of {self.name!r} did not converge at "
                            f"t={t_f:.6g} with step size {abs(h_f):.3g} ({err}), even with the Jacobian evaluated at every iterate"
                        ) from None
                    if attempt == attempts[-1]:
                        raise NewtonConvergenceError(
                            f"Newton's method for the implicit stages of {self.name!r} did not converge at "
                            f"t={t_f:.6g} with step size {abs(h_f):.3g} ({err}), even with the Jacobian "
                            "evaluated at every iterate: use a smaller step size (options={'step_size': h} or a "
                            "finer grid t), raise options['max_iters'], or check func for a discontinuity there"
                        ) from None
                    if not self._fresh:
                        self._refresh(rhs, t_jac, yd)
            smoothing = None
            if self.adaptive and self.table.smooth_error:
                smoothing = self._matrix(h_f * self.table.gamma, t_f)  # the LU Newton used (cached)
            if worst > newton.SLOW_RATE:
                self._J = None  # converged slowly: evaluate J afresh at the next step
        Ks = self._attach_gradient(rhs, t, y, h, K) if torch.is_grad_enabled() else list(K.unbind(0))
        err = None
        if self.adaptive:
            with torch.set_grad_enabled(err_graph and torch.is_grad_enabled()):
                err = weighted_sum(h, self.table.b_err, Ks)
                if smoothing is not None:
                    # (I - gamma h J)^{-1} err; its derivative holds J fixed (it only steers h).
                    err = LinearSolve.apply(err, smoothing)
        return lincomb(y, h, self.table.b, Ks), [k0] + Ks, err

    def _stage_time(self, t: Scalar, h: Scalar, i: int, y: Optional[torch.Tensor] = None) -> Scalar:
        c = self.table.c[i]
        ti = t + h if c == 1.0 else t + c * h
        start, end = self._perturb
        if end and c == 1.0:
            return nudge(ti, t, y)
        if start and c == 0.0:
            return nudge(ti, t + h, y)
        return ti

    def _solve(self, rhs, t: float, y: torch.Tensor, h: float, k0: torch.Tensor, scale: torch.Tensor,
               full: bool = False):
        tab = self.table
        iters = self.max_iters * (2 if full else 1)
        s = tab.stages
        if tab.diagonally_implicit:
            Ks: List[torch.Tensor] = []
            worst = 0.0
            for i in range(s):
                ti = self._stage_time(t, h, i, y)
                base = lincomb(y, h, tab.a[i][:i], Ks) if i else y
                if tab.a[i][i] == 0.0:
                    Ks.append(k0 if (i == 0 and tab.c[0] == 0.0) else rhs(ti, base))
                    continue
                gh = h * tab.a[i][i]
                M = self._matrix(gh, t)

                def residual(Ki, base=base, ti=ti, gh=gh):
                    return Ki - rhs(ti, base + gh * Ki)

                def solver_at(Ki, base=base, ti=ti, gh=gh):
                    return self._factor(self._jac(rhs, ti, base + gh * Ki), gh, t).solve

                guess = Ks[-1] if Ks else k0
                res = newton.iterate(residual, M.solve, guess, h, scale, iters, solver_at if full else None)
                if not res.converged:
                    raise _Diverged(f"stage {i + 1}: {res.iterations} iterations, rate {res.rate:.2g}")
                worst = max(worst, res.rate)
                Ks.append(res.K)
            return torch.stack(Ks), worst
        times = [self._stage_time(t, h, i, y) for i in range(s)]
        M = self._matrix(h, t)

        def residual(K):
            return K - self._stage_f(rhs, times, y, h, K)

        def solver_at(K):
            # One Jacobian per stage at the current iterate: the exact dG/dK (CollocationMatrix).
            Ks = K.unbind(0)
            Js = torch.stack([self._jac(rhs, ti, lincomb(y, h, row, Ks)) for ti, row in zip(times, tab.a)])
            return self._factor(Js, h, t).solve

        res = newton.iterate(residual, M.solve, k0.unsqueeze(0).expand(s, *k0.shape).clone(), h, scale, iters,
                             solver_at if full else None)
        if not res.converged:
            raise _Diverged(f"{res.iterations} iterations, rate {res.rate:.2g}")
        return res.K, res.rate

    def _stage_f(self, rhs, times, y: torch.Tensor, h: Scalar, K: torch.Tensor) -> torch.Tensor:
        Ks = K.unbind(0)
        return torch.stack([rhs(ti, lincomb(y, h, row, Ks)) for ti, row in zip(times, self.table.a)])

    def _attach_gradient(self, rhs, t: Scalar, y: torch.Tensor, h: Scalar, K: torch.Tensor) -> List[torch.Tensor]:
        """K* with the implicit-function-theorem derivative attached (module docstring)."""
        tab = self.table
        s = tab.stages
        Ks = K.unbind(0)
        times = [self._stage_time(t, h, i, y) for i in range(s)]
        Y = [lincomb(y, h, row, Ks) for row in tab.a]
        F = torch.stack([rhs(ti, Yi) for ti, Yi in zip(times, Y)])
        if not F.requires_grad:
            return list(Ks)
        G = K - F
        t_f, h_f = _f(t), _f(h)
        # Exact per-stage Jacobians at the converged stages (an explicit row's is never used).
        Js = [self._jac(rhs, ti, Yi.detach()) if any(a != 0.0 for a in row) else None
              for ti, Yi, row in zip(times, Y, tab.a)]
        like = next(J for J in Js if J is not None)
        Js = torch.stack([torch.zeros_like(like) if J is None else J for J in Js])
        M = CollocationMatrix(Js, h_f, tab.a, f"at t={t_f:.6g} (the gradient's stage matrix)")
        c = LinearSolve.apply(-G, M)
        return list((K + (c - c.detach())).unbind(0))


class _Diverged(Exception):
    pass
