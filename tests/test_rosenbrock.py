"""Rosenbrock methods (rodas4, rodas5p, ros3p): measured orders, stability, dense output,
stiff problems against SciPy Radau, SciML aliases, and exact discrete gradients."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pysciml_grad as psg
from pysciml_grad.backends.torch.control import SolverOptions
from pysciml_grad.backends.torch.integrate import CountingRHS, Counters, integrate_adaptive
from pysciml_grad.backends.torch.rosenbrock_tableaus import ROSENBROCK_TABLEAUS
from pysciml_grad.errors import CompileFallbackWarning, UnknownMethodError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import stiff_problems as sp  # noqa: E402

D = torch.float64
NOMINAL = {"rodas4": 4, "rodas5p": 5, "ros3p": 3}


def _nonautonomous(t, y):
    # y1' = -y1^2 (y1 = 1/(1+t)), y2' = -2 y2 + 2 sin t + cos t (y2 = sin t): f depends on t,
    # so a step that dropped the d_i h df/dt terms would lose its order.
    return torch.stack([-y[0] ** 2, -2 * y[1] + 2 * torch.sin(t) + torch.cos(t)])


def test_measured_orders_fixed_steps():
    T = 2.0
    exact = torch.tensor([1 / (1 + T), math.sin(T)], dtype=D)
    rows = []
    for name, tab in ROSENBROCK_TABLEAUS.items():
        errs = []
        for n in (20, 40):
            h, y = T / n, torch.tensor([1.0, 0.0], dtype=D)
            with torch.no_grad():
                for i in range(n):
                    y = tab.step(_nonautonomous, torch.tensor(i * h, dtype=D), y, h)[0]
            errs.append(float((y - exact).abs().max()))
        orders = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
        rows.append((name, errs, orders))
        assert abs(orders[-1] - NOMINAL[name]) < 0.25, (name, orders)
    print("\nmethod   h=T/20    h=T/40    measured order")
    for name, errs, orders in rows:
        print(f"{name:8s} {errs[0]:.2e}  {errs[-1]:.2e}  " + " ".join(f"{o:.2f}" for o in orders))


def test_stability_at_infinity():
    # y' = z y, one step with h = 1: R(z). L-stable Rodas: R(z) = O(1/z); ROS3P is A-stable
    # only, R(-inf) = 1 - sqrt(3) (Lang & Verwer 2001).
    for name, tab in ROSENBROCK_TABLEAUS.items():
        with torch.no_grad():
            r = [float(tab.step(lambda t, y, z=z: z * y, 0.0, torch.ones(1, dtype=D), 1.0)[0]) for z in (-1e6, -1e9)]
        if name == "ros3p":
            assert abs(r[1] - (1 - math.sqrt(3))) < 1e-8
        else:
            assert abs(r[1]) < 1e-7 and abs(r[0] / r[1] - 1e3) < 1.0  # decays like 1/|z|


def test_l_stable_on_prothero_robinson():
    # y' = -1e6 (y - cos t) from y0 = 2, off the slow manifold y = cos t, adaptive: the
    # L-stable methods land on the manifold in a few steps; the explicit dopri5 would need ~1e6.
    lam = 1e6
    t = torch.tensor([0.0, 1.0], dtype=D)
    y0 = torch.tensor([2.0], dtype=D)
    A, B = lam**2 / (1 + lam**2), lam / (1 + lam**2)
    exact = A * torch.cos(t) + B * torch.sin(t)  # the transient exp(-1e6 t) is below 1e-300 here
    for name in ("rodas4", "rodas5p"):
        ys, stats = psg.odeint(lambda s, y: -lam * (y - torch.cos(s)), y0, t, method=name, rtol=1e-6, atol=1e-9,
                               options={"return_stats": True})
        assert float((ys[1:, 0] - exact[1:]).abs().max()) < 1e-6, name
        assert stats.n_steps < 100, (name, stats.n_steps)


@pytest.mark.parametrize("name,rtol", [("rodas4", 1e-4), ("rodas5p", 1e-4), ("ros3p", 1e-3)])
def test_dense_output_between_steps(name, rtol):
    # Saves inside steps come from the method's continuous extension (Rodas: the H rows;
    # ROS3P: Hermite). y' = lam (y - cos t) from y0 = A: y = A cos t + B sin t. (Started off
    # that curve, ROS3P under-resolves the transient: its embedded solution has the same
    # stability function as the main one, so its error estimate is 0 on y' = lam y.)
    lam = -50.0
    A, B = lam**2 / (1 + lam**2), -lam / (1 + lam**2)
    t = torch.linspace(0.0, 2.0, 161, dtype=D)
    exact = A * torch.cos(t) + B * torch.sin(t)
    ys, stats = psg.odeint(lambda s, y: lam * (y - torch.cos(s)), torch.tensor([A], dtype=D), t, method=name,
                           rtol=rtol, atol=1e-8, options={"return_stats": True})
    assert stats.n_steps < 40  # so most of the 160 saves lie inside steps
    # measured: 3e-5 (rodas4, 22 steps), 1e-5 (rodas5p, 6 steps), 1.5e-5 (ros3p, 30 steps)
    assert float((ys[:, 0] - exact).abs().max()) < 1e-4 * 0.6, name


def test_ros3p_error_estimate_vanishes_on_linear_problems():
    # A property of the ROS3P pair as OrdinaryDiffEq.jl tabulates it (and a reason to prefer
    # Rodas): on y' = z y the embedded solution equals the propagated one.
    tab = ROSENBROCK_TABLEAUS["ros3p"]
    for z in (-1.0, -20.0):
        y1, _, err = tab.step(lambda t, y: z * y, 0.0, torch.ones(1, dtype=D), 1.0)
        assert abs(float(err)) < 1e-14 and abs(float(y1) - math.exp(z)) > 1e-2


@pytest.mark.parametrize("problem,name,bound", [
    (sp.ROBERTSON, "rodas5p", 1e-3), (sp.ROBERTSON, "rodas4", 1e-3), (sp.HIRES, "rodas5p", 1e-3),
])
def test_stiff_problems_match_radau(problem, name, bound):
    # Robertson to T = 1e5 and HIRES at rtol = 1e-6 against SciPy Radau at rtol = 1e-12
    # (measured: Robertson 5e-5 / 3e-4, HIRES 1e-5 in units of atol + |ref|).
    ref = sp.reference(problem)
    ys, stats = psg.odeint(problem.f_torch, torch.tensor(problem.y0, dtype=D), torch.tensor(problem.t_eval, dtype=D),
                           method=name, rtol=1e-6, atol=problem.atol, options={"return_stats": True})
    assert sp.relative_error(ys.numpy(), ref, problem.atol) < bound
    assert stats.n_steps < 500


def test_sciml_names_are_aliases():
    t = torch.tensor([0.0, 0.5], dtype=D)
    y0 = torch.tensor(sp.ROBERTSON.y0, dtype=D)
    for sciml, ours in (("Rodas5P", "rodas5p"), ("Rodas4", "rodas4"), ("ROS3P", "ros3p")):
        a = psg.odeint(sp.ROBERTSON.f_torch, y0, t, method=sciml, rtol=1e-5, atol=1e-9)
        b = psg.odeint(sp.ROBERTSON.f_torch, y0, t, method=ours, rtol=1e-5, atol=1e-9)
        assert torch.equal(a, b)
    with pytest.raises(UnknownMethodError, match="rodas5p"):
        psg.odeint(sp.ROBERTSON.f_torch, y0, t, method="Rodas6")


def test_compile_falls_back_to_eager():
    t = torch.tensor([0.0, 1.0], dtype=D)
    y0 = torch.tensor(sp.ROBERTSON.y0, dtype=D)
    with pytest.warns(CompileFallbackWarning, match="explicit Runge-Kutta"):
        a = psg.odeint(sp.ROBERTSON.f_torch, y0, t, method="rodas5p", options={"compile": True})
    assert torch.equal(a, psg.odeint(sp.ROBERTSON.f_torch, y0, t, method="rodas5p"))


# ------------------------------------------------------------------------- gradients


class Robertson(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.logk = torch.nn.Parameter(torch.log(torch.tensor([0.04, 3e7, 1e4], dtype=D)))

    def forward(self, t, y):
        k = self.logk.exp()
        return sp._rober_torch(t, y, k[0], k[1], k[2])


class Forced(torch.nn.Module):
    """y' = -k (y - cos(w t)) + 0.1 y^2: non-autonomous, so dL/dw flows through df/dt's d_i terms."""

    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(200.0, dtype=D))
        self.w = torch.nn.Parameter(torch.tensor(3.0, dtype=D))

    def forward(self, t, y):
        return -self.k * (y - torch.cos(self.w * t)) + 0.1 * y ** 2


def _discrete_map(func, tab, y0, ts, rtol, atol):
    """The accepted steps of one forward solve, and L(params) replaying exactly them."""
    steps = []
    rhs = CountingRHS(func, D, y0.device)
    with torch.no_grad():
        integrate_adaptive(rhs, tab, ts, y0, func(torch.tensor(ts[0], dtype=D), y0), rtol, atol, SolverOptions(),
                           False, Counters(), record=steps.append)

    def outputs():
        ys = [y0]
        y = y0
        for s in steps:
            y_next, ks, _ = tab.step(func, s.t, y, s.h)
            for _, theta in s.saves:
                if theta == 1.0:
                    ys.append(y_next)
                else:
                    ys.append(tab.interpolate(theta, s.h, y, y_next, ks, lambda: func(s.t + s.h, y_next)))
            y = y_next
        return torch.stack(ys)

    return outputs


@pytest.mark.parametrize("name,model,y0,ts,w", [
    ("rodas5p", Robertson, (1.0, 0.0, 0.0), (0.0, 0.3, 2.0, 40.0), (1.0, 1e4, 1.0)),
    ("rodas4", Forced, (0.5, 1.5), (0.0, 0.05, 0.37, 1.0), (1.0, -2.0)),
])
def test_gradient_is_exact_for_the_discrete_map(name, model, y0, ts, w):
    """CheckpointAdjoint == DirectAD to 1e-10 and both == float64 central finite differences
    of the same discrete map (same accepted steps, dense saves included) to 1e-6: the
    replayed step differentiates J(y) and df/dt(y) too, not a frozen W."""
    func, tab = model(), ROSENBROCK_TABLEAUS[name]
    y0, t, wt = torch.tensor(y0, dtype=D), torch.tensor(ts, dtype=D), torch.tensor(w, dtype=D)
    rtol, atol = 1e-4, 1e-8
    params = list(func.parameters())
    grads = {}
    for sa in (psg.CheckpointAdjoint(), psg.DirectAD()):
        y0r = y0.clone().requires_grad_(True)
        ys = psg.odeint(func, y0r, t, method=name, rtol=rtol, atol=atol, sensealg=sa)
        g = torch.autograd.grad((ys * wt).sum(), [y0r, *params])
        grads[type(sa).__name__] = torch.cat([x.reshape(-1) for x in g])
    ca, da = grads["CheckpointAdjoint"], grads["DirectAD"]
    assert float((ca - da).abs().max()) <= 1e-10 * float(ca.abs().max())

    outputs = _discrete_map(func, tab, y0, list(ts), rtol, atol)
    leaves = [y0, *params]
    fd = []
    with torch.no_grad():
        for leaf in leaves:
            for j in range(leaf.numel()):
                flat = leaf.view(-1)
                orig = float(flat[j])
                eps = 1e-6 * max(1.0, abs(orig))
                flat[j] = orig + eps
                up = float((outputs() * wt).sum())
                flat[j] = orig - eps
                down = float((outputs() * wt).sum())
                flat[j] = orig
                fd.append((up - down) / (2 * eps))
    fd = torch.tensor(fd, dtype=D)
    assert float((ca - fd).abs().max()) <= 1e-6 * float(fd.abs().max()), (ca, fd)


def test_stiff_hint_points_to_rosenbrock():
    # Issue 14 item 5: the "use a stiff solver" advice names a method of this engine, and it works.
    t = torch.tensor([0.0, 1e2], dtype=D)
    y0 = torch.tensor(sp.ROBERTSON.y0, dtype=D)
    with pytest.raises(psg.errors.MaxStepsExceededError, match="method='rodas5p'"):
        psg.odeint(sp.ROBERTSON.f_torch, y0, t, method="dopri5", rtol=1e-6, atol=1e-10,
                   options={"max_num_steps": 100})
    ys = psg.odeint(sp.ROBERTSON.f_torch, y0, t, method="rodas5p", rtol=1e-6, atol=1e-10,
                    options={"max_num_steps": 300})
    assert abs(float(ys[-1].sum()) - 1.0) < 1e-8  # mass is conserved


class StiffForced(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(1e4, dtype=D))
        self.w = torch.nn.Parameter(torch.tensor(3.0, dtype=D))

    def forward(self, t, y):
        return -self.k * (y - torch.cos(self.w * t)) - y ** 3


@pytest.mark.parametrize("sensealg", [psg.InterpolatingAdjoint(), psg.QuadratureAdjoint()])
def test_continuous_adjoints_solve_backward_with_the_stiff_method(sensealg):
    # The backward solve runs rodas5p on the adjoint system with its exact block Jacobian
    # (adjoints/continuous.py: AdjointRHS.linear_system); its gradient converges to the true
    # one, as CheckpointAdjoint's does: at rtol 1e-8 they agree to 1e-6 of the largest
    # component (measured 1e-8) and to 1e-4 per component (dL/dk ~ 5e-8: measured 1.6e-5).
    # dopri5 would need ~1e4 steps per unit time here (|J| = 1e4).
    func = StiffForced()
    t = torch.tensor([0.0, 0.1, 0.2], dtype=D)
    wt = torch.tensor([1.0, -2.0], dtype=D)
    grads = []
    for sa in (psg.CheckpointAdjoint(), sensealg):
        ys, stats = psg.odeint(func, torch.tensor([0.5, 1.5], dtype=D), t, method="rodas5p", rtol=1e-8, atol=1e-10,
                               sensealg=sa, options={"return_stats": True})
        grads.append(torch.stack(torch.autograd.grad((ys[1:] * wt).sum(), [func.k, func.w])))
    assert stats.nfe_backward < 5000
    diff = (grads[0] - grads[1]).abs()
    assert float(diff.max()) < 1e-6 * float(grads[0].abs().max()), grads
    assert float((diff / grads[0].abs()).max()) < 1e-4, grads


def test_random_func_with_checkpoint_adjoint_is_refused_with_advice():
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Dropout(0.1), torch.nn.Linear(8, 2)).to(D)
    y0 = torch.tensor([1.0, 2.0], dtype=D, requires_grad=True)
    t = torch.tensor([0.0, 0.1], dtype=D)
    with pytest.raises(psg.errors.UnsupportedSensitivityError, match="DirectAD"):
        psg.odeint(lambda s, y: -10 * y + 0.1 * net(y), y0, t, method="rodas5p")
    net.eval()  # the advice: no random draws, and the same solve works
    ys = psg.odeint(lambda s, y: -10 * y + 0.1 * net(y), y0, t, method="rodas5p")
    assert torch.autograd.grad(ys.sum(), y0)[0].shape == (2,)


def _batch_problem():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    K = torch.tensor([[-500.0, 0.0], [1.0, -1.0]], dtype=D)

    def f(t, y):  # each row of the batch evolves on its own (an MLP applied per sample)
        return y @ K.T + 0.5 * net(y) + torch.cos(t)

    def jac(t, y):  # per-sample blocks, written in torch operations (so differentiable)
        return torch.func.vmap(torch.func.jacrev(lambda v: v @ K.T + 0.5 * net(v)))(y)

    return f, jac, net, torch.randn(6, 2, dtype=D)


def test_rosenbrock_reads_the_jacobian_strategy(monkeypatch):
    """Issue 14 item 3: with BlockDiagonalJacobian the step factorises B blocks n x n, never
    the dense (B n)^2 matrix (the default does: the check can fail); a user jac= is called and
    gives the autodiff solution to 1e-10."""
    f, jac, _, y0 = _batch_problem()
    t = torch.tensor([0.0, 0.02, 0.05], dtype=D)
    shapes = []
    lu_factor = torch.linalg.lu_factor

    def spy(M, *args, **kwargs):  # records what is factorised, computes nothing else
        shapes.append(tuple(M.shape))
        return lu_factor(M, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "lu_factor", spy)
    kw = dict(method="rodas5p", rtol=1e-6, atol=1e-9)
    dense = psg.odeint(f, y0, t, **kw)
    assert set(shapes) == {(1, 12, 12)}
    shapes.clear()
    block = psg.odeint(f, y0, t, options={"jacobian": psg.BlockDiagonalJacobian()}, **kw)
    assert shapes and set(shapes) == {(6, 2, 2)}
    calls = []

    def counted(t, y):
        calls.append(float(t))
        return jac(t, y)

    user = psg.odeint(f, y0, t, options={"jac": counted}, **kw)
    assert len(calls) >= 1
    assert float((block - dense).abs().max()) < 1e-10 and float((user - dense).abs().max()) < 1e-10


def test_rosenbrock_gradient_with_block_and_user_jacobians_is_exact():
    """The block and user Jacobians carry the graph (dJ/dy, dJ/dtheta): CheckpointAdjoint with
    them equals DirectAD with the default dense J to 1e-10: the same discrete map, whose
    DirectAD gradient matches finite differences in test_gradient_is_exact_for_the_discrete_map."""
    f, jac, net, y0 = _batch_problem()
    t = torch.tensor([0.0, 0.01, 0.02], dtype=D)
    w = net[0].weight

    def loss(options, sensealg):
        ys = psg.odeint(f, y0, t, method="rodas5p", rtol=1e-6, atol=1e-9, options=options, sensealg=sensealg)
        return (ys[1:] ** 2).sum()

    ref = torch.autograd.grad(loss({}, psg.DirectAD()), w)[0]
    for options in ({"jacobian": psg.BlockDiagonalJacobian()}, {"jac": jac}):
        g = torch.autograd.grad(loss(options, psg.CheckpointAdjoint()), w)[0]
        assert float((g - ref).abs().max()) < 1e-10 * float(ref.abs().max()), options
