"""Decreasing save times on the Julia engine (issue 9 bug 5), without Julia.

SciMLSensitivity's continuous adjoints and ReverseDiffAdjoint return their states at
``sort(saveat)`` (src/concrete_solve.jl, UPSTREAM.md), i.e. in reversed order for a
decreasing span. The Julia engine therefore hands a decreasing ``t`` over as the
increasing s = -t with du/ds = -f(u, -s). These tests check the translation (the plan
Julia receives) and the Python half of the change of variable against closed forms.
"""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import pysciml_grad as psg
from pysciml_grad.backends.julia import translate as tr
from pysciml_grad.backends.julia.callbacks import TorchRHSCallbacks, time_reversed
from pysciml_grad.problem import make_problem

F64 = torch.float64


def plan_for(t, method="tsit5", options=None, func=None, sensealg=None):
    func = func or (lambda t, y: -y)
    prob = make_problem(func, torch.ones(2, dtype=F64), torch.tensor(t, dtype=F64), method=method, rtol=1e-7,
                        atol=1e-9, options=options, params=None, sensealg=sensealg or psg.GaussAdjoint(), backend="julia")
    return tr.make_plan(prob, need_grad=True)


def test_increasing_times_are_handed_over_unchanged():
    plan = plan_for([0.0, 0.5, 1.0])
    assert plan.save_times == (0.0, 0.5, 1.0) and not plan.time_reversed


@pytest.mark.parametrize("sensealg", [psg.GaussAdjoint(), psg.InterpolatingAdjoint(checkpointing=True),
                                      psg.BacksolveAdjoint(), psg.QuadratureAdjoint()])
def test_decreasing_times_become_the_increasing_negated_times(sensealg):
    t = [2.0, 1.5, 0.25, -1.0]
    plan = plan_for(t, sensealg=sensealg)
    assert plan.time_reversed
    assert plan.save_times == (-2.0, -1.5, -0.25, 1.0)
    # sort(saveat) is then the identity: the adjoints' order is the requested order.
    assert list(plan.save_times) == sorted(plan.save_times)


def test_fixed_steps_on_a_decreasing_grid_step_on_the_negated_grid():
    plan = plan_for([1.0, 0.75, 0.25, 0.0], method="euler")
    k = plan.solve_options.kwargs
    assert plan.solve_options.grid and k["adaptive"] is False and k["dt"] == 1.0
    assert plan.save_times == (-1.0, -0.75, -0.25, -0.0)
    plan = plan_for([1.0, 0.0], method="rk4", options={"step_size": 0.3})
    assert plan.solve_options.kwargs["dt"] == 0.25  # ceil(1 / 0.3) = 4 steps, as forwards


def test_reversed_field_reproduces_the_closed_form_backwards():
    # dy/dt = cos(t) y has y(t) = y(t0) exp(sin t - sin t0). The time argument matters
    # here, so a sign error in -s would show.
    t0, t_end = 2.0, -0.5
    ts = np.linspace(t0, t_end, 6)
    g = time_reversed(lambda t, y: torch.cos(t) * y)
    sol = solve_ivp(lambda s, v: g(torch.tensor(s, dtype=F64), torch.tensor(v, dtype=F64)).numpy(),
                    (-t0, -t_end), [1.3], t_eval=-ts, rtol=1e-12, atol=1e-14, method="DOP853")
    exact = 1.3 * np.exp(np.sin(ts) - math.sin(t0))
    np.testing.assert_allclose(sol.y[0], exact, rtol=1e-9)


def test_vjp_of_the_reversed_field_is_minus_the_vjp_at_minus_s():
    # What Julia's adjoint asks the callbacks for: v^T dg/du and v^T dg/dtheta with
    # g(s, u) = -f(-s, u). Exact identity: both equal -(v^T df/du, v^T df/dtheta) at t = -s.
    torch.manual_seed(0)
    W = torch.randn(3, 3, dtype=F64, requires_grad=True)
    b = torch.randn(3, dtype=F64, requires_grad=True)

    def f(t, y):
        return torch.tanh(y @ W.T + b) * torch.sin(3 * t)

    s = 0.7
    u = np.asfortranarray(np.random.default_rng(1).normal(size=3))
    v = np.asfortranarray(np.random.default_rng(2).normal(size=3))

    def pullback(func, time):
        cb = TorchRHSCallbacks(func, [W, b], (3,), F64, torch.device("cpu"))
        vu, vp = np.zeros(3, order="F"), np.zeros(12, order="F")
        cb.vjp(vu, vp, u, time, v)
        return vu, vp

    vu_g, vp_g = pullback(time_reversed(f), s)
    vu_f, vp_f = pullback(f, -s)
    assert np.abs(vu_f).max() > 1e-3 and np.abs(vp_f).max() > 1e-3  # not trivially zero
    np.testing.assert_allclose(vu_g, -vu_f, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(vp_g, -vp_f, rtol=1e-14, atol=1e-15)
