"""Continuous adjoints (Backsolve, Interpolating, Quadrature): agreement with the exact
discrete gradient at tight tolerances, the backsolve accuracy warning, and where
backsolve fails while the others do not."""

import warnings

import pytest
import torch

import pysciml_grad as psg
from pysciml_grad.errors import GradientAccuracyWarning

from adjoint_cases import gradient, hard_problem, reference_gradient, relative_error, toy_errors
from problems import MLP, SpiralMLP

CONTINUOUS = {
    "backsolve": psg.BacksolveAdjoint(),
    "interpolating": psg.InterpolatingAdjoint(),
    "interpolating_ckpt": psg.InterpolatingAdjoint(checkpointing=True),
    "quadrature": psg.QuadratureAdjoint(),
}


def mlp_grads(sensealg, method="dopri5", options=None, rtol=1e-9, atol=1e-11, device="cpu", dtype=torch.float64):
    func = MLP(dim=2, hidden=16, seed=0, dtype=dtype).to(device)
    y0 = torch.randn(3, 2, dtype=dtype, generator=torch.Generator().manual_seed(0)).to(device).requires_grad_(True)
    t = torch.linspace(0, 1, 4, dtype=dtype, device=device)
    ys, stats = psg.odeint(func, y0, t, method=method, rtol=rtol, atol=atol, sensealg=sensealg,
                           options=dict(options or {}, return_stats=True))
    loss = (ys**2).sum() + ys[1].sum()
    grads = torch.autograd.grad(loss, [y0, *func.parameters()])
    return torch.cat([g.reshape(-1) for g in grads]), stats


@pytest.mark.parametrize("name", list(CONTINUOUS))
@pytest.mark.parametrize("method, options, tol", [
    ("dopri5", None, 1e-8),
    ("tsit5", None, 1e-8),
    ("bosh3", None, 1e-7),
    ("rk4", {"step_size": 0.01}, 1e-9),
    ("leapfrog", {"step_size": 0.002}, 1e-5),
])
def test_agrees_with_exact_discrete_gradient(name, method, options, tol):
    exact, _ = mlp_grads(psg.CheckpointAdjoint(), method, options)
    with warnings.catch_warnings():
        # Fixed steps are far less accurate than rtol=1e-9, so backsolve rightly warns there.
        warnings.simplefilter("ignore", GradientAccuracyWarning)
        got, stats = mlp_grads(CONTINUOUS[name], method, options)
    assert float((got - exact).abs().max() / exact.abs().max()) < tol
    assert stats.nfe_backward > 0


def test_checkpointed_interpolation_is_bitwise_the_same():
    for method, options in [("dopri5", None), ("bosh3", None), ("rk4", {"step_size": 0.01}), ("leapfrog", {"step_size": 0.002})]:
        plain, s_plain = mlp_grads(psg.InterpolatingAdjoint(), method, options, rtol=1e-7, atol=1e-9)
        ckpt, s_ckpt = mlp_grads(psg.InterpolatingAdjoint(checkpointing=True), method, options, rtol=1e-7, atol=1e-9)
        assert torch.equal(plain, ckpt), method
        if s_plain.n_steps > 16:
            assert s_ckpt.extra["interpolating_stored_states"] < s_plain.extra["interpolating_stored_states"] / 3
            assert s_ckpt.extra["interpolating_replayed_steps"] == s_plain.n_steps  # each segment rebuilt once


def test_adjoint_tolerances_and_method_are_used():
    exact, _ = mlp_grads(psg.CheckpointAdjoint(), rtol=1e-10, atol=1e-12)
    loose, s_loose = mlp_grads(psg.InterpolatingAdjoint(), rtol=1e-10, atol=1e-12)
    coarse, s_coarse = mlp_grads(psg.InterpolatingAdjoint(adjoint_rtol=1e-3, adjoint_atol=1e-5), rtol=1e-10, atol=1e-12)
    # The loose adjoint tolerance must change the backward solve's work (its accuracy on
    # this short, smooth problem stays at the reference's noise level, so compare work).
    assert s_coarse.nfe_backward < s_loose.nfe_backward
    assert relative_error(coarse, exact) < 1e-3 and relative_error(loose, exact) < 1e-7
    tsit, _ = mlp_grads(psg.BacksolveAdjoint(adjoint_method="tsit5"), rtol=1e-10, atol=1e-12)
    assert float((tsit - exact).abs().max() / exact.abs().max()) < 1e-8


def test_fixed_step_adjoint_method_needs_a_step_size():
    with pytest.raises(psg.errors.InvalidProblemError, match="step_size"):
        mlp_grads(psg.BacksolveAdjoint(adjoint_method="rk4"))


def test_backsolve_warns_on_van_der_pol_and_is_wrong():
    func, y0, t = hard_problem("vanderpol")
    ref = reference_gradient(func, y0, t)
    g, stats, caught = gradient(func, y0, t, psg.BacksolveAdjoint(), 1e-6)
    assert caught, "GradientAccuracyWarning expected"
    assert "reconstructed y" in str(caught[0].message)
    assert stats.extra["backsolve_reconstruction_error"] > 1e4
    assert relative_error(g, ref) > 0.1  # measured: ~1.4 (140 %)
    for sensealg in (psg.CheckpointAdjoint(), psg.InterpolatingAdjoint(), psg.QuadratureAdjoint()):
        g_ok, _, caught_ok = gradient(func, y0, t, sensealg, 1e-6)
        assert not caught_ok
        assert relative_error(g_ok, ref) < 1e-4


def test_backsolve_reverse_solve_diverges_with_a_clear_error():
    func, y0, t = hard_problem("vanderpol")
    with pytest.raises(psg.errors.StepSizeUnderflowError, match="reverse-time reconstruction"):
        gradient(func, y0, t, psg.BacksolveAdjoint(), 1e-3)


def test_backsolve_warns_on_contracting_flow():
    func, y0, t = hard_problem("contracting")
    ref = reference_gradient(func, y0, t)
    g, _, caught = gradient(func, y0, t, psg.BacksolveAdjoint(), 1e-3)
    assert caught
    g_ok, _, _ = gradient(func, y0, t, psg.InterpolatingAdjoint(), 1e-3)
    assert relative_error(g, ref) > 10 * relative_error(g_ok, ref)


def test_backsolve_does_not_warn_on_easy_problems():
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradientAccuracyWarning)
        for rtol in (1e-3, 1e-6, 1e-9):
            for a in (1.0, -1.0):
                for T in (1.0, 5.0):
                    toy_errors(psg.BacksolveAdjoint(), T, rtol, a=a)
            mlp_grads(psg.BacksolveAdjoint(), rtol=rtol, atol=1e-3 * rtol)


def test_decreasing_time_and_params_argument():
    k = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)
    for sensealg in CONTINUOUS.values():
        y0 = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
        ys = psg.odeint(lambda tt, y: -k * y, y0, t, rtol=1e-10, atol=1e-12, params=[k], sensealg=sensealg)
        g_k, g_y0 = torch.autograd.grad(ys[-1].sum(), [k, y0])
        expected_k = 2 * float(y0.detach().sum()) * float(torch.exp(2 * k.detach()))
        assert abs(float(g_k) - expected_k) < 1e-7 * abs(expected_k)
        assert torch.allclose(g_y0, torch.exp(2 * k.detach()).expand(2), rtol=1e-7)


def test_spiral_with_many_save_times():
    func = SpiralMLP()
    y0 = torch.tensor([[1.0, 0.0], [0.5, -1.0]], dtype=torch.float64)
    t = torch.linspace(0, 3, 13, dtype=torch.float64)

    def grads(sensealg):
        y = y0.clone().requires_grad_(True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GradientAccuracyWarning)
            ys = psg.odeint(func, y, t, rtol=1e-10, atol=1e-12, sensealg=sensealg)
            out = torch.autograd.grad((ys**2).sum(), [y, *func.parameters()])
        return torch.cat([g.reshape(-1) for g in out])

    exact = grads(psg.CheckpointAdjoint())
    for sensealg in CONTINUOUS.values():
        assert float((grads(sensealg) - exact).abs().max() / exact.abs().max()) < 1e-7


@pytest.mark.parametrize("name", list(CONTINUOUS))
def test_float32_on_device(name, device):
    got, _ = mlp_grads(CONTINUOUS[name], rtol=1e-5, atol=1e-6, device=device, dtype=torch.float32)
    exact, _ = mlp_grads(psg.CheckpointAdjoint(), rtol=1e-5, atol=1e-6, device=device, dtype=torch.float32)
    assert got.dtype == torch.float32 and got.device.type == device.type
    assert float((got - exact).abs().max() / exact.abs().max()) < 1e-3
