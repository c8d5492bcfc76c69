"""Test problems with reference solutions (analytic, or SciPy DOP853 at rtol=1e-12)."""

import numpy as np
import torch
from scipy.integrate import solve_ivp


def scipy_reference(f_np, y0, t, rtol=1e-12, atol=1e-14):
    sol = solve_ivp(f_np, (t[0], t[-1]), y0, method="DOP853", t_eval=t, rtol=rtol, atol=atol)
    assert sol.success
    return sol.y.T


def van_der_pol(mu=1.0):
    def f(t, y):
        return torch.stack([y[..., 1], mu * (1 - y[..., 0] ** 2) * y[..., 1] - y[..., 0]], dim=-1)

    def f_np(t, y):
        return [y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]]

    return f, f_np, [2.0, 0.0]


def lotka_volterra(a=1.5, b=1.0, c=3.0, d=1.0):
    def f(t, y):
        return torch.stack([a * y[..., 0] - b * y[..., 0] * y[..., 1], -c * y[..., 1] + d * y[..., 0] * y[..., 1]], dim=-1)

    def f_np(t, y):
        return [a * y[0] - b * y[0] * y[1], -c * y[1] + d * y[0] * y[1]]

    return f, f_np, [1.0, 1.0]


class SpiralMLP(torch.nn.Module):
    """2-D spiral: linear damped rotation plus a small tanh MLP correction."""

    def __init__(self, hidden=16, seed=0, dtype=torch.float64):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A = torch.nn.Parameter(torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=dtype))
        self.W1 = torch.nn.Parameter(0.5 * torch.randn(2, hidden, generator=g, dtype=dtype))
        self.b1 = torch.nn.Parameter(0.1 * torch.randn(hidden, generator=g, dtype=dtype))
        self.W2 = torch.nn.Parameter(0.5 * torch.randn(hidden, 2, generator=g, dtype=dtype))

    def forward(self, t, y):
        return y @ self.A.T + torch.tanh(y @ self.W1 + self.b1) @ self.W2

    def numpy_rhs(self):
        A, W1, b1, W2 = (p.detach().double().numpy() for p in (self.A, self.W1, self.b1, self.W2))
        return lambda t, y: A @ y + np.tanh(y @ W1 + b1) @ W2


class MLP(torch.nn.Module):
    def __init__(self, dim=2, hidden=32, seed=0, dtype=torch.float64):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, dim)
        ).to(dtype)

    def forward(self, t, y):
        return self.net(y)


def stiff_gradient_problem():
    """A mildly stiff linear-plus-nonlinear 2-state problem (eigenvalues near -2 and -30) for
    the implicit methods' gradient tests: (f, y0, inputs), every input requiring grad, c
    read only through func's closure. float64."""
    D = torch.float64
    W = torch.tensor([[-2.0, 1.0], [0.5, -30.0]], dtype=D, requires_grad=True)
    b = torch.tensor([0.3, -0.2], dtype=D, requires_grad=True)
    c = torch.tensor(0.7, dtype=D, requires_grad=True)

    def f(t, y):
        return W @ y + torch.sin(y) * b + c * torch.cos(t) * torch.tensor([1.0, 0.0], dtype=D)

    y0 = torch.tensor([1.0, 0.5], dtype=D, requires_grad=True)
    return f, y0, [y0, W, b, c]


def check_stiff_gradient_by_central_differences(loss, inputs, grads, eps=1e-6, rtol=1e-6):
    """Float64 central differences of ``loss()`` (no graph) for y0[1], W[1, 1] and the closure's
    c of :func:`stiff_gradient_problem`, against ``grads`` (the gradients of the same inputs)."""
    for k, index in ((0, (1,)), (1, (1, 1)), (3, ())):
        tensor, g = inputs[k], grads[k]
        with torch.no_grad():
            tensor[index] += eps
            up = loss()
            tensor[index] -= 2 * eps
            down = loss()
            tensor[index] += eps
        fd = float((up - down) / (2 * eps))
        assert abs(float(g[index]) - fd) <= rtol * max(1.0, abs(fd)), (index, float(g[index]), fd)
