"""Property-based checks (hypothesis): random linear systems against the matrix exponential."""

import numpy as np
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pysciml_grad as psg


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    dim=st.integers(1, 4),
    method=st.sampled_from(["dopri5", "tsit5", "bosh3"]),
    backwards=st.booleans(),
)
def test_linear_systems_match_expm(seed, dim, method, backwards):
    """y' = A y has y(t) = expm(A (t - t0)) y0: any A, any direction, interior save points."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(dim, dim))
    A = A / max(1.0, np.abs(np.linalg.eigvals(A)).max())  # keep exp(A t) moderate on |t| <= 2
    y0 = rng.normal(size=dim)
    t = np.sort(rng.uniform(0.0, 2.0, size=4))
    t = np.concatenate([[0.0], t])
    if backwards:
        t = t[::-1].copy()
    if np.min(np.abs(np.diff(t))) < 1e-6:
        return
    At = torch.tensor(A)
    ys = psg.odeint(lambda s, y: At @ y, torch.tensor(y0), torch.tensor(t), method=method, rtol=1e-9, atol=1e-12)
    exact = np.stack([scipy.linalg.expm(A * (ti - t[0])) @ y0 for ti in t])
    assert np.abs(ys.numpy() - exact).max() <= 1e-6 * max(1.0, np.abs(exact).max())


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), method=st.sampled_from(["dopri5", "rk4"]))
def test_checkpoint_gradient_matches_closed_form_for_linear_systems(seed, method):
    """dL/dy0 of L = sum y(T) for y' = A y is expm(A T)^T 1."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(3, 3)) * 0.5
    y0 = torch.tensor(rng.normal(size=3), requires_grad=True)
    At = torch.tensor(A)
    options = {"step_size": 0.01} if method == "rk4" else None
    ys = psg.odeint(lambda s, y: At @ y, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), method=method,
                    rtol=1e-10, atol=1e-12, options=options)
    ys[-1].sum().backward()
    exact = scipy.linalg.expm(A).T @ np.ones(3)
    assert np.abs(y0.grad.numpy() - exact).max() <= 1e-7 * np.abs(exact).max()
