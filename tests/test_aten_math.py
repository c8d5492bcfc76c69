"""backends/torch/aten_math.py: inductor's CPU graphs call ATen's transcendental kernels.

Oracle: eager ATen itself. The pass must leave the graph computing exactly what eager
mode computes (bit for bit: the kernel is the same), and must touch only CPU float
tensors of the listed functions. The graph-level tests run the pass on an ATen graph
traced by make_fx (what inductor's post-grad passes see) and need no inductor compile;
the end-to-end compile is opt-in (PSG_INDUCTOR_TESTS=1), as in test_compiled.py.
"""

import os
import warnings

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import pysciml_grad as psg
from pysciml_grad.backends.torch import aten_math
from pysciml_grad.backends.torch.aten_math import ATEN_MATH_PASS, with_aten_math
from pysciml_grad.backends.torch.discover import FULL_AUDITS
from pysciml_grad.errors import CompileFallbackWarning

pytestmark = pytest.mark.skipif(ATEN_MATH_PASS is None, reason="needs torch.library.register_fake and CustomGraphPass")


def mlp_like(x):
    # The functions a neural ODE's layers reach inductor as: tanh goes to ATen, the others
    # (faster in inductor, benchmarks/aten_math.md) and the arithmetic stay.
    h = torch.tanh(x @ x.T) + torch.sigmoid(x).sum() * torch.exp(-x.square()).mean()
    return torch.log1p(h.abs()) + torch.sin(h) * torch.cos(h) + torch.erf(h) + torch.expm1(-h.abs()) + torch.log(h.abs() + 1)


def targets(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_pass_swaps_every_listed_function_and_the_result_is_eagers_bit_for_bit(dtype):
    x = torch.randn(64, 64, dtype=dtype, generator=torch.Generator().manual_seed(0))
    gm = make_fx(mlp_like, tracing_mode="fake")(x)
    ATEN_MATH_PASS(gm.graph)
    gm.recompile()
    ops = targets(gm)
    for name in aten_math.ATEN_FUNCTIONS:
        assert getattr(torch.ops.aten, name).default not in ops, name
        assert getattr(torch.ops.pysciml_grad, f"aten_{name}").default in ops, name
    for name in set(aten_math.CANDIDATES) - set(aten_math.ATEN_FUNCTIONS):
        assert getattr(torch.ops.aten, name).default in ops, name  # inductor's
    assert torch.ops.aten.mm.default in ops  # the rest of the graph is untouched
    assert torch.equal(gm(x), mlp_like(x))


def test_the_pass_leaves_half_and_complex_inputs_alone():
    def f(x, z):
        return torch.tanh(x.to(torch.float16)).float().sum() + torch.tanh(z).real.sum()

    x = torch.arange(4096)
    z = torch.randn(4096, dtype=torch.complex64)
    gm = make_fx(f, tracing_mode="fake")(x, z)
    before = targets(gm)
    ATEN_MATH_PASS(gm.graph)
    assert targets(gm) == before  # float16 and complex tanh stay inductor's


def test_small_tensors_keep_inductors_fused_code():
    big, small = torch.randn(64, 64), torch.randn(16, 16)  # 4096 and 256 elements
    gm = make_fx(lambda a, b: torch.tanh(a).sum() + torch.tanh(b).sum(), tracing_mode="fake")(big, small)
    ATEN_MATH_PASS(gm.graph)
    ops = targets(gm)
    assert ops.count(torch.ops.pysciml_grad.aten_tanh.default) == 1
    assert ops.count(torch.ops.aten.tanh.default) == 1


def test_settings_add_the_pass_on_cpu_only_and_respect_the_users_choices():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    key = "post_grad_custom_pre_pass"
    ours = {key: ATEN_MATH_PASS, "cpp_wrapper": True, "size_asserts": False, "alignment_asserts": False}
    assert with_aten_math({}, cpu) == {"options": ours}
    assert with_aten_math({}, cuda) == {}
    assert with_aten_math({"backend": "eager"}, cpu) == {"backend": "eager"}
    assert with_aten_math({"options": {key: None}}, cpu) == {"options": {**ours, key: None}}
    merged = with_aten_math({"options": {"size_asserts": True, "cpp_wrapper": False}}, cpu)
    assert merged == {"options": {**ours, "size_asserts": True, "cpp_wrapper": False}}
    # torch.compile takes mode or options, not both: a mode is carried as its options.
    from torch._inductor import list_mode_options

    moded = with_aten_math({"mode": "max-autotune-no-cudagraphs"}, cpu)
    assert "mode" not in moded
    assert moded["options"] == {**ours, **list_mode_options("max-autotune-no-cudagraphs")}


def test_the_custom_ops_are_atens_kernels():
    # Guards the registration (each op's kernel is its own function's), nothing more.
    x = torch.randn(7, 5, dtype=torch.float64)
    for name in aten_math.ATEN_FUNCTIONS:
        assert torch.equal(getattr(torch.ops.pysciml_grad, f"aten_{name}")(x), getattr(torch, name)(x)), name


def test_inductor_lowers_our_ops_to_a_call_of_atens_own_op():
    # Without this lowering inductor calls our op, whose kernel is Python: ~17 us a call
    # from the C++ wrapper. The end-to-end check is the opt-in test below.
    from torch._inductor.lowering import lowerings

    for name in aten_math.ATEN_FUNCTIONS:
        assert getattr(torch.ops.pysciml_grad, f"aten_{name}").default in lowerings, name


def test_only_the_c_shim_warning_for_our_aten_ops_is_filtered():
    import logging

    ir_filters = [f for f in logging.getLogger("torch._inductor.ir").filters if isinstance(f, aten_math._ShimWarningFilter)]
    assert len(ir_filters) == 1

    def record(msg, *args):
        return logging.LogRecord("torch._inductor.ir", logging.WARNING, __file__, 1, msg, args, None)

    shim = "%s is missing a c-shim implementation, using proxy executor as fallback"
    assert not ir_filters[0].filter(record(shim, torch.ops.aten.tanh.default))
    assert ir_filters[0].filter(record(shim, torch.ops.aten.sin.default))  # someone else's fallback: kept
    assert ir_filters[0].filter(record("%s: another warning", torch.ops.aten.tanh.default))


@pytest.mark.inductor
@pytest.mark.skipif(os.environ.get("PSG_INDUCTOR_TESTS") != "1", reason="inductor compile takes 30-90 s; set PSG_INDUCTOR_TESTS=1")
def test_a_compiled_solve_calls_atens_tanh_and_matches_eager():
    from torch.profiler import profile

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    y0 = torch.randn(256, 2)  # hidden layer 256 x 16: above aten_math.MIN_NUMEL
    t = torch.tensor([0.0, 1.0])

    def grads(options):
        net.zero_grad()
        ys = psg.odeint(lambda s, y: net(y), y0, t, rtol=1e-6, atol=1e-8, options=options)
        ys[-1].square().sum().backward()
        return ys[-1].detach(), [p.grad.clone() for p in net.parameters()]

    def in_compiled_graph(event):
        while event is not None:
            if event.name.startswith("## Call CompiledFxGraph"):
                return True
            event = event.cpu_parent
        return False

    eager = grads({})
    for _ in range(1 + FULL_AUDITS):  # compile every graph; the first backward passes replay eagerly
        grads({"compile": True})
    with profile() as prof:
        compiled = grads({"compile": True})
    # ATen's kernel runs inside the compiled steps, called from the generated C++ directly:
    # our op (whose kernel is Python) is never called.
    assert any(e.name == "aten::tanh" and in_compiled_graph(e) for e in prof.events())
    assert not any(e.name == "pysciml_grad::aten_tanh" for e in prof.events())
    assert torch.allclose(compiled[0], eager[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(compiled[1], eager[1]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.inductor
@pytest.mark.skipif(os.environ.get("PSG_INDUCTOR_TESTS") != "1", reason="inductor compile takes 30-90 s; set PSG_INDUCTOR_TESTS=1")
@pytest.mark.parametrize("sensealg", [psg.DirectAD(), psg.CheckpointAdjoint(), psg.BacksolveAdjoint(),
                                      psg.InterpolatingAdjoint(), psg.QuadratureAdjoint()], ids=lambda s: type(s).__name__)
def test_every_sensealg_on_the_cpu_compile_settings_matches_eager_in_float64(sensealg):
    # The CPU defaults (C++ wrapper, ATen's tanh) on the real inductor backend, forward and
    # every backward graph: same steps, same gradient as the eager solve to rounding.
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()
    y0 = torch.randn(256, 2, dtype=torch.float64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)

    def func(s, y):
        return net(y)

    def grads(options):
        net.zero_grad()
        ys, stats = psg.odeint(func, y0, t, rtol=1e-8, atol=1e-10, sensealg=sensealg,
                               options={**options, "return_stats": True})
        ys[1:].square().sum().backward()
        return ys.detach(), [p.grad.clone() for p in net.parameters()], (stats.nfe, stats.n_steps)

    eager = grads({})
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)  # nothing may fall back to eager
        for _ in range(FULL_AUDITS + 1):  # the first backward passes audit func eagerly
            compiled = grads({"compile": True})
    assert compiled[2] == eager[2]
    assert torch.allclose(compiled[0], eager[0], rtol=1e-12, atol=1e-12)
    for a, b in zip(compiled[1], eager[1]):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_importing_the_package_does_not_import_inductor():
    # torch._inductor takes ~2 s to import; only a compiled solve needs it (compile_settings).
    import subprocess
    import sys

    code = "import sys, pysciml_grad; print('torch._inductor' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"
