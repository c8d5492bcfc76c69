"""Forward accuracy of the torch engine: measured orders, SciPy references, dense output."""

import math

import numpy as np
import pytest
import torch

import pysciml_grad as psg
from pysciml_grad.backends.torch.tableaus import TABLEAUS

from problems import SpiralMLP, lotka_volterra, scipy_reference, van_der_pol

THEORY = {"euler": 1, "midpoint": 2, "heun": 2, "ralston": 2, "rk4": 4, "leapfrog": 2}


def riccati(t, y):
    # y' = -2 t y^2 + cos(t) * 0 ... keep it exact: y = 1 / (1 + t^2)
    return -2 * t * y**2


def riccati_exact(t):
    return 1.0 / (1.0 + t**2)


def test_fixed_step_convergence_orders():
    """Measured order of every fixed-step method within 0.2 of theory (float64)."""
    y0 = torch.tensor([1.0], dtype=torch.float64)
    T = 2.0
    t = torch.tensor([0.0, T], dtype=torch.float64)
    rows = []
    for name, p in THEORY.items():
        errors = []
        for n in (20, 40, 80, 160):
            ys = psg.odeint(riccati, y0, t, method=name, sensealg=psg.DirectAD(), options={"step_size": T / n})
            errors.append(abs(float(ys[-1, 0]) - riccati_exact(T)))
        orders = [math.log2(a / b) for a, b in zip(errors[:-1], errors[1:])]
        rows.append((name, p, errors, orders))
    print("\nmethod     theory  err(N=20)   err(N=160)  measured orders")
    for name, p, errors, orders in rows:
        print(f"{name:10s} {p:5d}   {errors[0]:.3e}   {errors[-1]:.3e}   " + " ".join(f"{o:.2f}" for o in orders))
    for name, p, errors, orders in rows:
        assert abs(orders[-1] - p) < 0.2, (name, orders)


def test_tableau_consistency():
    for tab in TABLEAUS.values():
        assert sum(tab.b) == pytest.approx(1.0, abs=1e-14)
        for c_i, a_i in zip(tab.c[1:], tab.a):
            assert sum(a_i) == pytest.approx(c_i, abs=1e-14), tab.name
        if tab.b_err is not None:
            assert sum(tab.b_err) == pytest.approx(0.0, abs=1e-14)
        if tab.dense is not None:  # continuous extension must end at the step's end point
            for row, b in zip(tab.dense, tab.b):
                assert sum(row) == pytest.approx(b, abs=1e-13)


PROBLEMS = {
    "van_der_pol_mu1": (van_der_pol(1.0), 10.0),
    "lotka_volterra": (lotka_volterra(), 10.0),
}


def _spiral():
    m = SpiralMLP()
    return (m, m.numpy_rhs(), [1.5, 0.0]), 8.0


@pytest.mark.parametrize("method", ["heun_euler", "bosh3", "dopri5", "tsit5"])
@pytest.mark.parametrize("problem", ["van_der_pol_mu1", "lotka_volterra", "spiral_mlp"])
def test_adaptive_meets_tolerance_against_scipy(method, problem):
    (f, f_np, y0), T = _spiral() if problem == "spiral_mlp" else PROBLEMS[problem]
    t = np.linspace(0.0, T, 41)
    ref = scipy_reference(f_np, y0, t)
    rtol = 1e-4 if method == "heun_euler" else 1e-7
    with torch.no_grad():
        ys = psg.odeint(f, torch.tensor(y0, dtype=torch.float64), torch.tensor(t), method=method,
                        rtol=rtol, atol=rtol * 1e-2, sensealg=psg.DirectAD())
    err = np.abs(ys.numpy() - ref).max() / np.abs(ref).max()
    print(f"\n{problem:16s} {method:10s} rtol={rtol:g}  max rel error {err:.2e}")
    # Global error of a locally controlled solve: within a modest multiple of rtol.
    assert err < 100 * rtol


@pytest.mark.parametrize("method", ["bosh3", "dopri5", "tsit5"])
def test_tolerance_proportionality(method):
    """Tightening rtol 100x must shrink the global error by at least 10x."""
    f, f_np, y0 = van_der_pol(1.0)
    t = np.linspace(0.0, 6.0, 13)
    ref = scipy_reference(f_np, y0, t)
    errs = []
    for rtol in (1e-5, 1e-7, 1e-9):
        with torch.no_grad():
            ys = psg.odeint(f, torch.tensor(y0, dtype=torch.float64), torch.tensor(t), method=method, rtol=rtol, atol=rtol * 1e-2)
        errs.append(np.abs(ys.numpy() - ref).max())
    assert errs[0] / errs[1] > 10 and errs[1] / errs[2] > 10, errs


@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
def test_save_points_do_not_force_steps(method):
    """Dense output serves save times: 2 or 201 save points cost the same steps."""
    f, f_np, y0 = van_der_pol(1.0)
    y0 = torch.tensor(y0, dtype=torch.float64)
    _, few = psg.odeint(f, y0, torch.tensor([0.0, 5.0], dtype=torch.float64), method=method, options={"return_stats": True})
    t = torch.linspace(0.0, 5.0, 201, dtype=torch.float64)
    ys, many = psg.odeint(f, y0, t, method=method, options={"return_stats": True})
    assert many.n_steps == few.n_steps
    ref = scipy_reference(f_np, y0.tolist(), t.numpy())
    assert np.abs(ys.numpy() - ref).max() < 1e-5  # the 4th-order interpolant at rtol 1e-7


def test_backward_in_time(device):
    y1 = torch.tensor([math.exp(-2.0), 2 * math.exp(-2.0)], dtype=torch.float64, device=device)
    t = torch.linspace(2.0, 0.0, 9, dtype=torch.float64, device=device)
    for method, options in (("dopri5", None), ("tsit5", None), ("rk4", {"step_size": 0.01})):
        ys = psg.odeint(lambda t, y: -y, y1, t, method=method, options=options)
        exact = torch.exp(-t)[:, None] * torch.tensor([1.0, 2.0], dtype=torch.float64, device=device)
        assert torch.allclose(ys, exact, rtol=1e-6, atol=1e-9), method


def test_batch_shapes_and_float32(device):
    """Any y0 shape; float32 in, float32 out; each element follows its own exp decay."""
    rates = torch.linspace(0.5, 2.0, 24, device=device).reshape(3, 4, 2)
    y0 = torch.ones(3, 4, 2, device=device)
    t = torch.linspace(0, 1, 5, device=device)
    ys = psg.odeint(lambda t, y: -rates * y, y0, t, rtol=1e-6, atol=1e-8)
    assert ys.shape == (5, 3, 4, 2) and ys.dtype == torch.float32 and ys.device.type == device.type
    exact = torch.exp(-rates[None] * t[:, None, None, None])
    assert (ys - exact).abs().max() < 1e-5


def test_time_passed_to_func_has_state_dtype():
    seen = []

    def f(t, y):
        seen.append((t.dtype, t.shape))
        return torch.cos(t) * torch.ones_like(y)

    ys = psg.odeint(f, torch.zeros(1), torch.tensor([0.0, 1.0], dtype=torch.float64), rtol=1e-6, atol=1e-8)
    assert abs(float(ys[-1, 0]) - math.sin(1.0)) < 1e-5
    assert set(seen) == {(torch.float32, torch.Size([]))}


def test_nfe_counts_every_call():
    calls = [0]

    def f(t, y):
        calls[0] += 1
        return -y

    for method, options in (("dopri5", {}), ("rk4", {"step_size": 0.1}), ("leapfrog", {"step_size": 0.1})):
        calls[0] = 0
        _, stats = psg.odeint(f, torch.ones(2, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64),
                              method=method, options={**options, "return_stats": True})
        assert stats.nfe == calls[0] > 0, method
    _, stats = psg.odeint(f, torch.ones(2, dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64),
                          method="rk4", options={"step_size": 0.1, "return_stats": True})
    assert stats.n_steps == 10


def test_fixed_step_save_points_interpolated_between_grid_points():
    """With step_size, save times off the grid come from cubic Hermite (4th-order local)."""
    t = torch.linspace(0.0, 1.0, 7, dtype=torch.float64)  # not multiples of 0.01... of 1/30
    ys = psg.odeint(lambda t, y: -y, torch.ones(1, dtype=torch.float64), t, method="rk4", options={"step_size": 1 / 30})
    assert (ys[:, 0] - torch.exp(-t)).abs().max() < 1e-7


def test_leapfrog_on_uniform_t_grid_matches_step_size():
    t = torch.linspace(0.0, 1.0, 51, dtype=torch.float64)
    a = psg.odeint(lambda t, y: -y, torch.ones(1, dtype=torch.float64), t, method="leapfrog")
    b = psg.odeint(lambda t, y: -y, torch.ones(1, dtype=torch.float64), t, method="leapfrog", options={"step_size": 0.02})
    assert torch.allclose(a, b, rtol=0, atol=1e-14)


FIXED_EXPLICIT = [name for name, tab in TABLEAUS.items() if not tab.adaptive and name != "leapfrog"]


@pytest.mark.parametrize("options", [{}, {"compile": {"backend": "aot_eager"}}], ids=["eager", "compiled"])
def test_float32_steps_round_once_per_step_like_euler(options):
    # y' = 0.2 from y0 = 3: every method is exact in exact arithmetic, so in float32 the
    # only error is rounding. Summing a step's increment before adding it to y rounds once
    # at the scale of y per step, as explicit Euler's y + h k does; adding the stage terms
    # to y one by one made rk4 and heun 5.6x Euler's error after 1000 steps (ralston, rk38
    # and heun3 3.6x), and put torchdiffeq 0.2.5's float32 rk4 event time 1.0e-4 off.
    y0 = torch.tensor([3.0], dtype=torch.float32)
    t = torch.tensor([0.0, 10.0], dtype=torch.float64)
    methods = ["euler", "rk4"] if options else FIXED_EXPLICIT
    errors = {}
    for name in methods:
        ys = psg.odeint(lambda t, y: torch.full_like(y, 0.2), y0, t, method=name, options={"step_size": 0.01, **options})
        assert ys.dtype == torch.float32
        errors[name] = abs(float(ys[-1]) - 5.0)
    euler = errors["euler"]
    assert 0 < euler < 1e-4  # the baseline: 1000 roundings of a float32 near 4
    for name, err in errors.items():
        assert err <= 1.5 * euler, (name, err, euler)


@pytest.mark.parametrize("method", ["heun_euler", "fehlberg2"])
@pytest.mark.parametrize("compile_step", [False, True], ids=["eager", "compiled"])
def test_tables_without_fsal_evaluate_f_once_per_state(method, compile_step):
    # A table without FSAL needs f(t_n, y_n) once per accepted state: a rejected trial's retry
    # starts from the rejected trial's own first stage, and the last accepted state needs none
    # (nobody reads it without dense saves). Work per solve, counted from the tableau: f(t0, y0)
    # (first_step is given, so no initial-step probe), S - 1 new stages per trial step, and one
    # first stage for each accepted state but the last.
    assert not TABLEAUS[method].fsal
    f, _, y0 = van_der_pol(1.0)
    opts = {"return_stats": True, "first_step": 0.5}  # too large a first step: rejections
    if compile_step:
        opts["compile"] = {"backend": "eager"}
    with torch.no_grad():
        _, st = psg.odeint(f, torch.tensor(y0, dtype=torch.float64), torch.tensor([0.0, 6.0], dtype=torch.float64),
                           method=method, rtol=1e-5, atol=1e-7, options=opts)
    assert st.n_rejected > 0
    stages = TABLEAUS[method].stages
    assert st.nfe == 1 + (stages - 1) * (st.n_steps + st.n_rejected) + (st.n_steps - 1)
