"""Replaying recorded accepted steps: the discrete forward map, one step at a time.

The forward loops (``integrate.py``) report each accepted step as (t_n, h_n, y_n, the
save points it serves). Replaying step n from y_n with the same float t_n, h_n runs
the same operations on the same inputs, so it reproduces y_{n+1} and the served dense
outputs bitwise. The discrete adjoints replay with autograd (one step's graph at a
time); the interpolating adjoints replay without a graph to rebuild dense output.

A *state* is the tuple the step map acts on: ``(y_n,)`` for Runge-Kutta methods and
``(y_{n-1}, y_n)`` for the two-step leapfrog (``y_{-1} = None``: the first step is the
Euler start), so leapfrog is a one-step map on pairs (ANODE's treatment).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch

from ..stepping import dense_eval, dense_eval_many, in_dtype_of, leapfrog_step, rk_step
from ..tableaus import ButcherTableau

Scalar = Union[float, torch.Tensor]
State = Tuple[Optional[torch.Tensor], ...]
RHS = Callable[[Scalar, torch.Tensor], torch.Tensor]


@dataclass
class StepMeta:
    """The scalars of one accepted step: start time, step size, served saves (index, theta),
    and whether its start / end stages were evaluated one ulp inside it (``perturb``)."""

    t: float
    h: float
    saves: List[Tuple[int, float]]
    perturb: Tuple[bool, bool] = (False, False)


def without_fsal_stage(tab: ButcherTableau) -> ButcherTableau:
    """The table minus its FSAL stage, for replays that need only y_{n+1}.

    An FSAL method's last stage is evaluated *at* y_{n+1} = y_n + h sum a_{s,j} k_j, so
    that combination with b = a_s gives y_{n+1} by the same operations without the
    extra evaluation of func (one of 7 for dopri5/tsit5, 1 of 4 for bosh3).
    """
    if not isinstance(tab, ButcherTableau):
        return tab  # an implicit method: no FSAL stage, no error estimate
    if not tab.fsal:
        return replace(tab, b_err=None)
    return replace(tab, c=tab.c[:-1], a=tab.a[:-1], b=tab.a[-1], b_err=None, fsal=False, dense=None)


# One definition of the dense output for the forward loop and every replay.
interpolate = dense_eval


def step(
    rhs: RHS,
    tab: Optional[ButcherTableau],
    short_tab: Optional[ButcherTableau],
    t: Scalar,
    h: Scalar,
    t_next: Scalar,
    state: State,
    dense_thetas: Sequence[Scalar] = (),
    perturb: Tuple[bool, bool] = (False, False),
) -> Tuple[State, Optional[torch.Tensor], List[torch.Tensor]]:
    """One step of the discrete map from ``state``; returns (next state, the dense outputs
    at ``dense_thetas`` as one ``(len(dense_thetas), *y.shape)`` tensor or None without
    any, stage derivatives ``ks``). ``tab is None``: leapfrog.
    ``perturb``: the forward step's (start, end) one-ulp stage shifts, replayed as they were."""
    if tab is None:
        y_prev, y = state
        if y_prev is None:  # the Euler start, as in integrate_fixed
            k0 = rhs(t, y)
            y_next, ks = y + in_dtype_of(h, y) * k0, [k0]
        else:
            y_next, fj = leapfrog_step(rhs, t, y_prev, y, h)
            ks = [fj]
        nxt: State = (y, y_next)
        use_tab = None
    else:
        (y,) = state
        use_tab = tab if dense_thetas else short_tab
        y_next, ks, _ = rk_step(rhs, use_tab, t, y, h, perturb_start=perturb[0], perturb_end=perturb[1])
        nxt = (y_next,)
    if not dense_thetas:
        return nxt, None, ks
    cache: List[torch.Tensor] = []

    def f_next() -> torch.Tensor:
        if not cache:
            cache.append(ks[-1] if (tab is not None and tab.fsal) else rhs(t_next, y_next))
        return cache[0]

    # As the forward loop served them (integrate._serve), so the values agree bitwise: one
    # save by dense_eval, several by one dense_eval_many; either way one (n, *y.shape) block.
    if len(dense_thetas) == 1:
        values = interpolate(use_tab, dense_thetas[0], h, y, y_next, ks, f_next).unsqueeze(0)
    else:
        values = dense_eval_many(use_tab, list(dense_thetas), h, y, y_next, ks, f_next)
    return nxt, values, ks


def initial_state(y0: torch.Tensor, leapfrog: bool) -> State:
    return (None, y0) if leapfrog else (y0,)
