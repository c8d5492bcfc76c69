"""Rosenbrock (linearly implicit) methods: the table type, one generic step, the dense output.

An s-stage Rosenbrock method in the form of Hairer & Wanner (*Solving ODEs II*, IV.7,
eq. (7.4')-(7.5), the variables U_i) and of OrdinaryDiffEq.jl's ``RodasTableau``:

    (I - gamma h J) k_i = gamma h [ f(t + c_i h, y + sum_{j<i} A_ij k_j)
                                    + d_i h f_t + sum_{j<i} (C_ij / h) k_j ],
    y_{n+1} = y_n + sum_i b_i k_i,        err = sum_i btilde_i k_i,

with J = df/dy(t_n, y_n) and f_t = df/dt(t_n, y_n) (non-autonomous f), one LU
factorisation of I - gamma h J per step shared by all stages, and no Newton iteration.
The stiffly accurate Rodas methods have b = last row of A plus 1 and btilde = e_s, and
the continuous extension (Steinebach's stiff-aware dense output)

    y(t_n + theta h) = (1 - theta) y_n + theta (y_{n+1} + (1 - theta)(kd_1 + theta (kd_2 + theta kd_3 ...)))

with kd_j = sum_i H_ji k_i. Tables without H use cubic Hermite interpolation.

Gradient: the step is an explicit function of y_n (J and f_t come from
``torch.func.jacrev``, the solve from a differentiable LU), so autograd through a
replayed step differentiates J(y_n) too (the d(J)/dy . v terms): CheckpointAdjoint and
DirectAD give the exact gradient of the discrete Rosenbrock map, not of a frozen-W
(W-method) map.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch

from .implicit.jacobian import DenseJacobian, JacobianStrategy
from .stepping import hermite, lincomb

Scalar = Union[float, torch.Tensor]
Row = Tuple[float, ...]
RHS = Callable[[Scalar, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class RosenbrockTableau:
    """One Rosenbrock method (formulas in the module docstring).

    ``A``/``C`` hold the strictly lower-triangular rows 2..s (``A[i-1]`` has i entries),
    ``d`` the time-derivative coefficients (gamma_i, the row sums of Hairer-Wanner's
    Gamma), ``H`` the dense-output rows (empty: Hermite). ``b_err`` = btilde;
    ``error_order`` is the order of the embedded solution (the controller's exponent).
    """

    name: str
    order: int
    gamma: float
    c: Row
    A: Tuple[Row, ...]
    C: Tuple[Row, ...]
    d: Row
    b: Row
    b_err: Optional[Row]
    error_order: Optional[int]
    H: Tuple[Row, ...] = ()
    fsal: bool = False
    #: How J is obtained (options 'jac' / 'jacobian'); None: the dense J with df/dt in one pass.
    jacobian: Optional[JacobianStrategy] = None

    #: The loops' flag: options 'jac' / 'jacobian' are read (``forward.Method.uses_jacobian``).
    uses_jacobian = True

    @property
    def stages(self) -> int:
        return len(self.c)

    def bound(self, jacobian: JacobianStrategy, rtol: float, atol: float, max_iters: int) -> "RosenbrockTableau":
        """The table with this solve's Jacobian strategy (no Newton, so no tolerances or cap)."""
        return replace(self, jacobian=None if type(jacobian) is DenseJacobian else jacobian)

    @property
    def adaptive(self) -> bool:
        return self.b_err is not None

    # The loops and replays call these two through ``stepping.method_step`` / ``dense_eval``.
    def step(self, rhs: RHS, t: Scalar, y: torch.Tensor, h: Scalar, k0: Optional[torch.Tensor] = None,
             err_graph: bool = True, perturb_start: bool = False, perturb_end: bool = False):
        return rosenbrock_step(rhs, self, t, y, h, k0, err_graph)

    def interpolate(self, theta: Scalar, h: Scalar, y: torch.Tensor, y_next: torch.Tensor,
                    ks: Sequence[torch.Tensor], f_next: Callable[[], torch.Tensor]) -> torch.Tensor:
        if not self.H:
            return hermite(theta, h, y, y_next, ks[0], f_next())
        stages = ks[1:]
        kd = [_combine(row, stages) for row in self.H]
        acc = kd[-1]
        for k in reversed(kd[:-1]):
            acc = k + theta * acc
        return (1 - theta) * y + theta * (y_next + (1 - theta) * acc)


def _combine(coeffs: Sequence[float], ks: Sequence[torch.Tensor]) -> torch.Tensor:
    terms = [(c, k) for c, k in zip(coeffs, ks) if c != 0.0]
    acc = terms[0][1] * terms[0][0]
    for c, k in terms[1:]:
        acc = acc + c * k
    return acc


class _FactoredSolve(torch.autograd.Function):
    """x = M^{-1} b from M's LU factors, differentiable in M and b (batched: M (B, n, n), b (B, n, 1)).

    autograd's own backward of ``lu_factor``/``lu_solve`` re-derives the factors' adjoint
    (32 ms per 3x3 solve measured here, against 0.06 ms for the factorisation); the
    solution's adjoint needs only one transposed solve with the same factors:
    g_b = M^{-T} g_x,  g_M = -g_b x^T.
    """

    @staticmethod
    def forward(ctx, M, LU, piv, b):  # type: ignore[override]
        x = torch.linalg.lu_solve(LU, piv, b)
        ctx.save_for_backward(LU, piv, x)
        return x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):  # type: ignore[override]
        LU, piv, x = ctx.saved_tensors
        gb = torch.linalg.lu_solve(LU, piv, g, adjoint=True)
        gM = -gb @ x.mT if ctx.needs_input_grad[0] else None
        return gM, None, None, gb


def jacobian_and_time_derivative(rhs: RHS, t: Scalar, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(J, f_t): df/dy as an (N, N) matrix over the flattened state and df/dt as an (N,)
    vector at (t, y): one evaluation of f and N vector-Jacobian products batched into one
    backward pass (``is_grads_batched``: 0.9 ms against 2.3 ms for ``torch.func.jacrev``
    on a 2-state problem here), a row-by-row loop when func's backward cannot be batched.

    With grad enabled the results carry the graph (``create_graph``) to y, t and func's
    parameters, so a step differentiated by autograd includes dJ/dy and dJ/dtheta.
    """
    graph = torch.is_grad_enabled()
    with torch.enable_grad():
        yv = y if (graph and y.requires_grad) else y.detach().requires_grad_(True)
        if isinstance(t, torch.Tensor) and graph and t.requires_grad:
            tv = t.to(y.dtype)
        else:
            tv = (t.detach() if isinstance(t, torch.Tensor) else torch.tensor(float(t))).to(y.dtype).requires_grad_(True)
        out = rhs(tv, yv).reshape(-1)
        n = out.numel()
        eye = torch.eye(n, dtype=out.dtype, device=out.device)
        try:
            ft, J = torch.autograd.grad(out, (tv, yv), eye, retain_graph=True, create_graph=graph,
                                        is_grads_batched=True, materialize_grads=True)
        except RuntimeError:
            rows = [torch.autograd.grad(out, (tv, yv), eye[i], retain_graph=True, create_graph=graph,
                                        materialize_grads=True) for i in range(n)]
            ft = torch.stack([r[0] for r in rows])
            J = torch.stack([r[1] for r in rows])
    # An input f does not read comes back as one unbatched zero (materialize_grads).
    J = J.reshape(n, n) if J.numel() == n * n else torch.zeros(n, n, dtype=out.dtype, device=out.device)
    ft = ft.reshape(n) if ft.numel() == n else torch.zeros(n, dtype=out.dtype, device=out.device)
    return J, ft


def time_derivative(rhs: RHS, t: Scalar, y: torch.Tensor) -> torch.Tensor:
    """df/dt at (t, y), shaped like y, by two reverse passes (u -> <u, df/dt> is linear in u,
    so its gradient in u is df/dt); with the graph (``create_graph``) when grad is enabled.
    Zero when f does not read t."""
    graph = torch.is_grad_enabled()
    with torch.enable_grad():
        if isinstance(t, torch.Tensor) and graph and t.requires_grad:
            tv = t.to(y.dtype)
        else:
            tv = (t.detach() if isinstance(t, torch.Tensor) else torch.tensor(float(t))).to(y.dtype).requires_grad_(True)
        out = rhs(tv, y if graph else y.detach())
        u = torch.zeros_like(out, requires_grad=True)
        (g,) = torch.autograd.grad(out, tv, u, create_graph=True, allow_unused=True)
        if g is None or not g.requires_grad:
            return torch.zeros_like(y)
        (ft,) = torch.autograd.grad(g, u, create_graph=graph, allow_unused=True)
    return torch.zeros_like(y) if ft is None else ft.view(y.shape)


def jacobian_blocks(strategy: Optional[JacobianStrategy], rhs: RHS, t: Scalar, y: torch.Tensor):
    """(J as blocks (B, n, n), df/dt shaped like y), with the graph when grad is enabled.

    No strategy (the default dense J): one evaluation and one batched backward pass give both
    (``jacobian_and_time_derivative``). A strategy (block diagonal per sample, the user's
    ``jac``) gives J in its own layout, never the dense (B n)^2 matrix, and df/dt comes apart.
    """
    if strategy is None:
        J, ft = jacobian_and_time_derivative(rhs, t, y)
        return J.unsqueeze(0), ft.view(y.shape)
    return strategy.with_graph(rhs, t, y), time_derivative(rhs, t, y)


def rosenbrock_step(
    rhs: RHS,
    tab: RosenbrockTableau,
    t: Scalar,
    y: torch.Tensor,
    h: Scalar,
    k0: Optional[torch.Tensor] = None,
    err_graph: bool = True,
) -> Tuple[torch.Tensor, List[torch.Tensor], Optional[torch.Tensor]]:
    """One Rosenbrock step from (t, y) with step h; returns ``(y_next, ks, err)`` like
    ``stepping.rk_step``: ``ks[0]`` = f(t, y), ``ks[1:]`` the stage increments k_i
    (what the dense output combines), ``err`` = sum btilde_i k_i (None for fixed-step tables).
    """
    if k0 is None:
        k0 = rhs(t, y)
    gh = tab.gamma * h
    system = getattr(rhs, "linear_system", None)
    if system is not None:
        # A right-hand side that knows the structure of its Jacobian (the continuous adjoints'
        # augmented systems, adjoints/continuous.py) solves with it; f_t is then left out.
        solve_flat = system(t, y, gh)
        ft = torch.zeros_like(y)

        def solve(r: torch.Tensor) -> torch.Tensor:
            return solve_flat((gh * r).reshape(-1)).view(y.shape)
    else:
        J, ft = jacobian_blocks(tab.jacobian, rhs, t, y)
        B, n = J.shape[0], J.shape[1]
        eye = torch.eye(n, dtype=J.dtype, device=J.device)
        M = eye - gh * J
        LU, piv = torch.linalg.lu_factor(M.detach())  # one batched LU of B blocks n x n

        def solve(r: torch.Tensor) -> torch.Tensor:
            return _FactoredSolve.apply(M, LU, piv, (gh * r).reshape(B, n, 1)).view(y.shape)

    ks: List[torch.Tensor] = []
    for i in range(tab.stages):
        if i == 0:
            f_i = k0
        else:
            u_i = lincomb(y, 1.0, tab.A[i - 1], ks)
            f_i = rhs(t + tab.c[i] * h, u_i)
        r = f_i
        if tab.d[i] != 0.0:
            r = r + (tab.d[i] * h) * ft
        if i > 0:
            terms = [(cij, k) for cij, k in zip(tab.C[i - 1], ks) if cij != 0.0]
            if terms:
                r = r + _combine([cij for cij, _ in terms], [k for _, k in terms]) / h
        ks.append(solve(r))
    y_next = lincomb(y, 1.0, tab.b, ks)
    err = None
    if tab.b_err is not None:
        with torch.set_grad_enabled(err_graph and torch.is_grad_enabled()):
            err = _combine(tab.b_err, ks)
    return y_next, [k0, *ks], err
