"""Continuous adjoints with per-sample steps (issue 13).

For a batch of independent samples, dy_b/dt = f(t, y_b; theta), the adjoint system is a
batch of independent samples too (Chen et al. 2018, eq. 4-5; backwards from each
sample's own end t1_b):

    da_b/dt = -a_b^T df/dy (t, y_b(t)),    a_b(t1_b) = dL/dy_b(t1_b),
    a_b jumps by dL/dy_b(t_{b,i}) at each of sample b's own save times,
    dL/dy0_b = a_b(t0_b),
    dL/dtheta = sum_b int_{t0_b}^{t1_b} a_b^T df/dtheta (t, y_b(t)) dt.

Only the parameter gradient couples the samples, and only by the final sum. The backward
solve is therefore run with per-sample steps as well (``persample.integrate``, the
forward's own loop): each sample has its own t, h, error ratio and accept/reject.

Backward state per sample: [y_b, a_b] (BacksolveAdjoint: y is re-integrated backwards,
reset to the forward value at each save time, as the 1-D BacksolveAdjoint and torchdiffeq
do) or [a_b] (Interpolating/QuadratureAdjoint: y_b(t) from the forward's dense output, or,
with ``InterpolatingAdjoint(checkpointing=True)``, from a forward re-solve of each save
interval started at the stored save value -- SciMLSensitivity's checkpointing, which
re-solves ``remake(prob, tspan=interval, u0=sol(interval[1]))``: SciML/SciMLSensitivity.jl,
src/interpolating_adjoint.jl @ 002be648afbbf948c6d04216ab36ea1cdac298d2).

The parameter adjoint is *not* carried per sample. A per-sample block g_b in R^P would need
B separate vector-Jacobian products a_b^T df/dtheta per evaluation (autograd gives only
their sum for one batched call of func) and B x P memory. Instead dL/dtheta is accumulated
into one (P,) sum by Gauss-Legendre quadrature on every accepted backward step of every
sample (the QuadratureAdjoint construction of ``adjoints/quadrature.py``: m = max(2,
ceil((p+1)/2)) nodes for a method of order p, a_b from the backward step's dense output,
y_b from the forward's or the backward state's); the cotangent of node q is
a_b(t_q) (-h_b w_q) on accepted rows and 0 elsewhere, so one ``autograd.grad`` call per
trial sums every sample's panel. Consequently dL/dtheta never steers the steps -- the
seminorm of Kidger, Chen & Lyons (2021) always; ``seminorm=`` has no further effect -- and
with per-sample steps InterpolatingAdjoint and QuadratureAdjoint compute the same thing.

Error norm of the backward solve, per sample: the max over the blocks (y_b, a_b) of the RMS
of the block's scaled error (torchdiffeq's mixed adjoint norm, ``_impl/adjoint.py``, taken
per sample; the 1-D adjoints here use the same blockwise max). SciMLSensitivity solves its
adjoint state [lambda; dgrad] with the integrator's default norm, one RMS over all entries
(src/interpolating_adjoint.jl @ 002be648: ``z0 = vec(zero(lambda))`` of length
numstates + numparams, no ``internalnorm`` given); the blockwise max is stricter on the
state and adjoint, and lets no parameter block exist in the norm at all.

Scheduling: the backward solve runs save interval by save interval (column k of ``t``,
from the last to the first): every sample whose row has an interval (t_{b,k-1}, t_{b,k})
integrates it on its own steps, the others are idle (a zero span); then the jumps
dL/dy_b(t_{b,k-1}) are added. Each sample's steps and error control are its own; only the
number of loop trials is coupled (the slowest sample of each column sets it).

With ``PerSampleSteps(compact=True)`` each interval's solve evaluates func only on its
unfinished rows once they are half the working set or fewer (``persample.integrate``),
the dense lookup and the quadrature on the same rows (``AdjointRHS.set_rows``).
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, List, Optional

import torch

from ...errors import GradientAccuracyWarning, NonFiniteStateError
from .adjoints.backsolve import WARN_FACTOR
from .adjoints.continuous import gauss_legendre
from .persample import Record, _bcast, assemble, dense_at, integrate
from .tableaus import ButcherTableau


class Dense:
    """y_b(q_b) for a (B,) vector of per-sample times, from the trials of a per-sample solve
    recorded with ``Record(keep_stages=True)``.

    Each sample's trials start at non-decreasing times (a rejected trial starts where the
    accepted one after it does), so the step holding q_b is the last trial of sample b
    whose start is <= q_b (in the direction of integration): one batched ``searchsorted``.
    Idle trials (h_b = 0, after the sample's end) are keyed +inf.
    """

    def __init__(self, tab: ButcherTableau, rec: Record, direction: float):
        trials = rec.trials
        self.tab, self.direction = tab, direction
        h = torch.stack([tr.h for tr in trials], 1)  # (B, N)
        t0 = torch.stack([tr.t for tr in trials], 1)
        self.key = torch.where(h != 0, direction * t0, torch.full_like(t0, math.inf)).contiguous()
        self.t0, self.h = t0, h
        # The interpolant of each step as a polynomial in theta, y(theta) = sum_p theta^p C_p,
        # coefficients stacked (B, N, P + 1, *state) once, so a lookup gathers one tensor
        # instead of the step's start, end and every stage.
        self.coef = torch.stack([_coefficients(tab, tr) for tr in trials], 1)
        self.rows = torch.arange(h.shape[0], device=h.device)

    def nbytes(self) -> int:
        return self.coef.numel() * self.coef.element_size()

    def __call__(self, q: torch.Tensor, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """y at q (one time per row); ``rows``: which samples the rows are (None: all, in order)."""
        q = q.to(torch.float64)
        r = self.rows if rows is None else rows
        key = self.key if rows is None else self.key[rows]
        n = torch.searchsorted(key, (self.direction * q)[:, None].contiguous(), right=True)[:, 0] - 1
        n = n.clamp(0, self.key.shape[1] - 1)
        h = self.h[r, n]
        theta = (q - self.t0[r, n]) / torch.where(h != 0, h, torch.ones_like(h))
        c = self.coef[r, n]  # (m, P + 1, *state)
        th = _bcast(theta.to(c.dtype), c[:, 0])
        out = c[:, -1]
        for p in range(c.shape[1] - 2, -1, -1):  # Horner
            out = out * th + c[:, p]
        return out


def _coefficients(tab: ButcherTableau, tr) -> torch.Tensor:
    """(B, P + 1, *state) power coefficients of trial ``tr``'s interpolant (``dense_at``'s):
    the method's dense table, y + h sum_i sum_p table[i, p] theta^(p+1) k_i, or the cubic
    Hermite c0 y + c1 h k0 + c2 y_next + c3 h f_next with c0 = 1 - 3 th^2 + 2 th^3,
    c1 = th - 2 th^2 + th^3, c2 = 3 th^2 - 2 th^3, c3 = th^3 - th^2."""
    y = tr.y
    hb = _bcast(tr.h.to(y.dtype), y)
    if tab.dense is not None:
        table = torch.tensor(tab.dense, dtype=y.dtype, device=y.device)  # (stages, P)
        ks = torch.stack(list(tr.ks[: table.shape[0]]), 1)  # (B, stages, *state)
        c = torch.einsum("sp,bs...->bp...", table, ks) * hb[:, None]
        return torch.cat([y[:, None], c], 1)
    k0, y1, f1 = hb * tr.ks[0], tr.y_next, hb * tr.k_next
    return torch.stack([y, k0, -3 * y - 2 * k0 + 3 * y1 - f1, 2 * y + k0 - 2 * y1 + f1], 1)


class AdjointRHS:
    """Per-sample adjoint right-hand side on the flat (B, m) state.

    ``dense is None`` (backsolve): state [y_b, a_b], returns [f, -a_b^T df/dy];
    otherwise y_b(t) = dense(t_b): state [a_b], returns [-a_b^T df/dy]. The batched
    vector-Jacobian product is per sample because func treats the rows independently.
    """

    def __init__(self, func: Callable, shape, dense: Optional[Dense] = None):
        self.func, self.shape, self.dense = func, tuple(shape), dense
        self.n = math.prod(self.shape[1:])
        self.nfe = 0
        self.rows: Optional[torch.Tensor] = None  # compaction's working set: the samples the rows are

    def set_rows(self, rows: torch.Tensor) -> None:
        self.rows = rows

    def state(self, t: torch.Tensor, z: torch.Tensor):
        n, B = self.n, len(z)
        if self.dense is None:
            return z[:, :n].reshape(B, *self.shape[1:]), z[:, n:].reshape(B, *self.shape[1:])
        return self.dense(t, self.rows).reshape(B, *self.shape[1:]), z.reshape(B, *self.shape[1:])

    def __call__(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        y, a = self.state(t, z)
        with torch.enable_grad():
            yr = y.detach().requires_grad_(True)
            fy = self.func(t, yr)
            (vjp,) = torch.autograd.grad(fy, yr, a, allow_unused=True)
        vjp = torch.zeros_like(y) if vjp is None else vjp
        parts = [fy.detach(), -vjp] if self.dense is None else [-vjp]
        return torch.cat([p.reshape(len(z), -1) for p in parts], 1)


def blockwise_ratio(n_blocks: int, n: int, rtol: float, atol: float) -> Callable:
    """(B,) max over the blocks of each sample's state of the block's RMS scaled error."""

    def ratio(err, y, y_next):
        scale = torch.maximum(y.abs(), y_next.abs()) * rtol + atol
        x = (err / scale).square().reshape(len(err), n_blocks, n).mean(2)
        return x.amax(1).clamp_min(torch.finfo(x.dtype).tiny).sqrt()

    return ratio


class Quadrature:
    """dL/dtheta += sum_b int over sample b's accepted backward step of a_b^T df/dtheta dt."""

    def __init__(self, func: Callable, rhs: AdjointRHS, tab: ButcherTableau, params: List[torch.Tensor]):
        self.func, self.rhs, self.tab, self.params = func, rhs, tab, params
        self.nodes, self.weights = gauss_legendre(tab.order)
        self.grads = [torch.zeros_like(p) for p in params]
        self.nfe = 0

    def __call__(self, t, h, accepted, z, z_next, ks, k_next) -> None:
        if not self.params:
            return
        rows = self.rhs.rows
        if rows is not None:  # compaction: rows outside the working set are finished (weight 0)
            t, h, accepted, z, z_next, k_next = (x[rows] for x in (t, h, accepted, z, z_next, k_next))
            ks = [k[rows] for k in ks]
        outs, cots = [], []
        with torch.no_grad():
            stage = []
            for x, w in zip(self.nodes, self.weights):
                theta = torch.full_like(h, x)
                zq = dense_at(self.tab, theta, h, z, z_next, ks, k_next)
                tq = t + x * h
                y_q, a_q = self.rhs.state(tq.to(z.dtype), zq)
                weight = torch.where(accepted, -h * w, torch.zeros_like(h)).to(z.dtype)
                # rows not accepted get weight 0; their (finite) values are replaced too, so a
                # rejected trial's large state cannot turn 0 * x into NaN
                ok = _bcast(accepted, y_q)
                y_q = torch.where(ok, y_q, torch.zeros_like(y_q))
                stage.append((tq, y_q, torch.where(ok, a_q, torch.zeros_like(a_q)) * _bcast(weight, a_q)))
        with torch.enable_grad():
            for tq, y_q, cot in stage:
                outs.append(self.func(tq.to(z.dtype), y_q))
                cots.append(cot)
            self.nfe += len(outs)
            grads = torch.autograd.grad(outs, self.params, cots, allow_unused=True)
        for k, g in enumerate(grads):
            if g is not None:
                self.grads[k] = self.grads[k] + g


class ContinuousAdjoint(torch.autograd.Function):
    """Backsolve/Interpolating/QuadratureAdjoint with per-sample steps: see the module docstring."""

    @staticmethod
    def forward(ctx, solver, spec, y0, *params):
        keep = spec.interpolate and not spec.checkpointing
        with torch.no_grad():
            blocks, rec = solver.run(y0, Record(keep_stages=keep, keep_trials=False))
            ys = assemble(blocks, y0, solver.t.shape[1])
        ctx.solver, ctx.spec = solver, spec
        ctx.dense = Dense(solver.tab, rec, solver.direction) if keep else None
        rec.trials = []  # stacked into the dense trajectory, which holds what the backward pass needs
        ctx.save_for_backward(ys, *params)
        solver.stored_bytes = 0 if ctx.dense is None else ctx.dense.nbytes()
        return ys

    @staticmethod
    def backward(ctx, g):
        solver, spec = ctx.solver, ctx.spec
        ys, *params = ctx.saved_tensors
        wanted = [i for i, p in enumerate(params) if ctx.needs_input_grad[3 + i]]
        ps = [params[i] for i in wanted]
        t, lengths, func = solver.t, solver.lengths, solver.func
        B, T = t.shape
        shape = ys.shape[1:]
        rows = torch.arange(B, device=t.device)
        valid = ~torch.isnan(t)
        g = torch.where(valid.T.reshape(T, B, *([1] * (g.dim() - 2))), g, torch.zeros_like(g))  # padded entries: no jump
        a = g[lengths - 1, rows]
        n = math.prod(shape[1:])
        back = -solver.direction
        rtol, atol = spec.rtol, spec.atol
        tab = spec.tab
        quad = None
        nfe = 0
        drift = torch.zeros(B, dtype=ys.dtype, device=ys.device)  # BacksolveAdjoint's reconstruction error per sample
        longest = int(lengths.max())  # the backward pass's one read of a device value outside the loop's per-trial one
        for k in range(longest - 1, 0, -1):
            live = lengths > k
            live_s = _bcast(live, ys[0])
            start = torch.where(live, t[:, k], t[:, 0])
            end = torch.where(live, t[:, k - 1], t[:, 0])
            if spec.interpolate:
                if spec.checkpointing:
                    dense = _resolve(solver, t, ys, k, live)
                else:
                    dense = ctx.dense
                rhs = AdjointRHS(func, ys.shape[1:], dense)
                z0 = a.reshape(B, -1)
                n_blocks = 1
            else:
                rhs = AdjointRHS(func, ys.shape[1:], None)
                y_k = torch.where(live_s, ys[k], ys[0])  # backsolve restarts from the forward value
                z0 = torch.cat([y_k.reshape(B, -1), a.reshape(B, -1)], 1)
                n_blocks = 2
            if quad is None:
                quad = Quadrature(func, rhs, tab, ps)
            quad.rhs = rhs
            ratio = blockwise_ratio(n_blocks, n, rtol, atol)
            seg = torch.stack([start, end], 1)
            two = torch.full_like(lengths, 2)
            try:
                _, rec = integrate(rhs, tab, seg, two, z0, rtol, atol, solver.opts, Record(keep_trials=False), direction=back,
                                   ratio_fn=ratio, on_trial=quad, serve=False, compact=solver.compact,
                                   on_rows=rhs.set_rows)
            except NonFiniteStateError as err:
                raise NonFiniteStateError(f"{spec.name} with PerSampleSteps: the backward solve of save interval "
                                          f"{k - 1}-{k} produced NaN/inf: {err}") from err
            nfe += rhs.nfe
            z = rec.y_end
            a_new = z[:, -n:].reshape(B, *shape[1:])
            a = torch.where(live_s, a_new + g[k - 1], a)
            if not spec.interpolate:
                drift = torch.maximum(drift, torch.where(live, _mismatch(z[:, :n], ys[k - 1].reshape(B, -1), spec, solver),
                                                         torch.zeros_like(drift)))
        solver.nfe_backward = nfe + (quad.nfe if quad is not None else 0)
        if not spec.interpolate:
            _report_drift(drift, solver)
        out = [None] * len(params)
        if quad is not None:
            for i, gp in zip(wanted, quad.grads):
                out[i] = gp
        return (None, None, a, *out)


def _mismatch(y_rec: torch.Tensor, y_fwd: torch.Tensor, spec, solver) -> torch.Tensor:
    """(B,) RMS of (y_reconstructed - y_forward) / (atol + rtol max(|y|, |y_rec|)) at a save
    time, rtol/atol the larger of the forward's and the adjoint's (as the 1-D BacksolveAdjoint)."""
    rtol, atol = max(spec.rtol, solver.rtol), max(spec.atol, solver.atol)
    scale = torch.maximum(y_fwd.abs(), y_rec.abs()) * rtol + atol
    return ((y_rec - y_fwd) / scale).square().mean(1).sqrt()


def _report_drift(drift: torch.Tensor, solver) -> None:
    """GradientAccuracyWarning naming the samples whose reverse-time reconstruction of y was
    off by more than ``backsolve.WARN_FACTOR`` tolerances (one host read for the batch)."""
    worst = float(drift.max())
    if solver.stats is not None:
        solver.stats.extra["backsolve_reconstruction_error"] = worst
    if worst > WARN_FACTOR:
        bad = (drift > WARN_FACTOR).nonzero().flatten().tolist()
        warnings.warn(
            f"BacksolveAdjoint with PerSampleSteps: the reverse-time solve reconstructed y of sample(s) {bad[:5]} "
            f"with an error of up to {worst:.3g} times the tolerance; the state the adjoint was computed along is "
            "not the forward trajectory, so their gradients may be wrong by a similar relative amount. Use "
            "sensealg=psg.CheckpointAdjoint() (exact for the discrete solve) or psg.InterpolatingAdjoint(), or "
            "tighten adjoint_rtol/adjoint_atol.", GradientAccuracyWarning, stacklevel=3)


def _resolve(solver, t, ys, k, live) -> Dense:
    """InterpolatingAdjoint(checkpointing=True): re-solve save interval (k-1, k) of every live
    sample forward from its stored save value ys[k-1] with per-sample steps, keeping stages."""
    start = torch.where(live, t[:, k - 1], t[:, 0])
    end = torch.where(live, t[:, k], t[:, 0])
    y_start = torch.where(_bcast(live, ys[0]), ys[k - 1], ys[0])
    rec = Record(keep_stages=True)
    with torch.no_grad():
        integrate(solver.func, solver.tab, torch.stack([start, end], 1), torch.full_like(solver.lengths, 2),
                  y_start, solver.rtol, solver.atol, solver.opts, rec, direction=solver.direction, serve=False,
                  compact=solver.compact)
    return Dense(solver.tab, rec, solver.direction)


class Spec:
    """What the backward pass of one continuous sensealg needs (plain data)."""

    def __init__(self, name: str, interpolate: bool, checkpointing: bool, tab: ButcherTableau, rtol: float, atol: float):
        self.name, self.interpolate, self.checkpointing = name, interpolate, checkpointing
        self.tab, self.rtol, self.atol = tab, rtol, atol
