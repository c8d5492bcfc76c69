"""One step of a method: the generic explicit Runge-Kutta step, the leapfrog step,
the mixed absolute/relative error norm and the dense-output evaluators.

Times and step sizes may be Python floats (the fast path, and what CheckpointAdjoint
replays: step sizes are constants) or 0-d tensors carrying a graph (DirectAD, which
differentiates through the step-size controller and through ``t``). Every function
here accepts both.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ...errors import NewtonConvergenceError
from .tableaus import ButcherTableau

Scalar = Union[float, torch.Tensor]
RHS = Callable[[Scalar, torch.Tensor], torch.Tensor]


class StepRejected(NewtonConvergenceError):
    """A trial step that could not be computed at this step size but may be at a smaller
    one (an adaptive implicit method's Newton iteration diverged or its matrix was singular).
    The adaptive loop rejects the trial and shrinks h (``integrate.NEWTON_SHRINK``); raised
    anywhere else it is the :class:`NewtonConvergenceError` it derives from."""


def in_dtype_of(x: Scalar, like: torch.Tensor) -> Scalar:
    """A tensor time quantity (h, theta: float64 when dL/dt is wanted) in the state's dtype.

    Only a 0-d state needs it: type promotion between 0-d tensors takes the wider dtype, so
    a float32 scalar state would silently become float64 (a dimensioned state keeps its
    own). The cast keeps the graph to t."""
    return x.to(like.dtype) if isinstance(x, torch.Tensor) and x.dtype != like.dtype else x


def lincomb(y: torch.Tensor, h: Scalar, coeffs: Sequence[float], ks: Sequence[torch.Tensor]) -> torch.Tensor:
    """Return ``y + h * sum_j coeffs[j] * ks[j]`` (zero coefficients skipped).

    The increment is summed first and added to ``y`` once, so a step rounds once at the
    scale of ``y`` rather than once per stage: adding the terms to ``y`` one by one put
    rk4's float32 state 1.1e-5 (relative) off a linear solution after 155 steps, where
    midpoint's single addition was exact (torchdiffeq 0.2.5's float32 event test). With a
    float ``h`` each term is one fused ``add_`` (alpha = h * c_j) into a fresh buffer,
    which is safe for autograd: ``add``'s backward needs neither operand.
    """
    terms = [(c, k) for c, k in zip(coeffs, ks) if c != 0.0]
    if not terms:
        return y
    if isinstance(h, torch.Tensor):
        c0, k0 = terms[0]
        acc = k0 * c0
        for c, k in terms[1:]:
            acc = acc.add_(k, alpha=c)
        return torch.addcmul(y, acc, in_dtype_of(h, y))
    return y + weighted_sum(h, [c for c, _ in terms], [k for _, k in terms])


def weighted_sum(h: Scalar, coeffs: Sequence[float], ks: Sequence[torch.Tensor]) -> torch.Tensor:
    """``h * sum_j coeffs[j] * ks[j]`` without materialising a zero start vector."""
    terms = [(c, k) for c, k in zip(coeffs, ks) if c != 0.0]
    c0, k0 = terms[0]
    if isinstance(h, torch.Tensor):
        acc = k0 * c0
        for c, k in terms[1:]:
            acc = acc.add_(k, alpha=c)
        return acc * in_dtype_of(h, k0)
    acc = k0 * (h * c0)
    for c, k in terms[1:]:
        acc.add_(k, alpha=h * c)
    return acc


_NODES: Dict[Tuple[Tuple[float, ...], torch.dtype, torch.device], torch.Tensor] = {}


def stage_times(tab: ButcherTableau, t: Scalar, h: Scalar) -> Sequence[Scalar]:
    """t + c_i h for the stages after the first.

    With a graph-carrying ``h`` (DirectAD) this is one vector op and an unbind per step
    instead of two scalar-tensor ops per stage, which dominated the controller's overhead.
    """
    if not isinstance(h, torch.Tensor):
        return [t + c_i * h for c_i in tab.c[1:]]
    key = (tab.c, h.dtype, h.device)  # by value: replays use truncated copies of a table
    nodes = _NODES.get(key)
    if nodes is None:
        nodes = _NODES[key] = torch.tensor(tab.c[1:], dtype=h.dtype, device=h.device)
    return (nodes * h).add_(t).unbind(0)


def nudge(t: Scalar, toward: Scalar, like: torch.Tensor) -> torch.Tensor:
    """The time one ulp from ``t`` towards ``toward``, in ``like``'s dtype (the dtype func
    sees t in; a float64 ulp would vanish when cast to float32). A graph-carrying ``t``
    keeps its gradient (the shift is a constant)."""
    tt = t if isinstance(t, torch.Tensor) else torch.tensor(float(t), dtype=like.dtype, device=like.device)
    tt = tt.to(like.dtype)
    target = torch.full_like(tt, float(toward.detach() if isinstance(toward, torch.Tensor) else toward))
    return tt + (torch.nextafter(tt.detach(), target) - tt.detach())


def rk_step(
    rhs: RHS,
    tab: ButcherTableau,
    t: Scalar,
    y: torch.Tensor,
    h: Scalar,
    k0: Optional[torch.Tensor] = None,
    err_graph: bool = True,
    perturb_start: bool = False,
    perturb_end: bool = False,
) -> Tuple[torch.Tensor, List[torch.Tensor], Optional[torch.Tensor]]:
    """One explicit RK step from (t, y) with step h.

    Returns ``(y_next, ks, err)`` where ``ks`` are the stage derivatives and ``err``
    is the embedded local error estimate ``h * sum (b_i - b_hat_i) k_i`` (None for
    fixed-step tables). ``k0`` = f(t, y) when the caller already has it (FSAL).
    For an FSAL table the last stage is evaluated at y_next, so ``ks[-1]`` is
    f(t + h, y_next) and ``y_next`` is that stage's input (no second combination).
    ``err_graph=False``: the error estimate is built without a graph (it only steers
    the step size, which is then a constant for the gradient).
    ``perturb_start`` / ``perturb_end``: stages with c = 0 / c = 1 are evaluated one ulp
    inside the step (torchdiffeq's ``perturb``; f may jump at t or at t + h).
    An implicit method (``implicit.ImplicitRK``, which stands where a table stands) does
    its own step: Newton on the stage equations, see ``implicit/method.py``.
    """
    if not isinstance(tab, ButcherTableau):
        return tab.step(rhs, t, y, h, k0, perturb_start=perturb_start, perturb_end=perturb_end, err_graph=err_graph)
    if k0 is None:
        k0 = rhs(nudge(t, t + h, y) if perturb_start else t, y)
    ks = [k0]
    y_stage = y
    for c_i, t_i, a_i in zip(tab.c[1:], stage_times(tab, t, h), tab.a):
        y_stage = lincomb(y, h, a_i, ks)
        if perturb_end and c_i == 1.0:
            t_i = nudge(t_i, t, y)
        elif perturb_start and c_i == 0.0:
            t_i = nudge(t_i, t + h, y)
        ks.append(rhs(t_i, y_stage))
    y_next = y_stage if tab.fsal else lincomb(y, h, tab.b, ks)
    if tab.b_err is None:
        return y_next, ks, None
    with torch.set_grad_enabled(err_graph and torch.is_grad_enabled()):
        err = weighted_sum(h, tab.b_err, ks)
    return y_next, ks, err


def error_ratio(err: torch.Tensor, y: torch.Tensor, y_next: torch.Tensor, rtol: Scalar, atol: Scalar) -> torch.Tensor:
    """Root-mean-square of err / (atol + rtol * max(|y|, |y_next|)) over all entries.

    The step is accepted when the ratio is <= 1 (Hairer, Norsett & Wanner I, II.4).
    One ratio for the whole tensor: a batch shares one step size, as in torchdiffeq.
    ``rtol``/``atol`` are numbers or tensors broadcastable to y (per component).
    The mean is clamped away from 0 before the square root, as in ``rms_norm``: an
    exactly zero error estimate (f = 0, or a constant f with heun_euler) would
    otherwise give sqrt'(0) = inf and NaN gradients through the controller.
    """
    scale = torch.maximum(y.abs(), y_next.abs()).mul_(rtol).add_(atol)
    return (err / scale).square().mean().clamp_min(torch.finfo(err.dtype).tiny).sqrt()


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    # Clamped so the norm of an all-zero tensor has a finite derivative (sqrt'(0) = inf
    # would poison DirectAD's graph with 0 * inf = NaN even in an unselected branch).
    return x.square().mean().clamp_min(torch.finfo(x.dtype).tiny).sqrt()


def dense_eval(
    tab: Optional[ButcherTableau],
    theta: Scalar,
    h: Scalar,
    y: torch.Tensor,
    y_next: torch.Tensor,
    ks: Sequence[torch.Tensor],
    f_next: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """y(t_n + theta h) for theta in [0, 1] from one accepted step.

    Uses the method's own continuous extension when the table has one (dopri5, tsit5),
    otherwise the cubic Hermite interpolant through (y_n, f_n), (y_{n+1}, f_{n+1}) (local
    error O(h^4); globally as accurate as a 3rd-order method). ``tab=None`` is leapfrog.
    ``f_next()`` yields f(t_{n+1}, y_{n+1}); it is called only when Hermite needs it, so
    the forward loop and every adjoint replay share one definition of the dense output.
    """
    interpolate = getattr(tab, "interpolate", None)
    if interpolate is not None:  # a table with its own continuous extension (Rosenbrock: rosenbrock.py)
        return interpolate(theta, h, y, y_next, ks, f_next)
    if tab is not None and tab.dense is not None:
        weights = [sum(row[p] * theta ** (p + 1) for p in range(len(row))) for row in tab.dense]
        return _weighted(y, h, weights, ks)
    return hermite(theta, h, y, y_next, ks[0], f_next())


def dense_eval_many(
    tab: Optional[ButcherTableau],
    thetas: Sequence[Scalar],
    h: Scalar,
    y: torch.Tensor,
    y_next: torch.Tensor,
    ks: Sequence[torch.Tensor],
    f_next: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """``dense_eval`` at every theta_j of one step at once: a ``(len(thetas), *y.shape)`` tensor.

    The interpolant is linear in the stages, y(t_n + theta_j h) = y_n + h sum_i b_i(theta_j) k_i
    with b_i(theta) = sum_p dense[i][p] theta^(p+1) (the method's continuous extension), or
    sum over (y_n, h f_n, y_{n+1}, h f_{n+1}) with the cubic Hermite basis: so all saves of a
    step are one matrix product W K, W[j, i] = b_i(theta_j), K the stacked stages. That is a
    few autograd nodes per step instead of one fused combination per save (torchode serves
    the save times of a step the same way). Equal to ``dense_eval`` up to the rounding of
    the summation order (a matrix product instead of a chain of fused adds).
    Float thetas and h build W on the host in float64; tensor thetas or h (dL/dt, or a
    differentiated controller) keep W in the graph.
    """
    interpolate = getattr(tab, "interpolate", None)
    if interpolate is not None:  # a table with its own continuous extension (Rosenbrock: rosenbrock.py)
        return torch.stack([interpolate(theta, h, y, y_next, ks, f_next) for theta in thetas])
    dev, dt = y.device, y.dtype
    if all(isinstance(x, float) for x in thetas):
        th = torch.tensor(thetas, dtype=torch.float64)
    else:
        th = torch.stack([x.to(dt) if isinstance(x, torch.Tensor) else torch.tensor(x, dtype=dt, device=dev)
                          for x in thetas])
    flat = y.reshape(1, -1)
    if tab is not None and tab.dense is not None:
        table = _dense_table(tab.dense, th.dtype, th.device)
        powers = th[:, None] ** torch.arange(1, table.shape[1] + 1, dtype=th.dtype, device=th.device)
        w = powers @ table.T  # (n, stages)
        stages = torch.stack(list(ks[: table.shape[0]])).reshape(table.shape[0], -1)
        w = w.to(device=dev, dtype=dt)
        if isinstance(h, torch.Tensor):
            out = flat + (w @ stages) * h
        else:
            out = torch.addmm(flat, w, stages, alpha=h)
    else:
        one = 1 - th
        basis = torch.stack([(1 + 2 * th) * one**2, th * one**2, th**2 * (3 - 2 * th), th**2 * (th - 1)], 1)
        points = torch.stack([y, ks[0], y_next, f_next()]).reshape(4, -1)
        if isinstance(h, torch.Tensor):
            basis = basis.to(device=dev, dtype=dt)
            basis = basis * torch.stack([torch.ones_like(h), h, torch.ones_like(h), h]).to(dt)
        else:
            basis = (basis * torch.tensor([1.0, h, 1.0, h], dtype=torch.float64)).to(device=dev, dtype=dt)
        out = basis @ points
    return out.reshape(len(thetas), *y.shape)


_DENSE: Dict[Tuple[int, torch.dtype, torch.device], torch.Tensor] = {}


def _dense_table(dense: Sequence[Sequence[float]], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    key = (dense, dtype, device)  # by value: replays use copies of a table
    table = _DENSE.get(key)
    if table is None:
        table = _DENSE[key] = torch.tensor(dense, dtype=dtype, device=device)
    return table


def _weighted(y: torch.Tensor, h: Scalar, weights: Sequence[Scalar], ks: Sequence[torch.Tensor]) -> torch.Tensor:
    if any(isinstance(w, torch.Tensor) for w in weights) or isinstance(h, torch.Tensor):
        acc = y
        h = in_dtype_of(h, y)
        for w, k in zip(weights, ks):
            if not (isinstance(w, float) and w == 0.0):
                acc = acc + (h * in_dtype_of(w, y)) * k
        return acc
    return lincomb(y, h, [float(w) for w in weights], ks)


def hermite(theta: Scalar, h: Scalar, y0: torch.Tensor, y1: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor) -> torch.Tensor:
    """Cubic Hermite interpolant on [t_n, t_n + h] at t_n + theta h."""
    theta, h = in_dtype_of(theta, y0), in_dtype_of(h, y0)
    h00 = (1 + 2 * theta) * (1 - theta) ** 2
    h10 = theta * (1 - theta) ** 2
    h01 = theta**2 * (3 - 2 * theta)
    h11 = theta**2 * (theta - 1)
    return h00 * y0 + (h10 * h) * f0 + h01 * y1 + (h11 * h) * f1


def leapfrog_step(rhs: RHS, t: Scalar, y_prev: torch.Tensor, y: torch.Tensor, h: Scalar) -> Tuple[torch.Tensor, torch.Tensor]:
    """Two-step leapfrog (explicit midpoint rule): y_{n+1} = y_{n-1} + 2 h f(t_n, y_n).

    Returns (y_next, f(t_n, y_n)). Second order, non-dissipative; its parasitic
    (-1)^n mode is why autodiff through it oscillates with time-varying parameters
    (Xu, Chen & Li, see ``pysciml_grad.corrected``).
    """
    f = rhs(t, y)
    return lincomb(y_prev, h, (2.0,), (f,)), f
