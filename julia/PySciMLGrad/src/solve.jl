# Forward solves and pullbacks: the entry points Python calls.

"""
    Setup

Everything one solve needs, built from the Python arguments. `u0` and `p` are owned
copies (the pullback keeps them); `ts` are the save times, which include both ends of
the time span, so every sensealg returns exactly `length(ts)` states. Time has the
state's float type: with Float64 times a Float32 out-of-place state would be promoted
to Float64 by the first `u + dt * k`.
"""
struct Setup{P, A, K, U, V, T}
    prob::P
    alg::A
    kwargs::K
    u0::U
    p::V
    ts::Vector{T}
end

function setup(
    rhs,
    u0_in,
    p_in,
    ts_in,
    alg_src::AbstractString,
    opts_src::AbstractString,
    grid::Bool,
)
    u0 = owned(u0_in)
    p = owned(p_in)
    ts = collect(float(real(eltype(u0))), ts_in)
    length(ts) >= 2 || invalid("need at least two save times, got $(length(ts))")
    opts = build(opts_src)
    opts isa NamedTuple ||
        invalid("solve options must be a NamedTuple, got $(typeof(opts))")
    # saveat = ts reproduces torchdiffeq's contract (states at exactly the requested
    # times). grid: fixed steps from save time to save time (dt spans the interval and
    # every save time is a tstop, so each step is clipped to end on the next one).
    kwargs = grid ? merge(opts, (saveat = ts, tstops = ts)) : merge(opts, (saveat = ts,))
    prob = ODEProblem(odefunction(rhs), u0, (ts[1], ts[end]), p)
    return Setup(prob, build(alg_src), kwargs, u0, p, ts)
end

"""`(nf, naccept, nreject)` of a solution, `-1` where SciML did not record them."""
function stats_tuple(sol)
    s = hasproperty(sol, :stats) ? sol.stats : nothing
    s === nothing && return (-1, -1, -1)
    field(name) = hasproperty(s, name) ? Int(getproperty(s, name)) : -1
    return (field(:nf), field(:naccept), field(:nreject))
end

"""`(successful, code)`: SciML's own test of success (`SciMLBase.successful_retcode`, which
also accepts e.g. `StalledSuccess`), and the code as text for the error message."""
function retcode_info(sol)
    ok = SciMLBase.successful_retcode(sol)
    return (ok, last(split(string(sol.retcode), '.')))
end

function check_solution(retcode, ys, ts)
    ok, code = retcode
    ok || throw(PSGError("solver", code))
    size(ys)[end] == length(ts) ||
        invalid("the solver saved $(size(ys)[end]) states for $(length(ts)) save times")
    return nothing
end

"""
    solve_forward(rhs, u0, p, ts, alg_src, opts_src, grid) -> (ys, (nf, naccept, nreject))

Solve without gradient. `ys` has size `(size(u0)..., length(ts))`: for a torch state of
shape `S` Python reads it back as `(len(t), *S)` without copying.
"""
function solve_forward(rhs, u0_in, p_in, ts_in, alg_src, opts_src, grid::Bool)
    s = setup(rhs, u0_in, p_in, ts_in, alg_src, opts_src, grid)
    sol = solve(s.prob, s.alg; s.kwargs...)
    ys = dense(sol, s.u0)
    check_solution(retcode_info(sol), ys, s.ts)
    device_synchronize(ys)
    return (to_python(ys), stats_tuple(sol))
end

"""
    check_combination(rhs, sensealg, u0)

Refuse what cannot work, before any compilation: AD through the solver (ReverseDiff,
ForwardDiff) would have to trace or push dual numbers through a Python function; the
adjoints' vector-Jacobian product of a Python f must come from its `rrule` (ZygoteVJP)
or from finite differences (`autojacvec = false`); ReverseDiffAdjoint needs CPU arrays.
"""
function check_combination(rhs, sensealg, u0)
    unsupported(msg) = throw(PSGError("unsupported_sensealg", msg))
    if rhs isa PyRHS
        sensealg isa Union{ReverseDiffAdjoint, ForwardDiffSensitivity} &&
            unsupported(
                "$(nameof(typeof(sensealg))) needs f written in Julia; a Python f supports " *
                    "BacksolveAdjoint, InterpolatingAdjoint, QuadratureAdjoint and GaussAdjoint",
            )
        if hasproperty(sensealg, :autojacvec)
            vjp = sensealg.autojacvec
            vjp isa ZygoteVJP ||
                vjp === false ||
                unsupported(
                    "with a Python f the adjoint's vector-Jacobian product must be ZygoteVJP " *
                        "(uses the PyRHS rrule) or finite differences, got $(repr(vjp))",
                )
        end
    end
    sensealg isa ReverseDiffAdjoint &&
        !(u0 isa Array) &&
        unsupported("ReverseDiffAdjoint needs CPU arrays, got a $(nameof(typeof(u0)))")
    return nothing
end

"""
    PullbackHandle

The Zygote pullback of one forward solve, kept by Python until its backward pass:
`back(Δ)` maps dL/dys (same size as `ys`) to `(dL/du0, dL/dp)`.
"""
struct PullbackHandle{B, U, P}
    back::B
    ysize::Tuple
    u0::U
    p::P
end

"""
    solve_with_pullback(rhs, u0, p, ts, alg_src, sensealg_src, opts_src, grid)
        -> (ys, (nf, naccept, nreject), handle)

Solve and record what the backward pass needs. The solve runs inside `Zygote.pullback`,
where SciMLBase routes `solve(prob, alg; u0, p, sensealg)` to SciMLSensitivity's rrule:
continuous adjoints keep the forward solution (dense, or checkpoints), discrete methods
their tape or dual numbers.
"""
function solve_with_pullback(
    rhs,
    u0_in,
    p_in,
    ts_in,
    alg_src,
    sensealg_src,
    opts_src,
    grid::Bool,
)
    s = setup(rhs, u0_in, p_in, ts_in, alg_src, opts_src, grid)
    sensealg = build(sensealg_src)
    check_combination(rhs, sensealg, s.u0)
    info = Ref{Any}(((-1, -1, -1), (false, "unknown")))
    prob, alg, kwargs = s.prob, s.alg, s.kwargs
    ys, back = Zygote.pullback(s.u0, s.p) do u0_, p_
        sol = solve(prob, alg; u0 = u0_, p = p_, sensealg = sensealg, kwargs...)
        ignore_derivatives() do
            info[] = (stats_tuple(sol), retcode_info(sol))
        end
        dense(sol, u0_)
    end
    stats, retcode = info[]
    check_solution(retcode, ys, s.ts)
    device_synchronize(ys)
    return (to_python(ys), stats, PullbackHandle(back, size(ys), s.u0, s.p))
end

"""
    apply_pullback(handle, dL_dys) -> (dL_du0, dL_dp)

`dL_dys` arrives like `ys` went out (a column-major view of the torch gradient, no copy).
"""
function apply_pullback(h::PullbackHandle, g_in)
    g = dense_view(g_in)
    size(g) == h.ysize ||
        invalid("dL/dys has size $(size(g)), the saved states have $(h.ysize)")
    du0, dp = h.back(g)
    du0 = materialize(du0, h.u0)
    dp = materialize(dp, h.p)
    device_synchronize(du0)
    return (to_python(du0), to_python(dp))
end
