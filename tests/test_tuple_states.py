"""Structured states (tuples, lists, dicts of tensors) in psg.odeint, for every method and sensealg.

Oracles: the same problem solved as one concatenated tensor (identical arithmetic, so
forward and gradients agree to roundoff), the matrix exponential for a linear system,
and DirectAD as the reference gradient of an FFJORD-style (z, logp) flow.
"""

import pytest
import torch

import pysciml_grad as psg
from pysciml_grad.errors import InvalidStateError, RHSOutputError

D = torch.float64
A = torch.tensor([[-0.3, 1.0, 0.2], [-1.0, -0.2, 0.1], [0.0, 0.4, -0.5]], dtype=D)


class Split(torch.nn.Module):
    """dy/dt = W y on a 3-vector, seen as the pair (y[:1] as 0-d, y[1:]) ."""

    def __init__(self):
        super().__init__()
        self.W = torch.nn.Parameter(A.clone())

    def flat(self, t, y):
        return self.W @ y

    def forward(self, t, state):
        a, b = state
        y = torch.cat([a.reshape(1), b])
        dy = self.W @ y
        return dy[0], dy[1:]


SENSEALGS = {
    "direct": psg.DirectAD(),
    "checkpoint": psg.CheckpointAdjoint(),
    "backsolve": psg.BacksolveAdjoint(),
    "interpolating": psg.InterpolatingAdjoint(),
    "quadrature": psg.QuadratureAdjoint(),
}
METHODS = {"dopri5": {}, "tsit5": {}, "bosh3": {}, "dopri8": {}, "rk4": {"step_size": 0.05},
           "euler": {"step_size": 0.01}, "leapfrog": {"step_size": 0.01}}


@pytest.mark.filterwarnings("ignore::pysciml_grad.errors.GradientAccuracyWarning")
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("sensealg", list(SENSEALGS))
def test_tuple_state_matches_flat_state(method, sensealg):
    torch.manual_seed(0)
    f = Split()
    y0 = torch.tensor([1.0, 0.5, -0.2], dtype=D, requires_grad=True)
    t = torch.linspace(0.0, 1.0, 5, dtype=D)
    kw = dict(method=method, options=METHODS[method], sensealg=SENSEALGS[sensealg])
    ys = psg.odeint(f.flat, y0, t, params=[f.W], **kw)
    w = torch.randn_like(ys)
    g_flat = torch.autograd.grad((ys * w).sum(), (y0, f.W))
    a, b = psg.odeint(f, (y0[0], y0[1:]), t, **kw)
    assert a.shape == (5,) and b.shape == (5, 2)
    torch.testing.assert_close(torch.cat([a[:, None], b], 1), ys.detach(), rtol=0, atol=1e-12)
    g_tuple = torch.autograd.grad((a * w[:, 0]).sum() + (b * w[:, 1:]).sum(), (y0, f.W))
    for g1, g2 in zip(g_flat, g_tuple):
        torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-11)


def test_dict_and_nested_states_against_expm():
    t = torch.linspace(0.0, 2.0, 4, dtype=D)

    def f(t, s):
        y = torch.cat([s["x"], s["rest"][0], s["rest"][1].reshape(1)])
        dy = A @ y
        return {"x": dy[:1], "rest": [dy[1:2], dy[2]]}

    y0 = {"x": torch.tensor([1.0], dtype=D), "rest": [torch.tensor([0.0], dtype=D), torch.tensor(2.0, dtype=D)]}
    out = psg.odeint(f, y0, t, rtol=1e-10, atol=1e-12)
    assert set(out) == {"x", "rest"} and isinstance(out["rest"], list)
    assert out["rest"][1].shape == (4,)
    got = torch.cat([out["x"], out["rest"][0], out["rest"][1][:, None]], 1)
    ref = torch.stack([torch.linalg.matrix_exp(A * s) @ torch.tensor([1.0, 0.0, 2.0], dtype=D) for s in t])
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-8)


def test_return_stats_and_norm_see_the_structure():
    seen = []

    def norm(state):
        seen.append(type(state))
        a, b = state
        return torch.maximum(a.abs().max(), b.abs().max())

    f = Split()
    ys, stats = psg.odeint(f, (torch.tensor(1.0, dtype=D), torch.zeros(2, dtype=D)), torch.tensor([0.0, 1.0], dtype=D),
                           options={"return_stats": True, "norm": norm})
    assert isinstance(ys, tuple) and stats.nfe > 0
    assert seen and all(s is tuple for s in seen)


def test_structured_state_errors():
    f = Split()
    with pytest.raises(InvalidStateError, match="share one dtype"):
        psg.odeint(f, (torch.tensor(1.0, dtype=D), torch.zeros(2, dtype=torch.float32)), torch.tensor([0.0, 1.0], dtype=D))
    with pytest.raises(InvalidStateError, match="only tensors"):
        psg.odeint(f, (1.0, torch.zeros(2, dtype=D)), torch.tensor([0.0, 1.0], dtype=D))
    with pytest.raises(InvalidStateError, match="empty"):
        psg.odeint(f, (), torch.tensor([0.0, 1.0], dtype=D))
    with pytest.raises(RHSOutputError, match="same structure"):
        psg.odeint(lambda t, s: s[0], (torch.tensor(1.0, dtype=D), torch.zeros(2, dtype=D)), torch.tensor([0.0, 1.0], dtype=D))


class CNF(torch.nn.Module):
    """FFJORD-style flow: dz/dt = g(z), dlogp/dt = -tr(dg/dz) (exact trace, 2-D)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).to(D)

    def forward(self, t, state):
        z, _ = state
        with torch.enable_grad():
            z = z if z.requires_grad else z.requires_grad_(True)
            dz = self.net(z)
            tr = sum(torch.autograd.grad(dz[:, i].sum(), z, create_graph=True)[0][:, i] for i in range(2))
        return dz, -tr


@pytest.mark.parametrize("sensealg", [psg.CheckpointAdjoint(), psg.BacksolveAdjoint()])
def test_ffjord_tuple_state_gradients_match_direct(sensealg):
    flow = CNF()
    z0 = torch.randn(8, 2, dtype=D)
    logp0 = torch.zeros(8, dtype=D)
    t = torch.tensor([0.0, 1.0], dtype=D)

    def loss(sa):
        z, logp = psg.odeint(flow, (z0, logp0), t, sensealg=sa, rtol=1e-9, atol=1e-11)
        # log-likelihood under a standard normal base density, change of variables
        logpz = -0.5 * (z[-1] ** 2).sum(1) - logp[-1]
        return -logpz.mean()

    ref = torch.autograd.grad(loss(psg.DirectAD()), list(flow.parameters()))
    got = torch.autograd.grad(loss(sensealg), list(flow.parameters()))
    for g1, g2 in zip(ref, got):
        torch.testing.assert_close(g2, g1, rtol=1e-5, atol=1e-7)
