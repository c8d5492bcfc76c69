"""The fixed-step implicit methods (torchdiffeq master's nine): orders, stability, Newton
failure, and exact gradients by the implicit function theorem for every sensealg."""

import math

import pytest
import torch

import pysciml_grad as psg
from pysciml_grad.backends.torch.tableaus import IMPLICIT_TABLEAUS

from problems import check_stiff_gradient_by_central_differences, stiff_gradient_problem
from pysciml_grad.errors import NewtonConvergenceError, SolverError

D = torch.float64
METHODS = list(IMPLICIT_TABLEAUS)
L_STABLE = ("implicit_euler", "radauIIA3", "radauIIA5", "sdirk2", "trbdf2")
NOT_L_STABLE = ("implicit_midpoint", "trapezoid", "gl4", "gl6")


def forced_oscillator(t, y):
    # y'' = -y + cos(2t), y(0) = 1, y'(0) = 0:  y = 4/3 cos t - 1/3 cos 2t (time-dependent f)
    return torch.stack([y[1], -y[0] + torch.cos(2 * t)])


def exact_oscillator(t: float) -> torch.Tensor:
    return torch.tensor([4 / 3 * math.cos(t) - math.cos(2 * t) / 3, -4 / 3 * math.sin(t) + 2 / 3 * math.sin(2 * t)],
                        dtype=D)


def measured_order(method: str, ns=(10, 20)) -> float:
    T = 2.0
    errs = []
    for n in ns:
        ys = psg.odeint(forced_oscillator, torch.tensor([1.0, 0.0], dtype=D), torch.tensor([0.0, T], dtype=D),
                        method=method, options={"step_size": T / n}, rtol=1e-13, atol=1e-14)
        errs.append(float((ys[-1] - exact_oscillator(T)).abs().max()))
    return math.log(errs[0] / errs[1]) / math.log(ns[1] / ns[0])


def test_convergence_orders_table():
    rows = [(m, IMPLICIT_TABLEAUS[m].order, measured_order(m)) for m in METHODS]
    print("\nmethod             nominal  measured (h = 0.2 -> 0.1, forced oscillator)")
    for m, p, q in rows:
        print(f"{m:18s} {p:7d}  {q:8.3f}")
    for m, p, q in rows:
        assert abs(q - p) < 0.15, (m, p, q)


@pytest.mark.parametrize("method", METHODS)
def test_stiff_relaxation_stability(method):
    """y' = -1e6 (y - cos t), y(0) = 0, h = 0.1: z = h lambda = -1e5. An L-stable method
    (R(-inf) = 0) lands on the slow manifold y ~ cos t in one step; an A-stable one with
    |R(-inf)| = 1 (implicit midpoint, trapezoid, Gauss) carries the initial offset of 1
    along undamped, and neither blows up."""
    t = torch.linspace(0, 1, 11, dtype=D)
    ys = psg.odeint(lambda t, y: -1e6 * (y - torch.cos(t)), torch.zeros(1, dtype=D), t, method=method)
    err = (ys[1:, 0] - torch.cos(t[1:])).abs()
    assert bool(torch.isfinite(ys).all()) and float(ys.abs().max()) < 2.5
    if method in L_STABLE:
        assert float(err.max()) < 1e-4
    else:
        assert float(err.min()) > 0.9


def test_newton_failure_names_the_time():
    # y' = y^2 from y = 1 with h = 0.6: K = (1 + 0.6 K)^2 has no real root at the first step.
    with pytest.raises(NewtonConvergenceError, match=r"t=0 .*smaller step size"):
        psg.odeint(lambda t, y: y * y, torch.ones(1, dtype=D), torch.tensor([0.0, 0.6], dtype=D),
                   method="implicit_euler", options={"step_size": 0.6})
    # h = 0.5: I - h J = 1 - 0.5 * 2 y0 = 0, the Newton matrix itself is singular.
    with pytest.raises(SolverError, match=r"singular at t=0 .*smaller step size"):
        psg.odeint(lambda t, y: y * y, torch.ones(1, dtype=D), torch.tensor([0.0, 0.5], dtype=D),
                   method="implicit_euler", options={"step_size": 0.5})


def _problem():
    return stiff_gradient_problem()


def _loss(f, y0, method, sensealg):
    t = torch.linspace(0, 1, 4, dtype=D)
    ys = psg.odeint(f, y0, t, method=method, sensealg=sensealg, options={"step_size": 0.05}, rtol=1e-12, atol=1e-14)
    return (ys ** 2).sum() + ys[1, 0]  # a save inside a step (Hermite) and on the grid


@pytest.mark.parametrize("method", METHODS)
def test_checkpoint_equals_direct_and_finite_differences(method):
    f, y0, inputs = _problem()
    g_direct = torch.autograd.grad(_loss(f, y0, method, psg.DirectAD()), inputs)
    g_ckpt = torch.autograd.grad(_loss(f, y0, method, psg.CheckpointAdjoint()), inputs)
    for a, b in zip(g_direct, g_ckpt):
        assert torch.allclose(a, b, rtol=0, atol=1e-10)
    # Central differences of the discrete map in float64, for y0[1], W[1, 1] and the closure's c.
    check_stiff_gradient_by_central_differences(lambda: _loss(f, y0, method, psg.DirectAD()), inputs, g_ckpt)


@pytest.mark.parametrize("sensealg", [psg.InterpolatingAdjoint(), psg.QuadratureAdjoint(), psg.BacksolveAdjoint(),
                                      psg.CheckpointAdjoint()], ids=lambda s: type(s).__name__)
def test_continuous_adjoints_on_stiff_linear_problem(sensealg):
    """y' = theta M y, stiffness ratio 1000; the oracle is autograd through
    torch.matrix_exp. The backward solve runs radauIIA5 too (stiff in reverse time)."""
    M = torch.tensor([[-1000.0, 1.0], [0.0, -1.0]], dtype=D)
    th = torch.tensor(1.0, dtype=D, requires_grad=True)
    y0 = torch.tensor([1.0, 1.0], dtype=D, requires_grad=True)
    ref = torch.autograd.grad((torch.matrix_exp(th * M) @ y0).square().sum(), [th, y0])
    import warnings

    with warnings.catch_warnings():
        # Backsolve cannot reconstruct the stiff component in reverse time (it warns so);
        # it has decayed to 1e-434 by t = 1, so the gradient does not depend on it.
        warnings.simplefilter("ignore", psg.errors.GradientAccuracyWarning)
        ys = psg.odeint(lambda t, y: th * (M @ y), y0, torch.tensor([0.0, 1.0], dtype=D), method="radauIIA5",
                        sensealg=sensealg, options={"step_size": 0.02}, rtol=1e-10, atol=1e-12)
        g = torch.autograd.grad(ys[-1].square().sum(), [th, y0])
    for a, b in zip(g, ref):
        assert float((a - b).abs().max() / b.abs().max()) < 1e-8


def test_block_diagonal_and_user_jacobian_give_the_dense_solution():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    K = torch.tensor([[-50.0, 0.0], [0.0, -1.0]], dtype=D)

    def f(t, y):
        return y @ K.T + 0.1 * net(y)

    def jac(t, y):  # per-sample blocks d f_b / d y_b
        return torch.func.vmap(torch.func.jacrev(lambda v: v @ K.T + 0.1 * net(v)))(y)

    y0 = torch.randn(4, 2, dtype=D)
    t = torch.linspace(0, 1, 3, dtype=D)
    kw = dict(method="radauIIA5", rtol=1e-12, atol=1e-14)
    dense = psg.odeint(f, y0, t, options={"step_size": 0.05}, **kw)
    block = psg.odeint(f, y0, t, options={"step_size": 0.05, "jacobian": psg.BlockDiagonalJacobian()}, **kw)
    user = psg.odeint(f, y0, t, options={"step_size": 0.05, "jac": jac}, **kw)
    assert torch.allclose(block, dense, atol=1e-12) and torch.allclose(user, dense, atol=1e-12)
    # Samples are independent, so solving them one by one gives the same answer too.
    one = psg.odeint(f, y0[2:3], t, options={"step_size": 0.05}, **kw)
    assert torch.allclose(one[:, 0], dense[:, 2], atol=1e-12)


def test_stiff_hint_points_to_the_implicit_methods_and_they_solve_it():
    """An explicit method on Robertson's kinetics runs out of steps; the message names
    the torch engine's stiff methods, radauIIA5 among them, and radauIIA5 with a step size of 1 does the job (checked against
    SciPy's Radau at rtol 1e-10 to the accuracy 40 steps of order 5 give)."""
    from scipy.integrate import solve_ivp

    def rober(t, y):
        y1, y2, y3 = y.unbind(-1)
        return torch.stack([-0.04 * y1 + 1e4 * y2 * y3, 0.04 * y1 - 1e4 * y2 * y3 - 3e7 * y2 ** 2, 3e7 * y2 ** 2], -1)

    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=D)
    t = torch.tensor([0.0, 40.0], dtype=D)
    with pytest.raises(psg.errors.MaxStepsExceededError, match="rodas5p.*'radauIIA5'"):
        psg.odeint(rober, y0, t, method="dopri5", options={"max_num_steps": 100})
    ys = psg.odeint(rober, y0, torch.linspace(0, 40, 41, dtype=D), method="radauIIA5")
    ref = solve_ivp(lambda t, y: rober(t, torch.tensor(y)).numpy(), (0, 40), y0.numpy(), method="Radau",
                    rtol=1e-10, atol=1e-14).y[:, -1]
    assert float((ys[-1] - torch.tensor(ref)).abs().max()) < 1e-4


def test_compile_option_falls_back_to_the_eager_newton_loop():
    w = torch.tensor(-2.0, dtype=D, requires_grad=True)
    t = torch.linspace(0, 1, 5, dtype=D)
    with pytest.warns(psg.errors.CompileFallbackWarning, match="explicit Runge-Kutta methods only, not 'radauIIA5'"):
        ys = psg.odeint(lambda t, y: w * y, torch.ones(2, dtype=D), t, method="radauIIA5", options={"compile": True})
    eager = psg.odeint(lambda t, y: w * y, torch.ones(2, dtype=D), t, method="radauIIA5")
    assert torch.equal(ys, eager)
    (g,) = torch.autograd.grad(ys.sum(), [w])
    assert torch.isfinite(g)


@pytest.mark.parametrize("method", ["implicit_euler", "trapezoid", "radauIIA5", "trbdf2"])
def test_perturb_keeps_every_evaluation_off_the_grid_points(method):
    """options perturb: f (stages and Jacobians alike) is never evaluated on a grid point,
    where f may jump (torchdiffeq master's test_odeint_perturb)."""
    seen = []

    def f(t, y):
        seen.append(float(t))
        return -y

    grid = torch.tensor([0.0, 0.5, 1.0], dtype=D)
    psg.odeint(f, torch.ones(2, dtype=D), grid, method=method, options={"perturb": True})
    seen = seen[1:]  # the first call checks func's output at t0 (every method makes it)
    assert seen and not any(x in (0.0, 0.5, 1.0) for x in seen), sorted(set(seen))

