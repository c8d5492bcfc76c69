"""``odeint``: the one entry point. Validates input, picks the engine, returns the states."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Optional

import torch

from .errors import InvalidProblemError
from .problem import make_problem
from .pytree import StructuredFunc, is_structured, structure_of, wrap_norm
from .sensealg import CheckpointAdjoint, GaussAdjoint, SensitivityAlgorithm

BACKENDS = ("torch", "julia")


def odeint(
    func: Callable,
    y0: torch.Tensor,
    t: torch.Tensor,
    *,
    method: str = "dopri5",
    rtol: float = 1e-7,
    atol: float = 1e-9,
    sensealg: Optional[SensitivityAlgorithm] = None,
    backend: str = "torch",
    options: Optional[Mapping[str, Any]] = None,
    params: Optional[Iterable[torch.Tensor]] = None,
):
    """Solve dy/dt = func(t, y), y(t[0]) = y0, and return y at every time in ``t``.

    Parameters
    ----------
    func : callable ``func(t, y) -> dy/dt`` (torchdiffeq's convention), e.g. an ``nn.Module``.
    y0 : floating tensor of any shape (batches included); output dtype/device follow it.
        Or a structured state: a tuple, list or dict of such tensors, nested (e.g.
        FFJORD's ``(z, logp)``); ``func`` then takes and returns that structure, and the
        result has it too, each leaf of shape ``(len(t), *leaf.shape)`` (see ``pytree``).
    t : 1-D strictly monotonic (increasing or decreasing) tensor of save times; or a
        ``(B, T)`` tensor of per-sample save times (row b for sample b = y0[b], NaN-padded
        at the end; result ``(T, B, *y0.shape[1:])``, NaN where padded; see ``batching``).
    method : ``euler, midpoint, heun, ralston, rk4, leapfrog`` (fixed step: grid ``t`` or
        ``options={"step_size": h}``) or ``heun_euler, bosh3, dopri5, tsit5`` (adaptive), or
        ``rodas5p, rodas4, ros3p`` (adaptive Rosenbrock, for stiff problems; also ``Rodas5P`` ...),
        ``kvaerno5, kencarp4`` (adaptive ESDIRK, stiff; ``Kvaerno5``, ``KenCarp4``; fixed with step_size).
    sensealg : how gradients are computed; default ``psg.CheckpointAdjoint()`` (torch) /
        ``psg.GaussAdjoint()`` (julia). Also ``DirectAD``, ``BacksolveAdjoint``,
        ``InterpolatingAdjoint``, ``QuadratureAdjoint``.
    backend : ``"torch"`` (native) or ``"julia"`` (SciML through juliacall).
    options : solver options (see ``SolverOptions``); ``{"return_stats": True}`` makes
        the call return ``(ys, stats)`` with NFE and step counts.
    params : extra tensors the gradient must reach (those closed over by ``func``).

    Returns
    -------
    ys : tensor of shape ``(len(t), *y0.shape)`` (or y0's structure of such tensors);
        or ``(ys, stats)`` with ``return_stats``.
    """
    if (isinstance(t, torch.Tensor) and t.dim() == 1 and isinstance(y0, torch.Tensor) and y0.dim() > 0
            and (options or {}).get("steps") is not None):
        t = t.expand(y0.shape[0], -1)  # per-sample steps on shared save times (batching.py)
    if isinstance(t, torch.Tensor) and t.dim() == 2:  # per-sample save times (batching.py)
        from .batching import odeint_per_sample_times

        return odeint_per_sample_times(
            odeint, func, y0, t, method=method, rtol=rtol, atol=atol, sensealg=sensealg,
            backend=backend, options=options, params=params,
        )
    if is_structured(y0):
        if not callable(func):
            raise InvalidProblemError(f"func must be callable as func(t, y) -> dy/dt, got {type(func).__name__}")
        structure = structure_of(y0)
        options = dict(options or {})
        if callable(options.get("norm")):
            options["norm"] = wrap_norm(options["norm"], structure)
        out = odeint(
            StructuredFunc(func, structure), structure.flatten(y0), t, method=method, rtol=rtol,
            atol=atol, sensealg=sensealg, backend=backend, options=options, params=params,
        )
        if isinstance(out, tuple):
            ys, stats = out
            return structure.unflatten(ys, (ys.shape[0],)), stats
        return structure.unflatten(out, (out.shape[0],))
    if sensealg is None:
        sensealg = default_sensealg(backend)
    if backend not in BACKENDS:
        raise InvalidProblemError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    problem = make_problem(
        func, y0, t, method=method, rtol=rtol, atol=atol, options=options,
        params=params, sensealg=sensealg, backend=backend,
    )
    return_stats = bool(problem.options.get("return_stats", False))
    if backend == "torch":
        from .backends.torch import solve
    else:
        from .backends.julia import solve  # imports juliacall lazily, inside
    ys, stats = solve(problem)
    return (ys, stats) if return_stats else ys


def default_sensealg(backend: str = "torch") -> SensitivityAlgorithm:
    """CheckpointAdjoint on the torch engine: the exact gradient of the discrete solver
    (ACA), with memory of one state per accepted step instead of DirectAD's whole graph.
    GaussAdjoint on the Julia engine, SciMLSensitivity's recommended continuous adjoint."""
    if backend == "julia":
        return GaussAdjoint()
    return CheckpointAdjoint()
