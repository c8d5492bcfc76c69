"""Adams-Bashforth(-Moulton) methods: exact coefficients, measured orders, agreement with
torchdiffeq's implementation, and their gradients."""

from __future__ import annotations

import math
import warnings
from fractions import Fraction as F

import pytest
import torch

import pysciml_grad as psg
from pysciml_grad.backends.torch.adams import bashforth, moulton
from pysciml_grad.errors import InvalidProblemError, UnknownOptionError, UnsupportedSensitivityError

D = torch.float64


def test_coefficients_are_the_classical_tables():
    # Hairer, Norsett & Wanner I, Tables III.1.1 and III.1.2.
    assert bashforth(4) == (F(55, 24), F(-59, 24), F(37, 24), F(-9, 24))
    assert bashforth(5) == tuple(F(c, 720) for c in (1901, -2774, 2616, -1274, 251))
    assert moulton(4) == (F(9, 24), F(19, 24), F(-5, 24), F(1, 24))
    assert moulton(5) == tuple(F(c, 720) for c in (251, 646, -264, 106, -19))


@pytest.mark.parametrize("k", range(1, 12))
def test_coefficients_integrate_polynomials_exactly(k):
    # Order k: the rule is exact for p(s) = s^d, d < k, on [0, 1] (f sampled at the nodes).
    for d in range(k):
        exact = F(1, d + 1)
        assert sum(w * F(-j) ** d for j, w in enumerate(bashforth(k))) == exact
        nodes = [1] + [-j for j in range(k - 1)]
        assert sum(w * F(s) ** d for s, w in zip(nodes, moulton(k))) == exact


def forced(t, y):
    return torch.stack([y[1], -y[0]]) * (1 + 0.5 * torch.cos(t))


def global_errors(method, ns, options=None):
    y0 = torch.tensor([1.0, 0.0], dtype=D)
    ref = psg.odeint(forced, y0, torch.tensor([0.0, 2.0], dtype=D), rtol=1e-13, atol=1e-14)[-1]
    errs = []
    for n in ns:
        t = torch.linspace(0, 2, n + 1, dtype=D)
        errs.append(float((psg.odeint(forced, y0, t, method=method, options=options)[-1] - ref).abs().max()))
    return [math.log2(errs[i] / errs[i + 1]) for i in range(len(ns) - 1)]


def test_measured_orders():
    # explicit, max_order=5: RK4 start, one AB3 step (local h^4), then AB4: global order 4.
    # implicit (default max_order 12): RK4 start, AM4 then higher correctors: global order 5.
    p_ex = global_errors("explicit_adams", [100, 200, 400], {"max_order": 5})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p_im = global_errors("implicit_adams", [40, 80, 160])
    print("explicit_adams(max_order=5) orders", p_ex, "implicit_adams orders", p_im)
    assert all(3.7 < p < 4.4 for p in p_ex), p_ex
    assert all(4.6 < p < 5.6 for p in p_im), p_im


@pytest.mark.parametrize("method,max_order", [("explicit_adams", 12), ("explicit_adams", 5),
                                              ("implicit_adams", 12), ("implicit_adams", 6)])
def test_same_solution_as_torchdiffeq(method, max_order):
    torchdiffeq = pytest.importorskip("torchdiffeq")
    y0 = torch.tensor([1.0, 0.0], dtype=D)
    t = torch.linspace(0, 2, 801, dtype=D)
    opts = {"max_order": max_order}
    ours = psg.odeint(forced, y0, t, method=method, options=opts, sensealg=psg.DirectAD())
    theirs = torchdiffeq.odeint(forced, y0, t, method=method, options=opts)
    assert float((ours - theirs).abs().max()) < 1e-12


def loss(theta, sensealg, method, t):
    y0 = torch.stack([theta[0], torch.zeros((), dtype=D)])

    def f(tt, y):
        return torch.stack([y[1], -theta[1] * torch.sin(y[0])])

    # max_order=6: inside AB's stability region at this step (AB11 is not; neither is torchdiffeq's).
    ys = psg.odeint(f, y0, t, method=method, sensealg=sensealg, params=[theta], rtol=1e-10, atol=1e-12,
                    options={"max_order": 6})
    return (ys[:, 0] ** 2).sum() + ys[-1, 1]


@pytest.mark.parametrize("method", ["explicit_adams", "implicit_adams"])
def test_checkpoint_equals_direct_and_backsolve_converges(method):
    theta = torch.tensor([1.0, 2.0], dtype=D, requires_grad=True)
    t = torch.linspace(0, 2, 201, dtype=D, requires_grad=True)
    g_d = torch.autograd.grad(loss(theta, psg.DirectAD(), method, t), [theta, t])
    g_c = torch.autograd.grad(loss(theta, psg.CheckpointAdjoint(), method, t), [theta, t])
    for a, b in zip(g_d, g_c):
        assert torch.allclose(a, b, rtol=1e-11, atol=1e-12)
    (g_b,) = torch.autograd.grad(loss(theta, psg.BacksolveAdjoint(), method, t.detach()), [theta])
    # central differences of the (discrete) loss
    eps, fd = 1e-6, []
    for i in range(2):
        e = torch.zeros(2, dtype=D)
        e[i] = eps
        with torch.no_grad():
            fd.append(float(loss(theta + e, psg.DirectAD(), method, t.detach()) - loss(theta - e, psg.DirectAD(), method, t.detach())) / (2 * eps))
    assert torch.allclose(g_d[0], torch.tensor(fd, dtype=D), rtol=1e-6)
    assert torch.allclose(g_b, torch.tensor(fd, dtype=D), rtol=1e-5)


def test_bad_options_and_unsupported_sensealgs_raise():
    y0 = torch.tensor([1.0, 0.0], dtype=D, requires_grad=True)
    t = torch.linspace(0, 1, 11, dtype=D)
    with pytest.raises(UnknownOptionError, match="Adams"):
        psg.odeint(forced, y0, t, method="rk4", options={"max_order": 4})
    with pytest.raises(InvalidProblemError, match="max_order"):
        psg.odeint(forced, y0, t, method="explicit_adams", options={"max_order": 13})
    with pytest.raises(UnsupportedSensitivityError, match="multistep"):
        psg.odeint(forced, y0, t, method="implicit_adams", sensealg=psg.InterpolatingAdjoint())
