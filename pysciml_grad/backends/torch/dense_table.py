"""The forward solve's dense output as tensors, evaluated at a 0-d device time.

The interpolating adjoints need y(t) at every stage time of their backward solve. The eager
lookup (``adjoints.continuous.Trajectory``) finds the step holding t by a host-side search
over float times, which a traced step (its t a device tensor) cannot do without a recompile
per t. Here the accepted steps are stacked once into tensors

    keys[n] = d t_n (d = +-1, the direction, so keys increase),  t0[n] = t_n,  h[n] = h_n,
    rows[n] = the step's interpolation data, an (R, n_y) block,

and y(t) is ``searchsorted`` + a gather + a polynomial, all tensor ops:

    n = clamp(#{m : keys[m] <= d t} - 1, 0),   theta = (t - t_n) / h_n,
    y(t) = sum_r c_r(theta) rows[n, r],   c_r = h_n^{e_r} sum_p P[r, p] theta^p.

The polynomial matrix P (and the powers e_r of h) is data, like a tableau, and gives the
same interpolant the eager lookup uses (``stepping.dense_eval``):

* a table with a continuous extension (dopri5, tsit5; Hairer, Norsett & Wanner I, II.6):
  rows = [y_n, k_1 ... k_S], c_0 = 1, c_i = h b_i(theta) = h sum_p dense[i][p] theta^(p+1);
* otherwise the cubic Hermite interpolant through (y_n, f_n), (y_{n+1}, f_{n+1}):
  rows = [y_n, f_n, y_{n+1}, f_{n+1}] with the Hermite basis expanded in powers of theta,
  h00 = 1 - 3 theta^2 + 2 theta^3, h10 = theta - 2 theta^2 + theta^3 (times h),
  h01 = 3 theta^2 - 2 theta^3, h11 = theta^3 - theta^2 (times h).

The values equal the eager lookup's to rounding (a matrix product and the expanded basis in
place of a chain of fused adds and the factored one). The step axis is padded to a capacity
(keys with +inf, so the search never lands in the padding), a power of two of at least
``MIN_CAPACITY``: the traced graph's shapes change only when a forward solve's step count
crosses one of those, not with every new t.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch

#: Smallest padded step count: solves of up to this many accepted steps share one graph.
MIN_CAPACITY = 64

#: The cubic Hermite basis (h00, h10, h01, h11) as coefficients of 1, theta, theta^2, theta^3,
#: and which of them carry a factor h.
HERMITE_POLY = ((1.0, 0.0, -3.0, 2.0), (0.0, 1.0, -2.0, 1.0), (0.0, 0.0, 3.0, -2.0), (0.0, 0.0, -1.0, 1.0))
HERMITE_HPOW = (0.0, 1.0, 0.0, 1.0)


def capacity(n_steps: int) -> int:
    """The padded length of the step axis for ``n_steps`` accepted steps."""
    return max(MIN_CAPACITY, 1 << max(n_steps - 1, 0).bit_length())


def supported(tab) -> Optional[str]:
    """Why this forward table's dense output cannot be stacked (None: it can)."""
    if getattr(tab, "interpolate", None) is not None:
        return f"the forward method {getattr(tab, 'name', tab)!r} has its own interpolant (Rosenbrock)"
    return None


@dataclass
class DenseTable:
    """Stacked dense output of one forward solve (see the module docstring)."""

    sign: torch.Tensor  # 0-d float64: the direction d
    keys: torch.Tensor  # (cap,) float64, d t_n, +inf past the last step
    t0: torch.Tensor  # (cap,) float64
    h: torch.Tensor  # (cap,) float64 (1 in the padding)
    rows: torch.Tensor  # (cap, R, n_y), the state's dtype
    poly: torch.Tensor  # (R, P) float64
    hpow: torch.Tensor  # (R,) float64, 0 or 1

    def tensors(self) -> Tuple[torch.Tensor, ...]:
        """The graph inputs of :func:`lookup`, in its order."""
        return (self.sign, self.keys, self.t0, self.h, self.rows, self.poly, self.hpow)

    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in self.tensors())


def lookup(t: torch.Tensor, sign, keys, t0, h, rows, poly, hpow) -> torch.Tensor:
    """y(t), flat, for a 0-d float64 ``t`` (tensor ops only: traceable, no host read).
    ``searchsorted(..., right=True) - 1`` is ``bisect_right - 1``, the eager search."""
    # index_select with a 1-element index tensor, not rows[n]: indexing by a 0-d tensor
    # makes dynamo read the index as a Python int (a host sync and a graph break).
    n = (torch.searchsorted(keys, (sign * t).reshape(1), right=True) - 1).clamp(0, keys.shape[0] - 1)
    hn = h.index_select(0, n)[0]
    theta = (t - t0.index_select(0, n)[0]) / hn
    powers = theta ** torch.arange(poly.shape[1], dtype=theta.dtype, device=theta.device)
    coeffs = (poly @ powers) * hn**hpow
    return coeffs.to(rows.dtype) @ rows.index_select(0, n)[0]


def build(tab, direction: float, times: Sequence[float], hs: Sequence[float], ys: Sequence[torch.Tensor],
          ks: Sequence[Sequence[torch.Tensor]], y_end: torch.Tensor,
          f_end: Callable[[], torch.Tensor]) -> DenseTable:
    """Stack the accepted steps (t_n, h_n, y_n, stages ks_n) of a forward solve ending at
    ``y_end``. ``f_end()`` gives f(t_end, y_end), asked for only when the Hermite data of
    the last step needs it (a table without FSAL), as the eager lookup does."""
    n_steps = len(times)
    cap = capacity(n_steps)
    y_like = y_end.reshape(-1)
    dev, dt, f64 = y_like.device, y_like.dtype, torch.float64
    dense = getattr(tab, "dense", None) if tab is not None else None
    with torch.no_grad():
        if dense is not None:
            s = len(dense)
            width = 1 + max(len(row) for row in dense)
            poly = [[1.0] + [0.0] * (width - 1)] + [[0.0, *row] + [0.0] * (width - 1 - len(row)) for row in dense]
            hpow = [0.0] + [1.0] * s
            blocks = [torch.stack([y.reshape(-1)] + [k.reshape(-1) for k in kn[:s]]) for y, kn in zip(ys, ks)]
        else:
            poly, hpow = [list(r) for r in HERMITE_POLY], list(HERMITE_HPOW)
            fsal = tab is not None and getattr(tab, "fsal", False)
            blocks = []
            for m in range(n_steps):
                y_next = ys[m + 1] if m + 1 < n_steps else y_end
                if fsal:
                    f_next = ks[m][-1]
                elif m + 1 < n_steps:
                    f_next = ks[m + 1][0]
                else:
                    f_next = f_end()
                blocks.append(torch.stack([ys[m].reshape(-1), ks[m][0].reshape(-1), y_next.reshape(-1),
                                           f_next.reshape(-1)]))
        rows = torch.zeros(cap, len(poly), y_like.numel(), dtype=dt, device=dev)
        if blocks:
            rows[:n_steps] = torch.stack(blocks)
        keys = torch.full((cap,), float("inf"), dtype=f64, device=dev)
        t0 = torch.zeros(cap, dtype=f64, device=dev)
        h = torch.ones(cap, dtype=f64, device=dev)
        if n_steps:
            meta = torch.tensor([list(times), list(hs)], dtype=f64, device=dev)
            keys[:n_steps] = meta[0] * direction
            t0[:n_steps] = meta[0]
            h[:n_steps] = meta[1]
    return DenseTable(torch.tensor(float(direction), dtype=f64, device=dev), keys, t0, h, rows,
                      torch.tensor(poly, dtype=f64, device=dev), torch.tensor(hpow, dtype=f64, device=dev))

