"""Measured convergence orders and stiff behaviour of the nine fixed-step implicit methods.

Order: y'' = -y + cos(2t), y(0) = 1, y'(0) = 0 on [0, 2], exact solution
y = 4/3 cos t - 1/3 cos 2t (time-dependent f, so wrong nodes c would show), with
n = 10, 20, 40, 80 steps; the order is log2 of successive error ratios (max norm at t = 2;
a column is left out once the error is at rounding level). Stiffness:
y' = -1e6 (y - cos t), y(0) = 0, h = 0.1 (z = h lambda = -1e5): the error |y - cos t| at
t = 1, and the number of f evaluations and Jacobians of the whole solve.
Newton tolerance: rtol 1e-13, atol 1e-14 for the order runs; the defaults for the stiff run.
Writes the table into ``docs/stiff.md`` between markers.

    python benchmarks/stiff_orders.py
"""

from __future__ import annotations

import math
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pysciml_grad as psg  # noqa: E402
from pysciml_grad.backends.torch.tableaus import IMPLICIT_TABLEAUS  # noqa: E402

D = torch.float64
DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "stiff.md")
START, END = "<!-- stiff-orders:start -->", "<!-- stiff-orders:end -->"


def oscillator(t, y):
    return torch.stack([y[1], -y[0] + torch.cos(2 * t)])


def exact(t: float) -> torch.Tensor:
    return torch.tensor([4 / 3 * math.cos(t) - math.cos(2 * t) / 3, -4 / 3 * math.sin(t) + 2 / 3 * math.sin(2 * t)],
                        dtype=D)


def errors(method: str, ns=(10, 20, 40, 80)):
    out = []
    for n in ns:
        ys = psg.odeint(oscillator, torch.tensor([1.0, 0.0], dtype=D), torch.tensor([0.0, 2.0], dtype=D),
                        method=method, options={"step_size": 2.0 / n}, rtol=1e-13, atol=1e-14)
        out.append(float((ys[-1] - exact(2.0)).abs().max()))
    return out


def stiff(method: str):
    t = torch.linspace(0, 1, 11, dtype=D)
    ys, stats = psg.odeint(lambda t, y: -1e6 * (y - torch.cos(t)), torch.zeros(1, dtype=D), t, method=method,
                           options={"return_stats": True})
    return abs(float(ys[-1, 0]) - math.cos(1.0)), stats.nfe


def table() -> str:
    lines = ["| method | stages | nominal order | measured orders (n = 10 -> 20 -> 40 -> 80) | error at n = 80 | "
             "L-stable | y' = -1e6 (y - cos t), h = 0.1: error at t = 1 | f evaluations |",
             "|---|---|---|---|---|---|---|---|"]
    for name, tab in IMPLICIT_TABLEAUS.items():
        e = errors(name)
        orders = [math.log2(a / b) for a, b in zip(e, e[1:]) if b > 1e-13]
        err_stiff, nfe = stiff(name)
        lines.append(f"| {name} | {tab.stages} | {tab.order} | {', '.join(f'{q:.2f}' for q in orders)} | {e[-1]:.2e} | "
                     f"{'yes' if tab.l_stable else 'no'} | {err_stiff:.2e} | {nfe} |")
    return "\n".join(lines)


def main() -> None:
    text = table()
    print(text)
    with open(DOC) as fh:
        doc = fh.read()
    block = f"{START}\n{text}\n{END}"
    if START in doc:
        doc = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, doc, flags=re.S)
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    with open(DOC, "w") as fh:
        fh.write(doc)


if __name__ == "__main__":
    main()
