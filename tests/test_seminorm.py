"""BacksolveAdjoint / InterpolatingAdjoint(seminorm=True) (Kidger, Chen & Lyons 2021): the
backward step control ignores the dL/dtheta block. Same gradient to tolerance, fewer
backward evaluations."""

from __future__ import annotations

import math

import pytest
import torch

import pysciml_grad as psg
from pysciml_grad.errors import InvalidProblemError

D = torch.float64


@pytest.mark.parametrize("cls", [psg.BacksolveAdjoint, psg.InterpolatingAdjoint])
def test_seminorm_gradient_matches_closed_form(cls):
    # y' = -k y, L = y(T): dL/dk = -T y0 exp(-k T), dL/dy0 = exp(-k T).
    k = torch.tensor(0.8, dtype=D, requires_grad=True)
    y0 = torch.tensor([2.0], dtype=D, requires_grad=True)
    ys = psg.odeint(lambda t, y: -k * y, y0, torch.tensor([0.0, 1.5], dtype=D), params=[k],
                    sensealg=cls(seminorm=True), rtol=1e-10, atol=1e-12)
    dk, dy0 = torch.autograd.grad(ys[-1].sum(), [k, y0])
    assert abs(float(dk) + 1.5 * 2.0 * math.exp(-1.2)) < 1e-8
    assert abs(float(dy0) - math.exp(-1.2)) < 1e-9


@pytest.mark.parametrize("cls", [psg.BacksolveAdjoint, psg.InterpolatingAdjoint])
def test_seminorm_saves_backward_evaluations_on_a_neural_ode(cls):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2)).double()
    y0 = torch.randn(16, 2, dtype=D)
    t = torch.linspace(0, 2, 5, dtype=D)
    out = {}
    for flag in (False, True):
        ys, stats = psg.odeint(lambda tt, y: net(y), y0, t, sensealg=cls(seminorm=flag), rtol=1e-6, atol=1e-8,
                               options={"return_stats": True})
        net.zero_grad()
        (ys**2).sum().backward()
        out[flag] = (stats.nfe_backward, torch.cat([p.grad.reshape(-1) for p in net.parameters()]))
    print(cls.__name__, "backward NFE", out[False][0], "-> seminorm", out[True][0])
    assert out[True][0] < out[False][0]
    g, g_s = out[False][1], out[True][1]
    assert float((g - g_s).norm() / g.norm()) < 1e-5


def test_seminorm_must_be_a_bool():
    with pytest.raises(InvalidProblemError, match="seminorm"):
        psg.odeint(lambda t, y: -y, torch.ones(1, dtype=D, requires_grad=True), torch.tensor([0.0, 1.0], dtype=D),
                   sensealg=psg.BacksolveAdjoint(seminorm="yes"))


def test_julia_translation_refuses_seminorm():
    from pysciml_grad.backends.julia import translate as tr
    from pysciml_grad.errors import UnsupportedSensitivityError

    with pytest.raises(UnsupportedSensitivityError, match="backend='torch'"):
        tr.translate_sensealg(psg.InterpolatingAdjoint(seminorm=True), python_rhs=True, device="cpu")
