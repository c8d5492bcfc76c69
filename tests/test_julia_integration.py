"""The Julia engine end to end: solves and gradients cross-checked against the torch engine.

Runs only where the Julia engine is installed (``python -m pysciml_grad julia install``);
elsewhere every test is skipped with the reason "Julia runtime not available".
Nothing is mocked: these tests start Julia through juliacall.

Oracles: the analytic solution of dz/dt = a z; the torch engine with DirectAD at tight
tolerances (exact gradient of its own accurate solve); for fixed-step methods on the
same grid, the torch engine's result to round-off (same Butcher tableau, same steps).
"""

import os
import sys

import pytest
import torch

import pysciml_grad as psg
from pysciml_grad import bridge, errors
from pysciml_grad.backends.julia import JuliaRHS, availability

sys.path.insert(0, os.path.dirname(__file__))
from problems import SpiralMLP  # noqa: E402

_OK, _REASON = availability()
pytestmark = [pytest.mark.julia, pytest.mark.skipif(not _OK, reason=f"Julia engine not available ({_REASON.split('. ')[0]})")]

F64 = torch.float64
TS = torch.tensor([0.0, 0.25, 0.5, 1.0, 1.5], dtype=F64)
TIGHT = dict(rtol=1e-10, atol=1e-12)

CONTINUOUS = [
    psg.BacksolveAdjoint(),
    psg.InterpolatingAdjoint(),
    psg.InterpolatingAdjoint(checkpointing=True),
    psg.QuadratureAdjoint(),
    psg.GaussAdjoint(),
    psg.GaussAdjoint(checkpointing=True),
]
DISCRETE = [psg.ReverseDiffAdjoint(), psg.ForwardDiffSensitivity(), psg.DirectAD()]


def name(alg):
    return repr(alg)


@pytest.fixture(scope="module")
def session():
    from pysciml_grad.backends.julia import runtime

    return runtime.ensure_ready()


def weights(shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def loss_and_grads(func, y0, params, t=TS, backend="julia", **kw):
    """L = sum(W * ys) with fixed random W, so dL/dys is a general cotangent."""
    y0 = y0.detach().clone().requires_grad_(True)
    ys = psg.odeint(func, y0, t, backend=backend, params=params, **kw)
    loss = (weights(ys.shape) * ys).sum()
    grads = torch.autograd.grad(loss, [y0, *params])
    return ys.detach(), grads


def assert_close(a, b, rtol, atol=1e-10):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


# --- dz/dt = a z: analytic ------------------------------------------------------------

Y0 = torch.tensor([[1.0, 2.0], [-0.5, 0.3], [0.8, -1.2]], dtype=F64)  # (B, D) = (3, 2)


def analytic(a):
    e = torch.exp(a * TS)  # (T,)
    ys = Y0[None] * e[:, None, None]
    W = weights(ys.shape)
    dy0 = (W * e[:, None, None]).sum(0)
    da = (W * Y0[None] * (TS * e)[:, None, None]).sum().reshape(1)
    return ys, dy0, da


def toy_rhs(kind, a):
    if kind == "torch":
        return lambda t, y: a * y
    return JuliaRHS("(u, p, t) -> p[1] .* u")


@pytest.mark.parametrize("sensealg", CONTINUOUS + DISCRETE, ids=name)
@pytest.mark.parametrize("kind", ["torch", "julia"])
def test_toy_gradients_match_the_analytic_ones(kind, sensealg):
    if kind == "torch" and sensealg in DISCRETE:
        pytest.skip("AD through the solver needs a JuliaRHS (refusal tested in test_julia_translate.py)")
    a = torch.tensor([-0.7], dtype=F64, requires_grad=True)
    ys, (dy0, da) = loss_and_grads(toy_rhs(kind, a), Y0, [a], method="tsit5", sensealg=sensealg, **TIGHT)
    ys_ref, dy0_ref, da_ref = analytic(a.detach())
    assert_close(ys, ys_ref, rtol=1e-8)
    assert_close(dy0, dy0_ref, rtol=1e-6)
    assert_close(da, da_ref, rtol=1e-6)
    # and the torch engine agrees
    _, (dy0_t, da_t) = loss_and_grads(lambda t, y: a * y, Y0, [a], backend="torch", sensealg=psg.DirectAD(), **TIGHT)
    assert_close(dy0, dy0_t, rtol=1e-6)
    assert_close(da, da_t, rtol=1e-6)


# --- neural ODE with a torch right-hand side (the hybrid UDE case) --------------------


@pytest.mark.parametrize("sensealg", CONTINUOUS, ids=name)
def test_mlp_neural_ode_gradients_match_the_torch_engine(sensealg):
    net = SpiralMLP(hidden=8, seed=3)
    params = list(net.parameters())
    y0 = torch.tensor([[2.0, 0.0], [0.5, -1.0], [-1.0, 1.5], [0.1, 0.2]], dtype=F64)
    t = torch.linspace(0.0, 2.0, 9, dtype=F64)
    ys, grads = loss_and_grads(net, y0, params, t=t, method="tsit5", sensealg=sensealg, **TIGHT)
    ys_t, grads_t = loss_and_grads(net, y0, params, t=t, backend="torch", method="dopri5", sensealg=psg.DirectAD(), **TIGHT)
    assert_close(ys, ys_t, rtol=1e-7)
    for g, g_t in zip(grads, grads_t):
        assert_close(g, g_t, rtol=1e-5, atol=1e-8)


def test_stiff_solver_with_a_torch_rhs_uses_finite_difference_jacobians():
    net = SpiralMLP(hidden=8, seed=3)
    params = list(net.parameters())
    y0 = torch.tensor([[2.0, 0.0]], dtype=F64)
    ys, grads = loss_and_grads(net, y0, params, method="Rodas5P", sensealg=psg.InterpolatingAdjoint(checkpointing=True), rtol=1e-8, atol=1e-10)
    ys_t, grads_t = loss_and_grads(net, y0, params, backend="torch", sensealg=psg.DirectAD(), **TIGHT)
    assert_close(ys, ys_t, rtol=1e-5)
    for g, g_t in zip(grads, grads_t):
        assert_close(g, g_t, rtol=1e-3, atol=1e-6)


# --- Lotka-Volterra written in Julia ----------------------------------------------------

LV_JULIA = JuliaRHS(
    "(u, p, t) -> vcat(p[1] .* u[1:1, :] .- p[2] .* u[1:1, :] .* u[2:2, :],"
    " .-p[3] .* u[2:2, :] .+ p[4] .* u[1:1, :] .* u[2:2, :])"
)


def lv_torch(p):
    def f(t, y):
        x, z = y[..., 0], y[..., 1]
        return torch.stack([p[0] * x - p[1] * x * z, -p[2] * z + p[3] * x * z], dim=-1)

    return f


@pytest.mark.parametrize("sensealg", CONTINUOUS + DISCRETE, ids=name)
def test_lotka_volterra_in_julia_matches_the_torch_engine(sensealg):
    p = torch.tensor([1.5, 1.0, 3.0, 1.0], dtype=F64, requires_grad=True)
    y0 = torch.tensor([[1.0, 1.0], [2.0, 0.5]], dtype=F64)  # two samples: Julia sees 2 x 2
    t = torch.linspace(0.0, 3.0, 7, dtype=F64)
    ys, grads = loss_and_grads(LV_JULIA, y0, [p], t=t, method="Vern7", sensealg=sensealg, **TIGHT)
    ys_t, grads_t = loss_and_grads(lv_torch(p), y0, [p], t=t, backend="torch", method="dopri5", sensealg=psg.DirectAD(), **TIGHT)
    assert_close(ys, ys_t, rtol=1e-7)
    for g, g_t in zip(grads, grads_t):
        assert_close(g, g_t, rtol=1e-5, atol=1e-8)


# --- methods ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun", "ralston", "rk4"])
def test_fixed_step_methods_step_exactly_on_the_save_times(method):
    t = torch.tensor([0.0, 0.1, 0.3, 0.4, 0.8], dtype=F64)  # uneven grid
    net = SpiralMLP(hidden=4, seed=1)
    y0 = torch.tensor([[1.0, 0.5]], dtype=F64)
    with torch.no_grad():
        ys = psg.odeint(net, y0, t, method=method, backend="julia")
        ys_t = psg.odeint(net, y0, t, method=method, backend="torch")
    assert_close(ys, ys_t, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "heun_euler", "Vern9", "Rodas5P", "KenCarp4", "FBDF", "TRBDF2"])
def test_adaptive_methods_reach_the_reference(method):
    a = torch.tensor([-0.7], dtype=F64)
    for func in (lambda t, y: a * y, JuliaRHS("(u, p, t) -> p[1] .* u")):
        with torch.no_grad():
            ys = psg.odeint(func, Y0, TS, method=method, backend="julia", params=[a], rtol=1e-9, atol=1e-11)
        assert_close(ys, analytic(a)[0], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("sensealg", [psg.InterpolatingAdjoint(), psg.GaussAdjoint(), psg.QuadratureAdjoint(),
                                      psg.BacksolveAdjoint()], ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("julia_rhs", [False, True], ids=["torch_f", "julia_f"])
def test_decreasing_time(sensealg, julia_rhs):
    # The adjoints return sort(saveat); decreasing t is solved in s = -t (issue 9 bug 5).
    a = torch.tensor([-0.7], dtype=F64, requires_grad=True)
    t = torch.flip(TS, [0]) - 1.5  # 0 -> -1.5
    f = JuliaRHS("(u, p, t) -> p .* u") if julia_rhs else (lambda t, y: a * y)
    ys, grads = loss_and_grads(f, Y0, [a], t=t, sensealg=sensealg, **TIGHT)
    ys_t, grads_t = loss_and_grads(lambda t, y: a * y, Y0, [a], t=t, backend="torch", sensealg=psg.DirectAD(), **TIGHT)
    assert_close(ys, ys_t, rtol=1e-8)
    for g, g_t in zip(grads, grads_t):
        assert_close(g, g_t, rtol=1e-6)


def test_float32_and_scalar_state():
    y0 = torch.tensor(1.5, dtype=torch.float32)
    with torch.no_grad():
        ys = psg.odeint(lambda t, y: -y, y0, TS.float(), backend="julia", rtol=1e-6, atol=1e-8)
    assert ys.shape == (5,) and ys.dtype == torch.float32
    assert_close(ys, 1.5 * torch.exp(-TS.float()), rtol=1e-5, atol=1e-6)


def test_batch_layout_julia_sees_columns():
    # Harmonic oscillator written for a D x B Julia matrix, solved for a (B, D) batch.
    rhs = JuliaRHS("(u, p, t) -> vcat(u[2:2, :], .-u[1:1, :])")
    y0 = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]], dtype=F64)
    with torch.no_grad():
        ys = psg.odeint(rhs, y0, TS, backend="julia", **TIGHT)
    c, s = torch.cos(TS)[:, None], torch.sin(TS)[:, None]
    expected = torch.stack([y0[:, 0] * c + y0[:, 1] * s, -y0[:, 0] * s + y0[:, 1] * c], dim=-1)
    assert_close(ys, expected, rtol=1e-8)


# --- stats and errors -------------------------------------------------------------------


def test_stats_are_filled():
    net = SpiralMLP(hidden=4)
    y0 = torch.tensor([[1.0, 0.5]], dtype=F64, requires_grad=True)
    ys, stats = psg.odeint(net, y0, TS, backend="julia", sensealg=psg.GaussAdjoint(), options={"return_stats": True})
    assert stats.nfe > 0 and stats.n_steps > 0 and stats.nfe_backward == 0
    ys.sum().backward()
    assert stats.nfe_backward > 0 and stats.extra["vjp_calls"] > 0
    assert stats.extra["sensealg"].startswith("GaussAdjoint")


def test_python_exceptions_in_func_reach_the_caller_unchanged():
    calls = []

    def f(t, y):
        calls.append(1)
        if len(calls) > 3:
            raise ArithmeticError("boom from inside func")
        return -y

    with pytest.raises(ArithmeticError, match="boom"):
        with torch.no_grad():
            psg.odeint(f, Y0, TS, backend="julia")


def test_max_steps_becomes_max_steps_exceeded():
    with pytest.raises(errors.MaxStepsExceededError, match="max_num_steps"):
        with torch.no_grad():
            psg.odeint(lambda t, y: -y, Y0, TS, backend="julia", options={"max_num_steps": 3}, **TIGHT)


def test_bad_julia_source_is_an_invalid_problem():
    with pytest.raises(errors.InvalidProblemError, match="JuliaRHS"):
        with torch.no_grad():
            psg.odeint(JuliaRHS("(u, p, t) -> u +"), Y0, TS, backend="julia")


# --- the Julia half of the zero-copy claims ---------------------------------------------


def test_torch_memory_reaches_julia_without_copy(session):
    x = torch.arange(12.0, dtype=F64).reshape(4, 3)
    probe = session.host.seval("x -> (v = PySciMLGrad.dense_view(x); (Int(UInt(pointer(v))), size(v), v[3, 2]))")
    address, size, value = probe(bridge.to_julia(x))
    assert address == x.data_ptr() and tuple(size) == (3, 4) and value == x[1, 2]


def test_julia_memory_reaches_torch_without_copy(session):
    session.host.seval("global PSG_TEST_X = reshape(collect(1.0:12.0), 3, 4)")
    x = bridge.from_julia(session.host.PSG_TEST_X)
    assert x.shape == (4, 3) and x.data_ptr() == int(session.host.seval("Int(UInt(pointer(PSG_TEST_X)))"))
    x[1, 2] = -5.0
    assert float(session.host.seval("PSG_TEST_X[3, 2]")) == -5.0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available on this machine")
def test_cuda_round_trip_and_solve():
    from pysciml_grad.backends.julia import runtime

    session = runtime.ensure_ready(cuda=True)
    x = torch.arange(12.0, dtype=F64, device="cuda").reshape(4, 3)
    probe = session.host.seval("x -> (v = PySciMLGrad.from_torch(x); (Int(UInt(pointer(v))), size(v)))")
    address, size = probe(bridge.to_julia(x))
    assert address == x.data_ptr() and tuple(size) == (3, 4)
    a = torch.tensor([-0.7], dtype=F64, device="cuda", requires_grad=True)
    y0 = Y0.cuda().requires_grad_(True)
    # `p .* u`, not `p[1] .* u`: indexing one element of a CuArray is scalar indexing.
    ys = psg.odeint(JuliaRHS("(u, p, t) -> p .* u"), y0, TS.cuda(), backend="julia", params=[a], sensealg=psg.InterpolatingAdjoint(), **TIGHT)
    assert ys.is_cuda
    (weights(ys.shape).cuda() * ys).sum().backward()
    _, dy0_ref, da_ref = analytic(a.detach().cpu())
    assert_close(y0.grad.cpu(), dy0_ref, rtol=1e-6)
    assert_close(a.grad.cpu(), da_ref, rtol=1e-6)
