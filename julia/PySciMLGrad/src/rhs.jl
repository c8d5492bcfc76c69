# The two kinds of right-hand side: Julia source compiled here, and Python callbacks.

"""
    CompiledRHS(f, iip)

A right-hand side written in Julia: `f(du, u, p, t)` (in place, `iip = true`) or
`du = f(u, p, t)`. Everything stays in Julia, so every sensealg works with it.
"""
struct CompiledRHS{F}
    f::F
    iip::Bool
end

"""
    compile_rhs(src) -> CompiledRHS

Evaluate the Julia source of a right-hand side in a fresh anonymous module (so user
definitions cannot clash) and classify it as in-place or out-of-place by its number of
arguments, SciML's own rule (`SciMLBase.isinplace(f, 4)`). Python calls this once per
source string, in its own call: a function defined by `eval` may only be called from a
later top-level call (world age).
"""
function compile_rhs(src::AbstractString)
    f = try
        Core.eval(Module(:PySciMLGradUserRHS), Meta.parseall(String(src)))
    catch err
        throw(PSGError(
            "invalid_rhs",
            "the Julia source of the right-hand side failed to evaluate: " *
                sprint(showerror, err),
        ))
    end
    f isa Base.Callable ||
        throw(PSGError(
            "invalid_rhs",
            "the Julia source must evaluate to a function, got a $(typeof(f))",
        ))
    iip = try
        SciMLBase.isinplace(f, 4)
    catch err
        throw(PSGError(
            "invalid_rhs",
            "the right-hand side must take (u, p, t) or (du, u, p, t): " *
                sprint(showerror, err),
        ))
    end
    return CompiledRHS(f, iip)
end

"""
    PyRHS(f, vjp)

A right-hand side implemented in Python (a torch function or `nn.Module`):

  - `f(du, u, t)` fills `du` with f(u, t);
  - `vjp(vu, vp, u, t, v)` fills `vu` with vᵀ ∂f/∂u and `vp` with vᵀ ∂f/∂p.

It is called out-of-place, `du = r(u, p, t)`, the form SciMLSensitivity's `ZygoteVJP`
differentiates (`Zygote.pullback` of `vec(f(u, p, t))`). Zygote cannot look inside a
Python call, but it uses the `ChainRulesCore.rrule` below, which asks Python for the
vector-Jacobian product (torch.autograd). Python ignores the values in `p` (its tensors
hold them); `p` is the slot that receives dL/dp.
"""
struct PyRHS
    f::Py
    vjp::Py
end

# Python receives views of these buffers; a non-strided array would not be a view.
contiguous(x::DenseArray) = x
contiguous(x::AbstractArray) = collect(x)

# Device arrays: Julia's kernels must have finished writing u before Python reads it;
# Python synchronizes torch's stream after writing du (callbacks.py).
function (r::PyRHS)(u, p, t)
    du = similar(u)
    uc = contiguous(u)
    device_synchronize(uc)
    r.f(to_python(du), to_python(uc), Float64(t))
    return du
end

function ChainRulesCore.rrule(r::PyRHS, u, p, t)
    du = r(u, p, t)
    # The solver reuses its buffers; keep this call's state for the pullback.
    u_saved = copy(contiguous(u))
    function pyrhs_pullback(Δ)
        Δ = unthunk(Δ)
        Δ isa AbstractZero &&
            return (NoTangent(), ZeroTangent(), ZeroTangent(), NoTangent())
        v = similar(du)
        copyto!(v, Δ) # Δ may arrive reshaped (from `vec`); same length, du's shape
        vu = similar(u_saved)
        vp = similar(p)
        device_synchronize(v)
        r.vjp(to_python(vu), to_python(vp), to_python(u_saved), Float64(t), to_python(v))
        return (NoTangent(), vu, vp, NoTangent())
    end
    return du, pyrhs_pullback
end

"""
    odefunction(rhs)

Wrap the right-hand side without SciML's `AutoSpecialize` function wrappers, so that the
adjoint machinery sees (and Zygote differentiates) the raw `PyRHS`/user function.
"""
odefunction(r::PyRHS) = ODEFunction{false, SciMLBase.FullSpecialize}(r)
odefunction(c::CompiledRHS) = ODEFunction{c.iip, SciMLBase.FullSpecialize}(c.f)
