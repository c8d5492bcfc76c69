"""Shared cases for the adjoint tests, the backsolve-failure example and the docs tables."""

import math
import warnings

import torch

import pysciml_grad as psg

SENSEALGS = {
    "DirectAD": psg.DirectAD(),
    "CheckpointAdjoint": psg.CheckpointAdjoint(),
    "CheckpointAdjoint(k=4)": psg.CheckpointAdjoint(max_checkpoints=4),
    "BacksolveAdjoint": psg.BacksolveAdjoint(),
    "InterpolatingAdjoint": psg.InterpolatingAdjoint(),
    "InterpolatingAdjoint(ckpt)": psg.InterpolatingAdjoint(checkpointing=True),
    "QuadratureAdjoint": psg.QuadratureAdjoint(),
}

TOY_A, TOY_Z0 = -1.0, 1.5


def toy_errors(sensealg, T, rtol, a=TOY_A, z0=TOY_Z0, method="dopri5"):
    """ACA's toy (Zhuang et al. 2020, sec. 5.1): dz/dt = a z, z(0) = z0, L = z(T)^2.

    Closed form: z(T) = z0 e^{aT}, dL/da = 2 T z0^2 e^{2aT}, dL/dz0 = 2 z0 e^{2aT}.
    Returns the relative errors (dL/da, dL/dz0).
    """
    a_t = torch.tensor(a, dtype=torch.float64, requires_grad=True)
    z0_t = torch.tensor([z0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, T], dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", psg.errors.GradientAccuracyWarning)
        ys = psg.odeint(lambda tt, z: a_t * z, z0_t, t, method=method, rtol=rtol, atol=1e-3 * rtol,
                        params=[a_t], sensealg=sensealg)
        g_a, g_z0 = torch.autograd.grad(ys[-1].square().sum(), [a_t, z0_t])
    e = math.exp(2 * a * T)
    exact_a, exact_z0 = 2 * T * z0**2 * e, 2 * z0 * e
    return abs(float(g_a) - exact_a) / abs(exact_a), abs(float(g_z0) - exact_z0) / abs(exact_z0)


class VanDerPol(torch.nn.Module):
    """dx/dt = v, dv/dt = mu (1 - x^2) v - x; mu is the parameter. For mu >= 5 the limit
    cycle is strongly attracting, so the reverse-time flow is strongly repelling."""

    def __init__(self, mu=5.0):
        super().__init__()
        self.mu = torch.nn.Parameter(torch.tensor(mu, dtype=torch.float64))

    def forward(self, t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, self.mu * (1 - x**2) * v - x], dim=-1)


class Contracting(torch.nn.Module):
    """dy/dt = -k (y - b) + 0.3 sin(flip(y)): a contracting flow onto a fixed point."""

    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor([2.0, 0.5], dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.tensor([1.0, -1.0], dtype=torch.float64))

    def forward(self, t, y):
        return -self.k * (y - self.b) + 0.3 * torch.sin(y.flip(-1))


def hard_problem(name):
    """(func, y0, t) of the backsolve-failure problems."""
    if name == "vanderpol":
        return VanDerPol(5.0), torch.tensor([2.0, 0.0], dtype=torch.float64), torch.linspace(0, 5, 3, dtype=torch.float64)
    if name == "contracting":
        return Contracting(), torch.tensor([0.5, -0.5], dtype=torch.float64), torch.linspace(0, 10, 3, dtype=torch.float64)
    raise KeyError(name)


def hard_loss(ys):
    return (ys[-1] ** 2).sum() + ys[len(ys) // 2].sum()


def gradient(func, y0, t, sensealg, rtol, atol=None, method="dopri5"):
    """(flat gradient w.r.t. (y0, parameters), stats, warnings raised)."""
    y0 = y0.clone().requires_grad_(True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", psg.errors.GradientAccuracyWarning)
        ys, stats = psg.odeint(func, y0, t, method=method, rtol=rtol, atol=1e-3 * rtol if atol is None else atol,
                               sensealg=sensealg, options={"return_stats": True})
        grads = torch.autograd.grad(hard_loss(ys), [y0, *func.parameters()])
    flat = torch.cat([g.reshape(-1) for g in grads])
    return flat, stats, [w for w in caught if issubclass(w.category, psg.errors.GradientAccuracyWarning)]


def reference_gradient(func, y0, t):
    """Float64 reference: CheckpointAdjoint at rtol=1e-12 (exact for a solve that accurate)."""
    return gradient(func, y0, t, psg.CheckpointAdjoint(), 1e-12, 1e-14)[0]


def relative_error(g, ref):
    return float(((g - ref).abs() / ref.abs()).max())
