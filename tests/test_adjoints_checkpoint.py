"""CheckpointAdjoint (ACA/ANODE) is the exact gradient of the discrete forward map.

Oracles: (1) plain autograd through an independent loop that replays the recorded
accepted steps with ``stepping.rk_step`` / ``leapfrog_step`` / ``dense_eval`` (1e-10
relative); (2) the same with a memory budget (bitwise); (3) float64 central finite
differences; (4) for dL/dt, finite differences of fixed-grid solves and the continuous
identities dL/dt_N = a_N . f(t_N, y_N), dL/dt_0 = -a(t_0) . f(t_0, y_0).
"""

import math

import pytest
import torch

import pysciml_grad as psg
from pysciml_grad.backends.torch.forward import forward_solve, parse
from pysciml_grad.backends.torch.stepping import dense_eval, hermite, rk_step
from pysciml_grad.problem import make_problem

from problems import MLP

CASES = [
    ("dopri5", None),
    ("tsit5", None),
    ("bosh3", None),
    ("rk4", None),
    ("rk4", {"step_size": 0.07}),
    ("leapfrog", {"step_size": 0.05}),
]


def setup(seed=0, dtype=torch.float64, device="cpu"):
    torch.manual_seed(seed)
    func = MLP(dim=2, hidden=16, seed=seed, dtype=dtype).to(device)
    y0 = torch.randn(4, 2, dtype=dtype, device=device)
    t = torch.tensor([0.0, 0.3, 0.65, 1.0], dtype=dtype, device=device)
    return func, y0, t


def loss_of(ys):
    return (ys**2).sum() + (ys[1] * ys[2]).sum() + ys[-1].sum()


def flat_grads(func, y0, t, method, options, sensealg, rtol=1e-6, atol=1e-8):
    y0 = y0.clone().requires_grad_(True)
    ys = psg.odeint(func, y0, t, method=method, rtol=rtol, atol=atol, options=options, sensealg=sensealg)
    grads = torch.autograd.grad(loss_of(ys), [y0, *func.parameters()])
    return torch.cat([g.reshape(-1) for g in grads])


def replayed_by_plain_autograd(func, y0, t, method, options, rtol=1e-6, atol=1e-8):
    """Record the accepted steps, then backpropagate through a plain loop over them."""
    problem = make_problem(func, y0, t, method=method, rtol=rtol, atol=atol, options=options, params=None,
                           sensealg=psg.CheckpointAdjoint(), backend="torch")
    meth, opts = parse(problem)
    steps = []
    with torch.no_grad():
        forward_solve(problem, meth, opts, differentiate_control=False,
                      record=lambda s: steps.append((float(s.t), float(s.h), list(s.saves))))
    tab = meth.tableau

    def f(tt, y):
        return func(torch.full((), tt, dtype=y.dtype), y)

    y0 = y0.clone().requires_grad_(True)
    outs = [None] * len(t)
    outs[0] = y0
    y, y_prev = y0, None
    for n, (tn, h, saves) in enumerate(steps):
        t_next = steps[n + 1][0] if n + 1 < len(steps) else float(t[-1])
        if tab is None:
            ks = [f(tn, y)]
            y_next = y + h * ks[0] if y_prev is None else y_prev + 2 * h * ks[0]
        else:
            y_next, ks, _ = rk_step(f, tab, tn, y, h)
        for i, theta in saves:
            if theta == 1.0:
                outs[i] = y_next
            elif tab is not None and meth.adaptive:
                f_next = ks[-1] if tab.fsal else f(t_next, y_next)
                outs[i] = dense_eval(tab, theta, h, y, y_next, ks, lambda: f_next)
            else:
                outs[i] = hermite(theta, h, y, y_next, ks[0], f(t_next, y_next))
        y_prev, y = y, y_next
    grads = torch.autograd.grad(loss_of(torch.stack(outs)), [y0, *func.parameters()])
    return torch.cat([g.reshape(-1) for g in grads]), len(steps)


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("method, options", CASES)
def test_equals_autodiff_of_the_accepted_steps(method, options):
    func, y0, t = setup()
    exact, n_steps = replayed_by_plain_autograd(func, y0, t, method, options)
    assert n_steps >= 3
    got = flat_grads(func, y0, t, method, options, psg.CheckpointAdjoint())
    assert rel(got, exact) < 1e-10


@pytest.mark.parametrize("method, options", CASES)
@pytest.mark.parametrize("budget", [1, 2, 3, 7])
def test_memory_budget_gives_the_same_gradient(method, options, budget):
    func, y0, t = setup(seed=1)
    full = flat_grads(func, y0, t, method, options, psg.CheckpointAdjoint())
    y0r = y0.clone().requires_grad_(True)
    ys, stats = psg.odeint(func, y0r, t, method=method, rtol=1e-6, atol=1e-8,
                           options=dict(options or {}, return_stats=True),
                           sensealg=psg.CheckpointAdjoint(max_checkpoints=budget))
    grads = torch.autograd.grad(loss_of(ys), [y0r, *func.parameters()])
    bounded = torch.cat([g.reshape(-1) for g in grads])
    assert torch.equal(bounded, full)  # recomputed states are bitwise the forward ones
    assert stats.extra["checkpoint_peak_states"] <= budget
    if budget < stats.n_steps:
        assert stats.extra["checkpoint_recomputed_steps"] > 0
        assert stats.nfe_backward > stats.nfe


def test_budget_trades_memory_for_recomputation():
    func, y0, t = setup()
    recomputed = []
    for budget in (None, 16, 4, 2):
        y0r = y0.clone().requires_grad_(True)
        ys, stats = psg.odeint(func, y0r, t, method="rk4", options={"step_size": 0.01, "return_stats": True},
                               sensealg=psg.CheckpointAdjoint(max_checkpoints=budget))
        loss_of(ys).backward()
        assert stats.n_steps == 100
        recomputed.append(stats.extra["checkpoint_recomputed_steps"])
    assert recomputed[0] == 0
    assert recomputed[1] < recomputed[2] < recomputed[3]
    assert recomputed[1] <= 3 * 100  # binomial: a few sweeps, not quadratic


@pytest.mark.parametrize("method, options", [("dopri5", None), ("rk4", {"step_size": 0.05}), ("leapfrog", {"step_size": 0.02})])
def test_matches_central_finite_differences(method, options):
    func, y0, t = setup(seed=2)
    rtol, atol = 1e-10, 1e-12
    got = flat_grads(func, y0, t, method, options, psg.CheckpointAdjoint(max_checkpoints=3), rtol, atol)
    params = list(func.parameters())
    x0 = torch.cat([y0.reshape(-1)] + [p.detach().reshape(-1) for p in params])
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)

        def value(x):
            with torch.no_grad():
                i = y0.numel()
                for p in params:
                    p.copy_(x[i : i + p.numel()].view_as(p))
                    i += p.numel()
                ys = psg.odeint(func, x[: y0.numel()].view_as(y0), t, method=method, rtol=rtol, atol=atol,
                                options=options, sensealg=psg.CheckpointAdjoint())
                return loss_of(ys)

        eps = 1e-6
        fd = (value(x0 + eps * v) - value(x0 - eps * v)) / (2 * eps)
        value(x0)  # restore the parameters
        assert abs(float(got @ v) - float(fd)) < 1e-6 * max(1.0, abs(float(fd)))


def nonautonomous():
    def f(t, y):
        return torch.stack([y[..., 1] * torch.cos(t), -y[..., 0] + 0.3 * torch.sin(2 * t) * y[..., 1]], dim=-1)

    return f, torch.tensor([1.0, 0.5], dtype=torch.float64)


def time_loss(ys):
    return (ys**2).sum() + (ys[1] * torch.tensor([1.0, 2.0], dtype=ys.dtype)).sum()


@pytest.mark.parametrize("method, options", [("rk4", None), ("rk4", {"step_size": 0.07}), ("leapfrog", {"step_size": 0.011}), ("euler", None)])
def test_time_gradient_matches_finite_differences_on_fixed_grids(method, options):
    f, y0 = nonautonomous()
    t0 = torch.tensor([0.0, 0.3, 0.7, 1.2], dtype=torch.float64)

    def value(tt, sensealg=psg.CheckpointAdjoint()):
        return time_loss(psg.odeint(f, y0, tt, method=method, options=options, sensealg=sensealg))

    for sensealg in (psg.CheckpointAdjoint(), psg.CheckpointAdjoint(max_checkpoints=2)):
        t = t0.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(value(t, sensealg), t)
        eps = 1e-6
        for i in range(len(t0)):
            e = torch.zeros_like(t0)
            e[i] = eps
            fd = float((value(t0 + e) - value(t0 - e)) / (2 * eps))
            assert abs(float(g[i]) - fd) < 1e-7 * max(1.0, abs(fd)), (i, float(g[i]), fd)


def test_time_gradient_on_grid_matches_directad():
    # On the grid t with a fixed-step method the discrete map is the same for both.
    f, y0 = nonautonomous()
    t = torch.tensor([0.0, 0.3, 0.7, 1.2], dtype=torch.float64)
    grads = []
    for sensealg in (psg.DirectAD(), psg.CheckpointAdjoint()):
        tt = t.clone().requires_grad_(True)
        grads.append(torch.autograd.grad(time_loss(psg.odeint(f, y0, tt, method="rk4", sensealg=sensealg)), tt)[0])
    assert torch.allclose(grads[0], grads[1], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
def test_time_gradient_adaptive_matches_continuous_identities(method):
    f, y0 = nonautonomous()
    t = torch.tensor([0.0, 0.3, 0.7, 1.2], dtype=torch.float64, requires_grad=True)
    y0r = y0.clone().requires_grad_(True)
    ys = psg.odeint(f, y0r, t, method=method, rtol=1e-11, atol=1e-13, sensealg=psg.CheckpointAdjoint())
    ys.retain_grad()
    loss = time_loss(ys)
    g_t, g_y0, g_ys = torch.autograd.grad(loss, [t, y0r, ys])
    with torch.no_grad():
        fs = torch.stack([f(t[i], ys[i]) for i in range(len(t))])
    # Interior save times and the end: moving t_i moves only where y is sampled.
    for i in range(1, len(t)):
        assert abs(float(g_t[i]) - float(g_ys[i] @ fs[i])) < 1e-7
    # Start: dL/dt_0 = -a(t_0) . f(t_0, y_0), with a(t_0) = dL/dy0 minus the direct term.
    a0 = g_y0 - g_ys[0]
    assert abs(float(g_t[0]) + float(a0 @ fs[0])) < 1e-7


@pytest.mark.parametrize("budget", [None, 2])
def test_double_backward_matches_finite_differences_and_directad(budget):
    func, y0, t = setup(seed=3)
    v = torch.randn(y0.shape, dtype=y0.dtype, generator=torch.Generator().manual_seed(1))

    def grad_y0(y, sensealg, create_graph):
        y = y.clone().requires_grad_(True)
        ys = psg.odeint(func, y, t, method="rk4", options={"step_size": 0.1}, sensealg=sensealg)
        (g,) = torch.autograd.grad((ys**3).sum(), y, create_graph=create_graph)
        return g, y

    sensealg = psg.CheckpointAdjoint(max_checkpoints=budget)
    g, y = grad_y0(y0, sensealg, True)
    assert g.requires_grad
    hvp = torch.autograd.grad((g * v).sum(), [y, *func.parameters()])
    g_direct, y_direct = grad_y0(y0, psg.DirectAD(), True)
    hvp_direct = torch.autograd.grad((g_direct * v).sum(), [y_direct, *func.parameters()])
    for a, b in zip(hvp, hvp_direct):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    eps = 1e-6
    fd = (grad_y0(y0 + eps * v, sensealg, False)[0] - grad_y0(y0 - eps * v, sensealg, False)[0]) / (2 * eps)
    assert float((hvp[0] - fd).abs().max()) < 1e-6 * float(fd.abs().max())


def test_params_argument_and_decreasing_time():
    # A closed-over tensor passed through params=, integration backwards in time.
    k = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)
    ys = psg.odeint(lambda tt, y: -k * y, y0, t, rtol=1e-10, atol=1e-12, params=[k],
                    sensealg=psg.CheckpointAdjoint(max_checkpoints=4))
    loss = ys[-1].sum()
    g_k, g_y0 = torch.autograd.grad(loss, [k, y0])
    # y(0) = y0 exp(2k): dL/dk = 2 sum(y0) exp(2k), dL/dy0 = exp(2k).
    expected_k = 2 * float(y0.detach().sum()) * float(torch.exp(2 * k.detach()))
    assert abs(float(g_k) - expected_k) < 1e-8 * abs(expected_k)
    assert torch.allclose(g_y0, torch.exp(2 * k).detach().expand(2), rtol=1e-8)


def test_float32_and_any_shape(device):
    func = MLP(dim=3, hidden=8, seed=0, dtype=torch.float32).to(device)
    y0 = torch.randn(2, 5, 3, device=device, requires_grad=True)
    t = torch.linspace(0, 1, 3, device=device)
    ys = psg.odeint(func, y0, t, rtol=1e-5, atol=1e-6, sensealg=psg.CheckpointAdjoint(max_checkpoints=3))
    g, *gp = torch.autograd.grad(ys.square().sum(), [y0, *func.parameters()])
    assert ys.shape == (3, 2, 5, 3) and g.dtype == torch.float32 and g.device == y0.device
    y0d = y0.detach().double().requires_grad_(True)
    func64 = MLP(dim=3, hidden=8, seed=0, dtype=torch.float64).to(device)
    ys64 = psg.odeint(func64, y0d, t.double(), rtol=1e-5, atol=1e-6, sensealg=psg.CheckpointAdjoint())
    (g64,) = torch.autograd.grad(ys64.square().sum(), y0d)
    assert float((g.double() - g64).abs().max()) < 1e-3 * float(g64.abs().max())


def test_no_gradient_needed_runs_without_recording():
    func, y0, t = setup()
    with torch.no_grad():
        ys, stats = psg.odeint(func, y0, t, options={"return_stats": True}, sensealg=psg.CheckpointAdjoint())
    assert not ys.requires_grad and stats.nfe_backward == 0


def test_invalid_budget_is_rejected():
    func, y0, t = setup()
    for bad in (0, -3, 2.5, True):
        with pytest.raises(psg.errors.InvalidProblemError, match="max_checkpoints"):
            psg.odeint(func, y0.requires_grad_(True), t, sensealg=psg.CheckpointAdjoint(max_checkpoints=bad))


@pytest.mark.parametrize("method, options", [
    ("rk4", {"step_size": 0.1, "perturb": True}),
    ("dopri5", {"jump_t": [0.5]}),
    ("bosh3", {"jump_t": [0.5]}),
])
@pytest.mark.parametrize("budget", [None, 2])
def test_replay_keeps_the_one_ulp_stage_shifts_of_perturb_and_jump_t(method, options, budget):
    # f jumps at t = 0.5: the forward evaluates the stage at a step's end one ulp before it
    # (and restarts one ulp after it). A replay at t = 0.5 itself sees the other branch, so
    # the gradient was of another map (dL/db off by 5 %). Closed form: y' = a y on [0, .5),
    # 3 b y after; L = sum_i sum(y(t_i)), t = 0, .5, 1.
    D = torch.float64
    a = torch.tensor(-0.7, dtype=D, requires_grad=True)
    b = torch.tensor(0.4, dtype=D, requires_grad=True)
    func = lambda t, y: torch.where(t < 0.5, a * y, 3.0 * b * y)
    y0 = torch.tensor([1.0, 2.0], dtype=D)
    t = torch.linspace(0, 1, 3, dtype=D)
    grads = {}
    for sa in (psg.DirectAD(), psg.CheckpointAdjoint(max_checkpoints=budget)):
        ys = psg.odeint(func, y0, t, method=method, options=options, sensealg=sa, rtol=1e-9, atol=1e-11)
        grads[type(sa).__name__] = torch.stack(torch.autograd.grad(ys.sum(), [a, b]))
    assert torch.allclose(grads["CheckpointAdjoint"], grads["DirectAD"], rtol=1e-12, atol=1e-12)
    e1, e2 = math.exp(0.5 * a.item()), math.exp(0.5 * a.item() + 1.5 * b.item())
    exact = torch.tensor([3 * 0.5 * (e1 + e2), 3 * 1.5 * e2], dtype=D)
    assert torch.allclose(grads["DirectAD"], exact, rtol=1e-4)
