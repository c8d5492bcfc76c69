"""Multiple-shooting loss: split the data into overlapping groups, solve each from its own
initial state, and penalise the jumps between consecutive groups.

Semantics follow DiffEqFlux.jl's ``multiple_shoot`` and ``group_ranges``
(SciML/DiffEqFlux.jl, ``src/multiple_shooting.jl`` at commit 345d61cf037bac4ec586f4884cf0ecd0d617a4e5):

* the ``n`` data points are cut into groups of ``group_size`` points that share their end
  points (``group_ranges(10, 5) -> [0:5, 4:9, 8:10]`` in 0-based half-open ranges, the
  last group holding what remains);
* group k is solved over ``t[first(k)] .. t[last(k)]`` from ``data[first(k)]`` ("data
  shooting"), saved at that group's times;
* loss = sum_k loss_fn(data[group k], prediction k)
  + continuity_term * sum_{k>=1} continuity_loss(prediction_{k-1}[-1], u0_k),
  with DiffEqFlux's defaults ``continuity_term = 100`` and
  ``continuity_loss = sum |a - b|``;
* ``group_size`` must lie in [2, n].

Two departures, both because torch is not Julia: time is the *first* axis of ``data``
(``odeint`` returns ``(len(t), *y0.shape)``), and ``initial_states=`` lets each group
start from a trainable state instead of the data point. DiffEqFlux's own documentation
says its data shooting "assumes full observability ... and lack of noise"; with noisy
observations a group that starts exactly on a noisy point carries that noise through the
group, so trainable initial states (seeded from the data with
:func:`shooting_initial_states`) are the form to use for noisy data. The continuity term
then ties the end of group k-1 to the trainable start of group k, and the fit term also
compares that start with its (noisy) observation.

Reference: Bock & Plitt (1984), "A multiple shooting algorithm for direct solution of
optimal control problems" (the method); DiffEqFlux.jl (the training-loss form).
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch

from ..errors import InvalidProblemError
from ..solve import odeint


def group_ranges(n: int, group_size: int) -> List[range]:
    """0-based ranges of ``group_size`` points covering ``0..n-1``, consecutive ranges
    sharing one point; the last range holds the remainder (DiffEqFlux ``group_ranges``)."""
    if not isinstance(n, int) or not isinstance(group_size, int):
        raise InvalidProblemError(f"n and group_size must be integers, got {n!r} and {group_size!r}")
    if not 2 <= group_size <= n:
        raise InvalidProblemError(
            f"group_size must lie in [2, number of data points = {n}], got {group_size}; "
            f"group_size={n} is single shooting"
        )
    return [range(i, min(n, i + group_size)) for i in range(0, n - 1, group_size - 1)]


def shooting_initial_states(data: torch.Tensor, group_size: int) -> torch.Tensor:
    """Trainable initial states, one per group, seeded from the data at each group's
    first time: a leaf tensor of shape ``(n_groups, *data.shape[1:])``. Hand it to the
    optimizer together with the model's parameters."""
    _check_data(data)
    starts = [rg[0] for rg in group_ranges(data.shape[0], group_size)]
    return data.detach()[starts].clone().requires_grad_(True)


def _sum_squares(data: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    return ((data - pred) ** 2).sum()


def _sum_abs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().sum()


def multiple_shoot(
    func: Callable,
    data: torch.Tensor,
    t: torch.Tensor,
    group_size: int,
    *,
    loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
    continuity_loss: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
    continuity_term: float = 100.0,
    initial_states: Optional[torch.Tensor] = None,
    batch_groups: bool = False,
    **odeint_kwargs,
) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    """Multiple-shooting loss of ``func`` against ``data`` observed at times ``t``.

    Parameters
    ----------
    func : ``func(t, y) -> dy/dt`` as for :func:`pysciml_grad.odeint`.
    data : tensor ``(len(t), *state_shape)``, time first.
    t : 1-D strictly monotonic save times of ``data``.
    group_size : points per group, in [2, len(t)]; ``len(t)`` is single shooting.
    loss_fn : ``loss_fn(data_k, pred_k) -> scalar``; default sum of squared errors (the
        DiffEqFlux documentation's example).
    continuity_loss : ``continuity_loss(pred_end, u0_next) -> scalar``; default
        ``sum |pred_end - u0_next|`` (DiffEqFlux's default).
    continuity_term : weight of the continuity penalty (DiffEqFlux's default 100).
    initial_states : optional ``(n_groups, *state_shape)`` tensor of group starts (e.g.
        from :func:`shooting_initial_states`, trainable); default: the data points.
    batch_groups : solve the groups that share the same relative time grid (all of them
        on a uniform ``t``, the remainder group aside) as one batched solve from
        ``t - t_start``. Valid only when ``func`` does not depend on ``t`` and maps a
        batch of states ``(n_groups, *state_shape)`` row by row; it replaces
        ``n_groups`` sequential solves by one (one shared adaptive step sequence).
    **odeint_kwargs : passed to every ``odeint`` call (``method``, ``rtol``, ``atol``,
        ``sensealg``, ``params``, ``options``...).

    Returns
    -------
    (loss, predictions) : the scalar loss and the list of per-group predictions, each of
        shape ``(len(group), *state_shape)``.
    """
    _check_data(data)
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.shape[0] != data.shape[0]:
        raise InvalidProblemError(
            f"t must be a 1-D tensor with one time per data point ({data.shape[0]}), got "
            f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}"
        )
    if not continuity_term >= 0:
        raise InvalidProblemError(f"continuity_term must be >= 0, got {continuity_term!r}")
    if (odeint_kwargs.get("options") or {}).get("return_stats"):
        raise InvalidProblemError(
            "multiple_shoot returns (loss, predictions); drop options['return_stats'] "
            "(solve one group with psg.odeint to see its work counts)"
        )
    ranges = group_ranges(data.shape[0], group_size)
    if initial_states is not None and (
        not isinstance(initial_states, torch.Tensor)
        or tuple(initial_states.shape) != (len(ranges), *data.shape[1:])
    ):
        got = tuple(initial_states.shape) if isinstance(initial_states, torch.Tensor) else type(initial_states).__name__
        raise InvalidProblemError(
            f"initial_states must have shape (n_groups={len(ranges)}, *{tuple(data.shape[1:])}), got {got}; "
            "make it with psg.shooting_initial_states(data, group_size)"
        )
    loss_fn = loss_fn or _sum_squares
    continuity_loss = continuity_loss or _sum_abs
    starts = [data[rg[0]] if initial_states is None else initial_states[k] for k, rg in enumerate(ranges)]
    if batch_groups:
        predictions = _batched_predictions(func, starts, t, ranges, odeint_kwargs)
    else:
        predictions = [odeint(func, starts[k], t[rg[0] : rg[-1] + 1], **odeint_kwargs) for k, rg in enumerate(ranges)]
    loss = sum(loss_fn(data[rg[0] : rg[-1] + 1], pred) for rg, pred in zip(ranges, predictions))
    for k in range(1, len(ranges)):
        loss = loss + continuity_term * continuity_loss(predictions[k - 1][-1], starts[k])
    return loss, predictions


def _batched_predictions(func, starts, t, ranges, odeint_kwargs) -> List[torch.Tensor]:
    """Group the ranges by their relative time grid; one batched solve per distinct grid."""
    buckets = {}
    for k, rg in enumerate(ranges):
        rel = t[rg[0] : rg[-1] + 1] - t[rg[0]]
        key = tuple(round(float(v), 12) for v in rel.detach())
        buckets.setdefault(key, (rel, []))[1].append(k)
    predictions: List[Optional[torch.Tensor]] = [None] * len(ranges)
    for rel, members in buckets.values():
        y0 = torch.stack([starts[k] for k in members])
        ys = odeint(func, y0, rel, **odeint_kwargs)  # (len(rel), len(members), *state)
        for i, k in enumerate(members):
            predictions[k] = ys[:, i]
    return predictions


def _check_data(data) -> None:
    if not isinstance(data, torch.Tensor) or data.dim() < 1 or not data.is_floating_point():
        raise InvalidProblemError(
            "data must be a floating tensor of shape (len(t), *state_shape), time first, got "
            f"{tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__}"
        )
