"""Every sensealg against the closed-form gradient of ACA's toy problem.

dz/dt = a z, z(0) = z0, L = z(T)^2 for T = 1..5 and rtol = 1e-3..1e-9 (atol = 1e-3 rtol):
the relative errors of dL/da and dL/dz0 must shrink with the tolerance. The table is
printed (``pytest -s``) and copied into docs/readme_adjoints.md.
"""

import pytest
import torch

import pysciml_grad as psg

from adjoint_cases import SENSEALGS, TOY_A, TOY_Z0, toy_errors

RTOLS = [1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9]
TS = [1.0, 2.0, 3.0, 4.0, 5.0]


@pytest.fixture(scope="module")
def table():
    return {name: {(rtol, T): max(toy_errors(sa, T, rtol)) for rtol in RTOLS for T in TS} for name, sa in SENSEALGS.items()}


def test_print_toy_table(table):
    lines = [
        f"ACA toy dz/dt = a z, a = {TOY_A}, z0 = {TOY_Z0}, L = z(T)^2, dopri5, atol = 1e-3 rtol: "
        "max relative error of (dL/da, dL/dz0)",
        "| sensealg | rtol | " + " | ".join(f"T={T:g}" for T in TS) + " |",
        "|---|---|" + "---|" * len(TS),
    ]
    for name in table:
        for rtol in RTOLS:
            lines.append(f"| {name} | {rtol:.0e} | " + " | ".join(f"{table[name][(rtol, T)]:.1e}" for T in TS) + " |")
    print("\n" + "\n".join(lines))


@pytest.mark.parametrize("name", list(SENSEALGS))
def test_converges_as_tolerances_tighten(name, table):
    errors = table[name]
    for T in TS:
        loose, tight = errors[(1e-3, T)], errors[(1e-9, T)]
        assert tight < 2e-8, (T, tight)
        assert tight < loose / 1e3, (T, loose, tight)
        # Within a modest factor of the tolerance at every rtol (global error ~ rtol).
        for rtol in RTOLS:
            assert errors[(rtol, T)] < 10 * rtol, (T, rtol, errors[(rtol, T)])


@pytest.mark.parametrize("name", list(SENSEALGS))
def test_rhs_of_time_alone_has_exact_y0_and_t_gradients(name):
    # f = g(t) = -0.1 exp(-0.1 t): y(t_i) = y0 + int_{t_0}^{t_i} g, so for L = sum_i w_i y(t_i)
    # dL/dy0 = sum_i w_i, dL/dt_i = w_i g(t_i) (i > 0) and dL/dt_0 = -g(t_0) sum_{i>0} w_i.
    # f's output has no grad_fn when t needs no gradient; the adjoints' VJPs used to raise.
    D = torch.float64
    g = lambda t: -0.1 * torch.exp(-0.1 * t)
    w = torch.rand(10, 1, dtype=D, generator=torch.Generator().manual_seed(1))
    for t_grad in (False, True):
        t = torch.linspace(1.0, 8.0, 10, dtype=D).requires_grad_(t_grad)
        y0 = torch.tensor([0.9], dtype=D, requires_grad=True)
        ys = psg.odeint(lambda t, y: g(t) * torch.ones_like(y), y0, t, rtol=1e-10, atol=1e-12,
                        sensealg=SENSEALGS[name])
        (ys * w).sum().backward()
        assert torch.allclose(y0.grad, w.sum(0), rtol=0, atol=1e-12)
        if t_grad:
            expected = w[:, 0] * g(t.detach())
            expected[0] = -g(t.detach()[0]) * w[1:, 0].sum()
            assert (t.grad - expected).abs().max() < 1e-8, (t.grad - expected).abs().max()
