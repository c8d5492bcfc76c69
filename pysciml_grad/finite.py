"""One host read that says whether a tensor holds only finite numbers.

``bool(torch.isfinite(x).all())`` runs isfinite's composite kernels, allocates a boolean
tensor of x's size and reduces it. ``torch.aminmax`` is one fused reduction whose min and
max are NaN when any element is NaN (NaN propagates through both) and +-inf when any
element is +-inf, so "min and max are finite" is "every element is finite". For a 512 x 2
float32 state 9.5 us against 16 us, for 10^6 elements 0.32 ms against 4.1 ms (one CPU
thread, torch 2.13.0, round-robin in one process, minimum). The checks before a solve,
after every fixed step and in the adjoints' backward passes all go through here.
"""

from __future__ import annotations

import math

import torch

# aminmax has kernels for these (not complex); other dtypes take isfinite's path.
_AMINMAX_DTYPES = (torch.float32, torch.float64)


def all_finite(x: torch.Tensor) -> bool:
    """True when every element of ``x`` is finite (an empty tensor is). One host sync."""
    if x.dtype not in _AMINMAX_DTYPES or x.numel() == 0:
        return bool(torch.isfinite(x).all())
    lo, hi = torch.stack(torch.aminmax(x.detach())).tolist()
    return math.isfinite(lo) and math.isfinite(hi)
