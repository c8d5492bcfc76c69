# Tests of PySciMLGrad on its own (no torch). Run from the package directory with
#
#     JULIA_PYTHONCALL_EXE=/path/to/python julia --project=. -e 'using Pkg; Pkg.test()'
#
# (PythonCall needs a Python; pointing it at an existing one with numpy avoids CondaPkg
# installing its own and enables the PyRHS tests.)
#
# Oracle: dz/dt = a .* z has z(t) = z0 exp(a t), so for L = sum(G .* ys)
#     dL/dz0[d, b] = sum_i G[d, b, i] exp(a[d] t_i)
#     dL/da[d]     = sum_i sum_b G[d, b, i] z0[d, b] t_i exp(a[d] t_i).

using PySciMLGrad
using PySciMLGrad: PSGError, build, compile_rhs, dense_view, is_column_major
using PythonCall: Py, pybuiltins, pydict, pyimport
using Test

const TS = [0.0, 0.25, 0.5, 1.0, 1.5]
const A = [-0.7, 0.4]
const Z0 = [1.0 2.0 -0.5; 0.3 -1.2 0.8] # D = 2 states, B = 3 samples
const G = reshape(collect(range(-1.0, 1.0; length = 30)), 2, 3, 5)
const TIGHT = "(reltol = 1.0e-10, abstol = 1.0e-12, maxiters = 100000)"

exact(t) = Z0 .* exp.(A .* t)

function exact_gradients()
    du0 = zeros(2, 3)
    da = zeros(2)
    for (i, t) in enumerate(TS), b in 1:3, d in 1:2
        du0[d, b] += G[d, b, i] * exp(A[d] * t)
        da[d] += G[d, b, i] * Z0[d, b] * t * exp(A[d] * t)
    end
    return du0, da
end

const OOP = compile_rhs("(u, p, t) -> p .* u")
const IIP = compile_rhs("(du, u, p, t) -> (du .= p .* u; nothing)")

@testset "build evaluates only whitelisted constructors and literals" begin
    @test build("Tsit5()") isa PySciMLGrad.Tsit5
    s = build("InterpolatingAdjoint(; autojacvec = ZygoteVJP(), checkpointing = true)")
    @test s isa PySciMLGrad.InterpolatingAdjoint
    @test s.checkpointing
    @test build("(reltol = 1.0e-7, abstol = 1.0e-9, maxiters = 10,)") ==
        (reltol = 1.0e-7, abstol = 1.0e-9, maxiters = 10)
    @test build("Rodas5P(; autodiff = AutoFiniteDiff())") isa PySciMLGrad.Rodas5P
    for bad in ("run(`ls`)", "Base.exit()", "(a = rm(\"x\"),)", "Tsit5(rm(\"x\"))", "x")
        @test_throws PSGError build(bad)
    end
end

@testset "compile_rhs classifies in-place and out-of-place" begin
    @test !OOP.iip
    @test IIP.iip
    @test_throws PSGError compile_rhs("this is not julia (")
    @test_throws PSGError compile_rhs("42")
    @test_throws PSGError compile_rhs("(a, b) -> a")
end

@testset "layout helpers" begin
    x = rand(3, 4)
    @test dense_view(x) === x
    @test is_column_major(x)
    @test !is_column_major(view(x, :, 1:2:4)) # every other column: strides (1, 6)
end

@testset "forward solve matches exp(a t), $(name)" for (name, rhs) in (
        ("oop", OOP),
        ("iip", IIP),
    )
    ys, stats = solve_forward(rhs, Z0, A, TS, "Tsit5()", TIGHT, false)
    @test size(ys) == (2, 3, length(TS))
    for (i, t) in enumerate(TS)
        @test ys[:, :, i] ≈ exact(t) rtol = 1.0e-8
    end
    @test stats[1] > 0 && stats[2] > 0
end

@testset "fixed steps: save-time grid and step_size" begin
    # Euler on the grid t = TS takes one step per interval: z_{k+1} = z_k (1 + a h_k).
    ys, _ = solve_forward(OOP, Z0, A, TS, "Euler()", "(dt = 1.5, adaptive = false)", true)
    z = copy(Z0)
    for i in 2:length(TS)
        z = z .* (1 .+ A .* (TS[i] - TS[i - 1]))
        @test ys[:, :, i] ≈ z rtol = 1.0e-13
    end
    # Four equal steps of 0.05 over [0, 0.2].
    ys, _ = solve_forward(
        OOP,
        Z0,
        A,
        [0.0, 0.2],
        "Euler()",
        "(dt = 0.05, adaptive = false)",
        false,
    )
    @test ys[:, :, end] ≈ Z0 .* (1 .+ 0.05 .* A).^4 rtol = 1.0e-13
end

const SENSEALGS = [
    "BacksolveAdjoint(; checkpointing = true)",
    "InterpolatingAdjoint(; checkpointing = false)",
    "InterpolatingAdjoint(; checkpointing = true)",
    "QuadratureAdjoint(; abstol = 1.0e-12, reltol = 1.0e-10)",
    "GaussAdjoint(; checkpointing = false)",
    "GaussAdjoint(; checkpointing = true)",
    "ReverseDiffAdjoint()",
    "ForwardDiffSensitivity(; chunk_size = 0)",
]

@testset "gradients against the exact solution: $(sensealg)" for sensealg in SENSEALGS
    du0_exact, da_exact = exact_gradients()
    for rhs in (OOP, IIP)
        ys, _, handle = solve_with_pullback(
            rhs,
            Z0,
            A,
            TS,
            "Tsit5()",
            sensealg,
            TIGHT,
            false,
        )
        @test ys[:, :, end] ≈ exact(TS[end]) rtol = 1.0e-8
        du0, da = apply_pullback(handle, G)
        @test du0 ≈ du0_exact rtol = 1.0e-6
        @test da ≈ da_exact rtol = 1.0e-6
    end
end

# Decreasing save times arrive as s = -t (Python's translate.julia_save_times) with the
# right-hand side reversed: states and gradients must be those of the original problem,
# z(t) = z1 exp(a (t - t1)) from t1 = TS[end] down to 0, for every sensealg (the adjoints
# return sort(saveat), which is why the increasing s is used at all).
@testset "decreasing time through reverse_time: $(sensealg)" for sensealg in SENSEALGS
    TD = reverse(TS)
    t1 = TD[1]
    for rhs in (OOP, IIP)
        ys, _, handle = solve_with_pullback(
            PySciMLGrad.reverse_time(rhs),
            Z0,
            A,
            .-TD,
            "Tsit5()",
            sensealg,
            TIGHT,
            false,
        )
        for (i, t) in enumerate(TD)
            @test ys[:, :, i] ≈ Z0 .* exp.(A .* (t - t1)) rtol = 1.0e-8
        end
        du0, da = apply_pullback(handle, G)
        du0_exact = zeros(2, 3)
        da_exact = zeros(2)
        for (i, t) in enumerate(TD), b in 1:3, d in 1:2
            e = exp(A[d] * (t - t1))
            du0_exact[d, b] += G[d, b, i] * e
            da_exact[d] += G[d, b, i] * Z0[d, b] * (t - t1) * e
        end
        @test du0 ≈ du0_exact rtol = 1.0e-6
        @test da ≈ da_exact rtol = 1.0e-6
    end
end

# SciMLBase copies fields named like its slots (vjp, jac, paramjac, ...) from the function
# object into the ODEFunction; SciMLSensitivity >= 7.97 then calls f.vjp(λ, y, p, t)
# instead of the PyRHS rrule (UPSTREAM.md, reserved field names).
@testset "PyRHS fills no ODEFunction slot" begin
    fun = PySciMLGrad.odefunction(PyRHS(Py(nothing), Py(nothing)))
    @test fun.vjp === nothing
    @test fun.jac === nothing
    @test fun.paramjac === nothing
    @test fun.jvp === nothing
end

@testset "unsupported combinations are PSGErrors" begin
    none = Py(nothing)
    py = PyRHS(none, none)
    for s in ("ReverseDiffAdjoint()", "ForwardDiffSensitivity(; chunk_size = 0)")
        err = try
            solve_with_pullback(py, Z0, A, TS, "Tsit5()", s, TIGHT, false)
            nothing
        catch e
            e
        end
        @test err isa PSGError && err.kind == "unsupported_sensealg"
    end
    err = try
        solve_forward(OOP, Z0, A, TS, "Tsit5()", "(reltol = 1.0e-10, maxiters = 3)", false)
        nothing
    catch e
        e
    end
    @test err isa PSGError && err.kind == "solver" && err.msg == "MaxIters"
end

# The Python-callback route (Recipe A): f and its vector-Jacobian product come from
# Python; SciMLSensitivity's ZygoteVJP reaches them through the PyRHS rrule.
const PY_CALLBACKS = """
import numpy as np
A = np.array([-0.7, 0.4])
def f(du, u, t):
    np.asarray(du)[...] = A[:, None] * np.asarray(u)
def vjp(vu, vp, u, t, v):
    u, v = np.asarray(u), np.asarray(v)
    np.asarray(vu)[...] = A[:, None] * v
    np.asarray(vp)[...] = (v * u).sum(axis=1)
"""

numpy_available = try
    pyimport("numpy")
    true
catch
    false
end

if numpy_available
    @testset "PyRHS: Python f and vjp through the rrule, $(sensealg)" for sensealg in SENSEALGS[
            1:6,
        ]
        ns = pydict()
        pybuiltins.exec(PY_CALLBACKS, ns)
        rhs = PyRHS(ns["f"], ns["vjp"])
        zygote = replace(sensealg, "(; " => "(; autojacvec = ZygoteVJP(), ")
        ys, _, handle = solve_with_pullback(rhs, Z0, A, TS, "Tsit5()", zygote, TIGHT, false)
        @test ys[:, :, end] ≈ exact(TS[end]) rtol = 1.0e-8
        du0, da = apply_pullback(handle, G)
        du0_exact, da_exact = exact_gradients()
        @test du0 ≈ du0_exact rtol = 1.0e-6
        @test da ≈ da_exact rtol = 1.0e-6
    end
else
    @warn "numpy is not importable from PythonCall's Python: PyRHS tests skipped"
end
