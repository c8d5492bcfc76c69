"""ATen's CPU kernel for tanh inside inductor's graphs.

On CPU, inductor generates its own vectorised code for ``tanh``, and that code is several
times slower than the kernel ATen calls in eager mode (pytorch/pytorch#110611, open, reports
the same for several transcendental functions). Measured here with torch 2.13.0, one thread,
a 512 x 64 float32 tensor (``benchmarks/aten_math.py`` writes the table, ``aten_math.md``):
inductor's tanh kernel took 3.4-3.9x ATen's in three runs (61 against 18 us in the last).
For exp, sigmoid, expm1, log, log1p, sin, cos and erf inductor's kernels measured as fast
as ATen's or faster, so they stay inductor's. A neural ODE's right-hand side is often tanh layers, so compiling the
Runge-Kutta step together with ``func`` (``compiled.py``) made the P2 benchmark's step
slower than eager although it removed the solver's per-op overhead.

This module keeps inductor for everything else (the stage combinations, the error norm,
the controller: elementwise arithmetic it fuses well) and hands tanh back to ATen: a
post-grad graph pass (``torch._inductor.config.post_grad_custom_pre_pass``,
torch/_inductor/config.py; it runs on the forward and on the backward graph after autograd
has been traced, so no derivative formula is needed; tanh's derivative is arithmetic on its
output and stays fused) replaces each ``aten.tanh.default`` on a CPU float32/float64 tensor
by the opaque op ``pysciml_grad::aten_tanh``, which inductor calls as an extern kernel, and
whose kernel is ``aten.tanh`` itself: the numbers are those of eager mode, bit for bit.

Only the compiled solver steps use it, only on CPU (on CUDA inductor's kernels are the
fast ones), and the user's own inductor options win (:func:`with_aten_math`). The pass has
a ``uuid``, so inductor's on-disk cache keeps the graphs compiled with it apart from those
compiled without it.

The other CPU defaults of the compiled steps live here too (:func:`_cpu_options`): the step's
host code (buffer allocation and the ~45 kernel and extern calls of a dopri5 step) runs from
inductor's C++ wrapper instead of its Python one.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Tuple

import torch

#: The functions kept as ATen kernels on CPU: those whose inductor kernel measured slower
#: than eager ATen (benchmarks/aten_math.md, which measures CANDIDATES).
ATEN_FUNCTIONS = ("tanh",)

#: The unary functions benchmarks/aten_math.py compares (gelu, silu, softplus and elu reach
#: inductor decomposed into erf, sigmoid, exp / log1p and expm1).
CANDIDATES = ("tanh", "sigmoid", "exp", "expm1", "log", "log1p", "sin", "cos", "erf")

_FLOAT_DTYPES = (torch.float32, torch.float64)

#: Smallest tensor (elements) whose tanh is handed to ATen. An extern call costs a few
#: microseconds and a pass over memory that a fused kernel saves; inductor's tanh costs
#: ~2.5 ns an element against ATen's ~0.65, so ATen wins from ~1000-2000 elements. Below
#: this (P1's 1 x 16 hidden layer) inductor's fused code is kept.
MIN_NUMEL = 2048


def _define_ops() -> Dict[Any, Any]:
    """``pysciml_grad::aten_<fn>`` for each fn: opaque to inductor's decompositions and
    fusion, their CPU kernel is ``aten.<fn>.default`` itself (registered with
    ``torch.library.Library``, the OpOverload as kernel; ``torch.library.custom_op`` cost
    ~20 us a call, its Python wrapper runs on every call).

    Inductor lowers each one to a fallback call of ``aten.<fn>.default`` itself
    (:func:`_lower_to_aten`), so the generated code calls ATen's C++ kernel directly and
    never enters Python: called as our op, the dispatcher ran the Python kernel above from
    inductor's C++ wrapper, ~17 us a call (12 calls per dopri5 step of P2: six evaluations
    of a two-tanh MLP). Measured in one process, six such evaluations compiled: 684 us a
    call with the lowering against 888 us without, eager 648 us."""
    lib = torch.library.Library("pysciml_grad", "FRAGMENT")
    ops = {}
    for name in ATEN_FUNCTIONS:
        lib.define(f"aten_{name}(Tensor x) -> Tensor")
        lib.impl(f"aten_{name}", getattr(torch.ops.aten, name).default, "CPU")
        torch.library.register_fake(f"pysciml_grad::aten_{name}", lambda x: torch.empty_like(x), lib=lib)
        ops[getattr(torch.ops.aten, name).default] = getattr(torch.ops.pysciml_grad, f"aten_{name}").default
    try:
        _lower_to_aten({v: k for k, v in ops.items()})
    except (ImportError, AttributeError, TypeError):  # another inductor: the op stays an extern call of ours
        pass
    ops["library"] = lib  # the registrations live as long as this object
    return ops


def _lower_to_aten(ours_to_aten: Dict[Any, Any]) -> None:
    """Register inductor's lowering of each of our ops as a fallback to its ATen op
    (``torch._inductor.lowering.register_lowering`` and ``fallback_handler``): an extern
    kernel call of ``aten.<fn>.default``, with inductor's C++ wrapper through
    ``aoti_torch_call_dispatcher("aten::<fn>")``. The registry is keyed by op, so only
    graphs holding our ops (those of the compiled solver steps) are affected.

    ATen's tanh has no C shim in torch 2.13.0 (``torchgen/aoti/fallback_ops.py``), for
    which inductor logs a warning per call site at compile time ("is missing a c-shim
    implementation, using proxy executor as fallback", torch/_inductor/ir.py); the
    dispatcher call it then emits is the intended one, so that warning is filtered for
    these ops only (:class:`_ShimWarningFilter`)."""
    from torch._inductor.lowering import fallback_handler, register_lowering

    for ours, aten_op in ours_to_aten.items():
        handler = fallback_handler(aten_op, add_to_fallback_set=False)
        register_lowering(ours, type_promotion_kind=None)(lambda x, _handler=handler: _handler(x))
    logging.getLogger("torch._inductor.ir").addFilter(_ShimWarningFilter(tuple(ours_to_aten.values())))


class _ShimWarningFilter(logging.Filter):
    """Drops inductor's "missing a c-shim implementation" warning for the given ATen ops."""

    def __init__(self, ops: Tuple[Any, ...]):
        super().__init__()
        self.ops = ops

    def filter(self, record: logging.LogRecord) -> bool:
        return not ("c-shim" in str(record.msg) and any(arg in self.ops for arg in (record.args or ())))


try:  # torch >= 2.4: torch.library.register_fake and inductor's CustomGraphPass
    from torch._inductor.custom_graph_pass import CustomGraphPass

    _OPS = _define_ops()

    class AtenMathPass(CustomGraphPass):
        """Replace ``aten.<fn>.default`` (fn in :data:`ATEN_FUNCTIONS`) on CPU float tensors
        of at least :data:`MIN_NUMEL` elements by ``pysciml_grad::aten_<fn>``."""

        def __call__(self, graph: torch.fx.Graph) -> None:
            for node in list(graph.nodes):
                op = _OPS.get(node.target) if node.op == "call_function" else None
                if op is None or len(node.args) != 1 or node.kwargs:
                    continue
                val = node.args[0].meta.get("val") if isinstance(node.args[0], torch.fx.Node) else None
                if (not isinstance(val, torch.Tensor) or val.device.type != "cpu" or val.dtype not in _FLOAT_DTYPES
                        or val.numel() < MIN_NUMEL):
                    continue
                with graph.inserting_before(node):
                    new = graph.call_function(op, (node.args[0],))
                new.meta.update(node.meta)
                node.replace_all_uses_with(new)
                graph.erase_node(node)

        def __repr__(self) -> str:  # part of compiled.py's cache keys
            return f"AtenMathPass({', '.join(ATEN_FUNCTIONS)})"

        def uuid(self) -> Optional[Any]:
            # The graphs it produces depend on the op list and the replacement only.
            return ("pysciml_grad.aten_math", 5, ATEN_FUNCTIONS, MIN_NUMEL)

    ATEN_MATH_PASS: Optional[CustomGraphPass] = AtenMathPass()
except (ImportError, AttributeError, RuntimeError):  # older torch: inductor's own kernels, as before
    ATEN_MATH_PASS = None

_PASS_KEY = "post_grad_custom_pre_pass"


def _cpu_options() -> Dict[str, Any]:
    """inductor options the compiled solver steps take on CPU unless the user set them.

    The pass above; and inductor's C++ wrapper (``cpp_wrapper``, torch/_inductor/config.py,
    torch 2.13.0): the generated host code that allocates buffers and calls the kernels of
    one step (~50 allocations and ~45 kernel and extern calls per dopri5 step of P2) runs as
    compiled C++ instead of Python; our ATen-math op is called through the dispatcher
    (``aoti_torch_call_dispatcher``). Measured on P2, fwd+bwd, in one round-robin run of the
    benchmark: DirectAD 1.23x the floor with the C++ wrapper against 1.26x with the Python
    one over [0, 1], 1.18x against 1.24x over [0, 10]; CheckpointAdjoint 0.58x against 0.72x
    torchdiffeq over [0, 1]. When the Python wrapper is used (``{"cpp_wrapper": False}``) its
    size and alignment assertions are off (``size_asserts``, ``alignment_asserts``: one call
    per extern kernel output; the steps' inputs are built by the solver with fixed shapes and
    dtypes)."""
    return {_PASS_KEY: ATEN_MATH_PASS, "cpp_wrapper": True, "size_asserts": False, "alignment_asserts": False}


def with_aten_math(settings: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    """torch.compile keywords ``settings`` with the CPU defaults of the compiled steps added:
    the ATen-math pass, the C++ wrapper, and no assertions should the Python wrapper be chosen
    (:func:`_cpu_options`).

    Unchanged when the device is not a CPU or another backend than inductor was chosen.
    An option the user set wins (``{"options": {"post_grad_custom_pre_pass": None}}``
    compiles with inductor's own kernels). torch.compile takes either ``mode`` or
    ``options``, so a mode is expanded into its options (``torch._inductor.list_mode_options``)
    to carry them."""
    if ATEN_MATH_PASS is None or device.type != "cpu" or settings.get("backend", "inductor") != "inductor":
        return settings
    options = dict(settings.get("options") or {})
    out = {k: v for k, v in settings.items() if k != "mode"}
    if settings.get("mode") not in (None, "default"):
        from torch._inductor import list_mode_options

        options = {**list_mode_options(settings["mode"]), **options}
    out["options"] = {**_cpu_options(), **options}
    return out
