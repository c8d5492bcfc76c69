"""Per-step solver overhead with options={"compile": True} vs eager vs torchdiffeq (issue 11, P1).

Usage (from the repository root)::

    python benchmarks/compiled_step.py [--device cuda] [--reps 15]   # writes benchmarks/compiled_step.md

P1: dy/dt = MLP(y), MLP 2->16->2 (tanh), batch 1, float32, dopri5, rtol 1e-6, atol 1e-8,
t in [0, 10] (2 save times). Two regimes: the forward solve alone (no_grad), and forward +
backward of sum(y(10)^2) with the gradient to the MLP's weights.

Floor: the same number of func evaluations chained (y <- func(t, y)), with no solver
arithmetic (forward, or forward + backward, as the row). Solver overhead per step =
(min time - floor for that solver's nfe) / trial steps (accepted + rejected; torchdiffeq:
(nfe - 2) / 6). Solvers are timed round-robin in one process (each repetition runs each
solver once), so a change in machine load hits all of them alike; ratios come from the
same run. Minima, not medians: on a shared machine load only ever adds time. The first compiled call of each configuration (forward: no_grad; DirectAD: grad
enabled, a second graph with its backward) is timed separately as the compile cost, with
an empty inductor cache (a fresh TORCHINDUCTOR_CACHE_DIR) unless --warm-cache.
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import pysciml_grad as psg  # noqa: E402

OUT = HERE / "compiled_step.md"


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
        self.nfe = 0

    def forward(self, t, y):
        return self.net(y)


def main(argv=None) -> str:
    import torchdiffeq

    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--warm-cache", action="store_true", help="keep inductor's on-disk cache")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    func = MLP().to(dev)
    params = list(func.parameters())
    y0 = torch.randn(1, 2, device=dev)
    t = torch.tensor([0.0, 10.0], device=dev)
    tol = dict(rtol=1e-6, atol=1e-8)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    class Counting(torch.nn.Module):  # torchdiffeq's nfe
        def __init__(self):
            super().__init__()
            self.n = 0

        def forward(self, t, y):
            self.n += 1
            return func(t, y)

    counting = Counting()

    def ours(opts, sensealg=None):
        def run(grad):
            kw = {} if sensealg is None else {"sensealg": sensealg}
            ys, st = psg.odeint(func, y0, t, **tol, params=params if grad else None,
                                options={**opts, "return_stats": True}, **kw)
            if grad:
                ys[-1].square().sum().backward()
            return st.nfe, st.n_steps + st.n_rejected
        return run

    def tdq(grad):
        counting.n = 0
        ys = torchdiffeq.odeint(counting, y0, t, **tol)
        if grad:
            ys[-1].square().sum().backward()
        return counting.n, (counting.n - 2) / 6

    def floor(n, grad):
        y = y0
        for _ in range(n):
            y = func(t[0], y)
        if grad:
            y.square().sum().backward()

    regimes = {
        "forward (no_grad)": (False, {
            "ours eager": ours({}),
            "ours compile": ours({"compile": True}),
            "torchdiffeq odeint": tdq,
        }),
        "forward + backward": (True, {
            "ours DirectAD eager": ours({}, psg.DirectAD()),
            "ours DirectAD compile": ours({"compile": True}, psg.DirectAD()),
            "ours CheckpointAdjoint eager": ours({}, psg.CheckpointAdjoint()),
            "ours CheckpointAdjoint compile": ours({"compile": True}, psg.CheckpointAdjoint()),
            "torchdiffeq odeint": tdq,
        }),
    }
    compile_s = {}
    lines = [
        "# Compiled stepping, P1 (`python benchmarks/compiled_step.py`; do not edit by hand)",
        "",
        f"MLP 2->16->2 (tanh), batch 1, float32, dopri5, rtol 1e-6, atol 1e-8, t in [0, 10], device {dev}, "
        f"1 thread, minimum of {args.reps} round-robin repetitions, torch {torch.__version__}. "
        f"Machine load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
        "(shared with other jobs: absolute times are inflated, ratios from the same run hold better).",
        "",
    ]
    for regime, (grad, solvers) in regimes.items():
        ctx = torch.enable_grad() if grad else torch.no_grad()
        with ctx:
            work = {}
            for name, run in solvers.items():  # warm-up; the first compiled call is the compile
                func.zero_grad()
                sync()
                start = time.perf_counter()
                work[name] = run(grad)
                sync()
                if "compile" in name:
                    compile_s[f"{regime}: {name}"] = time.perf_counter() - start
            times = {name: [] for name in solvers}
            floors = {name: [] for name in solvers}
            for _ in range(args.reps):
                for name, run in solvers.items():
                    func.zero_grad()
                    sync()
                    start = time.perf_counter()
                    run(grad)
                    sync()
                    times[name].append(time.perf_counter() - start)
                    func.zero_grad()
                    start = time.perf_counter()
                    floor(work[name][0], grad)
                    sync()
                    floors[name].append(time.perf_counter() - start)
        ref = min(times["torchdiffeq odeint"])
        lines += [f"## {regime}", "",
                  "| solver | time (ms) | x torchdiffeq | floor (ms) | x floor | nfe | trial steps | overhead / step (us) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name in solvers:
            tm, fl = min(times[name]), min(floors[name])
            nfe, trials = work[name]
            lines.append(f"| {name} | {1e3 * tm:.2f} | {tm / ref:.2f}x | {1e3 * fl:.2f} | {tm / fl:.2f}x | {nfe} | "
                         f"{trials:.0f} | {1e6 * (tm - fl) / trials:.0f} |")
        lines.append("")
    lines += ["## Compile cost (first call, this problem shape)", ""]
    lines += [f"- {k}: {v:.1f} s" for k, v in compile_s.items()]
    text = "\n".join(lines) + "\n"
    OUT.write_text(text)
    return text


if __name__ == "__main__":
    print(main())
