"""``psg.audit``: cross-check every gradient method on *your* problem.

For the problem ``L = loss(odeint(func, y0, t))`` it computes dL/d(y0, params) with every
available sensealg at your method and tolerances, and compares each with a float64
reference:

* reference gradient: ``DirectAD`` at rtol = 1e-12, atol = 1e-14 in float64 (the same
  fixed-step method on the same grid when the method is fixed-step: then the loss *is*
  the discrete map and its exact derivative is the reference); adaptive methods are
  referenced with ``dopri5``, so the reference is the derivative of the exact solution to
  ~1e-10;
* cross-check of the reference: float64 central finite differences of the reference
  loss along ``n_directions`` random unit directions v, (L(x + h v) - L(x - h v)) / 2h
  with h = 1e-6 * max(1, |x|), against g_ref . v; the report says how far they agree.

Each row: relative error ||g - g_ref|| / ||g_ref||, forward and backward NFE, wall time
of forward + backward (second run; the first, untimed, absorbs one-off costs), peak memory of forward + backward (CUDA: max_memory_allocated;
CPU: peak resident set size, VmHWM reset before the run, so it includes allocator
effects and is meaningful mainly for problems of a few MB or more), and ``accurate``:
rel_error <= ``accept`` (default 100 x rtol). The recommendation is the fastest accurate
row, with the reason; if none is accurate it says which tolerance to try.

The Julia engine's sensealgs are run where the engine is available and shown as one
skipped row, with the reason, where it is not.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import torch

from . import sensealg as sa
from .check import JULIA_SENSEALGS, TORCH_SENSEALGS, label
from .errors import BackendUnavailableError, InvalidProblemError, PySciMLGradError
from .solve import odeint

F64 = torch.float64
FIXED_STEP = {"euler", "midpoint", "heun", "ralston", "rk4", "rk38", "leapfrog"}


@dataclass
class AuditReport:
    """What :func:`audit` measured. ``rows``: one dict per (backend, sensealg);
    ``reference``: how the reference was made and its finite-difference check;
    ``recommendation``: ``{"sensealg", "reason"}``."""

    rows: List[Dict[str, Any]]
    reference: Dict[str, Any]
    recommendation: Dict[str, Any]
    settings: Dict[str, Any] = field(default_factory=dict)

    def __iter__(self):
        return iter(self.rows)

    def row(self, sensealg_label: str, backend: str = "torch") -> Dict[str, Any]:
        for r in self.rows:
            if r["sensealg"] == sensealg_label and r["backend"] == backend:
                return r
        raise KeyError(sensealg_label)

    def table(self) -> str:
        return format_table(self)

    def to_json(self) -> Dict[str, Any]:
        return {"settings": self.settings, "reference": self.reference, "rows": self.rows,
                "recommendation": self.recommendation}


def _inputs(func, y0, params) -> List[torch.Tensor]:
    found = [y0] if y0.is_floating_point() else []
    if isinstance(func, torch.nn.Module):
        found += [p for p in func.parameters() if p.requires_grad]
    for p in params or ():
        if not any(p is q for q in found):
            found.append(p)
    return found


@contextlib.contextmanager
def _as_float64(func, tensors: Sequence[torch.Tensor]):
    """Run with func's floating parameters/buffers and ``tensors`` in float64, then restore."""
    saved = []
    objs = list(tensors)
    if isinstance(func, torch.nn.Module):
        objs += [p for p in func.parameters()] + [b for b in func.buffers()]
    seen = set()
    for x in objs:
        if id(x) in seen or not x.is_floating_point() or x.dtype == F64:
            continue
        seen.add(id(x))
        saved.append((x, x.data))
        x.data = x.data.to(F64)
    try:
        yield
    finally:
        for x, data in saved:
            x.data = data


def _grad(func, y0, t, loss, inputs, *, method, rtol, atol, sensealg, backend, params, options):
    """Flat gradient of loss(odeint(...)) w.r.t. ``inputs`` plus the solve's stats."""
    y0_ = y0.detach().clone().requires_grad_(True) if y0.is_floating_point() else y0
    opts = dict(options or {})
    opts["return_stats"] = True
    ys, stats = odeint(func, y0_, t, method=method, rtol=rtol, atol=atol, sensealg=sensealg,
                       backend=backend, params=params, options=opts)
    L = loss(ys)
    targets = [y0_] + list(inputs[1:]) if inputs and inputs[0] is y0 else list(inputs)
    grads = torch.autograd.grad(L, targets, allow_unused=True)
    flat = torch.cat([(g if g is not None else torch.zeros_like(x)).reshape(-1) for g, x in zip(grads, targets)])
    return flat.detach(), stats, float(L.detach())


def _loss_value(func, x, y0, t, loss, inputs, *, method, rtol, atol, params, options):
    """L at the flat input vector x (float64), by a DirectAD-free no-grad solve."""
    with torch.no_grad():
        backup = [p.data for p in inputs]
        i = 0
        for p in inputs:
            p.data = x[i : i + p.numel()].view_as(p).to(p.dtype)
            i += p.numel()
        try:
            ys = odeint(func, inputs[0].detach() if inputs and inputs[0] is y0 else y0, t, method=method,
                        rtol=rtol, atol=atol, sensealg=sa.DirectAD(), params=params, options=options)
            return float(loss(ys))
        finally:
            for p, d in zip(inputs, backup):
                p.data = d


@contextlib.contextmanager
def _peak_memory(device: torch.device):
    box = {}
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield box
        torch.cuda.synchronize(device)
        box["peak_bytes"], box["memory_measure"] = torch.cuda.max_memory_allocated(device) - base, "cuda max_memory_allocated"
        return
    hwm = _reset_hwm()
    base = _rss("VmRSS")
    yield box
    if hwm and base is not None:
        box["peak_bytes"], box["memory_measure"] = (_rss("VmHWM") - base), "peak RSS (VmHWM) - RSS before"
    else:
        box["peak_bytes"], box["memory_measure"] = None, "not measured (no /proc/self/clear_refs)"


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss(key: str) -> Optional[int]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def audit(
    func: Callable,
    y0: torch.Tensor,
    t: torch.Tensor,
    loss: Callable[[torch.Tensor], torch.Tensor],
    *,
    method: str = "dopri5",
    params: Optional[Iterable[torch.Tensor]] = None,
    sensealgs: Optional[Sequence[sa.SensitivityAlgorithm]] = None,
    rtol: float = 1e-6,
    atol: Optional[float] = None,
    options: Optional[Dict[str, Any]] = None,
    backends: Sequence[str] = ("torch", "julia"),
    accept: Optional[float] = None,
    n_directions: int = 3,
    seed: int = 0,
    verbose: bool = True,
) -> AuditReport:
    """Run every sensealg on ``L = loss(odeint(func, y0, t))`` and compare with a float64 reference.

    Parameters
    ----------
    func, y0, t, method, params, options : as for :func:`pysciml_grad.odeint`. Gradients are
        taken w.r.t. y0 (if floating), ``func``'s parameters (``nn.Module``) and ``params``.
    loss : ``loss(ys) -> scalar`` on the solution ``ys`` of shape ``(len(t), *y0.shape)``.
    sensealgs : the torch sensealgs to audit; default every one ``check`` knows
        (``DirectAD, CheckpointAdjoint[(max_checkpoints=4)], BacksolveAdjoint,
        InterpolatingAdjoint[(checkpointing=True)], QuadratureAdjoint``).
    rtol, atol : the tolerances you train with (atol default rtol * 1e-2).
    backends : ``"julia"`` adds SciMLSensitivity's adjoints where the Julia engine runs.
    accept : relative gradient error up to which a row counts as accurate; default 100 x rtol.
    n_directions : random directions of the finite-difference check of the reference.
    verbose : print the table.

    Returns
    -------
    :class:`AuditReport` (iterable over its rows; ``.table()`` is the printed table).
    """
    if not callable(loss):
        raise InvalidProblemError(f"loss must be callable as loss(ys) -> scalar tensor, got {type(loss).__name__}")
    if not isinstance(y0, torch.Tensor):
        raise InvalidProblemError(f"audit needs y0 as a tensor, got {type(y0).__name__} (structured states: flatten them first)")
    if not isinstance(t, torch.Tensor):
        raise InvalidProblemError(f"t must be a 1-D tensor of save times, got {type(t).__name__}")
    params = list(params) if params is not None else None
    atol = rtol * 1e-2 if atol is None else atol
    accept = 100 * rtol if accept is None else accept
    inputs = _inputs(func, y0, params)
    if not inputs:
        raise InvalidProblemError("nothing to differentiate: y0 is not floating and func has no parameters; pass params=")
    sensealgs = list(TORCH_SENSEALGS if sensealgs is None else sensealgs)
    fixed = method in FIXED_STEP

    # -- reference, float64 --------------------------------------------------------
    ref_method = method if fixed else "dopri5"
    with _as_float64(func, [p for p in inputs if p is not y0]):
        y0_64, t64 = y0.detach().to(F64), t.detach().to(F64)
        ref_inputs = [y0_64 if p is y0 else p for p in inputs]
        ref_kw = dict(method=ref_method, rtol=1e-12, atol=1e-14, params=params, options=options)
        g_ref, ref_stats, L_ref = _grad(func, y0_64, t64, lambda ys: loss(ys).to(F64), ref_inputs,
                                        sensealg=sa.DirectAD(), backend="torch", **ref_kw)
        x = torch.cat([p.detach().reshape(-1).to(F64) for p in ref_inputs])
        gen = torch.Generator().manual_seed(seed)
        fd_rows = []
        h = 1e-6 * max(1.0, float(x.abs().max()))
        for _ in range(n_directions):
            v = torch.randn(x.shape, generator=gen, dtype=F64)
            v /= v.norm()
            lp = _loss_value(func, x + h * v, y0_64, t64, loss, ref_inputs, **ref_kw)
            lm = _loss_value(func, x - h * v, y0_64, t64, loss, ref_inputs, **ref_kw)
            fd, ad = (lp - lm) / (2 * h), float(g_ref @ v)
            fd_rows.append({"fd": fd, "ad": ad, "rel_diff": abs(fd - ad) / max(abs(fd), abs(ad), 1e-300)})
    fd_worst = max(r["rel_diff"] for r in fd_rows) if fd_rows else float("nan")
    reference = {
        "how": f"DirectAD, {ref_method}, rtol=1e-12, atol=1e-14, float64",
        "loss": L_ref, "grad_norm": float(g_ref.norm()), "grad": g_ref.tolist() if g_ref.numel() <= 64 else None,
        "nfe": ref_stats.nfe, "fd_check": fd_rows, "fd_worst_rel_diff": fd_worst, "fd_step": h,
    }

    # -- every sensealg at the user's settings -----------------------------------------
    rows: List[Dict[str, Any]] = []
    device = y0.device
    g_ref_user = g_ref.to(device)
    for backend in backends:
        algs = sensealgs if backend == "torch" else JULIA_SENSEALGS
        for alg in algs:
            row: Dict[str, Any] = {"backend": backend, "sensealg": label(alg)}
            try:
                # an untimed first run: the first use of a sensealg pays one-off costs
                # (module imports, allocator growth) that are not the method's
                _grad(func, y0, t, loss, inputs, method=method, rtol=rtol, atol=atol, sensealg=alg,
                      backend=backend, params=params, options=options)
                with _peak_memory(device) as mem:
                    t0 = time.perf_counter()
                    g, stats, _ = _grad(func, y0, t, loss, inputs, method=method, rtol=rtol, atol=atol,
                                        sensealg=alg, backend=backend, params=params, options=options)
                    row["time_s"] = time.perf_counter() - t0
                row.update(mem)
                err = float((g.to(F64) - g_ref_user.to(F64)).norm() / max(float(g_ref.norm()), 1e-300))
                row.update(rel_error=err if math.isfinite(err) else float("inf"), nfe=stats.nfe,
                           nfe_backward=stats.nfe_backward, accurate=bool(err <= accept))
            except BackendUnavailableError as exc:
                rows.append({"backend": backend, "sensealg": "*", "skipped": f"{type(exc).__name__}: {exc}"})
                break
            except (PySciMLGradError, RuntimeError) as exc:
                row["skipped"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
    report = AuditReport(rows=rows, reference=reference, recommendation=_recommend(rows, rtol, accept, fd_worst),
                         settings={"method": method, "rtol": rtol, "atol": atol, "accept": accept,
                                   "dtype": str(y0.dtype).replace("torch.", ""), "n_inputs": int(g_ref.numel())})
    if verbose:
        print(report.table())
    return report


def _recommend(rows, rtol, accept, fd_worst) -> Dict[str, Any]:
    ok = [r for r in rows if r.get("accurate")]
    caveat = ""
    if not fd_worst <= 1e-4:
        caveat = (f" Caution: the reference and finite differences differ by {fd_worst:.1e} (relative); "
                  "the loss may be non-smooth here, so the errors above are only indicative.")
    if not ok:
        return {"sensealg": None, "rtol": rtol * 1e-2,
                "reason": f"no sensealg is within {accept:.0e} of the reference at rtol={rtol:g}; tighten rtol to "
                          f"{rtol * 1e-2:g} and rerun the audit (CheckpointAdjoint is exact for the discrete solver, so "
                          "its error is the solver's own)." + caveat}
    best = min(ok, key=lambda r: (r["time_s"], r.get("peak_bytes") or 0))
    inaccurate = [r["sensealg"] for r in rows if "rel_error" in r and not r["accurate"]]
    reason = (f"fastest of the accurate rows ({best['time_s'] * 1e3:.0f} ms, relative error {best['rel_error']:.1e} "
              f"<= {accept:.0e} = accept at rtol={rtol:g})")
    if inaccurate:
        reason += f"; inaccurate here: {', '.join(inaccurate)}"
    return {"sensealg": best["sensealg"], "backend": best["backend"], "rtol": rtol, "reason": reason + "." + caveat}


def format_table(report: AuditReport) -> str:
    s = report.settings
    ref = report.reference
    lines = [
        f"gradient audit: method={s['method']}, rtol={s['rtol']:g}, atol={s['atol']:g}, {s['dtype']}, "
        f"{s['n_inputs']} inputs; accurate = relative error <= {s['accept']:.0e}",
        f"reference: {ref['how']}; central FD along {len(ref['fd_check'])} random directions agrees to "
        f"{ref['fd_worst_rel_diff']:.1e}",
        f"{'backend':7s} {'sensealg':40s} {'rel. error':>10s} {'NFE f/b':>11s} {'time ms':>9s} {'peak MB':>8s}  verdict",
    ]
    for r in report.rows:
        if "skipped" in r:
            lines.append(f"{r['backend']:7s} {r['sensealg']:40s} not run: {r['skipped'][:150]}")
            continue
        mem = f"{r['peak_bytes'] / 2**20:8.1f}" if r.get("peak_bytes") is not None else f"{'-':>8s}"
        verdict = "ok" if r["accurate"] else "INACCURATE"
        lines.append(f"{r['backend']:7s} {r['sensealg']:40s} {r['rel_error']:10.2e} "
                     f"{str(r['nfe']) + '/' + str(r['nfe_backward']):>11s} {r['time_s'] * 1e3:9.1f} {mem}  {verdict}")
    rec = report.recommendation
    lines.append(f"recommendation: {rec['sensealg'] or 'none at this tolerance'} -- {rec['reason']}")
    return "\n".join(lines)


def audit_script(path: str, *, json_path: Optional[str] = None, **overrides) -> AuditReport:
    """``python -m pysciml_grad audit script.py``: run ``script.py`` as ``__main__``-less module
    and audit the problem it defines.

    Convention: the script defines module-level ``func``, ``y0``, ``t`` and ``loss``
    (``loss(ys) -> scalar``), and optionally ``params``, ``method``, ``rtol``, ``atol``,
    ``options`` and ``sensealgs``; command-line values override the script's.
    """
    import runpy

    ns = runpy.run_path(str(path), run_name="__audit__")
    missing = [k for k in ("func", "y0", "t", "loss") if k not in ns]
    if missing:
        raise InvalidProblemError(
            f"{path} must define func, y0, t and loss at module level; missing: {', '.join(missing)}"
        )
    kw = {k: ns[k] for k in ("params", "method", "rtol", "atol", "options", "sensealgs") if k in ns}
    kw.update({k: v for k, v in overrides.items() if v is not None})
    report = audit(ns["func"], ns["y0"], ns["t"], ns["loss"], **kw)
    if json_path:
        Path(json_path).write_text(json.dumps(report.to_json(), indent=2))
    return report
