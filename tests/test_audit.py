"""psg.audit on problems whose right answer is known independently."""

import math
import subprocess
import sys
import textwrap

import pytest
import torch

import pysciml_grad as psg
from pysciml_grad.errors import InvalidProblemError
from pysciml_grad.gradaudit import audit_script

F64 = torch.float64


def _linear():
    a = torch.tensor(-0.8, dtype=F64, requires_grad=True)
    z0 = torch.tensor([1.5], dtype=F64)
    t = torch.tensor([0.0, 2.0], dtype=F64)
    return (lambda t, z: a * z), z0, t, (lambda ys: (ys[-1] ** 2).sum()), a


def test_audit_on_a_linear_ode_matches_the_closed_form():
    func, z0, t, loss, a = _linear()
    rep = psg.audit(func, z0, t, loss, params=[a], rtol=1e-8, backends=("torch",), verbose=False,
                    sensealgs=[psg.CheckpointAdjoint(), psg.InterpolatingAdjoint()])
    # L = z(T)^2, z(T) = z0 e^{aT}: dL/dz0 = 2 z0 e^{2aT}, dL/da = 2 T z0^2 e^{2aT}
    e = math.exp(2 * -0.8 * 2.0)
    exact = torch.tensor([2 * 1.5 * e, 2 * 2.0 * 1.5**2 * e], dtype=F64)
    ref = torch.tensor(rep.reference["grad"], dtype=F64)
    assert float((ref - exact).norm() / exact.norm()) < 1e-9
    assert rep.reference["fd_worst_rel_diff"] < 1e-6
    row = rep.row("CheckpointAdjoint()")
    assert row["rel_error"] < 1e-6 and row["accurate"]
    assert row["nfe"] > 0 and row["nfe_backward"] > 0 and row["time_s"] > 0
    assert rep.recommendation["sensealg"] in {"CheckpointAdjoint()", "InterpolatingAdjoint()"}
    assert "CheckpointAdjoint()" in rep.table()


class VanDerPol(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.mu = torch.nn.Parameter(torch.tensor(5.0, dtype=F64))

    def forward(self, t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, self.mu * (1 - x**2) * v - x], dim=-1)


def test_audit_flags_backsolve_on_a_repelling_reverse_flow():
    # Van der Pol mu=5: the limit cycle attracts forwards, so the reverse-time
    # reconstruction of backsolve diverges from the forward trajectory
    # (examples/backsolve_failure.py measures a 140 % gradient error at rtol=1e-6).
    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    t = torch.linspace(0.0, 5.0, 3, dtype=F64)
    with pytest.warns(psg.errors.GradientAccuracyWarning):
        rep = psg.audit(VanDerPol(), y0, t, lambda ys: (ys[-1] ** 2).sum() + ys[1].sum(), rtol=1e-6,
                        backends=("torch",), verbose=False,
                        sensealgs=[psg.CheckpointAdjoint(), psg.BacksolveAdjoint()])
    back = rep.row("BacksolveAdjoint()")
    assert "skipped" in back or not back["accurate"]
    if "rel_error" in back:
        assert back["rel_error"] > 1e-2
    assert rep.row("CheckpointAdjoint()")["accurate"]
    assert rep.recommendation["sensealg"] == "CheckpointAdjoint()"
    assert "INACCURATE" in rep.table() or "not run" in rep.table()


def test_audit_of_a_float32_model_uses_a_float64_reference_and_restores_the_model():
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    func = lambda t, y: net(y)  # noqa: E731
    y0 = torch.tensor([0.5, -0.3])
    t = torch.linspace(0.0, 1.0, 4)
    rep = psg.audit(func, y0, t, lambda ys: (ys**2).mean(), params=list(net.parameters()), rtol=1e-5,
                    backends=("torch",), verbose=False, sensealgs=[psg.CheckpointAdjoint()])
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert rep.settings["dtype"] == "float32" and rep.reference["fd_worst_rel_diff"] < 1e-5
    assert rep.row("CheckpointAdjoint()")["rel_error"] < 1e-4  # float32 rounding, not the method


def test_audit_reports_the_julia_engine_as_skipped_with_a_reason_when_absent():
    from pysciml_grad.backends.julia import availability

    ok, reason = availability()
    if ok:
        pytest.skip("Julia is available here; this test is about its absence")
    func, z0, t, loss, a = _linear()
    rep = psg.audit(func, z0, t, loss, params=[a], sensealgs=[psg.CheckpointAdjoint()], verbose=False)
    julia = [r for r in rep.rows if r["backend"] == "julia"]
    assert len(julia) == 1 and "BackendUnavailableError" in julia[0]["skipped"]


def test_audit_rejects_a_non_callable_loss():
    func, z0, t, _, a = _linear()
    with pytest.raises(InvalidProblemError, match="loss must be callable"):
        psg.audit(func, z0, t, 3.0, params=[a])


def test_audit_cli_runs_a_script(tmp_path):
    script = tmp_path / "problem.py"
    script.write_text(textwrap.dedent("""
        import torch
        k = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
        func = lambda t, y: -k * y
        y0 = torch.tensor([1.0, 2.0], dtype=torch.float64)
        t = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
        loss = lambda ys: ys[-1].sum()
        params = [k]
        sensealgs = []
        import pysciml_grad as psg
        sensealgs = [psg.CheckpointAdjoint()]
    """))
    out = tmp_path / "audit.json"
    proc = subprocess.run([sys.executable, "-m", "pysciml_grad", "audit", str(script), "--json", str(out), "--rtol", "1e-8"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "CheckpointAdjoint()" in proc.stdout and "recommendation:" in proc.stdout
    import json

    data = json.loads(out.read_text())
    # dL/dk of sum(y0) e^{-k}: -(1 + 2) e^{-0.7}
    assert abs(data["reference"]["grad"][-1] + 3 * math.exp(-0.7)) < 1e-9
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(InvalidProblemError, match="must define func, y0, t and loss"):
        audit_script(str(bad))
