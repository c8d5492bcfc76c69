"""Stiff benchmark (issue 14, "what must show"): Robertson (T = 1e5), Van der Pol (mu = 1000)
and HIRES at rtol = 1e-6, in one process:

* ours: every adaptive stiff method of the torch engine (Rosenbrock rodas5p, rodas4, ros3p; ESDIRK
  kvaerno5, kencarp4), float64, CPU;
* SciPy ``solve_ivp`` Radau and BDF (given the analytic Jacobian);
* diffrax Kvaerno5 (jax on CPU, float64, ``jax.jit``; the compile is timed apart), when jax
  is importable.

Columns: error against SciPy Radau at rtol = 1e-12 (``stiff_problems.reference``, max over
save times and components of |y - ref| / (atol + |ref|)), median wall time of ``--repeats``
runs (after one warm-up run), right-hand-side evaluations (ours: each Jacobian counts as one,
it is one evaluation plus one batched backward pass; SciPy: nfev + njev; diffrax: counted by a
``jax.debug.callback`` in the vector field in a separate, untimed run, where a ``jacfwd`` Jacobian
counts one evaluation per state component; its accepted + rejected trial steps are given too)
and accepted steps.

    python benchmarks/stiff.py                 # all problems, writes docs/stiff.md's table
    python benchmarks/stiff.py --problems robertson --repeats 1 --no-write
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import pysciml_grad as psg  # noqa: E402
import stiff_problems as sp  # noqa: E402

DOC = HERE.parent / "docs" / "stiff.md"
START, END = "<!-- stiff-benchmark:start -->", "<!-- stiff-benchmark:end -->"
OURS = ("rodas5p", "rodas4", "ros3p", "kvaerno5", "kencarp4")
ESDIRK = ("kvaerno5", "kencarp4")
RTOL = 1e-6


def _median_time(run, repeats):
    run()  # warm-up (first-call overheads: torch dispatch caches, SciPy imports)
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def ours(problem, method, repeats):
    """One of our methods. The ESDIRK methods end their steps on the save times by default
    (``EmbeddedImplicitTableau.steps_to_saves``: their dense output is cubic Hermite)."""
    y0 = torch.tensor(problem.y0, dtype=torch.float64)
    t = torch.tensor(problem.t_eval, dtype=torch.float64)
    options = {"return_stats": True, "max_num_steps": 200_000}

    def run():
        with torch.no_grad():
            return psg.odeint(problem.f_torch, y0, t, method=method, rtol=RTOL, atol=problem.atol, options=options)

    wall, (ys, stats) = _median_time(run, repeats)
    name = f"ours {method}"
    return dict(solver=name, wall_s=wall, nfe=stats.nfe, steps=stats.n_steps, ys=ys.numpy())


def scipy_solver(problem, method, repeats):
    t = problem.t_eval

    def run():
        return solve_ivp(problem.f_np, (t[0], t[-1]), problem.y0, method=method, t_eval=t, rtol=RTOL,
                         atol=problem.atol, jac=problem.jac_np)

    wall, sol = _median_time(run, repeats)
    return dict(solver=f"SciPy {method}", wall_s=wall, nfe=int(sol.nfev + sol.njev), steps=None, ys=sol.y.T,
                ok=bool(sol.success))


def diffrax_kvaerno5(problem, repeats):
    try:
        import jax
        import jax.numpy as jnp
        import diffrax
    except ImportError as err:  # reported in the table, not hidden
        return dict(solver="diffrax Kvaerno5", skipped=f"jax/diffrax not importable: {err}")
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_platform_name", "cpu")

    # the same right-hand sides, written for jax (the torch ones cannot be traced)
    f_jax = {"robertson": _rober_jax, "van_der_pol_mu1000": _vdp_jax, "hires": _hires_jax}[problem.name]
    ts = jnp.asarray(problem.t_eval)

    def solver(field):
        @jax.jit
        def solve(y0):
            return diffrax.diffeqsolve(
                diffrax.ODETerm(field), diffrax.Kvaerno5(), ts[0], ts[-1], None, y0,
                saveat=diffrax.SaveAt(ts=ts), stepsize_controller=diffrax.PIDController(rtol=RTOL, atol=problem.atol),
                max_steps=200_000,
            )
        return solve

    solve = solver(lambda t, y, args: f_jax(t, y))

    y0 = jnp.asarray(problem.y0)
    t0 = time.perf_counter()
    sol = solve(y0)
    jax.block_until_ready(sol.ys)
    compile_s = time.perf_counter() - t0

    def run():
        out = solve(y0)
        jax.block_until_ready(out.ys)
        return out

    wall, sol = _median_time(run, repeats)
    stats = {k: int(v) for k, v in sol.stats.items() if k in ("num_accepted_steps", "num_rejected_steps")}
    calls = [0]

    def counted(t, y, args):
        jax.debug.callback(lambda _: calls.__setitem__(0, calls[0] + 1), t)
        return f_jax(t, y)

    jax.block_until_ready(solver(counted)(y0).ys)  # untimed: the host callback costs far more than f
    return dict(solver="diffrax Kvaerno5 (jit)", wall_s=wall, nfe=calls[0], steps=stats["num_accepted_steps"],
                trials=stats["num_accepted_steps"] + stats["num_rejected_steps"], ys=np.asarray(sol.ys),
                compile_s=compile_s)


def _rober_jax(t, y):
    import jax.numpy as jnp

    y1, y2, y3 = y
    return jnp.stack([-0.04 * y1 + 1e4 * y2 * y3, 0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2 ** 2, 3e7 * y2 ** 2])


def _vdp_jax(t, y):
    import jax.numpy as jnp

    return jnp.stack([y[1], sp.MU * (1 - y[0] ** 2) * y[1] - y[0]])


def _hires_jax(t, y):
    import jax.numpy as jnp

    return jnp.stack(sp.hires_terms(y))


def run_all(names, repeats, methods=OURS):
    rows = []
    for problem in sp.PROBLEMS:
        if problem.name not in names:
            continue
        ref = sp.reference(problem)
        results = [ours(problem, m, repeats) for m in methods]
        results += [scipy_solver(problem, m, repeats) for m in ("Radau", "BDF")]
        results.append(diffrax_kvaerno5(problem, repeats))
        for r in results:
            r["problem"] = problem.name
            if "ys" in r:
                r["error"] = sp.relative_error(np.asarray(r.pop("ys")), ref, problem.atol)
            rows.append(r)
            print(json.dumps({k: v for k, v in r.items()}), flush=True)
    return rows


def table(rows, repeats):
    lines = [
        f"rtol = {RTOL:g}, float64, CPU (2 cores shared with other jobs), median of {repeats} runs after a warm-up.",
        "Error: max over save times and components of |y - ref| / (atol + |ref|), ref = SciPy Radau at rtol = 1e-12.",
        "",
        "| problem | solver | error | wall time (s) | RHS evaluations | accepted steps |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['problem']} | {r['solver']} | skipped: {r['skipped']} | | | |")
            continue
        nfe = r["nfe"] if "trials" not in r else f"{r['nfe']} ({r['trials']} trial steps)"
        steps = r["steps"] if r["steps"] is not None else "n/a"
        extra = f" (+{r['compile_s']:.1f} s jit compile)" if "compile_s" in r else ""
        lines.append(f"| {r['problem']} | {r['solver']} | {r['error']:.1e} | {r['wall_s']:.3f}{extra} | {nfe} | {steps} |")
    return "\n".join(lines)


def write_doc(text, doc=DOC):
    page = doc.read_text() if doc.exists() else "# Stiff problems\n"
    block = f"{START}\n{text}\n{END}"
    if START in page and END in page:
        head, rest = page.split(START, 1)
        page = head + block + rest.split(END, 1)[1]
    else:
        page = page.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(page)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", default=",".join(p.name for p in sp.PROBLEMS))
    ap.add_argument("--methods", default=",".join(OURS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = run_all(args.problems.split(","), args.repeats, tuple(args.methods.split(",")))
    text = table(rows, args.repeats)
    print(text)
    (HERE / "stiff.json").write_text(json.dumps(rows, indent=1))
    if not args.no_write:
        write_doc(text)
    return rows


if __name__ == "__main__":
    main()
