"""Sparse regression of a learned function onto a library of candidate terms (SINDy).

Given samples ``X`` (n, d) and targets ``Y`` (n, m) -- for a UDE, the states along the
fitted trajectory and the trained network's outputs there -- find a sparse coefficient
matrix Xi (p, m) with ``Y ~ Theta(X) Xi``, where Theta's p columns are candidate terms
(here all monomials of total degree <= ``degree``).

Sequentially thresholded least squares (STLSQ; Brunton, Proctor & Kutz (2016), "Discovering
governing equations from data by sparse identification of nonlinear dynamical systems",
PNAS 113(15), 3932-3937): solve the least-squares problem, zero every coefficient with
|xi| < threshold, re-solve on the surviving columns, repeat until the support stops
changing. The threshold is in the units of the coefficients (no column normalisation), so
it reads directly as "the smallest term we are willing to believe".
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations_with_replacement
from typing import List, Optional, Sequence, Tuple

import torch

from ..errors import InvalidProblemError


@dataclass(frozen=True)
class PolynomialLibrary:
    """All monomials of ``n_vars`` variables with total degree <= ``degree``
    (degree 0, the constant, included), ordered by degree then lexicographically."""

    n_vars: int
    degree: int
    names: Optional[Tuple[str, ...]] = None

    def __post_init__(self):
        if self.n_vars < 1 or self.degree < 0:
            raise InvalidProblemError(f"need n_vars >= 1 and degree >= 0, got {self.n_vars}, {self.degree}")
        if self.names is not None and len(self.names) != self.n_vars:
            raise InvalidProblemError(f"names must have n_vars={self.n_vars} entries, got {len(self.names)}")

    @property
    def exponents(self) -> List[Tuple[int, ...]]:
        out = []
        for deg in range(self.degree + 1):
            for combo in combinations_with_replacement(range(self.n_vars), deg):
                e = [0] * self.n_vars
                for i in combo:
                    e[i] += 1
                out.append(tuple(e))
        return out

    def term_names(self) -> List[str]:
        names = self.names or tuple(f"x{i}" for i in range(self.n_vars))
        out = []
        for e in self.exponents:
            parts = [n if k == 1 else f"{n}^{k}" for n, k in zip(names, e) if k]
            out.append("*".join(parts) or "1")
        return out

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        """Theta(X): shape (n_samples, n_terms)."""
        if X.dim() != 2 or X.shape[1] != self.n_vars:
            raise InvalidProblemError(f"X must have shape (n_samples, {self.n_vars}), got {tuple(X.shape)}")
        cols = [torch.prod(X ** torch.tensor(e, dtype=X.dtype, device=X.device), dim=1) for e in self.exponents]
        return torch.stack(cols, dim=1)


@dataclass(frozen=True)
class SparseModel:
    """The result of :func:`stlsq`: ``Y ~ library(X) @ coefficients``."""

    library: PolynomialLibrary
    coefficients: torch.Tensor  # (n_terms, n_outputs), exact zeros off the support
    threshold: float
    iterations: int

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        return self.library(X) @ self.coefficients

    def coefficient(self, term: str, output: int) -> float:
        return float(self.coefficients[self.library.term_names().index(term), output])

    def support(self, output: int) -> List[str]:
        names = self.library.term_names()
        return [names[i] for i in range(len(names)) if self.coefficients[i, output] != 0]

    def equations(self, lhs: Sequence[str], precision: int = 4) -> List[str]:
        names = self.library.term_names()
        eqs = []
        for j, name in enumerate(lhs):
            terms = [f"{float(c):+.{precision}g}*{n}" for n, c in zip(names, self.coefficients[:, j]) if c != 0]
            eqs.append(f"{name} = {' '.join(terms) if terms else '0'}")
        return eqs


def stlsq(
    X: torch.Tensor,
    Y: torch.Tensor,
    library: PolynomialLibrary,
    threshold: float,
    *,
    max_iter: int = 20,
) -> SparseModel:
    """Sequentially thresholded least squares (Brunton et al. 2016) of ``Y`` on ``library(X)``.

    ``X`` (n, d), ``Y`` (n, m); returns the :class:`SparseModel` whose coefficients below
    ``threshold`` in magnitude are exactly zero and the rest are the least-squares fit on
    the surviving terms. Computed in float64.
    """
    if not threshold >= 0:
        raise InvalidProblemError(f"threshold must be >= 0, got {threshold!r}")
    X = X.detach().to(torch.float64)
    Y = Y.detach().to(torch.float64)
    if Y.dim() == 1:
        Y = Y[:, None]
    if Y.dim() != 2 or Y.shape[0] != X.shape[0]:
        raise InvalidProblemError(f"Y must have shape (n_samples={X.shape[0]}, n_outputs), got {tuple(Y.shape)}")
    theta = library(X)
    if theta.shape[0] < theta.shape[1]:
        raise InvalidProblemError(
            f"{theta.shape[0]} samples for {theta.shape[1]} library terms: the least-squares problem is "
            "underdetermined; sample more points or lower the library degree"
        )
    xi = torch.linalg.lstsq(theta, Y).solution
    support = torch.ones_like(xi, dtype=torch.bool)
    it = 0
    for it in range(1, max_iter + 1):
        new_support = xi.abs() >= threshold
        if torch.equal(new_support, support) and it > 1:
            break
        support = new_support
        xi = torch.zeros_like(xi)
        for j in range(Y.shape[1]):
            cols = support[:, j].nonzero().flatten()
            if cols.numel():
                xi[cols, j] = torch.linalg.lstsq(theta[:, cols], Y[:, j : j + 1]).solution[:, 0]
    return SparseModel(library=library, coefficients=xi, threshold=float(threshold), iterations=it)
