"""Per-sample step sizes (``options={"steps": psg.PerSampleSteps()}``, issue 13).

Oracles: each sample solved alone with its own 1-D t at the same tolerances (results and
gradients to 1e-6 in float64), the exact solution cos(w t) of harmonic oscillators, and
DirectAD vs CheckpointAdjoint (the same discrete map: equal to rounding).
"""

import math

import pytest
import torch

import pysciml_grad as psg
from test_batching import NAN, RAGGED_OWN_SPANS, DESCENDING, TimeDependent, oscillators

STEPS = {"steps": psg.PerSampleSteps()}
Y0 = [[0.5, -0.1], [1.0, 0.2], [-0.4, 0.8]]


def _loss(ys):
    w = torch.linspace(0.5, 1.5, ys.numel(), dtype=torch.float64).view(ys.shape)
    return (torch.nan_to_num(ys) * w).sum() + torch.nan_to_num(ys[..., 1]).square().sum()


# dopri5 (its own dense output) on every layout of t; bosh3 (Hermite dense output) on one.
CASES = [("dopri5", RAGGED_OWN_SPANS), ("dopri5", DESCENDING), ("dopri5", "shared"), ("bosh3", RAGGED_OWN_SPANS)]


@pytest.mark.parametrize("method, rows", CASES, ids=["dopri5-own_spans", "dopri5-descending", "dopri5-1d_t", "bosh3-own_spans"])
@pytest.mark.parametrize("sensealg", [psg.DirectAD(), psg.CheckpointAdjoint()], ids=lambda s: type(s).__name__)
def test_per_sample_steps_match_a_loop_of_solo_solves(rows, sensealg, method):
    func = TimeDependent()
    ps = list(func.parameters())
    t = torch.tensor([0.0, 0.4, 0.9, 1.3], dtype=torch.float64) if rows == "shared" else torch.tensor(rows, dtype=torch.float64)
    B = 3 if rows == "shared" else len(rows)
    y0 = torch.tensor(Y0, dtype=torch.float64)[:B].requires_grad_(True)
    # bosh3 (3rd order) at 1e-8: 1e-10 would cost ~5x the steps for no extra coverage.
    kw = dict(rtol=1e-10 if method == "dopri5" else 1e-8, atol=1e-12, method=method)
    ys = psg.odeint(func, y0, t, sensealg=sensealg, options=STEPS, **kw)
    T = t.shape[-1]
    assert ys.shape == (T, B, 2)
    g = torch.autograd.grad(_loss(ys), [y0, *ps])
    refs = []
    for b in range(B):
        tb = t if t.dim() == 1 else t[b][~torch.isnan(t[b])]
        refs.append(psg.odeint(func, y0[b : b + 1], tb, sensealg=sensealg, **kw)[:, 0])
        assert torch.allclose(ys[: len(tb), b], refs[-1], rtol=0, atol=1e-7)
        assert torch.isnan(ys[len(tb) :, b]).all()
    padded = torch.stack([torch.cat([r, torch.full((T - len(r), 2), NAN, dtype=torch.float64)]) for r in refs], 1)
    g_ref = torch.autograd.grad(_loss(padded), [y0, *ps])
    for a, r in zip(g, g_ref):
        assert torch.allclose(a, r, rtol=0, atol=1e-6), (a - r).abs().max()


def test_checkpoint_adjoint_is_the_exact_gradient_of_the_per_sample_steps():
    func = TimeDependent()
    ps = list(func.parameters())
    y0 = torch.tensor(Y0, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(RAGGED_OWN_SPANS, dtype=torch.float64)
    grads = []
    for sensealg in (psg.DirectAD(), psg.CheckpointAdjoint()):
        ys = psg.odeint(func, y0, t, rtol=1e-6, atol=1e-8, sensealg=sensealg, options=STEPS)
        grads.append(torch.autograd.grad(_loss(ys), [y0, *ps]))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=0, atol=1e-12), (a - b).abs().max()


def test_each_sample_keeps_its_solo_accuracy_and_step_count():
    # One fast oscillator (w = 20) among 63 slow ones (w = 1): with per-sample steps the
    # slow samples take their own few steps (a shared step size would give all 64 the fast
    # one's ~500) and the fast one keeps its solo error.
    B, rtol, atol = 64, 1e-6, 1e-9
    t = torch.linspace(0, 5.0, 11, dtype=torch.float64)
    opts = dict(STEPS, return_stats=True)
    with torch.no_grad():
        f, y0, w = oscillators(B)
        ys, stats = psg.odeint(f, y0, t, rtol=rtol, atol=atol, options=opts)
        solo = {}
        for b in (0, 1):
            fb, y0b, _ = oscillators(1, fast=20.0 if b == 0 else 1.0)
            solo[b] = psg.odeint(fb, y0b, t, rtol=rtol, atol=atol, options=opts)
    err = lambda out, wb: float((out[:, 0] - torch.cos(wb * t)).abs().max())  # noqa: E731
    assert err(ys[:, 0], 20.0) <= 2 * err(solo[0][0][:, 0], 20.0)
    assert max(err(ys[:, b], 1.0) for b in range(1, B)) <= 2 * err(solo[1][0][:, 0], 1.0)
    own = solo[0][1].n_steps + (B - 1) * solo[1][1].n_steps
    assert stats.n_steps == own  # every sample's own accepted steps, no more
    assert stats.n_steps < 0.2 * B * solo[0][1].n_steps


CONTINUOUS = [psg.BacksolveAdjoint(), psg.InterpolatingAdjoint(), psg.InterpolatingAdjoint(checkpointing=True),
              psg.QuadratureAdjoint()]
CONTINUOUS_IDS = ["backsolve", "interpolating", "interpolating_checkpointing", "quadrature"]


@pytest.mark.parametrize("rows", [RAGGED_OWN_SPANS, DESCENDING], ids=["own_spans", "descending"])
@pytest.mark.parametrize("sensealg", CONTINUOUS, ids=CONTINUOUS_IDS)
def test_continuous_adjoints_with_per_sample_steps_match_direct_ad_and_solo_solves(sensealg, rows):
    # The backward solve steps per sample too; its gradient is the continuous one, so it
    # agrees with the exact discrete one (DirectAD) and with a loop of solo 1-D solves to
    # the tolerance: rtol 1e-8 -> 1e-6, on ragged rows with their own spans and saves.
    func = TimeDependent()
    ps = list(func.parameters())
    t = torch.tensor(rows, dtype=torch.float64)
    B, T = t.shape
    y0 = torch.tensor(Y0, dtype=torch.float64)[:B].requires_grad_(True)
    kw = dict(rtol=1e-8, atol=1e-10)
    ys = psg.odeint(func, y0, t, sensealg=sensealg, options=STEPS, **kw)
    g = torch.autograd.grad(_loss(ys), [y0, *ps])
    direct = psg.odeint(func, y0, t, sensealg=psg.DirectAD(), options=STEPS, **kw)
    assert torch.equal(torch.nan_to_num(ys), torch.nan_to_num(direct))  # the same forward loop
    g_direct = torch.autograd.grad(_loss(direct), [y0, *ps])
    refs = []
    for b in range(B):
        tb = t[b][~torch.isnan(t[b])]
        r = psg.odeint(func, y0[b : b + 1], tb, sensealg=psg.DirectAD(), **kw)[:, 0]
        refs.append(torch.cat([r, torch.full((T - len(r), 2), NAN, dtype=torch.float64)]))
    g_solo = torch.autograd.grad(_loss(torch.stack(refs, 1)), [y0, *ps])
    for a, d, s in zip(g, g_direct, g_solo):
        assert torch.allclose(a, d, rtol=0, atol=1e-6), (a - d).abs().max()
        assert torch.allclose(a, s, rtol=0, atol=1e-6), (a - s).abs().max()


@pytest.mark.parametrize("sensealg", CONTINUOUS, ids=CONTINUOUS_IDS)
def test_continuous_adjoints_with_per_sample_steps_gradient_with_respect_to_t(sensealg):
    from test_batching import _time_fd, _time_loss

    func = TimeDependent()
    y0 = torch.tensor(Y0, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(RAGGED_OWN_SPANS, dtype=torch.float64, requires_grad=True)
    ys = psg.odeint(func, y0, t, rtol=1e-11, atol=1e-13, sensealg=sensealg, options=STEPS)
    (g,) = torch.autograd.grad(_time_loss(ys), [t])
    fd = _time_fd(RAGGED_OWN_SPANS)
    assert torch.allclose(g, fd, rtol=0, atol=1e-7), (g - fd).abs().max()


def test_continuous_adjoint_with_per_sample_steps_matches_the_exact_sensitivity_of_oscillators():
    # One fast oscillator (w = 20) among slow ones: analytic dL/dy0 for every sample.
    B, rtol, atol = 16, 1e-7, 1e-9
    t = torch.linspace(0, 3.0, 7, dtype=torch.float64)
    f, y0, w = oscillators(B)
    y0 = y0.clone().requires_grad_(True)
    ys = psg.odeint(f, y0, t, rtol=rtol, atol=atol, sensealg=psg.InterpolatingAdjoint(), options=STEPS)
    (g,) = torch.autograd.grad(ys[-1, :, 0].sum(), [y0])
    # y = (cos wt, -w sin wt) solves y' = (y2, -w^2 y1): d y1(T)/d y0 = (cos wT, sin(wT)/w) exactly
    T = float(t[-1])
    exact = torch.stack([torch.cos(w * T), torch.sin(w * T) / w], 1)
    assert torch.allclose(g, exact, rtol=0, atol=1e-5), (g - exact).abs().max()


@pytest.mark.parametrize("kw, error, match", [
    (dict(sensealg=psg.BacksolveAdjoint(adjoint_method="rk4")), psg.errors.UnknownMethodError, "backward solve steps per sample"),
    (dict(sensealg=psg.DirectAD(through_controller=True)), psg.errors.UnsupportedSensitivityError, "not available with PerSampleSteps"),
    (dict(method="rk4"), psg.errors.UnknownMethodError, "adaptive Runge-Kutta"),
    (dict(options={"steps": psg.PerSampleSteps(), "norm": psg.PerSampleNorm()}), psg.errors.UnknownOptionError, "not available with PerSampleSteps"),
    (dict(options={"steps": "per_sample"}), psg.errors.UnknownOptionError, "must be psg.PerSampleSteps"),
])
def test_per_sample_steps_bad_input_raises(kw, error, match):
    kw = dict({"options": STEPS}, **kw)
    with pytest.raises(error, match=match):
        psg.odeint(lambda t, y: -y, torch.ones(2, 1, dtype=torch.float64), torch.tensor([0.0, 1.0]), **kw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_per_sample_steps_on_cuda_match_cpu():
    func = TimeDependent()
    y0 = torch.tensor(Y0, dtype=torch.float64)
    t = torch.tensor(RAGGED_OWN_SPANS, dtype=torch.float64)
    cpu = psg.odeint(func, y0, t, rtol=1e-8, atol=1e-10, options=STEPS)
    gpu = psg.odeint(func.cuda(), y0.cuda(), t.cuda(), rtol=1e-8, atol=1e-10, options=STEPS)
    assert torch.allclose(gpu.cpu(), cpu, rtol=0, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("sensealg", [psg.DirectAD(), psg.CheckpointAdjoint()], ids=lambda s: type(s).__name__)
def test_per_sample_steps_gradient_with_respect_to_t(sensealg):
    from test_batching import _time_fd, _time_loss

    func = TimeDependent()
    y0 = torch.tensor(Y0, dtype=torch.float64)
    t = torch.tensor(RAGGED_OWN_SPANS, dtype=torch.float64, requires_grad=True)
    ys = psg.odeint(func, y0, t, rtol=1e-11, atol=1e-13, sensealg=sensealg, options=STEPS)
    (g,) = torch.autograd.grad(_time_loss(ys), [t])
    fd = _time_fd(RAGGED_OWN_SPANS)
    assert torch.allclose(g, fd, rtol=0, atol=1e-7), (g - fd).abs().max()


def test_per_sample_steps_blow_up_raises_naming_the_sample():
    # y' = y^2 from y0 = 1 blows up at t = 1 (sample 0); sample 1 (y0 = 0.5, at t = 2) does not.
    y0 = torch.tensor([[1.0], [0.5]], dtype=torch.float64)
    with pytest.raises(psg.errors.StepSizeUnderflowError, match=r"sample\(s\) \[0\]"):
        psg.odeint(lambda t, y: y**2, y0, torch.tensor([0.0, 1.9], dtype=torch.float64), options=STEPS)


@pytest.mark.parametrize("budget", [2, 5])
def test_checkpoint_adjoint_with_a_budget_equals_the_unbounded_one_and_holds_at_most_k_states(budget):
    # max_checkpoints=k: the forward keeps about k/2 trial states, the backward recomputes
    # the rest (revolve in the free slots) by the same masked step: the same gradient to
    # rounding, with at most k trial states held at any time.
    func = TimeDependent()
    ps = list(func.parameters())
    y0 = torch.tensor(Y0, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(RAGGED_OWN_SPANS, dtype=torch.float64)
    opts = dict(STEPS, return_stats=True)
    out = {}
    for k in (None, budget):
        ys, stats = psg.odeint(func, y0, t, rtol=1e-10, atol=1e-12, sensealg=psg.CheckpointAdjoint(max_checkpoints=k),
                               options=opts)
        out[k] = (torch.autograd.grad(_loss(ys), [y0, *ps]), stats)
    (g_all, s_all), (g_k, s_k) = out[None], out[budget]
    for a, b in zip(g_all, g_k):
        assert torch.allclose(a, b, rtol=0, atol=1e-12), (a - b).abs().max()
    trials = s_all.extra["trials"]
    assert trials > 10
    assert s_all.extra["stored_trial_states"] == trials
    assert s_k.extra["stored_trial_states"] <= max(1, budget // 2)
    assert s_k.extra["peak_held_trial_states"] <= budget
    assert s_k.extra["recomputed_trials"] >= trials - budget  # the others were recomputed


class RowCounting(torch.nn.Module):
    """TimeDependent that adds up how many rows it was evaluated on (the cost compaction saves)."""

    def __init__(self):
        super().__init__()
        self.inner = TimeDependent()
        self.rows = 0

    def forward(self, t, y):
        self.rows += len(y)
        return self.inner(t, y)


# one long span and five short ones (own starts, ragged saves)
LONG_AND_SHORT = [[0.0, 0.5, 1.5, 3.0, 4.0]] + [[0.1 * b, 0.1 * b + 0.2, 0.1 * b + 0.3, NAN, NAN] for b in range(5)]


@pytest.mark.parametrize("sensealg", [psg.DirectAD(), psg.CheckpointAdjoint(), psg.CheckpointAdjoint(max_checkpoints=3),
                                      *CONTINUOUS], ids=repr)
def test_compaction_evaluates_only_unfinished_rows_and_keeps_the_gradient(sensealg):
    t = torch.tensor(LONG_AND_SHORT, dtype=torch.float64)
    B = len(t)
    y0 = torch.linspace(-0.5, 0.7, 2 * B, dtype=torch.float64).view(B, 2).requires_grad_(True)
    out = {}
    for compact in (False, True):
        func = RowCounting()
        ps = list(func.parameters())
        ys, stats = psg.odeint(func, y0, t, rtol=1e-8, atol=1e-10, sensealg=sensealg,
                               options={"steps": psg.PerSampleSteps(compact=compact), "return_stats": True})
        rows_forward = func.rows
        grads = torch.autograd.grad(_loss(ys), [y0, *ps])
        out[compact] = (ys, grads, stats, rows_forward, func.rows - rows_forward)
    (ys0, g0, s0, r0, rb0), (ys1, g1, s1, r1, rb1) = out[False], out[True]
    assert s0.extra["compactions"] == 0 and s1.extra["compactions"] >= 1
    assert s1.extra["trials"] == s0.extra["trials"]  # the same steps, fewer rows evaluated
    assert r1 < 0.6 * r0, (r1, r0)
    assert rb1 <= 0.7 * rb0, (rb1, rb0)  # the backward pass too (replay, backward solves, quadrature)
    assert torch.allclose(ys1, ys0, rtol=0, atol=1e-13, equal_nan=True)
    for a, b in zip(g1, g0):
        assert torch.allclose(a, b, rtol=0, atol=1e-12), (a - b).abs().max()


def test_per_sample_steps_compact_must_be_a_bool():
    with pytest.raises(psg.errors.UnknownOptionError, match="compact must be True or False"):
        psg.PerSampleSteps(compact="yes")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("sensealg", [psg.DirectAD(), psg.CheckpointAdjoint(), psg.CheckpointAdjoint(max_checkpoints=3),
                                      *CONTINUOUS], ids=repr)
@pytest.mark.parametrize("compact", [False, True])
def test_per_sample_steps_gradients_on_cuda_match_cpu(sensealg, compact):
    t = torch.tensor(LONG_AND_SHORT, dtype=torch.float64)
    B = len(t)
    grads = []
    for device in ("cpu", "cuda"):
        func = TimeDependent().to(device)
        y0 = torch.linspace(-0.5, 0.7, 2 * B, dtype=torch.float64, device=device).view(B, 2).requires_grad_(True)
        ys = psg.odeint(func, y0, t.to(device), rtol=1e-8, atol=1e-10, sensealg=sensealg,
                        options={"steps": psg.PerSampleSteps(compact=compact)})
        grads.append([g.cpu() for g in torch.autograd.grad(_loss(ys.cpu()), [y0, *func.parameters()])])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=0, atol=1e-10), (a - b).abs().max()


class ScalarReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts reads of a tensor's value on the host (bool(), int(), .item(): on CUDA each one
    waits for the device queue)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.n += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("sensealg", [psg.CheckpointAdjoint(), psg.BacksolveAdjoint(), psg.InterpolatingAdjoint()],
                         ids=lambda s: type(s).__name__)
def test_per_sample_steps_host_reads_do_not_grow_with_the_batch(sensealg):
    # The same sample repeated B times takes the same trials at every B: a host read per
    # sample would show as a count growing with B. At most a few reads per trial remain.
    func = TimeDependent()
    ps = list(func.parameters())
    counts = {}
    for B in (2, 16):
        y0 = torch.tensor([[0.5, -0.1]], dtype=torch.float64).repeat(B, 1).requires_grad_(True)
        t = torch.tensor([[0.0, 0.3, 0.7, 1.2]], dtype=torch.float64).repeat(B, 1)
        with ScalarReads() as reads:
            ys, stats = psg.odeint(func, y0, t, rtol=1e-8, atol=1e-10, sensealg=sensealg,
                                   options=dict(STEPS, return_stats=True))
            torch.autograd.grad(_loss(ys), [y0, *ps])
        counts[B] = (reads.n, stats.extra["trials"])
    assert counts[2] == counts[16], counts
    reads, trials = counts[16]
    assert reads <= 6 * trials + 40, counts


def test_backsolve_with_per_sample_steps_warns_naming_the_drifting_sample():
    # The contracting flow of the 1-D backsolve tests over [0, 10] (sample 1) among short,
    # easy spans: only sample 1's reverse-time reconstruction drifts, and the warning names it.
    import warnings

    from adjoint_cases import Contracting

    func = Contracting()
    y0 = torch.tensor([[0.5, -0.5]] * 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[0.0, 0.2, 0.4], [0.0, 5.0, 10.0], [0.0, 0.3, NAN]], dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", psg.errors.GradientAccuracyWarning)
        ys, stats = psg.odeint(func, y0, t, rtol=1e-3, atol=1e-6, sensealg=psg.BacksolveAdjoint(),
                               options=dict(STEPS, return_stats=True))
        torch.autograd.grad(_loss(ys), [y0])
    msgs = [str(w.message) for w in caught if issubclass(w.category, psg.errors.GradientAccuracyWarning)]
    assert len(msgs) == 1 and "sample(s) [1]" in msgs[0], msgs
    assert stats.extra["backsolve_reconstruction_error"] > 100
    with warnings.catch_warnings():
        warnings.simplefilter("error", psg.errors.GradientAccuracyWarning)
        ys = psg.odeint(func, y0[[0, 2]], t[[0, 2]], rtol=1e-3, atol=1e-6, sensealg=psg.BacksolveAdjoint(), options=STEPS)
        torch.autograd.grad(_loss(ys), [y0])  # the easy samples alone: no warning
