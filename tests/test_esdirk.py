"""Adaptive ESDIRK methods (kvaerno5, kencarp4): tables, measured orders of the method and
of its embedded estimate, L-stability, Newton failure as a rejected step, a stiff problem
against SciPy Radau, SciML aliases, and exact gradients (IFT) for every sensealg."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pysciml_grad as psg
from pysciml_grad.backends.torch.forward import lookup_method
from pysciml_grad.backends.torch.implicit import DenseJacobian
from pysciml_grad.backends.torch.stepping import StepRejected
from pysciml_grad.backends.torch.tableaus import ESDIRK_TABLEAUS
from pysciml_grad.errors import NewtonConvergenceError, UnknownMethodError

from problems import check_stiff_gradient_by_central_differences, stiff_gradient_problem  # tests/problems.py, before benchmarks/ joins the path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import stiff_problems as sp  # noqa: E402

D = torch.float64
METHODS = list(ESDIRK_TABLEAUS)


def forced_oscillator(t, y):
    # y'' = -y + cos(2t), y(0) = 1, y'(0) = 0:  y = 4/3 cos t - 1/3 cos 2t (time-dependent f)
    return torch.stack([y[1], -y[0] + torch.cos(2 * t)])


def exact_oscillator(t: float) -> torch.Tensor:
    return torch.tensor([4 / 3 * math.cos(t) - math.cos(2 * t) / 3, -4 / 3 * math.sin(t) + 2 / 3 * math.sin(2 * t)],
                        dtype=D)


def _bound(name: str, rtol: float = 1e-13, atol: float = 1e-14, fixed: bool = False):
    rk = lookup_method(name).tableau
    return rk.bound(DenseJacobian(), rtol, atol, 10, fixed=fixed)


@pytest.mark.parametrize("name", METHODS)
def test_tables_are_consistent_esdirks(name):
    tab = ESDIRK_TABLEAUS[name]
    s = tab.stages
    assert tab.diagonally_implicit and tab.a[0][0] == 0.0 and tab.c[0] == 0.0
    assert all(tab.a[i][i] == tab.gamma for i in range(1, s))
    # upstream's c against the row sums of upstream's a (two independent sets of digits)
    assert max(abs(sum(row) - c) for row, c in zip(tab.a, tab.c)) < 1e-14
    assert tab.b == tab.a[-1] and tab.c[-1] == 1.0 and tab.fsal  # stiffly accurate
    assert abs(sum(tab.b) - 1) < 1e-15 and abs(sum(tab.b_err)) < 1e-15  # b_hat sums to 1 too


def test_measured_orders_on_a_fixed_grid():
    """The methods also run with options step_size (no estimate, no FSAL): measured orders
    5 (kvaerno5) and 4 (kencarp4) on the forced oscillator, h = 0.2 -> 0.1 -> 0.05."""
    T, rows = 2.0, []
    for name in METHODS:
        errs = []
        for n in (10, 20, 40):
            ys, stats = psg.odeint(forced_oscillator, torch.tensor([1.0, 0.0], dtype=D), torch.tensor([0.0, T], dtype=D),
                                   method=name, options={"step_size": T / n, "return_stats": True},
                                   rtol=1e-13, atol=1e-14)
            assert stats.n_steps == n and stats.n_rejected == 0
            errs.append(float((ys[-1] - exact_oscillator(T)).abs().max()))
        rows.append((name, ESDIRK_TABLEAUS[name].order, errs, [math.log2(a / b) for a, b in zip(errs, errs[1:])]))
    print("\nmethod     nominal  error n=10  n=20      n=40      measured orders")
    for name, p, errs, q in rows:
        print(f"{name:10s} {p:7d}  " + "  ".join(f"{e:.2e}" for e in errs) + "  " + ", ".join(f"{x:.2f}" for x in q))
    for name, p, _, q in rows:
        assert abs(q[0] - p) < 0.2 and abs(q[1] - p) < 0.2, (name, q)


def test_embedded_error_estimate_order():
    """One step from the exact state: err(h) = h sum (b - b_hat) K = O(h^(q+1)) with q the
    embedded order (4 for kvaerno5, 3 for kencarp4); measured over h = 0.1 -> 0.05 -> 0.025."""
    for name in METHODS:
        rk = _bound(name)
        y0 = torch.tensor([1.0, 0.0], dtype=D)
        sizes = []
        for h in (0.1, 0.05, 0.025):
            with torch.no_grad():
                _, _, err = rk.step(lambda t, y: forced_oscillator(torch.as_tensor(t, dtype=D), y),
                                    torch.tensor(0.3, dtype=D), y0, h)
            sizes.append(float(err.abs().max()))
        orders = [math.log2(a / b) for a, b in zip(sizes, sizes[1:])]
        q = ESDIRK_TABLEAUS[name].error_order
        assert all(abs(o - (q + 1)) < 0.3 for o in orders), (name, orders)


@pytest.mark.parametrize("name", METHODS)
def test_l_stable(name):
    # R(z) for y' = z y, one step of h = 1: L-stable means R(z) -> 0 as z -> -inf (like 1/z).
    rk = _bound(name, fixed=True)
    with torch.no_grad():
        r = [float(rk.step(lambda t, y, z=z: z * y, 0.0, torch.ones(1, dtype=D), 1.0)[0]) for z in (-1e6, -1e9)]
    assert abs(r[1]) < 1e-7 and abs(r[0] / r[1] - 1e3) < 1.0
    # y' = -1e6 (y - cos t) from y(0) = 0 with h = 0.1 (z = -1e5): on the slow manifold after one step.
    t = torch.linspace(0, 1, 11, dtype=D)
    ys = psg.odeint(lambda s, y: -1e6 * (y - torch.cos(s)), torch.zeros(1, dtype=D), t, method=name,
                    options={"step_size": 0.1})
    err = (ys[1:, 0] - torch.cos(t[1:])).abs()
    assert float(err[0]) < 1e-4  # the initial offset 1 times R(-1e5) = O(1e-5)
    assert float(err[1:].max()) < 1e-6  # then on the manifold (its offset from cos t is sin(t)/1e6)
    # Adaptive from y(0) = 2, off the manifold: a few steps, not the ~1e6 an explicit method needs.
    lam = 1e6
    # (Only t = 1, a step point: a save inside one of the few long steps gets the cubic Hermite
    # dense output, 3rd order, 5e-5 off at t = 0.5 for kvaerno5, see docs/stiff.md.)
    tt = torch.tensor([0.0, 1.0], dtype=D)
    A, B = lam**2 / (1 + lam**2), lam / (1 + lam**2)
    ys, stats = psg.odeint(lambda s, y: -lam * (y - torch.cos(s)), torch.tensor([2.0], dtype=D), tt, method=name,
                           rtol=1e-6, atol=1e-9, options={"return_stats": True})
    assert float((ys[1:, 0] - (A * torch.cos(tt[1:]) + B * torch.sin(tt[1:]))).abs().max()) < 1e-6
    assert stats.n_steps < 100, stats.n_steps


def test_newton_failure_rejects_the_step_and_the_solve_goes_on():
    # y' = y^2 from y = 1 (y = 1 / (1 - t)): with h = 0.6 the stage equations have no real
    # root. Adaptive: the trial is rejected, h shrinks and the solve finishes accurately.
    rk = _bound("kvaerno5", rtol=1e-8, atol=1e-10)
    with pytest.raises(StepRejected):
        rk.step(lambda t, y: y * y, 0.0, torch.ones(1, dtype=D), 0.6)
    fixed = _bound("kvaerno5", rtol=1e-8, atol=1e-10, fixed=True)
    with pytest.raises(NewtonConvergenceError, match="t=0 .*smaller step size") as info:
        fixed.step(lambda t, y: y * y, 0.0, torch.ones(1, dtype=D), 0.6)
    assert not isinstance(info.value, StepRejected)
    ys, stats = psg.odeint(lambda t, y: y * y, torch.ones(1, dtype=D), torch.tensor([0.0, 0.9], dtype=D),
                           method="kvaerno5", rtol=1e-8, atol=1e-10, options={"first_step": 0.6, "return_stats": True})
    assert stats.n_rejected >= 1
    assert abs(float(ys[-1]) - 10.0) < 1e-5


def test_newton_failure_down_to_min_step_names_the_time():
    # The same stage equations with h = 0.6, and options min_step = 0.4: the halved step
    # would fall below min_step, so the solve stops with NewtonConvergenceError at t = 0.
    with pytest.raises(NewtonConvergenceError, match=r"underflowed to 0\.3 at t=0 while Newton"):
        psg.odeint(lambda t, y: y * y, torch.ones(1, dtype=D), torch.tensor([0.0, 0.9], dtype=D), method="kvaerno5",
                   rtol=1e-8, atol=1e-10, options={"first_step": 0.6, "min_step": 0.4})


@pytest.mark.parametrize("given_step_t", [False, True], ids=["default", "step_t"])
@pytest.mark.parametrize("name,bound", [("kvaerno5", 10.0), ("kencarp4", 10.0)])
def test_robertson_against_scipy_radau(name, bound, given_step_t):
    """Robertson to T = 1e5 at rtol 1e-6 against SciPy Radau at rtol 1e-12 (cached
    reference): error at most 10 tolerance units |y - ref| / (atol + rtol |ref|). The save
    times are step points, by default (EmbeddedImplicitTableau.steps_to_saves) as with an
    explicit step_t; interpolated by cubic Hermite, kvaerno5's error was 0.16 (1.6e5 units).
    Measured: 2.0 (kvaerno5, 72 steps), 7.0 (kencarp4, 94 steps)."""
    problem = sp.ROBERTSON
    ref = sp.reference(problem)
    rtol, atol = 1e-6, problem.atol
    t = torch.tensor(problem.t_eval, dtype=D)
    options = {"return_stats": True, **({"step_t": t[1:-1]} if given_step_t else {})}
    ys, stats = psg.odeint(problem.f_torch, torch.tensor(problem.y0, dtype=D), t, method=name, rtol=rtol, atol=atol,
                           options=options)
    units = np.abs(ys.numpy() - ref) / (atol + rtol * np.abs(ref))
    assert float(units.max()) < bound, units.max()
    assert stats.n_steps < 200
    assert abs(float(ys[-1].sum()) - 1.0) < 1e-8  # mass is conserved


def test_sciml_names_and_the_stiff_hint():
    t = torch.tensor([0.0, 0.5], dtype=D)
    y0 = torch.tensor(sp.ROBERTSON.y0, dtype=D)
    for sciml, ours in (("Kvaerno5", "kvaerno5"), ("KenCarp4", "kencarp4")):
        a = psg.odeint(sp.ROBERTSON.f_torch, y0, t, method=sciml, rtol=1e-5, atol=1e-9)
        b = psg.odeint(sp.ROBERTSON.f_torch, y0, t, method=ours, rtol=1e-5, atol=1e-9)
        assert torch.equal(a, b)
    with pytest.raises(UnknownMethodError, match="kvaerno5.*Kvaerno5"):
        psg.odeint(sp.ROBERTSON.f_torch, y0, t, method="Kvaerno4")
    with pytest.raises(psg.errors.MaxStepsExceededError, match="'kvaerno5'"):
        psg.odeint(sp.ROBERTSON.f_torch, y0, torch.tensor([0.0, 1e2], dtype=D), method="dopri5", rtol=1e-6,
                   atol=1e-10, options={"max_num_steps": 100})


def test_user_jacobian_is_used_and_gives_the_same_solution():
    calls = []

    def jac(t, y):
        calls.append(float(t))
        return torch.func.jacrev(lambda v: sp.ROBERTSON.f_torch(t, v))(y)

    y0 = torch.tensor(sp.ROBERTSON.y0, dtype=D)
    t = torch.tensor([0.0, 1.0, 10.0], dtype=D)
    auto = psg.odeint(sp.ROBERTSON.f_torch, y0, t, method="kvaerno5", rtol=1e-7, atol=1e-10)
    user = psg.odeint(sp.ROBERTSON.f_torch, y0, t, method="kvaerno5", rtol=1e-7, atol=1e-10, options={"jac": jac})
    assert calls and float((auto - user).abs().max()) < 1e-10


# ------------------------------------------------------------------------- gradients


def _problem():
    return stiff_gradient_problem()


def _loss(f, y0, method, sensealg, options, rtol=1e-12):
    t = torch.linspace(0, 1, 4, dtype=D)
    ys = psg.odeint(f, y0, t, method=method, sensealg=sensealg, options=options, rtol=rtol, atol=rtol * 1e-2)
    return (ys ** 2).sum() + ys[1, 0]  # saves inside steps (Hermite) and on step points


@pytest.mark.parametrize("method", METHODS)
def test_discrete_gradients_match_finite_differences(method):
    """Fixed steps: CheckpointAdjoint == DirectAD to 1e-10, and both == float64 central
    differences of the same discrete map to 1e-6 (y0, a matrix entry, a closure's scalar).
    Adaptive (rtol 1e-5, ~20 steps): CheckpointAdjoint (replaying the accepted steps, K_1
    evaluated afresh where the forward reused K_s, equal to it to the Newton tolerance)
    == DirectAD to 1e-3 rtol (measured 1.0e-9 relative; 5e-11 at rtol 1e-6)."""
    f, y0, inputs = _problem()
    fixed = {"step_size": 0.1}
    g_direct = torch.autograd.grad(_loss(f, y0, method, psg.DirectAD(), fixed), inputs)
    g_ckpt = torch.autograd.grad(_loss(f, y0, method, psg.CheckpointAdjoint(), fixed), inputs)
    for a, b in zip(g_direct, g_ckpt):
        assert torch.allclose(a, b, rtol=0, atol=1e-10)
    check_stiff_gradient_by_central_differences(lambda: _loss(f, y0, method, psg.DirectAD(), fixed), inputs, g_ckpt)
    g_direct = torch.autograd.grad(_loss(f, y0, method, psg.DirectAD(), {}, 1e-5), inputs)
    g_ckpt = torch.autograd.grad(_loss(f, y0, method, psg.CheckpointAdjoint(), {}, 1e-5), inputs)
    for a, b in zip(g_direct, g_ckpt):
        assert float((a - b).abs().max()) <= 1e-8 * max(1.0, float(a.abs().max()))


@pytest.mark.parametrize("sensealg", [psg.InterpolatingAdjoint(), psg.QuadratureAdjoint()],
                         ids=lambda s: type(s).__name__)
def test_continuous_adjoint_solves_backward_with_kvaerno5(sensealg):
    """y' = theta M y, stiffness ratio 1000, adaptive kvaerno5 forward and backward (the
    adjoint system is stiff in reverse time too); oracle: autograd through torch.matrix_exp.
    At rtol 1e-8 DirectAD and the continuous adjoint agree with it to 1e-6 (relative).
    (BacksolveAdjoint cannot run here: y integrated backwards grows like e^(1000 t).)"""
    M = torch.tensor([[-1000.0, 1.0], [0.0, -1.0]], dtype=D)
    th = torch.tensor(1.0, dtype=D, requires_grad=True)
    y0 = torch.tensor([1.0, 1.0], dtype=D, requires_grad=True)
    ref = torch.autograd.grad((torch.matrix_exp(th * M) @ y0).square().sum(), [th, y0])
    grads = []
    for sa in (psg.DirectAD(), sensealg):
        if True:
            ys, stats = psg.odeint(lambda t, y: th * (M @ y), y0, torch.tensor([0.0, 1.0], dtype=D), method="kvaerno5",
                                   sensealg=sa, rtol=1e-8, atol=1e-10, options={"return_stats": True})
            grads.append(torch.autograd.grad(ys[-1].square().sum(), [th, y0]))
    for g in grads:
        for a, b in zip(g, ref):
            assert float((a - b).abs().max() / b.abs().max()) < 1e-6, (g, ref)
    assert stats.nfe_backward < 5000


def test_steps_to_saves_option_decides_over_the_method():
    # options steps_to_saves=False serves kvaerno5's saves from the Hermite dense output
    # (fewer steps than saves), True makes an explicit method end its steps on them; a
    # non-bool is refused at once.
    f = lambda t, y: -y  # noqa: E731
    y0 = torch.ones(1, dtype=D)
    t = torch.linspace(0, 2, 41, dtype=D)
    _, on = psg.odeint(f, y0, t, method="kvaerno5", rtol=1e-5, atol=1e-8, options={"return_stats": True})
    ys, off = psg.odeint(f, y0, t, method="kvaerno5", rtol=1e-5, atol=1e-8,
                         options={"return_stats": True, "steps_to_saves": False})
    assert on.n_steps >= 40 > off.n_steps
    assert torch.allclose(ys[:, 0], torch.exp(-t), atol=1e-4)
    _, rk = psg.odeint(f, y0, t, method="dopri5", rtol=1e-5, atol=1e-8, options={"return_stats": True, "steps_to_saves": True})
    _, rk_default = psg.odeint(f, y0, t, method="dopri5", rtol=1e-5, atol=1e-8, options={"return_stats": True})
    assert rk.n_steps >= 40 > rk_default.n_steps
    with pytest.raises(psg.errors.InvalidProblemError, match="steps_to_saves"):
        psg.odeint(f, y0, t, method="kvaerno5", options={"steps_to_saves": "yes"})
