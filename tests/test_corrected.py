"""Tests for pysciml_grad.corrected (Xu, Chen & Li, arXiv 2306.02192).

The oracle for g(t) = dL/dtheta(t) is independent of the code under test: a DOP853
forward solve (rtol = atol = 1e-12, dense output), the continuous adjoint
dp/dt = -(df/dx)^T p solved backwards the same way, and g = (df/dtheta)^T p by autograd.
Run with ``-s`` to see the error tables.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import pysciml_grad.corrected as corrected
from pysciml_grad.corrected import TimeVaryingODE, correct_gradient, gradient_density, parameter_times
from pysciml_grad.errors import InvalidProblemError, InvalidStateError, UnknownMethodError

F64 = torch.float64
T_FINAL = 1.0
STEP_COUNTS = (20, 40, 80, 160)
SCHEMES = [("leapfrog", None), ("erk2", 0.5), ("erk2", 2.0 / 3.0), ("erk2", 1.0)]
# Schemes whose raw autodiff density is predicted (module docstring) not to converge.
OSCILLATING = {("leapfrog", None), ("erk2", 0.5), ("erk2", 2.0 / 3.0)}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny tensors: extra threads only add contention.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --------------------------------------------------------------------------- problems


class Problem:
    """dx/dt = f(x, theta(t)), L = loss(x(T)); f acts on x of shape (..., dim)."""

    def __init__(self, name, rhs, theta_of_t, x0, loss):
        self.name, self.rhs, self.theta_of_t, self.x0, self.loss = name, rhs, theta_of_t, x0, loss

    def theta_at(self, times):
        return torch.stack([self.theta_of_t(float(t)) for t in times])


def scalar_problem():
    def rhs(x, theta):
        return theta * torch.tanh(x) - 0.5 * x + 0.3 * torch.sin(2.0 * x)

    def theta_of_t(t):
        return torch.tensor(1.0 + 0.5 * math.sin(2.0 * math.pi * t) + 0.3 * t, dtype=F64)

    return Problem("scalar", rhs, theta_of_t, torch.tensor([0.5], dtype=F64),
                   lambda x: 0.5 * ((x - 2.0) ** 2).sum())


MLP_STATE, MLP_HIDDEN = 2, 8
MLP_SIZES = (MLP_HIDDEN * MLP_STATE, MLP_HIDDEN, MLP_STATE * MLP_HIDDEN, MLP_STATE)


def mlp_rhs(x, theta):
    """f(x, theta) = W2 tanh(W1 x + b1) + b2, every weight in the time-varying theta."""
    w1, b1, w2, b2 = torch.split(theta, MLP_SIZES)
    w1 = w1.reshape(MLP_HIDDEN, MLP_STATE)
    w2 = w2.reshape(MLP_STATE, MLP_HIDDEN)
    return torch.tanh(x @ w1.T + b1) @ w2.T + b2


def mlp_problem():
    gen = torch.Generator().manual_seed(0)
    n_theta = sum(MLP_SIZES)
    base = 0.5 * torch.randn(n_theta, generator=gen, dtype=F64)
    wave = 0.3 * torch.randn(n_theta, generator=gen, dtype=F64)
    drift = 0.2 * torch.randn(n_theta, generator=gen, dtype=F64)
    target = torch.tensor([1.0, 0.5], dtype=F64)

    def theta_of_t(t):
        return base + wave * math.sin(2.0 * math.pi * t) + drift * math.cos(3.0 * t)

    return Problem("mlp", mlp_rhs, theta_of_t, torch.tensor([0.3, -0.7], dtype=F64),
                   lambda x: 0.5 * ((x - target) ** 2).sum())


# ----------------------------------------------------------------------------- oracle


def continuous_gradient(problem: Problem):
    """t -> g(t), from accurate forward and continuous adjoint solves (no code under test)."""
    def forward_rhs(t, x):
        with torch.no_grad():
            return problem.rhs(torch.from_numpy(x), problem.theta_of_t(t)).numpy()

    fwd = solve_ivp(forward_rhs, (0.0, T_FINAL), problem.x0.numpy(), method="DOP853",
                    rtol=1e-12, atol=1e-12, dense_output=True)
    assert fwd.success
    x_final = torch.from_numpy(fwd.y[:, -1]).requires_grad_(True)
    p_final = torch.autograd.grad(problem.loss(x_final), x_final)[0].numpy()

    def adjoint_rhs(t, p):
        x = torch.from_numpy(fwd.sol(t))
        _, vjp = torch.func.vjp(lambda xx: problem.rhs(xx, problem.theta_of_t(t)), x)
        return -vjp(torch.from_numpy(p))[0].numpy()

    adj = solve_ivp(adjoint_rhs, (T_FINAL, 0.0), p_final, method="DOP853",
                    rtol=1e-12, atol=1e-12, dense_output=True)
    assert adj.success

    def g(t):
        x = torch.from_numpy(fwd.sol(t))
        p = torch.from_numpy(adj.sol(t))
        _, vjp = torch.func.vjp(lambda th: problem.rhs(x, th), problem.theta_of_t(t))
        return vjp(p)[0]

    return g


_ORACLES = {}


def oracle_for(problem_factory):
    if problem_factory not in _ORACLES:
        problem = problem_factory()
        _ORACLES[problem_factory] = (problem, continuous_gradient(problem))
    return _ORACLES[problem_factory]


def autodiff_gradient(problem, scheme, alpha, n_steps, use_correction):
    times = parameter_times(scheme, T_FINAL, n_steps, alpha, dtype=F64)
    block = TimeVaryingODE(problem.rhs, T_FINAL, n_steps, scheme, alpha,
                           theta_init=problem.theta_at(times), corrected=use_correction)
    problem.loss(block(problem.x0)).backward()
    return times, block.theta.grad.detach().clone()


# --------------------------------------------------------------------- convergence


@pytest.mark.parametrize("problem_factory", [scalar_problem, mlp_problem], ids=["scalar", "mlp"])
@pytest.mark.parametrize("scheme,alpha", SCHEMES, ids=["leapfrog", "erk2-1/2", "erk2-2/3", "erk2-1"])
def test_corrected_density_converges_at_every_parameter_time(problem_factory, scheme, alpha):
    problem, g = oracle_for(problem_factory)
    rows = []
    for n_steps in STEP_COUNTS:
        h = T_FINAL / n_steps
        times, raw = autodiff_gradient(problem, scheme, alpha, n_steps, use_correction=False)
        exact = torch.stack([g(float(t)) for t in times])
        raw_error = (gradient_density(raw, scheme, h) - exact).abs().max().item()
        fixed = correct_gradient(raw, scheme, h, alpha)
        fixed_error = (gradient_density(fixed, scheme, h) - exact).abs().max().item()
        rows.append((n_steps, exact.abs().max().item(), raw_error, fixed_error))

    label = f"{problem.name} {scheme}" + (f" alpha={alpha:.4g}" if alpha is not None else "")
    print(f"\n{label}: max over all parameter times of |density - g|")
    print("   N    max|g|      raw    corrected  ratio")
    for i, (n_steps, g_max, raw_error, fixed_error) in enumerate(rows):
        ratio = "" if i == 0 else f"{rows[i - 1][3] / fixed_error:6.2f}"
        print(f"{n_steps:4d} {g_max:9.3g} {raw_error:10.3e} {fixed_error:10.3e} {ratio}")

    for previous, current in zip(rows, rows[1:]):
        assert previous[3] / current[3] >= 1.8, f"{label}: corrected error not first order: {rows}"
    g_scale = max(row[1] for row in rows)
    assert rows[-1][3] < 3e-2 * g_scale, f"{label}: corrected error too large at N=160: {rows}"
    if (scheme, alpha) in OSCILLATING:
        for n_steps, _, raw_error, _ in rows:
            assert raw_error > 0.2 * g_scale, (
                f"{label}: raw autodiff density converged at N={n_steps} ({raw_error:.3g}); "
                "the problem no longer shows the oscillation the correction is for")


# ------------------------------------------------------------- the filter on its model


def test_leapfrog_filter_recovers_smooth_part_of_the_model_sequence_exactly():
    # Module docstring: grad_k = h (g_k + (-1)^k r_k) for k >= 1 and half of it for k = 0.
    # Both g and r linear => the correction must return h g_k exactly, boundaries included.
    n_steps, h = 12, 0.1
    t = torch.arange(n_steps, dtype=F64) * h
    g = torch.stack([1.5 - 2.0 * t, 0.3 + 4.0 * t], dim=1)
    r = torch.stack([0.7 + 3.0 * t, -2.0 + 1.0 * t], dim=1)
    sign = torch.where(torch.arange(n_steps) % 2 == 0, 1.0, -1.0).to(F64)[:, None]
    grad = h * (g + sign * r)
    grad[0] *= 0.5
    out = correct_gradient(grad, "leapfrog", h)
    torch.testing.assert_close(out, h * g, rtol=0, atol=1e-13)


@pytest.mark.parametrize("alpha", [0.3, 0.5, 2.0 / 3.0, 0.9, 1.7])
def test_erk2_filter_recovers_smooth_part_of_the_model_sequence_exactly(alpha):
    # Density model: stage 1 sees g - q, stage 2 sees g + q, at t_n and t_n + alpha h.
    n_steps, h = 7, 0.2
    times = parameter_times("erk2", n_steps * h, n_steps, alpha, dtype=F64)
    g = 2.0 - 3.0 * times
    q = 0.5 + 1.5 * times
    sign = torch.where(torch.arange(2 * n_steps) % 2 == 0, -1.0, 1.0).to(F64)
    grad = (h / 2) * (g + sign * q)
    out = correct_gradient(grad, "erk2", h, alpha)
    torch.testing.assert_close(out, (h / 2) * g, rtol=0, atol=1e-13)


def test_correct_gradient_is_linear_and_keeps_shape_and_array_type():
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(10, 3, 2, generator=gen, dtype=F64)
    b = torch.randn(10, 3, 2, generator=gen, dtype=F64)
    for scheme, alpha in [("leapfrog", None), ("erk2", 2.0 / 3.0)]:
        combo = correct_gradient(2.0 * a - 3.0 * b, scheme, 0.1, alpha)
        assert combo.shape == a.shape
        torch.testing.assert_close(
            combo, 2.0 * correct_gradient(a, scheme, 0.1, alpha) - 3.0 * correct_gradient(b, scheme, 0.1, alpha))
        as_array = correct_gradient(a.numpy(), scheme, 0.1, alpha)
        assert isinstance(as_array, np.ndarray)
        np.testing.assert_allclose(as_array, correct_gradient(a, scheme, 0.1, alpha).numpy(), rtol=0, atol=1e-15)
        # Leaves a constant gradient density alone (a constant is in the model's span).
        ones = torch.ones(10, 3, dtype=F64)
        if scheme == "leapfrog":
            ones[0] = 0.5
        expected = torch.ones(10, 3, dtype=F64)
        torch.testing.assert_close(correct_gradient(ones, scheme, 0.1, alpha), expected)


def test_parameter_times_and_density():
    h = 0.25
    torch.testing.assert_close(parameter_times("leapfrog", 1.0, 4, dtype=F64),
                               torch.tensor([0.0, 0.25, 0.5, 0.75], dtype=F64))
    torch.testing.assert_close(parameter_times("erk2", 1.0, 4, 2.0 / 3.0, dtype=F64),
                               torch.tensor([0, 1 / 6, 0.25, 0.25 + 1 / 6, 0.5, 0.5 + 1 / 6, 0.75, 0.75 + 1 / 6],
                                            dtype=F64))
    heun = parameter_times("erk2", 1.0, 4, 1.0, dtype=F64)
    torch.testing.assert_close(heun[1::2][:-1], heun[2::2])
    grad = torch.arange(8, dtype=F64)
    torch.testing.assert_close(gradient_density(grad, "erk2", h), grad / (h / 2))
    torch.testing.assert_close(gradient_density(grad, "leapfrog", h), grad / h)


# --------------------------------------------------------------------------- the hook


@pytest.mark.parametrize("scheme,alpha", SCHEMES, ids=["leapfrog", "erk2-1/2", "erk2-2/3", "erk2-1"])
def test_hook_puts_corrected_gradient_in_theta_grad(scheme, alpha):
    gen = torch.Generator().manual_seed(7)
    n_steps = 9
    n_theta = corrected.num_parameter_times(scheme, n_steps)
    theta = 0.4 * torch.randn(n_theta, sum(MLP_SIZES), generator=gen, dtype=F64)
    encoder_state = torch.nn.Linear(3, MLP_STATE, dtype=F64).state_dict()
    batch = torch.randn(5, 3, generator=gen, dtype=F64)

    def grads(use_correction):
        encoder = torch.nn.Linear(3, MLP_STATE, dtype=F64)
        encoder.load_state_dict(encoder_state)
        block = TimeVaryingODE(mlp_rhs, 0.8, n_steps, scheme, alpha, theta_init=theta,
                               corrected=use_correction)
        model = torch.nn.Sequential(encoder, block)
        # A penalty on theta outside the solver must keep its plain gradient.
        loss = model(batch).pow(2).sum() + 0.1 * block.theta.pow(2).sum()
        loss.backward()
        return block.theta.grad.clone(), encoder.weight.grad.clone()

    raw_theta, raw_encoder = grads(False)
    fixed_theta, fixed_encoder = grads(True)
    penalty = 0.2 * theta
    expected = correct_gradient(raw_theta - penalty, scheme, 0.8 / n_steps, alpha) + penalty
    torch.testing.assert_close(fixed_theta, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fixed_encoder, raw_encoder, rtol=1e-12, atol=1e-12)
    if (scheme, alpha) in OSCILLATING:
        assert (fixed_theta - raw_theta).abs().max() > 1e-3 * raw_theta.abs().max()


# ----------------------------------------------------------------------- training


def learned_control_loss(block, x0, target, fine_steps=400):
    """Loss of the learned theta(t) (piecewise linear in t) on the ODE itself, by RK4."""
    x = block.continuous_forward(x0, fine_steps)
    return 0.5 * ((x - target) ** 2).sum(dim=-1).mean().item()


def test_training_with_corrected_gradients_learns_a_control_that_works_in_continuous_time():
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(16, MLP_STATE, generator=gen, dtype=F64)
    target = 1.2 * torch.stack([-x0[:, 1], x0[:, 0]], dim=1)
    start = 0.5 * torch.randn(sum(MLP_SIZES), generator=gen, dtype=F64)
    n_steps = 20

    def train(use_correction):
        block = TimeVaryingODE(mlp_rhs, T_FINAL, n_steps, "leapfrog",
                               theta_init=start.expand(n_steps, -1).clone(), corrected=use_correction)
        optimiser = torch.optim.SGD(block.parameters(), lr=2.0)
        for _ in range(60):
            optimiser.zero_grad()
            loss = 0.5 * ((block(x0) - target) ** 2).sum(dim=-1).mean()
            loss.backward()
            optimiser.step()
        return learned_control_loss(block, x0, target)

    initial = learned_control_loss(
        TimeVaryingODE(mlp_rhs, T_FINAL, n_steps, "leapfrog", theta_init=start.expand(n_steps, -1).clone()),
        x0, target)
    raw, fixed = train(False), train(True)
    print(f"\ncontinuous-time loss of the learned theta(t): start {initial:.4f}, "
          f"raw-gradient training {raw:.4f}, corrected-gradient training {fixed:.4f}")
    assert fixed < 0.5 * initial
    assert fixed < raw


# ------------------------------------------------------------------------ bad input


def _rhs(x, theta):
    return theta * x


def test_unknown_scheme_is_rejected_with_the_choices():
    with pytest.raises(UnknownMethodError, match="leapfrog.*erk2"):
        TimeVaryingODE(_rhs, 1.0, 10, scheme="rk4", theta_init=torch.zeros(10))
    with pytest.raises(InvalidProblemError, match="leapfrog.*erk2"):
        correct_gradient(torch.zeros(10), "midpoint", 0.1)


@pytest.mark.parametrize("alpha", [0.0, -0.5, float("nan"), float("inf")])
def test_nonpositive_or_nonfinite_alpha_is_rejected(alpha):
    with pytest.raises(InvalidProblemError, match="alpha must be finite and > 0"):
        TimeVaryingODE(_rhs, 1.0, 10, scheme="erk2", alpha=alpha, theta_init=torch.zeros(20))
    with pytest.raises(InvalidProblemError, match="alpha must be finite and > 0"):
        correct_gradient(torch.zeros(20), "erk2", 0.1, alpha)


def test_alpha_must_match_the_scheme():
    with pytest.raises(InvalidProblemError, match="erk2' needs alpha"):
        TimeVaryingODE(_rhs, 1.0, 10, scheme="erk2", theta_init=torch.zeros(20))
    with pytest.raises(InvalidProblemError, match="drop alpha"):
        TimeVaryingODE(_rhs, 1.0, 10, scheme="leapfrog", alpha=0.5, theta_init=torch.zeros(10))


@pytest.mark.parametrize("n_steps", [1, 0, -3])
def test_too_few_steps_are_rejected(n_steps):
    with pytest.raises(InvalidProblemError, match="n_steps >= 2"):
        TimeVaryingODE(_rhs, 1.0, n_steps, scheme="leapfrog", theta_init=torch.zeros(1))
    with pytest.raises(InvalidProblemError, match="n_steps >= 2"):
        parameter_times("erk2", 1.0, n_steps, 0.5)


def test_wrong_theta_shape_is_rejected_with_the_expected_shape():
    with pytest.raises(InvalidProblemError, match=r"give shape \(20, \*param_shape\)"):
        TimeVaryingODE(_rhs, 1.0, 10, scheme="erk2", alpha=0.5, theta_init=torch.zeros(10, 3))
    with pytest.raises(InvalidProblemError, match=r"give shape \(10, \*param_shape\)"):
        TimeVaryingODE(_rhs, 1.0, 10, scheme="leapfrog", theta_init=lambda t: torch.zeros(3))
    with pytest.raises(InvalidProblemError, match="2 x n_steps entries"):
        correct_gradient(torch.zeros(7), "erk2", 0.1, 0.5)


def test_non_float_initial_state_is_rejected():
    block = TimeVaryingODE(_rhs, 1.0, 4, scheme="leapfrog", theta_init=torch.zeros(4))
    with pytest.raises(InvalidStateError, match="floating-point tensor"):
        block(torch.tensor([1, 2]))
