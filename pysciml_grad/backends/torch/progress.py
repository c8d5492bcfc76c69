"""Progress meters for long solves: ``options={"progress": True}``.

How far a solve has got is the fraction of its time span covered,
``(t - t_start) / (t_end - t_start)`` in [0, 1], as diffrax's progress meters report it
(``diffeqsolve(..., progress_meter=TqdmProgressMeter())``, docs.kidger.site/diffrax/api/progress_meter)
and as SciML's ``solve(prob, alg; progress=true)`` does (SciML/DiffEqDocs.jl
``docs/src/features/progress_bar.md``, commit da43555). The forward solve runs from
t[0] to t[-1]; a backward pass (the continuous adjoints' reverse solves, CheckpointAdjoint's
replay of the accepted steps) runs from t[-1] back to t[0].

One observer, not a flag threaded through the layers: a phase opens a meter with
:func:`showing` (the forward solve in ``forward.py``, the backward pass in
``adjoints/common.py``), and the loops report each accepted step's end with :func:`reached`,
which does nothing when no meter is open. The active meter is a context variable, so a
forward recomputation inside a backward pass reports to its own meter, never to the
backward one. The meter only reads floats the loops already have: it changes no number
of the solve or of its gradient.

The bar is tqdm's when tqdm is installed (the ``examples`` extra has it), else a plain
text line on stderr each time another 10 % is covered, and a last line when the phase ends.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import sys
from typing import Iterator, Optional

_ACTIVE: contextvars.ContextVar[Optional["ProgressMeter"]] = contextvars.ContextVar("pysciml_grad_progress", default=None)

#: the plain text meter prints again after this much more of the span is covered
TEXT_STEP = 0.1


def _tqdm():
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


class ProgressMeter:
    """How far one phase (``label``) has got from ``t_start`` towards ``t_end``."""

    def __init__(self, label: str, t_start: float, t_end: float, file=None):
        self.label = label
        self.t_start, self.t_end = float(t_start), float(t_end)
        self.t = self.t_start
        self.fraction = 0.0
        self.file = file if file is not None else sys.stderr
        self._printed = -math.inf
        tqdm = _tqdm()
        self._bar = None
        if tqdm is not None:
            self._bar = tqdm(
                total=100, desc=f"odeint {label}", file=self.file, leave=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]",
                postfix=self._where(),
            )

    def _where(self) -> str:
        return f"t={self.t:.6g} of [{self.t_start:.6g}, {self.t_end:.6g}]"

    def reached(self, t: float) -> None:
        span = self.t_end - self.t_start
        fraction = 1.0 if span == 0 else min(max((t - self.t_start) / span, 0.0), 1.0)
        if fraction <= self.fraction:
            return  # a step never moves the meter back (e.g. the last step's stub is reported twice)
        self.t, self.fraction = t, fraction
        if self._bar is not None:
            self._bar.set_postfix_str(self._where(), refresh=False)
            self._bar.update(100 * fraction - self._bar.n)
        elif fraction - self._printed >= TEXT_STEP:
            self._print()

    def _print(self) -> None:
        self._printed = self.fraction
        print(f"odeint {self.label}: {100 * self.fraction:5.1f}%  {self._where()}", file=self.file, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(self._where(), refresh=False)
            self._bar.close()
        elif self.fraction > self._printed:
            self._print()


@contextlib.contextmanager
def showing(enabled: bool, label: str, t_start: float, t_end: float) -> Iterator[Optional[ProgressMeter]]:
    """Open a meter for one phase while the block runs (nothing when ``enabled`` is false)."""
    if not enabled:
        yield None
        return
    meter = ProgressMeter(label, t_start, t_end)
    token = _ACTIVE.set(meter)
    try:
        yield meter
    finally:
        _ACTIVE.reset(token)
        meter.close()


def reached(t) -> None:
    """Report that the open phase has got to time ``t`` (a float or 0-d tensor)."""
    meter = _ACTIVE.get()
    if meter is not None:
        meter.reached(float(t))
