"""Issue 8 §2: dropout (a random func) and BatchNorm (a func that updates buffers) in train().

Oracles: DirectAD, which backpropagates through the very evaluations the forward made
(so through the forward's dropout masks), and the buffers' values right after the
forward solve. On 3b3ad7f CheckpointAdjoint's replays drew new masks (gradient 17-26 %
off, and dependent on max_checkpoints) and every replay updated BatchNorm's running
statistics again.
"""

import pytest
import torch

import pysciml_grad as psg
from pysciml_grad.errors import UnsupportedSensitivityError

from adjoint_cases import SENSEALGS

T = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
DISCRETE = {"CheckpointAdjoint": psg.CheckpointAdjoint(), "CheckpointAdjoint(k=2)": psg.CheckpointAdjoint(max_checkpoints=2),
            "CheckpointAdjoint(k=5)": psg.CheckpointAdjoint(max_checkpoints=5)}
CONTINUOUS = {k: v for k, v in SENSEALGS.items() if k not in ("DirectAD",) and not k.startswith("Checkpoint")}


class DropoutNet(torch.nn.Module):
    def __init__(self, p=0.3):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Dropout(p),
                                       torch.nn.Linear(16, 3)).double()

    def forward(self, t, y):
        return self.net(y)


def dropout_grads(sensealg, seed=5, **kw):
    f = DropoutNet()
    y0 = torch.tensor([[0.5, -0.3, 0.1], [0.2, 0.4, -0.6]], dtype=torch.float64, requires_grad=True)
    torch.manual_seed(seed)
    ys = psg.odeint(f, y0, T, sensealg=sensealg, **kw)
    loss = (ys**2).sum()
    state_after_forward = torch.get_rng_state()
    g = torch.autograd.grad(loss, [y0, *f.parameters()])
    return ys.detach(), g, state_after_forward


FIXED = {
    "rk4 on grid": dict(method="rk4"),
    "rk4 step_size": dict(method="rk4", options={"step_size": 0.03}),  # saves inside steps
    "heun step_size": dict(method="heun", options={"step_size": 0.07}),
    "leapfrog": dict(method="leapfrog", options={"step_size": 0.02}),
}


@pytest.mark.parametrize("sa", list(DISCRETE))
@pytest.mark.parametrize("kw", list(FIXED))
def test_dropout_checkpoint_equals_directad_on_fixed_steps(sa, kw):
    ys_ref, ref, _ = dropout_grads(psg.DirectAD(), **FIXED[kw])
    ys, got, _ = dropout_grads(DISCRETE[sa], **FIXED[kw])
    assert torch.equal(ys, ys_ref)  # same random numbers in the forward
    for g, r in zip(got, ref):
        assert torch.allclose(g, r, rtol=1e-12, atol=1e-13), (g - r).abs().max()


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "heun_euler"])
def test_dropout_adaptive_gradient_independent_of_max_checkpoints(method):
    kw = dict(method=method, rtol=1e-3, atol=1e-3)  # a random func is rough: loose tolerances
    _, ref, _ = dropout_grads(psg.CheckpointAdjoint(), **kw)
    for k in (1, 2, 3, 7):
        _, got, _ = dropout_grads(psg.CheckpointAdjoint(max_checkpoints=k), **kw)
        for g, r in zip(got, ref):
            assert torch.equal(g, r), k


@pytest.mark.parametrize("method", ["dopri5", "heun_euler"])
def test_dropout_adaptive_gradient_is_that_of_the_forward_masks(method):
    """Oracle: plain autograd through the forward loop itself with the step sizes as
    Python floats (the discrete map CheckpointAdjoint differentiates), i.e. through the
    very evaluations, and masks, of the forward."""
    from pysciml_grad.backends.torch.forward import forward_solve, parse
    from pysciml_grad.problem import make_problem

    kw = dict(method=method, rtol=1e-3, atol=1e-3)
    f = DropoutNet()
    y0 = torch.tensor([[0.5, -0.3, 0.1], [0.2, 0.4, -0.6]], dtype=torch.float64, requires_grad=True)
    problem = make_problem(f, y0, T, options=None, params=None, sensealg=psg.DirectAD(), backend="torch", **kw)
    torch.manual_seed(5)
    ys_ref = forward_solve(problem, *parse(problem), differentiate_control=False)
    ref = torch.autograd.grad((ys_ref**2).sum(), [y0, *f.parameters()])
    ys, got, _ = dropout_grads(psg.CheckpointAdjoint(max_checkpoints=3), **kw)
    assert torch.equal(ys, ys_ref.detach())
    for g, r in zip(got, ref):
        assert torch.allclose(g, r, rtol=1e-12, atol=1e-13), (g - r).abs().max()


def test_replays_leave_the_users_random_stream_alone():
    _, _, after_forward = dropout_grads(psg.CheckpointAdjoint(max_checkpoints=2), method="rk4")
    assert torch.equal(torch.get_rng_state(), after_forward)


@pytest.mark.parametrize("sa", list(CONTINUOUS))
def test_continuous_adjoints_refuse_a_random_func(sa):
    f = DropoutNet()
    y0 = torch.tensor([0.5, -0.3, 0.1], dtype=torch.float64, requires_grad=True)
    with pytest.raises(UnsupportedSensitivityError, match=r"random.*CheckpointAdjoint.*DirectAD.*eval\(\)"):
        psg.odeint(f, y0, T, sensealg=CONTINUOUS[sa])
    f.eval()  # dropout off: deterministic, accepted
    psg.odeint(f, y0, T, sensealg=CONTINUOUS[sa]).sum().backward()


class BNNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.lin = torch.nn.Linear(3, 3).double()
        self.bn = torch.nn.BatchNorm1d(3).double()

    def forward(self, t, y):
        return torch.tanh(self.bn(self.lin(y)))


@pytest.mark.filterwarnings("ignore::pysciml_grad.errors.GradientAccuracyWarning")  # backsolve at a fixed h
@pytest.mark.parametrize("sa", list(SENSEALGS))
def test_batchnorm_buffers_hold_their_post_forward_values_after_backward(sa):
    f = BNNet()
    y0 = torch.tensor([[0.5, -0.3, 0.1], [0.2, 0.4, -0.6], [1.0, 0.0, 0.3]], dtype=torch.float64, requires_grad=True)
    ys = psg.odeint(f, y0, T, sensealg=SENSEALGS[sa], method="rk4", options={"step_size": 0.1})
    after = {k: v.clone() for k, v in f.named_buffers()}
    assert int(after["bn.num_batches_tracked"]) == 40  # 4 stages x 10 steps: the forward's updates
    g = torch.autograd.grad((ys**2).sum(), [y0, *f.parameters()])
    for k, v in f.named_buffers():
        assert torch.equal(v, after[k]), k
    if sa != "DirectAD":
        f_ref = BNNet()
        ys_ref = psg.odeint(f_ref, y0, T, sensealg=psg.DirectAD(), method="rk4", options={"step_size": 0.1})
        ref = torch.autograd.grad((ys_ref**2).sum(), [y0, *f_ref.parameters()])
        tol = 1e-12 if sa.startswith("Checkpoint") else 1e-2  # continuous vs discrete adjoint at h = 0.1
        for a, b in zip(g, ref):
            assert torch.allclose(a, b, rtol=tol, atol=tol), (sa, (a - b).abs().max())
