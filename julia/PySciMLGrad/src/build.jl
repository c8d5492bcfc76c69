# Rebuild the algorithm, sensealg and solve keywords from the Julia source that Python's
# translate.py renders. Only whitelisted constructor calls and literals are evaluated, so
# nothing a user typed (a method name, say) can run as code.

"""Constructors that `build` may call."""
const CONSTRUCTORS = Set{Symbol}([
    # OrdinaryDiffEq algorithms
    :Euler,
    :Midpoint,
    :Heun,
    :Ralston,
    :RK4,
    :BS3,
    :DP5,
    :BS5,
    :OwrenZen3,
    :OwrenZen4,
    :OwrenZen5,
    :Tsit5,
    :Vern6,
    :Vern7,
    :Vern8,
    :Vern9,
    :Rosenbrock23,
    :Rodas4,
    :Rodas4P,
    :Rodas5,
    :Rodas5P,
    :ROS3P,
    :ImplicitEuler,
    :Trapezoid,
    :TRBDF2,
    :KenCarp4,
    :Kvaerno5,
    :FBDF,
    :QNDF,
    # ADTypes (Jacobians of implicit methods)
    :AutoFiniteDiff,
    :AutoForwardDiff,
    # SciMLSensitivity
    :BacksolveAdjoint,
    :InterpolatingAdjoint,
    :QuadratureAdjoint,
    :GaussAdjoint,
    :ReverseDiffAdjoint,
    :ForwardDiffSensitivity,
    :ZygoteVJP,
    :EnzymeVJP,
    :ReverseDiffVJP,
    :TrackerVJP,
    # solve keywords
    :NamedTuple,
])

const BUILD_CACHE = Dict{String, Any}()

invalid(msg) = throw(PSGError("invalid", msg))

is_literal(x) = x isa Union{Bool, Integer, AbstractFloat, Nothing} || x === :nothing

function check_value(ex)
    is_literal(ex) && return nothing
    ex isa Expr && ex.head === :call && return check_call(ex)
    return invalid("not a literal or an allowed constructor call: $(repr(ex))")
end

function check_keyword(ex)
    ex isa Expr && ex.head in (:kw, :(=)) && ex.args[1] isa Symbol ||
        invalid("malformed keyword argument: $(repr(ex))")
    return check_value(ex.args[2])
end

function check_call(ex::Expr)
    f = ex.args[1]
    f isa Symbol && f in CONSTRUCTORS || invalid("constructor $(repr(f)) is not allowed")
    for a in ex.args[2:end]
        if a isa Expr && a.head === :parameters
            foreach(check_keyword, a.args)
        elseif a isa Expr && a.head === :kw
            check_keyword(a)
        else
            check_value(a)
        end
    end
    return nothing
end

function check_expression(ex)
    if ex isa Expr && ex.head === :tuple
        # NamedTuple literal `(a = 1, b = 2.0)`
        foreach(check_keyword, ex.args)
        return nothing
    end
    return check_value(ex)
end

"""
    build(src)

Evaluate `src` (e.g. `"InterpolatingAdjoint(; autojacvec = ZygoteVJP(), checkpointing = true)"`
or `"(reltol = 1.0e-7, abstol = 1.0e-9)"`) after checking that it contains only whitelisted
constructor calls and literals. Results are cached per source string.
"""
function build(src::AbstractString)
    key = String(src)
    return get!(BUILD_CACHE, key) do
        ex = Meta.parse(key)
        check_expression(ex)
        Core.eval(@__MODULE__, ex)
    end
end
