"""``JuliaRHS``: a right-hand side written in Julia source, solved without leaving Julia.

Pure Python: holding the source needs no Julia. The source is compiled by
``PySciMLGrad.compile_rhs`` the first time a solve uses it (once per process).
"""

from __future__ import annotations

from typing import Any

from ...errors import InvalidProblemError


class JuliaRHS:
    """dy/dt = f(u, p, t) given as Julia source, in SciML's argument order.

    Two forms are accepted, told apart by the number of arguments (SciML's rule):

    * out-of-place ``"(u, p, t) -> p[1] .* u"``, returning du;
    * in-place ``"(du, u, p, t) -> (du .= p[1] .* u; nothing)"``, filling du.

    ``u`` is the state in Julia's column-major layout: for ``y0`` of shape ``(B, D)``
    Julia sees a ``D x B`` matrix (each column one sample; see ``pysciml_grad.bridge``).
    ``p`` is one flat vector: the tensors passed as ``params=`` to ``odeint``, each
    flattened in row-major order and concatenated in the order given. ``t`` has the state's
    float type (Float64 or Float32). A decreasing ``t`` is solved in s = -t, but ``f`` is
    always called with the original time.

    The source may hold several statements (``using LinearAlgebra; f(u, p, t) = ...; f``):
    it is evaluated in a fresh anonymous module and its last value must be the function.

    Writing the right-hand side in Julia keeps every function evaluation inside Julia
    (no Python call per step) and lets every SciMLSensitivity method work, including
    the ones that push dual numbers or tapes through ``f`` (``ReverseDiffAdjoint``,
    ``ForwardDiffSensitivity``).
    """

    #: Lets backends recognise a Julia right-hand side without importing this module.
    is_julia_rhs = True

    def __init__(self, source: str, *, name: str = "julia_rhs") -> None:
        if not isinstance(source, str) or not source.strip():
            raise InvalidProblemError(
                "JuliaRHS needs Julia source code as a non-empty string, e.g. "
                "JuliaRHS('(u, p, t) -> -p[1] .* u')"
            )
        self.source = source.strip()
        self.name = str(name)
        # Compiled Julia function per Julia session (keyed by id of the session object),
        # so a source string is evaluated once per process, not once per solve.
        self._compiled: dict[int, Any] = {}

    def __call__(self, t: Any, y: Any) -> Any:
        # A JuliaRHS is callable so it passes generic `callable(func)` checks, but it has
        # no Python implementation: evaluating it means running Julia.
        raise TypeError(
            f"{self!r} is Julia code and can only be evaluated by the Julia engine; "
            "call psg.odeint(..., backend='julia')"
        )

    def __repr__(self) -> str:
        first = self.source.splitlines()[0]
        if len(first) > 60:
            first = first[:57] + "..."
        return f"JuliaRHS({first!r})"
