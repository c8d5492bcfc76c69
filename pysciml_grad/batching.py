"""Per-sample save times: ``t`` of shape ``(B, T)`` (issue 13).

Row b of ``t`` holds sample b's save times (batch = first dimension of y0), strictly
monotonic, every row in the same direction; a shorter row is padded with NaN at its
end. The result has shape ``(T, B, *y0.shape[1:])`` like the 1-D API's
``(len(t), *y0.shape)``, so ``ys[i]`` is still "the i-th save of every sample"; padded
entries are NaN (mask them out of the loss).

How it is solved, exactly (one batched solve, then a gather):

* every row starts at the same time t0: solve once on the union of all rows' valid
  times and gather each sample's own times from it;
* rows start at different times t0_b (their spans [t0_b, t1_b] differ): each sample is
  solved in its own rescaled time s in [0, 1], t = t0_b + s (t1_b - t0_b), where
  dy_b/ds = (t1_b - t0_b) f(t0_b + s (t1_b - t0_b), y_b) — the same solution curve,
  reparametrised (no approximation). ``func`` then receives ``t`` as a ``(B,)`` tensor of
  every sample's own time (an autonomous func does not notice); the union is taken of the
  rescaled times.

Gradients with respect to a 2-D ``t`` (every sensealg): for a save at t_{b,i}, i >= 1,

    dL/dt_{b,i} = <dL/dy_b(t_{b,i}), f(t_{b,i}, y_b(t_{b,i}))>,

since y_b(t) solves y' = f(t, y); and for the start of the span t_{b,0} = t0_b, from
dy_b(t)/dt0_b = -Phi_b(t, t0_b) f(t0_b, y0_b) (the solution's dependence on its initial
time; y_b(t0_b) = y0_b itself does not move),

    dL/dt0_b = -<lambda_b, f(t0_b, y0_b)>,   lambda_b = dL/dy0_b through the solve,

where lambda_b is what the sensealg returns for y0 anyway. Both hold on the exact solution
and are evaluated on the computed one (so they agree with finite differences of the solve
to its tolerance, whichever sensealg; the span end t1_b is just its last save). They need
f only at the saves: its T evaluations (one per column of ``t``, ``func`` receiving ``t``
as a ``(B,)`` tensor of each sample's own time, padded entries masked) run in the backward
pass and only when ``t`` requires grad. Second derivatives with respect to ``t`` are not
available (the backward pass evaluates f without a graph).
"""

from __future__ import annotations

from typing import Any, Callable, Tuple

import torch

from .errors import InvalidTimeError, UnknownOptionError


def check_per_sample_times(t: torch.Tensor, y0: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    """Validate a ``(B, T)`` t; return (t detached, lengths (B,) of the valid prefixes)."""
    if not isinstance(y0, torch.Tensor):
        raise InvalidTimeError(
            "per-sample save times (t of shape (B, T)) need y0 to be one tensor whose first dimension "
            f"is the batch, got {type(y0).__name__}; use a 1-D t for structured states"
        )
    if not t.is_floating_point():
        raise InvalidTimeError(f"t has dtype {t.dtype}; save times must be floating point, e.g. t.double()")
    if y0.dim() == 0 or t.shape[0] != y0.shape[0]:
        raise InvalidTimeError(
            f"t of shape {tuple(t.shape)} gives per-sample save times for {t.shape[0]} samples, but y0 has "
            f"shape {tuple(y0.shape)} (its first dimension is the batch); they must agree"
        )
    t = t.detach().to(device=y0.device)
    nan = torch.isnan(t)
    if bool(torch.isinf(t).any()):
        raise InvalidTimeError("t contains inf; save times must be finite (pad ragged rows with NaN)")
    # NaN only as padding at the end of a row: once NaN, NaN to the end.
    bad = nan[:, :-1] & ~nan[:, 1:]
    if bool(bad.any()):
        b, k = (int(v) for v in bad.nonzero()[0])
        raise InvalidTimeError(
            f"row {b} of t has NaN at position {k} followed by a number: NaN may only pad the end of a "
            "row (put each sample's valid times first)"
        )
    lengths = (~nan).sum(1)
    if bool((lengths < 2).any()):
        b = int((lengths < 2).nonzero()[0])
        raise InvalidTimeError(f"row {b} of t has {int(lengths[b])} valid time(s); each sample needs at least 2")
    dt = t[:, 1:] - t[:, :-1]
    valid = ~nan[:, 1:]
    if bool(((dt == 0) & valid).any()):
        b, k = (int(v) for v in ((dt == 0) & valid).nonzero()[0])
        raise InvalidTimeError(f"row {b} of t repeats the time {float(t[b, k]):g} at positions {k}, {k + 1}; remove duplicates")
    direction = torch.sign(dt[:, 0])
    if not bool((direction == direction[0]).all()):
        b = int((direction != direction[0]).nonzero()[0])
        raise InvalidTimeError(
            f"row {b} of t runs {'forward' if direction[b] > 0 else 'backward'} in time but row 0 runs "
            f"{'forward' if direction[0] > 0 else 'backward'}; all samples must integrate in the same direction"
        )
    wrong = (torch.sign(dt) != direction[0]) & valid
    if bool(wrong.any()):
        b, k = (int(v) for v in wrong.nonzero()[0])
        raise InvalidTimeError(
            f"row {b} of t is not strictly monotonic: it changes direction at positions {k}, {k + 1} "
            f"({float(t[b, k]):g}, {float(t[b, k + 1]):g}); sort each row"
        )
    return t, lengths


class PerSampleSteps:
    """Each sample of the batch takes its own steps: ``options={"steps": psg.PerSampleSteps()}``.

    Sample b (the first dimension of y0) has its own time, step size, error ratio (the RMS
    of its own scaled error) and accept/reject decision, as if it were solved alone
    (torchode's mode); finished samples are frozen by masked updates, and the loop makes
    one host synchronisation per trial step for the whole batch. ``func(t, y)`` receives
    ``t`` as a ``(B,)`` tensor of every sample's own time and must treat the samples
    independently. Works with 1-D ``t`` (shared save times) and with per-sample ``t`` of
    shape ``(B, T)``; adaptive Runge-Kutta methods; ``DirectAD()``,
    ``CheckpointAdjoint()`` (exact: each sample replays its own accepted steps), and the
    continuous adjoints ``BacksolveAdjoint``, ``InterpolatingAdjoint`` (with or without
    checkpointing) and ``QuadratureAdjoint``, whose backward solve steps per sample too.
    The engine is ``backends/torch/persample.py`` and ``persample_adjoint.py``.

    ``compact=True``: finished samples stop costing. Whenever the number of unfinished
    samples has fallen to half the rows func was last evaluated on, func is evaluated on the
    unfinished rows only (gathered, results scattered back; the working set is read from
    the trial's one host transfer, and it shrinks at most log2(B) times, so no per-trial
    reallocation). func then receives fewer rows than y0 has, so it must not index by batch
    row (a per-sample tensor of shape (B, ...) captured in func would no longer line up):
    that is why it is opt-in. Gradients are those of the uncompacted loop (finished rows
    take a zero step either way); the backward passes are compacted the same way.
    """

    def __init__(self, compact: bool = False):
        if not isinstance(compact, bool):
            raise UnknownOptionError(f"PerSampleSteps(compact={compact!r}): compact must be True or False")
        self.compact = compact

    def __repr__(self) -> str:
        return "PerSampleSteps(compact=True)" if self.compact else "PerSampleSteps()"


def _per_sample_steps_solve(func, y0, t, lengths, method="dopri5", rtol=1e-7, atol=1e-9, sensealg=None,
                            backend="torch", options=None, params=None):
    """``t`` validated (B, T) on y0's device; returns the (T, B, ...) result [, stats]."""
    from . import sensealg as sa
    from .backends.torch import persample
    from .backends.torch.control import SolverOptions
    from .backends.torch.tableaus import TABLEAUS
    from .errors import UnknownMethodError, UnsupportedSensitivityError
    from .problem import SolveStats

    if backend != "torch":
        raise UnsupportedSensitivityError(
            f"options['steps']=PerSampleSteps() is a feature of the torch engine, not backend={backend!r}; "
            "use backend='torch'"
        )
    if method not in persample.ADAPTIVE:
        raise UnknownMethodError(
            f"PerSampleSteps needs an adaptive Runge-Kutta method, one of {list(persample.ADAPTIVE)}; got {method!r}"
        )
    extra = sorted(set(options) - set(persample.OPTIONS))
    if extra:
        raise UnknownOptionError(
            f"option(s) {extra} are not available with PerSampleSteps; it takes {list(persample.OPTIONS)}"
        )
    sensealg = sa.CheckpointAdjoint() if sensealg is None else sensealg
    continuous = (sa.BacksolveAdjoint, sa.InterpolatingAdjoint, sa.QuadratureAdjoint)
    ok = (isinstance(sensealg, sa.DirectAD) and not sensealg.through_controller) or (
        isinstance(sensealg, sa.CheckpointAdjoint)) or isinstance(sensealg, continuous)
    if not ok:
        raise UnsupportedSensitivityError(
            f"sensealg={sensealg!r} is not available with PerSampleSteps: use psg.CheckpointAdjoint() "
            "(exact, stores every trial's state), psg.DirectAD(), or a continuous adjoint "
            "(BacksolveAdjoint, InterpolatingAdjoint, QuadratureAdjoint)"
        )
    adjoint_tab = None
    if isinstance(sensealg, continuous):
        adjoint_method = getattr(sensealg, "adjoint_method", None) or method
        if adjoint_method not in persample.ADAPTIVE:
            raise UnknownMethodError(
                f"{type(sensealg).__name__}(adjoint_method={adjoint_method!r}) with PerSampleSteps: the backward "
                f"solve steps per sample too and needs an adaptive Runge-Kutta method, one of {list(persample.ADAPTIVE)}"
            )
        adjoint_tab = TABLEAUS[adjoint_method]
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if isinstance(tol, torch.Tensor) and tol.numel() != 1:
            raise InvalidTimeError(f"PerSampleSteps takes a scalar {name}, got a tensor of shape {tuple(tol.shape)}")
    rtol, atol = float(rtol), float(atol)
    opts = SolverOptions.from_user({k: v for k, v in options.items() if k != "steps"})
    budget = sensealg.max_checkpoints if isinstance(sensealg, sa.CheckpointAdjoint) else None
    solver = persample.PerSampleSolver(func, TABLEAUS[method], t.to(torch.float64), lengths, rtol, atol, opts, budget,
                                       options["steps"].compact)
    ps = list(params or [])
    if isinstance(func, torch.nn.Module):
        ps = list(func.parameters()) + [p for p in ps if all(p is not q for q in func.parameters())]
    if isinstance(sensealg, sa.DirectAD):
        blocks, rec = solver.run(y0, None)
        ys = persample.assemble(blocks, y0, t.shape[1])
    elif adjoint_tab is not None:
        from .backends.torch import persample_adjoint

        interpolate = not isinstance(sensealg, sa.BacksolveAdjoint)
        spec = persample_adjoint.Spec(
            type(sensealg).__name__, interpolate, bool(getattr(sensealg, "checkpointing", False)), adjoint_tab,
            float(sensealg.adjoint_rtol) if sensealg.adjoint_rtol is not None else rtol,
            float(sensealg.adjoint_atol) if sensealg.adjoint_atol is not None else atol)
        ys = persample_adjoint.ContinuousAdjoint.apply(solver, spec, y0, *ps)
        rec = solver.rec
    else:
        ys = persample._Checkpointed.apply(solver, y0, *ps)
        rec = solver.rec
    if not opts.return_stats:
        return ys
    accepted = int(rec.n_accepted_t) if rec.n_accepted_t is not None else 0
    tried = int(rec.n_active_t) if rec.n_active_t is not None else 0
    stats = SolveStats(nfe=rec.nfe, n_steps=accepted, n_rejected=tried - accepted)
    stats.extra["trials"] = rec.n_trials
    stats.extra["compactions"] = rec.compactions
    solver.stats = stats  # the backward pass adds what it measured (held states, backsolve's drift)
    if isinstance(sensealg, sa.CheckpointAdjoint):
        stats.extra["stored_trial_states"] = solver.stored_states
    return ys, stats


class RescaledFunc:
    """f in each sample's rescaled time s in [0, 1]: ``span_b * f(t0_b + s span_b, y)_b``."""

    def __init__(self, func: Callable, t0: torch.Tensor, span: torch.Tensor, ndim: int):
        self.func = func
        self.t0 = t0
        self.span = span
        self.scale = span.view(-1, *([1] * (ndim - 1)))

    @property
    def __wrapped__(self) -> Callable:  # functools' convention: the user's func, for per-func caches
        return self.func

    def __call__(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        tau = self.t0 + s * self.span
        return self.func(tau, y) * self.scale


class _InitialTime(torch.autograd.Function):
    """Identity on y0 whose backward adds dL/dt0_b = -<dL/dy0_b, f(t0_b, y0_b)>."""

    @staticmethod
    def forward(ctx, y0, t0, func):
        ctx.func = func
        ctx.save_for_backward(y0.detach(), t0.detach())
        return y0.view_as(y0)

    @staticmethod
    def backward(ctx, g):
        y0, t0 = ctx.saved_tensors
        with torch.no_grad():
            f0 = ctx.func(t0.to(device=y0.device, dtype=y0.dtype), y0)
        g_t0 = -(g * f0).reshape(len(g), -1).sum(1)
        return g, g_t0.to(device=t0.device, dtype=t0.dtype), None


class _SaveTimes(torch.autograd.Function):
    """Identity on the (T, B, ...) result whose backward adds dL/dt_{b,i} =
    <dL/dy_b(t_{b,i}), f(t_{b,i}, y_b(t_{b,i}))> at every valid entry of t."""

    @staticmethod
    def forward(ctx, ys, t, valid, func):
        ctx.func = func
        ctx.save_for_backward(ys.detach(), t.detach(), valid)
        return ys.view_as(ys)

    @staticmethod
    def backward(ctx, g):
        ys, t_user, valid = ctx.saved_tensors
        t = t_user.to(ys.device)
        g_t = torch.zeros_like(t)
        shape = (-1, *([1] * (ys.dim() - 2)))
        with torch.no_grad():
            for i in range(t.shape[1]):
                ok = valid[:, i]
                if not bool(ok.any()):
                    continue
                # Padded entries get sample b's start (t0_b, y_b(t0_b)): finite, then masked.
                t_i = torch.where(ok, t[:, i], t[:, 0]).to(ys.dtype)
                y_i = torch.where(ok.view(shape), ys[i], ys[0])
                f_i = ctx.func(t_i, y_i)
                g_t[:, i] = torch.where(ok, (g[i] * f_i).reshape(len(ok), -1).sum(1).to(t.dtype), 0.0)
        return g, g_t.to(t_user.device), None, None


def odeint_per_sample_times(odeint: Callable, func: Callable, y0: torch.Tensor, t: torch.Tensor, **kwargs):
    """``odeint`` with ``t`` of shape ``(B, T)``: see the module docstring."""
    t_user = t
    want_t = t.requires_grad and torch.is_grad_enabled()
    t, lengths = check_per_sample_times(t, y0)
    if want_t:
        y0 = _InitialTime.apply(y0, t_user[:, 0], func)
    steps = (kwargs.get("options") or {}).get("steps")
    if steps is not None:
        if not isinstance(steps, PerSampleSteps):
            raise UnknownOptionError(f"options['steps'] must be psg.PerSampleSteps() (or absent: one shared step size), got {steps!r}")
        out = _per_sample_steps_solve(func, y0, t, lengths, **kwargs)
        ys, stats = out if isinstance(out, tuple) else (out, None)
        if want_t:
            ys = _SaveTimes.apply(ys, t_user, ~torch.isnan(t), func)
        return (ys, stats) if stats is not None else ys
    B, T = t.shape
    rows = torch.arange(B, device=t.device)
    t0 = t[:, 0]
    t1 = t[rows, lengths - 1]
    valid_user = ~torch.isnan(t)
    params = list(kwargs.pop("params", None) or [])
    if isinstance(func, torch.nn.Module):
        params = list(func.parameters()) + params
    if bool((t0 == t0[0]).all()):
        times, solve_func = t, func
    else:
        span = (t1 - t0).to(y0.dtype)
        times = (t - t0[:, None]) / (t1 - t0)[:, None]
        times[rows, lengths - 1] = 1.0  # exact end, so the union holds 1.0 once
        solve_func = RescaledFunc(func, t0.to(y0.dtype), span, y0.dim())
    valid = ~torch.isnan(times)
    union = torch.unique(times[valid])  # sorted ascending
    descending = bool(times[0, 1] < times[0, 0])  # rescaled s always ascends
    if descending:
        union = union.flip(0)
    out = odeint(solve_func, y0, union, params=params or None, **kwargs)
    ys, stats = out if isinstance(out, tuple) else (out, None)
    # position of every valid time in the union (ascending search, then mirrored)
    asc = union.flip(0) if descending else union
    idx = torch.searchsorted(asc, torch.where(valid, times, asc[0]).contiguous())
    if descending:
        idx = len(union) - 1 - idx
    gathered = ys[idx.T, rows[None, :]]  # (T, B, *y0.shape[1:])
    mask = valid.T.reshape(T, B, *([1] * (y0.dim() - 1)))
    result = torch.where(mask, gathered, torch.full_like(gathered, float("nan")))
    if want_t:
        result = _SaveTimes.apply(result, t_user, valid_user, func)
    return (result, stats) if stats is not None else result
