"""A compile-friendly adaptive Runge-Kutta step and the loop that drives it
(``options={"compile": True}``).

The eager loop (``integrate.py``) keeps times and step sizes as Python floats, which is
the fast path in eager mode but the worst case for ``torch.compile``: dynamo guards on
every float, so each new ``t`` or ``h`` is a recompile. Here the whole trial step

    k_i = f(t + c_i h, y + h sum_j a_ij k_j)                  (stages)
    y_+ = y + h sum_i b_i k_i,   e = h sum_i (b_i - b^_i) k_i (combination, error)
    r   = RMS(e / (atol + rtol max(|y|, |y_+|)))              (error norm)
    h'  = h clip(safety r^-alpha r_prev^beta, dfactor, ifactor or 1)   (PI factor)

is one function of the controller state ``[t, h, t_end, r_prev, ...]`` (one float64
vector on the state's device, :data:`CTRL`) and the state, built from the method's
Butcher tableau (``tableaus.py``: the coefficients are constants of the traced graph, so
methods stay data). The step to the end point (``h = t_end - t`` when ``t + h`` would
pass it) and the rejection of a non-finite error estimate (``h' = dfactor h``) are
``torch.where`` selections inside the graph, so nothing in a step depends on a host value:
``torch.compile(fullgraph=True)`` captures it once per (tableau, shapes, dtype, device,
func) and never recompiles for new times, step sizes or save times. The host reads the controller state back once per trial
step (accepted?, r, t_next, h) -- the one synchronisation that decides acceptance and serves
the save times from dense output (eager, between steps, as in ``integrate.py``).

Accepted steps are reported as the same :class:`~.integrate.AcceptedStep` records the
eager loop produces (float ``t``, ``h``), so CheckpointAdjoint and the interpolating
adjoints replay them unchanged. Step sizes are constants for the gradient (the default
``DirectAD()``, every adjoint's forward pass); ``DirectAD(through_controller=True)`` and
differentiable save times use the eager loop.

Controller and error norm are those of ``control.PIController`` and
``stepping.error_ratio`` (Hairer, Norsett & Wanner I, II.4 and II, IV.2).
"""

from __future__ import annotations

import contextlib
import enum
import math
import types
import warnings
import weakref
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ...errors import CompileFallbackWarning, MaxStepsExceededError, NonFiniteStateError
from ...pytree import StructuredFunc
from .callbacks import StepCallbacks
from .control import PIController, SolverOptions, initial_step
from .integrate import (
    STIFF_HINT,
    AcceptedStep,
    CountingRHS,
    Counters,
    LazyRHS,
    Record,
    _constructed_grid,
    _nonfinite_trial,
    _saves_in_step,
    _serve,
    _underflow,
    as_float,
    fixed_grid,
    integrate_adaptive,
    integrate_fixed,
)
from .tableaus import ButcherTableau

Scalar = Union[float, torch.Tensor]

#: torch.compile keywords a user may set through ``options={"compile": {...}}``.
#: ``fullgraph`` and ``dynamic`` are fixed (True, None): the step is one graph, static at first (:func:`_compile`).
COMPILE_KEYWORDS = ("backend", "mode", "options")

#: Our own keyword in the same mapping: how many trial steps one compiled call may take
#: (:func:`make_pair`; 2, the default, applies where :func:`pairs_wanted` says, 1 never pairs).
TRIALS_PER_CALL = "trials_per_call"
TRIALS_PER_CALL_VALUES = (1, 2)


def pairs_wanted(opts: SolverOptions, f0: torch.Tensor) -> bool:
    """Two steps per compiled call pay off: a graph is being built (``f0`` carries one:
    without grad a trivial call costs ~16 us, with grad ~32 us forward and ~70 us backward)
    and ``options["compile"]`` does not ask for one trial per call (validated by
    ``control.SolverOptions``; the default is the last of TRIALS_PER_CALL_VALUES)."""
    value = opts.compile
    trials = value.get(TRIALS_PER_CALL, TRIALS_PER_CALL_VALUES[-1]) if isinstance(value, Mapping) else TRIALS_PER_CALL_VALUES[-1]
    return trials == 2 and torch.is_grad_enabled() and f0.requires_grad


def compile_settings(value: Any, device: torch.device) -> Dict[str, Any]:
    """Normalise ``options["compile"]`` (True or a mapping of torch.compile keywords) for
    a solve on ``device``: on CPU with inductor, ATen's tanh kernel (inductor's own is
    3.4-3.9x slower there) and inductor's C++ wrapper, unless the user set those options
    (``aten_math.with_aten_math``)."""
    from .aten_math import with_aten_math  # imports torch._inductor (~2 s): only when compiling

    torch_keywords = {} if value is True else {k: v for k, v in value.items() if k != TRIALS_PER_CALL}
    return with_aten_math(torch_keywords, device)


def settings_key(settings: Mapping[str, Any]) -> Tuple:
    """``settings`` (torch.compile keywords) as the hashable part of a compiled function's cache key."""
    return tuple(sorted((k, repr(v)) for k, v in settings.items()))


def _combine(y, hc, coeffs, ks):
    # y + h sum_j a_j k_j, zero coefficients skipped (traced once; they are constants).
    # The increment is summed before it meets y, as in stepping.lincomb: one rounding at
    # the scale of y per step, not one per stage. h multiplies the sum, not each term:
    # then the backward graph needs h alone, not one saved 0-d product h a_j per
    # coefficient (dopri5 had 20 of its 41 saved tensors of that kind; each saved tensor
    # costs host time in every call).
    inc = None
    for cj, k in zip(coeffs, ks):
        if cj != 0.0:
            term = k * cj
            inc = term if inc is None else inc + term
    return y if inc is None else y + hc * inc


def _rk_step(func: Callable, c, a, b, t, h, y, k0, fsal: bool = False, extra: Tuple = (), f64_times: bool = False):
    """``(y_next, ks)`` of one explicit Runge-Kutta step from ``k0 = f(t, y)``:

        k_i = f(t + c_i h, y + h sum_j a_ij k_j),   y_next = y + h sum_i b_i k_i,

    shared by the adaptive, replay and fixed-step functions. Plain Python over tensors
    with the table's coefficients as constants, so ``torch.compile(fullgraph=True)``
    traces it into one graph. ``fsal`` (a trace-time constant): the last stage's state
    is ``y_next`` (its row of ``a`` is ``b``), so the combination is not formed again.
    ``extra``: further arguments of every ``func`` call (graph inputs, not constants).
    ``f64_times``: stage times reach ``func`` in float64, not the state's dtype (the
    interpolating adjoints look y(t) up at the exact float64 time, as the eager loop does)."""
    hy = h.to(y.dtype)
    ks = [k0]
    y_stage = y
    for ci, ai in zip(c[1:], a):
        y_stage = _combine(y, hy, ai, ks)
        ti = t + ci * h
        ks.append(func(ti if f64_times else ti.to(y.dtype), y_stage, *extra))
    y_next = y_stage if fsal else _combine(y, hy, b, ks)
    return y_next, ks


#: The controller's state: one float64 vector on the state's device, into and out of every
#: compiled trial step. A step reads the first four entries (where it starts, the step to
#: try, the end point, the last accepted error ratio) and returns them for the next trial
#: together with what the host reads after it (accepted?, its error ratio, where it ends,
#: the step it took). One tensor instead of four 0-d ones: each graph input is guarded and
#: wrapped on every call, and the host reads it back with one ``tolist``.
CTRL = ("t", "h", "t_end", "r_prev", "accepted", "r", "t_next", "h_used")


def initial_ctrl(t: float, h: float, t_end: float, device: torch.device) -> torch.Tensor:
    """The controller state of a solve's first trial step (:data:`CTRL`; r_prev = 1)."""
    return torch.tensor([t, h, t_end, 1.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64, device=device)


class StepOutputs(enum.Enum):
    """The stages a compiled trial step returns (:func:`make_step`). With grad every output
    of a graph costs autograd bookkeeping on each call, and AOT autograd runs the whole
    backward graph with zeros for an output nobody used (``autograd.Function`` materialises
    them), so a stage that no one reads costs a func VJP."""

    ALL = "every stage: dense output, recorded steps (the adjoints' forward and replays)"
    NEXT = "the stage the next step starts from (FSAL tables; none for others)"
    NONE = "no stage: the trial that ends an end-point-only solve with grad"


def make_step(tab: ButcherTableau, func: Callable, ctl: PIController, max_step: float,
              ratio: Optional[Callable] = None, f64_times: bool = False,
              outputs: StepOutputs = StepOutputs.ALL) -> Callable:
    """The trial step of ``tab`` for ``func`` as one traceable function.

    ``step(ctrl, y, k0, rtol, atol, extra=()) -> (y_next, ks, ctrl_next)`` with ``ctrl`` the
    controller state (:data:`CTRL`, float64, read by the host once per trial step). On
    rejection ``ctrl_next`` keeps ``t`` and ``r_prev`` and carries the shrunk step, so the
    host passes it on unchanged either way. ``k0 = f(t, y)`` is always an input: dopri5,
    tsit5 and bosh3 are FSAL, so it is the previous step's last stage; other tables get it
    from one eager call before the next trial (or from dense output, whichever asks first).
    ``outputs`` (:class:`StepOutputs`): the stages ``ks`` holds. ``NEXT`` is for solves that
    serve no save time from dense output and record nothing (the stages cost ~50 us of a
    ~700 us dopri5 step on P2 with grad); ``NONE`` for the trial that reaches the end of
    such a solve with grad (its FSAL stage would cost a func VJP in the backward, ~150 us on P2).
    ``ratio(err, y, y_next)``, when given, replaces the RMS error ratio (the adjoint
    solves' mixed norm over their stacked blocks, ``continuous.mixed_ratio``); ``extra``
    is passed on to every ``func`` call, ``f64_times`` to :func:`_rk_step`.
    """
    c = tab.c
    a = tab.a
    b = tab.b
    b_err = tab.b_err
    fsal = tab.fsal
    alpha, beta = ctl.alpha, ctl.beta
    safety, ifactor, dfactor = ctl.safety, ctl.ifactor, ctl.dfactor

    def step(ctrl, y, k0, rtol, atol, extra=()):
        t, h, t_end, prev = ctrl[0], ctrl[1], ctrl[2], ctrl[3]
        last = (t + h - t_end) * h >= 0  # t + h reaches or passes t_end (h carries the direction)
        h = torch.where(last, t_end - t, h)
        hy = h.to(y.dtype)
        y_next, ks = _rk_step(func, c, a, b, t, h, y, k0, fsal, extra, f64_times)
        # The error estimate only steers h, a constant for the gradient: no graph.
        err = _combine(torch.zeros_like(y), hy, b_err, [k.detach() for k in ks])
        if ratio is None:
            scale = torch.maximum(y.detach().abs(), y_next.detach().abs()) * rtol + atol
            r = (err / scale).square().mean().clamp_min(torch.finfo(y.dtype).tiny).sqrt().to(h.dtype)
        else:
            r = ratio(err, y.detach(), y_next.detach()).to(h.dtype)
        finite = torch.isfinite(r)
        accepted = r <= 1.0
        rc = r.clamp_min(1e-10)
        raw = safety * rc ** (-alpha) * prev**beta
        factor = torch.minimum(raw.clamp_min(dfactor), torch.where(accepted, ifactor, 1.0))
        h_new = torch.where(finite, h * factor, h * dfactor).clamp(-max_step, max_step)
        t_next = torch.where(last, t_end, t + h)
        ctrl_next = torch.stack([torch.where(accepted, t_next, t), h_new, t_end, torch.where(accepted, rc, prev),
                                 accepted.to(h.dtype), r, t_next, h])
        kept = ks if outputs is StepOutputs.ALL else ks[-1:] if fsal and outputs is StepOutputs.NEXT else []
        return y_next, kept, ctrl_next

    return step


def make_pair(step: Callable) -> Callable:
    """Two trial steps of ``step`` (a :func:`make_step` of an FSAL table) as one traceable
    function: ``pair(ctrl, y, k0, rtol, atol) -> (y_1, ks_1, y_2, ks_2, ctrl_2, rows)``,
    each trial's own outputs, the controller state for the next call and both trials'
    controller rows stacked (``(2, len(CTRL))``: one host read, one device sync on CUDA).

    The second trial starts from what the first left: its end state and last stage if
    accepted, else the same state with the shrunk step (``ctrl_1`` carries it either way),
    selected by ``torch.where`` on the device -- the masked update of diffrax's bounded
    loops, so the host reads both controller rows once, after the call, and takes each
    trial's outputs as it would a single call's. Same trials, same arithmetic and the same
    result as two single calls; what it saves is one compiled call with grad (AOT
    autograd's forward and backward wrappers, roughly 100-150 us a call) per two trial
    steps. A rejected trial would stay in the graph with its backward on zero cotangents,
    and func's VJP can be NaN where its values are finite (0 times NaN is NaN), so the host
    keeps a pair only when both trials were accepted, and otherwise redoes them one per
    call. The host calls it only when the first trial cannot reach the end point, so the
    second trial is always one the solve needs."""

    def pair(ctrl, y, k0, rtol, atol):
        y_1, ks_1, ctrl_1 = step(ctrl, y, k0, rtol, atol)
        took = ctrl_1[4] > 0.5  # CTRL "accepted"
        y_2, ks_2, ctrl_2 = step(ctrl_1, torch.where(took, y_1, y), torch.where(took, ks_1[-1], k0), rtol, atol)
        return y_1, ks_1, y_2, ks_2, ctrl_2, torch.stack([ctrl_1, ctrl_2])

    return pair


def _fresh_code(fn: Callable) -> Callable:
    """A copy of ``fn`` with its own code object: dynamo keeps its cache (and its
    recompile limit) per code object, so each cached step gets a cache of its own
    instead of every func sharing the 8 entries of ``make_step``'s inner function."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


def _compile(fn: Callable, settings: Dict[str, Any]) -> "CompiledStep":
    """``fn`` (a fresh code object, :func:`_fresh_code`) under ``torch.compile``: one graph
    (``fullgraph=True``), static shapes at first (``dynamic=None``: dynamo's default,
    automatic dynamic, which marks a size or int dynamic only after a recompile caused by
    its value; our cache keys hold the shapes, so in practice that is a counter on a module
    attribute, see :func:`_call`). With ``dynamic=False`` every int is a constant, and
    ``self.nfe += 1`` in func recompiled on every call."""
    return CompiledStep(torch.compile(fn, fullgraph=True, dynamic=None, **settings))


@dataclass
class CompiledStep:
    fn: Callable
    broken: Optional[str] = None  # why capture failed (then the eager loop is used)
    calls: int = 0
    recompiles: int = 0  # calls after the first that compiled a new graph
    unspec_ints: bool = False  # call with allow_unspec_int_on_nn_module (see UNSPEC_INTS_AFTER)


#: owner object (func, or a bound method's __self__) -> {key: CompiledStep}. Weak, so a
#: model that is dropped takes its compiled steps with it: the graphs reach func through a
#: weak reference (:func:`_weak_call`), since a value that refers to its own key keeps a
#: WeakKeyDictionary entry alive forever.
_CACHE: "weakref.WeakKeyDictionary[Any, Dict[Tuple, CompiledStep]]" = weakref.WeakKeyDictionary()
_UNOWNED: Dict[Tuple, CompiledStep] = {}  # funcs that cannot be weakly referenced


@dataclass(frozen=True)
class CacheSlot:
    """Where the compiled functions of one func live, and how they call it.

    ``table``: the weak table of func's owner (func, or a bound method's ``__self__``), or
    ``_UNOWNED``; ``inner``: the bound method's function (``None`` for a plain func), part
    of the key; ``prefix``: put in front of the key (``(id(func),)`` for an unowned func,
    the structure for a structured state). :meth:`traced_func` is built only when a new
    function is compiled: a cached solve pays for no wrapper."""

    table: Dict[Tuple, "CompiledStep"]
    inner: Any
    prefix: Tuple
    owner: Any  # func, or a bound method's __self__
    structure: Any = None  # a structured state's Structure (the wrapper is rebuilt around owner)
    weak: bool = True  # False: owner cannot be weakly referenced (_UNOWNED holds it anyway)

    def traced_func(self) -> Callable:
        """func as the traced functions call it, holding no strong reference to the owner:
        through a weak reference (:func:`_weak_call`), since a value that refers to its
        own key keeps a WeakKeyDictionary entry alive forever."""
        if self.weak:
            call = _weak_call(self.owner, self.inner)
        else:
            call = self.owner if self.inner is None else types.MethodType(self.inner, self.owner)
        return call if self.structure is None else StructuredFunc(call, self.structure)


def _weak_call(owner: Any, inner: Any) -> Callable:
    """``owner(*args)`` (or ``inner(owner, *args)`` for a bound method) through a weak
    reference to ``owner``. Dynamo traces the dereference (its ``WeakRefVariable``,
    torch/_dynamo/variables/misc.py at torch 2.13.0: the referent is guarded and its
    parameters are graph inputs, as for a module in a closure), so the compiled graph is
    the same; the host holds func for as long as a solve runs."""
    ref = weakref.ref(owner)
    if inner is None:
        def call(*args):
            return ref()(*args)
    else:
        def call(*args):
            return inner(ref(), *args)
    return call


def _cache_slot(func: Callable) -> CacheSlot:
    """The :class:`CacheSlot` of ``func``.

    A structured state's ``StructuredFunc`` is a new wrapper on every ``odeint`` call, so
    it is keyed by the user's func and the structure instead: keyed by the wrapper, every
    solve of a ``(z, logp)`` state compiled its steps again. The cached functions call a
    wrapper of their own around the weakly referenced user func."""
    prefix: Tuple = ()
    structure = None
    if isinstance(func, StructuredFunc):
        structure = func.structure
        prefix, func = (StructuredFunc, structure), func.base_func
    owner, inner = (func.__self__, func.__func__) if isinstance(func, types.MethodType) else (func, None)
    try:
        return CacheSlot(_CACHE.setdefault(owner, {}), inner, prefix, owner, structure)
    except TypeError:
        return CacheSlot(_UNOWNED, inner, (id(func),) + prefix, owner, structure, weak=False)


def _call(entry: CompiledStep, *args, warn: bool = True):
    """``entry.fn(*args)``, or ``None`` (``entry`` marked broken, with a
    CompileFallbackWarning unless ``warn`` is False) when dynamo cannot capture func in one
    graph: on the first call, or on a later one that recompiles (new guards) and fails,
    among them the recompile that exceeds dynamo's ``recompile_limit``. That one is how a
    func whose Python state changes every call shows itself: a counter in a global or a
    closure (``calls[0] += 1``) is a constant of the traced graph, guarded by value, so each
    call fails its guards and compiles again (torch/_dynamo/config.py: ``recompile_limit``
    8; with ``fullgraph=True`` the ninth raises ``FailOnRecompileLimitHit``). Errors func
    raises itself on later calls propagate."""
    stats = _dynamo_stats()
    graphs = stats["unique_graphs"]
    unspec = entry.unspec_ints
    if unspec:
        cfg = torch._dynamo.config
        unspec_before = cfg.allow_unspec_int_on_nn_module
        cfg.allow_unspec_int_on_nn_module = True
    try:
        out = entry.fn(*args)
    except Exception as exc:  # capture failed: func is not traceable in one graph
        limit = _recompile_limit_hit(exc)
        if entry.calls and not limit and not isinstance(exc, torch._dynamo.exc.TorchDynamoException):
            raise
        if limit:
            entry.broken = (f"each call recompiled until dynamo's recompile_limit "
                            f"({torch._dynamo.config.recompile_limit}) was hit: func reads Python state that "
                            "changes between calls (a counter in a global or a closure, calls[0] += 1, becomes a "
                            "constant of the graph; count on a module attribute, self.nfe += 1, which dynamo "
                            "tracks, or outside func)")
        else:
            entry.broken = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        if warn:
            _warn_fallback(entry.broken, stacklevel=5)
        return None
    finally:
        if unspec:
            cfg.allow_unspec_int_on_nn_module = unspec_before
    if entry.calls and stats["unique_graphs"] != graphs:
        entry.recompiles += 1
        # Recompiled twice: the next time, let dynamo make an int attribute of a module
        # that changed between the compiles (self.nfe += 1) an input instead of a constant.
        entry.unspec_ints = entry.recompiles >= UNSPEC_INTS_AFTER
    entry.calls += 1
    return out


#: Recompiles of one compiled function after which its later calls run with dynamo's
#: ``allow_unspec_int_on_nn_module`` (torch/_dynamo/config.py; off by default: "dynamo
#: will always specialize on int members of NN module ... e.g., when tracking step count
#: leading to constant recompilation"). One recompile is expected (the first trial step's
#: y0 may not require grad, the next ones' y does); a counter on a module attribute
#: recompiles on every call. Setting the switch costs ~5.6 us a call, so it is set only
#: for functions that have shown the symptom.
UNSPEC_INTS_AFTER = 2


_COUNTERS: List[Any] = []  # dynamo's counters (torch._dynamo.utils.counters), imported once


def _dynamo_stats():
    """dynamo's "stats" counters (``unique_graphs`` counts compiled graphs); looked up on
    every call, since ``counters.clear()`` replaces the inner Counter."""
    if not _COUNTERS:
        from torch._dynamo.utils import counters

        _COUNTERS.append(counters)
    return _COUNTERS[0]["stats"]


def _recompile_limit_hit(exc: BaseException) -> bool:
    """``exc`` (or an exception it was raised from) is dynamo's recompile-limit failure."""
    hard = getattr(torch._dynamo.exc, "FailOnRecompileLimitHit", None)
    while exc is not None:
        if (hard is not None and isinstance(exc, hard)) or "recompile limit" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextlib.contextmanager
def _tracing_autograd():
    """Let dynamo trace ``torch.autograd.grad`` inside our compiled calls: the switch
    (``torch._dynamo.config.trace_autograd_ops``, torch/_dynamo/config.py, off by default)
    is read when a frame is traced, so it is set around our calls only, and the user's own
    compiled code is traced as before."""
    cfg = torch._dynamo.config
    before = cfg.trace_autograd_ops
    cfg.trace_autograd_ops = True
    try:
        yield
    finally:
        cfg.trace_autograd_ops = before


def compiled_step(tab: ButcherTableau, func: Callable, opts: SolverOptions, y: torch.Tensor,
                  tol_shapes: Tuple, settings: Dict[str, Any], outputs: StepOutputs = StepOutputs.ALL,
                  trials: int = 1) -> CompiledStep:
    """The cached compiled step for this (tableau, func, shapes, dtype, device, settings,
    ``outputs``: see :func:`make_step`); ``trials=2``: the :func:`make_pair` of it. Nothing
    is traced until the first call."""
    slot = _cache_slot(func)
    key = slot.prefix + (tab, slot.inner, tuple(y.shape), y.dtype, y.device, tol_shapes, torch.is_grad_enabled(),
                         opts.safety, opts.ifactor, opts.dfactor, opts.max_step,
                         settings_key(settings), outputs, trials)
    entry = slot.table.get(key)
    if entry is None:
        ctl = PIController.for_method(tab.error_order, opts)
        fn = make_step(tab, slot.traced_func(), ctl, opts.max_step, outputs=outputs)
        entry = slot.table[key] = _compile(_fresh_code(make_pair(fn) if trials == 2 else fn), settings)
    return entry


def pairs_trials(tab: ButcherTableau, opts: SolverOptions, record: Record, f0: torch.Tensor) -> bool:
    """Whether a compiled adaptive solve takes its trial steps two per call (:func:`make_pair`):
    an FSAL table (the pair hands its first trial's last stage on inside the graph),
    nothing recorded (the adjoints' forward passes run without grad anyway), and
    :func:`pairs_wanted`."""
    return tab.fsal and record is None and pairs_wanted(opts, f0)


def eager_reason(tab: Optional[ButcherTableau], opts: SolverOptions, differentiate_control: bool,
                 tensor_times: bool, callbacks: StepCallbacks) -> Optional[str]:
    """Why this solve cannot use the compiled step (None: it can)."""
    if tab is None:
        return "options['compile'] applies to the Runge-Kutta methods only (not leapfrog or the Adams methods)"
    if not isinstance(tab, ButcherTableau):
        return f"options['compile'] applies to the explicit Runge-Kutta methods only, not {tab.name!r}"
    if getattr(opts, "perturb", False) and not tab.adaptive:
        return "options['perturb'] moves stage times one ulp inside each step, which the compiled step does not"
    if differentiate_control:
        return "DirectAD(through_controller=True) differentiates the step-size search, which the compiled step holds constant"
    if tensor_times:
        return "t requires grad (dL/dt is taken through the eager loop)"
    if opts.norm is not None:
        return "a user error norm (options['norm'])"
    if opts.jump_t or opts.step_t or opts.accept_min_step or opts.steps_to_saves:
        return ("options['jump_t'] / options['step_t'] / options['steps_to_saves'] / options['accept_min_step'] "
                "change the step sequence, which the compiled loop does not")
    if callbacks.step is not None or callbacks.accept is not None or callbacks.reject is not None:
        return "func has step callbacks (callback_step / callback_accept_step / callback_reject_step)"
    return None


def maybe_integrate(rhs: CountingRHS, tab: Optional[ButcherTableau], t_save: Sequence[Scalar], y0: torch.Tensor,
                    f0: torch.Tensor, rtol: Scalar, atol: Scalar, opts: SolverOptions, differentiate_control: bool,
                    counters: Counters, record: Record = None) -> Optional[List[torch.Tensor]]:
    """The compiled solve when this problem has one, else None (after a
    :class:`CompileFallbackWarning` saying why; the caller runs the eager loop)."""
    reason = eager_reason(tab, opts, differentiate_control, isinstance(t_save[0], torch.Tensor), rhs.callbacks)
    if reason is not None:
        _warn_fallback(reason)
        return None
    nfe = rhs.nfe
    if tab.adaptive:
        ys = integrate_compiled(rhs, tab, t_save, y0, f0, rtol, atol, opts, counters, record)
    else:
        ys = integrate_fixed_compiled(rhs, tab, t_save, y0, f0, opts, counters, record)
    if ys is None:  # the step was known not to capture: nothing was done
        rhs.nfe = nfe
        counters.n_steps = counters.n_rejected = 0
    return ys


def _first_state(y0: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
    """The state the first compiled step starts from: ``y0``, or, when the solve builds a
    graph (f0 carries one) but y0 does not require grad, a detached alias of y0 that does.
    Every later step's state requires grad, and AOT autograd compiles one graph per
    requires-grad pattern of the inputs, so the alias saves compiling the step twice (P2,
    DirectAD: the first three solves 17.8 s instead of 21.6 s). The gradient it collects
    is dropped with it; the caller returns its own y0 as the first save."""
    if torch.is_grad_enabled() and f0.requires_grad and not y0.requires_grad:
        return y0.detach().requires_grad_(True)
    return y0


def integrate_compiled(
    rhs: CountingRHS,
    tab: ButcherTableau,
    t_save: Sequence[Scalar],
    y0: torch.Tensor,
    f0: torch.Tensor,
    rtol: Union[float, torch.Tensor],
    atol: Union[float, torch.Tensor],
    opts: SolverOptions,
    counters: Counters,
    record: Record = None,
    entry: Optional[CompiledStep] = None,
    extra: Tuple = (),
    ratio: Optional[Callable] = None,
) -> Optional[List[torch.Tensor]]:
    """The adaptive loop of ``integrate.integrate_adaptive`` on the compiled step.

    Returns the states at ``t_save``, or None after a :class:`CompileFallbackWarning`
    when the step is known not to capture (the caller then runs the eager loop). When a
    call fails to capture (the first, or a recompile on a later one) the solve goes on from
    where it stands in the eager loop (:func:`_resumed`, :func:`_shifted`): what was
    recorded stays valid, and nothing is recorded twice. Same checks as the eager loop: max_num_steps,
    min_step, non-finite states and error estimates (a non-finite trial step is shrunk by
    dfactor and retried). ``entry``: a compiled step other than ``rhs.func``'s own (the
    adjoint solves'), called with ``extra`` as its last argument; ``ratio``: the error
    ratio its graph computes, for the eager loop should it take over.
    """
    ts = [as_float(x) for x in t_save]
    direction = 1.0 if ts[-1] > ts[0] else -1.0
    dev = y0.device
    rtol_t = torch.as_tensor(rtol, dtype=y0.dtype, device=dev)
    atol_t = torch.as_tensor(atol, dtype=y0.dtype, device=dev)
    pair = final = None
    if entry is None:
        settings = compile_settings(opts.compile, dev)
        tol_shapes = (tuple(rtol_t.shape), tuple(atol_t.shape))
        # Saves only at the end point (theta = 1 is y_next itself) and no record: no step
        # needs its stages for dense output, so the graph returns only the next first stage.
        outputs = StepOutputs.ALL if record is not None or len(ts) > 2 else StepOutputs.NEXT
        entry = compiled_step(tab, rhs.func, opts, y0, tol_shapes, settings, outputs)
        if pairs_trials(tab, opts, record, f0):
            pair = compiled_step(tab, rhs.func, opts, y0, tol_shapes, settings, outputs, trials=2)
            # The trial that ends an end-point-only solve: nothing reads its FSAL stage.
            final = compiled_step(tab, rhs.func, opts, y0, tol_shapes, settings,
                                  StepOutputs.NONE if outputs is StepOutputs.NEXT else outputs)
            if pair.broken is not None or final.broken is not None:  # it failed to capture once: single trials
                pair = final = None
    if entry.broken is not None:
        _warn_fallback(entry.broken)
        return None

    t_f = ts[0]
    if opts.first_step is not None:
        h_f = direction * opts.first_step
    else:
        with torch.no_grad():
            h_f = float(initial_step(rhs, t_f, y0, f0, tab.order, rtol, atol, direction))
    if not (math.isfinite(h_f) and h_f != 0.0):
        raise NonFiniteStateError(
            f"func(t, y) is finite at t={t_f:.6g} but NaN/inf just after it: the initial-step probe "
            f"gave the step size {h_f!r}. Check func and its parameters right after t0, or pass "
            "options={'first_step': h}."
        )
    h_f = max(min(h_f, opts.max_step), -opts.max_step)
    ctrl = initial_ctrl(t_f, h_f, ts[-1], dev)
    ys: List[Optional[torch.Tensor]] = [y0] + [None] * (len(ts) - 1)
    y, k0 = _first_state(y0, f0), f0
    stages = tab.stages - 1
    i, trials = 1, 0
    nonfinite_from: Optional[float] = None
    # After a dropped pair: trials one per call until two in a row are accepted, so the
    # trouble the pair met is behind before the next pair.
    singles, accepted_run = False, 0
    while i < len(ts):
        use = entry
        if pair is not None:
            if (t_f + h_f - ts[-1]) * h_f >= 0:  # the graph's own test for a trial that ends the solve
                use = final
            elif not singles and trials + 2 <= opts.max_num_steps:
                use = pair
        n_trials = 2 if use is pair else 1
        trials += n_trials
        if trials > opts.max_num_steps:
            raise MaxStepsExceededError(
                f"max_num_steps={opts.max_num_steps} steps taken and t={t_f:.6g} reached, "
                f"short of t={ts[-1]:.6g}. Raise options['max_num_steps'], loosen rtol/atol, "
                f"or, for a stiff problem, use {STIFF_HINT}."
            )
        if isinstance(k0, LazyRHS):
            k0 = k0()
        out = _call(use, ctrl, y, k0, rtol_t, atol_t, *((extra,) if extra else ()))
        if out is None:
            rest = integrate_adaptive(rhs, tab, [t_f] + ts[i:], y, k0, rtol, atol,
                                      _resumed(opts, h_f, trials - n_trials), False, counters,
                                      _shifted(record, i - 1), ratio_fn=ratio)
            return ys[:i] + rest[1:]
        if use is pair:
            y_1, ks_1, y_2, ks_2, ctrl_2, both = out
            rows = both.tolist()  # the one host sync per two trial steps
            if not (rows[0][4] and rows[1][4]):
                # A rejected trial stays in the pair's graph: its backward would run on zero
                # cotangents, and 0 times a NaN/inf derivative is NaN (func's VJP can be
                # non-finite where its values are not: sqrt or log behind a torch.where,
                # reached by a too-large trial step). So the pair is dropped unused (no
                # backward runs through it) and its trials are redone one per call.
                trials -= 2
                rhs.nfe += 2 * stages  # (its evaluations were made all the same)
                singles, accepted_run = True, 0
                continue
            ctrl, taken = ctrl_2, ((rows[0], y_1, ks_1), (rows[1], y_2, ks_2))
        else:
            y_next, ks, ctrl = out
            taken = ((ctrl.tolist(), y_next, ks),)  # the one host sync per trial step
        rhs.nfe += stages * len(taken)
        for row, y_next, ks in taken:
            _, h_f, _, _, accepted_f, ratio_f, t_next_f, h_used = row
            last = t_next_f == ts[-1]
            if not last and abs(h_used) <= max(opts.min_step, 4 * math.ulp(abs(t_f))):
                raise _underflow(opts, t_f, h_used, y, counters, nonfinite_from is not None)
            if not math.isfinite(ratio_f):
                nonfinite_from = _nonfinite_trial(k0, t_f, abs(h_used), nonfinite_from)
                counters.n_rejected += 1
                accepted_run = 0
                continue
            nonfinite_from = None
            if not accepted_f:
                counters.n_rejected += 1
                accepted_run = 0
                continue
            saves, i = _saves_in_step(ts, ts, i, t_f, h_used, t_next_f, direction, True)
            # Not FSAL: f(t_next, y_next) is evaluated when dense output or the next trial
            # asks for it, so the last accepted step costs no evaluation (as in the eager loop).
            k_next = LazyRHS(rhs, t_next_f, y_next, ks[-1] if tab.fsal and ks else None)
            _serve(saves, ys, tab, h_used, y, y_next, ks, k_next)
            if record is not None:
                record(AcceptedStep(t_f, h_used, y, saves, ks=ks))
            counters.n_steps += 1
            t_f, y, k0 = t_next_f, y_next, k_next
            accepted_run += 1
            singles = singles and accepted_run < 2
    return ys  # type: ignore[return-value]


def make_backsolve_rhs(func: Callable, shape: Tuple[int, ...], n: int) -> Callable:
    """``aug(t, s, ps)``: BacksolveAdjoint's augmented right-hand side on the flat state
    ``s = [y, a, g]`` (``adjoints/backsolve.py``; Chen et al. 2018, eq. 4-5),

        d/dt [y, a, g] = [f(t, y), -a^T df/dy, -a^T df/dps],

    the vector-Jacobian products by ``torch.autograd.grad`` inside the traced region, so
    a whole trial step of the backward solve is one compiled call."""

    def aug(t, s, *ps):
        y, a = s[:n], s[n : 2 * n]
        with torch.enable_grad():
            yr = y.detach().view(shape).requires_grad_(True)
            fy = func(t, yr)
            inputs = [yr, *ps]
            grads = torch.autograd.grad(fy, inputs, a.view(shape), allow_unused=True)
        parts = [fy.detach()] + [-(torch.zeros_like(x) if g is None else g) for g, x in zip(grads, inputs)]
        return torch.cat([p.reshape(-1) for p in parts])

    return aug


def make_interpolating_rhs(func: Callable, shape: Tuple[int, ...], n: int) -> Callable:
    """``aug(t, s, *table, *ps)``: the augmented right-hand side of InterpolatingAdjoint
    (state ``s = [a, g]``) and QuadratureAdjoint (``s = [a]``, no ``ps``) with y(t) read
    from the forward's dense output on the device (``dense_table.lookup`` of the 7
    tensors ``table``; Chen et al. 2018, eq. 4-5, along the forward trajectory):

        d/dt [a, g] = [-a^T df/dy, -a^T df/dps](t, y(t)).

    ``t`` arrives in float64 (``make_step(f64_times=True)``), as the eager lookup's float
    time does; ``func`` sees it in the state's dtype, as in the eager solve."""
    from .dense_table import lookup

    def aug(t, s, sign, keys, t0, hs, rows, poly, hpow, *ps):
        y = lookup(t, sign, keys, t0, hs, rows, poly, hpow)
        a = s[:n]
        with torch.enable_grad():
            yr = y.detach().view(shape).requires_grad_(True)
            fy = func(t.to(s.dtype), yr)
            inputs = [yr, *ps]
            if fy.requires_grad:  # known when traced: func reaches y or a parameter
                grads = torch.autograd.grad(fy, inputs, a.view(shape), allow_unused=True)
            else:
                grads = [None] * len(inputs)
        return torch.cat([-(torch.zeros_like(x) if g is None else g).reshape(-1) for g, x in zip(grads, inputs)])

    return aug


def _integrate_adjoint(kind: str, make_aug: Callable, rhs, tab: ButcherTableau, t_from: float, t_to: float,
                       s0: torch.Tensor, f0: torch.Tensor, rtol: float, atol: float, opts: SolverOptions,
                       blocks: Sequence[Tuple[int, int]], ratio: Callable, record: Record, table: Tuple = (),
                       f64_times: bool = False) -> Optional[List[torch.Tensor]]:
    """One save interval of a continuous adjoint's backward solve on the compiled adaptive
    step of ``make_aug(func)`` (cached under ``kind``; func as :meth:`CacheSlot.traced_func`
    gives it) with the mixed ``ratio``: the eager solve's error norm and controller, so the
    same steps. ``table``: tensors passed before
    the parameters (graph inputs; their shapes are in the key). None (with a
    :class:`CompileFallbackWarning`) when func cannot be captured."""
    settings = compile_settings(opts.compile, s0.device)
    func, ps = rhs.func, rhs.params
    slot = _cache_slot(func)
    key = slot.prefix + (kind, tab, slot.inner, tuple(rhs.shape), tuple(tuple(p.shape) for p in ps), s0.dtype,
                         s0.device, tuple((tuple(x.shape), x.dtype) for x in table),
                         tuple(blocks), rtol, atol, opts.safety, opts.ifactor, opts.dfactor, opts.max_step,
                         settings_key(settings))
    entry = slot.table.get(key)
    if entry is None:
        ctl = PIController.for_method(tab.error_order, opts)
        fn = _fresh_code(make_step(tab, make_aug(slot.traced_func()), ctl, opts.max_step, ratio, f64_times))
        entry = slot.table[key] = _compile(fn, settings)
    with _tracing_autograd():
        return integrate_compiled(rhs, tab, [t_from, t_to], s0, f0, rtol, atol, opts, Counters(), record,
                                  entry=entry, extra=tuple(table) + tuple(ps), ratio=ratio)


def integrate_backsolve(rhs, tab: ButcherTableau, t_from: float, t_to: float, s0: torch.Tensor, f0: torch.Tensor,
                        rtol: float, atol: float, opts: SolverOptions, blocks: Sequence[Tuple[int, int]],
                        ratio: Callable, record: Record = None) -> Optional[List[torch.Tensor]]:
    """One save interval of BacksolveAdjoint's backward solve on the compiled adaptive
    step (``make_step`` of :func:`make_backsolve_rhs` with the mixed ``ratio``); None
    (with a :class:`CompileFallbackWarning`) when func cannot be captured. ``rhs`` is the
    eager :class:`~.adjoints.continuous.AdjointRHS` (its ``func``, ``params``, ``shape``
    and nfe count): it made ``f0`` (with its graph check) and makes the initial-step probe."""
    return _integrate_adjoint("backsolve", lambda func: make_backsolve_rhs(func, tuple(rhs.shape), rhs.n), rhs, tab,
                              t_from, t_to, s0, f0, rtol, atol, opts, blocks, ratio, record)


def integrate_interpolating(rhs, tab: ButcherTableau, t_from: float, t_to: float, s0: torch.Tensor,
                            f0: torch.Tensor, rtol: float, atol: float, opts: SolverOptions,
                            blocks: Sequence[Tuple[int, int]], ratio: Callable, record: Record,
                            table) -> Optional[List[torch.Tensor]]:
    """One save interval of InterpolatingAdjoint's ([a, g]) or QuadratureAdjoint's ([a])
    backward solve on the compiled adaptive step of :func:`make_interpolating_rhs`, y(t)
    from ``table`` (a ``dense_table.DenseTable`` of the forward solve); as
    :func:`integrate_backsolve` otherwise. QuadratureAdjoint's parameter quadrature runs
    on the accepted steps this reports to ``record``, as in the eager solve."""
    kind = "interpolating" if rhs.params else "quadrature"
    return _integrate_adjoint(kind, lambda func: make_interpolating_rhs(func, tuple(rhs.shape), rhs.n), rhs, tab,
                              t_from, t_to, s0, f0, rtol, atol, opts, blocks, ratio, record, table.tensors(),
                              f64_times=True)


def make_quadrature_panel(func: Callable, shape: Tuple[int, ...], adj_tab: ButcherTableau,
                          nodes: Sequence[float], weights: Sequence[float]) -> Callable:
    """``panel(t, h, a_n, a_next, ks, f_next, *table, g, ps) -> g_new``: QuadratureAdjoint's
    m-point Gauss-Legendre panel on one accepted backward step (``adjoints/quadrature.py``),

        g_new_k = g_k + sum_q (-h w_q) a(t + x_q h)^T df/dps_k (t + x_q h, y(t + x_q h)),

    a(t) from the backward step's dense output (the adjoint table's continuous extension,
    its weights b_i(x_q) constants of the graph since the nodes are fixed, or the cubic
    Hermite interpolant through (a_n, ks[0]), (a_next, f_next)), y(t) from the forward's
    dense table (``dense_table.lookup``); the m vector-Jacobian products are one
    ``torch.autograd.grad`` in the traced graph, so a panel is one compiled call."""
    from .dense_table import lookup

    dense = adj_tab.dense
    coeffs = []
    for x in nodes:
        if dense is not None:
            coeffs.append([sum(row[p] * x ** (p + 1) for p in range(len(row))) for row in dense])
        else:  # stepping.hermite's basis at theta = x
            coeffs.append([(1 + 2 * x) * (1 - x) ** 2, x * (1 - x) ** 2, x**2 * (3 - 2 * x), x**2 * (x - 1)])

    def panel(t, h, a_n, a_next, ks, f_next, sign, keys, t0, hs, rows, poly, hpow, g, ps):
        hy = h.to(a_n.dtype)
        outs, gouts = [], []
        with torch.enable_grad():
            for x, w, cq in zip(nodes, weights, coeffs):
                if dense is not None:
                    a_q = _combine(a_n, hy, cq, ks)
                else:
                    a_q = cq[0] * a_n + (cq[1] * hy) * ks[0] + cq[2] * a_next + (cq[3] * hy) * f_next
                tq = t + x * h
                y_q = lookup(tq, sign, keys, t0, hs, rows, poly, hpow).view(shape)
                outs.append(func(tq.to(a_n.dtype), y_q))
                gouts.append(a_q.view(shape) * (-hy * w))
            live = [(o, go) for o, go in zip(outs, gouts) if o.requires_grad]  # known when traced
            if not live:
                return list(g)
            grads = torch.autograd.grad([o for o, _ in live], list(ps), [go for _, go in live], allow_unused=True)
        return [gk if dk is None else gk + dk for gk, dk in zip(g, grads)]

    return panel


class CompiledPanel:
    """The cached compiled QuadratureAdjoint panel (:func:`make_quadrature_panel`) for one
    (adjoint table, func, shapes, dtype, device); ``None`` from a call means capture failed
    and the caller computes the panel eagerly (the backward solve has warned already)."""

    def __init__(self, entry: CompiledStep, hermite: bool, table):
        self.entry, self.hermite, self.table = entry, hermite, table.tensors()

    def __call__(self, t: float, h: float, a_n, a_next, ks, f_next: Callable, g, ps):
        entry = self.entry
        if entry.broken is not None:
            return None
        dev = a_n.device
        th = torch.tensor([t, h], dtype=torch.float64, device=dev).unbind(0)
        fn = f_next() if self.hermite else a_n  # only the Hermite interpolant reads f_next
        with _tracing_autograd():
            return _call(entry, th[0], th[1], a_n, a_next, list(ks), fn, *self.table, list(g), list(ps), warn=False)


def compiled_panel(func: Callable, shape: Tuple[int, ...], adj_tab: ButcherTableau, nodes: Sequence[float],
                   weights: Sequence[float], ps: Sequence[torch.Tensor], a: torch.Tensor, table,
                   opts: SolverOptions) -> CompiledPanel:
    """The cached :class:`CompiledPanel` (keyed as :func:`compiled_step`, plus the table's shapes)."""
    settings = compile_settings(opts.compile, a.device)
    slot = _cache_slot(func)
    key = slot.prefix + ("quadrature_panel", adj_tab, slot.inner, tuple(shape), tuple(tuple(p.shape) for p in ps),
                         a.dtype, a.device, tuple(nodes), tuple((tuple(x.shape), x.dtype) for x in table.tensors()),
                         settings_key(settings))
    entry = slot.table.get(key)
    if entry is None:
        fn = _fresh_code(make_quadrature_panel(slot.traced_func(), tuple(shape), adj_tab, nodes, weights))
        entry = slot.table[key] = _compile(fn, settings)
    return CompiledPanel(entry, adj_tab.dense is None, table)


def _resumed(opts: SolverOptions, h: Optional[float], steps_done: int) -> SolverOptions:
    """``opts`` for the eager loop that takes a solve over at a step of size ``h`` (the
    trial step it would have tried next; None for fixed steps), after ``steps_done`` steps
    counted against max_num_steps. The PI controller's memory of the last error ratio
    starts afresh, so the steps after the hand-over may differ from an uninterrupted
    solve's (each is still accepted by the same error test)."""
    changes: Dict[str, Any] = {"max_num_steps": max(opts.max_num_steps - steps_done, 1)}
    if h is not None:
        changes["first_step"] = abs(h)
    return replace(opts, **changes)


def _shifted(record: Record, offset: int) -> Record:
    """``record`` for a loop that took over with the save times from index ``offset + 1``
    on: its save indices (into its own list, whose entry 0 is the hand-over point) are
    moved back to the solve's."""
    if record is None or offset == 0:
        return record
    def shifted(step: AcceptedStep) -> None:
        record(replace(step, saves=[(k + offset, theta) for k, theta in step.saves]))

    return shifted


def _warn_fallback(reason: str, stacklevel: int = 4) -> None:
    warnings.warn(
        f"options['compile']: the solve runs eagerly because {reason}. To compile, make func one "
        "traceable graph (no .item(), print, data-dependent Python branches or non-torch calls).",
        CompileFallbackWarning,
        stacklevel=stacklevel,
    )


def make_replay(tab: ButcherTableau, func: Callable) -> Callable:
    """``replay(t, h, y) -> y_next``: one accepted step of ``tab`` (CheckpointAdjoint's
    table without its FSAL stage, ``replay.without_fsal_stage``) as one traceable
    function of 0-d float64 tensors ``t``, ``h`` and the state, for the backward pass:
    compiled with autograd, so the step's vector-Jacobian product runs as one compiled
    backward graph instead of one autograd node per operation."""
    c, a, b = tab.c, tab.a, tab.b

    def replay(t, h, y):
        return _rk_step(func, c, a, b, t, h, y, func(t.to(y.dtype), y))[0]

    return replay


def make_replay_vjp(tab: ButcherTableau, func: Callable, seeded_stages: int = 0) -> Callable:
    """``replay_vjp(t, h, y, a, g, ps[, c]) -> (a_y, g_new)``: one accepted step's adjoint update

        a_y = (dPhi/dy)^T a + sum_i (dk_i/dy)^T c_i,
        g_new_k = g_k + (dPhi/dp_k)^T a + sum_i (dk_i/dp_k)^T c_i,

    for ``y_next = Phi(t, h, y; ps)`` the step of ``tab`` with stages ``k_i`` (ACA /
    ANODE's backward, see ``adjoints/checkpoint.py``), forward stages and their
    vector-Jacobian product traced into one graph (``torch.autograd.grad`` inside the
    compiled region, dynamo's ``trace_autograd_ops``). A replayed step is then one
    compiled call: no autograd graph is built or walked per step on the host, and the
    accumulation into ``g`` is fused in. ``seeded_stages = m > 0``: the first m stages
    get the seeds ``c`` (an ``(m, *y.shape)`` tensor), the dense saves of the step: a save
    y_n + h sum_i b_i(theta) k_i with cotangent G passes h b_i(theta) G to k_i and G to y_n
    (the caller adds that last term). Parameters func does not reach give no term."""
    c, a, b, fsal = tab.c, tab.a, tab.b, tab.fsal

    def replay_vjp(t, h, y, a_next, g, ps, stage_seeds=None):
        with torch.enable_grad():
            y_in = y.detach().requires_grad_(True)
            y_next, ks = _rk_step(func, c, a, b, t, h, y_in, func(t.to(y.dtype), y_in), fsal)
            outs, seeds = [y_next], [a_next]
            if seeded_stages:
                outs += ks[:seeded_stages]
                seeds += list(stage_seeds.unbind(0))
            grads = torch.autograd.grad(outs, [y_in, *ps], seeds, allow_unused=True)
        a_y = torch.zeros_like(y) if grads[0] is None else grads[0]
        return a_y, [gk if dk is None else gk + dk for gk, dk in zip(g, grads[1:])]

    return replay_vjp


class CompiledReplay:
    """The compiled replay of one (table, func, shape, dtype, device); falls back to
    ``None`` (the caller's eager step) with a :class:`CompileFallbackWarning` when func
    cannot be captured."""

    def __init__(self, entry: CompiledStep, dtype: torch.dtype, device: torch.device, n_stages: int,
                 vjp_entry: Optional[CompiledStep] = None, dense_entry: Optional[CompiledStep] = None,
                 dense_tab: Optional[ButcherTableau] = None):
        self.entry, self.device, self.n_stages = entry, device, n_stages
        self.vjp_entry = vjp_entry
        self.dense_entry, self.dense_tab = dense_entry, dense_tab
        self.dense_table = None if dense_tab is None else torch.tensor(dense_tab.dense, dtype=torch.float64)

    def times(self, values: Sequence[float]) -> Tuple[torch.Tensor, ...]:
        """``values`` as 0-d float64 device tensors, made by one copy (not one per step)."""
        return torch.tensor(list(values), dtype=torch.float64, device=self.device).unbind(0)

    def dense_vjp(self, t: torch.Tensor, h: float, y: torch.Tensor, a_next: torch.Tensor, g: List[torch.Tensor],
                  ps: List[torch.Tensor], thetas: Sequence[float], seeds: torch.Tensor):
        """The update of a step that also serves dense saves at ``thetas`` with cotangents
        ``seeds`` (``(len(thetas), *y.shape)``): the saves y_n + h W K, W[j, i] = b_i(theta_j)
        (``stepping.dense_eval_many``) seed the stages with h W^T G and y_n with sum_j G_j.
        None when the table has no continuous extension or capture fails."""
        if self.dense_entry is None or self.dense_entry.broken is not None:
            return None
        table = self.dense_table
        th = torch.tensor(list(thetas), dtype=torch.float64)
        w = (th[:, None] ** torch.arange(1, table.shape[1] + 1, dtype=torch.float64)) @ table.T  # (saves, stages)
        flat = seeds.reshape(len(thetas), -1)
        stage_seeds = (w.T * h).to(device=y.device, dtype=y.dtype) @ flat
        out = self._run(self.dense_entry, t, torch.tensor(h, dtype=torch.float64, device=self.device), y, a_next, g,
                        ps, stage_seeds.reshape(table.shape[0], *y.shape))
        if out is None:
            return None
        return out[0] + flat.sum(0).view_as(y), out[1]

    def vjp(self, t: torch.Tensor, h: torch.Tensor, y: torch.Tensor, a_next: torch.Tensor,
            g: List[torch.Tensor], ps: List[torch.Tensor]) -> Optional[Tuple[torch.Tensor, List[torch.Tensor]]]:
        """:func:`make_replay_vjp`'s update on the compiled graph, or None when it cannot be
        captured (the caller then replays with autograd; no warning: that path is compiled
        too)."""
        return self._run(self.vjp_entry, t, h, y, a_next, g, ps)

    def _run(self, entry: Optional[CompiledStep], *args):
        if entry is None or entry.broken is not None:
            return None
        with _tracing_autograd():
            return _call(entry, *args, warn=False)

    def __call__(self, t: float, h: float, y: torch.Tensor) -> Optional[torch.Tensor]:
        entry = self.entry
        if entry.broken is not None:
            return None
        tt = torch.tensor(t, dtype=torch.float64, device=self.device)
        hh = torch.tensor(h, dtype=torch.float64, device=self.device)
        return _call(entry, tt, hh, y)


def compiled_replay(tab: ButcherTableau, func: Callable, opts: SolverOptions, y: torch.Tensor,
                    full_tab: Optional[ButcherTableau] = None) -> CompiledReplay:
    """The cached compiled replay step (see :func:`make_replay`) and its VJP forms
    (:func:`make_replay_vjp`: ``tab``, and ``full_tab`` with its dense stages seeded when
    that table has a continuous extension), keyed as :func:`compiled_step`."""
    settings = compile_settings(opts.compile, y.device)
    slot = _cache_slot(func)
    table, prefix = slot.table, slot.prefix
    rest = (tab, slot.inner, tuple(y.shape), y.dtype, y.device, settings_key(settings))
    key = prefix + ("replay",) + rest
    entry = table.get(key)
    if entry is None:
        fn = _fresh_code(make_replay(tab, slot.traced_func()))
        entry = table[key] = _compile(fn, settings)
    vkey = prefix + ("replay_vjp",) + rest
    vjp_entry = table.get(vkey)
    if vjp_entry is None:
        fn = _fresh_code(make_replay_vjp(tab, slot.traced_func()))
        vjp_entry = table[vkey] = _compile(fn, settings)
    dense_entry = None
    if full_tab is not None and full_tab.dense is not None:
        dkey = prefix + ("replay_vjp_dense", full_tab) + rest[1:]
        dense_entry = table.get(dkey)
        if dense_entry is None:
            fn = _fresh_code(make_replay_vjp(full_tab, slot.traced_func(), len(full_tab.dense)))
            dense_entry = table[dkey] = _compile(fn, settings)
    return CompiledReplay(entry, y.dtype, y.device, tab.stages, vjp_entry, dense_entry,
                          full_tab if dense_entry is not None else None)


#: torch.compile modes that capture CUDA graphs (torch/_inductor/__init__.py, list_mode_options).
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def fixed_step_settings(settings: Dict[str, Any], device: torch.device, grad: bool) -> Dict[str, Any]:
    """torch.compile keywords of the fixed-step path: on CUDA, without a graph to build
    (no_grad: a plain solve, every adjoint's forward pass), ``mode="reduce-overhead"``
    unless the user chose a mode, so each step is one CUDA graph replay (one launch
    instead of one per kernel). The step grid is known before the loop and a step reads
    no host value, so nothing in the loop waits on the device. With grad enabled each
    call's saved activations would pin a new graph recording per step, so the default
    mode stays."""
    if device.type == "cuda" and not grad and "mode" not in settings:
        return {**settings, "mode": "reduce-overhead"}
    return settings


def make_fixed_step(tab: ButcherTableau, func: Callable) -> Callable:
    """``step(t, h, t_next, y, k0) -> (y_next, ks, f(t_next, y_next))``: one step of a
    fixed-step table as one traceable function of 0-d float64 tensors. The next step's
    first stage is evaluated here, so a step needs no host value at all: the grid is
    known in advance, and the loop never synchronises."""
    c, a, b = tab.c, tab.a, tab.b

    def step(t, h, t_next, y, k0):
        y_next, ks = _rk_step(func, c, a, b, t, h, y, k0)
        return y_next, ks, func(t_next.to(y.dtype), y_next)

    return step


def make_fixed_pair(step: Callable) -> Callable:
    """Two consecutive steps of a :func:`make_fixed_step` as one traceable function:
    ``pair(t, h, t_mid, h_2, t_next, y, k0) -> (y_mid, ks_1, k_mid, y_next, ks_2, k_next)``,
    each step's own outputs. The grid is known, so nothing is masked and no step is wasted;
    with grad it halves the compiled calls, each roughly 100-150 us of AOT autograd's wrappers (see
    :func:`make_pair`)."""

    def pair(t, h, t_mid, h_2, t_next, y, k0):
        y_mid, ks_1, k_mid = step(t, h, t_mid, y, k0)
        return (y_mid, ks_1, k_mid) + step(t_mid, h_2, t_next, y_mid, k_mid)

    return pair


def integrate_fixed_compiled(rhs: CountingRHS, tab: ButcherTableau, t_save: Sequence[Scalar], y0: torch.Tensor,
                             f0: torch.Tensor, opts: SolverOptions, counters: Counters,
                             record: Record = None) -> Optional[List[torch.Tensor]]:
    """``integrate.integrate_fixed`` for a Runge-Kutta table on the compiled step: the grid
    (the save times, equal steps of ``step_size``, or the points ``grid_constructor``
    returns) is one float64 device tensor, and save times inside a step come from the same
    cubic Hermite interpolant, eagerly."""
    ts = [as_float(x) for x in t_save]
    n = fixed_grid(ts, opts.step_size)
    if opts.grid_constructor is not None:  # (this loop used to ignore it and step on t alone)
        grid_f = [as_float(x) for x in _constructed_grid(opts.grid_constructor, rhs, y0, t_save, ts)]
    elif n is None:
        grid_f = list(ts)
    else:
        grid_f = [ts[0] + (ts[-1] - ts[0]) * (j / n) for j in range(n)] + [ts[-1]]
    if len(grid_f) - 1 > opts.max_num_steps:
        raise MaxStepsExceededError(
            f"the fixed-step grid has {len(grid_f) - 1} steps, more than max_num_steps={opts.max_num_steps}: "
            "raise options['max_num_steps'], the step size, or pass fewer save times."
        )
    settings = fixed_step_settings(compile_settings(opts.compile, y0.device), y0.device, torch.is_grad_enabled())
    graphed = settings.get("mode") in CUDA_GRAPH_MODES
    slot = _cache_slot(rhs.func)

    def compiled_fixed(steps_per_call: int) -> CompiledStep:
        key = slot.prefix + ("fixed", tab, slot.inner, tuple(y0.shape), y0.dtype, y0.device, torch.is_grad_enabled(),
                             settings_key(settings), steps_per_call)
        entry = slot.table.get(key)
        if entry is None:
            fn = make_fixed_step(tab, slot.traced_func())
            entry = slot.table[key] = _compile(_fresh_code(make_fixed_pair(fn) if steps_per_call == 2 else fn), settings)
        return entry

    entry = compiled_fixed(1)
    if entry.broken is not None:
        _warn_fallback(entry.broken)
        return None
    # With grad (DirectAD) two steps per call, as the adaptive loop's pairs; the single step
    # takes an odd last one (compiled then, on first use).
    pair = compiled_fixed(2) if pairs_wanted(opts, f0) and not graphed else None
    if pair is not None and pair.broken is not None:
        pair = None
    grid = torch.tensor(grid_f, dtype=torch.float64, device=y0.device)
    times, steps = grid.unbind(0), (grid[1:] - grid[:-1]).unbind(0)
    direction = 1.0 if ts[-1] > ts[0] else -1.0
    ys: List[Optional[torch.Tensor]] = [y0] + [None] * (len(ts) - 1)
    y, k0, i = _first_state(y0, f0), f0, 1
    n_steps, j = len(grid_f) - 1, 0
    while j < n_steps:
        if graphed:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs were copied
        paired = pair is not None and j + 2 <= n_steps
        if paired:
            out = _call(pair, times[j], steps[j], times[j + 1], steps[j + 1], times[j + 2], y, k0)
        else:
            out = _call(entry, times[j], steps[j], times[j + 1], y, k0)
        if out is None:  # go on eagerly from grid point j (see integrate_compiled)
            rest = integrate_fixed(rhs, tab, [grid_f[j]] + ts[i:], y, k0, _resumed(opts, None, j), counters,
                                   _shifted(record, i - 1))
            return ys[:i] + rest[1:]
        for y_next, ks, k_next in (out[:3], out[3:]) if paired else (out,):
            if graphed:
                # A CUDA graph replays into the same output buffers: keep copies of what
                # outlives this step (the next call's inputs, and the record's stages).
                y_next, ks, k_next = y_next.clone(), [k.clone() for k in ks] if record is not None else ks, k_next.clone()
            rhs.nfe += tab.stages
            h_f = grid_f[j + 1] - grid_f[j]
            saves, i = _saves_in_step(ts, ts, i, grid_f[j], h_f, grid_f[j + 1], direction, True)
            if saves:
                _serve(saves, ys, None, h_f, y, y_next, ks, lambda k_next=k_next: k_next)
            if record is not None:
                record(AcceptedStep(grid_f[j], h_f, y, saves, None, ks=ks))
            counters.n_steps += 1
            y, k0, j = y_next, k_next, j + 1
    return ys  # type: ignore[return-value]
