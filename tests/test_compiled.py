"""options={"compile": True}: the compiled adaptive RK step (backends/torch/compiled.py).

Capture, guards and recompiles are dynamo's, whatever backend lowers the graph, so the
default-run tests compile with backend="eager" (dynamo captures the full graph, no
inductor codegen: about a second per capture here instead of 30-90 s). One test runs
the real inductor backend; it is marked ``inductor`` and runs only with
PSG_INDUCTOR_TESTS=1 (about 90 s of compile on a loaded 2-core machine).

Oracles: SciPy's solve_ivp at rtol 1e-12 on a linear problem with a closed-form
solution, the eager loop of the same method (same accepted steps, same states to
rounding, float64), dynamo's own recompile counters.
"""

import math
import os
import warnings

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import pysciml_grad as psg
from pysciml_grad.errors import CompileFallbackWarning, InvalidProblemError, UnknownOptionError

EAGER = {"backend": "eager"}
A = torch.tensor([[-0.3, 1.0], [-1.0, -0.3]], dtype=torch.float64)


class Linear(torch.nn.Module):
    """dy/dt = y A^T + 0.1 sin(t) (a time-dependent linear ODE, batch of 3)."""

    def __init__(self):
        super().__init__()
        self.A = torch.nn.Parameter(A.clone())

    def forward(self, t, y):
        return y @ self.A.T + 0.1 * torch.sin(t)


def scipy_reference(y0: np.ndarray, t: np.ndarray) -> np.ndarray:
    An = A.numpy()

    def f(s, y):
        return (y.reshape(-1, 2) @ An.T + 0.1 * np.sin(s)).ravel()

    sol = solve_ivp(f, (t[0], t[-1]), y0.ravel(), t_eval=t, rtol=1e-12, atol=1e-14, method="DOP853")
    return sol.y.T.reshape(len(t), *y0.shape)


def past_audits(func):
    """Count the first FULL_AUDITS backward passes of ``func`` as done: those replay
    eagerly with every graph checked (``discover.audit_everything``); later ones take the
    compiled replay, which these tests are about."""
    from pysciml_grad.backends.torch.discover import FULL_AUDITS, audit_everything

    for _ in range(FULL_AUDITS):
        audit_everything(func)
    return func


FUNC = Linear()
Y0 = torch.tensor([[1.0, 0.0], [0.5, -0.5], [0.0, 2.0]], dtype=torch.float64)


def compiled_and_eager_gradients(sensealg, t, weight=1.0):
    """``[(dL/dy0, dL/dA, nfe_backward)]`` for the compiled (dynamo capture) and the eager
    solve of FUNC from Y0, L = sum(weight * y(t)^2), after the full audits."""
    past_audits(FUNC)
    out = []
    for opt in ({"compile": EAGER, "return_stats": True}, {"return_stats": True}):
        FUNC.zero_grad()
        y0 = Y0.clone().requires_grad_(True)
        ys, st = psg.odeint(FUNC, y0, t, rtol=1e-6, atol=1e-8, sensealg=sensealg, options=opt)
        (ys.square() * weight).sum().backward()
        out.append((y0.grad.clone(), FUNC.A.grad.clone(), st.nfe_backward))
    return out


def compiled_calls_ran(kind):
    """The cached compiled entries of ``kind`` for FUNC exist, were called and captured."""
    from pysciml_grad.backends.torch.compiled import _CACHE

    entries = [e for k, e in _CACHE[FUNC].items() if k[0] == kind]
    return bool(entries) and entries[0].calls > 0 and entries[0].broken is None


@pytest.mark.filterwarnings("error::pysciml_grad.errors.CompileFallbackWarning")  # it must really compile
@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3"])
def test_same_solution_as_eager_and_scipy(method):
    t = torch.linspace(0.0, 3.0, 7, dtype=torch.float64)
    with torch.no_grad():
        ys_c, st_c = psg.odeint(FUNC, Y0, t, method=method, rtol=1e-8, atol=1e-10,
                                options={"compile": EAGER, "return_stats": True})
        ys_e, st_e = psg.odeint(FUNC, Y0, t, method=method, rtol=1e-8, atol=1e-10, options={"return_stats": True})
    # The same accepted steps (the controller is the same arithmetic), states equal to rounding.
    assert (st_c.n_steps, st_c.n_rejected, st_c.nfe) == (st_e.n_steps, st_e.n_rejected, st_e.nfe)
    # tsit5's weights (|b_i| up to 3.3, cancelling) amplify the rounding of a different
    # summation order to ~2e-13; the solve's own error is 1e-7.
    assert torch.allclose(ys_c, ys_e, rtol=0, atol=1e-12)
    ref = scipy_reference(Y0.numpy(), t.numpy())
    assert np.abs(ys_c.numpy() - ref).max() < 1e-6


def random_times(gen: torch.Generator) -> torch.Tensor:
    """Three sorted save times in a random window: a new t and span for every call."""
    t0 = float(torch.rand((), generator=gen)) * 2 - 1
    span = 0.2 + float(torch.rand((), generator=gen))
    return torch.sort(t0 + span * torch.rand(3, generator=gen, dtype=torch.float64)).values


@pytest.mark.filterwarnings("error::pysciml_grad.errors.CompileFallbackWarning")  # it must really compile
def test_no_recompile_over_100_calls_with_random_times():
    from torch._dynamo.utils import counters

    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        psg.odeint(FUNC, Y0, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64), rtol=1e-6, atol=1e-8,
                   options={"compile": EAGER})
        graphs = counters["stats"]["unique_graphs"]
        recompiles = sum(counters["recompiles"].values())
        with torch.compiler.set_stance("fail_on_recompile"):  # a recompile raises here
            for _ in range(100):
                t = random_times(gen)
                y0 = torch.randn(3, 2, generator=gen, dtype=torch.float64)
                ys = psg.odeint(FUNC, y0, t, rtol=1e-6, atol=1e-8, options={"compile": EAGER})
                assert torch.isfinite(ys).all()
    assert counters["stats"]["unique_graphs"] == graphs
    assert sum(counters["recompiles"].values()) == recompiles


@pytest.mark.filterwarnings("error::pysciml_grad.errors.CompileFallbackWarning")  # it must really compile
def test_directad_pairs_do_not_recompile_over_60_calls_with_random_times():
    # With grad, DirectAD's solves run on the pair of trial steps, the end step (no stage)
    # and the single step with all stages: none of them recompiles for new t, step sizes,
    # save times or y0 (end point only, and three save times, alternately).
    from torch._dynamo.utils import counters

    func = Linear()
    gen = torch.Generator().manual_seed(2)

    def solve(t):
        y0 = torch.randn(3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
        ys = psg.odeint(func, y0, t, rtol=1e-6, atol=1e-8, sensealg=psg.DirectAD(), options={"compile": EAGER})
        ys.square().sum().backward()
        assert torch.isfinite(y0.grad).all()

    for k in range(4):  # every graph once: a short end-point-only solve ends on a single trial
        t = random_times(gen)
        solve(t[[0, -1]] if k % 2 else t)
    solve(torch.tensor([0.0, 1e-3], dtype=torch.float64))
    recompiles = sum(counters["recompiles"].values())
    with torch.compiler.set_stance("fail_on_recompile"):  # a recompile raises here
        for k in range(60):
            t = random_times(gen)
            solve(t[[0, -1]] if k % 2 else t)
    assert sum(counters["recompiles"].values()) == recompiles


@pytest.mark.filterwarnings("error::pysciml_grad.errors.CompileFallbackWarning")  # it must really compile
def test_checkpoint_adjoint_gradient_matches_eager():
    # The forward records the same accepted steps and the compiled replay is the same step
    # map, so the gradient equals the eager one to rounding.
    t = torch.linspace(0.0, 2.0, 3, dtype=torch.float64)
    compiled, eager = compiled_and_eager_gradients(psg.CheckpointAdjoint(), t)
    for g_c, g_e in zip(compiled[:2], eager[:2]):
        assert torch.allclose(g_c, g_e, rtol=0, atol=1e-12)
    # The backward replayed each step without a dense save as one compiled call returning
    # its vector-Jacobian product (no autograd graph per step), the first replayed step too.
    assert compiled_calls_ran("replay_vjp")


def test_step_graph_saves_h_not_one_scalar_per_coefficient_for_backward():
    # Each stage combination is y + h (sum_j a_ij k_j) (compiled._combine): the backward needs
    # h once. With sum_j (h a_ij) k_j it kept one 0-d product h a_ij per nonzero coefficient
    # (20 of the 34 tensors dopri5's step saved here), and each saved tensor costs host time
    # on every call. backend="aot_eager": AOT autograd's partition, no inductor codegen.
    from pysciml_grad.backends.torch.compiled import initial_ctrl, make_step
    from pysciml_grad.backends.torch.control import PIController, SolverOptions
    from pysciml_grad.backends.torch.stepping import rk_step
    from pysciml_grad.backends.torch.tableaus import TABLEAUS

    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    tab = TABLEAUS["dopri5"]
    step = make_step(tab, lambda t, y: net(y), PIController.for_method(tab.error_order, SolverOptions()), math.inf)
    y = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    k0 = net(y)
    tol = torch.tensor(1e-6, dtype=torch.float64)
    y_next, ks, ctrl = torch.compile(step, fullgraph=True, backend="aot_eager")(
        initial_ctrl(0.0, 0.1, 1.0, y.device), y, k0, tol, tol)
    saved = y_next.grad_fn.saved_tensors
    assert sum(x.dim() == 0 for x in saved) <= 1, [tuple(x.shape) for x in saved]
    # and it is the eager step (stepping.rk_step) to rounding
    y_eager, ks_eager, _ = rk_step(lambda t, y: net(y), tab, 0.0, y, 0.1, k0)
    assert torch.allclose(y_next, y_eager, rtol=0, atol=1e-14) and len(ks) == len(ks_eager) == 7


@pytest.mark.filterwarnings("error::pysciml_grad.errors.CompileFallbackWarning")  # it must really compile
@pytest.mark.parametrize("method", ["dopri5", "rk4"])  # the adaptive and the fixed-step loop
def test_directad_from_a_y0_without_grad_compiles_one_step_graph(method):
    # Every trial after the first starts from a y that requires grad; the first starts from
    # the caller's y0, which need not. The solve hands the first trial a detached alias of y0
    # that requires grad, so the step compiles once, not once per requires-grad pattern, and
    # y0 itself gets no gradient. Same solution and parameter gradient as eager.
    from torch._dynamo.utils import counters

    func = Linear()  # a fresh module: nothing of it is compiled yet
    t = torch.linspace(0.0, 2.0, 3, dtype=torch.float64)
    y0 = Y0.clone()
    graphs = counters["stats"]["unique_graphs"]
    ys_c = psg.odeint(func, y0, t, method=method, rtol=1e-6, atol=1e-8, sensealg=psg.DirectAD(),
                      options={"compile": EAGER})
    assert counters["stats"]["unique_graphs"] - graphs == 1
    ys_c.square().sum().backward()
    g_c = func.A.grad.clone()
    func.zero_grad()
    ys_e = psg.odeint(func, y0, t, method=method, rtol=1e-6, atol=1e-8, sensealg=psg.DirectAD())
    ys_e.square().sum().backward()
    assert y0.grad is None and ys_c[0] is not None and torch.equal(ys_c[0], y0)
    assert torch.allclose(ys_c, ys_e, rtol=0, atol=1e-12) and torch.allclose(g_c, func.A.grad, rtol=0, atol=1e-12)


@pytest.mark.filterwarnings("error::pysciml_grad.errors.CompileFallbackWarning")  # it must really compile
@pytest.mark.parametrize("method", ["dopri5", "heun_euler"])  # FSAL, and not (the host makes the next k0)
def test_endpoint_only_solve_returns_one_stage_and_the_same_gradient(method):
    # Saving only at t1 (theta = 1 is y_next itself) serves nothing from dense output, so the
    # step graph returns only the stage the next step starts from (FSAL; none otherwise). Save
    # times do not move the steps, so y(t1), the work and the gradient equal those of a solve
    # that saves inside the interval (whose graph returns every stage), and the eager ones.
    from pysciml_grad.backends.torch.compiled import _CACHE, StepOutputs

    results = []
    for t in (torch.tensor([0.0, 2.0], dtype=torch.float64), torch.linspace(0.0, 2.0, 5, dtype=torch.float64)):
        for opt in ({"compile": EAGER}, {}):
            FUNC.zero_grad()
            y0 = Y0.clone().requires_grad_(True)
            ys, st = psg.odeint(FUNC, y0, t, method=method, rtol=1e-6, atol=1e-8, sensealg=psg.DirectAD(),
                                options={**opt, "return_stats": True})
            ys[-1].square().sum().backward()
            results.append((ys[-1].detach(), y0.grad.clone(), FUNC.A.grad.clone(), (st.nfe, st.n_steps, st.n_rejected)))
    for other in results[1:]:
        for a, b in zip(results[0][:3], other[:3]):
            assert torch.allclose(a, b, rtol=0, atol=1e-12)
        assert other[3] == results[0][3]
    tab = psg.backends.torch.tableaus.TABLEAUS[method]
    steps = [k for k in _CACHE[FUNC] if k[0] is tab and k[6] is True and k[-1] == 1]  # single steps with grad
    assert {k[-2] for k in steps} >= {StepOutputs.NEXT, StepOutputs.ALL}  # the endpoint-only solve, the other


def _directad_solve(func, y0, t, rtol=1e-8, atol=1e-10, method="dopri5", **opts):
    """(y(t), dL/dy0, dL/dparams, (nfe, steps, rejected)) of a DirectAD solve,
    L = sum(y(t)^2) over the save times."""
    func.zero_grad()
    y0 = y0.clone().requires_grad_(True)
    ys, st = psg.odeint(func, y0, t, rtol=rtol, atol=atol, method=method, sensealg=psg.DirectAD(),
                        options={**opts, "return_stats": True})
    ys.square().sum().backward()
    grads = [p.grad.clone() for p in func.parameters()]
    return ys.detach(), y0.grad.clone(), grads, (st.nfe, st.n_steps, st.n_rejected)


def _assert_same_solve(a, b, tol=1e-12):
    for x, y in zip(a[:2] + tuple(a[2]), b[:2] + tuple(b[2])):
        assert torch.isfinite(x).all() and torch.allclose(x, y, rtol=tol, atol=tol), (x, y)


def _calls(func, outputs, trials):
    from pysciml_grad.backends.torch.compiled import _CACHE

    return sum(e.calls for k, e in _CACHE[func].items() if k[-2:] == (outputs, trials))


@pytest.mark.filterwarnings("error::pysciml_grad.errors.CompileFallbackWarning")  # it must really compile
@pytest.mark.parametrize("n_saves", [2, 9])  # the end point only; and saves from dense output
@pytest.mark.parametrize("backwards", [False, True], ids=["forward-in-time", "backward-in-time"])
def test_directad_two_trials_per_call_same_solve_as_one_and_as_eager(n_saves, backwards):
    # A DirectAD solve of an FSAL table takes its trial steps two per compiled call
    # (make_pair); the first step, 1.5 of an interval of 4, is rejected inside the first
    # pair, which is then dropped and its trials redone one per call. Same trials, saves
    # and gradients (to y0 and A, through the dense output of both trials' stages) as one
    # trial per call and as the eager loop; the pairs did the rest of the work, and each
    # dropped pair's 2 x 6 evaluations are counted.
    from pysciml_grad.backends.torch.compiled import StepOutputs

    func = Linear()
    t = torch.linspace(0.0, 4.0, n_saves, dtype=torch.float64)
    t = t.flip(0) if backwards else t  # (h < 0: the end test is (t + h - t_end) h >= 0)
    outputs = StepOutputs.NEXT if n_saves == 2 else StepOutputs.ALL
    eager = _directad_solve(func, Y0, t, first_step=1.5)
    one = _directad_solve(func, Y0, t, first_step=1.5, compile={**EAGER, "trials_per_call": 1})
    assert _calls(func, outputs, 2) == 0
    two = _directad_solve(func, Y0, t, first_step=1.5, compile=EAGER)
    assert eager[3][2] >= 1 and eager[3] == one[3] and two[3][1:] == one[3][1:]  # a rejection, the same trials
    _assert_same_solve(two, eager)
    _assert_same_solve(two, one)
    dropped, extra = divmod(two[3][0] - one[3][0], 2 * 6)
    assert dropped >= 1 and extra == 0
    trials = eager[3][1] + eager[3][2]
    pairs, single = _calls(func, outputs, 2), _calls(func, outputs, 1) - trials  # less the solve of `one`
    final = _calls(func, StepOutputs.NONE, 1) if n_saves == 2 else 0
    assert pairs > dropped and 2 * (pairs - dropped) + single + final == trials, (pairs, dropped, single, final)


class SqrtDecay(torch.nn.Module):
    """dy/dt = -w sqrt(y): y(t) = (sqrt(y0) - w t / 2)^2 while positive; NaN for a trial
    stage that overshoots below 0."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(3.0, dtype=torch.float64))

    def forward(self, t, y):
        return -self.w * torch.sqrt(y)


@pytest.mark.filterwarnings("error::pysciml_grad.errors.CompileFallbackWarning")  # it must really compile
def test_pair_with_a_nonfinite_trial_is_redone_one_trial_at_a_time():
    # The first trial (h = 0.4 on [0, 0.5]) drives a stage below 0, so sqrt gives NaN and
    # the trial is rejected inside the pair; the second (the retry, h = 0.08) is accepted.
    # The first one's values stay in the pair's graph, on the path to the second's start
    # (torch.where), and the backward multiplies their derivatives (1 / (2 sqrt(y)) = NaN) by
    # the zero cotangent: a NaN gradient. The host drops such a pair and redoes its trials
    # one per call: finite gradients, equal to eager's; the closed form checks y(t1); the
    # dropped pair's 2 x 6 evaluations are counted.
    func = SqrtDecay()
    y0 = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    t = torch.tensor([0.0, 0.5], dtype=torch.float64)
    tol = dict(rtol=1e-3, atol=1e-6, first_step=0.4)
    eager = _directad_solve(func, y0, t, **tol)
    comp = _directad_solve(func, y0, t, **tol, compile=EAGER)
    exact = (y0.sqrt() - 3.0 * 0.5 / 2) ** 2
    assert torch.allclose(comp[0][-1], exact, rtol=1e-2, atol=0)  # (rtol 1e-3 per step)
    _assert_same_solve(comp, eager)
    assert eager[3][2] >= 1 and comp[3][1:] == eager[3][1:] and comp[3][0] == eager[3][0] + 2 * 6  # one pair dropped


class GuardedSqrt(torch.nn.Module):
    """dy/dt = -w (y - 0.5) + 1e-3 sqrt(y - 0.45) where y > 0.45, else the same without the
    root: finite everywhere, but the derivative of the root's branch is NaN below 0.45
    (torch.where differentiates both branches; the untaken one's NaN times 0 is NaN)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(5.0, dtype=torch.float64))

    def forward(self, t, y):
        safe = torch.where(y > 0.45, (y - 0.45).sqrt(), torch.zeros_like(y))
        return -self.w * (y - 0.5) + 1e-3 * safe


@pytest.mark.filterwarnings("error::pysciml_grad.errors.CompileFallbackWarning")  # it must really compile
def test_pair_with_a_rejected_trial_whose_derivative_is_nan_is_dropped():
    # The first trial (h = 0.4) is rejected with a finite error ratio, but its stages go
    # below 0.45, where func's derivative is NaN (the guarded sqrt); the second trial is
    # accepted. Kept, the pair's backward would multiply that NaN by the rejected trial's
    # zero cotangent: dL/dw NaN where eager's is finite (found in review). Every pair with a
    # rejected trial is dropped and redone one trial per call: eager's gradient.
    func = GuardedSqrt()
    y0 = torch.tensor([1.0, 0.9], dtype=torch.float64)
    t = torch.tensor([0.0, 3.0], dtype=torch.float64)
    tol = dict(rtol=1e-3, atol=1e-8, first_step=0.4)
    eager = _directad_solve(func, y0, t, **tol)
    comp = _directad_solve(func, y0, t, **tol, compile=EAGER)
    _assert_same_solve(comp, eager)
    assert eager[3][2] >= 1 and comp[3][1:] == eager[3][1:]


@pytest.mark.filterwarnings("error::pysciml_grad.errors.CompileFallbackWarning")  # it must really compile
def test_trial_that_ends_an_endpoint_solve_with_grad_returns_no_stage():
    # The trial that the host sees reaching t1 runs in the graph that returns no stage
    # (StepOutputs.NONE): its FSAL stage f(t1, y1) is not an output, so AOT autograd's
    # backward does not run a func VJP for it with a zero cotangent. Same solve as one trial per call.
    from pysciml_grad.backends.torch.compiled import StepOutputs

    func = Linear()
    t = torch.tensor([0.0, 0.05], dtype=torch.float64)  # the first step (0.1, cut to 0.05) covers it
    comp = _directad_solve(func, Y0, t, first_step=0.1, compile=EAGER)
    one = _directad_solve(func, Y0, t, first_step=0.1, compile={**EAGER, "trials_per_call": 1})
    assert comp[3] == one[3] and comp[3][1] == 1
    _assert_same_solve(comp, one)
    assert _calls(func, StepOutputs.NONE, 1) == comp[3][1] + comp[3][2] and _calls(func, StepOutputs.NEXT, 2) == 0


@pytest.mark.filterwarnings("error::pysciml_grad.errors.CompileFallbackWarning")  # it must really compile
@pytest.mark.parametrize("step_size, t1, n_saves", [(0.25, 2.0, 2), (0.25, 2.25, 2), (0.3, 2.7, 7)])
def test_fixed_step_directad_two_steps_per_call_same_solve_as_one_and_as_eager(step_size, t1, n_saves):
    # (8 steps; 9, the last one alone; 9 with save times between grid points.) With grad the fixed-step loop takes two grid steps per compiled call (make_fixed_pair)
    # and one for an odd last step. Same states, saves (theta = 1 and Hermite dense output
    # between grid points) and gradients as one step per call and as eager; the pair did
    # the work.
    func = Linear()
    t = torch.linspace(0.0, t1, n_saves, dtype=torch.float64)
    opts = dict(method="rk4", step_size=step_size)
    eager = _directad_solve(func, Y0, t, **opts)
    one = _directad_solve(func, Y0, t, **opts, compile={**EAGER, "trials_per_call": 1})
    two = _directad_solve(func, Y0, t, **opts, compile=EAGER)
    assert eager[3][1:] == one[3][1:] == two[3][1:]
    _assert_same_solve(two, eager)
    _assert_same_solve(two, one)
    from pysciml_grad.backends.torch.compiled import _CACHE

    calls = {k[-1]: e.calls for k, e in _CACHE[func].items() if k[0] == "fixed" and k[6] is True}
    steps = eager[3][1]
    assert steps == round(t1 / step_size)
    assert calls[2] == steps // 2 and calls[1] == steps + steps % 2, calls  # `one`'s solve, then the remainder


@pytest.mark.filterwarnings("error::pysciml_grad.errors.CompileFallbackWarning")  # it must really compile
@pytest.mark.parametrize("n_saves", [2, 4])
def test_compiled_fixed_step_follows_grid_constructor(n_saves):
    # options['grid_constructor'] (torchdiffeq's) gives the step points; the compiled
    # fixed-step loop stepped on t alone (found in review: 1 rk4 step instead of 3, y off by
    # 1.7e-2). Same grid, states, saves (Hermite between grid points) and gradients as eager.
    func = Linear()
    t = torch.linspace(0.0, 1.0, n_saves, dtype=torch.float64)

    def grid(f, y0, tt):
        return torch.tensor([0.0, 0.1, 0.5, 1.0], dtype=torch.float64)

    opts = dict(method="rk4", grid_constructor=grid)
    eager = _directad_solve(func, Y0, t, **opts)
    comp = _directad_solve(func, Y0, t, **opts, compile=EAGER)
    assert eager[3][1] == comp[3][1] == 3
    _assert_same_solve(comp, eager)


class ZLogp(torch.nn.Module):
    """A structured state (z, logp), FFJORD's shape: dz/dt = z A^T, dlogp/dt = -|z|^2."""

    def __init__(self):
        super().__init__()
        self.A = torch.nn.Parameter(A.clone())

    def forward(self, t, state):
        z, _ = state
        return z @ self.A.T, -(z**2).sum(-1)


@pytest.mark.filterwarnings("error::pysciml_grad.errors.CompileFallbackWarning")  # it must really compile
@pytest.mark.parametrize("sensealg", [None, psg.DirectAD()], ids=["no_grad", "DirectAD"])
def test_structured_state_compiles_once_not_once_per_solve(sensealg):
    # odeint wraps func in a new StructuredFunc on every call; the compiled steps were keyed
    # by that wrapper, so every solve of a (z, logp) state compiled again (found in review).
    # Keyed by the user's func and the structure: the second and third solves compile
    # nothing, and give eager's values and gradients.
    from torch._dynamo.utils import counters

    func = ZLogp()
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    z0, l0 = Y0.clone(), torch.zeros(3, dtype=torch.float64)
    graphs = []
    out = {}
    for opts in ({"compile": EAGER}, {"compile": EAGER}, {"compile": EAGER}, {}):
        func.zero_grad()
        before = counters["stats"]["unique_graphs"]
        with torch.set_grad_enabled(sensealg is not None):
            zs, ls = psg.odeint(func, (z0, l0), t, rtol=1e-8, atol=1e-10, options=opts,
                                **({} if sensealg is None else {"sensealg": sensealg}))
            if sensealg is not None:
                (zs.square().sum() + ls.sum()).backward()
        graphs.append(counters["stats"]["unique_graphs"] - before)
        out["compiled" if opts else "eager"] = (zs.detach(), ls.detach(), None if sensealg is None else func.A.grad.clone())
    assert graphs[0] >= 1 and graphs[1:3] == [0, 0], graphs
    for a, b in zip(out["compiled"], out["eager"]):
        assert a is None or torch.allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("max_num_steps", [4, 5])
def test_max_num_steps_counts_the_trials_of_a_pair(max_num_steps):
    # Two trials per call never run past max_num_steps: the error comes at the same trial,
    # from the same t, as in the eager loop (odd and even limits).
    from pysciml_grad.errors import MaxStepsExceededError

    func = Linear()
    t = torch.tensor([0.0, 20.0], dtype=torch.float64)
    messages = []
    for opts in ({}, {"compile": EAGER}):
        with pytest.raises(MaxStepsExceededError) as err:
            _directad_solve(func, Y0, t, max_num_steps=max_num_steps, **opts)
        messages.append(str(err.value))
    assert messages[0] == messages[1], messages


@pytest.mark.parametrize("value", [3, 0, True, "2", 2.0])
def test_trials_per_call_must_be_1_or_2(value):
    with pytest.raises(InvalidProblemError, match="trials_per_call"):
        psg.odeint(FUNC, Y0, torch.tensor([0.0, 1.0], dtype=torch.float64), options={"compile": {"trials_per_call": value}})


@pytest.mark.filterwarnings("error::pysciml_grad.errors.CompileFallbackWarning")  # it must really compile
def test_checkpoint_adjoint_compiled_vjp_float32_and_closure_tensor():
    # float32, and a closed-over non-leaf tensor W = 1.5 base found by discovery: the
    # compiled step VJP differentiates w.r.t. W and autograd carries dL/dW on to base.
    # Two save times, so every replayed step (the last one serving t_end included) goes
    # through the compiled VJP; equal to the eager replay to float32 rounding.
    base = A.float().clone().requires_grad_(True)
    W = base * 1.5

    def func(t, y):
        return torch.tanh(y @ W.T) + 0.1 * torch.sin(t)

    past_audits(func)
    t = torch.tensor([0.0, 2.0])
    out = []
    for opt in ({"compile": EAGER, "return_stats": True}, {"return_stats": True}):
        base.grad = None
        y0 = Y0.float().clone().requires_grad_(True)
        ys, st = psg.odeint(func, y0, t, rtol=1e-6, atol=1e-8, sensealg=psg.CheckpointAdjoint(), options=opt)
        ys[-1].square().sum().backward(retain_graph=True)
        out.append((ys.detach(), y0.grad.clone(), base.grad.clone(), st.n_steps))
    assert out[0][3] == out[1][3]
    for c, e in zip(out[0][:3], out[1][:3]):
        assert torch.allclose(c, e, rtol=1e-6, atol=1e-6)
    from pysciml_grad.backends.torch.compiled import _CACHE

    vjps = [e for k, e in _CACHE[func].items() if k[0] == "replay_vjp"]
    assert vjps[0].calls == out[0][3] and vjps[0].broken is None  # every accepted step


def test_func_that_breaks_the_graph_falls_back_with_warning():
    class Sync(torch.nn.Module):
        def forward(self, t, y):
            if float(y.abs().max()) > 1e6:  # a host sync + data-dependent branch: a graph break
                raise RuntimeError("blow-up")
            return -y

    t = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
    with torch.no_grad(), pytest.warns(CompileFallbackWarning, match="runs eagerly"):
        ys = psg.odeint(Sync(), Y0, t, rtol=1e-8, atol=1e-10, options={"compile": EAGER})
    exact = Y0 * torch.exp(-t)[:, None, None]
    assert torch.allclose(ys, exact, atol=1e-7)


@pytest.mark.filterwarnings("error::pysciml_grad.errors.CompileFallbackWarning")  # it must really compile
@pytest.mark.parametrize("options", [{}, {"step_size": 0.13}])
def test_fixed_step_rk4_matches_eager_and_checkpoint_gradient(options):
    # On the grid t, and with a step_size whose steps serve saves by Hermite interpolation.
    t = torch.linspace(0.0, 1.0, 6, dtype=torch.float64)
    out = []
    for opt in ({**options, "compile": EAGER}, options):
        FUNC.zero_grad()
        y0 = Y0.clone().requires_grad_(True)
        ys = psg.odeint(FUNC, y0, t, method="rk4", sensealg=psg.CheckpointAdjoint(), options=opt)
        ys.square().sum().backward()
        out.append((ys.detach(), y0.grad.clone(), FUNC.A.grad.clone()))
    for c, e in zip(*out):
        assert torch.allclose(c, e, rtol=0, atol=1e-13)
    # rk4 is 4th order: against the closed-form-quality SciPy solution at h = 0.2 / 0.13.
    assert np.abs(out[0][0].numpy() - scipy_reference(Y0.numpy(), t.numpy())).max() < 1e-4


@pytest.mark.parametrize("method", ["leapfrog", "explicit_adams"])
def test_multistep_methods_warn_and_run_eagerly(method):
    t = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    with torch.no_grad(), pytest.warns(CompileFallbackWarning, match="Runge-Kutta"):
        ys = psg.odeint(FUNC, Y0, t, method=method, options={"compile": True})
    with torch.no_grad():
        assert torch.equal(ys, psg.odeint(FUNC, Y0, t, method=method))


def test_perturb_with_a_fixed_step_method_runs_eagerly():
    # torchdiffeq's perturb nudges stage times by one ulp; the compiled step does not, so it
    # must not silently drop the option.
    t = torch.linspace(0.0, 1.0, 6, dtype=torch.float64)
    with torch.no_grad(), pytest.warns(CompileFallbackWarning, match="perturb"):
        ys = psg.odeint(FUNC, Y0, t, method="rk4", options={"compile": EAGER, "perturb": True})
    with torch.no_grad():
        assert torch.equal(ys, psg.odeint(FUNC, Y0, t, method="rk4", options={"perturb": True}))


@pytest.mark.parametrize("value, error", [("yes", InvalidProblemError), ({"fullgraph": False}, InvalidProblemError)])
def test_bad_compile_option_is_refused(value, error):
    with pytest.raises(error, match="compile"):
        psg.odeint(FUNC, Y0, torch.tensor([0.0, 1.0], dtype=torch.float64), options={"compile": value})


def test_julia_engine_refuses_compile():
    with pytest.raises(UnknownOptionError, match="compile"):
        psg.odeint(FUNC, Y0, torch.tensor([0.0, 1.0], dtype=torch.float64), backend="julia",
                   options={"compile": True})


@pytest.mark.inductor
@pytest.mark.skipif(os.environ.get("PSG_INDUCTOR_TESTS") != "1", reason="inductor compile takes 30-90 s; set PSG_INDUCTOR_TESTS=1")
def test_inductor_no_recompile_and_same_solution():
    from torch._dynamo.utils import counters

    t = torch.linspace(0.0, 3.0, 7, dtype=torch.float64)
    with torch.no_grad():
        ys_c = psg.odeint(FUNC, Y0, t, rtol=1e-8, atol=1e-10, options={"compile": True})
        ys_e = psg.odeint(FUNC, Y0, t, rtol=1e-8, atol=1e-10)
        assert torch.allclose(ys_c, ys_e, rtol=0, atol=1e-12)
        graphs = counters["stats"]["unique_graphs"]
        with torch.compiler.set_stance("fail_on_recompile"):
            for k in range(20):
                psg.odeint(FUNC, Y0 * (1 + k / 10), t * (1 + k / 7), rtol=1e-8, atol=1e-10, options={"compile": True})
    assert counters["stats"]["unique_graphs"] == graphs


def test_fixed_step_cuda_graph_mode_only_for_cuda_without_grad():
    # CUDA graphs (reduce-overhead) are the fixed-step default only where a step builds no
    # graph; the CPU path and an explicit user mode are left as they are.
    from pysciml_grad.backends.torch.compiled import fixed_step_settings

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert fixed_step_settings({}, cuda, grad=False) == {"mode": "reduce-overhead"}
    assert fixed_step_settings({}, cuda, grad=True) == {}
    assert fixed_step_settings({"mode": "default"}, cuda, grad=False) == {"mode": "default"}
    assert fixed_step_settings({"backend": "eager"}, cpu, grad=False) == {"backend": "eager"}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available on this machine")
def test_cuda_fixed_step_on_cuda_graphs_matches_eager():
    func = Linear().cuda()
    y0 = Y0.cuda()
    t = torch.linspace(0.0, 1.0, 6, dtype=torch.float64, device="cuda")
    with torch.no_grad():
        ys_c = psg.odeint(func, y0, t, method="rk4", options={"compile": True, "step_size": 0.13})
        ys_e = psg.odeint(func, y0, t, method="rk4", options={"step_size": 0.13})
    assert torch.allclose(ys_c, ys_e, rtol=0, atol=1e-12)
    from pysciml_grad.backends.torch.compiled import _CACHE

    fixed = [k for k in _CACHE[func] if k[0] == "fixed"]
    assert fixed and ("mode", repr("reduce-overhead")) in fixed[0][-1]


@pytest.mark.filterwarnings("error::pysciml_grad.errors.CompileFallbackWarning")  # it must really compile
def test_backsolve_backward_runs_on_the_compiled_step_and_matches_eager():
    # The backward solve of [y, a, g] runs on a compiled adaptive step (augmented RHS with
    # its VJPs traced, mixed block norm in the graph): same steps as the eager backward
    # solve (the controller is the same arithmetic), gradients equal to rounding.
    t = torch.linspace(0.0, 2.0, 3, dtype=torch.float64)
    out = compiled_and_eager_gradients(psg.BacksolveAdjoint(), t)
    assert out[0][2] == out[1][2]
    for c, e in zip(out[0][:2], out[1][:2]):
        assert torch.allclose(c, e, rtol=1e-12, atol=1e-12)
    assert compiled_calls_ran("backsolve")


def test_stop_points_run_eagerly_with_a_warning():
    # The compiled loop does not end steps on jump_t / step_t: it must not ignore them.
    def func(t, y):
        return -y * (1.0 + (t > 0.5).to(y.dtype))

    t = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
    with torch.no_grad():
        for opt in ({"jump_t": [0.37]}, {"step_t": [0.37]}):
            with pytest.warns(CompileFallbackWarning, match="jump_t"):
                ys = psg.odeint(func, Y0, t, rtol=1e-8, atol=1e-10, options={**opt, "compile": EAGER})
            assert torch.equal(ys, psg.odeint(func, Y0, t, rtol=1e-8, atol=1e-10, options=opt))


@pytest.mark.filterwarnings("error::pysciml_grad.errors.CompileFallbackWarning")  # it must really compile
def test_checkpoint_adjoint_dense_saves_replay_on_the_compiled_vjp():
    # 41 save times: most accepted steps serve dense saves. Their cotangents seed the
    # stages inside the compiled VJP (h W^T G); the gradient equals the eager replay's.
    t = torch.linspace(0.0, 2.0, 41, dtype=torch.float64)
    weight = torch.arange(41.0, dtype=torch.float64)[:, None, None]
    compiled, eager = compiled_and_eager_gradients(psg.CheckpointAdjoint(), t, weight)
    for g_c, g_e in zip(compiled[:2], eager[:2]):
        assert torch.allclose(g_c, g_e, rtol=1e-12, atol=1e-12)
    assert compiled_calls_ran("replay_vjp_dense")


@pytest.mark.filterwarnings("error::pysciml_grad.errors.CompileFallbackWarning")  # it must really compile
@pytest.mark.parametrize("sensealg", [psg.InterpolatingAdjoint(), psg.QuadratureAdjoint()], ids=["interpolating", "quadrature"])
def test_interpolating_adjoints_backward_on_the_compiled_step_match_eager(sensealg):
    # The backward solve of [a, g] (Interpolating) or [a] (Quadrature, g by its Gauss-Legendre
    # panels on the accepted steps, one compiled call each) runs on the compiled adaptive
    # step with y(t) looked up on the device (dense_table.lookup): the same steps as the
    # eager backward (same nfe), the gradients equal to 1e-10. 4 save times, so the solve
    # restarts at save times too.
    t = torch.linspace(0.0, 2.0, 4, dtype=torch.float64)
    out = compiled_and_eager_gradients(sensealg, t, torch.arange(1.0, 5.0, dtype=torch.float64)[:, None, None])
    assert out[0][2] == out[1][2]
    for c, e in zip(out[0][:2], out[1][:2]):
        assert torch.allclose(c, e, rtol=0, atol=1e-10)
    kinds = ["interpolating"] if isinstance(sensealg, psg.InterpolatingAdjoint) else ["quadrature", "quadrature_panel"]
    for kind in kinds:  # QuadratureAdjoint: its Gauss-Legendre panels are compiled calls too
        assert compiled_calls_ran(kind), kind


@pytest.mark.filterwarnings("error::pysciml_grad.errors.CompileFallbackWarning")  # it must really compile
def test_interpolating_adjoint_backward_no_recompile_over_20_calls_with_random_times():
    # New t, step counts and step sizes reach the compiled backward step as tensor values
    # (the dense table is padded to a capacity of 64 steps), never as guards.
    from torch._dynamo.utils import counters

    past_audits(FUNC)
    gen = torch.Generator().manual_seed(2)

    def solve(t, y0):
        y0 = y0.clone().requires_grad_(True)
        ys = psg.odeint(FUNC, y0, t, rtol=1e-6, atol=1e-8, sensealg=psg.InterpolatingAdjoint(),
                        options={"compile": EAGER})
        ys.square().sum().backward()
        return y0.grad

    solve(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64), Y0)
    graphs = counters["stats"]["unique_graphs"]
    recompiles = sum(counters["recompiles"].values())
    with torch.compiler.set_stance("fail_on_recompile"):  # a recompile raises here
        for _ in range(20):
            t = random_times(gen)
            assert torch.isfinite(solve(t, torch.randn(3, 2, generator=gen, dtype=torch.float64))).all()
    assert counters["stats"]["unique_graphs"] == graphs
    assert sum(counters["recompiles"].values()) == recompiles


@pytest.mark.parametrize("sensealg", [psg.InterpolatingAdjoint(), psg.QuadratureAdjoint()], ids=["interpolating", "quadrature"])
def test_interpolating_adjoint_func_that_breaks_the_graph_falls_back_with_warning(sensealg):
    # func cannot be captured (a host read and a data-dependent branch): the backward solve
    # warns and runs eagerly (QuadratureAdjoint's panels too), with the eager backward's gradient.
    class Sync(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.A = torch.nn.Parameter(A.clone())

        def forward(self, t, y):
            if float(y.abs().max()) > 1e6:
                raise RuntimeError("blow-up")
            return y @ self.A.T

    func = past_audits(Sync())
    t = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
    grads = []
    for opt in ({"compile": EAGER}, {}):
        func.zero_grad()
        y0 = Y0.clone().requires_grad_(True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CompileFallbackWarning)
            ys = psg.odeint(func, y0, t, rtol=1e-8, atol=1e-10, sensealg=sensealg, options=opt)
            ys.square().sum().backward()
        grads.append((y0.grad.clone(), func.A.grad.clone(), [str(w.message) for w in caught
                                                             if issubclass(w.category, CompileFallbackWarning)]))
    # The forward warns once; the backward warns when the first save interval's capture fails.
    assert len(grads[0][2]) >= 2 and all("runs eagerly" in m for m in grads[0][2]) and not grads[1][2]
    from pysciml_grad.backends.torch.compiled import _CACHE

    kinds = ["interpolating"] if isinstance(sensealg, psg.InterpolatingAdjoint) else ["quadrature", "quadrature_panel"]
    for kind in kinds:
        assert [e.broken for k, e in _CACHE[func].items() if k[0] == kind][0] is not None, kind
    for c, e in zip(grads[0][:2], grads[1][:2]):
        assert torch.equal(c, e)


def test_dense_table_lookup_equals_the_eager_trajectory():
    # The stacked dense output (searchsorted + gather + polynomial) gives y(t) of the eager
    # Trajectory to rounding: dopri5's continuous extension and bosh3's cubic Hermite, forward
    # and backward in time, at 201 times including step boundaries and both ends.
    from pysciml_grad.backends.torch import dense_table
    from pysciml_grad.backends.torch.adjoints.continuous import Trajectory
    from pysciml_grad.backends.torch.control import SolverOptions
    from pysciml_grad.backends.torch.forward import lookup_method
    from pysciml_grad.backends.torch.integrate import Counters, CountingRHS, integrate_adaptive

    for name in ("dopri5", "bosh3"):
        for d in (1.0, -1.0):
            tab = lookup_method(name).tableau
            rhs = CountingRHS(FUNC, Y0.dtype, Y0.device)
            traj = Trajectory(tab, rhs, d, False)
            with torch.no_grad():
                ys = integrate_adaptive(rhs, tab, [0.0, 2.0 * d], Y0, rhs(0.0, Y0), 1e-6, 1e-8, SolverOptions(), False,
                                        Counters(), traj.record)
                traj.close(2.0 * d, ys[-1])
                table = traj.dense_table()
                times = torch.cat([torch.linspace(0.0, 2.0 * d, 201, dtype=torch.float64),
                                   torch.tensor(traj.times, dtype=torch.float64)])
                err = max(float((traj(float(x)).reshape(-1) - dense_table.lookup(x, *table.tensors())).abs().max())
                          for x in times)
            assert len(traj.times) > 5 and err < 1e-14, (name, d, err)


#: A counter outside any module: dynamo reads ``EVALUATIONS[0]`` as a constant of the graph
#: and guards on it, so every call of a compiled step fails its guards and recompiles.
EVALUATIONS = [0]


class CountsInAGlobal(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.A = torch.nn.Parameter(A.clone())

    def forward(self, t, y):
        EVALUATIONS[0] += 1
        return y @ self.A.T + 0.1 * torch.sin(t)


@pytest.mark.parametrize("sensealg, method", [(psg.DirectAD(), {}), (psg.CheckpointAdjoint(), {}),
                                              (psg.InterpolatingAdjoint(), {}),
                                              (psg.CheckpointAdjoint(), {"method": "rk4", "step_size": 0.04})],
                         ids=["DirectAD", "CheckpointAdjoint", "InterpolatingAdjoint", "CheckpointAdjoint-rk4"])
def test_a_func_whose_python_state_changes_every_call_falls_back_to_eager_mid_solve(sensealg, method):
    # Each call recompiles; the ninth hits dynamo's recompile_limit mid-solve. That raised
    # FailOnRecompileLimitHit (a torch exception) out of odeint; now the solve goes on eagerly
    # from that step, recording nothing twice.
    from torch._dynamo.utils import counters

    func = past_audits(CountsInAGlobal())
    t = torch.linspace(0.0, 1.0, 6, dtype=torch.float64)  # the ninth call comes after some saves
    results = []
    graphs = counters["stats"]["unique_graphs"]
    for opt in ({"compile": EAGER}, {}):
        for _ in range(3):  # 3 solves: far more step calls than the recompile limit (8)
            func.zero_grad()
            y0 = Y0.clone().requires_grad_(True)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", CompileFallbackWarning)
                before = EVALUATIONS[0]
                step = {"step_size": method["step_size"]} if method else {}
                ys = psg.odeint(func, y0, t, rtol=1e-8, atol=1e-10, sensealg=sensealg, method=method.get("method", "dopri5"),
                                options={**opt, **step})
                ys.square().sum().backward()
            messages = [str(w.message) for w in caught if issubclass(w.category, CompileFallbackWarning)]
            results.append((ys.detach(), y0.grad.clone(), func.A.grad.clone(), messages, EVALUATIONS[0] - before))
    from pysciml_grad.backends.torch.compiled import _CACHE

    # Each compiled function of func (the step; CheckpointAdjoint's replays) compiles at most
    # recompile_limit times, then the solve goes on eagerly.
    entries = list(_CACHE[func].values())
    assert counters["stats"]["unique_graphs"] - graphs <= torch._dynamo.config.recompile_limit * len(entries)
    assert any(e.broken is not None for e in entries)  # the step (DirectAD: the pair of trials) or a replay
    compiled, eager = results[:3], results[3:]
    assert any("changes between calls" in m for c in compiled for m in c[3])  # in the first solve, or
    # (DirectAD: two trial steps per call, so half as many calls) in the second
    for c, e in zip(compiled, eager):
        assert not e[3]
        for x, y in zip(c[:3], e[:3]):  # the solve goes on eagerly; the steps after the hand-over may differ
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-8)


@pytest.mark.filterwarnings("error::pysciml_grad.errors.CompileFallbackWarning")  # it must really compile
def test_a_counter_on_a_module_attribute_counts_the_compiled_evaluations_and_stops_recompiling():
    from torch._dynamo.utils import counters

    class CountsOnItself(Linear):
        nfe = 0

        def forward(self, t, y):
            self.nfe += 1
            return super().forward(t, y)

    func = CountsOnItself()
    t = torch.linspace(0.0, 1.0, 6, dtype=torch.float64)
    with torch.no_grad():
        psg.odeint(func, Y0, t, rtol=1e-8, atol=1e-10, options={"compile": EAGER})  # compiles
        graphs = counters["stats"]["unique_graphs"]
        for _ in range(3):
            func.nfe = 0
            _, stats = psg.odeint(func, Y0, t, rtol=1e-8, atol=1e-10, options={"compile": EAGER, "return_stats": True})
            assert func.nfe == stats.nfe > 20
    assert counters["stats"]["unique_graphs"] == graphs


def test_compiled_cache_lets_a_dropped_func_go():
    """The cache is weakly keyed on func; its graphs used to close over func, so every
    compiled func stayed alive (the weakref below survived gc.collect)."""
    import gc
    import weakref

    from pysciml_grad.backends.torch.compiled import _CACHE

    func = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))

    class Wrapped(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, t, y):
            return self.net(y)

    model = Wrapped(func)
    y0 = torch.tensor([[1.0, 0.5]], requires_grad=True)
    ys = psg.odeint(model, y0, torch.tensor([0.0, 1.0]), sensealg=psg.DirectAD(), options={"compile": EAGER})
    ys.square().sum().backward()
    assert model in _CACHE
    ref = weakref.ref(model)
    del model, func, ys
    gc.collect()
    assert ref() is None
