"""pysciml_grad.torchdiffeq against the real torchdiffeq 0.2.5 (installed) and closed forms.

Fixed-grid methods use the same grid and the same formulas as torchdiffeq, so they must
agree to roundoff; adaptive ones to the tolerance. The last test runs one module of
torchdiffeq's own suite (../shared/peer-tests) through the shim the benchmark uses.
"""

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import pysciml_grad as psg
import pysciml_grad.torchdiffeq as ours

real = pytest.importorskip("torchdiffeq")
D = torch.float64
A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=D)


class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.A = torch.nn.Parameter(A.clone())

    def forward(self, t, y):
        return y @ self.A.T + 0.1 * torch.sin(t)


def _expm_solution(t, y0):
    return torch.stack([torch.linalg.matrix_exp(A * s) @ y0 for s in t])


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun2", "heun3", "rk4"])
@pytest.mark.parametrize("options", [{"step_size": 0.3}, {}, {"step_size": 0.3, "interp": "cubic"}])
def test_fixed_grid_methods_match_torchdiffeq_to_roundoff(method, options):
    f = Linear()
    y0 = torch.tensor([1.0, 0.5], dtype=D)
    t = torch.linspace(0.0, 2.0, 7, dtype=D)
    with torch.no_grad():
        a = ours.odeint(f, y0, t, method=method, options=dict(options))
        b = real.odeint(f, y0, t, method=method, options=dict(options))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_rk4_is_the_3_8_rule():
    f = Linear()
    y0 = torch.tensor([1.0, 0.5], dtype=D)
    t = torch.linspace(0.0, 2.0, 5, dtype=D)
    with torch.no_grad():
        a = ours.odeint(f, y0, t, method="rk4")
        b = psg.odeint(f, y0, t, method="rk38", sensealg=psg.DirectAD(), options={"step_size": 0.5})
        c = psg.odeint(f, y0, t, method="rk4", sensealg=psg.DirectAD(), options={"step_size": 0.5})
    torch.testing.assert_close(a, b, rtol=0, atol=1e-14)
    assert float((a - c).abs().max()) > 1e-8


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "adaptive_heun", "fehlberg2", "dopri8", "tsit5"])
def test_adaptive_methods_meet_tolerance_against_expm(method):
    y0 = torch.tensor([1.0, 0.5], dtype=D)
    t = torch.linspace(0.0, 3.0, 7, dtype=D)
    rtol = 1e-10 if method == "dopri8" else 1e-8
    ys = ours.odeint(lambda t, y: A @ y, y0, t, method=method, rtol=rtol, atol=rtol)
    err = float((ys - _expm_solution(t, y0)).abs().max())
    print(f"\n{method}: max error {err:.2e} at rtol=atol={rtol:g}")
    assert err < 3e-4  # torchdiffeq's own threshold for these problems (odeint_tests.py)


def test_one_point_t_and_tuple_states():
    y0 = torch.tensor([1.0, 2.0], dtype=D)
    out = ours.odeint(lambda t, y: -y, y0, torch.tensor([0.0], dtype=D))
    assert out.shape == (1, 2) and torch.equal(out[0], y0)
    a, b = ours.odeint(lambda t, s: (-s[0], s[0] - s[1]), (y0, torch.zeros(2, dtype=D)),
                       torch.tensor([0.0, 1.0], dtype=D), rtol=1e-10, atol=1e-12)
    e = math.exp(-1.0)
    torch.testing.assert_close(a[-1], y0 * e, rtol=1e-8, atol=0)
    torch.testing.assert_close(b[-1], y0 * e, rtol=1e-8, atol=0)  # s1' = s0 - s1 -> t e^-t


def test_adjoint_refuses_a_plain_function_like_torchdiffeq():
    with pytest.raises(ValueError, match="adjoint_params"):
        ours.odeint_adjoint(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="adjoint_options"):
        ours.odeint_adjoint(Linear(), torch.ones(2, dtype=D), torch.tensor([0.0, 1.0], dtype=D),
                            method="dopri5", adjoint_method="rk4", options={"first_step": 0.1})


def test_unknown_option_is_warned_and_ignored():
    with pytest.warns(UserWarning, match="Unexpected arguments"):
        ys = ours.odeint(lambda t, y: -y, torch.ones(2, dtype=D), torch.tensor([0.0, 1.0], dtype=D),
                         options={"not_an_option": 1})
    assert abs(float(ys[-1, 0]) - math.exp(-1)) < 1e-6
    with pytest.raises(psg.errors.UnknownOptionError):  # the core stays strict
        psg.odeint(lambda t, y: -y, torch.ones(2, dtype=D), torch.tensor([0.0, 1.0], dtype=D),
                   options={"not_an_option": 1})


def test_adjoint_gradients_match_torchdiffeq_adjoint():
    torch.manual_seed(0)
    y0 = torch.tensor([1.0, 0.5], dtype=D, requires_grad=True)
    t = torch.linspace(0.0, 2.0, 5, dtype=D, requires_grad=True)
    w = torch.rand(5, 2, dtype=D)
    grads = []
    for lib in (ours, real):
        f = Linear()
        ys = lib.odeint_adjoint(f, y0, t, rtol=1e-10, atol=1e-12)
        grads.append(torch.autograd.grad((ys * w).sum(), (y0, t, f.A)))
    for g_ours, g_real in zip(*grads):
        torch.testing.assert_close(g_ours, g_real, rtol=1e-6, atol=1e-8)


class TimeOnly(torch.nn.Module):
    """f = -0.1 exp(-0.1 t): no dependence on y and no parameters (torchdiffeq master's ExpODE)."""

    def forward(self, t, y):
        return -0.1 * torch.exp(-0.1 * t) * torch.ones_like(y)


def test_adjoint_of_a_time_only_rhs_gives_the_identity_y0_gradient():
    # y(t_i) = y0 + integral of g, so dL/dy0 = sum_i dL/dy(t_i) exactly. Without t_grad the
    # augmented dynamics' func_eval has no grad_fn; autograd.grad used to raise on it.
    t = torch.linspace(1.0, 8.0, 10, dtype=D)
    y0 = torch.tensor([math.exp(-0.1)], dtype=D, requires_grad=True)
    ys = ours.odeint_adjoint(TimeOnly(), y0, t, rtol=1e-9, atol=1e-12)
    grad_ys = torch.rand_like(ys)
    ys.backward(grad_ys)
    assert torch.allclose(y0.grad, grad_ys.sum(0), rtol=0, atol=1e-12)
    assert torch.allclose(ys.detach()[:, 0], torch.exp(-0.1 * t), rtol=1e-7, atol=0)


def test_env_var_upgrades_odeint_to_checkpoint_with_the_same_gradient(monkeypatch):
    f = Linear()
    y0 = torch.tensor([1.0, 0.5], dtype=D, requires_grad=True)
    t = torch.linspace(0.0, 2.0, 5, dtype=D)
    direct = torch.autograd.grad(ours.odeint(f, y0, t).sum(), (y0, f.A))
    monkeypatch.setenv(ours.SENSEALG_ENV, "checkpoint")
    ys = ours.odeint(f, y0, t)
    assert "AdjointFunction" in type(ys.grad_fn).__name__ or "Backward" in type(ys.grad_fn).__name__
    ckpt = torch.autograd.grad(ys.sum(), (y0, f.A))
    for a, b in zip(direct, ckpt):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    monkeypatch.setenv(ours.SENSEALG_ENV, "nonsense")
    with pytest.raises(psg.errors.InvalidProblemError, match="PYSCIML_GRAD_SENSEALG"):
        ours.odeint(f, y0, t)


@pytest.mark.parametrize("method", ["rk4", "euler", "explicit_adams", "implicit_adams"])
def test_perturb_keeps_grid_points_out_of_func(method):
    ts = []

    def f(t, x):
        ts.append(float(t))
        return -x

    x0 = torch.tensor([1.0, 2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours.odeint(f, x0, torch.tensor([0.0, 1.0]), method=method, options=dict(step_size=0.5, perturb=True))
    assert ts and not {0.0, 0.5, 1.0} & set(ts)
    ts.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours.odeint(f, x0, torch.tensor([0.0, 1.0]), method=method, options=dict(step_size=0.5))
    assert {0.0, 0.5} <= set(ts)


def test_jump_t_and_min_step():
    class Jump:
        nfe = 0

        def __call__(self, t, x):
            self.nfe += 1
            return -0.5 * x if t < 0.5 else x**2

    x0 = torch.tensor([1.0, 2.0], dtype=D)
    t = torch.tensor([0.0, 1.0], dtype=D)
    plain, jump = Jump(), Jump()
    ours.odeint(plain, x0, t, atol=1e-6)
    ys = ours.odeint(jump, x0, t, rtol=1e-6, atol=1e-6, options=dict(jump_t=torch.tensor([0.5])))
    # closed form: x(0.5) = x0 e^-0.25, then x' = x^2 -> x(1) = x(0.5) / (1 - 0.5 x(0.5))
    xh = x0 * math.exp(-0.25)
    torch.testing.assert_close(ys[-1], xh / (1 - 0.5 * xh), rtol=1e-5, atol=0)
    assert jump.nfe < plain.nfe
    # min_step is a floor (torchdiffeq): at most 4 accepted steps of >= 0.25 on [0, 1]
    free, floored = Jump(), Jump()
    ours.odeint(free, x0, t, rtol=1e-10, atol=1e-10)
    ours.odeint(floored, x0, t, rtol=1e-10, atol=1e-10, options={"min_step": 0.25})
    print(f"\nNFE rtol=1e-10: {free.nfe} free, {floored.nfe} with min_step=0.25")
    assert floored.nfe < free.nfe and floored.nfe <= 2 + 6 * (4 + 3)  # 4 accepted, a few rejected


def test_scipy_solver_and_dense_output():
    y0 = torch.tensor([1.0, 0.5], dtype=D)
    t = torch.linspace(0.0, 3.0, 7, dtype=D)
    for solver in ("RK45", "DOP853", "LSODA"):
        ys = ours.odeint(lambda t, y: A @ y, y0, t, method="scipy_solver", rtol=1e-10, atol=1e-12,
                         options={"solver": solver})
        assert float((ys - _expm_solution(t, y0)).abs().max()) < 1e-6
    sol = ours.odeint_dense(lambda t, y: A @ y, y0, torch.tensor(0.0, dtype=D), torch.tensor(3.0, dtype=D),
                            rtol=1e-10, atol=1e-12)
    tt = torch.linspace(0.0, 3.0, 31, dtype=D)
    assert float((sol(tt) - _expm_solution(tt, y0)).abs().max()) < 1e-7


PEER = Path(__file__).resolve().parents[2] / "shared" / "peer-tests" / "torchdiffeq-0.2.5"


@pytest.mark.skipif(not PEER.is_dir(), reason="torchdiffeq's test suite is not at ../shared/peer-tests")
def test_torchdiffeq_api_tests_module_passes(tmp_path):
    """torchdiffeq's api_tests.py (tuple states, 15 subtests) through the benchmark's shim."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "torchdiffeq_suite.py"), "--modules",
                          "api_tests", "--quiet", "--no-save"], capture_output=True, text=True, timeout=600)
    print(out.stdout)
    assert "total: 15 of 15 subtests pass" in out.stdout
