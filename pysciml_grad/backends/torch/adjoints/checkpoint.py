"""CheckpointAdjoint: ACA / ANODE, "discretize then optimize" with checkpoints.

Forward: the solve runs without a graph and records each accepted step
(t_n, h_n, the saves it serves) and, by the checkpoint schedule, its start state y_n.
Backward: for n = N-1, ..., 0 the step y_{n+1} = Phi(t_n, h_n, y_n; theta) is replayed
with autograd from y_n and its exact vector-Jacobian product is chained,

    a_n = (dPhi/dy_n)^T a_{n+1} + dL/dy_n,     dL/dtheta += (dPhi/dtheta)^T a_{n+1},

with the accepted step sizes h_n held constant (no graph through the step-size search;
Zhuang et al. 2020, "Adaptive checkpoint adjoint method for gradient estimation in
neural ODE", ICML; Gholami, Keutzer & Biros 2019, "ANODE: unconditionally accurate
memory-efficient gradients for neural ODEs", IJCAI). The result is the exact gradient of
the discrete forward map: equal, to rounding, to backpropagating through a loop that
replays the same accepted steps, however many states are stored.

Memory: ``max_checkpoints=None`` keeps every accepted state (O(N) states) plus one
step's graph. ``max_checkpoints=k`` keeps at most k checkpoint states at any time (the
initial state counts; the one working state and one step's graph come on top): the
forward pass keeps about k/2 uniformly spaced states (the number of steps is unknown
while it runs), and the backward pass reverses each segment between them with binomial
checkpointing in the remaining slots (``schedule.reverse``, Griewank & Walther's
revolve), recomputing the fewest steps possible for that segment.

Leapfrog is a two-step method; it is handled as a one-step map on the pair
(y_{n-1}, y_n) (ANODE), so a checkpoint holds a pair.

Save times: the time derivatives are those of the same discrete map, with the step
sizes chosen by the controller held constant. Adaptive: t_n = t_0 + (recorded offset),
the last step h = t_end - t_{N-1}; fixed step on the grid ``t``: t_n = t[n],
h_n = t[n+1] - t[n]; fixed ``step_size``: t_n = t_0 + (t_end - t_0) n / N. A save
served by dense output at theta = (t_i - t_n) / h_n differentiates through theta.

Double backward: when the backward pass itself runs with ``create_graph=True`` the
accepted steps are replayed from y0 in one differentiable graph (the memory of
DirectAD for that step sequence, step sizes still constant), so gradients of gradients
are exact for the same discrete map.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import List, Optional, Tuple, Union

import torch

from ....errors import InvalidProblemError, UnsupportedSensitivityError
from ....problem import ODEProblem, SolveStats
from ....finite import all_finite
from ..forward import forward_solve, parse, save_times
from ..integrate import AcceptedStep, CountingRHS
from ..rosenbrock import RosenbrockTableau
from ..discover import Watch, audit_everything, check_graph, rng_state, set_rng_state
from ..adams import ADAMS_METHODS
from . import recompute
from ..callbacks import NAMES as _CB
from .. import compiled, progress
from ..tableaus import ButcherTableau
from .common import check_incoming, nonfinite_adjoint, run, scatter, trainable, vjp
from .replay import StepMeta, initial_state, step, without_fsal_stage
from .schedule import Counter, OnlineThinning, reverse

Scalar = Union[float, torch.Tensor]
NAME = "CheckpointAdjoint"


class CheckpointStrategy:
    def __init__(self, problem: ODEProblem, stats: SolveStats):
        budget = problem.sensealg.max_checkpoints
        if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 1):
            raise InvalidProblemError(
                f"CheckpointAdjoint(max_checkpoints={budget!r}): max_checkpoints must be a positive "
                "integer (the most states stored at once, the initial state included) or None (store all)"
            )
        self.problem = problem
        self.stats = stats
        self.method, self.opts = parse(problem)
        self.tab = self.method.tableau
        self.short_tab = None if self.tab is None else without_fsal_stage(self.tab)
        self.leapfrog = self.tab is None
        self.budget = budget
        self.steps: List[StepMeta] = []
        self.ts: List[float] = []
        self.store: Optional[OnlineThinning] = None
        self.discovery = None
        self.f0: Optional[torch.Tensor] = None
        self.rng: Optional[RNGRecord] = None

    # ------------------------------------------------------------------ forward
    def forward(self, y0: torch.Tensor) -> torch.Tensor:
        self.ts = save_times(self.problem, False)
        capacity = None if self.budget is None else (lambda stride, k=max(1, self.budget // 2): k)
        self.store = OnlineThinning(capacity)
        self.steps = []

        problem = self.problem
        found = self.discovery
        if found is not None and found.random and isinstance(self.tab, RosenbrockTableau):
            # RNGRecord matches draws to the stages' f outputs; a Rosenbrock step also
            # evaluates func inside its Jacobian, and its stages are increments, not f values.
            raise UnsupportedSensitivityError(
                f"{NAME} cannot replay the random numbers func draws (dropout or randn in training mode) "
                f"through method {self.method.name!r}, whose steps also evaluate func inside the Jacobian: "
                "solve with the model in eval() mode, or use sensealg=psg.DirectAD()"
            )
        if found is not None and found.random:
            self.rng = RNGRecord(problem.func, found.devices, self.f0, found.rng_before)
            problem = replace(problem, func=self.rng)

        def record(s: AcceptedStep) -> None:
            n = len(self.steps)
            self.steps.append(StepMeta(float(s.t), float(s.h), [(i, float(th)) for i, th in s.saves], s.perturb))
            y = s.y.detach()
            state = (None if s.y_prev is None else s.y_prev.detach(), y) if self.leapfrog else (y,)
            self.store.offer(n, state)
            if self.rng is not None:
                self.rng.accepted(s.ks)

        ys = forward_solve(
            problem, self.method, self.opts, differentiate_control=False, record=record,
            t_save=self.ts, y0=y0, stats=self.stats, f0=self.f0,
        )
        if self.rng is not None:
            self.rng.close()
        return ys

    def free(self) -> None:
        """Drop the forward record (autograd has released this solve's graph)."""
        self.store = None
        self.steps = []
        self.rng = None
        self.f0 = None

    def record_nbytes(self) -> int:
        """Bytes of tensors held by the forward record (checkpoints, generator states)."""
        held = [x for st in (self.store.states.values() if self.store is not None else ()) for x in st if x is not None]
        if self.rng is not None:
            held += [x for per_step in self.rng.states for st in per_step if st is not None for x in st]
        return sum(x.numel() * x.element_size() for x in held)

    def _replay_rhs(self, n: int, rhs):
        """``rhs`` for replaying step n: with a random func, each evaluation that started a
        run of consecutive draws in the forward gets that run's generator state back."""
        if self.rng is None:
            return rhs
        return self.rng.replay(n, rhs, 1 if self.leapfrog else len(self.tab.c))

    # ------------------------------------------------------------ step times
    def times(self, n: int, tv: Optional[torch.Tensor]) -> Tuple[Scalar, Scalar, Scalar, List[int], List[Tuple[int, Scalar]]]:
        """(t_n, h_n, t_{n+1}, endpoint saves, dense saves (index, theta)) of step n.

        With ``tv`` (the save times as a tensor) t_n, h_n and theta are built from it as
        the forward loop built them from ``t``, so autograd yields dL/dt.
        """
        m, N, ts = self.steps[n], len(self.steps), self.ts
        last = n == N - 1
        if tv is None:
            t_next = ts[-1] if last else self.steps[n + 1].t
            endpoint = [i for i, th in m.saves if th == 1.0]
            dense = [(i, th) for i, th in m.saves if th != 1.0]
            return m.t, m.h, t_next, endpoint, dense
        on_grid = not self.method.adaptive and self.opts.step_size is None
        if self.method.adaptive:
            t_n = tv[0] + (m.t - ts[0])
            h = tv[-1] - t_n if last else m.h
            t_next = t_n + h
        elif on_grid:
            t_n, t_next = tv[n], tv[n + 1]
            h = t_next - t_n
        else:
            span = tv[-1] - tv[0]
            t_n = tv[0] + span * (n / N)
            t_next = tv[-1] if last else tv[0] + span * ((n + 1) / N)
            h = t_next - t_n
        endpoint, dense = [], []
        for i, _ in m.saves:
            if on_grid or (last and i == len(ts) - 1):
                endpoint.append(i)  # the step ends exactly at t_i: d/dt_i goes through h
            else:
                dense.append((i, (tv[i] - t_n) / h))
        return t_n, h, t_next, endpoint, dense

    # ----------------------------------------------------------------- backward
    def backward(self, grad_ys, y0, t, params, needs, ys=None):
        check_incoming(grad_ys, self.ts, NAME)
        idx = trainable(params, needs[2:])
        ps = [params[i] for i in idx]
        want_t = bool(needs[1])
        rhs = CountingRHS(self.problem.func, y0.dtype, y0.device)
        if torch.is_grad_enabled():
            out = self._backward_differentiable(rhs, grad_ys, y0, t, ps, needs, want_t)
        else:
            out = self._backward(rhs, grad_ys, y0, t, ps, want_t, params)
        self.stats.nfe_backward += rhs.nfe
        g_y0, g_t, g_ps = out
        return g_y0, g_t, scatter(len(params), idx, g_ps)

    def _advance(self, rhs: CountingRHS):
        def advance(n: int, state):
            t_n, h, t_next, _, _ = self.times(n, None)
            with torch.no_grad():
                return step(self._replay_rhs(n, rhs), self.tab, self.short_tab, t_n, h, t_next, state,
                            perturb=self.steps[n].perturb)[0]

        return advance

    def _backward(self, rhs, grad_ys, y0, t, ps, want_t, all_params):
        N = len(self.steps)
        tv = t.detach().to(y0.dtype).requires_grad_(True) if want_t else None
        zeros = torch.zeros_like(y0)
        adj: Tuple[Optional[torch.Tensor], ...] = (zeros, zeros) if self.leapfrog else (zeros,)
        g_ps = [torch.zeros_like(p) for p in ps]
        g_t = torch.zeros_like(tv) if tv is not None else None
        counter = Counter()
        check_every = 1 if y0.device.type == "cpu" else 16
        audit_all = audit_everything(self.problem.func)
        # options['compile']: each step is replayed as one compiled call returning its
        # vector-Jacobian product (compiled.make_replay_vjp; a step serving dense saves
        # seeds its stages, for tables with a continuous extension). Not while the first
        # backward passes of func audit every replayed graph (audit_all, eager under the
        # watch). After those, not even the first replayed step is replayed eagerly for
        # check_graph: the compiled call captured func in one graph (fullgraph), so func
        # has no data-dependent Python branch and reads the same tensors at every t as at
        # t0, where discovery found them. When the call cannot be captured, steps are
        # replayed with autograd on the compiled step (the first one eagerly).
        fast = None
        if (self.opts.compile and isinstance(self.tab, ButcherTableau) and self.rng is None and tv is None
                and not getattr(self.opts, "perturb", False)):
            fast = compiled.compiled_replay(self.short_tab, self.problem.func, self.opts, y0, self.tab)
            t_dev = fast.times(m.t for m in self.steps)
            h_dev = fast.times(m.h for m in self.steps)
        for count, (n, state) in enumerate(reverse(N, self.store.states, self._advance(rhs), self.budget, counter)):
            saves = self.steps[n].saves
            if fast is not None and not audit_all and not any(self.steps[n].perturb):
                a_next = adj[0]
                for i, th in saves:
                    if th == 1.0:
                        a_next = a_next + grad_ys[i]
                dense = [(i, th) for i, th in saves if th != 1.0]
                if not dense:
                    out = fast.vjp(t_dev[n], h_dev[n], state[0], a_next, g_ps, ps)
                else:
                    out = fast.dense_vjp(t_dev[n], self.steps[n].h, state[0], a_next, g_ps, ps, [th for _, th in dense],
                                         grad_ys[[i for i, _ in dense]])
                if out is not None:
                    adj, g_ps = (out[0],), out[1]
                    rhs.nfe += fast.n_stages
                    progress.reached(self.steps[n].t)  # replayed back to the start of step n
                    if (count + 1) % check_every == 0 or n == 0:
                        if not all_finite(adj[-1]):
                            raise nonfinite_adjoint(NAME, f"at t={self.steps[n].t:.6g} (replaying accepted step {n} of {N})")
                    continue
            with torch.enable_grad():  # the step times carry a graph to t when dL/dt is wanted
                t_n, h, t_next, endpoint, dense = self.times(n, tv)
                a_next = adj[-1]
                for i in endpoint:
                    a_next = a_next + grad_ys[i]
                inp = tuple(None if x is None else x.detach().requires_grad_(True) for x in state)
                watch = Watch([]) if (count == 0 or audit_all) else contextlib.nullcontext()
                use_fast = fast is not None and count > 0 and not dense and not audit_all and not any(self.steps[n].perturb)
                y_fast = fast(t_n, h, inp[0]) if use_fast else None
                if y_fast is not None:
                    nxt, values = (y_fast,), None
                    rhs.nfe += fast.n_stages
                else:
                    with watch:
                        nxt, values, _ = step(self._replay_rhs(n, rhs), self.tab, self.short_tab, t_n, h, t_next,
                                              inp, [th for _, th in dense], self.steps[n].perturb)
                state_in = [x for x in inp if x is not None]
                extra = [tv] if tv is not None else []
                outs, seeds = [nxt[-1]], [a_next]
                if values is not None:  # the step's dense saves: one block, one gathered seed
                    outs.append(values)
                    seeds.append(grad_ys[[i for i, _ in dense]])
                if count == 0 or audit_all:
                    # A tensor func reads only at other times than t0 is not an input.
                    check_graph(outs, state_in + list(all_params) + extra, NAME, watch)
                grads = vjp(outs, state_in + ps + extra, seeds)
            gs = grads[: len(state_in)]
            if self.leapfrog:
                # Phi_n(y_{n-1}, y_n) = (y_n, y_{n+1}): y_n also passes through unchanged.
                adj = (gs[0], adj[0] + gs[1]) if inp[0] is not None else (None, adj[0] + gs[0])
            else:
                adj = (gs[0],)
            for k, g in enumerate(grads[len(state_in) : len(state_in) + len(ps)]):
                g_ps[k] = g_ps[k] + g
            if tv is not None:
                g_t = g_t + grads[-1]
            progress.reached(self.steps[n].t)  # replayed back to the start of step n
            if (count + 1) % check_every == 0 or n == 0:
                if not all_finite(adj[-1]):
                    raise nonfinite_adjoint(NAME, f"at t={self.steps[n].t:.6g} (replaying accepted step {n} of {N})")
        g_y0 = adj[-1] + grad_ys[0]
        for g in g_ps + ([g_t] if g_t is not None else []):
            if not all_finite(g):
                raise nonfinite_adjoint(NAME, "in a parameter or time gradient")
        self.stats.extra["checkpoint_recomputed_steps"] = self.stats.extra.get("checkpoint_recomputed_steps", 0) + counter.recomputed
        self.stats.extra["checkpoint_peak_states"] = max(self.stats.extra.get("checkpoint_peak_states", 0), counter.peak_held)
        return g_y0, (g_t.to(t.dtype) if g_t is not None else None), g_ps

    def _backward_differentiable(self, rhs, grad_ys, y0, t, ps, needs, want_t):
        """create_graph=True: replay every accepted step from y0 in one graph."""
        tv = t.to(y0.dtype) if want_t else None
        state = initial_state(y0, self.leapfrog)
        outs: List[Optional[torch.Tensor]] = [None] * len(self.ts)
        outs[0] = y0
        for n in range(len(self.steps)):
            t_n, h, t_next, endpoint, dense = self.times(n, tv)
            state, values, _ = step(self._replay_rhs(n, rhs), self.tab, self.short_tab, t_n, h, t_next, state,
                                    [th for _, th in dense], self.steps[n].perturb)
            for i in endpoint:
                outs[i] = state[-1]
            if values is not None:
                for (i, _), v in zip(dense, values.unbind(0)):
                    outs[i] = v
        ys = torch.stack(outs)  # type: ignore[arg-type]
        use_y0 = bool(needs[0]) and y0.requires_grad
        inputs = ([y0] if use_y0 else []) + list(ps) + ([t] if want_t else [])
        grads = vjp([ys], inputs, [grad_ys], create_graph=True)
        g_y0 = grads.pop(0) if use_y0 else None
        g_t = grads.pop() if want_t else None
        return g_y0, g_t, grads


CALLBACK_NAMES = tuple(name + suffix for name in _CB for suffix in ("", "_adjoint"))


class RNGRecord:
    """Generator states of a random ``func`` (dropout in ``train()``), so replays draw the
    forward's random numbers (``torch.utils.checkpoint``'s ``preserve_rng_state``).

    Wraps ``func`` in the forward solve and notes the state before every evaluation.
    Within a step the stages are evaluated back to back, so per accepted step three
    states suffice: before its first stage f(t_n, y_n) (evaluated earlier: at the end
    of the previous step, or as the discovery's f0), before its second stage (rejected
    trials may have drawn in between), and before the dense-output evaluation
    f(t_{n+1}, y_{n+1}) when there was one (non-FSAL methods serving a save inside the step).
    Evaluations are matched to stages by the identity of the tensor they returned.
    """

    def __init__(self, func, devices, f0, f0_state):
        self.func = func
        self.devices = devices
        # The loops read func's step callbacks off the object they are handed: keep them visible.
        for name in CALLBACK_NAMES:
            if callable(getattr(func, name, None)):
                setattr(self, name, getattr(func, name))
        self.log = {id(f0): (f0, f0_state)}
        self.last: Optional[int] = None
        self.states: List[Tuple] = []  # per accepted step: (first, second, dense-output) state

    def __call__(self, t, y):
        state = rng_state(self.devices)
        out = self.func(t, y)
        self.log[id(out)] = (out, state)  # the output is held, so its id is not reused
        self.last = id(out)
        return out

    def accepted(self, ks) -> None:
        ids = {id(k) for k in ks}
        first = self.log[id(ks[0])][1]
        second = self.log[id(ks[1])][1] if len(ks) > 1 else None
        dense = self.log[self.last][1] if self.last is not None and self.last not in ids else None
        self.states.append((first, second, dense))
        # What a later step can still need: the last evaluation (the next step's first stage).
        self.log = {self.last: self.log[self.last]} if self.last in self.log else {}

    def close(self) -> None:
        self.log = {}

    def replay(self, n: int, rhs, n_stages: int):
        first, second, dense = self.states[n]
        at = {0: first, 1: second, n_stages: dense}
        count = [0]
        devices = self.devices

        def replay_rhs(t, y):
            state = at.get(count[0])
            if state is not None:
                set_rng_state(state, devices)
            count[0] += 1
            return rhs(t, y)

        return replay_rhs


def solve(problem: ODEProblem, stats: SolveStats) -> torch.Tensor:
    if problem.method in ADAMS_METHODS:  # multistep: no one-step replay, recompute instead
        return recompute.solve(problem, stats)
    return run(CheckpointStrategy(problem, stats), problem, NAME, replays_randomness=True)
