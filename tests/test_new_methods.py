"""The tables added for torchdiffeq parity: heun3, rk38 (Kutta's 3/8 rule), fehlberg2, dopri8.

Oracle: y' = y cos t, y(0) = 1, exact y = exp(sin t). Orders are measured by halving a
constant step (log2 of successive error ratios, printed), for the propagated solution,
for the embedded estimate (b_hat = b - b_err) and for dopri8's continuous extension.
"""

import math

import pytest
import torch

import pysciml_grad as psg
from pysciml_grad.backends.torch.stepping import dense_eval, rk_step
from pysciml_grad.backends.torch.tableaus import TABLEAUS

T = 3.0


def f(t, y):
    return y * torch.cos(t)


def exact(t):
    return math.exp(math.sin(t))


def g(t, y):  # local-error oracle: y' = 1 + y^2, y = tan(t) (generic error constants)
    return 1 + y * y


def _orders(errors):
    return [math.log2(a / b) for a, b in zip(errors[:-1], errors[1:])]


@pytest.mark.parametrize(
    "name, ns, theory",
    [("heun3", (20, 40, 80, 160), 3), ("rk38", (80, 160, 320, 640), 4)],
)
def test_fixed_step_order(name, ns, theory):
    t = torch.tensor([0.0, T], dtype=torch.float64)
    y0 = torch.ones(1, dtype=torch.float64)
    errors = []
    for n in ns:
        ys = psg.odeint(f, y0, t, method=name, sensealg=psg.DirectAD(), options={"step_size": T / n})
        errors.append(abs(float(ys[-1, 0]) - exact(T)))
    orders = _orders(errors)
    print(f"\n{name}: errors {['%.2e' % e for e in errors]} measured orders {['%.2f' % o for o in orders]}")
    assert abs(orders[-1] - theory) < 0.2


@pytest.mark.parametrize(
    "name, hs, theory, theory_hat",
    [("fehlberg2", (0.004, 0.002, 0.001, 0.0005), 2, 1)],
)
def test_embedded_pair_local_orders(name, hs, theory, theory_hat):
    """Local error of one step from t0 = 0.3 on y' = 1 + y^2 is O(h^(p+1)) for the solution (p) and for the
    embedded solution b_hat = b - b_err (p_hat): measured slopes within 0.35."""
    tab = TABLEAUS[name]
    t0 = 0.3
    err, err_hat = [], []
    for h in hs:
        y = torch.tensor([math.tan(t0)], dtype=torch.float64)
        _, ks, _ = rk_step(g, tab, torch.tensor(t0, dtype=torch.float64), y, h)
        y_sol = y + h * sum(b * k for b, k in zip(tab.b, ks))
        y_hat = y + h * sum((b - e) * k for b, e, k in zip(tab.b, tab.b_err, ks))
        err.append(abs(float(y_sol) - math.tan(t0 + h)))
        err_hat.append(abs(float(y_hat) - math.tan(t0 + h)))
    o, o_hat = _orders(err), _orders(err_hat)
    print(f"\n{name}: local orders solution {['%.2f' % x for x in o]} (expect {theory + 1}), "
          f"embedded {['%.2f' % x for x in o_hat]} (expect {theory_hat + 1})")
    assert abs(o[-1] - (theory + 1)) < 0.35
    assert abs(o_hat[-1] - (theory_hat + 1)) < 0.35


def test_dopri8_global_orders():
    """dopri8 over [0, T] with n equal steps: the solution converges at order 8, the
    embedded solution (b_hat) at order 7 (measured slopes within 0.5; roundoff ends the range)."""
    tab = TABLEAUS["dopri8"]
    b_hat = [b - e for b, e in zip(tab.b, tab.b_err)]
    err, err_hat = [], []
    for n in (6, 12, 24):
        h = T / n
        y = y_hat = torch.ones(1, dtype=torch.float64)
        for j in range(n):
            t = torch.tensor(j * h, dtype=torch.float64)
            y = rk_step(f, tab, t, y, h)[0]
            _, ks, _ = rk_step(f, tab, t, y_hat, h)
            y_hat = y_hat + h * sum(b * k for b, k in zip(b_hat, ks))
        err.append(abs(float(y) - exact(T)))
        err_hat.append(abs(float(y_hat) - exact(T)))
    o, o_hat = _orders(err), _orders(err_hat)
    print(f"\ndopri8: global orders solution {['%.2f' % x for x in o]}, embedded {['%.2f' % x for x in o_hat]}")
    assert abs(o[-1] - 8) < 0.5
    assert abs(o_hat[-1] - 7) < 0.5


def test_rk38_is_not_classical_rk4():
    """torchdiffeq's 'rk4' is the 3/8 rule: same order, a different (smaller here) error."""
    t = torch.tensor([0.0, T], dtype=torch.float64)
    y0 = torch.ones(1, dtype=torch.float64)
    e = {m: abs(float(psg.odeint(f, y0, t, method=m, sensealg=psg.DirectAD(),
                                 options={"step_size": T / 40})[-1, 0]) - exact(T)) for m in ("rk4", "rk38")}
    print(f"\nerror at h=T/40: rk4 {e['rk4']:.3e}, rk38 {e['rk38']:.3e}")
    assert e["rk4"] != pytest.approx(e["rk38"], rel=1e-3)


def test_dopri8_dense_output_order():
    """Local interpolation error of dopri8's continuous extension at theta = 0.3, 0.5, 0.7
    after one step from t = 0.4: measured O(h^6), i.e. a 5th-order continuous extension
    (degree-6 polynomials built from the 14 stages, no extra evaluations)."""
    tab = TABLEAUS["dopri8"]
    t0 = 0.4
    errs = []
    hs = (0.4, 0.2, 0.1)
    for h in hs:
        y = torch.tensor([exact(t0)], dtype=torch.float64)
        y1, ks, _ = rk_step(f, tab, torch.tensor(t0, dtype=torch.float64), y, h)
        worst = 0.0
        for theta in (0.3, 0.5, 0.7):
            yi = dense_eval(tab, theta, h, y, y1, ks, lambda: None)
            worst = max(worst, abs(float(yi) - exact(t0 + theta * h)))
        errs.append(worst)
    o = _orders(errs)
    print(f"\ndopri8 dense: errors {['%.2e' % e for e in errs]} local orders {['%.2f' % x for x in o]}")
    assert o[-1] > 5.5


@pytest.mark.parametrize("method", ["fehlberg2", "dopri8"])
def test_adaptive_new_methods_meet_tolerance(method):
    """Max error at 13 save points within torchdiffeq's own test threshold for the method
    (odeint_tests.py: relative 3e-4 at default tolerances, dopri8 at rtol 1e-10 here).
    Fehlberg's 1(2) estimate has a tiny error constant (1/512), so its steps are long."""
    rtol = 1e-7 if method == "fehlberg2" else 1e-10
    t = torch.linspace(0.0, T, 13, dtype=torch.float64)
    y0 = torch.ones(1, dtype=torch.float64)
    ys = psg.odeint(f, y0, t, method=method, rtol=rtol, atol=rtol * 1e-2, sensealg=psg.DirectAD())
    ref = torch.tensor([exact(float(s)) for s in t], dtype=torch.float64)
    err = float((ys[:, 0] - ref).abs().max())
    print(f"\n{method} rtol={rtol:g}: max error at 13 save points (dense output) {err:.2e}")
    assert err < (3e-4 if method == "fehlberg2" else 50 * rtol)
