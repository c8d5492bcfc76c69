"""Serving many save times per step with one vectorised dense-output evaluation.

Oracles: the per-save evaluator ``dense_eval`` (the interpolant's definition) and the
solve itself with one save at a time — save times never change the accepted steps, so
``odeint(t0, s, t_end)[1]`` is the per-save value of the save s, and for a loss linear in
the saves the discrete gradients (DirectAD, CheckpointAdjoint) are exact sums of the
per-save gradients.
"""

import pytest
import torch

import pysciml_grad as psg
from pysciml_grad.backends.torch.stepping import dense_eval, dense_eval_many
from pysciml_grad.backends.torch.tableaus import TABLEAUS

F64 = torch.float64


@pytest.mark.parametrize("name", ["dopri5", "tsit5", "dopri8", "bosh3", "rk4", "heun_euler"])
@pytest.mark.parametrize("tensor_times", [False, True])
def test_dense_eval_many_equals_dense_eval_at_each_theta(name, tensor_times):
    torch.manual_seed(0)
    tab = TABLEAUS[name]
    y, y_next, f_next = (torch.randn(3, 2, dtype=F64) for _ in range(3))
    ks = [torch.randn(3, 2, dtype=F64) for _ in tab.c]
    thetas = [0.05, 0.37, 0.5, 0.93]
    h = 0.3
    if tensor_times:
        thetas = [torch.tensor(x, dtype=F64, requires_grad=True) for x in thetas]
        h = torch.tensor(h, dtype=F64, requires_grad=True)
    many = dense_eval_many(tab, thetas, h, y, y_next, ks, lambda: f_next)
    one = torch.stack([dense_eval(tab, x, h, y, y_next, ks, lambda: f_next) for x in thetas])
    assert many.shape == (4, 3, 2)
    assert torch.allclose(many, one, rtol=0, atol=1e-13)
    if tensor_times:  # d/dtheta and d/dh through the vectorised weights
        w = torch.randn(4, 3, 2, dtype=F64)
        g_many = torch.autograd.grad((many * w).sum(), [*thetas, h])
        g_one = torch.autograd.grad((one * w).sum(), [*thetas, h])
        for a, b in zip(g_many, g_one):
            assert torch.allclose(a, b, rtol=0, atol=1e-12)


def _problem():
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()

    def f(t, y):
        return net(y) + 0.2 * torch.sin(t)

    y0 = torch.tensor([[0.5, -0.3], [1.0, 0.4]], dtype=F64, requires_grad=True)
    return f, net, y0


# (method, options): adaptive with its own dense output, adaptive Hermite, fixed step
# (Hermite between grid points), leapfrog
CASES = [("dopri5", None), ("bosh3", None), ("rk4", {"step_size": 0.25}), ("leapfrog", {"step_size": 0.25})]


@pytest.mark.parametrize("method, options", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("sensealg", [psg.DirectAD(), psg.CheckpointAdjoint()], ids=lambda s: type(s).__name__)
def test_many_saves_equal_one_save_at_a_time(method, options, sensealg):
    f, net, y0 = _problem()
    ps = list(net.parameters())
    t = torch.tensor([0.0, 0.03, 0.11, 0.12, 0.4, 0.41, 0.77, 0.9, 1.3, 1.5], dtype=F64)
    kw = dict(method=method, options=options, rtol=1e-8, atol=1e-10, sensealg=sensealg)
    ys = psg.odeint(f, y0, t, **kw)
    weights = torch.linspace(0.5, 2.0, ys.numel(), dtype=F64).view(ys.shape)
    g = torch.autograd.grad((ys * weights).sum(), [y0, *ps])
    g_ref = [torch.zeros_like(x) for x in g]
    for i in range(1, len(t) - 1):
        one = psg.odeint(f, y0, t[[0, i, -1]], **kw)
        assert torch.allclose(ys[i], one[1], rtol=0, atol=1e-12), (i, (ys[i] - one[1]).abs().max())
        for acc, gi in zip(g_ref, torch.autograd.grad((one[1] * weights[i]).sum(), [y0, *ps])):
            acc += gi
    last = psg.odeint(f, y0, t[[0, -1]], **kw)[-1]
    for acc, gi in zip(g_ref, torch.autograd.grad((last * weights[-1]).sum() + (y0 * weights[0]).sum(), [y0, *ps])):
        acc += gi
    for a, b in zip(g, g_ref):
        assert torch.allclose(a, b, rtol=0, atol=1e-12), (a - b).abs().max()


@pytest.mark.parametrize("sensealg", [psg.BacksolveAdjoint(), psg.InterpolatingAdjoint(), psg.QuadratureAdjoint()],
                         ids=lambda s: type(s).__name__)
def test_many_saves_continuous_adjoints(sensealg):
    # Forward values are served by the same code; the gradient is the continuous adjoint's,
    # so it is checked against the discrete one at a tight tolerance.
    f, net, y0 = _problem()
    ps = list(net.parameters())
    t = torch.linspace(0, 1.5, 40, dtype=F64)
    ys = psg.odeint(f, y0, t, rtol=1e-10, atol=1e-12, sensealg=sensealg)
    ref = psg.odeint(f, y0, t, rtol=1e-10, atol=1e-12, sensealg=psg.DirectAD())
    assert torch.equal(ys.detach(), ref.detach())
    g = torch.autograd.grad(ys.square().sum(), [y0, *ps])
    g_ref = torch.autograd.grad(ref.square().sum(), [y0, *ps])
    for a, b in zip(g, g_ref):
        assert torch.allclose(a, b, rtol=0, atol=1e-6), (a - b).abs().max()


def _graph_size(out: torch.Tensor) -> int:
    seen, todo = set(), [out.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        todo.extend(nxt for nxt, _ in node.next_functions)
    return len(seen)


def test_saves_of_one_step_are_one_evaluation_in_the_graph():
    # 2000 saves in ~10 steps: one combination of the stages per save would add ~6 autograd
    # nodes per save (>12000); the vectorised serving adds a handful per step and one view
    # per save.
    f, net, y0 = _problem()
    t = torch.linspace(0, 1.5, 2000, dtype=F64)
    ys, stats = psg.odeint(f, y0, t, rtol=1e-5, atol=1e-7, sensealg=psg.DirectAD(), options={"return_stats": True})
    assert stats.n_steps < 40
    assert _graph_size(ys) < 2000 + 200 * stats.n_steps
