"""PerSampleSteps(compact=True): finished samples stop costing (issue 13).

A batch with one long span and many short ones: B = 512 samples of an autonomous MLP
4 -> 256 -> 4 (tanh), float32, dopri5, rtol 1e-6, atol 1e-8; sample 0 runs over [0, 50],
the other 511 over [0, 0.5], each with 6 save times spread over its own span; loss = sum of
squares of the saves. Forward + backward with ``PerSampleSteps()`` and
``PerSampleSteps(compact=True)`` for DirectAD, CheckpointAdjoint, BacksolveAdjoint and
InterpolatingAdjoint(checkpointing=True). One untimed warm-up round, then round-robin
rounds (each contender once per round), medians; ratios compact / not compact from the
same rounds. func's rows evaluated are counted in the forward pass and in the backward pass.

Second table: every sensealg with ``PerSampleSteps()`` on the irregular latent-ODE batch of
``benchmarks/batching.py`` (32 series x 250 observations, MLP 8-64-8, float32, rtol 1e-5,
atol 1e-7), fwd + bwd, one warm-up and 2 timed rounds (min), the parameter gradient's max
deviation from CheckpointAdjoint's relative to its max entry. The continuous adjoints'
backward solve must stop at every save time (the adjoint jumps there), so it takes at least
one step per save interval of every sample, where the forward serves the saves from its
dense output.

    python benchmarks/persample_compact.py     # writes benchmarks/persample_compact.md
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pysciml_grad as psg  # noqa: E402

B, T, RTOL, ATOL, ROUNDS, WIDTH, LONG = 512, 6, 1e-6, 1e-8, 5, 256, 50.0


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, WIDTH), torch.nn.Tanh(), torch.nn.Linear(WIDTH, 4))
        self.rows = 0

    def forward(self, t, y):
        self.rows += len(y)
        return self.net(y)


def problem():
    t1 = torch.full((B,), 0.5)
    t1[0] = LONG
    t = torch.linspace(0, 1, T)[None, :] * t1[:, None]
    y0 = torch.randn(B, 4, generator=torch.Generator().manual_seed(1))
    return t, y0


SENSEALGS = [("DirectAD", psg.DirectAD()), ("CheckpointAdjoint", psg.CheckpointAdjoint()),
             ("BacksolveAdjoint", psg.BacksolveAdjoint()),
             ("InterpolatingAdjoint(checkpointing=True)", psg.InterpolatingAdjoint(checkpointing=True))]


def run(func, t, y0, sensealg, compact):
    func.zero_grad()
    func.rows = 0
    ys = psg.odeint(func, y0, t, rtol=RTOL, atol=ATOL, sensealg=sensealg,
                    options={"steps": psg.PerSampleSteps(compact=compact)})
    fwd_rows = func.rows
    ys.square().sum().backward()
    return fwd_rows, func.rows - fwd_rows


def latent_table():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from batching import ATOL as L_ATOL, RTOL as L_RTOL, latent_batch

    net, y0, t, target = latent_batch()
    params = list(net.parameters())
    sensealgs = [("CheckpointAdjoint()", psg.CheckpointAdjoint()), ("DirectAD()", psg.DirectAD()),
                 ("CheckpointAdjoint(max_checkpoints=4)", psg.CheckpointAdjoint(max_checkpoints=4)),
                 ("BacksolveAdjoint()", psg.BacksolveAdjoint()), ("InterpolatingAdjoint()", psg.InterpolatingAdjoint()),
                 ("InterpolatingAdjoint(checkpointing=True)", psg.InterpolatingAdjoint(checkpointing=True)),
                 ("QuadratureAdjoint()", psg.QuadratureAdjoint())]
    rows, ref = [], None
    for name, sa in sensealgs:
        times = []
        for _ in range(3):
            net.zero_grad()
            start = time.perf_counter()
            ys, stats = psg.odeint(lambda s, y: net(y), y0, t, rtol=L_RTOL, atol=L_ATOL, params=params, sensealg=sa,
                                   options={"steps": psg.PerSampleSteps(), "return_stats": True})
            (ys - target).square().mean().backward()
            times.append(time.perf_counter() - start)
        g = torch.cat([p.grad.reshape(-1) for p in params])
        ref = g if ref is None else ref
        dev = float((g - ref).abs().max() / ref.abs().max())
        rows.append(f"| {name} | {min(times[1:]):.3f} | {stats.extra['trials']} | {dev:.1e} |")
    return ["Every sensealg with `PerSampleSteps()` on the irregular latent batch (32 x 250, the speed table",
            "above), fwd + bwd, min of 2 timed runs after a warm-up:", "",
            "| sensealg | fwd+bwd (s) | forward trials | dL/dtheta vs CheckpointAdjoint (rel. max) |",
            "|---|---:|---:|---:|", *rows]


def main():
    torch.set_num_threads(1)
    func = MLP()
    t, y0 = problem()
    contenders = [(name, sa, c) for name, sa in SENSEALGS for c in (False, True)]
    times = {k[0::2]: [] for k in contenders}
    rows = {}
    for name, sa, c in contenders:  # warm-up
        rows[(name, c)] = run(func, t, y0, sa, c)
    for _ in range(ROUNDS):
        for name, sa, c in contenders:
            start = time.perf_counter()
            run(func, t, y0, sa, c)
            times[(name, c)].append(time.perf_counter() - start)
    load = os.getloadavg()[0]
    lines = [
        f"Written by `python benchmarks/persample_compact.py`: B = {B}, one sample over [0, {LONG:g}] and {B - 1} over",
        f"[0, 0.5], MLP 4-{WIDTH}-4, float32, dopri5, rtol {RTOL:g}, atol {ATOL:g}, fwd + bwd, medians of {ROUNDS}",
        f"round-robin rounds in one process (1 thread; 1-minute load average {load:.1f} on {os.cpu_count()} cores",
        "while it ran, shared with other jobs, so absolute times are noisy).",
        "",
        "| sensealg | compact | fwd+bwd median (s) | compact / not | func rows forward | func rows backward |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, _ in SENSEALGS:
        base = statistics.median(times[(name, False)])
        for c in (False, True):
            med = statistics.median(times[(name, c)])
            fr, br = rows[(name, c)]
            lines.append(f"| {name} | {c} | {med:.3f} | {med / base:.2f} | {fr} | {br} |")
    lines += ["", *latent_table()]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(ROOT, "benchmarks", "persample_compact.md"), "w") as fh:
        fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
