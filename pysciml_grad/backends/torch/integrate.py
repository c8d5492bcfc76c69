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
    MissingStepSizeError,
    MaxStepsExceededError,
    NonFiniteStateError,
    StepSizeUnderflowError,
)
from .control import PIController, SolverOptions, initial_step
from .stepping import dense_eval, error_ratio, leapfrog_step, rk_step
from .tableaus import ButcherTableau

Scalar = Union[float, torch.Tensor]


class CountingRHS:
    """Wraps ``func(t, y)``: counts evaluations, hands ``func`` a 0-d time tensor."""

    def __init__(self, func: Callable, dtype: torch.dtype, device: torch.device):
        self.func = func
        self.dtype = dtype
        self.device = device
        self.nfe = 0

    def __call__(self, t: Scalar, y: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        if not isinstance(t, torch.Tensor):
            t = torch.full((), t, dtype=self.dtype, device=self.device)
        return self.func(t, y)


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
    if not bool(torch.isfinite(y).all()):
        raise NonFiniteStateError(
            f"{what} became NaN/inf at t={t_reached:.6g}. The solution blows up or func "
            "produces NaN there: check func and its parameters, shorten the interval, or "
            "use a stiff solver (backend='julia', method='Rodas5P')."
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
    for index, theta in saves:
        if isinstance(theta, float) and theta == 1.0:
            ys[index] = y_next
        else:
            ys[index] = dense_eval(tab, theta, h, y, y_next, ks, f_next)


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


def integrate_adaptive(
    rhs: CountingRHS,
    tab: ButcherTableau,
    t_save: Sequence[Scalar],
    y0: torch.Tensor,
    f0: torch.Tensor,
    rtol: float,
    atol: float,
    opts: SolverOptions,
    differentiate_control: bool,
    counters: Counters,
    record: Record = None,
    ratio_fn: Optional[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = None,
    until: Until = None,
) -> List[torch.Tensor]:
    """Embedded-RK loop with PI control; returns the states at ``t_save``.

    ``differentiate_control``: keep the error ratio and step sizes in the autograd
    graph (DirectAD). Otherwise step sizes are Python floats, i.e. constants.
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
    t: Scalar = t_save[0] if differentiate_control else ts[0]
    t_end: Scalar = t_save[-1] if differentiate_control else ts[-1]
    y, k0 = y0, f0
    if opts.first_step is not None:
        h: Scalar = direction * opts.first_step
    else:
        with torch.set_grad_enabled(differentiate_control and torch.is_grad_enabled()):
            h = initial_step(rhs, t, y0, f0, tab.order, rtol, atol, direction)
        if not differentiate_control:
            h = float(h)
    h = _limit(h, opts.max_step)
    ys: List[Optional[torch.Tensor]] = [y0] + [None] * (len(ts) - 1)
    prev_ratio: Scalar = 1.0
    i = 1
    trials = 0
    last_trial_nonfinite = False
    while i < len(ts):
        trials += 1
        if trials > opts.max_num_steps:
            raise MaxStepsExceededError(
                f"max_num_steps={opts.max_num_steps} steps taken and t={as_float(t):.6g} reached, "
                f"short of t={ts[-1]:.6g}. Raise options['max_num_steps'], loosen rtol/atol, "
                "or, for a stiff problem, use backend='julia' with method='Rodas5P'."
            )
        t_f, h_f = as_float(t), as_float(h)
        last = direction * (t_f + h_f - ts[-1]) >= 0
        if last:
            h = t_end - t
            h_f = ts[-1] - t_f
        if abs(h_f) <= max(opts.min_step, 4 * math.ulp(abs(t_f))):
            if last_trial_nonfinite:
                raise NonFiniteStateError(
                    f"func(t, y) keeps producing NaN/inf near t={t_f:.6g}, even with step size "
                    f"{abs(h_f):.3g}: check func and its parameters there (division by zero, log or "
                    "sqrt of a negative number, overflow)."
                )
            raise StepSizeUnderflowError(
                f"step size {abs(h_f):.3g} underflowed (min_step={opts.min_step:g}) at t={t_f:.6g}, "
                f"|y|max={as_float(y.abs().max()):.3g}: the solution may blow up in finite time, or the "
                "problem is stiff. Shorten the interval, loosen rtol/atol, or use a stiff solver "
                "(backend='julia', method='Rodas5P')."
            )
        y_next, ks, err = rk_step(rhs, tab, t, y, h, k0)
        with torch.set_grad_enabled(differentiate_control and torch.is_grad_enabled()):
            if ratio_fn is None:
                ratio_t = error_ratio(err, y, y_next, rtol, atol)
            else:
                ratio_t = ratio_fn(err, y, y_next)
        ratio_f = as_float(ratio_t)
        ratio: Scalar = ratio_t if differentiate_control else ratio_f
        last_trial_nonfinite = not math.isfinite(ratio_f)
        if last_trial_nonfinite:
            # Too large a trial step can overflow; shrink and retry, the underflow guard ends it.
            _check_finite(ks[0], t_f, "func(t, y) at an accepted state")
            counters.n_rejected += 1
            h = h * opts.dfactor
            continue
        accepted = ratio_f <= 1.0
        if accepted:
            t_next: Scalar = t_end if last else t + h
            t_next_f = ts[-1] if last else t_f + h_f
            saves, i = _saves_in_step(t_save if differentiate_control else ts, ts, i, t, h, t_next_f, direction, True)
            f_next_cache: List[torch.Tensor] = [ks[-1]] if tab.fsal else []

            def f_next() -> torch.Tensor:
                if not f_next_cache:
                    f_next_cache.append(rhs(t_next, y_next))
                return f_next_cache[0]

            _serve(saves, ys, tab, h, y, y_next, ks, f_next)
            step = AcceptedStep(t, h, y, saves, ks=ks)
            if record is not None:
                record(step)
            counters.n_steps += 1
            if until is not None and until(step, t_next, y_next, f_next):
                break
            t, y = t_next, y_next
            k0 = f_next_cache[0] if f_next_cache else None
        else:
            counters.n_rejected += 1
        h = _limit(h * controller.factor(ratio, prev_ratio, accepted), opts.max_step)
        if accepted:
            # Clamped on both paths: an exactly zero error (e.g. f = 0) must not zero the PI factor.
            prev_ratio = max(ratio, 1e-10) if not differentiate_control else ratio.clamp(min=1e-10)
    return ys  # type: ignore[return-value]


def _user_norm_ratio(norm: Callable, rtol: float, atol: float):
    def ratio(err: torch.Tensor, y: torch.Tensor, y_next: torch.Tensor) -> torch.Tensor:
        scale = torch.maximum(y.abs(), y_next.abs()).mul_(rtol).add_(atol)
        return torch.as_tensor(norm(err / scale)).abs()

    return ratio


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
    if n is None:
        grid: List[Scalar] = list(t_save)
        if tab is None:
            _require_uniform(ts)
    else:
        if n > opts.max_num_steps:
            raise MaxStepsExceededError(
                f"step_size={opts.step_size:g} needs {n} steps over [{ts[0]:g}, {ts[-1]:g}], more than "
                f"max_num_steps={opts.max_num_steps}: raise options['max_num_steps'] or the step size."
            )
        t0, t1 = t_save[0], t_save[-1]
        grid = [t0 + (t1 - t0) * (j / n) for j in range(n)] + [t1]
    grid_f = [as_float(x) for x in grid]
    direction = 1.0 if ts[-1] > ts[0] else -1.0
    ys: List[Optional[torch.Tensor]] = [y0] + [None] * (len(ts) - 1)
    i = 1
    y, k0 = y0, f0
    y_prev: Optional[torch.Tensor] = None
    for j in range(len(grid) - 1):
        t, t_next = grid[j], grid[j + 1]
        h = t_next - t
        if tab is None:
            if y_prev is None:  # Euler start
                y_next, ks = y + h * k0, [k0]
            else:
                y_next, fj = leapfrog_step(rhs, t, y_prev, y, h)
                ks = [fj]
        else:
            y_next, ks, _ = rk_step(rhs, tab, t, y, h, k0)
        saves, i = _saves_in_step(t_save, ts, i, t, h, grid_f[j + 1], direction, True)
        f_cache: List[torch.Tensor] = []

        def f_next() -> torch.Tensor:
            if not f_cache:
                f_cache.append(rhs(t_next, y_next))
            return f_cache[0]

        for index, theta in saves:
            ys[index] = y_next if (isinstance(theta, float) and theta == 1.0) else dense_eval(None, theta, h, y, y_next, ks, f_next)
        if record is not None:
            record(AcceptedStep(t, h, y, saves, y_prev, ks=ks))
        counters.n_steps += 1
        if check_finite_every_step:
            _check_finite(y_next, grid_f[j + 1], "the state")
        y_prev, y = y, y_next
        k0 = f_cache[0] if f_cache else None
    return ys  # type: ignore[return-value]


def _require_uniform(ts: Sequence[float]) -> None:
    steps = [b - a for a, b in zip(ts[:-1], ts[1:])]
    if max(steps) - min(steps) > 1e-6 * max(abs(s) for s in steps):
        raise MissingStepSizeError(
            "leapfrog is a two-step method and needs equal steps, but the save times t are "
            "not equally spaced: pass options={'step_size': h} (save times are then interpolated)."
        )
