"""Machinery of the continuous ("optimize then discretize") adjoints.

For dy/dt = f(t, y, theta) on [t_0, t_N] and a loss L(y(t_0), ..., y(t_N)), the adjoint
a(t) = dL/dy(t) satisfies (Pontryagin; Chen et al. 2018, "Neural ordinary differential
equations", NeurIPS, eq. 4-5)

    da/dt = -a^T df/dy,                       a jumps by dL/dy(t_i) at each save time,
    dL/dtheta = int_{t_0}^{t_N} a^T df/dtheta dt,     dL/dy_0 = a(t_0).

It is solved backwards from t_N, save interval by save interval, with the vector-
Jacobian products a^T df/dy and a^T df/dtheta from ``torch.autograd.grad``. What the
methods differ in is where y(t) comes from:

* BacksolveAdjoint integrates y backwards too, in the stacked state [y, a, g];
* InterpolatingAdjoint reads y(t) from the forward solution's dense output
  (:class:`Trajectory`), the stacked state is [a, g];
* QuadratureAdjoint also reads y(t), integrates a alone and gets g by quadrature.

The backward solves use the engine's own loops (``integrate_adaptive`` /
``integrate_fixed``) with a mixed error norm: the RMS ratio of each block (y, a, g)
separately, then the max (torchdiffeq's default for its adjoint), so a large parameter
vector cannot drown the error of the state and the adjoint.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ....errors import InvalidProblemError, MaxStepsExceededError, NonFiniteStateError, StepSizeUnderflowError
from ....problem import ODEProblem, check_rhs_meta
from ....finite import all_finite
from ..control import SolverOptions
from ..forward import Method, lookup_method
from ..adams import integrate_adams
from .. import progress
from ..callbacks import StepCallbacks
from ..integrate import AcceptedStep, Counters, Record, integrate_adaptive, integrate_fixed
from ..stepping import rk_step
from .. import compiled, dense_table
from ..tableaus import ButcherTableau
from ..implicit.method import ImplicitRK
from ..implicit.jacobian import strategy_from_options
from ..discover import Watch, audit_everything, check_graph
from .common import nonfinite_adjoint, time_tensor, vjp
from .replay import interpolate, step as replay_step
from .schedule import OnlineThinning, sqrt_capacity

Blocks = Sequence[Tuple[int, int]]


def seminorm(sensealg) -> bool:
    """``sensealg.seminorm``, checked: the flag of Backsolve/InterpolatingAdjoint."""
    value = getattr(sensealg, "seminorm", False)
    if not isinstance(value, bool):
        raise InvalidProblemError(f"{type(sensealg).__name__}(seminorm={value!r}): must be True or False")
    return value


def mixed_ratio(blocks: Blocks, rtol: float, atol: float, state_norm: Optional[Callable] = None,
                state_blocks: int = 0, state_shape: Tuple[int, ...] = ()) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """err -> max over blocks of RMS(err / (atol + rtol max(|y|, |y_next|))) of the block.

    With ``state_norm`` (a per-sample forward norm, ``norms.PerSampleNorm``) the first
    ``state_blocks`` blocks (y and/or a, each shaped like the state) are measured with it
    instead, so each sample's adjoint is held to its own tolerance as its forward was.
    """

    def ratio(err: torch.Tensor, y: torch.Tensor, y_next: torch.Tensor) -> torch.Tensor:
        scale = torch.maximum(y.abs(), y_next.abs()).mul_(rtol).add_(atol)
        x = err / scale
        sq = x.square()
        parts = []
        for k, (a, b) in enumerate(blocks):
            if b <= a:
                continue
            if state_norm is not None and k < state_blocks:
                parts.append(torch.as_tensor(state_norm(x[a:b].view(state_shape))).square())
            else:
                parts.append(sq[a:b].mean())
        return torch.stack(parts).max().sqrt()

    return ratio


class AdjointRHS:
    """Right-hand side of a backward adjoint solve, on a flat state.

    ``trajectory is None`` (backsolve): state [y, a, g], returns [f, -a^T f_y, -a^T f_theta].
    Otherwise y(t) = trajectory(t): state [a, g] (or [a] with ``with_params=False``),
    returns [-a^T f_y, -a^T f_theta]. ``nfe`` counts evaluations of ``func`` (each comes
    with one vector-Jacobian product).
    """

    def __init__(self, func: Callable, y0: torch.Tensor, params: Sequence[torch.Tensor],
                 trajectory: Optional["Trajectory"] = None, with_params: bool = True,
                 known: Optional[Sequence[torch.Tensor]] = None, name: str = ""):
        self.func = func
        # All of the Function's tensor inputs: the first evaluation's graph is checked
        # for a tensor requiring grad outside them (``discover.check_graph``).
        self.known = known
        self.audit_all = known is not None and audit_everything(func)
        self.checked_once = False
        self.name = name
        self.shape = y0.shape
        self.n = y0.numel()
        self.params = list(params) if with_params else []
        self.trajectory = trajectory
        self.nfe = 0
        self.callbacks = StepCallbacks.from_func(func, adjoint=True)  # the *_adjoint step callbacks

    def __call__(self, t, s: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        tt = time_tensor(t, s) if not isinstance(t, torch.Tensor) else t.to(s.dtype)
        n = self.n
        if self.trajectory is None:
            y, a = s[:n], s[n : 2 * n]
        else:
            y, a = self.trajectory(float(t)).reshape(-1), s[:n]
        with torch.enable_grad():
            yr = y.detach().view(self.shape).requires_grad_(True)
            if self.known is not None and (self.audit_all or not self.checked_once):
                with Watch([yr, tt]) as watch:
                    fy = self.func(tt, yr)
                check_graph([fy], [yr, tt, *self.known], self.name, watch)
                self.checked_once = True
            else:
                fy = self.func(tt, yr)
            check_rhs_meta(fy, yr, tt)  # the backward evaluations are checked like the forward ones
            grads = vjp([fy], [yr, *self.params], [a.view(self.shape)])
        parts = [fy.detach()] if self.trajectory is None else []
        parts += [-g for g in grads]
        return torch.cat([p.reshape(-1) for p in parts])

    def newton_jacobian(self, t, s: torch.Tensor, strategy) -> torch.Tensor:
        """The Newton matrix's Jacobian when an implicit method integrates this system:
        J = df/dy at y(t) by the forward's ``strategy``, arranged as the blocks of
        diag(J, -J^T) over [y, a] (backsolve) or -J^T over [a], for the leading entries of
        the state (``implicit.linalg.LeadingBlock``: the dL/dtheta block is the identity).
        The couplings d(-a^T f_y)/dy and d(-a^T f_theta)/d(y, a) are left out: they are
        strictly below the block diagonal, so the simplified Newton error is nilpotent and
        the iteration still converges (in at most three steps for a linear f) to the exact
        stage solution."""
        self.nfe += 1
        y = s[: self.n] if self.trajectory is None else self.trajectory(float(t)).reshape(-1)
        J = strategy(self.func, t, y.detach().view(self.shape))
        JT = -J.transpose(1, 2)
        return torch.cat([J, JT]) if self.trajectory is None else JT


    def linear_system(self, t, s: torch.Tensor, gamma_h) -> Callable[[torch.Tensor], torch.Tensor]:
        """x -> (I - gamma h W)^{-1} x on the flat state, for a Rosenbrock backward solve
        (``rosenbrock.py`` asks its right-hand side for this before building a dense J).

        With y(t) from the forward trajectory (Interpolating/QuadratureAdjoint) W is the exact
        Jacobian of [a, g] -> [-J_f^T a, -f_theta^T a]: I - gamma h W = [[I + gamma h J_f^T, 0],
        [gamma h f_theta^T, I]] is block lower triangular, so a solve is one n x n LU solve
        for a and one vector-Jacobian product f_theta^T x_a for g, never a (n + P)^2 matrix.
        Backsolve ([y, a, g]) keeps J_f for y and -J_f^T for a but leaves out the coupling
        d(-J_f^T a)/dy (second derivatives of f): the table used as a W-method there.
        """
        from ..rosenbrock import jacobian_and_time_derivative

        n = self.n
        y = s[:n] if self.trajectory is None else self.trajectory(float(t)).reshape(-1)
        self.nfe += 1
        with torch.no_grad():
            Jf, _ = jacobian_and_time_derivative(self.func, t, y.detach().view(self.shape))
        eye = torch.eye(n, dtype=Jf.dtype, device=Jf.device)
        lu_a = torch.linalg.lu_factor(eye + gamma_h * Jf.mT)
        lu_y = torch.linalg.lu_factor(eye - gamma_h * Jf) if self.trajectory is None else None
        coupled = self.trajectory is not None and bool(self.params)
        if coupled:
            tt = time_tensor(t, s) if not isinstance(t, torch.Tensor) else t.to(s.dtype)
            with torch.enable_grad():
                fy = self.func(tt, y.detach().view(self.shape))

        def solve(x: torch.Tensor) -> torch.Tensor:
            out = x.clone()
            off = 0
            if lu_y is not None:
                out[:n] = torch.linalg.lu_solve(*lu_y, x[:n, None])[:, 0]
                off = n
            x_a = torch.linalg.lu_solve(*lu_a, x[off:off + n, None])[:, 0]
            out[off:off + n] = x_a
            if coupled:
                with torch.enable_grad():
                    g = torch.autograd.grad(fy, self.params, x_a.view(self.shape), retain_graph=True,
                                            materialize_grads=True)
                out[off + n:] = x[off + n:] - gamma_h * torch.cat([v.reshape(-1) for v in g])
            return out

        return solve


class BackwardSolver:
    """Integrates an adjoint system from one save time to the previous one."""

    def __init__(self, name: str, method: Method, opts: SolverOptions, rtol: float, atol: float, forward_grid: bool,
                 hint: str = ""):
        self.name = name
        self.hint = hint
        self.method = method
        self.rtol, self.atol = rtol, atol
        # An adaptive adjoint ignores step_size; a fixed one uses the forward's step_size,
        # or one step per save interval when the forward stepped on the grid t too.
        self.opts = replace(opts, step_size=None) if method.adaptive else opts
        if isinstance(method.tableau, ImplicitRK):
            # Its own Newton cache and the adjoint's tolerances; the forward's Jacobian strategy.
            method = replace(method, tableau=method.tableau.bound(strategy_from_options(opts.jac, opts.jacobian),
                                                                  rtol, atol, opts.max_iters or 10))
            self.method = method
        if not method.adaptive and opts.step_size is None and not forward_grid:
            raise InvalidProblemError(
                f"{name}: adjoint_method {method.name!r} is a fixed-step method but no step size is "
                "known (the forward solve was adaptive): pass options={'step_size': h}, or choose an "
                "adaptive adjoint_method such as 'dopri5'"
            )

    def _ratio(self, rhs: Callable, blocks: Blocks):
        norm = self.opts.norm
        if not getattr(norm, "per_sample", False) or not isinstance(rhs, AdjointRHS):
            return mixed_ratio(blocks, self.rtol, self.atol)
        n_state = 2 if rhs.trajectory is None else 1  # [y, a, g] (backsolve) or [a, g]
        return mixed_ratio(blocks, self.rtol, self.atol, norm, n_state, tuple(rhs.shape))

    def _compiled(self, rhs: Callable) -> bool:
        """options['compile'] and a backward solve the compiled adaptive step can run:
        BacksolveAdjoint's (its state [y, a, g] is self-contained) and the interpolating
        adjoints' when the forward's dense output can be stacked for a device-side lookup
        (``Trajectory.dense_table``: not with checkpointing=True, whose segments are rebuilt
        on demand, nor a Rosenbrock forward with its own interpolant); an explicit RK
        adjoint table, the mixed RMS norm, no adjoint step callbacks, no stop points; not
        while the first backward passes of func check every evaluation's graph
        (``discover.audit_everything``)."""
        opts = self.opts
        traj = getattr(rhs, "trajectory", None)
        return bool(opts.compile and self.method.adaptive and isinstance(self.method.tableau, ButcherTableau)
                    and self.method.adams is None
                    and isinstance(rhs, AdjointRHS)
                    and (traj is None or (not traj.checkpointing and dense_table.supported(traj.tab) is None))
                    and not rhs.audit_all and (rhs.known is None or rhs.checked_once)
                    and opts.norm is None and not opts.jump_t and not opts.step_t and not opts.accept_min_step
                    and rhs.callbacks.step is None and rhs.callbacks.accept is None and rhs.callbacks.reject is None)

    def integrate(self, rhs: Callable, s0: torch.Tensor, t_from: float, t_to: float, blocks: Blocks,
                  record: Record = None) -> torch.Tensor:
        reached = [t_from]

        def rec(step: AcceptedStep) -> None:
            reached[0] = float(step.t)
            progress.reached(float(step.t) + float(step.h))  # the backward pass's meter, if one is open
            if record is not None:
                record(step)

        try:
            f0 = rhs(t_from, s0)
            if not all_finite(f0):
                raise nonfinite_adjoint(self.name, f"at t={t_from:.6g} (start of a backward interval)")
            ys = None
            if self._compiled(rhs) and rhs.trajectory is None:
                ys = compiled.integrate_backsolve(rhs, self.method.tableau, t_from, t_to, s0, f0, self.rtol, self.atol,
                                                  self.opts, blocks, self._ratio(rhs, blocks), rec)
            elif self._compiled(rhs):
                ys = compiled.integrate_interpolating(rhs, self.method.tableau, t_from, t_to, s0, f0, self.rtol,
                                                      self.atol, self.opts, blocks, self._ratio(rhs, blocks), rec,
                                                      rhs.trajectory.dense_table())
            if ys is not None:
                pass
            elif self.method.adaptive:
                ys = integrate_adaptive(
                    rhs, self.method.tableau, [t_from, t_to], s0, f0, self.rtol, self.atol, self.opts,
                    False, Counters(), rec, ratio_fn=self._ratio(rhs, blocks),
                )
            elif self.method.adams is not None:
                ys = integrate_adams(rhs, self.method.adams, [t_from, t_to], s0, f0, self.opts, self.rtol, self.atol,
                                     Counters(), rec)
            else:
                ys = integrate_fixed(rhs, self.method.tableau, [t_from, t_to], s0, f0, self.opts, Counters(), rec)
        except NonFiniteStateError as err:
            raise nonfinite_adjoint(
                self.name, f"near t={reached[0]:.6g} (backward solve from t={t_from:.6g} to t={t_to:.6g})"
            ) from err
        except (StepSizeUnderflowError, MaxStepsExceededError) as err:
            raise type(err)(
                f"{self.name}: the backward solve from t={t_from:.6g} to t={t_to:.6g} failed near "
                f"t={reached[0]:.6g}. {self.hint}The solver said: {err}"
            ) from err
        out = ys[-1]
        if not all_finite(out):
            raise nonfinite_adjoint(self.name, f"between t={t_from:.6g} and t={t_to:.6g}")
        return out


def adjoint_settings(problem: ODEProblem, method_name: Optional[str], rtol: Optional[float], atol: Optional[float]):
    """(Method, rtol, atol) of the backward solve: the sensealg's, else the forward's."""
    for label, value in (("adjoint_rtol", rtol), ("adjoint_atol", atol)):
        if value is not None and (not isinstance(value, (int, float)) or not value > 0):
            raise InvalidProblemError(f"{type(problem.sensealg).__name__}({label}={value!r}): must be a positive number")
    method = lookup_method(method_name if method_name is not None else problem.method)
    return method, float(rtol if rtol is not None else problem.rtol), float(atol if atol is not None else problem.atol)


# ----------------------------------------------------------------------------- dense output


@dataclass
class _Step:
    t: float
    h: float
    y: torch.Tensor
    ks: Sequence[torch.Tensor]


class Trajectory:
    """y(t) from the forward solve's accepted steps, evaluated at float times.

    Each accepted step is stored as (t_n, h_n, y_n, stage derivatives ks); y(t) in
    step n is the method's continuous extension (dopri5, tsit5) or the cubic Hermite
    interpolant through (y_n, f_n), (y_{n+1}, f_{n+1}) (``replay.interpolate``), i.e.
    exactly what the forward loop serves at save times.

    ``checkpointing=True`` (SciMLSensitivity's ``InterpolatingAdjoint(checkpointing=true)``)
    stores only the states at checkpoints, every s accepted steps with s ~ sqrt(N)
    chosen online (``schedule.OnlineThinning``), plus the scalars (t_n, h_n) of every
    step. A segment is rebuilt on demand by replaying its recorded steps from its
    checkpoint, which reproduces the forward's states and stages bitwise, so the
    interpolant, and hence the gradient, is the same as without checkpointing. The
    backward solve sweeps time monotonically, so at most two segments (the one being
    crossed and its predecessor, for a step straddling their boundary) are held.
    """

    def __init__(self, tab: Optional[ButcherTableau], rhs: Callable, direction: float, checkpointing: bool):
        self.tab = tab
        self.full_tab = tab if not isinstance(tab, ButcherTableau) else replace(tab, b_err=None)
        self.rhs = rhs
        self.direction = direction
        self.checkpointing = checkpointing
        self.times: List[float] = []
        self.hs: List[float] = []
        self.perturbs: List[Tuple[bool, bool]] = []
        self.keys: List[float] = []
        self.steps: List[_Step] = []  # every step (checkpointing=False)
        self.store = OnlineThinning(sqrt_capacity) if checkpointing else None
        self.t_end = 0.0
        self.y_end: Optional[torch.Tensor] = None
        self._segments: OrderedDict = OrderedDict()  # step index -> (steps, state after them)
        self._starts: List[int] = []
        self.replayed_steps = 0
        self._table: Optional[dense_table.DenseTable] = None

    # -- recording (forward pass)
    def record(self, s: AcceptedStep) -> None:
        n = len(self.times)
        self.times.append(float(s.t))
        self.hs.append(float(s.h))
        self.perturbs.append(s.perturb)
        self.keys.append(self.direction * float(s.t))
        if self.checkpointing:
            state = (None if s.y_prev is None else s.y_prev.detach(), s.y.detach()) if self.tab is None else (s.y.detach(),)
            self.store.offer(n, state)
        else:
            self.steps.append(_Step(float(s.t), float(s.h), s.y.detach(), [k.detach() for k in s.ks]))

    def close(self, t_end: float, y_end: torch.Tensor) -> None:
        self.t_end = t_end
        self.y_end = y_end.detach().clone()  # not a view of the output the user may modify
        if self.checkpointing:
            self._starts = sorted(self.store.states)

    def nbytes(self) -> int:
        """Bytes of the stored states and stages."""
        held = [x for st in self.steps for x in (st.y, *st.ks)]
        if self.store is not None:
            held += [x for st in self.store.states.values() for x in st if x is not None]
        held += [x for steps, y in self._segments.values() for st in steps for x in (st.y, *st.ks)]
        return sum(x.numel() * x.element_size() for x in held) + (0 if self._table is None else self._table.nbytes())

    @property
    def stored_states(self) -> int:
        if self.checkpointing:
            return len(self.store.states)
        return len(self.steps)

    # -- evaluation (backward pass)
    def __call__(self, t: float) -> torch.Tensor:
        n = min(max(bisect.bisect_right(self.keys, self.direction * t) - 1, 0), len(self.times) - 1)
        steps, first, y_after = self._steps_around(n)
        k = n - first
        st = steps[k]
        y_next = steps[k + 1].y if k + 1 < len(steps) else y_after

        def f_next() -> torch.Tensor:
            if self.tab is not None and self.tab.fsal:
                return st.ks[-1]
            if k + 1 < len(steps):
                return steps[k + 1].ks[0]
            t_next = self.times[n + 1] if n + 1 < len(self.times) else self.t_end
            return self.rhs(t_next, y_next)

        with torch.no_grad():
            return interpolate(self.tab, (t - st.t) / st.h, st.h, st.y, y_next, st.ks, f_next)

    def dense_table(self) -> dense_table.DenseTable:
        """The stored steps stacked as tensors for a device-side lookup of y(t) (the
        compiled backward solves, ``dense_table.lookup``); built once, kept with the
        trajectory. Only without checkpointing: with it the steps are rebuilt segment by
        segment, which is what keeps its memory at O(sqrt(N)) states."""
        if self._table is None:
            steps = self.steps
            t_end, y_end = self.t_end, self.y_end
            self._table = dense_table.build(
                self.tab, self.direction, [st.t for st in steps], [st.h for st in steps], [st.y for st in steps],
                [st.ks for st in steps], y_end, lambda: self.rhs(t_end, y_end))
        return self._table

    def _steps_around(self, n: int) -> Tuple[List[_Step], int, torch.Tensor]:
        """(steps of the segment holding step n, index of its first step, state after it)."""
        if not self.checkpointing:
            return self.steps, 0, self.y_end
        j = bisect.bisect_right(self._starts, n) - 1
        a = self._starts[j]
        if a not in self._segments:
            self._segments[a] = self._replay(a, self._starts[j + 1] if j + 1 < len(self._starts) else len(self.times))
            while len(self._segments) > 2:
                self._segments.popitem(last=False)
        else:
            self._segments.move_to_end(a)
        steps, y_after = self._segments[a]
        return steps, a, y_after

    def _replay(self, a: int, b: int) -> Tuple[List[_Step], torch.Tensor]:
        state = self.store.states[a]
        steps: List[_Step] = []
        with torch.no_grad():
            for n in range(a, b):
                t_n, h = self.times[n], self.hs[n]
                t_next = self.times[n + 1] if n + 1 < len(self.times) else self.t_end
                if self.tab is None:
                    new_state, _, ks = replay_step(self.rhs, None, None, t_n, h, t_next, state)
                else:
                    y_next, ks, _ = rk_step(self.rhs, self.full_tab, t_n, state[0], h,
                                            perturb_start=self.perturbs[n][0], perturb_end=self.perturbs[n][1])
                    new_state = (y_next,)
                steps.append(_Step(t_n, h, state[-1], ks))
                state = new_state
                self.replayed_steps += 1
        return steps, state[-1]


def gauss_legendre(order: int) -> Tuple[List[float], List[float]]:
    """Nodes in [0, 1] and weights (summing to 1) of the m-point Gauss-Legendre rule that
    integrates polynomials of degree < 2m exactly, with m = max(2, ceil((order+1)/2))."""
    m = max(2, -(-(order + 1) // 2))
    x, w = np.polynomial.legendre.leggauss(m)
    return [float(v) for v in (x + 1) / 2], [float(v) for v in w / 2]


def block_sizes(sizes: Sequence[int]) -> List[Tuple[int, int]]:
    out, i = [], 0
    for n in sizes:
        out.append((i, i + n))
        i += n
    return out


def split_flat(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    out, i = [], 0
    for x in like:
        out.append(flat[i : i + x.numel()].view_as(x))
        i += x.numel()
    return out
