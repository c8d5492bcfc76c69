"""A/B timing of two checkouts of pysciml_grad on the speed problem of ``run.py``.

Usage (from the repository root)::

    git archive 3b3ad7f | tar -x -C /tmp/before
    python benchmarks/ab_commits.py /tmp/before . [--rounds 6] [--repeats 7] [--t1 1 10]

Each measurement is a fresh child process that imports pysciml_grad from one checkout,
warms up twice and times ``--repeats`` forward + backward solves (MLP 2->64->64->2,
batch 512, float32, dopri5, rtol 1e-6, atol 1e-8, one torch thread). The children
alternate between the two checkouts for ``--rounds`` rounds, so load on a shared machine
falls on both alike; the time is the child's CPU time (``time.process_time``, one torch
thread), which other processes on a shared machine disturb far less than wall time; the
table reports, per configuration, the minimum over all timed runs of each checkout and
the ratio after / before. torchdiffeq's ``odeint`` runs in the
same children as a control: its ratio shows the noise floor. Writes
``benchmarks/ab_commits.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "ab_commits.md"
CASES = ["DirectAD", "CheckpointAdjoint", "BacksolveAdjoint", "InterpolatingAdjoint(ckpt)", "torchdiffeq odeint"]

CHILD = r"""
import json, sys, time
root, t1, repeats = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
sys.path.insert(0, root)
sys.path.insert(0, {bench!r})
import torch
torch.set_num_threads(1)
import pysciml_grad as psg, torchdiffeq
from problems import mlp_problem
assert psg.__file__.startswith(str(__import__('pathlib').Path(root).resolve())), psg.__file__
prob = mlp_problem(t1=t1)
params = list(prob.func.parameters())
algs = {{"DirectAD": psg.DirectAD(), "CheckpointAdjoint": psg.CheckpointAdjoint(),
        "BacksolveAdjoint": psg.BacksolveAdjoint(), "InterpolatingAdjoint(ckpt)": psg.InterpolatingAdjoint(checkpointing=True)}}
def solver(name):
    if name == "torchdiffeq odeint":
        return lambda: torchdiffeq.odeint(prob.func, prob.y0, prob.t, rtol=prob.rtol, atol=prob.atol)
    return lambda: psg.odeint(prob.func, prob.y0, prob.t, rtol=prob.rtol, atol=prob.atol, sensealg=algs[name])
out = {{}}
for name in {cases!r}:
    run = solver(name)
    times = []
    for r in range(repeats + 2):
        for p in params:
            p.grad = None
        start = time.process_time()
        prob.loss(run()[-1]).backward()
        if r >= 2:
            times.append(time.process_time() - start)
    out[name] = times
print(json.dumps(out))
"""


def main(argv=None) -> str:
    ap = argparse.ArgumentParser()
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--t1", type=float, nargs="+", default=[1.0, 10.0])
    args = ap.parse_args(argv)
    code = CHILD.format(bench=str(HERE), cases=CASES)
    roots = {"before": str(Path(args.before).resolve()), "after": str(Path(args.after).resolve())}
    lines = [
        "# A/B timing of two checkouts (`python benchmarks/ab_commits.py`; generated)",
        "",
        f"before = `{args.before}`, after = `{args.after}`; {args.rounds} alternating rounds x {args.repeats} "
        "timed runs per checkout; minimum forward + backward CPU time (ms); MLP 2->64->64->2, batch 512, "
        "float32, dopri5, rtol 1e-6, 1 thread.",
        "",
        "| t1 | solver | before (ms) | after (ms) | after / before |",
        "|---|---|---:|---:|---:|",
    ]
    for t1 in args.t1:
        times = {k: {c: [] for c in CASES} for k in roots}
        for _ in range(args.rounds):
            for key, root in roots.items():
                res = subprocess.run([sys.executable, "-c", code, root, str(t1), str(args.repeats)],
                                     capture_output=True, text=True, check=True, cwd=root)
                for c, ts in json.loads(res.stdout.strip().splitlines()[-1]).items():
                    times[key][c].extend(ts)
        for c in CASES:
            b, a = min(times["before"][c]), min(times["after"][c])
            lines.append(f"| {t1:g} | {c} | {1e3 * b:.2f} | {1e3 * a:.2f} | {a / b:.3f} |")
    text = "\n".join(lines) + "\n"
    OUT.write_text(text)
    return text


if __name__ == "__main__":
    print(main())
