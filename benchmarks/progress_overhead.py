"""Cost of ``options={"progress": True}`` on the speed problem, and of the hook when it is off.

Usage (from the repository root)::

    python benchmarks/progress_overhead.py [--repeats 15]

The speed problem of ``benchmarks/run.py`` (MLP 2->64->64->2, batch 512, float32, dopri5,
rtol 1e-6, t in [0, 10]), forward + backward with CheckpointAdjoint and BacksolveAdjoint,
with the meter on and off, the two interleaved call by call (``problems.interleaved_medians``)
so that machine load hits both alike. The meter writes to stderr, redirected to /dev/null
while timing, so the terminal's drawing is not counted. Also the cost of one
``progress.reached(t)`` call with no meter open (what every accepted backward step pays
when the option is off) and with a tqdm / text meter open. Writes
``benchmarks/progress_overhead.md`` (a page of the documentation site).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import pysciml_grad as psg  # noqa: E402
from pysciml_grad.backends.torch import progress  # noqa: E402
from problems import interleaved_medians, mlp_problem  # noqa: E402

OUT = HERE / "progress_overhead.md"


def per_call(n: int = 20000) -> dict:
    """Seconds per ``progress.reached`` call: no meter, a tqdm meter, a text meter."""
    out = {}
    start = time.perf_counter()
    for k in range(n):
        progress.reached(k / n)
    out["no meter open"] = (time.perf_counter() - start) / n
    kinds = [("tqdm meter open", progress._tqdm)] if progress._tqdm() is not None else []
    kinds.append(("text meter open", lambda: None))
    real = progress._tqdm
    for label, factory in kinds:
        progress._tqdm = factory
        try:
            with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
                with progress.showing(True, "bench", 0.0, 1.0):
                    start = time.perf_counter()
                    for k in range(n):
                        progress.reached(k / n)
                    out[label] = (time.perf_counter() - start) / n
        finally:
            progress._tqdm = real
    return out


def main(argv=None) -> str:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    prob = mlp_problem(t1=10.0)
    params = list(prob.func.parameters())
    state = {"progress": False}
    rows = []
    for name, sa in (("CheckpointAdjoint", psg.CheckpointAdjoint()), ("BacksolveAdjoint", psg.BacksolveAdjoint())):
        def once() -> float:
            for p in params:
                p.grad = None
            with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
                start = time.perf_counter()
                ys, stats = psg.odeint(prob.func, prob.y0, prob.t, method=prob.method, rtol=prob.rtol, atol=prob.atol,
                                       sensealg=sa, options={"return_stats": True, "progress": state["progress"]})
                prob.loss(ys[-1]).backward()
                elapsed = time.perf_counter() - start
            once.steps = stats.n_steps
            return elapsed

        m_on, m_off = interleaved_medians(once, lambda: state.update(progress=True),
                                          lambda: state.update(progress=False), args.repeats)
        rows.append((name, once.steps, m_on, m_off))
    calls = per_call()
    lines = [
        "# Progress meter: overhead (`python benchmarks/progress_overhead.py`; generated)",
        "",
        f"torch {torch.__version__}, CPU, 1 thread, {args.repeats} interleaved repeats, median; the speed problem "
        "over t in [0, 10] (MLP 2-64-64-2, batch 512, dopri5, rtol 1e-6), forward + backward; the meter's "
        f"output to /dev/null. Meter used: {'tqdm' if progress._tqdm() is not None else 'text'}. "
        f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.",
        "",
        "| sensealg | accepted steps | progress on (ms) | off (ms) | ratio on / off (noisy) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, steps, m_on, m_off in rows:
        lines.append(f"| {name} | {steps} | {1e3 * m_on:.2f} | {1e3 * m_off:.2f} | {m_on / m_off:.3f} |")
    lines += ["", "One `progress.reached(t)` call:", "", "| state | µs per call |", "|---|---:|"]
    lines += [f"| {label} | {1e6 * s:.3f} |" for label, s in calls.items()]
    text = "\n".join(lines) + "\n"
    OUT.write_text(text)
    return text


if __name__ == "__main__":
    print(main())
