"""Every error path of the adjoints raises its documented class with a useful message."""

import pytest
import torch

import pysciml_grad as psg
from pysciml_grad.errors import (
    InvalidProblemError,
    NonFiniteGradientError,
    SolverError,
    UnknownMethodError,
    UnsupportedSensitivityError,
)

ADJOINTS = {
    "checkpoint": psg.CheckpointAdjoint(),
    "checkpoint_k2": psg.CheckpointAdjoint(max_checkpoints=2),
    "backsolve": psg.BacksolveAdjoint(),
    "interpolating": psg.InterpolatingAdjoint(),
    "interpolating_ckpt": psg.InterpolatingAdjoint(checkpointing=True),
    "quadrature": psg.QuadratureAdjoint(),
}
CONTINUOUS = ["backsolve", "interpolating", "interpolating_ckpt", "quadrature"]


def sqrt_decay(tt, y):
    # f is finite along the solution, but d sqrt(|y|)/dy is infinite at the y = 0 component.
    return -torch.sqrt(y.abs())


@pytest.mark.parametrize("name", list(ADJOINTS))
def test_nonfinite_vjp_raises_nonfinite_gradient_error(name):
    y0 = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    ys = psg.odeint(sqrt_decay, y0, t, rtol=1e-6, atol=1e-8, sensealg=ADJOINTS[name])
    assert torch.isfinite(ys).all()
    with pytest.raises(NonFiniteGradientError, match=r"t=") as info:
        ys.sum().backward()
    assert isinstance(info.value, SolverError) and isinstance(info.value, RuntimeError)
    assert "NaN/inf" in str(info.value)


@pytest.mark.parametrize("name", list(ADJOINTS))
def test_nonfinite_loss_gradient_raises(name):
    y0 = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    ys = psg.odeint(lambda tt, y: torch.zeros_like(y) * y, y0 - torch.tensor([1.0, 0.0], dtype=torch.float64), t,
                    sensealg=ADJOINTS[name])
    loss = ys[-1].sqrt().sum()  # d sqrt(y)/dy = inf at y = 0
    with pytest.raises(NonFiniteGradientError, match="incoming gradient"):
        loss.backward()


@pytest.mark.parametrize("sensealg, match", [
    (psg.BacksolveAdjoint(adjoint_rtol=-1.0), "adjoint_rtol"),
    (psg.InterpolatingAdjoint(adjoint_atol=0.0), "adjoint_atol"),
    (psg.QuadratureAdjoint(adjoint_rtol="tight"), "adjoint_rtol"),
])
def test_invalid_adjoint_tolerances(sensealg, match):
    y0 = torch.ones(2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(InvalidProblemError, match=match):
        psg.odeint(lambda tt, y: -y, y0, torch.linspace(0, 1, 2, dtype=torch.float64), sensealg=sensealg)


def test_unknown_adjoint_method():
    y0 = torch.ones(2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(UnknownMethodError, match="Tsit55"):
        psg.odeint(lambda tt, y: -y, y0, torch.linspace(0, 1, 2, dtype=torch.float64),
                   sensealg=psg.InterpolatingAdjoint(adjoint_method="Tsit55"))


@pytest.mark.parametrize("name", CONTINUOUS)
def test_double_backward_refused_by_continuous_adjoints(name):
    y0 = torch.ones(2, dtype=torch.float64, requires_grad=True)
    ys = psg.odeint(lambda tt, y: -y**2, y0, torch.linspace(0, 1, 2, dtype=torch.float64), sensealg=ADJOINTS[name])
    with pytest.raises(UnsupportedSensitivityError, match="double backward"):
        torch.autograd.grad(ys.sum(), y0, create_graph=True)
    # First-order gradients of the same solve still work.
    ys = psg.odeint(lambda tt, y: -y**2, y0, torch.linspace(0, 1, 2, dtype=torch.float64), sensealg=ADJOINTS[name])
    (g,) = torch.autograd.grad(ys[-1].sum(), y0)
    assert torch.allclose(g, torch.full((2,), 0.25, dtype=torch.float64), rtol=1e-6)  # y = 1/(1+t): dy(1)/dy0 = 1/4
