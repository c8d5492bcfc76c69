"""Each example's main() in-process with a tiny setting: it runs, writes its JSON, and
its numbers are the ones it claims to compute."""

import json
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
