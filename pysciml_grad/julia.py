"""Public names of the Julia engine: ``psg.julia.JuliaRHS`` (a right-hand side written in
Julia), ``install`` and ``availability``. Importing this module does not start Julia."""

from .backends.julia import JuliaRHS, availability, install

__all__ = ["JuliaRHS", "availability", "install"]
