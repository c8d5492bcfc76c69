"""Implicit and linearly implicit methods of the torch engine: Jacobians, Newton matrices.

API for the methods built on this package (implicit RK stages, Rosenbrock, ESDIRK)::

    from pysciml_grad.backends.torch.implicit import (
        DenseJacobian, BlockDiagonalJacobian, UserJacobian, strategy_from_options,
        StageMatrix, CollocationMatrix, apply_blocks)

    jacobian = strategy_from_options(opts.jac, opts.jacobian)   # the user's choice, checked
    J = jacobian(rhs, t, y)              # df/dy as blocks (B, n, n), no graph; B * n = y.numel()
    M = StageMatrix(J, gamma * h, where=f"at t={t:.6g}")   # LU of I - gamma h J (batched over B)
    x = M.solve(r)                       # r, x shaped like y
    lam = M.solve_transposed(g)          # (I - gamma h J)^T lam = g
    Jx = apply_blocks(J, x)              # J x, x shaped like y
    C = CollocationMatrix(J, h, A)       # I - h A (x) J; J (B,n,n) or one per stage (s,B,n,n)
    X = C.solve(R)                       # R, X shaped (s, *y.shape)

``rhs`` is any ``f(t, y)`` (the counting wrapper of the loops is fine: one Jacobian
counts as one evaluation). The strategies never build a dense (B n)^2 matrix for
``BlockDiagonalJacobian``. A singular Newton matrix raises ``SolverError`` naming ``where``.
User spelling: ``options={"jacobian": psg.BlockDiagonalJacobian()}`` or
``options={"jac": jac}`` (``jac(t, y)`` returns (N, N), ``y.shape * 2`` or (B, n, n)).
"""

from .jacobian import (
    BlockDiagonalJacobian,
    DenseJacobian,
    JacobianStrategy,
    UserJacobian,
    strategy_from_options,
)
from .linalg import CollocationMatrix, StageMatrix, apply_blocks, collocation_matrix

__all__ = [
    "JacobianStrategy", "DenseJacobian", "BlockDiagonalJacobian", "UserJacobian", "strategy_from_options",
    "StageMatrix", "CollocationMatrix", "apply_blocks", "collocation_matrix",
]
