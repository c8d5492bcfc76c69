"""Each example's main() in-process with a tiny setting: it runs, writes its JSON, and
its numbers are the ones it claims to compute."""

import json
import math
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))


def test_ude_lotka_volterra_tiny(tmp_path):
    ude = pytest.importorskip("ude_lotka_volterra")
    r = ude.main(["--shoot-lbfgs-iters", "3", "--lbfgs-iters", "2", "--hidden", "8", "--out", str(tmp_path), "--no-plot"])
    saved = json.loads((tmp_path / "ude_lotka_volterra.json").read_text())
    assert saved["beta"]["truth"] == 0.9 and saved["gamma"]["truth"] == 0.8
    assert len(saved["library"]) == 10 and len(saved["coefficients"]) == 2
    # the noise floor is the mean noise variance: (0.005 * time-mean of each component)^2
    assert abs(r["noise_floor_mse"] - sum(s * s for s in r["noise_sd"]) / 2) < 1e-15
    assert r["fit_mse_vs_data"] > 0 and r["losses"]


def test_three_body_masses_tiny(tmp_path):
    tb = pytest.importorskip("three_body_masses")
    r = tb.main(["--iters", "1", "--points", "5", "--T", "0.5", "--rtol", "1e-5", "--sensealgs", "CheckpointAdjoint,DirectAD",
                 "--out", str(tmp_path), "--no-plot"])
    saved = json.loads((tmp_path / "three_body_masses.json").read_text())
    assert [row["sensealg"] for row in saved["rows"]] == ["CheckpointAdjoint", "DirectAD"]
    a, b = r["rows"]
    # the same LBFGS iterations from the same start: two exact discrete gradients agree
    assert max(abs(x - y) for x, y in zip(a["masses"], b["masses"])) < 1e-6


def test_three_body_field_conserves_momentum_and_energy():
    import torch

    tb = pytest.importorskip("three_body_masses")
    import pysciml_grad as psg

    model, y0 = tb.ThreeBody(tb.TRUE_MASSES), tb.initial_state()
    m = torch.tensor(tb.TRUE_MASSES, dtype=torch.float64)

    def invariants(y):
        r, v = y[:6].view(3, 2), y[6:].view(3, 2)
        p = (m[:, None] * v).sum(0)
        kin = 0.5 * (m * (v**2).sum(1)).sum()
        pot = -sum(m[i] * m[j] / (r[i] - r[j]).norm() for i in range(3) for j in range(i + 1, 3))
        return p, kin + pot

    ys = psg.odeint(model, y0, torch.tensor([0.0, 2.0], dtype=torch.float64), rtol=1e-11, atol=1e-12)
    (p0, e0), (p1, e1) = invariants(ys[0]), invariants(ys[1])
    assert float(p0.abs().max()) < 1e-15 and float((p1 - p0).abs().max()) < 1e-10
    assert abs(float(e1 - e0)) < 1e-8 * abs(float(e0))


def test_aca_digits_tiny(tmp_path):
    pytest.importorskip("sklearn")
    import aca_digits as aca
    r = aca.main(["--seeds", "1", "--epochs", "1", "--train-size", "64", "--channels", "4", "--groups", "2",
                  "--out", str(tmp_path), "--no-plot"])
    saved = json.loads((tmp_path / "aca_digits.json").read_text())
    assert [row["kind"] for row in saved["rows"]] == ["ResNet", "ACA", "adjoint", "naive"]
    for row in r["rows"]:
        assert 0.0 <= row["test_error"] <= 1.0 and row["train_time_s"] > 0
    # the robustness table's training-solver column is the same evaluation as the main table's
    for kind in ("ACA", "adjoint", "naive"):
        row = next(x for x in r["rows"] if x["kind"] == kind)
        assert r["robustness"][kind]["heun_euler (train)"]["mean"] == row["test_error"]
        assert row["nfe_forward"] >= 2  # heun_euler: at least one step of two stages
    # the backsolve reconstruction figure is recorded, in units of the tolerance
    rec = next(x for x in r["rows"] if x["kind"] == "adjoint")["reconstruction_error"]
    assert rec["batches"] == 1 and 0 <= rec["median"] <= rec["max"] < float("inf")


def _digits_nets(dtype):
    import torch

    import aca_digits as aca
    torch.manual_seed(0)
    ode = aca.Net(4, 2, aca.GRADIENTS["ACA"]).to(dtype)
    res = aca.Net(4, 2, None).to(dtype)
    res.load_state_dict(ode.state_dict())
    x = torch.randn(5, 1, 8, 8, dtype=dtype)
    return aca, ode, res, x


def test_aca_digits_residual_block_is_one_euler_step_of_the_ode_block():
    import torch

    _, ode, res, x = _digits_nets(torch.float64)
    ode.block.method, ode.block.options = "euler", {"step_size": 1.0}
    assert torch.allclose(ode(x), res(x), rtol=0, atol=1e-13)


def test_aca_digits_conv_groupnorm_gradients_agree_across_sensealgs():
    """On the example's conv + GroupNorm + ReLU ODE block (float64, heun_euler at the
    example's tolerance): CheckpointAdjoint is the exact derivative of the discrete map, so
    it equals DirectAD to rounding; the continuous adjoint differs from it by discretisation
    error only (measured 5e-3 relative at rtol 1e-4 on this net; ReLU's kinks make both
    approximations of the exact gradient coarse at a given tolerance)."""
    import torch
    import torch.nn.functional as F

    import pysciml_grad as psg

    aca, ode, _, x = _digits_nets(torch.float64)
    y = torch.arange(5) % 10
    ode.block.rtol = ode.block.atol = 1e-4

    def grads(alg):
        ode.block.sensealg = alg
        ode.zero_grad()
        F.cross_entropy(ode(x), y).backward()
        return torch.cat([p.grad.reshape(-1) for p in ode.parameters()])

    g_ck, g_ad, g_bs = grads(psg.CheckpointAdjoint()), grads(psg.DirectAD()), grads(psg.BacksolveAdjoint())
    assert float((g_ck - g_ad).norm() / g_ad.norm()) < 1e-12
    assert float((g_bs - g_ad).norm() / g_ad.norm()) < 5e-2


def test_latent_ode_irregular_tiny(tmp_path):
    import latent_ode_irregular as lat
    r = lat.main(["--series", "4", "--iters", "2", "--min-obs", "3", "--max-obs", "6", "--rtol", "1e-3",
                  "--sensealgs", "CheckpointAdjoint,DirectAD,BacksolveAdjoint", "--out", str(tmp_path), "--no-plot"])
    saved = json.loads((tmp_path / "latent_ode_irregular.json").read_text())
    assert [row["sensealg"] for row in saved["rows"]] == ["CheckpointAdjoint", "DirectAD", "BacksolveAdjoint"]
    ck, ad, bs = r["rows"]
    # two exact derivatives of the same discrete map: the same Adam trajectory
    assert max(abs(a - b) for a, b in zip(ck["losses"], ad["losses"])) < 1e-5
    assert all(map(math.isfinite, ck["losses"] + bs["losses"])) and bs["nfe_backward"] > 0
    assert saved["data"]["obs_per_series_min"] >= 3 and saved["data"]["obs_per_series_max"] <= 6


def test_latent_ode_masked_loss_and_gradient_match_per_series_solves():
    """The example's (B, T) NaN-padded solve + masked loss equals the same loss assembled from
    one 1-D solve per series (each on its own times), and so does its gradient; no NaN leaks
    from the padding into the gradient."""
    import torch

    import latent_ode_irregular as lat
    import pysciml_grad as psg

    t, obs, _, _ = lat.make_data(3, 3, 7, 0.05, seed=1, grid=0.1, dtype=torch.float64)
    torch.manual_seed(0)
    model = lat.Model().double()
    z0 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    kw = dict(method="dopri5", rtol=1e-10, atol=1e-12)
    batched = lat.masked_mse(model, psg.odeint(model.func, z0, t, **kw), obs)
    g_batched = torch.autograd.grad(batched, [z0, *model.func.parameters()])
    sq, n = 0.0, 0
    for b in range(3):
        m = ~torch.isnan(t[b])
        zs = psg.odeint(model.func, z0[b], t[b, m], **kw)
        sq = sq + ((model.decoder(zs) - obs[b, m]) ** 2).sum()
        n += int(m.sum())
    alone = sq / (2 * n)
    g_alone = torch.autograd.grad(alone, [z0, *model.func.parameters()])
    assert abs(float((batched - alone).detach())) < 1e-9 * float(alone.detach())
    for a, b in zip(g_batched, g_alone):
        assert torch.isfinite(a).all() and float((a - b).norm()) <= 1e-7 * max(float(b.norm()), 1e-12)


def test_audit_latent_ode_script_defines_the_example_problem():
    import torch

    import latent_ode_irregular  # noqa: F401
    import runpy

    ns = runpy.run_path(str(EXAMPLES / "audit_latent_ode.py"), run_name="__audit__")
    t, y0 = ns["t"], ns["y0"]
    assert t.dim() == 2 and t.shape[0] == y0.shape[0] == 32 and torch.isnan(t).any()
    # the float64 copy the audit's reference uses gives the float32 loss to float32 precision
    import pysciml_grad as psg

    ys = psg.odeint(ns["func"], y0, t, method="dopri5", rtol=1e-6, atol=1e-8)
    l32 = float(ns["loss"](ys))
    l64 = float(ns["loss"](ys.double()))
    assert abs(l32 - l64) < 1e-5 * l64


def test_audit_conv_block_script_defines_the_digits_block_problem():
    """The audited problem is the digits network's: y(1) of its ODE block through its head is
    the network's output (same loss as the network's cross-entropy)."""
    pytest.importorskip("sklearn")
    import runpy

    import torch
    import torch.nn.functional as F

    import pysciml_grad as psg

    ns = runpy.run_path(str(EXAMPLES / "audit_conv_block.py"), run_name="__audit__")
    net, x, labels = ns["_net"], ns["_Xte"][:8], ns["_labels"]
    ys = psg.odeint(ns["func"], ns["y0"], ns["t"], method=ns["method"], rtol=ns["rtol"], atol=ns["atol"])
    with torch.no_grad():
        whole = F.cross_entropy(net(x), labels)
        assert abs(float(ns["loss"](ys)) - float(whole)) < 1e-5 * float(whole)
        assert abs(float(ns["loss"](ys.double())) - float(whole)) < 1e-5 * float(whole)
