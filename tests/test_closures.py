"""Issue 8 §1: every tensor func reads gets its gradient, under every sensealg.

The oracle is DirectAD (plain autograd through the solver loop, which sees closures
like any other op) and, for the non-leaf case, float64 finite differences. On 3b3ad7f
every adjoint returned ``grad None`` for the closed-over tensors.
"""

import functools

import pytest
import torch

import pysciml_grad as psg
from pysciml_grad.errors import PySciMLGradError

from adjoint_cases import SENSEALGS

ADJOINTS = {k: v for k, v in SENSEALGS.items() if k != "DirectAD"}
T = torch.linspace(0.0, 1.0, 4, dtype=torch.float64)


def mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp()

    def dynamics(self, t, y):
        return torch.tanh(self.net(y))


class Scaled(torch.nn.Module):
    """A module multiplying by a tensor it does not own."""

    def __init__(self, scale):
        super().__init__()
        torch.manual_seed(2)
        self.lin = torch.nn.Linear(2, 2).double()
        self.scale = scale  # a plain attribute: not a parameter of this module

    def forward(self, t, y):
        return self.scale * torch.tanh(self.lin(y))


def with_weight(t, y, W):
    return torch.tanh(y @ W)


def case(name):
    """(func, tensors whose gradient is checked)."""
    if name == "lambda":
        net = mlp()
        return (lambda t, y: torch.tanh(net(y))), list(net.parameters())
    if name == "bound method":
        m = Model()
        return m.dynamics, list(m.parameters())
    if name == "partial":
        W = (0.5 * torch.randn(2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))).requires_grad_()
        return functools.partial(with_weight, W=W), [W]
    if name == "outside tensor":
        s = torch.tensor([0.7, -1.2], dtype=torch.float64, requires_grad=True)
        m = Scaled(s)
        return m, [s, *m.parameters()]
    if name == "non-leaf":
        base = torch.tensor([[0.3, -0.4], [0.2, 0.1]], dtype=torch.float64, requires_grad=True)
        W = base * 2  # computed outside func; the gradient must reach base
        return (lambda t, y: torch.tanh(y @ W) + torch.sin(t) * W[0]), [base]
    raise KeyError(name)


CASES = ["lambda", "bound method", "partial", "outside tensor", "non-leaf"]


def grads(name, sensealg, y0_grad, **kw):
    func, wrt = case(name)
    y0 = torch.tensor([[0.5, -0.3], [1.0, 0.2]], dtype=torch.float64, requires_grad=y0_grad)
    ys = psg.odeint(func, y0, T, sensealg=sensealg, **kw)
    loss = (ys**2).sum() + ys[-1, 0, 1]
    inputs = wrt + ([y0] if y0_grad else [])
    return torch.autograd.grad(loss, inputs, allow_unused=True)


@pytest.mark.parametrize("y0_grad", [False, True], ids=["y0-const", "y0-grad"])
@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("sa", list(ADJOINTS))
def test_closed_over_tensors_get_directad_gradients(name, sa, y0_grad):
    kw = dict(method="dopri5", rtol=1e-10, atol=1e-12)
    ref = grads(name, psg.DirectAD(), y0_grad, **kw)
    got = grads(name, ADJOINTS[sa], y0_grad, **kw)
    for g, r in zip(got, ref):
        assert g is not None, "a tensor func reads got no gradient"
        # Continuous adjoints agree to solver accuracy, discrete ones to the controller's noise.
        assert torch.allclose(g, r, rtol=1e-6, atol=1e-8), (g, r)


@pytest.mark.parametrize("name", CASES)
def test_checkpoint_equals_directad_exactly_on_a_fixed_grid(name):
    kw = dict(method="rk4", options={"step_size": 0.05})
    ref = grads(name, psg.DirectAD(), True, **kw)
    for sa in (psg.CheckpointAdjoint(), psg.CheckpointAdjoint(max_checkpoints=3)):
        for g, r in zip(grads(name, sa, True, **kw), ref):
            assert torch.allclose(g, r, rtol=1e-12, atol=1e-14)


def test_non_leaf_gradient_matches_finite_differences():
    base = torch.tensor([[0.3, -0.4], [0.2, 0.1]], dtype=torch.float64)
    y0 = torch.tensor([0.5, -0.3], dtype=torch.float64)

    def loss_of(b, sensealg=psg.CheckpointAdjoint()):
        W = b * 2
        ys = psg.odeint(lambda t, y: torch.tanh(y @ W), y0, T, rtol=1e-11, atol=1e-13, sensealg=sensealg)
        return (ys**2).sum()

    b = base.clone().requires_grad_()
    for sa in ADJOINTS.values():
        (g,) = torch.autograd.grad(loss_of(b, sa), [b])
        eps = 1e-6
        fd = torch.zeros_like(base)
        for idx in [(0, 0), (0, 1), (1, 0), (1, 1)]:
            e = torch.zeros_like(base)
            e[idx] = eps
            with torch.no_grad():
                fd[idx] = (loss_of(base + e) - loss_of(base - e)) / (2 * eps)
        assert torch.allclose(g, fd, rtol=1e-6, atol=1e-8), (sa, g, fd)


def test_consumed_params_generator_still_trains():
    """``ps = net.parameters()`` reused: a generator yields only once; the second call
    must still reach the parameters (they are discovered from func)."""
    net = mlp()
    ps = net.parameters()
    y0 = torch.tensor([0.5, -0.3], dtype=torch.float64)
    for _ in range(2):
        ys = psg.odeint(lambda t, y: net(y), y0, T, params=ps)
        g = torch.autograd.grad(ys.sum(), list(net.parameters()), allow_unused=True)
        assert all(x is not None and bool((x != 0).any()) for x in g)


def test_tensor_created_inside_func_is_not_a_param():
    net = mlp()

    def func(t, y):
        gate = torch.ones(2, dtype=torch.float64, requires_grad=True)  # recreated every call
        return gate * torch.tanh(net(y))

    y0 = torch.tensor([0.5, -0.3], dtype=torch.float64)
    ref = torch.autograd.grad(psg.odeint(func, y0, T, sensealg=psg.DirectAD(), method="rk4",
                                         options={"step_size": 0.1}).sum(), list(net.parameters()))
    for sa in ADJOINTS.values():
        ys = psg.odeint(func, y0, T, sensealg=sa, method="rk4", options={"step_size": 0.1})
        got = torch.autograd.grad(ys.sum(), list(net.parameters()))
        for g, r in zip(got, ref):
            assert torch.allclose(g, r, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("sa", list(ADJOINTS))
def test_tensor_read_only_later_raises_naming_its_shape(sa):
    W_late = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([0.5, -0.3], dtype=torch.float64, requires_grad=True)

    def func(t, y):
        return -y if float(t) < 0.5 else y @ W_late

    ys = psg.odeint(func, y0, T, sensealg=ADJOINTS[sa])
    with pytest.raises(PySciMLGradError, match=r"shape \(2, 2\).*params="):
        ys.sum().backward()


@pytest.fixture
def fresh_audits(monkeypatch):
    """Forget which funcs were audited: the audit is per code object, shared across params."""
    import weakref

    from pysciml_grad.backends.torch import discover

    monkeypatch.setattr(discover, "_audits", weakref.WeakKeyDictionary())


@pytest.mark.parametrize("sa", list(ADJOINTS))
def test_tensor_read_only_in_a_middle_window_raises_in_the_first_backward(sa, fresh_audits):
    # Read neither at t0 nor in the last step: only a check of every replayed graph sees it.
    W_mid = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([0.5, -0.3], dtype=torch.float64, requires_grad=True)

    def func(t, y):
        return y @ W_mid if 0.3 < float(t) < 0.6 else -y

    ys = psg.odeint(func, y0, T, sensealg=ADJOINTS[sa])
    with pytest.raises(PySciMLGradError, match=r"shape \(2, 2\).*params="):
        ys.sum().backward()


def test_middle_window_tensor_passed_in_params_gets_its_gradient():
    W_mid = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([0.5, -0.3], dtype=torch.float64)
    func = lambda t, y: y @ W_mid if 0.3 < float(t) < 0.6 else -y
    grads = {}
    for name, sa in SENSEALGS.items():
        ys = psg.odeint(func, y0, T, sensealg=sa, params=[W_mid], method="rk4", options={"step_size": 0.05})
        grads[name] = torch.autograd.grad(ys.sum(), W_mid)[0]
    for name in ("CheckpointAdjoint",):
        assert torch.allclose(grads[name], grads["DirectAD"], rtol=1e-10, atol=1e-12)
    assert grads["DirectAD"].abs().max() > 0.1


def test_no_extra_rhs_evaluation():
    """Discovery reuses the first evaluation: the forward NFE is what it was."""
    net = mlp()
    calls = [0]

    def func(t, y):
        calls[0] += 1
        return torch.tanh(net(y))

    y0 = torch.tensor([0.5, -0.3], dtype=torch.float64)
    _, stats = psg.odeint(func, y0, T, options={"return_stats": True})
    assert calls[0] == stats.nfe
    with torch.no_grad():
        _, stats_ng = psg.odeint(func, y0, T, options={"return_stats": True})
    assert stats.nfe == stats_ng.nfe


def test_params_given_a_module_says_parameters():
    net = mlp()
    y0 = torch.tensor([0.5, -0.3], dtype=torch.float64)
    with pytest.raises(psg.errors.InvalidProblemError, match=r"net\.parameters\(\)"):
        psg.odeint(lambda t, y: net(y), y0, T, params=net)


def test_float32_tensor_in_params_is_named_not_func():
    net = mlp()
    y0 = torch.tensor([0.5, -0.3], dtype=torch.float64)
    extra = torch.ones(3, requires_grad=True)  # float32
    with pytest.raises(psg.errors.DTypeMismatchError, match=r"params\[1\] \(shape \(3,\)\)") as err:
        psg.odeint(lambda t, y: net(y), y0, T, params=[net[0].weight, extra])
    assert "func.to" not in str(err.value)


def test_every_graph_is_audited_in_the_first_two_backward_passes_only(fresh_audits):
    from pysciml_grad.backends.torch.discover import FULL_AUDITS, audit_everything

    func = lambda t, y: -y
    assert [audit_everything(func) for _ in range(FULL_AUDITS + 2)] == [True] * FULL_AUDITS + [False, False]


def test_a_new_lambda_per_iteration_is_audited_only_twice(fresh_audits):
    # The training-loop habit `odeint(lambda t, y: net(y), ...)` makes a new func object per
    # call; the audit is keyed on its code, so only the first two backward passes pay for it.
    from pysciml_grad.backends.torch.discover import audit_everything

    net = mlp()
    seen = [audit_everything(lambda t, y: net(y)) for _ in range(4)]
    assert seen == [True, True, False, False]



def test_the_watch_finds_every_tensor_pytree_finds_in_an_ops_arguments():
    # discover._tensors replaces pytree's flatten in the watch mode (4-5x cheaper per op);
    # it must see the same tensors in every shape an op's (args, kwargs) or result takes.
    from collections import OrderedDict, namedtuple

    from torch.utils._pytree import tree_flatten

    from pysciml_grad.backends.torch.discover import _tensors

    a, b, c, d = (torch.randn(2) for _ in range(4))
    Pair = namedtuple("Pair", "x y")
    cases = [
        ((a, 2.0), {}),
        (([a, b], 0), {"out": c}),
        ((a,), {"other": b, "alpha": 2}),
        (((a, [b, (c,)]),), {"dim": 0}),
        ((Pair(a, b), slice(0, 1), Ellipsis, None), {"dtype": torch.float64, "device": torch.device("cpu")}),
        ((OrderedDict(k=a), {"n": [b, {"m": c}]}), {"memory_format": torch.contiguous_format}),
        ((torch.Size([2, 3]), d), {}),
    ]
    for args in cases:
        expected = [x for x in tree_flatten(args)[0] if isinstance(x, torch.Tensor)]
        found = _tensors(args)
        assert [id(x) for x in found] == [id(x) for x in expected], args
