"""Time-varying-parameter ODE blocks and corrected gradients (Leapfrog, 2-stage ERK).

DERIVATION_PLACEHOLDER
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Callable, Optional, Union

import numpy as np
import torch
from torch import nn

from .errors import InvalidProblemError, InvalidStateError, UnknownMethodError

SCHEMES = ("leapfrog", "erk2")

_ALPHA_HELP = "alpha is c2 of the 2-stage ERK: 1/2 (explicit midpoint), 2/3 (Ralston), 1 (Heun)"


def _check_scheme(scheme, alpha):
    """Return ``(scheme, alpha)`` normalised, or raise a specific InvalidProblemError."""
    if not isinstance(scheme, str) or scheme.lower() not in SCHEMES:
        raise UnknownMethodError(
            f"unknown scheme {scheme!r}; corrected gradients exist for scheme='leapfrog' "
            f"and scheme='erk2' (2-stage explicit Runge-Kutta, give alpha=c2) only"
        )
    scheme = scheme.lower()
    if scheme == "leapfrog":
        if alpha is not None:
            raise InvalidProblemError(
                f"alpha={alpha!r} was given with scheme='leapfrog', which has no free "
                f"coefficient; drop alpha, or use scheme='erk2' ({_ALPHA_HELP})"
            )
        return scheme, None
    if alpha is None:
        raise InvalidProblemError(f"scheme='erk2' needs alpha; {_ALPHA_HELP}")
    if isinstance(alpha, bool) or not isinstance(alpha, Real):
        raise InvalidProblemError(f"alpha must be a real number > 0, got {alpha!r}; {_ALPHA_HELP}")
    alpha = float(alpha)
    if not math.isfinite(alpha) or alpha <= 0.0:
        raise InvalidProblemError(
            f"alpha must be finite and > 0 (b2 = 1/(2 alpha) must exist), got {alpha!r}; {_ALPHA_HELP}"
        )
    return scheme, alpha


def _check_horizon(T, n_steps):
    if isinstance(T, bool) or not isinstance(T, Real) or not math.isfinite(float(T)) or float(T) <= 0:
        raise InvalidProblemError(f"T must be a finite number > 0 (the final time), got {T!r}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)):
        raise InvalidProblemError(f"n_steps must be an int >= 2, got {n_steps!r}")
    if n_steps < 2:
        raise InvalidProblemError(
            f"n_steps={n_steps} is too few: the corrections combine neighbouring steps, "
            f"so use n_steps >= 2"
        )
    return float(T), int(n_steps)


def _params_per_step(scheme: str) -> int:
    return 1 if scheme == "leapfrog" else 2


def num_parameter_times(scheme: str, n_steps: int) -> int:
    """Number of parameter times: ``n_steps`` for Leapfrog, ``2 n_steps`` for ERK2."""
    scheme, _ = _check_scheme(scheme, 0.5 if str(scheme).lower() == "erk2" else None)
    return _params_per_step(scheme) * int(n_steps)


def parameter_times(scheme: str, T: float, n_steps: int, alpha: Optional[float] = None,
                    dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Times at which the scheme evaluates ``f`` and hence samples ``theta(t)``.

    Leapfrog: ``t_n = n h`` for ``n = 0 .. N-1`` (``f`` is never evaluated at ``t_N``).
    ERK2: ``t_0, t_0 + alpha h, t_1, t_1 + alpha h, ...`` (stage 1 and stage 2 of each
    step, interleaved, length ``2N``; for ``alpha = 1`` stage 2 of step n and stage 1 of
    step n+1 share a time; for ``alpha > 1`` the sequence is not monotonic).
    """
    scheme, alpha = _check_scheme(scheme, alpha)
    T, n_steps = _check_horizon(T, n_steps)
    dtype = dtype or torch.get_default_dtype()
    h = T / n_steps
    grid = torch.arange(n_steps, dtype=torch.float64) * h
    if scheme == "leapfrog":
        times = grid
    else:
        times = torch.stack([grid, grid + alpha * h], dim=1).reshape(-1)
    return times.to(dtype)


def parameter_spacing(scheme: str, h: float) -> float:
    """Share of the time axis owned by one parameter: ``h`` (Leapfrog), ``h/2`` (ERK2).

    ``sum(spacing) = T``, so ``grad / spacing`` is a density comparable with ``g(t)``.
    """
    scheme, _ = _check_scheme(scheme, 0.5 if str(scheme).lower() == "erk2" else None)
    if isinstance(h, bool) or not isinstance(h, Real) or not math.isfinite(float(h)) or h <= 0:
        raise InvalidProblemError(f"h must be a finite step size > 0 (T / n_steps), got {h!r}")
    return float(h) / _params_per_step(scheme)


def gradient_density(grad, scheme: str, h: float):
    """``grad / spacing``: the autodiff (or corrected) gradient as an estimate of g(t_k)."""
    return grad / parameter_spacing(scheme, h)


def correct_gradient(grad, scheme: str, h: Optional[float] = None, alpha: Optional[float] = None):
    """Post-process an autodiff gradient sequence ``dL/dtheta_k`` (dim 0 = parameter index).

    Returns a tensor (or array) of the same shape and units whose density
    ``result / spacing`` approximates ``g(t_k)`` at every parameter time (see the module
    docstring for the derivation and accuracy). The correction is linear, costs
    O(number of parameters), and is scale-free in ``h`` (h cancels), so ``h`` is only
    checked when given.
    """
    scheme, alpha = _check_scheme(scheme, alpha)
    if h is not None:
        parameter_spacing(scheme, h)
    as_numpy = isinstance(grad, np.ndarray)
    g = torch.from_numpy(grad) if as_numpy else grad
    if not isinstance(g, torch.Tensor) or not g.is_floating_point() or g.dim() < 1:
        raise InvalidProblemError(
            "grad must be a floating tensor/array whose first dimension indexes the "
            f"parameter times, got {type(grad).__name__}"
        )
    n_params = g.shape[0]
    per_step = _params_per_step(scheme)
    if n_params % per_step or n_params // per_step < 2:
        raise InvalidProblemError(
            f"grad has {n_params} entries along dim 0, but scheme={scheme!r} needs "
            f"{per_step} x n_steps entries with n_steps >= 2; pass the gradient of the "
            "whole theta (shape (number of parameter times, *param_shape))"
        )
    out = _correct_leapfrog(g) if scheme == "leapfrog" else _correct_erk2(g, alpha)
    return out.numpy() if as_numpy else out


def _correct_leapfrog(grad: torch.Tensor) -> torch.Tensor:
    n = grad.shape[0]
    # theta_0 enters one Euler step of length h, the others one leapfrog step of length
    # 2h: doubling grad_0 puts every entry on the same footing, U_k ~ h (g_k + (-1)^k r_k).
    u = torch.cat([2.0 * grad[:1], grad[1:]])
    out = torch.empty_like(u)
    # [1, 2, 1] / 4 annihilates the (-1)^k parasitic mode to O(h^2) and keeps smooth data to O(h^2).
    out[1:-1] = 0.25 * u[:-2] + 0.5 * u[1:-1] + 0.25 * u[2:]
    if n >= 4:
        # One-sided stencil exact for g and r both linear in t: g_0 = (2 U_0 + 3 U_1 - U_3)/4.
        out[0] = 0.5 * u[0] + 0.75 * u[1] - 0.25 * u[3]
        out[-1] = 0.5 * u[-1] + 0.75 * u[-2] - 0.25 * u[-4]
    else:
        out[0] = 0.5 * (u[0] + u[1])
        out[-1] = 0.5 * (u[-1] + u[-2])
    return out


def _correct_erk2(grad: torch.Tensor, alpha: float) -> torch.Tensor:
    n_steps = grad.shape[0] // 2
    trailing = grad.shape[1:]
    # Per-step sum = h (b1 g(t_n) + b2 g(t_n + alpha h)) + O(h^3) = h g(t_n + h/2) + O(h^3):
    # a second-order sample of g at each step midpoint, whatever the stage weights are.
    step_sums = grad.reshape(n_steps, 2, *trailing).sum(dim=1)
    # Parameter times in units of h, measured from the first midpoint t_{1/2}.
    steps = torch.arange(n_steps, dtype=torch.float64)
    pos = torch.stack([steps - 0.5, steps + (alpha - 0.5)], dim=1).reshape(-1)
    left = torch.clamp(torch.floor(pos), 0, n_steps - 2).to(torch.long)
    frac = (pos - left.to(torch.float64)).to(dtype=grad.dtype, device=grad.device)
    left = left.to(grad.device)
    frac = frac.reshape(-1, *([1] * len(trailing)))
    # Linear interpolation (extrapolation at the ends) of the midpoint samples, times the
    # spacing h/2 to return to gradient units: corrected = (1/2) S(t_k) in units of S.
    interpolated = (1.0 - frac) * step_sums[left] + frac * step_sums[left + 1]
    return 0.5 * interpolated


class TimeVaryingODE(nn.Module):
    """``x(T)`` of ``dx/dt = func(x, theta(t))`` by Leapfrog or 2-stage ERK, ``theta`` owned here.

    Parameters
    ----------
    func : callable ``func(x, theta_k) -> dx/dt`` (``x`` may carry batch dimensions).
    T, n_steps : horizon and number of fixed steps, ``h = T / n_steps``.
    scheme : ``"leapfrog"`` (Euler first step, then ``x_{n+1} = x_{n-1} + 2h f(x_n, theta_n)``)
        or ``"erk2"`` (``k1 = f(x_n, theta_{n,1})``, ``k2 = f(x_n + alpha h k1, theta_{n,2})``,
        ``x_{n+1} = x_n + h (b1 k1 + b2 k2)``, ``b2 = 1/(2 alpha)``, ``b1 = 1 - b2``).
    alpha : c2 of the ERK2 scheme (required for ``"erk2"``, not accepted for leapfrog).
    theta_init : tensor/array of shape ``(num parameter times, *param_shape)``, or a callable
        mapping the parameter-times tensor to such a tensor.
    corrected : if True (default) a tensor hook replaces the autodiff gradient reaching
        ``theta`` through this block by :func:`correct_gradient` of it, so
        ``loss.backward()`` leaves corrected gradients in ``theta.grad``. Other uses of
        ``theta`` (e.g. a regulariser) keep their plain gradients.
    """

    def __init__(self, func: Callable, T: float, n_steps: int, scheme: str = "leapfrog",
                 alpha: Optional[float] = None,
                 theta_init: Union[torch.Tensor, np.ndarray, Callable, None] = None,
                 corrected: bool = True):
        super().__init__()
        scheme, alpha = _check_scheme(scheme, alpha)
        T, n_steps = _check_horizon(T, n_steps)
        if not callable(func):
            raise InvalidProblemError(f"func must be callable as func(x, theta_k), got {type(func).__name__}")
        self.func = func
        self.scheme, self.alpha, self.T, self.n_steps = scheme, alpha, T, n_steps
        self.h = T / n_steps
        self.corrected = bool(corrected)
        n_params = _params_per_step(scheme) * n_steps
        if theta_init is None:
            raise InvalidProblemError(
                f"theta_init is required: a tensor of shape ({n_params}, *param_shape) or a "
                "callable of the parameter times (see .parameter_times) returning one"
            )
        times64 = parameter_times(scheme, T, n_steps, alpha, dtype=torch.float64)
        if callable(theta_init) and not isinstance(theta_init, (torch.Tensor, np.ndarray)):
            theta0 = theta_init(times64.to(torch.get_default_dtype()))
        else:
            theta0 = theta_init
        theta0 = torch.as_tensor(theta0).detach().clone()
        if not theta0.is_floating_point():
            theta0 = theta0.to(torch.get_default_dtype())
        if theta0.dim() < 1 or theta0.shape[0] != n_params:
            raise InvalidProblemError(
                f"theta_init has shape {tuple(theta0.shape)}, but scheme={scheme!r} with "
                f"n_steps={n_steps} has {n_params} parameter times; give shape "
                f"({n_params}, *param_shape), one row per entry of .parameter_times"
            )
        self.theta = nn.Parameter(theta0)
        self.register_buffer("parameter_times", times64.to(theta0.dtype), persistent=False)

    @property
    def b(self):
        """ERK2 weights ``(b1, b2)``; None for leapfrog."""
        if self.scheme != "erk2":
            return None
        b2 = 1.0 / (2.0 * self.alpha)
        return (1.0 - b2, b2)

    @property
    def spacing(self) -> float:
        """Share of the time axis owned by one parameter (``h`` or ``h/2``)."""
        return parameter_spacing(self.scheme, self.h)

    def density(self, grad: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``grad / spacing`` (default ``theta.grad``), to compare with ``g(parameter_times)``."""
        if grad is None:
            if self.theta.grad is None:
                raise InvalidProblemError("theta.grad is None: call loss.backward() first, or pass grad")
            grad = self.theta.grad
        return gradient_density(grad, self.scheme, self.h)

    def correct_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        """:func:`correct_gradient` with this block's scheme."""
        return correct_gradient(grad, self.scheme, self.h, self.alpha)

    def _theta_for_solve(self) -> torch.Tensor:
        theta = self.theta
        if self.corrected and theta.requires_grad and torch.is_grad_enabled():
            # Hook a view, not the leaf: only the gradient flowing through the solver is
            # corrected, so extra terms on theta (regularisers) keep their own gradient.
            theta = theta.view_as(theta)
            theta.register_hook(self.correct_gradient)
        return theta

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
            raise InvalidStateError(
                f"x0 must be a floating-point tensor, got {type(x0).__name__}"
                + (f" of dtype {x0.dtype}" if isinstance(x0, torch.Tensor) else "")
            )
        theta = self._theta_for_solve()
        h, f = self.h, self.func
        if self.scheme == "leapfrog":
            x_prev, x = x0, x0 + h * f(x0, theta[0])
            for n in range(1, self.n_steps):
                x_prev, x = x, x_prev + (2.0 * h) * f(x, theta[n])
            return x
        b1, b2 = self.b
        x = x0
        for n in range(self.n_steps):
            k1 = f(x, theta[2 * n])
            k2 = f(x + (self.alpha * h) * k1, theta[2 * n + 1])
            x = x + h * (b1 * k1 + b2 * k2)
        return x

    def extra_repr(self) -> str:
        extra = f", alpha={self.alpha:g}" if self.alpha is not None else ""
        return (f"scheme={self.scheme!r}{extra}, T={self.T:g}, n_steps={self.n_steps}, "
                f"theta={tuple(self.theta.shape)}, corrected={self.corrected}")


__all__ = [
    "SCHEMES",
    "TimeVaryingODE",
    "correct_gradient",
    "gradient_density",
    "num_parameter_times",
    "parameter_spacing",
    "parameter_times",
]
