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
    PyRHS(forward, pullback)

A right-hand side implemented in Python (a torch function or `nn.Module`):

  - `forward(du, u, t)` fills `du` with f(u, t);
  - `pullback(vu, vp, u, t, v)` fills `vu` with vᵀ ∂f/∂u and `vp` with vᵀ ∂f/∂p.

The field names avoid every name SciMLBase's `ODEFunction` constructor looks for on the
function object (`vjp`, `jac`, `paramjac`, ...: `__has_vjp(f) = hasfield(typeof(f), :vjp)`
in scimlfunctions.jl): a field called `vjp` is copied into the ODEFunction's `vjp` slot,
and SciMLSensitivity >= 7.97 then calls it as `f.vjp(λ, y, p, t)` instead of reaching
the rrule below. The list is in UPSTREAM.md and a test checks every struct here.

It is called out-of-place, `du = r(u, p, t)`, the form SciMLSensitivity's `ZygoteVJP`
differentiates (`Zygote.pullback` of `vec(f(u, p, t))`). Zygote cannot look inside a
Python call, but it uses the `ChainRulesCore.rrule` below, which asks Python for the
vector-Jacobian product (torch.autograd). Python ignores the values in `p` (its tensors
hold them); `p` is the slot that receives dL/dp.
"""
struct PyRHS
    py_forward::Py
    py_pullback::Py
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
    r.py_forward(to_python(du), to_python(uc), Float64(t))
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
        r.py_pullback(
            to_python(vu),
            to_python(vp),
            to_python(u_saved),
            Float64(t),
            to_python(v),
        )
        return (NoTangent(), vu, vp, NoTangent())
    end
    return du, pyrhs_pullback
end

"""
    TimeReversed(rhs)

`rhs` in the time s = -t: `g(u, p, s) = -f(u, p, -s)` (or in place, `du = -f(-s)`).
If u(t) solves du/dt = f then v(s) = u(-s) solves dv/ds = g, so Python hands a
decreasing `t` over as the increasing `s = -t` with the same states, u0 and p
(`translate.julia_save_times`). SciMLSensitivity's adjoints return `sort(saveat)`
(concrete_solve.jl), which for a decreasing span would be the reversed order.
"""
struct TimeReversed{F}
    rhs::F
end

(r::TimeReversed)(u, p, s) = -r.rhs(u, p, -s)

function (r::TimeReversed)(du, u, p, s)
    r.rhs(du, u, p, -s)
    du .= .-du
    return nothing
end

"""
    reverse_time(rhs)

The same right-hand side in the time s = -t (see `TimeReversed`). A Python f is
reversed on the Python side (`callbacks.time_reversed`), so only Julia source comes here.
"""
reverse_time(c::CompiledRHS) = CompiledRHS(TimeReversed(c.f), c.iip)

"""
    odefunction(rhs)

Wrap the right-hand side without SciML's `AutoSpecialize` function wrappers, so that the
adjoint machinery sees (and Zygote differentiates) the raw `PyRHS`/user function.
"""
odefunction(r::PyRHS) = ODEFunction{false, SciMLBase.FullSpecialize}(r)
odefunction(c::CompiledRHS) = ODEFunction{c.iip, SciMLBase.FullSpecialize}(c.f)
