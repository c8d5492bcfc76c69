"""Issue 8 §6: adjoints free their forward record after backward, and torch.func.

On 3b3ad7f the record (checkpoints, stored stages) lived as long as the output or the
loss did: ``history.append(loss)`` grew by the whole record every iteration. Now the
record goes when autograd releases the graph (after a backward without
``retain_graph=True``).
"""

import weakref

import pytest
import torch
from torch.func import functional_call, grad, vmap

import pysciml_grad as psg
from pysciml_grad.errors import UnsupportedSensitivityError

from adjoint_cases import SENSEALGS

ADJOINTS = {k: v for k, v in SENSEALGS.items() if k != "DirectAD"}
T = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)


def setup():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).double()
    y0 = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    return net, y0


def recorded_tensors(strategy):
    """Weak references to tensors the forward record holds (found through its attributes)."""
    refs = []
    store = getattr(strategy, "store", None)
    if store is not None:
        refs += [weakref.ref(x) for st in store.states.values() for x in st if x is not None]
    traj = getattr(strategy, "trajectory", None)
    if traj is not None:
        refs += [weakref.ref(x) for st in traj.steps for x in (st.y, *st.ks)]
        if traj.store is not None:
            refs += [weakref.ref(x) for st in traj.store.states.values() for x in st if x is not None]
    return refs


@pytest.mark.parametrize("sa", list(ADJOINTS))
def test_record_is_freed_after_backward_while_the_loss_lives(sa):
    net, y0 = setup()
    history = []
    for _ in range(2):
        ys = psg.odeint(lambda t, y: net(y), y0, T, sensealg=ADJOINTS[sa], rtol=1e-5, atol=1e-7)
        node = ys.grad_fn
        refs = recorded_tensors(node.strategy)
        before = node.strategy.record_nbytes()
        loss = ys.square().sum()
        loss.backward()
        history.append(loss)  # keeps the graph, hence the autograd node, alive
        assert node.strategy.record_nbytes() == 0
        assert all(r() is None for r in refs)
        if sa != "BacksolveAdjoint":  # backsolve keeps only the output (an autograd saved tensor)
            assert before > 0 and refs


@pytest.mark.parametrize("sa", list(ADJOINTS))
def test_retain_graph_keeps_the_record_for_a_second_backward(sa):
    net, y0 = setup()
    ys = psg.odeint(lambda t, y: net(y), y0, T, sensealg=ADJOINTS[sa], rtol=1e-5, atol=1e-7)
    loss = ys.square().sum()
    g1 = torch.autograd.grad(loss, [y0, *net.parameters()], retain_graph=True)
    g2 = torch.autograd.grad(loss, [y0, *net.parameters()])
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)
    assert ys.grad_fn.strategy.record_nbytes() == 0
    with pytest.raises(RuntimeError, match="second time"):
        torch.autograd.grad(loss, [y0])


def _loss(params, net, y0, sensealg):
    ys = psg.odeint(lambda t, y: functional_call(net, params, (y,)), y0, T, sensealg=sensealg)
    return ys.square().sum()


def test_directad_works_under_torch_func_grad():
    net, y0 = setup()
    params = {k: v.detach() for k, v in net.named_parameters()}
    g = grad(_loss)(params, net, y0.detach(), psg.DirectAD())
    ref = torch.autograd.grad(_loss(dict(net.named_parameters()), net, y0.detach(), psg.DirectAD()), list(net.parameters()))
    for (k, a), b in zip(g.items(), ref):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14), k


@pytest.mark.parametrize("sa", list(ADJOINTS))
def test_adjoints_under_torch_func_say_which_sensealg_works(sa):
    net, y0 = setup()
    params = {k: v.detach() for k, v in net.named_parameters()}
    with pytest.raises(UnsupportedSensitivityError, match=r"torch\.func.*DirectAD"):
        grad(_loss)(params, net, y0.detach(), ADJOINTS[sa])


def test_vmap_is_refused_with_the_batching_hint():
    net, y0 = setup()
    with pytest.raises(UnsupportedSensitivityError, match="vmap.*batch"):
        vmap(lambda y: psg.odeint(lambda t, s: net(s), y, T, sensealg=psg.DirectAD()).sum())(y0.detach())
