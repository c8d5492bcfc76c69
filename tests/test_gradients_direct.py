"""DirectAD gradients against float64 central finite differences (relative 1e-6)."""

import pytest
import torch

import pysciml_grad as psg

from problems import MLP


def central_fd(loss_of, x, direction, eps=1e-6):
    with torch.no_grad():
        return (loss_of(x + eps * direction) - loss_of(x - eps * direction)) / (2 * eps)


def flat_params(module):
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def set_flat(module, flat):
    i = 0
    for p in module.parameters():
        p.data.copy_(flat[i : i + p.numel()].view_as(p))
        i += p.numel()


@pytest.mark.parametrize("method, options", [("dopri5", None), ("tsit5", None), ("bosh3", None), ("rk4", {"step_size": 0.05}), ("leapfrog", {"step_size": 0.05})])
def test_directad_matches_finite_differences(method, options):
    torch.manual_seed(1)
    func = MLP(dim=2, hidden=16)
    y0 = torch.randn(4, 2, dtype=torch.float64)
    t = torch.linspace(0.0, 1.0, 4, dtype=torch.float64)

    def loss_fn(y0_):
        ys = psg.odeint(func, y0_, t, method=method, rtol=1e-8, atol=1e-10, options=options, sensealg=psg.DirectAD())
        return (ys**2).sum() + ys[1].sum()

    y0r = y0.clone().requires_grad_(True)
    loss_fn(y0r).backward()
    grad_params = torch.cat([p.grad.reshape(-1) for p in func.parameters()])
    theta = flat_params(func)

    def loss_of_params(flat):
        set_flat(func, flat)
        try:
            return loss_fn(y0)
        finally:
            set_flat(func, theta)

    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        d = torch.randn(theta.shape, generator=g, dtype=torch.float64)
        fd = central_fd(loss_of_params, theta, d)
        ad = grad_params @ d
        assert abs(ad - fd) <= 1e-6 * abs(fd), (method, float(ad), float(fd))
        dy = torch.randn(y0.shape, generator=g, dtype=torch.float64)
        fd = central_fd(loss_fn, y0, dy)
        ad = (y0r.grad * dy).sum()
        assert abs(ad - fd) <= 1e-6 * abs(fd), (method, float(ad), float(fd))


def test_directad_gradient_wrt_params_argument_and_time():
    """params= reaches closed-over tensors; t.requires_grad gives dL/dt (vs FD)."""
    a = torch.tensor(-0.7, dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([1.3], dtype=torch.float64)
    t = torch.tensor([0.0, 0.6, 1.5], dtype=torch.float64, requires_grad=True)

    def loss_fn(a_, t_):
        ys = psg.odeint(lambda s, y: a_ * y + torch.sin(s), y0, t_, rtol=1e-10, atol=1e-12, params=[a_], sensealg=psg.DirectAD())
        return (ys[1:] ** 2).sum()

    loss_fn(a, t).backward()
    fd_a = central_fd(lambda x: loss_fn(x, t.detach()), a.detach(), torch.tensor(1.0, dtype=torch.float64))
    assert abs(a.grad - fd_a) <= 1e-6 * abs(fd_a)
    for i in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[i] = 1.0
        fd_t = central_fd(lambda x: loss_fn(a.detach(), x), t.detach(), e, eps=1e-5)
        assert abs(t.grad[i] - fd_t) <= 1e-6 * max(abs(fd_t), 1e-3), (i, float(t.grad[i]), float(fd_t))


def test_directad_through_controller_backpropagates_through_step_size_controller():
    """The naive method's graph includes h_n(y): its gradient matches FD of the full
    adaptive map (step-size search included)."""
    a = torch.tensor(-1.3, dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([1.0], dtype=torch.float64)
    t = torch.tensor([0.0, 3.0], dtype=torch.float64)

    def loss_fn(a_):
        return psg.odeint(lambda s, y: a_ * y * (1 + y**2), y0, t, rtol=1e-3, atol=1e-6, params=[a_],
                          sensealg=psg.DirectAD(through_controller=True))[-1].sum()

    loss_fn(a).backward()
    fd = central_fd(loss_fn, a.detach(), torch.tensor(1.0, dtype=torch.float64), eps=1e-7)
    assert abs(a.grad - fd) <= 1e-5 * abs(fd)


def test_directad_gradient_finite_for_zero_initial_state():
    """||y0|| = 0 in the initial-step heuristic must not give NaN gradients."""
    a = torch.tensor(-0.5, dtype=torch.float64, requires_grad=True)
    y0 = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    ys = psg.odeint(lambda t, y: a * y + 1.0, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), params=[a], sensealg=psg.DirectAD())
    ys[-1].sum().backward()
    # y(1) = (e^a - 1)/a per component: dy/da = (a e^a - e^a + 1)/a^2
    e = torch.exp(a.detach())
    assert torch.isfinite(y0.grad).all()
    assert torch.allclose(a.grad, 2 * (a.detach() * e - e + 1) / a.detach() ** 2, rtol=1e-6)


@pytest.mark.parametrize("method, options", [
    ("rk4", {"step_size": 0.1}), ("dopri5", {}), ("explicit_adams", {"step_size": 0.1}),
    ("implicit_adams", {"step_size": 0.1}), ("leapfrog", {"step_size": 0.1}),
])
@pytest.mark.parametrize("sensealg", [psg.DirectAD(), psg.DirectAD(through_controller=True)],
                         ids=["DirectAD", "through_controller"])
def test_scalar_float32_state_stays_float32_when_t_needs_grad(method, options, sensealg):
    # With dL/dt wanted, step sizes are float64 0-d tensors; 0-d with 0-d promotes to the
    # wider dtype, so a 0-d float32 state came back float64 (and odeint_event's y* then sat
    # off the event surface: torchdiffeq's float32 sine explicit_adams event test).
    y0 = torch.tensor(1.0, dtype=torch.float32, requires_grad=True)
    t = torch.linspace(0, 1, 5, dtype=torch.float64, requires_grad=True)
    ys = psg.odeint(lambda t, y: -y * t, y0, t, method=method, options=options, sensealg=sensealg)
    assert ys.dtype == torch.float32
    ys.sum().backward()
    assert y0.grad.dtype == torch.float32 and t.grad.dtype == torch.float64
    exact = torch.exp(-t.detach() ** 2 / 2)
    assert torch.allclose(ys.detach().double(), exact, atol=1e-2)  # leapfrog with h = 0.1: 4e-3


def test_event_state_of_a_scalar_float32_state_is_on_the_event_surface():
    y0 = torch.tensor(3.0, dtype=torch.float32)
    t0 = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    for method in ("rk4", "explicit_adams"):
        t_ev, ys = psg.odeint_event(lambda t, y: -0.7 * y, y0, t0, event_fn=lambda t, y: y - 0.5,
                                    method=method, options={"step_size": 0.01})
        assert ys.dtype == torch.float32
        assert abs(float(ys[-1]) - 0.5) < 1e-5
