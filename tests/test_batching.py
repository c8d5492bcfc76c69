"""Batches: the per-sample error norm (``psg.PerSampleNorm``).

Oracle: harmonic oscillators y'' = -w_b^2 y, y(0) = 1, y'(0) = 0, whose solution
cos(w_b t) and parameter gradient d y(T)/d w_b = -T sin(w_b T) are known exactly.
One fast sample (w = 20) is batched with slow ones (w = 1).
"""

import math

import pytest
import torch

import pysciml_grad as psg

T_END = 5.0


def oscillators(B, fast=20.0):
    w = torch.ones(B, dtype=torch.float64)
    w[0] = fast
    w.requires_grad_(True)

    def f(t, y):
        return torch.stack([y[:, 1], -(w**2) * y[:, 0]], 1)

    y0 = torch.zeros(B, 2, dtype=torch.float64)
    y0[:, 0] = 1.0
    return f, y0, w


def fast_error(B, norm, rtol=1e-6):
    f, y0, w = oscillators(B)
    t = torch.linspace(0, T_END, 11, dtype=torch.float64)
    with torch.no_grad():
        ys = psg.odeint(f, y0, t, rtol=rtol, atol=1e-9, options={"norm": norm} if norm else None)
    return float((ys[:, 0, 0] - torch.cos(20.0 * t)).abs().max())


@pytest.mark.parametrize("B", [16, 256])
def test_per_sample_norm_keeps_the_fast_sample_at_its_solo_error(B):
    solo = fast_error(1, None)
    assert fast_error(B, psg.PerSampleNorm()) <= 2 * solo
    if B == 256:
        # The shared RMS norm lets the fast sample's error grow (measured 21x here):
        # the case the per-sample norm exists for.
        assert fast_error(B, None) > 5 * solo


def test_per_sample_norm_of_one_sample_is_the_rms_norm():
    x = torch.randn(1, 3, 4, dtype=torch.float64)
    assert torch.allclose(psg.PerSampleNorm()(x), x.square().mean().sqrt())
    y = torch.randn(5, 3, dtype=torch.float64)
    assert torch.allclose(psg.PerSampleNorm()(y), y.square().mean(1).sqrt().max())


def test_per_sample_norm_on_a_structured_state():
    # (position, velocity) leaves, batch first: same solution as the stacked state.
    f, y0, w = oscillators(8)

    def g(t, s):
        q, p = s
        return p, -(w**2) * q

    t = torch.linspace(0, T_END, 11, dtype=torch.float64)
    opts = {"norm": psg.PerSampleNorm(), "return_stats": True}
    with torch.no_grad():
        (q, p), s1 = psg.odeint(g, (y0[:, 0], y0[:, 1]), t, rtol=1e-6, atol=1e-9, options=opts)
        ys, s2 = psg.odeint(f, y0, t, rtol=1e-6, atol=1e-9, options=opts)
    # Same accepted steps (the shared RMS norm takes 397 vs 502 here); values agree up to
    # the rounding of a differently ordered sum, amplified by the controller.
    assert s1.n_steps == s2.n_steps
    assert torch.allclose(q, ys[..., 0], rtol=0, atol=1e-8)


def test_per_sample_norm_rejects_a_state_without_batch_dimension():
    with pytest.raises(psg.errors.InvalidStateError, match="batch as their first dimension"):
        psg.PerSampleNorm()(torch.tensor(1.0))


SENSEALGS = [psg.DirectAD(), psg.CheckpointAdjoint(), psg.BacksolveAdjoint(), psg.InterpolatingAdjoint(),
             psg.QuadratureAdjoint()]


@pytest.mark.parametrize("sensealg", SENSEALGS, ids=lambda s: type(s).__name__)
def test_per_sample_norm_gradients_match_the_analytic_gradient(sensealg):
    f, y0, w = oscillators(3, fast=5.0)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    ys = psg.odeint(f, y0, t, rtol=1e-9, atol=1e-12, sensealg=sensealg, params=[w],
                    options={"norm": psg.PerSampleNorm()})
    (g,) = torch.autograd.grad(ys[-1, :, 0].sum(), [w])
    exact = -torch.sin(w.detach())
    assert torch.allclose(g, exact, rtol=0, atol=1e-6), (g, exact)


@pytest.mark.parametrize("sensealg", [psg.BacksolveAdjoint(), psg.InterpolatingAdjoint()], ids=lambda s: type(s).__name__)
def test_continuous_adjoint_backward_uses_the_per_sample_norm(sensealg):
    # The backward solve's own step control must also keep the fast sample's adjoint
    # at its solo accuracy: its gradient error at batch 64 within 2x of batch 1.
    def grad_error(B, norm):
        f, y0, w = oscillators(B)
        t = torch.tensor([0.0, T_END], dtype=torch.float64)
        opts = {"norm": norm} if norm else None
        ys = psg.odeint(f, y0, t, rtol=1e-6, atol=1e-9, sensealg=sensealg, params=[w], options=opts)
        (g,) = torch.autograd.grad(ys[-1, :, 0].sum(), [w])
        return abs(float(g[0]) + T_END * math.sin(20.0 * T_END))

    solo = grad_error(1, psg.PerSampleNorm())
    assert grad_error(64, psg.PerSampleNorm()) <= 2 * solo


# ------------------------------------------------------------ per-sample save times t (B, T)


def _decay_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()


class TimeDependent(torch.nn.Module):
    """Non-autonomous f(t, y) = net(y) + cos(t) * c (t may be 0-d or (B,))."""

    def __init__(self):
        super().__init__()
        self.net = _decay_net()
        self.c = torch.nn.Parameter(torch.tensor([0.3, -0.2], dtype=torch.float64))

    def forward(self, t, y):
        return self.net(y) + torch.cos(t).reshape(-1, 1) * self.c


NAN = float("nan")
RAGGED_SAME_START = [[0.0, 0.3, 0.7, 1.2], [0.0, 0.5, NAN, NAN], [0.0, 0.1, 0.2, NAN]]
RAGGED_OWN_SPANS = [[0.0, 0.3, 0.7, 1.2], [0.4, 0.5, NAN, NAN], [-0.3, 0.1, 0.2, NAN]]
DESCENDING = [[1.0, 0.6, 0.1], [0.9, 0.2, NAN]]
DESCENDING_SAME_START = [[1.0, 0.6, 0.1], [1.0, 0.2, NAN]]


def _loop_reference(func, y0, rows, sensealg, params):
    """Each sample alone with its own 1-D t: the oracle for the batched path."""
    outs = []
    for b, row in enumerate(rows):
        tb = torch.tensor([v for v in row if v == v], dtype=torch.float64)
        outs.append(psg.odeint(func, y0[b : b + 1], tb, rtol=1e-10, atol=1e-12, sensealg=sensealg, params=params)[:, 0])
    return outs


@pytest.mark.parametrize("rows", [RAGGED_SAME_START, RAGGED_OWN_SPANS, DESCENDING, DESCENDING_SAME_START],
                         ids=["same_t0", "own_spans", "descending", "descending_same_t0"])
@pytest.mark.parametrize("sensealg", SENSEALGS, ids=lambda s: type(s).__name__)
def test_per_sample_times_match_a_loop_of_solo_solves(rows, sensealg):
    func = TimeDependent()
    y0 = torch.tensor([[0.5, -0.1], [1.0, 0.2], [-0.4, 0.8]], dtype=torch.float64)[: len(rows)].requires_grad_(True)
    t = torch.tensor(rows, dtype=torch.float64)
    ps = list(func.parameters())
    ys = psg.odeint(func, y0, t, rtol=1e-10, atol=1e-12, sensealg=sensealg)
    assert ys.shape == (t.shape[1], t.shape[0], 2)
    weights = torch.linspace(0.5, 1.5, ys[..., 0].numel(), dtype=torch.float64).view(ys.shape[:2])
    valid = ~torch.isnan(t.T)
    assert torch.isnan(ys[~valid]).all() and torch.isfinite(ys[valid]).all()
    loss = (torch.where(valid, ys[..., 0], torch.zeros_like(ys[..., 0])) * weights).sum() + ys[valid][:, 1].square().sum()
    g = torch.autograd.grad(loss, [y0, *ps])

    refs = _loop_reference(func, y0, rows, sensealg, None)
    for b, ref in enumerate(refs):
        assert torch.allclose(ys[: len(ref), b], ref, rtol=0, atol=1e-8)
    loss_ref = sum((ref[:, 0] * weights[: len(ref), b]).sum() + ref[:, 1].square().sum() for b, ref in enumerate(refs))
    g_ref = torch.autograd.grad(loss_ref, [y0, *ps])
    for a, r in zip(g, g_ref):
        assert torch.allclose(a, r, rtol=0, atol=1e-6), (a - r).abs().max()


@pytest.mark.parametrize("rows, match", [
    ([[0.0, NAN, 1.0], [0.0, 0.5, 1.0]], "NaN may only pad the end"),
    ([[0.0, 1.0, 2.0], [1.0, 0.5, 0.0]], "same direction"),
    ([[0.0, 1.0, 0.5], [0.0, 0.5, 1.0]], "changes direction"),
    ([[0.0, 1.0, 1.0], [0.0, 0.5, 1.0]], "repeats the time"),
    ([[0.0, NAN, NAN], [0.0, 0.5, 1.0]], "at least 2"),
    ([[0.0, 1.0, 2.0]], "first dimension is the batch"),
    ([[0.0, float("inf"), NAN], [0.0, 0.5, 1.0]], "inf"),
])
def test_per_sample_times_bad_rows_raise_at_once(rows, match):
    y0 = torch.ones(2, 2, dtype=torch.float64)
    with pytest.raises(psg.errors.InvalidTimeError, match=match):
        psg.odeint(lambda t, y: -y, y0, torch.tensor(rows, dtype=torch.float64))


def _time_loss(ys):
    w = torch.linspace(0.5, 1.5, ys.numel(), dtype=torch.float64).view(ys.shape)
    return torch.where(torch.isnan(ys), torch.zeros_like(ys), ys * w).sum() + torch.nan_to_num(ys[..., 1]).square().sum()


_FD = {}


def _time_fd(rows):
    """Central float64 finite differences of the loss in every valid entry of t."""
    key = str(rows)
    if key not in _FD:
        func = TimeDependent()
        y0 = torch.tensor([[0.5, -0.1], [1.0, 0.2], [-0.4, 0.8]], dtype=torch.float64)[: len(rows)]
        t = torch.tensor(rows, dtype=torch.float64)
        fd = torch.zeros_like(t)
        for b, i in (~torch.isnan(t)).nonzero().tolist():
            e = 1e-5
            tp, tm = t.clone(), t.clone()
            tp[b, i] += e
            tm[b, i] -= e
            with torch.no_grad():
                up = _time_loss(psg.odeint(func, y0, tp, rtol=1e-11, atol=1e-13))
                down = _time_loss(psg.odeint(func, y0, tm, rtol=1e-11, atol=1e-13))
            fd[b, i] = (up - down) / (2 * e)
        _FD[key] = fd
    return _FD[key]


@pytest.mark.parametrize("rows", [RAGGED_SAME_START, RAGGED_OWN_SPANS, DESCENDING],
                         ids=["same_t0", "own_spans", "descending"])
@pytest.mark.parametrize("sensealg", SENSEALGS, ids=lambda s: type(s).__name__)
def test_gradient_with_respect_to_per_sample_times_matches_finite_differences(rows, sensealg):
    # Interior saves <dL/dy, f>; each row's start t0_b through -<dL/dy0_b, f(t0_b, y0_b)>;
    # its last entry t1_b (the end of its span) is a save like the others.
    func = TimeDependent()
    y0 = torch.tensor([[0.5, -0.1], [1.0, 0.2], [-0.4, 0.8]], dtype=torch.float64)[: len(rows)].requires_grad_(True)
    t = torch.tensor(rows, dtype=torch.float64, requires_grad=True)
    ys = psg.odeint(func, y0, t, rtol=1e-11, atol=1e-13, sensealg=sensealg)
    g_t, g_y0 = torch.autograd.grad(_time_loss(ys), [t, y0])
    fd = _time_fd(rows)
    assert torch.allclose(g_t, fd, rtol=0, atol=1e-7), (g_t - fd).abs().max()
    assert (g_t[torch.isnan(t.detach())] == 0).all()
    # dL/dy0 is unchanged by the time path (it is the identity on y0's value and gradient).
    ys2 = psg.odeint(func, y0, t.detach(), rtol=1e-11, atol=1e-13, sensealg=sensealg)
    (g_y0_ref,) = torch.autograd.grad(_time_loss(ys2), [y0])
    assert torch.allclose(g_y0, g_y0_ref, rtol=0, atol=1e-12)


def test_per_sample_times_with_per_sample_norm_and_stats():
    # Both features together; decay rates differ per sample: y_b(t) = exp(-k_b t).
    k = torch.tensor([1.0, 30.0, 2.0], dtype=torch.float64)
    t = torch.tensor([[0.0, 0.5, 1.0], [0.2, 0.4, NAN], [0.0, 2.0, NAN]], dtype=torch.float64)
    y0 = torch.ones(3, 1, dtype=torch.float64)
    ys, stats = psg.odeint(lambda s, y: -k.reshape(-1, 1) * y, y0, t, rtol=1e-8, atol=1e-12,
                           options={"norm": psg.PerSampleNorm(), "return_stats": True})
    exact = torch.exp(-k[None, :] * (t.T - t[:, 0][None, :]))
    valid = ~torch.isnan(t.T)
    assert torch.allclose(ys[..., 0][valid], exact[valid], rtol=1e-6, atol=0)
    assert stats.n_steps > 0
