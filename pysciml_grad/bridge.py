"""Zero-copy hand-over of arrays between torch, numpy and Julia.

Layout: the same bytes, read in the other order
-----------------------------------------------
A C-contiguous (row-major) torch tensor of shape ``(B, D)`` stores ``x[b, d]`` at
offset ``b*D + d``. A column-major Julia array of size ``(D, B)`` stores ``X[d, b]`` at
``(d-1) + (b-1)*D`` (1-based). Same offset, so **the tensor and the Julia matrix are
the same memory, with the axes reversed**: ``X[d, b] == x[b-1, d-1]``. In general a
C-contiguous tensor of shape ``(n1, ..., nk)`` *is* a column-major Julia array of size
``(nk, ..., n1)``. No transpose is ever copied:

* torch -> Julia (CPU): ``t.numpy().T`` is a Fortran-ordered numpy view of shape
  ``(D, B)`` on ``t``'s storage; juliacall wraps any buffer-protocol object as a
  ``PyArray`` without copying (same shape, numpy's strides, here column-major).
* Julia -> torch (CPU): ``numpy.asarray(jl_array)`` is a view of the Julia array's
  memory (shape ``(D, B)``, Fortran order); ``.T`` makes it ``(B, D)`` C-contiguous and
  ``torch.from_numpy`` shares it. The tensor keeps the numpy view alive, which keeps the
  juliacall wrapper alive, which keeps the Julia array rooted.
* CUDA, both ways: DLPack. DLPack.jl wraps a row-major ``(B, D)`` CUDA tensor as a
  ``(D, B)`` ``CuArray`` ("dimensions reversed", the same rule), and shares a Julia
  ``(D, B)`` ``CuArray`` back as a ``(B, D)`` tensor.

SciML treats a matrix state as a batch of columns ("each column is an independent
system"), so a torch batch ``(B, D)`` is exactly the SciML-native ``D x B`` batch. A
right-hand side written in Julia sees ``u[:, b]`` as sample ``b``; a torch right-hand
side called back from Julia sees the familiar ``(B, D)``.

When a copy does happen (and only then): a non-contiguous tensor (``.contiguous()``),
and inside Julia the initial state and parameters, which the solver keeps for the
backward pass (O(state + parameters), never O(time x state)).

This module is the Python half; ``julia/PySciMLGrad/src/arrays.jl`` is the Julia half.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np
import torch


def julia_shape(shape: Sequence[int]) -> Tuple[int, ...]:
    """Size of the Julia array that shares memory with a C-contiguous tensor of ``shape``."""
    return tuple(reversed(tuple(int(s) for s in shape)))


def torch_to_julia_cpu(t: torch.Tensor) -> np.ndarray:
    """A column-major numpy view of ``t`` (axes reversed) for juliacall to wrap.

    No copy for a contiguous CPU tensor: the result's data pointer is ``t.data_ptr()``.
    The tensor is detached (Julia never sees the autograd graph). A non-contiguous
    tensor is made contiguous first (one copy), since Julia needs one dense block.
    """
    if t.device.type != "cpu":
        raise ValueError(f"torch_to_julia_cpu takes CPU tensors; got one on {t.device} (use torch_to_julia_cuda)")
    t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    if t.dim() == 0:
        t = t.reshape(1)
    return t.numpy().T


def julia_to_torch_cpu(buffer: Any, shape: Optional[Sequence[int]] = None) -> torch.Tensor:
    """A tensor sharing the memory of a column-major array from Julia.

    ``buffer`` is whatever juliacall hands over for a Julia ``Array`` (an
    ``ArrayValue``, which exposes the buffer protocol / numpy array interface) or a
    numpy array in Fortran order. Its axes are reversed, so a Julia ``(D, B, T)`` array
    becomes a C-contiguous ``(T, B, D)`` tensor; ``shape`` then reshapes it (a view:
    e.g. back to a 0-d state). No copy is made; a non-contiguous result is refused
    because it would mean the layout contract was broken somewhere upstream.
    """
    arr = np.asarray(buffer).T
    if not arr.flags.c_contiguous:
        raise ValueError(
            "array from Julia is not column-major contiguous; the zero-copy layout contract "
            "(Julia column-major == torch row-major with axes reversed) does not hold"
        )
    if not arr.flags.writeable:
        # torch.from_numpy warns on read-only memory; Julia arrays are writable, so a
        # read-only view means it did not come from Julia. Copy rather than alias.
        arr = arr.copy()
    out = torch.from_numpy(arr)
    if shape is not None:
        out = out.view(tuple(shape))
    return out


def torch_to_julia_cuda(t: torch.Tensor) -> torch.Tensor:
    """The CUDA tensor to hand to Julia, which wraps it with DLPack (no copy).

    Contiguity matters: DLPack.jl recognises only exact row- or column-major strides
    and would misread anything else. ``torch.cuda.synchronize`` first because CUDA.jl
    works on its own per-task stream, while torch's pending kernels sit on torch's.
    """
    if t.device.type != "cuda":
        raise ValueError(f"torch_to_julia_cuda takes CUDA tensors; got one on {t.device}")
    t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    if t.dim() == 0:
        t = t.reshape(1)
    torch.cuda.synchronize(t.device)
    return t


def to_julia(t: torch.Tensor) -> Any:
    """Device dispatch: numpy view (CPU) or contiguous tensor for DLPack (CUDA)."""
    return torch_to_julia_cuda(t) if t.device.type == "cuda" else torch_to_julia_cpu(t)


def from_julia(x: Any, shape: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Inverse of :func:`to_julia` for what Julia returns.

    A ``torch.Tensor`` arrives when Julia shared a ``CuArray`` through DLPack (axes
    already reversed by DLPack); anything else is a CPU buffer.
    """
    if isinstance(x, torch.Tensor):
        return x if shape is None else x.view(tuple(shape))
    return julia_to_torch_cpu(x, shape)


def shares_memory(a: Any, b: Any) -> bool:
    """True when two array-likes (tensors or numpy arrays) start at the same address.

    The tests' oracle for every zero-copy claim on the Python side.
    """

    def address(x: Any) -> int:
        if isinstance(x, torch.Tensor):
            return x.data_ptr()
        return int(np.asarray(x).__array_interface__["data"][0])

    return address(a) == address(b)


__all__ = [
    "julia_shape",
    "torch_to_julia_cpu",
    "julia_to_torch_cpu",
    "torch_to_julia_cuda",
    "to_julia",
    "from_julia",
    "shares_memory",
]
