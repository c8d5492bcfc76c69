"""The forward solve of the torch engine: method lookup, option parsing, the first
right-hand-side evaluation (which validates ``func``) and the choice of loop.

Every sensealg starts here; they differ only in what is recorded and what graph is
kept (see ``adjoints/``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, Union

import torch

from ...errors import MissingStepSizeError, NonFiniteStateError, UnknownMethodError, UnknownOptionError
from ...problem import ODEProblem, SolveStats, check_rhs_output
from .callbacks import warn_unsupported
from .control import SolverOptions
from . import compiled, progress
from .integrate import CountingRHS, Counters, Record, as_float, integrate_adaptive, integrate_fixed
from .adams import ADAMS_METHODS, AdamsSpec, integrate_adams
from .stepping import nudge
from .rosenbrock import RosenbrockTableau
from .rosenbrock_tableaus import ROSENBROCK_TABLEAUS, SCIML_NAMES as ROSENBROCK_SCIML_NAMES
from .tableaus import ESDIRK_SCIML_NAMES, ESDIRK_TABLEAUS, IMPLICIT_TABLEAUS, TABLEAUS, ButcherTableau
from .implicit.method import ImplicitRK
from .implicit.jacobian import strategy_from_options

LEAPFROG = "leapfrog"
IMPLICIT_METHODS = tuple(IMPLICIT_TABLEAUS)
FIXED_METHODS = ("euler", "midpoint", "heun", "ralston", "rk4", "heun3", "rk38", LEAPFROG, *ADAMS_METHODS,
                 *IMPLICIT_METHODS)
ADAPTIVE_METHODS = ("heun_euler", "fehlberg2", "bosh3", "dopri5", "tsit5", "dopri8")
#: Adaptive stiff methods: Rosenbrock (linearly implicit, one LU per step, ``rosenbrock.py``) and
#: ESDIRK (Newton per stage, ``implicit/method.py``; also run fixed-step with options step_size).
STIFF_METHODS = tuple(ROSENBROCK_TABLEAUS) + tuple(ESDIRK_TABLEAUS)
ADAPTIVE_METHODS = ADAPTIVE_METHODS + STIFF_METHODS
#: SciML (OrdinaryDiffEq.jl) spellings accepted as aliases on the torch engine.
SCIML_ALIASES = {**ROSENBROCK_SCIML_NAMES, **ESDIRK_SCIML_NAMES}
METHODS = FIXED_METHODS + ADAPTIVE_METHODS


@dataclass(frozen=True)
class Method:
    """A named method: a Butcher tableau, or leapfrog (``tableau is None``), or an Adams
    multistep method (``adams``; its ``tableau`` is the RK4 start-up table)."""

    name: str
    tableau: Optional[Union[ButcherTableau, RosenbrockTableau, ImplicitRK]]
    adams: Optional[AdamsSpec] = None

    @property
    def adaptive(self) -> bool:
        return self.tableau is not None and self.tableau.adaptive

    @property
    def uses_jacobian(self) -> bool:
        """True for the implicit / Rosenbrock methods, whose table declares
        ``uses_jacobian = True``: they read options 'jac' / 'jacobian'."""
        return bool(getattr(self.tableau, "uses_jacobian", False))

    @property
    def order(self) -> int:
        return 2 if self.tableau is None else self.tableau.order


def lookup_method(name: str) -> Method:
    name = SCIML_ALIASES.get(name, name)
    if name not in METHODS:
        raise UnknownMethodError(
            f"unknown method {name!r} for the torch engine; fixed-step methods: {list(FIXED_METHODS)}, "
            f"adaptive methods: {list(ADAPTIVE_METHODS)} (stiff: {list(STIFF_METHODS)}, also spelled "
            f"{sorted(SCIML_ALIASES)}), or 'scipy_solver' (SciPy's solve_ivp, forward only); other SciML names "
            "such as 'Tsit5' or 'FBDF' need backend='julia'"
        )
    if name in ADAMS_METHODS:
        return Method(name, TABLEAUS["rk38"], ADAMS_METHODS[name])
    if name in ROSENBROCK_TABLEAUS:
        return Method(name, ROSENBROCK_TABLEAUS[name])
    if name in IMPLICIT_TABLEAUS:
        return Method(name, ImplicitRK(IMPLICIT_TABLEAUS[name]))
    if name in ESDIRK_TABLEAUS:
        return Method(name, ImplicitRK(ESDIRK_TABLEAUS[name]))
    return Method(name, None if name == LEAPFROG else TABLEAUS[name])


def parse(problem: ODEProblem):
    method = lookup_method(problem.method)
    opts = SolverOptions.from_user(problem.options)
    if isinstance(method.tableau, ImplicitRK) and opts.step_size is not None:
        # An embedded-pair implicit table (kvaerno5, kencarp4) runs on the fixed grid it is given.
        method = replace(method, tableau=method.tableau.bound(method.tableau.jacobian, method.tableau.rtol,
                                                              method.tableau.atol, method.tableau.max_iters, fixed=True))
    if not method.adaptive and opts.step_size is None and opts.grid_constructor is None and problem.t.numel() == 2:
        # A single step over the whole interval is almost always a forgotten step_size.
        raise MissingStepSizeError(
            f"{method.name!r} is a fixed-step method and t holds only its two endpoints, so t cannot "
            "serve as the grid: pass options={'step_size': h}, or give t the grid points"
        )
    if method.adaptive and opts.step_size is not None:
        raise MissingStepSizeError(
            f"options['step_size'] is for fixed-step methods, but {method.name!r} is adaptive; "
            f"drop step_size (control accuracy with rtol/atol) or pick one of {list(FIXED_METHODS)}"
        )
    if not method.uses_jacobian and (opts.jac is not None or opts.jacobian is not None):
        raise UnknownOptionError(
            f"options 'jac'/'jacobian' (df/dy for the Newton iterations / Rosenbrock stages) belong to the "
            f"implicit and Rosenbrock methods {list(IMPLICIT_METHODS) + list(STIFF_METHODS)}; {method.name!r} does "
            "not read them: drop them, or pick one of those"
        )
    if method.uses_jacobian and method.adams is None:
        # Bound to this solve: its Jacobian strategy, Newton tolerance and iteration cap.
        method = replace(method, tableau=method.tableau.bound(
            strategy_from_options(opts.jac, opts.jacobian), _loosest(problem.rtol), _loosest(problem.atol),
            opts.max_iters or 10))
    if method.adams is None and (opts.max_order is not None or (opts.max_iters is not None and not method.uses_jacobian)):
        raise UnknownOptionError(
            f"options 'max_order'/'max_iters' belong to the Adams methods, not {method.name!r}; drop them "
            f"or use method='explicit_adams' / 'implicit_adams'"
        )
    return method, opts


def _loosest(tol) -> float:
    """A scalar tolerance for Newton's convergence test (per-component ones: the largest)."""
    return float(tol.max()) if isinstance(tol, torch.Tensor) else float(tol)


def save_times(problem: ODEProblem, differentiable: bool) -> List[Union[float, torch.Tensor]]:
    if differentiable and problem.t.requires_grad:
        return list(problem.t.unbind(0))
    return problem.t.detach().double().cpu().tolist()


def forward_solve(
    problem: ODEProblem,
    method: Method,
    opts: SolverOptions,
    *,
    differentiate_control: bool,
    differentiable_times: Optional[bool] = None,
    record: Record = None,
    t_save: Optional[Sequence[Union[float, torch.Tensor]]] = None,
    y0: Optional[torch.Tensor] = None,
    stats: Optional[SolveStats] = None,
    f0: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Integrate ``problem`` and return the stacked states at the save times.

    Graph building follows the ambient ``torch.is_grad_enabled()``; with
    ``differentiate_control`` step sizes and error estimates stay tensors in that graph
    (DirectAD(through_controller=True)); with ``differentiable_times`` (default: the
    same as ``differentiate_control``) the times are tensors when ``t`` requires grad.
    ``f0``: func(t0, y0) when the caller has evaluated it already (the adjoints'
    discovery evaluation, ``discover.py``); it is counted, not recomputed.
    """
    y0 = problem.y0 if y0 is None else y0
    if differentiable_times is None:
        differentiable_times = differentiate_control
    if t_save is None:
        t_save = save_times(problem, differentiable_times)
    rhs = CountingRHS(problem.func, y0.dtype, y0.device)
    warn_unsupported(rhs.callbacks, method.name, method.adaptive)
    if opts.perturb and not method.adaptive:
        f0 = None  # the discovery evaluation sat at t0 itself; the first stage must not
    if f0 is None:
        t0 = t_save[0]
        if opts.perturb and not method.adaptive:  # the first stage sits one ulp inside the step
            t0 = nudge(t0, t_save[-1], y0)
        f0 = rhs(t0, y0)
    else:
        rhs.nfe += 1
    check_rhs_output(f0, y0, as_float(t_save[0]))
    counters = Counters()
    with progress.showing(opts.progress, "forward", as_float(t_save[0]), as_float(t_save[-1])):
        ys = _integrate(rhs, method, opts, problem, t_save, y0, f0, differentiate_control, counters,
                        _reporting(record) if opts.progress else record)
    out = torch.stack(ys)
    if not method.adaptive:
        check_finite_trajectory(out, [as_float(x) for x in t_save])
    if stats is not None:
        stats.nfe += rhs.nfe
        stats.n_steps += counters.n_steps
        stats.n_rejected += counters.n_rejected
    return out


def _reporting(record: Record) -> Record:
    """``record`` that also tells the open progress meter where each accepted step ends."""
    def report(step) -> None:
        progress.reached(as_float(step.t) + as_float(step.h))
        if record is not None:
            record(step)

    return report


def _integrate(rhs, method, opts, problem, t_save, y0, f0, differentiate_control, counters, record):
    rk_tab = None if method.adams is not None else method.tableau  # Adams' tableau is only its start-up
    ys = compiled.maybe_integrate(rhs, rk_tab, t_save, y0, f0, problem.rtol_y, problem.atol_y, opts,
                                  differentiate_control, counters, record) if opts.compile else None
    if ys is not None:
        return ys
    if method.adaptive:
        return integrate_adaptive(
            rhs, method.tableau, t_save, y0, f0, problem.rtol_y, problem.atol_y, opts,
            differentiate_control, counters, record,
        )
    if method.adams is not None:
        return integrate_adams(rhs, method.adams, t_save, y0, f0, opts, problem.rtol, problem.atol, counters, record)
    return integrate_fixed(rhs, method.tableau, t_save, y0, f0, opts, counters, record)


def check_finite_trajectory(ys: torch.Tensor, ts: Sequence[float]) -> None:
    finite = torch.isfinite(ys.detach()).reshape(len(ts), -1).all(dim=1)  # 0-d states too
    if not bool(finite.all()):
        k = int((~finite).nonzero()[0])
        raise NonFiniteStateError(
            f"the state became NaN/inf between t={ts[k - 1]:g} (last finite save point) and "
            f"t={ts[k]:g}. The solution blows up or func produces NaN there: reduce step_size, "
            "use an adaptive method (e.g. 'dopri5'), or check func and its parameters."
        )
