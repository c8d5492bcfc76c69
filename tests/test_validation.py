"""Issue 8, sections 3-7: every func output is checked, no input spins, every number is
validated, DirectAD's default gradient is the discrete map's, 0-d states work.

Each test here failed (wrong error, spin, NaN, IndexError or a silently wrong answer)
on commit 3b3ad7f. Spins are bounded with ``max_num_steps`` so that the old code fails
fast with MaxStepsExceededError instead of hanging the suite.
"""

import math
import warnings

import numpy as np
import pytest
import torch

import pysciml_grad as psg
from pysciml_grad import errors

F64 = torch.float64
Y0 = torch.ones(2, dtype=F64)
T = torch.tensor([0.0, 1.0], dtype=F64)
BOUND = {"max_num_steps": 2000}  # an old spin ends here with MaxStepsExceededError


def decay(t, y):
    return -y


# ----------------------------------------------------------------------------- section 3


def _after(t0, bad, good=decay):
    """func that is correct until t > t0, then returns ``bad(t, y)``."""

    def f(t, y):
        return bad(t, y) if float(t) > t0 else good(t, y)

    return f


MID_SOLVE = {
    "shape (3,1) for (3,2)": (lambda t, y: (-y)[:, :1], errors.RHSOutputError, r"shape \(3, 1\) at t=0\.[5-9]"),
    "float32 on float64": (lambda t, y: (-y).float(), errors.DTypeMismatchError, r"float32 at t=0\.[5-9]"),
    "None": (lambda t, y: None, errors.RHSOutputError, r"NoneType at t=0\.[5-9]"),
    "tuple": (lambda t, y: (-y, -y), errors.RHSOutputError, r"tuple at t=0\.[5-9]"),
}


@pytest.mark.parametrize("case", sorted(MID_SOLVE))
@pytest.mark.parametrize("sensealg", [psg.DirectAD(), psg.CheckpointAdjoint()], ids=["direct", "checkpoint"])
@pytest.mark.parametrize("method, options", [("dopri5", None), ("rk4", {"step_size": 0.05})])
def test_every_func_output_is_checked(case, sensealg, method, options):
    bad, cls, words = MID_SOLVE[case]
    y0 = torch.ones(3, 2, dtype=F64, requires_grad=True)
    with pytest.raises(cls, match=words):
        psg.odeint(_after(0.5, bad), y0, T, method=method, options=options, sensealg=sensealg)


# ----------------------------------------------------------------------------- section 4


def _nan_after_t0(t, y):
    return -y * torch.sqrt(-t)  # finite at t = 0, NaN for every t > 0


SPINS = {
    "rtol=inf": (dict(rtol=float("inf"), options=BOUND), errors.InvalidProblemError, "rtol"),
    "atol=inf": (dict(atol=float("inf"), options=BOUND), errors.InvalidProblemError, "atol"),
    "func NaN just after t0": (dict(func=_nan_after_t0, options=BOUND), errors.NonFiniteStateError, "just after"),
    "safety=5": (dict(options={"safety": 5, **BOUND}), errors.InvalidProblemError, "safety"),
    "min_step=nan": (dict(options={"min_step": float("nan"), **BOUND}), errors.InvalidProblemError, "min_step"),
    "dfactor=1": (dict(options={"dfactor": 1.0, **BOUND}), errors.InvalidProblemError, "dfactor"),
    "backsolve adjoint_rtol=inf": (
        dict(sensealg=psg.BacksolveAdjoint(adjoint_rtol=float("inf")), options=BOUND),
        errors.InvalidProblemError, "adjoint_rtol",
    ),
    "float16 state": (dict(y0=Y0.half(), options=BOUND), errors.InvalidStateError, "half-precision"),
    "bfloat16 state": (dict(y0=Y0.bfloat16(), options=BOUND), errors.InvalidStateError, "half-precision"),
}


@pytest.mark.parametrize("case", sorted(SPINS))
def test_no_input_spins(case):
    kw, cls, words = SPINS[case]
    kw = dict(kw)
    func = kw.pop("func", decay)
    y0 = kw.pop("y0", Y0).clone().requires_grad_(True)
    ys = None
    with pytest.raises(cls, match=words):
        ys = psg.odeint(func, y0, T, **kw)
        ys[-1].sum().backward()


def test_nan_error_ratio_stops_after_a_bounded_shrink():
    """func NaN for every t > 0.3 (y finite): the trial steps shrink only until the NaN
    is plainly func's, then NonFiniteStateError names the time."""

    def f(t, y):
        return -y if float(t) <= 0.3 else y * float("nan")

    with pytest.raises(errors.NonFiniteStateError, match=r"t=0\.3"):
        psg.odeint(f, Y0, T, method="heun_euler", options=BOUND)


NUMBER_FORMS = [
    pytest.param(lambda x: x, id="float"),
    pytest.param(lambda x: torch.tensor(x), id="0-d tensor float32"),
    pytest.param(lambda x: torch.tensor(x, dtype=F64), id="0-d tensor float64"),
    pytest.param(np.float64, id="np.float64"),
    pytest.param(np.float32, id="np.float32"),
]


@pytest.mark.parametrize("form", NUMBER_FORMS)
def test_tolerances_and_options_accept_number_forms(form):
    """A 0-d tensor or a NumPy scalar means the same as the Python float."""
    ref = psg.odeint(decay, Y0, T, rtol=1e-6, atol=1e-8, options={"safety": 0.8, "max_step": 0.3})
    got = psg.odeint(decay, Y0, T, rtol=form(1e-6), atol=form(1e-8),
                     options={"safety": form(0.8), "max_step": form(0.3)})
    rtol32 = float(np.float32(1e-6))  # a float32 form carries float32's rounding of 1e-6
    assert torch.allclose(got, ref, rtol=1e-12, atol=0) or torch.allclose(got, ref, rtol=10 * rtol32, atol=0)


def test_integer_options_accept_numpy_and_tensor_integers():
    for n in (np.int64(7), torch.tensor(7)):
        ys = psg.odeint(decay, Y0, torch.linspace(0, 1, 5, dtype=F64), method="rk4", options={"max_num_steps": n})
        assert ys.shape == (5, 2)
        with pytest.raises(errors.MaxStepsExceededError, match="max_num_steps=3"):
            psg.odeint(decay, Y0, torch.linspace(0, 1, 5, dtype=F64), method="rk4",
                       options={"max_num_steps": n - 4})


def _scaled_pair(method):
    """y' = A y in original units vs z = y / s in rescaled units: with atol_y = s * atol
    the error ratios err_i / (atol_i + rtol |y_i|) are identical, so both solves take the
    same steps (an exact identity for the per-component error norm and initial step)."""
    A = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=F64)
    s = torch.tensor([1e-4, 1e3], dtype=F64)
    y0 = torch.tensor([2e-4, -1e3], dtype=F64)
    t = torch.linspace(0, 3, 4, dtype=F64)
    ys, st = psg.odeint(lambda t, y: A @ y, y0, t, method=method, rtol=1e-5, atol=s * 1e-7,
                        options={"return_stats": True})
    zs, sz = psg.odeint(lambda t, z: (A @ (z * s)) / s, y0 / s, t, method=method, rtol=1e-5, atol=1e-7,
                        options={"return_stats": True})
    return ys, st, zs * s, sz


@pytest.mark.parametrize("method", ["heun_euler", "bosh3", "dopri5", "tsit5"])
def test_per_component_atol_is_a_change_of_units(method):
    ys, st, zs, sz = _scaled_pair(method)
    assert (st.n_steps, st.n_rejected, st.nfe) == (sz.n_steps, sz.n_rejected, sz.nfe)
    # equal up to rounding, amplified by the cancellation in the error estimate (~1e-9)
    assert torch.allclose(ys, zs, rtol=0, atol=1e-8 * float(ys.abs().max()))


def test_per_component_tolerance_changes_the_steps():
    """A tight atol on one component alone costs more steps than the loose scalar."""
    y0 = torch.tensor([1.0, 1.0], dtype=F64)
    _, loose = psg.odeint(decay, y0, T, rtol=1e-3, atol=1e-3, options={"return_stats": True})
    _, mixed = psg.odeint(decay, y0, T, rtol=torch.tensor([1e-3, 1e-9], dtype=F64),
                          atol=torch.tensor([1e-3, 1e-10], dtype=F64), options={"return_stats": True})
    assert mixed.n_steps > loose.n_steps


SENSEALGS = {
    "direct": psg.DirectAD(),
    "direct_naive": psg.DirectAD(through_controller=True),
    "checkpoint": psg.CheckpointAdjoint(),
    "backsolve": psg.BacksolveAdjoint(),
    "interpolating": psg.InterpolatingAdjoint(),
    "interpolating_ckpt": psg.InterpolatingAdjoint(checkpointing=True),
    "quadrature": psg.QuadratureAdjoint(),
}


@pytest.mark.parametrize("name", sorted(SENSEALGS))
def test_per_component_tolerances_under_every_sensealg(name):
    """y' = a y: dL/da of L = sum y(1) is y0 e^a summed; a tensor rtol/atol works everywhere."""
    a = torch.tensor(-0.7, dtype=F64, requires_grad=True)
    y0 = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=F64, requires_grad=True)
    rtol = torch.tensor([1e-8, 1e-9], dtype=F64)  # broadcasts over rows
    atol = torch.full((2, 2), 1e-10, dtype=F64)
    ys = psg.odeint(lambda t, y: a * y, y0, T, rtol=rtol, atol=atol, params=[a], sensealg=SENSEALGS[name])
    ys[-1].sum().backward()
    e = math.exp(-0.7)
    assert abs(float(a.grad) - 10 * e) < 1e-6
    assert torch.allclose(y0.grad, torch.full_like(y0, e), rtol=1e-6)


@pytest.mark.parametrize("kw, words", [
    ({"rtol": torch.ones(3, dtype=F64) * 1e-6}, "broadcast"),
    ({"atol": torch.tensor([1e-6, -1.0], dtype=F64)}, "positive"),
    ({"rtol": torch.tensor([1e-6, float("nan")], dtype=F64)}, "positive"),
])
def test_bad_per_component_tolerances(kw, words):
    with pytest.raises(errors.InvalidProblemError, match=words):
        psg.odeint(decay, Y0, T, **kw)


BAD_OPTIONS = [
    ({"safety": 0.0}, "safety"),
    ({"safety": 1.5}, "safety"),
    ({"safety": float("nan")}, "safety"),
    ({"dfactor": 1.0}, "dfactor"),
    ({"ifactor": 1.0}, "ifactor"),
    ({"dfactor": float("nan")}, "dfactor"),
    ({"ifactor": float("inf")}, "ifactor"),
    ({"min_step": -1.0}, "min_step"),
    ({"min_step": float("inf")}, "min_step"),
    ({"first_step": float("inf")}, "first_step"),
    ({"first_step": float("nan")}, "first_step"),
    ({"max_step": float("nan")}, "max_step"),
    ({"max_num_steps": 2.5}, "max_num_steps"),
    ({"max_num_steps": True}, "max_num_steps"),
    ({"max_num_steps": 0}, "max_num_steps"),
    ({"safety": True}, "bool"),
    ({"first_step": "0.1"}, "first_step"),
    ({"return_stats": "no"}, "return_stats"),
    ({"return_stats": 1}, "return_stats"),
]


@pytest.mark.parametrize("options, words", BAD_OPTIONS, ids=[str(o) for o, _ in BAD_OPTIONS])
def test_bad_adaptive_options(options, words):
    with pytest.raises(errors.InvalidProblemError, match=words):
        psg.odeint(decay, Y0, T, options={**BOUND, **options})


@pytest.mark.parametrize("step_size", [float("inf"), float("nan"), 0.0, -0.1, True])
def test_bad_step_size(step_size):
    with pytest.raises(errors.InvalidProblemError, match="step_size"):
        psg.odeint(decay, Y0, T, method="rk4", options={"step_size": step_size, **BOUND})


@pytest.mark.parametrize("kw", [{"rtol": True}, {"atol": False}, {"rtol": "1e-6"}])
def test_bool_or_text_is_not_a_tolerance(kw):
    with pytest.raises(errors.InvalidProblemError, match="rtol|atol"):
        psg.odeint(decay, Y0, T, options=BOUND, **kw)


@pytest.mark.parametrize("sensealg, words", [
    (psg.InterpolatingAdjoint(checkpointing="no"), "checkpointing"),
    (psg.InterpolatingAdjoint(checkpointing=1), "checkpointing"),
    (psg.DirectAD(through_controller="yes"), "through_controller"),
    (psg.CheckpointAdjoint(max_checkpoints=3.0), "max_checkpoints"),
    (psg.BacksolveAdjoint(adjoint_rtol=True), "adjoint_rtol"),
    (psg.QuadratureAdjoint(adjoint_atol=float("nan")), "adjoint_atol"),
    (psg.BacksolveAdjoint(adjoint_method=5), "adjoint_method"),
])
def test_sensealg_fields_are_validated(sensealg, words):
    y0 = Y0.clone().requires_grad_(True)
    with pytest.raises(errors.InvalidProblemError, match=words):
        psg.odeint(decay, y0, T, sensealg=sensealg, options=BOUND)[-1].sum().backward()


def test_sensealg_tolerance_accepts_a_tensor():
    y0 = Y0.clone().requires_grad_(True)
    psg.odeint(decay, y0, T, sensealg=psg.BacksolveAdjoint(adjoint_rtol=torch.tensor(1e-8)))[-1].sum().backward()
    assert torch.allclose(y0.grad, torch.full_like(Y0, math.exp(-1)), rtol=1e-6)


def test_max_num_steps_enforced_on_the_grid_t():
    with pytest.raises(errors.MaxStepsExceededError, match="max_num_steps=10"):
        psg.odeint(decay, Y0, torch.linspace(0, 1, 101, dtype=F64), method="rk4", options={"max_num_steps": 10})


def test_final_stub_shorter_than_min_step_is_fine():
    """min_step bounds the controller's steps; the last step up to t_end may be shorter."""
    t = torch.tensor([0.0, 1.0 + 1e-7], dtype=F64)
    ys = psg.odeint(decay, Y0, t, options={"min_step": 1e-3, "first_step": 0.1})
    assert torch.allclose(ys[-1], torch.exp(-t[-1]) * Y0, rtol=1e-6)


# ----------------------------------------------------------------------------- section 5


@pytest.mark.parametrize("method", ["heun_euler", "bosh3", "dopri5", "tsit5"])
@pytest.mark.parametrize("sensealg", [psg.DirectAD(), psg.DirectAD(through_controller=True)],
                         ids=["default", "through_controller"])
@pytest.mark.parametrize("rhs", ["constant", "zero"])
def test_directad_finite_gradient_when_the_error_estimate_is_zero(method, sensealg, rhs):
    """f = theta (constant) or f = 0 * y: every embedded error estimate is exactly 0.
    y(1) = y0 + theta (or y0), so dL/dtheta = n and dL/dy0 = 1 for L = sum y(1)."""
    theta = torch.tensor(0.5, dtype=F64, requires_grad=True)
    y0 = torch.tensor([1.0, -2.0, 3.0], dtype=F64, requires_grad=True)
    if rhs == "constant":
        def f(t, y):
            return theta * torch.ones_like(y)
    else:
        def f(t, y):
            return 0.0 * y * theta
    ys = psg.odeint(f, y0, T, method=method, params=[theta], sensealg=sensealg)
    ys[-1].sum().backward()
    assert torch.allclose(y0.grad, torch.ones_like(y0), rtol=1e-12)
    assert abs(float(theta.grad) - (3.0 if rhs == "constant" else 0.0)) < 1e-12


def test_directad_hands_func_the_state_dtype_for_time():
    seen = []
    w = torch.tensor(-0.5, requires_grad=True)

    def f(t, y):
        seen.append(t.dtype)
        return w * y * (1 + t)

    y0 = torch.ones(3)  # float32
    t = torch.tensor([0.0, 0.4, 1.0], dtype=F64, requires_grad=True)
    ys = psg.odeint(f, y0, t, params=[w], sensealg=psg.DirectAD(), rtol=1e-5, atol=1e-7)
    ys.sum().backward()
    assert set(seen) == {torch.float32}
    assert torch.isfinite(t.grad).all() and t.grad.dtype == F64


def _linear_t(theta):
    # y' = 2 y / t + theta t^2 cos t on [1, 8]: y(t) = t^2 (y(1) + theta (sin t - sin 1))
    return lambda t, y: 2 * y / t + theta * t**2 * torch.cos(t)


def test_directad_default_equals_checkpoint_adjoint_and_closed_form():
    t = torch.tensor([1.0, 3.0, 8.0], dtype=F64)
    grads = {}
    for name, sa in (("direct", psg.DirectAD()), ("checkpoint", psg.CheckpointAdjoint())):
        theta = torch.tensor(1.0, dtype=F64, requires_grad=True)
        y0 = torch.tensor([1.0], dtype=F64, requires_grad=True)
        tt = t.clone().requires_grad_(True)
        ys = psg.odeint(_linear_t(theta), y0, tt, rtol=1e-9, atol=1e-9, params=[theta], sensealg=sa)
        ys[-1].sum().backward()
        grads[name] = (float(y0.grad), float(theta.grad), tt.grad.clone())
    d, c = grads["direct"], grads["checkpoint"]
    assert abs(d[0] - c[0]) <= 1e-12 * 64 and abs(d[1] - c[1]) <= 1e-12 * abs(c[1])
    assert torch.allclose(d[2], c[2], rtol=1e-10, atol=1e-10)
    assert abs(d[0] - 64.0) < 1e-6 * 64
    assert abs(d[1] - 64 * (math.sin(8) - math.sin(1))) < 1e-6 * 64
    # dL/dt_end = y'(8) = 2 y(8) / 8 + 64 cos 8
    y8 = 64 * (1 + math.sin(8) - math.sin(1))
    assert abs(float(d[2][-1]) - (2 * y8 / 8 + 64 * math.cos(8))) < 1e-5 * y8


def test_directad_default_keeps_no_graph_of_the_controller():
    """Default DirectAD: the step sizes are constants, so the gradient equals that of a
    loop replaying the same accepted steps; through_controller=True differs from it."""
    theta = torch.tensor(1.0, dtype=F64, requires_grad=True)
    y0 = torch.tensor([1.0], dtype=F64)
    t = torch.tensor([1.0, 8.0], dtype=F64)
    out = {}
    for name, sa in (("default", psg.DirectAD()), ("naive", psg.DirectAD(through_controller=True)),
                     ("checkpoint", psg.CheckpointAdjoint())):
        theta.grad = None
        psg.odeint(_linear_t(theta), y0, t, rtol=1e-5, atol=1e-5, params=[theta], sensealg=sa)[-1].sum().backward()
        out[name] = float(theta.grad)
    assert out["default"] == pytest.approx(out["checkpoint"], rel=1e-12)
    assert abs(out["naive"] - out["checkpoint"]) > 1e-9 * abs(out["checkpoint"])


# ----------------------------------------------------------------------------- section 6

ZERO_D_METHODS = [("euler", {"step_size": 0.05}), ("midpoint", None), ("heun", {"step_size": 0.1}),
                  ("ralston", None), ("rk4", {"step_size": 0.1}), ("leapfrog", None), ("leapfrog", {"step_size": 0.05}),
                  ("heun_euler", None), ("dopri5", None), ("tsit5", None)]


@pytest.mark.parametrize("method, options", ZERO_D_METHODS, ids=[f"{m}-{o}" for m, o in ZERO_D_METHODS])
@pytest.mark.parametrize("name", sorted(SENSEALGS))
def test_zero_dim_state_matches_one_element_state(method, options, name):
    """A 0-d y0 gives exactly what the same problem with shape (1,) gives, forward and backward."""
    t = torch.linspace(0, 1, 6, dtype=F64)
    out = []
    for shape in ((), (1,)):
        a = torch.tensor(-0.8, dtype=F64, requires_grad=True)
        y0 = torch.full(shape, 1.5, dtype=F64, requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", errors.GradientAccuracyWarning)
            ys = psg.odeint(lambda tt, y: a * y + torch.sin(tt), y0, t, method=method, options=options,
                            rtol=1e-5, atol=1e-7, params=[a], sensealg=SENSEALGS[name])
            (ys**2).sum().backward()
        assert ys.shape == (6, *shape)
        out.append((ys.detach().reshape(6), y0.grad.reshape(1), a.grad.reshape(1)))
    for x, y in zip(*out):
        assert torch.allclose(x, y, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- section 7


def test_min_step_larger_than_first_step_says_so():
    with pytest.raises(errors.StepSizeUnderflowError, match="larger than the first step") as info:
        psg.odeint(decay, Y0, T, options={"min_step": 0.5})
    assert "blow up" not in str(info.value) and "stiff" not in str(info.value)


def test_fixed_step_backsolve_warning_names_the_step_not_tolerances():
    y0 = torch.tensor([1.0], dtype=F64, requires_grad=True)
    t = torch.linspace(0, 1, 3, dtype=F64)
    with pytest.warns(errors.GradientAccuracyWarning) as rec:
        ys = psg.odeint(decay, y0, t, method="euler", options={"step_size": 0.05}, sensealg=psg.BacksolveAdjoint())
        ys[-1].sum().backward()
    msg = str(rec[0].message)
    assert "step_size" in msg and "adjoint_rtol" not in msg and "times the tolerance" not in msg


def test_per_component_tolerance_refused_by_the_julia_translation():
    """The Julia translation passes scalar tolerances: a tensor is refused, not reduced."""
    with pytest.raises(errors.InvalidProblemError, match="backend='torch' only"):
        psg.odeint(decay, Y0, T, rtol=torch.tensor([1e-6, 1e-7], dtype=F64), backend="julia")


@pytest.mark.parametrize("name", ["backsolve", "interpolating", "quadrature"])
def test_backward_evaluations_of_continuous_adjoints_are_checked(name):
    """func turns bad only after the forward solve: the backward pass names it."""
    bad = {"on": False}

    def f(t, y):
        return (-y)[:, :1] if bad["on"] else -y

    y0 = torch.ones(3, 2, dtype=F64, requires_grad=True)
    ys = psg.odeint(f, y0, T, sensealg=SENSEALGS[name])
    bad["on"] = True
    with pytest.raises(errors.RHSOutputError, match=r"shape \(3, 1\)"):
        ys[-1].sum().backward()


def test_julia_options_accept_tensor_and_numpy_numbers():
    """The Julia translation sees plain numbers too (no Julia needed: translation only)."""
    from pysciml_grad.backends.julia.translate import make_plan
    from pysciml_grad.problem import make_problem

    problem = make_problem(decay, Y0, T, method="tsit5", rtol=torch.tensor(1e-6), atol=np.float32(1e-8),
                           options={"max_num_steps": torch.tensor(50), "first_step": np.float64(0.01)},
                           params=None, sensealg=psg.GaussAdjoint(), backend="julia")
    kwargs = make_plan(problem, need_grad=False).solve_options.kwargs
    assert kwargs["maxiters"] == 50 and kwargs["dt"] == 0.01 and kwargs["reltol"] == pytest.approx(1e-6)


def test_fixed_step_that_makes_no_progress_raises():
    """At t ~ 1e12 a step of 1e-6 is below float64's resolution (ulp 1.2e-4): t + h == t."""
    t = torch.tensor([1e12, 1e12 + 1e-3], dtype=F64)
    with pytest.raises(errors.StepSizeUnderflowError, match="no progress"):
        psg.odeint(decay, Y0, t, method="euler", options={"step_size": 1e-6})
