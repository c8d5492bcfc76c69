# The Julia half of pysciml_grad/bridge.py.
#
# Python sends CPU tensors as numpy views that are already column-major with the axes
# reversed (`t.numpy().T`): a torch (B, D) batch arrives as a D x B PyArray over the very
# same memory. CUDA tensors arrive as the torch tensor itself (`Py`) and are wrapped with
# DLPack by the CUDA extension, which reverses the axes the same way.

"""Column-major (Fortran) strides, i.e. the memory of an `Array` of this size."""
is_column_major(x::AbstractArray) = strides(x) == Base.size_to_strides(1, size(x)...)

"""
    dense_view(x)

An `Array` (or `CuArray`) over the memory of `x` without copying: a column-major
`PyArray` is re-wrapped with `unsafe_wrap` (valid while Python holds the numpy array,
i.e. during the call); a `Py` (torch CUDA tensor) goes through `from_torch`.
"""
function dense_view(x::PyArray{T}) where {T}
    # The copy is only a fallback for a caller that broke the layout contract.
    is_column_major(x) || return Array(x)
    # fatou-ignore discouraged-function: zero-copy is the point; Python keeps the numpy array (the memory's owner) alive for the whole call, and nothing retains the wrapper after it
    return unsafe_wrap(Array, Base.unsafe_convert(Ptr{T}, x), size(x))
end
dense_view(x::AbstractArray) = x
dense_view(x::Py) = from_torch(x)

"""An array the solver may keep after the call returns (u0 and p live in the pullback)."""
owned(x) = copy(dense_view(x))

"""
    from_torch(x::Py)

A `CuArray` sharing a torch CUDA tensor's memory (DLPack, axes reversed). Implemented
by the CUDA extension; without CUDA.jl and DLPack.jl loaded this explains what to install.
"""
function from_torch(x)
    throw(PSGError(
        "cuda_unavailable",
        "got a torch tensor that is not a CPU numpy view; CUDA tensors need CUDA.jl and DLPack.jl " *
            "loaded (python -m pysciml_grad julia install --cuda)",
    ))
end

"""
    to_python(x)

What goes back to Python: a CPU `Array` as is (juliacall exposes it to numpy without a
copy), a `CuArray` shared as a torch tensor through DLPack (CUDA extension).
"""
to_python(x::AbstractArray) = x

"""Wait for the device to finish before Python reads the result (CUDA extension)."""
device_synchronize(x) = nothing

"""Whether the CUDA extension is loaded."""
cuda_ready() = Base.get_extension(@__MODULE__, :PySciMLGradCUDAExt) !== nothing

"""
    dense(sol, u0)

The saved states as one array of size `(size(u0)..., length(sol.t))`, differentiably.
`Array(sol)` for CPU states (RecursiveArrayTools defines its Zygote adjoint);
concatenation of `sol.u` along a new last axis for device arrays (stays on the device).
"""
dense(sol, ::Array) = Array(sol)
dense(sol, u0::AbstractArray) = cat(sol.u...; dims = ndims(u0) + 1)

"""
A plain dense array for a gradient Zygote returned (it may be a lazy reshape or `nothing`).
`copyto!(similar(like), x)` rather than `collect(x)`: `collect` of a lazy wrapper around a
`CuArray` indexes it element by element (scalar indexing), `copyto!` into a device array
of `like`'s type broadcasts.
"""
materialize(x::DenseArray, like) = x
materialize(::Nothing, like) = zero(like)
materialize(::AbstractZero, like) = zero(like)
materialize(x::AbstractArray, like) = copyto!(similar(like, eltype(x), size(x)), x)

"""
    call_without_gc(f, args...)

Call `f(args...)` with Julia's garbage collector paused. Used when Python calls from a
thread other than the one that started Julia (torch runs CUDA backward passes on its
own worker threads): a collection triggered from such a thread can hang
(PythonCall.jl issue #578), and pausing it for one solve is the conservative workaround.
"""
function call_without_gc(f, args...)
    previous = GC.enable(false)
    try
        return f(args...)
    finally
        GC.enable(previous)
    end
end
