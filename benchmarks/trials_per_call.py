"""Two trial steps per compiled call against one (``options={"compile": {"trials_per_call": 1}}``).

Usage (from the repository root)::

    python benchmarks/trials_per_call.py [--device cuda] [--reps 30]   # -> benchmarks/trials_per_call.md

With grad, every compiled call goes through AOT autograd's forward and backward wrappers,
so DirectAD's compiled solves take two trial steps per call (``compiled.make_pair``, and
``make_fixed_pair`` on a fixed grid). This compares the two settings on the same problems in
one process, round-robin (each repetition runs every row once, alternating which setting goes
first), with eager and torchdiffeq ``odeint`` as references: forward + backward of
sum(y(t)^2) over the save times, gradient to the MLP's weights, DirectAD, float32, 1 thread.

- P1: MLP 2->16->2 (tanh), batch 1, dopri5 rtol 1e-6 atol 1e-8, t in [0, 10], 2 save times;
- P1 rk4: the same MLP, rk4 with step_size 0.05 over [0, 10] (200 steps);
- P2: MLP 2->64->64->2 (tanh), batch 512 (``problems.mlp_problem``), dopri5, t in [0, 1],
  2 save times and 11.

Minima over the repetitions (load only ever adds time on a shared machine). The compile
columns time the first three solves of each compiled row with a fresh inductor cache.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="psg_inductor_")  # before torch: a cold cache

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import pysciml_grad as psg  # noqa: E402
from compiled_step import MLP, fix_malloc_thresholds  # noqa: E402
from problems import mlp_problem, sync  # noqa: E402

OUT = HERE / "trials_per_call.md"


def problems(dev):
    torch.manual_seed(0)
    small = MLP().to(dev)
    y_small = torch.tensor([[1.0, 0.5]], device=dev)
    big = mlp_problem().to(device=dev)
    tol = dict(rtol=1e-6, atol=1e-8)
    return {
        "P1 dopri5, 2 save times": (small, y_small, torch.tensor([0.0, 10.0], device=dev), dict(method="dopri5", **tol), {}),
        "P1 rk4, step 0.05, 200 steps": (small, y_small, torch.tensor([0.0, 10.0], device=dev), dict(method="rk4"),
                                         {"step_size": 0.05}),
        "P2 dopri5, 2 save times": (big.func, big.y0, big.t, dict(method="dopri5", **tol), {}),
        "P2 dopri5, 11 save times": (big.func, big.y0, torch.linspace(0.0, 1.0, 11, device=dev),
                                     dict(method="dopri5", **tol), {}),
    }


def row(func, y0, t, kw, opts, compile_value):
    params = list(func.parameters())
    options = dict(opts, return_stats=True)
    if compile_value is not None:
        options["compile"] = compile_value

    def run():
        func.zero_grad()
        ys, st = psg.odeint(func, y0, t, params=params, sensealg=psg.DirectAD(), options=options, **kw)
        ys.square().sum().backward()
        return st.n_steps + st.n_rejected

    return run


def tdq_row(func, y0, t, kw, opts):
    import torchdiffeq

    def run():
        func.zero_grad()
        ys = torchdiffeq.odeint(func, y0, t, options=opts or None, **kw)
        ys.square().sum().backward()

    return run


def main(argv=None) -> str:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    torch.set_num_threads(1)
    allocator = fix_malloc_thresholds()
    lines = [
        "# Two trial steps per compiled call against one (`python benchmarks/trials_per_call.py`; do not edit by hand)",
        "",
        f"DirectAD, forward + backward, float32, device {dev}, 1 thread, minimum of {args.reps} round-robin repetitions "
        f"(the order of the two compiled rows alternates), torch {torch.__version__}, load average at start "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {allocator}. Compile: the first solve of each compiled row "
        "(first three solves, cold inductor cache; the one-per-call row goes first, so the second row's graphs that "
        "the first already built, e.g. the single step serving an odd last trial, are not counted again).",
        "",
        "| problem | trial steps | 1 per call (ms) | 2 per call (ms) | 2 / 1 | eager (ms) | torchdiffeq (ms) | "
        "2 per call, x torchdiffeq | compile, 1 per call (s) | compile, 2 per call (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (func, y0, t, kw, opts) in problems(dev).items():
        rows = {"one": row(func, y0, t, kw, opts, {"trials_per_call": 1}), "two": row(func, y0, t, kw, opts, True),
                "eager": row(func, y0, t, kw, opts, None), "tdq": tdq_row(func, y0, t, kw, opts)}
        compile_s, trials = {}, None
        for key in ("one", "two"):
            sync(str(dev))
            start = time.perf_counter()
            for _ in range(3):  # the first call compiles; with grad the first backward passes audit closures
                trials = rows[key]()
            sync(str(dev))
            compile_s[key] = time.perf_counter() - start
        for key in ("eager", "tdq"):
            rows[key]()
        times = {k: [] for k in rows}
        for rep in range(args.reps):
            order = ["one", "two", "eager", "tdq"] if rep % 2 == 0 else ["two", "one", "eager", "tdq"]
            for key in order:
                sync(str(dev))
                start = time.perf_counter()
                rows[key]()
                sync(str(dev))
                times[key].append(time.perf_counter() - start)
        best = {k: 1e3 * min(v) for k, v in times.items()}
        lines.append(f"| {name} | {trials} | {best['one']:.2f} | {best['two']:.2f} | {best['two'] / best['one']:.2f}x | "
                     f"{best['eager']:.2f} | {best['tdq']:.2f} | {best['two'] / best['tdq']:.2f}x | "
                     f"{compile_s['one']:.1f} | {compile_s['two']:.1f} |")
    text = "\n".join(lines) + "\n"
    (OUT if dev.type == "cpu" else OUT.with_name(f"{OUT.stem}_{dev.type}.md")).write_text(text)
    return text


if __name__ == "__main__":
    print(main())
