"""Per-sample step sizes: every sample of a batch steps on its own (issue 13).

Sample b has its own time t_b, step h_b, error ratio r_b and accept/reject decision,
as if solved alone (torchode's mode): one *trial* of the loop attempts, for every
unfinished sample at once, the RK step (t_b, y_b) -> (t_b + h_b, y_{b,next}) with
``func`` evaluated on the whole batch with ``t`` a ``(B,)`` tensor of the samples' stage
times; the scaled error r_b = RMS_j(err_bj / (atol + rtol max(|y_bj|, |y_next,bj|))) of each
sample's own entries decides its acceptance (r_b <= 1) and its next step by the
I controller h_b <- h_b clip(safety r_b^(-1/(q+1)), dfactor, ifactor), q the order of the
error estimate (Hairer, Norsett & Wanner I, II.4). Samples past their end are frozen by
masked updates (h_b = 0, never accepted); the loop stops when all are done, the one
host synchronisation per trial (on CPU it costs nothing; on CUDA it is the only one,
and it also brings back which saves the trial served).

Saves: sample b's save times t[b, :] inside its accepted step (t_b, t_b + h_b] are served
from the method's dense output (cubic Hermite without one), all saves of a trial in one
gathered evaluation.

Gradients:
* DirectAD: autograd through the loop (step sizes and acceptances held constant).
* CheckpointAdjoint: the forward keeps every trial's (t, h, accepted, y) without a graph
  (with ``max_checkpoints=k`` only about k/2 of the states y, uniformly spaced by
  ``schedule.OnlineThinning``; the backward pass recomputes the others with the same
  masked step, revolve in the free slots, ``schedule.reverse``, so at most k are held);
  the backward replays trial n from its y_n with autograd,
  y_{n+1} = where(accepted_n, Phi(t_n, h_n, y_n), y_n), and chains the exact
  vector-Jacobian products backwards (Zhuang et al. 2020, ACA; each sample replays
  exactly its own accepted steps, rejected trials pass its state through unchanged).
  The result equals backpropagating through the forward loop (DirectAD) to rounding.
* The continuous adjoints (Backsolve, Interpolating, Quadrature): a backward solve with
  per-sample steps by this same loop, see ``persample_adjoint.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from ...errors import MaxStepsExceededError, NonFiniteStateError, StepSizeUnderflowError
from .adjoints.schedule import Counter, OnlineThinning, reverse
from .stepping import _dense_table
from .tableaus import ButcherTableau


@dataclass
class Trial:
    """One trial of the loop: times t (B,), steps h (B,), accepted (B,) bool, start state y,
    end times t_new (B,) (t_end exactly for a sample's last step) and the saves it served
    as (save index j, sample b, theta) tensors."""

    t: torch.Tensor
    h: torch.Tensor
    accepted: torch.Tensor
    y: torch.Tensor
    t_new: torch.Tensor
    rows: Optional[torch.Tensor] = None  # the working set func was evaluated on (compaction), None: all
    save_j: Optional[torch.Tensor] = None
    save_b: Optional[torch.Tensor] = None
    theta: Optional[torch.Tensor] = None
    # Kept only with Record(keep_stages=True) (a dense trajectory for the interpolating adjoints):
    y_next: Optional[torch.Tensor] = None
    ks: Optional[List[torch.Tensor]] = None
    k_next: Optional[torch.Tensor] = None


@dataclass
class Record:
    trials: List[Trial] = field(default_factory=list)
    nfe: int = 0
    n_accepted_t: Optional[torch.Tensor] = None  # summed on the device, read once at the end
    n_active_t: Optional[torch.Tensor] = None
    keep_stages: bool = False
    keep_trials: bool = True  # False: O(1) memory in the steps (BacksolveAdjoint's forward, the backward solves)
    n_trials: int = 0
    compactions: int = 0
    # CheckpointAdjoint(max_checkpoints=k): a schedule.OnlineThinning that keeps the start
    # states of some trials; the trials themselves then keep only (t, h, accepted, saves).
    store: Optional[object] = None
    y_end: Optional[torch.Tensor] = None  # every sample's state at its t_end



def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def trial_step(func: Callable, tab: ButcherTableau, t: torch.Tensor, h: torch.Tensor, y: torch.Tensor,
               k0: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor], Optional[torch.Tensor]]:
    """One explicit RK step for every sample with its own (t_b, h_b): (y_next, ks, err)."""
    hb = _bcast(h.to(y.dtype), y)
    ks = [k0]
    y_stage = y
    for c_i, a_i in zip(tab.c[1:], tab.a):
        acc = None
        for a, k in zip(a_i, ks):
            if a != 0.0:
                acc = k * a if acc is None else acc + k * a
        y_stage = y if acc is None else y + hb * acc
        ks.append(func((t + c_i * h).to(y.dtype), y_stage))
    if tab.fsal:
        y_next = y_stage
    else:
        acc = sum(k * b for b, k in zip(tab.b, ks) if b != 0.0)
        y_next = y + hb * acc
    err = None
    if tab.b_err is not None:
        e = sum(k * b for b, k in zip(tab.b_err, ks) if b != 0.0)
        err = hb * e
    return y_next, ks, err


def step_rows(func: Callable, tab: ButcherTableau, t: torch.Tensor, h: torch.Tensor, y: torch.Tensor,
              k0: torch.Tensor, rows: Optional[torch.Tensor]):
    """``trial_step`` with func evaluated only on the working set ``rows`` (all when None),
    scattered back to the batch: outside it y_next = y and the stages are k0's. Those rows
    are finished samples (h_b = 0, never accepted), for which the full step gives
    y + 0 * (...) = y too, so the result and its gradient are those of the full step."""
    if rows is None:
        return trial_step(func, tab, t, h, y, k0)
    y_next, ks, err = trial_step(func, tab, t[rows], h[rows], y[rows], k0[rows])
    ks = [k0] + [k0.index_copy(0, rows, k) for k in ks[1:]]
    err = None if err is None else torch.zeros_like(y).index_copy(0, rows, err)
    return y.index_copy(0, rows, y_next), ks, err


def eval_rows(func: Callable, t: torch.Tensor, y: torch.Tensor, rows: Optional[torch.Tensor]) -> torch.Tensor:
    """func(t, y) on the working set ``rows`` (all when None); zeros elsewhere."""
    if rows is None:
        return func(t.to(y.dtype), y)
    k = func(t[rows].to(y.dtype), y[rows])
    return torch.zeros((len(y), *k.shape[1:]), dtype=k.dtype, device=k.device).index_copy(0, rows, k)


def dense_at(tab: ButcherTableau, theta: torch.Tensor, h: torch.Tensor, y: torch.Tensor, y_next: torch.Tensor,
             ks: Sequence[torch.Tensor], f_next: torch.Tensor) -> torch.Tensor:
    """Dense output of sample ``b`` at ``theta`` for gathered rows: every argument is
    already indexed by the served (sample) rows; returns (n, *state)."""
    th = theta.to(y.dtype)
    hb = _bcast(h.to(y.dtype), y)
    if tab.dense is not None:
        table = _dense_table(tab.dense, y.dtype, y.device)  # (stages, P)
        powers = th[:, None] ** torch.arange(1, table.shape[1] + 1, dtype=y.dtype, device=y.device)
        w = powers @ table.T  # (n, stages)
        acc = sum(_bcast(w[:, i], y) * k for i, k in enumerate(ks[: table.shape[0]]))
        return y + hb * acc
    one = 1 - th
    c = [(1 + 2 * th) * one**2, th * one**2, th**2 * (3 - 2 * th), th**2 * (th - 1)]
    return _bcast(c[0], y) * y + _bcast(c[1], y) * hb * ks[0] + _bcast(c[2], y) * y_next + _bcast(c[3], y) * hb * f_next


def scaled_error(err: torch.Tensor, y: torch.Tensor, y_next: torch.Tensor, rtol, atol) -> torch.Tensor:
    """(B,) RMS over each sample's entries of err / (atol + rtol max(|y|, |y_next|))."""
    scale = torch.maximum(y.abs(), y_next.abs()) * rtol + atol
    x = (err / scale).reshape(len(err), -1)
    return x.square().mean(1).clamp_min(torch.finfo(x.dtype).tiny).sqrt()


def initial_steps(func: Callable, tab: ButcherTableau, t0: torch.Tensor, y0: torch.Tensor, f0: torch.Tensor,
                  direction: float, rtol, atol) -> torch.Tensor:
    """Hairer, Norsett & Wanner I, II.4 starting step per sample (as ``control.initial_step``)."""
    B = len(y0)
    scale = y0.abs() * rtol + atol
    d0 = (y0 / scale).reshape(B, -1).square().mean(1).sqrt()
    d1 = (f0 / scale).reshape(B, -1).square().mean(1).sqrt()
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp_min(1e-300))
    y1 = y0 + _bcast(direction * h0, y0) * f0
    f1 = func((t0 + direction * h0).to(y0.dtype), y1)
    d2 = ((f1 - f0) / scale).reshape(B, -1).square().mean(1).sqrt() / h0
    order = tab.error_order if getattr(tab, "error_order", None) else tab.order
    dmax = torch.maximum(d1, d2)
    h1 = torch.where(dmax <= 1e-15, torch.maximum(torch.full_like(h0, 1e-6), h0 * 1e-3),
                     (0.01 / dmax.clamp_min(1e-300)) ** (1.0 / (order + 1)))
    return torch.minimum(100 * h0, h1).to(torch.float64)


def integrate(func: Callable, tab: ButcherTableau, t: torch.Tensor, lengths: torch.Tensor, y0: torch.Tensor,
              rtol, atol, opts, record: Optional[Record], direction: Optional[float] = None,
              ratio_fn: Optional[Callable] = None, on_trial: Optional[Callable] = None,
              serve: bool = True, compact: bool = False, on_rows: Optional[Callable] = None) -> Tuple[List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]], Record]:
    """The per-sample loop. ``t`` (B, T) float64, NaN-padded after ``lengths``; returns the
    served save values as blocks (save index j (n,), sample b (n,), values (n, *state)).

    The backward solves of the continuous adjoints reuse it: ``direction`` given (a row
    whose span is zero, t[b, 0] == t[b, 1], is idle from the start), ``ratio_fn(err, y,
    y_next) -> (B,)`` for their blockwise norm, ``on_trial(t, h, accepted, y, y_next, ks,
    k_next)`` after each trial (their parameter quadrature), ``serve=False`` (no saves
    served: only ``rec.y_end`` is wanted).

    ``compact=True`` (``PerSampleSteps(compact=True)``): whenever the number of unfinished
    samples has fallen to half the rows func is evaluated on, the working set shrinks to the
    unfinished ones (read from the trial's one host transfer, so no extra synchronisation;
    at most log2(B) re-compactions, not one per trial) and func sees only those rows;
    ``on_rows(rows)`` is told each new working set (an adjoint right-hand side that reads
    the forward's dense output needs to know which samples its rows are)."""
    rec = record if record is not None else Record()
    B, T = t.shape
    rows = torch.arange(B, device=t.device)
    t_end = t[rows, lengths - 1]
    if direction is None:
        direction = 1.0 if bool(t[0, 1] > t[0, 0]) else -1.0
    if ratio_fn is None:
        ratio_fn = lambda err, y, y_next: scaled_error(err, y, y_next, rtol, atol)  # noqa: E731
    tcur = t[:, 0].clone()
    f0 = func(tcur.to(y0.dtype), y0)
    rec.nfe += 1
    if opts.first_step is not None:
        habs = torch.full((B,), float(opts.first_step), dtype=torch.float64, device=t.device)
    else:
        with torch.no_grad():  # step sizes are constants for the gradient (as in the 1-D loops)
            habs = initial_steps(func, tab, tcur, y0, f0, direction, rtol, atol)
        rec.nfe += 1
    habs = habs.clamp(max=opts.max_step)
    order = tab.error_order if getattr(tab, "error_order", None) else tab.order
    expo = -1.0 / (order + 1)
    y, k0 = y0, f0
    blocks = []
    tsave = torch.where(torch.isnan(t), torch.full_like(t, math.inf * direction), t)
    trials = 0
    rows_w: Optional[torch.Tensor] = None  # compaction's working set (None: every row)
    n_rows = B
    while True:
        remaining = direction * (t_end - tcur)
        active = remaining > 0
        h = direction * torch.where(active, torch.minimum(habs, remaining), torch.zeros_like(habs))
        last = active & (habs >= remaining)
        y_next, ks, err = step_rows(func, tab, tcur, h, y, k0, rows_w)
        rec.nfe += len(tab.c) - 1
        with torch.no_grad():
            ratio = ratio_fn(err, y, y_next)
        finite = torch.isfinite(ratio)
        accepted = active & (ratio <= 1.0)
        t_new = torch.where(last, t_end, tcur + h)
        served = accepted[:, None] & (direction * (tsave - tcur[:, None]) > 0) & (direction * (tsave - t_new[:, None]) <= 0)
        if not serve:
            served = torch.zeros_like(served)
        tiny = active & (habs <= 4 * torch.finfo(torch.float64).eps * tcur.abs().clamp_min(1.0))
        # The one host synchronisation per trial: all done? which saves were served? trouble?
        host = torch.cat([active if compact else active[:0], served.reshape(-1), tiny.any().reshape(1),
                          (active & ~finite).any().reshape(1), active.any().reshape(1)]).cpu()
        if compact:
            host_active, host = host[:B], host[B:]
        if not bool(host[-1]):
            break
        trials += 1
        if trials > opts.max_num_steps:
            raise MaxStepsExceededError(
                f"max_num_steps={opts.max_num_steps} trial steps taken with per-sample steps and "
                f"{int(active.sum())} of {B} samples unfinished: raise options['max_num_steps'] or loosen rtol/atol"
            )
        if bool(host[-2]):
            raise NonFiniteStateError(
                "with per-sample steps, func returned NaN/inf during a trial step of sample(s) "
                f"{(active & ~finite).nonzero().flatten().tolist()[:5]}: check func and its parameters there"
            )
        if bool(host[-3]):
            raise StepSizeUnderflowError(
                "with per-sample steps, the step size of sample(s) "
                f"{tiny.nonzero().flatten().tolist()[:5]} underflowed: the solution may blow up or the "
                "problem is stiff; loosen rtol/atol or shorten the interval"
            )
        pairs = host[:-3].reshape(B, T).nonzero()
        trial = Trial(tcur, h, accepted, y.detach() if record is not None else y, t_new, rows_w)
        k_next = ks[-1] if tab.fsal else None
        if len(pairs):
            # host -> device without waiting for the device queue
            b_idx, j_idx = pairs[:, 0].to(t.device, non_blocking=True), pairs[:, 1].to(t.device, non_blocking=True)
            theta = (t[b_idx, j_idx] - tcur[b_idx]) / h[b_idx]
            if k_next is None and tab.dense is None:
                k_next = eval_rows(func, t_new, y_next, rows_w)
                rec.nfe += 1
            vals = dense_at(tab, theta, h[b_idx], y[b_idx], y_next[b_idx], [k[b_idx] for k in ks],
                            None if k_next is None else k_next[b_idx])
            # A save at the step's end is y_next itself (bitwise, as the 1-D loop serves it).
            at_end = (t[b_idx, j_idx] == t_new[b_idx])
            vals = torch.where(_bcast(at_end, vals), y_next[b_idx], vals)
            blocks.append((j_idx, b_idx, vals))
            trial.save_j, trial.save_b, trial.theta = j_idx, b_idx, theta
        if rec.store is not None:
            rec.store.offer(rec.n_trials, trial.y)
            trial.y = None
        rec.n_trials += 1
        if rec.keep_trials or rec.keep_stages:
            rec.trials.append(trial)
        acc_b = _bcast(accepted, y)
        if k_next is None:
            k_next = eval_rows(func, t_new, y_next, rows_w)
            rec.nfe += 1
        if rec.keep_stages:
            trial.y_next, trial.ks, trial.k_next = y_next.detach(), [k.detach() for k in ks], k_next.detach()
        if on_trial is not None:
            on_trial(tcur, h, accepted, y, y_next, ks, k_next)
        y = torch.where(acc_b, y_next, y)
        k0 = torch.where(acc_b, k_next, k0)
        tcur = torch.where(accepted, t_new, tcur)
        factor = (opts.safety * ratio.clamp_min(1e-10).to(torch.float64) ** expo).clamp(opts.dfactor, opts.ifactor)
        factor = torch.where(finite, factor, torch.full_like(factor, opts.dfactor))
        habs = torch.where(active, (habs * factor).clamp(max=opts.max_step), habs)
        rec.n_accepted_t = rec.n_accepted_t + accepted.sum() if rec.n_accepted_t is not None else accepted.sum()
        rec.n_active_t = rec.n_active_t + active.sum() if rec.n_active_t is not None else active.sum()
        if compact:
            n_active = int(host_active.sum())
            if 0 < n_active <= n_rows // 2:
                # finished samples stay finished, so this set holds every later active one
                rows_w = host_active.nonzero()[:, 0].to(t.device, non_blocking=True)
                n_rows = n_active
                rec.compactions += 1
                if on_rows is not None:
                    on_rows(rows_w)
    rec.y_end = y
    return blocks, rec


# ----------------------------------------------------------------------------- solve

ADAPTIVE = ("heun_euler", "fehlberg2", "bosh3", "dopri5", "tsit5", "dopri8")
OPTIONS = ("steps", "first_step", "max_step", "max_num_steps", "safety", "ifactor", "dfactor", "return_stats")


def assemble(blocks, y0: torch.Tensor, T: int) -> torch.Tensor:
    """The (T, B, *state) result: y0 at each row's first save, the served values at theirs,
    NaN at padded entries; one out-of-place index_put (differentiable in the values)."""
    B = len(y0)
    rows = torch.arange(B, device=y0.device)
    j = torch.cat([torch.zeros_like(rows)] + [b[0] for b in blocks])
    b = torch.cat([rows] + [b[1] for b in blocks])
    v = torch.cat([y0] + [b[2] for b in blocks])
    out = torch.full((T, B, *y0.shape[1:]), float("nan"), dtype=y0.dtype, device=y0.device)
    return out.index_put((j, b), v)


class _Checkpointed(torch.autograd.Function):
    """CheckpointAdjoint for per-sample steps: see the module docstring."""

    @staticmethod
    def forward(ctx, solver, y0, *params):
        record = Record()
        if solver.budget is not None:
            # about k/2 uniformly spaced trial states while the number of trials is unknown;
            # the backward pass reverses the segments between them with the other slots
            record.store = OnlineThinning(lambda stride, k=max(1, solver.budget // 2): k)
        with torch.no_grad():
            blocks, rec = solver.run(y0, record)
        ctx.solver, ctx.rec, ctx.n_params = solver, rec, len(params)
        solver.stored_states = len(rec.store.states) if rec.store is not None else len(rec.trials)
        ctx.save_for_backward(*params)
        return assemble(blocks, y0, solver.t.shape[1])

    @staticmethod
    def _states(solver, rec):
        """(trial, its start state) for the trials in reverse order: the stored states, or
        with a budget, ``schedule.reverse`` recomputing the others (revolve in the free
        slots) by the same masked step the forward took."""
        if rec.store is None:
            for trial in reversed(rec.trials):
                yield trial, trial.y
            return

        def advance(n, y):
            tr = rec.trials[n]
            with torch.no_grad():
                k0 = eval_rows(solver.func, tr.t, y, tr.rows)
                y_next, _, _ = step_rows(solver.func, solver.tab, tr.t, tr.h, y, k0, tr.rows)
                return torch.where(_bcast(tr.accepted, y), y_next, y)

        counter = Counter()
        for n, y in reverse(len(rec.trials), rec.store.states, advance, solver.budget, counter):
            yield rec.trials[n], y
        if solver.stats is not None:
            solver.stats.extra["peak_held_trial_states"] = counter.peak_held
            solver.stats.extra["recomputed_trials"] = counter.recomputed

    @staticmethod
    def backward(ctx, g):
        solver, rec = ctx.solver, ctx.rec
        params = [p for p in ctx.saved_tensors]
        wanted = [i for i, p in enumerate(params) if ctx.needs_input_grad[2 + i]]
        ps = [params[i] for i in wanted]
        g_ps = [torch.zeros_like(p) for p in ps]
        tab, func = solver.tab, solver.func
        a = None
        for trial, y_start in _Checkpointed._states(solver, rec):
            if a is None:
                a = torch.zeros_like(y_start)
            with torch.enable_grad():
                y = y_start.detach().requires_grad_(True)
                k0 = eval_rows(func, trial.t, y, trial.rows)
                y_next, ks, _ = step_rows(func, tab, trial.t, trial.h, y, k0, trial.rows)
                outs = [torch.where(_bcast(trial.accepted, y), y_next, y)]
                seeds = [a]
                if trial.save_j is not None:
                    bi, ji = trial.save_b, trial.save_j
                    f_next = ks[-1] if tab.fsal else None
                    if f_next is None and tab.dense is None:
                        f_next = eval_rows(func, trial.t_new, y_next, trial.rows)
                    vals = dense_at(tab, trial.theta, trial.h[bi], y[bi], y_next[bi], [k[bi] for k in ks],
                                    None if f_next is None else f_next[bi])
                    at_end = solver.t[bi, ji] == trial.t_new[bi]
                    vals = torch.where(_bcast(at_end, vals), y_next[bi], vals)
                    outs.append(vals)
                    seeds.append(g[ji, bi])
                grads = torch.autograd.grad(outs, [y, *ps], seeds, allow_unused=True)
            a = grads[0] if grads[0] is not None else torch.zeros_like(a)
            for k, gp in enumerate(grads[1:]):
                if gp is not None:
                    g_ps[k] = g_ps[k] + gp
        rows = torch.arange(len(a), device=a.device)
        g_y0 = a + g[torch.zeros_like(rows), rows]
        out = [None] * len(params)
        for i, gp in zip(wanted, g_ps):
            out[i] = gp
        return (None, g_y0, *out)


class PerSampleSolver:
    """The per-sample-steps solve of one problem (validated inputs), for either sensealg."""

    def __init__(self, func, tab, t, lengths, rtol, atol, opts, budget: Optional[int] = None, compact: bool = False):
        self.func, self.tab, self.t, self.lengths = func, tab, t, lengths
        self.compact = compact
        self.budget = budget  # CheckpointAdjoint(max_checkpoints=...)
        self.stored_states = 0
        self.stats = None
        self.rtol, self.atol, self.opts = rtol, atol, opts
        rows = torch.arange(len(t), device=t.device)
        self.t_end = t[rows, lengths - 1]
        self.direction = 1.0 if bool(t[0, 1] > t[0, 0]) else -1.0
        self.rec: Optional[Record] = None
        self.nfe_backward = 0
        self.stored_bytes = 0

    def run(self, y0, record):
        blocks, rec = integrate(self.func, self.tab, self.t, self.lengths, y0, self.rtol, self.atol, self.opts, record,
                                compact=self.compact)
        self.rec = rec
        return blocks, rec
