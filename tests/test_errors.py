"""Every bad input raises its own class from pysciml_grad.errors, naming the problem."""

import time

import pytest
import torch

import pysciml_grad as psg
from pysciml_grad import errors

F64 = torch.float64
Y0 = torch.ones(2, dtype=F64)
T = torch.tensor([0.0, 1.0], dtype=F64)


def decay(t, y):
    return -y


def solve(func=decay, y0=Y0, t=T, **kw):
    kw.setdefault("sensealg", psg.DirectAD())
    return psg.odeint(func, y0, t, **kw)


@pytest.mark.parametrize(
    "t, cls, words",
    [
        (torch.zeros(2, 2, 2, dtype=F64), errors.InvalidTimeError, "1-D"),
        # 2-D t is per-sample save times (pysciml_grad.batching): an all-zero row repeats a time.
        (torch.zeros(2, 2, dtype=F64), errors.InvalidTimeError, "repeats the time|batch"),
        (torch.tensor([0, 1]), errors.InvalidTimeError, "floating"),
        (torch.tensor([0.0], dtype=F64), errors.InvalidTimeError, "at least 2"),
        (torch.tensor([0.0, 1.0, 0.5], dtype=F64), errors.InvalidTimeError, "changes direction"),
        (torch.tensor([0.0, 0.5, 0.5, 1.0], dtype=F64), errors.InvalidTimeError, "duplicate"),
        (torch.tensor([0.0, float("nan")], dtype=F64), errors.InvalidTimeError, "NaN"),
        ([0.0, 1.0], errors.InvalidTimeError, "torch.Tensor"),
    ],
)
def test_bad_t(t, cls, words):
    with pytest.raises(cls, match=words):
        solve(t=t)


@pytest.mark.parametrize(
    "values",
    [[0.0, 1.0, 0.5], [0.0, 0.5, 0.5, 1.0], [1.0, 0.5, 0.5, 0.7], [0.0, float("nan")], [0.0, float("inf"), 2.0],
     [2.0, 1.0, 3.0, 3.0]],
)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_short_t_is_checked_on_the_host_with_the_messages_of_the_tensor_checks(values, dtype):
    from pysciml_grad import problem

    t = torch.tensor(values, dtype=dtype)
    with pytest.raises(errors.InvalidTimeError) as on_host:
        problem._check_times_on_host(t.tolist())
    with pytest.raises(errors.InvalidTimeError) as as_tensor:
        problem._check_times_as_tensor(t)
    assert str(on_host.value) == str(as_tensor.value)


@pytest.mark.parametrize("at, words", [(700, "duplicate"), (900, "changes direction")])
def test_long_t_is_checked_by_tensor_reductions(at, words):
    from pysciml_grad.problem import HOST_CHECKED_TIMES

    t = torch.linspace(0.0, 1.0, HOST_CHECKED_TIMES + 1, dtype=F64)
    t[at] = t[at - 1] if words == "duplicate" else t[at - 2]
    with pytest.raises(errors.InvalidTimeError, match=rf"{words}.*t\[{at - 1}\]|t\[{at - 1}\].*{words}"):
        solve(t=t)


def test_bad_t_is_also_a_value_error():
    with pytest.raises(ValueError):
        solve(t=torch.tensor([1.0, 0.0, 1.0], dtype=F64))


@pytest.mark.parametrize(
    "y0, words",
    [
        (torch.ones(2, dtype=torch.int64), "floating"),
        (torch.tensor([1.0, float("nan")], dtype=F64), "NaN or inf"),
        (torch.tensor([float("inf"), 1.0], dtype=F64), "NaN or inf"),
        ([1.0, 2.0], "torch.Tensor"),
    ],
)
def test_bad_y0(y0, words):
    with pytest.raises(errors.InvalidStateError, match=words):
        solve(y0=y0)


def test_func_output_shape():
    with pytest.raises(errors.RHSOutputError, match=r"shape \(3,\).*shape \(2,\)"):
        solve(func=lambda t, y: torch.ones(3, dtype=F64))


def test_func_output_not_tensor():
    with pytest.raises(errors.RHSOutputError, match="torch.Tensor"):
        solve(func=lambda t, y: [1.0, 2.0])


def test_func_output_dtype():
    with pytest.raises(errors.DTypeMismatchError, match="float32"):
        solve(func=lambda t, y: (-y).float())


def test_parameter_dtype_mismatch_caught_before_solving():
    net = torch.nn.Linear(2, 2)  # float32 parameters, float64 state
    # func is a lambda (no .to): the message names the tensor in params= (issue 8 section 7).
    with pytest.raises(errors.DTypeMismatchError, match=r"params\[0\] \(shape \(2, 2\)\) has dtype torch.float32"):
        psg.odeint(lambda t, y: net(y), Y0, T, params=list(net.parameters()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available on this machine")
def test_func_output_device():
    with pytest.raises(errors.DeviceMismatchError):
        solve(func=lambda t, y: (-y).cuda())


def test_nan_from_func_reports_time():
    def f(t, y):
        return -y * torch.sqrt(0.5 - t)  # NaN once t > 0.5

    with pytest.raises(errors.NonFiniteStateError, match=r"t=0\.5"):
        solve(func=f, method="dopri5")


def test_nan_in_fixed_step_reports_interval():
    def f(t, y):
        return -y * torch.sqrt(0.55 - t)

    with pytest.raises(errors.NonFiniteStateError, match=r"between t=0\.5.*t=0\.6"):
        solve(func=f, t=torch.linspace(0, 1, 11, dtype=F64), method="rk4")


def test_nan_in_func_at_start():
    with pytest.raises(errors.NonFiniteStateError, match="initial time"):
        solve(func=lambda t, y: y * float("nan"))


def test_finite_time_blow_up_raises_quickly_with_time():
    """y' = y^2, y(0) = 1 blows up at t = 1; the peers hang or return garbage here."""
    start = time.perf_counter()
    with pytest.raises(errors.StepSizeUnderflowError, match=r"at t=(0\.99\d*|1),"):
        solve(func=lambda t, y: y**2, y0=torch.ones(1, dtype=F64), t=torch.tensor([0.0, 2.0], dtype=F64))
    assert time.perf_counter() - start < 10


def test_min_step_underflow():
    with pytest.raises(errors.StepSizeUnderflowError, match="min_step"):
        solve(func=lambda t, y: -1000 * (y - torch.cos(t)), options={"min_step": 0.5}, rtol=1e-8)


def test_max_num_steps():
    with pytest.raises(errors.MaxStepsExceededError, match="max_num_steps=5"):
        solve(options={"max_num_steps": 5}, t=torch.tensor([0.0, 100.0], dtype=F64))


def test_max_num_steps_fixed_grid():
    with pytest.raises(errors.MaxStepsExceededError, match="max_num_steps"):
        solve(method="rk4", options={"step_size": 1e-6, "max_num_steps": 1000})


def test_unknown_method_lists_valid_ones():
    with pytest.raises(errors.UnknownMethodError, match="dopri5.*Tsit5"):
        solve(method="Tsit5")


def test_unknown_option_lists_valid_ones():
    with pytest.raises(errors.UnknownOptionError, match="step_size"):
        solve(options={"stepsize": 0.1})


def test_bad_option_value():
    with pytest.raises(errors.InvalidProblemError, match="max_num_steps"):
        solve(options={"max_num_steps": -1})


def test_fixed_step_without_grid():
    with pytest.raises(errors.MissingStepSizeError, match="step_size"):
        solve(method="rk4")


def test_leapfrog_needs_uniform_grid():
    with pytest.raises(errors.MissingStepSizeError, match="equal steps"):
        solve(method="leapfrog", t=torch.tensor([0.0, 0.1, 0.5, 1.0], dtype=F64))


def test_step_size_with_adaptive_method():
    with pytest.raises(errors.MissingStepSizeError, match="adaptive"):
        solve(method="dopri5", options={"step_size": 0.1})


@pytest.mark.parametrize("kw", [{"rtol": 0.0}, {"atol": -1.0}, {"rtol": float("nan")}])
def test_bad_tolerances(kw):
    with pytest.raises(errors.InvalidProblemError, match="positive"):
        solve(**kw)


def test_bad_sensealg_and_backend():
    with pytest.raises(errors.InvalidProblemError, match="sensealg"):
        solve(sensealg="checkpoint")
    with pytest.raises(errors.InvalidProblemError, match="backend"):
        solve(backend="jax")


def test_errors_subclass_builtins():
    assert issubclass(errors.InvalidProblemError, ValueError)
    assert issubclass(errors.SolverError, RuntimeError)
    assert issubclass(errors.BackendUnavailableError, ImportError)
    assert issubclass(errors.GradientAccuracyWarning, UserWarning)
