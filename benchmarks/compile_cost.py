"""Compile cost of options={"compile": ...} per new problem shape, and what it buys (issue 11).

Usage (from the repository root)::

    python benchmarks/compile_cost.py [--device cuda]   # writes benchmarks/compile_cost[_cuda].md

Each row runs in a fresh subprocess with an empty inductor cache (a fresh
TORCHINDUCTOR_CACHE_DIR), so nothing is reused between rows: the first compiled forward
solve (no_grad, dopri5, rtol 1e-6, atol 1e-8) is timed as wall time and as CPU time of the
process and its children (inductor's C++ compiler runs as child processes). CPU time is the
number to read on a loaded machine: wall time there is mostly waiting for a core. Then the
eager and the compiled solve are timed alternately, 7 times each, minimum reported.

P1: MLP 2->16->2 (tanh), batch 1, t in [0, 10]. P2: ``problems.mlp_problem`` (MLP
2->64->64->2, batch 512, t in [0, 1]). Settings: inductor as the solver sets it up (``True``:
on CPU with inductor's C++ wrapper and ATen's tanh, ``aten_math.py``), the same with
inductor's Python wrapper (``{"options": {"cpp_wrapper": False}}``), inductor
without C++ vectorisation (``{"options": {"cpp.vec_isa_ok": False}}``: most of the compile
is the C++ compiler building the generated kernels, and the vectorised ones are the slow
ones to build), and dynamo capture alone (``{"backend": "eager"}``: no code generation).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETTINGS = {
    "inductor (compile=True)": True,
    "inductor, Python wrapper": {"options": {"cpp_wrapper": False}},
    "inductor, no C++ vectorisation": {"options": {"cpp.vec_isa_ok": False}},
    "dynamo capture only (backend eager)": {"backend": "eager"},
}

CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, sys.argv[4]); sys.path.insert(0, os.path.join(sys.argv[4], "benchmarks"))
import torch
import pysciml_grad as psg
from problems import mlp_problem, sync
torch.set_num_threads(1)
settings, which, dev = json.loads(sys.argv[1]), sys.argv[2], torch.device(sys.argv[3])
if which == "P1":
    torch.manual_seed(0)
    f = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).to(dev)
    func = lambda t, y: f(y)
    y0, t = torch.randn(1, 2, device=dev), torch.tensor([0.0, 10.0], device=dev)
else:
    p = mlp_problem().to(device=dev)
    func, y0, t = p.func, p.y0, p.t

def cpu():
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

def run(opt):
    with torch.no_grad():
        out = psg.odeint(func, y0, t, rtol=1e-6, atol=1e-8, options=opt)
    sync(dev.type)
    return out

run({})
c0, w0 = cpu(), time.perf_counter()
run({"compile": settings})
first_wall, first_cpu = time.perf_counter() - w0, cpu() - c0
times = {"eager": [], "compiled": []}
for _ in range(7):
    for k, o in (("eager", {}), ("compiled", {"compile": settings})):
        s = time.perf_counter(); run(o); times[k].append(time.perf_counter() - s)
print("RESULT " + json.dumps(dict(first_wall=first_wall, first_cpu=first_cpu,
                                  eager=min(times["eager"]), compiled=min(times["compiled"]))))
"""


def main(argv=None) -> str:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    rows = []
    for which in ("P1", "P2"):
        for label, settings in SETTINGS.items():
            env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp(prefix="psg_cc_"))
            proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(settings), which, args.device,
                                   str(HERE.parent)], capture_output=True, text=True, env=env)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if not line:
                rows.append(f"| {which} | {label} | failed: {proc.stderr.strip().splitlines()[-1:]} | | | | |")
                continue
            r = json.loads(line[0][7:])
            rows.append(f"| {which} | {label} | {r['first_wall']:.1f} | {r['first_cpu']:.1f} | {1e3 * r['eager']:.2f} | "
                        f"{1e3 * r['compiled']:.2f} | {r['compiled'] / r['eager']:.2f}x |")
    lines = [
        "# Compile cost per new problem shape (`python benchmarks/compile_cost.py`; do not edit by hand)",
        "",
        f"Forward solve (no_grad), dopri5, rtol 1e-6, atol 1e-8, float32, device {args.device}, 1 thread, "
        f"torch {torch.__version__}; one fresh subprocess and an empty inductor cache per row. Machine "
        f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (wall time on a loaded "
        "machine is mostly waiting; CPU time = the process and its C++ compiler children). P1: MLP 2-16-2, "
        "batch 1, t in [0, 10]; P2: MLP 2-64-64-2, batch 512, t in [0, 1].",
        "",
        "| problem | compile setting | first call wall (s) | first call CPU (s) | eager (ms) | compiled (ms) | compiled / eager |",
        "|---|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]
    text = "\n".join(lines)
    suffix = "" if args.device == "cpu" else f"_{torch.device(args.device).type}"
    (HERE / f"compile_cost{suffix}.md").write_text(text)
    return text


if __name__ == "__main__":
    print(main())
