"""Batched LU factorisations of the Newton matrices of implicit Runge-Kutta methods.

With J = df/dy given as blocks ``(B, n, n)`` (``jacobian.py``):

* :class:`StageMatrix`  M = I - gamma h J, the matrix of one diagonally implicit stage
  (DIRK/SDIRK/ESDIRK, Rosenbrock: gamma = a_ii);
* :class:`CollocationMatrix`  M = I_s (x) I - h A (x) J for the s coupled stages of a
  fully implicit method (Radau IIA, Gauss-Legendre); with one Jacobian per stage,
  ``Js`` of shape ``(s, B, n, n)``, row block i uses J_i: M_ij = delta_ij I - h a_ij J_i,
  which is exactly dG/dK of G_i(K) = K_i - f(t + c_i h, y + h sum_j a_ij K_j).

Both factor once with ``torch.linalg.lu_factor_ex`` (one batched LU over B) and then
offer ``solve(r)`` (M x = r) and ``solve_transposed(r)`` (M^T x = r, the adjoint of
the stage equations by the implicit function theorem), each O(B m^2) per call, so one
factorisation serves every Newton iteration, stage and step that reuses it.

Right-hand sides are tensors shaped like the state y (StageMatrix) or like the stacked
stages ``(s, *y.shape)`` (CollocationMatrix); the result has the same shape.
A singular matrix raises :class:`~pysciml_grad.errors.SolverError` saying where.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ....errors import SolverError


class SingularMatrixError(SolverError):
    """I - h a_ii J (or I - h A (x) J) is singular: no Newton step can be taken."""


class _LU:
    def __init__(self, M: torch.Tensor, where: str):
        LU, pivots, info = torch.linalg.lu_factor_ex(M)
        if bool((info > 0).any()):
            raise SingularMatrixError(
                f"the Newton matrix of the implicit stages is singular {where} (I - h a_ii J has no inverse "
                "at this step size): use a smaller step size, or check func's Jacobian there"
            )
        self.LU, self.pivots = LU, pivots

    def _solve(self, b: torch.Tensor, adjoint: bool) -> torch.Tensor:
        return torch.linalg.lu_solve(self.LU, self.pivots, b.unsqueeze(-1), adjoint=adjoint).squeeze(-1)


class StageMatrix(_LU):
    """LU of M = I - gamma_h J (``gamma_h`` = gamma * h, a Python float), J: (B, n, n)."""

    def __init__(self, J: torch.Tensor, gamma_h: float, where: str = ""):
        self.B, self.n = J.shape[0], J.shape[1]
        self.gamma_h = gamma_h
        eye = torch.eye(self.n, dtype=J.dtype, device=J.device)
        super().__init__(eye - gamma_h * J, where)

    def solve(self, r: torch.Tensor) -> torch.Tensor:
        return self._solve(r.reshape(self.B, self.n), False).reshape(r.shape)

    def solve_transposed(self, r: torch.Tensor) -> torch.Tensor:
        return self._solve(r.reshape(self.B, self.n), True).reshape(r.shape)


def collocation_matrix(J: torch.Tensor, h: float, A: Sequence[Sequence[float]]) -> torch.Tensor:
    """I - h A (x) J per block, ``(B, s n, s n)``; J is ``(B, n, n)`` or per stage ``(s, B, n, n)``."""
    s = len(A)
    At = torch.tensor(A, dtype=J.dtype, device=J.device)
    if J.dim() == 3:
        J = J.unsqueeze(0).expand(s, *J.shape)
    _, B, n, _ = J.shape
    # [b, i, p, j, q] = delta_ij delta_pq - h a_ij J_i[b, p, q]
    blocks = J.permute(1, 0, 2, 3).unsqueeze(3) * At.view(1, s, 1, s, 1)
    eye = torch.eye(s * n, dtype=J.dtype, device=J.device)
    return eye - h * blocks.reshape(B, s * n, s * n)


class CollocationMatrix(_LU):
    """LU of M = I - h A (x) J (see module docstring); right-hand sides ``(s, *y.shape)``."""

    def __init__(self, J: torch.Tensor, h: float, A: Sequence[Sequence[float]], where: str = ""):
        self.s = len(A)
        self.B, self.n = J.shape[-3], J.shape[-2]
        super().__init__(collocation_matrix(J, h, A), where)

    def _pack(self, r: torch.Tensor) -> torch.Tensor:
        return r.reshape(self.s, self.B, self.n).transpose(0, 1).reshape(self.B, self.s * self.n)

    def _unpack(self, x: torch.Tensor, shape) -> torch.Tensor:
        return x.reshape(self.B, self.s, self.n).transpose(0, 1).reshape(shape)

    def solve(self, r: torch.Tensor) -> torch.Tensor:
        return self._unpack(self._solve(self._pack(r), False), r.shape)

    def solve_transposed(self, r: torch.Tensor) -> torch.Tensor:
        return self._unpack(self._solve(self._pack(r), True), r.shape)


def apply_blocks(J: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """J x for blocks J ``(B, n, n)`` and x shaped like the state (numel B n)."""
    B, n = J.shape[0], J.shape[1]
    return torch.bmm(J, x.reshape(B, n, 1)).reshape(x.shape)


class LeadingBlock:
    """A Newton matrix whose Jacobian is zero outside the leading ``m`` entries of the
    state (the last dimension): ``inner`` acts on those, the identity on the rest. The
    adjoint systems use it for their [y, a | dL/dtheta] states: dL/dtheta never feeds back,
    so its block of the matrix is the identity whatever the size of theta."""

    def __init__(self, inner, m: int):
        self.inner, self.m = inner, m

    def _apply(self, r: torch.Tensor, how) -> torch.Tensor:
        head = how(r[..., : self.m].contiguous())
        return torch.cat([head, r[..., self.m :]], dim=-1)

    def solve(self, r: torch.Tensor) -> torch.Tensor:
        return self._apply(r, self.inner.solve)

    def solve_transposed(self, r: torch.Tensor) -> torch.Tensor:
        return self._apply(r, self.inner.solve_transposed)
