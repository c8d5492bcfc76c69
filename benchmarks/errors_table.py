"""The "errors and edge cases" table of docs/errors.md, measured: one row per bad input, what it
raises and how many milliseconds the call takes until it raises.

Usage (from the repository root)::

    python benchmarks/errors_table.py      # writes benchmarks/errors_table.md and the docs/errors.md section

Each case runs the call 3 times (float64, y0 requiring grad, default sensealg unless
the row says otherwise) and reports the median wall time until the exception. The rows
marked "(accepted)" are inputs that used to be refused or to crash and now solve; they
report "nothing (solves)" and the time of the whole solve. The copy in
docs/errors.md (the documentation site's errors page) sits between the markers ``<!-- errors-table:start -->`` and ``<!-- errors-table:end -->``.
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, List, Tuple

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import pysciml_grad as psg  # noqa: E402

OUT = HERE / "errors_table.md"
DOC = ROOT / "docs" / "errors.md"
START, END = "<!-- errors-table:start -->", "<!-- errors-table:end -->"

F64 = torch.float64
T = torch.tensor([0.0, 1.0], dtype=F64)


def y0() -> torch.Tensor:
    return torch.ones(3, 2, dtype=F64, requires_grad=True)


def decay(t, y):
    return -y


def after(t0: float, bad: Callable, good: Callable = decay) -> Callable:
    def f(t, y):
        return bad(t, y) if float(t) > t0 else good(t, y)

    return f


def solve(func=decay, y=None, t=T, backward=True, **kw):
    ys = psg.odeint(func, y0() if y is None else y, t, **kw)
    if backward:
        ys[-1].sum().backward()


CASES: List[Tuple[str, Callable[[], None]]] = [
    ("`t` with a repeated time", lambda: solve(t=torch.tensor([0.0, 0.5, 0.5, 1.0], dtype=F64))),
    ("`t` not monotonic", lambda: solve(t=torch.tensor([0.0, 1.0, 0.5], dtype=F64))),
    ("`y0` with a NaN", lambda: solve(y=torch.tensor([1.0, float("nan")], dtype=F64))),
    ("`y0` float16", lambda: solve(y=torch.ones(2, dtype=torch.float16))),
    ("`y0` bfloat16", lambda: solve(y=torch.ones(2, dtype=torch.bfloat16))),
    ("0-d `y0`, rk4 on a grid, CheckpointAdjoint (accepted)",
     lambda: solve(y=torch.tensor(1.0, dtype=F64, requires_grad=True), t=torch.linspace(0, 1, 11, dtype=F64),
                   method="rk4")),
    ("`func` returns shape (3, 1) for a (3, 2) state after t = 0.5",
     lambda: solve(after(0.5, lambda t, y: (-y)[:, :1]))),
    ("`func` returns float32 on a float64 state after t = 0.5", lambda: solve(after(0.5, lambda t, y: (-y).float()))),
    ("`func` returns `None` after t = 0.5", lambda: solve(after(0.5, lambda t, y: None))),
    ("`func` NaN at t0", lambda: solve(lambda t, y: y * float("nan"))),
    ("`func` finite at t0, NaN just after (initial-step probe)", lambda: solve(lambda t, y: -y * torch.sqrt(-t))),
    ("`func` NaN for t > 0.5 (adaptive)", lambda: solve(lambda t, y: -y * torch.sqrt(0.5 - t))),
    ("`func` NaN for t > 0.55 (rk4 on a grid)",
     lambda: solve(lambda t, y: -y * torch.sqrt(0.55 - t), t=torch.linspace(0, 1, 11, dtype=F64), method="rk4")),
    ("y' = y^2 blows up at t = 1 (solve to 2)",
     lambda: solve(lambda t, y: y**2, t=torch.tensor([0.0, 2.0], dtype=F64))),
    ("`rtol=inf`", lambda: solve(rtol=float("inf"))),
    ("`rtol=True`", lambda: solve(rtol=True)),
    ("`rtol=torch.tensor(1e-6)`, `atol=np.float32(1e-8)` (accepted)",
     lambda: solve(rtol=torch.tensor(1e-6), atol=np.float32(1e-8))),
    ("per-component `atol` tensor of y0's shape (accepted)", lambda: solve(atol=torch.full((3, 2), 1e-9, dtype=F64))),
    ("`atol` tensor of the wrong shape", lambda: solve(atol=torch.full((3,), 1e-9, dtype=F64))),
    ("`options={'safety': 5}`", lambda: solve(options={"safety": 5})),
    ("`options={'min_step': nan}`", lambda: solve(options={"min_step": float("nan")})),
    ("`options={'min_step': 0.5}` (larger than the first step)", lambda: solve(options={"min_step": 0.5})),
    ("`options={'dfactor': 1.0}`", lambda: solve(options={"dfactor": 1.0})),
    ("`options={'step_size': inf}` (rk4)", lambda: solve(method="rk4", options={"step_size": float("inf")})),
    ("`options={'step_size': 1e-6}` at t ~ 1e12 (t + h == t)",
     lambda: solve(method="euler", t=torch.tensor([1e12, 1e12 + 1e-3], dtype=F64), options={"step_size": 1e-6})),
    ("`options={'max_num_steps': 10}` on a 100-step grid",
     lambda: solve(method="rk4", t=torch.linspace(0, 1, 101, dtype=F64), options={"max_num_steps": 10})),
    ("`options={'return_stats': 'no'}`", lambda: solve(options={"return_stats": "no"})),
    ("`options={'stepsize': 0.1}` (misspelt)", lambda: solve(options={"stepsize": 0.1})),
    ("`method='rk4'` with t = [t0, t1] only", lambda: solve(method="rk4")),
    ("`method='Tsit5'` on the torch engine", lambda: solve(method="Tsit5")),
    ("`BacksolveAdjoint(adjoint_rtol=inf)`", lambda: solve(sensealg=psg.BacksolveAdjoint(adjoint_rtol=float("inf")))),
    ("`InterpolatingAdjoint(checkpointing='no')`",
     lambda: solve(sensealg=psg.InterpolatingAdjoint(checkpointing="no"))),
    ("`DirectAD(through_controller='yes')`", lambda: solve(sensealg=psg.DirectAD(through_controller="yes"))),
    ("`CheckpointAdjoint(max_checkpoints=0)`", lambda: solve(sensealg=psg.CheckpointAdjoint(max_checkpoints=0))),
    ("`sensealg='checkpoint'` (a string)", lambda: solve(sensealg="checkpoint")),
]


def measure(call: Callable[[], None]) -> Tuple[str, str, float]:
    times, name, message = [], "nothing (solves)", ""
    for _ in range(3):
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                call()
        except Exception as exc:  # the row records whatever is raised
            name, message = type(exc).__name__, str(exc)
        times.append(time.perf_counter() - start)
    return name, message, 1e3 * statistics.median(times)


def first_clause(message: str, limit: int = 110) -> str:
    text = " ".join(message.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def table() -> str:
    rows = ["| input | raises | ms until raised (or solved) | message (start) |", "|---|---|---:|---|"]
    for label, call in CASES:
        name, message, ms = measure(call)
        shown = name if name.startswith("nothing") else f"`{name}`"
        rows.append(f"| {label} | {shown} | {ms:.1f} | {first_clause(message)} |")
    return "\n".join(rows) + "\n"


def write_block(doc: Path, block: str) -> None:
    """Replace what lies between START and END in ``doc`` by ``block``; refuse a page without the markers
    (a silent no-op would leave the published table stale)."""
    text = doc.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{doc} has no {START} ... {END} markers: put them where the table belongs")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(head + START + "\n" + block + END + tail)


def main(doc: Path = DOC, out: Path = OUT) -> str:
    torch.set_num_threads(1)
    body = table()
    note = (f"Measured by `python benchmarks/errors_table.py` (torch {torch.__version__}, CPU, 1 thread; "
            "median of 3 calls, forward + backward where no error stops it earlier).\n\n")
    out.write_text("# Errors and edge cases (generated; do not edit by hand)\n\n" + note + body)
    write_block(doc, note + body)
    return body


if __name__ == "__main__":
    print(main())
