"""Transcendental functions on CPU: ATen (eager) against inductor's generated kernels,
and inductor with ``aten_math``'s pass (ATen's kernel called from the compiled graph for
the functions in ``aten_math.ATEN_FUNCTIONS``; the other rows show that inductor's kernel
is the faster one, which is why they are not in that list).

Usage (from the repository root)::

    python benchmarks/aten_math.py [--numel 32768] [--reps 300]   # -> benchmarks/aten_math.md

One float32 tensor of 512 x 64 (P2's hidden layer), one thread. Each compiled row is a
``torch.compile(fullgraph=True)`` function of that one call; "compiled x + 1" is the same
kind of function doing the cheapest pointwise op, so the column "kernel" (compiled minus
that baseline) estimates what the function itself costs inside a graph. Minimum over
``--reps`` calls, rows timed round-robin in one process.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from pysciml_grad.backends.torch.aten_math import CANDIDATES, with_aten_math  # noqa: E402
from pysciml_grad.backends.torch.compiled import _fresh_code  # noqa: E402

OUT = HERE / "aten_math.md"


def function(name):
    fn = getattr(torch, name)
    if name in ("log", "log1p"):
        return lambda x: fn(x.abs())
    return fn


def main(argv=None) -> str:
    ap = argparse.ArgumentParser()
    ap.add_argument("--numel", type=int, default=512 * 64)
    ap.add_argument("--reps", type=int, default=300)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    x = torch.randn(args.numel // 64, 64, generator=torch.Generator().manual_seed(0))
    cpu = torch.device("cpu")
    ours = with_aten_math({}, cpu)
    def compiled(fn, **kw):
        # its own code object per compile: dynamo keeps one cache (8 entries) per code object
        return torch.compile(_fresh_code(lambda v: fn(v)), fullgraph=True, dynamic=False, **kw)

    def plus_one(v):
        return v + 1

    rows = {"baseline": (plus_one, compiled(plus_one), compiled(plus_one, **ours))}
    for name in CANDIDATES:
        fn = function(name)
        rows[name] = (fn, compiled(fn), compiled(fn, **ours))
    for fns in rows.values():
        for f in fns:
            f(x)  # compile
    times = {(name, k): [] for name in rows for k in range(3)}
    for _ in range(args.reps):
        for name, fns in rows.items():
            for k, f in enumerate(fns):
                start = time.perf_counter()
                f(x)
                times[(name, k)].append(time.perf_counter() - start)
    best = {key: 1e6 * min(v) for key, v in times.items()}
    base = best[("baseline", 1)], best[("baseline", 2)]
    lines = [
        "# Transcendental functions on CPU: ATen against inductor (`python benchmarks/aten_math.py`; do not edit by hand)",
        "",
        f"float32, {tuple(x.shape)}, 1 thread, minimum of {args.reps} round-robin calls, torch {torch.__version__}, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores. \"kernel\": the compiled call minus a "
        f"compiled `x + 1` ({base[0]:.1f} us; with the pass {base[1]:.1f} us).",
        "",
        "| function | eager (us) | inductor (us) | inductor kernel (us) | with aten_math (us) | its kernel (us) | inductor kernel / eager |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in CANDIDATES:
        e, c, p = best[(name, 0)], best[(name, 1)], best[(name, 2)]
        lines.append(f"| {name} | {e:.1f} | {c:.1f} | {c - base[0]:.1f} | {p:.1f} | {p - base[1]:.1f} | "
                     f"{(c - base[0]) / e:.1f}x |")
    text = "\n".join(lines) + "\n"
    OUT.write_text(text)
    return text


if __name__ == "__main__":
    print(main())
