"""Step callbacks on func (torchdiffeq's callback_step / _accept_step / _reject_step and
their _adjoint variants): when they fire, with what, and the warning for ones a method
never calls. Oracles: the solver's own step counters and the exact fixed grid."""

from __future__ import annotations

import warnings

import pytest
import torch

import pysciml_grad as psg
from pysciml_grad.errors import UnsupportedCallbackWarning

D = torch.float64


class Decay(torch.nn.Module):
    def __init__(self, adjoint: bool = False):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(1.3, dtype=D))
        self.calls = {"step": [], "accept": [], "reject": []}
        suffix = "_adjoint" if adjoint else ""
        for name in self.calls:
            setattr(self, f"callback_{name}{'_step' if name != 'step' else ''}{suffix}",
                    lambda t0, y0, dt, name=name: self.calls[name].append((float(t0), y0.detach().clone(), float(dt))))

    def forward(self, t, y):
        return -self.k * y * (1 + torch.sin(5 * t) ** 2)


def test_adaptive_callbacks_match_the_step_counters():
    f = Decay()
    y0 = torch.tensor([1.0, 2.0], dtype=D)
    ys, stats = psg.odeint(f, y0, torch.tensor([0.0, 3.0], dtype=D), rtol=1e-8, atol=1e-10,
                           options={"return_stats": True, "first_step": 1.0})  # a first step too large: rejections
    assert len(f.calls["accept"]) == stats.n_steps
    assert len(f.calls["reject"]) == stats.n_rejected > 0
    assert len(f.calls["step"]) == stats.n_steps + stats.n_rejected
    # accepted steps chain: each starts where the previous ended, from the state it reached
    acc = f.calls["accept"]
    for (t_a, _, h_a), (t_b, _, _) in zip(acc[:-1], acc[1:]):
        assert abs(t_a + h_a - t_b) < 1e-12
    assert abs(acc[-1][0] + acc[-1][2] - 3.0) < 1e-12
    assert torch.equal(acc[0][1], y0)


def test_fixed_step_calls_callback_step_on_the_grid_and_warns_for_the_others():
    f = Decay()
    with pytest.warns(UnsupportedCallbackWarning, match="callback_accept_step"):
        psg.odeint(f, torch.tensor([1.0], dtype=D), torch.tensor([0.0, 1.0], dtype=D), method="rk4",
                   options={"step_size": 0.1})
    assert [round(t, 12) for t, _, _ in f.calls["step"]] == [round(0.1 * j, 12) for j in range(10)]
    assert all(abs(h - 0.1) < 1e-12 for _, _, h in f.calls["step"])
    assert not f.calls["accept"] and not f.calls["reject"]


def test_adams_calls_callback_step_once_per_grid_step():
    f = Decay()
    f.callback_accept_step = f.callback_reject_step = None
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnsupportedCallbackWarning)
        psg.odeint(f, torch.tensor([1.0], dtype=D), torch.linspace(0, 1, 21, dtype=D), method="implicit_adams",
                   rtol=1e-3, atol=1e-4)
    assert len(f.calls["step"]) == 20


@pytest.mark.parametrize("sensealg", [psg.BacksolveAdjoint(), psg.InterpolatingAdjoint(), psg.QuadratureAdjoint()],
                         ids=["backsolve", "interpolating", "quadrature"])
def test_adjoint_callbacks_fire_in_the_backward_solve_only(sensealg):
    f = Decay(adjoint=True)
    ys = psg.odeint(f, torch.tensor([1.0, 2.0], dtype=D), torch.tensor([0.0, 1.0, 2.0], dtype=D),
                    sensealg=sensealg, rtol=1e-8, atol=1e-10)
    assert not any(f.calls.values())  # the forward solve does not call *_adjoint
    ys.sum().backward()
    n = len(f.calls["step"])
    assert n > 0 and len(f.calls["accept"]) + len(f.calls["reject"]) == n
    assert all(h < 0 for _, _, h in f.calls["step"])  # backwards in time
    assert max(t for t, _, _ in f.calls["step"]) <= 2.0 and min(t + h for t, _, h in f.calls["accept"]) >= -1e-12


def test_no_callbacks_no_warning_and_callbacks_fire_in_reverse_time():
    f = Decay()
    psg.odeint(f, torch.tensor([1.0], dtype=D), torch.tensor([1.0, 0.0], dtype=D))
    assert f.calls["step"] and all(h < 0 for _, _, h in f.calls["step"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        psg.odeint(lambda t, y: -y, torch.tensor([1.0], dtype=D), torch.linspace(0, 1, 5, dtype=D), method="rk4")


def test_callbacks_survive_a_random_func_under_checkpoint_adjoint():
    # Dropout in train() mode makes CheckpointAdjoint record the RNG around func; the
    # callbacks must still fire, once per fixed step.
    class Noisy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2).double()
            self.drop = torch.nn.Dropout(0.2)
            self.n = 0

        def forward(self, t, y):
            return self.drop(self.lin(y))

        def callback_step(self, t0, y0, dt):
            self.n += 1

    f = Noisy().train()
    ys = psg.odeint(f, torch.ones(2, dtype=D), torch.tensor([0.0, 1.0], dtype=D), method="rk4",
                    options={"step_size": 0.1})
    assert f.n == 10
    ys.sum().backward()
