"""Cost of many save times: DirectAD / CheckpointAdjoint against torchdiffeq's odeint.

Usage (from the repository root)::

    python benchmarks/save_times.py            # writes benchmarks/save_times.md

Every sensealg of the torch engine and both torchdiffeq entry points, 2 / 250 / 1000 save
times, timed round-robin (each round runs every solver once) so load changes hit all alike.

Problem: dy/dt = MLP(y), MLP 2->32->32->2 (tanh), batch 64, float32, t in [0, 5],
dopri5, rtol 1e-6, atol 1e-8, loss = mean(ys^2) over every save time; time = forward
+ backward, the minimum of REPS runs after one warm-up round, one torch thread.

Why DirectAD was 6x torchdiffeq here (issue 8): it carried the step sizes as tensors
in the graph (the step-size controller was differentiated), so each save time's
dense-output weights b_i(theta) * h became a chain of ~40 scalar-tensor autograd ops,
forward and backward. With accepted step sizes held constant (the default since then)
theta and h are Python floats and a save is one fused combination of the stages.
``DirectAD(through_controller=True)`` keeps the old behaviour and shows the old cost.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import pysciml_grad as psg  # noqa: E402

OUT = HERE / "save_times.md"
REPS = 3


def main() -> str:
    import torchdiffeq

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.Tanh(),
                              torch.nn.Linear(32, 2))
    params = list(net.parameters())
    y0 = torch.randn(64, 2)

    def f(t, y):
        return net(y)

    class NetT(torch.nn.Module):  # odeint_adjoint wants an nn.Module or adjoint_params
        def forward(self, t, y):
            return net(y)

    net_t = NetT()

    kw = dict(rtol=1e-6, atol=1e-8, params=params)
    solvers = {
        "torchdiffeq odeint": lambda t: torchdiffeq.odeint(f, y0, t, rtol=1e-6, atol=1e-8),
        "torchdiffeq odeint_adjoint": lambda t: torchdiffeq.odeint_adjoint(
            net_t, y0, t, rtol=1e-6, atol=1e-8, adjoint_params=params),
        "ours DirectAD()": lambda t: psg.odeint(f, y0, t, **kw, sensealg=psg.DirectAD()),
        "ours DirectAD(through_controller=True)": lambda t: psg.odeint(
            f, y0, t, **kw, sensealg=psg.DirectAD(through_controller=True)),
        "ours CheckpointAdjoint()": lambda t: psg.odeint(f, y0, t, **kw, sensealg=psg.CheckpointAdjoint()),
        "ours InterpolatingAdjoint()": lambda t: psg.odeint(f, y0, t, **kw, sensealg=psg.InterpolatingAdjoint()),
        "ours BacksolveAdjoint()": lambda t: psg.odeint(f, y0, t, **kw, sensealg=psg.BacksolveAdjoint()),
        "ours QuadratureAdjoint()": lambda t: psg.odeint(f, y0, t, **kw, sensealg=psg.QuadratureAdjoint()),
    }

    def once(solve, t) -> float:
        net.zero_grad()
        start = time.perf_counter()
        (solve(t) ** 2).mean().backward()
        return time.perf_counter() - start

    counts = (2, 250, 1000)
    rows = {name: [] for name in solvers}
    for n in counts:
        t = torch.linspace(0, 5, n)
        best = {name: float("inf") for name in solvers}
        for r in range(REPS + 1):  # round-robin; the first round is a warm-up
            for name, solve in solvers.items():
                x = once(solve, t)
                if r:
                    best[name] = min(best[name], x)
        for name in solvers:
            rows[name].append(best[name])
    ref = rows["torchdiffeq odeint"]
    lines = [
        "# Save-time cost (`python benchmarks/save_times.py`; do not edit by hand)",
        "",
        "MLP 2->32->32->2 (tanh), batch 64, float32, t in [0, 5], dopri5, rtol 1e-6, atol 1e-8; "
        f"forward + backward of mean(ys^2), min of {REPS} round-robin runs, 1 thread; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the start (a shared machine).",
        "",
        "| solver | " + " | ".join(f"{n} save times (ms, x torchdiffeq)" for n in counts) + " |",
        "|---|" + "---:|" * len(counts),
    ]
    for name, ts in rows.items():
        cells = [f"{1e3 * x:.0f} ({x / r:.2f}x)" for x, r in zip(ts, ref)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    OUT.write_text(text)
    return text


if __name__ == "__main__":
    print(main())
