"""The stiff UDE of examples/stiff_ude.py: its CheckpointAdjoint gradient through rodas5p is
the exact gradient of the discrete map (float64 central differences along random directions,
to 1e-6), and the example runs end to end with a tiny setting."""

import json
import sys
from pathlib import Path

import torch

import pysciml_grad as psg
from pysciml_grad.backends.torch.rosenbrock_tableaus import RODAS5P

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import stiff_ude  # noqa: E402
from test_rosenbrock import _discrete_map  # noqa: E402

D = torch.float64


def test_stiff_ude_gradient_matches_finite_differences():
    t, y0, data = stiff_ude.make_data(n_times=4, t_max=1.0)
    model = stiff_ude.StiffUDE(hidden=4, seed=1)
    params = list(model.parameters())
    rtol, atol = 1e-5, 1e-10
    loss = stiff_ude.loss_fn(model, t, y0, data, rtol, atol)
    grads = torch.autograd.grad(loss, params)
    direct = torch.autograd.grad(stiff_ude.loss_fn(model, t, y0, data, rtol, atol, sensealg=psg.DirectAD()), params)
    for a, b in zip(grads, direct):
        assert float((a - b).abs().max()) <= 1e-10 * max(float(a.abs().max()), 1e-30)

    outputs = _discrete_map(model, RODAS5P, y0, t.tolist(), rtol, atol)

    def discrete_loss():
        return float((((outputs() - data) * stiff_ude.Y_SCALE) ** 2).mean())

    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        direction = [torch.randn(p.shape, generator=g, dtype=D) for p in params]
        analytic = sum(float((gp * v).sum()) for gp, v in zip(grads, direction))
        eps = 1e-6
        with torch.no_grad():
            for p, v in zip(params, direction):
                p.add_(eps * v)
            up = discrete_loss()
            for p, v in zip(params, direction):
                p.sub_(2 * eps * v)
            down = discrete_loss()
            for p, v in zip(params, direction):
                p.add_(eps * v)
        fd = (up - down) / (2 * eps)
        assert abs(fd - analytic) <= 1e-6 * abs(analytic), (fd, analytic)


def test_stiff_ude_example_tiny(tmp_path):
    r = stiff_ude.main(["--iters", "2", "--hidden", "4", "--times", "3", "--t-max", "0.1", "--out", str(tmp_path),
                        "--no-plot"])
    saved = json.loads((tmp_path / "stiff_ude.json").read_text())
    assert len(saved["history"]) == 3 and saved["history"][0]["nfe_backward"] > 0
    assert saved["loss_first"] == r["history"][0]["loss"] and len(saved["rate_true"]) == 3
    block = stiff_ude.docs_block(r)  # what --write-docs puts into docs/stiff.md
    assert f"{r['loss_last']:.3e}" in block and f"{r['rate_max_rel_error']:.2e}" in block
