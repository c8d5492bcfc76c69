"""Cost of checking every ``func`` output (type, shape, dtype, device) on the speed problem.

Usage (from the repository root)::

    python benchmarks/validation_overhead.py [--repeats 30] [--device cpu]

The speed problem of ``benchmarks/run.py`` (MLP 2->64->64->2, batch 512, float32, dopri5,
rtol 1e-6, t in [0, 1] and [0, 10]); forward + backward with DirectAD and
CheckpointAdjoint, once with the per-evaluation check and once with it replaced by a
no-op, the two interleaved call by call so that machine load hits both alike. Reports
the median of each and the ratio; also the check's own cost per call measured in
isolation, and that as a fraction of one evaluation of the MLP. Writes
``benchmarks/validation_overhead.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import pysciml_grad as psg  # noqa: E402
from pysciml_grad.backends.torch import integrate  # noqa: E402
from problems import interleaved_medians, mlp_problem, sync as _sync  # noqa: E402

OUT = HERE / "validation_overhead.md"


def main(argv=None) -> str:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    checked = integrate.check_rhs_meta
    lines = [
        "# Per-evaluation output check: overhead (`python benchmarks/validation_overhead.py`; generated)",
        "",
        f"device {args.device}, torch {torch.__version__}, 1 thread, {args.repeats} interleaved repeats, median.",
        "",
    ]
    rows = []
    for t1 in (1.0, 10.0):
        prob = mlp_problem(t1=t1).to(device=args.device)
        params = list(prob.func.parameters())
        for name, sa in (("DirectAD", psg.DirectAD()), ("CheckpointAdjoint", psg.CheckpointAdjoint())):
            def once() -> float:
                for p in params:
                    p.grad = None
                _sync(args.device)
                start = time.perf_counter()
                ys, stats = psg.odeint(prob.func, prob.y0, prob.t, method=prob.method, rtol=prob.rtol,
                                       atol=prob.atol, sensealg=sa, options={"return_stats": True})
                prob.loss(ys[-1]).backward()
                _sync(args.device)
                once.nfe = stats.nfe + stats.nfe_backward
                return time.perf_counter() - start

            m_on, m_off = interleaved_medians(once, lambda: setattr(integrate, "check_rhs_meta", checked),
                                              lambda: setattr(integrate, "check_rhs_meta", lambda out, y, t: None),
                                              args.repeats)
            rows.append((t1, name, once.nfe, m_on, m_off))
    # The check alone, per call, against one MLP evaluation.
    prob = mlp_problem().to(device=args.device)
    y, t = prob.y0, torch.zeros(())
    out = prob.func(t, y)
    n = 20000
    start = time.perf_counter()
    for _ in range(n):
        checked(out, y, t)
    per_check = (time.perf_counter() - start) / n
    with torch.no_grad():
        for _ in range(10):
            prob.func(t, y)
        _sync(args.device)
        start = time.perf_counter()
        for _ in range(200):
            prob.func(t, y)
        _sync(args.device)
        per_eval = (time.perf_counter() - start) / 200
    lines += [
        "| problem | sensealg | NFE fwd+bwd | with check (ms) | without (ms) | ratio (A/B, noisy) | "
        "checks' share (NFE x cost per check / time) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for t1, name, nfe, m_on, m_off in rows:
        lines.append(f"| t in [0, {t1:g}] | {name} | {nfe} | {1e3 * m_on:.2f} | {1e3 * m_off:.2f} | "
                     f"{m_on / m_off:.3f} | {100 * nfe * per_check / m_on:.2f} % |")
    lines += [
        "",
        f"The check alone: {1e6 * per_check:.2f} µs per call; one MLP evaluation (no grad): "
        f"{1e6 * per_eval:.0f} µs, so {100 * per_check / per_eval:.2f} % per evaluation.",
    ]
    text = "\n".join(lines) + "\n"
    OUT.write_text(text)
    return text


if __name__ == "__main__":
    print(main())
