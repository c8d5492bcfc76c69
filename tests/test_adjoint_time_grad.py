"""dL/dt (save times and initial time) through the continuous adjoints, against closed
forms and against CheckpointAdjoint; t.requires_grad is no reason to refuse a solve."""

from __future__ import annotations

import math

import pytest
import torch

import pysciml_grad as psg

D = torch.float64
CONTINUOUS = [psg.BacksolveAdjoint(), psg.InterpolatingAdjoint(), psg.InterpolatingAdjoint(checkpointing=True),
              psg.QuadratureAdjoint()]
IDS = ["backsolve", "interpolating", "interpolating_ckpt", "quadrature"]


@pytest.mark.parametrize("sensealg", CONTINUOUS, ids=IDS)
def test_time_gradient_matches_closed_form(sensealg):
    # y' = cos(t) y: y(t) = y0 exp(sin t - sin t0). L = sum_i w_i y(t_i) gives
    # dL/dt_i = w_i cos(t_i) y_i (i >= 1) and dL/dt_0 = -cos(t_0) sum_{i>=1} w_i y_i.
    t = torch.tensor([0.3, 0.8, 1.7, 2.5], dtype=D, requires_grad=True)
    y0 = torch.tensor([1.5], dtype=D, requires_grad=True)
    w = torch.tensor([0.7, -1.1, 0.4, 2.0], dtype=D)
    ys = psg.odeint(lambda tt, y: torch.cos(tt) * y, y0, t, sensealg=sensealg, rtol=1e-10, atol=1e-12)
    (g_t,) = torch.autograd.grad((w * ys[:, 0]).sum(), [t])
    tv = t.detach()
    y_exact = 1.5 * torch.exp(torch.sin(tv) - math.sin(0.3))
    expected = w * torch.cos(tv) * y_exact
    expected[0] = -math.cos(0.3) * (w[1:] * y_exact[1:]).sum()
    assert torch.allclose(g_t, expected, rtol=1e-7, atol=1e-9), (g_t, expected)


@pytest.mark.parametrize("sensealg", CONTINUOUS, ids=IDS)
def test_time_gradient_agrees_with_checkpoint_on_a_nonlinear_system(sensealg):
    # torchdiffeq's TestCompareAdjointGradient system plus a time-dependent forcing.
    A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=D, requires_grad=True)
    f = lambda tt, y: (y**3) @ A + 0.2 * torch.sin(tt) * y
    y0 = torch.tensor([[1.0, 0.0]], dtype=D, requires_grad=True)
    t = torch.linspace(0.0, 3.0, 6, dtype=D, requires_grad=True)
    w = torch.rand(6, 1, 2, dtype=D, generator=torch.Generator().manual_seed(0))
    grads = []
    for sa in (psg.CheckpointAdjoint(), sensealg):
        ys = psg.odeint(f, y0, t, sensealg=sa, params=[A], rtol=1e-9, atol=1e-11)
        grads.append(torch.autograd.grad((ys * w).sum(), [t, y0, A]))
    for ref, got in zip(*grads):
        assert torch.allclose(ref, got, rtol=1e-5, atol=1e-6), (ref, got)


@pytest.mark.parametrize("sensealg", CONTINUOUS, ids=IDS)
def test_t_requiring_grad_is_not_refused_when_only_other_gradients_are_asked(sensealg):
    # dL/dy0 of y' = -k y at t_end: exp(-k (t1 - t0)).
    t = torch.tensor([0.0, 2.0], dtype=D, requires_grad=True)
    y0 = torch.tensor([1.0], dtype=D, requires_grad=True)
    ys = psg.odeint(lambda tt, y: -0.5 * y, y0, t, sensealg=sensealg, rtol=1e-10, atol=1e-12)
    (g,) = torch.autograd.grad(ys[-1].sum(), [y0])
    assert abs(float(g) - math.exp(-1.0)) < 1e-8


def test_time_gradient_counts_in_the_backward_nfe():
    t = torch.tensor([0.0, 1.0, 2.0], dtype=D, requires_grad=True)
    y0 = torch.tensor([1.0], dtype=D, requires_grad=True)
    counts = []
    for tt in (t, t.detach()):
        ys, stats = psg.odeint(lambda s, y: -y, y0, tt, sensealg=psg.InterpolatingAdjoint(),
                               options={"return_stats": True})
        ys.sum().backward()
        counts.append(stats.nfe_backward)
    assert counts[0] == counts[1] + 3  # one evaluation of func per save time
