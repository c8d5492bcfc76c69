"""options={"progress": True}: a meter that follows t through the forward solve (t[0] -> t[-1])
and through every sensealg's backward pass (t[-1] -> t[0]: the continuous adjoints' reverse
solves, CheckpointAdjoint's replay), off by default, validated, and without effect on any number."""

import re

import pytest
import torch

import pysciml_grad as psg
from pysciml_grad.backends.torch import progress
from pysciml_grad.errors import InvalidProblemError

F64 = torch.float64
T = torch.linspace(0.0, 3.0, 7, dtype=F64)

SENSEALGS = [
    psg.CheckpointAdjoint(), psg.CheckpointAdjoint(max_checkpoints=3), psg.BacksolveAdjoint(),
    psg.InterpolatingAdjoint(), psg.InterpolatingAdjoint(checkpointing=True), psg.QuadratureAdjoint(),
]
LINE = re.compile(r"odeint (forward|backward): +([\d.]+)%  t=(\S+) of \[(\S+), (\S+)\]")


def problem(seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).to(F64)
    y0 = torch.randn(4, 2, dtype=F64, requires_grad=True)
    return net, y0


def gradients(sensealg, progress_on, method="dopri5", options=None):
    net, y0 = problem()
    opts = dict(options or {}, **({"progress": True} if progress_on else {}))
    ys = psg.odeint(lambda t, y: net(y), y0, T, method=method, rtol=1e-8, atol=1e-10, sensealg=sensealg, options=opts)
    ys.square().sum().backward()
    return ys.detach(), [y0.grad, *(p.grad for p in net.parameters())]


@pytest.fixture
def text_meter(monkeypatch):
    # the plain text meter, whether or not tqdm is installed here
    monkeypatch.setattr(progress, "_tqdm", lambda: None)


def meter_lines(err: str):
    return [(m[1], float(m[2]), float(m[3])) for m in LINE.finditer(err)]


@pytest.mark.parametrize("sensealg", SENSEALGS, ids=repr)
def test_text_meter_reaches_t1_forward_and_t0_backward(text_meter, capsys, sensealg):
    gradients(sensealg, True)
    lines = meter_lines(capsys.readouterr().err)
    fwd = [(pct, t) for phase, pct, t in lines if phase == "forward"]
    bwd = [(pct, t) for phase, pct, t in lines if phase == "backward"]
    assert fwd and bwd, lines
    assert fwd[-1] == (100.0, 3.0) and bwd[-1] == (100.0, 0.0)
    # each meter only moves forward through its span: t rises in the forward solve, falls backward
    assert [t for _, t in fwd] == sorted(t for _, t in fwd)
    assert [t for _, t in bwd] == sorted((t for _, t in bwd), reverse=True)
    assert len(bwd) >= 3  # intermediate progress was shown, not only the end


def test_fixed_step_and_direct_ad(text_meter, capsys):
    gradients(psg.CheckpointAdjoint(), True, method="rk4", options={"step_size": 0.1})
    lines = meter_lines(capsys.readouterr().err)
    assert ("forward", 100.0, 3.0) in lines and ("backward", 100.0, 0.0) in lines
    # DirectAD's backward is autograd's walk of the recorded graph: only the forward has a loop to show
    gradients(psg.DirectAD(), True)
    lines = meter_lines(capsys.readouterr().err)
    assert lines[-1] == ("forward", 100.0, 3.0) and not [x for x in lines if x[0] == "backward"]


def test_decreasing_time_is_followed_too(text_meter, capsys):
    net, y0 = problem()
    ys = psg.odeint(lambda t, y: net(y), y0, T.flip(0), options={"progress": True})
    ys.sum().backward()
    lines = meter_lines(capsys.readouterr().err)
    assert ("forward", 100.0, 0.0) in lines and ("backward", 100.0, 3.0) in lines


@pytest.mark.parametrize("sensealg", SENSEALGS + [psg.DirectAD(), psg.DirectAD(through_controller=True)], ids=repr)
def test_gradients_are_bitwise_unchanged(text_meter, capsys, sensealg):
    ys_off, g_off = gradients(sensealg, False)
    ys_on, g_on = gradients(sensealg, True)
    assert capsys.readouterr().err  # the meter did run
    assert torch.equal(ys_on, ys_off)
    assert all(torch.equal(a, b) for a, b in zip(g_on, g_off))


def test_off_by_default(capsys):
    gradients(psg.CheckpointAdjoint(), False)
    assert "odeint" not in capsys.readouterr().err


def test_tqdm_bar(capsys):
    pytest.importorskip("tqdm")
    gradients(psg.BacksolveAdjoint(), True)
    err = capsys.readouterr().err
    assert re.search(r"odeint forward: 100%\|[^\r\n]*t=3 of \[0, 3\]", err), err
    assert re.search(r"odeint backward: 100%\|[^\r\n]*t=0 of \[3, 0\]", err), err


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_progress_must_be_a_bool(bad):
    net, y0 = problem()
    with pytest.raises(InvalidProblemError, match=r"options\['progress'\] must be True or False"):
        psg.odeint(lambda t, y: net(y), y0, T, options={"progress": bad})


def test_compiled_replay_reports_too(text_meter, capsys):
    # options['compile']: CheckpointAdjoint replays steps as compiled VJP calls (dynamo capture
    # only here, to keep it fast); the meter must follow those steps as well
    opts = {"compile": {"backend": "eager"}}
    ys_off, g_off = gradients(psg.CheckpointAdjoint(), False, options=opts)
    capsys.readouterr()
    ys_on, g_on = gradients(psg.CheckpointAdjoint(), True, options=opts)
    lines = meter_lines(capsys.readouterr().err)
    bwd = [t for phase, _, t in lines if phase == "backward"]
    assert ("forward", 100.0, 3.0) in lines and ("backward", 100.0, 0.0) in lines and len(bwd) >= 3
    assert torch.equal(ys_on, ys_off) and all(torch.equal(a, b) for a, b in zip(g_on, g_off))
