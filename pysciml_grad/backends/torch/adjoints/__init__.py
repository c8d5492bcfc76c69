"""Gradient methods of the torch engine, one module per sensealg class.

``IMPLEMENTATIONS`` maps a sensealg class to ``solve(problem, stats) -> ys``; the
strategy is chosen by the *type* of the object the user passed, never by a string.
"""

from __future__ import annotations

from typing import Callable, Dict, Type

from ....sensealg import SensitivityAlgorithm, DirectAD
from . import direct

IMPLEMENTATIONS: Dict[Type[SensitivityAlgorithm], Callable] = {
    DirectAD: direct.solve,
}
