"""The integration loops: adaptive RK, fixed-step RK and leapfrog.

Each loop walks from t[0] to t[-1], serves the save times from dense output (so
``len(t)`` never forces extra steps), and reports every accepted step to an optional
``record`` callback as an :class:`AcceptedStep` — which is all a checkpointing
adjoint needs to replay the discrete forward map.

Every loop is bounded by ``max_num_steps`` and checks for non-finite values, so no
input can make a solve hang or silently return garbage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch

from ...errors import (
    InvalidProblemError,
    MissingStepSizeError,
    MaxStepsExceededError,
    NewtonConvergenceError,
    NonFiniteStateError,
    StepSizeUnderflowError,
)
from ...problem import check_rhs_meta
from ...finite import all_finite
from . import callbacks as _callbacks
from .callbacks import StepCallbacks
from .control import PIController, SolverOptions, initial_step, times_of
from .stepping import (StepRejected, dense_eval, dense_eval_many, error_ratio, in_dtype_of, leapfrog_step, nudge,
                       rk_step)
from .tableaus import ButcherTableau

Scalar = Union[float, torch.Tensor]

#: What the errors of a stiff-looking solve advise: the torch engine's own stiff methods
#: (they run everywhere), the adaptive Rosenbrock ones first, then the fixed-step implicit ones.
STIFF_HINT = ("a stiff method: method='rodas5p' (or 'rodas4') or 'kvaerno5' (or 'kencarp4'), adaptive, or a "
              "fixed-step implicit method such as 'radauIIA5' or 'trbdf2' with options={'step_size': h} "
              "(see docs/stiff.md)")
#: A trial whose implicit stages did not converge (``stepping.StepRejected``) is retried with
#: h times this (OrdinaryDiffEq.jl's ``failfactor = 2`` halves dt the same way).
NEWTON_SHRINK = 0.5


class CountingRHS:
    """Wraps ``func(t, y)``: counts evaluations, hands ``func`` a 0-d time tensor in the
    state's dtype (also when the solve carries times as float64 tensors for dL/dt), and
    checks every output's type, shape, dtype and device (metadata only, no sync)."""

    def __init__(self, func: Callable, dtype: torch.dtype, device: torch.device):
        self.func = func
        self.dtype = dtype
        self.device = device
        self.nfe = 0
        self.callbacks = StepCallbacks.from_func(func)  # torchdiffeq's callback_step etc. (callbacks.py)

    def __call__(self, t: Scalar, y: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        if not isinstance(t, torch.Tensor):
            t = torch.full((), t, dtype=self.dtype, device=self.device)
        elif t.dtype != self.dtype:
            t = t.to(self.dtype)
        out = self.func(t, y)
        check_rhs_meta(out, y, t)
        return out


@dataclass
class AcceptedStep:
    """One accepted step: start time ``t``, step ``h``, start state ``y``
    (``y_prev`` too for leapfrog) and the save points it serves as (index, theta).
    ``ks`` are the step's stage derivatives (``ks[0]`` = f(t, y)): with them and the
    next step's ``y`` an interpolating adjoint rebuilds the dense output without
    re-evaluating ``func``."""

    t: Scalar
    h: Scalar
    y: torch.Tensor
    saves: List[Tuple[int, Scalar]] = field(default_factory=list)
    y_prev: Optional[torch.Tensor] = None
    ks: Optional[Sequence[torch.Tensor]] = None
    # (start, end): whether the stages at the step's start / end were evaluated one ulp
    # inside it (options perturb, or a jump_t at the end / just before the start), so a
    # replay evaluates f at the same times.
    perturb: Tuple[bool, bool] = (False, False)


@dataclass
class Counters:
    n_steps: int = 0
    n_rejected: int = 0


Record = Optional[Callable[[AcceptedStep], None]]
#: ``until(step, t_next, y_next, f_next) -> bool``: called after each accepted step; True
#: ends the loop there (terminal events search the step it was handed for a root).
Until = Optional[Callable[[AcceptedStep, "Scalar", torch.Tensor, Callable[[], torch.Tensor]], bool]]


def as_float(x: Scalar) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def _check_finite(y: torch.Tensor, t_reached: float, what: str) -> None:
    if not all_finite(y):
        raise NonFiniteStateError(
            f"{what} became NaN/inf at t={t_reached:.6g}. The solution blows up or func "
            "produces NaN there: check func and its parameters, shorten the interval, or "
            f"use {STIFF_HINT}."
        )


def _serve(
    saves: List[Tuple[int, Scalar]],
    ys: List[Optional[torch.Tensor]],
    tab: ButcherTableau,
    h: Scalar,
    y: torch.Tensor,
    y_next: torch.Tensor,
    ks: Sequence[torch.Tensor],
    f_next: Callable[[], torch.Tensor],
) -> None:
    """Write the step's saves into ``ys``: theta = 1 is y_{n+1} itself; two or more dense
    saves are one vectorised evaluation (``dense_eval_many``) split into per-save views."""
    dense = [(index, theta) for index, theta in saves if not (isinstance(theta, float) and theta == 1.0)]
    if len(dense) == 1:
        ys[dense[0][0]] = dense_eval(tab, dense[0][1], h, y, y_next, ks, f_next)
    elif dense:
        values = dense_eval_many(tab, [theta for _, theta in dense], h, y, y_next, ks, f_next)
        for (index, _), value in zip(dense, values.unbind(0)):
            ys[index] = value
    for index, theta in saves:
        if isinstance(theta, float) and theta == 1.0:
            ys[index] = y_next


def _saves_in_step(t_save: Sequence[Scalar], ts: Sequence[float], i: int, t: Scalar, h: Scalar, t_next_f: float, direction: float, exact_end: bool) -> Tuple[List[Tuple[int, Scalar]], int]:
    """Save indices i.. with t_save in (t, t + h]; theta = (t_save - t) / h."""
    saves = []
    while i < len(ts) and direction * (ts[i] - t_next_f) <= 0:
        if ts[i] == t_next_f and exact_end:
            saves.append((i, 1.0))
        else:
            saves.append((i, (t_save[i] - t) / h))
        i += 1
    return saves, i


class LazyRHS:
    """``f(t_next, y_next)`` evaluated at most once, on the first call (or given, as an
    FSAL table's last stage): dense output, ``until`` and the next step share it, and a
    step whose value nobody asks for costs no evaluation. ``value`` is ``None`` until then."""

    __slots__ = ("rhs", "t", "y", "value")

    def __init__(self, rhs: Callable, t: "Scalar", y: torch.Tensor, value: Optional[torch.Tensor] = None):
        self.rhs, self.t, self.y, self.value = rhs, t, y, value

    def __call__(self) -> torch.Tensor:
        if self.value is None:
            self.value = self.rhs(self.t, self.y)
        return self.value


#: After a trial step with a NaN/inf error estimate the step is shrunk by ``dfactor`` and
#: retried (a too-large trial step can overflow, or leave the domain of func, e.g. sqrt
#: of a negative state); once a run of such trials has shrunk h by this factor the
#: non-finite values are func's own and the solve stops with NonFiniteStateError.
NONFINITE_SHRINK_LIMIT = 1e-12


def _nonfinite_trial(k0: torch.Tensor, t_f: float, h_abs: float, nonfinite_from: Optional[float]) -> float:
    """A trial step of size ``h_abs`` from ``t_f`` gave a NaN/inf error estimate: the
    start of the current run of such trials (``nonfinite_from``, the first one's step
    size, or ``None``) after this one, for the caller to shrink h and retry. Raises
    NonFiniteStateError when ``k0 = f(t, y)`` itself is not finite, or once the run has
    shrunk h below ``NONFINITE_SHRINK_LIMIT`` times its first size. Shared by the eager
    and the compiled adaptive loops."""
    _check_finite(k0, t_f, "func(t, y) at an accepted state")
    if nonfinite_from is None:
        return h_abs
    if h_abs < NONFINITE_SHRINK_LIMIT * nonfinite_from:
        raise NonFiniteStateError(
            f"func(t, y) returns NaN/inf at every trial step from t={t_f:.6g}, for step sizes from "
            f"{nonfinite_from:.3g} down to {h_abs:.3g}: check func and its parameters just after "
            f"t={t_f:.6g} (division by zero, log or sqrt of a negative number, overflow)."
        )
    return nonfinite_from


def integrate_adaptive(
    rhs: CountingRHS,
    tab: ButcherTableau,
    t_save: Sequence[Scalar],
    y0: torch.Tensor,
    f0: torch.Tensor,
    rtol: Union[float, torch.Tensor],
    atol: Union[float, torch.Tensor],
    opts: SolverOptions,
    differentiate_control: bool,
    counters: Counters,
    record: Record = None,
    ratio_fn: Optional[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = None,
    until: Until = None,
) -> List[torch.Tensor]:
    """Embedded-RK loop with PI control; returns the states at ``t_save``.

    ``differentiate_control`` (DirectAD(through_controller=True)): the initial step,
    the error ratios and the step sizes are tensors in the autograd graph. Otherwise
    step sizes are Python floats, i.e. constants for the gradient, and the error
    estimates are computed without a graph. Times are Python floats (float64) unless
    ``t_save`` holds tensors (dL/dt wanted): then t_n = t_0 + (t_n - t_0 as a float) and
    the last step h = t_end - t_n are tensors, the same map CheckpointAdjoint replays.
    ``rtol``/``atol`` may be tensors broadcastable to the state (per component).
    ``ratio_fn(err, y, y_next)`` replaces the default RMS error ratio (the adjoint
    solves use a mixed norm over their stacked [y, a, dL/dtheta] blocks).
    ``until`` (see :data:`Until`) may end the loop after an accepted step; ``t_save[-1]``
    may then be +-inf (integrate until the hook says stop, bounded by max_num_steps).
    """
    ts = [as_float(x) for x in t_save]
    direction = 1.0 if ts[-1] > ts[0] else -1.0
    controller = PIController.for_method(tab.error_order, opts)
    if ratio_fn is None and opts.norm is not None:
        ratio_fn = _user_norm_ratio(opts.norm, rtol, atol)
    grad_ctl = differentiate_control and torch.is_grad_enabled()
    tensor_times = isinstance(t_save[0], torch.Tensor)
    t_end: Scalar = t_save[-1] if tensor_times else ts[-1]

    def time_at(t_f: float) -> Scalar:
        return t_save[0] + (t_f - ts[0]) if tensor_times else t_f

    t_f = ts[0]
    t: Scalar = t_save[0] if tensor_times else t_f
    y, k0 = y0, f0
    if opts.first_step is not None:
        h: Scalar = direction * opts.first_step
    else:
        with torch.set_grad_enabled(grad_ctl):
            h = initial_step(rhs, t, y0, f0, tab.order, rtol, atol, direction)
        if not differentiate_control:
            h = float(h)
    h_f = as_float(h)
    if not (math.isfinite(h_f) and h_f != 0.0):
        raise NonFiniteStateError(
            f"func(t, y) is finite at t={ts[0]:.6g} but NaN/inf just after it: the initial-step probe "
            f"(one small explicit Euler step from t0) gave the step size {h_f!r}. Check func and its "
            "parameters right after t0 (division by zero, log or sqrt of a negative number, overflow), "
            "or pass options={'first_step': h}."
        )
    h = _limit(h, opts.max_step)
    ys: List[Optional[torch.Tensor]] = [y0] + [None] * (len(ts) - 1)
    cb = _callbacks.of(rhs)
    prev_ratio: Scalar = 1.0
    i = 1
    trials = 0
    nonfinite_from: Optional[float] = None  # |h| of the first trial in a run of non-finite ones
    # A table whose only dense output is cubic Hermite inside long stiff steps ends its steps
    # on the save times instead (see EmbeddedImplicitTableau.steps_to_saves; options
    # steps_to_saves decides over it); not when dL/dt is wanted, where a save's gradient
    # comes from the interpolant's time derivative.
    to_saves = opts.steps_to_saves if opts.steps_to_saves is not None else getattr(tab, "steps_to_saves", False)
    to_saves = bool(to_saves) and not tensor_times
    stops = _stop_points(opts, ts[0], ts[-1], direction, ts[1:-1] if to_saves else ())
    next_stop = 0
    after_jump = False  # the next accepted step starts from f just after a jump_t
    floor = opts.min_step if opts.accept_min_step else 0.0
    newton_failure: Optional[StepRejected] = None  # the last trial's, while no step is accepted
    while i < len(ts):
        trials += 1
        if trials > opts.max_num_steps:
            raise MaxStepsExceededError(
                f"max_num_steps={opts.max_num_steps} steps taken and t={t_f:.6g} reached, "
                f"short of t={ts[-1]:.6g}. Raise options['max_num_steps'], loosen rtol/atol, "
                f"or, for a stiff problem, use {STIFF_HINT}."
            )
        h_f = as_float(h)
        if not math.isfinite(h_f):
            raise NonFiniteStateError(
                f"the step size became {h_f!r} at t={t_f:.6g}: the error estimate is not finite "
                "(func returns NaN/inf at a trial point). Check func and its parameters there."
            )
        if floor and abs(h_f) < floor:
            # accept_min_step (torchdiffeq's min_step): never shorter than the floor.
            h_f = direction * floor
            h = (h / abs(as_float(h))) * floor if isinstance(h, torch.Tensor) else h_f
        last = direction * (t_f + h_f - ts[-1]) >= 0
        on_jump = False
        while next_stop < len(stops) and direction * (stops[next_stop][0] - t_f) <= 0:
            next_stop += 1
        if next_stop < len(stops) and direction * (t_f + h_f - stops[next_stop][0]) > 0:
            # A step_t / jump_t point lies inside the trial step: end the step on it.
            p, on_jump = stops[next_stop]
            last = False
            h_f = p - t_f
            h = time_at(p) - t if (differentiate_control or tensor_times) else h_f
        elif last:
            h_f = ts[-1] - t_f
            h = t_end - t if (differentiate_control or tensor_times) else h_f
        # The final stub up to t_end may be shorter than min_step: it is not a sign of trouble.
        if not last and abs(h_f) <= max(0.0 if floor else opts.min_step, 4 * math.ulp(abs(t_f))):
            if newton_failure is not None:
                raise NewtonConvergenceError(
                    f"the step size underflowed to {abs(h_f):.3g} at t={t_f:.6g} while Newton's method kept "
                    f"failing ({newton_failure}): check func for a discontinuity or a singular Jacobian there, "
                    "loosen rtol/atol, or raise options['max_iters']"
                )
            raise _underflow(opts, t_f, h_f, y, counters, nonfinite_from is not None)
        if cb.step is not None:
            cb.step(t, y, h)
        try:
            y_next, ks, err = rk_step(rhs, tab, t, y, h, k0, err_graph=grad_ctl, perturb_end=on_jump)
        except StepRejected as failure:
            newton_failure = failure
            counters.n_rejected += 1
            if cb.reject is not None:
                cb.reject(t, y, h)
            h = (h * NEWTON_SHRINK) if differentiate_control else h_f * NEWTON_SHRINK
            continue
        newton_failure = None
        with torch.set_grad_enabled(grad_ctl):
            if ratio_fn is None:
                ratio_t = error_ratio(err, y, y_next, rtol, atol)
            else:
                ratio_t = ratio_fn(err, y, y_next)
        ratio_f = as_float(ratio_t)
        if not math.isfinite(ratio_f):
            nonfinite_from = _nonfinite_trial(ks[0], t_f, abs(h_f), nonfinite_from)
            counters.n_rejected += 1
            if cb.reject is not None:
                cb.reject(t, y, h)
            h = (h * opts.dfactor) if differentiate_control else h_f * opts.dfactor
            k0 = _retry_start(tab, k0, ks)
            continue
        nonfinite_from = None
        ratio: Scalar = ratio_t if differentiate_control else ratio_f
        accepted = ratio_f <= 1.0 or (bool(floor) and abs(h_f) <= floor * (1 + 1e-12))
        if cb.accept is not None and accepted:
            cb.accept(t, y, h)
        elif cb.reject is not None and not accepted:
            cb.reject(t, y, h)
        if accepted:
            t_next_f = ts[-1] if last else t_f + h_f
            if differentiate_control:
                t_next: Scalar = t_end if last else t + h
                if isinstance(t_next, torch.Tensor) and not last and as_float(t_next) == as_float(t):
                    raise StepSizeUnderflowError(
                        f"a step of size {abs(h_f):.3g} made no progress at t={t_f:.6g} in {t_next.dtype} "
                        "time arithmetic: pass t in float64 (t.double()), or loosen rtol/atol."
                    )
            else:
                t_next = t_end if last else time_at(t_next_f)
            saves, i = _saves_in_step(t_save if (differentiate_control or tensor_times) else ts, ts, i, t, h,
                                      t_next_f, direction, True)
            f_next = LazyRHS(rhs, t_next, y_next, ks[-1] if tab.fsal else None)

            _serve(saves, ys, tab, h, y, y_next, ks, f_next)
            step = AcceptedStep(t, h, y, saves, ks=ks, perturb=(after_jump, on_jump))
            after_jump = False
            if record is not None:
                record(step)
            counters.n_steps += 1
            if until is not None and until(step, t_next, y_next, f_next):
                break
            t, t_f, y = t_next, t_next_f, y_next
            k0 = f_next.value
            if on_jump:
                # Past a discontinuity of f: restart from its value just after the jump.
                next_stop += 1
                k0 = rhs(nudge(t_next, t_next_f + h_f, y_next), y_next)
                after_jump = True
        else:
            counters.n_rejected += 1
            k0 = _retry_start(tab, k0, ks)
        if differentiate_control:
            h = _limit(h * controller.factor(ratio, prev_ratio, accepted), opts.max_step)
        else:
            h = _limit(h_f * controller.factor(ratio_f, prev_ratio, accepted), opts.max_step)
        if accepted:
            # Clamped on both paths: an exactly zero error (e.g. f = 0) must not zero the PI factor.
            prev_ratio = max(ratio_f, 1e-10) if not differentiate_control else ratio.clamp(min=1e-10)
    return ys  # type: ignore[return-value]


def _retry_start(tab, k0: Optional[torch.Tensor], ks: Sequence[torch.Tensor]) -> Optional[torch.Tensor]:
    """The first stage for the retry of a rejected trial step: the rejected trial's own
    f(t, y) (an explicit table's ``ks[0]``), so a table without FSAL does not evaluate it
    again on every retry (heun_euler and fehlberg2 cost one evaluation more per rejected
    step). Implicit and Rosenbrock steps keep ``k0``: their ks are not f values."""
    return ks[0] if k0 is None and isinstance(tab, ButcherTableau) else k0


def _stop_points(opts: SolverOptions, t0: float, t1: float, direction: float,
                 saves: Sequence[float] = ()) -> List[Tuple[float, bool]]:
    """(time, is_jump) for options step_t / jump_t, and ``saves`` (save times the steps must
    end on), strictly inside (t0, t1), in step order."""
    points = [(x, False) for x in times_of(opts, "step_t")] + [(x, True) for x in times_of(opts, "jump_t")]
    inside = [(x, j) for x, j in points if direction * (x - t0) > 0 and direction * (t1 - x) > 0]
    if len({x for x, _ in inside}) != len(inside):
        raise InvalidProblemError("options['step_t'] and options['jump_t'] must not repeat a time (within or between them)")
    given = {x for x, _ in inside}
    inside += [(x, False) for x in dict.fromkeys(saves) if x not in given and direction * (x - t0) > 0 and direction * (t1 - x) > 0]
    return sorted(inside, key=lambda p: direction * p[0])


def _user_norm_ratio(norm: Callable, rtol: Scalar, atol: Scalar):
    def ratio(err: torch.Tensor, y: torch.Tensor, y_next: torch.Tensor) -> torch.Tensor:
        scale = torch.maximum(y.abs(), y_next.abs()).mul_(rtol).add_(atol)
        return torch.as_tensor(norm(err / scale)).abs()

    return ratio


def _underflow(opts: SolverOptions, t_f: float, h_f: float, y: torch.Tensor, counters: Counters,
               nonfinite: bool) -> Exception:
    """The error for a step size at or below min_step (or a few ulps of t)."""
    if nonfinite:
        return NonFiniteStateError(
            f"func(t, y) keeps producing NaN/inf near t={t_f:.6g}, even with step size "
            f"{abs(h_f):.3g}: check func and its parameters there (division by zero, log or "
            "sqrt of a negative number, overflow)."
        )
    if counters.n_steps == 0 and abs(h_f) <= opts.min_step:
        return StepSizeUnderflowError(
            f"options['min_step']={opts.min_step:g} is larger than the first step size {abs(h_f):.3g} that "
            f"rtol/atol need at t={t_f:.6g} (nothing has been integrated yet): lower min_step below "
            "the step sizes the problem needs, or loosen rtol/atol."
        )
    return StepSizeUnderflowError(
        f"step size {abs(h_f):.3g} underflowed (min_step={opts.min_step:g}) at t={t_f:.6g}, "
        f"|y|max={as_float(y.abs().max()):.3g}: the solution may blow up in finite time, or the "
        f"problem is stiff. Shorten the interval, loosen rtol/atol, or use {STIFF_HINT}."
    )


def _limit(h: Scalar, max_step: float) -> Scalar:
    if math.isinf(max_step):
        return h
    if isinstance(h, torch.Tensor):
        return h.clamp(-max_step, max_step)
    return max(min(h, max_step), -max_step)


def fixed_grid(ts: Sequence[float], step_size: Optional[float]) -> Optional[int]:
    """Number of equal steps spanning [t0, t_end] for ``step_size`` (None: use ``t``).

    The step is rounded down to span the interval exactly with equal steps, so the
    final state is a grid point and leapfrog keeps its uniform step.
    """
    if step_size is None:
        return None
    span = abs(ts[-1] - ts[0])
    return max(1, math.ceil(span / step_size - 1e-9))


def integrate_fixed(
    rhs: CountingRHS,
    tab: Optional[ButcherTableau],
    t_save: Sequence[Scalar],
    y0: torch.Tensor,
    f0: torch.Tensor,
    opts: SolverOptions,
    counters: Counters,
    record: Record = None,
    check_finite_every_step: bool = False,
) -> List[torch.Tensor]:
    """Fixed-step RK (``tab``) or leapfrog (``tab=None``) loop.

    Grid: the save times themselves, or with ``step_size`` equal steps spanning the
    interval; save times inside a step come from cubic Hermite interpolation.
    """
    ts = [as_float(x) for x in t_save]
    n = fixed_grid(ts, opts.step_size)
    if opts.grid_constructor is not None:
        grid = _constructed_grid(opts.grid_constructor, rhs, y0, t_save, ts)
        if tab is None:
            _require_uniform([as_float(x) for x in grid])
        if len(grid) - 1 > opts.max_num_steps:
            raise MaxStepsExceededError(
                f"options['grid_constructor'] gave {len(grid) - 1} steps, more than "
                f"max_num_steps={opts.max_num_steps}: raise options['max_num_steps']."
            )
    elif n is None:
        grid: List[Scalar] = list(t_save)
        if tab is None:
            _require_uniform(ts)
        if len(ts) - 1 > opts.max_num_steps:
            raise MaxStepsExceededError(
                f"the grid t has {len(ts) - 1} steps, more than max_num_steps={opts.max_num_steps}: "
                "raise options['max_num_steps'] or pass fewer save times."
            )
    else:
        if n > opts.max_num_steps:
            raise MaxStepsExceededError(
                f"step_size={opts.step_size:g} needs {n} steps over [{ts[0]:g}, {ts[-1]:g}], more than "
                f"max_num_steps={opts.max_num_steps}: raise options['max_num_steps'] or the step size."
            )
        t0, t1 = t_save[0], t_save[-1]
        grid = [t0 + (t1 - t0) * (j / n) for j in range(n)] + [t1]
    grid_f = [as_float(x) for x in grid]
    if n is not None and any(b == a for a, b in zip(grid_f, grid_f[1:])):
        # t0 + h == t0 in floating point: the steps would leave y unchanged, silently.
        raise StepSizeUnderflowError(
            f"step_size={opts.step_size:g} is below the resolution of the times near t={ts[0]:.6g} "
            "(t + h == t in float64), so the steps would make no progress: use a larger step_size, "
            "or shift the time origin (solve on t - t[0])."
        )
    direction = 1.0 if ts[-1] > ts[0] else -1.0
    ys: List[Optional[torch.Tensor]] = [y0] + [None] * (len(ts) - 1)
    i = 1
    y, k0 = y0, f0
    y_prev: Optional[torch.Tensor] = None
    cb = _callbacks.of(rhs)
    for j in range(len(grid) - 1):
        t, t_next = grid[j], grid[j + 1]
        h = t_next - t
        if cb.step is not None:
            cb.step(t, y, h)
        if tab is None:
            if y_prev is None:  # Euler start
                y_next, ks = y + in_dtype_of(h, y) * k0, [k0]
            else:
                y_next, fj = leapfrog_step(rhs, t, y_prev, y, h)
                ks = [fj]
        else:
            y_next, ks, _ = rk_step(rhs, tab, t, y, h, None if opts.perturb else k0,
                                    perturb_start=opts.perturb, perturb_end=opts.perturb)
        saves, i = _saves_in_step(t_save, ts, i, t, h, grid_f[j + 1], direction, True)
        f_next = LazyRHS(rhs, t_next, y_next)

        if opts.interp == "linear":
            for index, theta in saves:
                ys[index] = y_next if isinstance(theta, float) and theta == 1.0 else y + theta * (y_next - y)
        else:
            _serve(saves, ys, None, h, y, y_next, ks, f_next)
        if record is not None:
            record(AcceptedStep(t, h, y, saves, y_prev, ks=ks, perturb=(opts.perturb, opts.perturb)))
        counters.n_steps += 1
        if check_finite_every_step:
            _check_finite(y_next, grid_f[j + 1], "the state")
        y_prev, y = y, y_next
        k0 = f_next.value
    return ys  # type: ignore[return-value]


def _constructed_grid(constructor: Callable, rhs: "CountingRHS", y0: torch.Tensor, t_save: Sequence[Scalar],
                      ts: Sequence[float]) -> List[Scalar]:
    """The step points ``options['grid_constructor'](func, y0, t)`` returns, checked.
    ``t`` is handed over in its own direction (decreasing for a backward solve)."""
    if any(isinstance(x, torch.Tensor) for x in t_save):
        t = torch.stack([x if isinstance(x, torch.Tensor) else torch.tensor(x) for x in t_save])
    else:
        t = torch.tensor(ts, dtype=torch.float64, device=y0.device)
    grid = constructor(rhs.func, y0, t)
    if not isinstance(grid, torch.Tensor) or grid.dim() != 1 or grid.numel() < 2:
        raise InvalidProblemError("options['grid_constructor'] must return a 1-D tensor of at least 2 step points")
    g = [float(x) for x in grid.detach().cpu().tolist()]
    tol = 1e-6 * max(1.0, abs(ts[0]), abs(ts[-1]))  # the grid may come back in float32
    if abs(g[0] - ts[0]) > tol or abs(g[-1] - ts[-1]) > tol:
        raise InvalidProblemError(
            f"options['grid_constructor'] returned a grid from {g[0]:g} to {g[-1]:g}; it must start at "
            f"t[0]={ts[0]:g} and end at t[-1]={ts[-1]:g}"
        )
    direction = 1.0 if ts[-1] > ts[0] else -1.0
    if any(direction * (b - a) <= 0 for a, b in zip(g[:-1], g[1:])):
        raise InvalidProblemError("options['grid_constructor'] must return strictly monotonic step points, in t's direction")
    # The ends are the save times themselves, so the first and last states sit on them exactly.
    inner: List[Scalar] = list(grid.unbind(0)[1:-1]) if grid.requires_grad else g[1:-1]
    return [t_save[0], *inner, t_save[-1]]


def _require_uniform(ts: Sequence[float]) -> None:
    steps = [b - a for a, b in zip(ts[:-1], ts[1:])]
    if max(steps) - min(steps) > 1e-6 * max(abs(s) for s in steps):
        raise MissingStepSizeError(
            "leapfrog is a two-step method and needs equal steps, but the save times t are "
            "not equally spaced: pass options={'step_size': h} (save times are then interpolated)."
        )
