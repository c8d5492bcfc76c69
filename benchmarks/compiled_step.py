"""options={"compile": True} vs eager vs torchdiffeq, against the floor (issue 11: P1, P2).

Usage (from the repository root)::

    python benchmarks/compiled_step.py [--device cuda] [--reps 15]   # P1 -> benchmarks/compiled_step.md
    python benchmarks/compiled_step.py --problem p2 [--device cuda]  # P2 -> benchmarks/compiled_step_p2.md
    python benchmarks/compiled_step.py --problem all --device cuda    # both, one command
                                                # -> benchmarks/compiled_step{,_p2}_cuda.md

P1: dy/dt = MLP(y), MLP 2->16->2 (tanh), batch 1, float32, dopri5, rtol 1e-6, atol 1e-8,
t in [0, 10] (2 save times). Three regimes: the forward solve alone (no_grad), forward +
backward of sum(y(10)^2) with the gradient to the MLP's weights (DirectAD,
CheckpointAdjoint), and the same for the continuous adjoints (Backsolve, Interpolating,
Quadrature), with torchdiffeq's ``odeint_adjoint`` beside ``odeint``.

P2 (the package benchmark, ``problems.mlp_problem``): MLP 2->64->64->2 (tanh), batch 512,
float32, dopri5, rtol 1e-6, atol 1e-8, t in [0, 1] and in [0, 10], loss mean(y(t1)^2),
forward + backward.

Floor: the func evaluations the row's solve makes, at the states it makes them, and
nothing else. The states are recorded from one eager solve (ours) and one torchdiffeq
solve; the floor evaluates func at those (t, y) (cycled when a row made more
evaluations) and, for the evaluations a backward pass must traverse, backpropagates the
stacked outputs once: for DirectAD those are the accepted steps' stages (stages x
accepted steps; initial-step probe and rejected trials need no backward), for
CheckpointAdjoint all forward evaluations without a graph plus its replayed ones
(``nfe_backward``) with one, for torchdiffeq every evaluation with a graph. Chaining
y <- func(t, y) instead, as this benchmark used to, is not func's cost at the solve's
states: iterated, the state of P2 shrank from |y| 3.9 to 0.05, where tanh is cheaper
(a func call 102 us against 143 us at the solve's states), and over 80 evaluations the
backward's cotangents became subnormal floats (3-4x slower; it was patched by flushing
subnormals). Solver overhead per step = (min time - floor) / trial steps (accepted +
rejected; torchdiffeq: (nfe - 2) / 6). Solvers are timed round-robin in one process (each
repetition runs each solver once), so a change in machine load hits all of them alike;
ratios come from the same run. Minima, not medians: on a shared machine load only ever
adds time. The first compiled calls of each configuration are timed separately as the
compile cost (they trace and lower every graph that configuration needs: the trial step,
and for the backward the replayed step's VJP or the step's backward graph; with grad that
takes 1 + FULL_AUDITS calls, since the first backward passes of a func replay eagerly
while closure discovery audits every graph; the timed sum includes those calls' run
time), with an empty inductor cache (a fresh TORCHINDUCTOR_CACHE_DIR) unless --warm-cache.

On CUDA the same rows run with ``--device cuda``; the compiled fixed-step path uses CUDA
graphs there (``mode="reduce-overhead"``, see compiled.py).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import sys
import time
from pathlib import Path

if "--warm-cache" not in sys.argv:  # before torch is imported: a cold inductor cache
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="psg_inductor_")

import torch  # noqa: E402


def fix_malloc_thresholds() -> str:
    """glibc only: serve allocations below 64 MiB from the heap and keep freed memory.

    By default glibc maps every block above its (dynamic) mmap threshold, 128 KiB at first,
    freshly from the kernel and unmaps it on free, so a 512 x 64 float32 activation (exactly
    128 KiB) can be new pages, page-faulted on first write, in one repetition and reused
    heap in the next, depending on what the other rows freed. That moved the floor by up
    to 20 % between repetitions. Fixed thresholds (``mallopt``; M_MMAP_THRESHOLD = -3,
    M_TRIM_THRESHOLD = -1 in /usr/include/malloc.h, glibc 2.36) give every row the same
    allocator; the same can be had for any program with the environment variables
    MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return "allocator: as the platform has it (not glibc)"
    if libc.mallopt(-3, 64 << 20) and libc.mallopt(-1, 1 << 30):
        return "allocator: glibc with fixed mmap (64 MiB) and trim (1 GiB) thresholds"
    return "allocator: glibc defaults (mallopt refused)"


ALLOCATOR = fix_malloc_thresholds()

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import pysciml_grad as psg  # noqa: E402
from problems import mlp_problem, sync as sync_device  # noqa: E402
from pysciml_grad.backends.torch.discover import FULL_AUDITS  # noqa: E402
from pysciml_grad.backends.torch.tableaus import TABLEAUS  # noqa: E402

OUTS = {"p1": HERE / "compiled_step.md", "p2": HERE / "compiled_step_p2.md"}


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
        self.nfe = 0

    def forward(self, t, y):
        return self.net(y)


def bench(func, y0, t, loss, tol, regimes, reps, sync):
    """Time each regime's solvers round-robin; returns (markdown lines, compile seconds).

    ``regimes``: {title: (grad, {row name: (kind, options, sensealg)})}, kind "ours",
    "torchdiffeq" (``odeint``) or "torchdiffeq adjoint" (``odeint_adjoint``, gradient to the
    MLP's weights through ``adjoint_params``); every regime must have a "torchdiffeq odeint"
    row (the ratio's base)."""
    import torchdiffeq

    params = list(func.parameters())

    class Counting(torch.nn.Module):  # torchdiffeq's nfe
        def __init__(self):
            super().__init__()
            self.n = 0

        def forward(self, t, y):
            self.n += 1
            return func(t, y)

    counting = Counting()

    def ours(opts, sensealg):
        def run(grad):
            kw = {} if sensealg is None else {"sensealg": sensealg}
            ys, st = psg.odeint(func, y0, t, **tol, params=params if grad else None,
                                options={**opts, "return_stats": True}, **kw)
            if grad:
                loss(ys[-1]).backward()
            # (evaluations, trial steps, evaluations without a graph, with one)
            if not grad:
                return st.nfe, st.n_steps + st.n_rejected, st.nfe, 0
            if isinstance(sensealg, ADJOINTS):  # a forward without a graph, then the backward's evaluations with one
                return st.nfe, st.n_steps + st.n_rejected, st.nfe, st.nfe_backward
            in_graph = n_stages * st.n_steps
            return st.nfe, st.n_steps + st.n_rejected, st.nfe - in_graph, in_graph
        return run

    def tdq(grad):
        counting.n = 0
        ys = torchdiffeq.odeint(counting, y0, t, **tol)
        if grad:
            loss(ys[-1]).backward()
        return counting.n, (counting.n - 2) / 6, 0 if grad else counting.n, counting.n if grad else 0

    def tdq_adjoint(grad):
        # torchdiffeq 0.2.5, torchdiffeq/_impl/adjoint.py: odeint_adjoint(func, y0, t, *, rtol,
        # atol, ..., adjoint_params=None); Counting holds func as a closure, not a submodule,
        # so the parameters are passed. nfe and trial steps are the forward's, as for our rows.
        counting.n = 0
        ys = torchdiffeq.odeint_adjoint(counting, y0, t, **tol, adjoint_params=tuple(params))
        n = counting.n
        if grad:
            loss(ys[-1]).backward()
        return n, (n - 2) / 6, n, counting.n - n

    def recorded(solve):
        states = []

        def rec(tt, yy):
            states.append((tt.detach() if isinstance(tt, torch.Tensor) else tt, yy.detach()))
            return func(tt, yy)

        with torch.no_grad():
            solve(rec)
        return states

    tab = TABLEAUS["dopri5"]
    n_stages = tab.stages - (1 if tab.fsal else 0)  # the FSAL stage is the next step's first
    states_of = {
        "ours": recorded(lambda f: psg.odeint(f, y0, t, **tol)),
        "torchdiffeq": recorded(lambda f: torchdiffeq.odeint(f, y0, t, **tol)),
    }

    def floor(states, n_plain, n_graph):
        with torch.no_grad():
            for k in range(n_plain):
                func(*states[k % len(states)])
        if n_graph:
            outs = [func(tt, yy.detach().requires_grad_(True)) for tt, yy in
                    (states[k % len(states)] for k in range(n_graph))]
            loss(torch.stack(outs)).backward()

    compile_s = {}
    lines = []
    for regime, (grad, rows) in regimes.items():
        solvers = {name: (tdq if kind == "torchdiffeq" else tdq_adjoint if kind == "torchdiffeq adjoint" else ours(opts, sa))
                   for name, (kind, opts, sa) in rows.items()}
        ctx = torch.enable_grad() if grad else torch.no_grad()
        with ctx:
            work = {}
            for name, run in solvers.items():  # warm-up; the first compiled calls are the compile
                sync()
                start = time.perf_counter()
                # With grad, the first FULL_AUDITS backward passes of a func replay eagerly while
                # closure discovery checks every graph; the next one compiles the replay VJP.
                for _ in range(1 + (FULL_AUDITS if grad else 0)):
                    func.zero_grad()
                    work[name] = run(grad)
                sync()
                if "compile" in name:
                    compile_s[f"{regime}: {name}"] = time.perf_counter() - start
            times = {name: [] for name in solvers}
            floors = {name: [] for name in solvers}
            for _ in range(reps):
                for name, run in solvers.items():
                    func.zero_grad()
                    sync()
                    start = time.perf_counter()
                    run(grad)
                    sync()
                    times[name].append(time.perf_counter() - start)
                    func.zero_grad()
                    start = time.perf_counter()
                    floor(states_of[rows[name][0].split()[0]], *work[name][2:])
                    sync()
                    floors[name].append(time.perf_counter() - start)
        ref = min(times["torchdiffeq odeint"])
        lines += [f"## {regime}", "",
                  "| solver | time (ms) | x torchdiffeq | floor (ms) | x floor | nfe | trial steps | overhead / step (us) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name in solvers:
            tm, fl = min(times[name]), min(floors[name])
            nfe, trials = work[name][:2]
            lines.append(f"| {name} | {1e3 * tm:.2f} | {tm / ref:.2f}x | {1e3 * fl:.2f} | {tm / fl:.2f}x | {nfe} | "
                         f"{trials:.0f} | {1e6 * (tm - fl) / trials:.0f} |")
        lines.append("")
    return lines, compile_s


def header(title, desc, dev, reps):
    return [
        f"# {title} (`python benchmarks/compiled_step.py`; do not edit by hand)",
        "",
        f"{desc}, device {dev}, 1 thread, minimum of {reps} round-robin repetitions, torch {torch.__version__}. "
        f"Machine load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
        "(shared with other jobs: absolute times are inflated, ratios from the same run hold better). "
        f"Inductor cache for the compile cost: {'warm (--warm-cache)' if '--warm-cache' in sys.argv else 'cold (a fresh TORCHINDUCTOR_CACHE_DIR)'}. "
        f"{ALLOCATOR[0].upper() + ALLOCATOR[1:]} (see fix_malloc_thresholds).",
        "",
    ]


def compile_lines(compile_s):
    return ["## Compile cost (first calls, this problem shape: 1 without grad, 1 + FULL_AUDITS with grad)", ""] + [f"- {k}: {v:.1f} s" for k, v in compile_s.items()]


GRAD_ROWS = lambda: {  # noqa: E731
    "ours DirectAD eager": ("ours", {}, psg.DirectAD()),
    "ours DirectAD compile": ("ours", {"compile": True}, psg.DirectAD()),
    "ours CheckpointAdjoint eager": ("ours", {}, psg.CheckpointAdjoint()),
    "ours CheckpointAdjoint compile": ("ours", {"compile": True}, psg.CheckpointAdjoint()),
    "torchdiffeq odeint": ("torchdiffeq", None, None),
}


#: sensealgs whose forward runs without a graph and whose backward evaluates func with one
ADJOINTS = (psg.CheckpointAdjoint, psg.BacksolveAdjoint, psg.InterpolatingAdjoint, psg.QuadratureAdjoint)

CONTINUOUS_ROWS = lambda: {  # noqa: E731
    "ours BacksolveAdjoint eager": ("ours", {}, psg.BacksolveAdjoint()),
    "ours BacksolveAdjoint compile": ("ours", {"compile": True}, psg.BacksolveAdjoint()),
    "ours InterpolatingAdjoint eager": ("ours", {}, psg.InterpolatingAdjoint()),
    "ours InterpolatingAdjoint compile": ("ours", {"compile": True}, psg.InterpolatingAdjoint()),
    "ours QuadratureAdjoint eager": ("ours", {}, psg.QuadratureAdjoint()),
    "ours QuadratureAdjoint compile": ("ours", {"compile": True}, psg.QuadratureAdjoint()),
    "torchdiffeq odeint_adjoint": ("torchdiffeq adjoint", None, None),
    "torchdiffeq odeint": ("torchdiffeq", None, None),
}


def p1(dev, reps):
    torch.manual_seed(0)
    func = MLP().to(dev)
    y0 = torch.randn(1, 2, device=dev)
    t = torch.tensor([0.0, 10.0], device=dev)
    regimes = {
        "forward (no_grad)": (False, {
            "ours eager": ("ours", {}, None),
            "ours compile": ("ours", {"compile": True}, None),
            "torchdiffeq odeint": ("torchdiffeq", None, None),
        }),
        "forward + backward": (True, GRAD_ROWS()),
        "forward + backward, continuous adjoints": (True, CONTINUOUS_ROWS()),
    }
    lines, compile_s = bench(func, y0, t, lambda y: y.square().sum(), dict(rtol=1e-6, atol=1e-8), regimes, reps,
                             lambda: sync_device(dev.type))
    head = header("Compiled stepping, P1", "MLP 2->16->2 (tanh), batch 1, float32, dopri5, rtol 1e-6, atol 1e-8, "
                  "t in [0, 10]", dev, reps)
    return head + lines + compile_lines(compile_s)


def accuracy_lines(prob) -> list:
    """Work and accuracy of ours against torchdiffeq on the same problem in float64 (the
    step counts differ because the controllers differ: ours is PI, torchdiffeq's I):
    evaluations and the RMS error of y(t1) in units of the tolerance, atol + rtol |y|,
    against our own solve at rtol 1e-12."""
    import copy

    import torchdiffeq

    func = copy.deepcopy(prob.func).double()
    y0, t = prob.y0.double(), prob.t.double()
    calls = [0]

    def counted(tt, yy):
        calls[0] += 1
        return func(tt, yy)

    out = ["Work and accuracy in float64 (same problem and tolerances; error of y(t1) against our solve at "
           "rtol 1e-12, RMS in units of atol + rtol |y|):", "",
           "| solver | nfe | error / tolerance |", "|---|---:|---:|"]
    with torch.no_grad():
        ref = psg.odeint(func, y0, t, rtol=1e-12, atol=1e-14)[-1]
        scale = prob.atol + prob.rtol * ref.abs()
        for name, solve in (("ours", lambda: psg.odeint(counted, y0, t, rtol=prob.rtol, atol=prob.atol)),
                            ("torchdiffeq", lambda: torchdiffeq.odeint(counted, y0, t, rtol=prob.rtol, atol=prob.atol))):
            calls[0] = 0
            y = solve()[-1]
            err = ((y - ref) / scale).square().mean().sqrt().item()
            out.append(f"| {name} | {calls[0]} | {err:.2g} |")
    return out + [""]


def p2(dev, reps):
    lines, compile_all = [], {}
    for t1 in (1.0, 10.0):
        prob = mlp_problem(t1=t1).to(device=dev)
        regimes = {f"t in [0, {t1:g}], forward + backward": (True, GRAD_ROWS())}
        part, compile_s = bench(prob.func, prob.y0, prob.t, prob.loss, dict(rtol=prob.rtol, atol=prob.atol), regimes,
                                reps, lambda: sync_device(dev.type))
        lines += part + accuracy_lines(prob)
        compile_all.update(compile_s)
    head = header("Compiled stepping, P2 (the package benchmark)",
                  "MLP 2->64->64->2 (tanh), batch 512, float32, dopri5, rtol 1e-6, atol 1e-8, loss mean(y(t1)^2); "
                  "the t in [0, 10] rows reuse the t in [0, 1] compile (same shapes)", dev, reps)
    return head + lines + compile_lines(compile_all)


def main(argv=None) -> str:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--problem", choices=["p1", "p2", "all"], default="p1")
    ap.add_argument("--reps", type=int, default=None, help="round-robin repetitions (default: P1 15, P2 5)")
    ap.add_argument("--warm-cache", action="store_true", help="keep inductor's on-disk cache")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    torch.set_num_threads(1)
    texts = []
    for name, run, reps in (("p1", p1, 15), ("p2", p2, 5)):
        if args.problem in (name, "all"):
            text = "\n".join(run(dev, args.reps or reps)) + "\n"
            out = OUTS[name] if dev.type == "cpu" else OUTS[name].with_name(f"{OUTS[name].stem}_{dev.type}.md")
            out.write_text(text)
            texts.append(text)
    return "\n".join(texts)


if __name__ == "__main__":
    print(main())
