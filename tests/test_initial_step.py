"""The automatic initial step (control.initial_step, Hairer, Norsett & Wanner I, II.4).

Oracle: SciPy's implementation of the same algorithm
(scipy/integrate/_ivp/common.py, ``select_initial_step``), with the end point and
max_step far enough away that SciPy's extra clamps do not bind. The host form (floats,
used whenever the step size needs no graph) and the graph form
(DirectAD(through_controller=True)) must both equal it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate._ivp.common import select_initial_step

import pysciml_grad as psg
from pysciml_grad.backends.torch.control import _initial_step_in_graph, initial_step
from pysciml_grad.errors import NonFiniteStateError

A = np.array([[-0.3, 1.2, 0.0], [-1.1, -0.2, 0.4], [0.5, 0.0, -2.0]])


def f_np(t, y):
    return A @ y + np.sin(3 * t) * y**2


def f_torch(t, y):
    return torch.as_tensor(A) @ y + math.sin(3 * float(t)) * y**2


CASES = [
    # y0, rtol, atol, direction, order
    (np.array([1.0, -0.5, 2.0]), 1e-6, 1e-9, 1.0, 4),
    (np.array([1.0, -0.5, 2.0]), 1e-3, 1e-6, -1.0, 2),
    (np.array([1e-3, 4.0, -7.0]), 1e-8, 1e-12, 1.0, 5),
    (np.zeros(3), 1e-6, 1e-9, 1.0, 4),  # ||y0|| = 0: the h0 = 1e-6 branch
]


@pytest.mark.parametrize("y0, rtol, atol, direction, order", CASES)
def test_host_and_graph_forms_equal_scipys_select_initial_step(y0, rtol, atol, direction, order):
    t0 = 0.3
    ref = direction * select_initial_step(f_np, t0, y0, t0 + direction * 1e6, np.inf, f_np(t0, y0),
                                          direction, order, rtol, atol)
    y = torch.tensor(y0)
    f0 = f_torch(t0, y)
    with torch.no_grad():
        host = initial_step(f_torch, t0, y, f0, order, rtol, atol, direction)
    assert isinstance(host, float)
    scale = atol + rtol * y.abs()
    graph = _initial_step_in_graph(f_torch, t0, y, f0, order, scale, direction)
    assert host == pytest.approx(ref, rel=1e-12)
    assert float(graph) == pytest.approx(ref, rel=1e-12)


def test_zero_derivative_takes_the_floor_branch():
    # f = 0: d1 = d2 = 0, so h0 = 1e-6 and h1 = max(1e-6, 1e-3 h0); SciPy gives the same.
    y0 = np.array([1.0, 2.0])
    zero = lambda t, y: np.zeros_like(y)  # noqa: E731
    ref = select_initial_step(zero, 0.0, y0, 1e6, np.inf, zero(0.0, y0), 1.0, 4, 1e-6, 1e-9)
    y = torch.tensor(y0)
    with torch.no_grad():
        host = initial_step(lambda t, s: torch.zeros_like(s), 0.0, y, torch.zeros_like(y), 4, 1e-6, 1e-9, 1.0)
    assert host == pytest.approx(ref, rel=1e-15)


@pytest.mark.parametrize("options", [{}, {"compile": {"backend": "eager"}}], ids=["eager", "compiled"])
def test_nan_just_after_t0_is_reported_as_the_probes_failure(options):
    # The host form compares floats: a NaN probe must not vanish in min()/max() and leave a
    # finite step that fails later with a less helpful message.
    def func(t, y):
        return -y if float(t) == 0.0 else y * float("nan")

    with pytest.raises(NonFiniteStateError, match="initial-step probe"):
        psg.odeint(func, torch.ones(2, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64),
                   options=options)
