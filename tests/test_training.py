"""Multiple shooting, the LBFGS recipe and STLSQ against independent oracles."""

import math

import pytest
import torch

import pysciml_grad as psg
from pysciml_grad.errors import InvalidProblemError

F64 = torch.float64


def test_group_ranges_match_diffeqflux_docstring():
    # DiffEqFlux group_ranges(10, 5) == [1:5, 5:9, 9:10] (1-based, inclusive)
    assert [list(r) for r in psg.group_ranges(10, 5)] == [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8], [8, 9]]
    assert [list(r) for r in psg.group_ranges(5, 5)] == [[0, 1, 2, 3, 4]]
    for bad in (1, 11):
        with pytest.raises(InvalidProblemError, match="group_size"):
            psg.group_ranges(10, bad)


class Decay(torch.nn.Module):
    def __init__(self, k):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(k, dtype=F64))

    def forward(self, t, y):
        return -self.k * y


def _data(n=11):
    t = torch.linspace(0.0, 2.0, n, dtype=F64)
    y0 = torch.tensor([1.0, -0.5], dtype=F64)
    return t, y0 * torch.exp(-0.7 * t)[:, None]


def test_multiple_shoot_is_the_sum_of_per_group_losses_plus_continuity():
    t, data = _data()
    model = Decay(0.5)
    kw = dict(method="dopri5", rtol=1e-10, atol=1e-12)
    loss, preds = psg.multiple_shoot(model, data, t, 4, continuity_term=7.0, **kw)
    ranges = psg.group_ranges(11, 4)
    expected, prev_end = 0.0, None
    for rg in ranges:
        i0, i1 = rg[0], rg[-1] + 1
        # closed form from each group's data start: y(t) = y(t_i0) exp(-k (t - t_i0))
        pred = data[i0] * torch.exp(-0.5 * (t[i0:i1] - t[i0]))[:, None]
        expected += float(((data[i0:i1] - pred) ** 2).sum())
        if prev_end is not None:
            expected += 7.0 * float((prev_end - data[i0]).abs().sum())
        prev_end = pred[-1]
    assert abs(float(loss) - expected) < 1e-9 * max(1.0, expected)
    assert [p.shape[0] for p in preds] == [len(r) for r in ranges]


def test_true_model_on_clean_data_has_zero_shooting_loss_and_single_shooting_is_odeint():
    t, data = _data()
    kw = dict(method="dopri5", rtol=1e-11, atol=1e-13)
    loss, _ = psg.multiple_shoot(Decay(0.7), data, t, 3, **kw)
    assert float(loss) < 1e-8  # solver error only; k=0.5 gives ~1e-2
    model = Decay(0.3)
    single, _ = psg.multiple_shoot(model, data, t, len(t), **kw)
    direct = ((psg.odeint(model, data[0], t, **kw) - data) ** 2).sum()
    assert abs(float(single) - float(direct)) < 1e-12


def test_multiple_shoot_gradient_matches_float64_finite_differences():
    t, data = _data()
    model = Decay(0.4)
    starts = psg.shooting_initial_states(data, 4) * 1.01
    starts = starts.detach().requires_grad_(True)
    kw = dict(method="dopri5", rtol=1e-11, atol=1e-13, sensealg=psg.CheckpointAdjoint())

    def f():
        return psg.multiple_shoot(model, data, t, 4, initial_states=starts,
                                  continuity_loss=lambda a, b: ((a - b) ** 2).sum(), **kw)[0]

    f().backward()
    gk, gs = float(model.k.grad), starts.grad.clone()
    eps = 1e-6
    with torch.no_grad():
        model.k += eps
        lp = float(f())
        model.k -= 2 * eps
        lm = float(f())
        model.k += eps
        fd_k = (lp - lm) / (2 * eps)
        starts[1, 0] += eps
        lp = float(f())
        starts[1, 0] -= 2 * eps
        lm = float(f())
        starts[1, 0] += eps
    assert abs(gk - fd_k) < 1e-6 * max(1, abs(fd_k))
    assert abs(float(gs[1, 0]) - (lp - lm) / (2 * eps)) < 1e-6


def test_batched_groups_equal_sequential_groups():
    t, data = _data(13)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).to(F64)
    func = lambda t, y: net(y)  # noqa: E731  autonomous, batch-friendly
    kw = dict(method="dopri5", rtol=1e-10, atol=1e-12)
    # 13 points, group_size 5: groups of 5, 5 and a remainder of 5 -> also test 4 (remainder 1 point + shared)
    for g in (5, 4):
        a, pa = psg.multiple_shoot(func, data, t, g, **kw)
        b, pb = psg.multiple_shoot(func, data, t, g, batch_groups=True, **kw)
        assert abs(float(a) - float(b)) < 1e-8
        assert all(torch.allclose(x, y, atol=1e-8) for x, y in zip(pa, pb))


def test_multiple_shoot_rejects_bad_input():
    t, data = _data()
    with pytest.raises(InvalidProblemError, match="one time per data point"):
        psg.multiple_shoot(Decay(0.5), data, t[:-1], 3)
    with pytest.raises(InvalidProblemError, match="initial_states must have shape"):
        psg.multiple_shoot(Decay(0.5), data, t, 3, initial_states=torch.zeros(2, 2, dtype=F64))
    with pytest.raises(InvalidProblemError, match="return_stats"):
        psg.multiple_shoot(Decay(0.5), data, t, 3, options={"return_stats": True})


def test_fit_lbfgs_finds_the_rosenbrock_minimum():
    x = torch.tensor([-1.2, 1.0], dtype=F64, requires_grad=True)
    res = psg.fit_lbfgs([x], lambda: (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2, max_iter=200)
    assert torch.allclose(x.detach(), torch.tensor([1.0, 1.0], dtype=F64), atol=1e-6)
    assert res["iterations"] < 200 and res["final_loss"] < 1e-12


def test_fit_lbfgs_recovers_a_decay_rate_through_odeint():
    t, data = _data()
    model = Decay(0.2)
    kw = dict(method="dopri5", rtol=1e-10, atol=1e-12)
    psg.fit_lbfgs(model.parameters(), lambda: ((psg.odeint(model, data[0], t, **kw) - data) ** 2).sum(), max_iter=50)
    assert abs(float(model.k) - 0.7) < 1e-6


def test_polynomial_library_terms_and_values():
    lib = psg.PolynomialLibrary(2, 2, names=("x", "y"))
    assert lib.term_names() == ["1", "x", "y", "x^2", "x*y", "y^2"]
    X = torch.tensor([[2.0, 3.0]], dtype=F64)
    assert lib(X).tolist() == [[1.0, 2.0, 3.0, 4.0, 6.0, 9.0]]


def test_stlsq_recovers_a_sparse_polynomial_and_drops_small_terms():
    g = torch.Generator().manual_seed(0)
    X = torch.rand(200, 2, generator=g, dtype=F64) * 4
    x, y = X[:, 0], X[:, 1]
    Y = torch.stack([1.3 * x - 0.9 * x * y + 0.02 * y**2, 0.8 * x * y - 1.8 * y], dim=1)
    model = psg.stlsq(X, Y, psg.PolynomialLibrary(2, 3, names=("x", "y")), threshold=0.05)
    assert model.support(0) == ["x", "x*y"] and model.support(1) == ["y", "x*y"]
    # on the surviving support the coefficients are the least-squares fit restricted to it
    restricted = torch.linalg.lstsq(torch.stack([x, x * y], 1), Y[:, :1]).solution[:, 0]
    assert abs(model.coefficient("x", 0) - float(restricted[0])) < 1e-10
    assert abs(model.coefficient("x*y", 0) - float(restricted[1])) < 1e-10
    assert abs(model.coefficient("x*y", 1) - 0.8) < 1e-10
    # threshold 0: plain least squares, the 0.02 y^2 term is found exactly
    exact = psg.stlsq(X, Y, psg.PolynomialLibrary(2, 3, names=("x", "y")), threshold=0.0)
    assert abs(exact.coefficient("y^2", 0) - 0.02) < 1e-10
    assert torch.allclose(model(X)[:, 1], Y[:, 1], atol=1e-10)


def test_stlsq_refuses_an_underdetermined_library():
    X = torch.rand(5, 2, dtype=F64)
    with pytest.raises(InvalidProblemError, match="underdetermined"):
        psg.stlsq(X, X, psg.PolynomialLibrary(2, 3), 0.1)
