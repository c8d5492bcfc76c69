"""Cost of discovering func's inputs (issue 8 §1) and memory kept after backward (§6).

Usage (from the repository root)::

    python benchmarks/discovery_overhead.py [--repeats 20] [--device cpu]

Discovery replaces the forward's first, graph-free evaluation f0 = func(t0, y0) by the
same evaluation with autograd on under a TorchFunctionMode (``discover.py``); nothing
else changes. So the A/B compares the speed problem of ``benchmarks/run.py`` (MLP
2->64->64->2, batch 512, float32, dopri5, rtol 1e-6, t in [0, 1] and [0, 10]; forward
+ backward) with the real ``discover`` against a stand-in that makes only that
graph-free evaluation (the code before discovery), interleaved call by call. It also
times one discovery against one graph-free evaluation in isolation.

Memory (§6): a training loop that keeps its losses (``history.append(loss)``) keeps
every autograd node alive; the table gives the bytes each sensealg's forward record
(checkpoints, stored stages) holds per kept loss after ``backward()``, and what it held
before backward, i.e. what a kept loss held before the record was freed.
Writes ``benchmarks/discovery_overhead.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import pysciml_grad as psg  # noqa: E402
from pysciml_grad.backends.torch import discover as disc  # noqa: E402
from pysciml_grad.backends.torch.adjoints import common  # noqa: E402
from problems import interleaved_medians, mlp_problem, sync as _sync  # noqa: E402

OUT = HERE / "discovery_overhead.md"


def plain_first_evaluation(func, t0, y0):
    """The code before discovery: f0 without a graph, nothing found."""
    with torch.no_grad():
        f0 = func(torch.full((), t0, dtype=y0.dtype, device=y0.device), y0)
    return disc.Discovery(f0, (), False, ())


def main(argv=None) -> str:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    real = common.discover
    rows = []
    for t1 in (1.0, 10.0):
        prob = mlp_problem(t1=t1).to(device=args.device)
        params = list(prob.func.parameters())
        for label, func in (("module", prob.func), ("lambda", lambda t, y, f=prob.func: f(t, y))):
            def once() -> float:
                for p in params:
                    p.grad = None
                _sync(args.device)
                start = time.perf_counter()
                ys, stats = psg.odeint(func, prob.y0, prob.t, method=prob.method, rtol=prob.rtol, atol=prob.atol,
                                       params=params if label == "lambda" else None, options={"return_stats": True})
                prob.loss(ys[-1]).backward()
                _sync(args.device)
                once.nfe = stats.nfe + stats.nfe_backward
                return time.perf_counter() - start

            # B: the lambda gets params=, so gradients still flow without discovery.
            m_on, m_off = interleaved_medians(once, lambda: setattr(common, "discover", real),
                                              lambda: setattr(common, "discover", plain_first_evaluation),
                                              args.repeats)
            rows.append((t1, label, once.nfe, m_on, m_off))
    prob = mlp_problem().to(device=args.device)
    n = 200
    for fn in (real, plain_first_evaluation):
        fn(prob.func, 0.0, prob.y0)
    _sync(args.device)
    start = time.perf_counter()
    for _ in range(n):
        real(prob.func, 0.0, prob.y0)
    _sync(args.device)
    per_discover = (time.perf_counter() - start) / n
    start = time.perf_counter()
    for _ in range(n):
        plain_first_evaluation(prob.func, 0.0, prob.y0)
    _sync(args.device)
    per_plain = (time.perf_counter() - start) / n

    lines = [
        "# Discovery of func's inputs: overhead; memory a kept loss holds "
        "(`python benchmarks/discovery_overhead.py`; generated)",
        "",
        f"device {args.device}, torch {torch.__version__}, 1 thread, {args.repeats} interleaved repeats, median. "
        "Default sensealg (CheckpointAdjoint), forward + backward.",
        "",
        "| problem | func | NFE fwd+bwd | with discovery (ms) | before (ms) | ratio (A/B, noisy) | "
        "discovery's share ((one discovery - one plain f0) / time) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for t1, label, nfe, m_on, m_off in rows:
        lines.append(f"| t in [0, {t1:g}] | {label} | {nfe} | {1e3 * m_on:.2f} | {1e3 * m_off:.2f} | "
                     f"{m_on / m_off:.3f} | {100 * (per_discover - per_plain) / m_on:.2f} % |")
    lines += [
        "",
        f"One discovery: {1e6 * per_discover:.0f} µs; the graph-free f0 it replaces: {1e6 * per_plain:.0f} µs "
        f"(+{1e6 * (per_discover - per_plain):.0f} µs once per solve; no evaluation is added).",
        "",
    ]
    lines += memory_table(args.device)
    text = "\n".join(lines) + "\n"
    OUT.write_text(text)
    return text


def memory_table(device: str):
    """Record bytes per kept loss, before and after backward, for every adjoint."""
    prob = mlp_problem().to(device=device)
    sensealgs = {
        "CheckpointAdjoint": psg.CheckpointAdjoint(),
        "CheckpointAdjoint(max_checkpoints=4)": psg.CheckpointAdjoint(max_checkpoints=4),
        "BacksolveAdjoint": psg.BacksolveAdjoint(),
        "InterpolatingAdjoint": psg.InterpolatingAdjoint(),
        "InterpolatingAdjoint(checkpointing=True)": psg.InterpolatingAdjoint(checkpointing=True),
        "QuadratureAdjoint": psg.QuadratureAdjoint(),
    }
    state = prob.y0.numel() * prob.y0.element_size()
    out = [
        f"Memory: the speed problem (state {state / 2**20:.3f} MiB), 5 training iterations that keep "
        "their loss (`history.append(loss)`); bytes of the forward record per kept loss "
        "(`strategy.record_nbytes()`; BacksolveAdjoint keeps only the output, an autograd saved tensor).",
        "",
        "| sensealg | held before backward (MiB) = per kept loss before the fix | after backward (MiB) |",
        "|---|---:|---:|",
    ]
    for name, sa in sensealgs.items():
        history, before, after = [], [], []
        for _ in range(5):
            ys = psg.odeint(prob.func, prob.y0, prob.t, method=prob.method, rtol=prob.rtol, atol=prob.atol, sensealg=sa)
            node = ys.grad_fn
            before.append(node.strategy.record_nbytes())
            loss = prob.loss(ys[-1])
            loss.backward()
            history.append(loss)
            after.append(node.strategy.record_nbytes())
        out.append(f"| {name} | {statistics.mean(before) / 2**20:.3f} | {statistics.mean(after) / 2**20:.3f} |")
    return out


if __name__ == "__main__":
    print(main())
