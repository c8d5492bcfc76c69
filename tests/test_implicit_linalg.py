"""The Jacobian strategies and Newton-matrix factorisations of backends/torch/implicit."""

import pytest
import torch

import pysciml_grad as psg
from pysciml_grad.backends.torch.implicit import (
    CollocationMatrix, StageMatrix, apply_blocks, collocation_matrix, strategy_from_options,
)
from pysciml_grad.errors import InvalidProblemError, RHSOutputError, SolverError, UnknownOptionError

D = torch.float64


def test_dense_jacobian_matches_analytic():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 4, generator=g, dtype=D)
    y = torch.randn(4, generator=g, dtype=D)
    t = 0.7

    def f(t, y):
        return A @ y + t * torch.sin(y)

    J = psg.DenseJacobian()(f, t, y)
    assert J.shape == (1, 4, 4)
    exact = A + t * torch.diag(torch.cos(y))
    assert torch.allclose(J[0], exact, atol=1e-14)


def test_dense_jacobian_matches_autograd_on_mlp_state_matrix():
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    y = torch.randn(2, 3, dtype=D)
    f = lambda t, y: net(y) * (1 + t)  # noqa: E731
    J = psg.DenseJacobian()(f, 0.3, y)
    ref = torch.autograd.functional.jacobian(lambda v: f(0.3, v.view(2, 3)).reshape(-1), y.reshape(-1))
    assert torch.allclose(J[0], ref, atol=1e-13)
    assert not J.requires_grad


def test_dense_jacobian_falls_back_when_func_cannot_be_vmapped():
    def f(t, y):
        scale = float(y.abs().sum().item())  # .item() is not allowed under vmap
        return -y * (1.0 + 0.0 * scale)

    J = psg.DenseJacobian()(f, 0.0, torch.ones(3, dtype=D))
    assert torch.allclose(J[0], -torch.eye(3, dtype=D))


def test_block_diagonal_equals_dense_on_independent_batch():
    torch.manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Linear(2, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)).double()
    y = torch.randn(5, 2, dtype=D)
    f = lambda t, y: net(y) - t * y  # noqa: E731
    Jb = psg.BlockDiagonalJacobian()(f, 0.4, y)
    Jd = psg.DenseJacobian()(f, 0.4, y)[0]
    assert Jb.shape == (5, 2, 2)
    assert torch.allclose(torch.block_diag(*Jb), Jd, atol=1e-14)
    # The solves agree too: the block LU is the dense LU of a block-diagonal matrix.
    r = torch.randn(5, 2, dtype=D)
    xb = StageMatrix(Jb, 0.3).solve(r)
    xd = StageMatrix(Jd.unsqueeze(0), 0.3).solve(r)
    assert torch.allclose(xb, xd, atol=1e-13)


def test_user_jacobian_shapes():
    y = torch.randn(2, 3, dtype=D)
    M = torch.randn(6, 6, dtype=D)
    assert psg.UserJacobian(lambda t, y: M)(None, 0.0, y).shape == (1, 6, 6)
    assert psg.UserJacobian(lambda t, y: M.view(2, 3, 2, 3))(None, 0.0, y).shape == (1, 6, 6)
    blocks = torch.randn(2, 3, 3, dtype=D)
    assert torch.equal(psg.UserJacobian(lambda t, y: blocks)(None, 0.0, y), blocks)
    with pytest.raises(RHSOutputError, match=r"\(6, 6\)"):
        psg.UserJacobian(lambda t, y: torch.zeros(3, 3, dtype=D))(None, 0.0, y)
    with pytest.raises(RHSOutputError, match="dtype"):
        psg.UserJacobian(lambda t, y: M.float())(None, 0.0, y)


def test_stage_matrix_solves_and_transposed_solves():
    g = torch.Generator().manual_seed(3)
    J = torch.randn(3, 4, 4, generator=g, dtype=D)
    r = torch.randn(3, 4, generator=g, dtype=D)
    M = torch.eye(4, dtype=D) - 0.25 * J
    S = StageMatrix(J, 0.25)
    assert torch.allclose(torch.bmm(M, S.solve(r).unsqueeze(-1)).squeeze(-1), r, atol=1e-12)
    assert torch.allclose(torch.bmm(M.transpose(1, 2), S.solve_transposed(r).unsqueeze(-1)).squeeze(-1), r, atol=1e-12)
    assert torch.allclose(apply_blocks(J, r), torch.bmm(J, r.unsqueeze(-1)).squeeze(-1))


def test_collocation_matrix_is_kronecker_product():
    g = torch.Generator().manual_seed(4)
    A = [[5 / 12, -1 / 12], [3 / 4, 1 / 4]]
    J = torch.randn(1, 3, 3, generator=g, dtype=D)
    h = 0.2
    ref = torch.eye(6, dtype=D) - h * torch.kron(torch.tensor(A, dtype=D), J[0])
    assert torch.allclose(collocation_matrix(J, h, A)[0], ref, atol=1e-15)
    # Per-stage Jacobians: row block i uses J_i (dG_i/dK_j = delta_ij I - h a_ij J_i).
    Js = torch.randn(2, 1, 3, 3, generator=g, dtype=D)
    M = collocation_matrix(Js, h, A)[0]
    for i in range(2):
        for j in range(2):
            blk = M[3 * i:3 * i + 3, 3 * j:3 * j + 3]
            assert torch.allclose(blk, (i == j) * torch.eye(3, dtype=D) - h * A[i][j] * Js[i, 0])
    R = torch.randn(2, 3, generator=g, dtype=D)
    C = CollocationMatrix(Js, h, A)
    X = C.solve(R)
    assert torch.allclose(M @ X.reshape(-1), R.reshape(-1), atol=1e-12)
    Xt = C.solve_transposed(R)
    assert torch.allclose(M.T @ Xt.reshape(-1), R.reshape(-1), atol=1e-12)


def test_collocation_matrix_batched_layout():
    g = torch.Generator().manual_seed(5)
    A = [[0.3, 0.1], [0.5, 0.2]]
    Jb = torch.randn(4, 2, 2, generator=g, dtype=D)
    R = torch.randn(2, 4, 2, generator=g, dtype=D)  # (s, B, n)
    Xb = CollocationMatrix(Jb, 0.1, A).solve(R)
    Xd = CollocationMatrix(torch.block_diag(*Jb).unsqueeze(0), 0.1, A).solve(R)
    assert torch.allclose(Xb, Xd, atol=1e-13)


def test_singular_newton_matrix_raises_solver_error():
    J = torch.eye(2, dtype=D).unsqueeze(0)
    with pytest.raises(SolverError, match="smaller step size"):
        StageMatrix(J, 1.0, where="at t=0.5")


def test_options_validation():
    f = lambda t, y: -y  # noqa: E731
    y0, t = torch.ones(2, dtype=D), torch.linspace(0, 1, 3, dtype=D)
    with pytest.raises(InvalidProblemError, match="BlockDiagonalJacobian"):
        psg.odeint(f, y0, t, method="dopri5", options={"jacobian": "blockdiag"})
    with pytest.raises(InvalidProblemError, match="give one of them"):
        psg.odeint(f, y0, t, method="dopri5", options={"jac": lambda t, y: -torch.eye(2), "jacobian": psg.DenseJacobian()})
    with pytest.raises(InvalidProblemError, match="jac"):
        psg.odeint(f, y0, t, method="dopri5", options={"jac": 3})
    with pytest.raises(UnknownOptionError, match="does not read them"):
        psg.odeint(f, y0, t, method="dopri5", options={"jacobian": psg.BlockDiagonalJacobian()})
    assert isinstance(strategy_from_options(None, None), psg.DenseJacobian)
    assert isinstance(strategy_from_options(f, None), psg.UserJacobian)
