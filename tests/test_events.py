"""psg.odeint_event: terminal events located on the dense output, and their gradients
by the implicit function theorem, against closed forms and float64 finite differences."""

from __future__ import annotations

import math

import pytest
import torch

import pysciml_grad as psg
from pysciml_grad.errors import (
    MaxStepsExceededError,
    MissingStepSizeError,
    RHSOutputError,
    UnsupportedSensitivityError,
)

D = torch.float64
SENSEALGS = [psg.DirectAD(), psg.CheckpointAdjoint(), psg.InterpolatingAdjoint(), psg.BacksolveAdjoint(),
             psg.QuadratureAdjoint()]
IDS = [type(s).__name__ for s in SENSEALGS]


class Fall(torch.nn.Module):
    """y = (height, velocity), y'' = -g."""

    def __init__(self, g: float):
        super().__init__()
        self.g = torch.nn.Parameter(torch.tensor(g, dtype=D))

    def forward(self, t, y):
        return torch.stack([y[1], -self.g * torch.ones_like(y[0])])


@pytest.mark.parametrize("sensealg", SENSEALGS, ids=IDS)
def test_ball_drop_time_and_gradients_match_closed_form(sensealg):
    # t* = sqrt(2h/g); v* = -sqrt(2 h g).
    h0, g0 = 2.0, 9.81
    f = Fall(g0)
    h = torch.tensor(h0, dtype=D, requires_grad=True)
    y0 = torch.stack([h, torch.zeros((), dtype=D)])
    t_ev, ys = psg.odeint_event(f, y0, torch.tensor(0.0, dtype=D), event_fn=lambda t, y: y[0],
                                sensealg=sensealg, rtol=1e-10, atol=1e-12)
    assert ys.shape == (2, 2)
    assert abs(float(t_ev.detach()) - math.sqrt(2 * h0 / g0)) < 1e-12
    assert abs(float(ys.detach()[1, 0])) < 1e-10
    assert abs(float(ys.detach()[1, 1]) + math.sqrt(2 * h0 * g0)) < 1e-9
    dt_dh, dt_dg = torch.autograd.grad(t_ev, [h, f.g], retain_graph=True)
    assert abs(float(dt_dh) - 1 / math.sqrt(2 * h0 * g0)) < 1e-8
    assert abs(float(dt_dg) + 0.5 * math.sqrt(2 * h0) * g0**-1.5) < 1e-8
    dv_dh, dv_dg = torch.autograd.grad(ys[1, 1], [h, f.g])
    assert abs(float(dv_dh) + math.sqrt(g0 / (2 * h0))) < 1e-7
    assert abs(float(dv_dg) + math.sqrt(h0 / (2 * g0))) < 1e-7


class Threshold(torch.nn.Module):
    def __init__(self, c: float):
        super().__init__()
        self.c = torch.nn.Parameter(torch.tensor(c, dtype=D))

    def forward(self, t, y):
        return y[0] - self.c


@pytest.mark.parametrize("sensealg", SENSEALGS[:3], ids=IDS[:3])
def test_event_function_parameters_get_their_gradient(sensealg):
    # Event at height c: t* = sqrt(2 (h - c) / g), dt*/dc = -1 / sqrt(2 (h - c) g).
    h0, g0, c0 = 2.0, 9.81, 0.5
    ev = Threshold(c0)
    t_ev, _ = psg.odeint_event(Fall(g0), torch.tensor([h0, 0.0], dtype=D), 0.0, event_fn=ev,
                               sensealg=sensealg, rtol=1e-10, atol=1e-12)
    assert abs(float(t_ev.detach()) - math.sqrt(2 * (h0 - c0) / g0)) < 1e-12
    (dc,) = torch.autograd.grad(t_ev, [ev.c])
    assert abs(float(dc) + 1 / math.sqrt(2 * (h0 - c0) * g0)) < 1e-8


@pytest.mark.parametrize("sensealg", SENSEALGS, ids=IDS)
def test_decay_gradients_wrt_rate_y0_and_t0(sensealg):
    # y' = -k y from (t0, y0), event y = c: t* = t0 + ln(y0 / c) / k.
    k0, y00, c, t00 = 0.7, 3.0, 0.5, 0.25
    k = torch.tensor(k0, dtype=D, requires_grad=True)
    y0 = torch.tensor([y00], dtype=D, requires_grad=True)
    t0 = torch.tensor(t00, dtype=D, requires_grad=True)
    t_ev, ys = psg.odeint_event(lambda t, y: -k * y, y0, t0, event_fn=lambda t, y: y[0] - c,
                                sensealg=sensealg, params=[k], rtol=1e-10, atol=1e-12)
    L = math.log(y00 / c)
    assert abs(float(t_ev.detach()) - (t00 + L / k0)) < 1e-10
    dk, dy0, dt0 = torch.autograd.grad(t_ev, [k, y0, t0])
    assert abs(float(dk) + L / k0**2) < 1e-7
    assert abs(float(dy0) - 1 / (k0 * y00)) < 1e-7
    assert abs(float(dt0) - 1.0) < 1e-7


def test_reverse_time_finds_the_event_before_t0():
    # Backwards from t0 = 0, y' = -k y grows: y = c > y0 at t* = -ln(c / y0) / k.
    k, y00, c = 0.7, 1.0, 2.0
    k_t = torch.tensor(k, dtype=D, requires_grad=True)
    t_ev, ys = psg.odeint_event(lambda t, y: -k_t * y, torch.tensor([y00], dtype=D), torch.tensor(0.0, dtype=D),
                                event_fn=lambda t, y: y[0] - c, reverse_time=True, params=[k_t],
                                rtol=1e-10, atol=1e-12)
    assert abs(float(t_ev.detach()) + math.log(c / y00) / k) < 1e-10
    assert abs(float(ys.detach()[-1, 0]) - c) < 1e-9
    (dk,) = torch.autograd.grad(t_ev, [k_t])
    assert abs(float(dk) - math.log(c / y00) / k**2) < 1e-7


def test_vector_event_stops_at_the_first_component_to_cross():
    # Heights 1 and 2 under the same gravity: the first (lower) threshold is reached at sqrt(2 (h - 1.5) / g).
    h0, g0 = 2.0, 9.81
    ev = lambda t, y: torch.stack([y[0] - 1.5, y[0] - 0.5])
    t_ev, _ = psg.odeint_event(Fall(g0), torch.tensor([h0, 0.0], dtype=D), 0.0, event_fn=ev, rtol=1e-10, atol=1e-12)
    assert abs(float(t_ev.detach()) - math.sqrt(2 * (h0 - 1.5) / g0)) < 1e-12


def test_component_zero_at_t0_is_armed_later_bouncing_ball():
    # Thrown up from the ground: height 0 at t0 is not the event; landing at 2 v0 / g is.
    v0, g0 = 3.0, 9.81
    t_ev, ys = psg.odeint_event(Fall(g0), torch.tensor([0.0, v0], dtype=D), 0.0, event_fn=lambda t, y: y[0],
                                rtol=1e-10, atol=1e-12)
    assert abs(float(t_ev.detach()) - 2 * v0 / g0) < 1e-12
    assert abs(float(ys.detach()[-1, 1]) + v0) < 1e-9


def pendulum(theta):
    def f(t, y):
        return torch.stack([y[1], -theta[0] * torch.sin(y[0]) - theta[1] * y[1] + 0.3 * torch.cos(t)])
    return f


def event_loss(theta, sensealg, method="dopri5", options=None):
    y0 = torch.stack([theta[2], torch.zeros((), dtype=D)])
    t_ev, ys = psg.odeint_event(pendulum(theta), y0, 0.0, event_fn=lambda t, y: y[0] + 0.2 * torch.sin(t) - 0.1,
                                sensealg=sensealg, params=[theta], rtol=1e-11, atol=1e-12, method=method,
                                options=options)
    return t_ev**2 + (ys[-1] ** 2).sum() + ys[-1, 1] * t_ev


@pytest.mark.parametrize("sensealg", SENSEALGS, ids=IDS)
def test_loss_on_event_time_and_state_matches_finite_differences(sensealg):
    # Forced damped pendulum, a time-dependent event surface; central differences in float64.
    theta = torch.tensor([2.0, 0.1, 1.0], dtype=D, requires_grad=True)
    (grad,) = torch.autograd.grad(event_loss(theta, sensealg), [theta])
    eps = 1e-5
    fd = []
    for i in range(3):
        e = torch.zeros(3, dtype=D)
        e[i] = eps
        with torch.no_grad():
            fd.append(float(event_loss(theta + e, psg.DirectAD()) - event_loss(theta - e, psg.DirectAD())) / (2 * eps))
    fd = torch.tensor(fd, dtype=D)
    assert torch.allclose(grad, fd, rtol=1e-5, atol=1e-7), (grad, fd)


def test_fixed_step_rk4_event_converges_at_fourth_order():
    # Event of the pendulum with rk4 at step h vs dopri5 at 1e-12: error ratio ~ 2^4 per halving.
    theta = torch.tensor([2.0, 0.1, 1.0], dtype=D)
    y0 = torch.stack([theta[2], torch.zeros((), dtype=D)])
    ev = lambda t, y: y[0]
    ref, _ = psg.odeint_event(pendulum(theta), y0, 0.0, event_fn=ev, rtol=1e-12, atol=1e-13)
    errs = []
    for h in (0.1, 0.05, 0.025):
        t_ev, _ = psg.odeint_event(pendulum(theta), y0, 0.0, event_fn=ev, method="rk4", options={"step_size": h})
        errs.append(abs(float(t_ev - ref)))
    orders = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    print("rk4 event-time orders", orders)
    assert all(3.5 < p < 4.6 for p in orders), orders


def test_fixed_step_gradient_is_the_discrete_one_checkpoint_equals_direct():
    theta = torch.tensor([2.0, 0.1, 1.0], dtype=D, requires_grad=True)
    opts = {"step_size": 0.05}
    (g_ck,) = torch.autograd.grad(event_loss(theta, psg.CheckpointAdjoint(), "rk4", opts), [theta])
    (g_d,) = torch.autograd.grad(event_loss(theta, psg.DirectAD(), "rk4", opts), [theta])
    assert torch.allclose(g_ck, g_d, rtol=1e-10, atol=1e-12)


def test_bad_input_raises_specific_errors():
    f = Fall(9.81)
    y0 = torch.tensor([2.0, 0.0], dtype=D)
    with pytest.raises(MissingStepSizeError):
        psg.odeint_event(f, y0, 0.0, event_fn=lambda t, y: y[0], method="rk4")
    with pytest.raises(UnsupportedSensitivityError):
        psg.odeint_event(f, y0, 0.0, event_fn=lambda t, y: y[0], method="leapfrog", options={"step_size": 0.1})
    with pytest.raises(RHSOutputError):
        psg.odeint_event(f, y0, 0.0, event_fn=lambda t, y: 1.0)
    with pytest.raises(MaxStepsExceededError, match="did not change sign"):
        psg.odeint_event(f, y0, 0.0, event_fn=lambda t, y: y[1] ** 2 + 1.0, options={"max_num_steps": 50})


@pytest.mark.parametrize("method", ["implicit_adams", "rk4"])
def test_fixed_step_event_on_the_dense_output_with_its_gradient(method):
    # y' = -k y, event y = c: t* = ln(y0 / c) / k, dt*/dk = -ln(y0 / c) / k^2; h = 0.01.
    k = torch.tensor(0.7, dtype=D, requires_grad=True)
    t_ev, ys = psg.odeint_event(lambda t, y: -k * y, torch.tensor([3.0], dtype=D), 0.0,
                                event_fn=lambda t, y: y[0] - 0.5, method=method, options={"step_size": 0.01},
                                params=[k])
    L = math.log(6.0)
    assert abs(float(t_ev.detach()) - L / 0.7) < 1e-9
    assert abs(float(ys.detach()[-1, 0]) - 0.5) < 1e-12  # the state the root was found on
    (dk,) = torch.autograd.grad(t_ev, [k])
    assert abs(float(dk) + L / 0.49) < 1e-7


def test_structured_state_ball_drop():
    # The ball drop with y = {"x": height, "v": velocity}: same closed forms as above.
    h0, g0 = 2.0, 9.81
    g = torch.tensor(g0, dtype=D, requires_grad=True)
    h = torch.tensor([h0], dtype=D, requires_grad=True)
    y0 = {"x": h, "v": torch.zeros(1, dtype=D)}
    t_ev, ys = psg.odeint_event(lambda t, y: {"x": y["v"], "v": -g * torch.ones_like(y["x"])}, y0, 0.0,
                                event_fn=lambda t, y: y["x"][0], params=[g], rtol=1e-10, atol=1e-12)
    assert set(ys) == {"x", "v"} and ys["v"].shape == (2, 1)
    assert abs(float(t_ev.detach()) - math.sqrt(2 * h0 / g0)) < 1e-12
    dt_dh, dt_dg = torch.autograd.grad(t_ev, [h, g])
    assert abs(float(dt_dh) - 1 / math.sqrt(2 * h0 * g0)) < 1e-8
    assert abs(float(dt_dg) + 0.5 * math.sqrt(2 * h0) * g0**-1.5) < 1e-8


@pytest.mark.parametrize("sensealg", SENSEALGS, ids=IDS)
def test_event_fn_reading_a_graph_tensor_survives_a_second_backward(sensealg):
    # torchdiffeq 0.2.5's event test_adjoint: the level c = 2 s (s requiring grad, so c carries
    # a graph), then t*.backward(retain_graph=True) and y*.sum().backward(). The event
    # backward freed c's graph, and the second pass failed on freed saved tensors.
    # y' = -k y, y(0) = 3: t* = ln(3 / c) / k, dt*/ds = -1 / (k s).
    k0, s0 = 0.7, 0.25
    k = torch.tensor(k0, dtype=D, requires_grad=True)
    s = torch.tensor(s0, dtype=D, requires_grad=True)
    c = 2 * s
    y0 = torch.tensor([3.0], dtype=D)
    t_ev, ys = psg.odeint_event(lambda t, y: -k * y, y0, torch.tensor(0.0, dtype=D),
                                event_fn=lambda t, y: y[0] - c, sensealg=sensealg, params=[k],
                                rtol=1e-10, atol=1e-12)
    t_ev.backward(retain_graph=True)
    assert abs(float(s.grad) + 1 / (k0 * s0)) < 1e-6
    ys[-1].sum().backward()  # y* = c: ds picks up 2 more
    assert abs(float(s.grad) + 1 / (k0 * s0) - 2.0) < 1e-6
