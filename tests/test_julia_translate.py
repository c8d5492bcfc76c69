"""The Julia backend's translation layer: pure Python, no Julia needed.

Every decision about which SciML objects get built is made in
``pysciml_grad/backends/julia/translate.py``; these tests pin each mapping, each refusal
and its message, and the consistency between the Python tables and the Julia package's
source (whitelist, imports, Project.toml) so the two halves cannot drift apart silently.
"""

import json
import math
import os
import re
import sys

import pytest
import torch

import pysciml_grad as psg
from pysciml_grad import errors
from pysciml_grad.backends.julia import JuliaRHS
from pysciml_grad.backends.julia import translate as tr
from pysciml_grad.problem import make_problem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JL_PKG = os.path.join(ROOT, "julia", "PySciMLGrad")
F64 = torch.float64
T5 = torch.linspace(0.0, 1.0, 5, dtype=F64)


def decay(t, y):
    return -y


def problem(func=decay, y0=None, t=T5, method="tsit5", options=None, sensealg=None, params=None, rtol=1e-7, atol=1e-9):
    y0 = torch.ones(3, 2, dtype=F64) if y0 is None else y0
    return make_problem(
        func, y0, t, method=method, rtol=rtol, atol=atol, options=options, params=params,
        sensealg=sensealg or psg.InterpolatingAdjoint(), backend="julia",
    )


def julia_source(*parts):
    with open(os.path.join(JL_PKG, *parts)) as fh:
        return fh.read()


# --- Julia literals and calls ---------------------------------------------------------


@pytest.mark.parametrize(
    "value, text",
    [(True, "true"), (False, "false"), (None, "nothing"), (3, "3"), (2.0, "2.0"), (0.25, "0.25"), (1e-7, "1e-07"), (1e20, "1e+20")],
)
def test_julia_literal(value, text):
    assert tr.julia_literal(value) == text


def test_julia_literal_round_trips_floats_exactly():
    for x in (1e-7, 1.0 / 3.0, 123456.789e-300, 2.0**-40):
        assert float(tr.julia_literal(x)) == x


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_julia_literal_refuses_non_finite(bad):
    with pytest.raises(errors.InvalidProblemError, match="non-finite"):
        tr.julia_literal(bad)


def test_julia_literal_refuses_strings():
    # Only constructor calls and literals reach Julia; text from users never does.
    with pytest.raises(TypeError):
        tr.julia_literal("rm -rf")


def test_julia_call_render():
    assert tr.JuliaCall.of("Tsit5").render() == "Tsit5()"
    assert tr.JuliaCall.of("ReverseDiffVJP", True).render() == "ReverseDiffVJP(true)"
    call = tr.JuliaCall.of("InterpolatingAdjoint", autojacvec=tr.JuliaCall.of("ZygoteVJP"), checkpointing=True)
    assert call.render() == "InterpolatingAdjoint(; autojacvec = ZygoteVJP(), checkpointing = true)"


def test_render_namedtuple():
    assert tr.render_namedtuple({"reltol": 1e-7, "adaptive": False}) == "(reltol = 1e-07, adaptive = false,)"
    assert tr.render_namedtuple({}) == "NamedTuple()"


# --- methods --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, julia, fixed",
    [
        ("euler", "Euler", True), ("midpoint", "Midpoint", True), ("heun", "Heun", True),
        ("ralston", "Ralston", True), ("rk4", "RK4", True), ("heun_euler", "Heun", False),
        ("bosh3", "BS3", False), ("dopri5", "DP5", False), ("tsit5", "Tsit5", False),
    ],
)
def test_our_method_names(name, julia, fixed):
    spec = tr.lookup_method(name)
    assert (spec.julia, spec.fixed, spec.stiff) == (julia, fixed, False)


def test_every_torch_method_is_mapped_or_explained():
    from pysciml_grad.backends.torch.forward import METHODS as TORCH_METHODS

    for name in TORCH_METHODS:
        assert name in tr.OUR_METHODS or name in tr.TORCH_ONLY_METHODS, name
    for name in tr.OUR_METHODS:
        assert name in TORCH_METHODS, f"{name} is not a torch-engine name"


@pytest.mark.parametrize("name", ["Tsit5", "Vern7", "Vern9", "Rodas5P", "KenCarp4", "FBDF", "DP5", "BS3"])
def test_sciml_names_pass_through(name):
    assert tr.lookup_method(name).julia == name


def test_stiff_flags():
    assert all(tr.SCIML_METHODS[n].stiff for n in ("Rodas5P", "Rosenbrock23", "TRBDF2", "KenCarp4", "FBDF", "QNDF"))
    assert not any(tr.SCIML_METHODS[n].stiff for n in ("Tsit5", "Vern7", "DP5", "BS3"))


def test_unknown_method_suggests_close_names():
    with pytest.raises(errors.UnknownMethodError, match="'Tsit5'"):
        tr.lookup_method("Tsit")
    with pytest.raises(errors.UnknownMethodError, match="Our names"):
        tr.lookup_method("nonsense")


def test_leapfrog_points_to_torch_backend():
    with pytest.raises(errors.UnknownMethodError, match="backend='torch'"):
        tr.lookup_method("leapfrog")


def test_stiff_method_gets_finite_difference_jacobian_only_for_python_rhs():
    spec = tr.lookup_method("Rodas5P")
    assert tr.algorithm_call(spec, python_rhs=True).render() == "Rodas5P(; autodiff = AutoFiniteDiff())"
    assert tr.algorithm_call(spec, python_rhs=False).render() == "Rodas5P()"
    assert tr.algorithm_call(tr.lookup_method("tsit5"), python_rhs=True).render() == "Tsit5()"


# --- consistency with the Julia package ----------------------------------------------


def _julia_constructor_whitelist():
    body = julia_source("src", "build.jl").split("const CONSTRUCTORS")[1].split("])")[0]
    return set(re.findall(r":(\w+)", body))


def _julia_imported_names():
    src = julia_source("src", "PySciMLGrad.jl")
    names = set()
    for block in re.findall(r"^using [\w.]+:(.*?)(?=^using |^export |\Z)", src, flags=re.S | re.M):
        names.update(re.findall(r"\b(\w+)\b", block))
    return names


def _all_translated_constructors():
    calls = []
    for spec in tr.METHODS.values():
        calls += [tr.algorithm_call(spec, True), tr.algorithm_call(spec, False)]
    algs = [psg.BacksolveAdjoint(), psg.InterpolatingAdjoint(checkpointing=True), psg.QuadratureAdjoint(), psg.GaussAdjoint()]
    for alg in algs:
        for ajv in tr.AUTOJACVEC:
            calls.append(tr.translate_sensealg(alg, python_rhs=False, device="cpu", autojacvec=ajv))
    for alg in (psg.ReverseDiffAdjoint(), psg.ForwardDiffSensitivity(), psg.DirectAD()):
        calls.append(tr.translate_sensealg(alg, python_rhs=False, device="cpu"))
    names = set()

    def walk(v):
        if isinstance(v, tr.JuliaCall):
            names.add(v.name)
            for x in v.args:
                walk(x)
            for _, x in v.kwargs:
                walk(x)

    for c in calls:
        walk(c)
    return names


def test_every_translated_constructor_is_whitelisted_and_imported_in_julia():
    names = _all_translated_constructors()
    assert {"Tsit5", "Rodas5P", "GaussAdjoint", "ZygoteVJP", "AutoFiniteDiff", "ReverseDiffAdjoint"} <= names
    whitelist, imported = _julia_constructor_whitelist(), _julia_imported_names()
    assert names <= whitelist, names - whitelist
    assert names <= imported, names - imported


def test_julia_packages_of_methods_are_dependencies():
    with open(os.path.join(JL_PKG, "Project.toml")) as fh:
        project = fh.read()
    for spec in tr.METHODS.values():
        assert re.search(rf"^{spec.package} = ", project, flags=re.M), spec.package


def test_juliapkg_json_agrees_with_project_toml():
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(JL_PKG, "Project.toml"), "rb") as fh:
        project = tomllib.load(fh)
    pkg_dir = os.path.join(ROOT, "pysciml_grad", "backends", "julia")
    with open(os.path.join(pkg_dir, "juliapkg.json")) as fh:
        spec = json.load(fh)
    ours = spec["packages"]["PySciMLGrad"]
    assert ours["uuid"] == project["uuid"] and ours["dev"] is True
    assert os.path.normpath(os.path.join(pkg_dir, ours["path"])) == JL_PKG
    for name, entry in spec["packages"].items():
        if name == "PySciMLGrad":
            continue
        assert project["deps"][name] == entry["uuid"], name
        assert project["compat"][name] == entry["version"], name
    assert spec["julia"] == project["compat"]["julia"]
    assert "PythonCall" not in spec["packages"]  # juliacall pins it exactly; never constrain it twice


def test_juliapkg_accepts_the_spec():
    juliapkg = pytest.importorskip("juliapkg")
    from juliapkg.compat import Compat

    with open(os.path.join(ROOT, "pysciml_grad", "backends", "julia", "juliapkg.json")) as fh:
        spec = json.load(fh)
    for name, entry in spec["packages"].items():
        juliapkg.PkgSpec(name, **entry)  # validates the name, uuid and fields
        if "version" in entry:
            assert Compat.parse(entry["version"])
    assert Compat.parse(spec["julia"])


# --- options --------------------------------------------------------------------------


def opts(options=None, method="tsit5", t=(0.0, 0.5, 1.0), rtol=1e-7, atol=1e-9):
    return tr.translate_options(options or {}, method, tr.lookup_method(method), t, rtol, atol)


def test_default_options():
    o = opts()
    assert o.kwargs == {"reltol": 1e-7, "abstol": 1e-9, "maxiters": 100_000}
    assert not o.grid and o.autojacvec == "auto"
    assert o.render() == "(reltol = 1e-07, abstol = 1e-09, maxiters = 100000,)"


def test_unknown_option_lists_valid_ones():
    with pytest.raises(errors.UnknownOptionError, match="step_size") as info:
        opts({"stepsize": 0.1})
    assert "stepsize" in str(info.value)


def test_torch_options_are_all_understood():
    from pysciml_grad.backends.torch.control import SolverOptions

    assert set(SolverOptions.__dataclass_fields__) <= set(tr.VALID_OPTIONS) | set(tr.TORCH_ONLY_OPTIONS)
    for name in tr.TORCH_ONLY_OPTIONS:
        with pytest.raises(errors.UnknownOptionError, match="backend='torch'"):
            tr.translate_options({name: None}, "tsit5", tr.lookup_method("tsit5"), [0.0, 1.0], 1e-6, 1e-8)


def test_step_size_is_rounded_like_the_torch_engine():
    # span 1, h = 0.3 -> ceil(1/0.3) = 4 equal steps of 0.25
    o = opts({"step_size": 0.3}, method="rk4")
    assert o.kwargs["dt"] == 0.25 and o.kwargs["adaptive"] is False and not o.grid
    from pysciml_grad.backends.torch.integrate import fixed_grid

    assert fixed_grid([0.0, 1.0], 0.3) == 4


def test_fixed_method_without_step_size_steps_on_the_save_times():
    o = opts(method="euler", t=(0.0, 0.1, 0.3, 1.0))
    assert o.grid and o.kwargs["adaptive"] is False and o.kwargs["dt"] == 1.0


def test_fixed_method_with_two_save_times_needs_step_size():
    with pytest.raises(errors.MissingStepSizeError, match="step_size"):
        opts(method="rk4", t=(0.0, 1.0))


def test_step_size_refused_for_our_adaptive_names_but_allowed_for_sciml_names():
    with pytest.raises(errors.MissingStepSizeError, match="adaptive"):
        opts({"step_size": 0.1}, method="dopri5")
    o = opts({"step_size": 0.1}, method="DP5")
    assert o.kwargs["adaptive"] is False and math.isclose(o.kwargs["dt"], 0.1)


def test_step_control_options():
    o = opts({"first_step": 1e-3, "min_step": 1e-9, "max_step": 0.1, "max_num_steps": 50})
    k = o.kwargs
    assert (k["dt"], k["dtmin"], k["dtmax"], k["maxiters"]) == (1e-3, 1e-9, 0.1, 50)
    assert "adaptive" not in k


@pytest.mark.parametrize("name", ["safety", "ifactor", "dfactor"])
def test_controller_options_are_refused_not_passed_as_removed_solve_keywords(name):
    # Issue 9 bug 4: OrdinaryDiffEq v7 rejects gamma/qmax/qmin as solve keywords
    # (CommonKwargError); they live on the controller object (UPSTREAM.md). Refused at
    # translation time, naming the option and the way out, never rendered for Julia.
    with pytest.raises(errors.UnknownOptionError, match=rf"options\['{name}'\].*controller.*backend='torch'"):
        opts({name: 0.9 if name == "safety" else (5.0 if name == "ifactor" else 0.2)})


def test_no_translation_renders_a_controller_keyword():
    # Whatever the options, the solve NamedTuple never holds a v7-removed keyword.
    for options in ({}, {"first_step": 1e-3}, {"max_step": 0.5, "min_step": 1e-8}, {"step_size": 0.1}):
        method = "rk4" if "step_size" in options else "tsit5"
        text = opts(options, method=method).render()
        assert not re.search(r"\b(gamma|qmin|qmax)\b", text), text


def test_default_min_and_max_step_are_not_passed():
    k = opts({"min_step": 0.0, "max_step": math.inf, "return_stats": True}).kwargs
    assert "dtmin" not in k and "dtmax" not in k


@pytest.mark.parametrize(
    "options",
    [{"step_size": -1.0}, {"step_size": "0.1"}, {"first_step": 0}, {"max_num_steps": 1.5}, {"max_num_steps": True},
     {"min_step": -1.0}, {"dfactor": 0.5}, {"ifactor": 2.0}, {"autojacvec": "magic"},
     {"step_size": 0.1, "first_step": 0.1}],
)
def test_bad_option_values(options):
    method = "rk4" if "step_size" in options and "first_step" not in options else "tsit5"
    with pytest.raises(errors.InvalidProblemError):
        opts(options, method=method)


# --- sensealgs ------------------------------------------------------------------------


def sense(alg, python_rhs=True, device="cpu", autojacvec="auto", **kw):
    return tr.translate_sensealg(alg, python_rhs=python_rhs, device=device, autojacvec=autojacvec, **kw).render()


@pytest.mark.parametrize(
    "alg, python_text, julia_text",
    [
        (psg.BacksolveAdjoint(), "BacksolveAdjoint(; autojacvec = ZygoteVJP(), checkpointing = true)", "BacksolveAdjoint(; checkpointing = true)"),
        (psg.InterpolatingAdjoint(), "InterpolatingAdjoint(; autojacvec = ZygoteVJP(), checkpointing = false)", "InterpolatingAdjoint(; checkpointing = false)"),
        (psg.InterpolatingAdjoint(checkpointing=True), "InterpolatingAdjoint(; autojacvec = ZygoteVJP(), checkpointing = true)", "InterpolatingAdjoint(; checkpointing = true)"),
        (psg.GaussAdjoint(), "GaussAdjoint(; autojacvec = ZygoteVJP(), checkpointing = false)", "GaussAdjoint(; checkpointing = false)"),
        (psg.GaussAdjoint(checkpointing=True), "GaussAdjoint(; autojacvec = ZygoteVJP(), checkpointing = true)", "GaussAdjoint(; checkpointing = true)"),
        (psg.QuadratureAdjoint(), "QuadratureAdjoint(; autojacvec = ZygoteVJP(), abstol = 1e-09, reltol = 1e-07)", "QuadratureAdjoint(; abstol = 1e-09, reltol = 1e-07)"),
    ],
)
def test_continuous_adjoints(alg, python_text, julia_text):
    assert sense(alg, python_rhs=True) == python_text
    assert sense(alg, python_rhs=False) == julia_text


def test_quadrature_tolerances_come_from_the_sensealg_when_given():
    text = sense(psg.QuadratureAdjoint(adjoint_rtol=1e-5, adjoint_atol=1e-8), python_rhs=False)
    assert text == "QuadratureAdjoint(; abstol = 1e-08, reltol = 1e-05)"


def test_separate_adjoint_settings_are_refused_unless_equal_to_forward():
    with pytest.raises(errors.UnsupportedSensitivityError, match="adjoint_rtol"):
        sense(psg.BacksolveAdjoint(adjoint_rtol=1e-3))
    with pytest.raises(errors.UnsupportedSensitivityError, match="adjoint_method"):
        sense(psg.InterpolatingAdjoint(adjoint_method="rk4"), method="tsit5")
    assert sense(psg.BacksolveAdjoint(adjoint_rtol=1e-7, adjoint_method="tsit5"), method="tsit5").startswith("BacksolveAdjoint")


def test_discrete_methods_need_a_julia_rhs():
    for alg in (psg.DirectAD(), psg.ReverseDiffAdjoint(), psg.ForwardDiffSensitivity()):
        with pytest.raises(errors.UnsupportedSensitivityError, match="JuliaRHS"):
            sense(alg, python_rhs=True)


def test_discrete_methods_with_julia_rhs():
    assert sense(psg.DirectAD(), python_rhs=False) == "ReverseDiffAdjoint()"
    assert sense(psg.ReverseDiffAdjoint(), python_rhs=False) == "ReverseDiffAdjoint()"
    assert sense(psg.ForwardDiffSensitivity(chunk_size=3), python_rhs=False) == "ForwardDiffSensitivity(; chunk_size = 3)"


def test_reversediff_needs_cpu():
    with pytest.raises(errors.UnsupportedSensitivityError, match="CPU"):
        sense(psg.ReverseDiffAdjoint(), python_rhs=False, device="cuda")
    assert sense(psg.ForwardDiffSensitivity(), python_rhs=False, device="cuda").startswith("ForwardDiffSensitivity")


def test_checkpoint_adjoint_is_refused_with_alternatives():
    with pytest.raises(errors.UnsupportedSensitivityError) as info:
        sense(psg.CheckpointAdjoint(), python_rhs=False)
    msg = str(info.value)
    assert "InterpolatingAdjoint(checkpointing=True)" in msg and "backend='torch'" in msg


def test_unsupported_sensealgs_are_not_implemented_errors_too():
    with pytest.raises(NotImplementedError):
        sense(psg.CheckpointAdjoint())


def test_unknown_sensealg_class():
    class Mystery(psg.SensitivityAlgorithm):
        pass

    with pytest.raises(errors.UnsupportedSensitivityError, match="supported"):
        sense(Mystery())


@pytest.mark.parametrize(
    "ajv, text",
    [
        ("zygote", "InterpolatingAdjoint(; autojacvec = ZygoteVJP(), checkpointing = false)"),
        ("enzyme", "InterpolatingAdjoint(; autojacvec = EnzymeVJP(), checkpointing = false)"),
        ("reversediff_compiled", "InterpolatingAdjoint(; autojacvec = ReverseDiffVJP(true), checkpointing = false)"),
        ("finitediff", "InterpolatingAdjoint(; autodiff = false, autojacvec = false, checkpointing = false)"),
        ("forwarddiff", "InterpolatingAdjoint(; autodiff = true, autojacvec = false, checkpointing = false)"),
    ],
)
def test_autojacvec_choices_for_julia_rhs(ajv, text):
    assert sense(psg.InterpolatingAdjoint(), python_rhs=False, autojacvec=ajv) == text


def test_python_rhs_only_gets_blackbox_vjps():
    # finitediff is fine for a parameter-free torch f (only d/du is differenced) ...
    assert "autodiff = false, autojacvec = false" in sense(psg.GaussAdjoint(), autojacvec="finitediff", n_params=0)
    for ajv in ("enzyme", "reversediff", "tracker", "forwarddiff"):
        with pytest.raises(errors.UnsupportedSensitivityError, match="autojacvec"):
            sense(psg.GaussAdjoint(), autojacvec=ajv)


@pytest.mark.parametrize("alg", [psg.GaussAdjoint(), psg.InterpolatingAdjoint(), psg.BacksolveAdjoint(), psg.QuadratureAdjoint()])
def test_finitediff_is_refused_for_a_torch_rhs_with_parameters(alg):
    # Issue 9 bug 6: finite differences perturb Julia's p, which a torch f never reads, so
    # dL/dtheta would be exactly 0. Refused, with the alternatives named.
    with pytest.raises(errors.UnsupportedSensitivityError, match="finitediff.*zero.*'zygote'"):
        sense(alg, autojacvec="finitediff", n_params=3)
    # A Julia f reads p, so finite differences in p are meaningful there.
    assert "autojacvec = false" in sense(alg, python_rhs=False, autojacvec="finitediff", n_params=3)


def test_finitediff_refusal_reaches_the_plan():
    net = torch.nn.Linear(2, 2).double()
    prob = problem(func=lambda t, y: net(y), params=list(net.parameters()), options={"autojacvec": "finitediff"},
                   sensealg=psg.GaussAdjoint())
    with pytest.raises(errors.UnsupportedSensitivityError, match="finitediff"):
        tr.make_plan(prob, need_grad=True)
    assert tr.make_plan(prob, need_grad=False).sensealg is None  # no gradient, nothing to refuse


def test_bad_forwarddiff_chunk_size():
    with pytest.raises(errors.InvalidProblemError, match="chunk_size"):
        sense(psg.ForwardDiffSensitivity(chunk_size=-1), python_rhs=False)


# --- errors from Julia ----------------------------------------------------------------


@pytest.mark.parametrize(
    "retcode, cls",
    [
        ("MaxIters", errors.MaxStepsExceededError),
        ("ReturnCode.MaxIters", errors.MaxStepsExceededError),
        ("DtLessThanMin", errors.StepSizeUnderflowError),
        ("Unstable", errors.NonFiniteStateError),
        ("DtNaN", errors.NonFiniteStateError),
        ("ConvergenceFailure", errors.SolverError),
    ],
)
def test_retcodes(retcode, cls):
    err = tr.error_for_retcode(retcode)
    assert type(err) is cls and retcode.split(".")[-1] in str(err)


@pytest.mark.parametrize(
    "kind, cls",
    [
        ("solver", errors.MaxStepsExceededError),
        ("unsupported_sensealg", errors.UnsupportedSensitivityError),
        ("invalid", errors.InvalidProblemError),
        ("invalid_rhs", errors.InvalidProblemError),
        ("cuda_unavailable", errors.BackendUnavailableError),
        ("something_new", errors.SolverError),
    ],
)
def test_julia_error_kinds(kind, cls):
    err = tr.error_for_julia(kind, "MaxIters" if kind == "solver" else "details")
    assert isinstance(err, cls)


# --- states, dtypes, devices, whole plans ---------------------------------------------


def test_julia_state_shape_reverses_axes():
    assert tr.julia_state_shape((32, 4)) == (4, 32)
    assert tr.julia_state_shape((5, 3, 2)) == (2, 3, 5)
    assert tr.julia_state_shape((7,)) == (7,)
    assert tr.julia_state_shape(()) == (1,)


@pytest.mark.parametrize("dtype, device", [("float16", "cpu"), ("bfloat16", "cpu"), ("complex64", "cpu"), ("float64", "mps")])
def test_unsupported_dtype_or_device(dtype, device):
    with pytest.raises(errors.InvalidStateError):
        tr.check_dtype_device(dtype, device)


def test_plan_without_gradient_does_not_check_the_sensealg():
    # DirectAD (the default) cannot work with a torch f in Julia, but without a
    # gradient no sensealg runs, so a forward solve must still be possible.
    plan = tr.make_plan(problem(sensealg=psg.DirectAD()), need_grad=False)
    assert plan.sensealg is None
    with pytest.raises(errors.UnsupportedSensitivityError):
        tr.make_plan(problem(sensealg=psg.DirectAD()), need_grad=True)


def test_plan_for_a_torch_module():
    net = torch.nn.Linear(2, 2).double()
    plan = tr.make_plan(problem(func=lambda t, y: net(y), params=list(net.parameters()), method="Vern7"), need_grad=True)
    assert plan.python_rhs and plan.algorithm.render() == "Vern7()"
    assert plan.sensealg.render() == "InterpolatingAdjoint(; autojacvec = ZygoteVJP(), checkpointing = false)"
    assert plan.n_params == 6
    assert plan.state_shape == (3, 2) and plan.julia_shape == (2, 3)
    assert plan.save_times == tuple(T5.tolist()) and plan.device == "cpu" and plan.dtype == "float64"


def test_plan_for_a_julia_rhs():
    a = torch.tensor([0.5], dtype=F64, requires_grad=True)
    rhs = JuliaRHS("(u, p, t) -> p[1] .* u")
    plan = tr.make_plan(problem(func=rhs, params=[a], sensealg=psg.DirectAD(), method="Rodas5P"), need_grad=True)
    assert not plan.python_rhs
    assert plan.algorithm.render() == "Rodas5P()"  # Julia f: ForwardDiff Jacobians are fine
    assert plan.sensealg.render() == "ReverseDiffAdjoint()"
    assert plan.n_params == 1


def test_plan_float32():
    plan = tr.make_plan(problem(y0=torch.ones(4, dtype=torch.float32)), need_grad=False)
    assert plan.dtype == "float32"


# --- JuliaRHS and the public names ----------------------------------------------------


def test_julia_rhs_holds_source():
    rhs = JuliaRHS("  (u, p, t) -> -u  ")
    assert rhs.source == "(u, p, t) -> -u" and rhs.is_julia_rhs
    assert "JuliaRHS" in repr(rhs)


@pytest.mark.parametrize("bad", ["", "   ", None, 3])
def test_julia_rhs_needs_source(bad):
    with pytest.raises(errors.InvalidProblemError, match="Julia source"):
        JuliaRHS(bad)


def test_julia_rhs_cannot_be_evaluated_in_python():
    with pytest.raises(TypeError, match="backend='julia'"):
        JuliaRHS("(u, p, t) -> u")(0.0, torch.ones(1))


def test_new_sensealgs_are_public_and_frozen():
    for name in ("GaussAdjoint", "ReverseDiffAdjoint", "ForwardDiffSensitivity"):
        assert name in psg.sensealg.__all__ and hasattr(psg, name)
    assert psg.ReverseDiffAdjoint.discrete and psg.ForwardDiffSensitivity.discrete and not psg.GaussAdjoint.discrete
    with pytest.raises(Exception):
        psg.GaussAdjoint().checkpointing = True


def test_importing_the_backend_does_not_import_juliacall():
    code = "import sys, pysciml_grad.backends.julia as j, pysciml_grad.bridge; print('juliacall' in sys.modules)"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("alg, warns", [(psg.InterpolatingAdjoint(), True), (psg.BacksolveAdjoint(), True),
                                        (psg.GaussAdjoint(), False), (psg.QuadratureAdjoint(), False)])
def test_stiff_method_with_a_torch_rhs_steers_to_gauss_or_quadrature(alg, warns, recwarn):
    tr.make_plan(problem(method="Rodas5P", sensealg=alg), need_grad=True)
    hits = [w for w in recwarn if issubclass(w.category, tr.JuliaPerformanceWarning)]
    assert bool(hits) is warns
    if warns:
        assert "GaussAdjoint() or QuadratureAdjoint()" in str(hits[0].message)
