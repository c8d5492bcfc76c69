"""The Python half of the zero-copy bridge (``pysciml_grad.bridge``) and of the
torch right-hand side called from Julia (``backends/julia/callbacks.py``).

Oracle for every zero-copy claim: the data pointers are equal, and a write through one
view is seen through the other. Column-major buffers from Julia are represented here
by Fortran-ordered numpy arrays: juliacall exposes a Julia ``Array`` through exactly
that buffer layout (the Julia side of the claim is tested in test_julia_integration.py).
"""

import numpy as np
import pytest
import torch

from pysciml_grad import bridge
from pysciml_grad.backends.julia.callbacks import TorchRHSCallbacks, flat_parameters, split_parameter_gradient

F64 = torch.float64


# --- torch -> Julia (CPU) -------------------------------------------------------------


def test_batch_becomes_column_major_matrix_without_copy():
    x = torch.arange(12, dtype=F64).reshape(4, 3)  # (B, D) = (4, 3)
    v = bridge.torch_to_julia_cpu(x)
    assert v.shape == (3, 4) and v.flags.f_contiguous
    assert bridge.shares_memory(v, x)
    for b in range(4):
        for d in range(3):
            assert v[d, b] == x[b, d]  # Julia's X[d+1, b+1]
    v[2, 1] = -1.0  # Julia writing into its view is seen by torch
    assert x[1, 2] == -1.0


def test_higher_rank_reverses_all_axes():
    x = torch.randn(5, 4, 3, dtype=F64)
    v = bridge.torch_to_julia_cpu(x)
    assert v.shape == (3, 4, 5) and v.flags.f_contiguous and bridge.shares_memory(v, x)
    assert bridge.julia_shape(x.shape) == v.shape


def test_tensor_requiring_grad_is_detached_not_copied():
    x = torch.randn(3, 2, dtype=F64, requires_grad=True)
    v = bridge.torch_to_julia_cpu(x)
    assert bridge.shares_memory(v, x)


def test_non_contiguous_tensor_is_copied_once_into_the_right_layout():
    x = torch.randn(3, 4, dtype=F64).t()  # (4, 3), transposed strides
    v = bridge.torch_to_julia_cpu(x)
    assert not bridge.shares_memory(v, x)
    assert v.flags.f_contiguous and v.shape == (3, 4)
    assert np.array_equal(v.T, x.numpy())


def test_zero_dimensional_state_travels_as_a_vector():
    x = torch.tensor(2.5, dtype=F64)
    v = bridge.torch_to_julia_cpu(x)
    assert v.shape == (1,) and v[0] == 2.5 and bridge.shares_memory(v, x)


def test_cpu_path_refuses_cuda_and_vice_versa():
    with pytest.raises(ValueError, match="CUDA"):
        bridge.torch_to_julia_cuda(torch.ones(2))
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="CPU"):
            bridge.torch_to_julia_cpu(torch.ones(2, device="cuda"))


# --- Julia -> torch (CPU) -------------------------------------------------------------


def julia_array(*size):
    """A buffer laid out like a Julia Array of this size (column-major)."""
    return np.asfortranarray(np.random.default_rng(0).standard_normal(size))


def test_julia_result_becomes_row_major_tensor_without_copy():
    ys = julia_array(3, 4, 5)  # Julia (D, B, T)
    out = bridge.julia_to_torch_cpu(ys)
    assert out.shape == (5, 4, 3) and out.is_contiguous()
    assert bridge.shares_memory(out, ys)
    assert out[4, 1, 2] == ys[2, 1, 4]
    out[0, 0, 0] = 7.0
    assert ys[0, 0, 0] == 7.0


def test_reshape_to_the_user_shape_is_a_view():
    ys = julia_array(1, 6)  # a 0-d state saved at 6 times
    out = bridge.from_julia(ys, (6,))
    assert out.shape == (6,) and bridge.shares_memory(out, ys)


def test_round_trip_is_the_same_memory():
    x = torch.randn(8, 3, dtype=F64)
    back = bridge.from_julia(bridge.to_julia(x))
    assert back.shape == x.shape and bridge.shares_memory(back, x)


def test_row_major_buffer_breaks_the_contract():
    with pytest.raises(ValueError, match="column-major"):
        bridge.julia_to_torch_cpu(np.ascontiguousarray(np.ones((3, 4))))


def test_read_only_buffer_is_copied_not_aliased():
    a = julia_array(2, 3)
    a.flags.writeable = False
    out = bridge.julia_to_torch_cpu(a)
    assert not bridge.shares_memory(out, a) and torch.equal(out, torch.from_numpy(a.T.copy()))


def test_torch_tensors_from_dlpack_pass_through_from_julia():
    t = torch.randn(4, 3, dtype=F64)
    assert bridge.from_julia(t) is t
    assert bridge.shares_memory(bridge.from_julia(t, (12,)), t)


# --- CUDA (DLPack) --------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available on this machine")
def test_cuda_tensor_is_handed_over_contiguous_and_uncopied():
    x = torch.randn(6, 4, dtype=F64, device="cuda")
    h = bridge.to_julia(x)
    assert h.data_ptr() == x.data_ptr() and h.is_contiguous()
    capsule_view = torch.from_dlpack(h)  # what DLPack.jl receives is this memory
    assert capsule_view.data_ptr() == x.data_ptr()
    nc = x.t()
    h2 = bridge.to_julia(nc)
    assert h2.is_contiguous() and torch.equal(h2, nc)


# --- the torch right-hand side called from Julia --------------------------------------


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.W = torch.nn.Parameter(torch.randn(3, 3, generator=g, dtype=F64))
        self.b = torch.nn.Parameter(torch.randn(3, generator=g, dtype=F64))
        self.frozen = torch.nn.Parameter(torch.randn(3, generator=g, dtype=F64), requires_grad=False)

    def forward(self, t, y):
        return torch.tanh(y @ self.W.T + self.b) * (1 + t) + self.frozen


def make_callbacks(net=None, B=4):
    net = net or Net()
    return net, TorchRHSCallbacks(net, list(net.parameters()), (B, 3), F64, torch.device("cpu"))


def test_f_writes_into_julias_buffer():
    net, cb = make_callbacks()
    u = julia_array(3, 4)  # Julia's D x B state
    du = np.asfortranarray(np.zeros((3, 4)))
    address = du.__array_interface__["data"][0]
    cb.f(du, u, 0.3)
    expected = net(torch.tensor(0.3, dtype=F64), torch.from_numpy(u.T))
    assert np.allclose(du.T, expected.detach().numpy(), rtol=1e-15, atol=0)
    assert du.__array_interface__["data"][0] == address and cb.nfe == 1


def test_vjp_matches_autograd_and_packs_parameters_in_order():
    net, cb = make_callbacks()
    u, v = julia_array(3, 4), np.asfortranarray(np.random.default_rng(5).standard_normal((3, 4)))
    n_p = sum(p.numel() for p in net.parameters())
    vu, vp = np.asfortranarray(np.zeros((3, 4))), np.full(n_p, np.nan)
    cb.vjp(vu, vp, u, 0.7, v)
    y = torch.from_numpy(u.T.copy()).requires_grad_(True)
    out = net(torch.tensor(0.7, dtype=F64), y)
    gy, gW, gb = torch.autograd.grad(out, (y, net.W, net.b), torch.from_numpy(v.T.copy()))
    assert np.allclose(vu.T, gy.numpy(), rtol=1e-14, atol=1e-15)
    assert np.allclose(vp[:9], gW.reshape(-1).numpy(), rtol=1e-14, atol=1e-15)
    assert np.allclose(vp[9:12], gb.numpy(), rtol=1e-14, atol=1e-15)
    assert np.all(vp[12:] == 0.0)  # a frozen parameter gets no gradient
    assert cb.nvjp == 1


def test_vjp_without_parameters_zeroes_the_placeholder():
    cb = TorchRHSCallbacks(lambda t, y: -2.0 * y, [], (2,), F64, torch.device("cpu"))
    vu, vp = np.zeros(2), np.full(1, np.nan)
    cb.vjp(vu, vp, np.ones(2), 0.0, np.array([1.0, 3.0]))
    assert np.array_equal(vu, [-2.0, -6.0]) and vp[0] == 0.0


def test_parameter_count_mismatch_is_an_error():
    net, cb = make_callbacks()
    with pytest.raises(RuntimeError, match="parameter vector"):
        cb.vjp(np.zeros((3, 4), order="F"), np.zeros(5), julia_array(3, 4), 0.0, julia_array(3, 4))


def test_exceptions_are_kept_for_the_executor():
    def bad(t, y):
        raise ValueError("boom inside func")

    cb = TorchRHSCallbacks(bad, [], (2,), F64, torch.device("cpu"))
    with pytest.raises(ValueError, match="boom"):
        cb.f(np.zeros(2), np.ones(2), 0.0)
    assert isinstance(cb.error, ValueError)


def test_wrong_output_shape_is_reported():
    cb = TorchRHSCallbacks(lambda t, y: y[:1], [], (2,), F64, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="shape"):
        cb.f(np.zeros(2), np.ones(2), 0.0)


def test_time_is_a_tensor_of_the_state_dtype():
    seen = []

    def f(t, y):
        seen.append(t)
        return y

    cb = TorchRHSCallbacks(f, [], (2,), torch.float32, torch.device("cpu"))
    cb.f(np.zeros(2, dtype=np.float32), np.ones(2, dtype=np.float32), 0.5)
    assert isinstance(seen[0], torch.Tensor) and seen[0].dtype == torch.float32 and seen[0].dim() == 0


def test_flat_parameters_round_trip():
    net = Net()
    params = list(net.parameters())
    flat = flat_parameters(params, F64, torch.device("cpu"))
    assert flat.shape == (15,)
    back = split_parameter_gradient(flat, params)
    assert torch.equal(back[0], net.W.detach()) and torch.equal(back[1], net.b.detach())
    assert back[2] is None  # frozen
    assert flat_parameters([], F64, torch.device("cpu")).shape == (1,)
