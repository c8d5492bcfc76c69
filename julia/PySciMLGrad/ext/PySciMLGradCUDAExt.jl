"""
    PySciMLGradCUDAExt

Loaded when CUDA.jl and DLPack.jl are: torch CUDA tensors in, `CuArray` solves, torch
CUDA tensors out, all through DLPack without copies. DLPack reverses the axes of a
row-major tensor, so a torch `(B, D)` batch is a `D x B` `CuArray`, the layout of the
CPU path (see `arrays.jl`).
"""
module PySciMLGradCUDAExt

using CUDA: CUDA, CuArray
using DLPack: DLPack
using PySciMLGrad: PySciMLGrad
using PythonCall: Py, pyimport

# torch is imported lazily: this extension can load in a plain Julia session too.
to_dlpack() = pyimport("torch.utils.dlpack").to_dlpack
from_dlpack() = pyimport("torch").from_dlpack

function PySciMLGrad.from_torch(x::Py)
    return DLPack.wrap(x, to_dlpack())
end

PySciMLGrad.to_python(x::CuArray) = DLPack.share(x, from_dlpack())

# CUDA.jl runs on a per-task stream and torch on its own: synchronize the whole device
# whenever memory changes hands.
PySciMLGrad.device_synchronize(::CuArray) = CUDA.device_synchronize()

end # module PySciMLGradCUDAExt
