"""LBFGS with a strong-Wolfe line search: the polishing step of a UDE fit.

Adam finds the basin; a quasi-Newton method then converges in it far faster, because a
UDE loss near its minimum is a smooth, ill-conditioned least-squares problem. This is the
recipe of the SciML "missing physics" showcase (Adam, then LBFGS; SciML/SciMLDocs,
``docs/src/showcase/missing_physics.md`` at commit 03cc6d9eb54799ff097f8b32886ccbca760c494f)
and of Rackauckas et al. (2020), "Universal differential equations for scientific
machine learning" (Adam, then BFGS), written with ``torch.optim.LBFGS``.

Reference: Nocedal & Wright, *Numerical Optimization* (2006), ch. 7 (L-BFGS) and 3.5
(strong Wolfe conditions).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, List, Optional

import torch

from ..errors import InvalidProblemError


def fit_lbfgs(
    params: Iterable[torch.Tensor],
    loss_fn: Callable[[], torch.Tensor],
    *,
    max_iter: int = 200,
    history_size: int = 50,
    tolerance_grad: float = 1e-9,
    tolerance_change: float = 1e-12,
    chunk: int = 10,
    callback: Optional[Callable[[int, float], None]] = None,
) -> Dict[str, object]:
    """Minimise ``loss_fn()`` over ``params`` with ``torch.optim.LBFGS`` (strong Wolfe).

    ``loss_fn`` takes no argument and returns the scalar loss built from ``params`` (it is
    re-evaluated by the line search, so it must be deterministic: no dropout, no fresh
    minibatch). The optimisation runs ``chunk`` LBFGS iterations per ``optimizer.step``
    (the curvature history is kept across chunks), calls ``callback(iteration, loss)``
    after each chunk, and stops after ``max_iter`` iterations or when LBFGS stops early
    (gradient below ``tolerance_grad`` or change below ``tolerance_change``).

    Returns ``{"losses": [loss at each evaluation], "iterations": n, "evaluations": m,
    "final_loss": value}``.
    """
    params = [p for p in params]
    if not params or not all(isinstance(p, torch.Tensor) and p.requires_grad for p in params):
        raise InvalidProblemError("params must be a non-empty iterable of tensors with requires_grad=True")
    if max_iter < 1 or chunk < 1:
        raise InvalidProblemError(f"max_iter and chunk must be >= 1, got {max_iter} and {chunk}")
    opt = torch.optim.LBFGS(
        params, lr=1.0, max_iter=chunk, history_size=history_size, tolerance_grad=tolerance_grad,
        tolerance_change=tolerance_change, line_search_fn="strong_wolfe",
    )
    losses: List[float] = []

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        losses.append(float(loss.detach()))
        return loss

    group, first = opt.param_groups[0], params[0]
    done = 0
    while done < max_iter:
        before = opt.state[first].get("n_iter", 0)
        group["max_iter"] = min(chunk, max_iter - done)
        # the evaluation cap is generous so that only max_iter or a tolerance ends a chunk
        group["max_eval"] = 25 * group["max_iter"]
        opt.step(closure)
        ran = opt.state[first]["n_iter"] - before
        done += ran
        if callback is not None:
            callback(done, losses[-1])
        if ran < group["max_iter"] or not math.isfinite(losses[-1]):
            break  # LBFGS met a tolerance (or the loss left the finite numbers)
    return {"losses": losses, "iterations": done, "evaluations": len(losses), "final_loss": losses[-1]}
