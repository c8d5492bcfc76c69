"""Error norms for ``options={"norm": ...}``.

A step of an adaptive method is accepted when ``norm(x) <= 1`` for the scaled error
x = err / (atol + rtol max(|y_n|, |y_{n+1}|)) (Hairer, Norsett & Wanner I, II.4). The
default is the RMS over every entry of x, so a batch shares one error budget: with B
samples the error of one hard sample can grow until its share of the mean reaches 1,
i.e. up to about sqrt(B) times its solo error.
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import InvalidStateError


class PerSampleNorm:
    """max over the batch of each sample's RMS error: ``max_b sqrt(mean_j x[b, j]^2)``.

    The batch is the first dimension of the state (of every leaf of a structured state,
    which must agree). A step is accepted only when every sample's own RMS error is
    <= 1, the acceptance test a solo solve of that sample would apply, so adding samples
    never loosens any sample's accuracy; the batch still shares one step size (the
    smallest any sample needs). Pass it as ``options={"norm": psg.PerSampleNorm()}``.

    The continuous adjoints (Backsolve/Interpolating/QuadratureAdjoint) measure the
    state and adjoint blocks of their backward solve with it too (the dL/dtheta block,
    shared by all samples, keeps its RMS). CheckpointAdjoint and DirectAD replay or
    differentiate the forward's accepted steps, so they need nothing more.
    """

    per_sample = True  # recognised by the backward solves (also through pytree.wrap_norm)

    def __call__(self, x: Any) -> torch.Tensor:
        leaves = _leaves(x)
        rows = {leaf.shape[0] if leaf.dim() > 0 else None for leaf in leaves}
        if len(rows) != 1 or None in rows:
            raise InvalidStateError(
                "PerSampleNorm needs a state whose leaves all have the batch as their first dimension "
                f"(the same size); got leaf shapes {[tuple(v.shape) for v in leaves]}"
            )
        (b,) = rows
        sq = sum(v.reshape(b, -1).square().sum(1) for v in leaves)
        count = sum(v[0].numel() for v in leaves)
        return (sq / count).max().clamp_min(torch.finfo(sq.dtype).tiny).sqrt()

    def __repr__(self) -> str:
        return "PerSampleNorm()"


def _leaves(x: Any):
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [v for k in x for v in _leaves(x[k])]
    return [v for item in x for v in _leaves(item)]
