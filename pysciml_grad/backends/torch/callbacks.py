"""Step callbacks read from ``func``: torchdiffeq's names and call signature.

torchdiffeq 0.2.5 (``_impl/misc.py`` ``_all_callback_names``, ``rk_common.py``
``_adaptive_step``, ``solvers.py`` ``FixedGridODESolver.integrate``, ``adjoint.py``;
commit a88aac5) looks for these attributes of ``func``, all called as ``cb(t0, y0, dt)``:

* ``callback_step``        before every step attempt (adaptive: accepted or not);
* ``callback_accept_step`` after an accepted step (adaptive methods only);
* ``callback_reject_step`` after a rejected step (adaptive methods only);

and ``<name>_adjoint`` for the same events of a continuous adjoint's backward solve.
Here t0 is the step's start time, y0 its start state and dt its signed step (negative
when integrating towards decreasing t, e.g. in every backward solve); in a backward solve
y0 is that solve's flat state ([y, a, dL/dtheta] for BacksolveAdjoint, [a, dL/dtheta] for
the dense-output adjoints). Fixed-step methods have no accept/reject events; defining
those callbacks for one warns (``UnsupportedCallbackWarning``), as torchdiffeq warns.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Optional

from ...errors import UnsupportedCallbackWarning

NAMES = ("callback_step", "callback_accept_step", "callback_reject_step")


@dataclass(frozen=True)
class StepCallbacks:
    step: Optional[Callable] = None
    accept: Optional[Callable] = None
    reject: Optional[Callable] = None

    @classmethod
    def from_func(cls, func, adjoint: bool = False) -> "StepCallbacks":
        suffix = "_adjoint" if adjoint else ""
        found = [getattr(func, name + suffix, None) for name in NAMES]
        return cls(*(cb if callable(cb) else None for cb in found))

    def any(self) -> bool:
        return self.step is not None or self.accept is not None or self.reject is not None


NONE = StepCallbacks()


def warn_unsupported(callbacks: StepCallbacks, method_name: str, adaptive: bool, adjoint: bool = False) -> None:
    if adaptive:
        return
    suffix = "_adjoint" if adjoint else ""
    bad = [name + suffix for name, cb in zip(NAMES[1:], (callbacks.accept, callbacks.reject)) if cb is not None]
    if bad:
        warnings.warn(
            f"method {method_name!r} is fixed-step: it has no accepted/rejected steps, so {bad} will not be "
            "called (callback_step is); use an adaptive method such as 'dopri5' for them",
            UnsupportedCallbackWarning, stacklevel=5,
        )


def of(rhs) -> StepCallbacks:
    """The callbacks a loop's right-hand side carries (none for internal right-hand sides)."""
    return getattr(rhs, "callbacks", NONE)
