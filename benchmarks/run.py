"""Side-by-side benchmarks: pysciml_grad against torchdiffeq, torchode, TorchDiffEqPack, diffrax.

Usage (from the repository root)::

    python benchmarks/run.py speed              # forward+backward time, NFE, gradient error
    python benchmarks/run.py memory             # peak memory per sensealg, rk4 N=100 and N=1000
    python benchmarks/run.py all                # both
    python benchmarks/run.py report             # only rewrite results.md from results.json
    python benchmarks/run.py speed --device cuda

Every run merges its numbers into ``benchmarks/results.json`` (with machine information
and package versions) and rewrites ``benchmarks/results.md`` from it. All ratios in the
tables are computed between numbers measured in the same run (same process for ``speed``).

A library that is not installed, or a pysciml_grad sensealg that is not implemented yet
(``NotImplementedError``), is recorded as "not available" instead of stopping the run;
any other exception is recorded as "error" with its message.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # `problems` is importable whether or not the package is installed
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # the repo's pysciml_grad, if it is not installed (an installed one wins)

import torch  # noqa: E402

from problems import MEMORY_BATCH, MEMORY_HIDDEN, Counted, Problem, memory_problem, mlp_problem  # noqa: E402

# The counting wrapper offers torchdiffeq's accept/reject hooks; fixed-grid solvers warn
# that they do not call them. Harmless here.
warnings.filterwarnings("ignore", message=".*does not support callbacks.*")

RESULTS_JSON = HERE / "results.json"
RESULTS_MD = HERE / "results.md"

REF_TOL = 1e-10  # rtol = atol of the float64 reference solves


# --------------------------------------------------------------------------- helpers


class NotAvailable(Exception):
    """A library or a sensealg that cannot be run here (not installed / not implemented)."""


def _short_exc(exc: BaseException) -> str:
    msg = f"{type(exc).__name__}: {exc}".strip()
    msg = " ".join(msg.split())
    return msg[:300]


def _require(module: str):
    """Import an optional peer library, or raise NotAvailable so that its row says why it did not run."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise NotAvailable(_short_exc(exc)) from exc


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _flat_grad(module: torch.nn.Module):
    import numpy as np

    out = []
    for p in module.parameters():
        g = p.grad
        out.append(np.zeros(p.numel()) if g is None else g.detach().double().cpu().numpy().ravel())
    return np.concatenate(out)


def _rel_err(a, b) -> float:
    import numpy as np

    return float(np.linalg.norm(np.asarray(a, dtype=float) - np.asarray(b, dtype=float))
                 / np.linalg.norm(np.asarray(b, dtype=float)))


def _psg():
    """Import our package, or raise NotAvailable with the reason."""
    try:
        import pysciml_grad as psg
    except Exception as exc:  # ImportError or an error inside the package
        raise NotAvailable(f"import pysciml_grad failed: {_short_exc(exc)}") from exc
    if not hasattr(psg, "odeint"):
        raise NotAvailable("pysciml_grad has no attribute 'odeint' yet")
    return psg


def _sensealg(psg, name: str, n_steps: Optional[int] = None):
    """Build one of our sensealg objects by benchmark label."""
    try:
        if name == "DirectAD":
            return psg.DirectAD()
        if name == "CheckpointAdjoint":
            return psg.CheckpointAdjoint()
        if name == "CheckpointAdjoint(sqrtN)":
            return psg.CheckpointAdjoint(max_checkpoints=int(math.sqrt(n_steps)))
        if name == "BacksolveAdjoint":
            return psg.BacksolveAdjoint()
        if name == "InterpolatingAdjoint(ckpt)":
            return psg.InterpolatingAdjoint(checkpointing=True)
    except (AttributeError, NotImplementedError, TypeError) as exc:
        raise NotAvailable(_short_exc(exc)) from exc
    raise ValueError(name)


def _stat(stats, name):
    v = getattr(stats, name, None)
    if v is None and isinstance(stats, dict):
        v = stats.get(name)
    if torch.is_tensor(v):
        v = v.max().item() if v.numel() > 1 else v.item()
    return None if v is None else int(v)


def machine_info(device: str) -> Dict[str, Any]:
    info: Dict[str, Any] = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
    }
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        m = re.search(r"model name\s*:\s*(.*)", cpuinfo)
        info["cpu_model"] = m.group(1).strip() if m else platform.processor()
        mem = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
        info["mem_total_gib"] = round(int(mem.group(1)) / 2**20, 1) if mem else None
    except OSError:
        info["cpu_model"] = platform.processor()
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def versions() -> Dict[str, Optional[str]]:
    import importlib.metadata as md

    out: Dict[str, Optional[str]] = {}
    for name in ["pysciml_grad", "torch", "numpy", "scipy", "torchdiffeq", "torchode", "TorchDiffEqPack",
                 "jax", "jaxlib", "diffrax", "equinox"]:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    try:
        out["pysciml_grad_git"] = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            timeout=10).stdout.strip() or "no commit"
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "pysciml_grad"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if dirty:
            out["pysciml_grad_git"] += " (+ uncommitted changes in pysciml_grad/)"
    except Exception:  # git missing: not important
        pass
    return out


# --------------------------------------------------------------------------- torch cases
#
# A case turns (problem, counted func) into a zero-argument callable that runs the
# forward solve and returns (y_final, our_stats_or_None). Building may raise NotAvailable.


def _ours(sensealg_name: str, n_steps: Optional[int] = None):
    def build(prob: Problem, f: Counted):
        psg = _psg()
        sa = _sensealg(psg, sensealg_name, n_steps)
        options: Dict[str, Any] = {"return_stats": True}
        if prob.step_size is not None:
            options["step_size"] = prob.step_size

        def call():
            ys, stats = psg.odeint(f, prob.y0, prob.t, method=prob.method, rtol=prob.rtol, atol=prob.atol,
                                   sensealg=sa, options=dict(options))
            return ys[-1], stats

        return call

    return build


def _torchdiffeq(adjoint: bool):
    def build(prob: Problem, f: Counted):
        torchdiffeq = _require("torchdiffeq")
        solve = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
        kw: Dict[str, Any] = {}
        if prob.step_size is not None:
            kw["options"] = {"step_size": prob.step_size}
            if adjoint:
                kw["adjoint_options"] = {"step_size": prob.step_size}

        def call():
            return solve(f, prob.y0, prob.t, method=prob.method, rtol=prob.rtol, atol=prob.atol, **kw)[-1], None

        return call

    return build


def _torchode():
    def build(prob: Problem, f: Counted):
        to = _require("torchode")
        if prob.method != "dopri5":
            raise NotAvailable(f"benchmark maps only dopri5 to torchode, not {prob.method}")
        term = to.ODETerm(f)
        solver = to.AutoDiffAdjoint(to.Dopri5(term=term), to.IntegralController(atol=prob.atol, rtol=prob.rtol, term=term))
        batch = prob.y0.shape[0]
        t_eval = prob.t.to(prob.y0).unsqueeze(0).repeat(batch, 1)

        def call():
            sol = solver.solve(to.InitialValueProblem(y0=prob.y0, t_eval=t_eval))
            if not bool((sol.status == 0).all()):
                raise RuntimeError(f"torchode status {sol.status.unique().tolist()}")
            return sol.ys[:, -1], {"n_accepted": sol.stats["n_accepted"],
                                   "n_rejected": sol.stats["n_steps"] - sol.stats["n_accepted"]}

        return call

    return build


def _tdep(adjoint: bool):
    def build(prob: Problem, f: Counted):
        tdep = _require("TorchDiffEqPack")
        method = {"dopri5": "dopri5", "rk4": "rk4"}.get(prob.method)
        if method is None:
            raise NotAvailable(f"no TorchDiffEqPack method for {prob.method}")
        t0, t1 = float(prob.t[0]), float(prob.t[-1])

        def options():  # a fresh dict each call: TorchDiffEqPack mutates it
            o = dict(method=method, t0=t0, t1=t1, rtol=prob.rtol, atol=prob.atol, h=prob.step_size,
                     neval_max=500000, print_neval=False)
            return o

        if adjoint:
            def call():
                return tdep.odesolve_adjoint(f, prob.y0, options()), None
        else:
            def call():
                # end_point_mode=True: return y(t1) from the last step, not from the
                # cubic-Hermite interpolant (the default, ~1e-2 error; peers.md).
                return tdep.odesolve(f, prob.y0, options(), end_point_mode=True), None

        return call

    return build


# label, library, gradient method, builder
def speed_cases():
    return [
        ("ours DirectAD", "pysciml_grad", "direct AD (accepted step sizes constant)", _ours("DirectAD")),
        ("ours CheckpointAdjoint", "pysciml_grad", "checkpointed discrete (ACA)", _ours("CheckpointAdjoint")),
        ("ours BacksolveAdjoint", "pysciml_grad", "continuous backsolve", _ours("BacksolveAdjoint")),
        ("ours InterpolatingAdjoint(ckpt)", "pysciml_grad", "continuous interpolating, checkpointing=True",
         _ours("InterpolatingAdjoint(ckpt)")),
        ("torchdiffeq odeint", "torchdiffeq", "direct AD", _torchdiffeq(False)),
        ("torchdiffeq odeint_adjoint", "torchdiffeq", "continuous backsolve", _torchdiffeq(True)),
        ("torchode AutoDiffAdjoint", "torchode", "direct AD (IntegralController, per-sample steps)", _torchode()),
        ("TorchDiffEqPack odesolve", "TorchDiffEqPack", "direct AD (end_point_mode=True)", _tdep(False)),
        ("TorchDiffEqPack odesolve_adjoint", "TorchDiffEqPack", "checkpointed discrete (ACA)", _tdep(True)),
    ]


class TorchRunner:
    """One torch configuration: ``once()`` runs forward + loss + backward and returns its time."""

    def __init__(self, build, prob: Problem, device: str):
        self.prob = prob
        self.device = device
        self.f = Counted(prob.func)
        self.call = build(prob, self.f)
        self.params = list(prob.func.parameters())
        self.times: List[float] = []
        self.cpu_times: List[float] = []
        self.last = None

    def once(self) -> float:
        f = self.f
        f.reset()
        for p in self.params:
            p.grad = None
        _sync(self.device)
        c0 = time.process_time()
        t0 = time.perf_counter()
        try:
            y_final, stats = self.call()
            loss = self.prob.loss(y_final)
            f.phase = "backward"
            loss.backward()
        except NotImplementedError as exc:  # a sensealg that has not landed yet
            raise NotAvailable(_short_exc(exc)) from exc
        _sync(self.device)
        dt = time.perf_counter() - t0
        # CPU time of this process: with one torch thread it is what the solve costs,
        # and other processes on a shared machine disturb it far less than wall time.
        self._cpu = time.process_time() - c0
        self.last = (loss, stats)
        return dt

    def result(self) -> Dict[str, Any]:
        f, (loss, stats), times = self.f, self.last, self.times
        rec: Dict[str, Any] = {
            "time_median_s": statistics.median(times),
            "time_min_s": min(times),
            "times_s": times,
            "cpu_median_s": statistics.median(self.cpu_times) if self.cpu_times else None,
            "nfe_forward": f.n_calls["forward"],
            "nfe_backward": f.n_calls["backward"],
            "loss": float(loss.item()),
            "grad": _flat_grad(self.prob.func),  # the last run's gradient (grads are reset per run)
        }
        if f.n_accepted or f.n_rejected:  # torchdiffeq's accept/reject callbacks
            rec["n_steps"] = f.n_accepted
            rec["n_rejected"] = f.n_rejected
        if isinstance(stats, dict):  # torchode
            rec["n_steps"] = _stat(stats, "n_accepted")
            rec["n_rejected"] = _stat(stats, "n_rejected")
            rec["n_steps_note"] = "max over the batch (per-sample step control)"
        elif stats is not None:  # ours: read the package's own counters, keep the wrapper's too
            rec["ours_stats"] = {k: _stat(stats, k) for k in ("nfe", "nfe_backward", "n_steps", "n_rejected")}
            rec["n_steps"] = rec["ours_stats"]["n_steps"]
            rec["n_rejected"] = rec["ours_stats"]["n_rejected"]
            mism = []
            if rec["ours_stats"]["nfe"] is not None and rec["ours_stats"]["nfe"] != rec["nfe_forward"]:
                mism.append(f"stats.nfe={rec['ours_stats']['nfe']} vs counted {rec['nfe_forward']}")
            if (rec["ours_stats"]["nfe_backward"] is not None
                    and rec["ours_stats"]["nfe_backward"] != rec["nfe_backward"]):
                mism.append(f"stats.nfe_backward={rec['ours_stats']['nfe_backward']} vs counted {rec['nfe_backward']}")
            if mism:
                rec["stats_mismatch"] = "; ".join(mism)
        return rec


def _record_cpu(runner) -> None:
    """The CPU time of the run just made (torch runners; diffrax's jit runs keep wall time only)."""
    if hasattr(runner, "cpu_times"):
        runner.cpu_times.append(runner._cpu)


# --------------------------------------------------------------------------- diffrax


class _diffrax_counter:
    n = 0

    @classmethod
    def tick(cls):
        cls.n += 1


class DiffraxRunner:
    """diffrax Dopri5 + PIDController + RecursiveCheckpointAdjoint, jitted value_and_grad.

    The MLP weights are the torch model's, converted to jax arrays. Compilation happens
    in ``__init__`` (timed separately and reported, never included in ``once()``).
    """

    def __init__(self, prob: Problem):
        try:
            import jax
            import jax.numpy as jnp
            import diffrax
        except ImportError as exc:
            raise NotAvailable(_short_exc(exc)) from exc
        if prob.method != "dopri5":
            raise NotAvailable(f"benchmark maps only dopri5 to diffrax, not {prob.method}")
        self.jax = jax
        self.params = tuple(jnp.asarray(a) for a in prob.func.numpy_params())  # same weights
        y0 = jnp.asarray(prob.y0.detach().cpu().numpy())
        t0, t1 = float(prob.t[0]), float(prob.t[-1])

        def mlp(y, p):
            w1, b1, w2, b2, w3, b3 = p
            return jnp.tanh(jnp.tanh(y @ w1.T + b1) @ w2.T + b2) @ w3.T + b3

        def make_loss(count: bool):
            def vf(t, y, p):
                if count:
                    jax.debug.callback(_diffrax_counter.tick)
                return mlp(y, p)

            term = diffrax.ODETerm(vf)

            def loss(p):
                sol = diffrax.diffeqsolve(
                    term, diffrax.Dopri5(), t0, t1, None, y0, args=p,
                    stepsize_controller=diffrax.PIDController(rtol=prob.rtol, atol=prob.atol),
                    adjoint=diffrax.RecursiveCheckpointAdjoint(), saveat=diffrax.SaveAt(t1=True), max_steps=4096)
                return jnp.mean(sol.ys[-1] ** 2), sol.stats

            return loss

        self.make_loss = make_loss
        self.vg = jax.jit(jax.value_and_grad(make_loss(False), has_aux=True))
        tc = time.perf_counter()
        jax.block_until_ready(self.vg(self.params))
        self.compile_s = time.perf_counter() - tc
        self.times: List[float] = []
        self.last = None

    def once(self) -> float:
        tc = time.perf_counter()
        out = self.vg(self.params)
        self.jax.block_until_ready(out)
        dt = time.perf_counter() - tc
        self.last = out
        return dt

    def result(self) -> Dict[str, Any]:
        import numpy as np

        jax = self.jax
        (loss, st), g = self.last
        rec: Dict[str, Any] = {
            "time_median_s": statistics.median(self.times),
            "time_min_s": min(self.times),
            "times_s": self.times,
            "compile_plus_first_run_s": self.compile_s,
            "loss": float(loss),
            "grad": np.concatenate([np.asarray(x, dtype=np.float64).ravel() for x in g]),
            "n_steps": int(st["num_accepted_steps"]),
            "n_rejected": int(st["num_rejected_steps"]),
            "jax_device": str(jax.devices()[0]),
        }
        # Exact f-call counts from a separate (untimed) build whose vector field ticks a
        # host counter; backward = calls made while computing the gradient beyond the
        # forward solve (RecursiveCheckpointAdjoint's recomputation), as for the torch wrapper.
        try:
            loss_c = self.make_loss(True)
            _diffrax_counter.n = 0
            jax.block_until_ready(jax.jit(loss_c)(self.params))
            jax.effects_barrier()
            nf = _diffrax_counter.n
            _diffrax_counter.n = 0
            jax.block_until_ready(jax.jit(jax.value_and_grad(loss_c, has_aux=True))(self.params))
            jax.effects_barrier()
            rec["nfe_forward"] = nf
            rec["nfe_backward"] = _diffrax_counter.n - nf
        except Exception as exc:  # counting is a nicety; keep the timing
            rec["nfe_note"] = f"could not count f calls: {_short_exc(exc)}"
        return rec


# --------------------------------------------------------------------------- reference


def _reference(prob: Problem) -> Dict[str, Any]:
    """Float64 gradients at rtol = atol = 1e-10.

    Primary: torchdiffeq dopri5 with direct AD (an independent implementation); ours
    DirectAD at the same tolerance is recorded as a cross-check. Without torchdiffeq,
    ours DirectAD becomes the primary reference (and the tables say so).
    """
    import numpy as np

    out: Dict[str, Any] = {}
    p64 = prob.to(device="cpu", dtype=torch.float64)

    def ours_grad():
        psg = _psg()
        p64.func.zero_grad()
        ys, _ = psg.odeint(p64.func, p64.y0, p64.t, method="dopri5", rtol=REF_TOL, atol=REF_TOL,
                           sensealg=psg.DirectAD(), options={"return_stats": True})
        loss = p64.loss(ys[-1])
        loss.backward()
        return float(loss.item()), _flat_grad(p64.func)

    try:
        import torchdiffeq
    except ImportError:
        out["primary"] = "pysciml_grad odeint dopri5 DirectAD, float64, rtol=atol=1e-10 (torchdiffeq not installed)"
        out["loss"], out["grad"] = ours_grad()
        out["grad_norm"] = float(np.linalg.norm(out["grad"]))
        return out

    p64.func.zero_grad()
    y = torchdiffeq.odeint(p64.func, p64.y0, p64.t, method="dopri5", rtol=REF_TOL, atol=REF_TOL)[-1]
    loss = p64.loss(y)
    loss.backward()
    out["primary"] = "torchdiffeq odeint dopri5, float64, rtol=atol=1e-10, direct AD"
    out["loss"] = float(loss.item())
    out["grad"] = _flat_grad(p64.func)
    try:
        loss2, g2 = ours_grad()
        out["ours_directad_f64_vs_primary_grad_rel"] = _rel_err(g2, out["grad"])
        out["ours_directad_f64_vs_primary_loss_rel"] = abs(loss2 - out["loss"]) / abs(out["loss"])
    except NotAvailable as exc:
        out["ours_directad_f64"] = f"not available: {exc}"
    except Exception as exc:
        out["ours_directad_f64"] = f"error: {_short_exc(exc)}"
    out["grad_norm"] = float(np.linalg.norm(out["grad"]))
    return out


# --------------------------------------------------------------------------- speed


def run_speed(args) -> Dict[str, Any]:
    """All configurations in this one process; repeats interleaved round-robin.

    Each round runs every configuration once (in a rotated order), so slow drifts of a
    noisy, shared machine hit all of them alike; the median over rounds is reported.
    """
    device = args.device
    prob = mlp_problem(t1=args.t1, rtol=args.rtol, atol=args.atol)
    print(f"[speed] problem {prob.name} on {device}: {prob.info}", flush=True)
    ref = _reference(prob)
    print(f"[speed] reference: {ref['primary']}; loss {ref['loss']:.12g}", flush=True)
    if "ours_directad_f64_vs_primary_grad_rel" in ref:
        print(f"[speed]   ours DirectAD f64 vs reference: grad rel {ref['ours_directad_f64_vs_primary_grad_rel']:.2e}")
    probd = prob.to(device=device)
    only = set(args.only) if args.only else None
    cases = speed_cases() + [("diffrax RecursiveCheckpointAdjoint", "diffrax",
                              "checkpointed discrete (jit; compile excluded)", None)]
    records: List[Dict[str, Any]] = []
    runners: Dict[int, Any] = {}

    def fail(i, exc):
        rec = records[i]
        if isinstance(exc, NotAvailable):
            rec["status"], rec["message"] = "not available", str(exc)
        else:
            rec["status"], rec["message"] = "error", _short_exc(exc)
            rec["traceback"] = traceback.format_exc()[-2000:]
        runners.pop(i, None)
        print(f"[speed] {rec['name']:38s} {rec['status']}: {rec['message']}", flush=True)

    for label, lib, grad_method, build in cases:
        if only and not any(o.lower() in label.lower() for o in only):
            continue
        records.append({"name": label, "library": lib, "gradient": grad_method})
        i = len(records) - 1
        try:
            runners[i] = DiffraxRunner(prob) if build is None else TorchRunner(build, probd, device)
            for _ in range(args.warmup):
                runners[i].once()
        except Exception as exc:
            fail(i, exc)
    order = list(runners)
    for r in range(args.repeats):
        k = r % max(len(order), 1)
        for i in order[k:] + order[:k]:
            if i not in runners:
                continue
            try:
                runners[i].times.append(runners[i].once())
                _record_cpu(runners[i])
            except Exception as exc:
                fail(i, exc)
    for i, runner in list(runners.items()):
        rec = records[i]
        try:
            runner.times.append(runner.once())  # last run: its gradient and counts are recorded
            _record_cpu(runner)
            rec.update(runner.result())
            rec["status"] = "ok"
            rec["grad_rel_err"] = _rel_err(rec.pop("grad"), ref["grad"])
            rec["loss_rel_err"] = abs(rec["loss"] - ref["loss"]) / abs(ref["loss"])
            print(f"[speed] {rec['name']:38s} {rec['time_median_s'] * 1e3:9.2f} ms  nfe {rec.get('nfe_forward')}"
                  f"/{rec.get('nfe_backward')}  grad rel err {rec['grad_rel_err']:.2e}", flush=True)
        except Exception as exc:
            fail(i, exc)
    ref.pop("grad")
    return {
        "kind": "speed",
        "device": device,
        "problem": prob.info,
        "settings": {"repeats": args.repeats + 1, "warmup": args.warmup, "torch_threads": torch.get_num_threads(),
                     "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
                     "timing": "wall time of forward solve + loss + backward, all solvers in one process, "
                               "repeats interleaved round-robin"},
        "reference": ref,
        "results": records,
    }


# --------------------------------------------------------------------------- memory

MEMORY_CASES = [
    # label, builder-factory(n_steps)
    ("ours DirectAD", lambda n: _ours("DirectAD")),
    ("ours BacksolveAdjoint", lambda n: _ours("BacksolveAdjoint")),
    ("ours InterpolatingAdjoint(ckpt)", lambda n: _ours("InterpolatingAdjoint(ckpt)")),
    ("ours CheckpointAdjoint", lambda n: _ours("CheckpointAdjoint")),
    ("ours CheckpointAdjoint(sqrtN)", lambda n: _ours("CheckpointAdjoint(sqrtN)", n)),
    ("torchdiffeq odeint", lambda n: _torchdiffeq(False)),
    ("torchdiffeq odeint_adjoint", lambda n: _torchdiffeq(True)),
    ("TorchDiffEqPack odesolve_adjoint", lambda n: _tdep(True)),
]


# glibc's malloc raises its mmap threshold dynamically after the first large free, after
# which freed activation buffers stay in the brk heap as fragmented holes: the peak RSS
# then measures allocator slack (at batch 1024, identical runs of one configuration
# varied from 13 to 252 MiB, and DirectAD at N=1000 read ~4.0 GB for ~2.1 GB of live tensors). A fixed
# threshold (MALLOC_MMAP_THRESHOLD_, which also disables the dynamic adjustment) makes
# every tensor >= 64 KiB its own mapping, returned to the OS when freed, so the peak
# RSS follows the live tensors. It costs time (mmap + page faults per activation buffer):
# use the speed benchmark, not the memory runs, for timings. --malloc-default turns it off.
MMAP_THRESHOLD = 65536


def _proc_status_kib(key: str) -> int:
    m = re.search(key + r":\s+(\d+)\s+kB", Path("/proc/self/status").read_text())
    return int(m.group(1)) if m else -1


def _memory_child(args) -> None:
    """Run ONE configuration in this (fresh) process and print one JSON line."""
    label = args.case
    n = args.steps
    device = args.device
    factory = dict(MEMORY_CASES)[label]
    out: Dict[str, Any] = {"name": label, "n_steps": n, "device": device}
    try:
        # Warm-up on a 2-step solve of the same size: loads lazily initialised code so
        # that it is not counted, then measure the real solve from a fresh baseline.
        warm = memory_problem(2, args.mem_batch, args.mem_hidden).to(device=device)
        fw = Counted(warm.func)
        call = factory(2)(warm, fw)
        y, _ = call()
        warm.loss(y).backward()
        del warm, fw, call, y

        prob = memory_problem(n, args.mem_batch, args.mem_hidden).to(device=device)
        f = Counted(prob.func)
        call = factory(n)(prob, f)
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
                out["hwm_reset"] = True
            except OSError:
                out["hwm_reset"] = False
            base = _proc_status_kib("VmRSS") * 1024
        t0 = time.perf_counter()
        y_final, stats = call()
        loss = prob.loss(y_final)
        f.phase = "backward"
        loss.backward()
        _sync(device)
        out["time_s"] = time.perf_counter() - t0
        if device.startswith("cuda"):
            peak = torch.cuda.max_memory_allocated()
            out["measure"] = "torch.cuda.max_memory_allocated - memory_allocated before the solve"
        else:
            peak = _proc_status_kib("VmHWM") * 1024
            out["measure"] = ("peak RSS (VmHWM, reset just before the solve) - RSS before the solve"
                              if out["hwm_reset"] else "ru_maxrss - RSS before the solve")
            if not out["hwm_reset"]:
                import resource
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out["peak_bytes"] = int(peak - base)
        out["baseline_bytes"] = int(base)
        out["nfe_forward"] = f.n_calls["forward"]
        out["nfe_backward"] = f.n_calls["backward"]
        if stats is not None and not isinstance(stats, dict):
            out["ours_stats"] = {k: _stat(stats, k) for k in ("nfe", "nfe_backward", "n_steps", "n_rejected")}
        out["loss"] = float(loss.item())
        out["status"] = "ok"
    except NotAvailable as exc:
        out.update(status="not available", message=str(exc))
    except NotImplementedError as exc:
        out.update(status="not available", message=_short_exc(exc))
    except Exception as exc:
        out.update(status="error", message=_short_exc(exc), traceback=traceback.format_exc()[-2000:])
    print("RESULT " + json.dumps(out), flush=True)


def run_memory(args) -> Dict[str, Any]:
    device = args.device
    results = []
    only = set(args.only) if args.only else None
    for n in args.steps:
        for label, _ in MEMORY_CASES:
            if only and not any(o.lower() in label.lower() for o in only):
                continue
            cmd = [sys.executable, str(Path(__file__).resolve()), "_memory_child", "--case", label,
                   "--steps", str(n), "--device", device, "--threads", str(torch.get_num_threads()),
                   "--mem-batch", str(args.mem_batch), "--mem-hidden", str(args.mem_hidden)]
            env = dict(os.environ)
            if not device.startswith("cuda") and not args.malloc_default:
                env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
            t0 = time.perf_counter()
            try:
                cp = subprocess.run(cmd, capture_output=True, text=True, timeout=args.child_timeout, env=env)
                line = [ln for ln in cp.stdout.splitlines() if ln.startswith("RESULT ")]
                if line:
                    rec = json.loads(line[-1][len("RESULT "):])
                else:
                    rec = {"name": label, "n_steps": n, "status": "error",
                           "message": f"child exited {cp.returncode}: {cp.stderr.strip()[-400:]}"}
            except subprocess.TimeoutExpired:
                rec = {"name": label, "n_steps": n, "status": "error",
                       "message": f"timed out after {args.child_timeout} s"}
            rec["wall_s_subprocess"] = time.perf_counter() - t0
            results.append(rec)
            if rec["status"] == "ok":
                print(f"[memory] N={n:5d} {label:34s} {rec['peak_bytes'] / 2**20:9.1f} MiB  "
                      f"{rec['time_s']:6.2f} s  nfe {rec['nfe_forward']}/{rec['nfe_backward']}", flush=True)
            else:
                print(f"[memory] N={n:5d} {label:34s} {rec['status']}: {rec.get('message')}", flush=True)
    prob = memory_problem(args.steps[0], args.mem_batch, args.mem_hidden)
    info = dict(prob.info)
    info.pop("n_steps", None)
    info.pop("step_size", None)
    return {
        "kind": "memory",
        "device": device,
        "problem": info,
        "steps": list(args.steps),
        "settings": {"one fresh subprocess per configuration": True,
                     "measure": ("torch.cuda.max_memory_allocated during forward+backward minus memory_allocated "
                                 "just before it" if device.startswith("cuda") else
                                 "peak RSS (VmHWM, reset just before the solve) during forward+backward minus "
                                 "the RSS just before it"), "torch_threads": torch.get_num_threads(),
                     "MALLOC_MMAP_THRESHOLD_": None if (args.malloc_default or device.startswith("cuda"))
                     else MMAP_THRESHOLD,
                     },
        "results": results,
    }


# --------------------------------------------------------------------------- output


def _set_out(folder: Optional[str]) -> None:
    global RESULTS_JSON, RESULTS_MD
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        RESULTS_JSON = Path(folder) / "results.json"
        RESULTS_MD = Path(folder) / "results.md"


def _load() -> Dict[str, Any]:
    if RESULTS_JSON.exists():
        try:
            return json.loads(RESULTS_JSON.read_text())
        except json.JSONDecodeError:
            pass
    return {"runs": {}}


def _fmt(x, spec="{:.3g}", none="—"):
    return none if x is None else spec.format(x)


def speed_table(run: Dict[str, Any]) -> str:
    rows = run["results"]
    base = next((r for r in rows if r["name"] == "torchdiffeq odeint" and r["status"] == "ok"), None)

    def per_nfe(r):
        n = (r.get("nfe_forward") or 0) + (r.get("nfe_backward") or 0)
        return r["time_median_s"] / n if n else None

    def cpu_ratio(r):
        if not (base and r.get("cpu_median_s") and base.get("cpu_median_s")):
            return None
        return r["cpu_median_s"] / base["cpu_median_s"]

    lines = [
        "| solver | gradient | time fwd+bwd (ms, median) | min (ms) | × torchdiffeq odeint | NFE fwd | NFE bwd "
        "| steps acc/rej | µs per NFE | × torchdiffeq per NFE | grad rel. error | loss rel. error "
        "| CPU time (ms, median) | × torchdiffeq (CPU) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['name']} | {r['gradient']} | {r['status']}: {r.get('message', '')[:140]} "
                         "| | | | | | | | | | | |")
            continue
        ratio = r["time_median_s"] / base["time_median_s"] if base else None
        pn = per_nfe(r)
        pn_ratio = pn / per_nfe(base) if (base and pn and per_nfe(base)) else None
        steps = "—" if r.get("n_steps") is None else f"{r['n_steps']}/{_fmt(r.get('n_rejected'), '{}', '?')}"
        if r.get("n_steps_note"):
            steps += "*"
        name = r["name"]
        if r.get("stats_mismatch"):
            name += " †"
        nfe_b = _fmt(r.get("nfe_backward"), "{}")
        lines.append(
            f"| {name} | {r['gradient']} | {r['time_median_s'] * 1e3:.2f} | {r['time_min_s'] * 1e3:.2f} "
            f"| {_fmt(ratio, '{:.2f}')} | {_fmt(r.get('nfe_forward'), '{}')} | {nfe_b} | {steps} "
            f"| {_fmt(pn * 1e6 if pn else None, '{:.0f}')} | {_fmt(pn_ratio, '{:.2f}')} "
            f"| {r['grad_rel_err']:.2e} | {r['loss_rel_err']:.2e} "
            f"| {_fmt(r['cpu_median_s'] * 1e3 if r.get('cpu_median_s') else None, '{:.2f}')} "
            f"| {_fmt(cpu_ratio(r), '{:.2f}')} |")
    notes = []
    for r in rows:
        if r.get("stats_mismatch"):
            notes.append(f"† {r['name']}: the package's own counters disagree with the call-counting "
                         f"wrapper: {r['stats_mismatch']}.")
        if r.get("compile_plus_first_run_s") is not None:
            notes.append(f"{r['name']}: JIT compile + first run {r['compile_plus_first_run_s']:.2f} s "
                         f"(excluded from the time), on {r.get('jax_device')}.")
        if r.get("nfe_note"):
            notes.append(f"{r['name']}: {r['nfe_note']}")
    notes.append("µs per NFE = time / (NFE fwd + NFE bwd). Direct-AD solvers make no f calls in the backward "
                 "pass (they backpropagate through the recorded forward calls), so per-NFE figures compare like "
                 "with like only between solvers of the same gradient method. diffrax's NFE bwd are the forward "
                 "re-evaluations of RecursiveCheckpointAdjoint's backward pass.")
    if any(r.get("n_steps_note") for r in rows):
        notes.append("\\* torchode steps: max over the batch (torchode controls the step size per sample).")
    return "\n".join(lines) + ("\n\n" + "\n".join(f"- {n}" for n in notes) if notes else "")


def memory_table(run: Dict[str, Any]) -> str:
    steps = run["steps"]
    by = {(r["name"], r["n_steps"]): r for r in run["results"]}
    names = []
    for r in run["results"]:
        if r["name"] not in names:
            names.append(r["name"])
    head = "| sensealg / solver | " + " | ".join(
        f"N={n}: peak MiB | N={n}: × DirectAD | N={n}: time (s) | N={n}: NFE fwd/bwd" for n in steps) + " |"
    sep = "|---|" + "---:|---:|---:|---:|" * len(steps)
    lines = [head, sep]
    for name in names:
        cells = []
        for n in steps:
            r = by.get((name, n))
            d = by.get(("ours DirectAD", n))
            if r is None:
                cells += ["—"] * 4
            elif r["status"] != "ok":
                cells += [f"{r['status']}" + (f": {r.get('message', '')[:80]}" if r["status"] == "error" else ""),
                          "", "", ""]
            else:
                mib = r["peak_bytes"] / 2**20
                ratio = (r["peak_bytes"] / d["peak_bytes"]) if (d and d.get("status") == "ok" and d["peak_bytes"] > 0) else None
                cells += [f"{mib:.1f}", _fmt(ratio, "{:.3f}"), f"{r['time_s']:.2f}",
                          f"{r['nfe_forward']}/{r['nfe_backward']}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_md(data: Dict[str, Any]) -> str:
    out = ["# Benchmark results", "",
           "Generated by `python benchmarks/run.py` (do not edit by hand; the numbers live in "
           "`benchmarks/results.json`).", ""]
    m = data.get("machine", {})
    v = data.get("versions", {})
    if m:
        out += ["## Machine", "", "| | |", "|---|---|"]
        out += [f"| {k} | {val} |" for k, val in m.items()]
        out += ["", "## Versions", "", "| package | version |", "|---|---|"]
        out += [f"| {k} | {val if val is not None else 'not installed'} |" for k, val in v.items()]
        out.append("")
    for key in sorted(data.get("runs", {}), key=lambda k: (not k.startswith("speed"), k)):
        run = data["runs"][key]
        p = run["problem"]
        if run["kind"] == "speed":
            out += [f"## Speed (`{key}`, {run.get('timestamp', '')})", "",
                    f"Problem: neural ODE dy/dt = MLP(y), MLP {p['dim']}→{p['hidden']}→{p['hidden']}→{p['dim']} "
                    f"(tanh), batch {p['batch']}, {p['dtype']}, t in {p['t_span']}, {p['method']}, "
                    f"rtol={p['rtol']:g}, atol={p['atol']:g}, loss = {p['loss']}. "
                    f"Time = {run['settings']['timing']} (median of {run['settings']['repeats']}, "
                    f"{run['settings']['warmup']} warm-up, torch threads: {run['settings'].get('torch_threads')}). NFE = calls of f(t, y) counted by one wrapper "
                    f"shared by every torch solver (forward solve / during `.backward()`); for diffrax by a "
                    f"host callback in a separate, untimed build. Gradient error = ‖g − g_ref‖/‖g_ref‖ over "
                    f"all MLP parameters, reference: {run['reference']['primary']}.", ""]
            ref = run["reference"]
            if "ours_directad_f64_vs_primary_grad_rel" in ref:
                out += [f"Cross-check of the reference: ours DirectAD (float64, rtol=atol=1e-10) differs from it "
                        f"by {ref['ours_directad_f64_vs_primary_grad_rel']:.2e} (gradient) and "
                        f"{ref['ours_directad_f64_vs_primary_loss_rel']:.2e} (loss).", ""]
            elif "ours_directad_f64" in ref:
                out += [f"Cross-check with ours DirectAD float64: {ref['ours_directad_f64']}.", ""]
            out += [speed_table(run), ""]
        elif run["kind"] == "memory":
            out += [f"## Memory (`{key}`, {run.get('timestamp', '')})", "",
                    f"Problem: MLP {p['dim']}→{p['hidden']}→{p['hidden']}→{p['dim']} (tanh), batch {p['batch']}, "
                    f"{p['dtype']}, t in {p['t_span']}, fixed-step rk4 with N steps (step_size = 1/N), "
                    f"loss = {p['loss']}. One fresh subprocess per configuration; "
                    f"{run['settings']['measure']}"
                    + (f" (glibc MALLOC_MMAP_THRESHOLD_={run['settings']['MALLOC_MMAP_THRESHOLD_']}, so freed "
                       "tensors leave the RSS; the times are inflated by it, see the speed table for timings)"
                       if run["settings"].get("MALLOC_MMAP_THRESHOLD_") else "")
                    + f". Torch threads: {run['settings'].get('torch_threads')}. CheckpointAdjoint(sqrtN) = "
                    f"CheckpointAdjoint(max_checkpoints=int(sqrt(N))).", "",
                    memory_table(run), ""]
    text = "\n".join(out)
    RESULTS_MD.write_text(text)
    return text


def _save(run: Dict[str, Any], key: str) -> None:
    data = _load()
    data.setdefault("runs", {})
    run["timestamp"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    data["runs"][key] = run
    data["machine"] = machine_info(run["device"])
    data["versions"] = versions()
    RESULTS_JSON.write_text(json.dumps(data, indent=1, default=str))
    write_md(data)
    print(f"wrote {RESULTS_JSON} and {RESULTS_MD}", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["speed", "memory", "all", "report", "_memory_child"])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (torch solvers; diffrax runs where jax runs)")
    ap.add_argument("--repeats", type=int, default=9, help="timed repeats (median reported); at least 5")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--t1", type=float, default=1.0, help="end time of the speed problem (default 1)")
    ap.add_argument("--rtol", type=float, default=1e-6)
    ap.add_argument("--atol", type=float, default=1e-8)
    ap.add_argument("--steps", type=int, nargs="+", default=[100, 1000], help="rk4 step counts for memory")
    ap.add_argument("--only", nargs="*", help="run only cases whose label contains one of these strings")
    ap.add_argument("--child-timeout", type=float, default=300.0)
    ap.add_argument("--mem-batch", type=int, default=MEMORY_BATCH, help="memory problem batch size")
    ap.add_argument("--mem-hidden", type=int, default=MEMORY_HIDDEN, help="memory problem hidden width")
    ap.add_argument("--malloc-default", action="store_true",
                    help="memory on CPU: keep glibc's dynamic mmap threshold (noisier RSS; see MMAP_THRESHOLD)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--out", help="folder for results.json / results.md (default: benchmarks/)")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    _set_out(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
        if args.threads == 1:  # make XLA (diffrax) single-threaded too, for a like-for-like comparison
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                       + " --xla_cpu_multi_thread_eigen=false").strip()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False")
    if args.repeats < 5 and args.command in ("speed", "all"):
        print("note: fewer than 5 repeats requested", file=sys.stderr)

    if args.command == "_memory_child":
        args.steps = args.steps[0]
        _memory_child(args)
        return
    if args.command == "report":
        print(write_md(_load()))
        return
    if args.command in ("speed", "all"):
        key = f"speed/{args.device}" + ("" if args.t1 == 1.0 else f"/T{args.t1:g}")
        _save(run_speed(args), key)
    if args.command in ("memory", "all"):
        _save(run_memory(args), f"memory/{args.device}")


if __name__ == "__main__":
    main()
