"""Translate an ``ODEProblem`` into what the Julia package ``PySciMLGrad`` is handed.

Pure Python, no Julia: every decision about *which* SciML objects to build is made
here, so all of it is unit-tested on machines without Julia. The Julia side receives
three small Julia expressions (algorithm, sensealg, solve keywords) and rebuilds them
with a whitelisting evaluator (``PySciMLGrad.build``), plus the arrays.

Mapping summary
---------------
methods     our names -> OrdinaryDiffEq: euler->Euler, midpoint->Midpoint, heun->Heun,
            ralston->Ralston, rk4->RK4 (fixed steps, ``adaptive=false``), heun_euler->Heun,
            bosh3->BS3, dopri5->DP5, tsit5->Tsit5 (adaptive); SciML names pass through
            (``Tsit5, Vern7, Rodas5P, KenCarp4, FBDF, ...``, see ``METHODS``).
sensealgs   BacksolveAdjoint -> BacksolveAdjoint(checkpointing=true),
            InterpolatingAdjoint(c) -> InterpolatingAdjoint(checkpointing=c),
            QuadratureAdjoint -> QuadratureAdjoint(abstol, reltol),
            GaussAdjoint(c) -> GaussAdjoint(checkpointing=c),
            DirectAD, ReverseDiffAdjoint -> ReverseDiffAdjoint() (JuliaRHS, CPU),
            ForwardDiffSensitivity -> ForwardDiffSensitivity(chunk_size) (JuliaRHS),
            CheckpointAdjoint -> UnsupportedSensitivityError (no SciML equivalent).
options     step_size -> dt + adaptive=false, first_step -> dt, min_step -> dtmin,
            max_step -> dtmax, max_num_steps -> maxiters, autojacvec -> the adjoint's
            vector-Jacobian product; safety/ifactor/dfactor are refused (controller
            objects in OrdinaryDiffEq v7, see ``CONTROLLER_OPTIONS``).
time        decreasing ``t`` is solved as the increasing problem in s = -t,
            du/ds = -f(u, -s) (``Plan.time_reversed``): SciMLSensitivity's adjoints
            return ``sort(saveat)``, which for a decreasing span is the reversed order.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Type

from ...errors import (
    InvalidProblemError,
    InvalidStateError,
    MaxStepsExceededError,
    MissingStepSizeError,
    NonFiniteStateError,
    SolverError,
    StepSizeUnderflowError,
    UnknownMethodError,
    UnknownOptionError,
    UnsupportedSensitivityError,
)
from ...sensealg import (
    BacksolveAdjoint,
    CheckpointAdjoint,
    DirectAD,
    ForwardDiffSensitivity,
    GaussAdjoint,
    InterpolatingAdjoint,
    QuadratureAdjoint,
    ReverseDiffAdjoint,
    SensitivityAlgorithm,
)

# ---------------------------------------------------------------------------------------
# Julia literals and constructor calls
# ---------------------------------------------------------------------------------------


def julia_literal(value: Any) -> str:
    """Render a Python scalar as Julia source: bool -> true/false, int -> Int literal,
    float -> Float64 literal (``repr`` round-trips exactly: 1e-07 is valid Julia), None ->
    nothing. Anything else (strings included) is refused: the Julia side evaluates only
    constructor calls and literals, never text that came from the user."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidProblemError(f"cannot pass the non-finite number {value!r} to Julia")
        text = repr(value)
        # Python writes 1e-07, Julia accepts it; make integral floats unmistakably Float64.
        return text if any(c in text for c in ".eE") else text + ".0"
    if isinstance(value, JuliaCall):
        return value.render()
    raise TypeError(f"no Julia literal for {type(value).__name__} {value!r}")


@dataclass(frozen=True)
class JuliaCall:
    """A Julia constructor call ``name(args...; key = value, ...)`` as data.

    Kept as data (not text) so tests can inspect it and so the Julia side can check
    every name against its whitelist before evaluating anything.
    """

    name: str
    kwargs: Tuple[Tuple[str, Any], ...] = ()
    args: Tuple[Any, ...] = ()

    @staticmethod
    def of(name: str, *args: Any, **kwargs: Any) -> "JuliaCall":
        return JuliaCall(name, tuple(kwargs.items()), tuple(args))

    def kw(self) -> Dict[str, Any]:
        return dict(self.kwargs)

    def render(self) -> str:
        pos = ", ".join(julia_literal(a) for a in self.args)
        kws = ", ".join(f"{k} = {julia_literal(v)}" for k, v in self.kwargs)
        if kws:
            return f"{self.name}({pos}; {kws})" if pos else f"{self.name}(; {kws})"
        return f"{self.name}({pos})"


def render_namedtuple(items: Mapping[str, Any]) -> str:
    """``{"reltol": 1e-7}`` -> ``(reltol = 1.0e-7,)``: solve keywords as a NamedTuple literal."""
    if not items:
        return "NamedTuple()"
    body = ", ".join(f"{k} = {julia_literal(v)}" for k, v in items.items())
    return f"({body},)"


# ---------------------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodSpec:
    """One solver offered by the Julia backend.

    ``julia``: OrdinaryDiffEq constructor; ``fixed``: always integrated with fixed
    steps (``adaptive=false``); ``stiff``: implicit/Rosenbrock, builds Jacobians of f
    (a Python f gets finite-difference Jacobians, ``autodiff = AutoFiniteDiff()``, since
    dual numbers cannot pass through torch); ``package``: where it lives.
    """

    julia: str
    fixed: bool = False
    stiff: bool = False
    package: str = ""


_LOW = "OrdinaryDiffEqLowOrderRK"
_ROS = "OrdinaryDiffEqRosenbrock"
_SDIRK = "OrdinaryDiffEqSDIRK"
_BDF = "OrdinaryDiffEqBDF"

#: Our lowercase names, with the torch engine's meaning (fixed step or adaptive).
OUR_METHODS: Dict[str, MethodSpec] = {
    "euler": MethodSpec("Euler", fixed=True, package=_LOW),
    "midpoint": MethodSpec("Midpoint", fixed=True, package=_LOW),
    "heun": MethodSpec("Heun", fixed=True, package=_LOW),
    "ralston": MethodSpec("Ralston", fixed=True, package=_LOW),
    "rk4": MethodSpec("RK4", fixed=True, package=_LOW),
    "heun_euler": MethodSpec("Heun", package=_LOW),  # Heun with its embedded Euler estimate
    "bosh3": MethodSpec("BS3", package=_LOW),
    "dopri5": MethodSpec("DP5", package=_LOW),
    "tsit5": MethodSpec("Tsit5", package="OrdinaryDiffEqTsit5"),
    # The torch engine's Rosenbrock tables are read from these very OrdinaryDiffEq methods.
    "rodas4": MethodSpec("Rodas4", stiff=True, package=_ROS),
    "rodas5p": MethodSpec("Rodas5P", stiff=True, package=_ROS),
    "ros3p": MethodSpec("ROS3P", stiff=True, package=_ROS),
    # The torch engine's ESDIRK tables too (its kencarp4 is fully implicit, as SciML's KenCarp4
    # is on a plain, unsplit ODEProblem).
    "kvaerno5": MethodSpec("Kvaerno5", stiff=True, package=_SDIRK),
    "kencarp4": MethodSpec("KenCarp4", stiff=True, package=_SDIRK),
}

#: SciML names, as the user writes them in Julia. Adaptive unless noted (Euler has no
#: error estimate); any of them becomes fixed-step with ``options={"step_size": h}``.
SCIML_METHODS: Dict[str, MethodSpec] = {
    "Euler": MethodSpec("Euler", fixed=True, package=_LOW),
    "Midpoint": MethodSpec("Midpoint", package=_LOW),
    "Heun": MethodSpec("Heun", package=_LOW),
    "Ralston": MethodSpec("Ralston", package=_LOW),
    "RK4": MethodSpec("RK4", package=_LOW),
    "BS3": MethodSpec("BS3", package=_LOW),
    "DP5": MethodSpec("DP5", package=_LOW),
    "BS5": MethodSpec("BS5", package=_LOW),
    "OwrenZen3": MethodSpec("OwrenZen3", package=_LOW),
    "OwrenZen4": MethodSpec("OwrenZen4", package=_LOW),
    "OwrenZen5": MethodSpec("OwrenZen5", package=_LOW),
    "Tsit5": MethodSpec("Tsit5", package="OrdinaryDiffEqTsit5"),
    "Vern6": MethodSpec("Vern6", package="OrdinaryDiffEqVerner"),
    "Vern7": MethodSpec("Vern7", package="OrdinaryDiffEqVerner"),
    "Vern8": MethodSpec("Vern8", package="OrdinaryDiffEqVerner"),
    "Vern9": MethodSpec("Vern9", package="OrdinaryDiffEqVerner"),
    "Rosenbrock23": MethodSpec("Rosenbrock23", stiff=True, package=_ROS),
    "Rodas4": MethodSpec("Rodas4", stiff=True, package=_ROS),
    "Rodas4P": MethodSpec("Rodas4P", stiff=True, package=_ROS),
    "Rodas5": MethodSpec("Rodas5", stiff=True, package=_ROS),
    "Rodas5P": MethodSpec("Rodas5P", stiff=True, package=_ROS),
    "ROS3P": MethodSpec("ROS3P", stiff=True, package=_ROS),
    "ImplicitEuler": MethodSpec("ImplicitEuler", stiff=True, package=_SDIRK),
    "Trapezoid": MethodSpec("Trapezoid", stiff=True, package=_SDIRK),
    "TRBDF2": MethodSpec("TRBDF2", stiff=True, package=_SDIRK),
    "KenCarp4": MethodSpec("KenCarp4", stiff=True, package=_SDIRK),
    "Kvaerno5": MethodSpec("Kvaerno5", stiff=True, package=_SDIRK),
    "FBDF": MethodSpec("FBDF", stiff=True, package=_BDF),
    "QNDF": MethodSpec("QNDF", stiff=True, package=_BDF),
}

METHODS: Dict[str, MethodSpec] = {**OUR_METHODS, **SCIML_METHODS}

#: Methods of the torch engine that have no SciML counterpart for first-order ODEs.
TORCH_ONLY_METHODS = {
    "leapfrog": "SciML's leapfrog/Verlet methods are for second-order (dynamical) problems; "
    "use backend='torch' for the leapfrog of Xu, Chen, Li",
    # Tables added for torchdiffeq parity: no SciML method with the same coefficients was
    # checked against them (SciML's DP8 is Hairer's DOP853, a different 8th-order pair).
    **{
        name: "it is one of the tables added for torchdiffeq parity and has no SciML counterpart "
        "with the same coefficients; use backend='torch'"
        for name in ("heun3", "rk38", "fehlberg2", "dopri8")
    },
    **{
        name: "it is torchdiffeq's variable-order fixed-grid Adams method (RK4 start, order rising to 11), "
        "which no SciML method reproduces step for step; use backend='torch'"
        for name in ("explicit_adams", "implicit_adams", "fixed_adams")
    },
    # The torch engine's fixed-step implicit methods (torchdiffeq master's names). SciML's
    # methods of similar names step adaptively with their own Newton and error control, so
    # the same name would not mean the same discrete map; name the SciML method instead.
    **{
        name: "it is one of the torch engine's fixed-step implicit Runge-Kutta methods; on the Julia engine "
        "pass a SciML stiff solver by its own name (e.g. 'TRBDF2', 'KenCarp4', 'Rodas5P'), or use backend='torch'"
        for name in ("implicit_euler", "implicit_midpoint", "trapezoid", "radauIIA3", "radauIIA5", "gl4", "gl6",
                     "sdirk2", "trbdf2")
    },
}


def lookup_method(name: str) -> MethodSpec:
    if not isinstance(name, str):
        raise UnknownMethodError(f"method must be a string such as 'tsit5' or 'Rodas5P', got {name!r}")
    if name in METHODS:
        return METHODS[name]
    if name in TORCH_ONLY_METHODS:
        raise UnknownMethodError(f"method {name!r} is not offered by the Julia engine: {TORCH_ONLY_METHODS[name]}")
    close = difflib.get_close_matches(name, list(METHODS), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownMethodError(
        f"unknown method {name!r} for the Julia engine.{hint} Our names: {sorted(OUR_METHODS)}; "
        f"SciML names: {sorted(SCIML_METHODS)}"
    )


def algorithm_call(spec: MethodSpec, python_rhs: bool) -> JuliaCall:
    """The OrdinaryDiffEq constructor. For a Python right-hand side, stiff methods get
    finite-difference Jacobians: their default ForwardDiff Jacobian would push dual
    numbers into f, which a torch function cannot take (ADTypes' ``AutoFiniteDiff``,
    the keyword form accepted by OrdinaryDiffEq v6.9x and required by v7)."""
    if spec.stiff and python_rhs:
        return JuliaCall.of(spec.julia, autodiff=JuliaCall.of("AutoFiniteDiff"))
    return JuliaCall.of(spec.julia)


# ---------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------

#: Every option the Julia engine understands (the torch engine's names, same meaning,
#: plus ``autojacvec``).
VALID_OPTIONS = (
    "autojacvec",
    "dfactor",
    "first_step",
    "ifactor",
    "max_num_steps",
    "max_step",
    "min_step",
    "return_stats",
    "safety",
    "step_size",
)

#: Step-size controller knobs of the torch engine. OrdinaryDiffEq v7 no longer takes
#: them as ``solve`` keywords (``gamma``/``qmax``/``qmin`` raise ``CommonKwargError``);
#: they live on the controller object, ``PIController(alg; gamma, qmin, qmax)``
#: (OrdinaryDiffEq NEWS.md "Controller refactor"; UPSTREAM.md). Replacing an
#: algorithm's default controller (not PI for every method) would change more than the
#: knob asked for, so the Julia engine refuses them rather than guess.
CONTROLLER_OPTIONS = ("safety", "ifactor", "dfactor")

_CONTROLLER_REFUSAL = (
    "{names} cannot be passed to the Julia engine: OrdinaryDiffEq v7 sets the safety factor and "
    "the step growth/shrink limits on each algorithm's step-size controller object, not as solve "
    "keywords, and this engine keeps SciML's default controller. Drop the option (SciML's defaults "
    "apply), or use backend='torch', where safety/ifactor/dfactor are supported"
)

#: Options of the torch engine with no Julia translation (yet), and why.
TORCH_ONLY_OPTIONS = {
    "norm": "a Python error norm cannot be called from SciML's step controller without a "
    "Julia callback per step (SciML's internalnorm); use backend='torch'",
    **{
        name: "it configures the torch engine's torchdiffeq-style Adams methods, which the Julia "
        "engine does not offer; use backend='torch'"
        for name in ("max_order", "max_iters")
    },
    "compile": "it compiles the torch engine's Runge-Kutta step with torch.compile; the Julia engine "
    "compiles its own solver (Julia is JIT-compiled), so drop the option or use backend='torch'",
    # Added for torchdiffeq parity in the torch engine; SciML has counterparts for some
    # (tstops, d_discontinuities) that this translation layer does not map yet.
    # SciML's counterpart is ODEFunction(f; jac=...) (a Julia function), and its Newton solvers
    # pick their own Jacobian (autodiff / finite differences); no Python jac is sent to Julia.
    **{
        name: "it sets how the torch engine's implicit methods get df/dy; the Julia engine's stiff "
        "solvers compute their own Jacobian, so drop the option or use backend='torch'"
        for name in ("jac", "jacobian")
    },
    "jump_t": "not translated yet (SciML's d_discontinuities would be the counterpart); use backend='torch'",
    "step_t": "not translated yet (SciML's tstops would be the counterpart); use backend='torch'",
    "steps_to_saves": "not translated yet (SciML's tstops = saveat would be the counterpart); use backend='torch'",
    "accept_min_step": "SciML has no 'accept any step at dtmin' mode; use backend='torch'",
    "grid_constructor": "a Python grid function is not translated; pass the grid as t, or use backend='torch'",
    "interp": "SciML serves save times from its own dense output; use backend='torch' for linear interpolation",
    "perturb": "the one-ulp stage shift is a torch-engine option; use backend='torch'",
    "solver": "options['solver'] belongs to method='scipy_solver' of the torch engine; use backend='torch'",
    "progress": "not translated yet (SciML's solve keyword progress=true, DiffEqDocs.jl "
    "docs/src/features/progress_bar.md, would be the counterpart); use backend='torch' for a progress meter",
}

#: ``options["autojacvec"]``: how the adjoint computes vector-Jacobian products of f.
AUTOJACVEC = {
    "auto": None,  # SciMLSensitivity's automatic choice (Julia f) / ZygoteVJP (Python f)
    "zygote": JuliaCall.of("ZygoteVJP"),
    "enzyme": JuliaCall.of("EnzymeVJP"),
    "reversediff": JuliaCall.of("ReverseDiffVJP"),
    "reversediff_compiled": JuliaCall.of("ReverseDiffVJP", True),
    "tracker": JuliaCall.of("TrackerVJP"),
    "forwarddiff": False,  # full Jacobian with ForwardDiff (autodiff=true)
    "finitediff": False,  # full Jacobian with FiniteDiff (autodiff=false)
}
#: Python f: only VJPs that treat f as a black box with an rrule, or finite differences.
PYTHON_RHS_AUTOJACVEC = ("auto", "zygote", "finitediff")


@dataclass(frozen=True)
class SolveOptions:
    """Keywords of ``solve``: tolerances and step control. ``grid``: step exactly from
    save time to save time (fixed-step method without ``step_size``); Julia then adds
    ``tstops = t`` with one step spanning the interval, clipped at every save time."""

    kwargs: Dict[str, Any]
    grid: bool
    autojacvec: str

    def render(self) -> str:
        return render_namedtuple(self.kwargs)


def _positive(options: Mapping[str, Any], name: str) -> Optional[float]:
    value = options.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise InvalidProblemError(f"options['{name}'] must be a positive finite number, got {value!r}")
    return float(value)


def translate_options(
    options: Mapping[str, Any],
    method_name: str,
    spec: MethodSpec,
    t: Sequence[float],
    rtol: float,
    atol: float,
) -> SolveOptions:
    """Map our ``options`` to ``solve`` keywords (validated, same names as the torch engine).

    Fixed steps: ``step_size=h`` becomes ``n = ceil(span / h)`` equal steps of
    ``dt = span / n`` (the torch engine's rounding, so both engines step on the same
    grid); without it the save times ``t`` are the grid.
    """
    torch_only = sorted(set(options) & set(TORCH_ONLY_OPTIONS))
    if torch_only:
        name = torch_only[0]
        raise UnknownOptionError(f"option {name!r} is not offered by the Julia engine: {TORCH_ONLY_OPTIONS[name]}")
    unknown = sorted(set(options) - set(VALID_OPTIONS))
    if unknown:
        raise UnknownOptionError(
            f"unknown option(s) {unknown} for the Julia engine; valid options are {list(VALID_OPTIONS)}"
        )
    kwargs: Dict[str, Any] = {"reltol": float(rtol), "abstol": float(atol)}
    step_size = _positive(options, "step_size")
    first_step = _positive(options, "first_step")
    span = abs(float(t[-1]) - float(t[0]))
    ours = method_name in OUR_METHODS
    grid = False
    if step_size is not None and first_step is not None:
        raise InvalidProblemError("give options['step_size'] (fixed steps) or options['first_step'] (adaptive), not both")
    if ours and not spec.fixed and step_size is not None:
        raise MissingStepSizeError(
            f"options['step_size'] is for fixed-step methods, but {method_name!r} is adaptive; drop "
            "step_size (control accuracy with rtol/atol), pick a fixed-step method, or use a SciML name "
            "such as 'DP5' to integrate an adaptive method with fixed steps"
        )
    if step_size is not None:
        n = max(1, math.ceil(span / step_size - 1e-9))
        kwargs["dt"] = span / n
        kwargs["adaptive"] = False
    elif spec.fixed:
        if len(t) == 2:
            raise MissingStepSizeError(
                f"{method_name!r} is a fixed-step method and t holds only its two endpoints, so t cannot "
                "serve as the grid: pass options={'step_size': h}, or give t the grid points"
            )
        kwargs["dt"] = span
        kwargs["adaptive"] = False
        grid = True
    elif first_step is not None:
        kwargs["dt"] = first_step
    min_step = options.get("min_step")
    if min_step is not None:
        if isinstance(min_step, bool) or not isinstance(min_step, (int, float)) or min_step < 0:
            raise InvalidProblemError(f"options['min_step'] must be >= 0, got {min_step!r}")
        if min_step > 0:
            kwargs["dtmin"] = float(min_step)
    max_step = options.get("max_step")
    if max_step is not None and not (isinstance(max_step, (int, float)) and max_step == math.inf):
        kwargs["dtmax"] = _positive(options, "max_step")
    max_num_steps = options.get("max_num_steps", 100_000)
    if isinstance(max_num_steps, bool) or not isinstance(max_num_steps, int) or max_num_steps < 1:
        raise InvalidProblemError(f"options['max_num_steps'] must be a positive integer, got {max_num_steps!r}")
    kwargs["maxiters"] = max_num_steps
    controller = sorted(set(options) & set(CONTROLLER_OPTIONS))
    if controller:
        raise UnknownOptionError(_CONTROLLER_REFUSAL.format(names=", ".join(f"options['{n}']" for n in controller)))
    autojacvec = options.get("autojacvec", "auto")
    if autojacvec not in AUTOJACVEC:
        raise InvalidProblemError(f"options['autojacvec'] must be one of {list(AUTOJACVEC)}, got {autojacvec!r}")
    return SolveOptions(kwargs=kwargs, grid=grid, autojacvec=autojacvec)


# ---------------------------------------------------------------------------------------
# Sensitivity algorithms
# ---------------------------------------------------------------------------------------

SUPPORTED_SENSEALGS = (
    "BacksolveAdjoint()",
    "InterpolatingAdjoint(checkpointing=...)",
    "QuadratureAdjoint()",
    "GaussAdjoint(checkpointing=...)",
    "ReverseDiffAdjoint() / DirectAD() (JuliaRHS, CPU)",
    "ForwardDiffSensitivity() (JuliaRHS)",
)

_CHECKPOINT_ADVICE = (
    "CheckpointAdjoint (ACA/ANODE: replay accepted steps, step sizes held constant) has no "
    "SciMLSensitivity counterpart, so the Julia engine does not pretend to offer it. Closest "
    "choices: InterpolatingAdjoint(checkpointing=True) (continuous adjoint, memory bounded by "
    "checkpoints), or with a JuliaRHS ReverseDiffAdjoint() (exact discrete gradient, step-size "
    "control included); or keep CheckpointAdjoint with backend='torch'."
)


def _vjp_kwargs(autojacvec: str, python_rhs: bool, n_params: int = 0) -> Dict[str, Any]:
    """Keywords selecting the adjoint's vector-Jacobian product of f.

    Python f: ``ZygoteVJP`` differentiates ``f(u, p, t)`` with Zygote, which hits the
    ChainRulesCore ``rrule`` of ``PyRHS`` and so calls torch.autograd for v^T df/du,
    v^T df/dp (no dual numbers reach Python); ``finitediff`` builds dense Jacobians by
    finite differences of f instead (cost ~ len(u) + len(p) calls of f per product).
    """
    if python_rhs and autojacvec not in PYTHON_RHS_AUTOJACVEC:
        raise UnsupportedSensitivityError(
            f"options['autojacvec']={autojacvec!r} needs f written in Julia (it traces or pushes dual "
            f"numbers through f); with a Python/torch right-hand side use one of {list(PYTHON_RHS_AUTOJACVEC)}"
        )
    if autojacvec == "finitediff" and python_rhs and n_params > 0:
        # Finite differences perturb the parameter vector p, but a torch f reads its own
        # tensors, not p: every difference quotient in p would be exactly 0, so dL/dtheta = 0.
        raise UnsupportedSensitivityError(
            "options['autojacvec']='finitediff' cannot differentiate the parameters of a Python/torch "
            "right-hand side: finite differences perturb Julia's parameter vector, which a torch f never "
            "reads, so dL/dtheta would come out as zero. Use autojacvec='auto' or 'zygote' (torch.autograd "
            "through the PyRHS rrule), or write f as psg.julia.JuliaRHS(...)"
        )
    if autojacvec == "finitediff":
        return {"autodiff": False, "autojacvec": False}
    if autojacvec == "forwarddiff":
        return {"autodiff": True, "autojacvec": False}
    vjp = AUTOJACVEC[autojacvec]
    if vjp is None:
        return {"autojacvec": JuliaCall.of("ZygoteVJP")} if python_rhs else {}
    return {"autojacvec": vjp}


def _no_separate_adjoint_settings(sensealg: Any, rtol: float, atol: float, method: str) -> None:
    # SciMLSensitivity's solve(...; sensealg) reuses the forward keywords for the adjoint
    # solve; there is no way to give it other tolerances or another method through solve.
    for name, forward in (("adjoint_rtol", rtol), ("adjoint_atol", atol), ("adjoint_method", method)):
        value = getattr(sensealg, name, None)
        if value is not None and value != forward:
            raise UnsupportedSensitivityError(
                f"{type(sensealg).__name__}({name}={value!r}) is not available with backend='julia': "
                f"SciMLSensitivity solves the adjoint with the forward settings ({name[8:]}={forward!r}). "
                f"Drop {name} (or set it equal to the forward value), or use backend='torch'"
            )


def translate_sensealg(
    sensealg: SensitivityAlgorithm,
    *,
    python_rhs: bool,
    device: str,
    autojacvec: str = "auto",
    rtol: float = 1e-7,
    atol: float = 1e-9,
    method: str = "",
    n_params: int = 0,
) -> JuliaCall:
    """The SciMLSensitivity object for our sensealg, or a clear error saying why not."""
    if isinstance(sensealg, CheckpointAdjoint):
        raise UnsupportedSensitivityError(_CHECKPOINT_ADVICE)
    if isinstance(sensealg, (DirectAD, ReverseDiffAdjoint, ForwardDiffSensitivity)):
        name = type(sensealg).__name__
        if python_rhs:
            raise UnsupportedSensitivityError(
                f"{name} differentiates through every operation of the solver, which needs f written in "
                "Julia (ReverseDiff/ForwardDiff cannot look inside a Python/torch function). Use "
                "InterpolatingAdjoint(checkpointing=True), GaussAdjoint(), QuadratureAdjoint() or "
                "BacksolveAdjoint() with a torch right-hand side, or write f as psg.julia.JuliaRHS(...)"
            )
        if isinstance(sensealg, ForwardDiffSensitivity):
            if not isinstance(sensealg.chunk_size, int) or isinstance(sensealg.chunk_size, bool) or sensealg.chunk_size < 0:
                raise InvalidProblemError(f"ForwardDiffSensitivity(chunk_size=...) must be an int >= 0, got {sensealg.chunk_size!r}")
            return JuliaCall.of("ForwardDiffSensitivity", chunk_size=sensealg.chunk_size)
        if device != "cpu":
            raise UnsupportedSensitivityError(
                f"{name} maps to SciMLSensitivity's ReverseDiffAdjoint, which needs CPU arrays; on "
                f"{device} use InterpolatingAdjoint/GaussAdjoint/BacksolveAdjoint or ForwardDiffSensitivity()"
            )
        return JuliaCall.of("ReverseDiffAdjoint")
    if getattr(sensealg, "seminorm", False):
        raise UnsupportedSensitivityError(
            f"{type(sensealg).__name__}(seminorm=True) is not translated for backend='julia' (no SciML "
            "adjoint keyword for it was checked against SciMLSensitivity's source); use backend='torch'"
        )
    vjp = _vjp_kwargs(autojacvec, python_rhs, n_params)
    if isinstance(sensealg, BacksolveAdjoint):
        _no_separate_adjoint_settings(sensealg, rtol, atol, method)
        # checkpointing=true (SciML's default): re-anchor the reverse state at the saved
        # forward states, which bounds the drift of the backward reconstruction.
        return JuliaCall.of("BacksolveAdjoint", **vjp, checkpointing=True)
    if isinstance(sensealg, InterpolatingAdjoint):
        _no_separate_adjoint_settings(sensealg, rtol, atol, method)
        return JuliaCall.of("InterpolatingAdjoint", **vjp, checkpointing=bool(sensealg.checkpointing))
    if isinstance(sensealg, GaussAdjoint):
        return JuliaCall.of("GaussAdjoint", **vjp, checkpointing=bool(sensealg.checkpointing))
    if isinstance(sensealg, QuadratureAdjoint):
        # QuadratureAdjoint's own tolerances govern the quadrature of a^T df/dtheta; they
        # default to the forward ones (SciML's 1e-6/1e-3 would be far looser than ours).
        qrtol = sensealg.adjoint_rtol if sensealg.adjoint_rtol is not None else rtol
        qatol = sensealg.adjoint_atol if sensealg.adjoint_atol is not None else atol
        return JuliaCall.of("QuadratureAdjoint", **vjp, abstol=float(qatol), reltol=float(qrtol))
    raise UnsupportedSensitivityError(
        f"{type(sensealg).__name__} is not supported by backend='julia'; supported: {', '.join(SUPPORTED_SENSEALGS)}"
    )


# ---------------------------------------------------------------------------------------
# States, devices, dtypes, errors
# ---------------------------------------------------------------------------------------

DTYPES = ("float32", "float64")


def julia_state_shape(shape: Sequence[int]) -> Tuple[int, ...]:
    """Shape Julia sees for a C-contiguous state of ``shape``: the axes reversed (same
    bytes, column-major). A 0-d state travels as a 1-vector (ODE states are arrays)."""
    shape = tuple(int(s) for s in shape)
    return tuple(reversed(shape)) if shape else (1,)


def check_dtype_device(dtype_name: str, device_type: str) -> None:
    if dtype_name not in DTYPES:
        raise InvalidStateError(
            f"y0 has dtype {dtype_name}; the Julia engine solves in float32 or float64: use y0.double() or y0.float()"
        )
    if device_type not in ("cpu", "cuda"):
        raise InvalidStateError(
            f"y0 is on a {device_type!r} device; the Julia engine takes CPU tensors, or CUDA tensors "
            "(through DLPack and CUDA.jl): move y0 and the parameters with .cpu() or .cuda()"
        )


_RETCODE_ERRORS: Dict[str, Type[SolverError]] = {
    "MaxIters": MaxStepsExceededError,
    "DtLessThanMin": StepSizeUnderflowError,
    "Unstable": NonFiniteStateError,
    "DtNaN": NonFiniteStateError,
}

_RETCODE_ADVICE = {
    "MaxIters": "raise options['max_num_steps'], loosen rtol/atol, or use a stiff method such as 'Rodas5P'",
    "DtLessThanMin": "lower options['min_step'], or the problem may be stiff: try 'Rodas5P' or 'KenCarp4'",
    "Unstable": "the state became NaN/inf: check func and its parameters, or tighten rtol/atol",
    "DtNaN": "the step size became NaN: the state or f produced NaN",
}


def error_for_retcode(retcode: str, where: str = "forward solve") -> SolverError:
    """The Python exception for a failed SciML return code (``ReturnCode.T`` as text)."""
    code = retcode.split(".")[-1]
    cls = _RETCODE_ERRORS.get(code, SolverError)
    advice = _RETCODE_ADVICE.get(code, "see the SciML documentation on return codes")
    return cls(f"the Julia {where} stopped with return code {code}: {advice}")


def error_for_julia(kind: str, message: str, where: str = "forward solve") -> Exception:
    """The Python exception for a ``PySciMLGrad.PSGError`` of the given ``kind``."""
    from ...errors import BackendUnavailableError

    if kind == "solver":
        return error_for_retcode(message, where)
    if kind == "unsupported_sensealg":
        return UnsupportedSensitivityError(message)
    if kind == "invalid_rhs":
        return InvalidProblemError(f"JuliaRHS: {message}")
    if kind == "cuda_unavailable":
        return BackendUnavailableError(message)
    if kind == "invalid":
        return InvalidProblemError(message)
    return SolverError(f"Julia reported {kind!r} during the {where}: {message}")


# ---------------------------------------------------------------------------------------
# The whole plan
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Everything the executor needs besides the arrays; all fields are plain data.

    ``algorithm``/``sensealg``/``solve_options`` render to the Julia expressions handed
    to ``PySciMLGrad``; ``sensealg`` is None when no gradient is needed (then the
    sensealg is not even checked, since none will run).
    """

    method: str
    spec: MethodSpec
    algorithm: JuliaCall
    solve_options: SolveOptions
    sensealg: Optional[JuliaCall]
    python_rhs: bool
    device: str
    dtype: str
    state_shape: Tuple[int, ...]
    julia_shape: Tuple[int, ...]
    n_params: int
    save_times: Tuple[float, ...] = field(repr=False, default=())
    time_reversed: bool = False


def julia_save_times(t: Sequence[float]) -> Tuple[float, ...]:
    """The save times Julia integrates over: ``t`` itself when increasing, ``-t`` when
    decreasing.

    For a decreasing ``t`` the problem is handed over in the time s = -t: u(s) solves
    du/ds = -f(u, -s) from s = -t0, an increasing span whose save times ``-t_k`` are
    already sorted. SciMLSensitivity's continuous adjoints (Backsolve, Interpolating,
    Quadrature, Gauss) and ReverseDiffAdjoint return their states at ``sort(saveat)``
    (src/concrete_solve.jl, ``_saveat = saveat isa Array ? sort(saveat) : saveat``), i.e.
    reversed for a decreasing span, while a plain solve returns them in ``saveat`` order;
    the change of variable makes every method see the one case they all agree on. States at s_k = -t_k are the states at t_k, and u0, p are unchanged, so
    dL/du0 and dL/dp are those of the original problem.
    """
    t = tuple(float(x) for x in t)
    return tuple(-x for x in t) if len(t) >= 2 and t[-1] < t[0] else t


class JuliaPerformanceWarning(UserWarning):
    """A combination that works but costs far more than an equivalent one."""


def warn_dense_adjoint_jacobian(spec: MethodSpec, sensealg: JuliaCall, python_rhs: bool, method: str) -> None:
    """Stiff method + Interpolating/Backsolve adjoint + torch f: the implicit adjoint solve
    builds the Jacobian of the augmented adjoint system (state, adjoint and parameter
    quadrature, size ~N+P or 2N+P) by finite differences of f, ~N+P Python calls per
    Jacobian, and factorises it densely. Gauss/Quadrature adjoints integrate only the
    N adjoint states and compute dL/dp by quadrature."""
    if python_rhs and spec.stiff and sensealg.name in ("InterpolatingAdjoint", "BacksolveAdjoint"):
        import warnings

        warnings.warn(
            f"method={method!r} is implicit: with {sensealg.name} and a torch right-hand side the adjoint "
            "solve builds a dense finite-difference Jacobian of size (state + parameters)^2 at every "
            "Jacobian update. GaussAdjoint() or QuadratureAdjoint() keep the implicit adjoint system at the "
            "size of the state",
            JuliaPerformanceWarning,
            stacklevel=3,
        )


def is_julia_rhs(func: Any) -> bool:
    return bool(getattr(func, "is_julia_rhs", False))


def make_plan(problem: Any, need_grad: bool) -> Plan:
    """Translate a validated ``pysciml_grad.problem.ODEProblem`` (duck-typed: only its
    attributes are read) into a :class:`Plan`."""
    y0 = problem.y0
    dtype = str(y0.dtype).replace("torch.", "")
    device = y0.device.type
    check_dtype_device(dtype, device)
    spec = lookup_method(problem.method)
    for name in ("rtol_y", "atol_y"):
        if not isinstance(getattr(problem, name, 0.0), (int, float)):
            # SciML takes vector tolerances, but this translation passes scalars: refuse
            # rather than silently use the tightest component.
            raise InvalidProblemError(
                f"per-component {name[:4]} (a tensor) is supported by backend='torch' only; pass a number "
                "to backend='julia'"
            )
    t = tuple(float(x) for x in problem.t.detach().double().cpu().tolist())
    reversed_t = len(t) >= 2 and t[-1] < t[0]
    save_times = julia_save_times(t)
    opts = translate_options(problem.options, problem.method, spec, save_times, problem.rtol, problem.atol)
    python_rhs = not is_julia_rhs(problem.func)
    n_params = sum(int(p.numel()) for p in problem.params)
    sensealg = None
    if need_grad:
        sensealg = translate_sensealg(
            problem.sensealg,
            python_rhs=python_rhs,
            device=device,
            autojacvec=opts.autojacvec,
            rtol=problem.rtol,
            atol=problem.atol,
            method=problem.method,
            n_params=n_params,
        )
        warn_dense_adjoint_jacobian(spec, sensealg, python_rhs, problem.method)
    return Plan(
        method=problem.method,
        spec=spec,
        algorithm=algorithm_call(spec, python_rhs),
        solve_options=opts,
        sensealg=sensealg,
        python_rhs=python_rhs,
        device=device,
        dtype=dtype,
        state_shape=tuple(y0.shape),
        julia_shape=julia_state_shape(y0.shape),
        n_params=n_params,
        save_times=save_times,
        time_reversed=reversed_t,
    )


__all__ = [
    "JuliaCall",
    "MethodSpec",
    "METHODS",
    "OUR_METHODS",
    "SCIML_METHODS",
    "Plan",
    "SolveOptions",
    "VALID_OPTIONS",
    "TORCH_ONLY_OPTIONS",
    "AUTOJACVEC",
    "algorithm_call",
    "error_for_julia",
    "error_for_retcode",
    "julia_literal",
    "julia_save_times",
    "JuliaPerformanceWarning",
    "CONTROLLER_OPTIONS",
    "julia_state_shape",
    "lookup_method",
    "make_plan",
    "render_namedtuple",
    "translate_options",
    "translate_sensealg",
]
