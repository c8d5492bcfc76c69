"""Gradient audit: every sensealg x backend against an independent reference.

``python -m pysciml_grad check [--json FILE]`` prints a table and optionally writes JSON.
Problems and references (float64):

* ``linear``: the ACA paper's toy dz/dt = a z, L = z(T)^2; closed form
  dL/dz0 = 2 z0 e^{2aT},  dL/da = 2 T z0^2 e^{2aT}.
* ``mlp``: a neural ODE (2 -> 16 -> 2, tanh, batch 8, T = 1); reference: float64
  central finite differences of the loss along a random parameter direction (the
  directional derivative), solved with DirectAD at rtol = 1e-10.

Each row reports the relative error of the directional derivative (``mlp``) or of
(dL/dz0, dL/da) (``linear``), and the forward/backward NFE. A backend or sensealg that
cannot run on this machine shows why instead of a number.
"""

from __future__ import annotations

import functools
import json
import math
import textwrap
from typing import Dict, List

import torch

from . import sensealg as sa
from .errors import BackendUnavailableError, PySciMLGradError
from .solve import odeint

TORCH_SENSEALGS = [
    sa.DirectAD(),
    sa.CheckpointAdjoint(),
    sa.CheckpointAdjoint(max_checkpoints=4),
    sa.BacksolveAdjoint(),
    sa.InterpolatingAdjoint(),
    sa.InterpolatingAdjoint(checkpointing=True),
    sa.QuadratureAdjoint(),
]
JULIA_SENSEALGS = [
    sa.BacksolveAdjoint(),
    sa.InterpolatingAdjoint(),
    sa.InterpolatingAdjoint(checkpointing=True),
    sa.QuadratureAdjoint(),
    sa.GaussAdjoint(),
]
F64 = torch.float64


def _linear_case(sensealg, backend: str, rtol: float) -> Dict:
    a = torch.tensor(-0.8, dtype=F64, requires_grad=True)
    z0 = torch.tensor([1.5], dtype=F64, requires_grad=True)
    T = 2.0
    ys, stats = odeint(
        lambda t, z: a * z, z0, torch.tensor([0.0, T], dtype=F64), method="dopri5", rtol=rtol,
        atol=rtol * 1e-3, sensealg=sensealg, backend=backend, params=[a], options={"return_stats": True},
    )
    (ys[-1] ** 2).sum().backward()
    e = math.exp(2 * float(a.detach()) * T)
    exact = torch.tensor([2 * 1.5 * e, 2 * T * 1.5**2 * e], dtype=F64)
    got = torch.stack([z0.grad[0], a.grad])
    return {"rel_error": float((got - exact).norm() / exact.norm()), "nfe": stats.nfe, "nfe_backward": stats.nfe_backward}


class _MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(0.8 * torch.randn(2, 16, generator=g, dtype=F64))
        self.b1 = torch.nn.Parameter(0.1 * torch.randn(16, generator=g, dtype=F64))
        self.w2 = torch.nn.Parameter(0.8 * torch.randn(16, 2, generator=g, dtype=F64))

    def forward(self, t, y):
        return torch.tanh(y @ self.w1 + self.b1) @ self.w2


def _mlp_loss(model, y0, sensealg, backend, rtol, stats_out=None):
    t = torch.linspace(0.0, 1.0, 3, dtype=F64)
    ys, stats = odeint(model, y0, t, method="dopri5", rtol=rtol, atol=rtol * 1e-2, sensealg=sensealg,
                       backend=backend, options={"return_stats": True})
    if stats_out is not None:
        stats_out.append(stats)
    return (ys[1:] ** 2).mean()


def _mlp_setup():
    model = _MLP()
    y0 = torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    n = sum(p.numel() for p in model.parameters())
    direction = torch.randn(n, generator=torch.Generator().manual_seed(2), dtype=F64)
    return model, y0, direction


@functools.lru_cache(maxsize=1)
def _mlp_reference() -> float:
    """Directional derivative by float64 central differences of a DirectAD solve at rtol 1e-10."""
    model, y0, direction = _mlp_setup()
    params = list(model.parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def loss_at(x):
        with torch.no_grad():
            i = 0
            for p in params:
                p.copy_(x[i : i + p.numel()].view_as(p))
                i += p.numel()
            return float(_mlp_loss(model, y0, sa.DirectAD(), "torch", 1e-10))

    eps = 1e-6
    return (loss_at(flat + eps * direction) - loss_at(flat - eps * direction)) / (2 * eps)


def _mlp_case(sensealg, backend: str, rtol: float) -> Dict:
    model, y0, direction = _mlp_setup()
    stats: List = []
    _mlp_loss(model, y0, sensealg, backend, rtol, stats).backward()
    grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    fd = _mlp_reference()
    return {"rel_error": abs(float(grad @ direction) - fd) / abs(fd), "nfe": stats[0].nfe, "nfe_backward": stats[0].nfe_backward}


CASES = {"linear": _linear_case, "mlp": _mlp_case}


def label(alg: sa.SensitivityAlgorithm) -> str:
    """``CheckpointAdjoint(max_checkpoints=4)``: the class and its non-default fields."""
    default = type(alg)()
    fields = [f"{k}={v!r}" for k, v in vars(alg).items() if getattr(default, k) != v]
    return f"{type(alg).__name__}({', '.join(fields)})"


def _backend_rows(backend: str, rtol: float) -> List[Dict]:
    rows = []
    for alg in TORCH_SENSEALGS if backend == "torch" else JULIA_SENSEALGS:
        for name, case in CASES.items():
            row = {"backend": backend, "sensealg": label(alg), "problem": name, "rtol": rtol}
            try:
                row.update(case(alg, backend, rtol))
            except BackendUnavailableError as exc:  # one row says why the whole backend is absent
                return [{"backend": backend, "sensealg": "*", "problem": "*", "skipped": str(exc)}]
            except PySciMLGradError as exc:
                row["skipped"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
    return rows


def audit(backends=("torch", "julia"), rtol: float = 1e-6) -> List[Dict]:
    return [row for backend in backends for row in _backend_rows(backend, rtol)]


def format_table(rows: List[Dict]) -> str:
    lines = [f"{'backend':7s} {'sensealg':42s} {'problem':7s} {'rel. error':>10s} {'NFE f/b':>10s}"]
    for r in rows:
        if "skipped" in r and r["sensealg"] == "*":
            # A whole backend is absent: the reason says how to install it, so it is shown
            # in full, wrapped under the row, never cut mid-sentence.
            lines.append(f"{r['backend']:7s} {'*':42s} {'*':7s} not run:")
            lines.extend(textwrap.wrap(r["skipped"], width=100, initial_indent="    ", subsequent_indent="    "))
        elif "skipped" in r:
            lines.append(f"{r['backend']:7s} {r['sensealg']:42s} {r['problem']:7s} not run: {r['skipped'][:160]}")
        else:
            nfe = f"{r['nfe']}/{r['nfe_backward']}"
            lines.append(f"{r['backend']:7s} {r['sensealg']:42s} {r['problem']:7s} {r['rel_error']:10.2e} {nfe:>10s}")
    return "\n".join(lines)


def main(json_path=None, rtol: float = 1e-6, backends=("torch", "julia")) -> List[Dict]:
    rows = audit(backends, rtol)
    print(f"gradient audit at rtol={rtol:g} (references: closed form for 'linear', float64 central FD for 'mlp')")
    print(format_table(rows))
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(rows, fh, indent=2)
    return rows
