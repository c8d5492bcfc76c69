"""Backward NFE with and without the adjoint seminorm (Kidger, Chen & Lyons 2021) on the
benchmark's speed problem (``problems.mlp_problem``: MLP 2->64->64->2, batch 512, float32,
dopri5, rtol 1e-6, atol 1e-8), over t in [0, 1] and [0, 10], for our BacksolveAdjoint /
InterpolatingAdjoint and, where installed, torchdiffeq's ``odeint_adjoint`` with
``adjoint_options={"norm": "seminorm"}``. Counts, not timings; the gradient's relative
change is reported too. Writes ``benchmarks/seminorm.md``.

    python benchmarks/seminorm.py
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pysciml_grad as psg  # noqa: E402
from problems import mlp_problem  # noqa: E402


def ours(problem, sensealg):
    ys, stats = psg.odeint(problem.func, problem.y0, problem.t, method=problem.method, rtol=problem.rtol,
                           atol=problem.atol, sensealg=sensealg, options={"return_stats": True})
    problem.func.zero_grad()
    problem.loss(ys[-1]).backward()
    grad = torch.cat([p.grad.reshape(-1) for p in problem.func.parameters()])
    return stats.nfe, stats.nfe_backward, grad


def theirs(problem, seminorm):
    import torchdiffeq

    calls = [0]

    def f(t, y):
        calls[0] += 1
        return problem.func(t, y)

    kw = {"adjoint_options": {"norm": "seminorm"}} if seminorm else {}
    ys = torchdiffeq.odeint_adjoint(f, problem.y0, problem.t, method=problem.method, rtol=problem.rtol,
                                    atol=problem.atol, adjoint_params=tuple(problem.func.parameters()), **kw)
    nfe = calls[0]
    problem.func.zero_grad()
    problem.loss(ys[-1]).backward()
    grad = torch.cat([p.grad.reshape(-1) for p in problem.func.parameters()])
    return nfe, calls[0] - nfe, grad


def main() -> None:
    rows = []
    for t1 in (1.0, 10.0):
        problem = mlp_problem(t1=t1)
        runs = [
            ("psg BacksolveAdjoint", lambda s: ours(problem, psg.BacksolveAdjoint(seminorm=s))),
            ("psg InterpolatingAdjoint", lambda s: ours(problem, psg.InterpolatingAdjoint(seminorm=s))),
        ]
        try:
            import torchdiffeq  # noqa: F401

            runs.append(("torchdiffeq odeint_adjoint", lambda s: theirs(problem, s)))
        except ImportError:
            pass
        for name, run in runs:
            fwd, bwd, g = run(False)
            _, bwd_s, g_s = run(True)
            rel = float((g_s - g).norm() / g.norm())
            rows.append((f"[0, {t1:g}]", name, fwd, bwd, bwd_s, 100.0 * (bwd - bwd_s) / bwd, rel))
            print(rows[-1], flush=True)
    lines = [
        "# Adjoint seminorm: backward function evaluations saved",
        "",
        "`python benchmarks/seminorm.py` on the speed problem of `benchmarks/problems.py` (MLP 2->64->64->2,",
        "batch 512, float32, dopri5, rtol 1e-6, atol 1e-8). Backward NFE counts calls of f in the",
        "backward pass (each with one vector-Jacobian product). `rel. change` = |g_seminorm - g| / |g|",
        "for the parameter gradient.",
        "",
        "| t span | adjoint | forward NFE | backward NFE | backward NFE, seminorm | saved | rel. change of dL/dθ |",
        "|---|---|---|---|---|---|---|",
    ]
    for span, name, fwd, bwd, bwd_s, saved, rel in rows:
        lines.append(f"| {span} | {name} | {fwd} | {bwd} | {bwd_s} | {saved:.0f} % | {rel:.1e} |")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seminorm.md")
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
