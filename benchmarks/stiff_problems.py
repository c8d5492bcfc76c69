"""The stiff test set: Robertson, Van der Pol (mu = 1000), HIRES; torch and NumPy forms,
analytic Jacobians for SciPy, and SciPy Radau references at rtol = 1e-12.

Definitions:
* Robertson (1966) chemical kinetics, k = (0.04, 3e7, 1e4), y0 = (1, 0, 0), to T = 1e5:
  Hairer & Wanner, *Solving ODEs II*, IV.10 (eq. 10.3); same constants as OrdinaryDiffEq.jl's
  ``rober_prob`` in ``lib/OrdinaryDiffEqNonlinearSolve/test/nsa_residual_convergence_tests.jl``
  (github.com/SciML/OrdinaryDiffEq.jl at b211787f7b18d3c5391121bd8c9e2d5fee54efee).
* Van der Pol, y1' = y2, y2' = mu (1 - y1^2) y2 - y1, mu = 1000, y0 = (2, 0), t in [0, 3000]
  (one relaxation period is about (3 - 2 ln 2) mu = 1614): Hairer & Wanner II, IV.10 use the
  rescaled form; this is SciPy's / MATLAB's ``vdp1000`` unscaled form.
* HIRES (Schaefer 1975; Hairer & Wanner II, IV.10, eq. 10.4), 8 species, t in [0, 321.8122],
  y0 = (1, 0, 0, 0, 0, 0, 0, 0.0057): read from ``hires!`` / ``hires_prob`` in the same
  OrdinaryDiffEq.jl file and commit as Robertson.

The references are computed, never typed in: SciPy ``solve_ivp(method="Radau", rtol=1e-12)``
with the analytic Jacobian, cached in ``stiff_references.npz`` (written by running this file)
together with the problem data they were computed for.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Tuple

import numpy as np
import torch
from scipy.integrate import solve_ivp


@dataclass(frozen=True)
class StiffProblem:
    name: str
    f_torch: Callable  # f(t, y) on tensors, batch-friendly (last dim = state)
    f_np: Callable
    jac_np: Callable
    y0: Tuple[float, ...]
    t_eval: Tuple[float, ...]
    atol: float  # absolute tolerance matched to the problem's scale (Robertson's y2 ~ 1e-5)


def _rober_torch(t, y, k1=0.04, k2=3e7, k3=1e4):
    y1, y2, y3 = y.unbind(-1)
    return torch.stack([-k1 * y1 + k3 * y2 * y3, k1 * y1 - k3 * y2 * y3 - k2 * y2 ** 2, k2 * y2 ** 2], -1)


def _rober_np(t, y, k1=0.04, k2=3e7, k3=1e4):
    y1, y2, y3 = y
    return np.array([-k1 * y1 + k3 * y2 * y3, k1 * y1 - k3 * y2 * y3 - k2 * y2 ** 2, k2 * y2 ** 2])


def _rober_jac(t, y, k1=0.04, k2=3e7, k3=1e4):
    y1, y2, y3 = y
    return np.array([[-k1, k3 * y3, k3 * y2], [k1, -k3 * y3 - 2 * k2 * y2, -k3 * y2], [0.0, 2 * k2 * y2, 0.0]])


MU = 1000.0


def _vdp_torch(t, y):
    y1, y2 = y.unbind(-1)
    return torch.stack([y2, MU * (1 - y1 ** 2) * y2 - y1], -1)


def _vdp_np(t, y):
    return np.array([y[1], MU * (1 - y[0] ** 2) * y[1] - y[0]])


def _vdp_jac(t, y):
    return np.array([[0.0, 1.0], [-2 * MU * y[0] * y[1] - 1.0, MU * (1 - y[0] ** 2)]])


def hires_terms(y):
    """HIRES's eight right-hand sides from its eight components, for any array library
    (torch, NumPy, jax.numpy): written once, stacked by each caller."""
    y1, y2, y3, y4, y5, y6, y7, y8 = y
    return [
        -1.71 * y1 + 0.43 * y2 + 8.32 * y3 + 0.0007,
        1.71 * y1 - 8.75 * y2,
        -10.03 * y3 + 0.43 * y4 + 0.035 * y5,
        8.32 * y2 + 1.71 * y3 - 1.12 * y4,
        -1.745 * y5 + 0.43 * y6 + 0.43 * y7,
        -280.0 * y6 * y8 + 0.69 * y4 + 1.71 * y5 - 0.43 * y6 + 0.69 * y7,
        280.0 * y6 * y8 - 1.81 * y7,
        -280.0 * y6 * y8 + 1.81 * y7,
    ]


def _hires_torch(t, y):
    return torch.stack(hires_terms(y.unbind(-1)), -1)


def _hires_np(t, y):
    return np.array(hires_terms(y))


def _hires_jac(t, y):
    J = np.zeros((8, 8))
    J[0, :3] = (-1.71, 0.43, 8.32)
    J[1, :2] = (1.71, -8.75)
    J[2, 2:5] = (-10.03, 0.43, 0.035)
    J[3, 1:4] = (8.32, 1.71, -1.12)
    J[4, 4:7] = (-1.745, 0.43, 0.43)
    J[5, 3:8] = (0.69, 1.71, -280.0 * y[7] - 0.43, 0.69, -280.0 * y[5])
    J[6, 5:8] = (280.0 * y[7], -1.81, 280.0 * y[5])
    J[7, 5:8] = (-280.0 * y[7], 1.81, -280.0 * y[5])
    return J


ROBERTSON = StiffProblem("robertson", _rober_torch, _rober_np, _rober_jac, (1.0, 0.0, 0.0),
                         (0.0, 1e-4, 1e-2, 1.0, 1e2, 1e4, 1e5), atol=1e-10)
VAN_DER_POL = StiffProblem("van_der_pol_mu1000", _vdp_torch, _vdp_np, _vdp_jac, (2.0, 0.0),
                           tuple(float(x) for x in np.linspace(0.0, 3000.0, 7)), atol=1e-8)
HIRES = StiffProblem("hires", _hires_torch, _hires_np, _hires_jac, (1.0, 0, 0, 0, 0, 0, 0, 0.0057),
                     (0.0, 1.0, 10.0, 100.0, 321.8122), atol=1e-10)
PROBLEMS = (ROBERTSON, VAN_DER_POL, HIRES)


CACHE = Path(__file__).with_name("stiff_references.npz")


def compute_reference(problem: StiffProblem, rtol: float = 1e-12) -> np.ndarray:
    """States at ``problem.t_eval`` from SciPy Radau at ``rtol`` (atol = 1e-4 x the problem's atol)."""
    t = problem.t_eval
    sol = solve_ivp(problem.f_np, (t[0], t[-1]), problem.y0, method="Radau", t_eval=t, rtol=rtol,
                    atol=problem.atol * 1e-4, jac=problem.jac_np)
    if not sol.success:
        raise RuntimeError(f"SciPy Radau failed on {problem.name}: {sol.message}")
    return sol.y.T


def _key(problem: StiffProblem, rtol: float) -> np.ndarray:
    # What a cached array was computed for: a changed problem never reads a stale reference.
    return np.array([rtol, problem.atol, *problem.y0, *problem.t_eval])


@functools.lru_cache(maxsize=None)
def reference(problem: StiffProblem, rtol: float = 1e-12) -> np.ndarray:
    """:func:`compute_reference`, read from ``stiff_references.npz`` when that file holds it
    for exactly this problem (y0, t_eval, atol) and rtol (Van der Pol takes ~25 s to compute
    on a loaded 2-core machine); ``python benchmarks/stiff_problems.py`` rewrites the file."""
    if CACHE.exists():
        with np.load(CACHE) as data:
            if f"{problem.name}_key" in data and np.array_equal(data[f"{problem.name}_key"], _key(problem, rtol)):
                return data[problem.name]
    return compute_reference(problem, rtol)


def write_cache(rtol: float = 1e-12) -> None:
    arrays = {}
    for p in PROBLEMS:
        arrays[p.name] = compute_reference(p, rtol)
        arrays[f"{p.name}_key"] = _key(p, rtol)
    np.savez(CACHE, **arrays)


def relative_error(ys: np.ndarray, ref: np.ndarray, atol: float) -> float:
    """max over save times and components of |y - ref| / (atol + |ref|): the error the
    tolerances (rtol, atol) promise to bound, per component."""
    return float(np.max(np.abs(ys - ref) / (atol + np.abs(ref))))


if __name__ == "__main__":
    write_cache()
    print(f"wrote {CACHE}")
